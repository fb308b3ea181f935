"""Why a command was refused, in words: for `markd check` and for the daemon's refusal log lines.

Every refusal the analysis raises is a `CommandError` carrying `.rule` (the key of the error table
that refused: `markd/analysis/errors.py`, `csfle/errors.py`, `qe/errors.py`) and `.names` (the
path, operator, stage and command field it was analysing: names only, never a value).  `explain`
turns those, plus the rules themselves (how the path is encrypted), into a `Refusal`: mongocryptd's
code and message, the path, how it is encrypted, the operator / stage / expression refused there,
and what is allowed instead.  `log_attributes` is the part the daemon logs.

Each rule key belongs to one class (`CLASSES`): `encryption` (the command does something automatic
encryption cannot do on encrypted data: the hints below say what to do instead), `malformed` (mongod
would refuse the command with or without encryption), `rules` (the jsonSchema / encryptedFields are
invalid) or `envelope` (the rules the command carries do not fit it: which namespaces, which fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markd.errors import CommandError

ENCRYPTION, MALFORMED, RULES, ENVELOPE, INTERNAL = "encryption", "malformed", "rules", "envelope", "internal"

# Raised while the rules themselves are read (markd check reports these as bad input).
RULES_KEYS = frozenset({
    # CSFLE jsonSchema
    "unknown_keyword", "duplicate_keyword", "duplicate_property", "duplicate_value", "idl_duplicate",
    "encrypt_with_bsontype", "encrypt_with_type", "type_and_bsontype", "keyword_object",
    "keyword_string", "keyword_unimplemented", "nested_not_object", "encrypt_and_metadata", "metadata_empty",
    "type_set_type", "type_set_elements", "type_integer", "type_duplicate", "unknown_bson_type",
    "encrypt_not_allowed", "encrypt_siblings", "id_algorithm", "metadata_not_allowed", "no_algorithm", "no_key_id",
    "keyword_unsupported", "keyword_remote_only", "deterministic_one_type", "deterministic_pointer",
    "schema_type_illegal", "encrypt_field", "metadata_field", "bad_algorithm", "idl_wrong_type", "bad_pointer",
    "key_id_kind", "key_id_not_bindata", "key_id_not_uuid", "key_id_uuid_length", "key_id_empty",
    # QE encryptedFields
    "BAD_FIELD", "EMPTY_PATH", "ENCRYPT_ID", "NEEDS_BSON_TYPE", "EQUALITY_TYPE", "UNINDEXED_TYPE", "RANGE_TYPE",
    "TEXT_TYPE", "UNKNOWN_QUERY_TYPE",
    "SPARSITY_RANGE", "MIN_TYPE", "MAX_TYPE", "MIN_LT_MAX", "PRECISION_TOGETHER", "PRECISION_NOT_ALLOWED",
    "PRECISION_MIN_DIGITS_DOUBLE", "PRECISION_MAX_DIGITS_DOUBLE", "PRECISION_MIN_DIGITS_DECIMAL",
    "PRECISION_MAX_DIGITS_DECIMAL", "PRECISION_DOMAIN_DOUBLE", "PRECISION_DOMAIN_DECIMAL", "CONTENTION_NEGATIVE",
    "TRIM_FACTOR", "TEXT_MIN_GT_MAX", "TEXT_MAX_GT_LENGTH", "TEXT_NO_QUERIES", "TEXT_TOO_MANY", "TEXT_COMBINATION",
    "ADD_BELOW_ENCRYPTED", "SCHEMA_NOT_OBJECT", "DUPLICATE_FIELD",
})
# Families of rules keys the QE table generates per option ("NOT_ALLOWED:range:strMaxLength", ...).
RULES_FAMILIES = frozenset({"NOT_ALLOWED", "TEXT_REQUIRED", "TEXT_SAME"})
# The rule fields a command carries, against the command (libmongocrypt writes them; markd check too).
ENVELOPE_KEYS = frozenset({
    "schema_not_object", "remote_not_bool", "schema_required", "remote_required", "multi_remote_required",
    "multi_schema_required", "idl_missing", "idl_unknown", "schema_and_multi", "remote_and_multi",
    "multi_only_aggregate", "multi_not_object", "ns_schema_not_object", "ns_mismatch", "missing_ns_schema",
    "other_collection",
    "INFO_NOT_OBJECT", "BOTH_SCHEMAS", "BOTH_REMOTE", "ONE_NAMESPACE", "NAMESPACE_MISMATCH", "SCHEMA_TYPE",
    "MISSING_SCHEMA", "MIXED_SCHEMAS", "BAD_TYPE_FIELD", "MULTI_NAMESPACE_MISMATCH", "BOTH_SCHEMAS_MULTI",
    "MULTI_ONLY_AGGREGATE", "BULK_NEEDS_INFO", "bulk_write_admin",
})
# mongod's own parse errors: the command is malformed, encrypted fields or not.
MALFORMED_KEYS = frozenset({"collation_not_object", "expression_arity", "TEXT_ARGUMENT"})

_RANGE_BOUNDS = "Range queries must stay within the field's min and max{bounds}."
_CONTEXT = ("Comparisons with encrypted fields work only in a query filter's $expr (find's filter, $match), not in "
            "computed fields, group keys or accumulators.")
_NULL = "null is never encrypted, so it cannot equal a ciphertext: test a missing field with {{$exists: false}}."
_JOIN_CHILD = "`{path}` holds encrypted fields below it: join on one of its leaf fields."
_JOIN_SAME = ("Both join fields must be unencrypted, or encrypted alike (same key, algorithm and type): `{path}` "
              "and `{other}` are not.")

# rule -> (what to do instead, whether the path's allowed operators follow). `{path}`, `{other}`,
# `{operator}`, `{stage}`, `{encrypted}` (the encrypted ancestor) and `{bounds}` are filled in.
HINTS: dict[str, tuple[str, bool]] = {
    # paths and schemas
    "through_encrypted": ("`{path}` goes below the encrypted field `{encrypted}`: a ciphertext has no subfields; "
                          "only `{encrypted}` itself can be queried, as its encryption allows.", True),
    "conflicting_metadata": ("Several subschemas (properties, patternProperties, additionalProperties) govern "
                             "`{path}` and disagree about its encryption: make them agree.", False),
    "unknown_path": ("Here markd cannot tell what `{path}` holds: an earlier stage ($lookup, $group, $unwind, a "
                     "$cond over different fields...) produced it. Refer to the collection's own fields, before "
                     "that stage.", False),
    "current_rebinding": ("Rebinding CURRENT in $let is not supported with automatic encryption: bind a variable "
                          "of another name.", False),
    "index_bounds": ("min/max index bounds are compared with stored ciphertext: drop the bound on `{path}`, or "
                     "bound an unencrypted index instead.", False),
    "search_encrypted": ("A search index cannot index ciphertext: name only unencrypted paths in {stage}.", False),
    "search_opaque": ("markd must see every path {stage} reads to know none is encrypted: name the paths "
                      "explicitly (no wildcards or dynamic mappings).", False),
    "stored_source": ("Set returnStoredSource: false on a collection with encrypted fields.", False),
    "stage_unsupported": ("{stage} is not one of the stages automatic encryption analyses ({supported}): run it "
                          "without auto encryption, or on results the application has decrypted.", False),
    "view": ("Automatic encryption cannot create views: create the view with a client that has no auto "
             "encryption.", False),
    # aggregation
    "sort": ("The server would sort ciphertext, whose order says nothing about the values: sort on an "
             "unencrypted field, or sort the decrypted results in the application.", True),
    "unwind_encrypted": ("$unwind would have to read the array inside the ciphertext of `{path}`: unwind an "
                         "unencrypted array.", True),
    "prefix_in_output": ("A stage output cannot copy a whole object holding encrypted fields: project its fields "
                         "one by one.", False),
    "variable_in_output": ("A whole document variable ($$ROOT, $$CURRENT) cannot become an output field with "
                           "automatic encryption: name the fields you need.", False),
    "add_below_encrypted": ("`{path}` lies below an encrypted field: a stage cannot add a subfield to a "
                            "ciphertext. Choose another output name.", False),
    "group_key": ("Grouping compares values: a group key may hold unencrypted or CSFLE deterministic fields "
                  "only (randomized and Queryable Encryption ciphertexts of equal values differ).", True),
    "accumulator": ("{operator} computes from the values, and the server holds only their ciphertext: "
                    "accumulate unencrypted fields, or compute in the application after decryption.", True),
    "accumulator_initializer": ("With an encrypted group key, $accumulator's initArgs must be constants.", False),
    "add_to_set": ("$addToSet compares values to remove duplicates, and randomized ciphertexts of equal values "
                   "differ: use $push, or a deterministic field.", True),
    "bucket_auto": ("$bucketAuto orders the groupBy values, and ciphertext has no order: group by an unencrypted "
                    "field.", True),
    "replace_root": ("The new root would be a ciphertext, not a document: replace the root with an unencrypted "
                     "object.", True),
    "geo_near_key": ("$geoNear's key must be an unencrypted geospatial field.", True),
    "lookup_let": ("$lookup with let over an encrypted collection is not supported: join with "
                   "localField/foreignField.", False),
    "lookup_local_child": (_JOIN_CHILD, False),
    "lookup_foreign_child": (_JOIN_CHILD, False),
    "graph_from_child": (_JOIN_CHILD, False),
    "graph_to_child": (_JOIN_CHILD, False),
    "lookup_encrypted": ("Queryable Encryption ciphertexts are randomized: the server cannot match them in a join. "
                         "Join on unencrypted fields.", False),
    "graph_encrypted": ("Queryable Encryption ciphertexts are randomized: the server cannot match them in a "
                        "$graphLookup. Connect on unencrypted fields.", False),
    "lookup_mismatch": (_JOIN_SAME, False),
    "graph_mismatch": (_JOIN_SAME, False),
    "lookup_random": ("A join compares ciphertexts: both fields must be deterministic.", False),
    "graph_random": ("$graphLookup compares ciphertexts: both fields must be deterministic.", False),
    # writes
    "array_on_prefix": ("`{path}` holds encrypted fields: an array there is refused (the rules cannot say which "
                        "element holds what). Write an object.", False),
    "set_prefix": ("`{path}` holds encrypted fields: $set it to an object (whose encrypted fields are then "
                   "encrypted), or $set its fields one by one; not a scalar or an array.", False),
    "id_required": ("_id is encrypted, so it cannot be generated by the server: give _id explicitly.", False),
    "timestamp_zero": ("mongod replaces Timestamp(0, 0) by the current time, after encryption: give `{path}` a "
                       "real timestamp.", False),
    "positional": ("The positional operator cannot reach below an encrypted field: $set the whole field.", False),
    "update_op": ("{operator} computes from the stored value, a ciphertext for `{path}`: $set the new value "
                  "instead (computed by the application).", False),
    "rename_encrypted": ("Queryable Encryption binds a ciphertext to its path: $rename cannot move `{path}`. Read "
                         "it, then $set the new field and $unset the old one.", False),
    "rename_metadata": ("$rename moves a ciphertext as it is: source and target must be encrypted alike (or both "
                        "unencrypted).", False),
    "rename_prefix": ("$rename cannot move an object holding encrypted fields: rename its unencrypted fields one "
                      "by one.", False),
    "pipeline_update_upsert_id": ("With an encrypted _id and upsert: true, use an update document ($set...) "
                                  "instead of a pipeline.", False),
    "pipeline_fam_upsert_id": ("With an encrypted _id and upsert: true, use an update document ($set...) instead "
                               "of a pipeline.", False),
    "pipeline_update_schema": ("A pipeline update may not write encrypted fields or add fields the rules do not "
                               "describe: use an update document ($set) for those.", False),
    "multi_update": ("Queryable Encryption updates one document at a time: use multi: false (update_one), or "
                     "update each document.", False),
    "bulk_single_namespace": ("Automatic encryption's bulkWrite writes to one collection: send one bulkWrite per "
                              "collection.", False),
    "bulk_write_csfle": ("mongocryptd analyses bulkWrite for Queryable Encryption only: with CSFLE use insert, "
                         "update and delete (a collection's bulk_write).", False),
    "value_type_illegal": ("No encryption holds this type here: deterministic encryption refuses double, decimal, "
                           "bool, object, array and javascriptWithScope; nothing encrypts null, undefined, minKey "
                           "or maxKey.", False),
    "value_type_mismatch": ("The rules say `{path}` holds {types}: give a value of that type.", False),
    "pointer_not_static": ("A keyId JSON pointer chooses the key per document: it works for inserts and "
                           "replacements only, not in queries or $set.", False),
    "pointer_missing": ("The document written must hold the field the keyId pointer names, with the key's "
                        "keyAltName as an unencrypted string.", False),
    "pointer_encrypted": ("The field the keyId pointer names must itself be unencrypted.", False),
    "pointer_not_string": ("The field the keyId pointer names must hold the key's keyAltName, a string.", False),
    # distinct, validators, indexes
    "distinct_pointer": ("distinct cannot know the key of a field whose keyId is a JSON pointer: give it a keyId "
                         "UUID.", False),
    "distinct_random": ("distinct compares values, and randomized ciphertexts of equal values differ: distinct on "
                        "a deterministic or unencrypted field.", True),
    "distinct_collation": ("Ciphertext equality cannot honour a collation: use the simple collation for distinct "
                           "on `{path}`.", False),
    "distinct_prefix": ("`{path}` holds encrypted fields: distinct on one of its fields.", True),
    "validator_compare": ("The server evaluates a validator against stored ciphertext: compare only unencrypted "
                          "fields in it ($exists works on encrypted ones).", False),
    "partial_filter_compare": ("The server evaluates a partialFilterExpression against stored ciphertext: compare "
                               "only unencrypted fields in it ($exists works on encrypted ones).", False),
    "validator_schema": ("A $jsonSchema validator must say what the rules say about encryption.", False),
    # the match language
    "null_equality": (_NULL, True),
    "null_in": ("null cannot equal a ciphertext: take null out of the $in and test {{$exists: false}} "
                "separately.", True),
    "regex_in": ("A regex cannot match a ciphertext: list exact values in the $in.", True),
    "eq_array_prefix": ("`{path}` holds encrypted fields: compare its fields, not the whole value with an "
                        "array.", True),
    "in_array_prefix": ("`{path}` holds encrypted fields: an array in its $in could spell out encrypted values; "
                        "compare its fields instead.", True),
    "unsupported_match": ("{operator} is not supported on a collection with encrypted fields: it cannot see "
                          "through ciphertext.", False),
    "elem_match": ("$elemMatch cannot look into encrypted values, nor into arrays above them.", True),
    "invalid_on_encrypted": ("{operator} reads the value itself, and the server holds only its ciphertext.", True),
    "range_on_encrypted": ("Deterministic ciphertexts do not keep the order of their values.", True),
    "range_holding_encrypted": ("A range comparison with an object holding encrypted fields cannot work: compare "
                                "its fields.", True),
    "random_query": ("Randomized ciphertexts of equal values differ: the server cannot match them.", True),
    "collation_compare": ("Ciphertext equality cannot honour a collation: use the simple collation (or none) for "
                          "queries on `{path}`.", True),
    "prefix_reference": ("`{path}` holds encrypted fields: an expression cannot read it whole; use its unencrypted "
                         "fields.", True),
    "variable": ("An expression cannot use a whole document ($$ROOT, $$CURRENT) when it holds encrypted fields: "
                 "name the fields.", False),
    # expressions (CSFLE)
    "text_fle2_only": ("{operator} needs a Queryable Encryption text field (queryType prefix, suffix or "
                       "substring).", False),
    "evaluated": ("{operator} would compute with the ciphertext of `{path}`.", True),
    "compare_enc_plain": ("In an expression an encrypted field is compared only with constants, or with fields "
                          "encrypted alike.", True),
    "compare_plain_enc": ("In an expression an encrypted field is compared only with constants, or with fields "
                          "encrypted alike.", True),
    "compare_algorithms": ("The fields compared are encrypted differently (key, algorithm or type): their "
                           "ciphertexts cannot be compared.", True),
    "compare_random": ("Randomized ciphertexts cannot be compared.", True),
    "compare_evaluated": ("An encrypted field is compared here with a computed value ({operator}): compare it "
                          "with a constant.", True),
    # Queryable Encryption
    "CANNOT_ENCRYPT_TYPE": ("Queryable Encryption cannot encrypt this type.", False),
    "WRONG_TYPE": ("The rules say `{path}` holds {types}: give a value of that type.", False),
    "NOT_EQUALITY_INDEXED": ("Only fields with queryType equality (or range) can be compared for equality.", True),
    "NOT_RANGE_INDEXED": ("$gt, $gte, $lt and $lte need queryType range.", True),
    "NOT_RANGE_INDEXED_IN_AND": ("$gt, $gte, $lt and $lte need queryType range.", True),
    "IN_NESTED_ARRAY": ("An array is never encrypted here: list scalar values in the $in.", True),
    "OBJECT_COMPARISON": ("`{path}` holds encrypted fields: compare its fields one by one, not the whole "
                          "object.", True),
    "INT_COERCION": ("The value does not fit the int range index of `{path}`: give an int32.", True),
    "EXPR_CLOSED_OUT_OF_BOUNDS": (_RANGE_BOUNDS, True),
    "RANGE_OUT_OF_BOUNDS": (_RANGE_BOUNDS, True),
    "LOWER_OUT_OF_BOUNDS": (_RANGE_BOUNDS, True),
    "UPPER_OUT_OF_BOUNDS": (_RANGE_BOUNDS, True),
    "EXPR_OUT_OF_BOUNDS": (_RANGE_BOUNDS, True),
    "BOUND_NAN": ("NaN cannot be a range bound.", True),
    "BOUND_NAN_DECIMAL": ("NaN cannot be a range bound.", True),
    "EXPR_IN_CONTEXT": (_CONTEXT, True),
    "EXPR_CONTEXT": (_CONTEXT, True),
    "EXPR_CONTEXT_AND": (_CONTEXT, True),
    "EXPR_IN_RANGE_PREFIX": ("`{path}` holds a range field: $in cannot compare the whole object.", True),
    "IN_RANGE_PREFIX": ("`{path}` holds a range field: $in cannot compare the whole object.", True),
    "DATE_MISMATCH": ("A range value must have the field's type ({types}): dates for date fields, numbers for "
                      "numeric ones.", True),
    "RANGE_VALUE_TYPE": ("A range value must have the field's type ({types}).", True),
    "NO_COERCION": ("A range value must have the field's type ({types}): int and long convert to each other, "
                    "double and decimal do not.", True),
    "EXPR_IN_CONSTANT": ("$in on an encrypted field needs an array of constants.", True),
    "TEXT_ON_NON_TEXT": ("{operator} works on Queryable Encryption text fields only.", True),
    "NO_PREFIX_INDEX": ("{operator} needs queryType prefix on `{path}`.", True),
    "NO_SUFFIX_INDEX": ("{operator} needs queryType suffix on `{path}`.", True),
    "NO_SUBSTRING_INDEX": ("{operator} needs queryType substring on `{path}`.", True),
    "TEXT_INPUT": ("{operator}'s input must be an encrypted text field (\"$field\").", False),
    "TEXT_STRING": ("{operator} needs a constant string.", True),
    "JSON_SCHEMA_VALIDATOR": ("A Queryable Encryption collection cannot have a $jsonSchema validator: validate "
                              "unencrypted fields with query operators.", False),
    "INDEX_ON_ENCRYPTED": ("An index over ciphertext serves no query: Queryable Encryption keeps its own indexes "
                           "for encrypted fields. Index unencrypted fields only.", False),
    "EXPRESSION": ("In an expression `{path}` can only be compared with constants in a query filter's $expr, or "
                   "moved whole ({{x: \"${path}\"}}).", True),
    "NON_CONSTANT_COMPARISON": ("Compare `{path}` with a constant, not with another expression.", True),
    "ENCRYPTED_PREFIX_OF_ENCRYPTED": ("The stage would put encrypted values at or above `{path}`, where encrypted "
                                      "values already are: choose another output name.", False),
    "TWO_ENCRYPTED": ("Two Queryable Encryption fields cannot be compared with each other.", True),
    "COMPARE_UNINDEXED": ("A field without queries cannot be compared, not even for equality.", True),
    "BULK_ONLY_INSERT": ("With Queryable Encryption a bulkWrite of several operations may only insert: send "
                         "updates and deletes one by one.", False),
    "BULK_ONE_NAMESPACE": ("Automatic encryption's bulkWrite writes to one collection: send one bulkWrite per "
                           "collection.", False),
}

CLASS_HINTS = {
    MALFORMED: "mongod would refuse this command with or without encryption: fix the command itself.",
    RULES: "The encryption rules are invalid: fix them (mongod refuses them as mongocryptd does).",
    ENVELOPE: ("The encryption rules the command carries do not fit it: every namespace the command reads needs "
               "its rules."),
    INTERNAL: "markd failed to analyse this command: this is a bug in markd; please report it (no value is logged).",
}


def rule_class(rule: str | None, code: int = 0) -> str:
    """The class of a refusal (see the module docstring); an error without a rule is mongod's own parse error."""
    if rule is None:
        return INTERNAL if code == 1 else MALFORMED
    for keys, name in ((RULES_KEYS, RULES), (ENVELOPE_KEYS, ENVELOPE), (MALFORMED_KEYS, MALFORMED)):
        if rule in keys:
            return name
    if rule.partition(":")[0] in RULES_FAMILIES and ":" in rule:
        return RULES
    return ENCRYPTION


