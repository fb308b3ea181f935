"""Fail closed, as a property: for random encryptedFields, documents and filters, markd either
refuses the command or every value at an encrypted path in its result is an FLE2 placeholder.

The checker walks the result the way the server would read it: field names (not operators, not
array positions) make up the path; whatever sits at an encrypted path must be a placeholder
(the only exception: the boolean of `$exists`, which reveals nothing).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from bson import Decimal128, Int64, ObjectId, Regex
from bson.binary import Binary
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from markd import bsonvalues
from tests.fuzz.budget import examples
from tests.support.process import raw_command

PATHS = ["a", "b", "c.d", "c.e", "f.g.h", "i.j"]
NAMES = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "x"]

FIELD_KINDS = [
    ("string", None),
    ("int", None),
    ("string", {"queryType": "equality", "contention": Int64(0)}),
    ("long", {"queryType": "equality", "contention": Int64(2)}),
    ("int", {"queryType": "range", "contention": Int64(0), "min": 0, "max": 1000, "sparsity": Int64(1)}),
    ("double", {"queryType": "range", "contention": Int64(0)}),
    ("date", {"queryType": "range", "contention": Int64(0)}),
    ("string", {"queryType": "prefix", "contention": Int64(0), "strMinQueryLength": Int64(1),
                "strMaxQueryLength": Int64(5), "caseSensitive": True, "diacriticSensitive": False}),
    ("string", {"queryType": "substring", "contention": Int64(0), "strMinQueryLength": Int64(1),
                "strMaxQueryLength": Int64(5), "strMaxLength": Int64(20), "caseSensitive": False,
                "diacriticSensitive": False}),
]


@st.composite
def encrypted_fields(draw: st.DrawFn) -> list[dict[str, Any]]:
    chosen = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=4, unique=True))
    fields = []
    for index, path in enumerate(chosen):
        bson_type, queries = draw(st.sampled_from(FIELD_KINDS))
        field: dict[str, Any] = {"path": path, "keyId": Binary(uuid.UUID(int=index + 1).bytes, 4),
                                 "bsonType": bson_type}
        if queries is not None:
            field["queries"] = queries
        fields.append(field)
    return fields


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=True), st.text(max_size=6), st.just(Regex("^a")), st.just(ObjectId("0" * 24)),
    st.just(Decimal128("1.5")), st.just(datetime.datetime(2001, 1, 1)), st.binary(max_size=4).map(Binary),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
    max_leaves=8,
)
TYPED = {
    "string": st.text(max_size=6),
    "int": st.integers(0, 1000),
    "long": st.integers(-(2**63), 2**63 - 1).map(Int64),
    "double": st.floats(-1e6, 1e6),
    "date": st.datetimes(datetime.datetime(1990, 1, 1), datetime.datetime(2030, 1, 1)).map(
        lambda d: d.replace(microsecond=0)),
}


def typed(fields: list[dict[str, Any]], path: str) -> st.SearchStrategy[Any]:
    """Mostly a value of the encrypted field's own type (so the command is not simply refused)."""
    for field in fields:
        if field["path"] == path:
            return st.one_of(TYPED[field["bsonType"]], TYPED[field["bsonType"]], values)
    return values


def _put(document: dict[str, Any], path: str, value: Any, wrap_in_array: bool) -> None:
    parts = path.split(".")
    node = document
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = [child] if wrap_in_array else child
        node = child
    node[parts[-1]] = value


@st.composite
def documents(draw: st.DrawFn, fields: list[dict[str, Any]]) -> dict[str, Any]:
    document = draw(st.dictionaries(st.sampled_from(NAMES), values, max_size=4))
    for field in fields:
        if draw(st.integers(0, 9)) < 8:
            _put(document, field["path"], draw(typed(fields, field["path"])), draw(st.integers(0, 9)) == 0)
    return document


OPERATORS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex", "$type", "$size",
             "$all", "$elemMatch", "$not"]
OTHER_PATHS = ["a.x", "c", "f", "f.g", "x", "i"]


@st.composite
def predicate(draw: st.DrawFn, fields: list[dict[str, Any]]) -> dict[str, Any]:
    encrypted_paths = [f["path"] for f in fields]
    # Mostly an encrypted path: that is where a forgotten case would leak.
    path = draw(st.sampled_from(encrypted_paths) if draw(st.integers(0, 9)) < 6 else
                st.sampled_from([*PATHS, *OTHER_PATHS]))
    value = typed(fields, path)
    shape = draw(st.integers(0, 4))
    if shape == 0:
        return {path: draw(value)}
    if shape == 1:
        return {path: {draw(st.sampled_from(["$in", "$nin", "$all"])): draw(st.lists(value, max_size=3))}}
    if shape == 2:
        return {path: {"$not": {draw(st.sampled_from(OPERATORS[:6])): draw(value)}}}
    if shape == 3:
        return {"$expr": draw(st.sampled_from([
            {"$eq": [f"${path}", draw(value)]}, {"$gt": [f"${path}", draw(value)]}, {"$eq": ["$x", f"${path}"]},
            {"$in": [f"${path}", [draw(value)]]}, {"$encStrStartsWith": {"input": f"${path}", "prefix": draw(value)}},
            {"$concat": [f"${path}", "x"]}]))}
    operators = draw(st.lists(st.sampled_from(OPERATORS), min_size=1, max_size=2, unique=True))
    return {path: {op: draw(value) for op in operators}}


