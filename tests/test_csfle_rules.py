"""CSFLE analysis through a real markd: table rows of (command -> marking) and (command -> refusal).

Every marking row is also given to the real libmongocrypt (CryptDriver), which must accept markd's
placeholders, encrypt them, and decrypt back to the very value (and BSON type) that was marked.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import Code, Int64, Regex, Timestamp
from bson.binary import Binary

from markd.analysis.csfle import jsonschema as schema_module
from tests.support.crypt import CryptDriver
from tests.support.process import raw_command
from tests.test_csfle_support import DET, RND, P, encrypt, placeholders, read_placeholder, schema_for, unmark

DB = "db"


@pytest.fixture(scope="module")
def driver(markd):
    crypt = CryptDriver(markd.uri, only_requested_keys=True)
    key = crypt.create_key("main")
    crypt.create_key("alice")
    crypt.key = key  # type: ignore[attr-defined]
    crypt.schema = schema_for(key)  # type: ignore[attr-defined]
    crypt.schema_map = {f"{DB}.coll": crypt.schema}  # type: ignore[attr-defined]
    yield crypt
    crypt.close()


def send(client, driver, command: dict[str, Any], schema: dict[str, Any] | None = None,
         remote: bool = False) -> dict[str, Any]:
    body = dict(command)
    body["jsonSchema"] = driver.schema if schema is None else schema
    body["isRemoteSchema"] = remote
    return raw_command(client, body.pop("$db", DB), body)


def subset(actual: Any, expected: Any) -> bool:
    """Expected top-level fields equal in actual (nested documents compared exactly)."""
    return all(k in actual and actual[k] == v for k, v in expected.items())


# (id, command, fields of result expected after unmark)
MARKED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("find-implicit-eq", {"find": "coll", "filter": {"ssn": "123"}}, {"filter": {"ssn": {"$eq": P(1, "123")}}}),
    ("find-and-normalised", {"find": "coll", "filter": {"ssn": "1", "_id": 2}},
     {"filter": {"$and": [{"ssn": {"$eq": P(1, "1")}}, {"_id": {"$eq": 2}}]}}),
    ("find-in", {"find": "coll", "filter": {"ssn": {"$in": ["a", "b"]}}},
     {"filter": {"ssn": {"$in": [P(1, "a"), P(1, "b")]}}}),
    ("find-in-sorted-deduplicated", {"find": "coll", "filter": {"ssn": {"$in": ["bb", "a", "bb", "ab"]},
                                                                "plain": {"$in": ["y", 2, "x", 1.5]}}},
     {"filter": {"$and": [{"ssn": {"$in": [P(1, "a"), P(1, "ab"), P(1, "bb")]}},
                          {"plain": {"$in": [1.5, 2, "x", "y"]}}]}}),
    ("find-ne", {"find": "coll", "filter": {"ssn": {"$ne": "a"}}}, {"filter": {"ssn": {"$not": {"$eq": P(1, "a")}}}}),
    ("find-nin", {"find": "coll", "filter": {"ssn": {"$nin": ["a"]}}},
     {"filter": {"ssn": {"$not": {"$in": [P(1, "a")]}}}}),
    ("find-nested-path", {"find": "coll", "filter": {"doc.inner": "x"}}, {"filter": {"doc.inner": {"$eq": P(1, "x")}}}),
    ("find-int32-keeps-type", {"find": "coll", "filter": {"age": 5}}, {"filter": {"age": {"$eq": P(1, 5)}}}),
    ("find-int64-keeps-type", {"find": "coll", "filter": {"doc.deep.leaf": Int64(5)}},
     {"filter": {"doc.deep.leaf": {"$eq": P(1, Int64(5))}}}),
    ("find-object-equality", {"find": "coll", "filter": {"doc": {"inner": "x", "other": 1}}},
     {"filter": {"doc": {"$eq": {"inner": P(1, "x"), "other": 1}}}}),
    ("find-or", {"find": "coll", "filter": {"$or": [{"ssn": "a"}, {"age": {"$in": [1, 2]}}]}},
     {"filter": {"$or": [{"ssn": {"$eq": P(1, "a")}}, {"age": {"$in": [P(1, 1), P(1, 2)]}}]}}),
    ("find-generic-fields", {"find": "coll", "filter": {"ssn": "a"}, "comment": "hi", "limit": 3, "sort": {"x": 1},
                             "readConcern": {"level": "local"}},
     {"comment": "hi", "limit": 3, "sort": {"x": 1}, "readConcern": {"level": "local"}}),
    ("count", {"count": "coll", "query": {"ssn": "a"}}, {"query": {"ssn": {"$eq": P(1, "a")}}}),
    ("distinct", {"distinct": "coll", "key": "ssn", "query": {"ssn": "a"}},
     {"key": "ssn", "query": {"ssn": {"$eq": P(1, "a")}}}),
    ("delete", {"delete": "coll", "deletes": [{"q": {"ssn": "a"}, "limit": 1}]},
     {"deletes": [{"q": {"ssn": {"$eq": P(1, "a")}}, "limit": 1}]}),
    ("insert", {"insert": "coll", "documents": [{"_id": 1, "ssn": "a", "rnd": "b", "doc": {"inner": "c"},
                                                 "plain": "p", "alt": "z", "keyName": "alice"}]},
     {"documents": [{"_id": 1, "ssn": P(1, "a"), "rnd": P(2, "b"), "doc": {"inner": P(1, "c")}, "plain": "p",
                     "alt": P(2, "z", "alice"), "keyName": "alice"}]}),
    ("insert-random-any-type", {"insert": "coll", "documents": [{"_id": 1, "any": [1, {"x": 1.5}], "num": 2.5}]},
     {"documents": [{"_id": 1, "any": P(2, [1, {"x": 1.5}]), "num": P(2, 2.5)}]}),
    ("insert-exotic-types", {"insert": "coll", "documents": [{"_id": 1, "any": Code("f()")},
                                                            {"_id": 2, "any": Regex("^a", "i")},
                                                            {"_id": 3, "any": Timestamp(5, 1)}]},
     {"documents": [{"_id": 1, "any": P(2, Code("f()"))}, {"_id": 2, "any": P(2, Regex("^a", "i"))},
                    {"_id": 3, "any": P(2, Timestamp(5, 1))}]}),
    ("update-set", {"update": "coll", "updates": [{"q": {"ssn": "a"}, "u": {"$set": {"ssn": "b", "rnd": "c"}}}]},
     {"updates": [{"q": {"ssn": {"$eq": P(1, "a")}}, "u": {"$set": {"ssn": P(1, "b"), "rnd": P(2, "c")}},
                   "multi": False, "upsert": False}]}),
    ("update-replacement", {"update": "coll", "updates": [{"q": {}, "u": {"ssn": "b", "x": 1}, "multi": False}]},
     {"updates": [{"q": {}, "u": {"ssn": P(1, "b"), "x": 1}, "multi": False, "upsert": False}]}),
    ("update-set-object-at-prefix", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"doc": {"inner": "q"}}}}]},
     {"updates": [{"q": {}, "u": {"$set": {"doc": {"inner": P(1, "q")}}}, "multi": False, "upsert": False}]}),
    ("update-unset-and-same-metadata-rename",
     {"update": "coll", "updates": [{"q": {"ssn": "z"}, "u": {"$unset": {"rnd": ""}, "$rename": {"x": "y"}}}]},
     {"updates": [{"q": {"ssn": {"$eq": P(1, "z")}}, "u": {"$unset": {"rnd": ""}, "$rename": {"x": "y"}},
                   "multi": False, "upsert": False}]}),
    ("findAndModify", {"findAndModify": "coll", "query": {"ssn": "a"}, "update": {"$set": {"age": 3}}},
     {"query": {"ssn": {"$eq": P(1, "a")}}, "update": {"$set": {"age": P(1, 3)}}}),
    ("aggregate-match-group", {"aggregate": "coll", "pipeline": [{"$match": {"ssn": "a"}},
                                                                  {"$group": {"_id": 1, "n": {"$sum": 1}}}],
                               "cursor": {}},
     {"pipeline": [{"$match": {"ssn": {"$eq": P(1, "a")}}},
                   {"$group": {"_id": {"$const": 1}, "n": {"$sum": {"$const": 1}}}}], "cursor": {}}),
    ("aggregate-expr-eq", {"aggregate": "coll", "pipeline": [{"$match": {"$expr": {"$eq": ["$ssn", "a"]}}}],
                           "cursor": {}},
     {"pipeline": [{"$match": {"$expr": {"$eq": ["$ssn", {"$const": P(1, "a")}]}}}]}),
    ("aggregate-match-after-project", {"aggregate": "coll", "pipeline": [{"$project": {"s": "$ssn"}},
                                                                          {"$match": {"s": "a"}}], "cursor": {}},
     {"pipeline": [{"$project": {"_id": True, "s": "$ssn"}}, {"$match": {"s": {"$eq": P(1, "a")}}}]}),
    ("find-expr-in", {"find": "coll", "filter": {"$expr": {"$in": ["$ssn", ["a", "b"]]}}},
     {"filter": {"$expr": {"$in": ["$ssn", [{"$const": P(1, "a")}, {"$const": P(1, "b")}]]}}}),
    ("find-projection-compares", {"find": "coll", "filter": {"ssn": "a"}, "projection": {"m": {"$eq": ["$ssn", "b"]},
                                                                                        "x": 1}},
     {"projection": {"m": {"$eq": ["$ssn", {"$const": P(1, "b")}]}, "x": 1}}),
    ("aggregate-addFields-cond-then-match", {"aggregate": "coll", "pipeline": [
        {"$set": {"s": {"$cond": [{"$eq": ["$plain", "x"]}, "$ssn", "$ssn"]}}}, {"$match": {"s": "a"}}], "cursor": {}},
     {"pipeline": [{"$set": {"s": {"$cond": [{"$eq": ["$plain", {"$const": "x"}]}, "$ssn", "$ssn"]}}},
                   {"$match": {"s": {"$eq": P(1, "a")}}}]}),
    ("aggregate-group-first-then-match", {"aggregate": "coll", "pipeline": [
        {"$group": {"_id": "$ssn", "f": {"$first": "$age"}}}, {"$match": {"_id": "k", "f": 4}}], "cursor": {}},
     {"pipeline": [{"$group": {"_id": "$ssn", "f": {"$first": "$age"}}},
                   {"$match": {"$and": [{"_id": {"$eq": P(1, "k")}}, {"f": {"$eq": P(1, 4)}}]}}]}),
    ("expr-cond-constants-before-the-field", {"find": "coll", "filter": {"$expr": {"$eq": [
        {"$cond": [{"$eq": ["$plain", "p"]}, "a", "b"]}, "$ssn"]}}},
     {"filter": {"$expr": {"$eq": [{"$cond": [{"$eq": ["$plain", {"$const": "p"}]}, {"$const": P(1, "a")},
                                              {"$const": P(1, "b")}]}, "$ssn"]}}}),
    ("explain-find", {"explain": {"find": "coll", "filter": {"ssn": "a"}}},
     {"explain": {"find": "coll", "filter": {"ssn": {"$eq": P(1, "a")}}}, "verbosity": "allPlansExecution"}),
    ("explain-keeps-verbosity", {"explain": {"count": "coll", "query": {"ssn": "a"}}, "verbosity": "queryPlanner"},
     {"explain": {"count": "coll", "query": {"ssn": {"$eq": P(1, "a")}}}, "verbosity": "queryPlanner"}),
]
# Marked by markd but not sent through libmongocrypt: it refuses the lowercase spelling.
MARKED_MARKD_ONLY: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("findandmodify-lowercase-remove", {"findandmodify": "coll", "query": {"ssn": "a"}, "remove": True},
     {"query": {"ssn": {"$eq": P(1, "a")}}, "remove": True}),
    # mongocryptd analyses an explained insert like the insert itself.
    ("explain-insert", {"explain": {"insert": "coll", "documents": [{"_id": 1, "ssn": "a"}]}},
     {"explain": {"insert": "coll", "documents": [{"_id": 1, "ssn": P(1, "a")}]}, "verbosity": "allPlansExecution"}),
]


@pytest.mark.parametrize(("command", "expected"), [(c, e) for _, c, e in MARKED + MARKED_MARKD_ONLY],
                         ids=[i for i, _, _ in MARKED + MARKED_MARKD_ONLY])
def test_marking(client, driver, command, expected):
    reply = send(client, driver, command)
    assert reply["ok"] == 1.0, reply
    assert reply["hasEncryptionPlaceholders"] is True
    assert reply["schemaRequiresEncryption"] is True
    result = reply["result"]
    assert "jsonSchema" not in result and "isRemoteSchema" not in result and "$db" not in result
    # findandmodify comes back under mongod's camel-case name, as mongocryptd's serializer writes it.
    assert next(iter(result)) == {"findandmodify": "findAndModify"}.get(next(iter(command)), next(iter(command)))
    unmarked = unmark(result)
    assert subset(unmarked, expected), unmarked
    for placeholder in placeholders(result):
        body = read_placeholder(placeholder)
        assert body.get("ki", driver.key) == driver.key


@pytest.mark.parametrize("command", [c for _, c, _ in MARKED], ids=[i for i, _, _ in MARKED])
def test_libmongocrypt_encrypts_the_marking(driver, command):
    """The real libmongocrypt accepts the marking and its ciphertexts decrypt to the marked values."""
    driver.callback.exchanges.clear()
    encrypted = driver.encrypt(DB, command)
    marked = driver.exchanges[-1].reply["result"]
    marked_values = [read_placeholder(p)["v"] for p in placeholders(marked)]
    ciphertexts = placeholders(encrypted)
    assert len(ciphertexts) == len(marked_values) > 0
    for ciphertext, value in zip(ciphertexts, marked_values, strict=True):
        assert ciphertext[:1] in (b"\x01", b"\x02")  # FLE1 deterministic / random ciphertext
        decrypted = driver.decrypt_value(ciphertext)
        assert decrypted == value and type(decrypted) is type(value)


# (id, command, schema override or None, remote, code, message fragment)
K = Binary(b"\x11" * 16, 4)
REFUSED: list[tuple[str, dict[str, Any], dict[str, Any] | None, bool, int, str]] = [
    ("random-equality", {"find": "coll", "filter": {"rnd": "a"}}, None, False, 51158,
     "Cannot query on fields encrypted with the randomized encryption algorithm"),
    ("random-in", {"find": "coll", "filter": {"rnd": {"$in": ["a"]}}}, None, False, 51158, "randomized"),
    ("gt", {"find": "coll", "filter": {"ssn": {"$gt": "a"}}}, None, False, 51118,
     "Invalid match expression operator on encrypted field 'ssn'"),
    ("regex", {"find": "coll", "filter": {"ssn": Regex("^a")}}, None, False, 51092,
     "Invalid match expression operator on encrypted field"),
    ("type", {"find": "coll", "filter": {"ssn": {"$type": 2}}}, None, False, 51092, "Invalid match expression"),
    ("size", {"find": "coll", "filter": {"ssn": {"$size": 2}}}, None, False, 51092, "Invalid match expression"),
    ("bits", {"find": "coll", "filter": {"age": {"$bitsAllSet": 3}}}, None, False, 51092, "Invalid match expression"),
    ("geo", {"find": "coll", "filter": {"ssn": {"$near": [0, 0]}}}, None, False, 51092, "Invalid match expression"),
    ("text", {"find": "coll", "filter": {"$text": {"$search": "x"}}}, None, False, 51094,
     "Unsupported match expression operator for encryption"),
    ("where", {"find": "coll", "filter": {"$where": "true"}}, None, False, 51094, "Unsupported match expression"),
    ("elemMatch-on-encrypted", {"find": "coll", "filter": {"ssn": {"$elemMatch": {"a": 1}}}}, None, False, 6890100,
     "$elemMatch is unsupported on encrypted fields"),
    ("null-equality", {"find": "coll", "filter": {"ssn": None}}, None, False, 51095,
     "Illegal equality to null predicate for encrypted field: 'ssn'"),
    ("null-in", {"find": "coll", "filter": {"ssn": {"$in": [None]}}}, None, False, 51120,
     "Illegal equality to null inside $in against an encrypted field: 'ssn'"),
    ("regex-in", {"find": "coll", "filter": {"ssn": {"$in": [Regex("a")]}}}, None, False, 51015, "Illegal regex"),
    ("array-eq-on-prefix", {"find": "coll", "filter": {"doc": [1]}}, None, False, 31007,
     "$eq to array predicate is illegal for prefix of encrypted path"),
    ("through-encrypted", {"find": "coll", "filter": {"ssn.x": 1}}, None, False, 51102,
     "Invalid operation on path 'ssn.x' which contains an encrypted path prefix."),
    ("wrong-value-type", {"insert": "coll", "documents": [{"_id": 1, "rnd": 5}]}, None, False, 31118,
     "Cannot encrypt element of type int because schema requires that type is one of: [ string ]"),
    ("array-deterministic", {"insert": "coll", "documents": [{"_id": 1, "ssn": ["a"]}]}, None, False, 31041,
     "Cannot encrypt element of type: array"),
    ("array-above-encrypted", {"insert": "coll", "documents": [{"_id": 1, "doc": [{"inner": "a"}]}]}, None, False,
     31006, "An array at path 'doc' would violate the schema"),
    ("timestamp-zero", {"insert": "coll", "documents": [{"_id": 1, "any": Timestamp(0, 0)}]}, None, False, 51129,
     "A command that inserts cannot supply Timestamp(0, 0) for an encrypted top-level field at path any"),
    ("pointer-missing", {"insert": "coll", "documents": [{"_id": 1, "alt": "x"}]}, None, False, 51114,
     "keyId pointer '/keyName' must point to a field that exists"),
    ("pointer-not-string", {"insert": "coll", "documents": [{"_id": 1, "alt": "x", "keyName": 3}]}, None, False,
     51115, "keyId pointer '/keyName' must point to a string"),
    ("pointer-to-encrypted-field", {"insert": "coll", "documents": [{"_id": 1, "a": "x", "b": "y"}]},
     {"bsonType": "object", "properties": {"a": encrypt("/b", RND, "string"), "b": encrypt(K, DET, "string")}},
     False, 30017, "keyId pointer '/b' cannot point to an encrypted field"),
    ("pointer-in-set", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"alt": "x"}}}]}, None, False, 51093,
     "A non-static (JSONPointer) keyId is not supported."),
    ("inc", {"update": "coll", "updates": [{"q": {}, "u": {"$inc": {"age": 1}}}]}, None, False, 51150,
     "$inc and $mul not allowed on encrypted values"),
    ("push", {"update": "coll", "updates": [{"q": {}, "u": {"$push": {"ssn": 1}}}]}, None, False, 51150,
     "$push not allowed on encrypted values"),
    ("positional", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"ssn.$": "a"}}}]}, None, False, 51149,
     "Cannot encrypt fields below '$' positional update operator"),
    ("array-filter", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"ssn.$[i]": "a"}},
                                                     "arrayFilters": [{"i": 1}]}]}, None, False, 51150,
     "Array update operations not allowed on encrypted values"),
    ("rename-mismatch", {"update": "coll", "updates": [{"q": {}, "u": {"$rename": {"ssn": "rnd"}}}]}, None, False,
     51160, "$rename between two encrypted fields must have the same metadata or both be unencrypted"),
    ("rename-prefix", {"update": "coll", "updates": [{"q": {}, "u": {"$rename": {"doc": "x"}}}]}, None, False,
     51161, "$rename is not allowed on an object containing encrypted fields"),
    ("set-scalar-on-prefix", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"doc": 1}}}]}, None, False,
     51159, "Cannot $set to a path doc that is an encrypted prefix to a non-object type"),
    ("set-nested-scalar-on-prefix", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"doc": {"deep": 1}}}}]},
     None, False, 51159, "Cannot $set to a path doc.deep that is an encrypted prefix to a non-object type"),
    ("push-document-above-encrypted", {"update": "coll", "updates": [{"q": {}, "u": {"$push": {"doc": {"inner": 1}}}}]},
     None, False, 51150, "$push not allowed on encrypted values"),
    ("upsert-modifier-with-encrypted-id", {"update": "coll", "updates": [{"q": {}, "u": {"$set": {"x": 1}},
                                                                        "upsert": True}]},
     {"bsonType": "object", "properties": {"_id": encrypt(K, DET, "int")}}, False, 51130,
     "_id must be explicitly provided when configured as encrypted"),
    ("pipeline-update-writes-encrypted", {"update": "coll", "updates": [{"q": {}, "u": [{"$set": {"ssn": "x"}}]}]},
     None, False, 31146, "Pipelines in updates are not allowed to modify encrypted fields"),
    ("distinct-random", {"distinct": "coll", "key": "rnd"}, None, False, 31026,
     "Distinct key is not allowed to be marked for encryption with the randomized encryption algorithm"),
    ("distinct-prefix", {"distinct": "coll", "key": "doc"}, None, False, 31027,
     "Distinct key is not allowed to be a prefix of an encrypted field"),
    ("distinct-pointer", {"distinct": "coll", "key": "alt"}, None, False, 51131,
     "The distinct key is not allowed to be marked for encryption with a non-UUID keyId"),
    ("out-stage", {"aggregate": "coll", "pipeline": [{"$out": "coll"}], "cursor": {}}, None, False, 31011,
     "Aggregation stage $out is not allowed or supported with automatic encryption."),
    # mongod's pipeline parser refuses an unknown stage before query analysis sees the pipeline.
    ("unknown-stage", {"aggregate": "coll", "pipeline": [{"$frobnicate": {}}], "cursor": {}}, None, False, 40324,
     "Unrecognized pipeline stage name: '$frobnicate'"),
    ("out-to-other-collection", {"aggregate": "coll", "pipeline": [{"$out": "x"}], "cursor": {}}, None, False, 51204,
     "Pipeline over an encrypted collection cannot reference additional collections."),
    ("sort-encrypted", {"aggregate": "coll", "pipeline": [{"$sort": {"ssn": 1}}], "cursor": {}}, None, False, 51201,
     "Sorting on key 'ssn' is not allowed due to encryption."),
    ("group-random", {"aggregate": "coll", "pipeline": [{"$group": {"_id": "$rnd"}}], "cursor": {}}, None, False,
     51222, "Cannot group on field '_id' which is encrypted with the random algorithm"),
    ("accumulate-encrypted", {"aggregate": "coll", "pipeline": [{"$group": {"_id": 1, "a": {"$avg": "$age"}}}],
                              "cursor": {}}, None, False, 51221,
     "Accumulator '$avg' cannot aggregate encrypted fields."),
    ("lookup-other-collection", {"aggregate": "coll", "pipeline": [{"$lookup": {"from": "other", "localField": "x",
                                                                                "foreignField": "y", "as": "j"}}],
                                 "cursor": {}}, None, False, 51204,
     "Pipeline over an encrypted collection cannot reference additional collections."),
    ("unwind-random", {"aggregate": "coll", "pipeline": [{"$unwind": "$rnd"}], "cursor": {}}, None, False, 31153,
     "$unwind is not allowed on a field which is encrypted with the randomized algorithm"),
    ("expr-evaluates-encrypted", {"find": "coll", "filter": {"$expr": {"$gt": ["$age", 5]}}}, None, False, 31110,
     "Encrypted field 'age' is not allowed to be evaluated by a greater than comparison"),
    ("expr-compares-random", {"find": "coll", "filter": {"$expr": {"$eq": ["$rnd", "a"]}}}, None, False, 31158,
     "Comparison disallowed between fields where one is randomly encrypted"),
    ("expr-encrypted-vs-plain-field", {"find": "coll", "filter": {"$expr": {"$eq": ["$plain", "$ssn"]}}}, None, False,
     31098, "Comparison disallowed between encrypted fields and unencrypted fields; 'ssn' is encrypted but is "
            "compared to 'plain'"),
    ("expr-plain-vs-encrypted-field", {"find": "coll", "filter": {"$expr": {"$eq": ["$ssn", "$plain"]}}}, None, False,
     31099, "'plain' is unencrypted but is compared to 'ssn'"),
    ("expr-different-encryptions", {"find": "coll", "filter": {"$expr": {"$eq": ["$ssn", "$age"]}}}, None, False,
     31100, "encryption algorithm for field 'age' does not match the algorithm of 'ssn'"),
    ("expr-evaluation-compared", {"find": "coll", "filter": {"$expr": {"$eq": ["$ssn", {"$concat": ["a", "b"]}]}}},
     None, False, 31117, "Result of evaluating string concatination forbidden from being compared to encrypted fields"),
    ("expr-root-compared", {"find": "coll", "filter": {"$expr": {"$eq": ["$$ROOT", {}]}}}, None, False, 31121,
     "Access to variable ROOT disallowed"),
    ("expr-prefix-compared", {"find": "coll", "filter": {"$expr": {"$eq": ["$doc", {}]}}}, None, False, 31131,
     "Found forbidden reference to prefix of encrypted field doc"),
    ("collation-string", {"find": "coll", "filter": {"ssn": "a"}, "collation": {"locale": "fr"}}, None, False, 31054,
     "cannot apply non-simple collation when comparing to element"),
    ("validator-on-encrypted", {"create": "coll", "validator": {"ssn": "a"}}, None, False, 6491100,
     "Comparison to encrypted fields not supported in collection validator."),
    ("partial-filter-on-encrypted", {"createIndexes": "coll", "indexes": [{"key": {"x": 1}, "name": "x",
                                                                           "partialFilterExpression": {"ssn": "a"}}]},
     None, False, 6491102, "Comparison to encrypted fields not supported in a partialFilterExpression."),
    # mongocryptd's bulkWrite analysis is Queryable Encryption only.
    ("bulkWrite-csfle", {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": 1, "ssn": "a"}}],
                         "nsInfo": [{"ns": "db.coll"}], "$db": "admin"}, None, False, 2,
     "The bulkWrite command only supports Queryable Encryption"),
    # ...after the database it must run on.
    ("bulkWrite-not-admin", {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": 1, "ssn": "a"}}],
                             "nsInfo": [{"ns": "db.coll"}]}, None, False, 73,
     "BulkWrite has to be executed against the admin database"),
    ("view", {"create": "v", "viewOn": "coll", "pipeline": []}, None, False, 7501300,
     "Creating a view is not supported with automatic encryption"),
    ("projection-evaluates-encrypted", {"find": "coll", "projection": {"m": {"$gt": ["$ssn", "a"]}}}, None, False,
     31110, "Encrypted field 'ssn' is not allowed to be evaluated by a greater than comparison"),
    ("match-after-lookup-unknown", {"aggregate": "coll", "pipeline": [
        {"$lookup": {"from": "coll", "localField": "plain", "foreignField": "plain", "as": "j"}},
        {"$match": {"j.ssn": "a"}}], "cursor": {}}, None, False, 31133, "not known until runtime"),
    ("cond-mixing-encryptions", {"aggregate": "coll", "pipeline": [
        {"$set": {"s": {"$cond": [True, "$ssn", "$plain"]}}}, {"$match": {"s": "a"}}], "cursor": {}}, None, False,
     31133, "not known until runtime"),
    ("unionWith-same-collection", {"aggregate": "coll", "pipeline": [{"$unionWith": "coll"}], "cursor": {}}, None,
     False, 31011, "Aggregation stage $unionWith is not allowed or supported with automatic encryption."),
    ("unionWith-other-collection", {"aggregate": "coll", "pipeline": [{"$unionWith": "other"}], "cursor": {}}, None,
     False, 51204, "Pipeline over an encrypted collection cannot reference additional collections."),
    ("facet-single-schema", {"aggregate": "coll", "pipeline": [{"$facet": {"a": []}}], "cursor": {}}, None,
     False, 31011, "Aggregation stage $facet is not allowed"),
    # schemas
    ("local-validation-keyword", {"find": "coll", "filter": {}}, {"bsonType": "object", "required": ["a"]}, False,
     31068, "JSON schema keyword 'required' is only allowed with a remote schema"),
    ("unsupported-keyword", {"find": "coll", "filter": {}}, {"bsonType": "object", "dependencies": {"a": ["b"]}}, True,
     31126, "JSON schema keyword 'dependencies' is not supported for client-side encryption"),
    ("encrypt-without-object-parent", {"find": "coll", "filter": {}},
     {"properties": {"a": encrypt(K, DET, "string")}}, False, 51077,
     "Invalid schema containing the 'encrypt' keyword."),
    ("encrypt-in-items", {"find": "coll", "filter": {}},
     {"bsonType": "object", "properties": {"a": {"bsonType": "array", "items": encrypt(K, RND)}}}, False, 51077,
     "Invalid schema containing the 'encrypt' keyword."),
    ("encrypt-in-anyOf", {"find": "coll", "filter": {}}, {"anyOf": [{"properties": {"a": encrypt(K, RND)}}]}, False,
     51077, "Invalid schema"),
    ("encrypt-with-bsonType", {"find": "coll", "filter": {}},
     {"bsonType": "object", "properties": {"a": {**encrypt(K, RND), "bsonType": "string"}}}, False, 9,
     "'encrypt' cannot be used in conjunction with 'bsonType'"),
    ("encrypt-with-sibling", {"find": "coll", "filter": {}},
     {"bsonType": "object", "properties": {"a": {**encrypt(K, RND), "description": "x"}}}, False, 51078,
     "sibling keywords are not allowed"),
    ("deterministic-double", {"find": "coll", "filter": {}},
     {"bsonType": "object", "properties": {"a": encrypt(K, DET, "double")}}, False, 31122,
     "Cannot encrypt element of type: double"),
    ("deterministic-two-types", {"find": "coll", "filter": {}},
     {"bsonType": "object", "properties": {"a": encrypt(K, DET, ["string", "int"])}}, False, 31051,
     "A deterministically encrypted field must have exactly one specified type."),
    ("deterministic-pointer", {"find": "coll", "filter": {}},
     {"bsonType": "object", "properties": {"a": encrypt("/k", DET, "string")}}, False, 31169,
     "A deterministically encrypted field cannot have a keyId represented by a JSON pointer"),
    ("random-id", {"find": "coll", "filter": {}}, {"bsonType": "object", "properties": {"_id": encrypt(K, RND)}},
     False, 51194, "AEAD_AES_256_CBC_HMAC_SHA_512-Random encryption algorithm not allowed."),
    ("metadata-without-algorithm", {"find": "coll", "filter": {}},
     {"bsonType": "object", "encryptMetadata": {"keyId": [K]}, "properties": {"a": {"encrypt": {}}}}, False, 51099,
     "Encrypt object combined with encryptMetadata needs to specify an algorithm"),
    ("conflicting-metadata", {"find": "coll", "filter": {"ab": "x"}},
     {"bsonType": "object", "properties": {"ab": encrypt(K, DET, "string")},
      "patternProperties": {"^a": encrypt(K, RND, "string")}}, False, 51142,
     "Found conflicting encryption metadata for path: 'ab'"),
]


@pytest.mark.parametrize(("command", "schema", "remote", "code", "message"),
                         [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused(client, driver, command, schema, remote, code, message):
    reply = send(client, driver, command, schema, remote)
    assert reply["ok"] == 0.0, reply
    assert reply["code"] == code, reply
    assert message in reply["errmsg"], reply
    assert reply["codeName"]


def test_modifier_updates_come_back_in_mongods_order(client, driver):
    """Operators alphabetically, then paths component by component (array indexes numerically)."""
    update = {"$unset": {"z": ""}, "$set": {"ssn": "b", "a.10": 1, "a.9": 2, "age": 2}}
    reply = send(client, driver, {"update": "coll", "updates": [{"q": {}, "u": update}]})
    marked = reply["result"]["updates"][0]["u"]
    assert list(marked) == ["$set", "$unset"]
    assert list(marked["$set"]) == ["a.9", "a.10", "age", "ssn"]
    assert unmark(marked["$set"]["ssn"]) == P(1, "b")


def test_inc_above_an_encrypted_path_is_refused(client, driver):
    """Its operand would reach the server in the clear, beside ciphertext (mongod would fail it anyway)."""
    reply = send(client, driver, {"update": "coll", "updates": [{"q": {"ssn": "a"}, "u": {"$inc": {"doc": 1}}}]})
    assert reply["ok"] == 0.0 and reply["code"] == 51150, reply


def test_error_messages_carry_no_query_values(client, driver):
    reply = send(client, driver, {"find": "coll", "filter": {"rnd": "topsecret-value"}})
    assert reply["ok"] == 0.0 and "topsecret" not in reply["errmsg"]


def test_schema_parameters_are_mandatory(client, driver):
    assert raw_command(client, DB, {"find": "coll", "jsonSchema": driver.schema})["code"] == 31104
    reply = raw_command(client, DB, {"find": "coll", "jsonSchema": driver.schema, "isRemoteSchema": 1})
    assert reply["code"] == 31102
    assert raw_command(client, DB, {"find": "coll", "jsonSchema": 5, "isRemoteSchema": True})["code"] == 51090


def test_remote_schema_ignores_validation_keywords(client, driver):
    schema = {**driver.schema, "required": ["ssn"], "properties": {**driver.schema["properties"],
                                                                   "n": {"minimum": 3}}}
    reply = send(client, driver, {"find": "coll", "filter": {"ssn": "a"}}, schema, remote=True)
    assert reply["ok"] == 1.0 and unmark(reply["result"]["filter"]) == {"ssn": {"$eq": P(1, "a")}}


def test_flags_when_nothing_is_marked(client, driver):
    reply = send(client, driver, {"find": "coll", "filter": {"plain": "a"}, "$db": "db"})
    assert (reply["hasEncryptionPlaceholders"], reply["schemaRequiresEncryption"]) == (False, True)
    assert reply["result"] == {"find": "coll", "filter": {"plain": {"$eq": "a"}}}


def test_flags_without_encryption(client, driver):
    """Nothing encrypted: still analysed (and its refusals apply), both flags false."""
    command = {"find": "coll", "filter": {"a": "x"}, "lsid": {"id": Binary(b"\x01" * 16, 4)}}
    plain_schema = {"bsonType": "object", "properties": {"a": {"bsonType": "string"}}}
    reply = send(client, driver, command, plain_schema)
    assert (reply["hasEncryptionPlaceholders"], reply["schemaRequiresEncryption"]) == (False, False)
    assert reply["result"] == {**command, "filter": {"a": {"$eq": "x"}}}
    refused = send(client, driver, {"find": "coll", "filter": {"$where": "1"}}, plain_schema)
    assert refused["code"] == 51094


def test_create_with_same_schema_validator_passes_unmarked(client, driver):
    command = {"create": "coll", "validator": {"$jsonSchema": driver.schema}}
    reply = send(client, driver, command)
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is False
    assert reply["result"] == command
    other = send(client, driver, {"create": "coll", "validator": {"$jsonSchema": {"bsonType": "object"}}})
    assert other["code"] == 6491101


@pytest.mark.parametrize("validator", [
    lambda schema: {"$and": [{"$jsonSchema": schema}, {"x": 1}]},
    lambda schema: {"$jsonSchema": schema, "x": 1},
    lambda schema: {"$or": [{"$jsonSchema": schema}]},
])
@pytest.mark.parametrize("command", ["create", "collMod"])
def test_validator_combining_json_schema_meets_the_encrypted_leaf(client, driver, validator, command):
    # A validator that is not exactly {$jsonSchema: ...} is a filter: the desugared `encrypt` of an encrypted
    # field is an operator no encrypted field takes.
    reply = send(client, driver, {command: "coll", "validator": validator(driver.schema)})
    first = next(name for name, sub in driver.schema["properties"].items() if "encrypt" in sub)
    assert reply["ok"] == 0.0 and reply["code"] == 51092, reply
    assert reply["errmsg"] == (f"Invalid match expression operator on encrypted field '{first}': "
                               f"{{ {first}: {{ $_internalSchemaBinDataSubType: 6 }} }}")


def test_json_pointer_key_alt_name_and_encrypt_metadata_inheritance(client, driver):
    schema = {"bsonType": "object", "encryptMetadata": {"keyId": [driver.key], "algorithm": RND},
              "properties": {"a": {"encrypt": {"bsonType": "string"}},
                             "b": {"bsonType": "object", "encryptMetadata": {"algorithm": DET},
                                   "properties": {"c": {"encrypt": {"bsonType": "int"}}}}}}
    reply = send(client, driver, {"insert": "coll", "documents": [{"a": "x", "b": {"c": 1}}]}, schema)
    assert unmark(reply["result"]["documents"]) == [{"a": P(2, "x"), "b": {"c": P(1, 1)}}]


def test_multi_namespace_lookup(client, driver):
    other = {"bsonType": "object", "properties": {"ssn": driver.schema["properties"]["ssn"]}}
    command = {"aggregate": "coll", "pipeline": [{"$lookup": {"from": "other", "localField": "ssn",
                                                              "foreignField": "ssn", "as": "j"}},
                                                 {"$match": {"ssn": "a"}}],
               "cursor": {}, "csfleEncryptionSchemas": {
                   "db.coll": {"jsonSchema": driver.schema, "isRemoteSchema": False},
                   "db.other": {"jsonSchema": other, "isRemoteSchema": False}}}
    reply = raw_command(client, DB, command)
    assert reply["ok"] == 1.0, reply
    assert unmark(reply["result"]["pipeline"][1]) == {"$match": {"ssn": {"$eq": P(1, "a")}}}
    del command["csfleEncryptionSchemas"]["db.other"]
    assert raw_command(client, DB, command)["code"] == 9710000


def test_parsed_schemas_are_cached():
    schema = {"bsonType": "object", "properties": {"cache_probe": encrypt(K, RND)}}
    schema_module.parse(schema, False)
    hits, misses = schema_module.cache_stats()
    again = schema_module.parse(schema, False)
    assert schema_module.cache_stats() == (hits + 1, misses)
    assert again.metadata_for("cache_probe").algorithm == 2


def test_libmongocrypt_lookup_across_collections(markd):
    """libmongocrypt sends csfleEncryptionSchemas for a $lookup; markd marks with the right schemas."""
    crypt = CryptDriver(markd.uri, only_requested_keys=True)
    try:
        key = crypt.create_key()
        schema = schema_for(key)
        crypt.schema_map = {f"{DB}.coll": schema, f"{DB}.other": {"bsonType": "object", "properties": {
            "ssn": schema["properties"]["ssn"]}}}
        crypt.enable_multiple_collinfo = True  # a $lookup needs libmongocrypt's multi-collection support
        command = {"aggregate": "coll", "pipeline": [
            {"$match": {"ssn": "a"}},
            {"$lookup": {"from": "other", "localField": "ssn", "foreignField": "ssn", "as": "j"}}], "cursor": {}}
        encrypted = crypt.encrypt(DB, command)
        sent = crypt.exchanges[-1].sent
        assert "csfleEncryptionSchemas" in sent, sent
        ciphertext = encrypted["pipeline"][0]["$match"]["ssn"]["$eq"]
        assert crypt.decrypt_value(ciphertext) == "a"
        assert encrypted["pipeline"][1] == command["pipeline"][1]
    finally:
        crypt.close()


def test_properties_and_pattern_properties_agreeing_on_a_path_are_no_conflict(client, driver):
    # mongocryptd compares the metadata each matching subschema resolves to: identical is not a conflict.
    schema = {"bsonType": "object", "properties": {"ab": encrypt(driver.key, DET, "string")},
              "patternProperties": {"^a": encrypt(driver.key, DET, "string")}}
    reply = send(client, driver, {"find": "coll", "filter": {"ab": "x"}}, schema)
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True, reply
    assert unmark(reply["result"]["filter"]) == {"ab": {"$eq": P(1, "x")}}
