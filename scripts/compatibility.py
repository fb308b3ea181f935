#!/usr/bin/env python3
"""Generate docs/compatibility.md: every error code markd can return, its message, and where mongocryptd raises it.

The list is collected from the code, so it cannot drift from it:
  - the error tables (`ERRORS` of markd/analysis/errors.py, csfle/errors.py, qe/errors.py with its generated keys,
    and any other dict literal of (code, message) pairs under markd/), imported or read as they are;
  - every literal raise elsewhere, by an AST scan of markd/**/*.py: `CommandError(code, message, ...)` (and its
    subclasses), followed through any wrapper that takes the code or the whole message from its caller
    (`_fail(code, msg)`, `bad_value(msg)`, `failed(frame, code, msg, ...)`) to the caller's literals; f-strings are
    templates with `{name}` holes (a helper that only quotes its parameters, `wrong_type(context, value, expected)`,
    is listed as written); `str(exc)` of a caught exception is each message the `try` body raises itself, plus
    `{error text}` for any other.
A code the scan cannot resolve to literals is "unresolved": the script fails unless the site is in
ALLOWED_UNRESOLVED with its reason. Where mongocryptd raises each code is in PROVENANCE (below); a code
without provenance also fails.

    python scripts/compatibility.py            # write docs/compatibility.md
    python scripts/compatibility.py --check    # exit 1 if the file differs from what would be written
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import io
import itertools
import re
import string
import sys
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "markd"
OUTPUT = ROOT / "docs" / "compatibility.md"

# The tables imported as they are at run time (qe/errors.py generates keys in a loop).
IMPORTED_TABLES = {
    "markd.analysis.errors": "ERRORS",
    "markd.analysis.csfle.errors": "ERRORS",
    "markd.analysis.qe.errors": "ERRORS",
}
ERROR_CLASS = "CommandError"
# Functions whose first argument is a table key (the key wrappers of errors.py / context.py).
KEY_FUNCTIONS = frozenset({"fail", "error", "shared_error"})
# Calls that quote a value with its redacted form (notation.Quoted), and those that quote it bare.
QUOTED_CALLS = frozenset({"render", "quoted", "quoted_element"})
BARE_QUOTE_CALLS = frozenset({"element", "value", "document"})
TYPE_HELPERS = frozenset({"_type", "type_name", "bson_type", "_type_name"})
STRING_METHODS = frozenset({"split", "strip", "lower", "upper", "decode", "encode", "hex"})

# -- where in markd --------------------------------------------------------------------------------------------------

# (area, modules) in the order the document shows them; a row goes to the first area one of its sites is in.
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("Wire protocol, server and limits", ("markd/core.py", "markd/wire/", "markd/pool.py", "markd/limits.py",
                                          "markd/commands.py", "markd/crypt_shared/", "markd/server.py")),
    ("Commands and the rules envelope", ("markd/analysis/__init__.py", "markd/analysis/commands.py",
                                         "markd/analysis/csfle/rules.py", "markd/analysis/qe/rules.py")),
    ("CSFLE rules (jsonSchema)", ("markd/analysis/csfle/jsonschema.py", "markd/analysis/patterns.py")),
    ("QE rules (encryptedFields)", ("markd/analysis/qe/fields.py",)),
    ("Filters (match expressions)", ("markd/analysis/match.py",)),
    ("Aggregation stages", ("markd/analysis/pipeline.py", "markd/analysis/search.py")),
    ("Aggregation expressions", ("markd/analysis/expressions.py",)),
    ("Writes and updates", ("markd/analysis/update.py", "markd/analysis/documents.py")),
    ("Encrypted values, placeholders and comparisons", ("markd/analysis/",)),
    ("markd check (offline, never a reply to a driver)", ("markd/checker.py", "markd/checkcli.py",
                                                          "markd/refusals.py")),
]


def area_of(module_path: str) -> int:
    for index, (_, prefixes) in enumerate(AREAS):
        if any(module_path == prefix or (prefix.endswith("/") and module_path.startswith(prefix))
               for prefix in prefixes):
            return index
    raise SystemExit(f"compatibility.py: no area for {module_path}: add it to AREAS")


# -- templates ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hole:
    """A part of a message filled in at run time."""

    name: str
    quoting: str = ""  # "redacted": a value quoted with its --redactErrors form; "bare": quoted without one


Part = str | Hole
Template = tuple[Part, ...]


def render(template: Template) -> str:
    return "".join(part if isinstance(part, str) else "{" + part.name + "}" for part in template)


def shape(template: Template) -> str:
    """The template with its holes unnamed: two sites that say the same thing make one row."""
    return "".join(part if isinstance(part, str) else "{}" for part in template)


def quoting(template: Template) -> str:
    kinds = {part.quoting for part in template if isinstance(part, Hole)}
    return "bare" if "bare" in kinds else "redacted" if "redacted" in kinds else ""


def from_format(text: str) -> Template:
    """A str.format template (the tables') as parts."""
    parts: list[Part] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(text):
        if literal:
            parts.append(literal)
        if name is not None:
            parts.append(Hole(name))
    return tuple(parts)


def joined(parts: list[Part]) -> Template:
    out: list[Part] = []
    for part in parts:
        if isinstance(part, str) and out and isinstance(out[-1], str):
            out[-1] += part
        elif part != "":
            out.append(part)
    return tuple(out)


# -- the AST scan ------------------------------------------------------------------------------------------------------


@dataclass
class Module:
    path: str  # markd/analysis/pipeline.py
    name: str  # markd.analysis.pipeline
    tree: ast.Module
    constants: dict[str, object] = field(default_factory=dict)  # module-level NAME = literal
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # local -> (module, name or None)
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)  # qualified name -> def
    parents: dict[ast.AST, ast.AST] = field(default_factory=dict)


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(ROOT).as_posix()
        dotted = relative[:-3].replace("/", ".").removesuffix(".__init__")
        tree = ast.parse(file.read_text(encoding="utf-8"), relative)
        module = Module(relative, dotted, tree)
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                module.parents[child] = node
        package = dotted if relative.endswith("__init__.py") else dotted.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if isinstance(node.value, ast.Constant):
                    module.constants[node.targets[0].id] = node.value.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(node.value, ast.Constant):
                    module.constants[node.target.id] = node.value.value
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = (base, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    module.imports[alias.asname or alias.name.split(".")[0]] = (alias.name, None)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                module.functions[qualified_name(module, node)] = node  # type: ignore[assignment]
        modules[dotted] = module
    return modules


def qualified_name(module: Module, node: ast.AST) -> str:
    names = []
    current: ast.AST | None = node
    while current is not None:
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(current.name)
        current = module.parents.get(current)
    return ".".join(reversed(names))


def enclosing_function(module: Module, node: ast.AST) -> ast.FunctionDef | None:
    current = module.parents.get(node)
    while current is not None and not isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
        current = module.parents.get(current)
    return current  # type: ignore[return-value]


def enclosing_class(module: Module, node: ast.AST) -> ast.ClassDef | None:
    current = module.parents.get(node)
    while current is not None and not isinstance(current, ast.ClassDef):
        current = module.parents.get(current)
    return current  # type: ignore[return-value]


def site_name(module: Module, node: ast.AST) -> str:
    function = enclosing_function(module, node)
    short = module.path.removeprefix("markd/").removesuffix(".py")
    return f"{short}:{function.name}" if function is not None else f"{short}"


def call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


class Unresolved(Exception):
    """A code the scan cannot reduce to literals."""


@dataclass(frozen=True)
class State:
    """What one path through a site has decided: which way each conditional went, what a test bound."""

    conditions: tuple[tuple[str, bool], ...] = ()
    bindings: tuple[tuple[str, str], ...] = ()
    # (variable key, exception class names, taken) for `isinstance(exc, X)` tests
    kinds: tuple[tuple[str, tuple[str, ...], bool], ...] = ()

    def condition(self, key: str) -> bool | None:
        return dict(self.conditions).get(key)

    def bound(self, key: str) -> str | None:
        return dict(self.bindings).get(key)


@dataclass
class Frame:
    """Where an expression is evaluated: its module and function, and (in a wrapper) its parameters' arguments."""

    module: Module
    function: ast.FunctionDef | None
    arguments: dict[str, tuple[ast.expr, Frame]] = field(default_factory=dict)

    def key(self, node: ast.AST) -> str:
        return f"{id(self)}:{ast.dump(node)}"


def _test_binding(test: ast.expr, frame: Frame, taken: bool) -> tuple[str, str] | None:
    """`name == "lit"` taken (or `name != "lit"` not taken) tells the message what `name` holds."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, right, op = test.left, test.comparators[0], test.ops[0]
    if isinstance(left, ast.Constant) and isinstance(right, ast.Name):
        left, right = right, left
    if not (isinstance(left, ast.Name) and isinstance(right, ast.Constant) and isinstance(right.value, str)):
        return None
    if (isinstance(op, ast.Eq) and taken) or (isinstance(op, ast.NotEq) and not taken):
        return frame.key(left), right.value
    return None


def _branches(node: ast.IfExp, frame: Frame, state: State) -> Iterator[tuple[ast.expr, State]]:
    key = frame.key(node.test)
    decided = state.condition(key)
    for taken, branch in ((True, node.body), (False, node.orelse)):
        if decided is not None and decided != taken:
            continue
        binding = _test_binding(node.test, frame, taken)
        kind = _test_kind(node.test, frame, taken)
        yield branch, State((*state.conditions, (key, taken)),
                            state.bindings + ((binding,) if binding else ()),
                            state.kinds + ((kind,) if kind else ()))


def _test_kind(test: ast.expr, frame: Frame, taken: bool) -> tuple[str, tuple[str, ...], bool] | None:
    """`isinstance(exc, X)`: which exceptions a branch is about."""
    if (isinstance(test, ast.Call) and call_name(test) == "isinstance" and len(test.args) == 2
            and isinstance(test.args[0], ast.Name)):
        kinds = test.args[1].elts if isinstance(test.args[1], ast.Tuple) else [test.args[1]]
        names = tuple(n.id if isinstance(n, ast.Name) else ast.unparse(n) for n in kinds)
        return frame.key(test.args[0]), names, taken
    return None


def resolve_constant(name: str, frame: Frame) -> object:
    if name.startswith("__") or "VERSION" in name.upper():
        raise KeyError(name)  # versions change with every release: a hole, not a literal
    module = frame.module
    if name in module.constants:
        return module.constants[name]
    if name in module.imports:
        source, attribute = module.imports[name]
        other = MODULES.get(source)
        if other is not None and attribute in other.constants:
            return other.constants[attribute]
    raise KeyError(name)


def codes(node: ast.expr, frame: Frame, state: State) -> Iterator[tuple[int, State]]:
    """Every literal code `node` can be, with the state that gives it; Unresolved if it can be anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        yield node.value, state
    elif isinstance(node, ast.IfExp):
        for branch, taken in _branches(node, frame, state):
            yield from codes(branch, frame, taken)
    elif isinstance(node, ast.Name) and node.id in frame.arguments:
        argument, caller = frame.arguments[node.id]
        yield from codes(argument, caller, state)
    elif isinstance(node, ast.Name):
        try:
            value = resolve_constant(node.id, frame)
        except KeyError:
            raise Unresolved(ast.unparse(node)) from None
        if not isinstance(value, int):
            raise Unresolved(ast.unparse(node))
        yield value, state
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        source = frame.module.imports.get(node.value.id)
        other = MODULES.get(source[0]) if source and source[1] is None else None
        if source and source[1] is not None:
            other = MODULES.get(f"{source[0]}.{source[1]}")
        if other is None or not isinstance(other.constants.get(node.attr), int):
            raise Unresolved(ast.unparse(node))
        yield other.constants[node.attr], state  # type: ignore[misc]
    else:
        raise Unresolved(ast.unparse(node))


def hole_name(node: ast.expr) -> str:
    """A short name for what fills a hole: the variable, the attribute, `type` for a type name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        if node.attr == "__name__":
            return "type"
        return node.attr
    if isinstance(node, ast.Subscript):
        return hole_name(node.value)
    if isinstance(node, ast.Call):
        name = call_name(node) or "value"
        if name in ("str", "repr", "int", "float") and node.args:
            return hole_name(node.args[0])
        if name in TYPE_HELPERS:
            return "type"
        if name == "len":
            return "count"
        if name == "sorted" and node.args:
            return hole_name(node.args[0])
        if name in STRING_METHODS and isinstance(node.func, ast.Attribute):
            return hole_name(node.func.value)  # version.split()[0]: the version
        return name.lstrip("_")
    if isinstance(node, ast.BinOp):
        return hole_name(node.left)
    return ast.unparse(node)


def hole_quoting(node: ast.expr, frame: Frame) -> str:
    """Whether a hole quotes a value from the command ('redacted' / 'bare'), following a local assignment."""
    if isinstance(node, ast.Name) and frame.function is not None:
        for statement in ast.walk(frame.function):
            if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                    and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == node.id):
                return hole_quoting(statement.value, frame)
        return ""
    if isinstance(node, ast.Call):
        name = call_name(node)
        if name in QUOTED_CALLS:
            return "redacted"
        if name in BARE_QUOTE_CALLS and isinstance(node.func, ast.Attribute):
            return "bare"
        if name in ("str", "repr") and node.args:
            return hole_quoting(node.args[0], frame)
    return ""


def _module_assignments(name: str, module: Module) -> list[ast.expr]:
    """The non-empty values a module assigns to `name` at its top level (also inside a top-level try)."""
    values: list[ast.expr] = []
    for statement in module.tree.body:
        for node in ast.walk(statement):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id == name and enclosing_function(module, node) is None
                    and not (isinstance(node.value, ast.Constant) and not node.value.value)):
                values.append(node.value)
    return values


def _handler_of(name: ast.Name, frame: Frame) -> tuple[ast.Try, ast.ExceptHandler] | None:
    """The `except ... as name` clause `name` was bound by, around the expression."""
    current = frame.module.parents.get(name)
    while current is not None and not isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
        if isinstance(current, ast.ExceptHandler) and current.name == name.id:
            parent = frame.module.parents.get(current)
            if isinstance(parent, ast.Try):
                return parent, current
        current = frame.module.parents.get(current)
    return None


def _raised(body: list[ast.stmt], types: tuple[str, ...], frame: Frame, depth: int = 0
            ) -> Iterator[tuple[str, ast.expr, Frame]]:
    """(class, message expression, frame) of each `raise T(message)` in `body` whose T is one of `types`, and in
    the functions of the same module `body` calls (two levels)."""
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                kind = call_name(node.exc)
                if kind in types:
                    yield kind, node.exc.args[0], frame
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and depth < 2:
                called = frame.module.functions.get(node.func.id)
                if called is not None and called is not frame.function:
                    yield from _raised(called.body, types, Frame(frame.module, called), depth + 1)


def _exception_messages(node: ast.Name, frame: Frame, state: State) -> Iterator[tuple[Template, State]] | None:
    """The messages `str(exc)` can be: each literal raise the handler catches, then any other exception's text."""
    found = _handler_of(node, frame)
    if found is None:
        return None
    attempt, handler = found
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type] if handler.type else []
    types = tuple(t.id if isinstance(t, ast.Name) else ast.unparse(t) for t in caught)
    excluded: set[str] = set()
    included: set[str] | None = None
    for key, kinds, taken in state.kinds:
        if key == frame.key(node):
            if taken:
                included = set(kinds) if included is None else included & set(kinds)
            else:
                excluded |= set(kinds)
    allowed = tuple(t for t in types if t not in excluded and (included is None or t in included))

    def generator() -> Iterator[tuple[Template, State]]:
        seen: set[str] = set()
        for _kind, message, where in _raised(attempt.body, allowed, frame):
            for template, after in messages(message, where, state):
                if render(template) not in seen:
                    seen.add(render(template))
                    yield template, after
        yield (Hole("error text"),), state  # the text of an exception raised elsewhere (a decoder's, Python's)

    return generator()


