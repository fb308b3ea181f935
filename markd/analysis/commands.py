"""Every command libmongocrypt sends, every field mongod accepts in it, each with its role.

`COMMANDS` maps a command name to its fields; a field's role says what it holds and how it is
analysed: a filter, a projection, a pipeline, documents written, updates, variables (`let`, `c`),
index bounds (`min`, `max`), a sort, or an option that carries no value compared with or written to
a document.  A field without a row is refused as mongod's command parser refuses it (40415), before
anything in the command is analysed; a field given twice is refused too (40413).  Both schemes go
through the same table; a scheme only reads its rules and answers the encrypted cases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from bson import Decimal128, Int64

from markd import bsonvalues
from markd.analysis import expressions, notation, paths
from markd.analysis.context import Analysis, Scope, collation_is_simple
from markd.analysis.documents import check_inserted, mark_document
from markd.analysis.errors import error
from markd.analysis.expressions import BOUND, Value, is_document
from markd.analysis.match import mark_filter
from markd.analysis.pipeline import mark_stages, project
from markd.analysis.schema import NOT_ENCRYPTED, is_encrypted, lookup
from markd.analysis.scheme import Rules, Scheme
from markd.analysis.update import mark_update
from markd.errors import CommandError

# Fields that carry the encryption rules; the schemes read them, the result drops the CSFLE ones.
RULE_FIELDS = frozenset({"jsonSchema", "isRemoteSchema", "csfleEncryptionSchemas", "encryptionInformation"})

# Every generic argument mongod accepts on any command (src/mongo/idl/generic_argument.idl, 8.x).
GENERIC_ARGUMENTS = frozenset({
    "apiVersion", "apiStrict", "apiDeprecationErrors", "$db", "maxTimeMS", "readConcern", "writeConcern", "lsid",
    "clientOperationKey", "txnNumber", "autocommit", "startTransaction", "stmtId", "comment", "$readPreference",
    "$clusterTime", "$audit", "$client", "$configServerState", "allowImplicitCollectionCreation", "$oplogQueryData",
    "$queryOptions", "$replData", "databaseVersion", "shardVersion", "tracking_info", "coordinator",
    "maxTimeMSOpOnly", "$configTime", "$topologyTime", "txnRetryCounter", "mayBypassWriteBlocking", "$tenant",
    "expectPrefix", "help", "usesDefaultMaxTimeMS", "versionContext", "requestGossipRoutingCache",
    "startOrContinueTransaction", "rawData",
})


def _type(value: Any) -> str:
    try:
        return bsonvalues.bson_type(value)
    except TypeError:
        return "unknown"


def wrong_type(context: str, value: Any, expected: str) -> NoReturn:
    raise CommandError(14, f"BSON field '{context}' is the wrong type '{_type(value)}', expected type '{expected}'")


@dataclass
class Command:
    """One command being analysed: its name, the analysis state, the fields written back."""

    name: str
    analysis: Analysis
    fields: Mapping[str, Any]  # the command as sent (rules removed): roles consult their siblings
    variables: dict[str, Value] = field(default_factory=dict)
    database: str = ""

    @property
    def collation(self) -> Any:
        return self.fields.get("collation")

    @property
    def scheme(self) -> Scheme:
        return self.analysis.scheme

    def scope(self, collation: Any = None, **fields: Any) -> Scope:
        chosen = self.collation if collation is None else collation
        return self.analysis.scope(collation_simple=collation_is_simple(chosen), variables=self.variables, **fields)

    def context(self, name: str) -> str:
        return f"{self.name}.{name}"


Role = Callable[[str, Any, Command], Any]


# -- roles -------------------------------------------------------------------------------------------


def option(name: str, value: Any, command: Command) -> Any:
    """A value mongod uses for itself (limits, flags, options): never compared with or written to a document."""
    return value


def _object(name: str, value: Any, command: Command) -> Any:
    if not is_document(value):
        wrong_type(command.context(name), value, "object")
    return value


def _optional_document(name: str, value: Any, command: Command) -> bool:
    """Whether an optional field holds a document to analyse: absent (None) does not; a non-document is refused."""
    if value is None:
        return False
    if not is_document(value):
        wrong_type(command.context(name), value, "object")
    return True


def _filter(name: str, value: Any, command: Command) -> Any:
    return mark_filter(value, command.scope()) if _optional_document(name, value, command) else value


def _projection(name: str, value: Any, command: Command) -> Any:
    """A find projection: mongocryptd analyses it as a lone $project stage."""
    if not _optional_document(name, value, command) or not value:
        return value
    return _find_projection(value, command.scope().without_comparisons())


FIND_PROJECTION_OPERATORS = ("$slice", "$elemMatch", "$meta")


def _find_projection(spec: Mapping[str, Any], scope: Scope) -> dict[str, Any]:
    """find's projection operators read the field they name: refused on anything that may be encrypted."""
    plain: dict[str, Any] = {}
    for path, value in spec.items():
        if is_document(value) and value and next(iter(value)) in FIND_PROJECTION_OPERATORS:
            op = next(iter(value))
            if op != "$meta" and scope.current.may_hold_encryption and lookup(scope.current, path) is not NOT_ENCRYPTED:
                scope.scheme.refuse_evaluation(expressions.reference("$" + path, scope),
                                               f"an internal find {op} expression", scope)
            continue
        if paths.is_positional(paths.split(path)[-1] if path else ""):
            base = path.rsplit(".", 1)[0]
            if scope.current.may_hold_encryption and lookup(scope.current, base) is not NOT_ENCRYPTED:
                scope.scheme.refuse_evaluation(expressions.reference("$" + base, scope),
                                               "an internal find positional expression", scope)
            continue
        plain[path] = value
    marked, _ = project(plain, scope) if plain else ({}, None)
    # Write the projection back in its own order, analysed fields replaced.
    return {path: marked.get(path, value) for path, value in spec.items()}


