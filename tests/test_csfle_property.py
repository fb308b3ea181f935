"""Property: for random schemas and documents, markd marks exactly the values at encrypted paths.

For an insert (and an equality find), every value at an encrypted path in `result` is a placeholder
carrying that very value (same BSON type) and the schema's algorithm, and every other value is
untouched; or the command is refused with one of mongocryptd's codes.  A well-typed document must
never be refused, so a markd that refuses everything fails too.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Int64, ObjectId
from bson.binary import Binary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from markd import bsonvalues
from tests.fuzz.budget import examples
from tests.support.process import raw_command
from tests.test_csfle_support import DET, RND, encrypt, read_placeholder

KEY = Binary(b"\x42" * 16, 4)
NAMES = st.sampled_from(["a", "b", "c", "_id"])
DETERMINISTIC_TYPES = ["string", "int", "long", "objectId", "date", "binData"]

SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=8),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1).map(Int64),
    "objectId": st.binary(min_size=12, max_size=12).map(ObjectId),
    "date": st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1))
    .map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    "binData": st.binary(max_size=8).map(lambda b: Binary(b, 0)),
    "double": st.floats(allow_nan=False),
    "bool": st.booleans(),
    "null": st.none(),
}
ANY_SCALAR = st.one_of(*SCALARS.values())
ANY_VALUE = st.recursive(
    ANY_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("pqr"), inner, max_size=3)),
    max_leaves=6,
)

# A schema tree: name -> ("enc", algorithm, bson type or None) | ("obj", subtree)
Leaf = st.one_of(
    st.tuples(st.just("enc"), st.just(DET), st.sampled_from(DETERMINISTIC_TYPES)),
    st.tuples(st.just("enc"), st.just(RND), st.one_of(st.none(), st.sampled_from([*DETERMINISTIC_TYPES, "double"]))),
)
TREES = st.recursive(
    st.dictionaries(NAMES, Leaf, max_size=3),
    lambda inner: st.dictionaries(NAMES, st.one_of(Leaf, st.tuples(st.just("obj"), inner)), max_size=3),
    max_leaves=6,
)


def to_json_schema(tree: dict[str, Any], top: bool = True) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, spec in tree.items():
        if not top and name == "_id":
            name = "i"
        if spec[0] == "enc":
            properties[name] = encrypt(KEY, spec[1], spec[2])
        else:
            properties[name] = to_json_schema(spec[1], top=False)
    return {"bsonType": "object", "properties": properties}


def schema_allows(tree: dict[str, Any]) -> bool:
    """Schemas mongocryptd refuses on their own (random encryption at or under the top-level _id) are not this
    property's subject."""

    def random_below(spec: Any) -> bool:
        if spec[0] == "enc":
            return spec[1] == RND
        return any(random_below(child) for child in spec[1].values())

    spec = tree.get("_id")
    return not (spec and random_below(spec))


@st.composite
def documents(draw: st.DrawFn, tree: dict[str, Any], well_typed: bool) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, spec in tree.items():
        if name != "_id" and not draw(st.booleans()):
            continue
        if spec[0] == "enc":
            # Without a bsonType, any value but null (never encryptable) fits a random field.
            typed = SCALARS[spec[2]] if spec[2] else ANY_VALUE.filter(lambda value: value is not None)
            document[name] = draw(typed if well_typed else st.one_of(typed, ANY_VALUE))
        else:
            subtree = {("i" if k == "_id" else k): v for k, v in spec[1].items()}
            document[name] = draw(documents(subtree, well_typed) if well_typed
                                  else st.one_of(documents(subtree, well_typed), ANY_VALUE))
    if draw(st.booleans()):
        document["extra"] = draw(ANY_VALUE)
    return document


