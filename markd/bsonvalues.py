"""BSON values that keep their exact type through decode and encode.

pymongo's C codec turns a symbol into `str`, undefined into `None` and a DBPointer into a `DBRef`:
re-encoded, each changes type, and a deterministic ciphertext of it changes with it. `decode` takes
the C path and checks it round-trips; only when it does not does it walk the elements itself and
keep those three as `Symbol`, `Undefined` and `DBPointer`. `encode` likewise takes the C path
unless one of them is present.
"""

from __future__ import annotations

import datetime
import re
import struct
from collections.abc import Mapping
from typing import Any

import bson
from bson import DBRef, Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.binary import Binary, UuidRepresentation
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidBSON, InvalidDocument
from bson.max_key import MaxKey
from bson.min_key import MinKey

CODEC_OPTIONS: CodecOptions = CodecOptions(
    document_class=dict,
    tz_aware=False,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)

_INT32 = struct.Struct("<i")


class Symbol:
    """A BSON symbol (deprecated type 0x0E), kept apart from string."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Symbol) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("symbol", self.value))

    def __repr__(self) -> str:
        return f"Symbol({self.value!r})"


class Undefined:
    """The BSON undefined value (deprecated type 0x06), kept apart from null."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Undefined)

    def __hash__(self) -> int:
        return hash("undefined")

    def __repr__(self) -> str:
        return "Undefined()"


class DBPointer:
    """A BSON DBPointer (deprecated type 0x0C), kept apart from a DBRef document."""

    __slots__ = ("namespace", "oid")

    def __init__(self, namespace: str, oid: ObjectId) -> None:
        self.namespace = namespace
        self.oid = oid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DBPointer) and (other.namespace, other.oid) == (self.namespace, self.oid)

    def __hash__(self) -> int:
        return hash(("dbpointer", self.namespace, self.oid))

    def __repr__(self) -> str:
        return f"DBPointer({self.namespace!r}, {self.oid!r})"


class ExactRegex(Regex):  # type: ignore[type-arg]
    """A regex whose option letters pymongo would reorder, dedupe or drop ("xi", "ii", "q").

    Still a `Regex` (rules that ask `isinstance(value, Regex)` see a regex), but it keeps the option
    bytes the client sent; pymongo's encoder refuses it, so `encode` writes it itself.
    """

    __slots__ = ("options",)
    _type_marker = None  # not 11: pymongo's encoder must not write it with normalized flags

    def __init__(self, pattern: str, options: str) -> None:
        super().__init__(pattern, "".join(letter for letter in options if letter in _REGEX_LETTERS))
        self.options = options

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExactRegex) and (other.pattern, other.options) == (self.pattern, self.options)

    def __hash__(self) -> int:
        return hash(("regex", self.pattern, self.options))

    def __repr__(self) -> str:
        return f"ExactRegex({self.pattern!r}, {self.options!r})"


_REGEX_LETTERS = "ilmsux"  # the letters pymongo reads, in the order it writes them
_REGEX_FLAGS = (("i", re.IGNORECASE), ("l", re.LOCALE), ("m", re.MULTILINE), ("s", re.DOTALL),
                ("u", re.UNICODE), ("x", re.VERBOSE))


def regex_options(value: Regex) -> str:  # type: ignore[type-arg]
    """The option letters of a BSON regex as they go on the wire (pymongo keeps them as `re` flags)."""
    if isinstance(value, ExactRegex):
        return value.options
    if isinstance(value.flags, str):
        return value.flags
    return "".join(letter for letter, flag in _REGEX_FLAGS if value.flags & flag)


class DuplicateKeys(dict):  # type: ignore[type-arg]
    """A decoded document that named a field more than once, or holds one that did.

    BSON allows a name twice in one document; a dict keeps the last value.  The names given twice
    (`duplicates`) and whether a nested document had some (`nested`) are kept, so the analysis can
    refuse what it would otherwise read last-one-wins.
    """

    __slots__ = ("duplicates", "nested")

    def __init__(self, *args: Any, duplicates: tuple[str, ...] = (), nested: bool = False) -> None:
        super().__init__(*args)
        self.duplicates = duplicates
        self.nested = nested


def has_duplicates(document: Any) -> bool:
    """True when `document` (a decoded command) named some field twice, at any depth."""
    return isinstance(document, DuplicateKeys)


