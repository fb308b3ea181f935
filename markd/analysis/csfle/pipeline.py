"""Aggregation pipelines against a CSFLE schema: one rule per stage, in `STAGES`.

Each rule reads one stage with the schema of the documents entering it, returns the stage(s) as
mongod serializes them (some stages desugar: `$count` -> `$group` + `$project`...) and the schema
of the documents leaving it.  A stage without a row is refused (31011).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from bson import Decimal128, Int64

from markd import bsonvalues
from markd.analysis import paths
from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.expressions import FIELD, LITERAL, ROOT, ExpressionAnalysis, Value
from markd.analysis.csfle.match import mark_filter
from markd.analysis.csfle.ordering import canonical_rank, order_key
from markd.analysis.csfle.placeholders import MarkContext
from markd.analysis.csfle.schema import (
    EMPTY,
    NOT_ENCRYPTED,
    PREFIX,
    UNKNOWN,
    UNKNOWN_NODE,
    Encrypted,
    EncryptionSchema,
    SchemaNode,
    lookup,
    node,
    subtree,
)
from markd.analysis.csfle.walk import is_document

DOCUMENT = "document"  # a nested projection object: its fields computed one by one


@dataclass(frozen=True, slots=True)
class PipelineContext:
    """What every stage rule may consult: the namespace, the other namespaces' schemas, the collation."""

    database: str
    collection: str
    schemas: Mapping[str, EncryptionSchema] = field(default_factory=dict)  # "db.coll" -> schema
    collation_simple: bool = True
    multi_schema: bool = False
    own: EncryptionSchema | None = None  # the aggregated collection's schema


def involved_collections(pipeline: Any) -> set[str]:
    """Every other collection a pipeline names ($lookup, $graphLookup, $unionWith, $out, $merge, nested)."""
    found: set[str] = set()
    if not isinstance(pipeline, list):
        return found
    for stage in pipeline:
        if not is_document(stage) or len(stage) != 1:
            continue
        name, spec = next(iter(stage.items()))
        target: Any = None
        if name in ("$lookup", "$graphLookup") and is_document(spec):
            target = spec.get("from")
            found |= involved_collections(spec.get("pipeline"))
        elif name == "$unionWith":
            target = spec.get("coll") if is_document(spec) else spec
            if is_document(spec):
                found |= involved_collections(spec.get("pipeline"))
        elif name == "$out":
            target = spec.get("coll") if is_document(spec) else spec
        elif name == "$merge":
            target = spec.get("into") if is_document(spec) else spec
            target = target.get("coll") if is_document(target) else target
        elif name == "$facet" and is_document(spec):
            for sub in spec.values():
                found |= involved_collections(sub)
        if isinstance(target, str):
            found.add(target)
    return found


def check_involved_collections(pipeline: Any, context: PipelineContext) -> None:
    """One schema, one collection; several schemas: one for every collection the pipeline reads."""
    others = involved_collections(pipeline) - {context.collection}
    if not context.multi_schema:
        if others:
            fail("other_collection")
        return
    for collection in sorted(others):
        namespace = f"{context.database}.{collection}"
        if namespace not in context.schemas:
            fail("missing_ns_schema", ns=namespace)


Stage = list[dict[str, Any]]
StageRule = Callable[[str, Any, SchemaNode, PipelineContext], tuple[Stage, SchemaNode]]


def _mark_context(current: SchemaNode, context: PipelineContext) -> MarkContext:
    return MarkContext(EncryptionSchema(current), comparison=True, collation_simple=context.collation_simple)


def _analysis(current: SchemaNode, context: PipelineContext) -> ExpressionAnalysis:
    return ExpressionAnalysis(current, _mark_context(current, context))


def with_path(root: SchemaNode, path: str, child: SchemaNode) -> SchemaNode:
    """`root` with the subschema at dotted `path` replaced by `child`."""
    parts = paths.split(path)
    if not parts:
        return child
    head, rest = parts[0], paths.join(parts[1:])
    if root.encrypted is not None or root.unknown:
        base = EMPTY if root.encrypted is not None else UNKNOWN_NODE
        return node(properties={head: with_path(base, rest, child)}) if not root.unknown else UNKNOWN_NODE
    current = subtree(root, head) if rest else EMPTY
    properties = dict(root.properties)
    properties[head] = with_path(current, rest, child) if rest else child
    return node(None, properties, root.patterns, root.additional)