def _pipeline(name: str, value: Any, command: Command) -> Any:
    if not isinstance(value, list):
        wrong_type(command.context(name), value, "array")
    scope = command.scope()
    pipeline, _ = mark_stages(value, scope)
    return pipeline


def _sort(name: str, value: Any, command: Command) -> Any:
    """A sort specification: field names and directions; mongocryptd leaves it as it is."""
    _optional_document(name, value, command)
    return value


def _index_bounds(name: str, value: Any, command: Command) -> Any:
    """find `min`/`max`: index key values compared with the fields' values, which cannot be marked there."""
    if not _optional_document(name, value, command):
        return value
    scope = command.scope()
    if scope.current.may_hold_encryption:
        for path in value:
            if lookup(scope.current, path) is not NOT_ENCRYPTED:
                scope.fail("index_bounds", bound=name, path=path)
    return value


def _hint(name: str, value: Any, command: Command) -> Any:
    """An index name or key pattern: names fields, carries no value."""
    if not isinstance(value, str) and not is_document(value):
        wrong_type(command.context(name), value, "[string, object]")
    return value


def _collation(name: str, value: Any, command: Command) -> Any:
    if value is not None and not is_document(value):
        command.analysis.fail("collation_not_object")
    return value


def _let(name: str, value: Any, command: Command) -> Any:
    """Command `let`: constants (and document-free expressions) the command's expressions read as `$$name`.

    They are analysed before anything else, and bound as values that can never be marked where
    they are used: a comparison of one with an encrypted field is refused."""
    if not _optional_document(name, value, command):
        return value
    command.variables.update(bind_constants(value, command.scope(document_free=True)))
    return value


def bind_constants(constants: Mapping[str, Any], scope: Scope) -> dict[str, Value]:
    bound: dict[str, Value] = {}
    for variable, expression in constants.items():
        expressions.check_variable_name(variable, allow_current=False)
        _, value = expressions.analyse(expression, scope)
        if value.may_hold_encryption:  # pragma: no cover - a document-free expression reads no field
            scope.scheme.refuse_evaluation(value, "a let binding", scope)
        bound[variable] = Value(BOUND, source=variable)
    return bound


