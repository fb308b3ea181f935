"""The match language (find filters, `$match`, update/delete `q`, validators), for both schemes.

A filter is read as mongod's MatchExpressionParser reads it and written back as its serializer
writes it (`{a: 1}` -> `{a: {$eq: 1}}`, several clauses -> `$and`, `$ne` -> `$not: {$eq}`), because
libmongocrypt forwards the re-serialized filter whenever anything in the command was marked.
Every top-level and field operator has a row; an operator without one is refused with mongod's own
parse error (BadValue).  A predicate on a path that is encrypted, above an encrypted path, or of
unknown encryption goes to the scheme (`Scheme.match_leaf`); on any other path it is only
normalized.  An AND level is finished by the scheme (Queryable Encryption intersects range
predicates on one field there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bson import Decimal128, Regex

from markd import bsonvalues
from markd.analysis import expressions, notation
from markd.analysis.context import Scope
from markd.analysis.errors import Quoted
from markd.analysis.expressions import is_document
from markd.analysis.ordering import sorted_set
from markd.analysis.schema import EMPTY, NOT_ENCRYPTED, is_encrypted, lookup
from markd.errors import CommandError

Node = Any  # a serialized predicate (a dict), or a scheme's pending predicate finished by finish_and


@dataclass(frozen=True, slots=True)
class Leaf:
    """One field operator application: `{path: {op: value}}`."""

    path: str
    op: str
    value: Any
    siblings: Mapping[str, Any]  # the other operators of the same field object ($options, $maxDistance...)

    def render(self) -> Quoted:
        return render({self.path: {self.op: self.value}})

    @property
    def element_name(self) -> str:
        """The name of the element holding the value, as the command wrote it: `{f: v}` or `{f: {$eq: v}}`."""
        return self.path if self.op == "$eq" and "$eq" not in self.siblings else self.op


def render(expression: Any) -> Quoted:
    """A (sub)expression quoted in an error message as mongod writes it (the types only, when redacted)."""
    return notation.quoted(expression)


def bad_value(message: str) -> CommandError:
    return CommandError(2, message)


def is_regex(value: Any) -> bool:
    return isinstance(value, (Regex, re.Pattern))


def regex_parts(value: Any) -> tuple[str, str]:
    if isinstance(value, Regex):
        return value.pattern, bsonvalues.regex_options(value)
    return value.pattern, ""


def true_value(value: Any) -> bool:
    """BSON truthiness as the server reads `$exists`: false, 0, null and undefined are false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, Decimal128):
        return not value.to_decimal().is_zero()
    return value is not None and not isinstance(value, bsonvalues.Undefined)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool)


def non_negative_long(name: str, value: Any, code: int, context: str = "") -> int:
    """mongod's parse of a non-negative 64-bit integer element (`name: value`), refused with its reason."""
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    if not is_number(value):
        reason = "Expected a number in: "
    elif number != number:
        reason = "Expected an integer, but found NaN in: "
    elif number in (math.inf, -math.inf) or not -(2**63) <= number < 2**63:
        reason = "Cannot represent as a 64-bit integer: "
    elif number != int(number):
        reason = "Expected an integer: "
    elif number < 0:
        reason = "Expected a non-negative number in: "
    else:
        return int(number)
    shown = notation.quoted_element(name, value)
    raise CommandError(code, f"{context}{reason}{shown.shown}", redacted=f"{context}{reason}{shown.redacted}")


def whole_number(value: Any) -> int | None:
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


# -- plain operands, as mongod normalizes them --------------------------------------------------------

# mongod's BSON type aliases ($type), by name; "number" stands for every numeric type.
TYPE_ALIASES: dict[str, int] = {
    "double": 1, "string": 2, "object": 3, "array": 4, "binData": 5, "undefined": 6, "objectId": 7,
    "bool": 8, "date": 9, "null": 10, "regex": 11, "dbPointer": 12, "javascript": 13, "symbol": 14,
    "javascriptWithScope": 15, "int": 16, "timestamp": 17, "long": 18, "decimal": 19, "minKey": -1, "maxKey": 127,
}
TYPE_CODES = frozenset(TYPE_ALIASES.values())


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
                raise bad_value(f"Unknown type name alias: {element}")
        elif is_number(element):
            code = whole_number(element)
            if code is None or code not in TYPE_CODES:
                raise bad_value(f"Invalid numerical type code: {element}")
            codes.add(code)
        else:
            raise bad_value("type must be represented as a number or a string")
    if not every_number and not codes:
        raise CommandError(9, "$type must match at least one type")
    return (["number"] if every_number else []) + sorted(codes)


