"""mongod's order of BSON values (simple collation), for writing `$in` lists back as it does.

mongod keeps a `$in`'s equalities as a sorted set: compared by canonical type first (numbers of
every width together, strings with symbols), then by value; documents and arrays element by
element (type, field name, value).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from bson import DBRef, Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.max_key import MaxKey
from bson.min_key import MinKey

from markd.bsonvalues import DBPointer, Symbol, Undefined


def canonical_rank(value: Any) -> int:
    """mongod's canonical type rank (numbers share one)."""
    return _rank(value)


def _rank(value: Any) -> int:
    """mongod's canonical type rank."""
    rank = _RANK_BY_EXACT_TYPE.get(type(value))
    if rank is not None:
        return rank
    if isinstance(value, MinKey):
        return -1
    if isinstance(value, Undefined):
        return 0
    if value is None:
        return 5
    if isinstance(value, bool):
        return 40
    if isinstance(value, (int, float, Int64, Decimal128)):
        return 10
    if isinstance(value, Code):
        return 60 if value.scope is None else 65
    if isinstance(value, (str, Symbol)):
        return 15
    if isinstance(value, (Mapping, DBRef)):
        return 20
    if isinstance(value, (list, tuple)):
        return 25
    if isinstance(value, (Binary, bytes)):
        return 30
    if isinstance(value, ObjectId):
        return 35
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return 45
    if isinstance(value, Timestamp):
        return 47
    if isinstance(value, (Regex, re.Pattern)):
        return 50
    if isinstance(value, DBPointer):
        return 55
    if isinstance(value, MaxKey):
        return 127
    raise TypeError(f"not a BSON value: {type(value).__name__}")



# The common scalar types, answered before _rank's isinstance chain (bool before int matters there, not here).
_RANK_BY_EXACT_TYPE: dict[type, int] = {str: 15, int: 10, float: 10, Int64: 10, bool: 40, type(None): 5,
                                        Binary: 30, ObjectId: 35}

def _number(value: Any) -> tuple[int, Decimal]:
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    try:
        number = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        return 0, Decimal(0)
    if number.is_nan() or (isinstance(value, float) and math.isnan(value)):
        return 0, Decimal(0)  # NaN sorts before every other number
    if number.is_infinite():
        return (3 if number > 0 else 1), Decimal(0)
    return 2, number


def _elements(items: Iterable[tuple[str, Any]]) -> tuple[Any, ...]:
    return tuple((_rank(item), name.encode("utf-8"), order_key(item)) for name, item in items)


def order_key(value: Any) -> tuple[Any, ...]:
    """A sort key placing values in mongod's order."""
    if type(value) is Binary:  # marked $in lists are all placeholders: skip the chain below
        return (30, len(value), value.subtype, bytes(value))
    rank = _rank(value)
    if rank == 10:
        return (rank, *_number(value))
    if isinstance(value, Symbol):
        return (rank, value.value.encode("utf-8"))
    if isinstance(value, Code):
        scope = _elements(value.scope.items()) if value.scope is not None else ()
        return (rank, str(value).encode("utf-8"), scope)
    if isinstance(value, str):
        return (rank, value.encode("utf-8"))
    if isinstance(value, DBRef):
        return (rank, _elements(value.as_doc().items()))
    if isinstance(value, Mapping):
        return (rank, _elements(value.items()))
    if isinstance(value, (list, tuple)):
        return (rank, _elements((str(index), item) for index, item in enumerate(value)))
    if isinstance(value, Binary):
        return (rank, len(value), value.subtype, bytes(value))
    if isinstance(value, bytes):
        return (rank, len(value), 0, value)
    if isinstance(value, ObjectId):
        return (rank, value.binary)
    if isinstance(value, bool):
        return (rank, value)
    if isinstance(value, DatetimeMS):
        return (rank, int(value))
    if isinstance(value, datetime.datetime):
        epoch = datetime.datetime(1970, 1, 1, tzinfo=value.tzinfo)
        return (rank, (value - epoch) // datetime.timedelta(milliseconds=1))
    if isinstance(value, Timestamp):
        return (rank, value.time, value.inc)
    if isinstance(value, Regex):
        flags = value.flags if isinstance(value.flags, str) else ""
        return (rank, value.pattern.encode("utf-8"), flags.encode("utf-8"))
    if isinstance(value, re.Pattern):
        return (rank, value.pattern.encode("utf-8") if isinstance(value.pattern, str) else value.pattern, b"")
    if isinstance(value, DBPointer):
        return (rank, len(value.namespace), value.namespace.encode("utf-8"), value.oid.binary)
    return (rank,)


def sorted_set(values: Iterable[Any]) -> list[Any]:
    """`values` sorted in mongod's order, equal ones kept once (the first)."""
    # Each key computed once: keys of documents and arrays are not cheap, and $in lists can be long.
    keyed = sorted(((order_key(value), value) for value in values), key=lambda pair: pair[0])
    result: list[Any] = []
    last_key: Any = None
    for key, value in keyed:
        if not result or key != last_key:
            result.append(value)
            last_key = key
    return result
