"""Every refusal class the analysis has, explained: `markd check` names the path and the operator.

One row per rule key of the error tables that refuses something about encryption (the `encryption`
class of markd.refusals): a command that the analysis refuses with that key, the path the reason must
name (None for refusals of a whole command: a stage, a view, multi: true) and the operator, stage or
command part it must name.  A second test keeps the table complete: every key the analysis raises
(found in its source) has a class, and every `encryption` key has a row here and a hint.
"""

from __future__ import annotations

import ast
import datetime
import uuid
from pathlib import Path
from typing import Any

import pytest
from bson import Decimal128, Int64, Regex, Timestamp
from bson.binary import Binary

import markd
from markd import refusals
from markd.analysis import errors as shared_errors
from markd.analysis.csfle import errors as csfle_errors
from markd.analysis.qe import errors as qe_errors

DET = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RND = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
K1 = Binary(uuid.UUID(int=1).bytes, 4)
K2 = Binary(uuid.UUID(int=2).bytes, 4)


def enc(algorithm: str, bson_type: str | None = None, key: Any = K1) -> dict[str, Any]:
    spec: dict[str, Any] = {"keyId": key if isinstance(key, str) else [key], "algorithm": algorithm}
    if bson_type:
        spec["bsonType"] = bson_type
    return {"encrypt": spec}


CSFLE_SCHEMA = {"bsonType": "object", "properties": {
    "ssn": enc(DET, "string"), "age": enc(DET, "int"), "rnd": enc(RND, "string"), "any": enc(RND),
    "alt": enc(RND, "string", "/keyName"),
    "doc": {"bsonType": "object", "properties": {"inner": enc(DET, "string"),
                                                 "deep": {"bsonType": "object",
                                                          "properties": {"leaf": enc(DET, "long")}}}},
    "plain": {"bsonType": "string"}}}
CSFLE = {"db.coll": CSFLE_SCHEMA, "db.other": {"bsonType": "object", "properties": {"x": enc(DET, "string", K2)}},
         "db.v": {}}
CSFLE_ID = {"bsonType": "object", "properties": {"_id": enc(DET, "int"), "ssn": enc(DET, "string")}}
CSFLE_POINTER_TO_ENCRYPTED = {"bsonType": "object", "properties": {"a": enc(RND, "string", "/b"),
                                                                   "b": enc(DET, "string")}}
CSFLE_CONFLICT = {"bsonType": "object", "properties": {"a": enc(DET, "string")},
                  "patternProperties": {"^a$": enc(RND, "string")}}


def key(n: int) -> Binary:
    return Binary(uuid.UUID(int=100 + n).bytes, 4)


QE_FIELDS = [
    {"path": "ssn", "keyId": key(1), "bsonType": "string", "queries": {"queryType": "equality"}},
    {"path": "age", "keyId": key(2), "bsonType": "int",
     "queries": {"queryType": "range", "min": 0, "max": 200, "sparsity": Int64(1)}},
    {"path": "notes", "keyId": key(3), "bsonType": "string"},
    {"path": "a.b", "keyId": key(4), "bsonType": "string", "queries": {"queryType": "equality"}},
    {"path": "text", "keyId": key(5), "bsonType": "string",
     "queries": {"queryType": "prefix", "strMinQueryLength": Int64(2), "strMaxQueryLength": Int64(10),
                 "caseSensitive": True, "diacriticSensitive": True}},
    {"path": "tail", "keyId": key(6), "bsonType": "string",
     "queries": {"queryType": "suffix", "strMinQueryLength": Int64(2), "strMaxQueryLength": Int64(10),
                 "caseSensitive": True, "diacriticSensitive": True}},
    {"path": "when", "keyId": key(7), "bsonType": "date", "queries": {"queryType": "range"}},
    {"path": "d", "keyId": key(8), "bsonType": "double",
     "queries": {"queryType": "range", "min": 0.0, "max": 10.0, "precision": 1}},
    {"path": "dec", "keyId": key(9), "bsonType": "decimal",
     "queries": {"queryType": "range", "min": Decimal128("0"), "max": Decimal128("10"), "precision": 1}},
    {"path": "r.v", "keyId": key(10), "bsonType": "int", "queries": {"queryType": "range", "min": 0, "max": 9}},
]
QE = {"db.coll": {"fields": QE_FIELDS}, "db.v": {"fields": []}}