def _mod_part(value: Any, part: str) -> Any:
    from bson import Int64

    if not is_number(value):
        raise bad_value(f"malformed mod, {part} not a number")
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        if not number.is_finite():
            raise bad_value(f"malformed mod, {part} value is invalid")
        whole = int(number)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad_value(f"malformed mod, {part} value is invalid")
        whole = int(value)  # truncated toward zero, as mongod converts it
    else:
        whole = int(value)
    if not -(2**63) <= whole < 2**63:
        raise bad_value(f"malformed mod, {part} value is invalid")
    return Int64(whole)


def _mod_operand(value: Any) -> list[Any]:
    """$mod as mongod writes it back: [divisor, remainder] as 64-bit integers."""
    if not isinstance(value, list):
        raise bad_value("malformed mod, needs to be an array")
    if len(value) < 2:
        raise bad_value("malformed mod, not enough elements")
    if len(value) > 2:
        raise bad_value("malformed mod, too many elements")
    divisor, remainder = _mod_part(value[0], "divisor"), _mod_part(value[1], "remainder")
    if divisor == 0:
        raise bad_value("divisor cannot be 0")
    return [divisor, remainder]


def _size_operand(value: Any) -> int:
    """$size as mongod writes it back: a 32-bit integer."""
    if not is_number(value):
        raise bad_value("$size needs a number")
    size = whole_number(value)
    if size is None or not -(2**31) <= size < 2**31:
        raise bad_value("$size must be a whole number")
    if size < 0:
        raise bad_value("$size may not be negative")
    return size


def _bit_positions(leaf: Leaf) -> list[int]:
    """$bitsAllSet & co. as mongod writes them back: the list of bit positions (int32)."""
    value = leaf.value
    if isinstance(value, list):
        positions: list[int] = []
        for element in value:
            position = whole_number(element) if is_number(element) else None
            if position is None or not 0 <= position < 2**31:
                raise bad_value("Failed to parse bit position. Expected a non-negative integer that fits in an int")
            positions.append(position)
        return positions
    if is_number(value):
        mask = whole_number(value)
        if mask is None or not mask < 2**63:
            raise CommandError(9, f"Expected an integer: {leaf.op}")
        if mask < 0:
            raise CommandError(9, f"Expected a non-negative number in: {leaf.op}")
        return [bit for bit in range(63) if mask >> bit & 1]
    if isinstance(value, bytes):  # Binary is a bytes subclass
        return [index * 8 + bit for index, byte in enumerate(bytes(value)) for bit in range(8) if byte >> bit & 1]
    raise bad_value(f"{leaf.path} takes an Array, a number, or a BinData but received: {leaf.op}")


# Operands mongod normalizes when it parses them (and so writes back in another form).
LEAF_FORMS: dict[str, Callable[[Leaf], Any]] = {
    "$type": lambda leaf: _type_operand(leaf.value),
    "$mod": lambda leaf: _mod_operand(leaf.value),
    "$size": lambda leaf: _size_operand(leaf.value),
    "$bitsAllSet": _bit_positions,
    "$bitsAllClear": _bit_positions,
    "$bitsAnySet": _bit_positions,
    "$bitsAnyClear": _bit_positions,
}


def parse_operand(leaf: Leaf) -> Any:
    """The operand as mongod's parser keeps it (its parse errors first, before any encryption rule)."""
    normalize = LEAF_FORMS.get(leaf.op)
    return normalize(leaf) if normalize is not None else leaf.value


def in_list(leaf: Leaf) -> list[Any]:
    if not isinstance(leaf.value, list):
        raise bad_value("$in needs an array" if leaf.op == "$in" else "$nin needs an array")
    return leaf.value


