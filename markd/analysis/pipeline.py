"""Aggregation pipelines, for both schemes: one rule per stage, the schema carried through each.

Each rule reads one stage with the schema of the documents entering it and returns the stage(s) as
mongod serializes them (some desugar: `$count` -> `$group` + `$project`, `$bucket` -> `$group` +
`$sort`) and the schema of the documents leaving it.  A stage mongod does not know is refused with its
parse error (40324); a known stage query analysis does not support, with 31011.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, NoReturn

from bson import Decimal128, Int64

from markd import bsonvalues
from markd.analysis import expressions, paths
from markd.analysis.context import Scope
from markd.analysis.expressions import DOCUMENT, Value, is_document
from markd.analysis.match import mark_filter, non_negative_long
from markd.analysis.ordering import canonical_rank, order_key
from markd.analysis.schema import (
    EMPTY,
    NOT_ENCRYPTED,
    PREFIX,
    UNKNOWN,
    UNKNOWN_NODE,
    SchemaNode,
    is_encrypted,
    lookup,
    subtree,
    with_path,
    without_path,
)
from markd.analysis.schema import child as schema_child
from markd.errors import CommandError

Stage = list[dict[str, Any]]
StageRule = Callable[[str, Any, Scope], tuple[Stage, SchemaNode]]


def _fail(code: int, message: str) -> NoReturn:
    raise CommandError(code, message)


def _type(value: Any) -> str:
    return bsonvalues.bson_type(value)


# -- schema propagation --------------------------------------------------------------------------------


def add_path(root: SchemaNode, path: str, child: SchemaNode, scope: Scope) -> SchemaNode:
    """`root` with `child` at `path`, as a stage adds a field; a dotted path may reach into array elements,
    so what it holds there is unknown when it may hold encryption."""
    parts = paths.split(path)
    current = root
    for part in parts[:-1]:
        if current.encrypted is not None:
            scope.fail("add_below_encrypted", path=path)
        if current.unknown:
            break
        current = schema_child(current, part)
    else:
        if current.encrypted is not None and parts:
            scope.fail("add_below_encrypted", path=path)
    if len(parts) > 1 and child.may_hold_encryption:
        return with_path(root, parts[0], UNKNOWN_NODE)
    scope.scheme.check_added_field(root, path, child, scope)
    return with_path(root, path, child)


def _is_inclusion(value: Any) -> bool | None:
    """True for 1/true, False for 0/false, None for a computed field."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool):
        return value != 0
    return None


def _is_rename(value: Any) -> bool:
    """`"$a"` (one field of the current document): mongod reports it as a renamed field, not an expression."""
    return isinstance(value, str) and value.startswith("$") and not value.startswith("$$") and "." not in value


def _computed(value: Any, scope: Scope) -> tuple[Any, Value]:
    """A computed projection field: a nested object spec is computed field by field."""
    if is_document(value) and value and not next(iter(value)).startswith("$"):
        fields: dict[str, Any] = {}
        result = EMPTY
        for name, item in value.items():
            fields[name], inner = _computed(item, scope)
            result = add_path(result, name, inner.node, scope)
        return fields, Value(DOCUMENT, result)
    if _is_rename(value):
        found = expressions.reference(value, scope)
        return value, replace(found, node=scope.scheme.projected(found, True, scope))
    serialized, found = expressions.analyse(value, scope)
    expressions.check_output(found, scope)
    return serialized, replace(found, node=scope.scheme.projected(found, False, scope))


