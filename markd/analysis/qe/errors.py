"""Every error Queryable Encryption analysis can end with: mongocryptd's code and message, in one table.

Messages never carry a value from the command unless mongocryptd's own message does, and even then
markd names the operator instead of printing the operand: an error reply must not leak plaintext.
"""

from __future__ import annotations

from markd.analysis.errors import error as shared_error
from markd.errors import CommandError

# key -> (code, message template). Templates take keyword arguments only (paths, types, names).
ERRORS: dict[str, tuple[int, str]] = {
    # encryptionInformation envelope
    "INFO_NOT_OBJECT": (6327501, "encryptionInformation must be an object"),
    "BOTH_SCHEMAS": (6327500, "Cannot specify both jsonSchema and encryptionInformation"),
    "BOTH_REMOTE": (6327502, "Cannot specify both isRemoteSchema and encryptionInformation"),
    "ONE_NAMESPACE": (6327503, "Exactly one namespace is supported with encryptionInformation"),
    "NAMESPACE_MISMATCH": (
        6411900,
        "Namespace in encryptionInformation: '{given}' does not match namespace given in command: '{expected}'",
    ),
    "SCHEMA_NOT_OBJECT": (6327504, "Each namespace schema must be an object"),
    "SCHEMA_TYPE": (14, "BSON field 'EncryptInformation.schema' is the wrong type, expected type 'object'"),
    "MISSING_SCHEMA": (9710000, "Missing encryption schema for namespace: {namespace}"),
    "MIXED_SCHEMAS": (9686710, "Cannot specify both encryptionInformation and csfleEncryptionSchemas"),
    "BAD_TYPE_FIELD": (6327505, "encryptionInformation.type must be 1"),
    # encryptedFields definitions
    "BAD_FIELD": (9, "{detail}"),
    "EMPTY_PATH": (6316402, "Encrypted field must have a non-empty path"),
    "ENCRYPT_ID": (6316403, "Cannot encrypt _id or its subfields"),
    "NEEDS_BSON_TYPE": (6412601, "BSON type needs to be specified for an indexed field"),
    "EQUALITY_TYPE": (6338405, "Type '{type}' is not a supported equality indexed type"),
    "UNINDEXED_TYPE": (6338406, "Type '{type}' is not a supported unindexed type"),
    "RANGE_TYPE": (6775201, "Type '{type}' is not a supported range indexed type"),
    "TEXT_TYPE": (9783400, "Type '{type}' is not a supported type for text search indexed encrypted field {path}"),
    "UNKNOWN_QUERY_TYPE": (2, "Enumeration value '{name}' for field 'queryType' is not a valid value."),
    "SPARSITY_RANGE": (6775214, "The field 'sparsity' must be between 1 and 8"),
    "MIN_TYPE": (7018200, "Range field type '{type}' does not match the min value type '{value_type}'"),
    "MAX_TYPE": (7018201, "Range field type '{type}' does not match the max value type '{value_type}'"),
    "MIN_LT_MAX": (6720005, "Min must be less than max."),
    "PRECISION_TOGETHER": (
        6967100,
        "Precision, min, and max must all be specified together for floating point fields",
    ),
    "PRECISION_NOT_ALLOWED": (6967101, "Precision can only be set if type is floating point"),
    "CONTENTION_NEGATIVE": (8574101, "Contention factor must be greater than or equal to 0"),
    "TRIM_FACTOR": (
        8574000,
        "The field 'trimFactor' must be >= 0 and less than the total number of bits needed to represent "
        "elements in the domain ({bits})",
    ),
    "TEXT_MIN_GT_MAX": (9783406, "strMinQueryLength cannot be greater than strMaxQueryLength"),
    "TEXT_MAX_GT_LENGTH": (9783408, "strMaxQueryLength cannot be greater than strMaxLength"),
    "TEXT_NO_QUERIES": (9783412, "At least one query type should be specified per field"),
    "TEXT_TOO_MANY": (9783413, "The number of query types for an encrypted field cannot exceed two"),
    "TEXT_COMBINATION": (9783414, "Multiple query types may only include the suffix and prefix query types"),
    "PRECISION_MIN_DIGITS_DOUBLE": (
        6966805,
        "The number of decimal digits for minimum value of field '{path}' must be less than or equal to precision",
    ),
    "PRECISION_MAX_DIGITS_DOUBLE": (
        6966806,
        "The number of decimal digits for maximum value of field '{path}' must be less than or equal to precision",
    ),
    "PRECISION_MIN_DIGITS_DECIMAL": (
        6966807,
        "The number of decimal digits for minimum value of field '{path}' must be less than or equal to precision",
    ),
    "PRECISION_MAX_DIGITS_DECIMAL": (
        6966808,
        "The number of decimal digits for maximum value of field '{path}' must be less than or equal to precision",
    ),
    "PRECISION_DOMAIN_DOUBLE": (
        9157100,
        "The domain of double values specified by the min, max, and precision for field '{path}' cannot be "
        "represented in fewer than 64 bits",
    ),
    "PRECISION_DOMAIN_DECIMAL": (
        9157101,
        "The domain of decimal values specified by the min, max, and precision for field '{path}' cannot be "
        "represented in fewer than 128 bits",
    ),
    # values
    "CANNOT_ENCRYPT_TYPE": (31041, "Cannot encrypt element of type: {type}"),
    "WRONG_TYPE": (
        31118,
        "Cannot encrypt element of type {type} because schema requires that type is one of: [ {expected} ]",
    ),
    # queries
    "NOT_EQUALITY_INDEXED": (63165, "Can only execute encrypted equality queries with an encrypted equality index"),
    "NOT_RANGE_INDEXED": (
        6721001,
        "Invalid match expression operator on encrypted field '{path}' without an encrypted range index: {op}",
    ),
    "IN_NESTED_ARRAY": (6994300, "Nested arrays not supported for encrypted $in"),
    "OBJECT_COMPARISON": (
        6341900,
        "Comparisons to objects which contain encrypted payloads is not allowed with Queryable Encryption",
    ),
    "NOT_RANGE_INDEXED_IN_AND": (
        6720400,
        "Invalid match expression operator on encrypted field '{path}' without an encrypted range index: {op}",
    ),
    "INT_COERCION": (31108, "Value of type long cannot be coerced to the int type of the range index on '{path}'"),
    "EXPR_CLOSED_OUT_OF_BOUNDS": (6720811, "Constant for encrypted comparison must be in range bounds"),
    "RANGE_OUT_OF_BOUNDS": (6747900, "Range query predicate must be within the bounds of encrypted index."),
    "LOWER_OUT_OF_BOUNDS": (6747901, "Lower bound of range predicate must be within the bounds of encrypted index."),
    "UPPER_OUT_OF_BOUNDS": (6747902, "Upper bound of range predicate must be within the bounds of encrypted index."),
    "BOUND_NAN": (6991000, "Query bound cannot be NaN."),
    "BOUND_NAN_DECIMAL": (6991001, "Query bound cannot be NaN."),
    "EXPR_IN_CONTEXT": (6994304, "Encrypted expression encountered in not-allowed context in $in"),
    "EXPR_IN_RANGE_PREFIX": (7036804, "Cannot use $in with a fieldpath that is a prefix of a range encrypted field"),
    "DATE_MISMATCH": (
        6720002,
        "If the value type is a date, the type of the index must also be date (and vice versa). ",
    ),
    "RANGE_VALUE_TYPE": (6742000, "type{type} type isn't supported for the range encrypted index. "),
    "NO_COERCION": (
        6742002,
        "If the value type and the field type are not the same type and one or both of them is a double or a "
        "decimal, coercion of the value to field type is not supported, due to possible loss of precision.",
    ),
    "IN_RANGE_PREFIX": (7036803, "Cannot use $in on range prefix encrypted fields"),
    "EXPR_OUT_OF_BOUNDS": (6720810, "Constant for encrypted comparison must be in range bounds"),
    "EXPR_CONTEXT": (7020507, "Encrypted expression encountered in not-allowed context"),
    "EXPR_IN_CONSTANT": (6994302, "Can only compare encrypted field to object or constant in $in"),
    "TEXT_ON_NON_TEXT": (10113904, "{op} can only be used on an encrypted text field: '{path}'"),
    "NO_PREFIX_INDEX": (10248500, "$encStrStartsWith requires a prefix query type on encrypted field '{path}'"),
    "NO_SUFFIX_INDEX": (10209400, "$encStrEndsWith requires a suffix query type on encrypted field '{path}'"),
    "NO_SUBSTRING_INDEX": (10209500, "$encStrContains requires a substring query type on encrypted field '{path}'"),
    "TEXT_INPUT": (10112204, "{op} input must be an encrypted field."),
    "TEXT_ARGUMENT": (10112205, "{op} requires an object with 'input' and '{argument}' fields"),
    "TEXT_STRING": (10112206, "{op} '{argument}' must be a string"),
    # writes
    "MULTI_NAMESPACE_MISMATCH": (
        9686712, "Namespace in encryption schemas: does not match namespace given in command: '{namespace}'"
    ),
    "BULK_ONLY_INSERT": (2, "Only insert is supported in BulkWrite with multiple operations and Queryable Encryption."),
    "BULK_ONE_NAMESPACE": (2, "BulkWrite with Queryable Encryption supports only a single namespace"),
    "BULK_NEEDS_INFO": (
        2,
        "BulkWrite with Queryable Encryption expects NamespaceInfoEntry to contain encryptionInformation",
    ),
    # aggregation
    "EXPRESSION": (6331102, "Invalid reference to an encrypted field within aggregate expression: {path}"),
    "NON_CONSTANT_COMPARISON": (
        6334105,
        "Comparison disallowed between Queryable Encryption encrypted fields and non-constant expressions; "
        "field '{path}' is encrypted.",
    ),
    # The core's add_below_encrypted, met while encryptedFields are read (markd check: the rules are wrong).
    "ADD_BELOW_ENCRYPTED": (51096, "Cannot add a field to an existing encrypted field"),
    "ENCRYPTED_PREFIX_OF_ENCRYPTED": (6316401, "Cannot add an encrypted field as a prefix of another encrypted field"),
    # commands
    "JSON_SCHEMA_VALIDATOR": (51092, "Invalid match expression operator on encrypted field: $jsonSchema"),
    "INDEX_ON_ENCRYPTED": (6346502, "Index key '{path}' cannot refer to an encrypted field"),
    # QE ciphertexts are not deterministic, so mongocryptd treats every QE field like a randomized one here.
    "COMPARE_UNINDEXED": (
        31158,
        "Comparison disallowed between fields where one is randomly encrypted; field '{path}' is randomly encrypted.",
    ),
    "DUPLICATE_FIELD": (40413, "BSON field '{field}' is a duplicate field"),
    "BOTH_SCHEMAS_MULTI": (9686708, "Cannot specify both jsonSchema and encryptionInformation"),
    "MULTI_ONLY_AGGREGATE": (9686713, "csfleEncryptionSchemas is only supported for aggregate command."),
    "TWO_ENCRYPTED": (
        6334101,
        "Comparison disallowed between two fields encrypted with Queryable Encryption; fields '{a}' and '{b}' are "
        "encrypted.",
    ),
    "EXPR_CONTEXT_AND": (7020508, "Encrypted expression encountered in not-allowed context"),
    # the core's keys, in QE's words
    "pipeline_update_schema": (
        6329902,
        "Pipelines in updates are not allowed to modify encrypted fields or add encrypted fields which are not "
        "present in the schema",
    ),
    "bulk_single_namespace": (2, "BulkWrite with Queryable Encryption supports only a single namespace"),
}



