"""The sans-IO wire codec, with byte strings alone: framing, OP_MSG sections, checksums, OP_QUERY,
OP_COMPRESSED and reply encoding."""

from __future__ import annotations

import itertools
import struct
import zlib

import bson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from markd.errors import CommandError
from markd.wire import codec
from markd.wire.codec import (
    MAX_MESSAGE_SIZE,
    FrameReader,
    OpMsg,
    OpQuery,
    ProtocolError,
    encode_op_msg,
    encode_op_reply,
    parse_message,
)
from markd.wire.crc32c import _crc32c_py, crc32c
from tests.fuzz.budget import examples
from tests.support.process import compressed_frame, op_msg_frame, op_query_frame

HEADER = struct.Struct("<iiii")


def header(length: int, op_code: int = codec.OP_MSG, request_id: int = 9) -> bytes:
    return HEADER.pack(length, request_id, 0, op_code)


def parsed_msg(frame: bytes) -> OpMsg:
    message = parse_message(frame)
    assert isinstance(message, OpMsg)
    return message


# CRC-32C ---------------------------------------------------------------------------------------
def test_crc32c_known_vectors():
    # The check value of CRC-32C (RFC 3720, Castagnoli) and the all-zero 32-byte iSCSI test vector.
    assert crc32c(b"123456789") == 0xE3069283
    assert _crc32c_py(b"123456789") == 0xE3069283
    assert _crc32c_py(bytes(32)) == 0x8A9136AA
    assert crc32c(b"") == 0


# FrameReader ----------------------------------------------------------------------------------
def test_frame_reader_cuts_a_stream_fed_byte_by_byte():
    frames = [op_msg_frame({"ping": 1, "$db": "admin"}, request_id=i) for i in range(3)]
    stream = b"".join(frames)
    reader = FrameReader()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
    assert out == frames
    assert reader.pending == 0


def test_frame_reader_holds_a_partial_frame():
    frame = op_msg_frame({"ping": 1, "$db": "admin"})
    reader = FrameReader()
    assert reader.feed(frame[:10]) == []
    assert reader.pending == 10
    assert reader.feed(frame[10:] + frame[:3]) == [frame]
    assert reader.pending == 3


@pytest.mark.parametrize("length", [0, 15, -1, MAX_MESSAGE_SIZE + 1, 2**31 - 1])
def test_frame_reader_rejects_impossible_lengths(length):
    with pytest.raises(ProtocolError, match="msgLen"):
        FrameReader().feed(header(length) + b"\x00" * 8)


def test_frame_reader_accepts_the_maximum_length_header():
    reader = FrameReader()
    assert reader.feed(header(MAX_MESSAGE_SIZE)) == []
    assert reader.pending == 16


# OP_MSG ---------------------------------------------------------------------------------------
def test_op_msg_body_only():
    message = parsed_msg(op_msg_frame({"hello": 1, "$db": "admin"}, request_id=42))
    assert message.request_id == 42
    assert message.error is None
    assert message.command == {"hello": 1, "$db": "admin"}
    assert not message.more_to_come


def test_op_msg_sequences_are_merged_into_the_body_in_order():
    docs = [{"_id": 1, "a": "x"}, {"_id": 2, "b": bson.Int64(3)}]
    updates = [{"q": {}, "u": {"$set": {"c": 1}}}]
    frame = op_msg_frame({"insert": "coll", "$db": "db"}, sequences=[("documents", docs), ("updates", updates)])
    message = parsed_msg(frame)
    assert message.error is None
    assert message.sequences == ("documents", "updates")
    merged = message.command
    assert list(merged) == ["insert", "$db", "documents", "updates"]
    assert merged["documents"] == docs
    assert isinstance(merged["documents"][1]["b"], bson.Int64)
    assert merged["updates"] == updates


def test_op_msg_empty_sequence_merges_as_empty_array():
    message = parsed_msg(op_msg_frame({"insert": "c", "$db": "db"}, sequences=[("documents", [])]))
    assert message.command["documents"] == []


def test_op_msg_sequence_duplicating_a_body_field_is_an_error():
    frame = op_msg_frame({"insert": "c", "documents": [], "$db": "db"}, sequences=[("documents", [{"a": 1}])])
    message = parsed_msg(frame)
    assert message.error is not None
    assert (message.error.code, message.error.errmsg) == (
        40433, "Duplicate field between body and document sequence documents")


def test_op_msg_without_body_is_an_error():
    body = b"documents\x00" + bson.encode({"a": 1})
    payload = struct.pack("<I", 0) + b"\x01" + struct.pack("<i", 4 + len(body)) + body
    message = parsed_msg(header(16 + len(payload)) + payload)
    assert message.error is not None and message.error.errmsg == "OP_MSG messages must have a body"


def test_op_msg_two_bodies_is_an_error():
    doc = bson.encode({"ping": 1, "$db": "a"})
    payload = struct.pack("<I", 0) + b"\x00" + doc + b"\x00" + doc
    message = parsed_msg(header(16 + len(payload)) + payload)
    assert message.error is not None and "Multiple body sections" in message.error.errmsg