def _hole(node: ast.expr, frame: Frame, state: State) -> Iterator[tuple[Template, State]]:
    if isinstance(node, ast.Name):
        enumerated = _exception_messages(node, frame, state)
        if enumerated is not None:
            yield from enumerated
            return
        bound = state.bound(frame.key(node))
        if bound is not None:
            yield (bound,), state
            return
        if node.id in frame.arguments:
            argument, caller = frame.arguments[node.id]
            yield from messages(argument, caller, state)
            return
        try:
            value = resolve_constant(node.id, frame)
        except KeyError:
            pass
        else:
            if isinstance(value, str | int | float):
                yield (str(value),), state
                return
        assigned = _module_assignments(node.id, frame.module)
        local = frame.function is not None and any(
            isinstance(n, ast.Name) and n.id == node.id and isinstance(n.ctx, ast.Store)
            for n in ast.walk(frame.function))
        if assigned and not local and node.id not in frame.arguments:
            for expression in assigned:  # a module-level message variable: each text it is given
                yield from messages(expression, frame, state)
            return
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        source = frame.module.imports.get(node.value.id)
        if source is not None:
            other = MODULES.get(source[0] if source[1] is None else f"{source[0]}.{source[1]}")
            if (other is not None and isinstance(other.constants.get(node.attr), str | int)
                    and not node.attr.startswith("__") and "VERSION" not in node.attr.upper()):
                yield (str(other.constants[node.attr]),), state
                return
    if isinstance(node, ast.Call) and call_name(node) in ("str",) and node.args:
        yield from _hole(node.args[0], frame, state)
        return
    if isinstance(node, ast.IfExp | ast.JoinedStr | ast.Constant):
        yield from messages(node, frame, state)
        return
    yield (Hole(hole_name(node), hole_quoting(node, frame)),), state


