"""The exact-type BSON codec keeps every byte a client sent (a deterministic ciphertext depends on it)
and turns malformed input into InvalidBSON, never another exception."""

from __future__ import annotations

import struct

import bson
import pytest
from bson import Regex
from bson.code import Code
from bson.errors import InvalidBSON

from markd import bsonvalues
from markd.bsonvalues import DBPointer, ExactRegex, Symbol, Undefined


def document(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def string(value: bytes) -> bytes:
    return struct.pack("<i", len(value) + 1) + value + b"\x00"


def round_trips(data: bytes) -> None:
    assert bsonvalues.encode(bsonvalues.decode(data)) == data


@pytest.mark.parametrize("element,expected", [
    (b"\x0es\x00" + string(b"sym"), Symbol("sym")),
    (b"\x06u\x00", Undefined()),
    (b"\x0cp\x00" + string(b"db.c") + b"x" * 12, DBPointer("db.c", bson.ObjectId(b"x" * 12))),
])
def test_deprecated_types_keep_their_type(element, expected):
    data = document(element)
    decoded = bsonvalues.decode(data)
    assert next(iter(decoded.values())) == expected
    round_trips(data)


@pytest.mark.parametrize("options", [b"", b"i", b"imsx", b"xi", b"ii", b"q", b"mi"])
def test_regex_options_keep_their_bytes(options):
    data = document(b"\x0bk\x00a.b\x00" + options + b"\x00")
    value = bsonvalues.decode(data)["k"]
    assert isinstance(value, Regex)  # analysis rules still see a regex
    assert bsonvalues.bson_type(value) == "regex"
    round_trips(data)


def test_exact_regex_equality_and_repr():
    assert ExactRegex("a", "xi") == ExactRegex("a", "xi")
    assert ExactRegex("a", "xi") != ExactRegex("a", "ix")
    assert "xi" in repr(ExactRegex("a", "xi"))


@pytest.mark.parametrize("scope_element", [b"\x06u\x00", b"\x0es\x00" + string(b"a"),
                                           b"\x0cp\x00" + string(b"a") + b"x" * 12, b"\x10n\x00\x01\x00\x00\x00"])
def test_code_with_scope_keeps_deprecated_types_in_its_scope(scope_element):
    code_and_scope = string(b"function() {}") + document(scope_element)
    data = document(b"\x0fk\x00" + struct.pack("<i", 4 + len(code_and_scope)) + code_and_scope)
    value = bsonvalues.decode(data)["k"]
    assert isinstance(value, Code) and value.scope is not None
    round_trips(data)


def test_symbol_inside_an_array_inside_a_document():
    data = document(b"\x04a\x00" + document(b"\x030\x00" + document(b"\x0es\x00" + string(b"x"))))
    assert bsonvalues.decode(data) == {"a": [{"s": Symbol("x")}]}
    round_trips(data)


def test_array_key_that_is_not_utf8_is_ignored_as_arrays_keys_are():
    # pymongo never reads array keys, so it accepts this; the exact decoder must not crash on it.
    data = document(b"\x04a\x00" + document(b"\x10\xda\x00\x01\x00\x00\x00"), b"\x06u\x00")
    assert bsonvalues.decode(data) == {"a": [1], "u": Undefined()}


def test_document_key_that_is_not_utf8_is_invalid_bson():
    data = document(b"\x06u\x00", b"\x10\xff\x00\x01\x00\x00\x00")
    with pytest.raises(InvalidBSON):
        bsonvalues.decode(data)


def test_int32_int64_double_stay_apart():
    data = bson.encode({"i": 1, "l": bson.Int64(1), "d": 1.0})
    decoded = bsonvalues.decode(data)
    assert [bsonvalues.bson_type(v) for v in decoded.values()] == ["int", "long", "double"]
    round_trips(data)


def test_code_is_javascript_not_string() -> None:
    from bson.code import Code

    from markd.bsonvalues import bson_type

    assert bson_type(Code("f()")) == "javascript"
    assert bson_type(Code("f()", {"x": 1})) == "javascriptWithScope"
    assert bson_type("f()") == "string"
