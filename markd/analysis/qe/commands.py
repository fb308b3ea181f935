"""One handler per command libmongocrypt sends with `encryptionInformation`; one table maps them.

Handlers keep the command's fields in their order and replace only what they analysed: filters are
re-serialised (as mongocryptd re-serialises them), written values become placeholders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from markd.analysis.qe.context import Context
from markd.analysis.qe.errors import error
from markd.analysis.qe.fields import Below, Encrypted, Plain, Prefix
from markd.analysis.qe.match import mark_filter, touches_encrypted
from markd.analysis.qe.pipeline import mark_find_projection, mark_pipeline
from markd.analysis.qe.update import mark_inserted_document, mark_update

Handler = Callable[[dict[str, Any], Context], dict[str, Any]]

# Fields of an update statement in the order the server's IDL serialises them.
UPDATE_STATEMENT_ORDER = ("q", "u", "c", "arrayFilters", "hint", "multi", "upsert", "upsertSupplied", "collation",
                          "sampleId", "sort")


def _replace(command: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {key: values.get(key, value) for key, value in command.items()}


def _find(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    marked = dict(command)
    if "filter" in command:
        marked["filter"] = mark_filter(command["filter"], ctx)
    if "projection" in command:
        marked["projection"] = mark_find_projection(command["projection"], ctx)
    return marked


def _count(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if "query" not in command or command["query"] is None:
        return dict(command)
    return _replace(command, query=mark_filter(command["query"], ctx))


def _distinct(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    key = command.get("key")
    if not isinstance(key, str):
        raise error("MALFORMED", detail="distinct key must be a string")
    info = ctx.schema.lookup(key)
    if isinstance(info, Encrypted):
        raise error("DISTINCT_ENCRYPTED", path=key)
    if isinstance(info, Prefix):
        raise error("DISTINCT_PREFIX")
    if isinstance(info, Below):
        raise error("BELOW_ENCRYPTED", path=key)
    if command.get("query") is None:
        return dict(command)
    return _replace(command, query=mark_filter(command["query"], ctx))


def _statements(command: dict[str, Any], field: str) -> list[Mapping[str, Any]]:
    statements = command.get(field)
    if not isinstance(statements, list) or not all(isinstance(s, Mapping) for s in statements):
        raise error("MALFORMED", detail=f"'{field}' must be an array of objects")
    return statements


def _insert(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    documents = [mark_inserted_document(d, ctx) for d in _statements(command, "documents")]
    return _with_field(command, "documents", documents)


def _with_field(command: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    marked = dict(command)
    marked[field] = value  # appended when it came as an OP_MSG document sequence
    return marked


def _statement_ctx(statement: Mapping[str, Any], ctx: Context) -> Context:
    collation = statement.get("collation")
    return ctx if collation is None else Context(ctx.schema, ctx.information, ctx.database, collation, ctx.tally)


def _update_statement(statement: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    if statement.get("multi"):
        # mongocryptd refuses these for any QE collection, encrypted fields or not.
        raise error("MULTI_UPDATE")
    ctx = _statement_ctx(statement, ctx)
    values = dict(statement)
    values["q"] = mark_filter(statement.get("q", {}), ctx)
    values["u"] = mark_update(statement.get("u"), ctx, upsert=bool(statement.get("upsert")))
    values.setdefault("multi", False)
    values.setdefault("upsert", False)
    ordered = {key: values[key] for key in UPDATE_STATEMENT_ORDER if key in values}
    ordered.update({key: value for key, value in values.items() if key not in ordered})
    return ordered


def _update(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    updates = [_update_statement(s, ctx) for s in _statements(command, "updates")]
    return _with_field(command, "updates", updates)


def _delete(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    deletes = []
    for statement in _statements(command, "deletes"):
        marked = dict(statement)
        marked["q"] = mark_filter(statement.get("q", {}), _statement_ctx(statement, ctx))
        deletes.append(marked)
    return _with_field(command, "deletes", deletes)


def _find_and_modify(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for key, value in command.items():
        if key == "findandmodify":
            marked["findAndModify"] = value
        elif key == "query" and value is not None:
            # mongocryptd keeps the original query unless marking it placed something in it.
            before = ctx.tally.placeholders
            query = mark_filter(value, ctx)
            marked[key] = query if ctx.tally.placeholders > before else value
        elif key == "update" and value is not None:
            marked[key] = mark_update(value, ctx, upsert=bool(command.get("upsert")))
        elif key == "fields":
            marked[key] = mark_find_projection(value, ctx)
        elif key == "sort" and isinstance(value, Mapping):
            for path in value:
                if not isinstance(ctx.schema.lookup(path), Plain):
                    raise error("SORT", path=path)
            marked[key] = value
        else:
            marked[key] = value
    return marked


def _aggregate(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    pipeline, _ = mark_pipeline(command.get("pipeline"), ctx)
    return _replace(command, pipeline=pipeline)


def _without_information(command: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in command.items() if k != "encryptionInformation"}


def _create(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if "viewOn" in command or "pipeline" in command:
        raise error("VIEW")
    if touches_encrypted(command.get("validator"), ctx):
        raise error("VALIDATOR")
    return _without_information(command)


def _coll_mod(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if "viewOn" in command or "pipeline" in command:
        raise error("VIEW")
    if touches_encrypted(command.get("validator"), ctx):
        raise error("VALIDATOR")
    return _without_information(command)


def _create_indexes(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    indexes = _statements(command, "indexes")
    for index in indexes:
        if touches_encrypted(index.get("partialFilterExpression"), ctx):
            raise error("PARTIAL_FILTER")
    for index in indexes:
        key = index.get("key")
        if isinstance(key, Mapping):
            for path in key:
                # markd's own rule (mongocryptd checks only partial filters): an index over ciphertext
                # cannot serve any query, so asking for one is a mistake worth reporting.
                if isinstance(path, str) and isinstance(ctx.schema.lookup(path), Encrypted):
                    raise error("INDEX_ON_ENCRYPTED", path=path)
    return _without_information(command)


def _bulk_write(command: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Client bulkWrite on one QE namespace: several operations only if all are inserts."""
    operations = _statements(command, "ops")
    kinds = [next((k for k in ("insert", "update", "delete") if k in op), None) for op in operations]
    if None in kinds:
        raise error("MALFORMED", detail="each bulkWrite operation must be an insert, update or delete")
    if len(operations) > 1 and any(kind != "insert" for kind in kinds):
        raise error("BULK_ONLY_INSERT")
    marked_operations = []
    for operation, kind in zip(operations, kinds, strict=True):
        marked = dict(operation)
        if kind == "insert":
            marked["document"] = mark_inserted_document(operation.get("document", {}), ctx)
        else:
            if operation.get("multi") and kind == "update":
                raise error("MULTI_UPDATE")
            if operation.get(kind) != 0:
                raise error("BULK_ONE_NAMESPACE")
            marked["filter"] = mark_filter(operation.get("filter", {}), _statement_ctx(operation, ctx))
            if kind == "update":
                upsert = bool(operation.get("upsert"))
                marked["updateMods"] = mark_update(operation.get("updateMods"), ctx, upsert=upsert)
        marked_operations.append(marked)
    return _replace(command, ops=marked_operations)


# Command name -> handler. No row: refused.
COMMANDS: dict[str, Handler] = {
    "find": _find,
    "count": _count,
    "distinct": _distinct,
    "insert": _insert,
    "update": _update,
    "delete": _delete,
    "findAndModify": _find_and_modify,
    "findandmodify": _find_and_modify,
    "aggregate": _aggregate,
    "create": _create,
    "collMod": _coll_mod,
    "createIndexes": _create_indexes,
    "bulkWrite": _bulk_write,
}

# Commands whose result loses encryptionInformation (libmongocrypt appends encryptedFields itself).
SCHEMA_COMMANDS = frozenset({"create", "collMod", "createIndexes"})
