"""Update documents (modifiers, replacements, pipelines) against a CSFLE schema."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from markd.analysis import paths
from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.placeholders import MarkContext, mark_value
from markd.analysis.csfle.schema import NOT_ENCRYPTED, PREFIX, UNKNOWN, Encrypted, EncryptionSchema
from markd.analysis.csfle.walk import is_document, mark_document


def _check_positional(path: str, schema: EncryptionSchema) -> bool:
    """Refuse array-element update paths into encrypted values; True when the path has such a component."""
    parts = paths.split(path)
    for index, component in enumerate(parts):
        if not paths.is_positional(component):
            continue
        metadata = schema.metadata_for(paths.join(parts[:index]))
        if component == "$":
            if isinstance(metadata, Encrypted) or metadata in (PREFIX, UNKNOWN):
                fail("positional")
        elif isinstance(metadata, Encrypted) or metadata in (PREFIX, UNKNOWN):
            fail("update_op", op="Array update operations")
        return True
    return False


def _set(op: str, fields: Mapping[str, Any], context: MarkContext) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for path, value in fields.items():
        if _check_positional(path, context.schema):
            marked[path] = value
            continue
        metadata = context.schema.metadata_for(path)
        if isinstance(metadata, Encrypted):
            marked[path] = mark_value(metadata, value, path, context)
        elif metadata is UNKNOWN:
            fail("unknown_path", path=path)
        else:
            _check_set_shape(value, path, context)
            marked[path] = mark_document(value, path, context) if is_document(value) else value
    return marked


def _check_set_shape(value: Any, path: str, context: MarkContext) -> None:
    """A $set must not replace an object holding encrypted fields by anything but an object."""
    metadata = context.schema.metadata_for(path)
    if isinstance(metadata, Encrypted) or metadata is not PREFIX:
        return
    if not is_document(value):
        fail("set_prefix", path=path)
    for name, item in value.items():
        _check_set_shape(item, paths.join(path, name), context)


def _unset(op: str, fields: Mapping[str, Any], context: MarkContext) -> dict[str, Any]:
    for path in fields:
        if not _check_positional(path, context.schema):
            context.schema.metadata_for(path)  # a path through an encrypted field is still refused
    return dict(fields)


def _rename(op: str, fields: Mapping[str, Any], context: MarkContext) -> dict[str, Any]:
    for source, target in fields.items():
        source_metadata = context.schema.metadata_for(source)
        target_metadata = context.schema.metadata_for(target) if isinstance(target, str) else NOT_ENCRYPTED
        if PREFIX in (source_metadata, target_metadata) or UNKNOWN in (source_metadata, target_metadata):
            fail("rename_prefix")
        if source_metadata != target_metadata:
            fail("rename_metadata")
    return dict(fields)


def _refused_on_encrypted(label: str, *, may_write_documents: bool = False
                          ) -> Callable[[str, Mapping[str, Any], MarkContext], dict[str, Any]]:
    """Modifiers that compute from the stored value: impossible on ciphertext.

    Those that can write a whole document ($push, $addToSet, $max, $min on a missing field) are
    refused above an encrypted path too: the document would land unencrypted under it.
    """

    def rule(op: str, fields: Mapping[str, Any], context: MarkContext) -> dict[str, Any]:
        for path in fields:
            if _check_positional(path, context.schema):
                continue
            metadata = context.schema.metadata_for(path)
            if isinstance(metadata, Encrypted) or metadata is UNKNOWN or (may_write_documents and metadata is PREFIX):
                fail("update_op", op=label)
        return dict(fields)

    return rule


MODIFIERS: dict[str, Callable[[str, Mapping[str, Any], MarkContext], dict[str, Any]]] = {
    "$set": _set,
    "$setOnInsert": _set,
    "$unset": _unset,
    "$rename": _rename,
    "$inc": _refused_on_encrypted("$inc and $mul"),
    "$mul": _refused_on_encrypted("$inc and $mul"),
    "$max": _refused_on_encrypted("$max and $min", may_write_documents=True),
    "$min": _refused_on_encrypted("$max and $min", may_write_documents=True),
    "$addToSet": _refused_on_encrypted("$addToSet", may_write_documents=True),
    "$bit": _refused_on_encrypted("$bit"),
    "$currentDate": _refused_on_encrypted("$currentDate"),
    "$pop": _refused_on_encrypted("$pop"),
    "$pullAll": _refused_on_encrypted("$pullAll"),
    "$pull": _refused_on_encrypted("$pull"),
    "$push": _refused_on_encrypted("$push", may_write_documents=True),
}


def is_modifier_update(update: Any) -> bool:
    return is_document(update) and bool(update) and next(iter(update)).startswith("$")


def mark_update(update: Any, schema: EncryptionSchema, *, upsert: bool, command: str) -> Any:
    """The update (`u` / findAndModify `update`) with values for encrypted fields marked."""
    context = MarkContext(schema, comparison=False, document=None)
    id_encrypted = isinstance(schema.metadata_for("_id"), Encrypted)
    if isinstance(update, list):
        if upsert and id_encrypted:
            fail("pipeline_update_upsert_id" if command == "update" else "pipeline_fam_upsert_id")
        from markd.analysis.csfle.pipeline import mark_update_pipeline

        return mark_update_pipeline(update, schema, context)
    if not is_document(update):
        fail("update_not_object")
    if upsert:
        # mongocryptd asks the update document itself (even a modifier one) for an _id: an upsert
        # whose _id mongod would generate cannot have it encrypted in advance.
        check_insert_document(update, schema)
    if is_modifier_update(update):
        marked: dict[str, Any] = {}
        for op, fields in update.items():
            rule = MODIFIERS.get(op)
            if rule is None:
                fail("unknown_modifier", op=op)
            if not is_document(fields):
                from markd.errors import CommandError

                raise CommandError(9, f"Modifiers operate on fields but we found type {_type(fields)} instead. "
                                      f"For example: {{$mod: {{<field>: ...}}}} not {{{op}: {_type(fields)}}}")
            marked[op] = rule(op, fields, context)
        return serialize_modifiers(marked)
    return mark_document(update, "", context)


def _path_order(path: str) -> tuple[tuple[int, int, str], ...]:
    """mongod's update-tree order: component by component, array indexes numerically."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in paths.split(path))


def serialize_modifiers(modifiers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A modifier update as mongod's UpdateDriver writes it back: operators, then paths, in order."""
    return {op: {path: modifiers[op][path] for path in sorted(modifiers[op], key=_path_order)}
            for op in sorted(modifiers)}


def _type(value: Any) -> str:
    from markd import bsonvalues

    return bsonvalues.bson_type(value)


def check_insert_document(document: Mapping[str, Any], schema: EncryptionSchema) -> None:
    """What mongocryptd requires of a document that will be inserted (insert, upsert)."""
    if isinstance(schema.metadata_for("_id"), Encrypted) and "_id" not in document:
        fail("id_required")
    _check_timestamps(document, schema)


def _check_timestamps(document: Mapping[str, Any], schema: EncryptionSchema) -> None:
    # mongod fills Timestamp(0, 0) with the current time on insert: it cannot be encrypted in advance.
    from bson import Timestamp

    for name, value in document.items():
        if isinstance(value, Timestamp) and value.time == 0 and value.inc == 0 and "." not in name:
            if isinstance(schema.metadata_for(name), Encrypted):
                fail("timestamp_zero", path=name)
