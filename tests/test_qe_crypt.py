"""Queryable Encryption markings through the real markd and the real libmongocrypt.

Every kind of QE placeholder markd produces is checked twice: its shape as markd sent it (t, a,
ki = ku = the field's key, cm, s and the range/text spec), and that libmongocrypt turned it into
the payload it should (by the payload's subtype byte: 11 insert/update, 12 find equality,
13 find range, 16 unindexed value, 18 find text).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Decimal128, Int64
from bson.binary import Binary
from pymongo.errors import OperationFailure

from markd import bsonvalues
from tests.support.crypt import CryptDriver

INSERT_PAYLOAD, FIND_EQUALITY, FIND_RANGE, UNINDEXED_VALUE, FIND_TEXT = 11, 12, 13, 16, 18
INF = float("inf")

TEXT_OPTIONS = {"contention": Int64(0), "strMinQueryLength": Int64(2), "strMaxQueryLength": Int64(10)}


def _fields(keys: dict[str, Binary]) -> list[dict[str, Any]]:
    def range_query(**options: Any) -> dict[str, Any]:
        return {"queryType": "range", "contention": Int64(0), **options}

    return [
        {"path": "eq", "keyId": keys["eq"], "bsonType": "string",
         "queries": {"queryType": "equality", "contention": Int64(0)}},
        {"path": "eqLong", "keyId": keys["eqLong"], "bsonType": "long",
         "queries": {"queryType": "equality", "contention": Int64(4)}},
        {"path": "nested.eq", "keyId": keys["nested.eq"], "bsonType": "string",
         "queries": {"queryType": "equality", "contention": Int64(0)}},
        {"path": "un", "keyId": keys["un"], "bsonType": "string"},
        {"path": "ri", "keyId": keys["ri"], "bsonType": "int",
         "queries": range_query(min=0, max=200, sparsity=Int64(1), trimFactor=1)},
        {"path": "rl", "keyId": keys["rl"], "bsonType": "long", "queries": range_query()},
        {"path": "rd", "keyId": keys["rd"], "bsonType": "double", "queries": range_query()},
        {"path": "rdp", "keyId": keys["rdp"], "bsonType": "double",
         "queries": range_query(min=0.0, max=200.0, precision=2)},
        {"path": "rm", "keyId": keys["rm"], "bsonType": "decimal", "queries": range_query()},
        {"path": "rmp", "keyId": keys["rmp"], "bsonType": "decimal",
         "queries": range_query(min=Decimal128("0"), max=Decimal128("200"), precision=2)},
        {"path": "rt", "keyId": keys["rt"], "bsonType": "date",
         "queries": range_query(min=datetime.datetime(2000, 1, 1), max=datetime.datetime(2100, 1, 1))},
        {"path": "tp", "keyId": keys["tp"], "bsonType": "string",
         "queries": {"queryType": "prefix", **TEXT_OPTIONS, "caseSensitive": True, "diacriticSensitive": True}},
        {"path": "ts", "keyId": keys["ts"], "bsonType": "string",
         "queries": {"queryType": "suffix", **TEXT_OPTIONS, "caseSensitive": False, "diacriticSensitive": True}},
        {"path": "tps", "keyId": keys["tps"], "bsonType": "string",
         "queries": [{"queryType": "prefix", **TEXT_OPTIONS, "caseSensitive": False, "diacriticSensitive": False},
                     {"queryType": "suffix", **TEXT_OPTIONS, "caseSensitive": False, "diacriticSensitive": False}]},
        {"path": "tsub", "keyId": keys["tsub"], "bsonType": "string",
         "queries": {"queryType": "substring", **TEXT_OPTIONS, "strMaxLength": Int64(60), "caseSensitive": True,
                     "diacriticSensitive": False}},
    ]


FIELD_NAMES = ["eq", "eqLong", "nested.eq", "un", "ri", "rl", "rd", "rdp", "rm", "rmp", "rt", "tp", "ts", "tps", "tsub",
               "other.e2"]


@pytest.fixture(scope="module")
def qe(markd) -> Iterator[tuple[CryptDriver, dict[str, Binary]]]:
    driver = CryptDriver(markd.uri, only_requested_keys=True)
    driver.enable_multiple_collinfo = True
    keys = {name: driver.create_key() for name in FIELD_NAMES}
    driver.encrypted_fields_map = {
        "db.coll": {"fields": _fields(keys)},
        "db.other": {"fields": [{"path": "e2", "keyId": keys["other.e2"], "bsonType": "string",
                                 "queries": {"queryType": "equality", "contention": Int64(0)}}]},
    }
    try:
        yield driver, keys
    finally:
        driver.close()


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _walk(child, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk(child, f"{path}.{index}")


def markings(result: Any) -> dict[str, dict[str, Any]]:
    """location -> decoded FLE2 placeholder, for every placeholder markd put in a result."""
    found = {}
    for path, value in _walk(result):
        if isinstance(value, Binary) and value.subtype == 6:
            assert bytes(value[:1]) == b"\x03", f"not an FLE2 placeholder at {path}"
            found[path] = bsonvalues.decode(bytes(value[1:]))
    return found


def payloads(command: Any) -> dict[str, int]:
    """location -> payload subtype byte, for every BinData 6 libmongocrypt put in the command."""
    return {path: value[0] for path, value in _walk(command) if isinstance(value, Binary) and value.subtype == 6}


def run(qe: tuple[CryptDriver, dict[str, Binary]], command: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(markd's markings by location, libmongocrypt's payload bytes by location) for one command."""
    driver, _ = qe
    encrypted = driver.encrypt("db", command)
    reply = driver.exchanges[-1].reply
    assert reply["ok"] == 1.0 and reply["schemaRequiresEncryption"] is True
    marked = markings(reply["result"])
    found = payloads(encrypted)
    # Every placeholder became a payload at the same place, and nothing else became one.
    assert set(found) == set(marked)
    return marked, found


