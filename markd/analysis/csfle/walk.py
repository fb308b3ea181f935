"""Walking a whole document (an insert, a replacement, an object compared or $set) against the schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson import DBRef

from markd.analysis import paths
from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.placeholders import MarkContext, mark_value
from markd.analysis.csfle.schema import NOT_ENCRYPTED, PREFIX, UNKNOWN, Encrypted, Metadata


def is_document(value: Any) -> bool:
    return isinstance(value, Mapping) and not isinstance(value, DBRef)


def mark_document(document: Mapping[str, Any], prefix: str, context: MarkContext) -> dict[str, Any]:
    """`document` (found at `prefix`) with every value at an encrypted path replaced by its placeholder.

    An array on the way to an encrypted path is refused: the schema cannot say which element holds
    what, so nothing under it could be encrypted reliably.
    """
    marked: dict[str, Any] = {}
    for name, value in document.items():
        path = paths.join(prefix, name)
        marked[name] = mark_at(context.schema.metadata_for(path), value, path, context)
    return marked


def mark_at(metadata: Metadata, value: Any, path: str, context: MarkContext) -> Any:
    """The value to put at `path`, given what the schema says is there."""
    if isinstance(metadata, Encrypted):
        return mark_value(metadata, value, path, context)
    if metadata is PREFIX:
        if is_document(value):
            return mark_document(value, path, context)
        if isinstance(value, list):
            fail("array_on_prefix", path=path)
        return value
    if metadata is UNKNOWN:
        fail("unknown_path", path=path)
    assert metadata is NOT_ENCRYPTED
    return value


def touches_encryption(value: Any, prefix: str, context: MarkContext) -> bool:
    """True when some field of `value` (an object at `prefix`) lies at or above an encrypted path."""
    if not is_document(value):
        return False
    for name in value:
        path = paths.join(prefix, name)
        metadata = context.schema.metadata_for(path)
        if isinstance(metadata, Encrypted) or metadata is UNKNOWN:
            return True
        if metadata is PREFIX:
            return True
    return False
