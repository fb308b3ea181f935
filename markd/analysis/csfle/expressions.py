"""Aggregation expressions (`$expr`, `$project`, `$group`...) against a CSFLE schema.

Each subexpression is either *forwarded* (its value passes through untouched: `{a: "$ssn"}`),
*compared* for equality (`$eq`, `$ne`, `$in`: a constant compared to a deterministic field is
marked) or *evaluated* (arithmetic, string operators, `$gt`...: an encrypted field there is refused).
The expression is written back as mongod serializes it: constants as `{$const: v}`, operator
arguments as arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.placeholders import MarkContext, mark_value
from markd.analysis.csfle.schema import (
    EMPTY,
    NOT_ENCRYPTED,
    PREFIX,
    UNKNOWN,
    UNKNOWN_NODE,
    Encrypted,
    Metadata,
    SchemaNode,
    lookup,
    subtree,
)
from markd.analysis.csfle.walk import is_document

LITERAL = "literal"
FIELD = "field"
EVALUATED = "evaluated"
FORWARDED = "forwarded"
ROOT = "root"


@dataclass(frozen=True, slots=True)
class Value:
    """What an expression yields: its kind, and for field references the path and its metadata."""

    kind: str
    metadata: Metadata = NOT_ENCRYPTED
    path: str = ""
    node: SchemaNode = EMPTY  # the schema of the value when it is a (forwarded) document

    @property
    def may_be_encrypted(self) -> bool:
        return isinstance(self.metadata, Encrypted) or self.metadata in (PREFIX, UNKNOWN)


# Operators whose result is one of their arguments, unevaluated: the result keeps its encryption.
FORWARDING = {"$cond", "$ifNull", "$switch", "$let", "$first", "$last", "$arrayElemAt"}
COMPARISONS = {"$eq", "$ne"}
# Operators mongod parses with named (object) arguments; their values are expressions.
OBJECT_ARGUMENT = {
    "$dateToString", "$dateFromString", "$dateFromParts", "$dateToParts", "$filter", "$map", "$reduce",
    "$let", "$switch", "$regexMatch", "$regexFind", "$regexFindAll", "$replaceOne", "$replaceAll", "$trim",
    "$ltrim", "$rtrim", "$zip", "$getField", "$setField", "$unsetField", "$dateAdd", "$dateSubtract",
    "$dateDiff", "$dateTrunc", "$sortArray", "$firstN", "$lastN", "$maxN", "$minN", "$median",
    "$percentile", "$convert", "$function", "$accumulator", "$bottom", "$bottomN", "$top", "$topN",
    "$toHashedIndexKey", "$tsSecond", "$tsIncrement",
}


class ExpressionAnalysis:
    """Analyses expressions over the documents described by `node` (the current pipeline schema)."""

    def __init__(self, node: SchemaNode, context: MarkContext) -> None:
        self.node = node
        self.context = context

    # -- entry points --------------------------------------------------------------------------

    def forwarded(self, expression: Any) -> tuple[Any, Value]:
        """Serialize an expression whose value is passed on (a $project field)."""
        return self._analyse(expression)

    def evaluated(self, expression: Any, op: str) -> Any:
        """Serialize an expression whose value `op` inspects: no encrypted field may reach it."""
        serialized, value = self._analyse(expression)
        self._refuse_evaluation(value, op)
        return serialized

    # -- core ----------------------------------------------------------------------------------

    def _metadata(self, path: str) -> Metadata:
        return lookup(self.node, path)

    def _field(self, reference: str) -> tuple[Any, Value]:
        if reference.startswith("$$"):
            name, _, rest = reference[2:].partition(".")
            if name in ("ROOT", "CURRENT"):
                if rest:
                    return reference, Value(FIELD, self._metadata(rest), rest, subtree(self.node, rest))
                return reference, Value(ROOT, PREFIX if self.node.may_hold_encryption else NOT_ENCRYPTED,
                                        "", self.node)
            return reference, Value(EVALUATED)  # user and system variables hold no encrypted value
        path = reference[1:]
        return reference, Value(FIELD, self._metadata(path), path, subtree(self.node, path))

    def _analyse(self, expression: Any) -> tuple[Any, Value]:
        if isinstance(expression, str) and expression.startswith("$"):
            return self._field(expression)
        if isinstance(expression, list):
            # mongocryptd evaluates what goes into an array literal: no encrypted value may.
            return [self.evaluated(item, ARRAY_LITERAL) for item in expression], Value(EVALUATED)
        if is_document(expression):
            if expression and next(iter(expression)).startswith("$"):
                if len(expression) != 1:
                    fail("unknown_expression", op=next(iter(expression)))
                op, argument = next(iter(expression.items()))
                return self._operator(op, argument)
            fields: dict[str, Any] = {}
            for name, item in expression.items():
                fields[name], _ = self._analyse(item)
            return fields, Value(EVALUATED)
        return {"$const": expression}, Value(LITERAL)

    def _refuse_evaluation(self, value: Value, op: str) -> None:
        if value.kind == ROOT and value.metadata is PREFIX:
            fail("variable", name="ROOT")
        if isinstance(value.metadata, Encrypted):
            fail("evaluated", path=value.path, op=op)
        if value.metadata is PREFIX:
            fail("prefix_reference", path=value.path)
        if value.metadata is UNKNOWN:
            fail("unknown_path", path=value.path or op)

    def _arguments(self, argument: Any) -> list[Any]:
        return argument if isinstance(argument, list) else [argument]

    def _operator(self, op: str, argument: Any) -> tuple[Any, Value]:
        if op in ("$literal", "$const"):
            return {"$const": argument}, Value(LITERAL)
        if op in COMPARISONS:
            return self._comparison(op, self._arguments(argument))
        if op == "$in":
            return self._in(self._arguments(argument))
        if op in FORWARDING:
            return self._forwarding(op, argument)
        if op in OBJECT_ARGUMENT and is_document(argument):
            body = {name: self.evaluated(item, op) for name, item in argument.items()}
            return {op: body}, Value(EVALUATED)
        body = [self.evaluated(item, op) for item in self._arguments(argument)]
        return {op: body}, Value(EVALUATED)

    def _forwarding(self, op: str, argument: Any) -> tuple[Any, Value]:
        """$cond and friends: the condition is evaluated, the branches forwarded."""
        if op == "$cond" and is_document(argument):
            argument = [argument.get("if"), argument.get("then"), argument.get("else")]
        if op in ("$switch", "$let", "$first", "$last", "$arrayElemAt") or not isinstance(argument, list):
            # Their structure is richer; forwarding through them is not tracked: evaluate everything.
            if is_document(argument):
                body: Any = {name: self.evaluated(item, op) for name, item in argument.items()}
            else:
                body = [self.evaluated(item, op) for item in self._arguments(argument)]
            return {op: body}, Value(EVALUATED)
        serialized: list[Any] = []
        branches: list[Value] = []
        for index, item in enumerate(argument):
            if op == "$cond" and index == 0:
                serialized.append(self.evaluated(item, op))
                continue
            out, value = self._analyse(item)
            serialized.append(out)
            branches.append(value)
        result = Value(EVALUATED)
        if any(branch.may_be_encrypted or branch.kind == ROOT for branch in branches):
            first = branches[0]
            same = all(branch.metadata == first.metadata and branch.node == first.node for branch in branches)
            result = first if same else Value(FORWARDED, UNKNOWN, "", UNKNOWN_NODE)
        return {op: serialized}, result

    # -- compared subtrees ($eq, $ne, $in with an array literal) ------------------------------------

    def _comparison(self, op: str, arguments: list[Any]) -> tuple[Any, Value]:
        if len(arguments) != 2:
            fail("expression_arity", op=op, count=len(arguments))
        return {op: self._compared(arguments)}, Value(EVALUATED)

    def _in(self, arguments: list[Any]) -> tuple[Any, Value]:
        if len(arguments) != 2:
            fail("expression_arity", op="$in", count=len(arguments))
        needle, haystack = arguments
        if isinstance(haystack, list):
            # The array literal's elements are each compared with the needle.
            serialized = self._compared([needle, *haystack])
            return {"$in": [serialized[0], serialized[1:]]}, Value(EVALUATED)
        return {"$in": [self.evaluated(needle, IN_WITHOUT_ARRAY), self.evaluated(haystack, IN_WITHOUT_ARRAY)]
                }, Value(EVALUATED)

    def _compared(self, operands: list[Any]) -> list[Any]:
        """Operands compared with each other: all unencrypted, or all one deterministic encryption.

        Constants among them (also those a $cond or $ifNull would pass on) are marked when the
        others turn out encrypted, whichever order they come in.
        """
        state = _Compared()
        serialized = [self._compared_operand(operand, state) for operand in operands]
        compare = MarkContext(self.context.schema, True, None, self.context.collation_simple)

        def resolve(value: Any) -> Any:
            if isinstance(value, _Constant):
                if isinstance(state.encryption, Encrypted):
                    return {"$const": mark_value(state.encryption, value.value, state.fields[0], compare)}
                return {"$const": value.value}
            if isinstance(value, list):
                return [resolve(item) for item in value]
            if isinstance(value, dict):
                return {key: resolve(item) for key, item in value.items()}
            return value

        return [resolve(out) for out in serialized]

    def _compared_operand(self, operand: Any, state: _Compared) -> Any:
        if isinstance(operand, str) and operand.startswith("$"):
            out, value = self._field(operand)
            if value.kind == ROOT:
                fail("variable", name=operand[2:].partition(".")[0])
            if value.kind == FIELD:
                state.reconcile(value.path, value.metadata)
            return out
        if isinstance(operand, list):
            state.ensure_not_encrypted(ARRAY_LITERAL)
            return [self.evaluated(item, ARRAY_LITERAL) for item in operand]
        if is_document(operand) and operand and next(iter(operand)).startswith("$"):
            op, argument = next(iter(operand.items()))
            if op in ("$literal", "$const"):
                return _Constant(argument)
            if op == "$cond":
                if is_document(argument):
                    argument = [argument.get("if"), argument.get("then"), argument.get("else")]
                if not isinstance(argument, list) or len(argument) != 3:
                    fail("expression_arity", op=op, count=len(argument) if isinstance(argument, list) else 1)
                condition = self.evaluated(argument[0], "$cond")
                branches = [self._compared_operand(branch, state) for branch in argument[1:]]
                return {"$cond": [condition, *branches]}
            if op == "$ifNull":
                return {"$ifNull": [self._compared_operand(item, state) for item in self._arguments(argument)]}
            reason = {"$eq": "an equality comparison", "$ne": "an equality comparison",
                      "$in": "an $in expression"}.get(op, op)
            state.ensure_not_encrypted(reason)
            out, _ = self._operator(op, argument)
            return out
        if is_document(operand):
            state.ensure_not_encrypted("formation of an object")
            out, _ = self._analyse(operand)
            return out
        return _Constant(operand)


class _Constant:
    """A constant in a compared subtree, marked or not once the whole subtree is known."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


