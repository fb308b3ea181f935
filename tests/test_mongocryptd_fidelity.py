"""Issue 13's classes, one row each: what mongocryptd answers, sent to a real markd over its socket.

A refusal row pins the code and the whole message; a pass-through row pins the command markd writes back;
a marking row is also given to the real libmongocrypt, which must encrypt every placeholder (CSFLE: the
ciphertexts decrypt to the marked values; QE: every placeholder became a find payload).  Where mongocryptd's
version lines disagree, the row follows the 8.x line (docs/compatibility.md, the closing note of issue 13).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Code, Int64
from bson.binary import Binary

from tests.support.crypt import CryptDriver
from tests.support.process import MarkdProcess, raw_command
from tests.test_csfle_support import DET, RND, encrypt, placeholders, read_placeholder, schema_for
from tests.test_qe_rules import info

DB = "db"
K = Binary(b"\x21" * 16, 4)
SCHEMA = schema_for(K)


def obj(**properties: Any) -> dict[str, Any]:
    return {"bsonType": "object", "properties": properties}


def agg(*stages: Any, **fields: Any) -> dict[str, Any]:
    return {"aggregate": "coll", "pipeline": list(stages), "cursor": {}, **fields}


def find(filter_: Any, **fields: Any) -> dict[str, Any]:
    return {"find": "coll", "filter": filter_, **fields}


def qe_field(path: str, bson_type: str, key: Binary = K, **queries: Any) -> dict[str, Any]:
    field: dict[str, Any] = {"path": path, "keyId": key, "bsonType": bson_type}
    if queries:
        field["queries"] = {"contention": Int64(0), **queries}
    return field


QE_FIELDS = [
    qe_field("ssn", "string", queryType="equality"),
    qe_field("a.b", "string", queryType="equality"),
    qe_field("age", "int", queryType="range", min=0, max=200, sparsity=Int64(1)),
    qe_field("d", "double", queryType="range", min=0.0, max=10.0, precision=1),
    qe_field("notes", "string"),
]


def qe_info(fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return info(QE_FIELDS if fields is None else fields)


ACCUMULATOR = {"init": "function() {return 0}", "accumulate": "function(s) {return s}",
               "merge": "function(a, b) {return a}", "lang": "js"}
BINDATA_LEAF = ("Invalid match expression operator on encrypted field 'ssn': "
                "{ ssn: { $_internalSchemaBinDataSubType: 6 } }")
NOT_KNOWN = "Cannot get metadata for path whose encryption properties are not known until runtime."


# (id, scheme, command, rules or None for the default, code, message): scheme "csfle", "csfle-remote" or "qe".
REFUSED: list[tuple[str, str, dict[str, Any], Any, int, str]] = [
    # explain: the rules belong at the top level.
    ("explain-jsonSchema-inside", "csfle", {"explain": find({}, jsonSchema=SCHEMA, isRemoteSchema=False)}, None,
     30050, "In an explain command the jsonSchema field must be top-level and not inside the command being explained."),
    ("explain-isRemoteSchema-inside", "csfle", {"explain": find({}, isRemoteSchema=False)}, None, 31103,
     "In an explain command the isRemoteSchema field must be top-level and not inside the command being explained."),
    ("explain-encryptionInformation-inside", "qe", {"explain": find({}, encryptionInformation=qe_info())}, None,
     6365900, "In an explain command the encryptionInformation field must be top-level and not inside the command "
              "being explained."),
    # command fields
    ("update-top-level-collation", "csfle", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"x": 1}}}],
                                             "collation": {"locale": "fr"}}, None,
     40415, "BSON field 'update.collation' is an unknown field."),
    ("delete-top-level-collation", "csfle", {"delete": "coll", "deletes": [{"q": {}, "limit": 1}],
                                             "collation": {"locale": "fr"}}, None,
     40415, "BSON field 'delete.collation' is an unknown field."),
    ("find-collation-not-a-document", "csfle", find({}, collation=5), None, 31084,
     "collation command parameter must be of type Object"),
    ("distinct-collation-not-a-document", "csfle", {"distinct": "coll", "key": "plain", "collation": 5}, None, 31084,
     "collation command parameter must be of type Object"),
    ("find-collection-not-a-string", "csfle", {"find": 5, "filter": {}}, None, 73,
     "collection name has invalid type int"),
    ("find-unknown-field", "csfle", find({}, bogus=1), None, 40415, "BSON field 'find.bogus' is an unknown field."),
    # values at encrypted fields (8.x: 31041 for a whole array; 31009 is the 4.2 line's)
    ("equality-to-array-deterministic", "csfle", find({"ssn": ["a"]}), None, 31041,
     "Cannot encrypt element of type: array"),
    ("in-array-element-deterministic", "csfle", find({"ssn": {"$in": [["a"]]}}), None, 31041,
     "Cannot encrypt element of type: array"),
    ("insert-object-deterministic", "csfle", {"insert": "coll", "documents": [{"_id": 1, "ssn": {"a": 1}}]}, None,
     31041, "Cannot encrypt element of type: object"),
    ("insert-object-random-bsonType-string", "csfle", {"insert": "coll", "documents": [{"_id": 1, "rnd": {"a": 1}}]},
     None, 31118, "Cannot encrypt element of type object because schema requires that type is one of: [ string ]"),
    # schema parsing
    ("keyId-element-not-uuid", "csfle", find({}), obj(a={"encrypt": {"keyId": [Binary(b"x" * 16, 0)],
                                                                      "algorithm": RND}}),
     51084, "Array elements must have type UUID, found 0"),
    ("keyId-element-not-bindata", "csfle", find({}), obj(a={"encrypt": {"keyId": ["x"], "algorithm": RND}}),
     51088, "Array elements must have type BinData, found string"),
    ("patternProperties-invalid-regex", "csfle", find({}),
     {"bsonType": "object", "patternProperties": {"(": encrypt(K, RND)}}, 2,
     "Invalid regular expression: missing closing parenthesis"),
    ("minItems-negative", "csfle", find({}), {"bsonType": "object", "minItems": -1}, 9,
     "Expected a non-negative number in: minItems: -1"),
    ("minItems-negative-remote", "csfle-remote", find({}), {"bsonType": "object", "minItems": -1}, 9,
     "Expected a non-negative number in: minItems: -1"),
    ("maxItems-negative", "csfle", find({}), {"bsonType": "object", "maxItems": -1}, 9,
     "Expected a non-negative number in: maxItems: -1"),
    ("enum-not-an-array", "csfle", find({}), {"bsonType": "object", "enum": 1}, 14,
     "$jsonSchema keyword 'enum' must be an array, but found an element of type int"),
    ("uniqueItems-not-a-bool", "csfle", find({}), {"bsonType": "object", "uniqueItems": 1}, 14,
     "$jsonSchema keyword 'uniqueItems' must be a boolean"),
    ("uniqueItems-not-a-bool-remote", "csfle-remote", find({}), {"bsonType": "object", "uniqueItems": 1}, 14,
     "$jsonSchema keyword 'uniqueItems' must be a boolean"),
    ("pattern-invalid-regex", "csfle", find({}), obj(p={"pattern": "("}), 51091,
     "Regular expression is invalid: missing closing parenthesis"),
    ("pattern-invalid-regex-remote", "csfle-remote", find({}), obj(p={"pattern": "("}), 51091,
     "Regular expression is invalid: missing closing parenthesis"),
    ("pattern-valid-needs-remote", "csfle", find({}), obj(p={"pattern": "a"}), 31068,
     "JSON schema keyword 'pattern' is only allowed with a remote schema"),
    ("random-below-id", "csfle", find({}), obj(_id={"bsonType": "object", "properties": {"x": encrypt(K, RND)}}),
     51194, "Invalid schema containing the 'encrypt' keyword, AEAD_AES_256_CBC_HMAC_SHA_512-Random encryption "
            "algorithm not allowed."),
    ("pointer-to-code-with-scope", "csfle",
     {"insert": "coll", "documents": [{"_id": 1, "alt": "x", "keyName": Code("f", {"a": 1})}]}, None,
     51115, "keyId pointer '/keyName' must point to a string"),
    # aggregation (single-schema mode: a collection-less stage is not allowed, 31011)
    ("changeStream-collection-less", "csfle", {"aggregate": 1, "pipeline": [{"$changeStream": {}}], "cursor": {}},
     None, 31011, "Aggregation stage $changeStream is not allowed or supported with automatic encryption."),
    ("currentOp", "csfle", {"aggregate": 1, "pipeline": [{"$currentOp": {}}], "cursor": {}, "$db": "admin"}, None,
     31011, "Aggregation stage $currentOp is not allowed or supported with automatic encryption."),
    ("listLocalSessions", "csfle", {"aggregate": 1, "pipeline": [{"$listLocalSessions": {}}], "cursor": {}}, None,
     31011, "Aggregation stage $listLocalSessions is not allowed or supported with automatic encryption."),
    ("listSessions", "csfle", {"aggregate": 1, "pipeline": [{"$listSessions": {}}], "cursor": {}, "$db": "config"},
     None, 31011, "Aggregation stage $listSessions is not allowed or supported with automatic encryption."),
    ("unknown-stage-before-31011", "csfle", agg({"$out": "coll"}, {"$bogus": {}}), None, 40324,
     "Unrecognized pipeline stage name: '$bogus'"),
    # $group
    *[(f"group-{where}-prefix", "csfle", agg({"$group": group}), None, 31129,
       "Referencing a prefix of an encrypted field is not supported")
      for where, group in [("id", {"_id": "$doc"}), ("first", {"_id": 1, "f": {"$first": "$doc"}}),
                           ("last", {"_id": 1, "f": {"$last": "$doc"}}), ("push", {"_id": 1, "f": {"$push": "$doc"}}),
                           ("addToSet", {"_id": 1, "f": {"$addToSet": "$doc"}}),
                           ("sum", {"_id": 1, "f": {"$sum": "$doc"}})]],
    ("accumulator-over-encrypted", "csfle",
     agg({"$group": {"_id": 1, "s": {"$accumulator": {**ACCUMULATOR, "accumulateArgs": "$ssn"}}}}), None, 51221,
     "Accumulator '$accumulator' cannot aggregate encrypted fields."),
    ("accumulator-encrypted-key-variable-initArgs", "csfle",
     agg({"$group": {"_id": "$ssn", "s": {"$accumulator": {**ACCUMULATOR, "init": "function(a) {return a}",
                                                           "initArgs": ["$plain"], "accumulateArgs": ["$plain"]}}}}),
     None, 4544715, "Accumulator '$accumulator' must have a constant initializer (initArgs) when the group key "
                    "contains encrypted fields."),
    ("replaceRoot-new-field-from-encrypted", "csfle", agg({"$replaceRoot": {"newRoot": {"e": "$ssn"}}}), None, 31110,
     "Encrypted field 'ssn' is not allowed to be evaluated by formation of an object literal"),
    # 8.x: an unwound array of unknown encryption is allowed; a path below it is not known (51203 is pre-8.x)
    ("unwind-unknown-then-match", "csfle",
     agg({"$lookup": {"from": "coll", "localField": "plain", "foreignField": "plain", "as": "j"}}, {"$unwind": "$j"},
         {"$match": {"j.ssn": "a"}}), None, 31133, NOT_KNOWN),
    # validators
    ("validator-jsonSchema-in-and", "csfle", {"create": "coll", "validator": {"$and": [{"$jsonSchema": SCHEMA},
                                                                                       {"x": 1}]}}, None,
     51092, BINDATA_LEAF),
    ("validator-jsonSchema-with-a-field", "csfle", {"create": "coll", "validator": {"$jsonSchema": SCHEMA, "x": 1}},
     None, 51092, BINDATA_LEAF),
    ("collMod-jsonSchema-adds-encrypted", "csfle",
     {"collMod": "coll", "validator": {"$jsonSchema": obj(z=encrypt(K, DET, "string"))}}, None, 6491101,
     "validator with $jsonSchema must be identical to FLE 1 jsonSchema parameter."),
    # updates
    ("upsert-without-encrypted-id", "csfle",
     {"update": "coll", "updates": [{"q": {"x": 1}, "u": {"$set": {"y": 1}}, "upsert": True}]},
     obj(_id=encrypt(K, DET, "int")), 51130, "_id must be explicitly provided when configured as encrypted"),
    ("pipeline-update-adds-a-field", "csfle", {"update": "coll", "updates": [{"q": {}, "u": [{"$set": {"new": 1}}]}]},
     None, 31146, "Pipelines in updates are not allowed to modify encrypted fields or add fields which are not "
                  "present in the schema"),
    ("csfle-bulkWrite", "csfle", {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": 1}}],
                                  "nsInfo": [{"ns": "db.coll"}], "$db": "admin"}, None, 2,
     "The bulkWrite command only supports Queryable Encryption"),
    ("csfle-bulkWrite-not-admin", "csfle", {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": 1}}],
                                            "nsInfo": [{"ns": "db.coll"}]}, None, 73,
     "BulkWrite has to be executed against the admin database"),
    ("unknown-operator-on-plain-field", "csfle", find({"plain": {"$foo": 1}}), None, 2, "unknown operator: $foo"),
    # mongod's parsers, which mongocryptd runs first (8.x texts)
    *[(f"parse-{name}", "csfle", agg(stage), None, code, message) for name, stage, code, message in [
        ("skip-negative", {"$skip": -1}, 5107200,
         "invalid argument to $skip stage: Expected a non-negative number in: $skip: -1"),
        ("skip-string", {"$skip": "a"}, 5107200, 'invalid argument to $skip stage: Expected a number in: $skip: "a"'),
        ("skip-fraction", {"$skip": 1.5}, 5107200, "invalid argument to $skip stage: Expected an integer: $skip: 1.5"),
        ("skip-too-large", {"$skip": 1e300}, 5107200,
         "invalid argument to $skip stage: Cannot represent as a 64-bit integer: $skip: 1e+300"),
        ("limit-negative", {"$limit": -2}, 5107201,
         "invalid argument to $limit stage: Expected a non-negative number in: $limit: -2"),
        ("limit-zero", {"$limit": 0}, 15958, "the limit must be positive"),
        ("sample-not-an-object", {"$sample": 5}, 28745, "the $sample stage specification must be an object"),
        ("sample-size-string", {"$sample": {"size": "a"}}, 28746, "size argument to $sample must be a number"),
        ("sample-size-negative", {"$sample": {"size": -1}}, 28747, "size argument to $sample must not be negative"),
        ("sample-unknown-option", {"$sample": {"size": 1, "x": 1}}, 28748, "unrecognized option to $sample: x"),
        ("sample-without-size", {"$sample": {}}, 28749, "$sample stage must specify a size"),
        ("project-null", {"$project": None}, 15969, "$project specification must be an object"),
        ("project-empty", {"$project": {}}, 51272,
         "Invalid $project :: caused by :: projection specification must have at least one field"),
        ("unwind-number", {"$unwind": 5}, 15981,
         "expected either a string or an object as specification for $unwind stage, got int"),
        ("unwind-path-number", {"$unwind": {"path": 5}}, 28808,
         "expected a string as the path for $unwind stage, got int"),
        ("unwind-without-path", {"$unwind": {}}, 28812, "no path specified to $unwind stage"),
        ("unwind-path-without-dollar", {"$unwind": "x"}, 28818,
         "path option to $unwind stage should be prefixed with a '$': x"),
        ("lookup-not-an-object", {"$lookup": 5}, 9,
         "the $lookup stage specification must be an object, but found int"),
        ("graphLookup-not-an-object", {"$graphLookup": "x"}, 9,
         "the $graphLookup stage specification must be an object, but found string"),
        ("geoNear-not-an-object", {"$geoNear": 5}, 10065, "invalid parameter: expected an object ($geoNear)"),
        ("geoNear-query-not-an-object", {"$geoNear": {"near": [0, 0], "distanceField": "d", "query": 5}}, 14,
         "query must be an object"),
        ("search-not-an-object", {"$search": 5}, 9, "$search value must be an object. Found: int"),
        ("searchMeta-not-an-object", {"$searchMeta": 5}, 9, "$searchMeta value must be an object. Found: int"),
        ("vectorSearch-not-an-object", {"$vectorSearch": 5}, 9, "$vectorSearch value must be an object. Found: int"),
        ("accumulator-not-an-object", {"$group": {"_id": 1, "a": {"$accumulator": 5}}}, 4544703,
         "$accumulator expects an object as an argument; found: int"),
        ("reduce-unknown-argument", {"$project": {"x": {"$reduce": {"input": [], "initialValue": 0, "in": 1,
                                                                     "zz": 1}}}}, 40076,
         "$reduce found an unknown argument: zz"),
        ("function-not-an-object", {"$project": {"x": {"$function": 5}}}, 31260,
         "$function requires an object as an argument, found: int"),
        ("empty-variable-name", {"$project": {"x": "$$"}}, 9, "empty variable names are not allowed"),
    ]],
    ("parse-or-entry-not-an-object", "csfle", find({"$or": [1]}), None, 2,
     "$or/$and/$nor entries need to be full objects"),
    # QE
    ("qe-lookup-localField-encrypted", "qe",
     agg({"$lookup": {"from": "coll", "localField": "ssn", "foreignField": "x", "as": "j"}}), None, 6331103,
     "Cannot refer to encrypted field in $lookup 'localField' or 'foreignField'"),
    ("qe-lookup-foreignField-encrypted", "qe",
     agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "ssn", "as": "j"}}), None, 6331103,
     "Cannot refer to encrypted field in $lookup 'localField' or 'foreignField'"),
    ("qe-lookup-localField-prefix", "qe",
     agg({"$lookup": {"from": "coll", "localField": "a", "foreignField": "x", "as": "j"}}), None, 51206,
     "'localField' 'a' in the $lookup aggregation stage cannot have an encrypted child."),
    ("qe-lookup-foreignField-prefix", "qe",
     agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "a", "as": "j"}}), None, 51207,
     "'foreignField' 'a' in the $lookup aggregation stage cannot have an encrypted child."),
    ("qe-lookup-as-unwound-then-matched", "qe",
     agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "y", "as": "j"}}, {"$unwind": "$j"},
         {"$match": {"j.ssn": "a"}}), None, 31133, NOT_KNOWN),
    ("qe-unionWith-other-collection", "qe", agg({"$unionWith": "other"}), None, 9710000,
     "Missing encryption schema for namespace: db.other"),
    ("qe-search-names-encrypted", "qe", agg({"$search": {"text": {"query": "x", "path": "ssn"}}}), None, 31011,
     "Aggregation stage $search is not allowed or supported with automatic encryption when it names the encrypted "
     "field 'ssn'"),
    ("qe-sparsity-out-of-range", "qe", find({}),
     [qe_field("r", "int", queryType="range", min=0, max=9, sparsity=Int64(9))], 6775214,
     "The field 'sparsity' must be between 1 and 8"),
    ("qe-equality-with-sparsity", "qe", find({}), [qe_field("e", "int", queryType="equality", sparsity=Int64(1))],
     6775205, "The field 'sparsity' is not allowed for equality index but is present"),
    ("qe-equality-with-min", "qe", find({}), [qe_field("e", "int", queryType="equality", min=0)], 6775206,
     "The field 'min' is not allowed for equality index but is present"),
    ("qe-range-with-strMinQueryLength", "qe", find({}),
     [qe_field("r", "int", queryType="range", min=0, max=9, strMinQueryLength=Int64(1))], 10774907,
     "The field 'strMinQueryLength' is not allowed for range index but is present"),
    ("qe-prefix-without-strMaxQueryLength", "qe", find({}),
     [qe_field("t", "string", queryType="prefix", strMinQueryLength=Int64(2), caseSensitive=True,
               diacriticSensitive=True)], 9783403, "strMaxQueryLength parameter is required for prefix query type "
                                                   "of field t"),
    ("qe-infinite-bound-double-index", "qe", find({"d": {"$gt": math.inf}}), None, 6747900,
     "Range query predicate must be within the bounds of encrypted index."),
    ("qe-infinite-bound-int-index", "qe", find({"age": {"$gt": math.inf}}), None, 6742002,
     "If the value type and the field type are not the same type and one or both of them is a double or a decimal, "
     "coercion of the value to field type is not supported, due to possible loss of precision."),
    ("qe-range-in-null", "qe", find({"age": {"$in": [None]}}), None, 6742000,
     "typenull type isn't supported for the range encrypted index. "),
    ("qe-gte-and-eq-without-range-index", "qe", find({"age": {"$gte": 23, "$eq": 123}}),
     [qe_field("age", "int", queryType="equality")], 6720400,
     "Invalid match expression operator on encrypted field 'age' without an encrypted range index: "
     "{ age: { $gte: 23 } }"),
    ("qe-cmp-on-encrypted", "qe", find({"$expr": {"$cmp": ["$ssn", "a"]}}), None, 6331102,
     "Invalid reference to an encrypted field within aggregate expression: ssn"),
    ("qe-expr-unindexed", "qe", find({"$expr": {"$eq": ["$notes", "a"]}}), None, 31158,
     "Comparison disallowed between fields where one is randomly encrypted; field 'notes' is randomly encrypted."),
    ("qe-project-equality-reference", "qe", agg({"$project": {"x": {"$concat": ["$ssn", "a"]}}}), None, 6331102,
     "Invalid reference to an encrypted field within aggregate expression: ssn"),
    ("qe-group-equality-reference", "qe", agg({"$group": {"_id": {"$concat": ["$ssn", "a"]}}}), None, 6331102,
     "Invalid reference to an encrypted field within aggregate expression: ssn"),
    ("qe-expr-two-encrypted-fields", "qe", find({"$expr": {"$eq": ["$ssn", "$a.b"]}}), None, 6334101,
     "Comparison disallowed between two fields encrypted with Queryable Encryption; fields 'ssn' and 'a.b' are "
     "encrypted."),
    ("qe-project-and-of-range", "qe",
     agg({"$project": {"x": {"$and": [{"$gt": ["$age", 1]}, {"$lt": ["$age", 5]}]}}}), None, 7020508,
     "Encrypted expression encountered in not-allowed context"),
    ("qe-let-rebinds-current", "qe",
     find({"$expr": {"$let": {"vars": {"CURRENT": "$x"}, "in": {"$eq": ["$ssn", "a"]}}}}), None, 31152,
     "Rebinding of CURRENT disallowed"),
    ("qe-with-jsonSchema-too", "qe", agg({"$match": {}}, jsonSchema=SCHEMA, isRemoteSchema=False), None, 9686708,
     "Cannot specify both jsonSchema and encryptionInformation"),
    ("qe-unknown-operator-on-plain-field", "qe", find({"plain": {"$foo": 1}}), None, 2, "unknown operator: $foo"),
    ("qe-parse-error-is-code-2", "qe", find({"plain": {"$in": 1}}), None, 2, "$in needs an array"),
    ("qe-upsert-encrypted-id", "qe",
     {"update": "coll", "updates": [{"q": {"x": 1}, "u": {"$set": {"y": 1}}, "upsert": True}]},
     [qe_field("_id", "int", queryType="equality")], 6316403, "Cannot encrypt _id or its subfields"),
    ("multi-schema-collection-less-stage", "multi", {"aggregate": 1, "pipeline": [{"$changeStream": {}}],
                                                     "cursor": {}}, None, 9686712,
     "Namespace in encryption schemas: does not match namespace given in command: 'db.$cmd.aggregate'"),
]

# (id, scheme, command, rules or None, the command markd writes back (its rules and $db removed))
PASSED_THROUGH: list[tuple[str, str, dict[str, Any], Any, dict[str, Any]]] = [
    ("indexStats", "csfle", agg({"$indexStats": {}}), None, agg({"$indexStats": {}})),
    ("accumulator-code-kept-as-given", "csfle",
     agg({"$group": {"_id": 1, "s": {"$accumulator": {**ACCUMULATOR, "accumulateArgs": ["$plain"]}}}}), None,
     agg({"$group": {"_id": {"$const": 1}, "s": {"$accumulator": {**ACCUMULATOR, "accumulateArgs": ["$plain"]}}}})),
    ("count-stage-desugared", "csfle", agg({"$count": "n"}), None,
     agg({"$group": {"_id": {"$const": None}, "n": {"$sum": {"$const": 1}}}}, {"$project": {"n": True, "_id": False}})),
    ("date-operator-document-form", "csfle", agg({"$project": {"y": {"$year": "$d"}}}), None,
     agg({"$project": {"_id": True, "y": {"$year": {"date": "$d"}}}})),
    ("count-hint-index-name", "csfle", {"count": "coll", "query": {}, "hint": "idx"}, None,
     {"count": "coll", "query": {}, "hint": {"$hint": "idx"}}),
    ("equality-to-document-with-dotted-key", "csfle", find({"plain": {"doc.inner": "abc"}}), None,
     find({"plain": {"$eq": {"doc.inner": "abc"}}})),
    ("set-object-with-dotted-key", "csfle",
     {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"o": {"a.b": 1}}}}]}, None,
     {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"o": {"a.b": 1}}}, "multi": False, "upsert": False}]}),
    ("replacement-with-dotted-key", "csfle", {"update": "coll", "updates": [{"q": {}, "u": {"o": {"a.b": 1}}}]}, None,
     {"update": "coll", "updates": [{"q": {}, "u": {"o": {"a.b": 1}}, "multi": False, "upsert": False}]}),
    ("csfle-search-plain-path", "csfle", agg({"$search": {"text": {"query": "x", "path": "name"}}}), None,
     agg({"$search": {"text": {"query": "x", "path": "name"}}})),
    ("qe-search-plain-path", "qe", agg({"$search": {"text": {"query": "x", "path": "name"}}}), None,
     agg({"$search": {"text": {"query": "x", "path": "name"}}})),
    ("qe-searchMeta-plain-path", "qe", agg({"$searchMeta": {"text": {"query": "x", "path": "name"}}}), None,
     agg({"$searchMeta": {"text": {"query": "x", "path": "name"}}})),
    ("qe-vectorSearch-plain-path", "qe",
     agg({"$vectorSearch": {"index": "i", "path": "v", "queryVector": [1.0], "numCandidates": 10, "limit": 1}}), None,
     agg({"$vectorSearch": {"index": "i", "path": "v", "queryVector": [1.0], "numCandidates": 10, "limit": 1}})),
]

# CSFLE commands whose constants mongocryptd marks (id, command, the marked values in order)
CSFLE_MARKED: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("group-id-cond-constant", agg({"$group": {"_id": {"$cond": [True, "$ssn", "a"]}}}), ["a"]),
    ("group-id-ifNull-constant", agg({"$group": {"_id": {"$ifNull": ["$ssn", "a"]}}}), ["a"]),
    ("addToSet-cond-constant", agg({"$group": {"_id": 1, "s": {"$addToSet": {"$cond": [True, "$ssn", "a"]}}}}),
     ["a"]),
    ("explain-insert", {"explain": {"insert": "coll", "documents": [{"_id": 1, "ssn": "b"}]}}, ["b"]),
]

# QE commands that mark (id, filter)
QE_MARKED: list[tuple[str, dict[str, Any]]] = [
    ("qe-expr-constant", {"$expr": {"$eq": ["$ssn", "a"]}}),
    ("qe-gte-and-eq-with-range-index", {"age": {"$gte": 23, "$eq": 123}}),
]


def _body(scheme: str, command: dict[str, Any], rules: Any) -> tuple[str, dict[str, Any]]:
    body = dict(command)
    database = body.pop("$db", DB)
    if scheme in ("csfle", "csfle-remote"):
        body["jsonSchema"] = SCHEMA if rules is None else rules
        body["isRemoteSchema"] = scheme == "csfle-remote"
    elif scheme == "qe":
        body["encryptionInformation"] = qe_info(rules)
    else:
        body["csfleEncryptionSchemas"] = {f"{DB}.coll": {"jsonSchema": SCHEMA, "isRemoteSchema": False}}
    return database, body


@pytest.mark.parametrize(("scheme", "command", "rules", "code", "message"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_refused_as_mongocryptd_refuses(client, scheme, command, rules, code, message):
    reply = raw_command(client, *_body(scheme, command, rules))
    assert (reply["ok"], reply.get("code"), reply.get("errmsg")) == (0.0, code, message), reply


@pytest.mark.parametrize(("scheme", "command", "rules", "written"), [r[1:] for r in PASSED_THROUGH],
                         ids=[r[0] for r in PASSED_THROUGH])
def test_passed_through_as_mongod_writes_it(client, scheme, command, rules, written):
    reply = raw_command(client, *_body(scheme, command, rules))
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is False, reply
    result = {k: v for k, v in reply["result"].items() if k != "encryptionInformation"}
    assert list(result.items()) == list(written.items())


@pytest.fixture(scope="module")
def csfle_driver(markd: MarkdProcess) -> Iterator[CryptDriver]:
    driver = CryptDriver(markd.uri, only_requested_keys=True)
    driver.schema_map = {f"{DB}.coll": schema_for(driver.create_key("main"))}
    yield driver
    driver.close()


@pytest.mark.parametrize(("command", "values"), [r[1:] for r in CSFLE_MARKED], ids=[r[0] for r in CSFLE_MARKED])
def test_csfle_constants_marked_and_encrypted(client, csfle_driver, command, values):
    reply = raw_command(client, *_body("csfle", command, None))
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True, reply
    assert [read_placeholder(p)["v"] for p in placeholders(reply["result"])] == values
    encrypted = csfle_driver.encrypt(DB, command)
    ciphertexts = placeholders(encrypted)
    assert [csfle_driver.decrypt_value(c) for c in ciphertexts] == values
    assert all(c[:1] == b"\x01" for c in ciphertexts)  # deterministic FLE1 ciphertexts


@pytest.fixture(scope="module")
def qe_driver(markd: MarkdProcess) -> Iterator[CryptDriver]:
    driver = CryptDriver(markd.uri, only_requested_keys=True)
    ssn, age = driver.create_key("ssn"), driver.create_key("age")
    driver.encrypted_fields_map = {f"{DB}.coll": {"fields": [
        qe_field("ssn", "string", ssn, queryType="equality"),
        qe_field("age", "int", age, queryType="range", min=0, max=200, sparsity=Int64(1))]}}
    yield driver
    driver.close()


@pytest.mark.parametrize("filter_", [r[1] for r in QE_MARKED], ids=[r[0] for r in QE_MARKED])
def test_qe_marked_and_encrypted(qe_driver, filter_):
    encrypted = qe_driver.encrypt(DB, find(filter_))
    marked = qe_driver.exchanges[-1].reply
    assert marked["ok"] == 1.0 and marked["hasEncryptionPlaceholders"] is True, marked
    payloads = placeholders(encrypted)
    assert payloads and {p[:1] for p in payloads} <= {b"\x0c", b"\x0d"}  # find equality / find range payloads
