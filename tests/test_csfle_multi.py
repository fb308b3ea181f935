"""CSFLE breadth: pipelines over several namespaces (csfleEncryptionSchemas), $bucket as mongod
desugars it, and leaf operators written back in mongod's form.

Facts (see the final report of this change for sources): mongocryptd checks that every namespace a
pipeline involves has a schema (9710000) before it parses the pipeline; its stage allow-list has no
$unionWith and no $facet, so both stay refused (31011) even with a schema for every namespace;
$lookup sub-pipelines are analysed against the joined collection's own schema.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bson import Decimal128, Int64
from bson.binary import Binary

from tests.support.crypt import CryptDriver
from tests.support.process import raw_command
from tests.test_csfle_support import DET, P, encrypt, read_placeholder, schema_for, unmark

DB = "db"


@pytest.fixture(scope="module")
def crypt(markd):
    driver = CryptDriver(markd.uri, only_requested_keys=True)
    driver.key = driver.create_key()  # type: ignore[attr-defined]
    driver.other_key = driver.create_key()  # type: ignore[attr-defined]
    yield driver
    driver.close()


def _schemas(crypt: CryptDriver, *others: str) -> dict[str, Any]:
    own = schema_for(crypt.key)
    other = {"bsonType": "object", "properties": {"ssn": encrypt(crypt.other_key, DET, "string")}}
    schemas = {f"{DB}.coll": {"jsonSchema": own, "isRemoteSchema": False}}
    for name in others:
        schemas[f"{DB}.{name}"] = {"jsonSchema": other, "isRemoteSchema": False}
    return schemas


def _aggregate(client, pipeline: list[Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return raw_command(client, DB, {"aggregate": "coll", "pipeline": pipeline, "cursor": {},
                                    "csfleEncryptionSchemas": schemas})


# (id, pipeline, namespaces given a schema besides db.coll, code, message start)
MULTI_REFUSED = [
    ("unionWith-all-schemas", [{"$unionWith": {"coll": "other", "pipeline": [{"$match": {"ssn": "a"}}]}}],
     ("other",), 31011, "Aggregation stage $unionWith is not allowed or supported with automatic encryption."),
    ("unionWith-string-form", [{"$unionWith": "other"}], ("other",), 31011, "Aggregation stage $unionWith"),
    ("unionWith-missing-schema", [{"$unionWith": {"coll": "third"}}], ("other",), 9710000,
     "Missing encryption schema for namespace: db.third"),
    ("unionWith-nested-lookup-missing", [{"$unionWith": {"coll": "other", "pipeline": [
        {"$lookup": {"from": "third", "localField": "a", "foreignField": "a", "as": "j"}}]}}], ("other",), 9710000,
     "Missing encryption schema for namespace: db.third"),
    ("facet-all-schemas", [{"$facet": {"x": [{"$match": {"ssn": "a"}}]}}], (), 31011,
     "Aggregation stage $facet is not allowed or supported with automatic encryption."),
    ("facet-lookup-all-schemas", [{"$facet": {"x": [
        {"$lookup": {"from": "other", "localField": "ssn", "foreignField": "ssn", "as": "j"}}]}}], ("other",), 31011,
     "Aggregation stage $facet"),
    ("facet-lookup-missing", [{"$facet": {"x": [
        {"$lookup": {"from": "third", "localField": "a", "foreignField": "a", "as": "j"}}]}}], ("other",), 9710000,
     "Missing encryption schema for namespace: db.third"),
    ("lookup-in-lookup-missing", [{"$lookup": {"from": "other", "as": "j", "pipeline": [
        {"$lookup": {"from": "third", "localField": "a", "foreignField": "a", "as": "k"}}]}}], ("other",), 9710000,
     "Missing encryption schema for namespace: db.third"),
    ("graphLookup-missing", [{"$graphLookup": {"from": "third", "startWith": "$a", "connectFromField": "a",
                                               "connectToField": "b", "as": "j"}}], (), 9710000,
     "Missing encryption schema for namespace: db.third"),
]


@pytest.mark.parametrize(("pipeline", "others", "code", "message"),
                         [row[1:] for row in MULTI_REFUSED], ids=[row[0] for row in MULTI_REFUSED])
def test_multi_namespace_refusals(client, crypt, pipeline, others, code, message):
    reply = _aggregate(client, pipeline, _schemas(crypt, *others))
    assert reply["ok"] == 0.0 and reply["code"] == code, reply
    assert reply["errmsg"].startswith(message), reply


def test_lookup_subpipeline_marked_with_the_joined_collections_schema(client, crypt):
    pipeline = [{"$match": {"ssn": "mine"}},
                {"$lookup": {"from": "other", "as": "j", "pipeline": [{"$match": {"ssn": "theirs"}}]}}]
    reply = _aggregate(client, pipeline, _schemas(crypt, "other"))
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True, reply
    outer = reply["result"]["pipeline"][0]["$match"]["ssn"]["$eq"]
    inner = reply["result"]["pipeline"][1]["$lookup"]["pipeline"][0]["$match"]["ssn"]["$eq"]
    assert read_placeholder(outer)["ki"] == crypt.key and read_placeholder(outer)["v"] == "mine"
    assert read_placeholder(inner)["ki"] == crypt.other_key and read_placeholder(inner)["v"] == "theirs"
    # mongod's own order, with `let` always written for the pipeline syntax
    assert list(reply["result"]["pipeline"][1]["$lookup"]) == ["from", "as", "let", "pipeline"]
    assert reply["result"]["pipeline"][1]["$lookup"]["let"] == {}


def test_lookup_written_back_in_mongods_order(client, crypt):
    pipeline = [{"$lookup": {"localField": "years", "as": "j", "foreignField": "years", "from": "other"}},
                {"$lookup": {"pipeline": [], "localField": "years", "foreignField": "n", "as": "k", "from": "other"}}]
    reply = _aggregate(client, pipeline, _schemas(crypt, "other"))
    assert reply["ok"] == 1.0, reply
    assert [list(stage["$lookup"]) for stage in reply["result"]["pipeline"]] == [
        ["from", "as", "localField", "foreignField"], ["from", "as", "localField", "foreignField", "let", "pipeline"]]


def test_lookup_subpipeline_through_libmongocrypt(markd, crypt):
    """libmongocrypt (multiple collinfo on) sends csfleEncryptionSchemas; each value encrypts with its key."""
    driver = CryptDriver(markd.uri, only_requested_keys=True)
    driver.callback.keys.update(crypt.callback.keys)
    try:
        schemas = _schemas(crypt, "other")
        driver.schema_map = {ns: entry["jsonSchema"] for ns, entry in schemas.items()}
        driver.enable_multiple_collinfo = True
        command = {"aggregate": "coll", "cursor": {}, "pipeline": [
            {"$match": {"ssn": "mine"}},
            {"$lookup": {"from": "other", "as": "j", "pipeline": [{"$match": {"ssn": "theirs"}}]}}]}
        encrypted = driver.encrypt(DB, command)
        assert "csfleEncryptionSchemas" in driver.exchanges[-1].sent
        outer = encrypted["pipeline"][0]["$match"]["ssn"]["$eq"]
        inner = encrypted["pipeline"][1]["$lookup"]["pipeline"][0]["$match"]["ssn"]["$eq"]
        assert driver.decrypt_value(outer) == "mine" and driver.decrypt_value(inner) == "theirs"
        assert bytes(outer)[1:17] == bytes(crypt.key) and bytes(inner)[1:17] == bytes(crypt.other_key)
    finally:
        driver.close()


def _bucket_group(group_by: Any, bounds: list[Any], default: Any = None, **output: Any) -> list[dict[str, Any]]:
    branches = [{"case": {"$and": [{"$gte": [group_by, {"$const": lo}]}, {"$lt": [group_by, {"$const": hi}]}]},
                 "then": {"$const": lo}} for lo, hi in itertools.pairwise(bounds)]
    switch: dict[str, Any] = {"branches": branches}
    if default is not None:
        switch["default"] = {"$const": default}
    return [{"$group": {"_id": {"$switch": switch}, **(output or {"count": {"$sum": {"$const": 1}}})}},
            {"$sort": {"_id": 1}}]


def _single(client, crypt, pipeline: list[Any]) -> dict[str, Any]:
    return raw_command(client, DB, {"aggregate": "coll", "pipeline": pipeline, "cursor": {},
                                    "jsonSchema": schema_for(crypt.key), "isRemoteSchema": False})


def test_bucket_desugared_as_mongod_parses_it(client, crypt):
    reply = _single(client, crypt, [{"$bucket": {"groupBy": "$years", "boundaries": [0, 18, 65], "default": "old"}}])
    assert reply["ok"] == 1.0, reply
    assert reply["result"]["pipeline"] == _bucket_group("$years", [0, 18, 65], "old")
    reply = _single(client, crypt, [{"$bucket": {"groupBy": "$years", "boundaries": [0, {"$const": 5}],
                                                 "output": {"n": {"$sum": 1}, "who": {"$first": "$ssn"}}}},
                                    {"$match": {"who": "a"}}])
    assert reply["ok"] == 1.0, reply
    assert reply["result"]["pipeline"][:2] == _bucket_group(
        "$years", [0, 5], n={"$sum": {"$const": 1}}, who={"$first": "$ssn"})
    assert unmark(reply["result"]["pipeline"][2]) == {"$match": {"who": {"$eq": P(1, "a")}}}


BUCKET_REFUSED = [
    ("encrypted-groupBy", {"groupBy": "$ssn", "boundaries": ["a", "b"]}, 31110,
     "Encrypted field 'ssn' is not allowed to be evaluated by a greater than or equal comparison"),
    ("not-object", "x", 40201, "Argument to $bucket stage must be an object, but found type: string."),
    ("unknown-option", {"groupBy": "$a", "boundaries": [1, 2], "bogus": 1}, 40197,
     "Unrecognized option to $bucket: bogus."),
    ("missing-groupBy", {"boundaries": [1, 2]}, 40198, "$bucket requires 'groupBy' and 'boundaries'"),
    ("groupBy-literal", {"groupBy": 1, "boundaries": [1, 2]}, 40202, "The $bucket 'groupBy' field must be"),
    ("boundaries-not-array", {"groupBy": "$a", "boundaries": 1}, 40200,
     "The $bucket 'boundaries' field must be an array, but found type: int."),
    ("boundaries-not-constant", {"groupBy": "$a", "boundaries": [1, "$b"]}, 40191,
     "The $bucket 'boundaries' field must be an array of constant values"),
    ("one-boundary", {"groupBy": "$a", "boundaries": [1]}, 40192,
     "The $bucket 'boundaries' field must have at least 2 values, but found 1 value(s)."),
    ("mixed-types", {"groupBy": "$a", "boundaries": [1, "b"]}, 40193,
     "All values in the the 'boundaries' option to $bucket must have the same type. Found conflicting types int "
     "and string."),
    ("unsorted", {"groupBy": "$a", "boundaries": [2, 1]}, 40194,
     "The 'boundaries' option to $bucket must be sorted, but elements 0 and 1 are not in ascending order"),
    ("default-inside", {"groupBy": "$a", "boundaries": [1, 3], "default": 2}, 40199,
     "The $bucket 'default' field must be less than the lowest boundary"),
    ("default-expression", {"groupBy": "$a", "boundaries": [1, 3], "default": "$b"}, 40195,
     "The $bucket 'default' field must be a constant expression"),
    ("output-not-object", {"groupBy": "$a", "boundaries": [1, 3], "output": 1}, 40196,
     "The $bucket 'output' field must be an object, but found type: int."),
]


@pytest.mark.parametrize(("spec", "code", "message"), [row[1:] for row in BUCKET_REFUSED],
                         ids=[row[0] for row in BUCKET_REFUSED])
def test_bucket_refusals(client, crypt, spec, code, message):
    reply = _single(client, crypt, [{"$bucket": spec}])
    assert reply["ok"] == 0.0 and reply["code"] == code, reply
    assert reply["errmsg"].startswith(message), reply


def test_bucket_error_messages_hold_no_boundary_values(client, crypt):
    for spec in ({"groupBy": "$a", "boundaries": ["zz-secret", "aa-secret"]},
                 {"groupBy": "$a", "boundaries": ["s", {"$concat": ["zz-secret"]}]}):
        reply = _single(client, crypt, [{"$bucket": spec}])
        assert reply["ok"] == 0.0 and "secret" not in reply["errmsg"], reply


# (id, operator and operand as sent, operand as mongod writes it back)
LEAF_FORMS = [
    ("type-alias", {"$type": "string"}, {"$type": [2]}),
    ("type-code-double", {"$type": 16.0}, {"$type": [16]}),
    ("type-list-sorted-dedup", {"$type": ["long", "number", "minKey", "string", "long"]},
     {"$type": ["number", -1, 2, 18]}),
    ("mod-int64", {"$mod": [4, 1]}, {"$mod": [Int64(4), Int64(1)]}),
    ("mod-double-truncated", {"$mod": [4.9, -1.5]}, {"$mod": [Int64(4), Int64(-1)]}),
    ("mod-decimal", {"$mod": [Decimal128("3"), 0]}, {"$mod": [Int64(3), Int64(0)]}),
    ("size-double", {"$size": 2.0}, {"$size": 2}),
    ("size-long", {"$size": Int64(3)}, {"$size": 3}),
    ("bits-mask", {"$bitsAllSet": 5}, {"$bitsAllSet": [0, 2]}),
    ("bits-mask-double", {"$bitsAnySet": 6.0}, {"$bitsAnySet": [1, 2]}),
    ("bits-bindata", {"$bitsAllClear": Binary(b"\x01\x80", 0)}, {"$bitsAllClear": [0, 15]}),
    ("bits-positions-as-given", {"$bitsAnyClear": [3, Int64(1), 3.0]}, {"$bitsAnyClear": [3, 1, 3]}),
]


@pytest.mark.parametrize(("sent", "written"), [row[1:] for row in LEAF_FORMS], ids=[row[0] for row in LEAF_FORMS])
def test_leaf_operands_written_back_as_mongod_does(client, crypt, sent, written):
    reply = raw_command(client, DB, {"find": "coll", "filter": {"ssn": "a", "plain": sent},
                                     "jsonSchema": schema_for(crypt.key), "isRemoteSchema": False})
    assert reply["ok"] == 1.0, reply
    clause = reply["result"]["filter"]["$and"][1]["plain"]
    assert clause == written
    assert [type(v) for v in clause.get("$mod", [])] == [Int64] * len(clause.get("$mod", []))
    assert type(clause.get("$size", 0)) is int


def test_leaf_operands_through_libmongocrypt(crypt):
    """libmongocrypt forwards the re-serialized filter: the operands reach mongod in mongod's own form."""
    crypt.schema_map = {f"{DB}.coll": schema_for(crypt.key)}
    encrypted = crypt.encrypt(DB, {"find": "coll", "filter": {
        "ssn": "a", "n": {"$mod": [2, 1]}, "t": {"$type": "int"}, "s": {"$size": 1}}})
    clauses = encrypted["filter"]["$and"]
    assert crypt.decrypt_value(clauses[0]["ssn"]["$eq"]) == "a"
    assert clauses[1:] == [{"n": {"$mod": [Int64(2), Int64(1)]}}, {"t": {"$type": [16]}}, {"s": {"$size": 1}}]
    assert type(clauses[1]["n"]["$mod"][0]) is Int64


