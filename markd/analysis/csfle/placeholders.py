"""FLE1 placeholders: the value to encrypt, wrapped in BinData 6 for libmongocrypt.

A placeholder is byte 0x00 then BSON `{a: 1|2, ki: UUID | ka: keyAltName, v: value}`; `v` keeps the
value's exact BSON type, since a deterministic ciphertext of an int32 and an int64 differ.
`mark_value` applies every check mongocryptd makes on a value before it agrees to encrypt it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson.binary import Binary

from markd import bsonvalues
from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.schema import (
    NEVER_ENCRYPTABLE,
    NOT_DETERMINISTIC,
    NUMBER_TYPES,
    TYPE_ORDER,
    Encrypted,
    EncryptionSchema,
)

PLACEHOLDER_SUBTYPE = 6
FLE1_PLACEHOLDER = b"\x00"


@dataclass(frozen=True, slots=True)
class MarkContext:
    """Where a value is being marked.

    `comparison`: the value is compared (query), so it must be deterministic; `document`: the whole
    document being written, against which JSON-pointer keyIds resolve (None where there is none);
    `collation_simple`: False when a non-simple collation would compare strings differently.
    """

    schema: EncryptionSchema
    comparison: bool
    document: Mapping[str, Any] | None = None
    collation_simple: bool = True


_INT32 = struct.Struct("<i")


def is_placeholder(value: Any) -> bool:
    return isinstance(value, Binary) and value.subtype == PLACEHOLDER_SUBTYPE and value[:1] == FLE1_PLACEHOLDER


def type_name(value: Any) -> str:
    """mongod's name for the value's BSON type (a placeholder/ciphertext is "encrypted binary data")."""
    if isinstance(value, Binary) and value.subtype == PLACEHOLDER_SUBTYPE:
        return "encrypted binary data"
    return bsonvalues.bson_type(value)


def _allowed_types(types: frozenset[str]) -> str:
    """mongod's rendering of a type set: "number " first when present, then each alias, space-separated."""
    words = (["number"] if "number" in types else []) + [name for name in TYPE_ORDER if name in types]
    return "".join(word + " " for word in words)


def check_value(metadata: Encrypted, value: Any, path: str, context: MarkContext) -> None:
    """Refuse a value mongocryptd would not encrypt at `path` (order as mongocryptd checks)."""
    del path  # mongocryptd's messages name the type, not the path
    kind = type_name(value)
    illegal = NOT_DETERMINISTIC if metadata.deterministic else NEVER_ENCRYPTABLE
    if kind == "encrypted binary data" or kind in illegal:
        fail("value_type_illegal", type=kind)
    if context.comparison and not metadata.deterministic:
        fail("random_query")
    if context.comparison and not context.collation_simple and kind in ("string", "symbol"):
        fail("collation_compare", element=kind)
    types = metadata.bson_types
    if types and kind not in types and not ("number" in types and kind in NUMBER_TYPES):
        fail("value_type_mismatch", type=kind, types=_allowed_types(types))


def _key_field(metadata: Encrypted, context: MarkContext) -> tuple[str, Any]:
    if not metadata.pointer:
        return "ki", metadata.key
    pointer = metadata.key
    assert isinstance(pointer, str)
    if context.comparison or context.document is None:
        fail("pointer_not_static")
    target: Any = context.document
    tokens = [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]
    for token in tokens:
        if isinstance(target, Mapping) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            fail("pointer_missing", pointer=pointer)
    if isinstance(context.schema.metadata_for(".".join(tokens)), Encrypted):
        fail("pointer_encrypted", pointer=pointer)
    if not isinstance(target, str):
        fail("pointer_not_string", pointer=pointer)
    return "ka", target


def mark_value(metadata: Encrypted, value: Any, path: str, context: MarkContext) -> Binary:
    """The placeholder for `value` at encrypted `path`, or the refusal mongocryptd gives."""
    check_value(metadata, value, path, context)
    key_name, key = _key_field(metadata, context)
    head = _placeholder_head(metadata.algorithm, key_name, key)
    value_element = bsonvalues.encode({"v": value})[4:-1]
    body = _INT32.pack(len(head) + len(value_element) + 5) + head + value_element + b"\x00"
    return Binary(FLE1_PLACEHOLDER + body, PLACEHOLDER_SUBTYPE)


@functools.lru_cache(maxsize=1024)
def _placeholder_head(algorithm: int, key_name: str, key: Any) -> bytes:
    """The {a, ki|ka} elements of a placeholder: the same for every value marked with one key."""
    return bsonvalues.encode({"a": algorithm, key_name: key})[4:-1]
