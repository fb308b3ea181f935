"""Aggregation expressions, for both schemes: every operator has a row; each value carries its provenance.

An expression is analysed into two things: its serialization, as mongod writes it back (constants
as `{$const: v}`, operator arguments as arrays), and a `Value` saying what it yields:

- CONSTANT: a literal of the expression (markable where it is compared with an encrypted field);
- FIELD / VARIABLE: the value of a path of a document, or a whole document (`$$ROOT`, `$$CURRENT`,
  a `$let` or `as` variable), with the schema of what it holds;
- DOCUMENT: an object built field by field (an object literal, `$setField`);
- FORWARDED: one of several branches (`$cond`, `$ifNull`, `$switch`);
- BOUND: a constant of the command (`let`, an update's `c`), which cannot be marked where it is used;
- COMPUTED: the result of an operator that evaluates its arguments: it holds nothing encrypted,
  because an encrypted (or unknown) value reaching an evaluation is refused.

Where a value goes decides what it may be: *forwarded* to the output (a computed field, a group key)
its schema flows on; *evaluated* (arithmetic, strings, `$expr`'s truth) it may hold nothing
encrypted; *compared* (`$eq`, `$in`, ranges) the scheme decides, marking constants in place.
An operator without a row is refused (168), before anything could pass through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bson import DBRef

from markd import bsonvalues
from markd.analysis import paths
from markd.analysis.context import Scope
from markd.analysis.schema import EMPTY, UNKNOWN_NODE, SchemaNode, child, subtree, with_child
from markd.errors import CommandError

CONSTANT = "constant"
FIELD = "field"
VARIABLE = "variable"
DOCUMENT = "document"
FORWARDED = "forwarded"
BOUND = "bound"
COMPUTED = "computed"


@dataclass(frozen=True, slots=True)
class Value:
    """What an expression yields: its kind, the schema of what it holds, where it came from."""

    kind: str
    node: SchemaNode = EMPTY
    source: str = ""  # a field path, a variable name or an operator, for messages
    # The `{$const: v}` dicts of the serialization this value may be (a literal, $cond branches...):
    # a comparison marks them in place.
    constants: tuple[dict[str, Any], ...] = ()
    # FORWARDED: the values of the branches it may be.
    branches: tuple[Value, ...] = ()

    @property
    def may_hold_encryption(self) -> bool:
        return self.node.may_hold_encryption

    @property
    def is_reference(self) -> bool:
        """A field or a whole document read from the documents (not built, not computed)."""
        return self.kind in (FIELD, VARIABLE)


COMPUTED_VALUE = Value(COMPUTED)

# System variables that hold no document data (mongod's list; ROOT and CURRENT are the documents).
PLAIN_SYSTEM_VARIABLES = frozenset({"REMOVE", "NOW", "CLUSTER_TIME", "DESCEND", "PRUNE", "KEEP", "SEARCH_META",
                                    "SEARCH_SCORE", "SEARCH_SCORE_DETAILS", "USER_ROLES"})
DOCUMENT_VARIABLES = frozenset({"ROOT", "CURRENT"})


def is_document(value: Any) -> bool:
    return isinstance(value, Mapping) and not isinstance(value, DBRef)


def is_operator_object(value: Any) -> bool:
    return is_document(value) and bool(value) and next(iter(value)).startswith("$")


def constant(value: Any) -> tuple[Any, Value]:
    hole: dict[str, Any] = {"$const": value}
    return hole, Value(CONSTANT, EMPTY, "", (hole,))


# -- references ----------------------------------------------------------------------------------------


def _check_field_path(path: str) -> None:
    """mongod's FieldPath checks, before anything else is said about the path."""
    if not path:
        raise CommandError(16872, "'$' by itself is not a valid FieldPath")
    for part in path.split("."):
        if not part:
            raise CommandError(15998, "FieldPath field names may not be empty strings.")
        if part.startswith("$"):
            raise CommandError(16410, "FieldPath field names may not start with '$'. Consider using $getField or "
                                      "$setField.")
        if "\x00" in part:
            raise CommandError(16411, "FieldPath field names may not contain '\\0'.")


def variable(name: str, scope: Scope) -> Value:
    """The value of `$$name` in `scope`."""
    if name in scope.variables:
        return scope.variables[name]
    if name in DOCUMENT_VARIABLES:
        return Value(VARIABLE, scope.current, name)
    if name in PLAIN_SYSTEM_VARIABLES:
        return COMPUTED_VALUE
    raise CommandError(17276, f"Use of undefined variable: {name}")