def test_op_msg_unknown_section_kind_is_an_error():
    payload = struct.pack("<I", 0) + b"\x07" + bson.encode({"ping": 1})
    message = parsed_msg(header(16 + len(payload)) + payload)
    assert message.error is not None and "Unknown section kind 7" in message.error.errmsg


def test_op_msg_invalid_bson_body_is_error_22():
    doc = bytearray(bson.encode({"ping": 1, "s": "abc", "$db": "admin"}))
    doc[14] = 0x99  # the type byte of "s": a BSON type that does not exist
    payload = struct.pack("<I", 0) + b"\x00" + bytes(doc)
    message = parsed_msg(header(16 + len(payload)) + payload)
    assert message.error is not None
    assert message.error.code in (22, 40)


def test_op_msg_bson_length_running_past_the_frame_is_an_error():
    doc = bytearray(bson.encode({"ping": 1}))
    doc[0:4] = struct.pack("<i", 500)
    payload = struct.pack("<I", 0) + b"\x00" + bytes(doc)
    message = parsed_msg(header(16 + len(payload)) + payload)
    assert message.error is not None and "length" in message.error.errmsg


def test_op_msg_invalid_utf8_in_body_is_an_error():
    doc = bytearray(bson.encode({"ping": 1, "s": "abc"}))
    at = doc.index(b"abc")
    doc[at] = 0xFF
    payload = struct.pack("<I", 0) + b"\x00" + bytes(doc)
    message = parsed_msg(header(16 + len(payload)) + payload)
    assert message.error is not None


def test_op_msg_more_to_come_and_exhaust_flags():
    flags = codec.FLAG_MORE_TO_COME | codec.FLAG_EXHAUST_ALLOWED
    message = parsed_msg(op_msg_frame({"ping": 1, "$db": "a"}, flags=flags))
    assert message.error is None
    assert message.more_to_come


def test_op_msg_unknown_required_flag_is_rejected_but_optional_bits_are_not():
    rejected = parsed_msg(op_msg_frame({"ping": 1, "$db": "a"}, flags=1 << 5))
    assert rejected.error is not None and rejected.error.code == 223
    assert rejected.error.errmsg == f"Message contains illegal flags value: Flag_{1 << 5:032b}"
    accepted = parsed_msg(op_msg_frame({"ping": 1, "$db": "a"}, flags=1 << 20))
    assert accepted.error is None


def test_op_msg_checksum_verified():
    frame = op_msg_frame({"ping": 1, "$db": "admin"}, sequences=[("documents", [{"a": 1}])], checksum=True)
    message = parsed_msg(frame)
    assert message.error is None
    assert message.command["documents"] == [{"a": 1}]


def test_op_msg_checksum_mismatch_is_rejected():
    frame = bytearray(op_msg_frame({"ping": 1, "$db": "admin"}, checksum=True))
    frame[-1] ^= 0xFF
    message = parsed_msg(bytes(frame))
    assert message.error is not None
    assert message.error.code == 282
    assert message.command == {}


def test_op_msg_body_byte_flipped_under_checksum_is_rejected():
    frame = bytearray(op_msg_frame({"ping": 1, "$db": "admin"}, checksum=True))
    frame[-8] ^= 0x01
    assert parsed_msg(bytes(frame)).error is not None


def test_op_msg_too_short_closes_the_connection():
    with pytest.raises(ProtocolError):
        parse_message(header(20) + b"\x00\x00\x00\x00")


def test_message_length_not_matching_the_frame_closes():
    frame = op_msg_frame({"ping": 1, "$db": "a"})
    with pytest.raises(ProtocolError, match="does not match"):
        parse_message(frame + b"\x00")


def test_unknown_opcode_closes():
    with pytest.raises(ProtocolError, match="unsupported opCode 2010"):
        parse_message(header(16 + 8, op_code=2010) + b"\x00" * 8)


# OP_QUERY -------------------------------------------------------------------------------------
def test_op_query_handshake():
    message = parse_message(op_query_frame({"ismaster": 1, "helloOk": True}, request_id=5))
    assert isinstance(message, OpQuery)
    assert message.collection == "admin.$cmd"
    assert message.request_id == 5
    assert bson.decode(message.query) == {"ismaster": 1, "helloOk": True}


def test_op_query_truncated_query_closes():
    frame = op_query_frame({"ismaster": 1})
    broken = struct.pack("<i", len(frame) - 3) + frame[4:-3]
    with pytest.raises(ProtocolError, match="invalid OP_QUERY"):
        parse_message(broken)


