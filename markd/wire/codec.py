"""Frames, OP_MSG, OP_QUERY and OP_COMPRESSED: pure functions of bytes.

`FrameReader` cuts a byte stream into frames; `parse_message` turns one frame into a message;
`encode_op_msg` / `encode_op_reply` turn a reply document into a frame.  Nothing here touches a
socket, so every rule is testable with byte strings.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

import bson
from bson import Int64
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON

from markd import bsonvalues, limits
from markd.cache import ByteLRU
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


# A plain class, not a dataclass: creating one costs ~4 M instructions at start-up (issue 15).
class OpMsg:
    """An OP_MSG."""

    __slots__ = ("command", "error", "flags", "request_id", "sequences")

    def __init__(self, request_id: int, flags: int, command: dict[str, Any], error: CommandError | None = None,
                 sequences: tuple[str, ...] = ()) -> None:
        self.request_id = request_id
        self.flags = flags
        # The body with every kind-1 document sequence merged in under its identifier, decoded once with
        # exact BSON types (markd.bsonvalues); {} when `error` is set.
        self.command = command
        # Set when the frame was readable but its content is not: reply with this error.
        self.error = error
        self.sequences = sequences

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & FLAG_MORE_TO_COME)

    def __repr__(self) -> str:
        return (f"OpMsg(request_id={self.request_id}, flags={self.flags}, command={self.command!r}, "
                f"error={self.error!r}, sequences={self.sequences!r})")


class OpQuery:
    """A legacy OP_QUERY (a handshake)."""

    __slots__ = ("collection", "error", "flags", "query", "request_id")

    def __init__(self, request_id: int, flags: int, collection: str, query: bytes,
                 error: CommandError | None = None) -> None:
        self.request_id = request_id
        self.flags = flags
        self.collection = collection
        self.query = query
        self.error = error

    def __repr__(self) -> str:
        return f"OpQuery(request_id={self.request_id}, collection={self.collection!r})"


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
    body: tuple[int, int] | None = None  # (start, end) in the frame
    sequences: list[tuple[str, int, int, list[tuple[int, int, int]]]] = []  # (identifier, start, end, long documents)
    offset = HEADER_SIZE + 4
    try:
        while offset < end:
            kind = frame[offset]
            offset += 1
            if kind == 0:
                if body is not None:
                    raise CommandError(40430, "Multiple body sections in message")
                size = _bson_size(frame, offset, end)
                body = (offset, offset + size)
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
                # (index, start, end) of the documents long enough to be nested too deep
                long_documents: list[tuple[int, int, int]] = []
                count = 0
                while pos < seq_end:  # the documents must tile the section exactly
                    document_size = _bson_size(frame, pos, seq_end)
                    if document_size >= limits.MIN_BYTES_TOO_DEEP:
                        long_documents.append((count, pos, pos + document_size))
                    pos += document_size
                    count += 1
                sequences.append((name, first, seq_end, long_documents))
                offset = seq_end
            else:
                raise CommandError(40432, f"Unknown section kind {kind}")
        if body is None:
            raise CommandError(40587, "OP_MSG messages must have a body")
        # One decode per section, which also validates every nested document and string; then
        # mongod's depth limit, per document as mongod reads them, before anything recurses into them.
        command = _decode_body(frame, *body)
        seen: set[str] = set()
        for name, first, seq_end, long_documents in sequences:
            if name in seen:
                raise CommandError(40431, f"Duplicate document sequence: {name}")
            seen.add(name)
            if "." in name or name in command:
                raise CommandError(40433, f"Duplicate field between body and document sequence {name}")
            documents = bsonvalues.decode_sequence(frame[first:seq_end])
            for index, document_start, document_end in long_documents:
                if limits.could_be_too_deep(frame, document_start, document_end):
                    limits.check_bson_depth(documents[index])
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
    return OpMsg(request_id, flags, command, None, tuple(name for name, *_ in sequences))


# -- the body: encryption rules kept with their exact bytes ----------------------------------------------

# Command fields that carry encryption rules (also inside `explain`, and `nsInfo`'s entries for bulkWrite).
# Each is decoded once per distinct value and kept as an ExactDocument: the parsed-rules caches are keyed
# by the bytes the client sent, and a cached schema is neither decoded nor re-encoded again.
RULE_FIELDS = frozenset({"jsonSchema", "encryptionInformation", "csfleEncryptionSchemas"})
_RULE_FIELD_NAMES = {name.encode(): name for name in RULE_FIELDS}
# Decoded rules by a fingerprint of their bytes (length, first and last bytes); a hit is confirmed by
# comparing the whole bytes, so a lookup costs a memcmp however large the rules are.
_FINGERPRINT_BYTES = 64
RULES_COST = 4  # a decoded document costs about this many times its bytes


class _DecodedRules:
    """A rules document decoded from `raw`; `nesting` is limits.nesting of it."""

    __slots__ = ("document", "nesting", "raw")  # a plain class: a dataclass costs start-up time

    def __init__(self, raw: bytes, document: bsonvalues.ExactDocument, nesting: int) -> None:
        self.raw, self.document, self.nesting = raw, document, nesting


_RULES: ByteLRU[tuple[int, bytes, bytes], _DecodedRules] = ByteLRU()


class _DecodedBody:
    """A body decoded from `raw`: `command` is never handed out, callers get a copy."""

    __slots__ = ("command", "raw")

    def __init__(self, raw: bytes, command: dict[str, Any]) -> None:
        self.raw, self.command = raw, command


# Bodies that hold nothing but scalars and rules (an insert's: its documents come in a sequence) are the
# same request after request: decoded once, then copied (the copy is the command; nothing in it can change).
_SCALARS = frozenset({str, int, float, bool, type(None), Int64})
_BODIES: ByteLRU[tuple[int, bytes, bytes], _DecodedBody] = ByteLRU()


def _decode_body(frame: bytes, start: int, end: int) -> dict[str, Any]:
    """The body section, exactly typed and checked for depth; rules fields as ExactDocuments."""
    if b"Schema" in frame or b"encryptionInformation" in frame:  # jsonSchema, csfleEncryptionSchemas
        key = _fingerprint(frame, start, end)
        cached = _BODIES.get(key)
        if cached is not None and frame.startswith(cached.raw, start):
            return dict(cached.command)
        try:
            kept = _decode_keeping_rules(frame, start, end, 0)
        except (ValueError, InvalidBSON, struct.error, IndexError, RecursionError):
            kept = None  # malformed somewhere: the whole body is decoded below, for the error it gives
        if kept is not None:
            command, too_deep = kept
            if too_deep:
                raise limits.too_deep_error()
            if all(type(value) in _SCALARS or type(value) is bsonvalues.ExactDocument for value in command.values()):
                _BODIES.put(key, _DecodedBody(frame[start:end], command), RULES_COST * (end - start))
                return dict(command)
            return command
    command = bsonvalues.decode(frame[start:end])
    if limits.could_be_too_deep(frame, start, end):
        limits.check_bson_depth(command)
    return command


def _decode_keeping_rules(data: bytes, start: int, end: int, level: int) -> tuple[dict[str, Any], bool] | None:
    """(the document at data[start:end], whether it nests too deep), its rules fields kept exact; None when
    it holds none, or something (a repeated name, a malformed element) is for the plain decode to report."""
    elements = bsonvalues.elements(data, start, end)
    kept: dict[int, tuple[str, Any]] = {}  # element index -> (name, value)
    too_deep = False
    for index, (name, kind, _element_start, value_start, value_end) in enumerate(elements):
        if kind == 0x03 and name in _RULE_FIELD_NAMES:
            rules = _decoded_rules(data, value_start, value_end)
            if rules is None:
                return None
            kept[index] = (_RULE_FIELD_NAMES[name], rules.document)
            too_deep = too_deep or level + 1 + rules.nesting > limits.MAX_BSON_DEPTH
        elif kind == 0x03 and name == b"explain" and level == 0:
            inner = _decode_keeping_rules(data, value_start, value_end, level + 1)
            if inner is not None:
                kept[index] = ("explain", inner[0])
                too_deep = too_deep or inner[1]
        elif kind == 0x04 and name == b"nsInfo" and level == 0:
            entries = _ns_info(data, value_start, value_end, level + 1)
            if entries is not None:
                kept[index] = ("nsInfo", entries[0])
                too_deep = too_deep or entries[1]
    if not kept:
        return None
    rest = b"".join([data[element[2] : element[4]] for index, element in enumerate(elements) if index not in kept])
    rest_document = _INT32.pack(len(rest) + 5) + rest + b"\x00"
    decoded = bsonvalues.decode(rest_document)
    names = [name for name, _ in kept.values()]
    if type(decoded) is not dict or len(set(names)) != len(names) or any(name in decoded for name in names):
        return None  # a name given twice: DuplicateKeys are the plain decode's
    if limits.could_be_too_deep(rest_document, 0, len(rest_document)):
        too_deep = too_deep or limits.exceeds_depth(decoded, level)
    # The document in its own order: kept values where they were, the rest between them.
    command: dict[str, Any] = {}
    others = iter(decoded.items())
    for index in range(len(elements)):
        name, value = kept[index] if index in kept else next(others)
        command[name] = value
    return command, too_deep


def _ns_info(data: bytes, start: int, end: int, level: int) -> tuple[list[Any], bool] | None:
    """bulkWrite's nsInfo (an array at `level`) with each entry's encryptionInformation kept exact."""
    entries = bsonvalues.elements(data, start, end)
    if any(kind != 0x03 or name != str(index).encode() for index, (name, kind, *_) in enumerate(entries)):
        return None
    decoded: list[Any] = []
    kept_any = too_deep = False
    for _name, _kind, _element_start, value_start, value_end in entries:
        entry = _decode_keeping_rules(data, value_start, value_end, level + 1)
        if entry is None:
            plain = bsonvalues.decode(data[value_start:value_end])
            if type(plain) is not dict:
                return None
            entry = (plain, limits.exceeds_depth(plain, level + 1))
        else:
            kept_any = True
        decoded.append(entry[0])
        too_deep = too_deep or entry[1]
    return (decoded, too_deep) if kept_any else None


def _fingerprint(data: bytes, start: int, end: int) -> tuple[int, bytes, bytes]:
    size = end - start
    if size <= 2 * _FINGERPRINT_BYTES:
        return (size, data[start:end], b"")
    return (size, data[start : start + _FINGERPRINT_BYTES], data[end - _FINGERPRINT_BYTES : end])


def _decoded_rules(data: bytes, start: int, end: int) -> _DecodedRules | None:
    """The rules document at data[start:end], decoded once per distinct bytes; None if it repeats a name."""
    size = end - start
    key = _fingerprint(data, start, end)
    cached = _RULES.get(key)
    if cached is not None and data.startswith(cached.raw, start):
        return cached
    raw = data[start:end]
    decoded = bsonvalues.decode(raw)
    if type(decoded) is not dict:
        return None  # DuplicateKeys: refused by the rules' parser, from the plain decode
    rules = _DecodedRules(raw, bsonvalues.exact_document(decoded, raw), limits.nesting(decoded))
    _RULES.put(key, rules, RULES_COST * size)
    return rules


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
