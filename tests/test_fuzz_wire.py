"""Fuzzing the sans-IO wire codec with mutated real frames (pymongo's own framing as seeds).

The properties:
- `parse_message` returns a message or raises `ProtocolError`: never anything else;
- `FrameReader.feed`, in any chunking, hands out frames that are exact slices of the stream, or
  raises `ProtocolError`;
- the whole core (`MarkdServer.handle_frame`) answers every readable frame without an InternalError,
  or raises `ProtocolError` (the connection is closed, the daemon keeps serving).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from markd.wire import FrameReader, OpMsg, OpQuery, ProtocolError, parse_message
from tests.fuzz import frames
from tests.fuzz.budget import examples
from tests.fuzz.core import handle_frame

FUZZ = settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_frame = st.one_of(frames.mutated_frame(), frames.random_frame(), st.binary(max_size=64))


@pytest.mark.parametrize("name", frames.SEED_NAMES)
def test_seed_frames_are_understood(name):
    message = parse_message(frames.SEEDS[name])
    assert isinstance(message, (OpMsg, OpQuery))
    assert getattr(message, "error", None) is None
    reply = handle_frame(frames.SEEDS[name])
    assert reply is not None


def test_insert_sequence_is_merged_into_the_body():
    message = parse_message(frames.SEEDS["op_msg_insert_seq_checksum"])
    assert isinstance(message, OpMsg) and message.error is None
    assert message.sequences == ("documents",)


@FUZZ
@given(any_frame)
def test_parse_message_returns_a_message_or_raises_protocol_error(frame):
    try:
        message = parse_message(frame)
    except ProtocolError:
        return
    assert isinstance(message, (OpMsg, OpQuery))


@FUZZ
@given(st.lists(st.sampled_from(frames.SEED_NAMES), min_size=1, max_size=6), st.data())
def test_frame_reader_cuts_any_chunking_into_the_same_frames(names, data):
    stream = b"".join(frames.SEEDS[name] for name in names)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    reader = FrameReader()
    got: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[previous:cut])
        previous = cut
    assert got == [frames.SEEDS[name] for name in names]
    assert reader.pending == 0


@FUZZ
@given(st.lists(any_frame, min_size=1, max_size=4), st.data())
def test_frame_reader_on_garbage_returns_exact_slices_or_raises_protocol_error(pieces, data):
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = FrameReader()
    out: list[bytes] = []
    previous = 0
    try:
        for cut in [*cuts, len(stream)]:
            out += reader.feed(stream[previous:cut])
            previous = cut
    except ProtocolError:
        return
    joined = b"".join(out)
    assert stream.startswith(joined)
    assert len(joined) + reader.pending == len(stream)
    for frame in out:
        assert struct.unpack_from("<i", frame)[0] == len(frame)


@HEAVY
@given(any_frame)
def test_core_answers_every_frame_without_internal_error(frame):
    try:
        reply = handle_frame(frame)
    except ProtocolError:
        return
    if reply is not None:
        assert isinstance(reply.get("ok"), (int, float))
        if not reply["ok"]:
            assert isinstance(reply.get("code"), int) and isinstance(reply.get("errmsg"), str)


@HEAVY
@given(frames.mutated_frame(fix_length=True))
def test_core_on_length_consistent_mutations(frame):
    """Frames that pass framing reach the BSON and section parsers: the interesting half."""
    try:
        handle_frame(frame)
    except ProtocolError:
        pass


# Finding F1 (found by tests/test_load.py's mutated frames; fixed in 091e257): pymongo's C decoder does not read
# the keys of array elements, so a body whose array has a key that is not UTF-8 passed the codec's validation;
# markd's exact decoder (bsonvalues._decode_document) then raised UnicodeDecodeError and the server answered
# InternalError (code 1) instead of InvalidBSON (22).
_ARRAY_WITH_BAD_KEY = (b"\x17\x00\x00\x00\x04a\x00\x0c\x00\x00\x00\x10\xda\x00\x01\x00\x00\x00\x00"
                       b"\x02$db\x00\x03\x00\x00\x00db\x00\x00")


def _fixed_length(body: bytes) -> bytes:
    return len(body).to_bytes(4, "little") + body[4:]


def test_array_key_that_is_not_utf8_is_invalid_bson_not_internal_error():
    body = _fixed_length(_ARRAY_WITH_BAD_KEY)
    frame = struct.pack("<iiii", 16 + 5 + len(body), 5, 0, 2013) + b"\x00\x00\x00\x00\x00" + body
    try:
        reply = handle_frame(frame)
    except ProtocolError:
        return
    assert reply is not None and reply["ok"] == 0 and reply["code"] != 1