def messages(node: ast.expr, frame: Frame, state: State) -> Iterator[tuple[Template, State]]:
    """Every template `node` can be (a literal, an f-string, `+` of them, a choice between them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        yield (node.value if isinstance(node.value, str) else node.value.decode("utf-8", "replace"),), state
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "encode"
          and not isinstance(node.func.value, ast.Name | ast.Attribute)):
        yield from messages(node.func.value, frame, state)  # "text".encode(...): the text
    elif isinstance(node, ast.JoinedStr):
        def parts(values: list[ast.expr], state: State) -> Iterator[tuple[list[Part], State]]:
            if not values:
                yield [], state
                return
            head, rest = values[0], values[1:]
            if isinstance(head, ast.Constant):
                heads: Iterator[tuple[Template, State]] = iter([((str(head.value),), state)])
            else:
                assert isinstance(head, ast.FormattedValue)
                heads = _hole(head.value, frame, state) if head.format_spec is None else iter(
                    [((Hole(hole_name(head.value)),), state)])
            for first, after in heads:
                for tail, final in parts(rest, after):
                    yield list(first) + tail, final
        for pieces, final in parts(list(node.values), state):
            yield joined(pieces), final
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        for left, after in messages(node.left, frame, state):
            for right, final in messages(node.right, frame, after):
                yield joined([*left, *right]), final
    elif isinstance(node, ast.IfExp):
        for branch, taken in _branches(node, frame, state):
            yield from messages(branch, frame, taken)
    else:
        yield from _hole(node, frame, state)


# -- sites -------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    code: int
    code_name: str
    template: Template
    sites: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # table keys ("csfle.errors:range_on_encrypted")
    area: int = len(AREAS) - 1
    quoting: str = ""


@dataclass
class Scan:
    rows: dict[tuple[int, str], Row] = field(default_factory=dict)
    unresolved: list[tuple[str, str, str]] = field(default_factory=list)  # (site, code expression, why)
    unknown_keys: list[tuple[str, str]] = field(default_factory=list)  # (site, key)
    unused_keys: list[tuple[str, str, int, str]] = field(default_factory=list)  # (table, key, code, template)

    def add(self, code: int, code_name: str | None, template: Template, site: str, area: int,
            key: str | None = None, quote: str = "") -> None:
        from markd.errors import code_name as default_name

        name = code_name if code_name is not None else default_name(code)  # "": a status without a code
        row = self.rows.setdefault((code, shape(template)), Row(code, name, template, area=area))
        if code_name and row.code_name != code_name:
            row.code_name = code_name
        if site not in row.sites:
            row.sites.append(site)
        if key is not None and key not in row.keys:
            row.keys.append(key)
        row.area = min(row.area, area)
        quote = quote or quoting(template)
        if quote == "bare" or (quote and not row.quoting):
            row.quoting = quote


MODULES: dict[str, Module] = {}


def error_classes() -> set[str]:
    names = {ERROR_CLASS}
    for module in MODULES.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(base, ast.Name) and base.id in names for base in node.bases):
                names.add(node.name)
    return names


def _parameters(function: ast.FunctionDef) -> list[str]:
    arguments = function.args
    return [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]


def _leaves(node: ast.expr) -> Iterator[ast.expr]:
    """What an expression can evaluate to: a conditional's branches (not its test), else itself."""
    if isinstance(node, ast.IfExp):
        yield from _leaves(node.body)
        yield from _leaves(node.orelse)
    elif isinstance(node, ast.Call) and call_name(node) == "str" and node.args:
        yield from _leaves(node.args[0])
    else:
        yield node


def _uses_parameters(call: ast.Call, function: ast.FunctionDef | None) -> bool:
    """A wrapper's error call: its code is a parameter (`_fail(code, msg)`), or its whole message is one
    (`bad_value(msg)`). A message that only quotes a parameter (`f"... {keyword} ..."`) is written where it is."""
    if function is None:
        return False
    names = set(_parameters(function)) - {"self", "cls"}
    arguments = {k.arg: k.value for k in call.keywords if k.arg}
    code = call.args[0] if call.args else arguments.get("code")
    message = call.args[1] if len(call.args) > 1 else arguments.get("errmsg")
    return any(isinstance(leaf, ast.Name) and leaf.id in names
               for part in (code, message) if part is not None for leaf in _leaves(part))


def _is_error_call(call: ast.Call, classes: set[str], module: Module) -> bool:
    if isinstance(call.func, ast.Name):
        if call.func.id in classes:
            return True
        # `raised = SubClass if ... else CommandError` then `raised(...)`
        function = enclosing_function(module, call)
        if function is not None:
            for statement in ast.walk(function):
                if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                        and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == call.func.id):
                    leaves = list(_leaves(statement.value))
                    if all(isinstance(leaf, ast.Name) and leaf.id in classes for leaf in leaves):
                        return True
        return False
    return isinstance(call.func, ast.Attribute) and call.func.attr in classes


@dataclass
class Wrapper:
    module: Module
    function: ast.FunctionDef
    body_calls: list[ast.Call]  # the error calls that use the wrapper's parameters


def _resolves_to(call: ast.Call, caller: Module, wrapper: Wrapper) -> bool:
    """Whether `call` (in `caller`) calls `wrapper`'s function."""
    target = wrapper.function
    qualified = qualified_name(wrapper.module, target)
    is_method = "." in qualified
    if isinstance(call.func, ast.Name):
        if is_method or call.func.id != target.name:
            return False
        if caller is wrapper.module:
            return qualified == target.name
        source = caller.imports.get(call.func.id)
        return source is not None and source == (wrapper.module.name, target.name)
    if isinstance(call.func, ast.Attribute) and call.func.attr == target.name:
        base = call.func.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            owner = enclosing_class(caller, call)
            return (is_method and caller is wrapper.module and owner is not None
                    and owner.name == qualified.split(".")[-2])
        if isinstance(base, ast.Name) and not is_method:
            source = caller.imports.get(base.id)
            if source is None:
                return False
            name = source[0] if source[1] is None else f"{source[0]}.{source[1]}"
            return name == wrapper.module.name
    return False


def _bind(call: ast.Call, wrapper: Wrapper, caller: Frame) -> dict[str, tuple[ast.expr, Frame]] | None:
    """The wrapper's parameters bound to `call`'s arguments; None when a starred argument hides them."""
    parameters = [p for p in _parameters(wrapper.function)]
    if parameters and parameters[0] in ("self", "cls"):
        parameters = parameters[1:]
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    bound = {name: (argument, caller) for name, argument in zip(parameters, call.args, strict=False)}
    bound.update({k.arg: (k.value, caller) for k in call.keywords if k.arg is not None})
    return bound


def scan_error_calls(scan: Scan) -> None:
    classes = error_classes()
    all_calls = [(module, node) for module in MODULES.values() for node in ast.walk(module.tree)
                 if isinstance(node, ast.Call)]
    calls = [(module, node) for module, node in all_calls
             if module.name != "markd.errors" and _is_error_call(node, classes, module)]
    # Wrappers: functions whose error call takes its code or message from their parameters; a wrapper of a
    # wrapper too (to a fixed point).
    wrappers: dict[int, Wrapper] = {}
    direct: list[tuple[Module, ast.Call, Frame]] = []
    pending = list(calls)
    wrapped_calls: set[int] = set()
    while pending:
        module, call = pending.pop()
        function = enclosing_function(module, call)
        if _uses_parameters(call, function) and id(call) not in wrapped_calls:
            assert function is not None
            wrapped_calls.add(id(call))
            wrapper = wrappers.setdefault(id(function), Wrapper(module, function, []))
            wrapper.body_calls.append(call)
            if len(wrapper.body_calls) == 1:
                pending.extend((other, node) for other, node in all_calls if _resolves_to(node, other, wrapper))
    for module, call in calls:
        if id(call) not in wrapped_calls:
            direct.append((module, call, Frame(module, enclosing_function(module, call))))

    def evaluate(module: Module, call: ast.Call, frame: Frame, site: str) -> None:
        """Add the rows of one error construction `call` (CommandError(...)) evaluated in `frame`."""
        if any(isinstance(a, ast.Starred) for a in call.args):
            if _starred_from_table(call, module):
                return
            scan.unresolved.append((site, ast.unparse(call), "starred arguments"))
            return
        arguments = {k.arg: k.value for k in call.keywords if k.arg}
        code_node = call.args[0] if call.args else arguments.get("code")
        message_node = call.args[1] if len(call.args) > 1 else arguments.get("errmsg")
        name_node = call.args[2] if len(call.args) > 2 else arguments.get("code_name_")
        if code_node is None or message_node is None:
            scan.unresolved.append((site, ast.unparse(call), "no code or message"))
            return
        try:
            found = list(codes(code_node, frame, State()))
        except Unresolved as exc:
            scan.unresolved.append((site, str(exc), "computed code"))
            return
        code_name = None
        if isinstance(name_node, ast.Constant) and isinstance(name_node.value, str):
            code_name = name_node.value
        elif name_node is not None:
            names = [render(t) for t, _ in messages(name_node, frame, State())]
            code_name = names[0] if len(names) == 1 and "{" not in names[0] else None
        for code, state in found:
            for template, _ in messages(message_node, frame, state):
                scan.add(code, code_name, template, site, area_of(frame.module.path))

    for module, call, frame in direct:
        evaluate(module, call, frame, site_name(module, call))

    def frames_for(wrapper: Wrapper, depth: int = 0) -> Iterator[tuple[Frame, str]]:
        """A frame for each place `wrapper` is called from (through the wrappers of it), with its outermost site."""
        for other, node in all_calls:
            if not _resolves_to(node, other, wrapper):
                continue
            function = enclosing_function(other, node)
            outer = wrappers.get(id(function)) if function is not None else None
            if outer is not None and any(node is body for body in outer.body_calls) and depth < 8:
                outer_frames = list(frames_for(outer, depth + 1))
                for outer_frame, site in outer_frames:
                    yield Frame(wrapper.module, wrapper.function, _bind(node, wrapper, outer_frame) or {}), site
                if outer_frames:
                    continue
            # Called directly, or from a wrapper nobody is seen calling (one reached through a table): the
            # arguments as that caller writes them.
            caller = Frame(other, function)
            bound = _bind(node, wrapper, caller) or {}
            yield Frame(wrapper.module, wrapper.function, bound), site_name(other, node)

    for wrapper in wrappers.values():
        inside = [c for c in wrapper.body_calls if _is_error_call(c, classes, wrapper.module)]
        if not inside:
            continue
        frames = list(frames_for(wrapper)) or [(Frame(wrapper.module, wrapper.function),
                                                site_name(wrapper.module, wrapper.function.body[0]))]
        for frame, site in frames:
            for call in inside:
                evaluate(wrapper.module, call, frame, site)


