"""FLE1 placeholders: the value to encrypt, wrapped in BinData 6 for libmongocrypt.

A placeholder is byte 0x00 then BSON `{a: 1|2, ki: UUID | ka: keyAltName, v: value}`; `v` keeps the
value's exact BSON type, since a deterministic ciphertext of an int32 and an int64 differ.
`placeholder` applies every check mongocryptd makes on a value before it agrees to encrypt it.
"""

from __future__ import annotations

import datetime
import functools
import struct
from collections.abc import Mapping
from typing import Any

from bson import Decimal128, Int64, ObjectId, Timestamp
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.max_key import MaxKey
from bson.min_key import MinKey

from markd import bsonvalues
from markd.analysis import notation
from markd.analysis.context import Scope
from markd.analysis.csfle.jsonschema import NEVER_ENCRYPTABLE, NOT_DETERMINISTIC, NUMBER_TYPES, TYPE_ORDER, Encrypted
from markd.analysis.schema import is_encrypted, lookup
from markd.bsonvalues import EncryptedBinData

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
    rules = _rules(metadata)
    kind = _kind(value)
    if rules.head is None or kind not in (rules.compared if comparison else rules.written) or (
            comparison and not scope.collation_simple and kind in _COLLATED_KINDS):
        # A JSON-pointer key, or a value some check refuses: the checks in mongocryptd's order.
        check_value(metadata, value, scope, comparison, name)
        key_name, key = _key_field(metadata, scope, comparison)
        head = _placeholder_head(metadata.algorithm, key_name, key)
    else:
        head = rules.head
    scope.analysis.placeholders += 1
    return EncryptedBinData(_placeholder_bytes(head, value))


def placeholders_for_in(metadata: Encrypted, values: list[Any], scope: Scope) -> list[Binary] | None:
    """Equality placeholders for every value of a `$in`, sorted and deduplicated as mongod writes the list
    back; None when some value needs the one-by-one path (a refusal, a regex, a pointer key).

    All of them share a head, so mongod's BinData order (length, then bytes) is the order of their bytes."""
    rules = _rules(metadata)
    head = rules.head
    if head is None or not scope.collation_simple:
        return None
    compared = rules.compared
    if "string" in compared and all(type(value) is str for value in values):
        try:
            texts = [value.encode("utf-8") for value in values]
        except UnicodeEncodeError:
            return None
        pack = _INT32.pack
        size = len(head) + 13  # the body's length, the element's type, name and length, two terminators
        bodies = [b"".join((FLE1_PLACEHOLDER, pack(size + len(text)), head, b"\x02v\x00", pack(len(text) + 1), text,
                            b"\x00\x00")) for text in texts]
    else:
        for value in values:
            kind = _SCALAR_KINDS.get(type(value))
            if kind is None and type(value) is int:
                kind = _int_kind(value)
            if kind not in compared:
                return None
        bodies = [_placeholder_bytes(head, value) for value in values]
    scope.analysis.placeholders += len(bodies)
    unique = sorted(set(bodies))
    unique.sort(key=len)
    return list(map(EncryptedBinData, unique))


def _placeholder_bytes(head: bytes, value: Any) -> bytes:
    """0x00, then BSON {head..., v: value}: the value's element encoded straight after the head."""
    kind = type(value)
    if kind is str:
        try:
            text = value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (an in-process caller): the encoder's own refusal
            value_element = bsonvalues.encode({"v": value})[4:-1]
        else:
            value_element = b"\x02v\x00" + _INT32.pack(len(text) + 1) + text + b"\x00"
    elif kind is int and -(2**31) <= value < 2**31:
        value_element = b"\x10v\x00" + _INT32.pack(value)
    else:
        value_element = bsonvalues.encode({"v": value})[4:-1]
    return b"".join((FLE1_PLACEHOLDER, _INT32.pack(len(head) + len(value_element) + 5), head, value_element, b"\x00"))


@functools.lru_cache(maxsize=1024)
def _placeholder_head(algorithm: int, key_name: str, key: Any) -> bytes:
    """The {a, ki|ka} elements of a placeholder: the same for every value marked with one key."""
    return bsonvalues.encode({"a": algorithm, key_name: key})[4:-1]


# -- what each encrypted field accepts, worked out once ----------------------------------------------------

# mongod's type names of the values markd can name by their Python type alone (int depends on its value).
_SCALAR_KINDS: dict[type, str] = {
    str: "string", Int64: "long", float: "double", bool: "bool", ObjectId: "objectId", datetime.datetime: "date",
    Decimal128: "decimal", type(None): "null", dict: "object", list: "array", DatetimeMS: "date",
    Timestamp: "timestamp", MinKey: "minKey", MaxKey: "maxKey",
}
_COLLATED_KINDS = frozenset({"string", "symbol"})
ALL_KINDS = frozenset((*TYPE_ORDER, "encrypted binary data"))


def _int_kind(value: int) -> str:
    return "int" if -(2**31) <= value < 2**31 else "long"


def _kind(value: Any) -> str:
    """type_name(value), without the isinstance chain for the common types."""
    kind = _SCALAR_KINDS.get(type(value))
    if kind is not None:
        return kind
    if type(value) is int:
        return _int_kind(value)
    return type_name(value)


class _FieldRules:
    """What one encrypted field accepts, worked out once (a plain class: a dataclass costs start-up time)."""

    __slots__ = ("compared", "head", "written")

    def __init__(self, head: bytes | None, written: frozenset[str], compared: frozenset[str]) -> None:
        self.head = head  # the {a, ki} elements; None for a JSON-pointer key (resolved per document)
        self.written = written  # the value types check_value lets through for a write
        self.compared = compared  # ... and for a comparison (simple collation)


# Per Encrypted (by identity; the entry holds the object, so its id cannot be reused while cached).
_FIELD_RULES: dict[int, tuple[Encrypted, _FieldRules]] = {}
_FIELD_RULES_LIMIT = 4096


def _rules(metadata: Encrypted) -> _FieldRules:
    entry = _FIELD_RULES.get(id(metadata))
    if entry is not None and entry[0] is metadata:
        return entry[1]
    illegal = NOT_DETERMINISTIC if metadata.deterministic else NEVER_ENCRYPTABLE
    types = metadata.bson_types
    written = frozenset(
        kind for kind in ALL_KINDS
        if kind != "encrypted binary data" and kind not in illegal
        and (not types or kind in types or ("number" in types and kind in NUMBER_TYPES)))
    head = None if metadata.pointer else _placeholder_head(metadata.algorithm, "ki", metadata.key)
    rules = _FieldRules(head, written, written if metadata.deterministic else frozenset())
    if len(_FIELD_RULES) >= _FIELD_RULES_LIMIT:
        _FIELD_RULES.clear()
    _FIELD_RULES[id(metadata)] = (metadata, rules)
    return rules