# Refusals of a value whose encryption is only known at run time.
UNKNOWN_RULES = frozenset({"unknown_path"})
# Refusals whose path is the unencrypted side of a comparison.
PLAIN_PATH_RULES = frozenset({"compare_plain_enc"})

# Where the names of a refusal say its path is, first found first (two-path rules name both).
PATH_NAMES = ("path", "field", "local", "source", "a", "reads")
OTHER_PATH_NAMES = {"local": "foreign", "source": "target", "a": "b"}


def path_of(names: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(path, the other path of a two-path rule) named by a refusal."""
    for name in PATH_NAMES:
        if names.get(name):
            return names[name], names.get(OTHER_PATH_NAMES.get(name, ""))
    return None, None


def operator_of(names: Mapping[str, str]) -> str | None:
    """The operator, expression or stage refused: the innermost one the analysis was in."""
    return names.get("operator") or names.get("op") or names.get("stage") or names.get("bound")


def reads_of(names: Mapping[str, str], path: str | None) -> str | None:
    """The encrypted field a refused output (a group key, an accumulator) was computed from, if not `path`."""
    reads = names.get("reads")
    return reads if reads and not reads.startswith("$") and reads != path else None


def log_attributes(error: CommandError) -> dict[str, Any]:
    """What the daemon logs of a refusal: code, rule and names, never a value."""
    path, _ = path_of(error.names)
    attributes: dict[str, Any] = {"code": error.code, "codeName": error.code_name, "rule": error.rule or "",
                                  "path": path or ""}
    operator = operator_of(error.names)
    if operator:
        attributes["operator"] = operator
    for name in ("stage", "option"):
        if error.names.get(name):
            attributes[name] = error.names[name]
    return attributes


# -- how a path is encrypted --------------------------------------------------------------------------


@dataclass(frozen=True)
class Encryption:
    """What the rules say about one path: `kind` picks the allowed-operators sentence."""

    kind: str  # deterministic, random, qe-equality, qe-range, qe-text, qe-unindexed, prefix, unknown, plain
    description: str
    encrypted: str | None = None  # the encrypted ancestor, for a path below one
    bounds: str = ""  # a range field's [min, max]
    types: str = ""  # the BSON types the field holds
    text_operators: str = ""

    def allowed(self, path: str) -> str:
        return ALLOWED.get(self.kind, "").format(path=path, bounds=self.bounds, types=self.types,
                                                 text=self.text_operators)


ALLOWED = {
    "deterministic": ("`{path}` is deterministic, so equality only: $eq, $ne, $in, $nin (and $exists), and in "
                      "expressions $eq, $ne, $in against constants; range queries need a Queryable Encryption "
                      "range field."),
    "random": ("`{path}` is randomized: it can be written, returned and tested with $exists, never compared; to "
               "query it by equality encrypt it with AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic, or make it a "
               "Queryable Encryption equality field."),
    "qe-equality": ("`{path}` is a Queryable Encryption equality field: $eq, $ne, $in, $nin (and $exists), and in "
                    "a filter's $expr $eq, $ne, $in against constants; $gt, $gte, $lt, $lte need queryType "
                    "range."),
    "qe-range": ("`{path}` is a Queryable Encryption range field: $eq, $ne, $in, $nin, $gt, $gte, $lt, $lte "
                 "against constants within {bounds}, in filters and in a filter's $expr."),
    "qe-text": ("`{path}` is a Queryable Encryption text field: in a filter's $expr {text} against a constant "
                "string; nothing else compares it."),
    "qe-unindexed": ("`{path}` is a Queryable Encryption field without queries: it can be written and tested with "
                     "$exists only; give it queries {{queryType: equality}} (or range) to query it."),
    "qe-unindexable": ("`{path}` is a Queryable Encryption field without queries, and its type ({types}) cannot have "
                       "any: it can be written and tested with $exists only; to query what it holds, encrypt its "
                       "fields one by one instead."),
    "prefix": ("`{path}` is an object holding encrypted fields: query those fields one by one, with what each "
               "allows."),
    "unknown": "",
    "plain": "",
}
TEXT_OPERATORS = {"prefix": "$encStrStartsWith", "suffix": "$encStrEndsWith", "substring": "$encStrContains"}


def _types(encryption: Any) -> str:
    types = sorted(getattr(encryption, "bson_types", None) or getattr(encryption, "types", ()) or ())
    return " or ".join(types) if types else "any type"


def describe(schema: Any, path: str) -> Encryption:
    """How `path` is encrypted under `schema` (a parsed `markd.analysis.schema.Schema`)."""
    from markd.analysis import paths as path_parts
    from markd.analysis.schema import NOT_ENCRYPTED, PREFIX, UNKNOWN, leaves, lookup, subtree

    try:
        metadata = lookup(schema.root, path)
    except CommandError:
        # Below an encrypted field: describe that field.
        parts = path_parts.split(path)
        for end in range(1, len(parts)):
            ancestor = path_parts.join(parts[:end])
            try:
                found = lookup(schema.root, ancestor)
            except CommandError:
                break
            if found not in (NOT_ENCRYPTED, PREFIX, UNKNOWN):
                inner = _describe_leaf(found)
                return Encryption(inner.kind, f"below the encrypted field {ancestor} ({inner.description})",
                                  ancestor, inner.bounds, inner.types, inner.text_operators)
        return Encryption("unknown", "its encryption could not be determined")
    if metadata is NOT_ENCRYPTED:
        return Encryption("plain", "not encrypted")
    if metadata is UNKNOWN:
        return Encryption("unknown", "only known at run time")
    if metadata is PREFIX:
        below = [f"{path_parts.join(path, leaf_path) if leaf_path else path}" for leaf_path, _ in
                 leaves(subtree(schema.root, path))]
        listed = ", ".join(below[:8]) + (", ..." if len(below) > 8 else "")
        return Encryption("prefix", f"not encrypted itself; holds encrypted fields: {listed or 'by pattern'}")
    return _describe_leaf(metadata)


def _describe_leaf(encryption: Any) -> Encryption:
    from markd.analysis.csfle.jsonschema import ALGORITHM_NAMES, Encrypted
    from markd.analysis.qe.fields import EncryptedField

    types = _types(encryption)
    if isinstance(encryption, Encrypted):
        key = f"keyId JSON pointer {encryption.key}" if encryption.pointer else f"key {_uuid(encryption.key)}"
        kind = "deterministic" if encryption.deterministic else "random"
        return Encryption(kind, f"CSFLE {kind} ({ALGORITHM_NAMES.get(encryption.algorithm, '?')}), bsonType "
                                f"{types}, {key}", types=types)
    if isinstance(encryption, EncryptedField):
        query_types = [query.query_type for query in encryption.queries]
        base = f"bsonType {types}, key {_uuid(encryption.key_id)}"
        if not query_types:
            from markd.analysis.qe.fields import EQUALITY_TYPES, RANGE_TYPES

            queryable = encryption.bson_type in EQUALITY_TYPES | RANGE_TYPES
            return Encryption("qe-unindexed" if queryable else "qe-unindexable",
                              f"Queryable Encryption, unindexed (no queries), {base}", types=types)
        if "range" in query_types:
            config = encryption.range
            bounds = f"[{_number(config.min)}, {_number(config.max)}]"
            return Encryption("qe-range", f"Queryable Encryption, queryType range {bounds}, {base}", bounds=bounds,
                              types=types)
        if "equality" in query_types:
            return Encryption("qe-equality", f"Queryable Encryption, queryType equality, {base}", types=types)
        operators = " or ".join(TEXT_OPERATORS[q] for q in query_types if q in TEXT_OPERATORS)
        return Encryption("qe-text", f"Queryable Encryption, text search (queryType {', '.join(query_types)}), "
                                     f"{base}", types=types, text_operators=operators)
    return Encryption("unknown", "encrypted")


def _uuid(key: Any) -> str:
    from bson.binary import Binary, UuidRepresentation

    if isinstance(key, Binary):
        try:
            return str(key.as_uuid(UuidRepresentation.STANDARD))
        except ValueError:
            return key.hex()
    return str(key)


def _number(value: Any) -> str:
    from markd.analysis.qe.fields import numeric

    try:
        return str(numeric(value))
    except TypeError:
        return str(value)


# -- the refusal -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A refused command, explained. `to_dict()` is the `refusal` of `markd check --json`."""

    code: int
    code_name: str
    errmsg: str
    rule: str | None
    kind: str  # encryption, malformed, rules, envelope, internal
    command: str
    path: str | None = None
    other_path: str | None = None
    reads: str | None = None  # the field `path` was computed from, when the refusal is about that
    encryption: str | None = None  # how `path` (or `reads`) is encrypted, in words
    operator: str | None = None  # the operator, expression or stage refused
    stage: str | None = None
    option: str | None = None  # the command field it is in (filter, pipeline, updates.0...)
    why: str = ""  # why this cannot work on encrypted data
    allowed: str = ""  # what the path allows instead

    @property
    def hint(self) -> str:
        return " ".join(part for part in (self.why, self.allowed) if part)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "codeName": self.code_name, "errmsg": self.errmsg, "path": self.path,
                "rule": self.rule, "hint": self.hint, "class": self.kind, "encryption": self.encryption,
                "operator": self.operator, "stage": self.stage, "option": self.option, "command": self.command,
                "otherPath": self.other_path, "reads": self.reads}

    @property
    def where(self) -> str:
        place = self.command + (f".{self.option}" if self.option else "")
        return f"{place}, stage {self.stage}" if self.stage and self.stage != self.operator else place

    def lines(self) -> list[str]:
        """The reason, as `markd check` prints it."""
        out = [f"refused: {self.code_name} ({self.code}): {self.errmsg}"]
        if self.path:
            out.append(f"  path:      {self.path}" + (f" (and {self.other_path})" if self.other_path else "")
                       + (f", computed from {self.reads}" if self.reads else ""))
        if self.encryption:
            out.append(f"  encrypted: {self.encryption}")
        out.append(f"  operator:  {self.operator} (in {self.where})" if self.operator != self.where
                   else f"  in:        {self.where}")
        out.append(f"  rule:      {self.rule or '(mongod parse error)'} [{self.kind}]")
        if self.why:
            out.append(f"  why:       {self.why}")
        if self.allowed:
            out.append(f"  allowed:   {self.allowed}")
        return out


