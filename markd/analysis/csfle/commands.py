"""One handler per command libmongocrypt sends for CSFLE marking, in `COMMANDS`.

`mark(command)` reads the schema parameters (`jsonSchema` + `isRemoteSchema`, or
`csfleEncryptionSchemas`), then hands the command to its handler, which returns the command to
forward: the original fields in their order, with the analysed ones replaced by their marked,
re-serialized form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from markd.analysis import MarkResult
from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.expressions import ExpressionAnalysis
from markd.analysis.csfle.match import mark_filter
from markd.analysis.csfle.pipeline import (
    PipelineContext,
    _encryption_shape,
    check_involved_collections,
    mark_stages,
)
from markd.analysis.csfle.placeholders import MarkContext, is_placeholder
from markd.analysis.csfle.schema import PREFIX, Encrypted, EncryptionSchema, parse
from markd.analysis.csfle.update import check_insert_document, mark_update
from markd.analysis.csfle.walk import is_document, mark_document

SCHEMA_FIELDS = ("jsonSchema", "isRemoteSchema", "csfleEncryptionSchemas")
DEFAULT_VERBOSITY = "allPlansExecution"


@dataclass(frozen=True, slots=True)
class Schemas:
    """The schema of the command's own namespace, and every namespace's when several were sent."""

    own: EncryptionSchema
    by_namespace: Mapping[str, EncryptionSchema]
    multi: bool

    @property
    def encrypts_anything(self) -> bool:
        return any(schema.encrypts_anything for schema in (self.own, *self.by_namespace.values()))


def read_schemas(parameters: Mapping[str, Any], name: str, namespace: str) -> Schemas:
    """The schema parameters of a command (for explain: the outer command's), checked in mongocryptd's order.

    aggregate may name several namespaces (`csfleEncryptionSchemas`); every other command exactly one.
    """
    multi_allowed = name == "aggregate"
    json_schema: Any = None
    remote: bool | None = None
    several: Any = None
    for field, value in parameters.items():
        if field == "jsonSchema":
            if not is_document(value):
                fail("schema_not_object")
            json_schema = value
        elif field == "isRemoteSchema":
            if not isinstance(value, bool):
                fail("remote_not_bool")
            remote = value
        elif field == "csfleEncryptionSchemas":
            if not multi_allowed:
                fail("multi_only_aggregate")
            if not is_document(value):
                fail("multi_not_object")
            several = value
    if multi_allowed:
        if json_schema is None and several is None:
            fail("multi_schema_required")
        if json_schema is not None:
            if remote is None:
                fail("multi_remote_required")
            if several is not None:
                fail("schema_and_multi")
        elif remote is not None:
            fail("remote_and_multi")
    else:
        if json_schema is None:
            fail("schema_required")
        if remote is None:
            fail("remote_required")
    if json_schema is not None:
        assert remote is not None
        own = parse(json_schema, remote)
        return Schemas(own, {namespace: own}, False)
    parsed: dict[str, EncryptionSchema] = {}
    for ns, entry in several.items():
        if not is_document(entry):
            fail("ns_schema_not_object")
        for required in ("jsonSchema", "isRemoteSchema"):
            if required not in entry:
                fail("idl_missing", field=f"EncryptionSchemaCSFLE.{required}")
        for field in entry:
            if field not in ("jsonSchema", "isRemoteSchema"):
                fail("idl_unknown", field=f"EncryptionSchemaCSFLE.{field}")
        if not is_document(entry["jsonSchema"]):
            fail("idl_wrong_type", field="EncryptionSchemaCSFLE.jsonSchema", actual="other", expected="object")
        if not isinstance(entry["isRemoteSchema"], bool):
            fail("idl_wrong_type", field="EncryptionSchemaCSFLE.isRemoteSchema", actual="other", expected="bool")
        parsed[ns] = parse(entry["jsonSchema"], entry["isRemoteSchema"])
    if namespace not in parsed:
        fail("ns_mismatch", ns=namespace)
    return Schemas(parsed[namespace], parsed, True)


def _collation_simple(collation: Any) -> bool:
    if collation is None:
        return True
    if not is_document(collation):
        fail("collation_not_object")
    return collation.get("locale", "simple") == "simple"


def _filter(filter_: Any, schema: EncryptionSchema, collation: Any) -> Any:
    if filter_ is None:
        return None
    if not is_document(filter_):
        fail("bad_field_type", field="filter", actual="other", expected="object")
    return mark_filter(filter_, MarkContext(schema, comparison=True, collation_simple=_collation_simple(collation)))


def _replace(command: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """The command with some fields replaced, order kept (a None value leaves the field as it was)."""
    result = dict(command)
    for name, value in fields.items():
        if value is not None:
            result[name] = value
    return result


def contains_placeholder(value: Any) -> bool:
    if is_placeholder(value):
        return True
    if is_document(value):
        return any(contains_placeholder(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_placeholder(item) for item in value)
    return False


# -- handlers ------------------------------------------------------------------------------------------

Handler = Callable[[dict[str, Any], Schemas, str], dict[str, Any]]


PROJECTION_OPERATORS = frozenset({"$slice", "$elemMatch", "$meta"})


def _projection(projection: Any, schema: EncryptionSchema, collation: Any) -> Any:
    """A find projection's computed fields are aggregation expressions: analysed as such.

    Returns the marked projection when a constant in it was compared to an encrypted field, else
    None (the projection is forwarded as sent).
    """
    if not is_document(projection):
        return None
    analysis = ExpressionAnalysis(schema.root, MarkContext(schema, True, None, _collation_simple(collation)))
    marked: dict[str, Any] = {}
    for path, value in projection.items():
        if isinstance(value, (bool, int, float)) or (
            is_document(value) and value and next(iter(value)) in PROJECTION_OPERATORS
        ):
            marked[path] = value
        else:
            marked[path], _ = analysis.forwarded(value)
    return marked if contains_placeholder(marked) else None


def _find(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    collation = command.get("collation")
    return _replace(command, filter=_filter(command.get("filter"), schemas.own, collation),
                    projection=_projection(command.get("projection"), schemas.own, collation))


def _count(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    return _replace(command, query=_filter(command.get("query"), schemas.own, command.get("collation")))


def _distinct(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    key = command.get("key")
    if not isinstance(key, str):
        fail("bad_field_type", field="distinct.key", actual="other", expected="string")
    metadata = schemas.own.metadata_for(key)
    if isinstance(metadata, Encrypted):
        if metadata.pointer:
            fail("distinct_pointer")
        if not metadata.deterministic:
            fail("distinct_random")
        if not _collation_simple(command.get("collation")) and "string" in metadata.bson_types:
            fail("distinct_collation")
    elif metadata is PREFIX:
        fail("distinct_prefix")
    return _replace(command, query=_filter(command.get("query"), schemas.own, command.get("collation")))


def _aggregate(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    context = PipelineContext(database, str(command.get("aggregate")), schemas.by_namespace,
                              _collation_simple(command.get("collation")), schemas.multi, schemas.own)
    check_involved_collections(command.get("pipeline"), context)
    pipeline, _ = mark_stages(command.get("pipeline"), schemas.own.root, context)
    return _replace(command, pipeline=pipeline)


def _insert_documents(documents: Any, schema: EncryptionSchema) -> list[Any]:
    if not isinstance(documents, list):
        fail("bad_field_type", field="insert.documents", actual="other", expected="array")
    marked = []
    for document in documents:
        if not is_document(document):
            fail("bad_field_type", field="insert.documents", actual="other", expected="object")
        check_insert_document(document, schema)
        marked.append(mark_document(document, "", MarkContext(schema, comparison=False, document=document)))
    return marked


def _insert(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    return _replace(command, documents=_insert_documents(command.get("documents"), schemas.own))


def _update_statement(statement: Any, schema: EncryptionSchema) -> dict[str, Any]:
    if not is_document(statement):
        fail("bad_field_type", field="update.updates", actual="other", expected="object")
    marked = dict(statement)
    upsert = bool(statement.get("upsert", False))
    marked["q"] = _filter(statement.get("q", {}), schema, statement.get("collation"))
    marked["u"] = mark_update(statement.get("u"), schema, upsert=upsert, command="update")
    # mongod's UpdateOpEntry always writes these two back.
    marked.setdefault("multi", False)
    marked.setdefault("upsert", False)
    return marked


def _update(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    updates = command.get("updates")
    if not isinstance(updates, list):
        fail("bad_field_type", field="update.updates", actual="other", expected="array")
    return _replace(command, updates=[_update_statement(s, schemas.own) for s in updates])


def _delete(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    deletes = command.get("deletes")
    if not isinstance(deletes, list):
        fail("bad_field_type", field="delete.deletes", actual="other", expected="array")
    marked = []
    for statement in deletes:
        if not is_document(statement):
            fail("bad_field_type", field="delete.deletes", actual="other", expected="object")
        marked.append(_replace(statement, q=_filter(statement.get("q", {}), schemas.own, statement.get("collation"))))
    return _replace(command, deletes=marked)


def _find_and_modify(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    query = _filter(command.get("query"), schemas.own, command.get("collation"))
    result = dict(command)
    if query is not None and contains_placeholder(query):
        result["query"] = query  # mongocryptd keeps the original query when nothing in it was marked
    if "update" in command:
        upsert = bool(command.get("upsert", False))
        result["update"] = mark_update(command["update"], schemas.own, upsert=upsert, command="findAndModify")
    return result


def _validator(validator: Any, schema: EncryptionSchema) -> None:
    if validator is None:
        return
    if not is_document(validator):
        fail("bad_field_type", field="validator", actual="other", expected="object")
    if list(validator) == ["$jsonSchema"] and is_document(validator["$jsonSchema"]):
        # The collection's own schema as validator: fine when it says the same about encryption.
        # mongocryptd parses it as a local schema: validation keywords in it are refused.
        if _encryption_shape(parse(validator["$jsonSchema"], False).root) != _encryption_shape(schema.root):
            fail("validator_schema")
        return
    marked = mark_filter(validator, MarkContext(schema, comparison=True))
    if contains_placeholder(marked):
        fail("validator_compare")


def _create(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    if "viewOn" in command or "pipeline" in command:
        fail("view")
    _validator(command.get("validator"), schemas.own)
    return dict(command)


def _coll_mod(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    if "viewOn" in command or "pipeline" in command:
        fail("view")
    _validator(command.get("validator"), schemas.own)
    return dict(command)


def _create_indexes(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    indexes = command.get("indexes")
    if not isinstance(indexes, list):
        fail("bad_field_type", field="createIndexes.indexes", actual="other", expected="array")
    for index in indexes:
        if is_document(index) and "partialFilterExpression" in index:
            marked = _filter(index["partialFilterExpression"], schemas.own, index.get("collation"))
            if contains_placeholder(marked):
                fail("partial_filter_compare")
    return dict(command)


def _bulk_write(command: dict[str, Any], schemas: Schemas, database: str) -> dict[str, Any]:
    ops = command.get("ops")
    if not isinstance(ops, list):
        fail("bad_field_type", field="bulkWrite.ops", actual="other", expected="array")
    schema = schemas.own
    infos = command.get("nsInfo")
    if not isinstance(infos, list) or len(infos) != 1:
        # The one schema sent describes one namespace: an op on another would be checked against
        # the wrong rules.
        fail("bulk_single_namespace")
    marked: list[Any] = []
    for op in ops:
        if not is_document(op):
            fail("bad_field_type", field="bulkWrite.ops", actual="other", expected="object")
        if any(op.get(kind, 0) != 0 for kind in ("insert", "update", "delete")):
            fail("bulk_single_namespace")
        entry = dict(op)
        if "insert" in op:
            entry["document"] = _insert_documents([op.get("document")], schema)[0]
        elif "update" in op:
            entry["filter"] = _filter(op.get("filter", {}), schema, op.get("collation"))
            entry["updateMods"] = mark_update(op.get("updateMods"), schema, upsert=bool(op.get("upsert")),
                                              command="update")
        elif "delete" in op:
            entry["filter"] = _filter(op.get("filter", {}), schema, op.get("collation"))
        else:
            fail("bad_field_type", field="bulkWrite.ops", actual="other", expected="insert, update or delete")
        marked.append(entry)
    return _replace(command, ops=marked)


COMMANDS: dict[str, Handler] = {
    "find": _find,
    "aggregate": _aggregate,
    "count": _count,
    "distinct": _distinct,
    "insert": _insert,
    "update": _update,
    "delete": _delete,
    "findAndModify": _find_and_modify,
    "findandmodify": _find_and_modify,
    "create": _create,
    "collMod": _coll_mod,
    "createIndexes": _create_indexes,
    "bulkWrite": _bulk_write,
}
EXPLAINABLE = frozenset({"find", "aggregate", "count", "distinct", "update", "delete", "findAndModify",
                         "findandmodify"})
# Commands that never forward a marked result: libmongocrypt only needs the verdict.
VERDICT_ONLY = frozenset({"create", "collMod", "createIndexes"})


def _strip(command: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in command.items() if k not in SCHEMA_FIELDS and k != "$db"}


def _namespace(command: Mapping[str, Any], name: str, database: str) -> str:
    if name == "bulkWrite":
        infos = command.get("nsInfo")
        if isinstance(infos, list) and infos and is_document(infos[0]) and isinstance(infos[0].get("ns"), str):
            return infos[0]["ns"]
    return f"{database}.{command.get(name)}"


def _analyse(command: Mapping[str, Any], parameters: Mapping[str, Any], database: str
             ) -> tuple[dict[str, Any], bool, bool]:
    if not command:
        fail("no_such_command", name="")
    name = next(iter(command))
    handler = COMMANDS.get(name)
    if handler is None:
        fail("no_such_command", name=name)
    schemas = read_schemas(parameters, name, _namespace(command, name, database))
    stripped = _strip(command)
    # mongocryptd analyses even when nothing is encrypted (its refusals still apply); the flag then
    # tells libmongocrypt to forward the original command.
    requires = schemas.encrypts_anything
    result = handler(stripped, schemas, database)
    if name in VERDICT_ONLY:
        return stripped, False, requires
    if name == "findandmodify":
        # mongod's request serializer writes the command under its camel-case name.
        result = {("findAndModify" if key == "findandmodify" else key): value for key, value in result.items()}
    return result, requires and contains_placeholder(result), requires


def mark(command: Mapping[str, Any]) -> MarkResult:
    """Analyse one CSFLE marking command."""
    if not command:
        fail("no_such_command", name="")
    name = next(iter(command))
    if name != "explain":
        result, marked, requires = _analyse(command, command, str(command.get("$db", "")))
        return MarkResult(result, marked, requires)
    inner = command.get("explain")
    if not is_document(inner):
        fail("bad_field_type", field="explain", actual="other", expected="object")
    database = str(inner.get("$db", command.get("$db", "")))
    parameters = {**{k: v for k, v in inner.items() if k in SCHEMA_FIELDS},
                  **{k: v for k, v in command.items() if k in SCHEMA_FIELDS}}
    if not inner or next(iter(inner)) not in EXPLAINABLE:
        explained = next(iter(inner), "")
        if explained in COMMANDS:
            fail("explain_unsupported", name=explained)
        fail("explain_unknown", name=explained)
    inner_result, marked, requires = _analyse(inner, parameters, database)
    outer = _strip(command)
    outer["explain"] = inner_result
    outer.setdefault("verbosity", DEFAULT_VERBOSITY)
    return MarkResult(outer, marked, requires)
