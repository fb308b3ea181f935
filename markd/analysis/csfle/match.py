"""The match language (find filters, `$match`, update/delete `q`, validators) against a CSFLE schema.

A filter is read as mongod's MatchExpressionParser reads it and written back as its serializer
writes it (`{a: 1}` -> `{a: {$eq: 1}}`, several top-level clauses -> `$and`, `$ne` -> `$not: {$eq}`),
because libmongocrypt forwards mongocryptd's re-serialized filter whenever anything was marked.
`OPERATORS` maps each field operator to its rule; an operator without a row is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bson import Decimal128, Int64, Regex
from bson.json_util import dumps

from markd import bsonvalues
from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.ordering import sorted_set
from markd.analysis.csfle.placeholders import MarkContext, mark_value
from markd.analysis.csfle.schema import EMPTY, NOT_ENCRYPTED, PREFIX, UNKNOWN, Encrypted, EncryptionSchema, Metadata
from markd.analysis.csfle.walk import is_document, mark_document, touches_encryption


@dataclass(frozen=True, slots=True)
class Leaf:
    """One field operator application: `{path: {op: value}}`."""

    path: str
    op: str
    value: Any
    siblings: Mapping[str, Any]  # the other operators of the same field object ($options, $maxDistance...)


Rule = Callable[[Leaf, Metadata, MarkContext], list[dict[str, Any]]]


def render(expression: Mapping[str, Any]) -> str:
    """A readable form of a (sub)expression for error messages, as mongocryptd quotes them."""
    try:
        return dumps(expression)
    except Exception:  # an exotic value must not hide the real error
        return "<expression>"


def _is_regex(value: Any) -> bool:
    return isinstance(value, (Regex, re.Pattern))


def _regex_parts(value: Any) -> tuple[str, str]:
    if isinstance(value, Regex):
        return value.pattern, bsonvalues.regex_options(value)
    return value.pattern, ""


def _compare_context(context: MarkContext) -> MarkContext:
    return MarkContext(context.schema, True, None, context.collation_simple)


# -- rules -----------------------------------------------------------------------------------------


def _equality_value(leaf: Leaf, metadata: Metadata, context: MarkContext) -> Any:
    if isinstance(metadata, Encrypted):
        if leaf.value is None:
            fail("null_equality", path=leaf.path)
        return mark_value(metadata, leaf.value, leaf.path, _compare_context(context))
    if metadata is PREFIX:
        if isinstance(leaf.value, list):
            fail("eq_array_prefix", expr=render({leaf.path: {"$eq": leaf.value}}))
        if is_document(leaf.value):
            return mark_document(leaf.value, leaf.path, _compare_context(context))
        return leaf.value
    if metadata is UNKNOWN:
        fail("unknown_path", path=leaf.path)
    return leaf.value


def _eq(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    return [{leaf.path: {"$eq": _equality_value(leaf, metadata, context)}}]


def _ne(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    return [{leaf.path: {"$not": {"$eq": _equality_value(leaf, metadata, context)}}}]


def _in_values(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[Any]:
    """The $in list as mongod writes it back: equalities sorted and deduplicated (after marking), then regexes."""
    if not isinstance(leaf.value, list):
        fail("in_not_array" if leaf.op == "$in" else "nin_not_array")
    compare_context = _compare_context(context)  # once, not once per element of a long list
    equalities: list[Any] = []
    regexes: list[Any] = []
    for element in leaf.value:
        if isinstance(metadata, Encrypted):
            if _is_regex(element):
                fail("regex_in", path=leaf.path)
            if element is None:
                fail("null_in", path=leaf.path)
            equalities.append(mark_value(metadata, element, leaf.path, compare_context))
        elif metadata is UNKNOWN:
            fail("unknown_path", path=leaf.path)
        elif _is_regex(element):
            regexes.append(element)
        elif metadata is PREFIX:
            if isinstance(element, list):
                fail("in_array_prefix", path=leaf.path, element=render({"": element})[6:-1])
            equalities.append(mark_document(element, leaf.path, compare_context)
                              if is_document(element) else element)
        else:
            equalities.append(element)
    return [*sorted_set(equalities), *regexes]


def _in(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    return [{leaf.path: {"$in": _in_values(leaf, metadata, context)}}]


def _nin(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    return [{leaf.path: {"$not": {"$in": _in_values(leaf, metadata, context)}}}]


def _exists(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    # Presence reveals nothing the ciphertext's presence does not: allowed on any field.
    return [{leaf.path: {"$exists": bool(leaf.value) and leaf.value is not None}}]


def _range(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    expr = render({leaf.path: {leaf.op: leaf.value}})
    if isinstance(metadata, Encrypted):
        fail("range_on_encrypted", path=leaf.path, expr=expr)
    if metadata is UNKNOWN:
        fail("unknown_path", path=leaf.path)
    if metadata is PREFIX and touches_encryption(leaf.value, leaf.path, context):
        fail("range_holding_encrypted", expr=expr)
    return [{leaf.path: {leaf.op: leaf.value}}]


# mongod's BSON type aliases ($type), by name; "number" stands for every numeric type.
TYPE_ALIASES: dict[str, int] = {
    "double": 1, "string": 2, "object": 3, "array": 4, "binData": 5, "undefined": 6, "objectId": 7,
    "bool": 8, "date": 9, "null": 10, "regex": 11, "dbPointer": 12, "javascript": 13, "symbol": 14,
    "javascriptWithScope": 15, "int": 16, "timestamp": 17, "long": 18, "decimal": 19, "minKey": -1, "maxKey": 127,
}
TYPE_CODES = frozenset(TYPE_ALIASES.values())


def _whole_number(value: Any) -> int | None:
    """`value` as an integer if it is a number holding a whole value (int32/int64/double/decimal)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value == int(value) else None
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        return int(number) if number.is_finite() and number == number.to_integral_value() else None
    return None


