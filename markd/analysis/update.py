"""Updates, for both schemes: modifier documents, replacements and pipeline updates.

Each update operator has a row in `MODIFIERS`; one without a row is refused with mongod's parse
error.  Values `$set` at encrypted paths become the scheme's write placeholders; operators that
compute from the stored value, or could write a document under an encrypted path, are refused at
any path that may hold encryption; pipeline updates must leave the schema as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from markd import bsonvalues
from markd.analysis import paths
from markd.analysis.context import Scope
from markd.analysis.documents import check_inserted, mark_document, mark_value
from markd.analysis.expressions import is_document
from markd.analysis.schema import NOT_ENCRYPTED, PREFIX, UNKNOWN, is_encrypted, subtree
from markd.errors import CommandError


def _metadata(path: str, scope: Scope) -> Any:
    return scope.metadata_for(path) if scope.current.may_hold_encryption else NOT_ENCRYPTED


def _check_positional(path: str, scope: Scope) -> bool:
    """Refuse array-element update paths into encrypted values; True when the path has such a component."""
    parts = paths.split(path)
    for index, component in enumerate(parts):
        if not paths.is_positional(component):
            continue
        metadata = _metadata(paths.join(parts[:index]), scope)
        if metadata is not NOT_ENCRYPTED:
            if component == "$":
                scope.fail("positional", path=path)
            scope.fail("update_op", op="Array update operations", path=path)
        return True
    return False


def _set(op: str, fields: Mapping[str, Any], scope: Scope) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for path, value in fields.items():
        if _check_positional(path, scope):
            marked[path] = value
            continue
        if not scope.current.may_hold_encryption:
            marked[path] = value
            continue
        marked[path] = mark_value(value, subtree(scope.current, path), path, scope, scope.scheme.mark_write,
                                  scalars_on_prefixes=False)
    return marked


def _unset(op: str, fields: Mapping[str, Any], scope: Scope) -> dict[str, Any]:
    for path in fields:
        if not _check_positional(path, scope):
            _metadata(path, scope)  # a path through an encrypted field is still refused
    return dict(fields)


def _rename(op: str, fields: Mapping[str, Any], scope: Scope) -> dict[str, Any]:
    for source, target in fields.items():
        if not isinstance(target, str):
            raise CommandError(2, f"The 'to' field for $rename must be a string: {source}: "
                                  f"{bsonvalues.bson_type(target)}")
        source_metadata, target_metadata = _metadata(source, scope), _metadata(target, scope)
        if is_encrypted(source_metadata) or is_encrypted(target_metadata):
            renamed = source if is_encrypted(source_metadata) else target
            if not scope.scheme.renames_encrypted:
                scope.fail("rename_encrypted", path=renamed)
            if source_metadata != target_metadata:
                scope.fail("rename_metadata", path=renamed)
        elif {source_metadata, target_metadata} & {PREFIX, UNKNOWN}:
            scope.fail("rename_prefix", path=source if source_metadata in (PREFIX, UNKNOWN) else target)
    return dict(fields)


def _refused_where_encrypted(label: str) -> Callable[[str, Mapping[str, Any], Scope], dict[str, Any]]:
    """Operators that compute from the stored value: meaningless on ciphertext, and their operand would
    reach the server in the clear.  Refused at any path that is, holds or may hold encryption (at an
    object above encrypted fields mongod would fail the operation anyway, after seeing the operand)."""

    def rule(op: str, fields: Mapping[str, Any], scope: Scope) -> dict[str, Any]:
        for path in fields:
            if _check_positional(path, scope):
                continue
            if _metadata(path, scope) is not NOT_ENCRYPTED:
                scope.fail("update_op", op=label, path=path)
        return dict(fields)

    return rule


Modifier = Callable[[str, Mapping[str, Any], Scope], dict[str, Any]]
MODIFIERS: dict[str, Modifier] = {
    "$set": _set,
    "$setOnInsert": _set,
    "$unset": _unset,
    "$rename": _rename,
    "$inc": _refused_where_encrypted("$inc and $mul"),
    "$mul": _refused_where_encrypted("$inc and $mul"),
    "$max": _refused_where_encrypted("$max and $min"),
    "$min": _refused_where_encrypted("$max and $min"),
    "$addToSet": _refused_where_encrypted("$addToSet"),
    "$bit": _refused_where_encrypted("$bit"),
    "$currentDate": _refused_where_encrypted("$currentDate"),
    "$pop": _refused_where_encrypted("$pop"),
    "$pullAll": _refused_where_encrypted("$pullAll"),
    "$pull": _refused_where_encrypted("$pull"),
    "$push": _refused_where_encrypted("$push"),
}


def is_modifier_update(update: Any) -> bool:
    return is_document(update) and bool(update) and next(iter(update)).startswith("$")


def _path_order(path: str) -> tuple[tuple[int, int, str], ...]:
    """mongod's update-tree order: component by component, array indexes numerically."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in paths.split(path))


def serialize_modifiers(modifiers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A modifier update as mongod's UpdateDriver writes it back: operators, then paths, in order."""
    return {op: {path: modifiers[op][path] for path in sorted(modifiers[op], key=_path_order)}
            for op in sorted(modifiers)}


def mark_modifiers(update: Mapping[str, Any], scope: Scope) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for op, fields in update.items():
        rule = MODIFIERS.get(op)
        if rule is None:
            raise CommandError(9, f"Unknown modifier: {op}. Expected a valid update modifier or pipeline-style "
                                  "update specified as an array")
        if not is_document(fields):
            kind = bsonvalues.bson_type(fields)
            raise CommandError(9, f"Modifiers operate on fields but we found type {kind} instead. For example: "
                                  f"{{$mod: {{<field>: ...}}}} not {{{op}: {kind}}}")
        try:
            marked[op] = rule(op, fields, scope)
        except CommandError as refusal:
            refusal.locate(operator=op)
            raise
    return serialize_modifiers(marked)


def mark_update(update: Any, scope: Scope, *, upsert: bool, command: str) -> Any:
    """The update (`u`, findAndModify `update`, bulkWrite `updateMods`) with encrypted values marked."""
    id_encrypted = is_encrypted(_metadata("_id", scope))
    if isinstance(update, list):
        if upsert and id_encrypted:
            scope.fail("pipeline_update_upsert_id" if command == "update" else "pipeline_fam_upsert_id", path="_id")
        from markd.analysis.pipeline import mark_update_pipeline

        return mark_update_pipeline(update, scope)
    if not is_document(update):
        raise CommandError(9, "Update argument must be either an object or an array")
    if upsert:
        # mongocryptd asks the update document itself (even a modifier one) for an _id: an upsert
        # whose _id mongod would generate cannot have it encrypted in advance.
        check_inserted(update, scope)
    if is_modifier_update(update):
        return mark_modifiers(update, scope)
    return mark_document(update, scope.current, "", scope, scope.scheme.mark_write)

