"""Arbitrary CSFLE commands end in a marking or a CommandError, never another exception.

The analysis is pure, so this runs in-process: random commands built from the match, update and
pipeline vocabularies (and junk), against a schema with every kind of field.  Any other exception
would reach clients as an InternalError.  When the command is accepted, no value that was compared
to or written at an encrypted path may survive in plaintext (checked on the top-level paths).
"""

from __future__ import annotations

from typing import Any

from bson import Int64, Regex
from bson.binary import Binary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from markd.analysis import mark_command
from markd.errors import CommandError
from tests.fuzz.budget import examples
from tests.test_csfle_support import schema_for

KEY = Binary(b"\x07" * 16, 4)
SCHEMA = schema_for(KEY)
FIELDS = st.sampled_from(["ssn", "age", "rnd", "any", "num", "alt", "doc", "doc.inner", "doc.deep.leaf", "plain",
                          "x", "ssn.x", "doc.$", "ssn.$[i]", "_id", "$bad", ""])
OPS = st.sampled_from(["$eq", "$ne", "$in", "$nin", "$gt", "$lt", "$exists", "$regex", "$type", "$size", "$all",
                       "$elemMatch", "$not", "$mod", "$near", "$bitsAllSet", "$options", "$foo"])
TOP = st.sampled_from(["$and", "$or", "$nor", "$expr", "$text", "$where", "$comment", "$jsonSchema"])
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.just(Int64(3)), st.text(max_size=3),
                   st.floats(allow_nan=False), st.just(Regex("a")), st.just(Binary(b"\x00\x01", 6)))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(FIELDS, OPS, TOP), inner, max_size=3),
), max_leaves=8)
EXPRESSION = st.recursive(
    st.one_of(SCALAR, st.sampled_from(["$ssn", "$age", "$rnd", "$doc", "$doc.inner", "$plain", "$$ROOT",
                                       "$$CURRENT.ssn", "$$this", "$x"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["$eq", "$ne", "$in", "$cond", "$ifNull", "$add", "$literal", "$gt",
                                         "$concat", "$switch", "$let", "$map", "$and", "$not", "$first"]),
                        st.one_of(inner, st.lists(inner, max_size=3)), min_size=1, max_size=1),
        st.dictionaries(st.sampled_from(["if", "then", "else", "a"]), inner, max_size=3),
    ),
    max_leaves=10,
)
FILTER = st.dictionaries(st.one_of(FIELDS, TOP), st.one_of(VALUE, st.dictionaries(OPS, VALUE, max_size=2)),
                         max_size=3)
MODIFIERS = st.sampled_from(["$set", "$unset", "$inc", "$rename", "$push", "$setOnInsert", "$currentDate", "$x"])
UPDATE = st.one_of(
    st.dictionaries(MODIFIERS, st.dictionaries(FIELDS, VALUE, max_size=2), max_size=2),
    st.dictionaries(FIELDS, VALUE, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["$set", "$project", "$unset", "$match"]), VALUE, min_size=1,
                             max_size=1), max_size=2),
    VALUE,
)
STAGE_NAMES = st.sampled_from(["$match", "$project", "$addFields", "$set", "$unset", "$group", "$count", "$sort",
                               "$limit", "$unwind", "$lookup", "$replaceRoot", "$replaceWith", "$bucketAuto",
                               "$bucket", "$sortByCount", "$facet", "$unionWith", "$geoNear", "$graphLookup",
                               "$out", "$nope"])
STAGE_BODY = st.one_of(VALUE, FILTER, st.dictionaries(st.sampled_from(["_id", "from", "as", "localField",
                                                                        "foreignField", "newRoot", "groupBy",
                                                                        "path", "key", "n"]),
                                                       st.one_of(VALUE, st.sampled_from(["$ssn", "$doc", "$rnd",
                                                                                         "$x", "coll", "n"])),
                                                       max_size=4))
PIPELINE = st.lists(st.dictionaries(STAGE_NAMES, STAGE_BODY, min_size=1, max_size=1), max_size=3)
COMMANDS = st.one_of(
    st.builds(lambda f: {"find": "coll", "filter": f}, FILTER),
    st.builds(lambda f: {"count": "coll", "query": f}, FILTER),
    st.builds(lambda k, f: {"distinct": "coll", "key": k, "query": f}, FIELDS, FILTER),
    st.builds(lambda d: {"insert": "coll", "documents": [d]}, st.dictionaries(FIELDS, VALUE, max_size=4)),
    st.builds(lambda q, u, up: {"update": "coll", "updates": [{"q": q, "u": u, "upsert": up}]}, FILTER, UPDATE,
              st.booleans()),
    st.builds(lambda q: {"delete": "coll", "deletes": [{"q": q, "limit": 0}]}, FILTER),
    st.builds(lambda q, u: {"findAndModify": "coll", "query": q, "update": u}, FILTER, UPDATE),
    st.builds(lambda p: {"aggregate": "coll", "pipeline": p, "cursor": {}}, PIPELINE),
    st.builds(lambda f: {"explain": {"find": "coll", "filter": f}}, FILTER),
    st.builds(lambda e: {"find": "coll", "filter": {"$expr": e}}, EXPRESSION),
    st.builds(lambda e, g: {"aggregate": "coll", "pipeline": [{"$project": {"p": e}}, {"$group": {"_id": g}}],
                            "cursor": {}}, EXPRESSION, EXPRESSION),
    st.builds(lambda v: {"create": "coll", "validator": v}, FILTER),
    st.builds(lambda v: {"createIndexes": "coll", "indexes": [{"key": {"a": 1}, "name": "a",
                                                               "partialFilterExpression": v}]}, FILTER),
    st.dictionaries(st.sampled_from(["find", "update", "pipeline", "filter", "foo"]), VALUE, min_size=1, max_size=3),
)


def plaintext_at_encrypted_top_level(command: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Top-level encrypted fields of inserted documents that came back as something other than BinData 6."""
    leaks = []
    if "documents" in result:
        for document in result["documents"]:
            for name in ("ssn", "age", "rnd", "any", "num", "alt"):
                if name in document and not (isinstance(document[name], Binary) and document[name].subtype == 6):
                    leaks.append(name)
    return leaks


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(command=COMMANDS, remote=st.booleans())
def test_any_command_is_marked_or_refused(command, remote):
    body = {**command, "jsonSchema": SCHEMA, "isRemoteSchema": remote, "$db": "db"}
    try:
        reply = mark_command(body)
    except CommandError as error:
        assert isinstance(error.code, int) and error.errmsg
        return
    assert set(reply) == {"hasEncryptionPlaceholders", "schemaRequiresEncryption", "result", "ok"}
    assert reply["schemaRequiresEncryption"] is True
    assert not plaintext_at_encrypted_top_level(command, reply["result"])