def assert_common(marking: dict[str, Any], key: Binary, t: int, a: int, cm: int) -> None:
    assert list(marking)[:4] == ["t", "a", "ki", "ku"]
    assert marking["t"] == t and marking["a"] == a
    assert marking["ki"] == key and marking["ku"] == key
    assert isinstance(marking["cm"], Int64) and marking["cm"] == cm


# ---------------------------------------------------------------------------------------------- inserts


INSERT_CASES = [
    # field, value, a, cm, s, payload
    ("eq", "secret", 2, 0, None, INSERT_PAYLOAD),
    ("eqLong", Int64(7), 2, 4, None, INSERT_PAYLOAD),
    ("un", "secret", 1, 0, None, UNINDEXED_VALUE),
    ("ri", 5, 3, 0, 1, INSERT_PAYLOAD),
    ("rl", Int64(-5), 3, 0, 2, INSERT_PAYLOAD),
    ("rd", 1.5, 3, 0, 2, INSERT_PAYLOAD),
    ("rdp", 12.25, 3, 0, 2, INSERT_PAYLOAD),
    ("rm", Decimal128("1.25"), 3, 0, 2, INSERT_PAYLOAD),
    ("rmp", Decimal128("12.5"), 3, 0, 2, INSERT_PAYLOAD),
    ("rt", datetime.datetime(2020, 5, 1), 3, 0, 2, INSERT_PAYLOAD),
    ("tp", "hello", 4, 0, None, INSERT_PAYLOAD),
    ("ts", "hello", 4, 0, None, INSERT_PAYLOAD),
    ("tps", "hello", 4, 0, None, INSERT_PAYLOAD),
    ("tsub", "hello world", 4, 0, None, INSERT_PAYLOAD),
]


@pytest.mark.parametrize(("field", "value", "a", "cm", "s", "payload"), INSERT_CASES, ids=[c[0] for c in INSERT_CASES])
def test_insert_placeholder_is_encrypted(qe, field, value, a, cm, s, payload):
    _, keys = qe
    document: dict[str, Any] = {"_id": 1}
    if field == "nested.eq":
        document["nested"] = {"eq": value}
    else:
        document[field] = value
    marked, found = run(qe, {"insert": "coll", "documents": [document], "ordered": True})
    location = f"documents.0.{field}"
    assert list(marked) == [location]
    marking = marked[location]
    assert_common(marking, keys[field], 1, a, cm)
    if s is None:
        assert "s" not in marking
    else:
        assert isinstance(marking["s"], Int64) and marking["s"] == s
    if a in (1, 2):
        assert marking["v"] == value and bsonvalues.bson_type(marking["v"]) == bsonvalues.bson_type(value)
    assert found == {location: payload}