def _documents(name: str, value: Any, command: Command) -> Any:
    if not isinstance(value, list):
        wrong_type(command.context(name), value, "array")
    marked = []
    for document in value:
        if not is_document(document):
            wrong_type(command.context(name), document, "object")
        marked.append(mark_inserted(document, command))
    return marked


def mark_inserted(document: Mapping[str, Any], command: Command) -> dict[str, Any]:
    scope = command.scope(document=document)
    check_inserted(document, scope)
    if not scope.current.may_hold_encryption:
        return dict(document)
    return mark_document(document, scope.current, "", scope, command.scheme.mark_write)


# Fields of an update statement in the order mongod's IDL writes them back.
UPDATE_STATEMENT_ORDER = ("q", "u", "c", "arrayFilters", "hint", "multi", "upsert", "upsertSupplied", "collation",
                          "sampleId", "sort", "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery")


def _array_filters(name: str, value: Any, command: Command) -> Any:
    """Filters over array elements: no array can lie above an encrypted path, so they compare nothing encrypted."""
    if not isinstance(value, list) or not all(is_document(item) for item in value):
        wrong_type(command.context(name), value, "array")
    return value


def _statement(spec: StatementSpec, name: str, statement: Any, command: Command, position: str) -> dict[str, Any]:
    context = f"{command.name}.{name}"
    if not is_document(statement):
        wrong_type(context, statement, "object")
    check_fields(statement, spec.fields, context)
    for required in spec.required:
        if required not in statement:
            raise CommandError(40414, f"BSON field '{context}.{required}' is missing but a required field")
    try:
        return spec.analyse(statement, command, position)
    except CommandError as refusal:
        refusal.locate(option=f"{name}.{position}")
        raise


def _update_statement(statement: Mapping[str, Any], command: Command, position: str) -> dict[str, Any]:
    if statement.get("multi") and not command.scheme.multi_updates:
        command.analysis.fail("multi_update")
    collation = statement.get("collation")
    values = dict(statement)
    constants = statement.get("c")
    variables = dict(command.variables)
    if constants is not None:
        if not is_document(constants):
            wrong_type(f"{command.name}.updates.c", constants, "object")
        variables.update(bind_constants(constants, command.scope(collation, document_free=True)))
    scope = command.analysis.scope(collation_simple=collation_is_simple(collation if collation is not None
                                                                        else command.collation),
                                   variables=variables)
    values["q"] = mark_filter(statement.get("q", {}), scope)
    values["u"] = mark_update(statement.get("u"), scope, upsert=bool(statement.get("upsert")), command="update")
    # mongod's UpdateOpEntry always writes these two back.
    values.setdefault("multi", False)
    values.setdefault("upsert", False)
    ordered = {key: values[key] for key in UPDATE_STATEMENT_ORDER if key in values}
    ordered.update({key: value for key, value in values.items() if key not in ordered})
    return ordered


def _delete_statement(statement: Mapping[str, Any], command: Command, position: str) -> dict[str, Any]:
    marked = dict(statement)
    marked["q"] = mark_filter(statement.get("q", {}), command.scope(statement.get("collation")))
    return marked


@dataclass(frozen=True)
class StatementSpec:
    fields: frozenset[str]
    required: tuple[str, ...]
    analyse: Callable[[Mapping[str, Any], Command, str], dict[str, Any]]


UPDATE_STATEMENT = StatementSpec(frozenset(UPDATE_STATEMENT_ORDER), ("q", "u"), _update_statement)
DELETE_STATEMENT = StatementSpec(frozenset({"q", "limit", "hint", "collation", "sampleId"}), ("q", "limit"),
                                 _delete_statement)


