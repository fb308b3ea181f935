"""Every row of every table, once per scheme: the deterministic complement of the random grammar.

The random draws reach most operators in a CI-sized run; this sweep reaches all of them.  For each
expression operator that takes an expression, the operator over an encrypted field is compared with a
secret (in find's $expr and in an aggregate $match); each accumulator and window operator feeds a field
that a later $match compares with a secret; each query and update operator that takes a value gets a
secret on an encrypted path; each Atlas Search operator gets one on an encrypted path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.adversarial import schemas, secrets, tables
from tests.adversarial.commands import with_rules
from tests.adversarial.grammar import Case, Placement, has_marker, subst
from tests.adversarial.tables import V, X


class _Builder:
    def __init__(self, scheme: str, command: str) -> None:
        self.scheme = scheme
        self.command = command
        self.placements: dict[int, Placement] = {}

    def secret(self, field: schemas.Field, *tags: str) -> Any:
        serial = len(self.placements) + 1
        self.placements[serial] = Placement(serial, field.path, frozenset(tags))
        return secrets.of_type(field.secret_type, serial)

    def case(self, body: dict[str, Any]) -> Case:
        return Case(self.scheme, self.command, with_rules(body, self.scheme), self.placements)


def _field(scheme: str, numeric: bool) -> schemas.Field:
    return schemas.SCHEMES[scheme].field("nested.pin" if numeric else "ssn")


NUMERIC_EXPRESSIONS = frozenset({
    "$abs", "$add", "$ceil", "$divide", "$exp", "$floor", "$ln", "$log", "$log10", "$mod", "$multiply", "$pow",
    "$round", "$sigmoid", "$sqrt", "$subtract", "$trunc", "$bitAnd", "$bitNot", "$bitOr", "$bitXor", "$range",
    "$sin", "$cos", "$tan", "$asin", "$acos", "$atan", "$atan2", "$asinh", "$acosh", "$atanh", "$sinh", "$cosh",
    "$tanh", "$degreesToRadians", "$radiansToDegrees", "$avg", "$sum", "$stdDevPop", "$stdDevSamp"})


def expression_cases(scheme: str) -> Iterator[Case]:
    for operator, template in sorted(tables.EXPRESSIONS.items()):
        if not has_marker(template, X):
            continue
        field = _field(scheme, operator in NUMERIC_EXPRESSIONS)
        for command in ("find", "aggregate"):
            builder = _Builder(scheme, command)
            derived = {operator: subst(template, x=lambda field=field: "$" + field.path)}
            comparison = {"$eq": [derived, builder.secret(field, f"ref:derived:{operator}", "ctx:$expr",
                                                          f"sweep:{command}")]}
            if command == "find":
                yield builder.case({"find": "coll", "filter": {"$expr": comparison}})
            else:
                yield builder.case({"aggregate": "coll", "pipeline": [{"$match": {"$expr": comparison}}],
                                    "cursor": {}})


def _fed_stage_cases(scheme: str, table: dict[str, Any], values: tuple[str, ...], stage: str) -> Iterator[Case]:
    for operator, template in sorted(table.items()):
        if operator not in values:
            continue
        field = _field(scheme, False)
        builder = _Builder(scheme, "aggregate")
        spec = subst(template, x=lambda: "$ssn")
        via = ("via:N-accumulator",) if operator in tables.N_ACCUMULATORS else ()
        secret = builder.secret(field, f"sweep:{stage}:{operator}", *via)
        if stage == "$group":
            first = {"$group": {"_id": None, "t": {operator: spec}}}
        else:
            output: dict[str, Any] = {operator: spec}
            if operator not in ("$shift", "$locf", "$linearFill"):
                output["window"] = {"documents": ["unbounded", "current"]}
            first = {"$setWindowFields": {"sortBy": {"age": 1}, "output": {"t": output}}}
        yield builder.case({"aggregate": "coll", "pipeline": [first, {"$match": {"t": secret}}], "cursor": {}})


def query_cases(scheme: str) -> Iterator[Case]:
    for operator, template in sorted(tables.QUERY_OPERATORS.items()):
        if not has_marker(template, V):
            continue
        field = _field(scheme, operator in tables.NUMERIC_VALUE)
        builder = _Builder(scheme, "find")
        tag = f"match:{operator}"
        value = subst(template, v=lambda builder=builder, field=field, tag=tag: builder.secret(field, tag))
        yield builder.case({"find": "coll", "filter": {field.path: {operator: value}}})


def update_cases(scheme: str) -> Iterator[Case]:
    for operator, template in sorted(tables.UPDATE_OPERATORS.items()):
        if not has_marker(template, V):
            continue
        field = _field(scheme, operator.split("-")[0] in tables.NUMERIC_UPDATE)
        builder = _Builder(scheme, "update")
        tag = f"upd:{operator}"
        value = subst(template, v=lambda builder=builder, field=field, tag=tag: builder.secret(field, tag))
        modifier = {operator.split("-")[0]: {field.path: value}}
        yield builder.case({"update": "coll", "updates": [{"q": {}, "u": modifier}]})


def search_cases(scheme: str) -> Iterator[Case]:
    for stage in ("$search", "$searchMeta"):
        for operator, template in sorted(tables.SEARCH_OPERATORS.items()):
            if not has_marker(template, V):
                continue
            field = _field(scheme, False)
            builder = _Builder(scheme, "aggregate")
            tag = f"stage:{stage}"
            spec = subst(template, v=lambda builder=builder, field=field, tag=tag: builder.secret(field, tag),
                         p=field.path)
            yield builder.case({"aggregate": "coll", "pipeline": [{stage: {operator: spec}}], "cursor": {}})


def all_cases() -> Iterator[Case]:
    for scheme in schemas.SCHEMES:
        yield from expression_cases(scheme)
        yield from _fed_stage_cases(scheme, tables.ACCUMULATORS, tables.VALUE_ACCUMULATORS, "$group")
        yield from _fed_stage_cases(scheme, tables.WINDOW_OPERATORS, tables.WINDOW_VALUE_OPERATORS,
                                    "$setWindowFields")
        yield from query_cases(scheme)
        yield from update_cases(scheme)
        yield from search_cases(scheme)