def _starred_from_table(call: ast.Call, module: Module) -> bool:
    """`CommandError(*row)` where `row` was read from a (code, message) table the scan lists."""
    starred = [a for a in call.args if isinstance(a, ast.Starred)]
    if len(starred) != 1 or not isinstance(starred[0].value, ast.Name):
        return False
    name = starred[0].value.id
    function = enclosing_function(module, call)
    if function is None:
        return False
    for statement in ast.walk(function):
        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == name):
            value = statement.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "get":
                value = value.func.value
            elif isinstance(value, ast.Subscript):
                value = value.value
            if isinstance(value, ast.Name) and (module.name, value.id) in LITERAL_TABLES:
                return True
    return False


# Tables found by the scan: (module, name) -> {key: (code, message)}
LITERAL_TABLES: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}


def _table_literal(node: ast.AST) -> dict[str, tuple[int, str]] | None:
    """A dict literal of "key": (code, "message") pairs, or None."""
    if not isinstance(node, ast.Dict) or not node.values:
        return None
    table: dict[str, tuple[int, str]] = {}
    for key, value in zip(node.keys, node.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Tuple)
                and len(value.elts) == 2 and isinstance(value.elts[0], ast.Constant)
                and isinstance(value.elts[0].value, int) and isinstance(value.elts[1], ast.Constant)
                and isinstance(value.elts[1].value, str)):
            return None
        table[key.value] = (value.elts[0].value, value.elts[1].value)
    return table


def scan_tables(scan: Scan) -> None:
    """The tables' rows, each with the places that raise its key."""
    tables: dict[str, dict[str, tuple[int, str]]] = {}
    table_nodes: set[int] = set()
    for module in MODULES.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                literal = _table_literal(node.value) if node.value is not None else None
                if literal is not None and isinstance(target, ast.Name):
                    table_nodes.update(id(n) for n in ast.walk(node.value))  # type: ignore[arg-type]
                    if IMPORTED_TABLES.get(module.name) == target.id:
                        continue
                    LITERAL_TABLES[(module.name, target.id)] = literal
                    tables[f"{module.name.removeprefix('markd.')}:{target.id}"] = literal
    for dotted, attribute in IMPORTED_TABLES.items():
        tables[dotted.removeprefix("markd.")] = getattr(importlib.import_module(dotted), attribute)
    known_keys = {key for table in tables.values() for key in table}
    # Where each key is raised: a literal key (or one of a conditional's) passed to fail()/error(), and the
    # key strings in a function that raises a key it computed (or in the calls that pass it one).
    uses: dict[str, list[tuple[str, int, str, ast.Call | None, Frame | None]]] = {}
    patterns: list[tuple[re.Pattern[str], str, int]] = []

    def note(key: str, site: str, area: int, quote: str, call: ast.Call | None = None,
             frame: Frame | None = None) -> None:
        found = uses.setdefault(key, [])
        if call is not None or not any(use[:3] == (site, area, quote) for use in found):
            found.append((site, area, quote, call, frame))

    for module in MODULES.values():
        if not module.name.startswith("markd.analysis"):
            continue  # the tables' keys are raised by the analysis only
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.Call) and call_name(node) in KEY_FUNCTIONS and node.args):
                continue
            function = enclosing_function(module, node)
            if function is not None and function.name in KEY_FUNCTIONS and module.name in (
                    "markd.analysis.context", *IMPORTED_TABLES):
                continue  # the key wrappers themselves
            site, area = site_name(module, node), area_of(module.path)
            frame = Frame(module, function)
            quote = "redacted" if any(hole_quoting(k.value, frame) == "redacted" for k in node.keywords) else ""
            key_node = node.args[0]
            literal_keys = [n.value for n in ast.walk(key_node)
                            if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            if isinstance(key_node, ast.JoinedStr):
                prefix = "".join(str(v.value) for v in key_node.values if isinstance(v, ast.Constant))
                shape = "".join(re.escape(str(v.value)) if isinstance(v, ast.Constant) else ".+"
                                for v in key_node.values)
                patterns.append((re.compile(shape), site, area))
                for key in known_keys:
                    if re.fullmatch(shape, key):
                        note(key, site, area, quote)
                if not any(re.fullmatch(shape, key) for key in known_keys):
                    scan.unknown_keys.append((site, prefix + "..."))
                continue
            if isinstance(key_node, ast.Constant):
                if key_node.value not in known_keys:
                    if isinstance(key_node.value, str) and " " not in key_node.value:
                        scan.unknown_keys.append((site, str(key_node.value)))
                    continue
                note(key_node.value, site, area, quote, node, frame)
                continue
            if literal_keys and not isinstance(key_node, ast.Name):
                for key in literal_keys:
                    if key in known_keys:
                        note(key, site, area, quote)
                continue
            # A computed key: the key strings of the function that computes it and of the calls to it.
            sources: list[ast.AST] = [function] if function is not None else []
            if function is not None:
                sources += [n for other in MODULES.values() for n in ast.walk(other.tree)
                            if isinstance(n, ast.Call) and call_name(n) == function.name]
            for source in sources:
                for constant in ast.walk(source):
                    if isinstance(constant, ast.Constant) and constant.value in known_keys \
                            and id(constant) not in table_nodes:
                        note(constant.value, site, area, quote)
    for (module_name, table), literal in LITERAL_TABLES.items():
        for module in MODULES.values():
            for node in ast.walk(module.tree):
                if isinstance(node, ast.Name) and node.id == table and isinstance(node.ctx, ast.Load) and (
                        module.name == module_name or module.imports.get(table, ("", ""))[0] == module_name):
                    for key in literal:
                        note(key, site_name(module, node), area_of(module.path), "")
    for table_name, table in tables.items():
        for key, (code, text) in table.items():
            template = from_format(text)
            found = uses.get(key, [])
            if not found:
                scan.unused_keys.append((table_name, key, code, text))
                continue
            for site, area, quote, call, frame in found:
                for filled in _filled(template, call, frame):
                    scan.add(code, None, filled, site, area, key=f"{table_name}|{key}", quote=quote)


def _filled(template: Template, call: ast.Call | None, frame: Frame | None) -> Iterator[Template]:
    """A template that is nothing but holes ("{detail}") says nothing: it takes the text each call passes."""
    if call is None or frame is None or any(isinstance(part, str) for part in template):
        yield template
        return
    given = {k.arg: k.value for k in call.keywords if k.arg}
    choices: list[list[Template]] = []
    for part in template:
        assert isinstance(part, Hole)
        value = given.get(part.name)
        choices.append([t for t, _ in messages(value, frame, State())] if value is not None else [(part,)])
    for combination in itertools.product(*choices):
        yield joined([piece for chosen in combination for piece in chosen])



# -- the in-process library's statuses -------------------------------------------------------------------------------

LIBRARY_STATUS_CALLS = ("status_set", "markd_cs_set_error")  # (status, error class, code, message)


def _c_arguments(text: str) -> list[str] | None:
    """The top-level, comma-separated arguments of a C call whose text starts after its "("."""
    arguments: list[str] = []
    depth, start, index, quoted = 0, 0, 0, False
    while index < len(text):
        character = text[index]
        if quoted:
            if character == "\\":
                index += 1
            elif character == '"':
                quoted = False
        elif character == '"':
            quoted = True
        elif character == "(":
            depth += 1
        elif character == ")":
            if depth == 0:
                arguments.append(text[start:index].strip())
                return arguments
            depth -= 1
        elif character == "," and depth == 0:
            arguments.append(text[start:index].strip())
            start = index + 1
        index += 1
    return None


def _c_message(argument: str, strings: dict[str, str]) -> Template | None:
    """A C message: adjacent string literals and named strings; another macro is a hole."""
    parts: list[Part] = []
    for literal, name in re.findall(r'"((?:[^"\\]|\\.)*)"|([A-Za-z_]\w*)', argument):
        if name:
            if name == "NULL":
                return None
            parts.append(strings[name] if name in strings else Hole(name.lower().removeprefix("markd_cs_")))
        else:
            parts.append(literal.encode().decode("unicode_escape"))
    return joined(parts)


def scan_library_statuses(scan: Scan) -> None:
    """The statuses the in-process library (mongo_crypt_v1) sets itself, in C and in its Python bridge."""
    for file in sorted(PACKAGE.rglob("*.c")):
        source = file.read_text(encoding="utf-8")
        relative = file.relative_to(ROOT).as_posix()
        numbers = {m[0]: int(m[1]) for m in re.findall(r"^#define\s+(\w+)\s+(-?\d+)\s*$", source, re.M)}
        numbers.update({m[0]: int(m[1]) for m in re.findall(r"^\s+(\w+)\s*=\s*(-?\d+),", source, re.M)})
        strings = {m[0]: m[1] for m in re.findall(r'^static const char (\w+)\[\] = "((?:[^"\\]|\\.)*)";', source,
                                                  re.M)}
        calls = re.compile(r"\b(" + "|".join(LIBRARY_STATUS_CALLS) + r")\(")
        for match in calls.finditer(source):
            line_start = source.rfind("\n", 0, match.start()) + 1
            if "static" in source[line_start:match.start()]:
                continue  # the definition
            arguments = _c_arguments(source[match.end():])
            if arguments is None or len(arguments) != 4:
                continue
            code_text, message_text = arguments[2], arguments[3]
            code = int(code_text) if re.fullmatch(r"-?\d+", code_text) else numbers.get(code_text)
            if code is None:
                if "->" not in code_text:  # result->code: the Python side's status, scanned there
                    scan.unresolved.append((relative, code_text, "computed code"))
                continue
            template = _c_message(message_text, strings)
            if template is None:
                continue  # success: no message
            functions = re.findall(r"^[A-Za-z_][^\n;]*?\b(\w+)\([^;{]*$", source[:match.start()], re.M)
            site = f"{relative.removeprefix('markd/')}:{functions[-1] if functions else ''}"
            scan.add(code, "" if code == 0 else None, template, site, area_of(relative))
    for module in [*MODULES.values(), *EMBEDDED_SCRIPTS]:
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call) and call_name(node) == "markd_cs_set_error" and len(node.args) == 4:
                frame = Frame(module, enclosing_function(module, node))
                site = site_name(module, node)
                try:
                    found = list(codes(node.args[2], frame, State()))
                except Unresolved as exc:
                    if not isinstance(node.args[2], ast.Attribute):  # error.code: a CommandError's, listed
                        scan.unresolved.append((site, str(exc), "computed code"))
                    continue
                for code, state in found:
                    for template, _ in messages(node.args[3], frame, state):
                        scan.add(code, None, template, site, area_of(module.path))


