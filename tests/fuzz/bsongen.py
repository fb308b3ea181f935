"""Hypothesis strategies for BSON: raw documents byte by byte, and exact-typed Python values.

`raw_document()` writes every element type itself (the deprecated ones too: undefined, DBPointer,
symbol, code with scope), with the quirks a driver can produce: NaN payloads, -0.0, dates out of
Python's range, every binary subtype, int32 vs int64, regex options in any order.

`values()` draws decoded values of exact BSON type, as markd's analysis sees them.
"""

from __future__ import annotations

import datetime
import struct
from functools import cache
from typing import Any

from bson import Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.max_key import MaxKey
from bson.min_key import MinKey
from hypothesis import strategies as st

from markd.bsonvalues import DBPointer, Symbol, Undefined

_I32 = struct.Struct("<i")

keys = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
strings = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def _cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _I32.pack(len(data) + 1) + data + b"\x00"


def _document(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _I32.pack(len(body) + 5) + body + b"\x00"


def _unique(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    seen: set[str] = set()
    out = []
    for key, value in pairs:
        if key not in seen:
            seen.add(key)
            out.append((key, value))
    return out


_doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: struct.pack("<d", f)),
    st.sampled_from([struct.pack("<d", -0.0), b"\x01\x00\x00\x00\x00\x00\xf8\x7f", b"\x00\x00\x00\x00\x00\x00\xf0\xff",
                     b"\x01\x00\x00\x00\x00\x00\xf0\x7f"]),  # NaN payloads, -inf, signalling NaN
)
_decimals = st.one_of(
    st.binary(min_size=16, max_size=16),  # any bit pattern, canonical or not
    st.sampled_from([Decimal128(x).bid for x in ("NaN", "-NaN", "Infinity", "-Infinity", "-0", "1E+6144", "0E-6176")]),
)
_binary_subtypes = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x80, 0xFF])


def _binary(subtype: int, data: bytes) -> bytes:
    if subtype == 2:  # the old binary subtype wraps its own length
        return _I32.pack(len(data) + 4) + b"\x02" + _I32.pack(len(data)) + data
    return _I32.pack(len(data)) + bytes([subtype]) + data


def _leaf_elements() -> st.SearchStrategy[tuple[int, bytes]]:
    return st.one_of(
        _doubles.map(lambda b: (0x01, b)),
        strings.map(lambda s: (0x02, _string(s))),
        st.tuples(_binary_subtypes, st.binary(max_size=20)).map(lambda t: (0x05, _binary(*t))),
        st.just((0x06, b"")),
        st.binary(min_size=12, max_size=12).map(lambda b: (0x07, b)),
        st.sampled_from([(0x08, b"\x00"), (0x08, b"\x01")]),
        st.integers(-(2**63), 2**63 - 1).map(lambda n: (0x09, struct.pack("<q", n))),
        st.just((0x0A, b"")),
        st.tuples(strings.filter(lambda s: "\x00" not in s), st.text("ilmsuxq", max_size=6)).map(
            lambda t: (0x0B, _cstring(t[0]) + _cstring(t[1]))),  # any order, repeats, unknown letters (F2)
        st.tuples(strings, st.binary(min_size=12, max_size=12)).map(lambda t: (0x0C, _string(t[0]) + t[1])),
        strings.map(lambda s: (0x0D, _string(s))),
        strings.map(lambda s: (0x0E, _string(s))),
        st.integers(-(2**31), 2**31 - 1).map(lambda n: (0x10, _I32.pack(n))),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(
            lambda t: (0x11, struct.pack("<II", t[1], t[0]))),
        st.integers(-(2**63), 2**63 - 1).map(lambda n: (0x12, struct.pack("<q", n))),
        _decimals.map(lambda b: (0x13, b)),
        st.sampled_from([(0xFF, b""), (0x7F, b"")]),
    )


@cache
def raw_document(max_leaves: int = 20) -> st.SearchStrategy[bytes]:
    """A BSON document as bytes, keys unique at every level, every element type possible."""

    def extend(children: st.SearchStrategy[tuple[int, bytes]]) -> st.SearchStrategy[tuple[int, bytes]]:
        doc = st.lists(st.tuples(keys, children), max_size=5).map(_unique).map(
            lambda pairs: _document([bytes([t]) + _cstring(k) + v for k, (t, v) in pairs]))
        array = st.lists(children, max_size=5).map(
            lambda items: _document([bytes([t]) + _cstring(str(i)) + v for i, (t, v) in enumerate(items)]))
        # Deprecated types inside a scope were finding F3 (tests/test_fuzz_bson.py).
        scope_doc = st.lists(st.tuples(keys, children), max_size=3).map(_unique).map(
            lambda pairs: _document([bytes([t]) + _cstring(k) + v for k, (t, v) in pairs]))
        scope = st.tuples(strings, scope_doc).map(lambda t: _string(t[0]) + t[1]).map(
            lambda body: (0x0F, _I32.pack(len(body) + 4) + body))
        return st.one_of(doc.map(lambda d: (0x03, d)), array.map(lambda a: (0x04, a)), scope)

    tree = st.recursive(_leaf_elements(), extend, max_leaves=max_leaves)
    return st.lists(st.tuples(keys, tree), max_size=6).map(_unique).map(
        lambda pairs: _document([bytes([t]) + _cstring(k) + v for k, (t, v) in pairs]))


# Decoded values of exact BSON type ---------------------------------------------------------------

@cache
def scalar_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(-(2**31), 2**31 - 1),
        st.integers(-(2**63), 2**63 - 1).map(Int64),
        st.floats(allow_nan=False),
        strings,
        st.booleans(),
        st.none(),
        st.binary(max_size=16).map(lambda b: Binary(b, 0)),
        st.binary(min_size=16, max_size=16).map(lambda b: Binary(b, 4)),
        st.binary(min_size=12, max_size=12).map(ObjectId),
        st.integers(-(2**62), 2**62).map(DatetimeMS),
        st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1)).map(
            lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
        st.tuples(st.integers(-(10**20), 10**20), st.integers(-30, 30)).map(lambda t: Decimal128(f"{t[0]}E{t[1]}")),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(lambda t: Timestamp(*t)),
        st.tuples(strings.filter(lambda s: "\x00" not in s), st.sampled_from(["", "i", "ms"])).map(
            lambda t: Regex(*t)),
        strings.map(Code),
        strings.map(Symbol),
        st.just(Undefined()),
        st.tuples(strings.filter(lambda s: "\x00" not in s), st.binary(min_size=12, max_size=12)).map(
            lambda t: DBPointer(t[0], ObjectId(t[1]))),
        st.just(MinKey()),
        st.just(MaxKey()),
    )


@cache
def values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalar_values(),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(keys.filter(lambda k: not k.startswith("$") and "." not in k and k != ""),
                            children, max_size=3),
        ),
        max_leaves=max_leaves,
    )