# An option present on a query type that does not take it: one code per (index kind, option) (validate*Index).
NOT_ALLOWED_CODES: dict[tuple[str, str], int] = {
    ("equality", "sparsity"): 6775205, ("equality", "min"): 6775206, ("equality", "max"): 6775207,
    ("equality", "trimFactor"): 8574104, ("equality", "precision"): 10774900,
    ("equality", "strMaxLength"): 10774901, ("equality", "strMinQueryLength"): 10774902,
    ("equality", "strMaxQueryLength"): 10774903, ("equality", "caseSensitive"): 10774904,
    ("equality", "diacriticSensitive"): 10774905,
    ("range", "strMaxLength"): 10774906, ("range", "strMinQueryLength"): 10774907,
    ("range", "strMaxQueryLength"): 10774908, ("range", "caseSensitive"): 10774909,
    ("range", "diacriticSensitive"): 10774910,
    ("text-based", "sparsity"): 10774911, ("text-based", "min"): 10774912, ("text-based", "max"): 10774913,
    ("text-based", "trimFactor"): 10774914, ("text-based", "precision"): 10774915,
}
# A text search parameter missing, and one that differs between a field's two query types.
TEXT_REQUIRED_CODES: dict[str, int] = {
    "strMinQueryLength": 9783402, "strMaxQueryLength": 9783403, "caseSensitive": 9783404,
    "diacriticSensitive": 9783405, "strMaxLength": 9783407,
}
TEXT_SAME_CODES: dict[str, int] = {"caseSensitive": 9783409, "diacriticSensitive": 9783410, "contention": 9783411}

for (_index, _option), _code in NOT_ALLOWED_CODES.items():
    ERRORS[f"NOT_ALLOWED:{_index}:{_option}"] = (
        _code, f"The field '{_option}' is not allowed for {_index} index but is present")
for _option, _code in TEXT_REQUIRED_CODES.items():
    ERRORS[f"TEXT_REQUIRED:{_option}"] = (
        _code, f"{_option} parameter is required for {{query_type}} query type of field {{path}}")
for _option, _code in TEXT_SAME_CODES.items():
    ERRORS[f"TEXT_SAME:{_option}"] = (
        _code, f"{_option} parameter must be the same for all query types of field {{path}}")


def error(key: str, **details: object) -> CommandError:
    """The CommandError for `key`: this table's, else the core's shared one."""
    return shared_error(key, ERRORS, **details)
