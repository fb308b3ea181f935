"""Issue 12: one table row per leak, each asserting "no leak": refused, or every secret in a placeholder.

The rows are the issue's examples for classes 1-9 and their variants, then the classes the adversarial
generator found since (N1-N6, tests/adversarial/README.md).  Each row runs in-process (mark_command) and
over a socket to a real markd, and is judged by the oracle of tests/adversarial/oracle.py.  Rows that
leak on main today are strict xfails (LEAKS_ON_MAIN), so the suite stays green and a fix shows up as
XPASS: take its id out of LEAKS_ON_MAIN then.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import Code

from tests.adversarial import oracle, rawbson, secrets
from tests.adversarial.commands import with_rules
from tests.adversarial.drive import Outcome, Wire, in_process
from tests.adversarial.rawbson import Doc
from tests.adversarial.schemas import OTHER

S, S2, S3 = secrets.string(1), secrets.string(2), secrets.string(3)
N, N2 = secrets.int32(11), secrets.int32(12)
FN = Code("function(a, b) { return a == b; }")
POINT = {"type": "Point", "coordinates": [0, 0]}


def find(filter_: Any, **fields: Any) -> dict[str, Any]:
    return {"find": "coll", "filter": filter_, **fields}


def agg(*stages: Any, **fields: Any) -> dict[str, Any]:
    return {"aggregate": "coll", "pipeline": list(stages), "cursor": {}, **fields}


def expr(expression: Any) -> dict[str, Any]:
    return find({"$expr": expression})


def update(q: Any, u: Any, **statement: Any) -> dict[str, Any]:
    return {"update": "coll", "updates": [{"q": q, "u": u, **statement}]}


# The rows that leak on main today (b780580), as strict xfails: a fix turns one into XPASS, which fails the
# suite until its id is taken out of this set.  On 715a881 (before the closed-world core) 84 rows leaked,
# on 8c28e00 18; tests/adversarial/README.md lists them.
LEAKS_ON_MAIN: frozenset[str] = frozenset()  # every known class is fixed on main


def row(cls: str, name: str, command: Any, scheme: str = "csfle", **options: Any) -> Any:
    row_id = f"{cls}-{scheme}-{name}"
    marks = [pytest.mark.xfail(strict=True, reason=f"issue 12 class {cls}")] if row_id in LEAKS_ON_MAIN else []
    return pytest.param(scheme, command, options, id=row_id, marks=marks)


GET_SSN = {"$getField": "ssn"}
LET_ROOT = {"$let": {"vars": {"r": "$$ROOT"}, "in": "$$r"}}

ROWS = [
    # 1. $getField on an encrypted name, anywhere an expression goes
    row("1", "expr-string-form", expr({"$eq": [GET_SSN, S]})),
    row("1", "expr-string-form", expr({"$eq": [GET_SSN, S]}), "qe"),
    row("1", "expr-field-input", expr({"$eq": [{"$getField": {"field": "ssn", "input": "$$ROOT"}}, S]})),
    row("1", "expr-computed-name", expr({"$eq": [{"$getField": {"field": {"$concat": ["ss", "n"]},
                                                                  "input": "$$CURRENT"}}, S]})),
    row("1", "expr-nested", expr({"$eq": [{"$getField": {"field": "pin", "input": "$nested"}}, N]})),
    row("1", "expr-setField-input", expr({"$eq": [{"$getField": {"field": "ssn", "input": {
        "$setField": {"field": "x", "input": "$$ROOT", "value": 1}}}}, S]})),
    row("1", "addFields-alias-matched", agg({"$addFields": {"a": GET_SSN}}, {"$match": {"a": S}})),
    row("1", "group-id", agg({"$group": {"_id": GET_SSN}}, {"$match": {"_id": S}})),
    row("1", "bucket-groupBy", agg({"$bucket": {"groupBy": GET_SSN, "boundaries": [S, S2], "default": "x"}})),
    row("1", "sortByCount", agg({"$sortByCount": GET_SSN}, {"$match": {"_id": S}})),
    row("1", "geoNear-query", agg({"$geoNear": {"near": POINT, "distanceField": "d", "key": "loc",
                                                "query": {"$expr": {"$eq": [GET_SSN, S]}}}})),
    row("1", "find-projection", find({}, projection={"f": {"$eq": [GET_SSN, S]}})),
    row("1", "pipeline-update", update({}, [{"$set": {"f": {"$eq": [GET_SSN, S]}}}])),
    row("1", "upsert-query", update({"$expr": {"$eq": [GET_SSN, S]}}, {"$set": {"name": "x"}}, upsert=True)),
    # 2. $let binding an encrypted value, $$ROOT or CURRENT; $function of a $let-bound argument
    row("2", "let-var", expr({"$let": {"vars": {"x": "$ssn"}, "in": {"$eq": ["$$x", S]}}})),
    row("2", "let-var", expr({"$let": {"vars": {"x": "$ssn"}, "in": {"$eq": ["$$x", S]}}}), "qe"),
    row("2", "let-root", expr({"$let": {"vars": {"r": "$$ROOT"}, "in": {"$eq": ["$$r.ssn", S]}}})),
    row("2", "rebind-current", expr({"$let": {"vars": {"CURRENT": "$nested"}, "in": {"$eq": ["$pin", N]}}})),
    row("2", "rebind-current", expr({"$let": {"vars": {"CURRENT": "$nested"}, "in": {"$eq": ["$pin", N]}}}), "qe"),
    row("2", "rebind-current-to-root", expr({"$let": {"vars": {"CURRENT": "$$ROOT"}, "in": {"$eq": ["$ssn", S]}}})),
    row("2", "function-let-arg", expr({"$let": {"vars": {"x": "$ssn"}, "in": {
        "$function": {"body": FN, "args": ["$$x", S], "lang": "js"}}}})),
    # 3. command let and update constants c
    row("3", "find-let", find({"$expr": {"$eq": ["$ssn", "$$v"]}}, let={"v": S})),
    row("3", "find-let", find({"$expr": {"$eq": ["$ssn", "$$v"]}}, let={"v": S}), "qe"),
    row("3", "aggregate-let", agg({"$match": {"$expr": {"$eq": ["$ssn", "$$v"]}}}, let={"v": S})),
    row("3", "delete-let", {"delete": "coll", "deletes": [{"q": {"$expr": {"$eq": ["$ssn", "$$v"]}}, "limit": 1}],
                            "let": {"v": S}}),
    row("3", "update-let", {**update({"$expr": {"$eq": ["$ssn", "$$v"]}}, {"$set": {"name": "x"}}),
                            "let": {"v": S}}),
    row("3", "findAndModify-let", {"findAndModify": "coll", "query": {"$expr": {"$eq": ["$ssn", "$$v"]}},
                                   "remove": True, "let": {"v": S}}),
    row("3", "update-c-assigned", update({}, [{"$set": {"ssn": "$$c1"}}], c={"c1": S})),
    row("3", "update-c-assigned", update({}, [{"$set": {"ssn": "$$c1"}}], c={"c1": S}), "qe"),
    row("3", "update-c-compared", update({}, [{"$set": {"f": {"$eq": ["$ssn", "$$c1"]}}}], c={"c1": S})),
    # 4. find min / max index bounds
    row("4", "find-min", find({}, min={"ssn": S}, hint={"ssn": 1})),
    row("4", "find-max", find({}, max={"ssn": S}, hint={"ssn": 1})),
    row("4", "find-min-nested", find({}, min={"nested.pin": N}, hint={"nested.pin": 1})),
    row("4", "find-min", find({}, min={"ssn": S}, hint={"ssn": 1}), "qe"),
    # 5. findAndModify fields expressions; $elemMatch projections
    row("5", "findAndModify-fields-expr", {"findAndModify": "coll", "query": {}, "remove": True,
                                           "fields": {"f": {"$eq": ["$ssn", S]}}}),
    row("5", "find-elemMatch-projection", find({}, projection={"ssn": {"$elemMatch": {"$eq": S}}})),
    row("5", "findAndModify-elemMatch", {"findAndModify": "coll", "query": {}, "remove": True,
                                         "fields": {"ssn": {"$elemMatch": {"$eq": S}}}}),
    row("5", "explain-elemMatch", {"explain": find({}, projection={"ssn": {"$elemMatch": {"$eq": S}}}),
                                   "verbosity": "queryPlanner"}),
    row("5", "find-elemMatch-projection", find({}, projection={"ssn": {"$elemMatch": {"$eq": S}}}), "qe"),
    # 6. $group N-accumulators matched later
    *[row("6", f"group-{op[1:]}", agg({"$group": {"_id": None, "t": {op: spec}}}, {"$match": {"t": S}}),
)
      for op, spec in [("$top", {"output": "$ssn", "sortBy": {"name": 1}}),
                       ("$bottom", {"output": "$ssn", "sortBy": {"name": 1}}),
                       ("$topN", {"output": "$ssn", "sortBy": {"name": 1}, "n": 2}),
                       ("$bottomN", {"output": "$ssn", "sortBy": {"name": 1}, "n": 2}),
                       ("$firstN", {"input": "$ssn", "n": 2}), ("$lastN", {"input": "$ssn", "n": 2}),
                       ("$maxN", {"input": "$ssn", "n": 2}), ("$minN", {"input": "$ssn", "n": 2})]],
    row("6", "group-bottom", agg({"$group": {"_id": None, "t": {"$bottom": {"output": "$ssn", "sortBy": {"name": 1}}}}},
                                 {"$match": {"t": S}}), "qe"),
    # 7. $replaceRoot / $replaceWith through $let / $$ROOT
    row("7", "replaceRoot-let-root", agg({"$replaceRoot": {"newRoot": LET_ROOT}}, {"$match": {"ssn": S}})),
    row("7", "replaceWith-let-root", agg({"$replaceWith": {"$let": {"vars": {"r": "$$ROOT"}, "in": "$$r"}}},
                                         {"$match": {"ssn": S}})),
    row("7", "replaceWith-let-nested", agg({"$replaceWith": {"$let": {"vars": {"n": "$nested"}, "in": "$$n"}}},
                                           {"$match": {"pin": N}})),
    row("7", "replaceRoot-root", agg({"$replaceRoot": {"newRoot": "$$ROOT"}}, {"$match": {"ssn": S}})),
    row("7", "replaceRoot-let-root", agg({"$replaceRoot": {"newRoot": LET_ROOT}}, {"$match": {"ssn": S}}), "qe"),
    # 8. $search, $searchMeta, $vectorSearch on encrypted paths
    row("8", "search-text", agg({"$search": {"index": "default", "text": {"query": S, "path": "ssn"}}})),
    row("8", "search-equals", agg({"$search": {"equals": {"path": "ssn", "value": S}}})),
    row("8", "search-compound-filter", agg({"$search": {"compound": {"filter": [{"equals": {"path": "ssn",
                                                                                            "value": S}}]}}})),
    row("8", "searchMeta", agg({"$searchMeta": {"text": {"query": S, "path": "ssn"}}})),
    row("8", "vectorSearch-filter", agg({"$vectorSearch": {"index": "v", "path": "embedding", "queryVector": [0.1],
                                                           "numCandidates": 10, "limit": 1,
                                                           "filter": {"ssn": S}}})),
    row("8", "search-text", agg({"$search": {"index": "default", "text": {"query": S, "path": "ssn"}}}), "qe"),
    # 9. duplicate keys in the rules and in the command
    row("9", "jsonSchema-twice", find({"ssn": S}), duplicate="jsonSchema twice"),
    row("9", "properties-twice", find({"ssn": S}), duplicate="properties twice"),
    row("9", "property-twice", find({"ssn": S}), duplicate="a property twice"),
    row("9", "namespace-twice", agg({"$match": {"ssn": S}}), multi=True,
        duplicate="namespace twice in csfleEncryptionSchemas"),
    row("9", "qe-namespace-twice", find({"ssn": S}), "qe", duplicate="namespace twice in schema"),
    row("9", "qe-fields-twice", find({"ssn": S}), "qe", duplicate="fields twice"),
    row("9", "qe-path-twice", find({"ssn": S}), "qe", duplicate="path twice"),
    row("9", "qe-encryptionInformation-twice", find({"ssn": S}), "qe",
        duplicate="encryptionInformation twice"),
    row("9", "two-filters", Doc([("find", "coll"), ("filter", {"ssn": S}), ("filter", {})])),
    row("9", "two-filters", Doc([("find", "coll"), ("filter", {"ssn": S}), ("filter", {})]), "qe"),
    row("9", "two-pipelines", Doc([("aggregate", "coll"), ("pipeline", [{"$match": {"ssn": S}}]), ("pipeline", []),
                                   ("cursor", {})])),
    row("9", "two-set", update({}, Doc([("$set", {"ssn": S}), ("$set", {"name": "x"})]))),
    row("9", "two-set", update({}, Doc([("$set", {"ssn": S}), ("$set", {"name": "x"})])), "qe"),
    row("9", "two-queries", Doc([("count", "coll"), ("query", {"ssn": S}), ("query", {})])),
    row("9", "two-q", {"delete": "coll", "deletes": [Doc([("q", {"ssn": S}), ("q", {}), ("limit", 1)])]}),
    row("9", "two-documents", Doc([("insert", "coll"), ("documents", [{"ssn": S}]), ("documents", [{"_id": 1}])])),
    # N1. once the stream holds no encrypted field, stages reaching another collection pass unanalysed
    row("N1", "graphLookup-after-project", agg({"$project": {"name": 1}}, {"$graphLookup": {
        "from": OTHER, "startWith": "$name", "connectFromField": "name", "connectToField": "name", "as": "g",
        "restrictSearchWithMatch": {"ssn": S}}}), namespaces=("coll", OTHER), multi=True),
    row("N1", "graphLookup-after-count", agg({"$count": "n"}, {"$graphLookup": {
        "from": OTHER, "startWith": "$name", "connectFromField": "name", "connectToField": "name", "as": "g",
        "restrictSearchWithMatch": {"ssn": S}}}), namespaces=("coll", OTHER), multi=True),
    row("N1", "unionWith-after-count", agg({"$count": "n"}, {"$unionWith": {"coll": OTHER, "pipeline": [
        {"$match": {"ssn": S}}]}}), "qe", namespaces=("coll", OTHER)),
    row("N1", "merge-after-group", agg({"$group": {"_id": "$name"}}, {"$merge": {
        "into": "coll", "whenMatched": [{"$set": {"ssn": S}}]}}), "qe"),
    # N2. QE range with an empty intersection
    row("N2", "find-empty-range", find({"score": {"$gte": N2, "$lte": N}}), "qe"),
    row("N2", "find-empty-range-pin", find({"nested.pin": {"$gt": N2, "$lt": N}}), "qe-range"),
    row("N2", "create-validator-empty-range", {"create": "coll", "validator": {"score": {"$gte": N2, "$lte": N}}},
        "qe"),
    row("N2", "collMod-validator-empty-range", {"collMod": "coll", "validator": {"score": {"$gt": N2, "$lt": N}}},
        "qe"),
    row("N2", "findAndModify-empty-range", {"findAndModify": "coll", "query": {"score": {"$gt": N2, "$lte": N}},
                                            "update": {"$set": {"name": "x"}}}, "qe"),
    row("N2", "partialFilterExpression-empty-range", {"createIndexes": "coll", "indexes": [
        {"key": {"name": 1}, "name": "i", "partialFilterExpression": {"score": {"$gt": N2, "$lt": N}}}]}, "qe"),
    # N3. $let binding a constant compared with (or assigned to) an encrypted field
    row("N3", "find-let-constant", expr({"$let": {"vars": {"s": S}, "in": {"$eq": ["$ssn", "$$s"]}}})),
    row("N3", "find-let-constant", expr({"$let": {"vars": {"s": S}, "in": {"$eq": ["$ssn", "$$s"]}}}), "qe"),
    row("N3", "partialFilterExpression", {"createIndexes": "coll", "indexes": [{"key": {"name": 1}, "name": "i",
        "partialFilterExpression": {"$expr": {"$let": {"vars": {"s": N}, "in": {"$eq": ["$nested.pin", "$$s"]}}}}}]}),
    row("N3", "pipeline-update-assign", update({}, [{"$set": {"ssn": {"$let": {"vars": {"s": S}, "in": "$$s"}}}}])),
    # N5. CSFLE expressions do not look inside object-shaped values
    row("N5", "object-literal", expr({"$eq": [{"k": "$ssn"}, {"k": S}]})),
    row("N5", "object-literal", expr({"$eq": [{"k": "$ssn"}, {"k": S}]}), "qe"),
    row("N5", "mergeObjects-literal", expr({"$eq": [{"$mergeObjects": [{"k": "$ssn"}]}, S]})),
    row("N5", "hash-object-argument", expr({"$eq": [{"$hash": {"input": "$ssn", "algorithm": "sha256"}}, S]})),
    row("N5", "encStrStartsWith-in-csfle", expr({"$encStrStartsWith": {"input": "$ssn", "prefix": S}})),
    row("N5", "unknown-operator-object-argument", expr({"$eq": [{"$frobnicate": {"input": "$ssn"}}, S]})),
    # N6. CSFLE update operators on the parent object of an encrypted field
    *[row("N6", f"{op[1:]}-object", update({}, {op: {"nested": value}}))
      for op, value in [("$inc", {"pin": N}), ("$mul", {"pin": N}), ("$pull", {"note": S}), ("$pullAll", {"pin": [N]}),
                        ("$bit", {"pin": {"and": N}})]],
    row("N6", "inc-object", update({}, {"$inc": {"nested": {"pin": N}}}), "qe"),
    row("N6", "mul-object", update({}, {"$mul": {"nested": {"pin": N}}}), "qe"),
    row("N6", "bit-object", update({}, {"$bit": {"nested": {"pin": {"and": N}}}}), "qe"),
    row("N6", "pull-object-findAndModify", {"findAndModify": "coll", "query": {},
                                            "update": {"$pull": {"nested": {"note": S}}}}),
    # N7. explain with a field repeated beside `explain`: a crash (InternalError), found on 8c28e00
    row("N7", "explain-rules-twice", {"explain": find({"ssn": S}), "verbosity": "queryPlanner"},
        duplicate="jsonSchema twice"),
    row("N7", "explain-verbosity-twice", Doc([("explain", find({"ssn": S})), ("verbosity", "queryPlanner"),
                                              ("verbosity", "queryPlanner")])),
    row("N7", "explain-comment-twice", Doc([("explain", find({"ssn": S})), ("verbosity", "queryPlanner"),
                                            ("comment", "a"), ("comment", "b")]), "qe"),
    # N4. CSFLE update pipelines writing a patternProperties field
    row("N4", "update-pipeline-set", update({}, [{"$set": {"enc_a": S}}])),
    row("N4", "update-pipeline-addFields", update({}, [{"$addFields": {"enc_zz": {"$literal": S}}}])),
    row("N4", "findAndModify-pipeline", {"findAndModify": "coll", "query": {}, "update": [{"$set": {"enc_a": S}}]}),
    row("N4", "replaceWith-mergeObjects", update({}, [{"$replaceWith": {"$mergeObjects": ["$$ROOT", {"enc_a": S}]}}])),
]


def judged(raw: bytes, outcome: Outcome) -> list[oracle.Verdict]:
    duplicates = ["duplicate keys"] if rawbson.has_duplicates_raw(raw) else []
    return [v for v in oracle.judge(raw, outcome.reply, duplicates=duplicates) if v.kind in oracle.FAILING]


@pytest.fixture(scope="module")
def wire(markd: Any) -> Any:
    connection = Wire(markd.port)
    yield connection
    connection.close()


@pytest.mark.parametrize(("scheme", "command", "options"), ROWS)
def test_no_leak(scheme: str, command: Any, options: dict[str, Any], wire: Wire) -> None:
    raw = rawbson.encode(with_rules(command, scheme, **options))
    assert oracle.command_secrets(raw), "a row must carry a secret"
    local = judged(raw, in_process(raw))
    remote = judged(raw, wire.send(raw))
    assert local == [] and remote == [], f"in-process: {local}\nover the wire: {remote}"