def test_nested_insert_and_find(qe):
    _, keys = qe
    marked, found = run(qe, {"insert": "coll", "documents": [{"_id": 1, "nested": {"eq": "x", "plain": 1}}]})
    assert_common(marked["documents.0.nested.eq"], keys["nested.eq"], 1, 2, 0)
    assert found == {"documents.0.nested.eq": INSERT_PAYLOAD}
    marked, found = run(qe, {"find": "coll", "filter": {"nested.eq": "x"}})
    assert found == {"filter.nested.eq.$eq": FIND_EQUALITY}


def test_range_insert_specs(qe):
    marked, _ = run(qe, {"insert": "coll", "documents": [{"_id": 1, "ri": 5, "rl": Int64(9), "rdp": 1.25,
                                                          "rm": Decimal128("2"), "rt": datetime.datetime(2001, 1, 1)}]})
    assert marked["documents.0.ri"]["v"] == {"v": 5, "min": 0, "max": 200, "trimFactor": 1}
    assert marked["documents.0.rl"]["v"] == {"v": Int64(9), "min": Int64(-(2**63)), "max": Int64(2**63 - 1)}
    assert isinstance(marked["documents.0.rl"]["v"]["min"], Int64)
    assert marked["documents.0.rdp"]["v"] == {"v": 1.25, "min": 0.0, "max": 200.0, "precision": 2}
    assert marked["documents.0.rm"]["v"]["min"] == Decimal128("-9.999999999999999999999999999999999E+6144")
    rt = marked["documents.0.rt"]["v"]
    assert list(rt) == ["v", "min", "max"] and bsonvalues.bson_type(rt["min"]) == "date"


def test_text_insert_specs(qe):
    marked, _ = run(qe, {"insert": "coll", "documents": [{"_id": 1, "tp": "ab", "ts": "ab", "tps": "ab",
                                                          "tsub": "ab"}]})
    assert marked["documents.0.tp"]["v"] == {"v": "ab", "casef": False, "diacf": False, "prefix": {"ub": 10, "lb": 2}}
    assert marked["documents.0.ts"]["v"] == {"v": "ab", "casef": True, "diacf": False, "suffix": {"ub": 10, "lb": 2}}
    assert marked["documents.0.tps"]["v"] == {"v": "ab", "casef": True, "diacf": True, "prefix": {"ub": 10, "lb": 2},
                                              "suffix": {"ub": 10, "lb": 2}}
    assert marked["documents.0.tsub"]["v"] == {"v": "ab", "casef": False, "diacf": True,
                                               "substr": {"mlen": 60, "ub": 10, "lb": 2}}


def test_updates_mark_set_replacement_and_findandmodify(qe):
    marked, found = run(qe, {"update": "coll", "updates": [
        {"q": {"eq": "a"}, "u": {"$set": {"ri": 6, "nested": {"eq": "n"}}, "$unset": {"un": ""}}, "upsert": True},
        {"q": {"_id": 2}, "u": {"_id": 2, "eq": "b", "tsub": "text"}},
    ]})
    assert found == {"updates.0.q.eq.$eq": FIND_EQUALITY, "updates.0.u.$set.ri": INSERT_PAYLOAD,
                     "updates.0.u.$set.nested.eq": INSERT_PAYLOAD, "updates.1.u.eq": INSERT_PAYLOAD,
                     "updates.1.u.tsub": INSERT_PAYLOAD}
    assert marked["updates.0.u.$set.ri"]["t"] == 1 and marked["updates.0.q.eq.$eq"]["t"] == 2
    marked, found = run(qe, {"findAndModify": "coll", "query": {"ri": {"$gte": 10}}, "update": {"$set": {"eq": "z"}}})
    assert found == {"query.ri.$gte": FIND_RANGE, "update.$set.eq": INSERT_PAYLOAD}


