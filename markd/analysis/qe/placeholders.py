"""FLE2 placeholders: BinData 6 holding 0x03 + BSON {t, a, ki, ku, v, cm[, s]}.

`t` is 1 for a value being written, 2 for a value a query compares with; `a` is the field's algorithm
(1 unindexed, 2 equality, 3 range, 4 text search); `ki` = `ku` = the field's keyId (mongocryptd uses
the one key for both); `cm` is the first query config's contention (0 when unindexed); `s` (range
only) the sparsity. Range and text placeholders carry a spec document in `v` that libmongocrypt
expands into tokens: see libmongocrypt's mc-fle2-encryption-placeholder.c for the shapes it parses.
"""

from __future__ import annotations

import struct
from typing import Any

from bson import Int64
from bson.binary import Binary

from markd import bsonvalues
from markd.analysis.qe.errors import error
from markd.analysis.qe.fields import (
    EQUALITY,
    RANGE,
    TEXT,
    UNINDEXED,
    UNINDEXED_TYPES,
    EncryptedField,
    QueryConfig,
)
from markd.bsonvalues import EncryptedBinData

INSERT, FIND = 1, 2
PLACEHOLDER_SUBTYPE = 6
FLE2_PLACEHOLDER = b"\x03"
_INT32 = struct.Struct("<i")

# Range operators as libmongocrypt numbers them (Fle2RangeOperator).
GT, GTE, LT, LTE = 1, 2, 3, 4
OPERATOR_CODES = {"$gt": GT, "$gte": GTE, "$lt": LT, "$lte": LTE}

POSITIVE_INFINITY = float("inf")
NEGATIVE_INFINITY = float("-inf")

# Text query operator -> (spec key in the placeholder, query type the field must have).
TEXT_OPERATORS = {
    "$encStrStartsWith": ("prefix", "prefix"),
    "$encStrEndsWith": ("suffix", "suffix"),
    "$encStrContains": ("substr", "substring"),
}


def _placeholder(kind: int, field: EncryptedField, algorithm: int, value: Any, sparsity: int | None = None) -> Binary:
    """0x03 then BSON {t, a, ki, ku, v, cm[, s]}: the elements around `v` are encoded once per field."""
    head, tail = _frame(field, kind, algorithm, sparsity)
    value_element = bsonvalues.encode({"v": value})[4:-1]
    size = 5 + len(head) + len(value_element) + len(tail)
    return EncryptedBinData(b"".join((FLE2_PLACEHOLDER, _INT32.pack(size), head, value_element, tail, b"\x00")))


# (field, t, a, s) -> the elements before and after `v`, per EncryptedField by identity (the entry holds
# the field, so its id cannot be reused while cached).
_FRAMES: dict[tuple[int, int, int, int | None], tuple[EncryptedField, bytes, bytes]] = {}
_FRAMES_LIMIT = 4096


def _frame(field: EncryptedField, kind: int, algorithm: int, sparsity: int | None) -> tuple[bytes, bytes]:
    key = (id(field), kind, algorithm, sparsity)
    entry = _FRAMES.get(key)
    if entry is not None and entry[0] is field:
        return entry[1], entry[2]
    head = bsonvalues.encode({"t": kind, "a": algorithm, "ki": field.key_id, "ku": field.key_id})[4:-1]
    after: dict[str, Any] = {"cm": Int64(field.contention)}
    if sparsity is not None:
        after["s"] = Int64(sparsity)
    tail = bsonvalues.encode(after)[4:-1]
    if len(_FRAMES) >= _FRAMES_LIMIT:
        _FRAMES.clear()
    _FRAMES[key] = (field, head, tail)
    return head, tail


def is_placeholder(value: Any) -> bool:
    return isinstance(value, Binary) and value.subtype == PLACEHOLDER_SUBTYPE and bytes(value[:1]) == FLE2_PLACEHOLDER


def check_writable(field: EncryptedField, value: Any) -> None:
    """Refuse a value the field cannot hold, as mongocryptd does before marking a write."""
    value_type = bsonvalues.bson_type(value)
    if isinstance(value, Binary) and value.subtype == PLACEHOLDER_SUBTYPE:
        raise error("CANNOT_ENCRYPT_TYPE", type="encrypted binary data", path=field.path)
    if field.bson_type is not None:
        if value_type != field.bson_type:
            raise error("WRONG_TYPE", type=value_type, expected=field.bson_type, path=field.path)
    elif value_type not in UNINDEXED_TYPES:
        raise error("CANNOT_ENCRYPT_TYPE", type=value_type, path=field.path)


def range_value(field: EncryptedField, value: Any) -> Any:
    """`value` checked and coerced to the range index's type (int <-> long only, as the server allows)."""
    value_type = bsonvalues.bson_type(value)
    field_type = field.bson_type
    # mongocryptd checks date against non-date before anything else (so `$ne: null` on a date field is 6720002).
    if (value_type == "date") != (field_type == "date"):
        raise error("DATE_MISMATCH", path=field.path)
    if value_type not in ("int", "long", "double", "decimal", "date"):
        raise error("RANGE_VALUE_TYPE", type=value_type, path=field.path)
    if value_type != field_type and {value_type, field_type} & {"double", "decimal"}:
        raise error("NO_COERCION", path=field.path)
    # A NaN bound is not refused here: mongocryptd's bounds check comes first and NaN orders below every
    # number, so it is refused as out of the index's bounds (6747900/6747901/6720810...). Callers check.
    if field_type == "long" and value_type == "int":
        return Int64(value)
    if field_type == "int" and value_type == "long":
        if not -(2**31) <= value < 2**31:
            raise error("INT_COERCION", path=field.path)
        return int(value)
    return value