def _statements(spec: StatementSpec) -> Role:
    def role(name: str, value: Any, command: Command) -> Any:
        if not isinstance(value, list):
            wrong_type(command.context(name), value, "array")
        return [_statement(spec, name, statement, command, str(index)) for index, statement in enumerate(value)]

    return role


def _find_and_modify_update(name: str, value: Any, command: Command) -> Any:
    if value is None:
        return value
    return mark_update(value, command.scope(), upsert=bool(command.fields.get("upsert")), command="findAndModify")


def _find_and_modify_query(name: str, value: Any, command: Command) -> Any:
    """mongocryptd keeps findAndModify's original query unless marking it placed something in it; markd also
    keeps the marked one when a value compared with an encrypted field folded away (the original holds it)."""
    before = command.analysis.encrypted_values
    marked = _filter(name, value, command)
    return marked if command.analysis.encrypted_values > before else value


def _validator(name: str, value: Any, command: Command) -> Any:
    if not _optional_document(name, value, command):
        return value
    command.scheme.check_validator(value, command.scope())
    return value


def _indexes(name: str, value: Any, command: Command) -> Any:
    if not isinstance(value, list):
        wrong_type(command.context(name), value, "array")
    scope = command.scope()
    for index in value:
        if not is_document(index):
            wrong_type(command.context(name), index, "object")
        command.scheme.check_index(index, scope)
    return value


def _distinct_key(name: str, value: Any, command: Command) -> Any:
    """The distinct key's values come back to the client, compared with each other by the server."""
    if not isinstance(value, str):
        wrong_type(command.context(name), value, "string")
    scope = command.scope()
    metadata = lookup(scope.current, value) if scope.current.may_hold_encryption else NOT_ENCRYPTED
    if is_encrypted(metadata):
        if metadata.pointer:
            scope.fail("distinct_pointer", path=value)
        if metadata.randomized:
            scope.fail("distinct_random", path=value)
        if not scope.collation_simple and "string" in metadata.types:
            scope.fail("distinct_collation", path=value)
    elif metadata is not NOT_ENCRYPTED:
        scope.fail("distinct_prefix", path=value)
    return value


def _view(name: str, value: Any, command: Command) -> NoReturn:
    command.analysis.fail("view")


def _namespace(name: str, value: Any, command: Command) -> Any:
    return value


BULK_INSERT = frozenset({"insert", "document"})
BULK_UPDATE = frozenset({"update", "filter", "multi", "updateMods", "upsert", "upsertSupplied", "arrayFilters",
                         "hint", "constants", "collation", "sampleId", "sort",
                         "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery"})
BULK_DELETE = frozenset({"delete", "filter", "multi", "hint", "collation", "sampleId"})


def _bulk_ops(name: str, value: Any, command: Command) -> Any:
    """Client bulkWrite on one namespace (nsInfo[0]): inserts, updates and deletes."""
    command.scheme.check_bulk_write(command)
    if not isinstance(value, list):
        wrong_type(command.context(name), value, "array")
    marked: list[Any] = []
    for op in value:
        if not is_document(op):
            wrong_type(command.context(name), op, "object")
        kind = next(iter(op), "")
        fields = {"insert": BULK_INSERT, "update": BULK_UPDATE, "delete": BULK_DELETE}.get(kind)
        if fields is None:
            raise CommandError(40415, f"BSON field 'bulkWrite.ops.{kind}' is an unknown field.")
        check_fields(op, fields, "bulkWrite.ops")
        if op.get(kind, 0) != 0:
            command.analysis.fail("bulk_single_namespace")
        command.scheme.check_bulk_op(kind, op, len(value), command)
        entry = dict(op)
        if kind == "insert":
            document = op.get("document")
            if not is_document(document):
                wrong_type("bulkWrite.ops.document", document, "object")
            entry["document"] = mark_inserted(document, command)
        else:
            if op.get("multi") and kind == "update" and not command.scheme.multi_updates:
                command.analysis.fail("multi_update")
            variables = dict(command.variables)
            if is_document(op.get("constants")):
                variables.update(bind_constants(op["constants"], command.scope(document_free=True)))
            collation = op.get("collation")
            scope = command.analysis.scope(collation_simple=collation_is_simple(
                collation if collation is not None else command.collation), variables=variables)
            entry["filter"] = mark_filter(op.get("filter", {}), scope)
            if kind == "update":
                entry["updateMods"] = mark_update(op.get("updateMods"), scope, upsert=bool(op.get("upsert")),
                                                  command="update")
        marked.append(entry)
    return marked