def explain(error: CommandError, rules: Any, sent: Mapping[str, Any], database: str, collection: str,
            compared: str | None = None) -> Refusal:
    """`error` (raised analysing `sent` under markd check's `rules`) explained; `compared` is the encrypted
    field a refused validator or partial filter compares, when the caller found it."""
    names = error.names
    kind = rule_class(error.rule, error.code)
    path, other = path_of(names)
    if error.rule in ("variable", "variable_in_output"):
        path, other = None, None  # a variable's name, not a path
    command = next(iter(sent), "")
    if command == "explain" and isinstance(sent.get("explain"), Mapping):
        command = f"explain {next(iter(sent['explain']), '')}"
    if path is None and compared is not None:
        path = compared  # a validator or partial filter: the first encrypted field it compares
    reads = reads_of(names, path)
    option = names.get("option")
    operator = operator_of(names) or (f"{command}.{option}" if option else command)
    schema = _schema(rules, database, collection)
    encryption = describe(schema, reads or path) if path and schema is not None else None
    if encryption is not None and encryption.kind == "plain" and kind == ENCRYPTION and (
            (names.get("stage") and error.rule not in PLAIN_PATH_RULES) or error.rule in UNKNOWN_RULES):
        # Not a field of the collection as the rules describe it: an earlier stage made it.
        encryption = Encryption("unknown", "not in the collection's rules: here it holds what an earlier stage put "
                                           "there, whose encryption is only known at run time")
    why, allowed = _hint(error, kind, reads or path, other, operator, names, encryption)
    described = encryption.description if encryption is not None else None
    if not path and schema is not None and kind == ENCRYPTION:
        # A refusal of the whole command (a stage, a view, multi: true): because of these fields.
        encrypted = [leaf_path for leaf_path, _ in _leaves(schema)]
        if encrypted:
            shown = ", ".join(encrypted[:8]) + (", ..." if len(encrypted) > 8 else "")
            described = f"{database}.{collection} has encrypted fields: {shown}"
    return Refusal(error.code, error.code_name, error.errmsg, error.rule, kind, command, path, other, reads,
                   described, operator, names.get("stage"), option, why, allowed)


