"""Queryable Encryption rules as a table: command -> mongocryptd's error code, or the marked shape.

Sent to the real markd process as libmongocrypt would send them (with `encryptionInformation`).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from bson import Decimal128, Int64, Regex, Timestamp
from bson.binary import Binary

from markd import bsonvalues
from tests.support.process import raw_command

KEYS = {name: Binary(uuid.UUID(int=i + 1).bytes, 4) for i, name in enumerate(
    ["ssn", "age", "notes", "salary", "a.b", "text", "when", "d"])}

FIELDS = [
    {"path": "ssn", "keyId": KEYS["ssn"], "bsonType": "string",
     "queries": {"queryType": "equality", "contention": Int64(0)}},
    {"path": "age", "keyId": KEYS["age"], "bsonType": "int",
     "queries": {"queryType": "range", "contention": Int64(0), "min": 0, "max": 200, "sparsity": Int64(1)}},
    {"path": "notes", "keyId": KEYS["notes"], "bsonType": "string"},
    {"path": "a.b", "keyId": KEYS["a.b"], "bsonType": "string",
     "queries": {"queryType": "equality", "contention": Int64(0)}},
    {"path": "text", "keyId": KEYS["text"], "bsonType": "string",
     "queries": {"queryType": "prefix", "contention": Int64(0), "strMinQueryLength": Int64(2),
                 "strMaxQueryLength": Int64(10), "caseSensitive": True, "diacriticSensitive": True}},
    {"path": "when", "keyId": KEYS["when"], "bsonType": "date",
     "queries": {"queryType": "range", "contention": Int64(0)}},
    {"path": "d", "keyId": KEYS["d"], "bsonType": "double",
     "queries": {"queryType": "range", "contention": Int64(0), "min": 0.0, "max": 10.0, "precision": 1}},
]


def info(fields: list[dict[str, Any]] | None = None, namespace: str = "db.coll") -> dict[str, Any]:
    return {"type": 1, "schema": {namespace: {"escCollection": "enxcol_.coll.esc",
                                              "ecocCollection": "enxcol_.coll.ecoc",
                                              "fields": FIELDS if fields is None else fields}}}


def send(client, command: dict[str, Any], fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return raw_command(client, "db", {**command, "encryptionInformation": info(fields)})


def find(filter_: Any) -> dict[str, Any]:
    return {"find": "coll", "filter": filter_}


def update(u: Any, q: Any = None, **options: Any) -> dict[str, Any]:
    return {"update": "coll", "updates": [{"q": q or {}, "u": u, **options}]}


def agg(*stages: Any) -> dict[str, Any]:
    return {"aggregate": "coll", "pipeline": list(stages), "cursor": {}}


REFUSED = [
    # queries
    (find({"notes": "x"}), 63165),
    (find({"text": "x"}), 63165),
    (find({"ssn": None}), 51095),
    (find({"ssn": {"$in": [None]}}), 51120),
    (find({"ssn": {"$in": [Regex("^a")]}}), 51015),
    (find({"ssn": {"$in": [["a"]]}}), 6994300),
    (find({"ssn": {"$regex": "^a"}}), 51092),
    (find({"ssn": Regex("^a")}), 51092),
    (find({"ssn": {"$type": "string"}}), 51092),
    (find({"ssn": {"$size": 1}}), 51092),
    (find({"ssn": {"$gt": "a"}}), 6721001),
    (find({"ssn": {"$elemMatch": {"$eq": 1}}}), 6890100),
    (find({"ssn.x": "a"}), 51102),
    (find({"a": {"b": "x"}}), 6341900),
    (find({"a": ["x"]}), 31007),
    (find({"a": {"$in": [["x"]]}}), 31008),
    (find({"a": {"$elemMatch": {"b": "x"}}}), 6890100),
    (find({"$where": "this.ssn == '1'"}), 51094),
    (find({"$cantDoThis": 5}), 2),
    (find("not an object"), 14),  # mongod's IDL: wrong type
    (find({"age": {"$gt": 201}}), 6747900),
    (find({"age": {"$gt": -5, "$lt": 5}}), 6747901),
    (find({"age": {"$gt": 5, "$lt": 500}}), 6747902),
    (find({"age": {"$gte": 1.5}}), 6742002),
    (find({"age": {"$gte": "1"}}), 6742000),
    (find({"age": {"$gte": datetime.datetime(2020, 1, 1)}}), 6720002),
    (find({"when": {"$gte": 5}}), 6720002),
    # NaN orders below every number: mongocryptd's bounds checks refuse it before its NaN check (6991000).
    (find({"d": {"$gte": float("nan")}}), 6747900),
    (find({"d": {"$gte": Decimal128("NaN")}}), 6742002),
    (find({"d": {"$eq": float("nan")}}), 6747901),
    # A range $in: no bounds check (mongocryptd ignores its answer there), NaN refused building the placeholder.
    (find({"d": {"$in": [1.0, float("nan")]}}), 6991000),
    (find({"age": {"$in": [300]}}), None),
    (find({"d": {"$gte": 1.0, "$lte": float("nan")}}), 6747902),
    (find({"$expr": {"$gt": ["$d", float("nan")]}}), 6720810),
    (find({"$expr": {"$and": [{"$gt": ["$d", 1.0]}, {"$lt": ["$d", float("nan")]}]}}), 6720811),
    (find({"$expr": {"$eq": ["$ssn", "$other"]}}), 6334105),
    (find({"$expr": {"$eq": [{"$type": "$ssn"}, "string"]}}), 6331102),
    (find({"$expr": {"$gt": ["$ssn", "a"]}}), 6331102),
    (find({"$expr": {"$concat": ["$ssn", "x"]}}), 6331102),
    (find({"$expr": {"$eq": ["$$ROOT", {}]}}), 31121),
    (find({"$expr": {"$encStrStartsWith": {"input": "$ssn", "prefix": "ab"}}}), 10113904),
    (find({"$expr": {"$encStrStartsWith": {"input": "$plain", "prefix": "ab"}}}), 10112204),
    (find({"$expr": {"$encStrEndsWith": {"input": "$text", "suffix": "ab"}}}), 10209400),
    (find({"$expr": {"$encStrContains": {"input": "$text", "substring": "ab"}}}), 10209500),
    ({"find": "coll", "filter": {"ssn": "a"}, "collation": {"locale": "fr"}}, 31054),
    # mongocryptd 8.x analyses a find projection as a lone $project stage.
    ({"find": "coll", "filter": {}, "projection": {"x": "$ssn"}}, None),
    # An equality field compared outside a filter: its reference is refused (a range one: 7020507).
    ({"find": "coll", "filter": {}, "projection": {"x": {"$eq": ["$ssn", "1"]}}}, 6331102),
    ({"find": "coll", "filter": {}, "projection": {"x": {"$concat": ["$ssn", "1"]}}}, 6331102),
    ({"find": "coll", "filter": {}, "projection": {"ssn": {"$slice": 1}}}, 6331102),
    # A dotted target may land in array elements: the copy's encryption becomes unknown there (no error).
    ({"find": "coll", "filter": {}, "projection": {"x.y": "$ssn"}}, None),
    (agg({"$project": {"x": {"$eq": ["$ssn", "1"]}}}), 6331102),
    (agg({"$addFields": {"x": {"$gt": ["$age", 1]}}}), 7020507),
    ({"find": "coll", "filter": {}, "projection": {"x": {"$add": [3, 4]}, "ssn": 1, "y": 0}}, None),
    ({"distinct": "coll", "key": "a"}, 31027),
    ({"distinct": "coll", "key": "ssn.x"}, 51102),
    ({"count": "coll", "query": {"notes": "x"}}, 63165),
    ({"delete": "coll", "deletes": [{"q": {"notes": "x"}, "limit": 1}]}, 63165),
    # writes
    ({"insert": "coll", "documents": [{"ssn": 5}]}, 31118),
    ({"insert": "coll", "documents": [{"age": Int64(5)}]}, 31118),
    ({"insert": "coll", "documents": [{"ssn": None}]}, 31118),
    ({"insert": "coll", "documents": [{"a": [{"b": "x"}]}]}, 31006),
    ({"insert": "coll", "documents": [{"ssn": Binary(b"\x03abc", 6)}]}, 31041),
    (update({"$set": {"ssn": 5}}), 31118),
    (update({"$set": {"a": "scalar"}}), 51159),
    (update({"$set": {"a": [{"b": "x"}]}}), 51159),  # not an object where encrypted fields belong
    (update({"$set": {"ssn.x": "y"}}), 51102),
    (update({"$inc": {"age": 1}}), 51150),
    (update({"$push": {"a": {"b": "x"}}}), 51150),
    (update({"$rename": {"ssn": "other"}}), 6329901),
    (update({"$rename": {"a": "other"}}), 51161),
    (update({"$set": {"a.$.b": "x"}}), 51149),
    (update({"$frobnicate": {"x": 1}}), 9),
    (update({"$set": {"x": 1}}, multi=True), 6329900),
    ({"insert": "coll", "documents": [{"ssn": Timestamp(0, 0)}]}, 51129),
    ({"distinct": "coll", "key": "ssn"}, 31026),
    (update([{"$set": {"ssn": "x"}}]), 6329902),
    (update([{"$set": {"x": "$ssn"}}]), 6329902),
    (update([{"$addFields": {"x": {"$add": ["$age", 1]}}}]), 6331102),
    (update([{"$set": {"x": 1}}, {"$out": "z"}]), 72),
    (update([{"$match": {"ssn": "x"}}]), 72),
    (update([{"$project": {"x": 1}}]), 6329902),
    (update({"$set": {"a": {"b": "x", "c": 1}, "z": 1}}, upsert=True), None),
    (update({"$set": {"a": {"b": 4}}}), 31118),
    (update({"ssn": Timestamp(0, 0)}, upsert=True), 51129),
    (update({"$set": {"ssn": Binary(b"data", 6)}}), 31041),
    (update({"$set": {"x.$[i]": 1}}, arrayFilters=[{"i": 0}]), None),
    (update({"$set": {"ssn.$[i]": 1}}, arrayFilters=[{"i": 0}]), 51150),
    ({"findAndModify": "coll", "query": {}, "update": {"$set": {"age": "x"}}}, 31118),
    # aggregation
    (agg({"$out": "other"}), 9710000),  # every namespace a pipeline names needs its schema first
    (agg({"$frobnicate": {}}), 40324),
    (agg({"$sort": {"ssn": 1}}), 51201),
    (agg({"$sort": {"a": 1}}), 51201),
    (agg({"$group": {"_id": "$ssn"}}), 51222),
    (agg({"$group": {"_id": {"k": "$age"}, "a": {"$avg": "$age"}}}), 51222),
    (agg({"$group": {"_id": None, "n": {"$sum": {"$cond": [{"$eq": [{"$type": "$age"}, "int"]}, 1, 0]}}}}), 6331102),
    (agg({"$addFields": {"ssn": "$ssn"}}), 6316401),
    (agg({"$group": {"_id": "$x", "set": {"$push": "$age"}}}), 6331102),
    (agg({"$group": {"_id": "$x", "s": {"$sum": {"$cond": {"if": {"$in": ["$age", [1, 2]]}, "then": 1,
                                                          "else": 2}}}}}), 6994304),
    (find({"$expr": {"$in": ["$age", [1, "$x"]]}}), 6334105),
    (find({"$expr": {"$in": ["$d", [1.0, float("nan")]]}}), 6991000),
    (find({"$expr": {"$in": ["$d", [1]]}}), 6742002),
    (find({"$expr": {"$in": ["$when", [1]]}}), 6720002),
    (find({"$expr": {"$in": ["$age", []]}}), None),
    (agg({"$group": {"_id": "$x", "s": {"$sum": {"$cond": {"if": {"$gt": ["$age", 3]}, "then": 1, "else": 2}}}}}),
     7020507),
    (agg({"$group": {"_id": "$x", "s": {"$push": {"$cond": {"if": {"$gt": ["$y", 3]}, "then": "$age",
                                                           "else": False}}}}}), 6331102),
    (agg({"$sortByCount": "$ssn"}), 51222),
    (agg({"$bucketAuto": {"groupBy": "$age", "buckets": 2}}), 51238),
    (agg({"$bucket": {"groupBy": "$x", "boundaries": [0, 5], "output": {"a": {"$avg": "$age"}}}}), 51221),
    (agg({"$replaceRoot": {"newRoot": "$a"}}), 31129),
    (agg({"$replaceWith": {"$mergeObjects": ["$$ROOT", {"x": 1}]}}), 31121),
    (agg({"$geoNear": {"near": [0, 0], "distanceField": "ssn"}}), None),  # the distance overwrites ssn
    (agg({"$geoNear": {"near": [0, 0], "distanceField": "dist", "query": {"notes": "x"}}}), 63165),
    (agg({"$graphLookup": {"from": "coll", "startWith": "$ssn", "connectFromField": "x", "connectToField": "y",
                           "as": "z"}}), None),
    (agg({"$redact": "$$KEEP"}), 31011),
    (agg({"$unwind": "$ssn"}), 31153),
    (agg({"$unwind": {"path": "$a"}}, {"$match": {"a.b": "x"}}), None),
    (agg({"$unwind": {"path": "$x", "includeArrayIndex": "ssn"}}, {"$match": {"ssn": 0}}), None),
    (agg({"$facet": {"a": []}}), 31011),
    (agg({"$group": {"_id": None, "s": {"$avg": "$age"}}}), 51221),
    (agg({"$project": {"x": "$ssn"}}), None),
    (agg({"$project": {"x": "$a"}}), None),
    (agg({"$project": {"x.y": "$ssn"}}), None),
    (agg({"$project": {"x.y": "$ssn"}}, {"$match": {"x.y": "a"}}), 31133),
    (agg({"$project": {"x": "$a.b"}}), 6331102),
    (agg({"$project": {"x": "$$ROOT.ssn"}}), 6331102),
    (agg({"$project": {"x": "$ssn"}}, {"$match": {"x": {"$gt": "a"}}}), 6721001),
    (agg({"$project": {"x": "$ssn"}}, {"$sort": {"x": 1}}), 51201),
    (agg({"$addFields": {"ssn": "x"}}), None),
    (agg({"$addFields": {"ssn.x": 1}}), 51096),
    (agg({"$addFields": {"a": "$ssn"}}), 6316401),
    (agg({"$group": {"_id": None, "s": {"$addToSet": "$ssn"}}}), 51223),
    (agg({"$group": {"_id": None, "s": {"$first": "$ssn"}}}), 6331102),
    (agg({"$group": {"_id": None, "s": {"$last": "$age"}}}), 6331102),
    (agg({"$group": {"_id": None, "p": {"$push": "$ssn"}, "s": {"$avg": "$age"}}}), 51221),
    (agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "ssn", "as": "z"}}), 6331103),
    (agg({"$lookup": {"from": "other", "localField": "x", "foreignField": "y", "as": "z"}}), 9710000),
    (agg({"$lookup": {"from": "coll", "localField": "ssn", "foreignField": "y", "as": "z"}}), 6331103),
    (agg({"$lookup": {"from": "coll", "localField": "a", "foreignField": "y", "as": "z"}}), 51206),
    (agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "a", "as": "z"}}), 51207),
    (agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "y", "as": "a"}}), None),
    (agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "y", "as": "ssn.z"}}), 51096),
    (agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "y", "as": "ssn"}},
         {"$match": {"ssn.notes": "x"}}), 31133),
    (agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "y", "as": "ssn"}},
         {"$match": {"ssn.age": {"$gt": 1}, "ssn.x": 2}}), 31133),
    (agg({"$lookup": {"from": "coll", "let": {"v": "$x"}, "pipeline": [], "as": "z"}}), 51208),
    (agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "y", "as": "z"}},
         {"$match": {"z.notes": "x"}}), 31133),
    (agg({"$match": {"ssn": {"$regex": "a"}}}), 51092),
    # schema commands
    ({"create": "coll", "validator": {"ssn": "x"}}, 6491100),
    ({"create": "coll", "viewOn": "other", "pipeline": []}, 7501300),
    ({"create": "coll", "validator": {"$jsonSchema": {"properties": {"ssn": {"bsonType": "string"}}}}}, 51092),
    ({"collMod": "coll", "validator": {"$and": [{"$jsonSchema": {}}, {"x": 1}]}}, 51092),
    ({"createIndexes": "coll", "indexes": [{"key": {"a": 1}, "name": "a", "partialFilterExpression": {"u": "h"}},
                                           {"key": {"b": 1}, "name": "b", "partialFilterExpression": {"ssn": "1"}}]},
     6491102),
    ({"collMod": "coll", "validator": {"unencrypted": 123}}, None),
    ({"collMod": "coll", "validator": {"age": {"$gt": 5}}}, 6491100),
    ({"createIndexes": "coll", "indexes": [{"name": "i", "key": {"x": 1}, "partialFilterExpression": {"ssn": "x"}}]},
     6491102),
    ({"createIndexes": "coll", "indexes": [{"name": "i", "key": {"ssn": 1}}]}, 6346502),
]


@pytest.mark.parametrize(("command", "code"), REFUSED, ids=[f"{i}-{next(iter(c))}-{code}" for i, (c, code) in
                                                              enumerate(REFUSED)])
def test_refused(client, command, code):
    reply = send(client, command)
    if code is None:  # rows that must be accepted, next to the refusals they resemble
        assert reply["ok"] == 1.0, reply
        return
    assert reply["ok"] == 0.0, reply
    assert reply["code"] == code, reply
    assert reply["codeName"]


BAD_DEFINITIONS = [
    ([{"path": "", "keyId": KEYS["ssn"], "bsonType": "string"}], 6316402),
    ([{"path": "_id", "keyId": KEYS["ssn"], "bsonType": "string"}], 6316403),
    # mongocryptd builds its schema tree field by field (mongod's 6338401-6338403 checks are not its own).
    ([{"path": "x", "keyId": KEYS["ssn"]}, {"path": "x", "keyId": KEYS["age"]}], 6316401),
    ([{"path": "x.y", "keyId": KEYS["ssn"]}, {"path": "x", "keyId": KEYS["age"]}], 6316401),
    ([{"path": "x", "keyId": KEYS["ssn"]}, {"path": "x.y", "keyId": KEYS["age"]}], 51096),
    ([{"path": "x", "keyId": KEYS["ssn"], "queries": {"queryType": "equality"}}], 6412601),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "double", "queries": {"queryType": "equality"}}], 6338405),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string", "queries": {"queryType": "range"}}], 6775201),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "range", "sparsity": Int64(9)}}], 6775214),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "range", "min": Int64(0), "max": 5}}], 7018200),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int", "queries": {"queryType": "range", "min": 5, "max": 5}}],
     6720005),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "double", "queries": {"queryType": "range", "precision": 2}}],
     6967100),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "range", "min": 0, "max": 7, "trimFactor": 3}}], 8574000),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "equality", "min": 0}}], 6775206),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "equality", "precision": 2}}], 10774900),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "equality", "caseSensitive": True}}], 10774904),
    # The type is checked before the options (validateEqualityIndex).
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "double",
       "queries": {"queryType": "equality", "min": 0.0}}], 6338405),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "range", "strMaxLength": 5}}], 10774906),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "range", "strMaxLength": 5}}], 6775201),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "double",
       "queries": {"queryType": "range", "min": 0.125, "max": 10.0, "precision": 2}}], 6966805),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "double",
       "queries": {"queryType": "range", "min": 0.0, "max": 10.125, "precision": 2}}], 6966806),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "decimal",
       "queries": {"queryType": "range", "min": Decimal128("0.125"), "max": Decimal128("10"), "precision": 2}}],
     6966807),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "decimal",
       "queries": {"queryType": "range", "min": Decimal128("0"), "max": Decimal128("10.125"), "precision": 2}}],
     6966808),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "double",
       "queries": {"queryType": "range", "min": 0.0, "max": 1e15, "precision": 2}}], 9157100),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "prefix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                   "diacriticSensitive": True, "trimFactor": 1}}], 10774914),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "int",
       "queries": {"queryType": "prefix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                   "diacriticSensitive": True}}], 9783400),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "prefix", "strMaxQueryLength": 2, "caseSensitive": True,
                   "diacriticSensitive": True}}], 9783402),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "prefix", "strMinQueryLength": 2, "caseSensitive": True,
                   "diacriticSensitive": True}}], 9783403),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "prefixPreview", "strMinQueryLength": 1, "strMaxQueryLength": 2,
                   "diacriticSensitive": True}}], 9783404),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "suffix", "strMinQueryLength": 1, "strMaxQueryLength": 2,
                   "caseSensitive": True}}], 9783405),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "substringPreview", "strMinQueryLength": 1, "strMaxQueryLength": 2,
                   "caseSensitive": True, "diacriticSensitive": True}}], 9783407),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "prefix", "strMinQueryLength": 3, "strMaxQueryLength": 2, "caseSensitive": True,
                   "diacriticSensitive": True}}], 9783406),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": {"queryType": "substring", "strMinQueryLength": 1, "strMaxQueryLength": 20, "strMaxLength": 10,
                   "caseSensitive": True, "diacriticSensitive": True}}], 9783408),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": [{"queryType": "prefix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                    "diacriticSensitive": True},
                   {"queryType": "substring", "strMinQueryLength": 1, "strMaxQueryLength": 2, "strMaxLength": 9,
                    "caseSensitive": True, "diacriticSensitive": True}]}], 9783414),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": [{"queryType": "prefix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                    "diacriticSensitive": True},
                   {"queryType": "suffix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": False,
                    "diacriticSensitive": True}]}], 9783409),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": [{"queryType": "prefix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                    "diacriticSensitive": True},
                   {"queryType": "suffix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                    "diacriticSensitive": False}]}], 9783410),
    ([{"path": "x", "keyId": KEYS["ssn"], "bsonType": "string",
       "queries": [{"queryType": "prefix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                    "diacriticSensitive": True, "contention": 1},
                   {"queryType": "suffix", "strMinQueryLength": 1, "strMaxQueryLength": 2, "caseSensitive": True,
                    "diacriticSensitive": True, "contention": 2}]}], 9783411),
    ([{"path": "x", "keyId": "not a uuid", "bsonType": "string"}], 9),
]


@pytest.mark.parametrize(("fields", "code"), BAD_DEFINITIONS, ids=[str(c) for _, c in BAD_DEFINITIONS])
def test_bad_encrypted_fields_refused(client, fields, code):
    reply = send(client, {"insert": "coll", "documents": [{"_id": 1}]}, fields)
    assert reply["ok"] == 0.0 and reply["code"] == code, reply


def test_timestamp_zero_refused_at_encrypted_top_level(client):
    fields = [{"path": "ts", "keyId": KEYS["ssn"], "bsonType": "timestamp",
               "queries": {"queryType": "equality", "contention": Int64(0)}}]
    reply = send(client, {"insert": "coll", "documents": [{"ts": Timestamp(0, 0)}]}, fields)
    assert reply["code"] == 51129
    reply = send(client, {"insert": "coll", "documents": [{"ts": Timestamp(5, 1)}]}, fields)
    assert reply["ok"] == 1.0


def test_several_namespaces(client):
    two = info()
    two["schema"]["db.other"] = {"fields": []}
    reply = raw_command(client, "db", {"find": "coll", "filter": {}, "encryptionInformation": two})
    assert reply["code"] == 6327503
    reply = raw_command(client, "db", {"aggregate": "nope", "pipeline": [], "cursor": {}, "encryptionInformation": two})
    assert reply["code"] == 9686712
    reply = raw_command(client, "db", {"aggregate": "coll", "pipeline": [{"$match": {"ssn": "x"}}], "cursor": {},
                                       "encryptionInformation": two})
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True


def test_csfle_schemas_beside_qe_must_encrypt_nothing(client):
    command = {"aggregate": "coll", "cursor": {}, "encryptionInformation": info(),
               "pipeline": [{"$lookup": {"from": "c2", "localField": "x", "foreignField": "y", "as": "m"}},
                            {"$match": {"ssn": "x"}}]}
    plain = {"db.c2": {"jsonSchema": {"required": ["foo"]}, "isRemoteSchema": True}}
    reply = raw_command(client, "db", {**command, "csfleEncryptionSchemas": plain})
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True
    assert set(reply["result"]) == {"aggregate", "cursor", "encryptionInformation", "pipeline"}
    encrypting = {"db.c2": {"jsonSchema": {"properties": {"e2": {"encrypt": {"bsonType": "string"}}}},
                            "isRemoteSchema": True}}
    reply = raw_command(client, "db", {**command, "csfleEncryptionSchemas": encrypting})
    assert reply["code"] == 9686710


def test_find_and_modify_keeps_an_unmarked_query(client):
    reply = send(client, {"findAndModify": "coll", "query": {"_id": 1}, "update": {"$set": {"ssn": "x"}}})
    assert reply["result"]["query"] == {"_id": 1}
    reply = send(client, {"findAndModify": "coll", "query": {"ssn": "y"}, "update": {"$set": {"x": 1}}})
    assert set(reply["result"]["query"]["ssn"]) == {"$eq"}


@pytest.mark.parametrize(("information", "code"), [
    ({"type": 1, "schema": "secret"}, 14),
    ({"type": 1, "schema": {}}, 6327503),
    ({"type": 1, "schema": {"db.coll": {}, "db.other": {}}}, 6327503),
    ("secret", 6327501),
])
def test_bad_encryption_information(client, information, code):
    reply = raw_command(client, "db", {"insert": "coll", "documents": [{}], "encryptionInformation": information})
    assert reply["ok"] == 0.0 and reply["code"] == code, reply


def test_extra_state_collection_names_accepted(client):
    information = {"type": 1, "schema": {"db.coll": {"escCollection": "e", "eccCollection": "c", "ecocCollection": "o",
                                                     "fields": [{"path": "a.b.c", "keyId": KEYS["ssn"],
                                                                 "bsonType": "string"}]}}}
    reply = raw_command(client, "db", {"insert": "coll", "documents": [{"foo": "bar"}],
                                       "encryptionInformation": information})
    assert reply["ok"] == 1.0 and "encryptionInformation" in reply["result"]


def test_namespace_mismatch(client):
    reply = raw_command(client, "db", {"find": "other", "filter": {}, "encryptionInformation": info()})
    assert reply["code"] == 6411900
    assert reply["errmsg"] == ("Namespace in encryptionInformation: 'db.coll' does not match namespace given in "
                               "command: 'db.other'")


@pytest.mark.parametrize(("command", "message"), [
    (agg({"$group": {"_id": {"value": "$ssn"}}}),
     "Cannot group on field '_id.value' which is encrypted with the random algorithm or whose encryption properties "
     "are not known until runtime"),
    (find({"$expr": {"$lte": ["$age", "$age"]}}),
     "Comparison disallowed between Queryable Encryption encrypted fields and non-constant expressions; field 'age' "
     "is encrypted."),
    (find({"$expr": {"$gt": [{"$add": ["$age", 1]}, 5]}}),
     "Invalid reference to an encrypted field within aggregate expression: age"),
    (find({"when": {"$ne": None}}), "If the value type is a date, the type of the index must also be date"),
    (agg({"$group": {"_id": None, "a": {"$avg": "$age"}}}), "Accumulator '$avg' cannot aggregate encrypted fields."),
    (agg({"$group": {"_id": None, "s": {"$addToSet": "$ssn"}}}),
     "'s' cannot have fields encrypted with the random algorithm or whose encryption properties are not known "
     "until runtime when used in an $addToSet accumulator."),
    (agg({"$lookup": {"from": "coll", "localField": "ssn", "foreignField": "y", "as": "z"}}),
     "Cannot refer to encrypted field in $lookup 'localField' or 'foreignField'"),
])
def test_messages_match_mongocryptd(client, command, message):
    reply = send(client, command)
    assert reply["ok"] == 0.0 and message in reply["errmsg"], reply


def test_redacted_error_messages_carry_no_values():
    """mongocryptd quotes the predicate in some messages; redacted, each value is replaced by its type."""
    from markd.analysis import mark_command
    from markd.errors import CommandError

    secret = "s3cr3t-value"
    for command in (find({"ssn": {"$regex": secret}}), find({"notes": secret}), find({"ssn": {"$gt": secret}}),
                    {"insert": "coll", "documents": [{"ssn": [secret]}]}, update({"$inc": {"age": secret}})):
        with pytest.raises(CommandError) as raised:
            mark_command({**command, "encryptionInformation": info(), "$db": "db"})
        assert secret not in raised.value.redacted, raised.value.redacted


# ---------------------------------------------------------------------------------------------- accepted shapes


def test_dotted_keys_are_field_names_not_paths(client):
    fields = [{"path": "d.e.f", "keyId": KEYS["ssn"], "bsonType": "string"}]
    for u in ({"$set": {"d": {"e.f": 4}}}, {"d": {"e.f": 4}}, {"$set": {"d": {"e": {"foo": 5}}}}):
        reply = send(client, update(u), fields)
        assert reply["ok"] == 1.0 and reply["result"]["updates"][0]["u"] == u, reply
    reply = send(client, update({"$set": {"d": {"e": 4}}}), fields)
    assert reply["code"] == 51159
    reply = send(client, update({"d": {"e": 4}}), fields)
    assert reply["ok"] == 1.0
    reply = send(client, update({"ssn": Timestamp(0, 0)}))
    assert reply["code"] == 31118  # not an upsert: only the type is wrong


def test_views_refused_even_without_encrypted_fields(client):
    reply = send(client, {"create": "coll", "viewOn": "other", "pipeline": [{"$match": {"name": "Bert"}}]}, fields=[])
    assert reply["code"] == 7501300


def test_stages_over_plain_fields_are_allowed(client):
    reply = send(client, agg({"$sortByCount": "$x"}, {"$match": {"ssn": "not encrypted after a group"}}))
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is False
    reply = send(client, agg({"$bucketAuto": {"groupBy": "$x", "buckets": 2}}))
    assert reply["ok"] == 1.0
    reply = send(client, agg({"$replaceRoot": {"newRoot": "$plain"}}, {"$match": {"ssn": "z"}}))
    assert reply["ok"] == 1.0 and reply["result"]["pipeline"][1] == {"$match": {"ssn": {"$eq": "z"}}}
    reply = send(client, agg({"$geoNear": {"near": [0, 0], "distanceField": "dist", "query": {"ssn": "x"}}}))
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True


def test_nothing_encrypted_passes_through(client):
    command = {"find": "coll", "filter": {"x": 1}}
    reply = send(client, command, fields=[])
    # libmongocrypt then forwards the command as it was; the analysed form is normalized as ever.
    assert reply["schemaRequiresEncryption"] is False and reply["hasEncryptionPlaceholders"] is False
    assert reply["result"]["filter"] == {"x": {"$eq": 1}}


def test_update_statements_get_mongocryptd_defaults(client):
    reply = send(client, update({"$set": {"x": 1}}, q={"_id": 1}))
    statement = reply["result"]["updates"][0]
    assert statement == {"q": {"_id": {"$eq": 1}}, "u": {"$set": {"x": 1}}, "multi": False, "upsert": False}
    assert reply["schemaRequiresEncryption"] is True and reply["hasEncryptionPlaceholders"] is False
    assert "encryptionInformation" in reply["result"]


@pytest.mark.parametrize(("filter_", "expected"), [
    ({"_id": 1}, {"_id": {"$eq": 1}}),
    ({}, {}),
    ({"x": {"$ne": 1}}, {"x": {"$not": {"$eq": 1}}}),
    ({"x": {"$nin": [1]}}, {"x": {"$not": {"$in": [1]}}}),
    ({"x": 1, "y": {"$exists": True}}, {"$and": [{"x": {"$eq": 1}}, {"y": {"$exists": True}}]}),
    ({"$or": [{"x": 1}, {"y": 2, "z": 3}]},
     {"$or": [{"x": {"$eq": 1}}, {"$and": [{"y": {"$eq": 2}}, {"z": {"$eq": 3}}]}]}),
    ({"age": {"$gt": 5, "$lt": 2}}, {"$alwaysFalse": 1}),
    ({"ssn": {"$exists": False}}, {"ssn": {"$exists": False}}),
    ({"a": {"$exists": True}}, {"a": {"$exists": True}}),
    ({"a": 5}, {"a": {"$eq": 5}}),
    ({"ssn": "x", "bars": {"$elemMatch": {"name": "u"}}}, None),
    ({"bars": {"$elemMatch": {"$gt": 1, "$lt": 5}}}, {"bars": {"$elemMatch": {"$gt": 1, "$lt": 5}}}),
    ({"x": {"$eq": Regex("a", "i")}}, {"x": {"$eq": Regex("a", "i")}}),
    ({"x": Regex("a", "i")}, {"x": {"$regex": "a", "$options": "i"}}),
    ({"age": {"$in": []}}, {"age": {"$in": []}}),
    ({"ssn": {"$in": []}}, {"ssn": {"$in": []}}),
])
def test_filter_normalisation(client, filter_, expected):
    reply = send(client, find(filter_))
    assert reply["ok"] == 1.0, reply
    if expected is None:  # only the plain part is checked: {ssn: ..., bars: {$elemMatch: {name: "u"}}}
        assert reply["result"]["filter"]["$and"][1] == {"bars": {"$elemMatch": {"name": {"$eq": "u"}}}}
        return
    assert reply["result"]["filter"] == expected


def test_create_keeps_command_without_encryption_information(client):
    reply = send(client, {"create": "coll", "validator": {"plain": "x"}})
    assert reply["result"] == {"create": "coll", "validator": {"plain": "x"}}
    assert reply["schemaRequiresEncryption"] is True and reply["hasEncryptionPlaceholders"] is False
    reply = send(client, {"createIndexes": "coll", "indexes": [{"name": "i", "key": {"plain": 1}}]})
    assert "encryptionInformation" not in reply["result"]


def test_explain_envelope(client):
    reply = send(client, {"explain": {"find": "coll", "filter": {"ssn": "x"}, "$db": "db"}})
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True
    assert reply["result"]["verbosity"] == "allPlansExecution"
    assert set(reply["result"]["explain"]) == {"find", "filter", "encryptionInformation"}


def test_decimal_and_date_range_bounds_accepted(client):
    fields = [{"path": "m", "keyId": KEYS["ssn"], "bsonType": "decimal",
               "queries": {"queryType": "range", "contention": Int64(0)}}]
    reply = send(client, find({"m": {"$gte": Decimal128("1.5"), "$lte": Decimal128("2.5")}}), fields)
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True


# ---------------------------------------------------------------------------------------------- bulkWrite


def bulk(*operations: Any, db: str = "admin") -> dict[str, Any]:
    return {"bulkWrite": 1, "ops": list(operations), "nsInfo": [{"ns": "db.coll", "encryptionInformation": info()}],
            "$db": db}


def test_bulk_write_marks_inserts():
    # libmongocrypt puts a bulkWrite's encryptionInformation in nsInfo.0: analysed by the pure function.
    from markd.analysis import mark_command

    marked = mark_command(bulk({"insert": 0, "document": {"_id": 1, "ssn": "x"}},
                               {"insert": 0, "document": {"x": 1}}))
    assert marked["hasEncryptionPlaceholders"] and marked["schemaRequiresEncryption"]
    placeholder = marked["result"]["ops"][0]["document"]["ssn"]
    assert isinstance(placeholder, Binary) and placeholder.subtype == 6 and placeholder[0] == 3
    assert marked["result"]["nsInfo"][0]["encryptionInformation"] == info()


def test_bulk_write_is_routed_to_qe_by_the_daemon(client):
    # Through the real process: mark_command finds the rules in nsInfo.0, not at the top level.
    from tests.support.process import raw_command

    reply = raw_command(client, "admin", bulk({"insert": 0, "document": {"_id": 1, "ssn": "x"}}))
    assert reply["ok"] == 1.0, reply
    placeholder = reply["result"]["ops"][0]["document"]["ssn"]
    assert isinstance(placeholder, Binary) and placeholder.subtype == 6 and placeholder[0] == 3


@pytest.mark.parametrize(("command", "code"), [
    (bulk({"insert": 0, "document": {}}, {"delete": 0, "filter": {}}), 2),
    (bulk({"insert": 0, "document": {}}, db="db"), 73),
    ({**bulk({"insert": 0, "document": {}}), "nsInfo": [{"ns": "db.coll"}]}, 2),
    (bulk({"update": 0, "filter": {"notes": "x"}, "updateMods": {"$set": {"x": 1}}}), 63165),
])
def test_bulk_write_refused(command, code):
    from markd.analysis import mark_command
    from markd.errors import CommandError

    with pytest.raises(CommandError) as raised:
        mark_command(command)
    assert raised.value.code == code


# ---------------------------------------------------------------------------------------------- range shapes
# Where mongocryptd puts range placeholders (paths into the marked filter), as its own query-analysis tests
# show: merged ranges come after the other predicates of their $and, by path; a $and left holding only a
# merged range is flattened into it; an explicit $and around one predicate stays.

RANGE_FIELDS = [
    {"path": "age", "keyId": KEYS["age"], "bsonType": "int",
     "queries": {"queryType": "range", "contention": Int64(0), "sparsity": Int64(1), "min": 0, "max": 200}},
    {"path": "salary", "keyId": KEYS["salary"], "bsonType": "int",
     "queries": {"queryType": "range", "contention": Int64(0), "sparsity": Int64(1), "min": 0, "max": 1000000}},
    {"path": "ssn", "keyId": KEYS["ssn"], "bsonType": "string",
     "queries": {"queryType": "equality", "contention": Int64(0)}},
    {"path": "when", "keyId": KEYS["when"], "bsonType": "date",
     "queries": {"queryType": "range", "contention": Int64(0), "sparsity": Int64(1),
                 "min": datetime.datetime(1980, 1, 1), "max": datetime.datetime(2022, 1, 1)}},
]
WHEN = datetime.datetime(2002, 12, 4)


@pytest.mark.parametrize(("filter_", "paths"), [
    ({"age": {"$gt": 5}}, [("age", "$gt")]),
    ({"age": {"$gte": 23, "$lte": 35}}, [("$and", 0, "age", "$gte"), ("$and", 1, "age", "$lte")]),
    ({"age": {"$gt": 23, "$lt": 35}}, [("$and", 0, "age", "$gt"), ("$and", 1, "age", "$lt")]),
    ({"$and": [{"age": {"$gte": 23}}, {"age": {"$lte": 35}}]},
     [("$and", 0, "age", "$gte"), ("$and", 1, "age", "$lte")]),
    ({"$and": [{"age": {"$gte": 23}}, {"age": {"$lte": 35}}, {"salary": {"$gte": 5}}, {"salary": {"$lte": 7}}]},
     [("$and", 0, "$and", 0, "age", "$gte"), ("$and", 0, "$and", 1, "age", "$lte"),
      ("$and", 1, "$and", 0, "salary", "$gte"), ("$and", 1, "$and", 1, "salary", "$lte")]),
    ({"$and": [{"age": {"$gte": 23, "$lte": 35}}, {"ssn": "1"}]},
     [("$and", 0, "$and", 0, "age", "$gte"), ("$and", 0, "$and", 1, "age", "$lte"), ("$and", 1, "ssn", "$eq")]),
    ({"$and": [{"age": {"$gte": 23}}, {"age": {"$lte": 35}}, {"karma": {"$gte": 5}}, {"karma": {"$lte": 7}}]},
     [("$and", 2, "$and", 0, "age", "$gte"), ("$and", 2, "$and", 1, "age", "$lte")]),
    ({"salary": {"$eq": 23}}, [("$and", 0, "salary", "$gte"), ("$and", 1, "salary", "$lte")]),
    ({"$and": [{"salary": {"$gt": 10020}}, {"age": {"$eq": 35}}]},
     [("$and", 0, "$and", 0, "age", "$gte"), ("$and", 0, "$and", 1, "age", "$lte"), ("$and", 1, "salary", "$gt")]),
    ({"$and": [{"when": {"$lt": WHEN}}]}, [("$and", 0, "when", "$lt")]),
    ({"$and": [{"when": {"$gt": WHEN}}]}, [("$and", 0, "when", "$gt")]),
    ({"age": {"$in": [10, 20]}}, [("$or", 0, "$and", 0, "age", "$gte"), ("$or", 0, "$and", 1, "age", "$lte"),
                                  ("$or", 1, "$and", 0, "age", "$gte"), ("$or", 1, "$and", 1, "age", "$lte")]),
    ({"$or": [{"$and": [{"age": {"$gt": 20}}, {"age": {"$lt": 10}}]},
              {"$and": [{"age": {"$gt": 90}}, {"age": {"$lt": 100}}]}]},
     [("$or", 1, "$and", 0, "age", "$gt"), ("$or", 1, "$and", 1, "age", "$lt")]),
    ({"$and": [{"karma": {"$gte": 5}}, {"karma": {"$lte": 7}}]}, []),
    ({"$and": [{"age": {"$gt": 50}}, {"age": {"$lt": 25}}]}, []),
])
def test_range_placeholder_positions(client, filter_, paths):
    reply = send(client, find(filter_), RANGE_FIELDS)
    assert reply["ok"] == 1.0, reply
    folded = reply["result"]["filter"] == {"$alwaysFalse": 1}
    assert reply["hasEncryptionPlaceholders"] is (bool(paths) or folded)
    for path in paths:
        node: Any = reply["result"]["filter"]
        for step in path:
            node = node[step]
        assert isinstance(node, Binary) and node.subtype == 6, (path, reply["result"]["filter"])


RANGE_FIELDS_WITH_PREFIX = [*RANGE_FIELDS, {
    "path": "nested.age", "keyId": KEYS["a.b"], "bsonType": "int",
    "queries": {"queryType": "range", "contention": Int64(0), "sparsity": Int64(1), "min": 0, "max": 200}}]


@pytest.mark.parametrize(("filter_", "code"), [
    ({"ssn": {"$lte": "a"}}, 6721001),
    ({"$or": [{"ssn": {"$lte": "a"}}, {"ssn": {"$ne": "b"}}]}, 6721001),
    ({"$and": [{"ssn": {"$lte": "a"}}, {"ssn": {"$ne": "b"}}]}, 6720400),
    ({"ssn": {"$in": ["a", 5]}}, 31118),
    ({"age": {"$in": [Decimal128("22"), "s"]}}, 6742002),
    ({"age": {"$in": [5, None, 7]}}, 6742000),
    ({"age": {"$type": "int"}}, 51092),
    ({"age": {"$lte": 256}}, 6747900),
    ({"age": {"$gte": 150, "$lte": 260}}, 6747902),
    ({"age": {"$gte": -1, "$lte": 100}}, 6747901),
    ({"age": {"$gte": Int64(10), "$lte": Int64(2**31)}}, 31108),
    ({"when": {"$lte": True}}, 6720002),
    ({"when": {"$lte": 5}}, 6720002),
    ({"nested": {"$in": [{"age": 10, "other": 5}]}}, 7036803),
    ({"$expr": {"$lte": ["$ssn", "a"]}}, 6331102),
    ({"$expr": {"$add": ["$age", "$hi"]}}, 6331102),
    ({"$expr": {"$lte": ["$age", 256]}}, 6720810),
    ({"$expr": {"$and": [{"$gte": ["$age", 150]}, {"$lte": ["$age", 260]}]}}, 6720811),
    ({"$expr": {"$and": [{"$gte": ["$age", Int64(10)]}, {"$lte": ["$age", Int64(2**31)]}]}}, 31108),
])
def test_range_refusals(client, filter_, code):
    reply = send(client, find(filter_), RANGE_FIELDS_WITH_PREFIX)
    assert reply["ok"] == 0.0 and reply["code"] == code, reply


def _gt(path: str, value: Any) -> dict[str, Any]:
    return {"$gt": [f"${path}", value]}


@pytest.mark.parametrize(("expression", "paths", "marked"), [
    (_gt("age", 5), [("$and", 0, "$gt", 1, "$const"), ("$and", 1, "$lte", 1, "$const")], True),
    ({"$and": [_gt("salary", 5), _gt("age", 5)]},
     [("$and", 0, "$and", 0, "$gt", 1, "$const"), ("$and", 1, "$and", 1, "$lte", 1, "$const")], True),
    ({"$and": [_gt("salary", 5), {"$lt": ["$salary", 10]}]},
     [("$and", 0, "$and", 0, "$gt", 1, "$const"), ("$and", 0, "$and", 1, "$lt", 1, "$const")], True),
    ({"$and": [_gt("age", 5), {"$eq": ["$ssn", "x"]}]},
     [("$and", 1, "$and", 0, "$gt", 1, "$const"), ("$and", 0, "$eq", 1, "$const")], True),
    ({"$and": [_gt("age", 5), {"$cond": [{"$lt": ["$age", 25]}, False, True]}]},
     [("$and", 1, "$and", 0, "$gt", 1, "$const"), ("$and", 0, "$cond", 0, "$and", 0, "$gte", 1, "$const"),
      ("$and", 0, "$cond", 0, "$and", 1, "$lt", 1, "$const")], True),
    ({"$and": [{"$eq": ["$age", 10]}]}, [("$and", 0, "$and", 0, "$gte", 1, "$const")], True),
    ({"$eq": ["$when", WHEN]}, [("$and", 0, "$gte", 1, "$const"), ("$and", 1, "$lte", 1, "$const")], True),
    # An empty interval folds to false; the flag stays true (the original command holds the constants).
    ({"$and": [{"$lte": ["$age", 12]}, _gt("age", 15)]}, [], True),
    ({"$and": [_gt("salary", 20), {"$lte": ["$age", 12]}, {"$lt": ["$salary", 200]}, _gt("age", 15)]}, [], True),
    ({"$or": [{"$and": [{"$lte": ["$age", 12]}, _gt("age", 15)]}, {"$and": [{"$lte": ["$age", 20]}, _gt("age", 15)]}]},
     [("$or", 1, "$and", 0, "$and", 1, "$lte", 1, "$const"), ("$or", 1, "$and", 0, "$and", 0, "$gt", 1, "$const")],
     True),
])
def test_expr_range_positions(client, expression, paths, marked):
    reply = send(client, agg({"$match": {"$expr": expression}}), RANGE_FIELDS)
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is marked, reply
    for path in paths:
        node: Any = reply["result"]["pipeline"][0]["$match"]["$expr"]
        for step in path:
            node = node[step]
        assert isinstance(node, Binary) and node.subtype == 6, path


def test_expr_and_merges_range_comparisons(client):
    reply = send(client, find({"$expr": {"$and": [{"$gte": ["$age", 22]}, {"$lt": ["$age", 25]},
                                                  {"$in": ["$ssn", ["a", "b"]]}]}}), RANGE_FIELDS)
    assert reply["ok"] == 1.0, reply
    marked = reply["result"]["filter"]["$expr"]["$and"]
    assert set(marked[0]) == {"$in"} and set(marked[1]) == {"$and"}
    ranges = [bsonvalues.decode(bytes(c[op][1]["$const"][1:])) for c in marked[1]["$and"] for op in c]
    assert len(ranges) == 2
    assert {(r["v"]["firstOperator"], r["v"]["secondOperator"]) for r in ranges} == {(2, 3)}
    assert {r["v"]["edgesInfo"]["lowerBound"] for r in ranges} == {22}


def test_plain_explicit_and_of_one_predicate_stays(client):
    reply = send(client, find({"$and": [{"x": 1}]}))
    assert reply["result"]["filter"] == {"$and": [{"x": {"$eq": 1}}]}
    reply = send(client, find({"x": 1, "age": {"$gt": 50, "$lt": 25}}))
    assert reply["result"]["filter"] == {"$alwaysFalse": 1}


TEXT_FIELDS = [
    {"path": "lastName", "keyId": KEYS["text"], "bsonType": "string",
     "queries": {"queryType": "prefix", "contention": Int64(1), "strMinQueryLength": Int64(2),
                 "strMaxQueryLength": Int64(48), "caseSensitive": False, "diacriticSensitive": True}},
    {"path": "location", "keyId": KEYS["notes"], "bsonType": "string",
     "queries": {"queryType": "suffix", "contention": Int64(1), "strMinQueryLength": Int64(2),
                 "strMaxQueryLength": Int64(48), "caseSensitive": True, "diacriticSensitive": False}},
    {"path": "rating", "keyId": KEYS["ssn"], "bsonType": "int", "queries": {"queryType": "equality"}},
    {"path": "age", "keyId": KEYS["age"], "bsonType": "int",
     "queries": {"queryType": "range", "sparsity": Int64(1), "min": 0, "max": 200}},
]
STARTS = {"$encStrStartsWith": {"input": "$lastName", "prefix": "PREFIX"}}


@pytest.mark.parametrize(("filter_", "paths"), [
    ({"$expr": STARTS}, [("$expr", "$encStrStartsWith", "prefix", "$const")]),
    ({"$expr": {"$and": [STARTS, {"$eq": ["$rating", 5]}, {"$gt": ["$age", 3]}]}},
     [("$expr", "$and", 0, "$encStrStartsWith", "prefix", "$const"), ("$expr", "$and", 1, "$eq", 1, "$const"),
      ("$expr", "$and", 2, "$and", 0, "$gt", 1, "$const"), ("$expr", "$and", 2, "$and", 1, "$lte", 1, "$const")]),
    ({"$and": [{"$expr": STARTS}, {"$expr": {"$in": ["$rating", [1, 2, 3]]}}, {"$expr": {"$gt": ["$age", 3]}}]},
     [("$and", 0, "$expr", "$encStrStartsWith", "prefix", "$const"), ("$and", 1, "$expr", "$in", 1, 2, "$const"),
      ("$and", 2, "$expr", "$and", 0, "$gt", 1, "$const"), ("$and", 2, "$expr", "$and", 1, "$lte", 1, "$const")]),
    ({"$and": [{"$expr": STARTS}, {"rating": {"$in": [1, 2, 3]}}, {"age": {"$gt": 3}}]},
     [("$and", 0, "$expr", "$encStrStartsWith", "prefix", "$const"), ("$and", 1, "rating", "$in", 2),
      ("$and", 2, "age", "$gt")]),
])
@pytest.mark.parametrize("command", ["find", "count", "update", "delete", "findAndModify", "aggregate"])
def test_text_and_mixed_expression_positions(client, command, filter_, paths):
    body, where = {
        "find": ({"find": "coll", "filter": filter_}, ("filter",)),
        "count": ({"count": "coll", "query": filter_}, ("query",)),
        "update": ({"update": "coll", "updates": [{"q": filter_, "u": {"$set": {"foo": 1}}}]}, ("updates", 0, "q")),
        "delete": ({"delete": "coll", "deletes": [{"q": filter_, "limit": 1}]}, ("deletes", 0, "q")),
        "findAndModify": ({"findAndModify": "coll", "query": filter_, "update": {"$set": {"foo": 1}}}, ("query",)),
        "aggregate": (agg({"$match": filter_}), ("pipeline", 0, "$match")),
    }[command]
    reply = send(client, body, TEXT_FIELDS)
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True, reply
    for path in paths:
        node: Any = reply["result"]
        for step in (*where, *path):
            node = node[step]
        assert isinstance(node, Binary) and node.subtype == 6


@pytest.mark.parametrize(("filter_", "code"), [
    ({"$expr": {"$encStrStartsWith": {"input": "$foo", "prefix": "P"}}}, 10112204),
    ({"$expr": {"$encStrStartsWith": {"input": "$location", "prefix": "P"}}}, 10248500),
    ({"$and": [{"$expr": {"$encStrStartsWith": {"input": "$location", "prefix": "P"}}}, {"age": {"$gt": 3}}]},
     10248500),
])
def test_text_refusals(client, filter_, code):
    reply = send(client, find(filter_), TEXT_FIELDS)
    assert reply["ok"] == 0.0 and reply["code"] == code, reply


def test_parsed_encrypted_fields_are_cached_by_their_bytes():
    from markd.analysis import cache_stats, mark_command

    command = {"find": "coll", "filter": {"ssn": "x"}, "encryptionInformation": info(), "$db": "db"}
    mark_command(command)
    hits, misses = cache_stats()
    mark_command(dict(command))
    assert cache_stats() == (hits + 1, misses)
    changed = info()
    changed["schema"]["db.coll"]["fields"] = FIELDS[:1]
    mark_command({**command, "encryptionInformation": changed})
    assert cache_stats() == (hits + 1, misses + 1)


@pytest.mark.parametrize(("preview", "stable", "expression"), [
    ("prefixPreview", "prefix", {"$encStrStartsWith": {"input": "$lastName", "prefix": "ab"}}),
    ("suffixPreview", "suffix", {"$encStrEndsWith": {"input": "$lastName", "suffix": "ab"}}),
    ("substringPreview", "substring", {"$encStrContains": {"input": "$lastName", "substring": "ab"}}),
])
def test_preview_query_type_names_are_the_same_index(client, preview, stable, expression):
    # mongocryptd 8.2 parses the preview names (libmongocrypt now refuses them before it asks).
    def marked(query_type: str) -> Any:
        options = {"strMinQueryLength": Int64(2), "strMaxQueryLength": Int64(10), "caseSensitive": False,
                   "diacriticSensitive": True}
        if query_type.startswith("substring"):
            options["strMaxLength"] = Int64(60)
        fields = [{"path": "lastName", "keyId": KEYS["text"], "bsonType": "string",
                   "queries": {"queryType": query_type, "contention": Int64(1), **options}}]
        reply = send(client, find({"$expr": expression}), fields)
        assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True, reply
        return reply["result"]["filter"]

    assert marked(preview) == marked(stable)


def test_range_preview_is_range(client):
    def marked(query_type: str) -> Any:
        fields = [{"path": "age", "keyId": KEYS["age"], "bsonType": "int",
                   "queries": {"queryType": query_type, "contention": Int64(0), "min": 0, "max": 200,
                               "sparsity": Int64(1)}}]
        reply = send(client, find({"age": {"$gt": 5}}), fields)
        assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True, reply
        return reply["result"]["filter"]

    assert marked("rangePreview") == marked("range")


@pytest.mark.parametrize("command", [
    find({"age": {"$gt": 50, "$lt": 25}}),
    {"findAndModify": "coll", "query": {"age": {"$gt": 50, "$lt": 25}}, "remove": True},
    agg({"$match": {"$expr": {"$and": [{"$gt": ["$age", 50]}, {"$lt": ["$age", 25]}]}}}),
])
def test_an_empty_range_folds_without_its_constants_and_keeps_the_flag(client, command):
    # mongocryptd answers hasEncryptionPlaceholders: false here (and keeps findAndModify's query as sent): a client
    # that then sends the original command would send 50 and 25 in clear beside ciphertext.
    reply = send(client, command, RANGE_FIELDS)
    assert reply["ok"] == 1.0 and reply["hasEncryptionPlaceholders"] is True, reply
    assert "50" not in str(reply["result"]) and "25" not in str(reply["result"]).replace("enxcol_", "")


@pytest.mark.parametrize(("command", "code"), [
    ({"create": "coll", "validator": {"age": {"$gt": 50, "$lt": 25}}}, 6491100),
    ({"createIndexes": "coll", "indexes": [{"key": {"x": 1}, "name": "x",
                                            "partialFilterExpression": {"age": {"$gt": 50, "$lt": 25}}}]}, 6491102),
])
def test_an_empty_range_in_a_validator_or_partial_filter_is_a_comparison(client, command, code):
    reply = send(client, command, RANGE_FIELDS)
    assert reply["ok"] == 0.0 and reply["code"] == code, reply