def type_name(value: Any) -> str:
    return _type(value)


def involved_collections(pipeline: Any) -> set[str]:
    """Every other collection a pipeline names ($lookup, $graphLookup, $unionWith, $out, $merge, nested)."""
    found: set[str] = set()
    if not isinstance(pipeline, list):
        return found
    for stage in pipeline:
        if not is_document(stage) or len(stage) != 1:
            continue
        name, spec = next(iter(stage.items()))
        target: Any = None
        if name in ("$lookup", "$graphLookup") and is_document(spec):
            target = spec.get("from")
            found |= involved_collections(spec.get("pipeline"))
        elif name == "$unionWith":
            target = spec.get("coll") if is_document(spec) else spec
            if is_document(spec):
                found |= involved_collections(spec.get("pipeline"))
        elif name == "$out":
            target = spec.get("coll") if is_document(spec) else spec
        elif name == "$merge":
            target = spec.get("into") if is_document(spec) else spec
            target = target.get("coll") if is_document(target) else target
        elif name == "$facet" and is_document(spec):
            for sub in spec.values():
                found |= involved_collections(sub)
        if isinstance(target, str):
            found.add(target)
    return found


def check_involved_collections(pipeline: Any, rules: Rules, scheme: Scheme, database: str) -> None:
    """One schema, one collection; several schemas: one for every collection the pipeline reads."""
    collection = rules.namespace.split(".", 1)[1] if "." in rules.namespace else rules.namespace
    others = involved_collections(pipeline) - {collection}
    if not rules.multi:
        if others:
            raise error("other_collection", scheme.errors)
        return
    for other in sorted(others):
        namespace = f"{database}.{other}"
        if namespace not in rules.schemas:
            raise error("missing_ns_schema", scheme.errors, ns=namespace)


# -- the table ---------------------------------------------------------------------------------------

FIND_FIELDS: dict[str, Role] = {
    "filter": _filter, "projection": _projection, "sort": _sort, "hint": _hint, "collation": _collation,
    "skip": option, "limit": option, "batchSize": option, "ntoreturn": option, "singleBatch": option,
    "allowDiskUse": option, "min": _index_bounds, "max": _index_bounds, "returnKey": option,
    "showRecordId": option, "tailable": option, "noCursorTimeout": option, "awaitData": option,
    "allowPartialResults": option, "oplogReplay": option, "let": _let, "term": option, "readOnce": option,
    "allowSpeculativeMajorityRead": option, "$_requestResumeToken": option, "$_resumeAfter": option,
    "runtimeConstants": option, "collectionUUID": option, "mirrored": option, "$_startAt": option,
    "includeQueryStatsMetrics": option,
}
AGGREGATE_FIELDS: dict[str, Role] = {
    "pipeline": _pipeline, "explain": option, "allowDiskUse": option, "cursor": option,
    "bypassDocumentValidation": option, "collation": _collation, "hint": _hint, "let": _let, "needsMerge": option,
    "fromMongos": option, "$_requestReshardingResumeToken": option, "exchange": option, "runtimeConstants": option,
    "isMapReduceCommand": option, "collectionUUID": option, "$_passthroughToShard": option,
    "$_externalDataSources": option, "sampleId": option, "$_isClusterQueryWithoutShardKeyCmd": option,
    "$_requestResumeToken": option, "$_resumeAfter": option, "includeQueryStatsMetrics": option,
    "$_startAt": option, "$_generateV2ResumeTokens": option,
}
COUNT_FIELDS: dict[str, Role] = {
    "query": _filter, "limit": option, "skip": option, "hint": _hint, "collation": _collation, "fields": option,
    "mirrored": option, "includeQueryStatsMetrics": option,
}
DISTINCT_FIELDS: dict[str, Role] = {
    "key": _distinct_key, "query": _filter, "collation": _collation, "mirrored": option, "hint": _hint,
    "sampleId": option, "includeQueryStatsMetrics": option,
}
WRITE_FIELDS: dict[str, Role] = {
    "bypassDocumentValidation": option, "ordered": option, "stmtIds": option, "isTimeseriesNamespace": option,
    "collectionUUID": option, "bypassEmptyTsReplacement": option, "$_originalQuery": option,
}
INSERT_FIELDS: dict[str, Role] = {**WRITE_FIELDS, "documents": _documents}
UPDATE_FIELDS: dict[str, Role] = {**WRITE_FIELDS, "updates": _statements(UPDATE_STATEMENT), "let": _let,
                                  "runtimeConstants": option, "mirrored": option}