def _match(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        _fail(15959, "the match filter must be an expression in an object")
    return [{"$match": mark_filter(spec, scope)}], scope.current


def _count_limit(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    """$limit/$skip: mongod keeps the count as a 64-bit integer and writes it back as one."""
    count = non_negative_long(name, spec, 5107201 if name == "$limit" else 5107200,
                              f"invalid argument to {name} stage: ")
    if name == "$limit" and count == 0:
        _fail(15958, "the limit must be positive")
    return [{name: Int64(count)}], scope.current



def _sample(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        _fail(28745, "the $sample stage specification must be an object")
    for option, size in spec.items():
        if option != "size":
            _fail(28748, f"unrecognized option to $sample: {option}")
        if isinstance(size, bool) or not isinstance(size, (int, float)):
            _fail(28746, "size argument to $sample must be a number")
        if size < 0:
            _fail(28747, "size argument to $sample must not be negative")
    if "size" not in spec:
        _fail(28749, "$sample stage must specify a size")
    return [{"$sample": {"size": Int64(int(spec["size"]))}}], scope.current


def project(spec: Any, scope: Scope, *, stage: str = "$project") -> tuple[dict[str, Any], SchemaNode]:
    """An inclusion/exclusion/computed projection (a $project stage, a find projection)."""
    if not is_document(spec):
        _fail(15969, f"{stage} specification must be an object")
    if not spec:
        _fail(51272, f"Invalid {stage} :: caused by :: projection specification must have at least one field")
    current = scope.current
    kinds = {_is_inclusion(v) for k, v in spec.items() if k != "_id"} or {_is_inclusion(spec.get("_id", 1))}
    serialized: dict[str, Any] = {}
    if kinds == {False}:
        out = current
        for path in spec:
            serialized[path] = False
            out = without_path(out, path)
        serialized.setdefault("_id", True)  # mongod writes the implicit _id inclusion out
        return serialized, out
    out = EMPTY
    if "_id" not in spec:
        serialized["_id"] = True
        out = with_path(out, "_id", _included(current, "_id", scope))
    for path, value in spec.items():
        included = _is_inclusion(value)
        if included is True:
            serialized[path] = True
            out = with_path(out, path, _included(current, path, scope))
        elif included is False:
            serialized[path] = False  # only _id may be excluded in an inclusion projection
        else:
            serialized[path], result = _computed(value, scope)
            out = add_path(out, path, result.node, scope)
    return serialized, out


def _included(current: SchemaNode, path: str, scope: Scope) -> SchemaNode:
    included = subtree(current, path)
    return scope.scheme.included(included)


def _project(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    serialized, out = project(spec, scope)
    return [{"$project": serialized}], out


def _add_fields(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        _fail(40272, f"{name} specification stage must be an object, got {_type(spec)}")
    serialized: dict[str, Any] = {}
    out = scope.current
    for path, value in spec.items():
        serialized[path], result = _computed(value, scope)
        out = add_path(out, path, result.node, scope)
    return [{name: serialized}], out


def _unset(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    fields = [spec] if isinstance(spec, str) else spec
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        _fail(31002, "$unset specification must be a string or an array")
    return _project("$project", {f: False for f in fields}, scope)


# -- $group and accumulators -------------------------------------------------------------------------

KEEPING_ACCUMULATORS = frozenset({"$first", "$last"})
COLLECTING_ACCUMULATORS = frozenset({"$push", "$addToSet"})
ACCUMULATORS = frozenset({
    "$accumulator", "$addToSet", "$avg", "$bottom", "$bottomN", "$concatArrays", "$count", "$first", "$firstN",
    "$last", "$lastN", "$max", "$maxN", "$median", "$mergeObjects", "$min", "$minN", "$percentile", "$push",
    "$setUnion", "$stdDevPop", "$stdDevSamp", "$sum", "$top", "$topN",
})
# Accumulators whose argument is an object of named parts (the value comes from `output`/`input`).
NAMED_ACCUMULATORS = {"$top": "output", "$bottom": "output", "$topN": "output", "$bottomN": "output",
                      "$firstN": "input", "$lastN": "input", "$maxN": "input", "$minN": "input",
                      "$median": "input", "$percentile": "input"}


def _group_key(key: Any, path: str, scope: Scope) -> tuple[Any, SchemaNode]:
    if is_document(key) and key and not next(iter(key)).startswith("$"):
        fields: dict[str, Any] = {}
        out = EMPTY
        for name, item in key.items():
            fields[name], child = _group_key(item, paths.join(path, name), scope)
            out = with_path(out, name, child)
        return fields, out
    # A group key is compared (documents group by equal keys): its schema is its output schema,
    # and constants it may be are marked as what they are compared with.
    return scope.scheme.compared_output(key, scope, lambda reads="": scope.fail("group_key", path=path, reads=reads))


def accumulator(field: str, spec: Any, scope: Scope, group_key_encrypted: bool) -> tuple[Any, SchemaNode, Value]:
    """One accumulator: its serialization, the schema of the field it produces, what its argument yields."""
    if not is_document(spec) or len(spec) != 1:
        _fail(40238, f"The field '{field}' must specify one accumulator")
    op, argument = next(iter(spec.items()))
    if op not in ACCUMULATORS:
        _fail(15952, f"unknown group operator '{op}'")
    if op == "$count":
        return {"$sum": {"$const": 1}}, EMPTY, expressions.COMPUTED_VALUE
    if op == "$accumulator":
        return _custom_accumulator(argument, scope, group_key_encrypted), EMPTY, expressions.COMPUTED_VALUE
    part = NAMED_ACCUMULATORS.get(op)
    if part is not None and is_document(argument) and not expressions.is_operator_object(argument):
        body: dict[str, Any] = {}
        value = expressions.COMPUTED_VALUE
        for name, item in argument.items():
            if name == part:
                body[name], value = expressions.analyse(item, scope.without_comparisons())
            elif name == "sortBy":
                _sort_keys(item, scope)
                body[name] = item
            else:
                body[name] = expressions.evaluated(item, scope, op)
        serialized: Any = {op: body}
    elif op == "$addToSet":
        # A set is built by comparing values: the argument is compared, as a group key is.
        inner, node = scope.scheme.compared_output(argument, scope.without_comparisons(),
                                                   lambda reads="": scope.fail("add_to_set", field=field, reads=reads))
        serialized = {op: inner}
        value = Value(expressions.FORWARDED, node, field)
    else:
        inner, value = expressions.analyse(argument, scope.without_comparisons())
        serialized = {op: inner}
    expressions.check_output(value, scope)
    value_node = value.node
    if op in KEEPING_ACCUMULATORS:
        return serialized, value_node, value
    if op in COLLECTING_ACCUMULATORS:
        if op == "$addToSet" and value_node.may_hold_random:
            scope.fail("add_to_set", field=field, reads=value.source)
        return serialized, UNKNOWN_NODE if value_node.may_hold_encryption else EMPTY, value
    if value_node.may_hold_encryption:
        scope.fail("accumulator", op=op, reads=value.source)
    return serialized, EMPTY, value


def accumulators(specs: Mapping[str, Any], scope: Scope, group_key_encrypted: bool, out: SchemaNode
                 ) -> tuple[dict[str, Any], SchemaNode]:
    """Every accumulator's output schema is worked out (51221, 51223) before the scheme judges what each
    argument reads, as mongocryptd does."""
    serialized: dict[str, Any] = {}
    read: list[tuple[str, str, Value]] = []
    for field, spec_of_field in specs.items():
        try:
            serialized[field], child, value = accumulator(field, spec_of_field, scope, group_key_encrypted)
        except CommandError as refusal:
            if is_document(spec_of_field) and len(spec_of_field) == 1:
                refusal.locate(operator=next(iter(spec_of_field)))
            raise
        read.append((field, next(iter(spec_of_field)), value))
        out = with_path(out, field, child)
    for field, op, value in read:
        try:
            scope.scheme.accumulated(op, value, field, scope)
        except CommandError as refusal:
            refusal.locate(operator=op)
            raise
    return serialized, out


def _custom_accumulator(argument: Any, scope: Scope, group_key_encrypted: bool) -> Any:
    """$accumulator: its JavaScript parts are written back as given, its argument lists evaluated."""
    if not is_document(argument):
        _fail(4544703, f"$accumulator expects an object as an argument; found: {_type(argument)}")
    body: dict[str, Any] = {}
    for name, item in argument.items():
        if name in ("initArgs", "accumulateArgs"):
            serialized, value = expressions.analyse(item, scope.without_comparisons())
            if value.may_hold_encryption:
                scope.fail("accumulator", op="$accumulator")
            if name == "initArgs" and group_key_encrypted and value.kind not in (expressions.CONSTANT,):
                scope.fail("accumulator_initializer", op="$accumulator")
            body[name] = serialized
        else:
            body[name] = item  # init, accumulate, merge, finalize (code), lang
    return {"$accumulator": body}


def group(spec: Any, scope: Scope) -> tuple[dict[str, Any], SchemaNode]:
    if not is_document(spec) or "_id" not in spec:
        _fail(15955, "a group specification must include an _id")
    serialized: dict[str, Any] = {}
    serialized["_id"], key_node = _group_key(spec["_id"], "_id", scope)
    for field in spec:
        if field.startswith("$") or "." in field:
            _fail(40236 if field.startswith("$") else 40235,
                  f"The field name '{field}' cannot be an operator name" if field.startswith("$")
                  else f"The field name '{field}' cannot contain '.'")
    fields, out = accumulators({k: v for k, v in spec.items() if k != "_id"}, scope, key_node.may_hold_encryption,
                               with_path(EMPTY, "_id", key_node))
    serialized.update(fields)
    return serialized, out


def _group(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    serialized, out = group(spec, scope)
    return [{"$group": serialized}], out


def _count(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not isinstance(spec, str) or not spec:
        _fail(40156, "the count field must be a non-empty string")
    if spec.startswith("$"):
        _fail(40158, "the count field cannot be a $-prefixed path")
    if "." in spec:
        _fail(40160, "the count field cannot contain '.'")
    stages = [{"$group": {"_id": {"$const": None}, spec: {"$sum": {"$const": 1}}}},
              {"$project": {spec: True, "_id": False}}]
    return stages, with_path(EMPTY, spec, EMPTY)


def _sort_keys(spec: Any, scope: Scope) -> dict[str, Any]:
    if not is_document(spec) or not spec:
        _fail(15976, "$sort stage must have at least one sort key")
    for path, direction in spec.items():
        if is_document(direction) and "$meta" in direction:
            continue
        if scope.current.may_hold_encryption and lookup(scope.current, path) is not NOT_ENCRYPTED:
            scope.fail("sort", path=path)
    # mongod writes directions back as int32 1 / -1 ($meta sorts as they were).
    return {path: ((1 if direction > 0 else -1) if isinstance(direction, (int, float))
                   and not isinstance(direction, bool) else direction) for path, direction in spec.items()}


def _sort(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    return [{"$sort": _sort_keys(spec, scope)}], scope.current


def _sort_by_count(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    grouped, out = group({"_id": spec, "count": {"$sum": 1}}, scope)
    return [{"$group": grouped}, {"$sort": {"count": -1}}], out


# -- $unwind, $replaceRoot -----------------------------------------------------------------------------


def _unwind(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not is_document(spec) and not isinstance(spec, str):
        _fail(15981, f"expected either a string or an object as specification for $unwind stage, got {_type(spec)}")
    options = dict(spec) if is_document(spec) else {"path": spec}
    path = options.get("path")
    if path is not None and not isinstance(path, str):
        _fail(28808, f"expected a string as the path for $unwind stage, got {_type(path)}")
    if not path:
        _fail(28812, "no path specified to $unwind stage")
    if not path.startswith("$"):
        _fail(28818, f"path option to $unwind stage should be prefixed with a '$': {path}")
    written: dict[str, Any] = {"path": path}
    for option, value in options.items():
        if option == "preserveNullAndEmptyArrays":
            if not isinstance(value, bool):
                _fail(28809, "expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage, got "
                             f"{_type(value)}")
        elif option == "includeArrayIndex":
            if not isinstance(value, str) or not value:
                _fail(28810, "expected a non-empty string for the includeArrayIndex option to $unwind stage, got "
                             f"{_type(value)}")
            if value.startswith("$"):
                _fail(28822, f"includeArrayIndex option to $unwind stage should not be prefixed with a '$': {value}")
        elif option != "path":
            _fail(28811, f"unrecognized option to $unwind stage: {option}")
    current = scope.current
    metadata = lookup(current, path[1:]) if current.may_hold_encryption else NOT_ENCRYPTED
    if metadata is UNKNOWN:
        # The joined documents of a $lookup, say: what their elements hold is not known (31133, as mongocryptd).
        scope.fail("unknown_path", path=path[1:])
    if is_encrypted(metadata) and metadata.randomized:
        scope.fail("unwind_encrypted", path=path[1:])
    out = current
    index_field = options.get("includeArrayIndex")
    if isinstance(index_field, str):
        out = with_path(out, index_field, EMPTY)
    if options.get("preserveNullAndEmptyArrays") is True:
        written["preserveNullAndEmptyArrays"] = True
    if isinstance(index_field, str):
        written["includeArrayIndex"] = index_field
    return [{"$unwind": written}], out


def _replace_root(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if name == "$replaceRoot":
        if not is_document(spec) or "newRoot" not in spec:
            _fail(40231, "no newRoot specified for the $replaceRoot stage")
        for option in spec:
            if option != "newRoot":
                _fail(40415, f"BSON field '$replaceRoot.{option}' is an unknown field.")
        new_root = spec["newRoot"]
    else:
        new_root = spec
    expression, value = expressions.analyse(new_root, scope)
    expressions.check_output(value, scope)
    if value.node.encrypted is not None:
        scope.fail("replace_root", reads=value.source)
    out = value.node
    return [{"$replaceRoot": {"newRoot": expression}}], out


# -- joins -----------------------------------------------------------------------------------------


def _string_options(stage: str, spec: Mapping[str, Any], names: tuple[str, ...], required: tuple[str, ...] = ()
                    ) -> None:
    """mongod's own parse of a stage's string arguments, before any encryption rule."""
    for option in names:
        if option in spec and not isinstance(spec[option], str):
            _fail(9, f"{stage} argument '{option}' must be a string")
    for option in required:
        if option not in spec:
            _fail(9, f"{stage} requires '{option}' to be specified")


def _foreign(source: Any, scope: Scope) -> SchemaNode:
    """The schema of the documents a $lookup/$graphLookup joins (involved namespaces were checked up front)."""
    analysis = scope.analysis
    if not isinstance(source, str) or source == analysis.collection:
        own = analysis.own_schema
        return own.root if own is not None else scope.current
    schema = analysis.schema_of(source)
    return schema.root if schema is not None else UNKNOWN_NODE


def _join_fields(local_path: str, foreign_path: str, local: SchemaNode, foreign: SchemaNode, scope: Scope,
                 names: tuple[str, str], keys: tuple[str, ...]) -> None:
    """$lookup localField/foreignField, $graphLookup connectFromField/connectToField: both plain, or one
    deterministic encryption (a QE field cannot be joined on)."""
    local_metadata = lookup(local, local_path) if local.may_hold_encryption else NOT_ENCRYPTED
    foreign_metadata = lookup(foreign, foreign_path) if foreign.may_hold_encryption else NOT_ENCRYPTED
    child_local, child_foreign, qe, mismatch, random = keys
    if local_metadata in (PREFIX, UNKNOWN):
        scope.fail(child_local, field=local_path)
    if foreign_metadata in (PREFIX, UNKNOWN):
        scope.fail(child_foreign, field=foreign_path)
    if (is_encrypted(local_metadata) or is_encrypted(foreign_metadata)) and not scope.scheme.joins_encrypted:
        scope.fail(qe, path=local_path if is_encrypted(local_metadata) else foreign_path)
    if local_metadata != foreign_metadata:
        scope.fail(mismatch, **{names[0]: local_path, names[1]: foreign_path})
    if is_encrypted(local_metadata) and local_metadata.randomized:
        scope.fail(random, **{names[0]: local_path, names[1]: foreign_path})


def _lookup(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        _fail(9, f"the $lookup stage specification must be an object, but found {_type(spec)}")
    _string_options("$lookup", spec, ("from", "as", "localField", "foreignField"), ("as",))
    source = spec.get("from", scope.analysis.collection)
    foreign = _foreign(source, scope)
    if spec.get("let"):
        scope.fail("lookup_let")
    serialized = dict(spec)
    joined = EMPTY
    if "pipeline" in spec:
        inner_scope = replace(scope.with_current(foreign).for_filter(), collection=source, variables={})
        serialized["pipeline"], inner_out = mark_stages(spec["pipeline"], inner_scope)
        joined = UNKNOWN_NODE if inner_out.may_hold_encryption else EMPTY
    elif "localField" not in spec:
        joined = UNKNOWN_NODE if foreign.may_hold_encryption else EMPTY
    if "localField" in spec or "foreignField" in spec:
        _join_fields(spec.get("localField", ""), spec.get("foreignField", ""), scope.current, foreign, scope,
                     ("local", "foreign"), ("lookup_local_child", "lookup_foreign_child", "lookup_encrypted",
                                            "lookup_mismatch", "lookup_random"))
        if "pipeline" not in spec:
            # Which fields of the joined documents are encrypted is not tracked: any later use is refused.
            joined = UNKNOWN_NODE if foreign.may_hold_encryption or scope.current.may_hold_encryption else EMPTY
    # mongod writes the stage back in its own order: from, as, the join fields, then (pipeline
    # syntax only) let, always present, and the re-serialized sub-pipeline.
    ordered = {option: serialized[option] for option in ("from", "as", "localField", "foreignField")
               if option in serialized}
    if "pipeline" in serialized:
        ordered["let"] = spec.get("let") or {}
        ordered["pipeline"] = serialized["pipeline"]
    ordered.update({option: value for option, value in serialized.items() if option not in ordered})
    return [{"$lookup": ordered}], add_path(scope.current, spec["as"], joined, scope)


GRAPH_LOOKUP_ORDER = ("from", "as", "connectToField", "connectFromField", "startWith", "depthField", "maxDepth",
                      "restrictSearchWithMatch")


def _graph_lookup(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        _fail(9, f"the $graphLookup stage specification must be an object, but found {_type(spec)}")
    _string_options("$graphLookup", spec, ("from", "as", "connectFromField", "connectToField", "depthField"),
                    ("from", "as", "connectFromField", "connectToField", "startWith"))
    foreign = _foreign(spec["from"], scope)
    _join_fields(spec["connectFromField"], spec["connectToField"], foreign, foreign, scope, ("source", "target"),
                 ("graph_from_child", "graph_to_child", "graph_encrypted", "graph_mismatch", "graph_random"))
    serialized = dict(spec)
    serialized["startWith"] = _start_with(spec["startWith"], scope)
    if "restrictSearchWithMatch" in spec:
        if not is_document(spec["restrictSearchWithMatch"]):
            _fail(40185, "restrictSearchWithMatch must be an object")
        serialized["restrictSearchWithMatch"] = mark_filter(spec["restrictSearchWithMatch"],
                                                            scope.with_current(foreign))
    if "maxDepth" in spec:
        serialized["maxDepth"] = _max_depth(spec["maxDepth"])
    joined = UNKNOWN_NODE if foreign.may_hold_encryption else EMPTY
    out = add_path(scope.current, spec["as"], joined, scope)
    if isinstance(spec.get("depthField"), str):
        out = with_path(out, spec["depthField"], EMPTY)
    ordered = {option: serialized[option] for option in GRAPH_LOOKUP_ORDER if option in serialized}
    ordered.update({option: value for option, value in serialized.items() if option not in ordered})
    return [{"$graphLookup": ordered}], out


def _start_with(expression: Any, scope: Scope) -> Any:
    """startWith values are compared by the server with connectToField values: passed on as they are."""
    serialized, _ = expressions.analyse(expression, scope)
    return serialized


def _max_depth(value: Any) -> Int64:
    """$graphLookup maxDepth as mongod keeps it: a 64-bit integer."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal128)):
        _fail(40100, f"maxDepth must be numeric, found type: {_type(value)}")
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    if number != number or number in (float("inf"), float("-inf")):
        _fail(40102, "maxDepth could not be represented as a long long")
    depth = int(number)
    if depth < 0:
        _fail(40101, f"maxDepth requires a nonnegative argument, found: {depth}")
    if depth != number or depth >= 2**63:
        _fail(40102, f"maxDepth could not be represented as a long long: {depth}")
    return Int64(depth)


def _geo_near(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        _fail(10065, "invalid parameter: expected an object ($geoNear)")
    _string_options("$geoNear", spec, ("key", "distanceField", "includeLocs"))
    serialized = dict(spec)
    key = spec.get("key")
    if isinstance(key, str) and scope.current.may_hold_encryption and lookup(scope.current, key) is not NOT_ENCRYPTED:
        scope.fail("geo_near_key", field=key)
    if "query" in spec:
        if not is_document(spec["query"]):
            _fail(14, "query must be an object")
        serialized["query"] = mark_filter(spec["query"], scope)
    out = scope.current
    for option in ("distanceField", "includeLocs"):
        if isinstance(spec.get(option), str):
            out = with_path(out, spec[option], EMPTY)
    return [{"$geoNear": serialized}], out


# -- buckets ---------------------------------------------------------------------------------------


def _bucket_auto(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    """$bucketAuto as mongod writes it back: groupBy, buckets (int32), granularity, output (count by default)."""
    if not is_document(spec):
        _fail(40240, f"The argument to $bucketAuto must be an object, but found type: {_type(spec)}")
    for option, argument in spec.items():
        if option == "groupBy":
            if not (isinstance(argument, str) and argument.startswith("$")) and not is_document(argument):
                _fail(40239, "The $bucketAuto 'groupBy' field must be defined as a $-prefixed path or an expression "
                             "object")
        elif option == "buckets":
            if isinstance(argument, bool) or not isinstance(argument, (int, float, Decimal128)):
                _fail(40241, "The $bucketAuto 'buckets' field must be a numeric value, but found type: "
                             f"{_type(argument)}")
            number = argument.to_decimal() if isinstance(argument, Decimal128) else argument
            if number != number or number in (float("inf"), float("-inf")) or number != int(number) \
                    or not -(2**31) <= int(number) < 2**31:
                _fail(40242, "The $bucketAuto 'buckets' field must be representable as a 32-bit integer")
            if int(number) <= 0:
                _fail(40243, f"The $bucketAuto 'buckets' field must be greater than 0, but found: {int(number)}")
        elif option == "output":
            if not is_document(argument):
                _fail(40244, f"The $bucketAuto 'output' field must be an object, but found type: {_type(argument)}")
        elif option != "granularity":
            _fail(40245, f"Unrecognized option to $bucketAuto: {option}")
    if "groupBy" not in spec or "buckets" not in spec:
        _fail(40246, "$bucketAuto requires 'groupBy' and 'buckets' to be specified")
    group_by, value = expressions.analyse(spec["groupBy"], scope)
    expressions.check_output(value, scope)
    if value.may_hold_encryption:
        scope.fail("bucket_auto", reads=value.source)
    buckets = spec["buckets"]
    serialized: dict[str, Any] = {"groupBy": group_by, "buckets": int(
        buckets.to_decimal() if isinstance(buckets, Decimal128) else buckets)}
    if "granularity" in spec:
        serialized["granularity"] = spec["granularity"]
    serialized["output"], out = accumulators(spec.get("output", {"count": {"$sum": 1}}), scope, False,
                                             with_path(EMPTY, "_id", EMPTY))
    return [{"$bucketAuto": serialized}], out


def _bucket_constant(value: Any) -> tuple[bool, Any]:
    """(is a constant, its value) for a $bucket boundary or default, as mongod's parser folds it.

    Only plain values and `$const`/`$literal` are recognized; any other expression is refused (fail
    closed: mongod would also fold constant operator expressions such as `{$add: [1, 2]}`)."""
    if isinstance(value, str):
        return (not value.startswith("$")), value
    if is_document(value):
        if len(value) == 1 and next(iter(value)) in ("$const", "$literal"):
            return True, next(iter(value.values()))
        return all(not key.startswith("$") and _bucket_constant(item)[0] for key, item in value.items()), value
    if isinstance(value, list):
        return all(_bucket_constant(item)[0] for item in value), value
    return True, value


def _bucket_boundaries(boundaries: Any) -> list[Any]:
    if not isinstance(boundaries, list):
        _fail(40200, f"The $bucket 'boundaries' field must be an array, but found type: {_type(boundaries)}.")
    values: list[Any] = []
    for boundary in boundaries:
        constant, value = _bucket_constant(boundary)
        if not constant:
            _fail(40191, "The $bucket 'boundaries' field must be an array of constant values.")
        values.append(value)
    if len(values) < 2:
        _fail(40192, f"The $bucket 'boundaries' field must have at least 2 values, but found {len(values)} value(s).")
    for index in range(1, len(values)):
        lower, upper = values[index - 1], values[index]
        if canonical_rank(lower) != canonical_rank(upper):
            _fail(40193, "All values in the the 'boundaries' option to $bucket must have the same type. Found "
                         f"conflicting types {_type(lower)} and {_type(upper)}.")
        if not order_key(lower) < order_key(upper):
            _fail(40194, f"The 'boundaries' option to $bucket must be sorted, but elements {index - 1} and {index} "
                         "are not in ascending order.")
    return values


def _bucket(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    """$bucket, desugared as mongod parses it: a $group on a $switch over the boundaries, then a $sort."""
    if not is_document(spec):
        _fail(40201, f"Argument to $bucket stage must be an object, but found type: {_type(spec)}.")
    group_by: Any = None
    boundaries: list[Any] = []
    switch: dict[str, Any] = {}
    body_output: dict[str, Any] = {}
    output_given = False
    for option, argument in spec.items():
        if option == "groupBy":
            group_by = argument
            if not (isinstance(argument, str) and argument.startswith("$")) and not is_document(argument):
                _fail(40202, "The $bucket 'groupBy' field must be defined as a $-prefixed path or an expression.")
        elif option == "boundaries":
            boundaries = _bucket_boundaries(argument)
        elif option == "default":
            constant, value = _bucket_constant(argument)
            if not constant:
                _fail(40195, "The $bucket 'default' field must be a constant expression.")
            switch["default"] = value
        elif option == "output":
            output_given = True
            if not is_document(argument):
                _fail(40196, f"The $bucket 'output' field must be an object, but found type: {_type(argument)}.")
            body_output.update(argument)
        else:
            _fail(40197, f"Unrecognized option to $bucket: {option}.")
    if group_by is None or not boundaries:
        _fail(40198, "$bucket requires 'groupBy' and 'boundaries' to be specified.")
    if "default" in switch and canonical_rank(switch["default"]) == canonical_rank(boundaries[0]):
        if not (order_key(switch["default"]) < order_key(boundaries[0])
                or order_key(switch["default"]) >= order_key(boundaries[-1])):
            _fail(40199, "The $bucket 'default' field must be less than the lowest boundary or greater than or equal "
                         "to the highest boundary.")
    branches = [{"case": {"$and": [{"$gte": [group_by, lower]}, {"$lt": [group_by, upper]}]}, "then": lower}
                for lower, upper in itertools.pairwise(boundaries)]
    body = {"_id": {"$switch": {"branches": branches, **switch}}}
    body.update(body_output if output_given else {"count": {"$sum": 1}})
    grouped, out = group(body, scope)
    return [{"$group": grouped}, {"$sort": {"_id": 1}}], out


# -- stages that read no document data, search ---------------------------------------------------------


def _fresh_documents(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    """Stages whose output is metadata about the collection or constants, never its encrypted data."""
    return [{name: spec}], EMPTY


def _search(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    """Atlas Search stages: their queries are executed by the search engine on the plaintext index, so a
    query or filter touching an encrypted path would send its value in the clear."""
    if not is_document(spec):
        _fail(9, f"{name} value must be an object. Found: {_type(spec)}")
    from markd.analysis.search import check_search

    check_search(name, spec, scope)
    out = EMPTY if name == "$searchMeta" else scope.current
    return [{name: spec}], out


def _unsupported(name: str, spec: Any, scope: Scope) -> tuple[Stage, SchemaNode]:
    scope.fail("stage_unsupported", stage=name)


STAGES: dict[str, StageRule] = {
    "$match": _match,
    "$project": _project,
    "$addFields": _add_fields,
    "$set": _add_fields,
    "$unset": _unset,
    "$group": _group,
    "$count": _count,
    "$sort": _sort,
    "$sortByCount": _sort_by_count,
    "$limit": _count_limit,
    "$skip": _count_limit,
    "$sample": _sample,
    "$unwind": _unwind,
    "$replaceRoot": _replace_root,
    "$replaceWith": _replace_root,
    "$lookup": _lookup,
    "$graphLookup": _graph_lookup,
    "$geoNear": _geo_near,
    "$bucketAuto": _bucket_auto,
    "$bucket": _bucket,
    "$collStats": _fresh_documents,
    "$indexStats": _fresh_documents,
    "$documents": _fresh_documents,
    "$listSearchIndexes": _fresh_documents,
    "$search": _search,
    "$searchMeta": _search,
    "$vectorSearch": _search,
}
# Stages mongod knows that query analysis does not support (31011); anything else is unknown (40324).
UNSUPPORTED_STAGES = frozenset({
    "$facet", "$unionWith", "$out", "$merge", "$redact", "$densify", "$fill", "$setWindowFields", "$changeStream",
    "$changeStreamSplitLargeEvent", "$currentOp", "$planCacheStats", "$listSessions", "$listLocalSessions",
    "$shardedDataDistribution", "$listSampledQueries", "$querySettings", "$queryStats", "$rankFusion",
    "$scoreFusion", "$score", "$listClusterCatalog", "$setMetadata",
})


def stage_rule(name: str) -> StageRule:
    rule = STAGES.get(name)
    if rule is not None:
        return rule
    if name in UNSUPPORTED_STAGES or name.startswith("$_internal"):
        return _unsupported
    _fail(40324, f"Unrecognized pipeline stage name: '{name}'")


def mark_stages(pipeline: Any, scope: Scope) -> tuple[list[Any], SchemaNode]:
    """The pipeline as mongod re-serializes it, marked, and the schema of its output documents."""
    if not isinstance(pipeline, list):
        _fail(14, "'pipeline' option must be specified as an array")
    rules = []
    for stage in pipeline:
        if not is_document(stage) or len(stage) != 1:
            _fail(40323, "A pipeline stage specification object must contain exactly one field.")
        name, spec = next(iter(stage.items()))
        try:
            rules.append((name, spec, stage_rule(name)))  # every stage parsed before any is analysed, as mongod does
        except CommandError as refusal:
            refusal.locate(stage=name)
            raise
    serialized: list[Any] = []
    for name, spec, rule in rules:
        try:
            stages, current = rule(name, spec, scope)
        except CommandError as refusal:
            refusal.locate(stage=name)
            raise
        scope = scope.with_current(current)
        serialized.extend(stages)
    return serialized, scope.current


UPDATE_STAGES = frozenset({"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"})


def mark_update_pipeline(pipeline: Any, scope: Scope) -> list[Any]:
    """A pipeline-style update: allowed only when it leaves the encrypted fields as they were."""
    if not isinstance(pipeline, list):
        _fail(14, "'pipeline' option must be specified as an array")
    for stage in pipeline:
        if not is_document(stage) or len(stage) != 1:
            _fail(40323, "A pipeline stage specification object must contain exactly one field.")
        stage_name = next(iter(stage))
        if stage_name not in UPDATE_STAGES:
            stage_rule(stage_name)  # an unknown stage is refused as such first
            _fail(72, f"{stage_name} is not allowed to be used within an update")
    serialized, out = mark_stages(pipeline, scope)
    if not scope.scheme.same_encryption(out, scope.current):
        scope.fail("pipeline_update_schema")
    return serialized