def plain_in_values(values: list[Any]) -> list[Any]:
    """A $in list as mongod writes it back: equalities sorted and de-duplicated, then regexes."""
    equalities = [value for value in values if not is_regex(value)]
    regexes = [value for value in values if is_regex(value)]
    return [*sorted_set(equalities), *regexes]


def regex_predicate(leaf: Leaf) -> dict[str, Any]:
    if is_regex(leaf.value):
        pattern, flags = regex_parts(leaf.value)
    elif isinstance(leaf.value, str):
        pattern, flags = leaf.value, ""
    else:
        raise bad_value("$regex has to be a string")
    flags = leaf.siblings.get("$options", flags) or ""
    return {"$regex": pattern, **({"$options": flags} if flags else {})}


def plain_leaf(leaf: Leaf, scope: Scope) -> list[Node]:
    """A predicate on a path nothing encrypted is at, above or below: normalized, never marked."""
    op, path = leaf.op, leaf.path
    if op == "$eq":
        return [{path: {"$eq": leaf.value}}]
    if op == "$ne":
        return [{path: {"$not": {"$eq": leaf.value}}}]
    if op in ("$in", "$nin"):
        values = plain_in_values(in_list(leaf))
        return [{path: {"$in": values}} if op == "$in" else {path: {"$not": {"$in": values}}}]
    if op == "$exists":
        return [{path: {"$exists": true_value(leaf.value)}}]
    if op == "$regex":
        return [{path: regex_predicate(leaf)}]
    if op in GEO_OPERATORS:
        extras = {k: v for k, v in leaf.siblings.items() if k in ("$maxDistance", "$minDistance")}
        return [{path: {op: leaf.value, **extras}}]
    if op == "$elemMatch":
        return [{path: {"$elemMatch": _elem_match_body(leaf.value, scope)}}]
    if op == "$all":
        return all_predicate(leaf, scope)
    if op == "$not":
        return not_predicate(leaf, scope)
    return [{path: {op: parse_operand(leaf)}}]


def all_predicate(leaf: Leaf, scope: Scope) -> list[Node]:
    """$all is an AND of equalities (and $elemMatch clauses) on the path, as mongod parses it."""
    if not isinstance(leaf.value, list):
        raise bad_value("$all needs an array")
    if not leaf.value:
        return [{"$alwaysFalse": 1}]
    clauses: list[Node] = []
    for element in leaf.value:
        if is_document(element) and "$elemMatch" in element:
            clauses += field_predicate(Leaf(leaf.path, "$elemMatch", element["$elemMatch"], {}), scope)
        else:
            clauses += field_predicate(Leaf(leaf.path, "$eq", element, {}), scope)
    return [{"$and": scope.scheme.finish_and(clauses, scope, True)}]


def _elem_match_body(spec: Any, scope: Scope) -> dict[str, Any]:
    """The $elemMatch body as mongod writes it back; nothing in it is encrypted (its path is not)."""
    if not is_document(spec):
        raise bad_value("$elemMatch needs an Object")
    plain = scope.with_current(EMPTY)
    first = next(iter(spec), "")
    if first.startswith("$") and first not in TOP_LEVEL_OPERATORS and first != "$comment":
        # The value form: operators applied to each array element itself.
        body: dict[str, Any] = {}
        for clause in field_operators("", spec, plain):
            body.update(clause[""] if "" in clause else clause)
        return body
    return filter_node(spec, plain)


def not_predicate(leaf: Leaf, scope: Scope) -> list[Node]:
    """`{path: {$not: ...}}`: the negated predicates merged under one $not, or a $nor of them."""
    value = leaf.value
    if is_regex(value):
        inner = field_predicate(Leaf(leaf.path, "$regex", value, {}), scope)
    elif is_document(value) and value and all(key.startswith("$") for key in value):
        inner = field_operators(leaf.path, value, scope)
    else:
        raise bad_value("$not needs a regex or a document")
    finished = scope.scheme.finish_and(inner, scope, len(inner) > 1)
    merged: dict[str, Any] = {}
    for clause in finished:
        body = clause.get(leaf.path) if isinstance(clause, Mapping) and len(clause) == 1 else None
        if not isinstance(body, Mapping):
            return [{"$nor": [wrap(finished)]}]
        merged.update(body)
    return [{leaf.path: {"$not": merged}}]


