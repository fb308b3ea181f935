"""Queryable Encryption (FLE2) as a scheme of the analysis core: what each kind of QE field allows.

Equality fields answer `$eq`, `$ne`, `$in`, `$nin` (and `$eq`/`$ne`/`$in` against constants in `$expr`);
range fields also `$gt`, `$gte`, `$lt`, `$lte` (intersected per AND into one interval); text fields
answer the `$encStr*` expressions.  Every QE ciphertext is randomized: nothing can be grouped, joined
or compared by the server on it otherwise, and an encrypted value may be referenced in an expression
only where it is compared with a constant, or moved whole by a projection (`{b: "$a"}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from bson import Decimal128
from bson.binary import Binary

from markd.analysis import expressions, notation
from markd.analysis.context import Scope
from markd.analysis.expressions import COMPUTED, VARIABLE, Value, is_document
from markd.analysis.match import Leaf, Node, bad_value, in_list, is_regex, not_predicate, plain_leaf, render, true_value
from markd.analysis.qe import placeholders, ranges, rules
from markd.analysis.qe.errors import ERRORS, error
from markd.analysis.qe.fields import EQUALITY, RANGE, TEXT, UNINDEXED, EncryptedField, is_nan
from markd.analysis.schema import PREFIX, UNKNOWN_NODE, Encryption, Metadata, SchemaNode, leaves, lookup, subtree
from markd.analysis.scheme import Rules, Scheme

STRING_TYPES = ("string", "symbol")


class Qe(Scheme):
    name = "qe"
    errors = ERRORS
    renames_encrypted = False
    joins_encrypted = False
    multi_updates = False

    # -- rules ---------------------------------------------------------------------------------

    def read_rules(self, command: Mapping[str, Any], name: str, namespace: str) -> Rules:
        return rules.read_rules(command, name, namespace)

    # -- values --------------------------------------------------------------------------------

    def mark_write(self, encryption: Encryption, value: Any, path: str, scope: Scope) -> Binary:
        assert isinstance(encryption, EncryptedField)
        return scope.analysis.marked(placeholders.insert_placeholder(encryption, value))

    def mark_equality(self, encryption: Encryption, value: Any, path: str, scope: Scope, name: str | None = None
                      ) -> Binary:
        assert isinstance(encryption, EncryptedField)
        if value is None:
            raise error("null_equality", path=path)
        if not scope.collation_simple and _type(value) in STRING_TYPES:
            element = path.rsplit(".", 1)[-1] if name is None else name
            scope.fail("collation_compare", element=notation.quoted_element(element, value), path=path)
        return scope.analysis.marked(placeholders.equality_find_placeholder(encryption, value))

    # -- match language ------------------------------------------------------------------------

    def match_leaf(self, leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
        if isinstance(metadata, EncryptedField):
            rule = ENCRYPTED_RULES.get(leaf.op)
            if rule is None:
                scope.fail("invalid_on_encrypted", path=leaf.path, expr=leaf.render())
            if leaf.op in ("$eq", "$ne", "$in", "$nin") and metadata.algorithm not in (EQUALITY, RANGE):
                raise error("NOT_EQUALITY_INDEXED", path=leaf.path)
            return [rule(metadata, leaf, scope)]
        if metadata is PREFIX:
            return _prefix(leaf, scope)
        scope.fail("unknown_path", path=leaf.path)

    def finish_and(self, nodes: list[Node], scope: Scope, in_and: bool) -> list[Any]:
        return ranges.finish_and(nodes, scope, in_and)

    # -- expressions ---------------------------------------------------------------------------

    def refuse_evaluation(self, value: Value, op: str, scope: Scope) -> NoReturn:
        if value.kind == VARIABLE and value.source in expressions.DOCUMENT_VARIABLES:
            scope.fail("variable", name=value.source)
        node = value.node
        if node.encrypted is not None:
            raise error("EXPRESSION", path=value.source or op)
        if node.unknown:
            scope.fail("unknown_path", path=value.source)
        scope.fail("prefix_reference", path=value.source or op)

    def forwards(self, value: Value, op: str, scope: Scope) -> None:
        """A QE value may only be moved whole by a projection: no operator passes it on."""
        if value.may_hold_encryption:
            self.refuse_evaluation(value, op, scope)

    def compare(self, op: str, arguments: list[Any], scope: Scope) -> tuple[Any, Value]:
        computed = Value(COMPUTED, source=op)
        if op == "$in" and len(arguments) == 2:
            marked = _expression_in(arguments, scope)
            if marked is not None:
                return marked, computed
        elif op != "$in" and op != "$cmp" and len(arguments) == 2:
            marked = _expression_comparison(op, arguments, scope)
            if marked is not None:
                return marked, computed
        return expressions.evaluate_all(op, arguments, scope)

    # -- pipelines -----------------------------------------------------------------------------

    def included(self, node: SchemaNode) -> SchemaNode:
        # mongocryptd: including a field holding FLE2 values drops its safeContent, so later references
        # to it could not be rewritten: they are refused (the field's encryption becomes unknown).
        return UNKNOWN_NODE if node.may_hold_encryption else node

    def projected(self, value: Value, renamed: bool, scope: Scope) -> SchemaNode:
        # Only a whole field moved by name (`{b: "$a"}`) keeps its encryption; any expression reading an
        # encrypted value is refused.
        if not renamed and value.may_hold_encryption:
            self.refuse_evaluation(value, "$project", scope)
        return value.node

    def accumulated(self, op: str, value: Value, field: str, scope: Scope) -> SchemaNode:
        if value.may_hold_encryption:
            self.refuse_evaluation(value, op, scope)
        return value.node

    def schema_command_result(self, result: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in result.items() if key != "encryptionInformation"}

    def schema_command_requires(self, encrypts_anything: bool) -> bool:
        # libmongocrypt must use the result: it is where keyAltNames in encryptedFields get translated.
        return True

    def check_bulk_op(self, kind: str, op: Mapping[str, Any], count: int, command: Any) -> None:
        if count > 1 and kind != "insert":
            raise error("BULK_ONLY_INSERT")

    def check_added_field(self, root: SchemaNode, path: str, child: SchemaNode, scope: Scope) -> None:
        """mongocryptd adds a FLE2 field to a schema only where nothing encrypted is already (6316401)."""
        if child.encrypted is None:
            return
        if subtree(root, path).may_hold_encryption:
            raise error("ENCRYPTED_PREFIX_OF_ENCRYPTED", path=path)

    # -- create, collMod, createIndexes ----------------------------------------------------------

    def check_validator(self, validator: Mapping[str, Any], scope: Scope) -> None:
        if scope.current.may_hold_encryption and _mentions_json_schema(validator):
            # mongocryptd's QE analysis has no $jsonSchema support at all.
            raise error("JSON_SCHEMA_VALIDATOR")
        super().check_validator(validator, scope)

    def check_index(self, index: Mapping[str, Any], scope: Scope) -> None:
        super().check_index(index, scope)
        key = index.get("key")
        if is_document(key):
            for path in key:
                # markd's own rule (mongocryptd checks only partial filters): an index over ciphertext
                # cannot serve any query, so asking for one is a mistake worth reporting.
                if isinstance(path, str) and scope.current.may_hold_encryption and isinstance(
                        lookup(scope.current, path), EncryptedField):
                    raise error("INDEX_ON_ENCRYPTED", path=path)


SCHEME = Qe()


def _type(value: Any) -> str:
    from markd import bsonvalues

    return bsonvalues.bson_type(value)


def _mentions_json_schema(filter_: Any) -> bool:
    if is_document(filter_):
        return "$jsonSchema" in filter_ or any(_mentions_json_schema(v) for k, v in filter_.items()
                                               if k in ("$and", "$or", "$nor"))
    if isinstance(filter_, list):
        return any(_mentions_json_schema(v) for v in filter_)
    return False


# -- match rules at encrypted paths -----------------------------------------------------------------


def _eq(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    if field.algorithm == RANGE:
        return ranges.RangeComparison(field, "$eq", leaf.value, leaf.path)
    return {leaf.path: {"$eq": SCHEME.mark_equality(field, leaf.value, leaf.path, scope, leaf.element_name)}}


def _ne(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    positive = _eq(field, leaf, scope)
    if isinstance(positive, ranges.RangeComparison):
        return {"$nor": [ranges.range_predicates(field, [positive], scope)[0]]}
    return {leaf.path: {"$not": positive[leaf.path]}}


def _in_values(field: EncryptedField, leaf: Leaf) -> list[Any]:
    values = in_list(leaf)
    if field.algorithm == RANGE:
        return values  # each element goes through the range type checks (null -> 6742000)
    for element in values:
        if element is None:
            raise error("null_in", path=leaf.path)
        if is_regex(element):
            raise error("regex_in", path=leaf.path)
        if isinstance(element, list):
            raise error("IN_NESTED_ARRAY")
    return values


def _in(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    values = _in_values(field, leaf)
    if not values:
        # Nothing to encrypt, and `{$or: []}` would not parse: an empty $in matches nothing as it is.
        return {leaf.path: {"$in": []}}
    if field.algorithm == RANGE:
        return {"$or": [ranges.point(field, v, leaf.path, scope) for v in ranges.in_values(field, values)]}
    return {leaf.path: {"$in": [SCHEME.mark_equality(field, v, leaf.path, scope, str(i))
                                for i, v in enumerate(values)]}}


def _nin(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    positive = _in(field, leaf, scope)
    if field.algorithm == RANGE:
        return {"$nor": [positive]}
    return {leaf.path: {"$not": positive[leaf.path]}}


def _range(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    if field.algorithm != RANGE:
        return ranges.NonRangeComparison(field, leaf.op, leaf.path, leaf.value)
    return ranges.RangeComparison(field, leaf.op, leaf.value, leaf.path)


def _exists(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    return {leaf.path: {"$exists": true_value(leaf.value)}}


def _not(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    (negated,) = not_predicate(leaf, scope)
    return negated


def _elem_match(field: EncryptedField, leaf: Leaf, scope: Scope) -> Node:
    scope.fail("elem_match", expr=leaf.render())


ENCRYPTED_RULES = {
    "$eq": _eq,
    "$ne": _ne,
    "$in": _in,
    "$nin": _nin,
    "$gt": _range,
    "$gte": _range,
    "$lt": _range,
    "$lte": _range,
    "$exists": _exists,
    "$not": _not,
    "$elemMatch": _elem_match,
}


def _contains_object(value: Any) -> bool:
    return is_document(value) or (isinstance(value, list) and any(_contains_object(v) for v in value))


def _prefix(leaf: Leaf, scope: Scope) -> list[Node]:
    """An object path holding encrypted fields: any object or array operand could spell out their values."""
    op, operand, path = leaf.op, leaf.value, leaf.path
    if op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
        if isinstance(operand, list):
            scope.fail("eq_array_prefix", expr=render({path: {"$eq": operand}}))
        if is_document(operand):
            raise error("OBJECT_COMPARISON", path=path)
        return plain_leaf(leaf, scope)
    if op in ("$in", "$nin", "$all"):
        if not isinstance(operand, list):
            raise bad_value(f"{op} needs an array")
        for index, element in enumerate(operand):
            if isinstance(element, list):
                scope.fail("in_array_prefix", path=path, element=notation.quoted_element(str(index), element))
            if is_document(element):
                if op == "$in" and any(isinstance(enc, EncryptedField) and enc.algorithm == RANGE
                                       for _, enc in leaves(subtree(scope.current, path))):
                    raise error("IN_RANGE_PREFIX", path=path)
                raise error("OBJECT_COMPARISON", path=path)
        return plain_leaf(leaf, scope)
    if op == "$not":
        return not_predicate(leaf, scope)
    if op == "$elemMatch":
        scope.fail("elem_match", expr=leaf.render())
    if op in ("$exists", "$type", "$size", "$regex", "$mod", "$bitsAllSet", "$bitsAllClear", "$bitsAnySet",
              "$bitsAnyClear"):
        if _contains_object(operand) and op != "$regex":
            scope.fail("invalid_on_encrypted", path=path, expr=leaf.render())
        return plain_leaf(leaf, scope)
    scope.fail("invalid_on_encrypted", path=path, expr=leaf.render())


# -- expressions: comparisons with encrypted fields --------------------------------------------------


def _encrypted_reference(expression: Any, scope: Scope) -> EncryptedField | None:
    """The QE field a bare field path ("$f", "$$ROOT.f", "$$CURRENT.f") reads, if it reads one."""
    if not isinstance(expression, str) or not expression.startswith("$"):
        return None
    value = expressions.reference(expression, scope)
    encrypted = value.node.encrypted
    return encrypted if isinstance(encrypted, EncryptedField) else None


def _constant(expression: Any) -> tuple[bool, Any]:
    """(True, value) when the expression is a constant mongocryptd can encrypt."""
    if is_document(expression) and len(expression) == 1 and next(iter(expression)) in ("$const", "$literal"):
        return True, next(iter(expression.values()))
    if isinstance(expression, str) and expression.startswith("$"):
        return False, None
    if is_document(expression) or isinstance(expression, list):
        return False, None
    return True, expression


FLIPPED = {"$gt": "$lt", "$gte": "$lte", "$lt": "$gt", "$lte": "$gte", "$eq": "$eq", "$ne": "$ne"}


def _expression_comparison(name: str, arguments: list[Any], scope: Scope) -> Any | None:
    left, right = arguments
    field = _encrypted_reference(left, scope)
    other_field = _encrypted_reference(right, scope)
    if field is not None and other_field is not None and name in ("$eq", "$ne") and RANGE not in (
            field.algorithm, other_field.algorithm):
        # mongocryptd's range rewrite runs first: a range field compared with a non-constant is 6334105.
        raise error("TWO_ENCRYPTED", a=field.path, b=other_field.path)
    constant_side = right
    if field is None:
        field, constant_side, left = other_field, left, right
        if field is None:
            return None
        name = FLIPPED[name]  # `c < $f` is `$f > c`
    is_constant, value = _constant(constant_side)
    if not is_constant:
        raise error("NON_CONSTANT_COMPARISON", path=field.path)
    if field.algorithm == UNINDEXED and name in ("$eq", "$ne"):
        raise error("COMPARE_UNINDEXED", path=field.path)
    if not scope.comparisons_allowed:
        # Outside a filter's $expr: an equality field's reference is refused as any other (6331102); a range
        # comparison cannot be rewritten there (7020507).
        if field.algorithm == RANGE:
            raise error("EXPR_CONTEXT", path=field.path)
        raise error("EXPRESSION", path=field.path)
    if field.algorithm == EQUALITY:
        if name not in ("$eq", "$ne"):
            # An ordering comparison cannot use an equality index: the field reference itself is refused.
            raise error("EXPRESSION", path=field.path)
        if value is None:
            raise error("null_equality", path=field.path)
        marked = scope.analysis.marked(placeholders.equality_find_placeholder(field, value))
        return {name: [left, {"$const": marked}]}
    if field.algorithm == RANGE:
        return ranges.expression_comparison(name, left, field, value, scope)
    if name in ("$eq", "$ne"):
        raise error("NOT_EQUALITY_INDEXED", path=field.path)
    raise error("EXPRESSION", path=field.path)


def _expression_in(arguments: list[Any], scope: Scope) -> Any | None:
    needle, haystack = arguments
    field = _encrypted_reference(needle, scope)
    if field is not None and field.algorithm == RANGE and isinstance(haystack, list):
        return _range_in(needle, field, haystack, scope)
    if field is not None:
        return {"$in": [needle, _in_list(field, haystack, scope)]}
    if isinstance(needle, str) and needle.startswith("$") and isinstance(haystack, list):
        value = expressions.reference(needle, scope)
        if value.node.encrypted is None and any(
                isinstance(enc, EncryptedField) and enc.algorithm == RANGE for _, enc in leaves(value.node)):
            raise error("EXPR_IN_RANGE_PREFIX", path=value.source)
    return None


def _range_in(left: Any, field: EncryptedField, values: list[Any], scope: Scope) -> dict[str, Any]:
    """`{$in: ["$f", [c1, c2]]}` on a range field -> `{$or: [<[c1, c1] two-sided>, <[c2, c2] two-sided>]}`.

    As mongocryptd 8.x does: one payload id per element; the constants' types are checked (coercion),
    but their bounds are not (its bounds check's answer is unused here), while NaN is refused (6991000).
    """
    if not scope.comparisons_allowed:
        raise error("EXPR_IN_CONTEXT", path=field.path)
    alternatives = []
    for element in values:
        is_constant, constant = _constant(element)
        if not is_constant:
            raise error("NON_CONSTANT_COMPARISON", path=field.path)
        value = placeholders.range_value(field, constant)
        if is_nan(value):
            raise error("BOUND_NAN_DECIMAL" if isinstance(value, Decimal128) else "BOUND_NAN", path=field.path)
        alternatives.append(ranges.two_sided(left, field, (value, True), (value, True), scope))
    return {"$or": alternatives}


def _in_list(field: EncryptedField, values: Any, scope: Scope) -> Any:
    if field.algorithm != EQUALITY:
        raise error("EXPRESSION", path=field.path)
    if not isinstance(values, list):
        raise error("EXPR_IN_CONSTANT", path=field.path)
    if not scope.comparisons_allowed:
        raise error("EXPRESSION", path=field.path)
    marked = []
    for value in values:
        is_constant, constant = _constant(value)
        if not is_constant:
            raise error("EXPR_IN_CONSTANT", path=field.path)
        if constant is None:
            raise error("null_in", path=field.path)
        marked.append({"$const": scope.analysis.marked(placeholders.equality_find_placeholder(field, constant))})
    return marked


RANGE_EXPRESSION_OPERATORS = ("$gt", "$gte", "$lt", "$lte", "$eq")


def _range_term(expression: Any, scope: Scope) -> tuple[EncryptedField, str, Any, Any] | None:
    """(field, operator, constant, field expression) for `{$gt: ["$f", c]}` (either order) on a range field."""
    if not (is_document(expression) and len(expression) == 1):
        return None
    name, argument = next(iter(expression.items()))
    if name not in RANGE_EXPRESSION_OPERATORS or not (isinstance(argument, list) and len(argument) == 2):
        return None
    left, right = argument
    field = _encrypted_reference(left, scope)
    if field is None:
        field, name, left, right = _encrypted_reference(right, scope), FLIPPED[name], right, left
    if field is None or field.algorithm != RANGE:
        return None
    is_constant, value = _constant(right)
    return (field, name, value, left) if is_constant else None


def _and(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    """`$and` of comparisons, as mongocryptd rewrites it: comparisons on range fields leave their places and
    come last, one `$and` pair per field in order of first appearance (several on a field intersected into
    one interval); an empty interval makes the whole `$and` false, with nothing marked."""
    arguments = argument if isinstance(argument, list) else [argument]
    terms = [_range_term(item, scope) for item in arguments]
    groups: dict[str, list[tuple[EncryptedField, str, Any, Any]]] = {}
    for term in terms:
        if term is not None:
            groups.setdefault(term[0].path, []).append(term)
    intervals = {path: ranges.interval(group[0][0], [(t[1], t[2]) for t in group])
                 for path, group in groups.items() if len(group) > 1}
    computed = Value(COMPUTED, source=op)
    if any(interval is None for interval in intervals.values()):
        scope.analysis.drop_encrypted()
        return {"$const": False}, computed
    marked = [expressions.evaluated(item, scope, op) for item, term in zip(arguments, terms, strict=True)
              if term is None]
    for path, group in groups.items():
        field, name, value, left = group[0]
        if len(group) == 1:
            marked.append(ranges.expression_comparison(name, left, field, value, scope))
            continue
        found = intervals[path]
        assert found is not None
        lower, upper = found
        for bound in (lower, upper):
            infinite = isinstance(bound[0], float) and bound[0] in (placeholders.POSITIVE_INFINITY,
                                                                    placeholders.NEGATIVE_INFINITY)
            if not infinite and not ranges.within(field, bound[0]):
                raise error("EXPR_CLOSED_OUT_OF_BOUNDS", path=field.path)
        if not scope.comparisons_allowed:
            raise error("EXPR_CONTEXT_AND", path=field.path)
        marked.append(ranges.two_sided(left, field, lower, upper, scope))
    return {"$and": marked}, computed


TEXT_ARGUMENTS = {
    "$encStrStartsWith": "prefix",
    "$encStrEndsWith": "suffix",
    "$encStrContains": "substring",
    "$encStrNormalizedEq": "string",
}


def _text(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    key = TEXT_ARGUMENTS[op]
    if not is_document(argument) or set(argument) != {"input", key}:
        raise error("TEXT_ARGUMENT", op=op, argument=key)
    field = _encrypted_reference(argument["input"], scope)
    if field is None:
        raise error("TEXT_INPUT", op=op)
    if field.algorithm != TEXT:
        raise error("TEXT_ON_NON_TEXT", op=op, path=field.path)
    is_constant, value = _constant(argument[key])
    if not is_constant:
        raise error("TEXT_STRING", op=op, argument=key, path=field.path)
    if not scope.comparisons_allowed:
        raise error("EXPR_CONTEXT", path=field.path)
    marked = scope.analysis.marked(placeholders.text_find_placeholder(field, op, value))
    return {op: {"input": argument["input"], key: {"$const": marked}}}, Value(COMPUTED, source=op)


Qe.expression_rules = {"$and": _and, **dict.fromkeys(TEXT_ARGUMENTS, _text)}