@st.composite
def filters(draw: st.DrawFn, fields: list[dict[str, Any]], depth: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 3))):
        result.update(draw(predicate(fields)))
    if depth < 2 and draw(st.booleans()):
        result[draw(st.sampled_from(["$and", "$or", "$nor"]))] = [
            draw(filters(fields, depth + 1)) for _ in range(draw(st.integers(1, 2)))]
    return result


def is_placeholder(value: Any) -> bool:
    return isinstance(value, Binary) and value.subtype == 6 and bytes(value[:1]) == b"\x03"


def leaks(value: Any, encrypted: set[str], path: str = "", operator: str = "") -> list[str]:
    """Paths where a non-placeholder sits at (or inside something at) an encrypted path."""
    if path in encrypted:
        if is_placeholder(value) or (operator == "$exists" and isinstance(value, bool)):
            return []
        if isinstance(value, dict) and value and all(k.startswith("$") for k in value):
            return [leak for k, v in value.items() for leak in leaks(v, encrypted, path, k)]
        if isinstance(value, list) and operator in ("$in", "$nin", "$and", "$or"):
            return [leak for v in value for leak in leaks(v, encrypted, path, operator)]
        return [path]
    if isinstance(value, dict):
        found = []
        for key, child in value.items():
            if key in ("$expr", "$const", "$literal") or (key.startswith("$") and key[1:2].isalpha() and path == ""
                                                          and key not in ("$and", "$or", "$nor")):
                continue  # expressions are checked separately
            child_path = path if key.startswith("$") else (f"{path}.{key}" if path else key)
            found.extend(leaks(child, encrypted, child_path, key if key.startswith("$") else operator))
        return found
    if isinstance(value, list):
        return [leak for child in value for leak in leaks(child, encrypted, path, operator)]
    return []


def expression_leaks(value: Any, encrypted: set[str]) -> list[str]:
    """In an expression, a comparison naming an encrypted field must compare with a placeholder."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            if isinstance(child, list) and len(child) == 2 and isinstance(child[0], str) \
                    and child[0].lstrip("$") in encrypted:
                other = child[1]
                constant = other.get("$const") if isinstance(other, dict) else other
                if not (is_placeholder(constant) or (isinstance(constant, list) and all(
                        is_placeholder(c.get("$const") if isinstance(c, dict) else c) for c in constant))):
                    found.append(f"{key} {child[0]}")
            if isinstance(child, dict) and "input" in child and str(child.get("input", "")).lstrip("$") in encrypted:
                for argument, operand in child.items():
                    if argument != "input" and not is_placeholder(operand.get("$const") if isinstance(operand, dict)
                                                                  else operand):
                        found.append(f"{key} {child['input']}")
            found.extend(expression_leaks(child, encrypted))
    elif isinstance(value, list):
        for child in value:
            found.extend(expression_leaks(child, encrypted))
    return found


def send(client, command: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
    information = {"type": 1, "schema": {"db.coll": {"escCollection": "enxcol_.coll.esc",
                                                     "ecocCollection": "enxcol_.coll.ecoc", "fields": fields}}}
    return raw_command(client, "db", {**command, "encryptionInformation": information})


PROPERTY = settings(max_examples=examples(200), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(data=st.data())
def test_inserts_fail_closed(client, data):
    fields = data.draw(encrypted_fields())
    document = data.draw(documents(fields))
    reply = send(client, {"insert": "coll", "documents": [document]}, fields)
    event("insert accepted" if reply["ok"] == 1.0 else f"insert refused {reply.get('code')}")
    if reply["ok"] != 1.0:
        assert isinstance(reply["code"], int) and reply["errmsg"]
        return
    encrypted = {f["path"] for f in fields}
    marked = reply["result"]["documents"][0]
    assert leaks(marked, encrypted) == []
    # And each placeholder carries exactly the value it replaced, with its BSON type.
    for field in fields:
        original: Any = document
        result: Any = marked
        for part in field["path"].split("."):
            if not isinstance(original, dict) or part not in original:
                break
            original, result = original[part], result[part]
        else:
            placeholder = bsonvalues.decode(bytes(result[1:]))
            carried = placeholder["v"]["v"] if placeholder["a"] in (3, 4) else placeholder["v"]
            assert bsonvalues.encode({"v": carried}) == bsonvalues.encode({"v": original})
            assert placeholder["t"] == 1 and placeholder["ki"] == placeholder["ku"] == field["keyId"]


@PROPERTY
@given(data=st.data())
def test_filters_fail_closed(client, data):
    fields = data.draw(encrypted_fields())
    filter_ = data.draw(filters(fields))

    for command, where in (({"find": "coll", "filter": filter_}, ("filter",)),
                           ({"aggregate": "coll", "pipeline": [{"$match": filter_}], "cursor": {}},
                            ("pipeline", 0, "$match")),
                           ({"update": "coll", "updates": [{"q": filter_, "u": {"$set": {
                               k: v for k, v in filter_.items() if not k.startswith("$")}}}]},
                            ("updates", 0, "q"))):
        reply = send(client, command, fields)
        event(f"{next(iter(command))} accepted" if reply["ok"] == 1.0 else f"refused {reply.get('code')}")
        if reply["ok"] != 1.0:
            assert isinstance(reply["code"], int) and reply["errmsg"]
            continue
        marked: Any = reply["result"]
        for step in where:
            marked = marked[step]
        encrypted = {f["path"] for f in fields}
        assert leaks(marked, encrypted) == [], (filter_, marked)
        assert expression_leaks(marked, encrypted) == [], (filter_, marked)
        if command.get("update"):
            assert leaks(reply["result"]["updates"][0]["u"]["$set"], encrypted) == []