LEAF_REFUSED = [
    ("type-unknown-alias", {"$type": "nope"}, 2, "Unknown type name alias: nope"),
    ("type-bad-code", {"$type": 99}, 2, "Invalid numerical type code: 99"),
    ("type-bad-kind", {"$type": True}, 2, "type must be represented as a number or a string"),
    ("type-empty", {"$type": []}, 9, "$type must match at least one type"),
    ("mod-not-array", {"$mod": 2}, 2, "malformed mod, needs to be an array"),
    ("mod-one", {"$mod": [2]}, 2, "malformed mod, not enough elements"),
    ("mod-three", {"$mod": [2, 1, 0]}, 2, "malformed mod, too many elements"),
    ("mod-divisor", {"$mod": ["2", 1]}, 2, "malformed mod, divisor not a number"),
    ("mod-remainder", {"$mod": [2, "1"]}, 2, "malformed mod, remainder not a number"),
    ("mod-zero", {"$mod": [0, 1]}, 2, "divisor cannot be 0"),
    ("mod-nan", {"$mod": [float("nan"), 1]}, 2, "malformed mod, divisor value is invalid"),
    ("size-string", {"$size": "2"}, 2, "$size needs a number"),
    ("size-fraction", {"$size": 1.5}, 2, "$size must be a whole number"),
    ("size-negative", {"$size": -1}, 2, "$size may not be negative"),
    ("bits-fraction", {"$bitsAllSet": 1.5}, 9, "Expected an integer: $bitsAllSet"),
    ("bits-negative", {"$bitsAllSet": -1}, 9, "Expected a non-negative number in: $bitsAllSet"),
    ("bits-kind", {"$bitsAnySet": "3"}, 2, "plain takes an Array, a number, or a BinData but received: $bitsAnySet"),
    ("bits-position", {"$bitsAnySet": [-1]}, 2,
     "Failed to parse bit position. Expected a non-negative integer that fits in an int"),
]


