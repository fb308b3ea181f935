"""The adversarial grammar: hypothesis draws whole marking commands from the tables in `tables.py`.

A secret (see `secrets.py`) is written only where a value is compared with, assigned to or derived from
an encrypted field: every such write is a `Placement` with the tags of the productions that led to it
(`ref:getField-str`, `sec:let-cmd`, `via:acc:$topN`, `stage:$search`, ...), so a finding can be traced to
the constructs that carried the secret.  Everything else gets plain values.

The generator keeps its own model of where encrypted values are (`Env`: a path of the current document
-> the encrypted field it holds), carried through every stage, variable, rename and `$replaceRoot`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bson import Code, Int64, Regex
from hypothesis import strategies as st

from tests.adversarial import rawbson, schemas, secrets, tables
from tests.adversarial.rawbson import Doc
from tests.adversarial.schemas import COLL, DB, OTHER, PLAIN, Field, Scheme
from tests.adversarial.tables import P, V, X

T = TypeVar("T")

COMMANDS = ("find", "aggregate", "count", "distinct", "delete", "update", "findAndModify", "findandmodify",
            "insert", "create", "createIndexes", "collMod", "explain", "bulkWrite")
COMMAND_WEIGHTS = {"aggregate": 6, "find": 2, "update": 2, "explain": 2}


@dataclass(frozen=True)
class Placement:
    serial: int
    field: str  # the encrypted path the secret is tied to
    tags: frozenset[str]


@dataclass(frozen=True)
class Ref:
    """What a path of the current document (or a variable) holds: an encrypted field, and how it got there."""

    field: Field
    tags: frozenset[str] = frozenset()


Env = dict[str, Ref]


@dataclass
class Case:
    scheme: str
    command_name: str
    command: Doc
    placements: dict[int, Placement]
    duplicates: tuple[str, ...] = ()

    @property
    def raw(self) -> bytes:
        return rawbson.encode(self.command)

    def describe(self) -> str:
        return f"{self.scheme} {self.command_name}"


def subst(template: Any, x: Callable[[], Any] | None = None, v: Callable[[], Any] | None = None,
          p: str | None = None) -> Any:
    """The template with each X, V and P marker replaced (each occurrence asks the callable anew)."""
    if template is X:
        return x() if x else 1
    if template is V:
        return v() if v else "plain"
    if template is P:
        return p if p is not None else "name"
    if isinstance(template, dict):
        return {(p or "name") if key == tables.PATH_KEY else key: subst(value, x, v, p)
                for key, value in template.items()}
    if isinstance(template, list):
        return [subst(value, x, v, p) for value in template]
    return template


def has_marker(template: Any, marker: Any) -> bool:
    if template is marker:
        return True
    if isinstance(template, dict):
        return any(has_marker(value, marker) for value in template.values())
    if isinstance(template, list):
        return any(has_marker(value, marker) for value in template)
    return False


def env_for(fields: Sequence[Field]) -> Env:
    return {f.path: Ref(f) for f in fields}


class Gen:
    """One command being drawn: hypothesis' draw, the scheme, the placements so far, the scope's tags."""

    def __init__(self, draw: st.DrawFn, scheme: Scheme) -> None:
        self.draw = draw
        self.scheme = scheme
        self.placements: dict[int, Placement] = {}
        self.scope: list[str] = []
        self.vars: dict[str, Ref] = {}  # bound variables that hold an encrypted value
        self.command_lets: dict[str, Any] | None = None  # None: this command takes no `let`
        self.constants: dict[str, Any] | None = None  # an update statement's `c`
        self.namespaces: list[str] = [COLL]
        self.duplicates: list[str] = []
        self.names = 0
        self.prefer: set[str] = set()  # paths the last stage created: the next one is drawn to them

    # -- primitives --------------------------------------------------------------------------------

    def pick(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def count(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def fresh(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    @contextlib.contextmanager
    def within(self, *tags: str) -> Iterator[None]:
        self.scope.extend(tags)
        try:
            yield
        finally:
            del self.scope[len(self.scope) - len(tags):]

    def use(self, namespace: str) -> None:
        if namespace not in self.namespaces:
            self.namespaces.append(namespace)

    def secret(self, ref: Ref, *tags: str, bson_type: str | None = None) -> Any:
        """A new secret tied to `ref`'s field, of the field's type (now and then of another type)."""
        serial = len(self.placements) + 1
        kind = bson_type or ref.field.secret_type
        if bson_type is None and self.chance(4):
            kind = self.pick(["string", "int", "long", "date", "double", "decimal"])
        self.placements[serial] = Placement(serial, ref.field.path,
                                            frozenset(self.scope) | ref.tags | frozenset(tags))
        return secrets.of_type(kind, serial)

    # -- values that never hold a secret -------------------------------------------------------------

    def plain(self) -> Any:
        return self.pick(tables.PLAIN_VALUES)

    def plain_path(self) -> str:
        return self.pick(["name", "age", "tags", "loc", "meta.kind", "keyName", "plainNested.x"])

    def filler_expr(self, depth: int = 0) -> Any:
        """Any expression operator of the table, over plain fields and constants."""
        if depth > 1 or self.chance(30):
            return self.pick(["$name", "$age", "$$NOW", 1, "plain", True, "$tags", {"$literal": "$x"},
                              *tables.SYSTEM_VARIABLES[:2]])
        operator = self.pick(sorted(tables.EXPRESSIONS))
        return {operator: subst(tables.EXPRESSIONS[operator], x=lambda: self.filler_expr(depth + 1))}

    def filler_match(self, depth: int = 0) -> dict[str, Any]:
        """A predicate on plain fields (or on encrypted ones, without values), any query operator."""
        choice = self.count(0, 14)
        if choice == 0 and depth < 2:
            return {self.pick(["$and", "$or", "$nor"]): [self.filler_match(depth + 1) for _ in range(self.count(1, 2))]}
        if choice == 1:
            return {"$expr": self.filler_expr()}
        if choice == 2 and self.chance(50):
            return self.pick([{"$where": Code("this.name == 'x'")}, {"$comment": "plain"}, {"$sampleRate": 0.5},
                              {"$text": {"$search": "plain words"}}, {"$alwaysTrue": 1},
                              {"$jsonSchema": {"required": ["name"]}}])
        if choice == 3:
            path = self.pick([f.path for f in self.scheme.fields])
            return {path: self.pick([{"$exists": True}, {"$exists": False}, {"$type": "binData"}])}
        if choice == 4:
            return {"loc": self.pick([{"$geoWithin": shape} for shape in tables.GEO_SHAPES]
                                     + [{name: tables.QUERY_OPERATORS[name]}
                                        for name in ("$near", "$nearSphere", "$geoIntersects")])}
        operator = self.pick(sorted(tables.QUERY_OPERATORS))
        value = subst(tables.QUERY_OPERATORS[operator], v=lambda: 3 if operator in tables.NUMERIC_VALUE else "p")
        return {self.plain_path(): {operator: value}}

    # -- references to encrypted values (expression context) ------------------------------------------

    def ref(self, env: Env, depth: int = 0, *, allow_vars: bool = True) -> tuple[Any, Ref] | None:
        """An expression whose value is (or derives from) an encrypted field, or None if none is in scope."""
        choices = list(env.items())
        if allow_vars:
            choices += [(name, ref) for name, ref in self.vars.items()]
        if not choices:
            return None
        preferred = [(p, r) for p, r in choices if p in self.prefer]
        path, base = self.pick(preferred if preferred and self.chance(70) else choices)
        if path.startswith("$$"):  # a bound variable
            return path, Ref(base.field, base.tags | {"ref:var"})
        parent, _, leaf = path.rpartition(".")
        simple = ["path", "path", "path", "root", "current", "getField", "getField-input", "getField-computed",
                  "getField-literal", "let-var", "let-root", "mergeObjects", "setField", "unsetField"]
        nested = ["arrayElemAt", "first", "ifNull", "cond", "switch", "map-as", "map-this", "filter-as",
                  "reduce-this", "reduce-value", "sortArray", "function", "derived", "minmax"]
        if parent:
            simple.append("let-current")
        production = self.pick(simple + (nested if depth < 2 else []))
        tags = set(base.tags)

        def inner() -> Any:
            got = self.ref({path: base}, depth + 1, allow_vars=False)
            assert got is not None
            tags.update(got[1].tags)
            return got[0]

        input_doc = "$" + parent if parent else self.pick(["$$ROOT", "$$CURRENT"])
        expr: Any
        if production == "path":
            expr = "$" + path
        elif production == "root":
            expr = "$$ROOT." + path
        elif production == "current":
            expr = "$$CURRENT." + path
        elif production == "getField":
            expr = {"$getField": leaf} if not parent else {"$getField": {"field": leaf, "input": input_doc}}
            production = "getField-str" if not parent else "getField-doc"
        elif production == "getField-input":
            expr = {"$getField": {"field": leaf, "input": input_doc if parent else "$$ROOT"}}
            if parent and "." not in parent:
                expr = {"$getField": {"field": leaf, "input": {"$getField": parent}}}
        elif production == "getField-computed":
            cut = max(1, len(leaf) // 2)
            expr = {"$getField": {"field": {"$concat": [leaf[:cut], leaf[cut:]]}, "input": input_doc}}
        elif production == "getField-literal":
            expr = {"$getField": {"field": {"$literal": leaf}, "input": input_doc}}
        elif production == "let-var":
            name = self.fresh("x")
            expr = {"$let": {"vars": {name: "$" + path}, "in": "$$" + name}}
        elif production == "let-root":
            name = self.fresh("r")
            expr = {"$let": {"vars": {name: "$$ROOT"}, "in": f"$${name}.{path}"}}
        elif production == "let-current":
            expr = {"$let": {"vars": {"CURRENT": "$" + parent}, "in": "$" + leaf}}
            production = "let-current-rebind"
        elif production == "mergeObjects":
            expr = {"$getField": {"field": leaf, "input": {"$mergeObjects": [input_doc, {"extra": 1}]}}}
            tags.add("ref:getField-doc")
        elif production == "setField":
            expr = {"$getField": {"field": leaf, "input": {"$setField": {"field": "extra", "input": input_doc,
                                                                        "value": 1}}}}
            tags.add("ref:getField-doc")
        elif production == "unsetField":
            expr = {"$getField": {"field": leaf, "input": {"$unsetField": {"field": "extra", "input": input_doc}}}}
            tags.add("ref:getField-doc")
        elif production == "arrayElemAt":
            expr = {"$arrayElemAt": [[inner()], 0]}
        elif production == "first":
            expr = {"$first": [inner()]}
        elif production == "ifNull":
            expr = {"$ifNull": [inner(), None]}
        elif production == "cond":
            value = inner()
            expr = {"$cond": [True, value, value]}
        elif production == "switch":
            value = inner()
            expr = {"$switch": {"branches": [{"case": True, "then": value}], "default": value}}
        elif production == "map-as":
            expr = {"$arrayElemAt": [{"$map": {"input": [inner()], "as": "e", "in": "$$e"}}, 0]}
        elif production == "map-this":
            expr = {"$arrayElemAt": [{"$map": {"input": [inner()], "in": "$$this"}}, 0]}
        elif production == "filter-as":
            expr = {"$arrayElemAt": [{"$filter": {"input": [inner()], "as": "e", "cond": True}}, 0]}
        elif production == "reduce-this":
            expr = {"$reduce": {"input": [inner()], "initialValue": None, "in": "$$this"}}
        elif production == "reduce-value":
            expr = {"$reduce": {"input": [1], "initialValue": inner(), "in": "$$value"}}
        elif production == "sortArray":
            expr = {"$first": {"$sortArray": {"input": [inner()], "sortBy": 1}}}
        elif production == "function":
            expr = {"$function": {"body": Code("function(a) { return a; }"), "args": [inner()], "lang": "js"}}
        elif production == "minmax":
            expr = {self.pick(["$max", "$min"]): [inner()]}
        else:  # derived: any operator of the table that takes an expression
            operator = self.pick(sorted(op for op, shape in tables.EXPRESSIONS.items() if has_marker(shape, X)))
            value = inner()
            expr = {operator: subst(tables.EXPRESSIONS[operator], x=lambda: value)}
            production = f"derived:{operator}"
        tags.add(f"ref:{production}")
        return expr, Ref(base.field, frozenset(tags))

    def secret_expr(self, ref: Ref, *tags: str) -> Any:
        """A secret in expression position: as is, $literal, a command `let` variable or an update constant."""
        forms = ["literal", "literal", "$literal"]
        if self.command_lets is not None:
            forms.append("let-cmd")
        if self.constants is not None:
            forms.append("c")
        form = self.pick(forms)
        if form == "let-cmd" and self.command_lets is not None:
            name = self.fresh("v")
            self.command_lets[name] = self.secret(ref, *tags, "sec:let-cmd")
            return "$$" + name
        if form == "c" and self.constants is not None:
            name = self.fresh("c")
            self.constants[name] = self.secret(ref, *tags, "sec:c")
            return "$$" + name
        value = self.secret(ref, *tags, f"sec:{form}")
        return {"$literal": value} if form == "$literal" else value

    def comparison(self, left: Any, ref: Ref, *tags: str) -> Any:
        """`left` (an encrypted value) compared with a secret, in any comparison form of the table."""
        if ref.field.kind in ("text", "substring") and self.chance(60):
            operator = self.pick(["$encStrStartsWith", "$encStrEndsWith"] if ref.field.kind == "text"
                                 else ["$encStrContains", "$encStrNormalizedEq"])
            secret = self.secret_expr(ref, *tags, f"cmp:{operator}")
            return {operator: {"input": left, tables.TEXT_SEARCH[operator]: secret}}
        form = self.pick(sorted(tables.COMPARISONS))
        operator = form.split("-")[0]
        return {operator: subst(tables.COMPARISONS[form], x=lambda: left,
                                v=lambda: self.secret_expr(ref, *tags, f"cmp:{form}"))}

    def tied_expr(self, env: Env, depth: int = 0) -> Any | None:
        """A boolean expression that compares an encrypted value with a secret, maybe inside a binding."""
        got = self.ref(env, depth)
        if got is None:
            return None
        left, ref = got
        path = next((p for p, r in env.items() if r.field == ref.field), None)
        # The binding wrappers below that re-reach the field by its path drop `left` and its tags.
        base = env[path] if path else ref
        wrapper = self.pick(["none", "none", "none", "let-ref", "let-root", "let-current", "let-secret", "map",
                             "map-this", "filter", "reduce", "function", "function-let", "not", "and"])
        if wrapper == "let-ref":
            name = self.fresh("x")
            inner = self.comparison("$$" + name, Ref(ref.field, ref.tags | {"ref:let-var"}))
            return {"$let": {"vars": {name: left}, "in": inner}}
        if wrapper == "let-root" and path:
            name = self.fresh("r")
            inner = self.comparison(f"$${name}.{path}", Ref(base.field, base.tags | {"ref:let-root"}))
            return {"$let": {"vars": {name: "$$ROOT"}, "in": inner}}
        if wrapper == "let-current" and path:
            parent, _, leaf = path.rpartition(".")
            rebound = Ref(base.field, base.tags | {"ref:let-current-rebind"})
            if parent:
                return {"$let": {"vars": {"CURRENT": "$" + parent}, "in": self.comparison("$" + leaf, rebound)}}
            return {"$let": {"vars": {"CURRENT": "$$ROOT"}, "in": self.comparison("$" + path, rebound)}}
        if wrapper == "let-secret":
            name = self.fresh("s")
            value = self.secret(ref, "sec:let-expr")
            return {"$let": {"vars": {name: value}, "in": {"$eq": [left, "$$" + name]}}}
        if wrapper == "map":
            inner = self.comparison("$$e", Ref(ref.field, ref.tags | {"ref:map-as"}))
            return {"$anyElementTrue": [{"$map": {"input": [left], "as": "e", "in": inner}}]}
        if wrapper == "map-this":
            inner = self.comparison("$$this", Ref(ref.field, ref.tags | {"ref:map-this"}))
            return {"$anyElementTrue": [{"$map": {"input": [left], "in": inner}}]}
        if wrapper == "filter":
            inner = self.comparison("$$e", Ref(ref.field, ref.tags | {"ref:filter-as"}))
            return {"$gt": [{"$size": {"$filter": {"input": [left], "as": "e", "cond": inner}}}, 0]}
        if wrapper == "reduce":
            inner = self.comparison("$$this", Ref(ref.field, ref.tags | {"ref:reduce-this"}))
            return {"$reduce": {"input": [left], "initialValue": False, "in": {"$or": ["$$value", inner]}}}
        if wrapper == "function":
            value = self.secret_expr(ref, "ref:function")
            return {"$function": {"body": Code("function(a, b) { return a == b; }"), "args": [left, value],
                                  "lang": "js"}}
        if wrapper == "function-let":
            name = self.fresh("x")
            value = self.secret_expr(Ref(ref.field, ref.tags | {"ref:let-var"}), "ref:function-let")
            return {"$let": {"vars": {name: left}, "in": {"$function": {
                "body": Code("function(a, b) { return a == b; }"), "args": ["$$" + name, value], "lang": "js"}}}}
        if wrapper == "not":
            return {"$not": [self.comparison(left, ref)]}
        if wrapper == "and":
            return {self.pick(["$and", "$or"]): [self.comparison(left, ref), self.filler_expr(1)]}
        return self.comparison(left, ref)

    # -- the match language ------------------------------------------------------------------------------

    def tied_match(self, env: Env, depth: int = 0) -> dict[str, Any] | None:
        """A query predicate comparing an encrypted path (or an $expr over one) with a secret."""
        if not env:
            return None
        production = self.pick(["field", "field", "field", "field", "expr", "expr", "logical", "jsonSchema"])
        if production == "expr":
            with self.within("ctx:$expr"):
                expr = self.tied_expr(env)
            return {"$expr": expr} if expr is not None else None
        if production == "logical" and depth < 2:
            operator = self.pick(["$and", "$or", "$nor"])
            branches = [self.tied_match(env, depth + 1) or self.filler_match(depth + 1), self.filler_match(depth + 1)]
            if self.chance(50):
                branches.reverse()
            return {operator: branches}
        items = sorted(env.items())
        preferred = [(p, r) for p, r in items if p in self.prefer]
        path, ref = self.pick(preferred if preferred and self.chance(70) else items)
        parent, _, leaf = path.rpartition(".")
        if production == "jsonSchema":
            keyword = self.pick(["enum", "const"])
            value = self.secret(ref, f"match:$jsonSchema-{keyword}")
            leaf_rule = {keyword: [value] if keyword == "enum" else value}
            rule: dict[str, Any] = {"properties": {leaf: leaf_rule}}
            for step in reversed(parent.split(".") if parent else []):
                rule = {"properties": {step: rule}}
            return {"$jsonSchema": rule}
        form = self.pick(["implicit", "implicit", "operator", "operator", "operator", "not", "range2", "object",
                          "regex"])
        if form == "implicit":
            return {path: self.secret(ref, "match:implicit")}
        if form == "not":
            operator = self.pick(["$eq", "$in", "$gt", "$regex"])
            template = tables.QUERY_OPERATORS[operator]
            return {path: {"$not": {operator: subst(template, v=lambda: self.secret(ref, f"match:$not-{operator}"))}}}
        if form == "range2":
            low, high = self.secret(ref, "match:range2"), self.secret(ref, "match:range2")
            if self.chance(50):  # an empty intersection: mongod may decide it without the data
                low, high = high, low
            return {path: {self.pick(["$gt", "$gte"]): low, self.pick(["$lt", "$lte"]): high}}
        if form == "object" and parent:
            shape = self.pick(["embedded", "eq", "in", "elemMatch"])
            inner = {leaf: self.secret(ref, f"match:object-{shape}")}
            if shape == "embedded":
                return {parent: inner}
            if shape == "eq":
                return {parent: {"$eq": inner}}
            if shape == "in":
                return {parent: {"$in": [inner, {"other": 1}]}}
            return {parent: {"$elemMatch": inner}}
        if form == "regex":
            value = self.secret(ref, "match:regex", bson_type="string")
            return {path: Regex("^" + value)} if self.chance(50) else {path: {"$regex": "^" + value, "$options": "i"}}
        operator = self.pick(sorted(op for op, t in tables.QUERY_OPERATORS.items() if has_marker(t, V)))
        bson_type = "int" if operator in tables.NUMERIC_VALUE else None
        value = subst(tables.QUERY_OPERATORS[operator],
                      v=lambda: self.secret(ref, f"match:{operator}", bson_type=bson_type))
        return {path: {operator: value}}

    def match(self, env: Env, *, tied: int = 70) -> dict[str, Any]:
        """A filter: usually tied to an encrypted field, with plain predicates around it."""
        predicates: list[dict[str, Any]] = []
        if self.chance(tied):
            got = self.tied_match(env)
            if got:
                predicates.append(got)
        for _ in range(self.pick([0, 0, 0, 1, 1, 2])):
            predicates.append(self.filler_match())
        merged: dict[str, Any] = {}
        for predicate in predicates:
            for key, value in predicate.items():
                if key in merged:
                    merged.setdefault("$and", []).append({key: value})
                else:
                    merged[key] = value
        return merged

    # -- documents, projections, sorts -----------------------------------------------------------------

    def document(self, env: Env, *tags: str) -> dict[str, Any]:
        """A document for insert or replacement: secrets at encrypted paths, plain values elsewhere."""
        document: dict[str, Any] = {"_id": self.count(1, 9)}
        for path, ref in sorted(env.items()):
            if "$" in path or not self.chance(60):
                continue
            value = self.secret(ref, *tags, f"doc:{path}")
            target = document
            *parents, leaf = path.split(".")
            for step in parents:
                target = target.setdefault(step, {})
            target[leaf] = value
        if "alt" in document:
            document["keyName"] = "altname"
        for _ in range(self.count(0, 2)):
            document[self.pick(["name", "age", "tags", "loc"])] = self.plain()
        return document

    def projection(self, env: Env) -> dict[str, Any]:
        projection: dict[str, Any] = {}
        for _ in range(self.count(1, 3)):
            choice = self.count(0, 7)
            if choice <= 1 and env:
                path, ref = self.pick(sorted(env.items()))
                if choice == 0:
                    projection[self.pick(["computed", "flag"])] = self.tied_expr(env) or 1
                else:
                    parent, _, leaf = path.rpartition(".")
                    if parent:
                        projection[parent] = {"$elemMatch": {leaf: self.secret(ref, "proj:$elemMatch")}}
                    else:
                        projection[path] = {"$elemMatch": {"$eq": self.secret(ref, "proj:$elemMatch")}}
            elif choice == 2 and env:
                got = self.ref(env)
                if got:
                    projection["alias"] = got[0]
            elif choice == 3:
                projection[self.pick(["tags", "ssn"])] = {"$slice": self.pick([1, [0, 2]])}
            elif choice == 4:
                projection["score"] = {"$meta": "textScore"}
            else:
                projection[self.pick(["name", "ssn", "nested", "nested.pin", "age"])] = self.pick([1, 0, True])
        return projection

    def sort(self) -> dict[str, Any]:
        return {self.pick(["name", "ssn", "nested.pin", "score", "age"]): self.pick([1, -1])}

    def hint(self) -> Any:
        return self.pick([{"ssn": 1}, {"name": 1}, "ssn_1", {"$natural": 1}, {"nested.pin": -1}])

    def bounds(self, env: Env, which: str) -> dict[str, Any]:
        """find min/max: an index key pattern's values, tied when the key is encrypted."""
        paths = [p for p in env if "$" not in p]
        if paths and self.chance(80):
            path = self.pick(sorted(paths))
            return {path: self.secret(env[path], f"field:{which}")}
        return {"name": "plain"}

    def collation(self) -> dict[str, Any]:
        return dict(self.pick(tables.COLLATIONS))

    def option(self, role: str) -> Any:
        """A plain value for an option that never holds a user value."""
        if role == "bool":
            return self.pick([True, False])
        if role in ("int", "deleteLimit"):
            return self.pick([0, 1, 5] if role == "int" else [0, 1])
        if role == "long":
            return Int64(self.count(0, 100))
        if role == "string":
            return "plain"
        if role == "collation":
            return self.collation()
        if role == "readConcern":
            return {"level": self.pick(["local", "majority", "available"])}
        if role == "writeConcern":
            return dict(self.pick(tables.WRITE_CONCERNS))
        if role == "comment":
            return self.pick(["plain comment", {"note": "plain"}, 7])
        if role == "lsid":
            return {"id": schemas.KEYS["meta"]}
        if role == "readPreference":
            return {"mode": self.pick(["primary", "secondaryPreferred"])}
        if role == "apiVersion":
            return "1"
        if role == "cursor":
            return self.pick([{}, {"batchSize": 10}])
        if role == "validationLevel":
            return self.pick(["strict", "moderate", "off"])
        if role == "validationAction":
            return self.pick(["error", "warn"])
        if role == "timeseries":
            return {"timeField": "ts", "metaField": "name", "granularity": "hours"}
        if role == "verbosity":
            return self.pick(["queryPlanner", "executionStats", "allPlansExecution"])
        if role == "key":
            return self.pick(["name", "ssn", "ssn", "nested.pin", "acct", "ssn", "notes"])
        if role == "hint":
            return self.hint()
        if role == "sort":
            return self.sort()
        return self.pick([{}, {"plain": 1}])

    def generic_fields(self) -> list[tuple[str, Any]]:
        return [(name, self.option(role)) for name, role in tables.GENERIC_FIELDS.items() if self.chance(6)]

    def table_fillers(self, command: str, handled: set[str]) -> list[tuple[str, Any]]:
        """Some of the command's other fields from the table, with plain values."""
        return [(name, self.option(role)) for name, role in tables.COMMAND_FIELDS[command].items()
                if name not in handled and role not in ("filter", "pipeline", "let", "updates", "deletes",
                                                        "documents", "update", "explain", "ops", "nsInfo",
                                                        "indexes", "validator", "projection", "fields",
                                                        "bounds", "arrayFilters", "encryptedFields")
                and self.chance(10)]

    # -- pipelines --------------------------------------------------------------------------------------

    def pipeline(self, env: Env, *, depth: int = 0, top: bool = True, length: tuple[int, int] = (1, 4),
                 allow_last: bool = True) -> tuple[list[Any], Env]:
        stages: list[Any] = []
        size = self.count(*length)
        for index in range(size):
            candidates = [name for name, (position, _) in tables.STAGES.items()
                          if (position != "first" or index == 0) and (position != "last" or (index == size - 1
                                                                                          and allow_last))]
            if index == 0 and depth == 0 and self.chance(25):  # the stages that must come first
                candidates = [name for name in candidates if tables.STAGES[name][0] == "first"]
            elif index == size - 1 and allow_last and depth == 0 and self.chance(15):
                candidates = [name for name in candidates if tables.STAGES[name][0] == "last"]
            if depth >= 1:
                candidates = [c for c in candidates if c not in ("$facet", "$lookup", "$unionWith", "$graphLookup",
                                                                 "$rankFusion", "$scoreFusion")]
            # Most of the draws go to the stages that carry values through.
            weighted = candidates + ["$match"] * 6 + ["$addFields", "$project", "$group", "$replaceRoot",
                                                      "$replaceWith", "$lookup", "$set", "$setWindowFields"] * 2
            name = self.pick([c for c in weighted if c in candidates] or candidates)
            with self.within(f"stage:{name}"):
                stage, new_env = self.stage(name, env, depth)
            self.prefer = {p for p, r in new_env.items() if env.get(p) != r}
            env = new_env
            stages.append(stage)
        return stages, env

    def stage(self, name: str, env: Env, depth: int) -> tuple[Any, Env]:
        builder = getattr(self, "stage_" + name[1:], None)
        if builder is None:  # system stages: their arguments carry nothing of the documents
            return {name: tables.SYSTEM_STAGE_ARGS.get(name, {})}, {}
        return builder(env, depth)

    def stage_match(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$match": self.match(env, tied=85)}, env

    def _computed_fields(self, env: Env, via: str) -> tuple[dict[str, Any], Env]:
        """{newName: expression} entries, some holding an encrypted value: the env after them."""
        spec: dict[str, Any] = {}
        new_env = dict(env)
        for _ in range(self.count(1, 3)):
            got = self.ref(env) if self.chance(70) else None
            if got:
                name = self.fresh("a")
                spec[name] = got[0]
                new_env[name] = Ref(got[1].field, got[1].tags | {via})
            elif self.chance(30) and env:
                name = self.fresh("f")
                spec[name] = self.tied_expr(env) or 1  # a comparison computed into a field
            else:
                spec[self.pick(["name", "age", "plainNew"])] = self.filler_expr()
                new_env.pop("name", None)
        return spec, new_env

    def stage_addFields(self, env: Env, depth: int) -> tuple[Any, Env]:
        spec, new_env = self._computed_fields(env, "via:$addFields")
        return {"$addFields": spec}, new_env

    def stage_set(self, env: Env, depth: int) -> tuple[Any, Env]:
        spec, new_env = self._computed_fields(env, "via:$set")
        return {"$set": spec}, new_env

    def stage_project(self, env: Env, depth: int) -> tuple[Any, Env]:
        if self.chance(25):
            dropped = self.pick(["name", "age", *sorted(env)] if env else ["name"])
            return {"$project": {dropped: 0}}, {p: r for p, r in env.items() if p != dropped
                                                and not p.startswith(dropped + ".")}
        spec, computed = self._computed_fields(env, "via:$project")
        new_env = {p: r for p, r in computed.items() if p in spec}
        for path in sorted(env):
            if self.chance(40) and "$" not in path:
                top = path.split(".")[0]
                spec[top] = 1
                new_env.update({p: r for p, r in env.items() if p.split(".")[0] == top})
        return {"$project": spec}, new_env

    def stage_unset(self, env: Env, depth: int) -> tuple[Any, Env]:
        target = self.pick(["name", *sorted(env)])
        return {"$unset": self.pick([target, [target]])}, {p: r for p, r in env.items() if p != target}

    def _accumulate(self, env: Env, table: dict[str, Any], values: Sequence[str], via: str
                    ) -> tuple[str, Any, Ref | None]:
        operator = self.pick(sorted(table))
        got = self.ref(env) if env else None
        expression = got[0] if got else "$name"
        spec = subst(table[operator], x=lambda: expression)
        ref = None
        if got and operator in values:
            ref = Ref(got[1].field, got[1].tags | {f"{via}:{operator}"}
                      | ({"via:N-accumulator"} if operator in tables.N_ACCUMULATORS else set()))
        return operator, spec, ref

    def stage_group(self, env: Env, depth: int) -> tuple[Any, Env]:
        new_env: Env = {}
        id_form = self.pick(["null", "ref", "ref", "doc", "plain"])
        group_id: Any = None
        got = self.ref(env) if env and id_form in ("ref", "doc") else None
        if got and id_form == "ref":
            group_id = got[0]
            new_env["_id"] = Ref(got[1].field, got[1].tags | {"via:$group._id"})
        elif got:
            group_id = {"k": got[0], "n": "$name"}
            new_env["_id.k"] = Ref(got[1].field, got[1].tags | {"via:$group._id"})
        elif id_form == "plain":
            group_id = "$name"
        spec: dict[str, Any] = {"_id": group_id}
        for _ in range(self.count(1, 3)):
            name = self.fresh("g")
            operator, accumulator, ref = self._accumulate(env, tables.ACCUMULATORS, tables.VALUE_ACCUMULATORS,
                                                          "via:acc")
            spec[name] = {operator: accumulator}
            if ref:
                new_env[name] = ref
        return {"$group": spec}, new_env

    def stage_bucket(self, env: Env, depth: int) -> tuple[Any, Env]:
        got = self.ref(env) if env else None
        group_by, ref = (got[0], got[1]) if got else ("$age", None)
        if ref is not None:
            low, high = self.secret(ref, "stage:$bucket-boundaries"), self.secret(ref, "stage:$bucket-boundaries")
            boundaries = [low, high]
        else:
            boundaries = [0, 10]
        spec: dict[str, Any] = {"groupBy": group_by, "boundaries": boundaries, "default": "other"}
        new_env: Env = {}
        if self.chance(60):
            operator, accumulator, value_ref = self._accumulate(env, tables.ACCUMULATORS, tables.VALUE_ACCUMULATORS,
                                                                "via:$bucket-acc")
            spec["output"] = {"out": {operator: accumulator}}
            if value_ref:
                new_env["out"] = value_ref
        return {"$bucket": spec}, new_env

    def stage_bucketAuto(self, env: Env, depth: int) -> tuple[Any, Env]:
        got = self.ref(env) if env else None
        spec: dict[str, Any] = {"groupBy": got[0] if got else "$age", "buckets": 2}
        new_env: Env = {}
        if got:  # _id.min / _id.max are values of groupBy
            for bound in ("min", "max"):
                new_env[f"_id.{bound}"] = Ref(got[1].field, got[1].tags | {"via:$bucketAuto"})
        return {"$bucketAuto": spec}, new_env

    def stage_sortByCount(self, env: Env, depth: int) -> tuple[Any, Env]:
        got = self.ref(env) if env else None
        if not got:
            return {"$sortByCount": "$name"}, {}
        return {"$sortByCount": got[0]}, {"_id": Ref(got[1].field, got[1].tags | {"via:$sortByCount"})}

    def stage_count(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$count": "n"}, {}

    def stage_limit(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$limit": self.pick([1, 10, Int64(5)])}, env

    def stage_skip(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$skip": self.pick([0, 2])}, env

    def stage_sample(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$sample": {"size": 3}}, env

    def stage_sort(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$sort": self.sort()}, env

    def stage_unwind(self, env: Env, depth: int) -> tuple[Any, Env]:
        path = self.pick(["tags", *sorted(p for p in env if "$" not in p)])
        spec: Any = "$" + path if self.chance(50) else {"path": "$" + path, "includeArrayIndex": "idx",
                                                         "preserveNullAndEmptyArrays": True}
        return {"$unwind": spec}, env

    def _new_root(self, env: Env, via: str) -> tuple[Any, Env]:
        form = self.pick(["path", "root", "let-root", "let-path", "mergeObjects", "doc", "getField"])
        parents = sorted({p.rsplit(".", 1)[0] for p in env if "." in p and "$" not in p})
        if form in ("path", "let-path", "getField") and parents:
            parent = self.pick(parents)
            shifted = {p[len(parent) + 1:]: Ref(r.field, r.tags | {f"{via}-{form}"}) for p, r in env.items()
                       if p.startswith(parent + ".")}
            if form == "path":
                return "$" + parent, shifted
            if form == "getField" and "." not in parent:
                return {"$getField": parent}, {p: Ref(r.field, r.tags | {"ref:getField-str"}) for p, r in
                                               shifted.items()}
            name = self.fresh("n")
            return {"$let": {"vars": {name: "$" + parent}, "in": "$$" + name}}, shifted
        if form == "root":
            return "$$ROOT", {p: Ref(r.field, r.tags | {f"{via}-root"}) for p, r in env.items()}
        if form == "let-root":
            name = self.fresh("r")
            return ({"$let": {"vars": {name: "$$ROOT"}, "in": "$$" + name}},
                    {p: Ref(r.field, r.tags | {f"{via}-let-root"}) for p, r in env.items()})
        if form == "mergeObjects":
            return ({"$mergeObjects": ["$$ROOT", {"extra": 1}]},
                    {p: Ref(r.field, r.tags | {f"{via}-mergeObjects"}) for p, r in env.items()})
        spec, computed = self._computed_fields(env, f"{via}-doc")
        return spec, {p: r for p, r in computed.items() if p in spec}

    def stage_replaceRoot(self, env: Env, depth: int) -> tuple[Any, Env]:
        root, new_env = self._new_root(env, "via:$replaceRoot")
        return {"$replaceRoot": {"newRoot": root}}, new_env

    def stage_replaceWith(self, env: Env, depth: int) -> tuple[Any, Env]:
        root, new_env = self._new_root(env, "via:$replaceWith")
        return {"$replaceWith": root}, new_env

    def _foreign(self) -> tuple[str, Env]:
        collection = self.pick([OTHER, OTHER, COLL, PLAIN])
        self.use(collection)
        fields = {OTHER: self.scheme.other_fields, COLL: self.scheme.fields, PLAIN: ()}[collection]
        return collection, env_for(fields)

    def stage_lookup(self, env: Env, depth: int) -> tuple[Any, Env]:
        collection, foreign = self._foreign()
        target = self.pick(["joined", "joined", *sorted(p for p in env if "." not in p)])
        spec: dict[str, Any] = {"from": collection}
        form = self.pick(["fields", "pipeline", "both"])
        if form in ("fields", "both"):
            local = self.pick(["name", *sorted(p for p in env if "$" not in p)])
            spec["localField"] = local
            spec["foreignField"] = self.pick(["name", *sorted(foreign)]) if foreign else "name"
        if form in ("pipeline", "both"):
            bound: dict[str, Ref] = {}
            lets: dict[str, Any] = {}
            for _ in range(self.count(0, 2)):
                got = self.ref(env) if env else None
                name = self.fresh("l")
                if got:
                    lets[name] = got[0]
                    bound["$$" + name] = Ref(got[1].field, got[1].tags | {"ref:lookup-let"})
                else:
                    lets[name] = "$name"
            saved = self.vars
            self.vars = {**saved, **bound}
            with self.within("ctx:$lookup-pipeline"):
                pipeline, _ = self.pipeline(foreign, depth=depth + 1, top=False, length=(1, 2), allow_last=False)
            self.vars = saved
            spec["let"] = lets
            spec["pipeline"] = pipeline
        spec["as"] = target
        new_env = {p: r for p, r in env.items() if p != target and not p.startswith(target + ".")}
        new_env.update({f"{target}.{p}": Ref(r.field, r.tags | {"via:$lookup"}) for p, r in foreign.items()})
        return {"$lookup": spec}, new_env

    def stage_graphLookup(self, env: Env, depth: int) -> tuple[Any, Env]:
        collection, foreign = self._foreign()
        got = self.ref(env) if env else None
        spec = {"from": collection, "startWith": got[0] if got else "$name",
                "connectFromField": self.pick(["name", *sorted(foreign)]) if foreign else "name",
                "connectToField": self.pick(["name", *sorted(foreign)]) if foreign else "name",
                "as": "graph", "maxDepth": 2}
        if foreign and self.chance(70):
            with self.within("ctx:restrictSearchWithMatch"):
                spec["restrictSearchWithMatch"] = self.match(foreign, tied=90)
        new_env = dict(env)
        new_env.update({f"graph.{p}": Ref(r.field, r.tags | {"via:$graphLookup"}) for p, r in foreign.items()})
        return {"$graphLookup": spec}, new_env

    def stage_unionWith(self, env: Env, depth: int) -> tuple[Any, Env]:
        collection, foreign = self._foreign()
        if self.chance(30):
            return {"$unionWith": collection}, env
        with self.within("ctx:$unionWith-pipeline"):
            pipeline, _ = self.pipeline(foreign, depth=depth + 1, top=False, length=(1, 2), allow_last=False)
        return {"$unionWith": {"coll": collection, "pipeline": pipeline}}, env

    def stage_facet(self, env: Env, depth: int) -> tuple[Any, Env]:
        spec: dict[str, Any] = {}
        new_env: Env = {}
        for _ in range(self.count(1, 2)):
            name = self.fresh("facet")
            with self.within("ctx:$facet"):
                pipeline, branch_env = self.pipeline(env, depth=depth + 1, top=False, length=(1, 2), allow_last=False)
            spec[name] = pipeline
            new_env.update({f"{name}.{p}": Ref(r.field, r.tags | {"via:$facet"}) for p, r in branch_env.items()
                            if "$" not in p})
        return {"$facet": spec}, new_env

    def stage_redact(self, env: Env, depth: int) -> tuple[Any, Env]:
        condition = self.tied_expr(env) if env else None
        return {"$redact": {"$cond": [condition or True, "$$DESCEND", "$$PRUNE"]}}, env

    def stage_setWindowFields(self, env: Env, depth: int) -> tuple[Any, Env]:
        operator, spec, ref = self._accumulate(env, tables.WINDOW_OPERATORS, tables.WINDOW_VALUE_OPERATORS,
                                               "via:window")
        output: dict[str, Any] = {operator: spec}
        if operator not in ("$rank", "$denseRank", "$documentNumber", "$shift", "$locf", "$linearFill"):
            output["window"] = self.pick([{"documents": ["unbounded", "current"]}, {"range": [-1, 1]}])
        partition = self.ref(env) if env and self.chance(40) else None
        stage: dict[str, Any] = {"partitionBy": partition[0] if partition else "$name",
                                 "sortBy": {"age": 1}, "output": {"w": output}}
        new_env = dict(env)
        if ref:
            new_env["w"] = ref
        return {"$setWindowFields": stage}, new_env

    def stage_densify(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$densify": {"field": "age", "range": {"step": 1, "bounds": "full"}}}, env

    def stage_fill(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$fill": {"sortBy": {"age": 1}, "output": {"name": {"method": "locf"}, "age": {"value": 0}}}}, env

    def stage_geoNear(self, env: Env, depth: int) -> tuple[Any, Env]:
        spec: dict[str, Any] = {"near": {"type": "Point", "coordinates": [0, 0]}, "distanceField": "dist",
                                "key": "loc", "spherical": True}
        if self.chance(80):
            with self.within("ctx:$geoNear-query"):
                spec["query"] = self.match(env, tied=90)
        return {"$geoNear": spec}, env

    def _search_operator(self, env: Env, tag: str) -> dict[str, Any]:
        operator = self.pick(sorted(tables.SEARCH_OPERATORS))
        paths = sorted(p for p in env if "$" not in p)
        if not paths:
            return {operator: subst(tables.SEARCH_OPERATORS[operator], v=lambda: "plain", p="name")}
        path = self.pick(paths)
        return {operator: subst(tables.SEARCH_OPERATORS[operator],
                                v=lambda: self.secret(env[path], tag, f"search:{operator}"), p=path)}

    def stage_search(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$search": {"index": "default", **self._search_operator(env, "stage:$search")}}, env

    def stage_searchMeta(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$searchMeta": {"index": "default", **self._search_operator(env, "stage:$searchMeta")}}, {}

    def stage_vectorSearch(self, env: Env, depth: int) -> tuple[Any, Env]:
        spec: dict[str, Any] = {"index": "vectors", "path": "embedding", "queryVector": [0.1, 0.2, 0.3],
                                "numCandidates": 10, "limit": 5}
        if self.chance(85):
            with self.within("stage:$vectorSearch-filter"):
                spec["filter"] = self.match(env, tied=95)
        return {"$vectorSearch": spec}, env

    def stage_score(self, env: Env, depth: int) -> tuple[Any, Env]:
        condition = self.tied_expr(env) if env else None
        return {"$score": {"score": {"$cond": [condition or True, 1, 0]}, "normalization": "none"}}, env

    def _fusion(self, env: Env, depth: int, name: str) -> tuple[Any, Env]:
        pipelines = {}
        for _ in range(self.count(1, 2)):
            with self.within(f"ctx:{name}-input"):
                pipelines[self.fresh("p")] = [{"$match": self.match(env, tied=90)}, {"$sort": {"age": 1}}]
        return {name: {"input": {"pipelines": pipelines}}}, env

    def stage_rankFusion(self, env: Env, depth: int) -> tuple[Any, Env]:
        return self._fusion(env, depth, "$rankFusion")

    def stage_scoreFusion(self, env: Env, depth: int) -> tuple[Any, Env]:
        stage, new_env = self._fusion(env, depth, "$scoreFusion")
        stage["$scoreFusion"]["input"]["normalization"] = "none"
        return stage, new_env

    def stage_changeStream(self, env: Env, depth: int) -> tuple[Any, Env]:
        options = self.pick([{}, {"fullDocument": "updateLookup"}, {"fullDocumentBeforeChange": "whenAvailable"}])
        new_env = {f"{where}.{p}": Ref(r.field, r.tags | {"via:$changeStream"}) for p, r in env.items()
                   for where in ("fullDocument", "fullDocumentBeforeChange")}
        return {"$changeStream": options}, new_env

    def stage_documents(self, env: Env, depth: int) -> tuple[Any, Env]:
        return {"$documents": [{"name": "plain"}, {"age": 3}]}, {}

    def stage_merge(self, env: Env, depth: int) -> tuple[Any, Env]:
        target = self.pick([COLL, OTHER, PLAIN])
        self.use(target)
        spec: dict[str, Any] = {"into": target, "on": "_id", "whenNotMatched": self.pick(["insert", "discard"])}
        target_env = env_for({COLL: self.scheme.fields, OTHER: self.scheme.other_fields, PLAIN: ()}[target])
        if target_env and self.chance(70):
            path, ref = self.pick(sorted(target_env.items()))
            with self.within("stage:$merge-whenMatched"):
                spec["whenMatched"] = [{"$set": {path: self.secret(ref, "upd:assign")}}]
        else:
            spec["whenMatched"] = self.pick(["merge", "replace", "keepExisting", "fail"])
        return {"$merge": spec}, env

    def stage_out(self, env: Env, depth: int) -> tuple[Any, Env]:
        target = self.pick([OTHER, PLAIN])
        self.use(target)
        return {"$out": target}, env

    # -- updates -------------------------------------------------------------------------------------------

    def update_spec(self, env: Env, *, duplicate_set: bool = False) -> Any:
        """A replacement document, an update-operator document or an update pipeline."""
        form = self.pick(["operators", "operators", "pipeline", "replacement"])
        if duplicate_set:
            form = "operators"
        if form == "replacement":
            with self.within("upd:replacement"):
                return self.document(env)
        if form == "pipeline":
            return self.update_pipeline(env)
        pairs: list[tuple[str, Any]] = []
        for _ in range(self.count(1, 3)):
            operator = self.pick(sorted(tables.UPDATE_OPERATORS))
            name = operator.split("-")[0]
            template = tables.UPDATE_OPERATORS[operator]
            targets: dict[str, Any] = {}
            for _ in range(self.count(1, 2)):
                if env and has_marker(template, V) and self.chance(75):
                    path, ref = self.pick(sorted((p, r) for p, r in env.items() if "$" not in p))
                    if self.chance(20) and "." in path:  # the whole embedded document
                        parent, _, leaf = path.rpartition(".")
                        targets[parent] = {leaf: self.secret(ref, f"upd:{operator}-object")}
                        continue
                    numeric = "int" if name in tables.NUMERIC_UPDATE else None
                    tag = f"upd:{operator}"
                    targets[path] = subst(template, v=lambda ref=ref, numeric=numeric, tag=tag: self.secret(
                        ref, tag, bson_type=numeric))
                else:
                    path = self.pick([self.plain_path(), *tables.ARRAY_UPDATE_PATHS,
                                      *(sorted(env) if name in ("$unset", "$rename", "$currentDate") else [])])
                    targets[path] = subst(template, v=lambda: 1)
            pairs.append((name, targets))
        if duplicate_set:
            path, ref = self.pick(sorted((p, r) for p, r in env.items() if "$" not in p))
            pairs = [("$set", {path: self.secret(ref, "upd:$set")}), ("$set", {"name": "plain"})]
            self.duplicates.append("command: $set twice in one update")
        seen: set[str] = set()
        unique = []
        for name, targets in pairs:  # the same operator twice is the duplicate case, drawn on purpose only
            if name in seen and not duplicate_set:
                continue
            seen.add(name)
            unique.append((name, targets))
        return Doc(unique)

    def assigned_expr(self, ref: Ref) -> Any:
        """An expression that assigns a secret to an encrypted field in an update pipeline."""
        form = self.pick(["secret", "secret", "concat", "cond", "ifNull", "let"])
        if form == "concat" and ref.field.secret_type == "string":
            return {"$concat": [self.secret_expr(ref, "upd:assign-derived"), ""]}
        if form == "cond":
            return {"$cond": [True, self.secret_expr(ref, "upd:assign-cond"), "$name"]}
        if form == "ifNull":
            return {"$ifNull": [None, self.secret_expr(ref, "upd:assign-ifNull")]}
        if form == "let":
            name = self.fresh("s")
            return {"$let": {"vars": {name: self.secret(ref, "upd:assign-let", "sec:let-expr")}, "in": "$$" + name}}
        return self.secret_expr(ref, "upd:assign")

    def update_pipeline(self, env: Env) -> list[Any]:
        stages: list[Any] = []
        for _ in range(self.count(1, 3)):
            stage = self.pick(["$set", "$addFields", "$project", "$replaceWith", "$replaceRoot", "$unset", "compare"])
            with self.within("upd:pipeline", f"upd:pipeline:{stage}"):
                paths = sorted(p for p in env if "$" not in p)
                if stage == "$unset":
                    stages.append({"$unset": self.pick(["name", *paths])})
                    continue
                if stage == "compare":
                    stages.append({"$set": {"flag": self.tied_expr(env) or 1}})
                    continue
                spec: dict[str, Any] = {}
                for _ in range(self.count(1, 2)):
                    if not paths:
                        break
                    path = self.pick(paths)
                    parent, _, leaf = path.rpartition(".")
                    if parent and self.chance(50):
                        spec[parent] = {leaf: self.assigned_expr(env[path])}
                    else:
                        spec[path] = self.assigned_expr(env[path])
                spec.setdefault("name", "plain")
                if stage in ("$set", "$addFields"):
                    stages.append({stage: spec})
                elif stage == "$project":
                    stages.append({"$project": {k: v if not isinstance(v, str) else {"$literal": v}
                                                for k, v in spec.items()}})
                elif stage == "$replaceWith":
                    stages.append({"$replaceWith": {"$mergeObjects": ["$$ROOT", spec]}})
                else:
                    stages.append({"$replaceRoot": {"newRoot": self.pick([spec, {"$mergeObjects": ["$$ROOT", spec]}])}})
        return stages

    # -- commands ---------------------------------------------------------------------------------------------

    def lets(self, pairs: list[tuple[str, Any]]) -> None:
        """The command's `let`, once its body has asked for variables (plus plain ones)."""
        lets = dict(self.command_lets or {})
        if self.chance(30):
            lets[self.fresh("plain")] = "plain"
        if lets:
            pairs.append(("let", lets))

    def duplicate_field(self, pairs: list[tuple[str, Any]], name: str, harmless: Any) -> None:
        """Repeat command field `name` after its first copy: the first (tied) copy would be dropped by last-wins."""
        index = next(i for i, (key, _) in enumerate(pairs) if key == name)
        pairs.insert(index + 1, (name, harmless))
        self.duplicates.append(f"command: {name} twice")

    def command(self, name: str, env: Env, *, explained: bool = False) -> list[tuple[str, Any]]:
        self.command_lets = {} if name in ("find", "aggregate", "delete", "update", "findAndModify",
                                           "findandmodify", "bulkWrite") else None
        duplicate = self.chance(4)
        with self.within(f"cmd:{name}"):
            pairs = getattr(self, "cmd_" + name)(env, duplicate)
        handled = {key for key, _ in pairs}
        if name in tables.COMMAND_FIELDS:
            pairs += self.table_fillers(name, handled)
        if self.command_lets is not None and name != "bulkWrite":
            self.lets(pairs)
            if duplicate and self.command_lets and not self.duplicates:
                self.duplicate_field(pairs, "let", {"plain": 1})
        if not explained:
            pairs += self.generic_fields()
        return pairs

    def cmd_find(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [("find", COLL)]
        with self.within("field:filter"):
            pairs.append(("filter", self.match(env)))
        if self.chance(35):
            with self.within("field:projection"):
                pairs.append(("projection", self.projection(env)))
        if self.chance(30):
            pairs.append(("sort", self.sort()))
        if self.chance(20):
            for which in self.pick([["min"], ["max"], ["min", "max"]]):
                pairs.append((which, self.bounds(env, which)))
            pairs.append(("hint", {"ssn": 1}))
        if self.chance(15):
            pairs.append(("collation", self.collation()))
        if duplicate:
            self.duplicate_field(pairs, "filter", {})
        return pairs

    def cmd_aggregate(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        with self.within("field:pipeline"):
            pipeline, _ = self.pipeline(env)
        pairs: list[tuple[str, Any]] = [("aggregate", COLL), ("pipeline", pipeline), ("cursor", {})]
        if duplicate:
            self.duplicate_field(pairs, "pipeline", [])
        return pairs

    def cmd_count(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        with self.within("field:query"):
            pairs: list[tuple[str, Any]] = [("count", COLL), ("query", self.match(env))]
        if duplicate:
            self.duplicate_field(pairs, "query", {})
        return pairs

    def cmd_distinct(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        with self.within("field:query"):
            pairs: list[tuple[str, Any]] = [("distinct", COLL), ("key", self.option("key")),
                                            ("query", self.match(env))]
        if duplicate:
            self.duplicate_field(pairs, "query", {})
        return pairs

    def _statement(self, fields: dict[str, str], env: Env, duplicate: bool, upsert_ok: bool) -> Doc:
        pairs: list[tuple[str, Any]] = []
        with self.within("field:q"):
            pairs.append(("q", self.match(env)))
        if "u" in fields:
            self.constants = {}
            duplicate_set = duplicate and self.chance(50)
            with self.within("field:u"):
                pairs.append(("u", self.update_spec(env, duplicate_set=duplicate_set)))
            if self.constants:
                pairs.append(("c", self.constants))
            self.constants = None
            if upsert_ok and self.chance(40):
                pairs.append(("upsert", True))
            if self.chance(30):
                pairs.append(("multi", self.pick([True, False])))
            if self.chance(15):
                pairs.append(("arrayFilters", [{"t": {"$gt": 1}}]))
            if duplicate and not duplicate_set:
                self.duplicate_field(pairs, self.pick(["q", "u"]), {})
        else:
            pairs.append(("limit", self.pick([0, 1])))
            if duplicate:
                self.duplicate_field(pairs, "q", {})
        for name in ("collation", "hint"):
            if self.chance(10):
                pairs.append((name, self.option(name)))
        return Doc(pairs)

    def cmd_update(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        statements = [self._statement(tables.UPDATE_STATEMENT_FIELDS, env, duplicate and i == 0, True)
                      for i in range(self.count(1, 2))]
        return [("update", COLL), ("updates", statements), ("ordered", True)]

    def cmd_delete(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        statements = [self._statement(tables.DELETE_STATEMENT_FIELDS, env, duplicate and i == 0, False)
                      for i in range(self.count(1, 2))]
        return [("delete", COLL), ("deletes", statements)]

    def cmd_findAndModify(self, env: Env, duplicate: bool, name: str = "findAndModify") -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [(name, COLL)]
        with self.within("field:query"):
            pairs.append(("query", self.match(env)))
        if self.chance(25):
            pairs.append(("remove", True))
        else:
            with self.within("field:update"):
                pairs.append(("update", self.update_spec(env)))
            if self.chance(40):
                pairs.append(("upsert", True))
        if self.chance(40):
            with self.within("field:fields", "ctx:fam.fields"):
                pairs.append(("fields", self.projection(env)))
        if self.chance(25):
            pairs.append(("sort", self.sort()))
        if self.chance(20):
            pairs.append(("new", True))
        if duplicate:
            self.duplicate_field(pairs, self.pick(["query", "update" if any(k == "update" for k, _ in pairs)
                                                    else "query"]), {})
        return pairs

    def cmd_findandmodify(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        return self.cmd_findAndModify(env, duplicate, "findandmodify")

    def cmd_insert(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        with self.within("field:documents"):
            documents = [self.document(env) for _ in range(self.count(1, 2))]
        pairs: list[tuple[str, Any]] = [("insert", COLL), ("documents", documents)]
        if duplicate:
            self.duplicate_field(pairs, "documents", [{"_id": 1}])
        return pairs

    def cmd_create(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [("create", COLL)]
        form = self.pick(["validator", "validator", "view", "options"])
        if form == "validator":
            with self.within("field:validator"):
                pairs.append(("validator", self.match(env, tied=90)))
        elif form == "view":
            with self.within("field:pipeline", "ctx:view"):
                pipeline, _ = self.pipeline(env, length=(1, 2), allow_last=False)
            pairs[0] = ("create", "view1")
            pairs += [("viewOn", COLL), ("pipeline", pipeline)]
        if self.scheme.flavour == "qe" and self.chance(50):
            pairs.append(("encryptedFields", schemas.qe_encrypted_fields(self.scheme.name == "qe-range")))
        if duplicate and form == "validator":
            self.duplicate_field(pairs, "validator", {})
        return pairs

    def cmd_createIndexes(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        index: dict[str, Any] = {"key": {self.pick(["ssn", "name", "nested.pin"]): 1}, "name": "i1"}
        if self.chance(80):
            with self.within("field:partialFilterExpression"):
                index["partialFilterExpression"] = self.match(env, tied=90)
        return [("createIndexes", COLL), ("indexes", [index])]

    def cmd_collMod(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [("collMod", COLL)]
        if self.chance(70):
            with self.within("field:validator"):
                pairs.append(("validator", self.match(env, tied=90)))
            if duplicate:
                self.duplicate_field(pairs, "validator", {})
        else:
            with self.within("field:pipeline", "ctx:view"):
                pipeline, _ = self.pipeline(env, length=(1, 2), allow_last=False)
            pairs = [("collMod", "view1"), ("viewOn", COLL), ("pipeline", pipeline)]
        return pairs

    def cmd_explain(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        inner_name = self.pick(tables.EXPLAINABLE)
        inner = self.command(inner_name, env, explained=True)
        self.command_lets = None
        return [("explain", Doc(inner)), ("verbosity", self.option("verbosity"))]

    def cmd_bulkWrite(self, env: Env, duplicate: bool) -> list[tuple[str, Any]]:
        ops: list[Any] = []
        for _ in range(self.pick([1, 1, 1, 2, 3])):
            kind = self.pick(["insert", "update", "delete"])
            if kind == "insert":
                with self.within("field:ops.document"):
                    ops.append({"insert": 0, "document": self.document(env)})
            elif kind == "update":
                with self.within("field:ops.filter"):
                    op: dict[str, Any] = {"update": 0, "filter": self.match(env)}
                with self.within("field:ops.updateMods"):
                    op["updateMods"] = self.update_spec(env)
                if self.chance(30):
                    op["upsert"] = True
                ops.append(op)
            else:
                with self.within("field:ops.filter"):
                    ops.append({"delete": 0, "filter": self.match(env), "multi": self.pick([True, False])})
        pairs: list[tuple[str, Any]] = [("bulkWrite", 1), ("ops", ops), ("nsInfo", [{"ns": schemas.ns(COLL)}])]
        lets = dict(self.command_lets or {})
        if lets:
            pairs.append(("let", lets))
        self.command_lets = None
        return pairs


def attach_rules(g: Gen, name: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The command with the rules libmongocrypt attaches, and `$db`."""
    duplicate = None
    namespaces = tuple(g.namespaces)
    if g.scheme.flavour == "csfle":
        # libmongocrypt sends csfleEncryptionSchemas for aggregate only; now and then elsewhere, too.
        aggregate = name == "aggregate" or (name == "explain" and pairs[0][1].pairs[0][0] == "aggregate")
        multi = g.chance(20) if aggregate else g.chance(3)
        if not multi and len(namespaces) > 1 and not aggregate:
            namespaces = (COLL,)
        if g.chance(5):  # a duplicate the chosen form of the rules can hold
            duplicate = g.pick([d for d in schemas.RULE_DUPLICATES["csfle"]
                                if (d == "namespace twice in csfleEncryptionSchemas") == (multi or len(namespaces) > 1)
                                or d in ("properties twice", "a property twice")])
            g.duplicates.append(f"rules: {duplicate}")
        rules = schemas.csfle_rules(g.scheme, namespaces, multi=multi, duplicate=duplicate)
    else:
        if g.chance(5):
            duplicate = g.pick(schemas.RULE_DUPLICATES["qe"])
            g.duplicates.append(f"rules: {duplicate}")
        rules = schemas.qe_rules(g.scheme, namespaces, duplicate=duplicate)
    database = DB
    # Rules beside explain, as libmongocrypt sends them to mongocryptd; now and then inside the explained
    # command (how the shared library gets them), which the daemon refuses.
    if name == "explain" and g.chance(20):
        inner = pairs[0][1]
        assert isinstance(inner, Doc)
        pairs = [("explain", Doc([*inner.pairs, *rules])), *pairs[1:]]
    elif name == "bulkWrite":
        database = "admin"
        if g.scheme.flavour == "qe":
            ns_info = Doc([("ns", schemas.ns(COLL)), *rules])
            pairs = [(k, v) if k != "nsInfo" else ("nsInfo", [ns_info]) for k, v in pairs]
        else:
            pairs = [*pairs, *rules]
    else:
        pairs = [*pairs, *rules]
    return [*pairs, ("$db", database)]


@st.composite
def cases(draw: st.DrawFn, schemes: Sequence[str] = tuple(schemas.SCHEMES), commands: Sequence[str] = COMMANDS
          ) -> Case:
    """One adversarial marking command, as libmongocrypt would send it, with its placements."""
    scheme = schemas.SCHEMES[draw(st.sampled_from(list(schemes)))]
    g = Gen(draw, scheme)
    # aggregate carries most of the grammar (every stage, expression, accumulator): drawn most often.
    name = g.pick([c for c in commands for _ in range(COMMAND_WEIGHTS.get(c, 1))])
    env = env_for(scheme.fields)
    pairs = g.command(name, env)
    pairs = attach_rules(g, name, pairs)
    return Case(scheme.name, name, Doc(pairs), g.placements, tuple(g.duplicates))