def first_duplicate(value: Any, path: str = "") -> str | None:
    """The dotted path of the first name given twice in `value` (array elements add no component)."""
    if isinstance(value, DuplicateKeys):
        if value.duplicates:
            return f"{path}.{value.duplicates[0]}" if path else value.duplicates[0]
        for name, item in value.items():
            found = first_duplicate(item, f"{path}.{name}" if path else name)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = first_duplicate(item, path)
            if found is not None:
                return found
    elif isinstance(value, Code) and value.scope is not None:
        return first_duplicate(value.scope, path)
    return None


def decode(data: bytes | memoryview) -> dict[str, Any]:
    """BSON bytes to a dict whose values re-encode to the same bytes."""
    document = bson.decode(data, CODEC_OPTIONS)
    if bson.encode(document, codec_options=CODEC_OPTIONS) == data:
        return document
    try:
        return _decode_document(bytes(data), 0)
    except (UnicodeDecodeError, ValueError, IndexError, struct.error) as exc:
        # pymongo's decoder skips array keys, so bytes it accepted can still be malformed here.
        raise InvalidBSON(f"invalid BSON: {exc}") from exc


def decode_sequence(data: bytes | memoryview) -> list[dict[str, Any]]:
    """Concatenated BSON documents (an OP_MSG kind-1 section) to dicts, with `decode`'s exactness."""
    documents: list[dict[str, Any]] = bson.decode_all(data, CODEC_OPTIONS)
    encoded = b"".join(bson.encode(document, codec_options=CODEC_OPTIONS) for document in documents)
    if encoded == data:
        return documents
    raw = bytes(data)
    exact: list[dict[str, Any]] = []
    offset = 0
    while offset < len(raw):
        size = _INT32.unpack_from(raw, offset)[0]
        exact.append(decode(raw[offset : offset + size]))
        offset += size
    return exact


def encode(document: Mapping[str, Any]) -> bytes:
    """A document (possibly holding Symbol/Undefined/DBPointer values) to BSON bytes."""
    try:
        return bson.encode(document, codec_options=CODEC_OPTIONS)
    except InvalidDocument:
        return _encode_document(document)


def _cstring_end(data: bytes, offset: int) -> int:
    return data.index(b"\x00", offset)


def _element_end(data: bytes, kind: int, offset: int) -> int:
    """Offset just past the value of an element of type `kind` starting at `offset`."""
    if kind in (0x01, 0x09, 0x11, 0x12):
        return offset + 8
    if kind in (0x02, 0x0D, 0x0E):
        return offset + 4 + _INT32.unpack_from(data, offset)[0]
    if kind in (0x03, 0x04, 0x0F):
        return offset + _INT32.unpack_from(data, offset)[0]
    if kind == 0x05:
        return offset + 5 + _INT32.unpack_from(data, offset)[0]
    if kind in (0x06, 0x0A, 0xFF, 0x7F):
        return offset
    if kind == 0x07:
        return offset + 12
    if kind == 0x08:
        return offset + 1
    if kind == 0x0B:
        return _cstring_end(data, _cstring_end(data, offset) + 1) + 1
    if kind == 0x0C:
        return offset + 4 + _INT32.unpack_from(data, offset)[0] + 12
    if kind == 0x10:
        return offset + 4
    if kind == 0x13:
        return offset + 16
    raise bson.errors.InvalidBSON(f"unknown BSON type {kind:#x}")


