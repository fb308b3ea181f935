"""Range predicates on QE range fields: intervals, bounds checks, and the placeholders for them.

Comparisons on one range field inside one AND are intersected into a single interval (the server's
IndexBoundsBuilder does this), then become a one-sided placeholder, or a two-sided pair sharing one
payloadId: `$and: [{f: {$gte: FULL}}, {f: {$lte: STUB}}]`.  An empty interval makes the AND false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import Decimal128

from markd.analysis import notation
from markd.analysis.context import Scope
from markd.analysis.match import ALWAYS_FALSE, FlatAnd
from markd.analysis.qe import placeholders
from markd.analysis.qe.errors import error
from markd.analysis.qe.fields import Bound, EncryptedField, is_nan, numeric, tighter_lower, tighter_upper
from markd.errors import CommandError


@dataclass(frozen=True, slots=True)
class RangeComparison:
    """A comparison on a range field, kept apart until its AND is complete so it can be intersected."""

    field: EncryptedField
    operator: str  # $eq, $gt, $gte, $lt, $lte
    value: Any
    path: str  # where the query reads the field (a renamed copy's own path)


@dataclass(frozen=True, slots=True)
class NonRangeComparison:
    """$gt... on an encrypted field without a range index: refused once its AND context is known
    (mongocryptd uses 6720400 inside an $and, 6721001 for a predicate standing alone)."""

    field: EncryptedField
    operator: str
    path: str
    value: Any = None


def finish_and(nodes: list[Any], scope: Scope, in_and: bool) -> list[Any]:
    """An AND's children serialized: other predicates in place, then each range field's interval, by
    path order (as mongocryptd re-adds them); an empty interval makes the whole AND false."""
    finished: list[Any] = []
    ranges: dict[str, list[RangeComparison]] = {}
    for node in nodes:
        if isinstance(node, NonRangeComparison):
            refusal = error("NOT_RANGE_INDEXED_IN_AND" if in_and else "NOT_RANGE_INDEXED", path=node.path,
                            op=notation.quoted({node.path: {node.operator: node.value}}))
            refusal.locate(operator=node.operator)
            raise refusal
        if isinstance(node, RangeComparison):
            ranges.setdefault(node.path, []).append(node)
        else:
            finished.append(node)
    for path in sorted(ranges):
        comparisons = ranges[path]
        try:
            predicates = range_predicates(comparisons[0].field, comparisons, scope)
        except CommandError as refusal:
            refusal.locate(path=path, operator="/".join(dict.fromkeys(c.operator for c in comparisons)))
            raise
        if predicates == [ALWAYS_FALSE]:
            return [dict(ALWAYS_FALSE)]
        finished.extend(predicates)
    return finished


def within(field: EncryptedField, value: Any) -> bool:
    config = field.range
    return numeric(config.min) <= numeric(value) <= numeric(config.max)


def range_predicates(field: EncryptedField, comparisons: list[RangeComparison], scope: Scope) -> list[Any]:
    """The intersection of `comparisons` on one range field, as the placeholders mongocryptd emits."""
    marked = scope.analysis.marked
    lower: Bound | None = None
    upper: Bound | None = None
    for comparison in comparisons:
        try:
            value = placeholders.range_value(field, comparison.value)
        except CommandError as refusal:
            refusal.locate(operator=comparison.operator)
            raise
        if is_nan(value):
            # mongocryptd checks bounds before NaN-ness, and NaN orders below every number: out of bounds.
            if len(comparisons) == 1 and comparison.operator != "$eq":
                raise error("RANGE_OUT_OF_BOUNDS")
            raise error("UPPER_OUT_OF_BOUNDS" if comparison.operator in ("$lt", "$lte") else "LOWER_OUT_OF_BOUNDS")
        if comparison.operator in ("$gt", "$gte", "$eq"):
            lower = tighter_lower(lower, (value, comparison.operator != "$gt"))
        if comparison.operator in ("$lt", "$lte", "$eq"):
            upper = tighter_upper(upper, (value, comparison.operator != "$lt"))
    path = comparisons[0].path
    if lower is not None and upper is not None:
        low, high = numeric(lower[0]), numeric(upper[0])
        if low > high or (low == high and not (lower[1] and upper[1])):
            scope.analysis.drop_encrypted()
            return [dict(ALWAYS_FALSE)]
        if not within(field, lower[0]):
            raise error("LOWER_OUT_OF_BOUNDS")
        if not within(field, upper[0]):
            raise error("UPPER_OUT_OF_BOUNDS")
        first = placeholders.GTE if lower[1] else placeholders.GT
        second = placeholders.LTE if upper[1] else placeholders.LT
        payload_id = scope.payload_id()
        full = placeholders.range_find_placeholder(field, lower[0], lower[1], upper[0], upper[1], payload_id, first,
                                                   second)
        stub = placeholders.range_stub_placeholder(field, payload_id, first, second)
        return [FlatAnd({"$and": [
            {path: {"$gte" if lower[1] else "$gt": marked(full)}},
            {path: {"$lte" if upper[1] else "$lt": marked(stub)}},
        ]})]
    payload_id = scope.payload_id()
    if lower is not None:
        if not within(field, lower[0]):
            raise error("RANGE_OUT_OF_BOUNDS")
        operator = "$gte" if lower[1] else "$gt"
        full = placeholders.range_find_placeholder(field, lower[0], lower[1], placeholders.POSITIVE_INFINITY, True,
                                                   payload_id, placeholders.OPERATOR_CODES[operator])
        return [{path: {operator: marked(full)}}]
    assert upper is not None
    if not within(field, upper[0]):
        raise error("RANGE_OUT_OF_BOUNDS")
    operator = "$lte" if upper[1] else "$lt"
    full = placeholders.range_find_placeholder(field, placeholders.NEGATIVE_INFINITY, True, upper[0], upper[1],
                                               payload_id, placeholders.OPERATOR_CODES[operator])
    return [{path: {operator: marked(full)}}]


def in_values(field: EncryptedField, values: list[Any]) -> list[Any]:
    """A range $in's values as mongocryptd 8.x takes them: type-checked and coerced, then as the ordered,
    de-duplicated set its parser keeps (NaN first), NaN refused when its placeholder is built (6991000/
    6991001). Its bounds check's answer is unused there: out-of-bounds values are marked anyway (and
    libmongocrypt refuses to encrypt them)."""
    coerced = [placeholders.range_value(field, v) for v in values]
    nan = next((v for v in coerced if is_nan(v)), None)
    if nan is not None:
        raise error("BOUND_NAN_DECIMAL" if isinstance(nan, Decimal128) else "BOUND_NAN", path=field.path)
    unique: dict[Any, Any] = {}
    for value in coerced:
        unique.setdefault(numeric(value), value)
    return [unique[key] for key in sorted(unique)]


def point(field: EncryptedField, value: Any, path: str, scope: Scope) -> FlatAnd:
    """[value, value] as mongocryptd's two-sided match predicate: full placeholder, then the stub."""
    payload_id = scope.payload_id()
    gte, lte = placeholders.GTE, placeholders.LTE
    full = placeholders.range_find_placeholder(field, value, True, value, True, payload_id, gte, lte)
    stub = placeholders.range_stub_placeholder(field, payload_id, gte, lte)
    marked = scope.analysis.marked
    return FlatAnd({"$and": [{path: {"$gte": marked(full)}}, {path: {"$lte": marked(stub)}}]})


