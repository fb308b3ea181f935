"""BSON bytes written and read by this package alone, so duplicate keys survive and the oracle shares no codec.

`Doc` is an ordered list of (key, value) pairs: unlike a dict it can hold a key twice, which is how a
hostile client writes `{filter: A, filter: B}`.  `encode` writes Docs, dicts, lists and scalars (scalars
through pymongo's `bson`, which never sees a container, so it cannot drop a duplicate).  `walk` reads raw
BSON element by element without building dicts: the oracle looks at every byte of a reply that way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import bson

_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")


class Doc:
    """An ordered BSON document that may repeat a key."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]] | None = None) -> None:
        self.pairs = list(pairs or [])

    @classmethod
    def of(cls, *pairs: tuple[str, Any]) -> Doc:
        return cls(list(pairs))

    def items(self) -> list[tuple[str, Any]]:
        return list(self.pairs)

    def keys(self) -> list[str]:
        return [key for key, _ in self.pairs]

    def get(self, key: str, default: Any = None) -> Any:
        for name, value in self.pairs:
            if name == key:
                return value
        return default

    def __repr__(self) -> str:
        return "Doc(" + ", ".join(f"{k!r}: {v!r}" for k, v in self.pairs) + ")"


def pairs_of(document: Mapping[str, Any] | Doc) -> list[tuple[str, Any]]:
    return document.items() if isinstance(document, Doc) else list(document.items())


def _cstring(text: str) -> bytes:
    data = text.encode("utf-8")
    if b"\x00" in data:
        raise ValueError("a BSON key cannot hold NUL")
    return data + b"\x00"


def _element(key: str, value: Any) -> bytes:
    if isinstance(value, (Doc, dict)):
        return b"\x03" + _cstring(key) + encode(value)
    if isinstance(value, (list, tuple)):
        return b"\x04" + _cstring(key) + encode(Doc([(str(i), item) for i, item in enumerate(value)]))
    scalar = bson.encode({"k": value})  # pymongo writes one scalar: type byte, "k\0", value
    return scalar[4:5] + _cstring(key) + scalar[7:-1]


def encode(document: Mapping[str, Any] | Doc) -> bytes:
    """BSON bytes of `document`, every pair in order, duplicates kept."""
    body = b"".join(_element(key, value) for key, value in pairs_of(document))
    return _INT32.pack(len(body) + 5) + body + b"\x00"


def has_duplicates(document: Any) -> bool:
    """Whether any document in the tree repeats a key."""
    if isinstance(document, (Doc, dict)):
        keys = [key for key, _ in pairs_of(document)]
        return len(keys) != len(set(keys)) or any(has_duplicates(v) for _, v in pairs_of(document))
    if isinstance(document, (list, tuple)):
        return any(has_duplicates(v) for v in document)
    return False


# ------------------------------------------------------------------------------------------------
# Reading: every element of raw BSON, with its path, without building a dict
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Element:
    """One element of a document: where it is, its type byte, its key, and its decoded scalar (if any)."""

    path: tuple[str, ...]
    kind: int
    key: str
    value: Any  # str/int/float/bytes/...: what the oracle compares; None for containers
    start: int  # offset of the value's bytes in the buffer
    end: int
    subtype: int = -1  # binary subtype


class BSONError(ValueError):
    pass