def check_marked(original: Any, marked: Any, tree: dict[str, Any] | None) -> None:
    """Placeholders exactly where the tree says, holding the original value; all else unchanged."""
    assert isinstance(marked, dict) and list(marked) == list(original)
    for name, value in original.items():
        spec = tree.get(name) if tree is not None else None
        if spec is not None and spec[0] == "enc":
            body = read_placeholder(marked[name])
            assert body["a"] == (1 if spec[1] == DET else 2)
            assert body["ki"] == KEY
            assert bsonvalues.encode({"v": body["v"]}) == bsonvalues.encode({"v": value})
        elif spec is not None and isinstance(value, dict):
            check_marked(value, marked[name], {("i" if k == "_id" else k): v for k, v in spec[1].items()})
        else:
            assert bsonvalues.encode({"v": marked[name]}) == bsonvalues.encode({"v": value})


def any_encrypted(tree: dict[str, Any]) -> bool:
    return any(spec[0] == "enc" or any_encrypted(spec[1]) for spec in tree.values())


REFUSALS = {31041, 31118, 31006, 51130, 51129}


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), tree=TREES, well_typed=st.booleans())
def test_insert_marks_exactly_the_encrypted_paths(client, data, tree, well_typed):
    if not schema_allows(tree):
        return
    document = data.draw(documents(tree, well_typed))
    command = {"insert": "coll", "documents": [document], "jsonSchema": to_json_schema(tree), "isRemoteSchema": False}
    reply = raw_command(client, "db", command)
    if reply["ok"] != 1.0:
        assert not well_typed, (reply, document)
        assert reply["code"] in REFUSALS, reply
        return
    result = reply["result"]
    assert set(result) == {"insert", "documents"}
    check_marked(document, result["documents"][0], tree)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=TREES, value=ANY_VALUE, name=NAMES)
def test_equality_find_marks_or_refuses(client, tree, value, name):
    if not schema_allows(tree):
        return
    command = {"find": "coll", "filter": {name: value}, "jsonSchema": to_json_schema(tree), "isRemoteSchema": True}
    reply = raw_command(client, "db", command)
    spec = tree.get(name)
    if reply["ok"] != 1.0:
        assert reply["code"] in {31041, 31118, 51158, 51095, 31007, 31006}, reply
        assert spec is not None
        return
    if reply["schemaRequiresEncryption"] is False:
        # Nothing encrypted anywhere in the schema: analysed all the same, nothing marked.
        assert not any_encrypted(tree) and reply["hasEncryptionPlaceholders"] is False
        assert bsonvalues.encode(reply["result"]) == bsonvalues.encode({"find": "coll",
                                                                        "filter": {name: {"$eq": value}}})
        return
    compared = reply["result"]["filter"]
    if spec is not None and spec[0] == "enc":
        body = read_placeholder(compared[name]["$eq"])
        assert spec[1] == DET and body["a"] == 1
        assert bsonvalues.encode({"v": body["v"]}) == bsonvalues.encode({"v": value})
    elif spec is not None and isinstance(value, dict):
        check_marked(value, compared[name]["$eq"], {("i" if k == "_id" else k): v for k, v in spec[1].items()})
    else:
        assert bsonvalues.encode({"v": compared}) == bsonvalues.encode({"v": {name: {"$eq": value}}})


@settings(max_examples=examples(100), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), tree=TREES, well_typed=st.booleans())
def test_set_marks_exactly_the_encrypted_paths(client, data, tree, well_typed):
    """$set of a document's fields: the same marking as an insert of it (or a refusal)."""
    if not schema_allows(tree):
        return
    document = data.draw(documents(tree, well_typed))
    document.pop("_id", None)
    if not document:
        return
    command = {"update": "coll", "updates": [{"q": {}, "u": {"$set": document}}],
               "jsonSchema": to_json_schema(tree), "isRemoteSchema": True}
    reply = raw_command(client, "db", command)
    if reply["ok"] != 1.0:
        assert not well_typed, (reply, document)
        assert reply["code"] in REFUSALS | {51159}, reply
        return
    marked = reply["result"]["updates"][0]["u"]["$set"]
    # mongod writes $set paths back in order; compare as the insert would, in that order.
    check_marked({name: document[name] for name in marked}, marked, tree)