# ---------------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize(("filter_", "locations"), [
    ({"eq": "a"}, ["filter.eq.$eq"]),
    ({"eq": {"$eq": "a"}}, ["filter.eq.$eq"]),
    ({"eq": {"$ne": "a"}}, ["filter.eq.$not.$eq"]),
    ({"eq": {"$in": ["a", "b"]}}, ["filter.eq.$in.0", "filter.eq.$in.1"]),
    ({"eq": {"$nin": ["a"]}}, ["filter.eq.$not.$in.0"]),
    ({"eqLong": Int64(3), "_id": 1}, ["filter.$and.0.eqLong.$eq"]),
    ({"$or": [{"eq": "a"}, {"eqLong": Int64(1)}]}, ["filter.$or.0.eq.$eq", "filter.$or.1.eqLong.$eq"]),
    ({"$expr": {"$eq": ["$eq", "a"]}}, ["filter.$expr.$eq.1.$const"]),
], ids=["implicit", "eq", "ne", "in", "nin", "and", "or", "expr"])
def test_equality_find_placeholders(qe, filter_, locations):
    _, keys = qe
    marked, found = run(qe, {"find": "coll", "filter": filter_})
    assert sorted(marked) == sorted(locations)
    assert found == {location: FIND_EQUALITY for location in locations}
    for location, marking in marked.items():
        field = "eqLong" if "eqLong" in location else "eq"
        assert_common(marking, keys[field], 2, 2, 4 if field == "eqLong" else 0)
        assert "s" not in marking


def test_equality_find_normalises_like_mongocryptd(qe):
    driver, _ = qe
    run(qe, {"find": "coll", "filter": {"_id": 1, "plain": {"$gt": 1, "$lt": 5}}})
    assert driver.exchanges[-1].reply["result"]["filter"] == {
        "$and": [{"_id": {"$eq": 1}}, {"plain": {"$gt": 1}}, {"plain": {"$lt": 5}}]}


# ---------------------------------------------------------------------------------------------- range


def _full(marking: dict[str, Any]) -> tuple[Any, ...]:
    edges = marking["v"]["edgesInfo"]
    return (marking["v"]["firstOperator"], marking["v"].get("secondOperator"), edges["lowerBound"],
            edges["lbIncluded"], edges["upperBound"], edges["ubIncluded"])


RANGE_CASES = [
    # filter on ri, {location: (first, second, lower, lbIncluded, upper, ubIncluded) | ("stub", first, second)}
    ({"$gt": 5}, {"filter.ri.$gt": (1, None, 5, False, INF, True)}),
    ({"$gte": 5}, {"filter.ri.$gte": (2, None, 5, True, INF, True)}),
    ({"$lt": 5}, {"filter.ri.$lt": (3, None, -INF, True, 5, False)}),
    ({"$lte": 5}, {"filter.ri.$lte": (4, None, -INF, True, 5, True)}),
    ({"$gt": 5, "$lt": 9}, {"filter.$and.0.ri.$gt": (1, 3, 5, False, 9, False),
                            "filter.$and.1.ri.$lt": ("stub", 1, 3)}),
    ({"$gte": 5, "$lte": 9}, {"filter.$and.0.ri.$gte": (2, 4, 5, True, 9, True),
                              "filter.$and.1.ri.$lte": ("stub", 2, 4)}),
    ({"$gt": 5, "$lte": 9}, {"filter.$and.0.ri.$gt": (1, 4, 5, False, 9, True),
                             "filter.$and.1.ri.$lte": ("stub", 1, 4)}),
    ({"$gte": 5, "$lt": 9}, {"filter.$and.0.ri.$gte": (2, 3, 5, True, 9, False),
                             "filter.$and.1.ri.$lt": ("stub", 2, 3)}),
    ({"$gt": 3, "$gte": 5, "$lt": 100, "$lte": 9}, {"filter.$and.0.ri.$gte": (2, 4, 5, True, 9, True),
                                                    "filter.$and.1.ri.$lte": ("stub", 2, 4)}),
    ({"$eq": 7}, {"filter.$and.0.ri.$gte": (2, 4, 7, True, 7, True), "filter.$and.1.ri.$lte": ("stub", 2, 4)}),
    (7, {"filter.$and.0.ri.$gte": (2, 4, 7, True, 7, True), "filter.$and.1.ri.$lte": ("stub", 2, 4)}),
    ({"$gte": Int64(5)}, {"filter.ri.$gte": (2, None, 5, True, INF, True)}),
    ({"$in": [1, 2]}, {"filter.$or.0.$and.0.ri.$gte": (2, 4, 1, True, 1, True),
                       "filter.$or.0.$and.1.ri.$lte": ("stub", 2, 4),
                       "filter.$or.1.$and.0.ri.$gte": (2, 4, 2, True, 2, True),
                       "filter.$or.1.$and.1.ri.$lte": ("stub", 2, 4)}),
]