@pytest.mark.parametrize(("sent", "code", "message"), [row[1:] for row in LEAF_REFUSED],
                         ids=[row[0] for row in LEAF_REFUSED])
def test_leaf_operand_refusals(client, crypt, sent, code, message):
    reply = raw_command(client, DB, {"find": "coll", "filter": {"plain": sent},
                                     "jsonSchema": schema_for(crypt.key), "isRemoteSchema": False})
    assert reply["ok"] == 0.0 and reply["code"] == code, reply
    assert reply["errmsg"] == message, reply


@pytest.mark.parametrize(("rate", "written"), [
    (0.25, {"$expr": {"$lt": [{"$rand": {}}, {"$const": 0.25}]}}),
    (Decimal128("0.5"), {"$expr": {"$lt": [{"$rand": {}}, {"$const": 0.5}]}}),
    (0, {"$expr": {"$const": False}}),
    (1, {"$expr": {"$const": True}}),
])
def test_sample_rate_desugared_as_mongod_does(client, crypt, rate, written):
    reply = raw_command(client, DB, {"find": "coll", "filter": {"ssn": "a", "$sampleRate": rate},
                                     "jsonSchema": schema_for(crypt.key), "isRemoteSchema": False})
    assert reply["ok"] == 1.0, reply
    assert reply["result"]["filter"]["$and"][1] == written
    assert type(reply["result"]["filter"]["$and"][1]["$expr"].get("$lt", [0, {"$const": 0.0}])[1]["$const"]) is float


