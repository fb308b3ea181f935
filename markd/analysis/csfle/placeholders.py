"""FLE1 placeholders: the value to encrypt, wrapped in BinData 6 for libmongocrypt.

A placeholder is byte 0x00 then BSON `{a: 1|2, ki: UUID | ka: keyAltName, v: value}`; `v` keeps the
value's exact BSON type, since a deterministic ciphertext of an int32 and an int64 differ.
`placeholder` applies every check mongocryptd makes on a value before it agrees to encrypt it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from typing import Any

from bson.binary import Binary

from markd import bsonvalues
from markd.analysis import notation
from markd.analysis.context import Scope
from markd.analysis.csfle.jsonschema import NEVER_ENCRYPTABLE, NOT_DETERMINISTIC, NUMBER_TYPES, TYPE_ORDER, Encrypted
from markd.analysis.schema import is_encrypted, lookup

PLACEHOLDER_SUBTYPE = 6
FLE1_PLACEHOLDER = b"\x00"

_INT32 = struct.Struct("<i")


def is_placeholder(value: Any) -> bool:
    return isinstance(value, Binary) and value.subtype == PLACEHOLDER_SUBTYPE and value[:1] == FLE1_PLACEHOLDER


def type_name(value: Any) -> str:
    """mongod's name for the value's BSON type (a placeholder/ciphertext is "encrypted binary data")."""
    if isinstance(value, Binary) and value.subtype == PLACEHOLDER_SUBTYPE:
        return "encrypted binary data"
    return bsonvalues.bson_type(value)


def allowed_types(types: frozenset[str]) -> str:
    """mongod's rendering of a type set: "number " first when present, then each alias, space-separated."""
    words = (["number"] if "number" in types else []) + [name for name in TYPE_ORDER if name in types]
    return "".join(word + " " for word in words)


def check_value(metadata: Encrypted, value: Any, scope: Scope, comparison: bool, name: str = "") -> None:
    """Refuse a value mongocryptd would not encrypt (in mongocryptd's order of checks)."""
    kind = type_name(value)
    illegal = NOT_DETERMINISTIC if metadata.deterministic else NEVER_ENCRYPTABLE
    if kind == "encrypted binary data" or kind in illegal:
        scope.fail("value_type_illegal", type=kind)
    if comparison and not metadata.deterministic:
        scope.fail("random_query")
    if comparison and not scope.collation_simple and kind in ("string", "symbol"):
        scope.fail("collation_compare", element=notation.quoted_element(name, value))
    types = metadata.bson_types
    if types and kind not in types and not ("number" in types and kind in NUMBER_TYPES):
        scope.fail("value_type_mismatch", type=kind, types=allowed_types(types))


def _key_field(metadata: Encrypted, scope: Scope, comparison: bool) -> tuple[str, Any]:
    if not metadata.pointer:
        return "ki", metadata.key
    pointer = metadata.key
    assert isinstance(pointer, str)
    document = scope.document
    if comparison or document is None:
        scope.fail("pointer_not_static")
    target: Any = document
    tokens = [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]
    for token in tokens:
        if isinstance(target, Mapping) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            scope.fail("pointer_missing", pointer=pointer)
    if is_encrypted(lookup(scope.analysis.own_schema.root if scope.analysis.own_schema else scope.current,
                           ".".join(tokens))):
        scope.fail("pointer_encrypted", pointer=pointer)
    if type(target) is not str:  # bson's Code is a str: code (with or without scope) is not a string
        scope.fail("pointer_not_string", pointer=pointer)
    return "ka", target


def placeholder(metadata: Encrypted, value: Any, scope: Scope, *, comparison: bool, name: str = "") -> Binary:
    """The placeholder for `value` at an encrypted field, or the refusal mongocryptd gives; `name` is the
    element that held it (quoted in 31054)."""
    check_value(metadata, value, scope, comparison, name)
    key_name, key = _key_field(metadata, scope, comparison)
    head = _placeholder_head(metadata.algorithm, key_name, key)
    value_element = bsonvalues.encode({"v": value})[4:-1]
    body = _INT32.pack(len(head) + len(value_element) + 5) + head + value_element + b"\x00"
    return scope.analysis.marked(Binary(FLE1_PLACEHOLDER + body, PLACEHOLDER_SUBTYPE))


@functools.lru_cache(maxsize=1024)
def _placeholder_head(algorithm: int, key_name: str, key: Any) -> bytes:
    """The {a, ki|ka} elements of a placeholder: the same for every value marked with one key."""
    return bsonvalues.encode({"a": algorithm, key_name: key})[4:-1]