@pytest.mark.parametrize(("predicate", "expected"), RANGE_CASES, ids=[str(c[0]) for c in RANGE_CASES])
def test_range_find_placeholders(qe, predicate, expected):
    _, keys = qe
    marked, found = run(qe, {"find": "coll", "filter": {"ri": predicate}})
    assert sorted(marked) == sorted(expected)
    assert found == {location: FIND_RANGE for location in expected}
    payload_ids = set()
    for location, shape in expected.items():
        marking = marked[location]
        assert_common(marking, keys["ri"], 2, 3, 0)
        assert marking["s"] == Int64(1)
        if shape[0] == "stub":
            assert marking["v"] == {"payloadId": marking["v"]["payloadId"], "firstOperator": shape[1],
                                    "secondOperator": shape[2]}
        else:
            assert _full(marking) == shape
            edges = marking["v"]["edgesInfo"]
            assert (edges["indexMin"], edges["indexMax"], edges["trimFactor"]) == (0, 200, 1)
            assert bsonvalues.bson_type(edges["lowerBound"]) in ("int", "double")
        payload_ids.add(marking["v"]["payloadId"])
    # A two-sided pair shares one payloadId; $in uses one per element, counted from 0.
    assert payload_ids == set(range(len(payload_ids)))


def test_range_and_of_separate_predicates_is_intersected(qe):
    marked, _ = run(qe, {"find": "coll", "filter": {"$and": [{"ri": {"$gt": 5}}, {"ri": {"$lt": 9}}]}})
    assert _full(marked["filter.$and.0.ri.$gt"]) == (1, 3, 5, False, 9, False)


@pytest.mark.parametrize(("field", "value"), [
    ("rl", Int64(5)), ("rl", 5), ("rd", 2.5), ("rdp", 2.5), ("rm", Decimal128("2.5")), ("rmp", Decimal128("2.5")),
    ("rt", datetime.datetime(2050, 1, 1)),
])
def test_range_find_each_type(qe, field, value):
    _, keys = qe
    marked, found = run(qe, {"find": "coll", "filter": {field: {"$gte": value, "$lt": value}}})
    # [v, v) is empty: mongocryptd answers $alwaysFalse without a placeholder.
    assert marked == {} and found == {}
    marked, found = run(qe, {"find": "coll", "filter": {field: {"$gte": value}}})
    marking = marked[f"filter.{field}.$gte"]
    assert_common(marking, keys[field], 2, 3, 0)
    lower = marking["v"]["edgesInfo"]["lowerBound"]
    assert bsonvalues.bson_type(lower) == ("long" if field == "rl" else bsonvalues.bson_type(value))
    assert math.isinf(marking["v"]["edgesInfo"]["upperBound"])
    assert found == {f"filter.{field}.$gte": FIND_RANGE}


@pytest.mark.parametrize(("expression", "first", "second", "lower", "upper"), [
    ({"$gt": ["$ri", 5]}, 1, 4, 5, INF),
    ({"$gte": ["$ri", 5]}, 2, 4, 5, INF),
    ({"$lt": ["$ri", 5]}, 2, 3, -INF, 5),
    ({"$lte": ["$ri", 5]}, 2, 4, -INF, 5),
    ({"$eq": ["$ri", 5]}, 2, 4, 5, 5),
])
def test_range_expr_placeholders(qe, expression, first, second, lower, upper):
    marked, found = run(qe, {"aggregate": "coll", "pipeline": [{"$match": {"$expr": expression}}], "cursor": {}})
    assert len(marked) == 2 and set(found.values()) == {FIND_RANGE}
    for marking in marked.values():
        v = marking["v"]
        assert (v["firstOperator"], v["secondOperator"]) == (first, second)
        assert (v["edgesInfo"]["lowerBound"], v["edgesInfo"]["upperBound"]) == (lower, upper)


def test_range_in_is_the_ordered_set_of_its_values(qe):
    """mongocryptd's $in keeps its values as an ordered set: sorted, duplicates dropped, one payload id each."""
    marked, found = run(qe, {"find": "coll", "filter": {"ri": {"$in": [20, 10, Int64(20), 10]}}})
    assert set(found.values()) == {FIND_RANGE} and len(marked) == 4
    for index, value in enumerate((10, 20)):
        full = marked[f"filter.$or.{index}.$and.0.ri.$gte"]
        assert full["v"]["payloadId"] == index
        assert (full["v"]["edgesInfo"]["lowerBound"], full["v"]["edgesInfo"]["upperBound"]) == (value, value)
        assert marked[f"filter.$or.{index}.$and.1.ri.$lte"]["v"] == {"payloadId": index, "firstOperator": 2,
                                                                    "secondOperator": 4}