# Python the library runs that is kept in a string (cffi's embedding init code in crypt_shared/build.py).
EMBEDDED_SCRIPTS: list[Module] = []


def load_embedded_scripts() -> None:
    EMBEDDED_SCRIPTS.clear()
    for module in MODULES.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr):  # an f-string template of code: each hole a name
                text = "".join(str(v.value) if isinstance(v, ast.Constant) else "_hole" for v in node.values)
            else:
                continue
            if "markd_cs_set_error(" in text:
                try:
                    tree = ast.parse(text)
                except SyntaxError:
                    continue
                script = Module(module.path, module.name + ".<embedded>", tree)
                for inner in ast.walk(tree):
                    for child in ast.iter_child_nodes(inner):
                        script.parents[child] = inner
                EMBEDDED_SCRIPTS.append(script)


# -- provenance --------------------------------------------------------------------------------------------------------

MONGOCRYPTD, PARSER, MARKD, UNCONFIRMED = "mongocryptd", "mongod parser", "markd only", "unconfirmed"


@dataclass(frozen=True)
class Provenance:
    kind: str  # MONGOCRYPTD (its query analysis), PARSER (mongod's parser it runs), MARKD, UNCONFIRMED
    where: str
    note: str = ""


# One-letter constructors keep the table below one entry a line.
def C(where: str, note: str = "") -> Provenance:
    return Provenance(MONGOCRYPTD, where, note)


def P(where: str, note: str = "") -> Provenance:
    return Provenance(PARSER, where, note)


def M(why: str) -> Provenance:
    return Provenance(MARKD, why)


def U(why: str) -> Provenance:
    return Provenance(UNCONFIRMED, why)


NOT_COMPARED = "text not compared with a mongod source"
LEAK_LET = ("markd also raises it for a command `let` or update `c` variable ($$name) compared with an encrypted "
            "field: mongocryptd copies `let` verbatim and treats $$name as unencrypted, so the plaintext would be "
            "compared with ciphertext (a leak) - markd only")
DUPLICATES = ("markd also refuses a name given twice anywhere else in the command or its rules: mongod's BSON "
              "objects keep the first or the last occurrence silently, so what markd analyses could differ from "
              "what the server runs - markd only")
MATCH = "match expression parser (MatchExpressionParser)"
SCHEMA = "$jsonSchema parser (mongod's, run over the rules first)"
IDL = "IDL parser"
EXPR = "aggregation expression parser"
FIELDS = "encryptedFields validation (mongod's validator, run by the EncryptedFieldConfig parse)"
QE_IDL = ("markd's code and wording for a malformed encryptedFields entry: mongocryptd's IDL parse of "
          "EncryptedFieldConfig answers with its IDL errors (14 wrong type, 40414 missing, 40415 unknown field, "
          "51024 out of range)")

