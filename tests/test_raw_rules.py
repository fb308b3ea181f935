"""Encryption rules keep the bytes the client sent (issue 15): the wire decode hands them over as
ExactDocuments, the parsed-rules caches are keyed by those bytes, and the fast paths that build
placeholders directly give exactly what the value-by-value path gives."""

from __future__ import annotations

import datetime
import pickle
import struct
import uuid

import bson
import pytest
from bson import Decimal128, Int64, ObjectId
from bson.binary import Binary
from hypothesis import given, settings
from hypothesis import strategies as st

from markd import bsonvalues
from markd.analysis import mark_command
from markd.analysis.context import Analysis
from markd.analysis.csfle import jsonschema, placeholders
from markd.analysis.csfle.policy import SCHEME
from markd.analysis.ordering import sorted_set
from markd.bsonvalues import EncryptedBinData, ExactDocument
from markd.errors import CommandError
from markd.wire import codec
from tests.support.process import op_msg_frame

KEY = Binary(uuid.UUID(int=15).bytes, 4)
DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
SCHEMA = {"bsonType": "object", "properties": {
    "ssn": {"encrypt": {"keyId": [KEY], "algorithm": DETERMINISTIC, "bsonType": "string"}},
    "n": {"encrypt": {"keyId": [KEY], "algorithm": DETERMINISTIC, "bsonType": "int"}},
}}
INFO = {"type": 1, "schema": {"db.c": {"escCollection": "esc", "ecocCollection": "ecoc", "fields": [
    {"path": "ssn", "keyId": KEY, "bsonType": "string", "queries": {"queryType": "equality", "contention": Int64(8)}},
]}}}


def decoded(command: dict[str, object], sequences: tuple[tuple[str, list[dict[str, object]]], ...] = ()
            ) -> dict[str, object]:
    message = codec.parse_message(op_msg_frame(command, sequences=sequences))
    assert isinstance(message, codec.OpMsg)
    if message.error is not None:
        raise message.error
    return message.command


def test_rules_fields_are_exact_documents_holding_the_request_bytes():
    command = decoded({"find": "c", "filter": {"ssn": "x"}, "jsonSchema": SCHEMA, "isRemoteSchema": False,
                       "$db": "db"})
    assert list(command) == ["find", "filter", "jsonSchema", "isRemoteSchema", "$db"]  # the request's order
    schema = command["jsonSchema"]
    assert type(schema) is ExactDocument and schema == SCHEMA
    assert schema.raw == bson.encode(SCHEMA)
    assert type(command["filter"]) is dict


def test_explain_and_bulk_write_rules_are_kept_too():
    explain = decoded({"explain": {"find": "c", "filter": {}, "jsonSchema": SCHEMA, "isRemoteSchema": False},
                       "verbosity": "queryPlanner", "$db": "db"})
    assert type(explain["explain"]["jsonSchema"]) is ExactDocument
    bulk = decoded({"bulkWrite": 1, "ops": [{"insert": 0, "document": {"ssn": "x"}}],
                    "nsInfo": [{"ns": "db.c", "encryptionInformation": INFO}], "$db": "admin"})
    information = bulk["nsInfo"][0]["encryptionInformation"]
    assert type(information) is ExactDocument and information.raw == bson.encode(INFO)


def test_an_exact_document_cannot_change_and_encodes_as_its_bytes():
    schema = decoded({"find": "c", "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"})["jsonSchema"]
    assert isinstance(schema, ExactDocument)
    for change in (lambda: schema.__setitem__("x", 1), lambda: schema.pop("bsonType"), schema.clear,
                   lambda: schema.update(x=1), lambda: schema.setdefault("x", 1)):
        with pytest.raises(TypeError):
            change()
    assert bson.encode({"s": schema}) == bson.encode({"s": SCHEMA})
    copy = pickle.loads(pickle.dumps(schema))
    assert copy == schema and copy.raw == schema.raw
    assert dict(schema) == SCHEMA  # a copy that can change


