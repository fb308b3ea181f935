"""Query filters: parsed the way the server's MatchExpression parser sees them, marked, re-serialised.

mongocryptd parses a filter and serialises it back, so the result is normalised: `{f: v}` becomes
`{f: {$eq: v}}`, an object with several predicates becomes an explicit `$and`, `$ne`/`$nin` become
`$not`. Each operator has one row in `ENCRYPTED_OPERATORS` (what to do at an encrypted path) and
one in `PREFIX_OPERATORS` (at an object path that holds encrypted fields); anything without a row
is refused, so a forgotten operator cannot carry plaintext to the server.

Range predicates on the same field inside one `$and` are intersected into a single interval (the
server's IndexBoundsBuilder does this) and become either a one-sided placeholder or a two-sided
`$and: [{f: {$gte: FULL}}, {f: {$lte: STUB}}]` pair sharing one payloadId.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bson import Decimal128, Regex

from markd import bsonvalues
from markd.analysis.qe import placeholders
from markd.analysis.qe.context import Context
from markd.analysis.qe.errors import error
from markd.analysis.qe.expressions import mark_expression
from markd.analysis.qe.fields import (
    EQUALITY,
    RANGE,
    Below,
    Bound,
    EncryptedField,
    EncryptedFields,
    EncryptionInformation,
    Plain,
    Prefix,
    is_nan,
    numeric,
    tighter_lower,
    tighter_upper,
)
from markd.errors import CommandError

Node = Any  # a serialised predicate (dict) or a pending RangeComparison


@dataclass(frozen=True, slots=True)
class RangeComparison:
    """A comparison on a range field, kept apart until its `$and` is complete so it can be intersected."""

    field: EncryptedField
    operator: str  # $eq, $gt, $gte, $lt, $lte
    value: Any


@dataclass(frozen=True, slots=True)
class NonRangeComparison:
    """$gt... on an encrypted field without a range index: refused once its AND context is known
    (mongocryptd uses 6720400 inside an $and, 6721001 for a predicate standing alone)."""

    field: EncryptedField
    operator: str


LOGICAL = ("$and", "$or", "$nor")
# Top-level operators that never name a field: passed through as they are.
PASSTHROUGH_TOP_LEVEL = frozenset({"$text", "$alwaysTrue", "$alwaysFalse", "$sampleRate"})
# Top-level operators that can reach any field's value: refused once anything is encrypted.
OPAQUE_TOP_LEVEL = frozenset({"$where", "$jsonSchema"})
STRING_TYPES = ("string", "symbol")


def mark_filter(filter_: Any, ctx: Context) -> dict[str, Any]:
    """The marked, normalised form of a whole filter document."""
    if not isinstance(filter_, Mapping):
        raise error("MALFORMED", detail="filter must be an object")
    return _wrap(_and_level(filter_, ctx.for_filter()))


def _wrap(children: list[dict[str, Any]]) -> dict[str, Any]:
    if not children:
        return {}
    if len(children) == 1:
        return children[0]
    return {"$and": children}


def _and_level(document: Mapping[str, Any], ctx: Context) -> list[dict[str, Any]]:
    """One AND node: each element's predicates, ranges merged, serialised."""
    nodes: list[Node] = []
    for key, value in document.items():
        nodes.extend(_element(key, value, ctx))
    return _finish_and(nodes, ctx)


def _element(key: str, value: Any, ctx: Context) -> list[Node]:
    if key.startswith("$"):
        return _top_level_operator(key, value, ctx)
    return _path_predicates(key, value, ctx)