# code -> its provenance, or [(substring of the template, provenance), ...] tried in order ("" matches any).
PROVENANCE: dict[int, Provenance | list[tuple[str, Provenance]]] = {
    0: M("the in-process library's own handle checks (a mongo_crypt_v1 status with no server code): the "
         "library already exists, was destroyed, or a handle is not this process's"),
    1: M("an internal error of markd (a bug, a lost analysis process, an in-process library built for another "
         "markd): answered with the exception's type only, never its text"),
    2: [
        ("markd: analyze_query", M("the in-process library called without a document")),
        ("Index bounds", M("find `min`/`max` index bounds that name an encrypted field: mongocryptd passes them "
                           "to the server in clear (a leak)")),
        ("Regular expression matching in 'patternProperties' exceeded",
         M("markd bounds the time a rule pattern may spend matching (a denial-of-service guard)")),
        ("BulkWrite with automatic encryption", M("markd's wording of the single-namespace rule for a CSFLE "
                                                  "bulkWrite")),
        ("BulkWrite", C("command parsing: bulkWrite")),
        ("bulkWrite command only supports", C("command parsing: bulkWrite with a jsonSchema")),
        ("Enumeration value '{}' for field '{}.algorithm'", P(IDL + ": `encrypt`/`encryptMetadata` algorithm enum")),
        ("Enumeration value", P(IDL + ": the queryType enum of EncryptedFieldConfig",
                                "mongod prints the field's whole IDL context path; markd prints 'queryType'")),
        ("$jsonSchema keyword", P(SCHEMA)),
        ("Invalid regular expression", P(SCHEMA + ": a `patternProperties` key",
                                         "the reason is markd's regex engine's, not PCRE2's")),
        ("embedded null byte", P(SCHEMA + ": `pattern`")),
        ("Unknown type name alias", P("type-alias lookup ($type, $jsonSchema bsonType)", NOT_COMPARED)),
        ("The 'to' field for $rename", P("update parser: $rename", "markd prints the type, not the value")),
        ("value is not a valid number", P(IDL + ": count limit/skip")),
        ("Failed to parse bit position", P(MATCH + ": $bits*",
                                           "mongod appends the element; markd leaves the operand out")),
        ("takes an Array, a number, or a BinData", P(MATCH + ": $bits*", "markd names the operator, not the value")),
        ("$or/$and/$nor entries", P(MATCH)),
        ("", P(MATCH)),
    ],
    9: [
        ("encrypted field '", M(QE_IDL)), ("Invalid encrypted field path", M(QE_IDL)),
        ("encryptedFields.fields", M(QE_IDL)), ("BSON field 'fields.", M(QE_IDL)),
        ("BSON field 'queries.", M(QE_IDL)), ("text search lengths", M(QE_IDL)),
        ("Duplicate $jsonSchema property", M("the same property twice in `properties`/`patternProperties`/"
                                             "`dependencies`: mongocryptd keeps the last, mongod checks both")),
        ("Duplicate field name in the value of", M("a name repeated inside a $jsonSchema keyword's value: "
                                                   "mongod's BSON objects keep one silently")),
        ("Unknown modifier", P("update parser")),
        ("Expected an integer: {}", P("BSONElement number parsing ($jsonSchema lengths, $bits* masks)",
                                      "for $bits* markd names the operator where mongod prints the element")),
        ("Expected a non-negative number in", P("BSONElement number parsing (count skip, $bits*)")),
        ("Expected a", P("BSONElement number parsing ($jsonSchema length keywords)")),
        ("Cannot represent as a 64-bit integer", P("BSONElement number parsing ($jsonSchema length keywords)")),
        ("$type must match at least one type", P(MATCH + ": $type", NOT_COMPARED)),
        ("Modifiers operate", P("update parser")),
        ("Update argument must be", P("update parser", "code unconfirmed")),
        ("argument '", P("$lookup/$graphLookup stage parser", NOT_COMPARED)),
        ("requires '", P("$lookup/$graphLookup stage parser", NOT_COMPARED)),
        ("stage specification must be an object", P("$lookup/$graphLookup stage parser (lite parse)")),
        ("value must be an object. Found", P("$search/$searchMeta/$vectorSearch stage parser",
                                             "an intermediate line may answer 10065 first; 9 is the newest's")),
        ("empty variable names", P(EXPR + ": variable names (the 8.x validation; 16869 in 4.x)")),
        ("", P(SCHEMA)),
    ],
    13: [
        ("getCmdLineOpts", P("command dispatch: an admin-only command run on another database")),
        ("disabled on this markd", M("markd's --disableShutdownCommand")),
        ("", P("the shutdown command without auth from another host")),
    ],
    14: [
        ("EncryptInformation.schema", C("command parsing: encryptionInformation (IDL context `EncryptInformation`)",
                                        "markd leaves out the actual type")),
        ("BSON field 'filter' is the wrong type", P(IDL, "markd's wording: mongod names the command "
                                                         "(`find.filter`) and the actual type")),
        ("BSON field", P(IDL)),
        ("'pipeline' option", P("aggregate command parser", NOT_COMPARED)),
        ("query must be an object", P("$geoNear stage parser: `query`")),
        ("", P(SCHEMA)),
    ],
    15: P("BSON validation: nesting deeper than 200 levels (Overflow)"),
    20: [("explain itself", C("command parsing: explain")),
         ("", U("no source seen; markd's table marks the code and wording unconfirmed"))],
    22: P("wire protocol: BSON validation of a message", "the text is markd's BSON decoder's"),
    223: P("wire protocol: OpMsg parse, a required flag bit markd does not know",
           "mongod answers as markd does; the connection stays open"),
    40430: P("wire protocol: OpMsg parse, a second body section"),
    40431: P("wire protocol: OpMsg parse, a document sequence given twice"),
    40432: P("wire protocol: OpMsg parse, an unknown section kind"),
    40433: P("wire protocol: OpMsg parse, a document sequence named like a body field"),
    40587: P("wire protocol: OpMsg parse, no body section"),
    59: [("Explain failed", C("command parsing: explain of an unknown command")),
         ("", P("command dispatch: unknown command"))],
    72: P("update parser: a stage not allowed in a pipeline-style update"),
    73: [("BulkWrite", C("command parsing: bulkWrite off the admin database")),
         ("", P(IDL + ": the command's collection name",
                "mongod's IDL says BadValue (2); mongocryptd's own tests show 73 for `find: 5`"))],
    146: M("the analysis process ran out of memory on one command (markd's process pool)"),
    168: P(EXPR + ": unknown operator"),
    232: P("pipeline parser: sub-pipelines nested deeper than 20"),
    282: P("wire protocol: OP_MSG checksum", "mongod also closes the connection"),
    352: P("wire protocol: OP_QUERY other than the handshake"),
    10065: [("$geoNear", P("$geoNear stage parser (BSONElement's object check)")),
            ("", P(EXPR + ": $let `vars` (BSONElement's object check)"))],
    15952: P("$group stage parser"), 15955: P("$group stage parser"),
    5107200: P("$skip stage parser (5.0+; older lines 15956)"),
    5107201: P("$limit stage parser (5.0+; older lines 15957)"), 15958: P("$limit stage parser"),
    15959: P("$match stage parser"),
    15969: P("$project stage parser"),
    15976: P("$sort stage parser"),
    15983: P(EXPR, "markd's wording is mongod's projection parser's (40181); mongod's 15983 reads 'An object "
                   "representing an expression must have exactly one field: <expression>'"),
    15998: P(EXPR + ": field path"), 16410: P(EXPR + ": field path"), 16411: P(EXPR + ": field path"),
    16020: P(EXPR + ": arity"),
    16866: P(EXPR + ": variable names", NOT_COMPARED), 16867: P(EXPR + ": variable names", NOT_COMPARED),
    16868: P(EXPR + ": variable names", NOT_COMPARED),
    16872: P(EXPR + ": field path"),
    16874: P(EXPR + ": $let"), 16875: P(EXPR + ": $let"), 16876: P(EXPR + ": $let"), 16877: P(EXPR + ": $let"),
    16878: P(EXPR + ": $map"), 16879: P(EXPR + ": $map", NOT_COMPARED),
    17080: P(EXPR + ": $cond"), 17081: P(EXPR + ": $cond"), 17082: P(EXPR + ": $cond"), 17083: P(EXPR + ": $cond"),
    17276: P(EXPR + ": undefined variable"),
    28646: P(EXPR + ": $filter", NOT_COMPARED), 28647: P(EXPR + ": $filter", NOT_COMPARED),
    **dict.fromkeys((28745, 28746, 28747, 28748, 28749), P("$sample stage parser")),
    **dict.fromkeys((15981, 28808, 28812, 28818), P("$unwind stage parser")),
    28809: P("$unwind stage parser"), 28810: P("$unwind stage parser", NOT_COMPARED), 28811: P("$unwind stage parser"),
    28822: P("$unwind stage parser"),
    30017: C("encrypted values: a JSON-pointer keyId"),
    30050: C("command parsing: explain"),
    31002: P("$unset stage parser"),
    31006: C("writes: an array where the schema has encrypted fields below"),
    31007: C("match expression: $eq to an array on a prefix of an encrypted path"),
    31008: C("match expression: $in element on a prefix of an encrypted path"),
    31011: [("when it names the encrypted field", M("$search/$searchMeta/$vectorSearch naming an encrypted path: "
                                                    "the search engine would run the value in clear (markd's "
                                                    "wording; stages that name no encrypted path pass)")),
            ("unless every path it names", M("a $search/$searchMeta/$vectorSearch whose paths markd cannot "
                                             "enumerate, over a collection with encrypted fields (markd's "
                                             "wording)")),
            ("", C("aggregation: a stage the encryption pipeline does not support"))],
    31026: C("command parsing: distinct"), 31027: C("command parsing: distinct"), 31058: C("command parsing: distinct"),
    31041: C("encrypted values: type not encryptable"),
    31051: C("schema parsing: deterministic field's bsonType"),
    31054: C("encrypted values: non-simple collation"),
    31068: C("schema parsing: keyword only allowed with a remote schema"),
    31077: C("schema parsing: encryptMetadata where not allowed"),
    31084: C("command parsing: collation"),
    31098: C("aggregation expressions: comparison"), 31099: C("aggregation expressions: comparison"),
    31100: C("aggregation expressions: comparison"),
    31102: C("command parsing: isRemoteSchema"), 31103: C("command parsing: explain"),
    31104: C("command parsing: isRemoteSchema"),
    31108: U("QE range: a long value for an int range index; no source shows this code"),
    31110: C("aggregation expressions: an encrypted field evaluated"),
    31117: C("aggregation expressions: an evaluated result compared with an encrypted field", LEAK_LET),
    31118: C("encrypted values: bsonType mismatch"),
    31121: C("aggregation expressions: $$CURRENT/$$ROOT"),
    31122: C("schema parsing: bsonType not encryptable"),
    31126: C("schema parsing: keyword unsupported for encryption"),
    31127: C("aggregation: output schema of $$CURRENT/$$ROOT"),
    31129: C("aggregation: output schema of a prefix of an encrypted field"),
    31131: C("aggregation expressions: a prefix of an encrypted field"),
    31133: C("schema lookup: a path whose encryption is known only at run time"),
    31146: C("update: pipeline-style update changing the schema (CSFLE)"),
    31150: C("update: pipeline update with upsert and encrypted _id"),
    31151: C("update: pipeline findAndModify with upsert and encrypted _id"),
    31152: C("aggregation expressions: $let rebinding CURRENT"),
    31153: C("aggregation: $unwind"),
    31158: C("aggregation expressions: comparison with a random or unindexed field"),
    31159: C("aggregation: $replaceRoot"),
    31169: C("schema parsing: deterministic field with a pointer keyId"),
    31260: P(EXPR + ": $function"),
    31261: M("$function with a field other than body, args and lang: mongod ignores it (its 31261 is 'The body "
             "function must be specified.'); markd refuses what it would not analyse"),
    31264: M("$function `args` not an array: mongod parses it as an expression and fails only when it runs "
             "(31266); markd refuses it before (mongod's 31264 is another check)"),
    40060: P(EXPR + ": $switch"), 40061: P(EXPR + ": $switch", NOT_COMPARED),
    40062: P(EXPR + ": $switch", NOT_COMPARED),
    40063: P(EXPR + ": $switch", NOT_COMPARED), 40064: P(EXPR + ": $switch", NOT_COMPARED),
    40065: P(EXPR + ": $switch", NOT_COMPARED), 40067: P(EXPR + ": $switch", NOT_COMPARED),
    40068: P(EXPR + ": $switch"),
    40075: P(EXPR + ": $reduce", NOT_COMPARED),
    40076: P(EXPR + ": $reduce"),
    40100: P("$graphLookup stage parser"), 40101: P("$graphLookup stage parser"),
    40102: P("$graphLookup stage parser"),
    40156: P("$count stage parser"), 40158: P("$count stage parser"), 40160: P("$count stage parser"),
    40185: P("$graphLookup stage parser", "mongod adds ', found <type>'"),
    **dict.fromkeys((40191, 40192, 40193, 40197, 40198, 40199, 40200, 40201, 40202), P("$bucket stage parser")),
    40194: P("$bucket stage parser", "mongod adds the two values"),
    40195: P("$bucket stage parser", "mongod adds ', but found: <value>'"),
    40196: P("$bucket stage parser", NOT_COMPARED),
    **dict.fromkeys((40239, 40240, 40241, 40243, 40244, 40245, 40246), P("$bucketAuto stage parser")),
    40242: P("$bucketAuto stage parser", "mongod adds ', but found <value>'"),
    40231: P("$replaceRoot stage parser"),
    40235: P("$group stage parser", NOT_COMPARED), 40236: P("$group stage parser"), 40238: P("$group stage parser"),
    40272: P("$addFields/$set stage parser"),
    40323: P("pipeline parser"), 40324: P("pipeline parser"),
    40413: [("encrypt", P(IDL + ": a field of `encrypt`/`encryptMetadata` given twice")),
            ("", P(IDL + ": a known field given twice", DUPLICATES))],
    40414: P(IDL + ": a required field missing"),
    40415: [("encrypt", C("schema parsing: `encrypt`/`encryptMetadata` IDL")),
            ("", P(IDL + ": an unknown field"))],
    40571: P("wire protocol: OP_MSG without $db"),
    51015: C("match expression: regex in $in on an encrypted field"),
    51065: U("a JSON-pointer keyId that cannot be parsed: no source seen"),
    51073: C("command parsing: no encryption rules"),
    51077: C("schema parsing: encrypt where not allowed"), 51078: C("schema parsing: encrypt with siblings"),
    51084: [("found 4", M("a UUID keyId of another length: markd's wording")),
            ("", C("schema parsing: keyId array element"))],
    51085: [("found array", M("an empty keyId array: markd's wording")),
            ("", C("schema parsing: keyId type"))],
    51088: C("schema parsing: keyId array element not BinData", "the 6.x/7.0 check; the newest source has none"),
    51090: C("command parsing: jsonSchema not an object"),
    51091: P(SCHEMA + ": `pattern`", "the reason is markd's regex engine's"),
    51092: [("$jsonSchema", M("a QE validator holding $jsonSchema: markd's wording (mongocryptd names the first "
                              "encrypted property's desugared leaf)")),
            ("", C("match expression: operator on an encrypted field"))],
    51093: C("encrypted values: pointer keyId without a document"),
    51094: C("match expression: operator unsupported with encryption"),
    51095: C("match expression: equality to null"),
    51096: C("schema parsing / aggregation: a field below an encrypted field"),
    51097: C("schema parsing: encrypt without keyId"), 51099: C("schema parsing: encrypt without algorithm"),
    51102: C("schema lookup: a path through an encrypted field"),
    51114: C("encrypted values: pointer keyId"), 51115: C("encrypted values: pointer keyId"),
    51118: C("match expression: range operator on an encrypted field"),
    51119: C("match expression: range operator against an object with encrypted fields"),
    51120: C("match expression: null in $in"),
    51129: C("writes: Timestamp(0, 0) at an encrypted field"), 51130: C("writes: encrypted _id missing"),
    51131: C("command parsing: distinct"),
    51141: C("schema parsing: patternProperties regex", "reached in mongocryptd only after mongod's parser accepted "
                                                        "the pattern; markd raises it when its regex engines refuse "
                                                        "one, with their reason"),
    51142: C("schema lookup: conflicting metadata"),
    51149: C("update: below a positional operator"),
    51150: C("update: an operator on an encrypted value", "markd also refuses the operators that compute from the "
                                                          "stored value ($inc, $mul, $bit, $pull, $pullAll, ...) at a "
                                                          "path that may hold encryption: their operand would reach "
                                                          "the server in clear - markd only"),
    51158: C("encrypted values: query on a random field"),
    51159: C("update: $set of a non-object at an encrypted prefix"),
    51160: C("update: $rename"), 51161: C("update: $rename"),
    51194: C("schema parsing: algorithm not allowed (_id)"),
    51201: C("aggregation: $sort"), 51204: C("aggregation: another collection"),
    51206: C("aggregation: $lookup"), 51207: C("aggregation: $lookup"), 51208: C("aggregation: $lookup"),
    51210: C("aggregation: $lookup"), 51211: C("aggregation: $lookup"), 51212: C("aggregation: $geoNear"),
    51221: C("aggregation: accumulators"), 51222: C("aggregation: $group key"), 51223: C("aggregation: $addToSet"),
    51230: C("aggregation: $graphLookup"), 51231: C("aggregation: $graphLookup"), 51232: C("aggregation: $graphLookup"),
    51233: C("aggregation: $graphLookup"), 51238: C("aggregation: $bucketAuto"),
    51272: P("projection parser (an empty $project), wrapped by the $project stage parser"),
    63165: C("encrypted values: equality query on a field without an equality index"),
    1257300: P(EXPR + ": $ifNull"),
    2942500: P(EXPR + ": $sortArray", "mongod adds ', found: <type>'"),
    2942501: P(EXPR + ": $sortArray", NOT_COMPARED),
    3041701: P(EXPR + ": $getField"), 3041702: P(EXPR + ": $getField", NOT_COMPARED),
    4161100: P(EXPR + ": $setField/$unsetField"),
    4161101: P(EXPR + ": $setField/$unsetField"),
    4161102: U("$setField/$unsetField argument; code not found in a source"),
    4544703: P("$accumulator parser"),
    4544715: C("aggregation: $accumulator initializer"),
    4890500: P(EXPR + ": command `let` referring to a field"),
    6316401: C("schema parsing (QE): an encrypted field as a prefix of another"),
    6316402: C(FIELDS), 6316403: C(FIELDS),
    6327500: C("command parsing: jsonSchema with encryptionInformation"),
    6327501: C("command parsing: encryptionInformation"), 6327502: C("command parsing: isRemoteSchema with QE"),
    6327503: C("command parsing: encryptionInformation namespaces", "markd also counts a namespace given twice as "
                                                                    "two (mongocryptd reads one silently)"),
    6327504: C("command parsing: a namespace schema not an object"),
    6327505: U("encryptionInformation.type; code not found in a source"),
    6329900: C("update: multi with QE"), 6329901: C("update: $rename (QE)"),
    6329902: C("update: pipeline-style update changing the schema (QE)"),
    6331101: C("aggregation: $graphLookup (QE)"), 6331102: C("aggregation expressions: encrypted field (QE)"),
    6331103: C("aggregation: $lookup (QE)"),
    6334101: C("aggregation expressions: two encrypted fields (QE)"),
    6334105: C("aggregation expressions: encrypted field vs a non-constant (QE)", LEAK_LET),
    6338405: C(FIELDS), 6338406: C(FIELDS),
    6341900: C("match expression: object with encrypted payloads (QE)"),
    6346502: M("QE: an index on an encrypted field (markd's own rule: the server would index ciphertext)"),
    6365900: C("command parsing: explain"), 6411900: C("command parsing: encryptionInformation namespace"),
    6412601: C(FIELDS, "the 8.2+ spelling; 7.0 and 8.0 print 'Bson type'"),
    6491100: C("command parsing: create/collMod validator"), 6491101: C("command parsing: create/collMod validator"),
    6491102: C("command parsing: createIndexes partialFilterExpression"),
    6720002: C("QE range: date vs non-date"), 6720005: C(FIELDS),
    6720400: C("match expression: range operator in $and without a range index (QE)"),
    6720810: C("QE range: $expr constant out of bounds"), 6720811: C("QE range: $expr constant out of bounds"),
    6721001: C("match expression: range operator without a range index (QE)"),
    6742000: C("QE range: value type"), 6742002: C("QE range: coercion"),
    6747900: C("QE range: out of index bounds"), 6747901: C("QE range: out of index bounds"),
    6747902: C("QE range: out of index bounds"),
    6775201: C(FIELDS), 6775205: C(FIELDS), 6775206: C(FIELDS), 6775207: C(FIELDS),
    6775214: C(FIELDS, "8.2+ range (1 to 8); 7.0 and 8.0 allow 1 to 4"),
    6837101: C("aggregation: $search returnStoredSource"),
    6890100: C("match expression: $elemMatch on an encrypted field"),
    6966805: C(FIELDS, "8.2+ wording (names the field)"), 6966806: C(FIELDS, "8.2+ wording (names the field)"),
    6966807: C(FIELDS, "8.2+ wording (names the field)"), 6966808: C(FIELDS, "8.2+ wording (names the field)"),
    6967100: C(FIELDS), 6967101: U("precision on a non-floating-point range field; code not found in a source"),
    6991000: C("QE range: NaN bound"), 6991001: C("QE range: NaN bound"),
    6994300: C("QE: nested arrays in $in"), 6994302: C("QE range: $in in $expr"), 6994304: C("QE range: $in in $expr"),
    7018200: C(FIELDS, "8.2+ wording"), 7018201: C(FIELDS, "8.2+ wording"),
    7020507: C("QE range: encrypted expression where not allowed"),
    7020508: C("QE range: encrypted $and where not allowed"),
    7036803: C("QE range: $in on a range prefix"), 7036804: C("QE range: $in in $expr on a range prefix"),
    7501300: C("command parsing: create of a view"),
    8574000: C(FIELDS), 8574101: U("negative contention; code not found in a source"), 8574104: C(FIELDS),
    9157100: C(FIELDS, "8.2+ only"), 9157101: C(FIELDS, "8.2+ only"),
    9686702: C("command parsing: csfleEncryptionSchemas"), 9686705: C("command parsing: aggregate without rules"),
    9686706: C("command parsing: aggregate isRemoteSchema"), 9686707: C("command parsing: aggregate rules"),
    9686708: C("command parsing: aggregate rules"), 9686709: C("command parsing: aggregate rules"),
    9686710: C("command parsing: aggregate rules"), 9686712: C("command parsing: aggregate namespace"),
    9686713: C("command parsing: csfleEncryptionSchemas outside aggregate"),
    9710000: C("aggregation: a namespace without a schema"),
    **dict.fromkeys((9783400, 9783402, 9783403, 9783404, 9783405, 9783406, 9783407, 9783408, 9783409, 9783410,
                     9783411, 9783412, 9783413), C(FIELDS, "8.2+ text search")),
    9783414: C(FIELDS, "8.2 prints the preview names ('suffixPreview and prefixPreview'); markd prints the stable "
                       "ones"),
    10112203: C("aggregation expressions: text search operator with CSFLE", "mongocryptd's text names "
                                                                            "$encStrStartsWith; markd names the "
                                                                            "operator used"),
    10112204: C("aggregation expressions: text search input"),
    10112205: U("text search operator's argument shape; code not found in a source"),
    10112206: U("text search operator's string argument; code not found in a source"),
    10113904: C("encrypted values: text search context on a non-text field", "code from mongocryptd's tests; "
                                                                             "wording markd's"),
    10209400: C("encrypted values: suffix search without a suffix index", "code from mongocryptd's tests; wording "
                                                                          "markd's"),
    10209500: C("encrypted values: substring search without a substring index", "code from mongocryptd's tests; "
                                                                                "wording markd's"),
    10248500: C("encrypted values: prefix search without a prefix index", "code from mongocryptd's tests; wording "
                                                                          "markd's"),
    **dict.fromkeys(range(10774900, 10774916), C(FIELDS, "8.2+ (one code per option and index kind)")),
}