def _type_operand(value: Any) -> list[Any]:
    """$type as mongod writes it back: an array, "number" first, then the type codes in ascending order."""
    every_number = False
    codes: set[int] = set()
    for element in value if isinstance(value, list) else [value]:
        if isinstance(element, str):
            if element == "number":
                every_number = True
            elif element in TYPE_ALIASES:
                codes.add(TYPE_ALIASES[element])
            else:
                fail("type_alias", alias=element)
        elif _is_number(element):
            code = _whole_number(element)
            if code is None or code not in TYPE_CODES:
                fail("type_code", code=element)
            codes.add(code)
        else:
            fail("type_kind")
    if not every_number and not codes:
        fail("type_empty")
    return (["number"] if every_number else []) + sorted(codes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool)


def _mod_part(value: Any, part: str) -> Int64:
    if not _is_number(value):
        fail("mod_divisor" if part == "divisor" else "mod_remainder")
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        if not number.is_finite():
            fail("mod_invalid", part=part)
        whole = int(number)
    elif isinstance(value, float):
        if not math.isfinite(value):
            fail("mod_invalid", part=part)
        whole = int(value)  # truncated toward zero, as mongod converts it
    else:
        whole = int(value)
    if not -(2**63) <= whole < 2**63:
        fail("mod_invalid", part=part)
    return Int64(whole)


def _mod_operand(value: Any) -> list[Any]:
    """$mod as mongod writes it back: [divisor, remainder] as 64-bit integers."""
    if not isinstance(value, list):
        fail("mod_not_array")
    if len(value) < 2:
        fail("mod_few")
    if len(value) > 2:
        fail("mod_many")
    divisor, remainder = _mod_part(value[0], "divisor"), _mod_part(value[1], "remainder")
    if divisor == 0:
        fail("mod_zero")
    return [divisor, remainder]


def _size_operand(value: Any) -> int:
    """$size as mongod writes it back: a 32-bit integer."""
    if not _is_number(value):
        fail("size_not_number")
    size = _whole_number(value)
    if size is None or not -(2**31) <= size < 2**31:
        fail("size_whole")
    if size < 0:
        fail("size_negative")
    return size


def _bit_positions(leaf: Leaf) -> list[int]:
    """$bitsAllSet & co. as mongod writes them back: the list of bit positions (int32)."""
    value = leaf.value
    if isinstance(value, list):
        positions: list[int] = []
        for element in value:
            position = _whole_number(element) if _is_number(element) else None
            if position is None or not 0 <= position < 2**31:
                fail("bits_position")
            positions.append(position)
        return positions
    if _is_number(value):
        mask = _whole_number(value)
        if mask is None or not mask < 2**63:
            fail("bits_mask_integer", op=leaf.op)
        if mask < 0:
            fail("bits_mask_negative", op=leaf.op)
        return [bit for bit in range(63) if mask >> bit & 1]
    if isinstance(value, bytes):  # Binary is a bytes subclass
        return [index * 8 + bit for index, byte in enumerate(bytes(value)) for bit in range(8) if byte >> bit & 1]
    fail("bits_kind", path=leaf.path, op=leaf.op)


# Leaf operands mongod normalizes when it parses them (and so writes back in another form).
LEAF_FORMS: dict[str, Callable[[Leaf], Any]] = {
    "$type": lambda leaf: _type_operand(leaf.value),
    "$mod": lambda leaf: _mod_operand(leaf.value),
    "$size": lambda leaf: _size_operand(leaf.value),
    "$bitsAllSet": _bit_positions,
    "$bitsAllClear": _bit_positions,
    "$bitsAnySet": _bit_positions,
    "$bitsAnyClear": _bit_positions,
}


