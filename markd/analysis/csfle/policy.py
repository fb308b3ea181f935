"""CSFLE (FLE1) as a scheme of the analysis core: what deterministic and random fields allow.

A deterministically encrypted field can be compared for equality (`$eq`, `$ne`, `$in`, `$nin`, and in
expressions `$eq`/`$ne`/`$in` with constants or with fields of the same encryption): the constants
become placeholders.  A randomly encrypted field can only be written, or tested for `$exists`.
Anything else that would read an encrypted value is refused with mongocryptd's codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from bson.binary import Binary

from markd.analysis import expressions, notation
from markd.analysis.context import Scope
from markd.analysis.csfle import placeholders, rules
from markd.analysis.csfle.errors import ERRORS
from markd.analysis.csfle.jsonschema import Encrypted, parse
from markd.analysis.documents import holds_encryption, mark_document
from markd.analysis.expressions import CONSTANT, VARIABLE, Participant, Value, is_document
from markd.analysis.match import (
    Leaf,
    Node,
    all_predicate,
    in_list,
    is_regex,
    not_predicate,
    parse_operand,
    plain_in_values,
    regex_predicate,
    render,
    true_value,
)
from markd.analysis.ordering import sorted_set
from markd.analysis.schema import EMPTY, PREFIX, UNKNOWN, Encryption, Metadata, SchemaNode, leaf, shape, subtree
from markd.analysis.scheme import Rules, Scheme
from markd.errors import CommandError


def _text_search(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    scope.fail("text_fle2_only", op=op)


class Csfle(Scheme):
    name = "csfle"
    errors = ERRORS
    # Text search exists only for Queryable Encryption.
    expression_rules = dict.fromkeys(
        ("$encStrStartsWith", "$encStrEndsWith", "$encStrContains", "$encStrNormalizedEq"), _text_search)
    renames_encrypted = True
    joins_encrypted = True
    multi_updates = True

    # -- rules ---------------------------------------------------------------------------------

    def read_rules(self, command: Mapping[str, Any], name: str, namespace: str) -> Rules:
        return rules.read_rules(command, name, namespace)

    # -- values --------------------------------------------------------------------------------

    def mark_write(self, encryption: Encryption, value: Any, path: str, scope: Scope) -> Binary:
        assert isinstance(encryption, Encrypted)
        return placeholders.placeholder(encryption, value, scope, comparison=False)

    def mark_equality(self, encryption: Encryption, value: Any, path: str, scope: Scope, name: str | None = None
                      ) -> Binary:
        assert isinstance(encryption, Encrypted)
        element = path.rsplit(".", 1)[-1] if name is None else name
        try:
            return placeholders.placeholder(encryption, value, scope, comparison=True, name=element)
        except CommandError as refusal:
            refusal.locate(path=path)
            raise

    # -- match language ------------------------------------------------------------------------

    def match_leaf(self, leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
        rule = MATCH_RULES.get(leaf.op)
        if rule is None:  # pragma: no cover - match.FIELD_OPERATORS and MATCH_RULES have the same rows
            raise AssertionError(f"no CSFLE rule for {leaf.op}")
        return rule(leaf, metadata, scope)

    # -- expressions ---------------------------------------------------------------------------

    def refuse_evaluation(self, value: Value, op: str, scope: Scope) -> NoReturn:
        by = expressions.reason(op)
        if value.kind == VARIABLE and value.source in expressions.DOCUMENT_VARIABLES:
            scope.fail("variable", name=value.source)
        node = value.node
        if node.encrypted is not None:
            scope.fail("evaluated", path=value.source or by, op=by)
        if node.unknown:
            scope.fail("unknown_path", path=value.source)
        if node.contains_encrypted:
            scope.fail("prefix_reference", path=value.source or by)
        scope.fail("unknown_path", path=value.source)

    def compare(self, op: str, arguments: list[Any], scope: Scope) -> tuple[Any, Value]:
        if op in ("$eq", "$ne"):
            if len(arguments) != 2:
                scope.fail("expression_arity", op=op, count=len(arguments))
            return {op: _compared(arguments, scope)}, Value(expressions.COMPUTED, source=op)
        if op == "$in":
            if len(arguments) != 2:
                scope.fail("expression_arity", op="$in", count=len(arguments))
            needle, haystack = arguments
            if isinstance(haystack, list):
                # The array literal's elements are each compared with the needle.
                serialized = _compared([needle, *haystack], scope)
                return {"$in": [serialized[0], serialized[1:]]}, Value(expressions.COMPUTED, source=op)
            return {"$in": [expressions.evaluated(needle, scope, IN_WITHOUT_ARRAY),
                            expressions.evaluated(haystack, scope, IN_WITHOUT_ARRAY)]}, Value(expressions.COMPUTED,
                                                                                               source=op)
        # Ordering comparisons ($gt, $lt, ...) evaluate their arguments: nothing encrypted may reach them.
        return expressions.evaluate_all(op, arguments, scope)

    # -- pipelines -----------------------------------------------------------------------------

    def compared_output(self, expression: Any, scope: Scope, random: Any) -> tuple[Any, SchemaNode]:
        """mongocryptd walks a group key as a compared subtree: fields one deterministic encryption (or
        none), constants among the values it may be marked with it; its schema is that encryption."""
        serialized, found = expressions.participants(expression, scope)
        state = _Compared(scope)
        constants: list[Participant] = []
        for participant in found:
            if participant.kind == CONSTANT:
                constants.append(participant)
            elif participant.kind in (expressions.COMPUTED, expressions.BOUND):
                state.evaluation(participant.reason)
            else:
                expressions.check_output(participant.value, scope)
                if participant.value.node.may_hold_random:
                    random(participant.value.source)
                state.reference(participant.value)
        if not isinstance(state.encryption, Encrypted):
            return serialized, EMPTY
        for participant in constants:
            assert participant.hole is not None
            participant.hole["$const"] = SCHEME.mark_equality(state.encryption, participant.constant,
                                                              state.fields[0], scope, "")
        return serialized, leaf(state.encryption)

    # -- create, collMod, createIndexes ----------------------------------------------------------

    def same_encryption(self, after: SchemaNode, before: SchemaNode) -> bool:
        # mongocryptd compares the whole tree: an update pipeline may not add a field the schema lacks (31146).
        return after == before

    def check_bulk_write(self, command: Any) -> None:
        if command.database != "admin":
            command.analysis.fail("bulk_write_admin")
        command.analysis.fail("bulk_write_csfle")

    def check_validator(self, validator: Mapping[str, Any], scope: Scope) -> None:
        if list(validator) == ["$jsonSchema"] and is_document(validator["$jsonSchema"]):
            # The collection's own schema as validator: fine when it says the same about encryption.
            # mongocryptd parses it as a local schema: validation keywords in it are refused.
            if shape(parse(validator["$jsonSchema"], False).root) != shape(scope.current):
                scope.fail("validator_schema")
            return
        super().check_validator(validator, scope)


SCHEME = Csfle()


# -- match rules at paths that may hold encryption ---------------------------------------------------

Rule = Any


def _equality_value(leaf: Leaf, metadata: Metadata, scope: Scope) -> Any:
    if isinstance(metadata, Encrypted):
        if leaf.value is None:
            scope.fail("null_equality", path=leaf.path)
        return SCHEME.mark_equality(metadata, leaf.value, leaf.path, scope, leaf.element_name)
    if metadata is PREFIX:
        if isinstance(leaf.value, list):
            scope.fail("eq_array_prefix", expr=render({leaf.path: {"$eq": leaf.value}}))
        if is_document(leaf.value):
            return mark_document(leaf.value, subtree(scope.current, leaf.path), leaf.path, scope, SCHEME.mark_equality)
        return leaf.value
    scope.fail("unknown_path", path=leaf.path)


def _eq(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    return [{leaf.path: {"$eq": _equality_value(leaf, metadata, scope)}}]


def _ne(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    return [{leaf.path: {"$not": {"$eq": _equality_value(leaf, metadata, scope)}}}]


def _in_values(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Any]:
    """The $in list as mongod writes it back: equalities sorted and deduplicated (after marking), then regexes."""
    values = in_list(leaf)
    if metadata is UNKNOWN:
        scope.fail("unknown_path", path=leaf.path)
    if metadata is PREFIX:
        node = subtree(scope.current, leaf.path)
        marked: list[Any] = []
        for index, element in enumerate(values):
            if is_regex(element):
                marked.append(element)
            elif isinstance(element, list):
                scope.fail("in_array_prefix", path=leaf.path, element=notation.quoted_element(str(index), element))
            elif is_document(element):
                marked.append(mark_document(element, node, leaf.path, scope, SCHEME.mark_equality))
            else:
                marked.append(element)
        return plain_in_values(marked)
    assert isinstance(metadata, Encrypted)
    marked_at_once = placeholders.placeholders_for_in(metadata, values, scope)
    if marked_at_once is not None:
        return marked_at_once
    equalities: list[Any] = []
    for index, element in enumerate(values):
        if is_regex(element):
            scope.fail("regex_in", path=leaf.path)
        if element is None:
            scope.fail("null_in", path=leaf.path)
        equalities.append(SCHEME.mark_equality(metadata, element, leaf.path, scope, str(index)))
    return sorted_set(equalities)


def _in(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    return [{leaf.path: {"$in": _in_values(leaf, metadata, scope)}}]


def _nin(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    return [{leaf.path: {"$not": {"$in": _in_values(leaf, metadata, scope)}}}]


def _exists(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    # Presence reveals nothing the ciphertext's presence does not: allowed on any field.
    return [{leaf.path: {"$exists": true_value(leaf.value)}}]


def _range(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    if isinstance(metadata, Encrypted):
        scope.fail("range_on_encrypted", path=leaf.path, expr=leaf.render())
    if metadata is UNKNOWN:
        scope.fail("unknown_path", path=leaf.path)
    if holds_encryption(leaf.value, subtree(scope.current, leaf.path)):
        scope.fail("range_holding_encrypted", expr=leaf.render())
    return [{leaf.path: {leaf.op: leaf.value}}]


def _not_on_encrypted(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    """Operators that inspect the value itself: meaningless on ciphertext, normalized elsewhere."""
    operand = parse_operand(leaf)  # parsed first, as mongod does
    if isinstance(metadata, Encrypted):
        scope.fail("invalid_on_encrypted", path=leaf.path, expr=leaf.render())
    if metadata is UNKNOWN:
        scope.fail("unknown_path", path=leaf.path)
    if leaf.op == "$regex":
        return [{leaf.path: regex_predicate(leaf)}]
    if leaf.op in ("$geoWithin", "$within", "$geoIntersects", "$near", "$nearSphere", "$geoNear"):
        extras = {k: v for k, v in leaf.siblings.items() if k in ("$maxDistance", "$minDistance")}
        return [{leaf.path: {leaf.op: leaf.value, **extras}}]
    return [{leaf.path: {leaf.op: operand}}]


def _regex(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    if isinstance(metadata, Encrypted):
        pattern = regex_predicate(leaf)["$regex"]
        scope.fail("invalid_on_encrypted", path=leaf.path, expr=render({leaf.path: {"$regex": pattern}}))
    return _not_on_encrypted(leaf, metadata, scope)


def _elem_match(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    # mongocryptd does not look inside $elemMatch; an array cannot sit above an encrypted path, so at
    # or above one it is refused.
    scope.fail("elem_match", expr=leaf.render())


def _all(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    return all_predicate(leaf, scope)


def _not(leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
    return not_predicate(leaf, scope)


MATCH_RULES: dict[str, Rule] = {
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
    "$type": _not_on_encrypted,
    "$size": _not_on_encrypted,
    "$mod": _not_on_encrypted,
    "$bitsAllSet": _not_on_encrypted,
    "$bitsAllClear": _not_on_encrypted,
    "$bitsAnySet": _not_on_encrypted,
    "$bitsAnyClear": _not_on_encrypted,
    "$geoWithin": _not_on_encrypted,
    "$within": _not_on_encrypted,
    "$geoIntersects": _not_on_encrypted,
    "$near": _not_on_encrypted,
    "$nearSphere": _not_on_encrypted,
    "$geoNear": _not_on_encrypted,
    "$elemMatch": _elem_match,
    "$all": _all,
    "$not": _not,
}


# -- expression comparisons --------------------------------------------------------------------------

IN_WITHOUT_ARRAY = "an $in comparison without an array literal"
_PLAIN = "plain"


class _Compared:
    """One compared subtree: what its field references turned out to be (mongocryptd's Compared state)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.encryption: Encrypted | str | None = None  # None until a field is seen; _PLAIN when unencrypted
        self.fields: list[str] = []
        self.evaluations: list[str] = []

    def _others(self) -> str:
        return "".join(f" '{field}'" for field in self.fields) + "".join(
            f" result of {evaluation}" for evaluation in self.evaluations)

    def reference(self, value: Value) -> None:
        scope = self.scope
        path = value.source
        if value.kind == VARIABLE and value.source in expressions.DOCUMENT_VARIABLES:
            scope.fail("variable", name=value.source)
        node = value.node
        if node.unknown:
            scope.fail("unknown_path", path=path)
        if node.encrypted is None and node.contains_encrypted:
            scope.fail("prefix_reference", path=path)
        metadata = node.encrypted
        if isinstance(metadata, Encrypted) and not metadata.deterministic:
            scope.fail("compare_random", path=path)
        if self.encryption is None:
            self.encryption = metadata if isinstance(metadata, Encrypted) else _PLAIN
        elif self.encryption == _PLAIN:
            if isinstance(metadata, Encrypted):
                scope.fail("compare_enc_plain", path=path, other=self._others())
        elif not isinstance(metadata, Encrypted):
            scope.fail("compare_plain_enc", path=path, other=self._others())
        elif metadata != self.encryption:
            scope.fail("compare_algorithms", path=path, other=self._others())
        self.fields.append(path)

    def evaluation(self, reason: str) -> None:
        if isinstance(self.encryption, Encrypted):
            self.scope.fail("compare_evaluated", op=reason, other=self._others(),
                            path=self.fields[0] if self.fields else "")
        self.encryption = _PLAIN
        self.evaluations.append(reason)


def _compared(operands: list[Any], scope: Scope) -> list[Any]:
    """Operands compared with each other: all unencrypted, or all one deterministic encryption.

    Constants among them (also those a $cond, $ifNull, $switch or $let would pass on) are marked
    when the others turn out encrypted, whichever order they come in.
    """
    state = _Compared(scope)
    serialized: list[Any] = []
    constants: list[Participant] = []
    for operand in operands:
        out, found = expressions.participants(operand, scope)
        serialized.append(out)
        for participant in found:
            if participant.kind == CONSTANT:
                constants.append(participant)
            elif participant.kind in (expressions.COMPUTED, expressions.BOUND):
                state.evaluation(participant.reason)
            else:
                state.reference(participant.value)
    if isinstance(state.encryption, Encrypted):
        for participant in constants:
            assert participant.hole is not None
            participant.hole["$const"] = SCHEME.mark_equality(state.encryption, participant.constant,
                                                              state.fields[0], scope, "")
    return serialized
