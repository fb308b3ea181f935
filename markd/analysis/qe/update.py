"""Writes: inserted and replacement documents, update modifiers, pipeline updates.

Every value written at an encrypted path becomes a t=1 placeholder; objects holding encrypted
paths are walked; arrays on the way to an encrypted path are refused (QE cannot index inside
them). Each update operator has one row in `MODIFIERS`; one without a row is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bson import Timestamp

from markd.analysis.qe import placeholders
from markd.analysis.qe.context import Context
from markd.analysis.qe.errors import error
from markd.analysis.qe.expressions import encrypted_reference
from markd.analysis.qe.fields import PLAIN, Below, Encrypted, Plain, Prefix


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def check_generated_fields(document: Mapping[str, Any], ctx: Context) -> None:
    """Top-level Timestamp(0, 0) is replaced by the server: it cannot be encrypted client-side."""
    for key, value in document.items():
        if isinstance(value, Timestamp) and value.time == 0 and value.inc == 0 and isinstance(
                ctx.schema.lookup(key), Encrypted):
            raise error("TIMESTAMP_ZERO", path=key)


def mark_document(document: Mapping[str, Any], ctx: Context, prefix: str = "", *,
                  scalars_on_prefixes: bool = True) -> dict[str, Any]:
    """A document being written, with every encrypted value replaced by its insert placeholder.

    A key holding a dot is one field name, not a path, so it never names an encrypted field. A scalar
    where an object holding encrypted fields belongs is allowed in inserted documents, not under $set.
    """
    marked: dict[str, Any] = {}
    for key, value in document.items():
        path = _join(prefix, key)
        info = PLAIN if "." in key else ctx.schema.lookup(path)
        if isinstance(info, Encrypted):
            marked[key] = ctx.marked(placeholders.insert_placeholder(info.field, value))
        elif isinstance(info, Prefix):
            marked[key] = _mark_prefix_value(path, value, ctx, scalars_on_prefixes)
        elif isinstance(info, Below):
            raise error("BELOW_ENCRYPTED", path=path)
        else:
            marked[key] = value
    return marked


def mark_inserted_document(document: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """A document the server will store as it is (insert, upsert): generated values cannot be encrypted."""
    check_generated_fields(document, ctx)
    return mark_document(document, ctx)


def _mark_prefix_value(path: str, value: Any, ctx: Context, scalars_on_prefixes: bool) -> Any:
    if isinstance(value, Mapping):
        return mark_document(value, ctx, path, scalars_on_prefixes=scalars_on_prefixes)
    if isinstance(value, list):
        raise error("ARRAY_ON_PATH", path=path)
    if not scalars_on_prefixes:
        raise error("SET_PREFIX", path=path)
    # A scalar where an object holding encrypted fields could be: nothing encrypted to mark.
    return value


def is_modifier_update(update: Any) -> bool:
    return isinstance(update, Mapping) and bool(update) and next(iter(update)).startswith("$")


def mark_update(update: Any, ctx: Context, upsert: bool = False) -> Any:
    """An update document, replacement document or update pipeline, marked."""
    if isinstance(update, list):
        return mark_update_pipeline(update, ctx)
    if not isinstance(update, Mapping):
        raise error("MALFORMED", detail="update must be an object or an array")
    if upsert:
        check_generated_fields(update, ctx)
    if is_modifier_update(update):
        return mark_modifiers(update, ctx)
    return mark_document(update, ctx)


# ---------------------------------------------------------------------------------------------- modifiers


def _positional_check(path: str, ctx: Context) -> None:
    """`a.$`, `a.$[]`, `a.$[x]`: refused once the part before reaches anything encrypted."""
    parts = path.split(".")
    for index, part in enumerate(parts):
        if part.startswith("$"):
            before = ".".join(parts[:index])
            if before and not isinstance(ctx.schema.lookup(before), Plain):
                if part == "$":
                    raise error("POSITIONAL")
                raise error("UPDATE_OPERATOR", op="Array update operations")
            return


def _set(fields: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for path, value in fields.items():
        if "$" in path:
            _positional_check(path, ctx)
        info = ctx.schema.lookup(path)
        if isinstance(info, Encrypted):
            marked[path] = ctx.marked(placeholders.insert_placeholder(info.field, value))
        elif isinstance(info, Prefix):
            if not isinstance(value, Mapping):
                if isinstance(value, list):
                    raise error("ARRAY_ON_PATH", path=path)
                raise error("SET_PREFIX", path=path)
            marked[path] = mark_document(value, ctx, path, scalars_on_prefixes=False)
        elif isinstance(info, Below):
            raise error("BELOW_ENCRYPTED", path=path)
        else:
            marked[path] = value
    return marked


def _unset(fields: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    for path in fields:
        if isinstance(ctx.schema.lookup(path), Below):
            raise error("BELOW_ENCRYPTED", path=path)
    return dict(fields)


def _rename(fields: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    for source, target in fields.items():
        if not isinstance(target, str):
            raise error("MALFORMED", detail="$rename target must be a string")
        for path in (source, target):
            info = ctx.schema.lookup(path)
            if isinstance(info, Encrypted):
                raise error("RENAME")
            if isinstance(info, Prefix):
                raise error("RENAME_PREFIX")
            if isinstance(info, Below):
                raise error("BELOW_ENCRYPTED", path=path)
    return dict(fields)


def _not_on_encrypted(label: str) -> Callable[[Mapping[str, Any], Context], dict[str, Any]]:
    """Arithmetic and array operators: fine on plain paths, meaningless (and refused) on ciphertext."""

    def rule(fields: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
        for path in fields:
            if "$" in path:
                _positional_check(path, ctx)
            if not isinstance(ctx.schema.lookup(path), Plain):
                raise error("UPDATE_OPERATOR", op=label)
        return dict(fields)

    return rule


# Update operator -> rule. No row: refused.
MODIFIERS: dict[str, Callable[[Mapping[str, Any], Context], dict[str, Any]]] = {
    "$set": _set,
    "$setOnInsert": _set,
    "$unset": _unset,
    "$rename": _rename,
    "$inc": _not_on_encrypted("$inc and $mul"),
    "$mul": _not_on_encrypted("$inc and $mul"),
    "$min": _not_on_encrypted("$max and $min"),
    "$max": _not_on_encrypted("$max and $min"),
    "$currentDate": _not_on_encrypted("$currentDate"),
    "$push": _not_on_encrypted("$push"),
    "$addToSet": _not_on_encrypted("$addToSet"),
    "$pop": _not_on_encrypted("$pop"),
    "$pull": _not_on_encrypted("$pull"),
    "$pullAll": _not_on_encrypted("$pullAll"),
    "$bit": _not_on_encrypted("$bit"),
}


def mark_modifiers(update: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for operator, fields in update.items():
        rule = MODIFIERS.get(operator)
        if rule is None:
            raise error("UNKNOWN_UPDATE_OPERATOR", op=operator)
        if not isinstance(fields, Mapping):
            raise error("MALFORMED", detail=f"Modifiers operate on fields but we found type {type(fields).__name__}")
        marked[operator] = rule(fields, ctx)
    return marked


# ---------------------------------------------------------------------------------------------- pipelines


def _pipeline_fields_stage(stage: Mapping[str, Any], ctx: Context) -> None:
    spec = next(iter(stage.values()))
    if not isinstance(spec, Mapping):
        raise error("MALFORMED", detail="stage specification must be an object")
    for path, expression in _flatten(spec):
        if not isinstance(ctx.schema.lookup(path), Plain):
            raise error("PIPELINE_UPDATE")
        reference = encrypted_reference(expression, ctx)
        if reference is not None:
            raise error("PIPELINE_REFERENCE", path=reference)


def _flatten(spec: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`{a: {b: expr}}` (nested field specs, not operators) -> [("a.b", expr)]."""
    flat: list[tuple[str, Any]] = []
    for key, value in spec.items():
        path = _join(prefix, key)
        if isinstance(value, Mapping) and value and not next(iter(value)).startswith("$"):
            flat.extend(_flatten(value, path))
        else:
            flat.append((path, value))
    return flat


def mark_update_pipeline(pipeline: list[Any], ctx: Context) -> list[Any]:
    """A pipeline update may not write or read encrypted fields: it runs on the server, over ciphertext."""
    for stage in pipeline:
        if not isinstance(stage, Mapping) or len(stage) != 1:
            raise error("MALFORMED", detail="each pipeline stage must be an object with one field")
        name = next(iter(stage))
        if name in ("$set", "$addFields"):
            _pipeline_fields_stage(stage, ctx)
        elif name in ("$unset",):
            targets = stage[name] if isinstance(stage[name], list) else [stage[name]]
            if any(isinstance(ctx.schema.lookup(str(t)), Below) for t in targets):
                raise error("PIPELINE_UPDATE")
        elif name in ("$project", "$replaceRoot", "$replaceWith"):
            if ctx.schema.encrypts_anything:
                raise error("PIPELINE_UPDATE")
        else:
            raise error("UPDATE_PIPELINE_STAGE", stage=name)
    return list(pipeline)
