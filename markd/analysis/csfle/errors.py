"""mongocryptd's CSFLE error codes and messages, in one table.

Every refusal in the CSFLE analysis goes through `fail(entry, **fields)`, so a message is written
once and its code can never drift from it.  Codes and wording are mongocryptd's (see the research
notes); the few whose exact wording no public source shows are marked "unconfirmed".
"""

from __future__ import annotations

from typing import NoReturn

from markd.analysis.errors import error as shared_error
from markd.errors import CommandError

# name -> (code, message template)
ERRORS: dict[str, tuple[int, str]] = {
    # command envelope
    "schema_not_object": (51090, "jsonSchema is expected to be a object"),
    "remote_not_bool": (31102, "isRemoteSchema is expected to be a boolean"),
    "schema_required": (51073, "jsonSchema or encryptionInformation is required"),
    "remote_required": (31104, "isRemoteSchema is a required command field"),
    "multi_remote_required": (9686706, "isRemoteSchema is a required command field"),
    "multi_schema_required": (
        9686705, "Must specify either jsonSchema, csfleEncryptionSchemas or encryptionInformation"
    ),
    "idl_missing": (40414, "BSON field '{field}' is missing but a required field"),
    "idl_unknown": (40415, "BSON field '{field}' is an unknown field."),
    "schema_and_multi": (9686707, "Cannot specify both jsonSchema and csfleEncryptionSchemas"),
    "remote_and_multi": (
        9686709, "Cannot specify both isRemoteSchema and encryptionInformation/csfleEncryptionSchemas"
    ),
    "multi_only_aggregate": (9686713, "csfleEncryptionSchemas is only supported for aggregate command."),
    "multi_not_object": (9686702, "csfleEncryptionSchemas must be an object"),
    "ns_schema_not_object": (6327504, "Each namespace schema must be an object"),
    "ns_mismatch": (9686712, "Namespace in encryption schemas: does not match namespace given in command: '{ns}'"),
    # schema
    "unknown_keyword": (9, "Unknown $jsonSchema keyword: {keyword}"),
    "duplicate_keyword": (9, "Duplicate $jsonSchema keyword: {keyword}"),
    # markd's own: mongocryptd keeps the last of two same-named properties, mongod checks both
    "duplicate_property": (9, "Duplicate $jsonSchema property in '{keyword}': {name}"),
    "duplicate_value": (9, "Duplicate field name in the value of $jsonSchema keyword '{keyword}'"),
    "idl_duplicate": (40413, "BSON field '{field}' is a duplicate field"),
    "encrypt_with_bsontype": (
        9,
        "$jsonSchema keyword 'encrypt' cannot be used in conjunction with 'bsonType', "
        "'encrypt' implies type 'bsonType::BinData'",
    ),
    "encrypt_with_type": (
        9,
        "$jsonSchema keyword 'encrypt' cannot be used in conjunction with 'type', "
        "'encrypt' implies type 'bsonType::BinData'",
    ),
    "type_and_bsontype": (9, "Cannot specify both $jsonSchema keywords 'type' and 'bsonType'"),
    "keyword_object": (14, "$jsonSchema keyword '{keyword}' must be an object "),
    "keyword_string": (14, "$jsonSchema keyword '{keyword}' must be of type string"),
    "keyword_unimplemented": (9, "$jsonSchema keyword '{keyword}' is not currently supported"),
    "nested_not_object": (14, "Nested schema for $jsonSchema property '{name}' must be an object"),  # unconfirmed
    "encrypt_and_metadata": (9, "Cannot specify both $jsonSchema keywords 'encrypt' and 'encryptMetadata'"),
    "metadata_empty": (9, "$jsonSchema keyword 'encryptMetadata' cannot be an empty object "),
    "type_set_type": (14, "$jsonSchema keyword '{keyword}' must be either a string or an array of strings"),
    "type_set_elements": (14, "$jsonSchema keyword '{keyword}' array elements must be strings"),
    "type_integer": (9, "$jsonSchema type 'integer' is not currently supported."),
    "type_duplicate": (9, "$jsonSchema keyword '{keyword}' has duplicate value: {name}"),
    "unknown_bson_type": (2, "Unknown type name alias: {name}"),
    "encrypt_not_allowed": (51077, "Invalid schema containing the 'encrypt' keyword."),
    "encrypt_siblings": (
        51078,
        "Invalid schema containing the 'encrypt' keyword, sibling keywords are not allowed as such "
        "restrictions cannot work on an encrypted field.",
    ),
    "id_algorithm": (51194, "Invalid schema containing the 'encrypt' keyword, {algorithm} encryption algorithm not "
        "allowed."),
    "metadata_not_allowed": (31077, "Invalid schema containing the 'encryptMetadata' keyword."),
    "no_algorithm": (51099, "Encrypt object combined with encryptMetadata needs to specify an algorithm"),
    "no_key_id": (51097, "Encrypt object combined with encryptMetadata needs to specify a keyId"),
    "keyword_unsupported": (31126, "JSON schema keyword '{keyword}' is not supported for client-side encryption"),
    "keyword_remote_only": (31068, "JSON schema keyword '{keyword}' is only allowed with a remote schema"),
    "deterministic_one_type": (31051, "A deterministically encrypted field must have exactly one specified type."),
    "deterministic_pointer": (31169, "A deterministically encrypted field cannot have a keyId represented by a JSON "
        "pointer"),
    "schema_type_illegal": (31122, "Cannot encrypt element of type: {type}"),
    "encrypt_field": (40415, "BSON field 'encrypt.{field}' is an unknown field."),
    "metadata_field": (40415, "BSON field 'encryptMetadata.{field}' is an unknown field."),
    "bad_algorithm": (2, "Enumeration value '{value}' for field '{field}.algorithm' is not a valid value."),
    "idl_wrong_type": (14, "BSON field '{field}' is the wrong type '{actual}', expected type '{expected}'"),
    "key_id_kind": (51085, "Expected either string or array of UUID for EncryptSchemaKeyId, found {type}"),
    "key_id_not_bindata": (51088, "Array elements must have type BinData, found {type}"),
    "key_id_not_uuid": (51084, "Array elements must have type UUID, found {subtype}"),
    "key_id_uuid_length": (51084, "Array elements must have type UUID, found 4"),  # markd: a UUID of another length
    "key_id_empty": (51085, "Expected either string or array of UUID for EncryptSchemaKeyId, found array"),  # markd
    "bad_pointer": (51065, "Invalid JSON pointer: '{pointer}'"),  # unconfirmed code and wording
    # values
    "value_type_illegal": (31041, "Cannot encrypt element of type: {type}"),
    "random_query": (51158, "Cannot query on fields encrypted with the randomized encryption algorithm"),
    "value_type_mismatch": (
        31118,
        "Cannot encrypt element of type {type} because schema requires that type is one of: [ {types}]",
    ),
    "pointer_not_static": (51093, "A non-static (JSONPointer) keyId is not supported."),
    "pointer_missing": (51114, "keyId pointer '{pointer}' must point to a field that exists"),
    "pointer_encrypted": (30017, "keyId pointer '{pointer}' cannot point to an encrypted field"),
    "pointer_not_string": (51115, "keyId pointer '{pointer}' must point to a string"),
    # writes
    "pipeline_update_schema": (
        31146,
        "Pipelines in updates are not allowed to modify encrypted fields or add fields which are not present "
        "in the schema",
    ),
    # distinct / validators / indexes / views
    "validator_schema": (6491101, "validator with $jsonSchema must be identical to FLE 1 jsonSchema parameter."),
    "bulk_single_namespace": (2, "BulkWrite with automatic encryption supports only a single namespace"),  # markd's
    # match language
    "range_on_encrypted": (51118, "Invalid match expression operator on encrypted field '{path}': {expr}"),
    "range_holding_encrypted": (51119, "Invalid match expression operator on encrypted field '{expr}'"),
    # aggregation
    "text_fle2_only": (10112203, "{op} can only be used with FLE2"),
    "bulk_write_csfle": (2, "The bulkWrite command only supports Queryable Encryption"),
    # aggregation expressions
    "evaluated": (31110, "Encrypted field '{path}' is not allowed to be evaluated by {op}"),
    "compare_enc_plain": (
        31098,
        "Comparison disallowed between encrypted fields and unencrypted fields; '{path}' is encrypted but is "
        "compared to{other}",
    ),
    "compare_plain_enc": (
        31099,
        "Comparison disallowed between unencrypted fields and encrypted fields; '{path}' is unencrypted but is "
        "compared to{other}",
    ),
    "compare_algorithms": (
        31100,
        "Comparison disallowed between fields with different encryption algorithms; encryption algorithm for "
        "field '{path}' does not match the algorithm of{other}",
    ),
    "compare_random": (
        31158,
        "Comparison disallowed between fields where one is randomly encrypted; field '{path}' is randomly encrypted.",
    ),
    "compare_evaluated": (31117, "Result of evaluating {op} forbidden from being compared to encrypted fields but is "
                                 "compared to{other}"),
}


def error(entry: str, /, **fields: object) -> CommandError:
    """The CommandError for `entry`: this table's, else the core's shared one."""
    return shared_error(entry, ERRORS, **fields)


def fail(entry: str, /, **fields: object) -> NoReturn:
    raise error(entry, **fields)
