"""Aggregation expressions ($expr, $project...): comparisons with encrypted fields marked, the rest refused.

An expression may name an encrypted field only in a shape mongocryptd knows how to mark: compared
with a constant (`$eq`/`$ne`/`$in` on equality fields, `$gt`... on range fields) or searched by a
text operator (`$encStr*`). Any other reference to an encrypted field, or to an object holding one,
is refused: the server would compute on ciphertext, or compare it with plaintext sent in the clear.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson import Decimal128

from markd.analysis.qe import placeholders
from markd.analysis.qe.context import Context
from markd.analysis.qe.errors import error
from markd.analysis.qe.fields import (
    EQUALITY,
    RANGE,
    TEXT,
    Below,
    Bound,
    Encrypted,
    EncryptedField,
    Plain,
    Prefix,
    is_nan,
    numeric,
    tighter_lower,
    tighter_upper,
)

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
TEXT_ARGUMENTS = {
    "$encStrStartsWith": "prefix",
    "$encStrEndsWith": "suffix",
    "$encStrContains": "substring",
    "$encStrNormalizedEq": "string",
}
ROOT_VARIABLES = ("$$ROOT", "$$CURRENT")


def field_path(expression: Any) -> str | None:
    """The dotted path an expression like "$a.b" or "$$CURRENT.a.b" reads, if it is one."""
    if not isinstance(expression, str) or not expression.startswith("$"):
        return None
    for variable in ROOT_VARIABLES:
        if expression.startswith(variable + "."):
            return expression[len(variable) + 1:]
    if expression.startswith("$$"):
        return None
    return expression[1:]


def _check_reference(expression: str, ctx: Context, operator: str) -> None:
    """A bare field path outside a markable shape: refused if it reaches anything encrypted."""
    if expression in ROOT_VARIABLES:
        if ctx.schema.encrypts_anything:
            raise error("PREFIX_REFERENCE", path=expression)
        return
    path = field_path(expression)
    if path is None:
        return
    info = ctx.schema.lookup(path)
    if isinstance(info, Encrypted):
        raise error("EXPRESSION", path=path)
    if isinstance(info, Prefix):
        raise error("PREFIX_REFERENCE", path=path)
    if isinstance(info, Below):
        raise error("BELOW_ENCRYPTED", path=path)


def _constant(expression: Any) -> tuple[bool, Any]:
    """(True, value) when the expression is a constant mongocryptd can encrypt."""
    if isinstance(expression, Mapping) and len(expression) == 1 and next(iter(expression)) in ("$const", "$literal"):
        return True, next(iter(expression.values()))
    if isinstance(expression, str) and expression.startswith("$"):
        return False, None
    if isinstance(expression, (Mapping, list)):
        return False, None
    return True, expression


def _encrypted_operand(expression: Any, ctx: Context) -> EncryptedField | None:
    path = field_path(expression)
    if path is None:
        return None
    info = ctx.schema.lookup(path)
    return info.field if isinstance(info, Encrypted) else None


def mark_expression(expression: Any, ctx: Context, operator: str = "expression") -> Any:
    """The expression with every encrypted comparison marked; refuses other uses of encrypted fields."""
    if isinstance(expression, str):
        _check_reference(expression, ctx, operator)
        return expression
    if isinstance(expression, list):
        return [mark_expression(e, ctx, operator) for e in expression]
    if not isinstance(expression, Mapping):
        return expression
    if len(expression) == 1:
        name, argument = next(iter(expression.items()))
        if name.startswith("$"):
            return _mark_operator(name, argument, ctx)
    for key in expression:
        if key.startswith("$"):
            raise error("MALFORMED", detail=f"an expression object must have exactly one operator: {key}")
    return {key: mark_expression(value, ctx, operator) for key, value in expression.items()}


def _mark_operator(name: str, argument: Any, ctx: Context) -> Any:
    if name in ("$const", "$literal"):
        return {name: argument}
    if name in COMPARISONS and isinstance(argument, list) and len(argument) == 2:
        marked = _comparison(name, argument, ctx)
        if marked is not None:
            return marked
    if name == "$in" and isinstance(argument, list) and len(argument) == 2:
        field = _encrypted_operand(argument[0], ctx)
        if field is not None and field.algorithm == RANGE and isinstance(argument[1], list):
            return _range_in(argument[0], field, argument[1], ctx)
        if field is not None:
            return {"$in": [argument[0], _in_list(field, argument[1], ctx)]}
        path = field_path(argument[0])
        if (path is not None and isinstance(argument[1], list) and isinstance(ctx.schema.lookup(path), Prefix)
                and any(f.algorithm == RANGE for f in ctx.schema.children(path))):
            raise error("EXPR_IN_RANGE_PREFIX")
    if name == "$and" and isinstance(argument, list):
        return _and_expression(argument, ctx)
    if name in TEXT_ARGUMENTS:
        return {name: _text(name, argument, ctx)}
    return {name: mark_expression(argument, ctx, name)}


def _comparison(name: str, argument: list[Any], ctx: Context) -> Any | None:
    left, right = argument
    field = _encrypted_operand(left, ctx)
    constant_side = right
    if field is None:
        field = _encrypted_operand(right, ctx)
        constant_side = left
        if field is None:
            return None
        # `c < $f` is `$f > c`.
        name = {"$gt": "$lt", "$gte": "$lte", "$lt": "$gt", "$lte": "$gte"}.get(name, name)
        left = right
    is_constant, value = _constant(constant_side)
    if not is_constant:
        raise error("NON_CONSTANT_COMPARISON", path=field.path)
    if not ctx.encrypted_comparisons and field.algorithm in (EQUALITY, RANGE):
        raise error("EXPR_CONTEXT")
    if field.algorithm == EQUALITY:
        if name not in ("$eq", "$ne"):
            # An ordering comparison cannot use an equality index: the field reference itself is refused.
            raise error("EXPRESSION", path=field.path)
        if value is None:
            raise error("EQ_NULL", path=field.path)
        return {name: [left, {"$const": ctx.marked(placeholders.equality_find_placeholder(field, value))}]}
    if field.algorithm == RANGE:
        return _range_comparison(name, left, field, value, ctx)
    if name in ("$eq", "$ne"):
        raise error("NOT_EQUALITY_INDEXED")
    raise error("EXPRESSION", path=field.path)


def _range_comparison(name: str, left: Any, field: EncryptedField, value: Any, ctx: Context) -> Any:
    """`{$gt: ["$f", c]}` -> `{$and: [{$gt: ["$f", P]}, {$lte: ["$f", P]}]}` with one two-sided placeholder P."""
    value = placeholders.range_value(field, value)
    config = field.range
    if is_nan(value) or not numeric(config.min) <= numeric(value) <= numeric(config.max):
        raise error("EXPR_OUT_OF_BOUNDS")
    lower, lower_included = value, name != "$gt"
    upper, upper_included = value, name != "$lt"
    if name in ("$gt", "$gte"):
        upper, upper_included = placeholders.POSITIVE_INFINITY, True
    if name in ("$lt", "$lte"):
        lower, lower_included = placeholders.NEGATIVE_INFINITY, True
    both = _two_sided(left, field, (lower, lower_included), (upper, upper_included), ctx)
    return {"$not": [both]} if name == "$ne" else both


def _two_sided(left: Any, field: EncryptedField, lower: Bound, upper: Bound, ctx: Context) -> dict[str, Any]:
    """Both comparisons of an interval, each carrying the same full placeholder (as mongocryptd does here)."""
    first = placeholders.GTE if lower[1] else placeholders.GT
    second = placeholders.LTE if upper[1] else placeholders.LT
    full = placeholders.range_find_placeholder(field, lower[0], lower[1], upper[0], upper[1], ctx.payload_id(),
                                               first, second)
    ctx.marked(full)
    ctx.marked(full)
    return {"$and": [
        {"$gte" if lower[1] else "$gt": [left, {"$const": full}]},
        {"$lte" if upper[1] else "$lt": [left, {"$const": full}]},
    ]}


RANGE_EXPRESSION_OPERATORS = ("$gt", "$gte", "$lt", "$lte", "$eq")
FLIPPED = {"$gt": "$lt", "$gte": "$lte", "$lt": "$gt", "$lte": "$gte", "$eq": "$eq"}


def _range_term(expression: Any, ctx: Context) -> tuple[EncryptedField, str, Any, Any] | None:
    """(field, operator, constant, field expression) for `{$gt: ["$f", c]}` (either order) on a range field."""
    if not (isinstance(expression, Mapping) and len(expression) == 1):
        return None
    name, argument = next(iter(expression.items()))
    if name not in RANGE_EXPRESSION_OPERATORS or not (isinstance(argument, list) and len(argument) == 2):
        return None
    left, right = argument
    field = _encrypted_operand(left, ctx)
    if field is None:
        field, name, left, right = _encrypted_operand(right, ctx), FLIPPED[name], right, left
    if field is None or field.algorithm != RANGE:
        return None
    is_constant, value = _constant(right)
    return (field, name, value, left) if is_constant else None


def _and_expression(arguments: list[Any], ctx: Context) -> Any:
    """`$and` of comparisons, as mongocryptd rewrites it: comparisons on range fields leave their places and
    come last, one `$and` pair per field in order of first appearance (several on a field intersected into
    one interval); an empty interval makes the whole `$and` false, with nothing marked."""
    terms = [_range_term(argument, ctx) for argument in arguments]
    groups: dict[str, list[tuple[EncryptedField, str, Any, Any]]] = {}
    for term in terms:
        if term is not None:
            groups.setdefault(term[0].path, []).append(term)
    intervals = {path: _interval(group) for path, group in groups.items() if len(group) > 1}
    if any(interval is None for interval in intervals.values()):
        return {"$const": False}
    marked = [mark_expression(argument, ctx, "$and") for argument, term in zip(arguments, terms, strict=True)
              if term is None]
    for path, group in groups.items():
        field, name, value, left = group[0]
        if len(group) == 1:
            marked.append(_range_comparison(name, left, field, value, ctx))
            continue
        interval = intervals[path]
        assert interval is not None
        lower, upper = interval
        config = field.range
        for bound in (lower, upper):
            infinite = isinstance(bound[0], float) and bound[0] in (placeholders.POSITIVE_INFINITY,
                                                                    placeholders.NEGATIVE_INFINITY)
            if not infinite and not numeric(config.min) <= numeric(bound[0]) <= numeric(config.max):
                raise error("EXPR_CLOSED_OUT_OF_BOUNDS")
        marked.append(_two_sided(left, field, lower, upper, ctx))
    return {"$and": marked}


def _interval(group: list[tuple[EncryptedField, str, Any, Any]]) -> tuple[Bound, Bound] | None:
    """The intersection of several comparisons on one range field; None when it is empty."""
    field = group[0][0]
    lower: Bound | None = None
    upper: Bound | None = None
    for _, operator, constant, _ in group:
        constant = placeholders.range_value(field, constant)
        if is_nan(constant):
            # NaN orders below every number: out of the index's bounds, as mongocryptd finds it.
            raise error("EXPR_CLOSED_OUT_OF_BOUNDS")
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


def _range_in(left: Any, field: EncryptedField, values: list[Any], ctx: Context) -> dict[str, Any]:
    """`{$in: ["$f", [c1, c2]]}` on a range field -> `{$or: [<[c1, c1] two-sided>, <[c2, c2] two-sided>]}`.

    As mongocryptd 8.x does: one payload id per element; the constants' types are checked (coercion),
    but their bounds are not (its bounds check's answer is unused here), while NaN is refused (6991000).
    """
    if not ctx.encrypted_comparisons:
        raise error("EXPR_IN_CONTEXT")
    alternatives = []
    for element in values:
        is_constant, constant = _constant(element)
        if not is_constant:
            raise error("NON_CONSTANT_COMPARISON", path=field.path)
        value = placeholders.range_value(field, constant)
        if is_nan(value):
            raise error("BOUND_NAN_DECIMAL" if isinstance(value, Decimal128) else "BOUND_NAN")
        alternatives.append(_two_sided(left, field, (value, True), (value, True), ctx))
    return {"$or": alternatives}


def _in_list(field: EncryptedField, values: Any, ctx: Context) -> Any:
    if field.algorithm != EQUALITY:
        raise error("EXPRESSION", path=field.path)
    if not isinstance(values, list):
        raise error("EXPR_IN_CONSTANT")
    if not ctx.encrypted_comparisons:
        raise error("EXPR_CONTEXT")
    marked = []
    for value in values:
        is_constant, constant = _constant(value)
        if not is_constant:
            raise error("EXPR_IN_CONSTANT")
        if constant is None:
            raise error("IN_NULL", path=field.path)
        marked.append({"$const": ctx.marked(placeholders.equality_find_placeholder(field, constant))})
    return marked


def _text(name: str, argument: Any, ctx: Context) -> dict[str, Any]:
    key = TEXT_ARGUMENTS[name]
    if not isinstance(argument, Mapping) or set(argument) != {"input", key}:
        raise error("TEXT_ARGUMENT", op=name, argument=key)
    path = field_path(argument["input"])
    info = ctx.schema.lookup(path) if path is not None else None
    if not isinstance(info, Encrypted):
        raise error("TEXT_INPUT", op=name)
    field = info.field
    if field.algorithm != TEXT:
        raise error("TEXT_ON_NON_TEXT", op=name, path=field.path)
    is_constant, value = _constant(argument[key])
    if not is_constant:
        raise error("TEXT_STRING", op=name, argument=key)
    if not ctx.encrypted_comparisons:
        raise error("EXPR_CONTEXT")
    marked = ctx.marked(placeholders.text_find_placeholder(field, name, value))
    return {"input": argument["input"], key: {"$const": marked}}


def encrypted_reference(expression: Any, ctx: Context) -> str | None:
    """The first encrypted field (or object holding one) an expression reads, if any."""
    if isinstance(expression, str):
        if expression in ROOT_VARIABLES and ctx.schema.encrypts_anything:
            return expression
        path = field_path(expression)
        return path if path is not None and not _is_plain(path, ctx) else None
    if isinstance(expression, list):
        return next((r for r in (encrypted_reference(e, ctx) for e in expression) if r is not None), None)
    if isinstance(expression, Mapping):
        if len(expression) == 1 and next(iter(expression)) in ("$const", "$literal"):
            return None
        return next((r for r in (encrypted_reference(v, ctx) for v in expression.values()) if r is not None), None)
    return None


def references_encrypted(expression: Any, ctx: Context) -> bool:
    """Whether an expression reads any encrypted field or an object holding one (used by update pipelines)."""
    if isinstance(expression, str):
        if expression in ROOT_VARIABLES:
            return ctx.schema.encrypts_anything
        path = field_path(expression)
        return path is not None and not _is_plain(path, ctx)
    if isinstance(expression, list):
        return any(references_encrypted(e, ctx) for e in expression)
    if isinstance(expression, Mapping):
        if len(expression) == 1 and next(iter(expression)) in ("$const", "$literal"):
            return False
        return any(references_encrypted(v, ctx) for v in expression.values())
    return False


def _is_plain(path: str, ctx: Context) -> bool:
    return isinstance(ctx.schema.lookup(path), Plain)