NAN = float("nan")


def find(filter_: Any, **extra: Any) -> dict[str, Any]:
    return {"find": "coll", "filter": filter_, "$db": "db", **extra}


def agg(*stages: Any) -> dict[str, Any]:
    return {"aggregate": "coll", "pipeline": list(stages), "cursor": {}, "$db": "db"}


def update(u: Any, q: Any = None, **options: Any) -> dict[str, Any]:
    return {"update": "coll", "updates": [{"q": q or {}, "u": u, **options}], "$db": "db"}


def insert(*documents: Any) -> dict[str, Any]:
    return {"insert": "coll", "documents": list(documents), "$db": "db"}


ACCUMULATOR_JS = {"init": "function() {}", "accumulate": "function() {}", "accumulateArgs": [],
                  "merge": "function() {}", "lang": "js"}
COND_MIX = {"$set": {"s": {"$cond": [True, "$ssn", "$plain"]}}}

# (rule key, rules, command, path the reason names or None, the operator/stage/command part it names)
ROWS: list[tuple[str, Any, dict[str, Any], str | None, str]] = [
    # shared keys, CSFLE wording
    ("through_encrypted", CSFLE, find({"ssn.x": 1}), "ssn.x", "$eq"),
    ("conflicting_metadata", CSFLE_CONFLICT, find({"a": "x"}), "a", "$eq"),
    ("unknown_path", CSFLE, agg(COND_MIX, {"$match": {"s": "a"}}), "s", "$eq"),
    ("current_rebinding", CSFLE, find({"$expr": {"$let": {"vars": {"CURRENT": "$x"}, "in": True}}}), None, "$let"),
    ("index_bounds", CSFLE, find({}, min={"ssn": "a"}, hint={"ssn": 1}), "ssn", "min"),
    ("search_encrypted", CSFLE, agg({"$search": {"text": {"query": "x", "path": "ssn"}}}), "ssn", "$search"),
    ("search_opaque", CSFLE, agg({"$search": {"queryString": {"defaultPath": "plain", "query": "x"}}}), None,
     "$search"),
    ("stored_source", CSFLE, agg({"$search": {"text": {"query": "x", "path": "plain"}, "returnStoredSource": True}}),
     None, "$search"),
    ("stage_unsupported", CSFLE, agg({"$out": "coll"}), None, "$out"),
    ("view", CSFLE_SCHEMA, {"create": "v", "viewOn": "coll", "pipeline": [], "$db": "db"}, None, "create.viewOn"),
    ("sort", CSFLE, agg({"$sort": {"ssn": 1}}), "ssn", "$sort"),
    ("unwind_encrypted", CSFLE, agg({"$unwind": "$rnd"}), "rnd", "$unwind"),
    ("prefix_in_output", QE, agg({"$replaceRoot": {"newRoot": "$a"}}), "a", "$replaceRoot"),
    ("variable_in_output", CSFLE, agg({"$group": {"_id": "$$ROOT"}}), None, "$group"),
    ("add_below_encrypted", QE, agg({"$addFields": {"ssn.x": 1}}), "ssn.x", "$addFields"),
    ("group_key", CSFLE, agg({"$group": {"_id": "$rnd"}}), "_id", "$group"),
    ("accumulator", CSFLE, agg({"$group": {"_id": 1, "a": {"$avg": "$age"}}}), "age", "$avg"),
    ("accumulator_initializer", CSFLE, agg({"$group": {"_id": "$ssn", "a": {"$accumulator": {
        **ACCUMULATOR_JS, "initArgs": ["$plain"]}}}}), None, "$accumulator"),
    ("add_to_set", CSFLE, agg({"$group": {"_id": None, "s": {"$addToSet": "$rnd"}}}), "s", "$addToSet"),
    ("bucket_auto", CSFLE, agg({"$bucketAuto": {"groupBy": "$age", "buckets": 2}}), "age", "$bucketAuto"),
    ("replace_root", CSFLE, agg({"$replaceRoot": {"newRoot": "$ssn"}}), "ssn", "$replaceRoot"),
    ("geo_near_key", CSFLE, agg({"$geoNear": {"near": [0, 0], "distanceField": "dist", "key": "ssn"}}), "ssn",
     "$geoNear"),
    ("lookup_let", CSFLE, agg({"$lookup": {"from": "coll", "let": {"v": "$x"}, "pipeline": [], "as": "z"}}), None,
     "$lookup"),
    ("lookup_local_child", CSFLE, agg({"$lookup": {"from": "coll", "localField": "doc", "foreignField": "plain",
                                                   "as": "j"}}), "doc", "$lookup"),
    ("lookup_foreign_child", CSFLE, agg({"$lookup": {"from": "coll", "localField": "plain", "foreignField": "doc",
                                                     "as": "j"}}), "doc", "$lookup"),
    ("lookup_encrypted", QE, agg({"$lookup": {"from": "coll", "localField": "x", "foreignField": "ssn", "as": "z"}}),
     "ssn", "$lookup"),
    ("lookup_mismatch", CSFLE, agg({"$lookup": {"from": "coll", "localField": "ssn", "foreignField": "age",
                                                "as": "j"}}), "ssn", "$lookup"),
    ("lookup_random", CSFLE, agg({"$lookup": {"from": "coll", "localField": "rnd", "foreignField": "rnd",
                                              "as": "j"}}), "rnd", "$lookup"),
    ("graph_from_child", CSFLE, agg({"$graphLookup": {"from": "coll", "startWith": "$x", "connectFromField": "doc",
                                                      "connectToField": "plain", "as": "z"}}), "doc", "$graphLookup"),
    ("graph_to_child", CSFLE, agg({"$graphLookup": {"from": "coll", "startWith": "$x", "connectFromField": "plain",
                                                    "connectToField": "doc", "as": "z"}}), "doc", "$graphLookup"),
    ("graph_encrypted", QE, agg({"$graphLookup": {"from": "coll", "startWith": "$x", "connectFromField": "ssn",
                                                  "connectToField": "y", "as": "z"}}), "ssn", "$graphLookup"),
    ("graph_mismatch", CSFLE, agg({"$graphLookup": {"from": "coll", "startWith": "$x", "connectFromField": "ssn",
                                                    "connectToField": "age", "as": "z"}}), "ssn", "$graphLookup"),
    ("graph_random", CSFLE, agg({"$graphLookup": {"from": "coll", "startWith": "$x", "connectFromField": "rnd",
                                                  "connectToField": "rnd", "as": "z"}}), "rnd", "$graphLookup"),
    ("array_on_prefix", CSFLE, insert({"_id": 1, "doc": [{"inner": "a"}]}), "doc", "insert.documents"),
    ("set_prefix", CSFLE, update({"$set": {"doc": 1}}), "doc", "$set"),
    ("id_required", CSFLE_ID, update({"$set": {"x": 1}}, upsert=True), "_id", "update.updates.0"),
    ("timestamp_zero", CSFLE, insert({"_id": 1, "any": Timestamp(0, 0)}), "any", "insert.documents"),
    ("positional", CSFLE, update({"$set": {"ssn.$": "a"}}), "ssn.$", "$set"),
    ("update_op", CSFLE, update({"$inc": {"age": 1}}), "age", "$inc"),
    ("rename_encrypted", QE, update({"$rename": {"ssn": "other"}}), "ssn", "$rename"),
    ("rename_metadata", CSFLE, update({"$rename": {"ssn": "rnd"}}), "ssn", "$rename"),
    ("rename_prefix", CSFLE, update({"$rename": {"doc": "x"}}), "doc", "$rename"),
    ("pipeline_update_upsert_id", CSFLE_ID, update([{"$set": {"x": 1}}], upsert=True), "_id", "update.updates.0"),
    ("pipeline_fam_upsert_id", CSFLE_ID, {"findAndModify": "coll", "query": {}, "update": [{"$set": {"x": 1}}],
                                          "upsert": True, "$db": "db"}, "_id", "findAndModify.update"),
    ("pipeline_update_schema", CSFLE, update([{"$set": {"ssn": "x"}}]), None, "update.updates.0"),
    ("multi_update", QE, update({"$set": {"x": 1}}, multi=True), None, "update.updates.0"),
    ("bulk_single_namespace", QE, {"bulkWrite": 1, "ops": [{"insert": 1, "document": {"ssn": "a"}}],
                                   "nsInfo": [{"ns": "db.coll"}], "$db": "admin"}, None, "bulkWrite.ops"),
    ("distinct_pointer", CSFLE, {"distinct": "coll", "key": "alt", "$db": "db"}, "alt", "distinct.key"),
    ("distinct_random", CSFLE, {"distinct": "coll", "key": "rnd", "$db": "db"}, "rnd", "distinct.key"),
    ("distinct_collation", CSFLE, {"distinct": "coll", "key": "ssn", "collation": {"locale": "fr"}, "$db": "db"},
     "ssn", "distinct.key"),
    ("distinct_prefix", CSFLE, {"distinct": "coll", "key": "doc", "$db": "db"}, "doc", "distinct.key"),
    ("validator_compare", CSFLE, {"create": "coll", "validator": {"ssn": "a"}, "$db": "db"}, "ssn",
     "create.validator"),
    ("partial_filter_compare", CSFLE, {"createIndexes": "coll", "indexes": [
        {"key": {"x": 1}, "name": "x", "partialFilterExpression": {"ssn": "a"}}], "$db": "db"}, "ssn",
     "createIndexes.indexes"),
    ("null_equality", CSFLE, find({"ssn": None}), "ssn", "$eq"),
    ("regex_in", CSFLE, find({"ssn": {"$in": [Regex("a")]}}), "ssn", "$in"),
    ("null_in", CSFLE, find({"ssn": {"$in": [None]}}), "ssn", "$in"),
    ("eq_array_prefix", CSFLE, find({"doc": [1]}), "doc", "$eq"),
    ("in_array_prefix", CSFLE, find({"doc": {"$in": [[1]]}}), "doc", "$in"),
    ("unsupported_match", CSFLE, find({"$where": "true"}), None, "$where"),
    ("elem_match", CSFLE, find({"ssn": {"$elemMatch": {"a": 1}}}), "ssn", "$elemMatch"),
    ("invalid_on_encrypted", CSFLE, find({"ssn": {"$type": 2}}), "ssn", "$type"),
    ("prefix_reference", CSFLE, find({"$expr": {"$eq": ["$doc", {}]}}), "doc", "$eq"),
    ("variable", CSFLE, find({"$expr": {"$eq": ["$$ROOT", {}]}}), None, "$eq"),
    # CSFLE
    ("value_type_illegal", CSFLE, insert({"_id": 1, "ssn": ["a"]}), "ssn", "insert.documents"),
    ("random_query", CSFLE, find({"rnd": {"$in": ["a"]}}), "rnd", "$in"),
    ("collation_compare", CSFLE, find({"ssn": "a"}, collation={"locale": "fr"}), "ssn", "$eq"),
    ("value_type_mismatch", CSFLE, insert({"_id": 1, "rnd": 5}), "rnd", "insert.documents"),
    ("pointer_not_static", CSFLE, update({"$set": {"alt": "x"}}), "alt", "$set"),
    ("pointer_missing", CSFLE, insert({"_id": 1, "alt": "x"}), "alt", "insert.documents"),
    ("pointer_encrypted", CSFLE_POINTER_TO_ENCRYPTED, insert({"_id": 1, "a": "x", "b": "y"}), "a",
     "insert.documents"),
    ("pointer_not_string", CSFLE, insert({"_id": 1, "alt": "x", "keyName": 3}), "alt", "insert.documents"),
    ("validator_schema", CSFLE, {"collMod": "coll", "validator": {"$jsonSchema": {"bsonType": "object"}},
                                 "$db": "db"}, None, "collMod.validator"),
    ("bulk_write_csfle", CSFLE, {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"ssn": "a"}}],
                                 "nsInfo": [{"ns": "db.coll"}], "$db": "admin"}, None, "bulkWrite.ops"),
    ("range_on_encrypted", CSFLE, find({"ssn": {"$gt": "a"}}), "ssn", "$gt"),
    ("range_holding_encrypted", CSFLE, find({"doc": {"$gt": {"inner": "a"}}}), "doc", "$gt"),
    ("text_fle2_only", CSFLE, find({"$expr": {"$encStrStartsWith": {"input": "$ssn", "prefix": "a"}}}), None,
     "$encStrStartsWith"),
    ("evaluated", CSFLE, find({"$expr": {"$gt": ["$age", 5]}}), "age", "$gt"),
    ("compare_enc_plain", CSFLE, find({"$expr": {"$eq": ["$plain", "$ssn"]}}), "ssn", "$eq"),
    ("compare_plain_enc", CSFLE, find({"$expr": {"$eq": ["$ssn", "$plain"]}}), "plain", "$eq"),
    ("compare_algorithms", CSFLE, find({"$expr": {"$eq": ["$ssn", "$age"]}}), "age", "$eq"),
    ("compare_random", CSFLE, find({"$expr": {"$eq": ["$rnd", "a"]}}), "rnd", "$eq"),
    ("compare_evaluated", CSFLE, find({"$expr": {"$eq": ["$ssn", {"$concat": ["a", "b"]}]}}), "ssn", "$eq"),
    # Queryable Encryption
    ("CANNOT_ENCRYPT_TYPE", QE, insert({"ssn": Binary(b"\x03abc", 6)}), "ssn", "insert.documents"),
    ("WRONG_TYPE", QE, insert({"ssn": 5}), "ssn", "insert.documents"),
    ("NOT_EQUALITY_INDEXED", QE, find({"notes": "x"}), "notes", "$eq"),
    ("NOT_RANGE_INDEXED", QE, find({"ssn": {"$gt": "a"}}), "ssn", "$gt"),
    ("NOT_RANGE_INDEXED_IN_AND", QE, find({"ssn": {"$gt": "a"}, "x": 1}), "ssn", "$gt"),
    ("null_equality", QE, find({"ssn": None}), "ssn", "$eq"),
    ("null_in", QE, find({"ssn": {"$in": [None]}}), "ssn", "$in"),
    ("regex_in", QE, find({"ssn": {"$in": [Regex("^a")]}}), "ssn", "$in"),
    ("IN_NESTED_ARRAY", QE, find({"ssn": {"$in": [["a"]]}}), "ssn", "$in"),
    ("OBJECT_COMPARISON", QE, find({"a": {"b": "x"}}), "a", "$eq"),
    ("INT_COERCION", QE, find({"age": {"$gt": Int64(2**40)}}), "age", "$gt"),
    ("EXPR_CLOSED_OUT_OF_BOUNDS", QE, find({"$expr": {"$and": [{"$gt": ["$d", 1.0]}, {"$lt": ["$d", NAN]}]}}), "d",
     "$and"),
    ("RANGE_OUT_OF_BOUNDS", QE, find({"age": {"$gt": 201}}), "age", "$gt"),
    ("LOWER_OUT_OF_BOUNDS", QE, find({"age": {"$gt": -5, "$lt": 5}}), "age", "$gt/$lt"),
    ("UPPER_OUT_OF_BOUNDS", QE, find({"age": {"$gt": 5, "$lt": 500}}), "age", "$gt/$lt"),
    ("EXPR_OUT_OF_BOUNDS", QE, find({"$expr": {"$gt": ["$d", NAN]}}), "d", "$gt"),
    ("BOUND_NAN", QE, find({"d": {"$in": [1.0, NAN]}}), "d", "$in"),
    ("BOUND_NAN_DECIMAL", QE, find({"dec": {"$in": [Decimal128("NaN")]}}), "dec", "$in"),
    ("EXPR_IN_CONTEXT", QE, agg({"$group": {"_id": "$x", "s": {"$sum": {"$cond": {
        "if": {"$in": ["$age", [1, 2]]}, "then": 1, "else": 2}}}}}), "age", "$in"),
    ("EXPR_CONTEXT", QE, agg({"$project": {"x": {"$gt": ["$age", 1]}}}), "age", "$gt"),
    ("EXPR_CONTEXT_AND", QE, agg({"$project": {"x": {"$and": [{"$gt": ["$age", 1]}, {"$lt": ["$age", 5]}]}}}),
     "age", "$and"),
    ("EXPR_IN_RANGE_PREFIX", QE, find({"$expr": {"$in": ["$r", [{"v": 1}]]}}), "r", "$in"),
    ("IN_RANGE_PREFIX", QE, find({"r": {"$in": [{"v": 1}]}}), "r", "$in"),
    ("DATE_MISMATCH", QE, find({"age": {"$gte": datetime.datetime(2020, 1, 1)}}), "age", "$gte"),
    ("RANGE_VALUE_TYPE", QE, find({"age": {"$gte": "1"}}), "age", "$gte"),
    ("NO_COERCION", QE, find({"age": {"$gte": 1.5}}), "age", "$gte"),
    ("EXPR_IN_CONSTANT", QE, find({"$expr": {"$in": ["$ssn", "$list"]}}), "ssn", "$in"),
    ("TEXT_ON_NON_TEXT", QE, find({"$expr": {"$encStrStartsWith": {"input": "$ssn", "prefix": "ab"}}}), "ssn",
     "$encStrStartsWith"),
    ("NO_PREFIX_INDEX", QE, find({"$expr": {"$encStrStartsWith": {"input": "$tail", "prefix": "ab"}}}), "tail",
     "$encStrStartsWith"),
    ("NO_SUFFIX_INDEX", QE, find({"$expr": {"$encStrEndsWith": {"input": "$text", "suffix": "ab"}}}), "text",
     "$encStrEndsWith"),
    ("NO_SUBSTRING_INDEX", QE, find({"$expr": {"$encStrContains": {"input": "$text", "substring": "ab"}}}), "text",
     "$encStrContains"),
    ("TEXT_INPUT", QE, find({"$expr": {"$encStrStartsWith": {"input": "$plain", "prefix": "ab"}}}), None,
     "$encStrStartsWith"),
    ("TEXT_STRING", QE, find({"$expr": {"$encStrStartsWith": {"input": "$text", "prefix": "$plain"}}}), "text",
     "$encStrStartsWith"),
    ("COMPARE_UNINDEXED", QE, find({"$expr": {"$eq": ["$notes", "x"]}}), "notes", "$eq"),
    ("JSON_SCHEMA_VALIDATOR", QE, {"create": "coll", "validator": {"$jsonSchema": {}}, "$db": "db"}, None,
     "create.validator"),
    ("INDEX_ON_ENCRYPTED", QE, {"createIndexes": "coll", "indexes": [{"name": "i", "key": {"ssn": 1}}], "$db": "db"},
     "ssn", "createIndexes.indexes"),
    ("EXPRESSION", QE, find({"$expr": {"$gt": ["$ssn", "a"]}}), "ssn", "$gt"),
    ("NON_CONSTANT_COMPARISON", QE, find({"$expr": {"$eq": ["$ssn", "$other"]}}), "ssn", "$eq"),
    ("ENCRYPTED_PREFIX_OF_ENCRYPTED", QE, agg({"$addFields": {"ssn": "$ssn"}}), "ssn", "$addFields"),
    ("TWO_ENCRYPTED", QE, find({"$expr": {"$eq": ["$ssn", "$a.b"]}}), "ssn", "$eq"),
    ("BULK_ONLY_INSERT", QE, {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"ssn": "a"}},
                                                      {"delete": 0, "filter": {}, "multi": False}],
                              "nsInfo": [{"ns": "db.coll"}], "$db": "admin"}, None, "bulkWrite.ops"),
    ("BULK_ONE_NAMESPACE", QE, {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"ssn": "a"}}],
                                "nsInfo": [{"ns": "db.coll"}, {"ns": "db.v"}], "$db": "admin"}, None, "bulkWrite"),
]