def _cstr(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\x00", offset)
    return data[offset:end].decode("utf-8", errors="replace"), end + 1


def walk(data: bytes, offset: int = 0, path: tuple[str, ...] = ()) -> Iterator[Element]:
    """Every element of the document at `offset` and of the documents nested in it, depth first."""
    size = _INT32.unpack_from(data, offset)[0]
    end = offset + size - 1
    if size < 5 or end >= len(data) or data[end] != 0:
        raise BSONError(f"bad document length at {offset}")
    pos = offset + 4
    while pos < end:
        kind = data[pos]
        key, pos = _cstr(data, pos + 1)
        here = (*path, key)
        if kind == 0x01:
            yield Element(here, kind, key, _DOUBLE.unpack_from(data, pos)[0], pos, pos + 8)
            pos += 8
        elif kind in (0x02, 0x0D, 0x0E):
            length = _INT32.unpack_from(data, pos)[0]
            text = data[pos + 4 : pos + 3 + length].decode("utf-8", errors="replace")
            yield Element(here, kind, key, text, pos, pos + 4 + length)
            pos += 4 + length
        elif kind in (0x03, 0x04):
            length = _INT32.unpack_from(data, pos)[0]
            yield Element(here, kind, key, None, pos, pos + length)
            yield from walk(data, pos, here)
            pos += length
        elif kind == 0x05:
            length = _INT32.unpack_from(data, pos)[0]
            subtype = data[pos + 4]
            payload = data[pos + 5 : pos + 5 + length]
            yield Element(here, kind, key, payload, pos + 5, pos + 5 + length, subtype)
            pos += 5 + length
        elif kind in (0x06, 0x0A, 0x7F, 0xFF):
            yield Element(here, kind, key, None, pos, pos)
        elif kind == 0x07:
            yield Element(here, kind, key, data[pos : pos + 12], pos, pos + 12)
            pos += 12
        elif kind == 0x08:
            yield Element(here, kind, key, data[pos] != 0, pos, pos + 1)
            pos += 1
        elif kind in (0x09, 0x12):
            yield Element(here, kind, key, _INT64.unpack_from(data, pos)[0], pos, pos + 8)
            pos += 8
        elif kind == 0x0B:
            pattern, after = _cstr(data, pos)
            options, after = _cstr(data, after)
            yield Element(here, kind, key, pattern + "/" + options, pos, after)
            pos = after
        elif kind == 0x0C:
            length = _INT32.unpack_from(data, pos)[0]
            namespace = data[pos + 4 : pos + 3 + length].decode("utf-8", errors="replace")
            yield Element(here, kind, key, namespace, pos, pos + 4 + length + 12)
            pos += 4 + length + 12
        elif kind == 0x0F:
            total = _INT32.unpack_from(data, pos)[0]
            length = _INT32.unpack_from(data, pos + 4)[0]
            code = data[pos + 8 : pos + 7 + length].decode("utf-8", errors="replace")
            yield Element(here, kind, key, code, pos, pos + total)
            yield from walk(data, pos + 8 + length, here)
            pos += total
        elif kind == 0x10:
            yield Element(here, kind, key, _INT32.unpack_from(data, pos)[0], pos, pos + 4)
            pos += 4
        elif kind == 0x11:
            yield Element(here, kind, key, None, pos, pos + 8)
            pos += 8
        elif kind == 0x13:
            yield Element(here, kind, key, data[pos : pos + 16], pos, pos + 16)
            pos += 16
        else:
            raise BSONError(f"unknown BSON type {kind:#x} at {pos}")
    if pos != end:
        raise BSONError("document elements overrun its length")


def top_level_keys(data: bytes) -> list[str]:
    """The keys of the outermost document, in order, duplicates kept."""
    return [element.key for element in walk(data) if len(element.path) == 1]


def sub_document(data: bytes, key: str) -> bytes | None:
    """The raw bytes of the first top-level embedded document named `key`."""
    for element in walk(data):
        if len(element.path) == 1 and element.key == key and element.kind == 0x03:
            return data[element.start : element.end]
    return None


def has_duplicates_raw(data: bytes) -> bool:
    """Whether any document in the raw bytes repeats a key (array keys are not looked at)."""
    seen: dict[tuple[str, ...], set[str]] = {}
    arrays: set[tuple[str, ...]] = set()
    for element in walk(data):
        parent = element.path[:-1]
        if element.kind == 0x04:
            arrays.add(element.path)
        if parent in arrays:
            continue
        keys = seen.setdefault(parent, set())
        if element.key in keys:
            return True
        keys.add(element.key)
    return False