def test_range_expr_in_is_an_or_of_points(qe):
    """mongocryptd 8.x: `{$in: ["$f", [c...]]}` on a range field is an $or of [c, c] two-sided ranges."""
    _, keys = qe
    marked, found = run(qe, {"aggregate": "coll", "pipeline": [
        {"$match": {"$expr": {"$in": ["$ri", [5, 7]]}}}], "cursor": {}})
    assert set(found.values()) == {FIND_RANGE} and len(marked) == 4
    for index, value in enumerate((5, 7)):
        for side, operator in enumerate(("$gte", "$lte")):
            marking = marked[f"pipeline.0.$match.$expr.$or.{index}.$and.{side}.{operator}.1.$const"]
            assert_common(marking, keys["ri"], 2, 3, 0)
            v = marking["v"]
            assert (v["payloadId"], v["firstOperator"], v["secondOperator"]) == (index, 2, 4)
            assert (v["edgesInfo"]["lowerBound"], v["edgesInfo"]["upperBound"]) == (value, value)


# ---------------------------------------------------------------------------------------------- text


@pytest.mark.parametrize(("operator", "field", "argument", "value", "spec_key", "spec"), [
    ("$encStrStartsWith", "tp", "prefix", "he", "prefix", {"ub": 10, "lb": 2}),
    ("$encStrStartsWith", "tps", "prefix", "he", "prefix", {"ub": 10, "lb": 2}),
    ("$encStrEndsWith", "ts", "suffix", "lo", "suffix", {"ub": 10, "lb": 2}),
    ("$encStrEndsWith", "tps", "suffix", "lo", "suffix", {"ub": 10, "lb": 2}),
    ("$encStrContains", "tsub", "substring", "lo w", "substr", {"mlen": 60, "ub": 10, "lb": 2}),
    ("$encStrNormalizedEq", "tsub", "string", "hello world", None, None),
])
def test_text_find_placeholders(qe, operator, field, argument, value, spec_key, spec):
    _, keys = qe
    query = {"$expr": {operator: {"input": f"${field}", argument: value}}}
    marked, found = run(qe, {"find": "coll", "filter": query})
    location = f"filter.$expr.{operator}.{argument}.$const"
    assert list(marked) == [location] and found == {location: FIND_TEXT}
    marking = marked[location]
    assert_common(marking, keys[field], 2, 4, 0)
    assert "s" not in marking
    text_keys = {k for k in marking["v"] if k in ("prefix", "suffix", "substr")}
    assert marking["v"]["v"] == value
    if spec_key is None:
        assert text_keys == set()
    else:
        assert text_keys == {spec_key} and marking["v"][spec_key] == spec


# ---------------------------------------------------------------------------------------------- explain, aggregate


def test_explain_marks_the_inner_command(qe):
    driver, _ = qe
    _, found = run(qe, {"explain": {"find": "coll", "filter": {"eq": "a"}}, "verbosity": "queryPlanner"})
    assert found == {"explain.filter.eq.$eq": FIND_EQUALITY}
    result = driver.exchanges[-1].reply["result"]
    assert result["verbosity"] == "queryPlanner" and "encryptionInformation" in result["explain"]


def test_aggregate_match_and_group(qe):
    _, found = run(qe, {"aggregate": "coll", "pipeline": [
        {"$match": {"eq": "a"}}, {"$sort": {"_id": 1}}, {"$group": {"_id": "$plain", "n": {"$sum": 1}}},
        {"$match": {"eq": "not encrypted any more"}}], "cursor": {}})
    assert found == {"pipeline.0.$match.eq.$eq": FIND_EQUALITY}