DELETE_FIELDS: dict[str, Role] = {**WRITE_FIELDS, "deletes": _statements(DELETE_STATEMENT), "let": _let,
                                  "runtimeConstants": option}
FIND_AND_MODIFY_FIELDS: dict[str, Role] = {
    "query": _find_and_modify_query, "fields": _projection, "sort": _sort, "batchSize": option,
    "singleBatch": option,
    "hint": _hint, "collation": _collation, "arrayFilters": _array_filters, "remove": option,
    "update": _find_and_modify_update, "upsert": option, "new": option, "bypassDocumentValidation": option,
    "let": _let, "runtimeConstants": option, "mirrored": option, "sampleId": option, "$_fromRouter": option,
}
CREATE_FIELDS: dict[str, Role] = {
    "capped": option, "autoIndexId": option, "idIndex": option, "size": option, "max": option,
    "storageEngine": option, "validator": _validator, "validationLevel": option, "validationAction": option,
    "indexOptionDefaults": option, "viewOn": _view, "pipeline": _view, "collation": option, "recordPreImages": option,
    "timeseries": option, "temp": option, "flags": option, "clusteredIndex": option, "expireAfterSeconds": option,
    "changeStreamPreAndPostImages": option, "encryptedFields": option, "recordIdsReplicated": option,
}
COLL_MOD_FIELDS: dict[str, Role] = {
    "validator": _validator, "validationLevel": option, "validationAction": option, "index": option,
    "viewOn": _view, "pipeline": _view, "expireAfterSeconds": option, "changeStreamPreAndPostImages": option,
    "timeseries": option, "timeseriesBucketsMayHaveMixedSchemaData": option, "cappedSize": option,
    "cappedMax": option, "dryRun": option, "recordIdsReplicated": option, "clusteredIndex": option,
    "encryptedFields": option, "collation": option, "recordPreImages": option,
}
CREATE_INDEXES_FIELDS: dict[str, Role] = {
    "v": option, "indexes": _indexes, "ignoreUnknownIndexOptions": option, "commitQuorum": option,
    "returnOnStart": option, "isTimeseriesNamespace": option, "collectionUUID": option,
}
BULK_WRITE_FIELDS: dict[str, Role] = {
    "ops": _bulk_ops, "nsInfo": option, "cursor": option, "bypassDocumentValidation": option, "ordered": option,
    "stmtIds": option, "let": _let, "errorsOnly": option, "$_originalQuery": option, "$_originalCollation": option,
}

COMMANDS: dict[str, dict[str, Role]] = {
    "find": FIND_FIELDS,
    "aggregate": AGGREGATE_FIELDS,
    "count": COUNT_FIELDS,
    "distinct": DISTINCT_FIELDS,
    "insert": INSERT_FIELDS,
    "update": UPDATE_FIELDS,
    "delete": DELETE_FIELDS,
    "findAndModify": FIND_AND_MODIFY_FIELDS,
    "findandmodify": FIND_AND_MODIFY_FIELDS,
    "create": CREATE_FIELDS,
    "collMod": COLL_MOD_FIELDS,
    "createIndexes": CREATE_INDEXES_FIELDS,
    "bulkWrite": BULK_WRITE_FIELDS,
}
EXPLAINABLE = frozenset({"find", "aggregate", "count", "distinct", "update", "delete", "findAndModify",
                         "findandmodify", "insert"})
