"""Random BSON through markd's exact-type codec: what pymongo can read, markd reads and writes back byte for byte."""

from __future__ import annotations

import bson
import pytest
from bson.errors import InvalidBSON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from markd import bsonvalues
from tests.fuzz.bsongen import raw_document, values
from tests.fuzz.budget import examples

FUZZ = settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _readable(data: bytes) -> bool:
    try:
        bson.decode(data, bsonvalues.CODEC_OPTIONS)
    except (InvalidBSON, ValueError, OverflowError, UnicodeDecodeError):
        return False
    return True


@FUZZ
@given(raw_document())
def test_decode_then_encode_gives_the_same_bytes(data):
    if not _readable(data):
        return  # pymongo itself refuses it; so does the wire codec, before markd decodes
    decoded = bsonvalues.decode(data)
    assert bsonvalues.encode(decoded) == data


@FUZZ
@given(st.dictionaries(st.text(max_size=6).filter(lambda k: "\x00" not in k), values(), max_size=5))
def test_encode_then_decode_keeps_exact_types(document):
    data = bsonvalues.encode(document)
    again = bsonvalues.decode(data)
    assert bsonvalues.encode(again) == data
    for key, value in document.items():
        assert bsonvalues.bson_type(again[key]) == bsonvalues.bson_type(value)


@FUZZ
@given(raw_document(), st.data())
def test_decode_of_mutated_bytes_never_crashes(data, draw):
    """Mutated bytes: pymongo rejects them (the codec answers InvalidBSON) or markd decodes and re-encodes them."""
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        at = draw.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = draw.draw(st.integers(0, 255))
    mutated = bytes(mutated)
    if not _readable(mutated):
        return
    again = bsonvalues.encode(bsonvalues.decode(mutated))
    assert len(again) <= len(mutated)  # duplicate keys collapse; nothing is ever invented


# Finding F2 (fixed in 091e257): pymongo's Regex keeps options as re flags, so options that were not sorted,
# repeated or unknown came back normalized; a deterministic ciphertext of such a value would change with them.
@pytest.mark.parametrize("options", [b"xi", b"ii", b"q"])
def test_regex_options_keep_their_bytes(options):
    element = b"\x0bk\x00a\x00" + options + b"\x00"
    data = (len(element) + 5).to_bytes(4, "little") + element + b"\x00"
    assert _readable(data)
    assert bsonvalues.encode(bsonvalues.decode(data)) == data


# Finding F3 (fixed in 091e257): a code-with-scope value was decoded by pymongo as a whole, so an undefined,
# symbol or DBPointer inside its scope came back as null, str or DBRef.
@pytest.mark.parametrize("scope_element", [b"\x06u\x00", b"\x0es\x00\x02\x00\x00\x00a\x00",
                                           b"\x0cp\x00\x02\x00\x00\x00a\x00" + b"x" * 12])
def test_code_with_scope_keeps_deprecated_types(scope_element):
    scope = (len(scope_element) + 5).to_bytes(4, "little") + scope_element + b"\x00"
    code = b"\x02\x00\x00\x00f\x00"
    value = (4 + len(code) + len(scope)).to_bytes(4, "little") + code + scope
    element = b"\x0fk\x00" + value
    data = (len(element) + 5).to_bytes(4, "little") + element + b"\x00"
    assert _readable(data)
    assert bsonvalues.encode(bsonvalues.decode(data)) == data


# Finding F1 (fixed in 091e257): markd.bsonvalues.decode raised UnicodeDecodeError for an array key that is not
# UTF-8, which pymongo's decoder accepts.
def test_decode_of_array_with_non_utf8_key_raises_invalid_bson_or_decodes():
    element = b"\x04a\x00\x0c\x00\x00\x00\x10\xda\x00\x01\x00\x00\x00\x00"
    data = (len(element) + 5).to_bytes(4, "little") + element + b"\x00"
    assert _readable(data)
    try:
        decoded = bsonvalues.decode(data)
    except InvalidBSON:
        return
    assert decoded == {"a": [1]}