def _text_options(config: QueryConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if config.str_max_length is not None:
        spec["mlen"] = config.str_max_length
    spec["ub"] = config.str_max_query_length
    spec["lb"] = config.str_min_query_length
    return spec


def _text_flags(field: EncryptedField, value: str) -> dict[str, Any]:
    first = field.queries[0]
    return {"v": value, "casef": not first.case_sensitive, "diacf": not first.diacritic_sensitive}


def insert_placeholder(field: EncryptedField, value: Any) -> Binary:
    """The t=1 placeholder for writing `value` into `field`."""
    check_writable(field, value)
    algorithm = field.algorithm
    if algorithm in (UNINDEXED, EQUALITY):
        return _placeholder(INSERT, field, algorithm, value)
    if algorithm == RANGE:
        config = field.range
        spec: dict[str, Any] = {"v": value, "min": config.min, "max": config.max}
        if config.precision is not None:
            spec["precision"] = config.precision
        if config.trim_factor is not None:
            spec["trimFactor"] = config.trim_factor
        return _placeholder(INSERT, field, RANGE, spec, config.sparsity)
    if algorithm == TEXT:
        spec = _text_flags(field, value)
        for config in field.queries:
            key = {"prefix": "prefix", "suffix": "suffix", "substring": "substr"}[config.query_type]
            spec[key] = _text_options(config)
        # libmongocrypt reads prefix, suffix and substr in any order; keep its own emission order.
        ordered = {k: spec[k] for k in ("v", "casef", "diacf", "prefix", "suffix", "substr") if k in spec}
        return _placeholder(INSERT, field, TEXT, ordered)
    raise AssertionError(f"unknown algorithm {algorithm}")


def equality_find_placeholder(field: EncryptedField, value: Any) -> Binary:
    """The t=2 placeholder for comparing `field` for equality with `value`."""
    if field.algorithm != EQUALITY:
        raise error("NOT_EQUALITY_INDEXED", path=field.path)
    check_writable(field, value)
    return _placeholder(FIND, field, EQUALITY, value)


def range_find_placeholder(field: EncryptedField, lower: Any, lower_included: bool, upper: Any,
                           upper_included: bool, payload_id: int, first_operator: int,
                           second_operator: int | None = None) -> Binary:
    """The full t=2 range placeholder: the edges of [lower, upper] and the operators that use them."""
    config = field.range
    edges: dict[str, Any] = {
        "lowerBound": lower,
        "lbIncluded": lower_included,
        "upperBound": upper,
        "ubIncluded": upper_included,
        "indexMin": config.min,
        "indexMax": config.max,
    }
    if config.precision is not None:
        edges["precision"] = config.precision
    if config.trim_factor is not None:
        edges["trimFactor"] = config.trim_factor
    spec: dict[str, Any] = {"edgesInfo": edges, "payloadId": payload_id, "firstOperator": first_operator}
    if second_operator is not None:
        spec["secondOperator"] = second_operator
    return _placeholder(FIND, field, RANGE, spec, config.sparsity)


def range_stub_placeholder(field: EncryptedField, payload_id: int, first_operator: int,
                           second_operator: int) -> Binary:
    """The second half of a two-sided range: no edges, only the payload it shares with the first half."""
    spec = {"payloadId": payload_id, "firstOperator": first_operator, "secondOperator": second_operator}
    return _placeholder(FIND, field, RANGE, spec, field.range.sparsity)


def text_find_placeholder(field: EncryptedField, operator: str, value: Any) -> Binary:
    """The t=2 text-search placeholder for one $encStr* operator."""
    if field.algorithm != TEXT:
        raise error("TEXT_ON_NON_TEXT", op=operator, path=field.path)
    if not isinstance(value, str):
        raise error("TEXT_STRING", op=operator, argument={"$encStrStartsWith": "prefix", "$encStrEndsWith": "suffix",
                                                           "$encStrContains": "substring"}.get(operator, "string"),
                    path=field.path)
    spec = _text_flags(field, value)
    if operator == "$encStrNormalizedEq":
        # Normalised equality needs no query-length options: libmongocrypt derives it from the flags alone.
        return _placeholder(FIND, field, TEXT, spec)
    key, query_type = TEXT_OPERATORS[operator]
    config = field.query(query_type)
    if config is None:
        raise error({"prefix": "NO_PREFIX_INDEX", "suffix": "NO_SUFFIX_INDEX", "substring": "NO_SUBSTRING_INDEX"}[
            query_type], path=field.path)
    spec[key] = _text_options(config)
    return _placeholder(FIND, field, TEXT, spec)