@pytest.mark.parametrize(("rate", "code", "message"), [
    ("0.5", 2, "argument to $sampleRate must be a numeric type"),
    (1.5, 2, "numeric argument to $sampleRate must be in [0, 1]"),
    (float("nan"), 2, "numeric argument to $sampleRate must be in [0, 1]"),
])
def test_sample_rate_refusals(client, crypt, rate, code, message):
    reply = raw_command(client, DB, {"find": "coll", "filter": {"$sampleRate": rate},
                                     "jsonSchema": schema_for(crypt.key), "isRemoteSchema": False})
    assert reply["ok"] == 0.0 and reply["code"] == code and reply["errmsg"] == message, reply


def test_graph_lookup_written_back_in_mongods_order(client, crypt):
    stage = {"$graphLookup": {"restrictSearchWithMatch": {"ssn": "a"}, "maxDepth": 2.0, "startWith": "$years",
                              "connectToField": "b", "connectFromField": "c", "as": "j", "from": "coll",
                              "depthField": "d"}}
    reply = _single(client, crypt, [stage])
    assert reply["ok"] == 1.0, reply
    written = reply["result"]["pipeline"][0]["$graphLookup"]
    assert list(written) == ["from", "as", "connectToField", "connectFromField", "startWith", "depthField",
                             "maxDepth", "restrictSearchWithMatch"]
    assert written["maxDepth"] == 2 and type(written["maxDepth"]) is Int64
    assert unmark(written["restrictSearchWithMatch"]) == {"ssn": {"$eq": P(1, "a")}}