# Sites whose code the scan cannot reduce to literals, and why that is fine. Key: (site, code expression).
ALLOWED_UNRESOLVED: dict[tuple[str, str], str] = {
    ("analysis/errors:error", "code"): "the table lookup itself: its codes are the tables' rows, listed above",
    ("crypt_shared/embedded:analyze", "int(error['code'])"): (
        "the in-process library re-raises the daemon's own error reply for a command: a row listed above"),
}


def provenance_of(row: Row) -> Provenance | None:
    entry = PROVENANCE.get(row.code)
    if isinstance(entry, Provenance) or entry is None:
        return entry
    text = shape(row.template)
    for needle, provenance in entry:
        if needle in text:
            return provenance
    return None


def table_notes() -> dict[str, str]:
    """The same-line comments of the imported tables' entries ("unconfirmed", "markd's"): shown with the row."""
    notes: dict[str, str] = {}
    for dotted in IMPORTED_TABLES:
        module = MODULES[dotted]
        comments: dict[int, str] = {}
        source = (ROOT / module.path).read_text(encoding="utf-8")
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string.lstrip("# ").strip()
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        lines = range(key.lineno, (value.end_lineno or key.lineno) + 1)
                        found = [comments[line] for line in lines if line in comments
                                 and not _comment_only_line(source, line)]
                        if found:
                            notes[f"{dotted.removeprefix('markd.')}|{key.value}"] = "; ".join(found)
    return notes


