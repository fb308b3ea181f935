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
from typing import Any, NoReturn

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


class ExactDocument(dict):  # type: ignore[type-arg]
    """A decoded document that keeps the exact bytes it was decoded from (`raw`), and so cannot change.

    The caches of parsed rules are keyed by `raw` (sliced from the request, never re-encoded), and
    encoding one writes `raw` itself: pymongo's encoder copies any value marked as a raw document
    (`_type_marker` 101). Python code cannot modify it (copy it with `dict()` first); the decoder
    fills it through the C API.
    """

    __slots__ = ("raw",)
    _type_marker = 101

    def _immutable(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("an ExactDocument cannot change: copy it with dict() first")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _immutable  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return exact_document, (dict(self), self.raw)


def exact_document(document: dict[str, Any], raw: bytes) -> ExactDocument:
    """`document` (decoded from exactly `raw`) as an ExactDocument."""
    exact = ExactDocument(document)
    exact.raw = raw
    return exact


class EncryptedBinData(Binary):
    """BinData of subtype 6 (BSON's encrypted-value subtype, which placeholders use), built in one C call.

    `Binary(data, 6)` checks its arguments in Python on every call; a placeholder's bytes are built by
    markd itself, so they need none of that: `EncryptedBinData(data)` is a Binary equal to
    `Binary(data, 6)` in every way (type marker, subtype, equality, hash, encoding).
    """

    _Binary__subtype = 6  # what Binary's methods read (an instance attribute in a plain Binary)
    subtype = 6  # read by pymongo's encoder for every value: a class attribute, not Binary's property
    __new__ = bytes.__new__  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return Binary, (bytes(self), 6)


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
    if type(data) is not bytes:
        data = bytes(data)  # bytes == memoryview compares byte by byte in Python's slow path: copy once instead
    document = bson.decode(data, CODEC_OPTIONS)
    if bson.encode(document, codec_options=CODEC_OPTIONS) == data:
        return document
    try:
        return _decode_document(data, 0)
    except (UnicodeDecodeError, ValueError, IndexError, struct.error) as exc:
        # pymongo's decoder skips array keys, so bytes it accepted can still be malformed here.
        raise InvalidBSON(f"invalid BSON: {exc}") from exc


def decode_sequence(data: bytes | memoryview) -> list[dict[str, Any]]:
    """Concatenated BSON documents (an OP_MSG kind-1 section) to dicts, with `decode`'s exactness."""
    if type(data) is not bytes:
        data = bytes(data)
    documents: list[dict[str, Any]] = bson.decode_all(data, CODEC_OPTIONS)
    encoded = b"".join(bson.encode(document, codec_options=CODEC_OPTIONS) for document in documents)
    if encoded == data:
        return documents
    raw = data
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


def elements(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int, int]]:
    """(name, type, element start, value start, value end) of each element of the document data[start:end],
    the name as its bytes.

    Only the framing is checked (each element within the document, known types): ValueError (or
    IndexError, struct.error) otherwise. Names and values are not validated: a decoder does that."""
    last = end - 1
    if end - start < 5 or _INT32.unpack_from(data, start)[0] != end - start or data[last] != 0:
        raise ValueError("invalid document length")
    found: list[tuple[bytes, int, int, int, int]] = []
    offset = start + 4
    index = data.index
    unpack = _INT32.unpack_from
    while offset < last:
        kind = data[offset]
        name_end = index(b"\x00", offset + 1, last)
        value_start = name_end + 1
        size = _VALUE_SIZES[kind]
        if size < 0:
            if size == _SIZED_STRING:
                size = 4 + unpack(data, value_start)[0]
            elif size == _SIZED_DOCUMENT:
                size = unpack(data, value_start)[0]
            elif size == _SIZED_BINARY:
                size = 5 + unpack(data, value_start)[0]
            elif size == _TWO_CSTRINGS:
                size = index(b"\x00", index(b"\x00", value_start, last) + 1, last) + 1 - value_start
            elif size == _SIZED_DBPOINTER:
                size = 16 + unpack(data, value_start)[0]
            else:
                raise ValueError(f"unknown BSON type {kind:#x}")
            if size < 0:
                raise ValueError("negative length")
        value_end = value_start + size
        found.append((data[offset + 1 : name_end], kind, offset, value_start, value_end))
        offset = value_end
    if offset != last:
        raise ValueError("element runs past its document")
    return found


# Value sizes by type byte for `elements`: fixed sizes, or how to read a variable one.
_SIZED_STRING, _SIZED_DOCUMENT, _SIZED_BINARY, _TWO_CSTRINGS, _SIZED_DBPOINTER, _UNKNOWN_TYPE = -1, -2, -3, -4, -5, -6
_VALUE_SIZES = [_UNKNOWN_TYPE] * 256
for _kind, _size in ((0x01, 8), (0x09, 8), (0x11, 8), (0x12, 8), (0x06, 0), (0x0A, 0), (0xFF, 0), (0x7F, 0),
                     (0x07, 12), (0x08, 1), (0x10, 4), (0x13, 16), (0x02, _SIZED_STRING), (0x0D, _SIZED_STRING),
                     (0x0E, _SIZED_STRING), (0x03, _SIZED_DOCUMENT), (0x04, _SIZED_DOCUMENT), (0x0F, _SIZED_DOCUMENT),
                     (0x05, _SIZED_BINARY), (0x0B, _TWO_CSTRINGS), (0x0C, _SIZED_DBPOINTER)):
    _VALUE_SIZES[_kind] = _size


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