def _not_on_encrypted(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    """Operators that inspect the value itself: meaningless on ciphertext, verbatim elsewhere."""
    normalize = LEAF_FORMS.get(leaf.op)
    operand = normalize(leaf) if normalize is not None else leaf.value  # parsed first, as mongod does
    if isinstance(metadata, Encrypted):
        fail("invalid_on_encrypted", path=leaf.path, expr=render({leaf.path: {leaf.op: leaf.value}}))
    if metadata is UNKNOWN:
        fail("unknown_path", path=leaf.path)
    return [{leaf.path: {leaf.op: operand}}]


def _regex(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    if _is_regex(leaf.value):
        pattern, flags = _regex_parts(leaf.value)
    else:
        pattern, flags = leaf.value, ""
    flags = leaf.siblings.get("$options", flags) or ""
    if isinstance(metadata, Encrypted):
        fail("invalid_on_encrypted", path=leaf.path, expr=render({leaf.path: {"$regex": pattern}}))
    if metadata is UNKNOWN:
        fail("unknown_path", path=leaf.path)
    return [{leaf.path: {"$regex": pattern, **({"$options": flags} if flags else {})}}]


def _geo(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    if isinstance(metadata, Encrypted):
        fail("invalid_on_encrypted", path=leaf.path, expr=render({leaf.path: {leaf.op: leaf.value}}))
    if metadata is UNKNOWN:
        fail("unknown_path", path=leaf.path)
    extras = {k: v for k, v in leaf.siblings.items() if k in ("$maxDistance", "$minDistance")}
    return [{leaf.path: {leaf.op: leaf.value, **extras}}]


def _elem_match(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    # mongocryptd does not look inside $elemMatch; an array cannot sit above an encrypted path, so on
    # an unencrypted path its contents compare nothing encrypted.  At or above one, refuse.
    if isinstance(metadata, Encrypted) or metadata in (PREFIX, UNKNOWN):
        fail("elem_match", expr=render({leaf.path: {"$elemMatch": leaf.value}}))
    if not is_document(leaf.value):
        fail("elem_match_not_object")
    return [{leaf.path: {"$elemMatch": _serialize_elem_match(leaf.value)}}]


def _serialize_elem_match(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The $elemMatch body as mongod writes it back (nothing in it is encrypted)."""
    plain = MarkContext(EncryptionSchema(EMPTY), comparison=True)
    first = next(iter(spec), "")
    if first.startswith("$") and first not in TOP_LEVEL_OPERATORS and first != "$comment":
        # The value form: operators applied to each array element itself.
        body: dict[str, Any] = {}
        for clause in _field_operators("", spec, NOT_ENCRYPTED, plain):
            body.update(clause[""] if "" in clause else clause)
        return body
    return mark_filter(spec, plain)


def _all(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    if not isinstance(leaf.value, list):
        fail("all_not_array")
    if not leaf.value:
        return [{"$alwaysFalse": 1}]
    clauses: list[dict[str, Any]] = []
    for element in leaf.value:
        if is_document(element) and "$elemMatch" in element:
            clauses += _elem_match(Leaf(leaf.path, "$elemMatch", element["$elemMatch"], {}), metadata, context)
        else:
            clauses += _eq(Leaf(leaf.path, "$eq", element, {}), metadata, context)
    return [{"$and": clauses}]


def _not(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    value = leaf.value
    if _is_regex(value):
        inner = _regex(Leaf(leaf.path, "$regex", value, {}), metadata, context)
    elif is_document(value) and value and all(key.startswith("$") for key in value):
        inner = _field_operators(leaf.path, value, metadata, context)
    else:
        fail("not_bad")
    merged: dict[str, Any] = {}
    for clause in inner:
        body = clause.get(leaf.path)
        if not isinstance(body, Mapping):
            return [{"$nor": [clause for clause in inner]}]
        merged.update(body)
    return [{leaf.path: {"$not": merged}}]


def _ignored(leaf: Leaf, metadata: Metadata, context: MarkContext) -> list[dict[str, Any]]:
    return []  # companions ($options, $maxDistance...) are written by their main operator


OPERATORS: dict[str, Rule] = {
    "$eq": _eq,
    "$ne": _ne,
    "$in": _in,
    "$nin": _nin,
    "$exists": _exists,
    "$gt": _range,
    "$gte": _range,
    "$lt": _range,
    "$lte": _range,
    "$regex": _regex,
    "$options": _ignored,
    "$type": _not_on_encrypted,
    "$size": _not_on_encrypted,
    "$mod": _not_on_encrypted,
    "$bitsAllSet": _not_on_encrypted,
    "$bitsAllClear": _not_on_encrypted,
    "$bitsAnySet": _not_on_encrypted,
    "$bitsAnyClear": _not_on_encrypted,
    "$geoWithin": _geo,
    "$within": _geo,
    "$geoIntersects": _geo,
    "$near": _geo,
    "$nearSphere": _geo,
    "$geoNear": _geo,
    "$maxDistance": _ignored,
    "$minDistance": _ignored,
    "$elemMatch": _elem_match,
    "$all": _all,
    "$not": _not,
}


def _field_operators(path: str, spec: Mapping[str, Any], metadata: Metadata, context: MarkContext
                     ) -> list[dict[str, Any]]:
    clauses: list[dict[str, Any]] = []
    if "$options" in spec and "$regex" not in spec:
        fail("options_without_regex")
    for op, value in spec.items():
        rule = OPERATORS.get(op)
        if rule is None:
            fail("unknown_operator", op=op)
        clauses += rule(Leaf(path, op, value, spec), metadata, context)
    return clauses


def _is_operator_object(value: Any) -> bool:
    if not is_document(value) or not value:
        return False
    first = next(iter(value))
    return first.startswith("$") and first not in ("$ref", "$id", "$db")


# -- top level -------------------------------------------------------------------------------------


def _logical(op: str, value: Any, context: MarkContext) -> dict[str, Any]:
    if not isinstance(value, list):
        fail("logical_not_array", op=op)
    if not value:
        fail("logical_empty")
    children = []
    for child in value:
        if not is_document(child):
            fail("logical_element")
        children.append(mark_filter(child, context))
    return {op: children}


def _expr(op: str, value: Any, context: MarkContext) -> dict[str, Any]:
    from markd.analysis.csfle import expressions

    return {"$expr": expressions.mark_match_expr(value, context)}


def _unsupported(op: str, value: Any, context: MarkContext) -> dict[str, Any]:
    fail("unsupported_match", expr=render({op: value}))


def _constant(op: str, value: Any, context: MarkContext) -> dict[str, Any]:
    return {op: 1}


def _sample_rate(op: str, value: Any, context: MarkContext) -> dict[str, Any]:
    """$sampleRate as mongod desugars it: an $expr comparing $rand with the rate (0 and 1 folded)."""
    if not _is_number(value):
        fail("sample_rate_type")
    rate = float(value.to_decimal()) if isinstance(value, Decimal128) else float(value)
    if not 0.0 <= rate <= 1.0:
        fail("sample_rate_range")
    if rate in (0.0, 1.0):
        return {"$expr": {"$const": rate == 1.0}}
    return {"$expr": {"$lt": [{"$rand": {}}, {"$const": rate}]}}


TopRule = Callable[[str, Any, MarkContext], dict[str, Any]]
TOP_LEVEL_OPERATORS: dict[str, TopRule] = {
    "$and": _logical,
    "$or": _logical,
    "$nor": _logical,
    "$expr": _expr,
    "$text": _unsupported,
    "$where": _unsupported,
    "$jsonSchema": _unsupported,
    "$alwaysTrue": _constant,
    "$alwaysFalse": _constant,
    "$sampleRate": _sample_rate,
}


def _clauses(filter_: Mapping[str, Any], context: MarkContext) -> list[dict[str, Any]]:
    clauses: list[dict[str, Any]] = []
    for key, value in filter_.items():
        if key.startswith("$"):
            if key == "$comment":
                continue  # mongod keeps a filter's $comment out of the parsed expression
            rule = TOP_LEVEL_OPERATORS.get(key)
            if rule is None:
                if key.startswith("$_internal"):
                    fail("unsupported_match", expr=render({key: value}))
                fail("unknown_top_operator", op=key)
            clauses.append(rule(key, value, context))
            continue
        metadata = context.schema.metadata_for(key)
        if _is_operator_object(value):
            clauses += _field_operators(key, value, metadata, context)
        elif _is_regex(value):
            clauses += _regex(Leaf(key, "$regex", value, {}), metadata, context)
        else:
            clauses += _eq(Leaf(key, "$eq", value, {}), metadata, context)
    return clauses


def mark_filter(filter_: Mapping[str, Any], context: MarkContext) -> dict[str, Any]:
    """The filter re-serialized as mongod would, with values compared to encrypted fields marked."""
    clauses = _clauses(filter_, context)
    if not clauses:
        return {}
    if len(clauses) == 1:
        return clauses[0]
    return {"$and": clauses}
