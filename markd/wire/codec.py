"""Frames, OP_MSG, OP_QUERY and OP_COMPRESSED: pure functions of bytes.

`FrameReader` cuts a byte stream into frames; `parse_message` turns one frame into a message;
`encode_op_msg` / `encode_op_reply` turn a reply document into a frame.  Nothing here touches a
socket, so every rule is testable with byte strings.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON

from markd import bsonvalues, limits
from markd.errors import CommandError
from markd.wire.crc32c import crc32c

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

MAX_MESSAGE_SIZE = 48_000_000
MAX_BSON_SIZE = 16 * 1024 * 1024
HEADER_SIZE = 16

FLAG_CHECKSUM_PRESENT = 1 << 0
FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16
_KNOWN_FLAGS = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME | FLAG_EXHAUST_ALLOWED
# Bits 0-15 are "required": a receiver must reject a message with one it does not know.
_REQUIRED_BITS = 0xFFFF

_HEADER = struct.Struct("<iiii")
_INT32 = struct.Struct("<i")
_UINT32 = struct.Struct("<I")
_OP_REPLY_PREFIX = struct.Struct("<iqii")

# Validation only: dates stay integers, so a date outside Python's datetime range (legal BSON, e.g. a
# range index's max) is not mistaken for a malformed document.
_VALIDATE = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS)

_COMPRESSOR_NOOP = 0
_COMPRESSOR_ZLIB = 2


class ProtocolError(Exception):
    """The stream cannot be framed or parsed: close this connection (and only it)."""


@dataclass(frozen=True, slots=True)
class OpMsg:
    request_id: int
    flags: int
    # The body with every kind-1 document sequence merged in under its identifier, decoded once with
    # exact BSON types (markd.bsonvalues); {} when `error` is set.
    command: dict[str, Any]
    # Set when the frame was readable but its content is not: reply with this error.
    error: CommandError | None = None
    sequences: tuple[str, ...] = field(default=())

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & FLAG_MORE_TO_COME)


@dataclass(frozen=True, slots=True)
class OpQuery:
    request_id: int
    flags: int
    collection: str
    query: bytes
    error: CommandError | None = None


Message = OpMsg | OpQuery


def read_header(header: bytes | memoryview) -> tuple[int, int, int, int]:
    """(messageLength, requestID, responseTo, opCode); rejects lengths that cannot be a message."""
    length, request_id, response_to, op_code = _HEADER.unpack_from(header)
    if length < HEADER_SIZE or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(
            f"recv(): message msgLen {length} is invalid. Min {HEADER_SIZE} Max: {MAX_MESSAGE_SIZE}"
        )
    return length, request_id, response_to, op_code


_COMPRESSED_PREFIX = struct.Struct("<iiB")  # originalOpcode, uncompressedSize, compressorId


def frame_cost(header: bytes | bytearray | memoryview) -> int | None:
    """The memory a frame will take, from its first bytes: its length, and for OP_COMPRESSED also its
    declared uncompressed size (both exist while it inflates). None until enough bytes are there.
    ProtocolError for a declared size no message may have, before a byte of it is inflated."""
    if len(header) < HEADER_SIZE:
        return None
    length, _, _, op_code = read_header(header[:HEADER_SIZE])
    if op_code != OP_COMPRESSED:
        return length
    if len(header) < HEADER_SIZE + _COMPRESSED_PREFIX.size:
        return None if length >= HEADER_SIZE + _COMPRESSED_PREFIX.size else length
    uncompressed_size = _COMPRESSED_PREFIX.unpack_from(header, HEADER_SIZE)[1]
    if uncompressed_size < 0 or uncompressed_size + HEADER_SIZE > MAX_MESSAGE_SIZE:
        raise ProtocolError("OP_COMPRESSED uncompressedSize is invalid")
    return length + HEADER_SIZE + uncompressed_size


class FrameReader:
    """Accumulates stream bytes and hands out whole frames."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)

    def head_cost(self) -> int | None:
        """`frame_cost` of the frame being received, once its header is in."""
        return frame_cost(self._buffer[: HEADER_SIZE + _COMPRESSED_PREFIX.size]) if self._buffer else None

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        # The common case, one whole request in one read with nothing pending: no copy at all.
        if not buffer and len(data) >= HEADER_SIZE and read_header(data)[0] == len(data):
            return [data]
        buffer += data
        frames: list[bytes] = []
        start = 0
        end = len(buffer)
        with memoryview(buffer) as view:
            while end - start >= HEADER_SIZE:
                length = read_header(view[start : start + HEADER_SIZE])[0]
                if end - start < length:
                    break
                frames.append(bytes(view[start : start + length]))
                start += length
        if start:
            del buffer[:start]
        return frames