def below(base: Value, rest: str, scope: Scope) -> Value:
    """The field `rest` (a dotted path) of what `base` holds."""
    if not rest:
        return base
    source = paths.join(base.source, rest) if base.kind == FIELD else rest
    if base.node.encrypted is not None:
        # A path through an encrypted value: nothing below ciphertext is addressable (51102).
        scope.fail("through_encrypted", path=source)
    if base.node.unknown:
        return Value(FIELD, UNKNOWN_NODE, source)
    return Value(FIELD, subtree(base.node, rest), source)


def reference(expression: str, scope: Scope) -> Value:
    """The value of a `$path` or `$$variable.path` string."""
    if expression.startswith("$$"):
        name, _, rest = expression[2:].partition(".")
        if not name:
            raise CommandError(9, "empty variable names are not allowed")
        if rest:
            _check_field_path(rest)
        base = variable(name, scope)
        if base.kind in (COMPUTED, BOUND, CONSTANT):
            return base if not rest else Value(base.kind, EMPTY, f"{name}.{rest}")
        return below(base, rest, scope)
    path = expression[1:]
    _check_field_path(path)
    if "CURRENT" in scope.variables:
        return below(scope.variables["CURRENT"], path, scope)
    if scope.document_free:
        raise CommandError(4890500, "Command let Expression tried to access a field, but this is not allowed because "
                                    "command let expressions run before the query examines any documents.")
    return Value(FIELD, subtree(scope.current, path) if scope.current.may_hold_encryption else EMPTY, path)


# -- the three uses --------------------------------------------------------------------------------------


def analyse(expression: Any, scope: Scope) -> tuple[Any, Value]:
    """Serialize an expression whose value is passed on, and say what that value holds."""
    if isinstance(expression, str):
        if expression.startswith("$"):
            return expression, reference(expression, scope)
        return constant(expression)
    if isinstance(expression, list):
        # mongocryptd evaluates what goes into an array literal: no encrypted value may.
        return [evaluated(item, scope, ARRAY_LITERAL) for item in expression], Value(COMPUTED, source=ARRAY_LITERAL)
    if is_document(expression):
        if not expression:
            return {}, Value(DOCUMENT)
        first = next(iter(expression))
        if first.startswith("$"):
            if len(expression) != 1:
                raise CommandError(15983, "an expression specification must contain exactly one field, the name of "
                                          f"the expression. Found {len(expression)} fields")
            return operator(first, expression[first], scope)
        return object_literal(expression, scope)
    return constant(expression)


def object_literal(expression: Mapping[str, Any], scope: Scope) -> tuple[Any, Value]:
    """`{a: <expr>, b: <expr>}`: mongocryptd evaluates what goes into an object it forms: no encrypted value may."""
    fields: dict[str, Any] = {}
    for name, item in expression.items():
        if name.startswith("$"):
            raise CommandError(16410, "FieldPath field names may not start with '$'. Consider using $getField or "
                                      "$setField.")
        fields[name] = evaluated(item, scope, OBJECT_FORMATION)
    return fields, Value(DOCUMENT, source=OBJECT_FORMATION)


def evaluated(expression: Any, scope: Scope, op: str) -> Any:
    """Serialize an expression whose value `op` inspects: no encrypted (or unknown) value may reach it."""
    serialized, value = analyse(expression, scope)
    refuse_evaluation(value, op, scope)
    return serialized


def refuse_evaluation(value: Value, op: str, scope: Scope) -> None:
    if value.may_hold_encryption:
        scope.scheme.refuse_evaluation(value, op, scope)
        raise AssertionError("a scheme's refuse_evaluation must raise")  # pragma: no cover


def as_boolean(expression: Any, scope: Scope) -> Any:
    """`$expr`: the value is used as a truth value, i.e. evaluated."""
    return evaluated(expression, scope, "$expr")


# -- comparisons: what each side of a comparison is -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Participant:
    """One value taking part in a comparison: a markable constant, a reference, or an evaluation."""

    kind: str  # CONSTANT, a reference (FIELD/VARIABLE/...), BOUND or COMPUTED
    value: Value = COMPUTED_VALUE
    hole: dict[str, Any] | None = None  # CONSTANT: the `{$const: v}` to mark in place
    reason: str = ""  # COMPUTED/BOUND: what was evaluated ("an addition calculation", "variable v")

    @property
    def constant(self) -> Any:
        assert self.hole is not None
        return self.hole["$const"]