@pytest.mark.parametrize(("depth", "code", "message"), [
    ("2", 40100, "maxDepth must be numeric, found type: string"),
    (-1, 40101, "maxDepth requires a nonnegative argument, found: -1"),
    (1.5, 40102, "maxDepth could not be represented as a long long: 1"),
])
def test_graph_lookup_max_depth_refusals(client, crypt, depth, code, message):
    stage = {"$graphLookup": {"from": "coll", "as": "j", "startWith": "$years", "connectToField": "b",
                              "connectFromField": "c", "maxDepth": depth}}
    reply = _single(client, crypt, [stage])
    assert reply["ok"] == 0.0 and reply["code"] == code and reply["errmsg"] == message, reply


@pytest.mark.parametrize(("spec", "written"), [
    ("$years", {"path": "$years"}),
    ({"includeArrayIndex": "i", "path": "$years", "preserveNullAndEmptyArrays": False}, {"path": "$years",
                                                                                         "includeArrayIndex": "i"}),
    ({"preserveNullAndEmptyArrays": True, "path": "$years"}, {"path": "$years", "preserveNullAndEmptyArrays": True}),
])
def test_unwind_written_back_as_mongod_does(client, crypt, spec, written):
    reply = _single(client, crypt, [{"$unwind": spec}])
    assert reply["ok"] == 1.0, reply
    assert reply["result"]["pipeline"][0]["$unwind"] == written
    assert list(reply["result"]["pipeline"][0]["$unwind"]) == list(written)