def _cstring(data: bytes, offset: int, end: int) -> tuple[str, int]:
    nul = data.find(b"\x00", offset, end)
    if nul < 0:
        raise ValueError("unterminated cstring")
    return data[offset:nul].decode("utf-8"), nul + 1


def _bson_size(data: bytes, offset: int, end: int) -> int:
    if end - offset < 5:
        raise InvalidBSON("truncated BSON document")
    size = _INT32.unpack_from(data, offset)[0]
    if size < 5 or offset + size > end or data[offset + size - 1] != 0:
        raise InvalidBSON("invalid BSON document length")
    if size > MAX_BSON_SIZE + 16 * 1024:
        raise InvalidBSON("BSON document too large")
    return size


def _parse_op_msg(frame: bytes, request_id: int) -> OpMsg:
    end = len(frame)
    if end < HEADER_SIZE + 5:
        raise ProtocolError("OP_MSG too short")
    flags = _UINT32.unpack_from(frame, HEADER_SIZE)[0]
    if flags & _REQUIRED_BITS & ~_KNOWN_FLAGS:
        return OpMsg(request_id, flags, {}, CommandError(
            223, f"Message contains illegal flags value: Flag_{flags:032b}", "IllegalOpMsgFlag"))
    if flags & FLAG_CHECKSUM_PRESENT:
        if end < HEADER_SIZE + 4 + 4 + 1:
            raise ProtocolError("OP_MSG too short for a checksum")
        end -= 4
        expected = _UINT32.unpack_from(frame, end)[0]
        if crc32c(memoryview(frame)[:end]) != expected:
            return OpMsg(request_id, flags, {}, CommandError(282, "OP_MSG checksum does not match contents"))
    body: memoryview | None = None
    sequences: list[tuple[str, memoryview]] = []
    view = memoryview(frame)
    offset = HEADER_SIZE + 4
    try:
        while offset < end:
            kind = frame[offset]
            offset += 1
            if kind == 0:
                if body is not None:
                    raise CommandError(40430, "Multiple body sections in message")
                size = _bson_size(frame, offset, end)
                body = view[offset : offset + size]
                offset += size
            elif kind == 1:
                if end - offset < 4:
                    raise ValueError("truncated document sequence")
                size = _INT32.unpack_from(frame, offset)[0]
                seq_end = offset + size
                if size < 5 or seq_end > end:
                    raise ValueError("invalid document sequence length")
                name, pos = _cstring(frame, offset + 4, seq_end)
                first = pos
                while pos < seq_end:  # the documents must tile the section exactly
                    pos += _bson_size(frame, pos, seq_end)
                sequences.append((name, view[first:seq_end]))
                offset = seq_end
            else:
                raise CommandError(40432, f"Unknown section kind {kind}")
        if body is None:
            raise CommandError(40587, "OP_MSG messages must have a body")
        # One decode per section, which also validates every nested document and string; then
        # mongod's depth limit, per document as mongod reads them, before anything recurses into them.
        command = bsonvalues.decode(body)
        limits.check_bson_depth(command, len(body))
        seen: set[str] = set()
        for name, section in sequences:
            if name in seen:
                raise CommandError(40431, f"Duplicate document sequence: {name}")
            seen.add(name)
            if "." in name or name in command:
                raise CommandError(40433, f"Duplicate field between body and document sequence {name}")
            documents = bsonvalues.decode_sequence(section)
            if len(section) >= limits.MIN_BYTES_TOO_DEEP:
                for document in documents:
                    limits.check_bson_depth(document)
            command[name] = documents
            if not bsonvalues.has_duplicates(command) and any(map(bsonvalues.has_duplicates, documents)):
                command = bsonvalues.DuplicateKeys(command, nested=True)
    except CommandError as exc:
        return OpMsg(request_id, flags, {}, exc)
    except (ValueError, InvalidBSON, struct.error, IndexError, RecursionError) as exc:
        if isinstance(exc, RecursionError) or (isinstance(exc, InvalidBSON) and "maximum recursion depth" in str(exc)):
            # pymongo's decoder gives up on nesting deeper than the interpreter's recursion limit.
            return OpMsg(request_id, flags, {}, limits.too_deep_error())
        if not isinstance(exc, InvalidBSON):
            # Sections that do not tile the message: nothing in it can be trusted, so the connection closes.
            raise ProtocolError(f"invalid OP_MSG sections: {type(exc).__name__}") from exc
        return OpMsg(request_id, flags, {}, CommandError(22, str(exc)))
    return OpMsg(request_id, flags, command, None, tuple(name for name, _ in sequences))