IN_WITHOUT_ARRAY = "an $in comparison without an array literal"
ARRAY_LITERAL = "formation of an array literal"
_PLAIN = "plain"


class _Compared:
    """The state of one compared subtree: what its field references turned out to be."""

    def __init__(self) -> None:
        self.encryption: Encrypted | str | None = None  # None until a field is seen; _PLAIN when unencrypted
        self.fields: list[str] = []
        self.evaluations: list[str] = []

    def _others(self) -> str:
        return "".join(f" '{field}'" for field in self.fields) + "".join(
            f" result of {evaluation}" for evaluation in self.evaluations)

    def reconcile(self, path: str, metadata: Metadata) -> None:
        if metadata is PREFIX:
            fail("prefix_reference", path=path)
        if metadata is UNKNOWN:
            fail("unknown_path", path=path)
        if isinstance(metadata, Encrypted) and not metadata.deterministic:
            fail("compare_random", path=path)
        if self.encryption is None:
            self.encryption = metadata if isinstance(metadata, Encrypted) else _PLAIN
        elif self.encryption == _PLAIN:
            if isinstance(metadata, Encrypted):
                fail("compare_enc_plain", path=path, other=self._others())
        elif not isinstance(metadata, Encrypted):
            fail("compare_plain_enc", path=path, other=self._others())
        elif metadata != self.encryption:
            fail("compare_algorithms", path=path, other=self._others())
        self.fields.append(path)

    def ensure_not_encrypted(self, reason: str) -> None:
        if isinstance(self.encryption, Encrypted):
            fail("compare_evaluated", op=reason, other=self._others())
        self.encryption = _PLAIN
        self.evaluations.append(reason)


def mark_match_expr(expression: Any, context: MarkContext) -> Any:
    """A `$expr` filter: its value is used as a boolean, i.e. evaluated."""
    analysis = ExpressionAnalysis(context.schema.root, context)
    serialized, value = analysis._analyse(expression)
    if value.kind in (FIELD, ROOT, FORWARDED):
        analysis._refuse_evaluation(value, "$expr")
    return serialized


def analysis_for(node: SchemaNode, context: MarkContext) -> ExpressionAnalysis:
    return ExpressionAnalysis(node, context)


__all__ = ["ExpressionAnalysis", "Value", "analysis_for", "mark_match_expr"]