def participants(expression: Any, scope: Scope) -> tuple[Any, list[Participant]]:
    """Serialize one side of a comparison and list what it may be.

    Constants a `$cond`, `$ifNull`, `$switch` or `$let` would pass on are listed each on its own, so
    the scheme can mark them for the encrypted field they are compared with.
    """
    if isinstance(expression, str) and expression.startswith("$"):
        value = reference(expression, scope)
        return expression, [_participant(value)]
    if isinstance(expression, list):
        serialized = [evaluated(item, scope, ARRAY_LITERAL) for item in expression]
        return serialized, [Participant(COMPUTED, reason=ARRAY_LITERAL)]
    if is_document(expression) and expression and next(iter(expression)).startswith("$"):
        op = next(iter(expression))
        forwarding = FORWARDING_PARTICIPANTS.get(op)
        if forwarding is not None and len(expression) == 1:
            return forwarding(expression[op], scope)
    if is_document(expression) and expression and not next(iter(expression)).startswith("$"):
        # Forming an object evaluates its parts; compared, it must hold nothing encrypted.
        serialized = evaluated(expression, scope, OBJECT_FORMATION)
        return serialized, [Participant(COMPUTED, reason=OBJECT_FORMATION)]
    serialized, value = analyse(expression, scope)
    return serialized, [_participant(value, expression)]


def _participant(value: Value, expression: Any = None) -> Participant:
    if value.kind == CONSTANT:
        return Participant(CONSTANT, value, value.constants[0])
    if value.kind == BOUND:
        return Participant(BOUND, value, reason=f"the command variable $${value.source}")
    if value.kind in (COMPUTED, DOCUMENT) and not value.may_hold_encryption:
        op = value.source or (next(iter(expression)) if is_operator_object(expression) else "an expression")
        return Participant(COMPUTED, value, reason=reason(op))
    return Participant(value.kind, value)


def _cond_participants(argument: Any, scope: Scope) -> tuple[Any, list[Participant]]:
    condition, branches = _cond_arguments(argument)
    serialized_condition = evaluated(condition, scope, "$cond")
    found: list[Participant] = []
    serialized: list[Any] = [serialized_condition]
    for branch in branches:
        out, more = participants(branch, scope)
        serialized.append(out)
        found.extend(more)
    return {"$cond": serialized}, found


def _if_null_participants(argument: Any, scope: Scope) -> tuple[Any, list[Participant]]:
    found: list[Participant] = []
    serialized: list[Any] = []
    for item in _arguments(argument):
        out, more = participants(item, scope)
        serialized.append(out)
        found.extend(more)
    return {"$ifNull": serialized}, found


def _switch_participants(argument: Any, scope: Scope) -> tuple[Any, list[Participant]]:
    branches, default = _switch_arguments(argument)
    found: list[Participant] = []
    serialized_branches = []
    for case, then in branches:
        out, more = participants(then, scope)
        serialized_branches.append({"case": evaluated(case, scope, "$switch"), "then": out})
        found.extend(more)
    body: dict[str, Any] = {"branches": serialized_branches}
    if default is not _MISSING:
        body["default"], more = participants(default, scope)
        found.extend(more)
    return {"$switch": body}, found


def _let_participants(argument: Any, scope: Scope) -> tuple[Any, list[Participant]]:
    variables, inner_scope, body = _let_scope(argument, scope)
    out, found = participants(body, inner_scope)
    return {"$let": {"vars": variables, "in": out}}, found


def _literal_participants(argument: Any, scope: Scope) -> tuple[Any, list[Participant]]:
    hole, value = constant(argument)
    return hole, [Participant(CONSTANT, value, hole)]


FORWARDING_PARTICIPANTS: dict[str, Callable[[Any, Scope], tuple[Any, list[Participant]]]] = {
    "$cond": _cond_participants,
    "$ifNull": _if_null_participants,
    "$switch": _switch_participants,
    "$let": _let_participants,
    "$literal": _literal_participants,
    "$const": _literal_participants,
}

ARRAY_LITERAL = "formation of an array literal"
OBJECT_FORMATION = "formation of an object literal"
_MISSING = object()


# -- operator rules ---------------------------------------------------------------------------------

Rule = Callable[[str, Any, Scope], tuple[Any, Value]]