def _parse_op_query(frame: bytes, request_id: int) -> OpQuery:
    end = len(frame)
    try:
        flags = _INT32.unpack_from(frame, HEADER_SIZE)[0]
        collection, offset = _cstring(frame, HEADER_SIZE + 4, end)
        offset += 8  # numberToSkip, numberToReturn
        size = _bson_size(frame, offset, end)
        query = frame[offset : offset + size]
        bson.decode(query, _VALIDATE)
    except (ValueError, InvalidBSON, UnicodeDecodeError, struct.error) as exc:
        # The type only: this reason is logged, and a decoder's message may quote the document.
        raise ProtocolError(f"invalid OP_QUERY: {type(exc).__name__}") from exc
    return OpQuery(request_id, flags, collection, query)


def _decompress(frame: bytes) -> bytes:
    if len(frame) < HEADER_SIZE + 9:
        raise ProtocolError("OP_COMPRESSED too short")
    _length, request_id, response_to, _ = _HEADER.unpack_from(frame)
    original_op, uncompressed_size, compressor = struct.unpack_from("<iiB", frame, HEADER_SIZE)
    if uncompressed_size < 0 or uncompressed_size + HEADER_SIZE > MAX_MESSAGE_SIZE:
        raise ProtocolError("OP_COMPRESSED uncompressedSize is invalid")
    payload = frame[HEADER_SIZE + 9 :]
    if compressor == _COMPRESSOR_NOOP:
        data = payload
    elif compressor == _COMPRESSOR_ZLIB:
        try:
            inflater = zlib.decompressobj()
            # Bounded by the declared size, so a zlib bomb costs at most uncompressedSize bytes.
            data = inflater.decompress(payload, uncompressed_size)
        except zlib.error as exc:
            raise ProtocolError(f"OP_COMPRESSED zlib error: {exc}") from exc
        if inflater.unconsumed_tail or not inflater.eof:
            raise ProtocolError("OP_COMPRESSED uncompressedSize does not match the payload")
    else:
        # markd offers no compressor in the handshake, so a client may not use snappy or zstd.
        raise ProtocolError(f"OP_COMPRESSED with compressor {compressor}, which was not negotiated")
    if len(data) != uncompressed_size:
        raise ProtocolError("OP_COMPRESSED uncompressedSize does not match the payload")
    return _HEADER.pack(HEADER_SIZE + len(data), request_id, response_to, original_op) + data


def parse_message(frame: bytes) -> Message:
    """One whole frame to a message; ProtocolError when the connection must be closed."""
    if len(frame) < HEADER_SIZE:
        raise ProtocolError("frame shorter than a message header")
    length, request_id, _, op_code = read_header(frame)
    if length != len(frame):
        raise ProtocolError("messageLength does not match the frame")
    if op_code == OP_COMPRESSED:
        frame = _decompress(frame)
        op_code = _HEADER.unpack_from(frame)[3]
        if op_code == OP_COMPRESSED:
            raise ProtocolError("OP_COMPRESSED inside OP_COMPRESSED")
    if op_code == OP_MSG:
        return _parse_op_msg(frame, request_id)
    if op_code == OP_QUERY:
        return _parse_op_query(frame, request_id)
    raise ProtocolError(f"unsupported opCode {op_code}")


def _document_bytes(document: Mapping[str, Any] | bytes) -> bytes:
    return document if isinstance(document, bytes) else bson.encode(document)


def encode_op_msg(response_to: int, document: Mapping[str, Any] | bytes, request_id: int = 0) -> bytes:
    """An OP_MSG reply frame with one kind-0 section."""
    body = _document_bytes(document)
    length = HEADER_SIZE + 4 + 1 + len(body)
    return _HEADER.pack(length, request_id, response_to, OP_MSG) + b"\x00\x00\x00\x00\x00" + body


def encode_op_reply(response_to: int, document: Mapping[str, Any] | bytes, request_id: int = 0) -> bytes:
    """An OP_REPLY frame (the answer to a legacy OP_QUERY handshake)."""
    body = _document_bytes(document)
    length = HEADER_SIZE + _OP_REPLY_PREFIX.size + len(body)
    return (
        _HEADER.pack(length, request_id, response_to, OP_REPLY)
        + _OP_REPLY_PREFIX.pack(8, 0, 0, 1)  # AwaitCapable, no cursor, from 0, one document
        + body
    )