# OP_COMPRESSED --------------------------------------------------------------------------------
@pytest.mark.parametrize("compressor", [0, 2])
def test_op_compressed_noop_and_zlib_unwrap_to_the_inner_message(compressor):
    inner = op_msg_frame({"insert": "c", "$db": "db"}, request_id=77, sequences=[("documents", [{"x": 1}])])
    message = parsed_msg(compressed_frame(inner, compressor))
    assert message.request_id == 77
    assert message.error is None
    assert message.command["documents"] == [{"x": 1}]


def test_op_compressed_with_unnegotiated_compressor_closes():
    frame = bytearray(compressed_frame(op_msg_frame({"ping": 1, "$db": "a"}), 0))
    frame[24] = 1  # snappy
    with pytest.raises(ProtocolError, match="not negotiated"):
        parse_message(bytes(frame))


def test_op_compressed_size_mismatch_closes():
    inner = op_msg_frame({"ping": 1, "$db": "a"})
    frame = bytearray(compressed_frame(inner, 2))
    frame[20:24] = struct.pack("<i", len(inner) - 16 - 1)  # claims one byte less than it inflates to
    with pytest.raises(ProtocolError):
        parse_message(bytes(frame))


def test_op_compressed_bad_zlib_closes():
    inner = op_msg_frame({"ping": 1, "$db": "a"})
    payload = struct.pack("<iiB", codec.OP_MSG, len(inner) - 16, 2) + b"not zlib at all"
    with pytest.raises(ProtocolError, match="zlib"):
        parse_message(header(16 + len(payload), op_code=codec.OP_COMPRESSED) + payload)


def test_op_compressed_zlib_bomb_is_refused_without_inflating_it():
    bomb = zlib.compress(b"\x00" * (MAX_MESSAGE_SIZE + 1))
    payload = struct.pack("<iiB", codec.OP_MSG, MAX_MESSAGE_SIZE + 1, 2) + bomb
    with pytest.raises(ProtocolError, match="uncompressedSize"):
        parse_message(header(16 + len(payload), op_code=codec.OP_COMPRESSED) + payload)


def test_op_compressed_nested_closes():
    inner = compressed_frame(op_msg_frame({"ping": 1, "$db": "a"}), 0)
    with pytest.raises(ProtocolError, match="inside OP_COMPRESSED"):
        parse_message(compressed_frame(inner, 0))


# replies --------------------------------------------------------------------------------------
def test_encode_op_msg_reply_round_trips():
    frame = encode_op_msg(31, {"ok": 1.0, "n": bson.Int64(2)}, request_id=4)
    length, request_id, response_to, op_code = HEADER.unpack_from(frame)
    assert (length, request_id, response_to, op_code) == (len(frame), 4, 31, codec.OP_MSG)
    assert frame[16:21] == b"\x00" * 5
    assert bson.decode(frame[21:]) == {"ok": 1.0, "n": 2}
    # A reply parses as a message too (markd could talk to itself).
    assert parsed_msg(frame).error is None


def test_encode_op_reply():
    frame = encode_op_reply(8, {"ismaster": True, "ok": 1.0})
    length, _, response_to, op_code = HEADER.unpack_from(frame)
    assert (length, response_to, op_code) == (len(frame), 8, codec.OP_REPLY)
    _flags, cursor_id, starting_from, number_returned = struct.unpack_from("<iqii", frame, 16)
    assert (cursor_id, starting_from, number_returned) == (0, 0, 1)
    assert bson.decode(frame[36:]) == {"ismaster": True, "ok": 1.0}


def test_command_error_reply_shape():
    error = CommandError(282, "OP_MSG checksum does not match contents")
    assert error.to_reply()["codeName"] == "Location282"
    assert CommandError(59, "x").to_reply() == {"ok": 0.0, "errmsg": "x", "code": 59, "codeName": "CommandNotFound"}


def test_dates_outside_pythons_range_are_valid_bson():
    from bson.datetime_ms import DatetimeMS

    far = {"d": DatetimeMS(2**62), "e": DatetimeMS(-(2**62))}
    message = parsed_msg(op_msg_frame({"find": "c", "filter": far, "$db": "db"},
                                      sequences=[("documents", [far])]))
    assert message.error is None
    assert isinstance(parse_message(op_query_frame({"ismaster": 1, **far})), OpQuery)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda k: "\x00" not in k and k != "$db"),
                                st.one_of(st.integers(-(2**31), 2**31 - 1), st.text(max_size=20)), max_size=4),
                min_size=1, max_size=5),
       st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_frame_reader_is_indifferent_to_how_the_stream_is_cut(documents, cuts):
    frames = [op_msg_frame({"ping": 1, **doc, "$db": "a"}, request_id=i) for i, doc in enumerate(documents)]
    stream = b"".join(frames)
    reader = FrameReader()
    out: list[bytes] = []
    offset = 0
    for size in itertools.cycle(cuts):
        if offset >= len(stream):
            break
        out += reader.feed(stream[offset : offset + size])
        offset += size
    assert out == frames and reader.pending == 0
    for frame, doc in zip(out, documents, strict=True):
        assert parsed_msg(frame).command == {"ping": 1, **doc, "$db": "a"}
