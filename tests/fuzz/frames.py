"""Real frames as pymongo sends them, and hypothesis strategies that mutate them.

The seeds are built with pymongo's own framing (`pymongo.message._op_msg`), so the document
sequences, flag bits and `$db` placement are the driver's, not ours.  The legacy OP_QUERY
handshake is framed by hand exactly as pymongo's `_query` does (pymongo exposes it only in C).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import bson
from bson.codec_options import CodecOptions
from hypothesis import strategies as st

from markd.wire.crc32c import crc32c

OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

_HEADER = struct.Struct("<iiii")

HANDSHAKE = {
    "ismaster": 1,
    "helloOk": True,
    "client": {
        "driver": {"name": "PyMongo", "version": "4.20.1"},
        "os": {"type": "Linux", "name": "Linux", "architecture": "x86_64", "version": "6.1"},
        "platform": "CPython 3.11.7.final.0",
    },
    "compression": [],
}


def op_msg(command: dict[str, Any], database: str, request_id: int = 7, flags: int = 0) -> bytes:
    """An OP_MSG as pymongo frames it (kind-1 sequences for insert/update/delete)."""
    command = dict(command)
    try:
        from pymongo import message

        frame: bytes = message._op_msg(flags, command, database, None, CodecOptions())[1]
        return _HEADER.pack(len(frame), request_id, 0, OP_MSG) + frame[16:]
    except Exception:  # pragma: no cover - pymongo moved its internals: frame it ourselves
        command["$db"] = database
        body = struct.pack("<I", flags) + b"\x00" + bson.encode(command)
        return _HEADER.pack(16 + len(body), request_id, 0, OP_MSG) + body


def with_checksum(frame: bytes) -> bytes:
    """The same OP_MSG with flag bit 0 set and a CRC-32C over the whole message appended."""
    length, request_id, response_to, op_code = _HEADER.unpack_from(frame)
    flags = struct.unpack_from("<I", frame, 16)[0] | 1
    unsigned = _HEADER.pack(length + 4, request_id, response_to, op_code) + struct.pack("<I", flags) + frame[20:]
    return unsigned + struct.pack("<I", crc32c(unsigned))


def op_query(query: dict[str, Any], collection: str = "admin.$cmd", request_id: int = 3) -> bytes:
    body = struct.pack("<i", 0) + collection.encode() + b"\x00" + struct.pack("<ii", 0, -1) + bson.encode(query)
    return _HEADER.pack(16 + len(body), request_id, 0, OP_QUERY) + body


def op_compressed(frame: bytes, compressor: int = 2) -> bytes:
    """Wrap a frame in OP_COMPRESSED (2 = zlib, 0 = noop)."""
    _length, request_id, response_to, op_code = _HEADER.unpack_from(frame)
    payload = frame[16:]
    data = zlib.compress(payload) if compressor == 2 else payload
    body = struct.pack("<iiB", op_code, len(payload), compressor) + data
    return _HEADER.pack(16 + len(body), request_id, response_to, OP_COMPRESSED) + body


def seed_frames() -> dict[str, bytes]:
    """The frames every mutation starts from."""
    insert = {"insert": "coll", "documents": [{"_id": 1, "ssn": "123-45-6789"}, {"_id": 2, "n": bson.Int64(5)}],
              "ordered": True, "jsonSchema": {"bsonType": "object"}, "isRemoteSchema": False}
    update = {"update": "coll", "updates": [{"q": {"a": 1}, "u": {"$set": {"b": 2}}, "multi": False}]}
    delete = {"delete": "coll", "deletes": [{"q": {"a": {"$in": [1, 2]}}, "limit": 0}]}
    find = {"find": "coll", "filter": {"ssn": "x"}, "jsonSchema": {}, "isRemoteSchema": False}
    frames = {
        "op_query_ismaster": op_query(HANDSHAKE),
        "op_msg_hello": op_msg({"hello": 1}, "admin"),
        "op_msg_insert_seq": op_msg(insert, "db"),
        "op_msg_update_seq": op_msg(update, "db"),
        "op_msg_delete_seq": op_msg(delete, "db"),
        "op_msg_find": op_msg(find, "db"),
    }
    frames["op_msg_hello_checksum"] = with_checksum(frames["op_msg_hello"])
    frames["op_msg_insert_seq_checksum"] = with_checksum(frames["op_msg_insert_seq"])
    frames["op_compressed_zlib_hello"] = op_compressed(frames["op_msg_hello"], 2)
    frames["op_compressed_noop_insert"] = op_compressed(frames["op_msg_insert_seq"], 0)
    return frames


SEEDS = seed_frames()
SEED_NAMES = sorted(SEEDS)

_INTERESTING_INT32 = [0, 1, 4, 5, 15, 16, 17, 20, 21, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 48_000_000, 48_000_001,
                      16 * 1024 * 1024, 2**31 - 1, -1, -(2**31)]


def _set_int32(frame: bytearray, offset: int, value: int) -> None:
    if 0 <= offset <= len(frame) - 4:
        frame[offset : offset + 4] = struct.pack("<i", value if value < 2**31 else value - 2**32)


def _fix_length(frame: bytearray) -> None:
    _set_int32(frame, 0, len(frame))


@st.composite
def mutated_frame(draw: st.DrawFn, fix_length: bool | None = None) -> bytes:
    """A seed frame with a few byte-level mutations; by default the header length is re-fixed half the time."""
    frame = bytearray(SEEDS[draw(st.sampled_from(SEED_NAMES))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "int32", "truncate", "extend", "insert", "delete", "splice"]))
        size = len(frame)
        if size == 0:
            frame += b"\x00"
            size = 1
        at = draw(st.integers(0, size - 1))
        if kind == "flip":
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            frame[at] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0x7F, 0x80, 0xFF, 0x0E, 0x06, 0x0C]))
        elif kind == "int32":
            # Length fields live at 0 (header), 16/20/21 (flags, section) and inside the BSON.
            offset = draw(st.one_of(st.sampled_from([0, 16, 20, 21, 25]), st.integers(0, max(size - 4, 0))))
            _set_int32(frame, offset, draw(st.sampled_from(_INTERESTING_INT32)))
        elif kind == "truncate":
            del frame[draw(st.integers(0, size)) :]
        elif kind == "extend":
            frame += draw(st.binary(min_size=1, max_size=64))
        elif kind == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del frame[at : at + draw(st.integers(1, 16))]
        else:  # splice a piece of another seed in
            other = SEEDS[draw(st.sampled_from(SEED_NAMES))]
            start = draw(st.integers(0, len(other) - 1))
            frame[at:at] = other[start : start + draw(st.integers(1, 32))]
    if fix_length if fix_length is not None else draw(st.booleans()):
        _fix_length(frame)
    return bytes(frame)


def random_frame() -> st.SearchStrategy[bytes]:
    """A header with a plausible length and an opcode markd knows, then random bytes."""
    return st.builds(
        lambda op, body, request_id: _HEADER.pack(16 + len(body), request_id, 0, op) + body,
        st.sampled_from([OP_QUERY, OP_MSG, OP_COMPRESSED, 1, 2004, 0, -1]),
        st.binary(max_size=256),
        st.integers(-(2**31), 2**31 - 1),
    )