@pytest.mark.parametrize(("rule", "rules", "command", "path", "operator"), ROWS, ids=[row[0] for row in ROWS])
def test_reason_names_path_and_operator(rule: str, rules: Any, command: dict[str, Any], path: str | None,
                                        operator: str) -> None:
    result = markd.check(rules, command)
    refusal = result.refusal
    assert refusal is not None, result.reply
    assert refusal.rule == rule, refusal
    assert refusal.kind == refusals.ENCRYPTION
    assert result.reply["ok"] == 0 and result.reply["code"] == refusal.code and result.reply["errmsg"] == \
        refusal.errmsg
    assert refusal.path == path, refusal
    assert refusal.operator == operator, refusal
    text = "\n".join(refusal.lines())
    assert refusal.errmsg in text and operator in text and refusal.hint
    if path is not None:
        assert f"path:      {path}" in text
        assert refusal.encryption, refusal  # how it is encrypted (or that it holds / is below encrypted fields)
    else:
        # A refusal of the whole command says which encrypted fields it is refused for.
        assert refusal.encryption and "has encrypted fields" in refusal.encryption, refusal


def _raised_keys() -> set[str]:
    """Every error key the analysis source passes to fail()/error() (string constants in the call)."""
    keys = set(shared_errors.ERRORS) | set(csfle_errors.ERRORS) | set(qe_errors.ERRORS)
    root = Path(markd.__file__).parent / "analysis"
    found: set[str] = set()
    for source in root.rglob("*.py"):
        if source.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
                found.add(node.value)
    # Words that name a key but are used as something else where found (a command field, a stage name).
    return found


def test_every_refusal_class_has_a_row_and_a_hint() -> None:
    raised = _raised_keys()
    covered = {row[0] for row in ROWS}
    encryption = {key for key in raised if refusals.rule_class(key) == refusals.ENCRYPTION}
    # A new key refusing something about encryption needs a row here and a hint in markd/refusals.py HINTS;
    # one about the rules themselves, the command's shape or its rule fields goes in RULES_KEYS, MALFORMED_KEYS
    # or ENVELOPE_KEYS there instead.
    assert encryption - covered == set(), "encryption refusals without a row in ROWS"
    assert encryption - set(refusals.HINTS) == set(), "encryption refusals without a hint in refusals.HINTS"
    assert covered - encryption == set(), "rows for keys that are not encryption refusals the analysis raises"
    # Every key the classes and hints name is still in some error table (no stale names).
    tables = set(shared_errors.ERRORS) | set(csfle_errors.ERRORS) | set(qe_errors.ERRORS)
    listed = refusals.RULES_KEYS | refusals.ENVELOPE_KEYS | refusals.MALFORMED_KEYS | set(refusals.HINTS)
    assert listed - tables == set(), "names in markd/refusals.py that no error table has any more"
