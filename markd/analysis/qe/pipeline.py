"""Aggregation pipelines: one row per stage in `STAGES`; a stage without a row is refused.

The schema flows through the pipeline, as mongocryptd's does: stages that keep documents as they
are ($match, $sort, $limit...) keep it; a bare "$field" copied by $project/$addFields/$set carries
the field's metadata to its new name; a field overwritten by a computed value is plain afterwards;
stages that compute new documents from plain fields only ($group, $count...) leave nothing
encrypted behind; $lookup re-roots the joined collection's fields under `as`. A stage that would
carry an encrypted value somewhere markd cannot track (a copy to a dotted path...) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from markd.analysis.qe.context import Context
from markd.analysis.qe.errors import error
from markd.analysis.qe.expressions import field_path, mark_expression
from markd.analysis.qe.fields import PLAIN, Below, Encrypted, EncryptedField, EncryptedFields, Plain, Prefix
from markd.analysis.qe.match import mark_filter

StageRule = Callable[[str, Any, Context], tuple[Any, Context]]

# Accumulators that compute over values: an encrypted operand is refused with 51221.
ARITHMETIC_ACCUMULATORS = frozenset({"$sum", "$avg", "$min", "$max", "$stdDevPop", "$stdDevSamp", "$median",
                                     "$percentile", "$minN", "$maxN"})


def _empty(ctx: Context) -> Context:
    return ctx.with_schema(EncryptedFields(ctx.schema.namespace, ()))


def _match(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    return mark_filter(spec, ctx), ctx


def _unchanged(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    return spec, ctx


def _nothing_encrypted_after(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """Stages whose output holds no document fields ($count, $collStats...)."""
    return spec, _empty(ctx)


def _sort(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    if not isinstance(spec, Mapping):
        raise error("MALFORMED", detail="$sort key specification must be an object")
    for path in spec:
        if not isinstance(ctx.schema.lookup(path), Plain):
            raise error("SORT", path=path)
    return spec, ctx


def _is_inclusion_flag(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _copied_fields(source: str, target: str, ctx: Context) -> tuple[EncryptedField, ...]:
    """The encrypted fields at or below `source`, re-rooted at `target` (what a copy carries along)."""
    return tuple(replace(f, path=target + f.path[len(source):]) for f in ctx.schema.fields
                 if f.path == source or f.path.startswith(source + "."))


def _projection(spec: Mapping[str, Any], ctx: Context, computed_only: bool, edits: list[tuple[str, str | None]],
                prefix: str = "") -> dict[str, Any]:
    """$project/$addFields specs: inclusion flags kept; computed values marked.

    mongocryptd lets a computed field be a plain copy of a non-dotted field path (`{b: "$a"}`): the value
    is moved opaquely and `b` takes `a`'s encryption metadata from then on. Every other computed value
    goes through expression marking (which refuses reading ciphertext) and is plain afterwards.
    `edits` collects (target, copied source or None) for the schema that flows on.
    """
    marked: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}.{key}" if prefix else key
        if not computed_only and _is_inclusion_flag(value):
            marked[key] = value
            continue
        if isinstance(value, Mapping) and value and not next(iter(value)).startswith("$"):
            marked[key] = _projection(value, ctx, computed_only, edits, path)
            continue
        reads = field_path(value)
        target = ctx.schema.lookup(path)
        source = ctx.schema.lookup(reads) if reads is not None else PLAIN
        assert reads is None or isinstance(value, str)
        # Only a bare "$x" is moved opaquely; "$a.b" or "$$ROOT.x" is marked like any expression.
        opaque_copy = isinstance(value, str) and not value.startswith("$$") and "." not in value
        if opaque_copy and isinstance(source, (Encrypted, Prefix)):
            if not isinstance(target, Plain):
                # e.g. {$addFields: {f: "$f"}}: mongocryptd refuses the encrypted field over an encrypted field.
                raise error("ENCRYPTED_PREFIX_OF_ENCRYPTED")
            if "." in path:
                # mongocryptd: a dotted target may put the copy inside an array, so its encryption becomes
                # unknown there. markd does not model unknown encryption: refused.
                raise error("PROJECTION", path=path)
            edits.append((path, reads))
            marked[key] = value
            continue
        if isinstance(target, Below):
            raise error("BELOW_ENCRYPTED", path=path)
        # mongocryptd marks projected expressions with QE comparisons disallowed (7020507): only $match's
        # $expr may compare an encrypted field with a constant.
        marked[key] = mark_expression(value, ctx.without_encrypted_comparisons(), "$project")
        if not isinstance(target, Plain):
            # A plain computed value over an encrypted field (or an object holding one): plain from now on.
            edits.append((path, None))
    return marked


def _project(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    if not isinstance(spec, Mapping):
        raise error("MALFORMED", detail=f"{name} specification must be an object")
    edits: list[tuple[str, str | None]] = []
    marked = _projection(spec, ctx, computed_only=name in ("$addFields", "$set"), edits=edits)
    if not edits:
        return marked, ctx
    fields = [f for f in ctx.schema.fields
              if not any(f.path == t or f.path.startswith(t + ".") for t, _ in edits)]
    for target, source in edits:
        if source is not None:
            fields.extend(_copied_fields(source, target, ctx))
    return marked, ctx.with_schema(EncryptedFields(ctx.schema.namespace, tuple(fields)))


def _unset(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    return spec, ctx


def _group_key_reference(key: Any, ctx: Context) -> str | None:
    """The name mongocryptd gives an encrypted group key: `_id` for `"$f"`, `_id.k` for `{k: "$f"}`."""
    path = field_path(key)
    if path is not None:
        return "_id" if not isinstance(ctx.schema.lookup(path), Plain) else None
    if isinstance(key, Mapping) and not (key and next(iter(key)).startswith("$")):
        for name, value in key.items():
            inner = _group_key_reference(value, ctx)
            if inner is not None:
                return f"_id.{name}" if inner == "_id" else f"_id.{name}{inner[3:]}"
    return None


def _group(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """Group keys and accumulators over encrypted fields are refused (the key first, as mongocryptd does)."""
    if not isinstance(spec, Mapping) or "_id" not in spec:
        raise error("MALFORMED", detail="a group specification must include an _id")
    encrypted_key = _group_key_reference(spec["_id"], ctx)
    if encrypted_key is not None:
        raise error("GROUP_KEY", path=encrypted_key)
    # mongocryptd first works out the schema each accumulator produces (51221, 51223), and only then
    # marks the accumulators' expressions (6331102, 7020507).
    accumulators: list[tuple[str, str, Any]] = []
    for key, accumulator in spec.items():
        if key == "_id":
            continue
        if not isinstance(accumulator, Mapping) or len(accumulator) != 1:
            raise error("MALFORMED", detail=f"accumulator '{key}' must be an object with one operator")
        operator, argument = next(iter(accumulator.items()))
        reads = field_path(argument)
        if reads is not None and not isinstance(ctx.schema.lookup(reads), Plain):
            if operator in ARITHMETIC_ACCUMULATORS:
                raise error("ACCUMULATOR", op=operator)
            if operator == "$addToSet" and not isinstance(ctx.schema.lookup(reads), Below):
                # QE ciphertexts count as randomly encrypted: a set of them cannot be built.
                raise error("ADD_TO_SET", name=key)
        accumulators.append((key, operator, argument))
    marked: dict[str, Any] = {"_id": mark_expression(spec["_id"], ctx.without_encrypted_comparisons(), "$group")}
    for key, operator, argument in accumulators:
        reads = field_path(argument)
        if reads is not None and not isinstance(ctx.schema.lookup(reads), Plain):
            # $push/$first/$last of an encrypted field: mongocryptd's marking refuses the reference (6331102).
            raise error("EXPRESSION", path=reads)
        # A nested expression names its encrypted reference itself (6331102); comparisons with encrypted
        # fields are not allowed inside accumulators (7020507).
        marked[key] = {operator: mark_expression(argument, ctx.without_encrypted_comparisons(), operator)}
    # Accumulators over plain fields only: nothing encrypted leaves a $group.
    return {k: marked[k] for k in spec}, _empty(ctx)


def _unwind(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """Unwinding ciphertext means nothing (QE values are never arrays): refused; an object holding
    encrypted fields may be unwound. `includeArrayIndex` overwrites its target with a plain number."""
    path = spec if isinstance(spec, str) else spec.get("path") if isinstance(spec, Mapping) else None
    if not isinstance(path, str) or not path.startswith("$"):
        raise error("MALFORMED", detail="$unwind needs a field path")
    info = ctx.schema.lookup(path[1:])
    if isinstance(info, Encrypted):
        raise error("UNWIND_ENCRYPTED", path=path[1:])
    if isinstance(info, Below):
        raise error("BELOW_ENCRYPTED", path=path[1:])
    index = spec.get("includeArrayIndex") if isinstance(spec, Mapping) else None
    if isinstance(index, str):
        if isinstance(ctx.schema.lookup(index), Below):
            raise error("BELOW_ENCRYPTED", path=index)
        kept = tuple(f for f in ctx.schema.fields if f.path != index and not f.path.startswith(index + "."))
        ctx = ctx.with_schema(EncryptedFields(ctx.schema.namespace, kept))
    return spec, ctx


def _lookup(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """$lookup: joined documents land under `as` with their own collection's encrypted fields.

    The joined fields are re-rooted under `as` in the schema that flows on, so a later `$match` on
    `as.field` is marked with the joined collection's key (or refused), never sent in the clear.
    """
    if not isinstance(spec, Mapping):
        raise error("MALFORMED", detail="$lookup specification must be an object")
    foreign = spec.get("from")
    if isinstance(foreign, Mapping):
        foreign = foreign.get("coll")
    namespace = f"{ctx.database}.{foreign}" if isinstance(foreign, str) else None
    foreign_schema = ctx.information.schemas.get(namespace) if namespace else None
    if foreign_schema is None:
        if any(s.encrypts_anything for s in ctx.information.schemas.values()):
            raise error("MISSING_SCHEMA", namespace=namespace)
        foreign_schema = EncryptedFields(namespace or "", ())
    if spec.get("let") and (ctx.schema.encrypts_anything or foreign_schema.encrypts_anything):
        raise error("LOOKUP_LET")
    local, remote = spec.get("localField"), spec.get("foreignField")
    local_info = ctx.schema.lookup(local) if isinstance(local, str) else PLAIN
    remote_info = foreign_schema.lookup(remote) if isinstance(remote, str) else PLAIN
    # mongocryptd: an object holding encrypted fields cannot be joined on (51206/51207); nor can a QE
    # field itself, whatever its query types (6331103, still so in 8.x).
    if not isinstance(local_info, (Plain, Encrypted)):
        raise error("LOOKUP_LOCAL", path=local)
    if not isinstance(remote_info, (Plain, Encrypted)):
        raise error("LOOKUP_FOREIGN", path=remote)
    if isinstance(local_info, Encrypted) or isinstance(remote_info, Encrypted):
        raise error("LOOKUP_ENCRYPTED")
    output = spec.get("as")
    if not isinstance(output, str) or not output:
        raise error("MALFORMED", detail="$lookup requires an 'as' field path")
    if isinstance(ctx.schema.lookup(output), Below):
        raise error("BELOW_ENCRYPTED", path=output)
    marked = dict(spec)
    joined = foreign_schema
    if "pipeline" in spec:
        inner, inner_ctx = mark_pipeline(spec["pipeline"], ctx.with_schema(foreign_schema).for_filter())
        marked["pipeline"] = inner
        joined = inner_ctx.schema
    # `as` replaces whatever was there (mongocryptd overwrites that path in its schema too).
    kept = tuple(f for f in ctx.schema.fields if f.path != output and not f.path.startswith(output + "."))
    rerooted = tuple(replace(field, path=f"{output}.{field.path}") for field in joined.fields)
    return marked, ctx.with_schema(EncryptedFields(ctx.schema.namespace, kept + rerooted))


def _plain_expression(expression: Any, ctx: Context, key: str) -> Any:
    """An expression whose value becomes a group key: refused if it reads anything encrypted."""
    reads = field_path(expression)
    if reads is not None and not isinstance(ctx.schema.lookup(reads), Plain):
        raise error(key)
    return mark_expression(expression, ctx, "$group")


def _sort_by_count(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    reads = field_path(spec)
    if reads is not None and not isinstance(ctx.schema.lookup(reads), Plain):
        raise error("GROUP_KEY", path="_id")
    return mark_expression(spec, ctx, name), _empty(ctx)


def _bucket(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """$bucket/$bucketAuto group like $group: by a plain expression, accumulating plain fields."""
    if not isinstance(spec, Mapping) or "groupBy" not in spec:
        raise error("MALFORMED", detail=f"{name} requires 'groupBy'")
    marked = dict(spec)
    marked["groupBy"] = _plain_expression(spec["groupBy"], ctx, "GROUP_BY")
    if "output" in spec:
        output, _ = _group("$group", {"_id": None, **spec["output"]}, ctx)
        marked["output"] = {k: v for k, v in output.items() if k != "_id"}
    return marked, _empty(ctx)


def _replace_root(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """A new root computed from plain fields only: nothing encrypted after it."""
    new_root = spec.get("newRoot") if name == "$replaceRoot" and isinstance(spec, Mapping) else spec
    reads = field_path(new_root)
    if reads is not None and not isinstance(ctx.schema.lookup(reads), Plain):
        raise error("STAGE", stage=name)
    marked_root = mark_expression(new_root, ctx, name)
    return ({"newRoot": marked_root} if name == "$replaceRoot" else marked_root), _empty(ctx)


def _geo_near(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    if not isinstance(spec, Mapping):
        raise error("MALFORMED", detail="$geoNear specification must be an object")
    marked = dict(spec)
    for option in ("key", "distanceField", "includeLocs"):
        path = spec.get(option)
        if isinstance(path, str) and not isinstance(ctx.schema.lookup(path), Plain):
            raise error("STAGE", stage=name)
    if "query" in spec:
        marked["query"] = mark_filter(spec["query"], ctx)
    return marked, ctx


def _graph_lookup(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """Recursive joins compare values server-side: allowed only between plain fields of plain collections."""
    if not isinstance(spec, Mapping):
        raise error("MALFORMED", detail="$graphLookup specification must be an object")
    foreign = spec.get("from")
    foreign_schema = ctx.information.schemas.get(f"{ctx.database}.{foreign}") if isinstance(foreign, str) else None
    if foreign_schema is None and any(s.encrypts_anything for s in ctx.information.schemas.values()):
        raise error("MISSING_SCHEMA", namespace=f"{ctx.database}.{foreign}")
    if foreign_schema is not None and foreign_schema.encrypts_anything:
        raise error("STAGE", stage=name)
    start = spec.get("startWith")
    reads = field_path(start)
    if reads is not None and not isinstance(ctx.schema.lookup(reads), Plain):
        raise error("STAGE", stage=name)
    output = spec.get("as")
    if not isinstance(output, str) or not isinstance(ctx.schema.lookup(output), Plain):
        raise error("PROJECTION", path=output)
    marked = dict(spec)
    marked["startWith"] = mark_expression(start, ctx, name)
    return marked, ctx


def _opaque(name: str, spec: Any, ctx: Context) -> tuple[Any, Context]:
    """Stages markd does not analyse: allowed only while nothing encrypted is in play."""
    if ctx.schema.encrypts_anything:
        raise error("STAGE", stage=name)
    return spec, ctx


# Stage -> rule. No row: refused (31011).
STAGES: dict[str, StageRule] = {
    "$match": _match,
    "$limit": _unchanged,
    "$skip": _unchanged,
    "$sample": _unchanged,
    "$sort": _sort,
    "$project": _project,
    "$addFields": _project,
    "$set": _project,
    "$unset": _unset,
    "$group": _group,
    "$count": _nothing_encrypted_after,
    "$collStats": _nothing_encrypted_after,
    "$indexStats": _nothing_encrypted_after,
    "$unwind": _unwind,
    "$lookup": _lookup,
    "$facet": _opaque,
    "$replaceRoot": _replace_root,
    "$replaceWith": _replace_root,
    "$bucket": _bucket,
    "$bucketAuto": _bucket,
    "$sortByCount": _sort_by_count,
    "$graphLookup": _graph_lookup,
    "$unionWith": _opaque,
    "$redact": _opaque,
    "$geoNear": _geo_near,
    "$out": _opaque,
    "$merge": _opaque,
    "$setWindowFields": _opaque,
    "$densify": _opaque,
    "$fill": _opaque,
    "$documents": _opaque,
}


def mark_pipeline(pipeline: Any, ctx: Context) -> tuple[list[Any], Context]:
    """The marked pipeline, and the schema its output documents follow."""
    if not isinstance(pipeline, list):
        raise error("MALFORMED", detail="'pipeline' must be an array")
    marked: list[Any] = []
    for stage in pipeline:
        if not isinstance(stage, Mapping) or len(stage) != 1:
            raise error("MALFORMED", detail="A pipeline stage specification object must contain exactly one field.")
        name, spec = next(iter(stage.items()))
        rule = STAGES.get(name)
        if rule is None:
            raise error("STAGE", stage=name)
        spec, ctx = rule(name, spec, ctx)
        marked.append({name: spec})
    return marked, ctx


def mark_find_projection(projection: Any, ctx: Context) -> Any:
    """find's projection. mongocryptd 8.x analyses it as a lone $project stage of a pipeline: inclusion
    flags kept, a bare "$field" copied opaquely, computed expressions marked like $project's. The
    find-only operators ($slice, $elemMatch) read the field they name: refused on anything encrypted,
    as any other reference to it would be (6331102)."""
    if not isinstance(projection, Mapping):
        return projection
    marked: dict[str, Any] = {}
    for path, value in projection.items():
        if isinstance(value, Mapping) and value and next(iter(value)) in ("$slice", "$elemMatch", "$meta"):
            info = ctx.schema.lookup(path)
            if next(iter(value)) != "$meta" and not isinstance(info, Plain):
                if isinstance(info, Below):
                    raise error("BELOW_ENCRYPTED", path=path)
                if isinstance(info, Prefix):
                    raise error("PREFIX_REFERENCE", path=path)
                raise error("EXPRESSION", path=path)
            marked[path] = value
            continue
        marked.update(_projection({path: value}, ctx, computed_only=False, edits=[]))
    return marked