@pytest.mark.parametrize(("spec", "code", "message"), [
    ({"path": "$a", "preserveNullAndEmptyArrays": 1}, 28809,
     "expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage"),
    ({"path": "$a", "includeArrayIndex": ""}, 28810, "expected a non-empty string for the includeArrayIndex option"),
    ({"path": "$a", "includeArrayIndex": "$i"}, 28822,
     "includeArrayIndex option to $unwind stage should not be prefixed with a '$': $i"),
    ({"path": "$a", "bogus": 1}, 28811, "unrecognized option to $unwind stage: bogus"),
])
def test_unwind_refusals(client, crypt, spec, code, message):
    reply = _single(client, crypt, [{"$unwind": spec}])
    assert reply["ok"] == 0.0 and reply["code"] == code and reply["errmsg"].startswith(message), reply


def test_bucket_auto_written_back_as_mongod_does(client, crypt):
    reply = _single(client, crypt, [{"$bucketAuto": {"buckets": 4.0, "groupBy": "$years"}}])
    assert reply["ok"] == 1.0, reply
    written = reply["result"]["pipeline"][0]["$bucketAuto"]
    assert written == {"groupBy": "$years", "buckets": 4, "output": {"count": {"$sum": {"$const": 1}}}}
    assert list(written) == ["groupBy", "buckets", "output"] and type(written["buckets"]) is int
    reply = _single(client, crypt, [{"$bucketAuto": {"output": {"n": {"$sum": 1}}, "granularity": "R5",
                                                     "groupBy": "$years", "buckets": Int64(2)}}])
    assert reply["ok"] == 1.0, reply
    assert list(reply["result"]["pipeline"][0]["$bucketAuto"]) == ["groupBy", "buckets", "granularity", "output"]


@pytest.mark.parametrize(("spec", "code", "message"), [
    ("x", 40240, "The argument to $bucketAuto must be an object, but found type: string"),
    ({"groupBy": "$a", "buckets": "2"}, 40241, "The $bucketAuto 'buckets' field must be a numeric value"),
    ({"groupBy": "$a", "buckets": 1.5}, 40242, "The $bucketAuto 'buckets' field must be representable as a 32-bit"),
    ({"groupBy": "$a", "buckets": 0}, 40243, "The $bucketAuto 'buckets' field must be greater than 0, but found: 0"),
    ({"groupBy": "$a", "buckets": 2, "output": 1}, 40244, "The $bucketAuto 'output' field must be an object"),
    ({"groupBy": "$a", "buckets": 2, "bogus": 1}, 40245, "Unrecognized option to $bucketAuto: bogus"),
    ({"groupBy": "$a"}, 40246, "$bucketAuto requires 'groupBy' and 'buckets' to be specified"),
    ({"groupBy": "$ssn", "buckets": 2}, 51238, "'groupBy' expression cannot reference encrypted fields"),
])
def test_bucket_auto_refusals(client, crypt, spec, code, message):
    reply = _single(client, crypt, [{"$bucketAuto": spec}])
    assert reply["ok"] == 0.0 and reply["code"] == code and reply["errmsg"].startswith(message), reply