def test_lookup_between_qe_collections_leaves_the_joined_array_unknown(qe):
    """As mongocryptd: the joined documents land in an array whose encryption is not tracked, so a
    later predicate on them is refused (31133) rather than sent unmarked; the join itself is fine."""
    driver, _ = qe
    _, found = run(qe, {"aggregate": "coll", "pipeline": [
        {"$lookup": {"from": "other", "localField": "joinme", "foreignField": "joinme", "as": "matched"}},
        {"$match": {"eq": "a"}}], "cursor": {}})
    assert found == {"pipeline.1.$match.eq.$eq": FIND_EQUALITY}
    with pytest.raises(OperationFailure) as refused:
        driver.encrypt("db", {"aggregate": "coll", "pipeline": [
            {"$lookup": {"from": "other", "localField": "joinme", "foreignField": "joinme", "as": "matched"}},
            {"$match": {"matched.e2": "b"}}], "cursor": {}})
    assert refused.value.code == 31133


def test_lookup_sub_pipeline_uses_the_joined_collections_fields(qe):
    _, keys = qe
    marked, found = run(qe, {"aggregate": "coll", "pipeline": [
        {"$lookup": {"from": "other", "pipeline": [{"$match": {"e2": "b"}}], "as": "matched"}}], "cursor": {}})
    assert found == {"pipeline.0.$lookup.pipeline.0.$match.e2.$eq": FIND_EQUALITY}
    assert marked["pipeline.0.$lookup.pipeline.0.$match.e2.$eq"]["ki"] == keys["other.e2"]


@pytest.mark.parametrize(("command", "location", "payload"), [
    ({"count": "coll", "query": {"eq": "a"}}, "query.eq.$eq", FIND_EQUALITY),
    ({"distinct": "coll", "key": "plain", "query": {"ri": {"$lt": 9}}}, "query.ri.$lt", FIND_RANGE),
    ({"delete": "coll", "deletes": [{"q": {"eqLong": Int64(3)}, "limit": 1}]}, "deletes.0.q.eqLong.$eq",
     FIND_EQUALITY),
    ({"findAndModify": "coll", "query": {"tsub": {"$exists": True}}, "update": {"tsub": "replacement"}},
     "update.tsub", INSERT_PAYLOAD),
])
def test_other_commands(qe, command, location, payload):
    _, found = run(qe, command)
    assert found == {location: payload}


# ---------------------------------------------------------------------------------------------- renamed fields


@pytest.mark.parametrize("stage", ["$project", "$addFields", "$set"])
def test_copied_fields_are_marked_with_the_original_fields_metadata(qe, stage):
    """mongocryptd moves a bare "$field" opaquely: the copy keeps the field's key and query types."""
    _, keys = qe
    marked, found = run(qe, {"aggregate": "coll", "pipeline": [
        {stage: {"copy": "$eq", "age": "$ri", "inner": "$nested"}},
        {"$match": {"copy": "a", "age": {"$gt": 5}, "inner.eq": "b"}}], "cursor": {}})
    # (merged range predicates go last in their $and, as with any field)
    assert found == {"pipeline.1.$match.$and.0.copy.$eq": FIND_EQUALITY,
                     "pipeline.1.$match.$and.1.inner.eq.$eq": FIND_EQUALITY,
                     "pipeline.1.$match.$and.2.age.$gt": FIND_RANGE}
    assert_common(marked["pipeline.1.$match.$and.0.copy.$eq"], keys["eq"], 2, 2, 0)
    assert_common(marked["pipeline.1.$match.$and.1.inner.eq.$eq"], keys["nested.eq"], 2, 2, 0)
    assert_common(marked["pipeline.1.$match.$and.2.age.$gt"], keys["ri"], 2, 3, 0)
    assert marked["pipeline.1.$match.$and.2.age.$gt"]["v"]["edgesInfo"]["indexMax"] == 200


def test_copied_range_field_in_expr(qe):
    _, keys = qe
    marked, found = run(qe, {"aggregate": "coll", "pipeline": [
        {"$project": {"r": "$ri"}}, {"$match": {"$expr": {"$gte": ["$r", 7]}}}], "cursor": {}})
    assert set(found.values()) == {FIND_RANGE} and len(marked) == 2
    for marking in marked.values():
        assert_common(marking, keys["ri"], 2, 3, 0)


def test_overwritten_encrypted_field_is_plain_afterwards(qe):
    marked, found = run(qe, {"aggregate": "coll", "pipeline": [
        {"$addFields": {"eq": "computed"}}, {"$match": {"eq": "computed"}}], "cursor": {}})
    assert marked == {} and found == {}