def _decode_document(data: bytes, start: int, is_array: bool = False) -> dict[str, Any]:
    end = start + _INT32.unpack_from(data, start)[0] - 1
    result: dict[str, Any] = {}
    duplicates: list[str] = []
    nested = False
    offset = start + 4
    while offset < end:
        kind = data[offset]
        name_end = _cstring_end(data, offset + 1)
        # Array keys carry no meaning (BSON says "0", "1", ...; readers ignore them): never fail on one.
        name = (str(len(result)) if is_array else data[offset + 1 : name_end].decode("utf-8"))
        value_start = name_end + 1
        value_end = _element_end(data, kind, value_start)
        if name in result:
            duplicates.append(name)
        if kind == 0x03:
            result[name] = _decode_document(data, value_start)
        elif kind == 0x0B:
            pattern_end = _cstring_end(data, value_start)
            pattern = data[value_start:pattern_end].decode("utf-8")
            options = data[pattern_end + 1 : value_end - 1].decode("utf-8")
            canonical = "".join(letter for letter in _REGEX_LETTERS if letter in options)
            result[name] = Regex(pattern, options) if options == canonical else ExactRegex(pattern, options)
        elif kind == 0x0F:
            # Code with scope: the scope is a document, and may hold the deprecated types too.
            size = _INT32.unpack_from(data, value_start + 4)[0]
            code = data[value_start + 8 : value_start + 7 + size].decode("utf-8")
            result[name] = Code(code, _decode_document(data, value_start + 8 + size))
        elif kind == 0x04:
            result[name] = list(_decode_document(data, value_start, is_array=True).values())
        elif kind == 0x0E:
            size = _INT32.unpack_from(data, value_start)[0]
            result[name] = Symbol(data[value_start + 4 : value_start + 3 + size].decode("utf-8"))
        elif kind == 0x06:
            result[name] = Undefined()
        elif kind == 0x0C:
            size = _INT32.unpack_from(data, value_start)[0]
            namespace = data[value_start + 4 : value_start + 3 + size].decode("utf-8")
            result[name] = DBPointer(namespace, ObjectId(data[value_start + 4 + size : value_end]))
        else:
            # The element re-keyed "k": its own key may be an array index pymongo never checked.
            element = bytes([kind]) + b"k\x00" + data[value_start:value_end]
            single = _INT32.pack(len(element) + 5) + element + b"\x00"
            result[name] = bson.decode(single, CODEC_OPTIONS)["k"]
        value = result[name]
        if isinstance(value, DuplicateKeys) or (isinstance(value, list) and any(
                isinstance(item, DuplicateKeys) for item in value)) or (
                isinstance(value, Code) and isinstance(value.scope, DuplicateKeys)):
            nested = True
        offset = value_end
    if duplicates or nested:
        return DuplicateKeys(result, duplicates=tuple(duplicates), nested=nested)
    return result


def _string(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return _INT32.pack(len(encoded) + 1) + encoded + b"\x00"


def _encode_element(name: str, value: Any) -> bytes:
    key = name.encode("utf-8") + b"\x00"
    if isinstance(value, Symbol):
        return b"\x0e" + key + _string(value.value)
    if isinstance(value, Undefined):
        return b"\x06" + key
    if isinstance(value, DBPointer):
        return b"\x0c" + key + _string(value.namespace) + value.oid.binary
    if isinstance(value, ExactRegex):
        return b"\x0b" + key + value.pattern.encode("utf-8") + b"\x00" + value.options.encode("utf-8") + b"\x00"
    if isinstance(value, Code) and value.scope is not None:
        code_and_scope = _string(str(value)) + _encode_document(value.scope)
        return b"\x0f" + key + _INT32.pack(4 + len(code_and_scope)) + code_and_scope
    if isinstance(value, Mapping) and not isinstance(value, DBRef):
        return b"\x03" + key + _encode_document(value)
    if isinstance(value, (list, tuple)):
        return b"\x04" + key + _encode_document({str(i): item for i, item in enumerate(value)})
    return bson.encode({name: value}, codec_options=CODEC_OPTIONS)[4:-1]


def _encode_document(document: Mapping[str, Any]) -> bytes:
    body = b"".join(_encode_element(name, value) for name, value in document.items())
    return _INT32.pack(len(body) + 5) + body + b"\x00"


def bson_type(value: Any) -> str:
    """The $type alias of a decoded value ("string", "int", "long", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Code):  # a str subclass: asked before str
        return "javascript" if value.scope is None else "javascriptWithScope"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (Mapping, DBRef)):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, (Binary, bytes)):
        return "binData"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return "date"
    if isinstance(value, (Regex, re.Pattern)):
        return "regex"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, Decimal128):
        return "decimal"
    if isinstance(value, MinKey):
        return "minKey"
    if isinstance(value, MaxKey):
        return "maxKey"
    if isinstance(value, Symbol):
        return "symbol"
    if isinstance(value, Undefined):
        return "undefined"
    if isinstance(value, DBPointer):
        return "dbPointer"
    raise TypeError(f"not a BSON value: {type(value).__name__}")


__all__ = [
    "CODEC_OPTIONS",
    "DBPointer",
    "DuplicateKeys",
    "ExactRegex",
    "Symbol",
    "Undefined",
    "bson_type",
    "decode",
    "encode",
]