def _leaves(schema: Any) -> list[tuple[str, Any]]:
    from markd.analysis.schema import leaves

    return list(leaves(schema.root))


def _schema(rules: Any, database: str, collection: str) -> Any:
    if rules is None:
        return None
    from markd.checker import parsed_schema

    document = rules.lookup(database, collection)
    if document is None:
        return None
    try:
        return parsed_schema(document, rules.scheme)
    except CommandError:
        return None


def _supported_stages() -> str:
    from markd.analysis.pipeline import STAGES

    return ", ".join(sorted(STAGES))


def _hint(error: CommandError, kind: str, path: str | None, other: str | None, operator: str | None,
          names: Mapping[str, str], encryption: Encryption | None) -> tuple[str, str]:
    """(why it cannot work, what is allowed instead)."""
    if kind != ENCRYPTION:
        return CLASS_HINTS[kind], ""
    text, with_allowed = HINTS.get(error.rule or "", ("", True))
    values = {"path": path or "", "other": other or "", "operator": operator or "this operator",
              "stage": names.get("stage") or operator or "this stage",
              "encrypted": (encryption.encrypted if encryption is not None else None) or path or "",
              "bounds": f" ({encryption.bounds})" if encryption is not None and encryption.bounds else "",
              "types": encryption.types if encryption is not None and encryption.types else "another type",
              "supported": _supported_stages() if error.rule == "stage_unsupported" else ""}
    allowed = ""
    if with_allowed and encryption is not None and path:
        allowed = encryption.allowed(encryption.encrypted or path)
    return text.format(**values), allowed
