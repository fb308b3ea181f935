"""mongocryptd's codes and messages for refusals both schemes share, in one table.

Each scheme adds its own table (`csfle.errors`, `qe.errors`) for what only it says; a rule raises by
key, and the scheme in force decides the wording where the two differ.
"""

from __future__ import annotations

from typing import NoReturn

from markd.errors import CommandError

# key -> (code, message template). Templates take keyword arguments (paths, names, types).
ERRORS: dict[str, tuple[int, str]] = {
    "through_encrypted": (51102, "Invalid operation on path '{path}' which contains an encrypted path prefix."),
    "conflicting_metadata": (51142, "Found conflicting encryption metadata for path: '{path}'"),
    "unknown_path": (31133, "Cannot get metadata for path whose encryption properties are not known until runtime."),
    "current_rebinding": (31152, "Rebinding of CURRENT disallowed"),
    # markd's own refusals, where mongocryptd passes a value through unexamined (docs/compatibility.md)
    "index_bounds": (2, "Index bounds '{bound}' cannot refer to the encrypted field '{path}' with automatic "
                        "encryption"),
    "search_encrypted": (
        31011,
        "Aggregation stage {stage} is not allowed or supported with automatic encryption when it names the "
        "encrypted field '{path}'",
    ),
    "search_opaque": (
        31011,
        "Aggregation stage {stage} is not allowed or supported with automatic encryption unless every path it "
        "names is known and unencrypted",
    ),
    "stored_source": (6837101, "'returnStoredSource' must be false if collection contains encrypted fields."),
    "stage_unsupported": (31011, "Aggregation stage {stage} is not allowed or supported with automatic encryption."),
    "collation_not_object": (31084, "collation command parameter must be of type Object"),
    "view": (7501300, "Creating a view is not supported with automatic encryption"),
    "sort": (51201, "Sorting on key '{path}' is not allowed due to encryption."),
    "unwind_encrypted": (31153, "$unwind is not allowed on a field which is encrypted with the randomized algorithm"),
    "prefix_in_output": (31129, "Referencing a prefix of an encrypted field is not supported"),
    "variable_in_output": (31127, "Access to variable {name} disallowed"),
    "add_below_encrypted": (51096, "Cannot add a field to an existing encrypted field"),
    "group_key": (
        51222,
        "Cannot group on field '{path}' which is encrypted with the random algorithm or whose encryption "
        "properties are not known until runtime",
    ),
    "accumulator": (51221, "Accumulator '{op}' cannot aggregate encrypted fields."),
    "accumulator_initializer": (
        4544715,
        "Accumulator '{op}' must have a constant initializer (initArgs) when the group key contains encrypted "
        "fields.",
    ),
    "add_to_set": (
        51223,
        "'{field}' cannot have fields encrypted with the random algorithm or whose encryption properties are not "
        "known until runtime when used in an $addToSet accumulator.",
    ),
    "bucket_auto": (51238, "'groupBy' expression cannot reference encrypted fields or their prefixes."),
    "replace_root": (31159, "$replaceRoot cannot have an encrypted field as root"),
    "geo_near_key": (51212, "'key' field '{field}' in the $geoNear aggregation stage cannot be encrypted."),
    "lookup_let": (51208, "Non-empty 'let' field is not allowed in the $lookup aggregation stage over an encrypted "
                          "collection."),
    "lookup_local_child": (51206, "'localField' '{field}' in the $lookup aggregation stage cannot have an encrypted "
                                  "child."),
    "lookup_foreign_child": (
        51207, "'foreignField' '{field}' in the $lookup aggregation stage cannot have an encrypted child."),
    "lookup_encrypted": (6331103, "Cannot refer to encrypted field in $lookup 'localField' or 'foreignField'"),
    "lookup_mismatch": (
        51210,
        "'localField' '{local} and 'foreignField' '{foreign}' in the $lookup aggregation stage need to be both "
        "unencypted or be encrypted with the same encryption properties.",
    ),
    "lookup_random": (
        51211,
        "'localField' '{local} and 'foreignField' '{foreign}' in the $lookup aggregation stage need to be both "
        "encrypted with deterministic algorithm.",
    ),
    "graph_from_child": (51230, "'connectFromField' '{field}' in the $graphLookup aggregation stage cannot have an "
                                "encrypted child."),
    "graph_to_child": (51231, "'connectToField' '{field}' in the $graphLookup aggregation stage cannot have an "
                              "encrypted child."),
    "graph_encrypted": (6331101, "Cannot refer to encrypted field in $graphLookup 'connectFromField' or "
                                 "'connectToField'"),
    "graph_mismatch": (
        51232,
        "'connectFromField' '{source}' and 'connectToField' '{target}' in the $graphLookup aggregation stage need "
        "to be both unencypted or be encrypted with the same encryption properties.",
    ),
    "graph_random": (
        51233,
        "'connectFromField' '{source}' and 'connectToField' '{target}' in the $graphLookup aggregation stage need "
        "to be both encrypted  with the deterministic algorithm.",
    ),
    "other_collection": (51204, "Pipeline over an encrypted collection cannot reference additional collections."),
    "missing_ns_schema": (9710000, "Missing encryption schema for namespace: {ns}"),
    # writes
    "array_on_prefix": (31006, "An array at path '{path}' would violate the schema"),
    "set_prefix": (51159, "Cannot $set to a path {path} that is an encrypted prefix to a non-object type"),
    "id_required": (51130, "_id must be explicitly provided when configured as encrypted"),
    "timestamp_zero": (
        51129,
        "A command that inserts cannot supply Timestamp(0, 0) for an encrypted top-level field at path {path}",
    ),
    "positional": (51149, "Cannot encrypt fields below '$' positional update operator"),
    "update_op": (51150, "{op} not allowed on encrypted values"),
    "rename_encrypted": (6329901, "$rename between encrypted fields is not permitted with Queryable Encryption"),
    "rename_metadata": (51160, "$rename between two encrypted fields must have the same metadata or both be "
                               "unencrypted"),
    "rename_prefix": (51161, "$rename is not allowed on an object containing encrypted fields"),
    "pipeline_update_upsert_id": (31150, "Pipelines in update are not allowed with an encrypted '_id' and 'upsert: "
                                         "true'"),
    "pipeline_fam_upsert_id": (31151, "Pipelines in findAndModify are not allowed with an encrypted '_id' and "
                                      "'upsert: true'"),
    "multi_update": (6329900, "Multi-document updates are not allowed with Queryable Encryption"),
    # distinct, validators, indexes
    "distinct_pointer": (51131, "The distinct key is not allowed to be marked for encryption with a non-UUID keyId"),
    "distinct_random": (
        31026,
        "Distinct key is not allowed to be marked for encryption with the randomized encryption algorithm",
    ),
    "distinct_collation": (31058, "Distinct key cannot be an encrypted string field if the collation is non-simple"),
    "distinct_prefix": (31027, "Distinct key is not allowed to be a prefix of an encrypted field"),
    "validator_compare": (6491100, "Comparison to encrypted fields not supported in collection validator."),
    "partial_filter_compare": (6491102, "Comparison to encrypted fields not supported in a partialFilterExpression."),
    # match language
    "null_equality": (51095, "Illegal equality to null predicate for encrypted field: '{path}'"),
    "regex_in": (51015, "Illegal regex inside $in against an encrypted field: '{path}'"),
    "null_in": (51120, "Illegal equality to null inside $in against an encrypted field: '{path}'"),
    "eq_array_prefix": (31007, "$eq to array predicate is illegal for prefix of encrypted path: {expr}"),
    "in_array_prefix": (31008, "Illegal $in element for prefix '{path}' of encrypted path: {element}"),
    "bulk_write_admin": (73, "BulkWrite has to be executed against the admin database"),
    "unsupported_match": (51094, "Unsupported match expression operator for encryption: {expr}"),
    "elem_match": (6890100, "$elemMatch is unsupported on encrypted fields: {expr}"),
    "invalid_on_encrypted": (51092, "Invalid match expression operator on encrypted field '{path}': {expr}"),
    "prefix_reference": (31131, "Found forbidden reference to prefix of encrypted field {path}"),
    "collation_compare": (
        31054,
        "cannot apply non-simple collation when comparing to element {element} with client-side encryption",
    ),
    "variable": (31121, "Access to variable {name} disallowed"),
    "expression_arity": (16020, "Expression {op} takes exactly 2 arguments. {count} were passed in."),
}