def _subfilters(operator: str, value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
        raise error("MALFORMED", detail=f"{operator} argument must be a non-empty array of objects")
    return value


def _top_level_operator(key: str, value: Any, ctx: Context) -> list[Node]:
    if key == "$and":
        children: list[Node] = []
        for sub in _subfilters(key, value):
            nodes = [n for k, v in sub.items() for n in _element(k, v, ctx)]
            # A one-predicate sub-document is that predicate: ranges in sibling sub-documents still merge.
            children.extend(nodes if len(nodes) == 1 else [_wrap(_finish_and(nodes, ctx, in_and=True))])
        finished = _finish_and(children, ctx, in_and=True)
        if finished == [ALWAYS_FALSE] or (len(finished) == 1 and isinstance(finished[0], RangeAnd)):
            # An $and left holding only a merged range is that range's own $and (mongocryptd flattens it).
            return [finished[0]]
        # Otherwise the explicit $and stays, even around a single predicate, as the server serialises it.
        return [{"$and": finished}]
    if key in ("$or", "$nor"):
        return [{key: [_wrap(_and_level(sub, ctx)) for sub in _subfilters(key, value)]}]
    if key == "$expr":
        return [{"$expr": mark_expression(value, ctx)}]
    if key == "$comment":
        return []
    if key in PASSTHROUGH_TOP_LEVEL:
        return [{key: value}]
    if key in OPAQUE_TOP_LEVEL:
        if not ctx.schema.encrypts_anything:
            return [{key: value}]
        raise error("UNSUPPORTED_OPERATOR", op=key)
    raise error("UNKNOWN_TOP_LEVEL", op=key)


def _is_operator_object(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and next(iter(value)).startswith("$")


def _operators(value: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The operator/operand pairs of `{$op: v, ...}`, `$regex` and `$options` joined."""
    pairs: list[tuple[str, Any]] = []
    for operator, operand in value.items():
        if not operator.startswith("$"):
            raise error("MALFORMED", detail=f"unknown operator: {operator}")
        if operator == "$options":
            if "$regex" not in value:
                raise error("MALFORMED", detail="$options needs a $regex")
            continue
        if operator == "$regex":
            operand = {"$regex": operand, **({"$options": value["$options"]} if "$options" in value else {})}
        pairs.append((operator, operand))
    return pairs


def _path_predicates(path: str, value: Any, ctx: Context) -> list[Node]:
    info = ctx.schema.lookup(path)
    if isinstance(info, Below):
        raise error("BELOW_ENCRYPTED", path=path)
    if _is_operator_object(value):
        pairs = _operators(value)
    elif isinstance(value, Regex) or _is_pattern(value):
        # `{f: /re/}` is a regex match; only an explicit `{f: {$eq: /re/}}` compares with a regex value.
        pairs = [("$regex", {"$regex": value})]
    else:
        pairs = [("$eq", value)]
    nodes: list[Node] = []
    for operator, operand in pairs:
        if isinstance(info, Plain):
            nodes.append(_plain(path, operator, operand))
        elif isinstance(info, Prefix):
            nodes.append(_prefix(path, operator, operand, ctx))
        else:
            nodes.append(_encrypted(info.field, operator, operand, ctx))
    return nodes


def _is_pattern(value: Any) -> bool:
    return isinstance(value, re.Pattern)


def _is_value_elem_match(operand: Mapping[str, Any]) -> bool:
    """`{$elemMatch: {$gt: 1}}` matches element values; `{$elemMatch: {a: 1}}` (or $and/$or/$expr) documents."""
    first = next(iter(operand))
    return first.startswith("$") and first not in (*LOGICAL, "$expr", "$where", "$text", "$comment")


_PLAIN_CONTEXT = Context(EncryptedFields("", ()), EncryptionInformation({}), "")


def true_value(value: Any) -> bool:
    """BSON truthiness as the server reads `$exists`: false, 0, null and undefined are false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, Decimal128):
        return not value.to_decimal().is_zero()
    return value is not None and not isinstance(value, bsonvalues.Undefined)


def _plain(path: str, operator: str, operand: Any) -> dict[str, Any]:
    if operator == "$exists":
        return {path: {"$exists": true_value(operand)}}
    if operator == "$elemMatch" and isinstance(operand, Mapping) and operand and not _is_value_elem_match(operand):
        # An object $elemMatch is a filter over the array's elements: normalised like one (nothing under a
        # plain path is encrypted).
        return {path: {"$elemMatch": _wrap(_and_level(operand, _PLAIN_CONTEXT))}}
    if operator == "$regex":
        return {path: operand if isinstance(operand, Mapping) and "$regex" in operand else {"$regex": operand}}
    if operator == "$ne":
        return {path: {"$not": {"$eq": operand}}}
    if operator == "$nin":
        return {path: {"$not": {"$in": operand}}}
    return {path: {operator: operand}}


# ---------------------------------------------------------------------------------------------- prefix paths


def _contains_object(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, list) and any(_contains_object(v) for v in value))


def _prefix(path: str, operator: str, operand: Any, ctx: Context) -> Node:
    """An object path holding encrypted fields: any object or array operand could spell out their values."""
    if operator in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
        if isinstance(operand, list):
            raise error("EQ_ARRAY_PREFIX", path=path)
        if isinstance(operand, Mapping):
            raise error("OBJECT_COMPARISON")
        return _plain(path, operator, operand)
    if operator in ("$in", "$nin", "$all"):
        if not isinstance(operand, list):
            raise error("MALFORMED", detail=f"{operator} needs an array")
        for element in operand:
            if isinstance(element, list):
                raise error("IN_ARRAY_PREFIX", path=path)
            if isinstance(element, Mapping):
                if operator == "$in" and any(f.algorithm == RANGE for f in ctx.schema.children(path)):
                    raise error("IN_RANGE_PREFIX")
                raise error("OBJECT_COMPARISON")
        return _plain(path, operator, operand)
    if operator == "$not":
        return _negate(path, operand, ctx)
    if operator == "$elemMatch":
        raise error("ELEM_MATCH", path=path)
    if operator in ("$exists", "$type", "$size", "$regex", "$mod", "$bitsAllSet", "$bitsAllClear",
                    "$bitsAnySet", "$bitsAnyClear"):
        if _contains_object(operand) and operator != "$regex":
            raise error("BAD_OPERATOR", path=path, op=operator)
        return _plain(path, operator, operand)
    raise error("BAD_OPERATOR", path=path, op=operator)


def _negate(path: str, operand: Any, ctx: Context) -> dict[str, Any]:
    """`{path: {$not: ...}}`, or `$nor` when the negated predicate is no longer a single-path one."""
    if isinstance(operand, (Regex,)) or _is_pattern(operand):
        inner_nodes = _path_predicates(path, {"$regex": operand}, ctx)
    elif _is_operator_object(operand):
        inner_nodes = _path_predicates(path, operand, ctx)
    else:
        raise error("MALFORMED", detail="$not needs a regex or a document")
    inner = _wrap(_finish_and(inner_nodes, ctx))
    if len(inner) == 1 and path in inner:
        return {path: {"$not": inner[path]}}
    return {"$nor": [inner]}


# ---------------------------------------------------------------------------------------------- encrypted paths


def _check_collation(value: Any, ctx: Context) -> None:
    if ctx.non_simple_collation and bsonvalues.bson_type(value) in STRING_TYPES:
        raise error("COLLATION", type=bsonvalues.bson_type(value))


def _equality_placeholder(field: EncryptedField, value: Any, ctx: Context) -> Any:
    if value is None:
        raise error("EQ_NULL", path=field.path)
    _check_collation(value, ctx)
    return ctx.marked(placeholders.equality_find_placeholder(field, value))


def _op_eq(field: EncryptedField, operand: Any, ctx: Context) -> Node:
    if field.algorithm == RANGE:
        return RangeComparison(field, "$eq", operand)
    if operand is None:
        raise error("EQ_NULL", path=field.path)
    return {field.path: {"$eq": _equality_placeholder(field, operand, ctx)}}


def _op_ne(field: EncryptedField, operand: Any, ctx: Context) -> Node:
    positive = _op_eq(field, operand, ctx)
    if isinstance(positive, RangeComparison):
        return {"$nor": [_range_predicates(field, [positive], ctx)[0]]}
    return {field.path: {"$not": positive[field.path]}}


def _in_values(field: EncryptedField, operand: Any) -> list[Any]:
    if not isinstance(operand, list):
        raise error("MALFORMED", detail="$in needs an array")
    if field.algorithm == RANGE:
        return operand  # each element goes through the range type checks (null -> 6742000)
    for element in operand:
        if element is None:
            raise error("IN_NULL", path=field.path)
        if isinstance(element, Regex) or _is_pattern(element):
            raise error("IN_REGEX", path=field.path)
        if isinstance(element, list):
            raise error("IN_NESTED_ARRAY")
    return operand


def _op_in(field: EncryptedField, operand: Any, ctx: Context) -> Node:
    values = _in_values(field, operand)
    if not values:
        # Nothing to encrypt, and `{$or: []}` would not parse: an empty $in matches nothing as it is.
        return {field.path: {"$in": []}}
    if field.algorithm == RANGE:
        return {"$or": [_range_point(field, v, ctx) for v in _range_in_values(field, values)]}
    return {field.path: {"$in": [_equality_placeholder(field, v, ctx) for v in values]}}


def _range_in_values(field: EncryptedField, values: list[Any]) -> list[Any]:
    """A range $in's values as mongocryptd 8.x takes them: type-checked and coerced, then as the ordered,
    de-duplicated set its parser keeps (NaN first), NaN refused when its placeholder is built (6991000/
    6991001). Its bounds check's answer is unused there: out-of-bounds values are marked anyway (and
    libmongocrypt refuses to encrypt them)."""
    coerced = [placeholders.range_value(field, v) for v in values]
    nan = next((v for v in coerced if is_nan(v)), None)
    if nan is not None:
        raise error("BOUND_NAN_DECIMAL" if isinstance(nan, Decimal128) else "BOUND_NAN")
    unique: dict[Any, Any] = {}
    for value in coerced:
        unique.setdefault(numeric(value), value)
    return [unique[key] for key in sorted(unique)]


def _range_point(field: EncryptedField, value: Any, ctx: Context) -> dict[str, Any]:
    """[value, value] as mongocryptd's two-sided match predicate: full placeholder, then the stub."""
    payload_id = ctx.payload_id()
    gte, lte = placeholders.GTE, placeholders.LTE
    full = placeholders.range_find_placeholder(field, value, True, value, True, payload_id, gte, lte)
    stub = placeholders.range_stub_placeholder(field, payload_id, gte, lte)
    return RangeAnd({"$and": [{field.path: {"$gte": ctx.marked(full)}}, {field.path: {"$lte": ctx.marked(stub)}}]})


def _op_nin(field: EncryptedField, operand: Any, ctx: Context) -> Node:
    positive = _op_in(field, operand, ctx)
    if field.algorithm == RANGE:
        return {"$nor": [positive]}
    return {field.path: {"$not": positive[field.path]}}


def _op_range(operator: str) -> Callable[[EncryptedField, Any, Context], Node]:
    def rule(field: EncryptedField, operand: Any, ctx: Context) -> Node:
        if field.algorithm != RANGE:
            return NonRangeComparison(field, operator)
        return RangeComparison(field, operator, operand)

    return rule


def _op_exists(field: EncryptedField, operand: Any, ctx: Context) -> Node:
    return {field.path: {"$exists": true_value(operand)}}


def _op_not(field: EncryptedField, operand: Any, ctx: Context) -> Node:
    return _negate(field.path, operand, ctx)


def _op_elem_match(field: EncryptedField, operand: Any, ctx: Context) -> Node:
    raise error("ELEM_MATCH", path=field.path)


# Operator -> rule at an encrypted path. No row: refused (51092).
ENCRYPTED_OPERATORS: dict[str, Callable[[EncryptedField, Any, Context], Node]] = {
    "$eq": _op_eq,
    "$ne": _op_ne,
    "$in": _op_in,
    "$nin": _op_nin,
    "$gt": _op_range("$gt"),
    "$gte": _op_range("$gte"),
    "$lt": _op_range("$lt"),
    "$lte": _op_range("$lte"),
    "$exists": _op_exists,
    "$not": _op_not,
    "$elemMatch": _op_elem_match,
}


def _encrypted(field: EncryptedField, operator: str, operand: Any, ctx: Context) -> Node:
    rule = ENCRYPTED_OPERATORS.get(operator)
    if rule is None:
        raise error("BAD_OPERATOR", path=field.path, op=operator)
    if operator in ("$eq", "$ne", "$in", "$nin") and field.algorithm not in (EQUALITY, RANGE):
        raise error("NOT_EQUALITY_INDEXED")
    return rule(field, operand, ctx)


# ---------------------------------------------------------------------------------------------- ranges


class RangeAnd(dict):  # type: ignore[type-arg]
    """`{$and: [{f: {$gte: FULL}}, {f: {$lte: STUB}}]}`: a two-sided range, which an enclosing $and flattens."""


ALWAYS_FALSE = {"$alwaysFalse": 1}


def _finish_and(nodes: list[Node], ctx: Context, in_and: bool | None = None) -> list[dict[str, Any]]:
    """Serialise an AND node's children: other predicates in place, then each range field's interval,
    by path order (as mongocryptd re-adds them); an empty interval makes the whole AND false."""
    if in_and is None:
        in_and = len(nodes) > 1
    finished: list[dict[str, Any]] = []
    ranges: dict[str, list[RangeComparison]] = {}
    for node in nodes:
        if isinstance(node, NonRangeComparison):
            raise error("NOT_RANGE_INDEXED_IN_AND" if in_and else "NOT_RANGE_INDEXED", path=node.field.path,
                        op=node.operator)
        if isinstance(node, RangeComparison):
            ranges.setdefault(node.field.path, []).append(node)
        else:
            finished.append(node)
    for path in sorted(ranges):
        comparisons = ranges[path]
        predicates = _range_predicates(comparisons[0].field, comparisons, ctx)
        if predicates == [ALWAYS_FALSE]:
            return [dict(ALWAYS_FALSE)]
        finished.extend(predicates)
    return finished


def _within(field: EncryptedField, value: Any) -> bool:
    config = field.range
    return numeric(config.min) <= numeric(value) <= numeric(config.max)


def _range_predicates(field: EncryptedField, comparisons: list[RangeComparison], ctx: Context) -> list[dict[str, Any]]:
    """The intersection of `comparisons` on one range field, as the placeholders mongocryptd emits."""
    lower: Bound | None = None
    upper: Bound | None = None
    for comparison in comparisons:
        value = placeholders.range_value(field, comparison.value)
        if is_nan(value):
            # mongocryptd checks bounds before NaN-ness, and NaN orders below every number: out of bounds.
            if len(comparisons) == 1 and comparison.operator != "$eq":
                raise error("RANGE_OUT_OF_BOUNDS")
            raise error("UPPER_OUT_OF_BOUNDS" if comparison.operator in ("$lt", "$lte") else "LOWER_OUT_OF_BOUNDS")
        if comparison.operator in ("$gt", "$gte", "$eq"):
            lower = tighter_lower(lower, (value, comparison.operator != "$gt"))
        if comparison.operator in ("$lt", "$lte", "$eq"):
            upper = tighter_upper(upper, (value, comparison.operator != "$lt"))
    path = field.path
    if lower is not None and upper is not None:
        low, high = numeric(lower[0]), numeric(upper[0])
        if low > high or (low == high and not (lower[1] and upper[1])):
            return [dict(ALWAYS_FALSE)]
        if not _within(field, lower[0]):
            raise error("LOWER_OUT_OF_BOUNDS")
        if not _within(field, upper[0]):
            raise error("UPPER_OUT_OF_BOUNDS")
        first = placeholders.GTE if lower[1] else placeholders.GT
        second = placeholders.LTE if upper[1] else placeholders.LT
        payload_id = ctx.payload_id()
        full = placeholders.range_find_placeholder(field, lower[0], lower[1], upper[0], upper[1], payload_id, first,
                                                   second)
        stub = placeholders.range_stub_placeholder(field, payload_id, first, second)
        return [RangeAnd({"$and": [
            {path: {"$gte" if lower[1] else "$gt": ctx.marked(full)}},
            {path: {"$lte" if upper[1] else "$lt": ctx.marked(stub)}},
        ]})]
    payload_id = ctx.payload_id()
    if lower is not None:
        if not _within(field, lower[0]):
            raise error("RANGE_OUT_OF_BOUNDS")
        operator = "$gte" if lower[1] else "$gt"
        full = placeholders.range_find_placeholder(field, lower[0], lower[1], placeholders.POSITIVE_INFINITY, True,
                                                   payload_id, placeholders.OPERATOR_CODES[operator])
        return [{path: {operator: ctx.marked(full)}}]
    assert upper is not None
    if not _within(field, upper[0]):
        raise error("RANGE_OUT_OF_BOUNDS")
    operator = "$lte" if upper[1] else "$lt"
    full = placeholders.range_find_placeholder(field, placeholders.NEGATIVE_INFINITY, True, upper[0], upper[1],
                                               payload_id, placeholders.OPERATOR_CODES[operator])
    return [{path: {operator: ctx.marked(full)}}]


def touches_encrypted(filter_: Any, ctx: Context) -> bool:
    """Whether a filter (a validator, a partialFilterExpression) compares or names anything encrypted."""
    if not isinstance(filter_, Mapping):
        return False
    if ctx.schema.encrypts_anything and _mentions_json_schema(filter_):
        # mongocryptd's QE analysis has no $jsonSchema support at all.
        raise error("JSON_SCHEMA_VALIDATOR")
    probe = Context(ctx.schema, ctx.information, ctx.database)
    try:
        mark_filter(filter_, probe)
    except CommandError:  # any refusal means an encrypted field is involved
        return True
    return probe.tally.placeholders > 0


def _mentions_json_schema(filter_: Any) -> bool:
    if isinstance(filter_, Mapping):
        return "$jsonSchema" in filter_ or any(_mentions_json_schema(v) for k, v in filter_.items() if k in LOGICAL)
    if isinstance(filter_, list):
        return any(_mentions_json_schema(v) for v in filter_)
    return False