# Fields analysed first, whatever their place: variables before the expressions that read them, the
# collation before the comparisons it governs, upsert before the update it changes.
FIRST = ("collation", "let")


def check_fields(document: Mapping[str, Any], known: Mapping[str, Any] | frozenset[str], context: str,
                 *, generic: bool = False) -> None:
    """mongod's strict parse: every field known (or a generic argument), none twice."""
    duplicates = getattr(document, "duplicates", ())
    for name in document:
        if name not in known and not (generic and name in GENERIC_ARGUMENTS):
            raise CommandError(40415, f"BSON field '{context}.{name}' is an unknown field.")
    if duplicates:
        raise CommandError(40413, f"BSON field '{context}.{duplicates[0]}' is a duplicate field")


def analyse(command: Mapping[str, Any], name: str, scheme: Scheme, rules: Rules, database: str
            ) -> tuple[dict[str, Any], Analysis]:
    """The command with every field analysed by its role (rule fields removed), in its own order."""
    fields = COMMANDS[name]
    collection = command.get(name)
    if name not in ("aggregate", "bulkWrite") and not isinstance(collection, str):
        # mongod's parse of the namespace (aggregate may be 1: a collection-less pipeline).
        raise CommandError(73, f"collection name has invalid type {_type(collection)}", "InvalidNamespace")
    stripped = {key: value for key, value in command.items() if key not in rules.stripped and key != "$db"}
    check_fields({key: value for key, value in command.items() if key not in RULE_FIELDS and key != name},
                 fields, name, generic=True)
    analysis = scheme.new_analysis(rules)
    state = Command(name, analysis, stripped, database=database)
    result: dict[str, Any] = dict(stripped)
    order = [key for key in FIRST if key in stripped and key in fields]
    order += [key for key in stripped if key != name and key not in FIRST and key in fields]
    for key in order:
        try:
            result[key] = fields[key](key, stripped[key], state)
        except CommandError as refusal:
            refusal.locate(option=key)
            raise
    rewrite = REWRITES.get(name)
    return (rewrite(result) if rewrite is not None else result), analysis


COUNT_ORDER = ("count", "query", "limit", "skip", "hint", "collation", "readConcern", "maxTimeMS", "$queryOptions",
               "encryptionInformation")


def _whole(value: Any, field: str) -> Int64:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal128)):
        raise CommandError(2, f"{field} value is not a valid number")
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    return Int64(int(number))


def _count_result(result: dict[str, Any]) -> dict[str, Any]:
    """count as mongod's CountCommandRequest writes itself back: its fields in its order, limit and skip as
    64-bit integers (limit's absolute value), a hint given by name as `{$hint: name}`, `fields` dropped."""
    values = dict(result)
    values.pop("fields", None)
    if "limit" in values:
        values["limit"] = Int64(abs(_whole(values["limit"], "limit")))
    if "skip" in values:
        skip = _whole(values["skip"], "skip")
        if skip < 0:
            shown = notation.quoted_element("skip", values["skip"])
            raise CommandError(9, f"Expected a non-negative number in: {shown.shown}",
                               redacted=f"Expected a non-negative number in: {shown.redacted}")
        values["skip"] = skip
    if isinstance(values.get("hint"), str):
        values["hint"] = {"$hint": values["hint"]}
    ordered = {key: values[key] for key in COUNT_ORDER if key in values}
    ordered.update({key: value for key, value in values.items() if key not in ordered})
    return ordered


# Commands mongocryptd writes back from their parsed form rather than field by field.
REWRITES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"count": _count_result}