GEO_OPERATORS = frozenset({"$geoWithin", "$within", "$geoIntersects", "$near", "$nearSphere", "$geoNear"})
COMPANIONS = frozenset({"$options", "$maxDistance", "$minDistance"})
# Every field-level operator of the match language.
FIELD_OPERATORS = frozenset({
    "$eq", "$ne", "$in", "$nin", "$exists", "$gt", "$gte", "$lt", "$lte", "$regex", "$type", "$size", "$mod",
    "$bitsAllSet", "$bitsAllClear", "$bitsAnySet", "$bitsAnyClear", "$elemMatch", "$all", "$not",
    *GEO_OPERATORS, *COMPANIONS,
})


def field_predicate(leaf: Leaf, scope: Scope) -> list[Node]:
    """One operator on one path: normalized where nothing is encrypted, the scheme's rule elsewhere."""
    try:
        metadata = scope.metadata_for(leaf.path) if scope.current.may_hold_encryption else NOT_ENCRYPTED
        if metadata is NOT_ENCRYPTED:
            return plain_leaf(leaf, scope)
        return scope.scheme.match_leaf(leaf, metadata, scope)
    except CommandError as refusal:
        refusal.locate(path=leaf.path, operator=leaf.op)
        raise


def field_operators(path: str, spec: Mapping[str, Any], scope: Scope) -> list[Node]:
    """`{path: {$op: v, ...}}`: each operator's predicates, in order."""
    if "$options" in spec and "$regex" not in spec:
        raise bad_value("$options needs a $regex")
    nodes: list[Node] = []
    for op, value in spec.items():
        if op not in FIELD_OPERATORS:
            raise bad_value(f"unknown operator: {op}")
        if op in COMPANIONS:
            continue  # written by their main operator ($regex, the geo operators)
        nodes += field_predicate(Leaf(path, op, value, spec), scope)
    return nodes


def _is_operator_object(value: Any) -> bool:
    if not is_document(value) or not value:
        return False
    first = next(iter(value))
    return first.startswith("$") and first not in ("$ref", "$id", "$db")


# -- top level -----------------------------------------------------------------------------------


def _logical(op: str, value: Any, scope: Scope) -> list[Node]:
    if not isinstance(value, list):
        raise bad_value(f"{op} must be an array")
    if not value:
        raise bad_value("$and/$or/$nor must be a nonempty array")
    for child in value:
        if not is_document(child):
            raise bad_value("$or/$and/$nor entries need to be full objects")
    if op != "$and":
        return [{op: [filter_node(child, scope) for child in value]}]
    children: list[Node] = []
    for child in value:
        nodes = and_level(child, scope)
        # A one-predicate sub-document is that predicate: ranges in sibling sub-documents still merge.
        children.extend(nodes if len(nodes) == 1 else [wrap(scope.scheme.finish_and(nodes, scope, True))])
    finished = scope.scheme.finish_and(children, scope, True)
    if finished == [ALWAYS_FALSE] or (len(finished) == 1 and isinstance(finished[0], FlatAnd)):
        # An $and left holding only a merged range is that range's own $and (mongocryptd flattens it).
        return [finished[0]]
    return [{"$and": finished}]


class FlatAnd(dict):  # type: ignore[type-arg]
    """`{$and: [...]}` a scheme produced for one predicate (QE's two-sided range): an enclosing $and flattens it."""


ALWAYS_FALSE = {"$alwaysFalse": 1}


def _expr(op: str, value: Any, scope: Scope) -> list[Node]:
    return [{"$expr": expressions.as_boolean(value, scope.with_comparisons())}]


def _unsupported(op: str, value: Any, scope: Scope) -> list[Node]:
    """$where, $text, $jsonSchema, $_internal*: operators query analysis refuses whatever the schema says."""
    scope.fail("unsupported_match", expr=render({op: value}))


# $jsonSchema keywords whose desugared form is itself refused (51094) before any property's leaves.
_SCHEMA_WIDE_KEYWORDS = ("patternProperties", "additionalProperties", "minProperties", "maxProperties", "enum")


