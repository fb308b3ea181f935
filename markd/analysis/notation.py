"""Values and predicates written as mongod writes them in its messages (BSONObj/BSONElement toString).

mongocryptd quotes the offending predicate or element in some refusals: `{ ssn: { $regex: "^1" } }`,
`element ssn: "abc"`.  The notation: objects `{ a: 1, b: "x" }` (`{}` when empty), arrays `[ 1, 2 ]`,
strings double-quoted as they are, integers bare, doubles with `.0` when whole, dates
`new Date(ms)`, ObjectIds `ObjectId('...')`, regexes `/p/flags`, UUIDs `UUID("...")`, other binary
`BinData(subtype, HEX)`.  `quoted` wraps such a rendering for `errors.error`, with a redacted form
that shows each value's type in its place (`--redactErrors`).
"""

from __future__ import annotations

import datetime
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

from bson import DBRef, Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.max_key import MaxKey
from bson.min_key import MinKey

from markd import bsonvalues
from markd.analysis.errors import Quoted

MAX_DEPTH = 100
LONG_STRING = 160


def _double(value: float) -> str:
    if math.isnan(value):
        return "nan.0"
    if math.isinf(value):
        return "inf.0" if value > 0 else "-inf.0"
    text = f"{value:.16g}"
    if not any(mark in text for mark in ".EeN"):
        text += ".0"
    return text


def _milliseconds(value: Any) -> int:
    if isinstance(value, DatetimeMS):
        return int(value)
    moment = value if value.tzinfo is None else value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return (moment - datetime.datetime(1970, 1, 1)) // datetime.timedelta(milliseconds=1)


def value(item: Any, depth: int = 0) -> str:
    """One value in mongod's notation."""
    if depth > MAX_DEPTH:
        return "..."
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, Int64)):
        return str(int(item))
    if isinstance(item, float):
        return _double(item)
    if isinstance(item, Decimal128):
        return str(item)
    if isinstance(item, Code):  # a str subclass: before str
        if item.scope is None:
            return str(item)
        return f"CodeWScope( {item}, {document(item.scope, depth + 1)})"
    if isinstance(item, str):
        return f'"{item}"' if len(item) <= LONG_STRING else f'"{item[:150]}..."'
    if isinstance(item, bsonvalues.Symbol):
        return f'"{item.value}"'
    if isinstance(item, (Mapping, DBRef)):
        return document(item.as_doc() if isinstance(item, DBRef) else item, depth + 1)
    if isinstance(item, (list, tuple)):
        if not item:
            return "[]"
        return "[ " + ", ".join(value(element, depth + 1) for element in item) + " ]"
    if isinstance(item, Binary):
        if item.subtype == 4 and len(item) == 16:
            return f'UUID("{uuid.UUID(bytes=bytes(item))}")'
        data = bytes(item)
        shown = data.hex().upper() if len(data) <= 80 else data[:70].hex().upper() + "..."
        return f"BinData({item.subtype}, {shown})"
    if isinstance(item, bytes):
        return f"BinData(0, {item.hex().upper()})"
    if isinstance(item, ObjectId):
        return f"ObjectId('{item}')"
    if isinstance(item, (datetime.datetime, DatetimeMS)):
        return f"new Date({_milliseconds(item)})"
    if isinstance(item, Regex):
        return f"/{item.pattern}/{bsonvalues.regex_options(item)}"
    if isinstance(item, re.Pattern):
        return f"/{item.pattern}/"
    if isinstance(item, Timestamp):
        return f"Timestamp({item.time}, {item.inc})"
    if isinstance(item, MinKey):
        return "MinKey"
    if isinstance(item, MaxKey):
        return "MaxKey"
    if isinstance(item, bsonvalues.Undefined):
        return "undefined"
    if isinstance(item, bsonvalues.DBPointer):
        return f"DBRef('{item.namespace}',{item.oid})"
    return str(item)


def document(item: Mapping[str, Any], depth: int = 0) -> str:
    if not item:
        return "{}"
    return "{ " + ", ".join(f"{name}: {value(element, depth)}" for name, element in item.items()) + " }"


def element(name: str, item: Any) -> str:
    """One element with its name, as `str::stream() << elem` writes it: `ssn: "abc"`."""
    return f"{name}: {value(item)}"


def _types(item: Any) -> Any:
    """`item` with every value replaced by the name of its BSON type (field names, which name fields, kept)."""
    if isinstance(item, Mapping):
        return {name: _types(element_) for name, element_ in item.items()}
    if isinstance(item, (list, tuple)):
        return [_types(element_) for element_ in item]
    try:
        return bsonvalues.bson_type(item)
    except TypeError:
        return "unknown"


def _typed(item: Any) -> str:
    """The redacted rendering: the structure as mongod would print it, each value its bare type name."""
    if isinstance(item, Mapping):
        if not item:
            return "{}"
        return "{ " + ", ".join(f"{name}: {_typed(element_)}" for name, element_ in item.items()) + " }"
    if isinstance(item, list):
        return "[]" if not item else "[ " + ", ".join(_typed(element_) for element_ in item) + " ]"
    return str(item)


def quoted(item: Any) -> Quoted:
    """`item` (a predicate, a value) quoted in a message, with its redacted form."""
    return Quoted(value(item), _typed(_types(item)))


def quoted_element(name: str, item: Any) -> Quoted:
    return Quoted(element(name, item), f"{name}: {_typed(_types(item))}")