# -- $expr ---------------------------------------------------------------------------------------------


def expression_comparison(name: str, left: Any, field: EncryptedField, value: Any, scope: Scope) -> Any:
    """`{$gt: ["$f", c]}` -> `{$and: [{$gt: ["$f", P]}, {$lte: ["$f", P]}]}` with one two-sided placeholder P."""
    value = placeholders.range_value(field, value)
    if is_nan(value) or not within(field, value):
        raise error("EXPR_OUT_OF_BOUNDS", path=field.path)
    lower, lower_included = value, name != "$gt"
    upper, upper_included = value, name != "$lt"
    if name in ("$gt", "$gte"):
        upper, upper_included = placeholders.POSITIVE_INFINITY, True
    if name in ("$lt", "$lte"):
        lower, lower_included = placeholders.NEGATIVE_INFINITY, True
    both = two_sided(left, field, (lower, lower_included), (upper, upper_included), scope)
    return {"$not": [both]} if name == "$ne" else both


def two_sided(left: Any, field: EncryptedField, lower: Bound, upper: Bound, scope: Scope) -> dict[str, Any]:
    """Both comparisons of an interval, each carrying the same full placeholder (as mongocryptd does here)."""
    first = placeholders.GTE if lower[1] else placeholders.GT
    second = placeholders.LTE if upper[1] else placeholders.LT
    full = placeholders.range_find_placeholder(field, lower[0], lower[1], upper[0], upper[1], scope.payload_id(),
                                               first, second)
    scope.analysis.marked(full)
    scope.analysis.marked(full)
    return {"$and": [
        {"$gte" if lower[1] else "$gt": [left, {"$const": full}]},
        {"$lte" if upper[1] else "$lt": [left, {"$const": full}]},
    ]}


def interval(field: EncryptedField, terms: list[tuple[str, Any]]) -> tuple[Bound, Bound] | None:
    """The intersection of several comparisons (operator, constant) on one range field; None when empty."""
    lower: Bound | None = None
    upper: Bound | None = None
    for operator, constant in terms:
        constant = placeholders.range_value(field, constant)
        if is_nan(constant):
            # NaN orders below every number: out of the index's bounds, as mongocryptd finds it.
            raise error("EXPR_CLOSED_OUT_OF_BOUNDS", path=field.path)
        if operator in ("$gt", "$gte", "$eq"):
            lower = tighter_lower(lower, (constant, operator != "$gt"))
        if operator in ("$lt", "$lte", "$eq"):
            upper = tighter_upper(upper, (constant, operator != "$lt"))
    lower = lower or (placeholders.NEGATIVE_INFINITY, True)
    upper = upper or (placeholders.POSITIVE_INFINITY, True)
    low, high = numeric(lower[0]), numeric(upper[0])
    if low > high or (low == high and not (lower[1] and upper[1])):
        return None
    return lower, upper