def _json_schema(op: str, value: Any, scope: Scope) -> list[Node]:
    """$jsonSchema is refused; where mongod's desugared form first meets an encrypted field through `encrypt`
    (its `$_internalSchemaBinDataSubType` leaf), mongocryptd names that field and that leaf (51092)."""
    properties = value.get("properties") if is_document(value) else None
    if is_document(properties) and not any(keyword in value for keyword in _SCHEMA_WIDE_KEYWORDS):
        for name, subschema in properties.items():
            if not is_document(subschema) or "properties" in subschema or "required" in subschema:
                break  # an object match: refused whole, below
            try:
                encrypted = is_encrypted(lookup(scope.current, name))
            except CommandError:
                break
            if not encrypted:
                continue  # leaves on an unencrypted field are not what refuses the filter
            if "encrypt" in subschema:
                scope.fail("invalid_on_encrypted", path=name,
                           expr=render({name: {"$_internalSchemaBinDataSubType": 6}}))
            break
    _unsupported(op, value, scope)


def _constant(op: str, value: Any, scope: Scope) -> list[Node]:
    return [{op: 1}]


def _sample_rate(op: str, value: Any, scope: Scope) -> list[Node]:
    """$sampleRate as mongod desugars it: an $expr comparing $rand with the rate (0 and 1 folded)."""
    if not is_number(value):
        raise bad_value("argument to $sampleRate must be a numeric type")
    rate = float(value.to_decimal()) if isinstance(value, Decimal128) else float(value)
    if not 0.0 <= rate <= 1.0:
        raise bad_value("numeric argument to $sampleRate must be in [0, 1]")
    if rate in (0.0, 1.0):
        return [{"$expr": {"$const": rate == 1.0}}]
    return [{"$expr": {"$lt": [{"$rand": {}}, {"$const": rate}]}}]


def _comment(op: str, value: Any, scope: Scope) -> list[Node]:
    return []  # mongod keeps a filter's $comment out of the parsed expression


TopRule = Callable[[str, Any, Scope], list[Node]]
TOP_LEVEL_OPERATORS: dict[str, TopRule] = {
    "$and": _logical,
    "$or": _logical,
    "$nor": _logical,
    "$expr": _expr,
    "$text": _unsupported,
    "$where": _unsupported,
    "$jsonSchema": _json_schema,
    "$alwaysTrue": _constant,
    "$alwaysFalse": _constant,
    "$sampleRate": _sample_rate,
    "$comment": _comment,
}


def _element(key: str, value: Any, scope: Scope) -> list[Node]:
    if key.startswith("$"):
        rule = TOP_LEVEL_OPERATORS.get(key)
        if rule is None:
            if key.startswith("$_internal"):
                return _unsupported(key, value, scope)
            raise bad_value(f"unknown top level operator: {key}. If you have a field name that starts with a '$' "
                            "symbol, consider using $getField or $setField.")
        try:
            return rule(key, value, scope)
        except CommandError as refusal:
            refusal.locate(operator=key)
            raise
    if _is_operator_object(value):
        return field_operators(key, value, scope)
    if is_regex(value):
        # `{f: /re/}` is a regex match; only an explicit `{f: {$eq: /re/}}` compares with a regex value.
        return field_predicate(Leaf(key, "$regex", value, {}), scope)
    return field_predicate(Leaf(key, "$eq", value, {}), scope)


def and_level(filter_: Mapping[str, Any], scope: Scope) -> list[Node]:
    """One AND node: each element's predicates (not yet finished)."""
    nodes: list[Node] = []
    for key, value in filter_.items():
        nodes += _element(key, value, scope)
    return nodes


def wrap(children: list[Node]) -> dict[str, Any]:
    if not children:
        return {}
    if len(children) == 1:
        return children[0]
    return {"$and": children}


def filter_node(filter_: Mapping[str, Any], scope: Scope) -> dict[str, Any]:
    """A (sub)filter document as one serialized predicate."""
    nodes = and_level(filter_, scope)
    return wrap(scope.scheme.finish_and(nodes, scope, len(nodes) > 1))


def mark_filter(filter_: Any, scope: Scope) -> dict[str, Any]:
    """The filter re-serialized as mongod would, with values compared to encrypted fields marked."""
    if not is_document(filter_):
        raise CommandError(14, "BSON field 'filter' is the wrong type, expected type 'object'")
    return filter_node(filter_, scope.for_filter())