def _comment_only_line(source: str, line: int) -> bool:
    return source.splitlines()[line - 1].lstrip().startswith("#")


# -- the document ------------------------------------------------------------------------------------------------------

HEADER = """# Compatibility: every error markd can return

Generated by `scripts/compatibility.py` from markd's code (its error tables and every literal raise); do not
edit by hand. `tests/test_compatibility_doc.py` fails when this file and the code disagree, or when a code has
no provenance. Regenerate with `python scripts/compatibility.py`.

## How to read the tables

- **code / codeName**: what the reply carries (`{ok: 0, errmsg, code, codeName}`); a code without a name in
  mongod's error_codes.yml is `Location<code>`, as mongod names it.
- **message**: markd's template; `{name}` is filled in at run time (a path, an operator, a type name, a
  count). A template that is one hole ("{detail}") in its table is listed once per text its callers pass.
  † the message quotes a value from the command (a predicate, an element) as mongod prints it; under
  `--redactErrors` each quoted value is printed as its type name instead (`{ ssn: { $regex: string } }`).
  ‡ the message quotes a value and has no redacted form yet: `--redactErrors` does not change it.
- **in markd**: the functions that raise it (`module:function`), and the table entry (`table:key`).
- **mongocryptd**: where mongocryptd raises the code for this condition (〃: as the row above).
  *mongocryptd* — its own query analysis (match expression, aggregation, update, schema parsing,
  encryptedFields validation, command parsing); *mongod parser* — the mongod command, IDL, expression or
  pipeline parser mongocryptd runs before its analysis, so mongocryptd answers exactly as mongod does;
  *markd only* — markd refuses where mongocryptd does not (or answers for itself), with the reason;
  *unconfirmed* — no source seen shows this code for this condition. The column names the component and
  the construct; it does not certify the text word for word: known differences are noted, and
  "text not compared" says no mongod source was compared.

## Which mongocryptd line markd follows

Where the server lines disagree, markd answers as the newest released line, 8.2 (it reports version
8.2.0): lower-case type names in messages, the `encryptedFields` checks as 8.2 validates them (one code per
option and index kind, 10774900-10774915; `sparsity` 1 to 8; the text-search parameter checks
9783400-9783414; precision digits and domain 6966805-6966808, 9157100/9157101 naming the field), 31041 (not
4.2's 31009) for an array at a deterministic field. It also accepts what older lines accept and drivers still
send: `rangePreview` (7.0) is read as `range`; `prefixPreview`, `suffixPreview` and `substringPreview` (8.2)
as text search, as are 9.0's stable `prefix`, `suffix` and `substring`. One check is older lines' only: 51088
(a keyId array element that is not BinData); the newest source has none, and what it does with such an element
is unconfirmed.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code_span(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") or text.startswith(" ") or text.endswith(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table_key(key: str) -> str:
    table, _, entry = key.partition("|")
    short = {"analysis.errors": "errors", "analysis.csfle.errors": "csfle/errors",
             "analysis.qe.errors": "qe/errors"}.get(table, table.replace("analysis.", "analysis/"))
    return f"{short}:{entry}"


def _sites(row: Row) -> str:
    sites = [s.removeprefix("analysis/") for s in row.sites]
    shown = ", ".join(_code_span(s) for s in sites[:3])
    if len(sites) > 3:
        shown += f" +{len(sites) - 3}"
    keys = ", ".join(_code_span(_table_key(k)) for k in row.keys[:2])
    if len(row.keys) > 2:
        keys += f" +{len(row.keys) - 2}"
    return shown + (f"; {keys}" if keys else "")


def _provenance_cell(provenance: Provenance, notes: list[str]) -> str:
    text = f"*{provenance.kind}*: {provenance.where}"
    extra = [n for n in (provenance.note, *notes) if n]
    if extra:
        text += " (" + "; ".join(extra) + ")"
    return text


def render_document(scan: Scan) -> str:
    notes = table_notes()
    lines = [HEADER]
    kinds: dict[str, int] = {}
    for area_index, (area, _) in enumerate(AREAS):
        rows = sorted((row for row in scan.rows.values() if row.area == area_index),
                      key=lambda row: (row.code, render(row.template)))
        if not rows:
            continue
        lines += [f"## {area}", "", "| code | codeName | message | in markd | mongocryptd |", "|---|---|---|---|---|"]
        previous: str | None = None
        for row in rows:
            provenance = provenance_of(row)
            assert provenance is not None
            kinds[provenance.kind] = kinds.get(provenance.kind, 0) + 1
            mark = {"redacted": " †", "bare": " ‡"}.get(row.quoting, "")
            row_notes = [f"table note: {notes[k.removeprefix('markd.')]}" for k in row.keys
                         if k.removeprefix("markd.") in notes]
            cell = _provenance_cell(provenance, row_notes)
            shown = "〃" if previous == cell else cell  # the same as the row above
            previous = cell
            lines.append(f"| {row.code} | {row.code_name} | {_cell(_code_span(render(row.template)))}{mark} | "
                         f"{_cell(_sites(row))} | {_cell(shown)} |")
        lines.append("")
    codes = {row.code for row in scan.rows.values()}
    lines += ["## Summary", "",
              f"{len(codes)} codes in {len(scan.rows)} rows: "
              + ", ".join(f"{kinds.get(kind, 0)} {kind}" for kind in (MONGOCRYPTD, PARSER, MARKD, UNCONFIRMED))
              + ".", ""]
    if scan.unused_keys:
        lines += ["## Table entries nothing raises", "",
                  "Entries of the error tables no code path uses (markd cannot return them as they stand):", "",
                  "| table:key | code | message |", "|---|---|---|"]
        for table, key, code, text in sorted(scan.unused_keys, key=lambda u: (u[2], u[0], u[1])):
            lines.append(f"| {_code_span(_table_key(table + '|' + key))} | {code} | "
                         f"{_cell(_code_span(render(from_format(text))))} |")
        lines.append("")
    return "\n".join(lines)


def problems(scan: Scan) -> list[str]:
    """What makes the document wrong whatever its text: unresolved sites, unknown keys, missing provenance."""
    found: list[str] = []
    for site, expression, why in scan.unresolved:
        if (site, expression) not in ALLOWED_UNRESOLVED:
            found.append(f"unresolved code at {site}: {expression} ({why}); resolve it or add it to "
                         "ALLOWED_UNRESOLVED with the reason")
    for site, key in scan.unknown_keys:
        found.append(f"{site} raises the key {key!r}, which no error table has")
    for row in scan.rows.values():
        if provenance_of(row) is None:
            found.append(f"no provenance for {row.code} {render(row.template)!r}: add it to PROVENANCE")
    stale = set(PROVENANCE) - {row.code for row in scan.rows.values()}
    for code in sorted(stale):
        found.append(f"PROVENANCE lists {code}, which markd no longer returns: remove it")
    return found


def collect() -> Scan:
    sys.path.insert(0, str(ROOT))
    MODULES.clear()
    MODULES.update(load_modules())
    LITERAL_TABLES.clear()
    load_embedded_scripts()
    scan = Scan()
    scan_tables(scan)
    scan_error_calls(scan)
    scan_library_statuses(scan)
    return scan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with docs/compatibility.md instead of writing")
    arguments = parser.parse_args(argv)
    scan = collect()
    found = problems(scan)
    for problem in found:
        print(f"compatibility.py: {problem}", file=sys.stderr)
    if found:
        return 1
    document = render_document(scan)
    if arguments.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != document:
            diff = difflib.unified_diff(current.splitlines(), document.splitlines(), str(OUTPUT), "generated",
                                        lineterm="", n=1)
            print("\n".join(itertools.islice(diff, 60)), file=sys.stderr)
            print("compatibility.py: docs/compatibility.md is out of date: run python scripts/compatibility.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(document, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len({r.code for r in scan.rows.values()})} codes, "
          f"{len(scan.rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
