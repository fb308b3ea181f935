"""Distinctive secret values, and how to recognise one in any BSON value.

The generator puts these values only where a value is compared with, assigned to or derived from an
encrypted field; everything else it writes stays far from these ranges.  So the oracle needs no model
of the command: a secret found in clear in a reply is a leak.  Each secret carries its serial number,
so a finding names the placement that leaked.

| BSON type | secret n |
|---|---|
| string | "SECRET-<n:05d>" (also inside longer strings, regex patterns, code, keys) |
| int32 / double / decimal | 1,900,000,000 + n |
| int64 | 7,300,000,000,000 + n |
| date | 3,700,000,000,000 + n milliseconds since the epoch (March 2087) |
"""

from __future__ import annotations

import datetime
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from bson import Decimal128, Int64

STRING_MARK = "SECRET-"
_STRING = re.compile(r"SECRET-(\d{5})")
INT_BASE = 1_900_000_000
LONG_BASE = 7_300_000_000_000
DATE_BASE_MS = 3_700_000_000_000
SPAN = 100_000  # serial numbers are below this

_EPOCH = datetime.datetime(1970, 1, 1)


def string(n: int) -> str:
    return f"{STRING_MARK}{n:05d}"


def int32(n: int) -> int:
    return INT_BASE + n


def double(n: int) -> float:
    return float(INT_BASE + n) + 0.5


def decimal(n: int) -> Decimal128:
    return Decimal128(str(INT_BASE + n))


def int64(n: int) -> Int64:
    return Int64(LONG_BASE + n)


def date(n: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(milliseconds=DATE_BASE_MS + n)


MAKERS = {"string": string, "int": int32, "long": int64, "date": date, "double": double, "decimal": decimal}


def of_type(bson_type: str, n: int) -> Any:
    """Secret number n as a value of `bson_type` (string when the type has no distinctive values)."""
    return MAKERS.get(bson_type, string)(n)


def _in(base: int, number: Decimal | int | float) -> int | None:
    try:
        offset = int(Decimal(number) - base) if not isinstance(number, int) else number - base
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return offset if 0 <= offset < SPAN else None


def in_text(text: str) -> list[int]:
    return [int(m) for m in _STRING.findall(text)]


def in_number(number: Decimal | int | float) -> list[int]:
    """Serials whose int, long or date-millisecond form equals `number` (within a unit)."""
    if isinstance(number, float) and (number != number or number in (float("inf"), float("-inf"))):
        return []
    found = []
    for base in (INT_BASE, LONG_BASE, DATE_BASE_MS):
        serial = _in(base, number)
        if serial is not None:
            found.append(serial)
    return found


def in_decimal128(raw: bytes) -> list[int]:
    try:
        value = Decimal128.from_bid(raw).to_decimal()
    except (ValueError, InvalidOperation):
        return []
    return in_number(value) if value.is_finite() else []
