"""Whole documents (an insert, a replacement, an object `$set` or compared) walked against the schema.

The walk goes field name by field name, as mongocryptd's does: a key holding a dot is one field name
(matched against properties and patternProperties as such), never a path.  A value at an encrypted
field is replaced by the placeholder the caller asks for; an object above encrypted fields is walked;
an array there is refused (the schema cannot say which element holds what).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bson import Timestamp
from bson.binary import Binary

from markd.analysis import paths
from markd.analysis.context import Scope
from markd.analysis.expressions import is_document
from markd.analysis.schema import Encryption, SchemaNode, child
from markd.errors import CommandError

Marker = Callable[[Encryption, Any, str, Scope], Binary]


def mark_document(document: Mapping[str, Any], current: SchemaNode, prefix: str, scope: Scope, mark: Marker,
                  *, scalars_on_prefixes: bool = True) -> dict[str, Any]:
    """`document` (found at `prefix`, described by `current`) with every encrypted value marked.

    `scalars_on_prefixes=False` ($set) refuses a non-object where an object holding encrypted fields
    belongs: it would remove the encrypted fields (51159).
    """
    if not _named_only(current):
        marked: dict[str, Any] = {}
        for name, value in document.items():
            path = paths.join(prefix, name) if prefix else name
            marked[name] = mark_value(value, child(current, name, prefix), path, scope, mark,
                                      scalars_on_prefixes=scalars_on_prefixes)
        return marked
    # Only named properties can hold encryption here: every other field is copied as it is, and only
    # the fields those properties govern are looked at (in the document's order, for the first refusal).
    properties = current.properties
    copied = dict(document)
    for name, value in document.items():
        governing = properties.get(name)
        if governing is None or not (governing.encrypted is not None or governing.unknown
                                     or governing.contains_encrypted):
            continue
        path = paths.join(prefix, name) if prefix else name
        copied[name] = mark_value(value, governing, path, scope, mark, scalars_on_prefixes=scalars_on_prefixes)
    return copied


def _named_only(current: SchemaNode) -> bool:
    """True when only `current.properties` can govern a field that may hold encryption: no pattern (a name
    it matches would have two subschemas, which `child` checks for conflicts), and no additionalProperties
    that may hold encryption. `child` then gives a property's own node, and to any other name a node
    holding no encryption, which leaves its value as it is."""
    additional = current.additional
    return (current.encrypted is None and not current.unknown and not current.patterns
            and (additional is None or not additional.may_hold_encryption))


def mark_value(value: Any, current: SchemaNode, path: str, scope: Scope, mark: Marker, *,
               scalars_on_prefixes: bool = True) -> Any:
    """The value to put at `path`, given the node that governs it."""
    if current.encrypted is not None:
        try:
            return mark(current.encrypted, value, path, scope)
        except CommandError as refusal:
            refusal.locate(path=path)
            raise
    if current.unknown:
        scope.fail("unknown_path", path=path)
    if not current.contains_encrypted:
        return value
    if is_document(value):
        return mark_document(value, current, path, scope, mark, scalars_on_prefixes=scalars_on_prefixes)
    if not scalars_on_prefixes:
        scope.fail("set_prefix", path=path)
    if isinstance(value, list):
        scope.fail("array_on_prefix", path=path)
    return value


def check_inserted(document: Mapping[str, Any], scope: Scope) -> None:
    """What mongocryptd requires of a document the server will store as it is (insert, upsert)."""
    current = scope.current
    id_node = child(current, "_id") if current.may_hold_encryption else None
    if id_node is not None and id_node.encrypted is not None and "_id" not in document:
        scope.fail("id_required", path="_id")
    if not current.may_hold_encryption:
        return
    # mongod fills a top-level Timestamp(0, 0) with the current time: it cannot be encrypted in advance.
    for name, value in document.items():
        if isinstance(value, Timestamp) and value.time == 0 and value.inc == 0:
            if child(current, name).encrypted is not None:
                scope.fail("timestamp_zero", path=name)


def holds_encryption(value: Any, current: SchemaNode) -> bool:
    """True when some field of `value` (an object described by `current`) lies at or above encryption."""
    if not is_document(value):
        return False
    return any(child(current, name).may_hold_encryption for name in value)