class Quoted:
    """A part of a message that quotes values from the command: shown as they are, or (redacted) as types."""

    __slots__ = ("redacted", "shown")

    def __init__(self, shown: str, redacted: str) -> None:
        self.shown = shown
        self.redacted = redacted

    def __str__(self) -> str:
        return self.shown


def error(key: str, /, table: dict[str, tuple[int, str]] | None = None, **fields: object) -> CommandError:
    """The CommandError for `key`, from `table` when it has the key, else from the shared table."""
    code, template = (table or {}).get(key) or ERRORS[key]
    if not fields:
        refusal = CommandError(code, template)
    elif not any(isinstance(value, Quoted) for value in fields.values()):
        refusal = CommandError(code, template.format(**fields))
    else:
        redacted = template.format(**{name: value.redacted if isinstance(value, Quoted) else value
                                      for name, value in fields.items()})
        refusal = CommandError(code, template.format(**fields), redacted=redacted)
    refusal.rule = key
    refusal.names = {name: value for name, value in fields.items() if isinstance(value, str) and name in NAME_FIELDS}
    return refusal


# Message fields that name things (never values): what explanations and logs may repeat.
NAME_FIELDS = frozenset({"path", "op", "stage", "field", "local", "foreign", "source", "target", "name", "keyword",
                         "bound", "ns", "namespace", "a", "b", "type", "command", "reads"})


def fail(key: str, /, **fields: object) -> NoReturn:
    raise error(key, **fields)