def operator(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    rule = scope.scheme.expression_rules.get(op) or OPERATORS.get(op)
    if rule is None:
        raise CommandError(168, f"Unrecognized expression '{op}'")
    try:
        return rule(op, argument, scope)
    except CommandError as refusal:
        refusal.locate(operator=op)
        raise


def _arguments(argument: Any) -> list[Any]:
    return argument if isinstance(argument, list) else [argument]


DATE_PARTS = frozenset({"$year", "$month", "$dayOfMonth", "$dayOfWeek", "$dayOfYear", "$hour", "$minute", "$second",
                        "$millisecond", "$week", "$isoWeek", "$isoWeekYear", "$isoDayOfWeek"})


def evaluate_all(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    """The default: every argument is evaluated; the result holds nothing encrypted."""
    if op in DATE_PARTS and not (is_document(argument) and not is_operator_object(argument)):
        # mongod parses `{$year: <date>}` as `{$year: {date: <date>}}` and writes that form back.
        if isinstance(argument, list):
            if len(argument) != 1:
                raise CommandError(16020, f"Expression {op} takes exactly 1 arguments. {len(argument)} were passed "
                                          "in.")
            argument = argument[0]
        argument = {"date": argument}
    if is_document(argument) and not is_operator_object(argument) and op in OBJECT_ARGUMENTS:
        body: Any = {name: evaluated(item, scope, op) for name, item in argument.items()}
    else:
        body = [evaluated(item, scope, op) for item in _arguments(argument)]
    return {op: body}, Value(COMPUTED, source=op)


def _verbatim(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    """Arguments that are not expressions and read no document ($meta's name, $rand's empty object)."""
    return {op: argument}, Value(COMPUTED, source=op)


def _literal(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    return constant(argument)


def _cond_arguments(argument: Any) -> tuple[Any, list[Any]]:
    if is_document(argument):
        for name in argument:
            if name not in ("if", "then", "else"):
                raise CommandError(17083, f"Unrecognized parameter to $cond: {name}")
        for name in ("if", "then", "else"):
            if name not in argument:
                raise CommandError(17080 if name == "if" else 17081 if name == "then" else 17082,
                                   f"Missing '{name}' parameter to $cond")
        return argument["if"], [argument["then"], argument["else"]]
    arguments = _arguments(argument)
    if len(arguments) != 3:
        raise CommandError(16020, f"Expression $cond takes exactly 3 arguments. {len(arguments)} were passed in.")
    return arguments[0], arguments[1:]


def merge(values: list[Value], source: str) -> Value:
    """What one of several branches yields: theirs when they agree on encryption, else unknown."""
    constants = tuple(hole for value in values for hole in value.constants)
    branches = tuple(branch for value in values for branch in (value.branches or (value,)))
    holding = [value for value in values if value.may_hold_encryption]
    if not holding:
        return Value(FORWARDED, EMPTY, source, constants, branches)
    node = holding[0].node if all(value.node == holding[0].node for value in values) else UNKNOWN_NODE
    return Value(FORWARDED, node, source, constants, branches)


def check_output(value: Value, scope: Scope) -> None:
    """mongocryptd's output-schema walk (a group key, an accumulator's argument, a new root, a computed
    field): a whole document variable, or an object holding encrypted fields, cannot be forwarded."""
    for branch in value.branches or (value,):
        node = branch.node
        if not node.may_hold_encryption:
            continue
        if branch.kind == VARIABLE and branch.source in DOCUMENT_VARIABLES:
            scope.fail("variable_in_output", name=branch.source)
        if branch.kind == FIELD and node.encrypted is None and not node.unknown:
            scope.fail("prefix_in_output", path=branch.source)


def _cond(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    condition, branches = _cond_arguments(argument)
    serialized = [evaluated(condition, scope, op)]
    values = []
    for branch in branches:
        out, value = analyse(branch, scope)
        scope.scheme.forwards(value, op, scope)
        serialized.append(out)
        values.append(value)
    return {op: serialized}, merge(values, op)


def _if_null(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    arguments = _arguments(argument)
    if len(arguments) < 2:
        raise CommandError(1257300, "$ifNull needs at least two arguments, had: " + str(len(arguments)))
    serialized, values = [], []
    for item in arguments:
        out, value = analyse(item, scope)
        scope.scheme.forwards(value, op, scope)
        serialized.append(out)
        values.append(value)
    return {op: serialized}, merge(values, op)


def _switch_arguments(argument: Any) -> tuple[list[tuple[Any, Any]], Any]:
    if not is_document(argument):
        raise CommandError(40060, "$switch requires an object as an argument, found: " + type_name(argument))
    branches: list[tuple[Any, Any]] = []
    default: Any = _MISSING
    for name, value in argument.items():
        if name == "branches":
            if not isinstance(value, list):
                raise CommandError(40061, "$switch expected an array for 'branches', found: " + type_name(value))
            for branch in value:
                if not is_document(branch):
                    raise CommandError(40062, "$switch expected each branch to be an object, found: "
                                       + type_name(branch))
                for key in branch:
                    if key not in ("case", "then"):
                        raise CommandError(40063, f"$switch found an unknown argument to a branch: {key}")
                if "case" not in branch:
                    raise CommandError(40064, "$switch requires each branch have a 'case' expression")
                if "then" not in branch:
                    raise CommandError(40065, "$switch requires each branch have a 'then' expression.")
                branches.append((branch["case"], branch["then"]))
        elif name == "default":
            default = value
        else:
            raise CommandError(40067, f"$switch found an unknown argument: {name}")
    if not branches:
        raise CommandError(40068, "$switch requires at least one branch.")
    return branches, default


def _switch(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    branches, default = _switch_arguments(argument)
    serialized_branches, values = [], []
    for case, then in branches:
        out, value = analyse(then, scope)
        scope.scheme.forwards(value, op, scope)
        serialized_branches.append({"case": evaluated(case, scope, op), "then": out})
        values.append(value)
    body: dict[str, Any] = {"branches": serialized_branches}
    if default is not _MISSING:
        body["default"], value = analyse(default, scope)
        scope.scheme.forwards(value, op, scope)
        values.append(value)
    return {op: body}, merge(values, op)


def check_variable_name(name: str, *, allow_current: bool = True) -> None:
    """mongod's rule for a user variable's name (CURRENT may be rebound by $let)."""
    if allow_current and name == "CURRENT":
        return
    if not name:
        raise CommandError(16866, "empty variable names are not allowed")
    first = name[0]
    if not (first.islower() or ord(first) > 127):
        raise CommandError(16867, f"'{name}' starts with an invalid character for a user variable name")
    for character in name:
        if not (character.isalnum() or character == "_" or ord(character) > 127):
            raise CommandError(16868, f"'{name}' contains an invalid character for a variable name: '{character}'")


def _let_scope(argument: Any, scope: Scope) -> tuple[dict[str, Any], Scope, Any]:
    if not is_document(argument):
        raise CommandError(16874, "$let only supports an object as its argument")
    for name in argument:
        if name not in ("vars", "in"):
            raise CommandError(16875, f"Unrecognized parameter to $let: {name}")
    if "vars" not in argument:
        raise CommandError(16876, "Missing 'vars' parameter to $let")
    if "in" not in argument:
        raise CommandError(16877, "Missing 'in' parameter to $let")
    if not is_document(argument["vars"]):
        raise CommandError(10065, "invalid parameter: expected an object (vars)")
    serialized: dict[str, Any] = {}
    bound: dict[str, Value] = {}
    for name, expression in argument["vars"].items():
        check_variable_name(name)
        if name == "CURRENT":
            scope.fail("current_rebinding")
        # mongocryptd evaluates a variable's definition: an encrypted value cannot be bound, so every
        # user variable holds nothing encrypted.
        serialized[name] = evaluated(expression, scope, "$let")
        bound[name] = Value(COMPUTED, source=name)
    return serialized, scope.with_variables(bound), argument["in"]


def _let(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    variables, inner_scope, body = _let_scope(argument, scope)
    out, value = analyse(body, inner_scope)
    scope.scheme.forwards(value, op, scope)
    return {op: {"vars": variables, "in": out}}, value


def _iterating(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    """$map, $filter, $reduce: the elements of an evaluated array are bound to variables; all is evaluated."""
    if not is_document(argument):
        raise CommandError(16878 if op == "$map" else 28646 if op == "$filter" else 40075,
                           f"{op} only supports an object as its argument")
    names = {"$map": ("input", "as", "in"), "$filter": ("input", "as", "cond", "limit"),
             "$reduce": ("input", "initialValue", "in")}[op]
    for name in argument:
        if name not in names:
            if op == "$reduce":
                raise CommandError(40076, f"$reduce found an unknown argument: {name}")
            raise CommandError(16879 if op == "$map" else 28647, f"Unrecognized parameter to {op}: {name}")
    bound: dict[str, Value] = {}
    if op == "$reduce":
        bound = {"this": COMPUTED_VALUE, "value": COMPUTED_VALUE}
    else:
        name = argument.get("as", "this")
        if not isinstance(name, str):
            raise CommandError(16866, "empty variable names are not allowed")
        check_variable_name(name, allow_current=False)
        bound = {name: COMPUTED_VALUE}
    inner = scope.with_variables(bound)
    body: dict[str, Any] = {}
    for name, item in argument.items():
        if name == "as":
            body[name] = item
        elif name == "input" or name == "initialValue" or name == "limit":
            body[name] = evaluated(item, scope, op)
        else:
            body[name] = evaluated(item, inner, op)
    return {op: body}, Value(COMPUTED, source=op)


def _constant_name(expression: Any) -> str | None:
    """A field name given as a constant string (or `$literal`/`$const` of one)."""
    if isinstance(expression, str) and not expression.startswith("$"):
        return expression
    if is_document(expression) and len(expression) == 1 and next(iter(expression)) in ("$literal", "$const"):
        inner = next(iter(expression.values()))
        return inner if isinstance(inner, str) else None
    return None


def _field_arguments(op: str, argument: Any) -> dict[str, Any]:
    """The named arguments of $getField/$setField/$unsetField ($getField also takes the field alone)."""
    names = ("field", "input", "value") if op == "$setField" else ("field", "input")
    if op == "$getField" and (not is_document(argument) or is_operator_object(argument)):
        return {"field": argument, "input": "$$CURRENT"}
    if not is_document(argument):
        raise CommandError(4161100, f"{op} only supports an object as its argument")
    for name in argument:
        if name not in names:
            raise CommandError(3041701 if op == "$getField" else 4161101, f"{op} found an unknown argument: {name}")
    for name in names:
        if name not in argument and not (op == "$getField" and name == "input"):
            raise CommandError(3041702 if op == "$getField" else 4161102, f"{op} requires '{name}' to be specified")
    return {"input": "$$CURRENT", **argument}


def _get_field(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    """`{$getField: name}` reads field `name` (dots and all) of the input: the field's own value."""
    arguments = _field_arguments(op, argument)
    input_serialized, input_value = analyse(arguments["input"], scope)
    name = _constant_name(arguments["field"])
    if name is None:
        field_serialized = evaluated(arguments["field"], scope, op)
        value = Value(FIELD, UNKNOWN_NODE if input_value.may_hold_encryption else EMPTY, op)
    else:
        field_serialized = {"$const": name}
        value = _field_of(input_value, name, scope)
    scope.scheme.forwards(value, op, scope)
    return {op: {"field": field_serialized, "input": input_serialized}}, value


def _field_of(container: Value, name: str, scope: Scope) -> Value:
    """Field `name` of what `container` holds, by name (not by path)."""
    if container.kind in (COMPUTED, BOUND, CONSTANT):
        return COMPUTED_VALUE if not container.may_hold_encryption else Value(FIELD, UNKNOWN_NODE, name)
    source = paths.join(container.source, name) if container.kind == FIELD else name
    if container.node.encrypted is not None:
        scope.fail("through_encrypted", path=source)
    return Value(FIELD, child(container.node, name), source)


def _set_field(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    """A copy of the input with one field set to `value` ($unsetField: removed)."""
    arguments = _field_arguments(op, argument)
    input_serialized, input_value = analyse(arguments["input"], scope)
    body: dict[str, Any] = {}
    name = _constant_name(arguments["field"])
    if name is None:
        body["field"] = evaluated(arguments["field"], scope, op)
    else:
        body["field"] = {"$const": name}
    body["input"] = input_serialized
    new_child = EMPTY
    value_holds = False
    if op == "$setField":
        body["value"], value = analyse(arguments["value"], scope)
        new_child = value.node
        value_holds = value.may_hold_encryption
    if input_value.kind in (COMPUTED, BOUND, CONSTANT) and not input_value.may_hold_encryption:
        base = EMPTY
    elif input_value.node.encrypted is not None:
        scope.fail("through_encrypted", path=paths.join(input_value.source, name or ""))
    else:
        base = input_value.node
    if name is None:
        result = UNKNOWN_NODE if (base.may_hold_encryption or value_holds) else EMPTY
    else:
        result = with_child(base, name, new_child)
    value = Value(DOCUMENT, result, op)
    scope.scheme.forwards(value, op, scope)
    return {op: body}, value


def _comparison(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    return scope.scheme.compare(op, _arguments(argument), scope)


def _function(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    """$function: JavaScript could do anything with its arguments: they are evaluated."""
    if not is_document(argument):
        found = bsonvalues.bson_type(argument)
        raise CommandError(31260, f"$function requires an object as an argument, found: {found}")
    body: dict[str, Any] = {}
    for name, item in argument.items():
        if name == "args":
            if not isinstance(item, list):
                raise CommandError(31264, "The 'args' field of the $function operator must be an array")
            body[name] = [evaluated(arg, scope, op) for arg in item]
        elif name in ("body", "lang"):
            body[name] = item
        else:
            raise CommandError(31261, f"$function found an unknown argument: {name}")
    return {op: body}, Value(COMPUTED, source=op)


def _sort_array(op: str, argument: Any, scope: Scope) -> tuple[Any, Value]:
    if not is_document(argument):
        raise CommandError(2942500, "$sortArray requires an object as an argument")
    body: dict[str, Any] = {}
    for name, item in argument.items():
        if name == "input":
            body[name] = evaluated(item, scope, op)
        elif name == "sortBy":
            body[name] = item  # a sort specification over the elements, not an expression
        else:
            raise CommandError(2942501, f"$sortArray found an unknown argument: {name}")
    return {op: body}, Value(COMPUTED, source=op)


def type_name(value: Any) -> str:
    from markd import bsonvalues

    try:
        return bsonvalues.bson_type(value)
    except TypeError:
        return "unknown"


# Operators mongod parses with named (object) arguments, each an expression.
OBJECT_ARGUMENTS = frozenset({
    "$dateToString", "$dateFromString", "$dateFromParts", "$dateToParts", "$regexMatch", "$regexFind",
    "$regexFindAll", "$replaceOne", "$replaceAll", "$trim", "$ltrim", "$rtrim", "$zip", "$dateAdd", "$dateSubtract",
    "$dateDiff", "$dateTrunc", "$firstN", "$lastN", "$maxN", "$minN", "$median", "$percentile", "$convert",
    "$toHashedIndexKey", "$year", "$month", "$dayOfMonth", "$dayOfWeek", "$dayOfYear", "$hour", "$minute",
    "$second", "$millisecond", "$week", "$isoWeek", "$isoWeekYear", "$isoDayOfWeek", "$encStrStartsWith",
    "$encStrEndsWith", "$encStrContains", "$encStrNormalizedEq", "$hash", "$subtype", "$createObjectId",
})

# Every aggregation expression operator of MongoDB 8.x whose arguments are all evaluated, with the words
# mongocryptd's messages use for what it does ("... is not allowed to be evaluated by <reason>").
EVALUATING: dict[str, str] = {
    # arithmetic
    "$abs": "an absolute value calculation", "$add": "an addition calculation", "$ceil": "a ceiling calculation",
    "$divide": "division", "$exp": "an exponentiation", "$floor": "a floor calculation",
    "$ln": "a natural logarithm calculation", "$log": "a logarithm calculation",
    "$log10": "a base-ten logarithm calculation", "$mod": "a modulo calculation",
    "$multiply": "a multiplication calculation", "$pow": "an exponentiation calculation",
    "$round": "a rounding calculation", "$sqrt": "a square root calculation",
    "$subtract": "a subtraction calculation", "$trunc": "a string truncation operation", "$sigmoid": "$sigmoid",
    # arrays
    "$arrayElemAt": "array indexing", "$arrayToObject": "an array to object conversion",
    "$concatArrays": "array concatination", "$first": "array indexing (first element)",
    "$firstN": "an aggregation of the first 'n' values", "$indexOfArray": "an array find",
    "$isArray": "an array type determination", "$last": "array indexing (last element)",
    "$lastN": "an aggregation of the last 'n' values", "$maxN": "a maximum aggregation of up to 'n' values",
    "$minN": "a minimum aggregation of up to 'n' values", "$objectToArray": "an object to array conversion",
    "$range": "a numeric sequence generator", "$reverseArray": "an array reversal",
    "$size": "an array size determination", "$slice": "an array subset operation", "$zip": "an array zip operation",
    # bitwise, boolean
    "$bitAnd": "a bitwise AND operation", "$bitNot": "a bitwise NOT operation", "$bitOr": "a bitwise OR operation",
    "$bitXor": "a bitwise XOR operation", "$and": "a conjunction", "$or": "a disjunction", "$not": "a negation",
    # data size, dates
    "$binarySize": "a byte-based string or BinData length determination",
    "$bsonSize": "an object bsonSize calculation", "$dateAdd": "date add function",
    "$dateDiff": "date diff function", "$dateFromParts": "a date from parts function",
    "$dateFromString": "date from string function", "$dateSubtract": "date subtract function",
    "$dateToParts": "a date to parts function", "$dateToString": "date to string function",
    "$dateTrunc": "date truncation function", "$dayOfMonth": "a day of month extractor",
    "$dayOfWeek": "a day of week extractor", "$dayOfYear": "a day of year extractor", "$hour": "an hour extractor",
    "$isoDayOfWeek": "an ISO 8601 day of week extractor", "$isoWeek": "an ISO 8601 week extractor",
    "$isoWeekYear": "an ISO 8601 week and year extractor", "$millisecond": "a millisecond extractor",
    "$minute": "a minute extractor", "$month": "a month extractor", "$second": "a second extractor",
    "$toDate": "a type conversion", "$week": "a week of year extractor", "$year": "an ISO 8601 year extractor",
    # objects, sets
    "$mergeObjects": "a merge objects aggregation", "$allElementsTrue": "an 'all elements true' expression",
    "$anyElementTrue": "an 'any elements true' expression", "$setDifference": "a set difference operation",
    "$setEquals": "a set equality operation", "$setIntersection": "a set intersection operation",
    "$setIsSubset": "a subset determination operation", "$setUnion": "a set union operation",
    # strings
    "$concat": "string concatination", "$indexOfBytes": "a byte-based string find",
    "$indexOfCP": "a code-point-based string find", "$ltrim": "a string trim operation",
    "$regexFind": "a regex find operation", "$regexFindAll": "a regex find all operation",
    "$regexMatch": "a regex match operation", "$replaceOne": "a string replaceOne operation",
    "$replaceAll": "a string replaceAll operation", "$rtrim": "a string trim operation", "$split": "a string split",
    "$strLenBytes": "a byte-based string length determination",
    "$strLenCP": "a code-point-based string length determination",
    "$strcasecmp": "a case-insensitive string comparison", "$substr": "a byte-based substring operation",
    "$substrBytes": "a byte-based substring operation", "$substrCP": "a code-point-based substring operation",
    "$toLower": "a string lowercase conversion", "$toString": "a type conversion",
    "$trim": "a string trim operation", "$toUpper": "a string uppercase conversion",
    # timestamps, trigonometry
    "$tsIncrement": "a timestamp increment component extractor", "$tsSecond": "a timestamp second component extractor",
    "$sin": "a sine calculation", "$cos": "a cosine calculation", "$tan": "a tangent calculation",
    "$asin": "an inverse sine calculation", "$acos": "an inverse cosine calculation",
    "$atan": "an inverse tangent calculation", "$atan2": "an inverse tangent calculation",
    "$asinh": "an inverse hyperbolic sine calculation", "$acosh": "an inverse hyperbolic cosine calculation",
    "$atanh": "an inverse hyperbolic tangent calculation", "$sinh": "a hyperbolic sine calculation",
    "$cosh": "a hyperbolic cosine calculation", "$tanh": "a hyperbolic tangent calculation",
    "$degreesToRadians": "a degree to radian conversion", "$radiansToDegrees": "a radian to degree conversion",
    # types
    "$convert": "a type conversion", "$isNumber": "a numeric-type checker", "$toBool": "a type conversion",
    "$toDecimal": "a type conversion", "$toDouble": "a type conversion", "$toInt": "a type conversion",
    "$toLong": "a type conversion", "$toObjectId": "a type conversion", "$toUUID": "a type conversion",
    "$type": "a string type determination",
    # accumulators usable as expressions
    "$avg": "an average aggregation", "$max": "a maximum aggregation", "$min": "a minimum aggregation",
    "$sum": "a sum aggregation", "$stdDevPop": "a population standard deviation aggregation",
    "$stdDevSamp": "a sample standard deviation aggregation", "$median": "a percentile calculation",
    "$percentile": "a percentile calculation",
    # misc
    "$toHashedIndexKey": "a $hash expression", "$cmp": "a three-way comparison",
    "$encStrStartsWith": "$encStrStartsWith", "$encStrEndsWith": "$encStrEndsWith",
    "$encStrContains": "$encStrContains", "$encStrNormalizedEq": "$encStrNormalizedEq",
}
# What mongocryptd calls the operators with a rule of their own, when they are evaluated in turn.
REASONS: dict[str, str] = {
    **EVALUATING,
    "$eq": "an equality comparison", "$ne": "an equality comparison", "$in": "an $in expression",
    "$gt": "a greater than comparison", "$gte": "a greater than or equal comparison",
    "$lt": "a less than comparison", "$lte": "a less than or equal comparison",
    "$cond": "a boolean conditional", "$switch": "a switch case", "$let": "a let binding", "$map": "a map function",
    "$filter": "an array filter", "$reduce": "a reduce initializer", "$getField": "a $getField expression",
    "$setField": "a $setField expression", "$unsetField": "a $setField expression",
    "$function": "a $function expression", "$rand": "a $rand expression", "$meta": "a metadata access",
    "$sortArray": "an array sorting",
}


def reason(op: str) -> str:
    """How mongocryptd's messages name what `op` does to its arguments."""
    return REASONS.get(op, op)


OPERATORS: dict[str, Rule] = {
    **dict.fromkeys(EVALUATING, evaluate_all),
    "$cmp": evaluate_all,
    "$literal": _literal,
    "$const": _literal,
    "$meta": _verbatim,
    "$rand": _verbatim,
    "$cond": _cond,
    "$ifNull": _if_null,
    "$switch": _switch,
    "$let": _let,
    "$map": _iterating,
    "$filter": _iterating,
    "$reduce": _iterating,
    "$getField": _get_field,
    "$setField": _set_field,
    "$unsetField": _set_field,
    "$function": _function,
    "$sortArray": _sort_array,
    "$eq": _comparison,
    "$ne": _comparison,
    "$in": _comparison,
    "$gt": _comparison,
    "$gte": _comparison,
    "$lt": _comparison,
    "$lte": _comparison,
}