def _with_computed(root: SchemaNode, path: str, child: SchemaNode) -> SchemaNode:
    """A computed field: on a dotted path it may land inside array elements, so encryption there is unknown."""
    parts = paths.split(path)
    if len(parts) > 1 and child.may_hold_encryption:
        return with_path(root, parts[0], UNKNOWN_NODE)
    return with_path(root, path, child)


def _value_node(value: Value) -> SchemaNode:
    """The schema of a computed field holding `value`."""
    if value.kind == DOCUMENT:
        return value.node
    if value.kind in (FIELD, ROOT):
        if isinstance(value.metadata, Encrypted):
            return node(value.metadata)
        if value.metadata is UNKNOWN:
            return UNKNOWN_NODE
        return value.node
    if value.metadata is UNKNOWN:
        return UNKNOWN_NODE
    if isinstance(value.metadata, Encrypted):
        return node(value.metadata)
    return EMPTY


# -- stage rules -------------------------------------------------------------------------------------


def _match(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        fail("bad_field_type", field="$match", actual="other", expected="object")
    return [{"$match": mark_filter(spec, _mark_context(current, context))}], current


def _count_limit(name: str, spec: Any, current: SchemaNode, context: PipelineContext
                 ) -> tuple[Stage, SchemaNode]:
    """$limit/$skip: mongod keeps the count as a 64-bit integer and writes it back as one."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float)) or spec < 0 or spec != int(spec):
        from markd.errors import CommandError

        raise CommandError(15957 if name == "$limit" else 15956, f"invalid argument to {name} stage")
    return [{name: Int64(int(spec))}], current


def _sample(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    size = spec.get("size") if is_document(spec) else None
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
        from markd.errors import CommandError

        raise CommandError(28747, "size argument to $sample must be a number")
    return [{"$sample": {"size": Int64(int(size))}}], current


def _is_inclusion(value: Any) -> bool | None:
    """True for 1/true, False for 0/false, None for a computed field."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    return None


def _project(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not is_document(spec) or not spec:
        fail("bad_field_type", field="$project", actual="other", expected="non-empty object")
    analysis = _analysis(current, context)
    kinds = {_is_inclusion(v) for k, v in spec.items() if k != "_id"} or {_is_inclusion(spec.get("_id", 1))}
    exclusion = kinds == {False}
    serialized: dict[str, Any] = {}
    if exclusion:
        out = current
        for path in spec:
            serialized[path] = False
            out = with_path(out, path, EMPTY)
        serialized.setdefault("_id", True)  # mongod writes the implicit _id inclusion out
        return [{"$project": serialized}], out
    out = EMPTY
    if "_id" not in spec:
        serialized["_id"] = True
        out = with_path(out, "_id", subtree(current, "_id"))
    for path, value in spec.items():
        included = _is_inclusion(value)
        if included is True:
            serialized[path] = True
            out = with_path(out, path, subtree(current, path))
        elif included is False:
            serialized[path] = False  # only _id may be excluded in an inclusion projection
        else:
            expression, result = _computed(analysis, value)
            serialized[path] = expression
            out = _with_computed(out, path, _value_node(result))
    return [{"$project": serialized}], out


def _computed(analysis: ExpressionAnalysis, value: Any) -> tuple[Any, Value]:
    if is_document(value) and value and not next(iter(value)).startswith("$"):
        # A nested projection object: each field computed in turn.
        fields: dict[str, Any] = {}
        result = EMPTY
        for name, item in value.items():
            fields[name], inner = _computed(analysis, item)
            result = with_path(result, name, _value_node(inner))
        return fields, Value(DOCUMENT, PREFIX if result.may_hold_encryption else NOT_ENCRYPTED, "", result)
    return analysis.forwarded(value)


def _add_fields(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        fail("bad_field_type", field=name, actual="other", expected="object")
    analysis = _analysis(current, context)
    serialized: dict[str, Any] = {}
    out = current
    for path, value in spec.items():
        expression, result = _computed(analysis, value)
        serialized[path] = expression
        out = _with_computed(out, path, _value_node(result))
    return [{name: serialized}], out


def _unset(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    fields = [spec] if isinstance(spec, str) else spec
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        fail("bad_field_type", field="$unset", actual="other", expected="string or array of strings")
    return _project("$project", {f: False for f in fields}, current, context)


GROUP_KEEPS = {"$first", "$last"}
GROUP_COLLECTS = {"$push", "$addToSet"}


def _group_key(analysis: ExpressionAnalysis, key: Any, path: str) -> tuple[Any, SchemaNode]:
    if is_document(key) and key and not next(iter(key)).startswith("$"):
        fields: dict[str, Any] = {}
        out = EMPTY
        for name, item in key.items():
            fields[name], child = _group_key(analysis, item, paths.join(path, name))
            out = with_path(out, name, child)
        return fields, out
    expression, value = analysis.forwarded(key)
    if isinstance(value.metadata, Encrypted):
        if not value.metadata.deterministic:
            fail("group_key", path=path)
        return expression, node(value.metadata)
    if value.metadata is UNKNOWN:
        fail("group_key", path=path)
    if value.kind in (FIELD, ROOT) and value.node.may_hold_encryption:
        _refuse_random_below(value.node, path)
        return expression, value.node
    if value.kind not in (FIELD, ROOT, LITERAL) and value.metadata is PREFIX:
        fail("group_key", path=path)
    return expression, EMPTY


def _refuse_random_below(current: SchemaNode, path: str) -> None:
    if current.unknown:
        fail("group_key", path=path)
    if current.encrypted is not None:
        if not current.encrypted.deterministic:
            fail("group_key", path=path)
        return
    for name, child in current.properties.items():
        _refuse_random_below(child, paths.join(path, name))
    for _, child in current.patterns:
        _refuse_random_below(child, path)
    if current.additional is not None:
        _refuse_random_below(current.additional, path)


def _accumulator(analysis: ExpressionAnalysis, field_name: str, spec: Any) -> tuple[Any, SchemaNode]:
    if not is_document(spec) or len(spec) != 1:
        from markd.errors import CommandError

        raise CommandError(40238, f"The field '{field_name}' must specify one accumulator")
    op, argument = next(iter(spec.items()))
    if op == "$count":
        return {"$sum": {"$const": 1}}, EMPTY
    expression, value = analysis.forwarded(argument)
    encrypted = value.metadata is not None and (isinstance(value.metadata, Encrypted)
                                                or value.metadata in (PREFIX, UNKNOWN))
    if op in GROUP_KEEPS:
        return {op: expression}, _value_node(value)
    if op in GROUP_COLLECTS:
        if op == "$addToSet" and encrypted:
            if value.metadata is UNKNOWN or (isinstance(value.metadata, Encrypted)
                                             and not value.metadata.deterministic):
                fail("add_to_set", field=field_name)
            if value.metadata is PREFIX:
                _refuse_random_below(value.node, field_name)
        return {op: expression}, UNKNOWN_NODE if encrypted else EMPTY
    if op == "$accumulator":
        if encrypted:
            fail("accumulator", op=op)
        return {op: expression}, EMPTY
    if encrypted:
        fail("accumulator", op=op)
    return {op: expression}, EMPTY


def _group(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not is_document(spec) or "_id" not in spec:
        from markd.errors import CommandError

        raise CommandError(15955, "a group specification must include an _id")
    analysis = _analysis(current, context)
    serialized: dict[str, Any] = {}
    serialized["_id"], key_node = _group_key(analysis, spec["_id"], "_id")
    out = with_path(EMPTY, "_id", key_node)
    for field_name, accumulator in spec.items():
        if field_name == "_id":
            continue
        serialized[field_name], child = _accumulator(analysis, field_name, accumulator)
        out = with_path(out, field_name, child)
    return [{"$group": serialized}], out


def _count(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not isinstance(spec, str) or not spec or spec.startswith("$") or "." in spec:
        from markd.errors import CommandError

        raise CommandError(40156, "the count field must be a non-empty string")
    stages = [{"$group": {"_id": {"$const": None}, spec: {"$sum": {"$const": 1}}}},
              {"$project": {"_id": False, spec: True}}]
    return stages, with_path(EMPTY, spec, EMPTY)


def _sort_keys(spec: Mapping[str, Any], current: SchemaNode) -> None:
    for path, direction in spec.items():
        if is_document(direction) and "$meta" in direction:
            continue
        metadata = lookup(current, path)
        if isinstance(metadata, Encrypted) or metadata in (PREFIX, UNKNOWN):
            fail("sort", path=path)


def _sort(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        fail("bad_field_type", field="$sort", actual="other", expected="object")
    _sort_keys(spec, current)
    # mongod writes directions back as int32 1 / -1 ($meta sorts as they were).
    directions = {path: ((1 if direction > 0 else -1)
                         if isinstance(direction, (int, float)) and not isinstance(direction, bool) else direction)
                  for path, direction in spec.items()}
    return [{"$sort": directions}], current


def _sort_by_count(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    grouped, out = _group("$group", {"_id": spec, "count": {"$sum": 1}}, current, context)
    return [*grouped, {"$sort": {"count": -1}}], out


def _unwind(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    options = dict(spec) if is_document(spec) else {"path": spec}
    path = options.get("path")
    if not isinstance(path, str) or not path.startswith("$"):
        from markd.errors import CommandError

        raise CommandError(28808, "$unwind path must be prefixed by a '$'")
    metadata = lookup(current, path[1:])
    if isinstance(metadata, Encrypted) and not metadata.deterministic:
        fail("unwind_random")
    out = current
    index_field = options.get("includeArrayIndex")
    if isinstance(index_field, str):
        out = with_path(out, index_field, EMPTY)
    # mongod writes the document form back: path, preserveNullAndEmptyArrays only when true, then
    # includeArrayIndex.  Options it would refuse are refused with its codes.
    from markd.errors import CommandError

    written: dict[str, Any] = {"path": path}
    for option, value in options.items():
        if option == "preserveNullAndEmptyArrays":
            if not isinstance(value, bool):
                raise CommandError(28809, "expected a boolean for the preserveNullAndEmptyArrays option to $unwind "
                                          f"stage, got {bsonvalues.bson_type(value)}")
        elif option == "includeArrayIndex":
            if not isinstance(value, str):
                raise CommandError(28810, "expected a non-empty string for the includeArrayIndex option to $unwind "
                                          f"stage, got {bsonvalues.bson_type(value)}")
            if not value:
                raise CommandError(28810, "expected a non-empty string for the includeArrayIndex option to $unwind "
                                          "stage, got string")
            if value.startswith("$"):
                raise CommandError(28822, f"includeArrayIndex option to $unwind stage should not be prefixed with a "
                                          f"'$': {value}")
        elif option != "path":
            raise CommandError(28811, f"unrecognized option to $unwind stage: {option}")
    if options.get("preserveNullAndEmptyArrays") is True:
        written["preserveNullAndEmptyArrays"] = True
    if isinstance(index_field, str):
        written["includeArrayIndex"] = index_field
    return [{"$unwind": written}], out


def _replace_root(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    new_root = spec.get("newRoot") if name == "$replaceRoot" and is_document(spec) else spec
    expression, value = _computed(_analysis(current, context), new_root)
    if isinstance(value.metadata, Encrypted):
        fail("replace_root")
    if value.metadata is UNKNOWN:
        out = UNKNOWN_NODE
    else:
        out = value.node if value.kind in (FIELD, ROOT, DOCUMENT) else EMPTY
    return [{"$replaceRoot": {"newRoot": expression}}], out


def _string_options(stage: str, spec: Mapping[str, Any], names: tuple[str, ...], required: tuple[str, ...] = ()
                    ) -> None:
    """mongod's own parse of a stage's string arguments, before any encryption rule."""
    for option in names:
        if option in spec and not isinstance(spec[option], str):
            from markd.errors import CommandError

            raise CommandError(9, f"{stage} argument '{option}' must be a string")
    for option in required:
        if option not in spec:
            from markd.errors import CommandError

            raise CommandError(9, f"{stage} requires '{option}' to be specified")


def _foreign_schema(source: Any, current: SchemaNode, context: PipelineContext) -> SchemaNode:
    """The schema of the documents a $lookup/$graphLookup joins (involved namespaces were checked up front)."""
    if not isinstance(source, str) or source == context.collection:
        return current if context.own is None else context.own.root
    schema = context.schemas.get(f"{context.database}.{source}")
    return schema.root if schema is not None else UNKNOWN_NODE


def _lookup(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        fail("bad_field_type", field="$lookup", actual="other", expected="object")
    _string_options("$lookup", spec, ("from", "as", "localField", "foreignField"), ("as",))
    if spec.get("let"):
        fail("lookup_let")
    foreign = _foreign_schema(spec.get("from", context.collection), current, context)
    serialized = dict(spec)
    joined = EMPTY
    if "pipeline" in spec:
        source = spec.get("from", context.collection)
        serialized["pipeline"], inner_out = mark_stages(spec["pipeline"], foreign,
                                                        replace(context, collection=source))
        joined = UNKNOWN_NODE if inner_out.may_hold_encryption else EMPTY
    elif "localField" not in spec:
        joined = UNKNOWN_NODE if foreign.may_hold_encryption else EMPTY
    if "localField" in spec or "foreignField" in spec:
        local_path, foreign_path = spec.get("localField", ""), spec.get("foreignField", "")
        local, remote = lookup(current, local_path), lookup(foreign, foreign_path)
        if local in (PREFIX, UNKNOWN):
            fail("lookup_local_child", field=local_path)
        if remote in (PREFIX, UNKNOWN):
            fail("lookup_foreign_child", field=foreign_path)
        if local != remote:
            fail("lookup_mismatch", local=local_path, foreign=foreign_path)
        if isinstance(local, Encrypted) and not local.deterministic:
            fail("lookup_random", local=local_path, foreign=foreign_path)
        if "pipeline" not in spec:
            # mongocryptd cannot tell what the joined documents hold: any later use is refused.
            joined = UNKNOWN_NODE
    # mongod writes the stage back in its own order: from, as, the join fields, then (pipeline
    # syntax only) let, always present, and the re-serialized sub-pipeline.
    ordered = {option: serialized[option] for option in ("from", "as", "localField", "foreignField")
               if option in serialized}
    if "pipeline" in serialized:
        ordered["let"] = {}
        ordered["pipeline"] = serialized["pipeline"]
    ordered.update({option: value for option, value in serialized.items() if option not in ordered})
    return [{"$lookup": ordered}], with_path(current, spec["as"], joined)


def _graph_lookup(name: str, spec: Any, current: SchemaNode, context: PipelineContext
                  ) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        fail("bad_field_type", field="$graphLookup", actual="other", expected="object")
    _string_options("$graphLookup", spec, ("from", "as", "connectFromField", "connectToField"),
                    ("from", "as", "connectFromField", "connectToField", "startWith"))
    source_field, target_field = spec["connectFromField"], spec["connectToField"]
    source_metadata, target_metadata = lookup(current, source_field), lookup(current, target_field)
    if source_metadata in (PREFIX, UNKNOWN):
        fail("graph_from_child", field=source_field)
    if target_metadata in (PREFIX, UNKNOWN):
        fail("graph_to_child", field=target_field)
    if source_metadata != target_metadata:
        fail("graph_mismatch", source=source_field, target=target_field)
    if isinstance(target_metadata, Encrypted) and not target_metadata.deterministic:
        fail("graph_random", source=source_field, target=target_field)
    serialized = dict(spec)
    serialized["startWith"], _ = _analysis(current, context).forwarded(spec["startWith"])
    if "restrictSearchWithMatch" in spec:
        if not is_document(spec["restrictSearchWithMatch"]):
            fail("bad_field_type", field="restrictSearchWithMatch", actual="other", expected="object")
        serialized["restrictSearchWithMatch"] = mark_filter(spec["restrictSearchWithMatch"],
                                                            _mark_context(current, context))
    if "maxDepth" in spec:
        serialized["maxDepth"] = _max_depth(spec["maxDepth"])
    joined = UNKNOWN_NODE if current.may_hold_encryption else EMPTY
    # mongod's order: from, as, connectToField, connectFromField, startWith, then the options.
    ordered = {option: serialized[option] for option in GRAPH_LOOKUP_ORDER if option in serialized}
    ordered.update({option: value for option, value in serialized.items() if option not in ordered})
    return [{"$graphLookup": ordered}], with_path(current, spec["as"], joined)


GRAPH_LOOKUP_ORDER = ("from", "as", "connectToField", "connectFromField", "startWith", "depthField", "maxDepth",
                      "restrictSearchWithMatch")


def _max_depth(value: Any) -> Int64:
    """$graphLookup maxDepth as mongod keeps it: a 64-bit integer."""
    from markd.errors import CommandError

    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal128)):
        raise CommandError(40100, f"maxDepth must be numeric, found type: {bsonvalues.bson_type(value)}")
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    if number != number or number in (float("inf"), float("-inf")):
        raise CommandError(40102, "maxDepth could not be represented as a long long")  # unconfirmed for NaN/inf
    depth = int(number)
    if depth < 0:
        raise CommandError(40101, f"maxDepth requires a nonnegative argument, found: {depth}")
    if depth != number or depth >= 2**63:
        raise CommandError(40102, f"maxDepth could not be represented as a long long: {depth}")
    return Int64(depth)


def _geo_near(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if not is_document(spec):
        fail("bad_field_type", field="$geoNear", actual="other", expected="object")
    _string_options("$geoNear", spec, ("key", "distanceField", "includeLocs"))
    serialized = dict(spec)
    key = spec.get("key")
    if isinstance(key, str) and lookup(current, key) is not NOT_ENCRYPTED:
        fail("geo_near_key", field=key)
    if "query" in spec:
        if not is_document(spec["query"]):
            fail("bad_field_type", field="$geoNear.query", actual="other", expected="object")
        serialized["query"] = mark_filter(spec["query"], _mark_context(current, context))
    out = current
    for option in ("distanceField", "includeLocs"):
        if isinstance(spec.get(option), str):
            out = with_path(out, spec[option], EMPTY)
    return [{"$geoNear": serialized}], out


def _bucket_auto(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    """$bucketAuto as mongod writes it back: groupBy, buckets (int32), granularity, output (count by default)."""
    if not is_document(spec):
        _bucket_error(40240, "The argument to $bucketAuto must be an object, but found type: "
                             f"{bsonvalues.bson_type(spec)}")
    for option, argument in spec.items():
        if option == "groupBy":
            if not (isinstance(argument, str) and argument.startswith("$")) and not is_document(argument):
                _bucket_error(40239, "The $bucketAuto 'groupBy' field must be defined as a $-prefixed path or an "
                                     "expression object")
        elif option == "buckets":
            if isinstance(argument, bool) or not isinstance(argument, (int, float, Decimal128)):
                _bucket_error(40241, "The $bucketAuto 'buckets' field must be a numeric value, but found type: "
                                     f"{bsonvalues.bson_type(argument)}")
            number = argument.to_decimal() if isinstance(argument, Decimal128) else argument
            if number != number or number in (float("inf"), float("-inf")) or number != int(number) \
                    or not -(2**31) <= int(number) < 2**31:
                _bucket_error(40242, "The $bucketAuto 'buckets' field must be representable as a 32-bit integer")
            if int(number) <= 0:
                _bucket_error(40243, "The $bucketAuto 'buckets' field must be greater than 0, but found: "
                                     f"{int(number)}")
        elif option == "output":
            if not is_document(argument):
                _bucket_error(40244, "The $bucketAuto 'output' field must be an object, but found type: "
                                     f"{bsonvalues.bson_type(argument)}")
        elif option != "granularity":
            _bucket_error(40245, f"Unrecognized option to $bucketAuto: {option}")
    if "groupBy" not in spec or "buckets" not in spec:
        _bucket_error(40246, "$bucketAuto requires 'groupBy' and 'buckets' to be specified")
    analysis = _analysis(current, context)
    group_by, value = analysis.forwarded(spec["groupBy"])
    if value.may_be_encrypted or value.kind == ROOT:
        fail("bucket_auto")
    buckets = spec["buckets"]
    serialized: dict[str, Any] = {"groupBy": group_by, "buckets": int(
        buckets.to_decimal() if isinstance(buckets, Decimal128) else buckets)}
    if "granularity" in spec:
        serialized["granularity"] = spec["granularity"]  # mongod checks the name; nothing here is encrypted
    out = with_path(EMPTY, "_id", EMPTY)
    output: dict[str, Any] = {}
    for field_name, accumulator in spec.get("output", {"count": {"$sum": 1}}).items():
        output[field_name], child = _accumulator(analysis, field_name, accumulator)
        out = with_path(out, field_name, child)
    serialized["output"] = output
    return [{"$bucketAuto": serialized}], out


def _bucket_error(code: int, message: str) -> NoReturn:
    from markd.errors import CommandError

    raise CommandError(code, message)


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
        _bucket_error(40200, "The $bucket 'boundaries' field must be an array, but found type: "
                             f"{bsonvalues.bson_type(boundaries)}.")
    values: list[Any] = []
    for boundary in boundaries:
        constant, value = _bucket_constant(boundary)
        if not constant:
            # mongod quotes the value; markd leaves it out of the message (it may be sensitive).
            _bucket_error(40191, "The $bucket 'boundaries' field must be an array of constant values.")
        values.append(value)
    if len(values) < 2:
        _bucket_error(40192, f"The $bucket 'boundaries' field must have at least 2 values, but found {len(values)} "
                             "value(s).")
    for index in range(1, len(values)):
        lower, upper = values[index - 1], values[index]
        if canonical_rank(lower) != canonical_rank(upper):
            _bucket_error(40193, "All values in the the 'boundaries' option to $bucket must have the same type. "
                                 f"Found conflicting types {bsonvalues.bson_type(lower)} and "
                                 f"{bsonvalues.bson_type(upper)}.")
        if not order_key(lower) < order_key(upper):
            # mongod quotes both values; markd leaves them out of the message.
            _bucket_error(40194, f"The 'boundaries' option to $bucket must be sorted, but elements {index - 1} and "
                                 f"{index} are not in ascending order.")
    return values


def _bucket(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    """$bucket, desugared as mongod parses it: a $group on a $switch over the boundaries, then a $sort."""
    if not is_document(spec):
        _bucket_error(40201, f"Argument to $bucket stage must be an object, but found type: "
                             f"{bsonvalues.bson_type(spec)}.")
    group_by: Any = None
    boundaries: list[Any] = []
    switch: dict[str, Any] = {}
    group: dict[str, Any] = {}
    output_given = False
    for option, argument in spec.items():
        if option == "groupBy":
            group_by = argument
            if not (isinstance(argument, str) and argument.startswith("$")) and not is_document(argument):
                _bucket_error(40202, "The $bucket 'groupBy' field must be defined as a $-prefixed path or an "
                                     "expression.")
        elif option == "boundaries":
            boundaries = _bucket_boundaries(argument)
        elif option == "default":
            constant, value = _bucket_constant(argument)
            if not constant:
                _bucket_error(40195, "The $bucket 'default' field must be a constant expression.")
            switch["default"] = value
        elif option == "output":
            output_given = True
            if not is_document(argument):
                _bucket_error(40196, "The $bucket 'output' field must be an object, but found type: "
                                     f"{bsonvalues.bson_type(argument)}.")
            group.update(argument)
        else:
            _bucket_error(40197, f"Unrecognized option to $bucket: {option}.")
    if group_by is None or not boundaries:
        _bucket_error(40198, "$bucket requires 'groupBy' and 'boundaries' to be specified.")
    if "default" in switch and canonical_rank(switch["default"]) == canonical_rank(boundaries[0]):
        if not (order_key(switch["default"]) < order_key(boundaries[0])
                or order_key(switch["default"]) >= order_key(boundaries[-1])):
            _bucket_error(40199, "The $bucket 'default' field must be less than the lowest boundary or greater "
                                 "than or equal to the highest boundary.")
    branches = [{"case": {"$and": [{"$gte": [group_by, lower]}, {"$lt": [group_by, upper]}]}, "then": lower}
                for lower, upper in itertools.pairwise(boundaries)]
    body = {"_id": {"$switch": {"branches": branches, **switch}}}
    body.update(group if output_given else {"count": {"$sum": 1}})
    grouped, out = _group("$group", body, current, context)
    return [*grouped, {"$sort": {"_id": 1}}], out


def _fresh_documents(name: str, spec: Any, current: SchemaNode, context: PipelineContext
                     ) -> tuple[Stage, SchemaNode]:
    """Stages whose output is metadata about the collection, never its encrypted data."""
    return [{name: spec}], EMPTY


def _search(name: str, spec: Any, current: SchemaNode, context: PipelineContext) -> tuple[Stage, SchemaNode]:
    if is_document(spec) and spec.get("returnStoredSource") and current.may_hold_encryption:
        fail("stored_source")
    return [{name: spec}], current


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
    "$documents": _fresh_documents,
    "$search": _search,
    "$searchMeta": _fresh_documents,
    "$vectorSearch": _search,
    "$listSearchIndexes": _fresh_documents,
}


def mark_stages(pipeline: Any, current: SchemaNode, context: PipelineContext) -> tuple[list[Any], SchemaNode]:
    """The pipeline as mongod re-serializes it, marked, and the schema of its output documents."""
    if not isinstance(pipeline, list):
        fail("pipeline_not_array")
    serialized: list[Any] = []
    for stage in pipeline:
        if not is_document(stage) or len(stage) != 1:
            fail("stage_not_object")
        name, spec = next(iter(stage.items()))
        rule = STAGES.get(name)
        if rule is None:
            fail("stage_unsupported", stage=name)
        stages, current = rule(name, spec, current, context)
        serialized.extend(stages)
    return serialized, current


def mark_update_pipeline(pipeline: Any, schema: EncryptionSchema, context: MarkContext) -> list[Any]:
    """A pipeline-style update: allowed only when it leaves the encrypted fields as they were."""
    if not isinstance(pipeline, list):
        fail("pipeline_not_array")
    for stage in pipeline:
        if not is_document(stage) or len(stage) != 1:
            fail("stage_not_object")
        stage_name = next(iter(stage))
        if stage_name not in ("$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"):
            from markd.errors import CommandError

            raise CommandError(ERROR_UPDATE_STAGE, f"{stage_name} is not allowed to be used within an update")
    pipeline_context = PipelineContext("", "", collation_simple=context.collation_simple)
    serialized, out = mark_stages(pipeline, schema.root, pipeline_context)
    if _encryption_shape(out) != _encryption_shape(schema.root):
        fail("pipeline_update_schema")
    return serialized


ERROR_UPDATE_STAGE = 72  # InvalidOptions, as mongod refuses non-projection stages in update pipelines


def _encryption_shape(current: SchemaNode, depth: int = 0) -> Any:
    """A comparable summary of where encryption sits in a tree."""
    if depth > 50:
        return "deep"
    if current.unknown:
        return "unknown"
    if current.encrypted is not None:
        return current.encrypted
    return (
        tuple(sorted((k, _encryption_shape(v, depth + 1)) for k, v in current.properties.items()
                     if v.may_hold_encryption)),
        tuple((p.pattern, _encryption_shape(v, depth + 1)) for p, v in current.patterns if v.may_hold_encryption),
        _encryption_shape(current.additional, depth + 1) if current.additional is not None
        and current.additional.may_hold_encryption else None,
    )