def test_the_same_rules_are_decoded_and_parsed_once():
    command = {"find": "c", "filter": {"ssn": "x"}, "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}
    first, second = decoded(command), decoded({**command, "filter": {"ssn": "y"}})
    assert first["jsonSchema"] is second["jsonSchema"]  # not decoded again
    assert jsonschema.parse(first["jsonSchema"], False) is jsonschema.parse(second["jsonSchema"], False)
    # A schema given as a plain dict (an in-process caller) finds the same cache entry: its key is its bytes.
    assert jsonschema.parse(dict(SCHEMA), False) is jsonschema.parse(first["jsonSchema"], False)
    assert jsonschema.parse(first["jsonSchema"], True) is not jsonschema.parse(first["jsonSchema"], False)
    # The same rules written in another order are other bytes: parsed on their own.
    reordered = {"properties": SCHEMA["properties"], "bsonType": "object"}
    other = decoded({**command, "jsonSchema": reordered})["jsonSchema"]
    assert other.raw != first["jsonSchema"].raw
    assert jsonschema.parse(other, False) is not jsonschema.parse(first["jsonSchema"], False)


def test_an_insert_body_decoded_once_is_handed_out_as_a_fresh_command():
    body = {"insert": "c", "ordered": True, "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}
    first = decoded(body, (("documents", [{"ssn": "a"}]),))
    second = decoded(body, (("documents", [{"ssn": "b"}]),))
    assert first["documents"] == [{"ssn": "a"}] and second["documents"] == [{"ssn": "b"}]
    assert first is not second and first["jsonSchema"] is second["jsonSchema"]


def test_a_repeated_schema_keyword_is_refused_whatever_is_cached():
    good = {"find": "c", "filter": {"ssn": "x"}, "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}
    assert mark_command(decoded(good))["ok"] == 1
    repeated = bson.encode(SCHEMA)[:-1] + b"\x02bsonType\x00" + struct.pack("<i", 7) + b"object\x00\x00"
    repeated = struct.pack("<i", len(repeated)) + repeated[4:]
    body = bson.encode(good)
    start = body.index(bson.encode(SCHEMA))
    body = body[:start] + repeated + body[start + len(bson.encode(SCHEMA)):]
    body = struct.pack("<i", len(body)) + body[4:]
    frame = struct.pack("<iiii", 21 + len(body), 1, 0, 2013) + b"\x00\x00\x00\x00\x00" + body
    message = codec.parse_message(frame)
    assert isinstance(message, codec.OpMsg) and message.error is None
    assert type(message.command["jsonSchema"]) is not ExactDocument
    with pytest.raises(CommandError) as refused:
        mark_command(message.command)
    assert refused.value.code == 9


@pytest.mark.parametrize("inside_explain", [False, True])
def test_rules_nested_beyond_mongods_depth_are_refused(inside_explain):
    def schema_nested(depth: int) -> dict[str, object]:
        schema: dict[str, object] = {}
        for _ in range(depth):
            schema = {"not": schema}
        return schema

    def command(depth: int) -> dict[str, object]:
        if inside_explain:  # the schema one level further down
            return {"explain": {"find": "c", "jsonSchema": schema_nested(depth), "isRemoteSchema": False},
                    "$db": "db"}
        return {"find": "c", "jsonSchema": schema_nested(depth), "isRemoteSchema": False, "$db": "db"}

    # The top level is 0; jsonSchema is 1 (2 in explain), each `not` one more: 200 levels are allowed.
    deepest = 199 if not inside_explain else 198
    assert type(decoded(command(deepest))["explain" if inside_explain else "jsonSchema"]) in (dict, ExactDocument)
    with pytest.raises(CommandError) as refused:
        decoded(command(deepest + 1))
    assert refused.value.code == 15
    with pytest.raises(CommandError):  # from the cache too
        decoded(command(deepest + 1))


def test_elements_frames_a_document_or_refuses_it():
    data = bson.encode({"a": 1, "b": "two", "c": {"d": [1]}})
    assert [(name, kind) for name, kind, *_ in bsonvalues.elements(data, 0, len(data))] == [
        (b"a", 0x10), (b"b", 0x02), (b"c", 0x03)]
    for broken in (data[:-1] + b"\x01", data[:4] + b"\x99" + data[5:], struct.pack("<i", len(data) + 1) + data[4:]):
        with pytest.raises((ValueError, IndexError, struct.error)):
            bsonvalues.elements(broken, 0, len(broken))


def test_encrypted_bin_data_is_a_subtype_6_binary():
    fast, plain = EncryptedBinData(b"\x00abc"), Binary(b"\x00abc", 6)
    assert fast == plain and hash(fast) == hash(plain) and fast.subtype == 6
    assert bson.encode({"v": fast}) == bson.encode({"v": plain})
    assert repr(fast) == repr(plain)
    assert pickle.loads(pickle.dumps(fast)) == plain


# -- the $in fast path against the value-by-value one ------------------------------------------------

scalars = st.one_of(
    st.text(max_size=12), st.integers(min_value=-(2**40), max_value=2**40), st.builds(Int64, st.integers(-5, 5)),
    st.builds(lambda b: ObjectId(b), st.binary(min_size=12, max_size=12)),
    st.builds(lambda ms: datetime.datetime(2000, 1, 1) + datetime.timedelta(milliseconds=ms), st.integers(0, 10**9)),
    st.floats(allow_nan=False), st.booleans(), st.none(),
    st.builds(lambda s: Decimal128(str(s)), st.integers(-(10**6), 10**6)))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values=st.lists(st.one_of(st.sampled_from(["a", "b", "ü", ""]), scalars), max_size=12),
       bson_type=st.sampled_from(["string", "int", "long", "objectId", "date"]))
def test_in_placeholders_at_once_match_one_by_one(values, bson_type):
    metadata = jsonschema.Encrypted(jsonschema.DETERMINISTIC, KEY, frozenset({bson_type}))
    analysis = Analysis(SCHEME, {}, "db", "c")
    at_once = placeholders.placeholders_for_in(metadata, values, analysis.scope())
    one_by_one_analysis = Analysis(SCHEME, {}, "db", "c")
    try:
        one_by_one = sorted_set([placeholders.placeholder(metadata, value, one_by_one_analysis.scope(), comparison=True)
                                 for value in values])
    except CommandError:
        assert at_once is None  # a refusal is for the value-by-value path to report
        return
    if bson_type == "string" and all(type(value) is str for value in values):
        assert at_once is not None  # the common case takes the fast path
    if at_once is not None:
        assert at_once == one_by_one
        assert [bson.encode({"v": p}) for p in at_once] == [bson.encode({"v": p}) for p in one_by_one]
        assert analysis.placeholders == one_by_one_analysis.placeholders == len(values)
