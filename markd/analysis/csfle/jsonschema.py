"""A CSFLE `jsonSchema` parsed once into an immutable tree that answers "what is at this path?".

`parse(schema, remote)` validates the schema the way mongocryptd does (first as a JSON Schema, then
as an encryption schema) and returns an `EncryptionSchema`; `metadata_for(path)` answers one of
`Encrypted`, `NOT_ENCRYPTED`, `PREFIX` (an ancestor of an encrypted path) or `UNKNOWN` (a value
whose encryption is only known at run time, e.g. an aggregation result mixing fields).
Parsed trees are cached by the schema's BSON bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from bson import Decimal128
from bson.binary import Binary

from markd import bsonvalues
from markd.analysis.csfle.errors import fail
from markd.analysis.match import is_number, non_negative_long
from markd.analysis.ordering import order_key
from markd.analysis.patterns import RulePattern, compile_pattern, pcre_error
from markd.analysis.schema import Encryption, Schema, SchemaNode, node
from markd.cache import ByteLRU
from markd.errors import CommandError

DETERMINISTIC_NAME = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RANDOM_NAME = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
DETERMINISTIC = 1
RANDOM = 2
ALGORITHMS = {DETERMINISTIC_NAME: DETERMINISTIC, RANDOM_NAME: RANDOM}
ALGORITHM_NAMES = {number: name for name, number in ALGORITHMS.items()}

# BSON type aliases in BSON type-number order (minKey first, as mongod's type sets sort them).
TYPE_ORDER = (
    "minKey", "double", "string", "object", "array", "binData", "undefined", "objectId", "bool", "date",
    "null", "regex", "dbPointer", "javascript", "symbol", "javascriptWithScope", "int", "timestamp", "long",
    "decimal", "maxKey",
)
TYPE_ALIASES = frozenset((*TYPE_ORDER, "number"))
NUMBER_TYPES = frozenset({"int", "long", "double", "decimal"})

# Types no encryption can hold, and those deterministic encryption also refuses (equality on them
# would be wrong or leak: floating point, booleans, documents and arrays).
NEVER_ENCRYPTABLE = frozenset({"minKey", "maxKey", "undefined", "null"})
NOT_DETERMINISTIC = NEVER_ENCRYPTABLE | frozenset(
    {"array", "object", "javascriptWithScope", "bool", "double", "decimal"}
)

# Every keyword mongod's $jsonSchema parser knows; those it names but does not implement.
JSON_SCHEMA_KEYWORDS = frozenset({
    "additionalItems", "additionalProperties", "allOf", "anyOf", "bsonType", "dependencies", "description",
    "encrypt", "encryptMetadata", "enum", "exclusiveMaximum", "exclusiveMinimum", "items", "maxItems",
    "maxLength", "maxProperties", "maximum", "minItems", "minLength", "minProperties", "minimum", "multipleOf",
    "not", "oneOf", "pattern", "patternProperties", "properties", "required", "title", "type", "uniqueItems",
})
UNIMPLEMENTED_KEYWORDS = frozenset({"$ref", "$schema", "default", "definitions", "format", "id"})
# The subset mongocryptd accepts at all, and the subset it accepts in a local (schemaMap) schema:
# validation keywords only make sense where mongod enforces them, i.e. in a remote schema.
FLE_KEYWORDS = JSON_SCHEMA_KEYWORDS - {"dependencies"}
LOCAL_KEYWORDS = frozenset({
    "additionalItems", "additionalProperties", "allOf", "anyOf", "bsonType", "description", "encrypt",
    "encryptMetadata", "items", "not", "oneOf", "patternProperties", "properties", "title", "type",
})
# JSON Schema `type` names (mongod refuses "integer").
JSON_TYPES = {"object": "object", "array": "array", "string": "string", "boolean": "bool", "null": "null",
              "number": "number"}


@dataclass(frozen=True, slots=True)
class Encrypted(Encryption):
    """An encrypted field: algorithm 1 (deterministic) or 2 (random), a key and the allowed types."""

    algorithm: int
    key: Binary | str  # a key UUID (BinData 4), or a JSON pointer to the key's alt name
    bson_types: frozenset[str] = frozenset()  # empty: any type; may hold "number"

    @property
    def deterministic(self) -> bool:
        return self.algorithm == DETERMINISTIC

    @property
    def randomized(self) -> bool:
        return self.algorithm != DETERMINISTIC

    @property
    def pointer(self) -> bool:
        return isinstance(self.key, str)

    @property
    def types(self) -> frozenset[str]:
        return self.bson_types


# -- parsing -------------------------------------------------------------------------------------------

# Parsed schemas by their bytes and isRemoteSchema, bounded by entries and bytes (--schemaCacheMB): a
# parsed tree costs about what its source does, a few times over.
_CACHE: ByteLRU[tuple[bytes, bool], Schema] = ByteLRU()
PARSED_COST = 4


def parse(schema: Mapping[str, Any], remote: bool) -> Schema:
    """The EncryptionSchema for a jsonSchema, validated as mongocryptd does; cached by its bytes.

    A schema from a request (an ExactDocument) is keyed by the bytes the client sent, whose hash is
    computed once per distinct schema: a hit costs the same whatever the schema's size."""
    if bsonvalues.has_duplicates(schema):
        # Checked before the cache: a schema re-encoded for its key has lost its repeated name.
        _refuse_duplicates(schema)
    source = schema.raw if type(schema) is bsonvalues.ExactDocument else bsonvalues.encode(schema)
    key = (source, remote)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    _check_json_schema(schema)
    parsed = Schema(_build(schema, remote, allow_encrypt=True, inherited={}, top_level=True), remote)
    _CACHE.put(key, parsed, PARSED_COST * len(source))
    return parsed


def cache_stats() -> tuple[int, int]:
    return _CACHE.hits, _CACHE.misses


def _subschemas(schema: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(keyword, subschema) for every nested subschema of `schema`."""
    found: list[tuple[str, Any]] = []
    for keyword in ("properties", "patternProperties"):
        value = schema.get(keyword)
        if isinstance(value, Mapping):
            found.extend((keyword, sub) for sub in value.values())
    for keyword in ("additionalProperties", "additionalItems", "not"):
        value = schema.get(keyword)
        if isinstance(value, Mapping):
            found.append((keyword, value))
    items = schema.get("items")
    if isinstance(items, Mapping):
        found.append(("items", items))
    elif isinstance(items, list):
        found.extend(("items", sub) for sub in items)
    for keyword in ("allOf", "anyOf", "oneOf"):
        value = schema.get(keyword)
        if isinstance(value, list):
            found.extend((keyword, sub) for sub in value)
    dependencies = schema.get("dependencies")
    if isinstance(dependencies, Mapping):
        found.extend(("dependencies", sub) for sub in dependencies.values() if isinstance(sub, Mapping))
    return found


SCHEMA_MAPS = ("properties", "patternProperties", "dependencies")
SUBSCHEMAS = ("items", "additionalItems", "additionalProperties", "not", "allOf", "anyOf", "oneOf")


def _refuse_duplicates(value: Any, keyword: str = "") -> None:
    """A name given twice anywhere in a schema: mongod refuses a repeated keyword; a repeated property
    (mongocryptd keeps the last one) and any other repeated name are refused too, never read last-wins."""
    repeated = getattr(value, "duplicates", ())
    if isinstance(value, Mapping):
        if repeated:
            if keyword in ("", *SUBSCHEMAS) or keyword.startswith("property:"):
                fail("duplicate_keyword", keyword=repeated[0])
            if keyword in SCHEMA_MAPS:
                fail("duplicate_property", keyword=keyword, name=repeated[0])
            if keyword in ("encrypt", "encryptMetadata"):
                fail("idl_duplicate", field=f"{keyword}.{repeated[0]}")
            fail("duplicate_value", keyword=keyword)
        for name, item in value.items():
            if keyword in SCHEMA_MAPS:
                _refuse_duplicates(item, f"property:{name}")
            elif keyword in ("", *SUBSCHEMAS) or keyword.startswith("property:"):
                _refuse_duplicates(item, name)
            else:
                _refuse_duplicates(item, keyword)
    elif isinstance(value, list):
        for item in value:
            _refuse_duplicates(item, keyword if keyword not in ("items", "allOf", "anyOf", "oneOf") else "not")


def _bad(code: int, message: str) -> NoReturn:
    raise CommandError(code, message)


def _type(value: Any) -> str:
    return bsonvalues.bson_type(value)


def _count(schema: Mapping[str, Any], keyword: str) -> None:
    """A length or count keyword (maxLength, minItems...): mongod's parse of a non-negative 64-bit integer."""
    if keyword not in schema:
        return
    non_negative_long(keyword, schema[keyword], 9)


def _bound(schema: Mapping[str, Any], keyword: str, exclusive: str) -> None:
    if keyword in schema and not is_number(schema[keyword]):
        _bad(14, f"$jsonSchema keyword '{keyword}' must be a number")
    if exclusive in schema:
        if not isinstance(schema[exclusive], bool):
            _bad(14, f"$jsonSchema keyword '{exclusive}' must be a boolean")
        if keyword not in schema:
            _bad(9, f"$jsonSchema keyword '{keyword}' must be a present if {exclusive} is present")


def _subschema_list(schema: Mapping[str, Any], keyword: str) -> None:
    if keyword not in schema:
        return
    value = schema[keyword]
    if not isinstance(value, list):
        _bad(14, f"$jsonSchema keyword '{keyword}' must be an array")
    if not value:
        _bad(2, f"$jsonSchema keyword '{keyword}' must be a non-empty array")
    for item in value:
        if not isinstance(item, Mapping):
            _bad(14, f"$jsonSchema keyword '{keyword}' must be an array of objects, but found an element of type "
                     f"{_type(item)}")
    for item in value:
        _check_json_schema(item, False)


def _check_json_schema(schema: Mapping[str, Any], top_level: bool = True) -> None:
    """mongod's own $jsonSchema parse, which runs (over the whole schema) before the encryption rules, in
    both local and remote mode: its keyword checks and messages, in its order."""
    for keyword in schema:
        if keyword in UNIMPLEMENTED_KEYWORDS:
            fail("keyword_unimplemented", keyword=keyword)
        if keyword not in JSON_SCHEMA_KEYWORDS:
            fail("unknown_keyword", keyword=keyword)
    for keyword in ("description", "title"):
        if keyword in schema and not isinstance(schema[keyword], str):
            fail("keyword_string", keyword=keyword)
    if "type" in schema and "bsonType" in schema:
        fail("type_and_bsontype")
    if "encrypt" in schema:
        if "type" in schema:
            fail("encrypt_with_type")
        if "bsonType" in schema:
            fail("encrypt_with_bsontype")
    for keyword in ("bsonType", "type"):
        if keyword in schema:
            _type_names(schema[keyword], keyword)
    # scalar keywords
    if "pattern" in schema:
        pattern = schema["pattern"]
        if type(pattern) is not str:
            _bad(14, "$jsonSchema keyword 'pattern' must be a string")
        if not top_level:  # at the top level mongod translates `pattern` to AlwaysTrue: never compiled
            if "\x00" in pattern:
                _bad(2, "Regular expression cannot contain an embedded null byte")
            problem = pcre_error(pattern)
            if problem is not None:
                _bad(51091, f"Regular expression is invalid: {problem}")
    for keyword in ("maxLength", "minLength"):
        _count(schema, keyword)
    if "multipleOf" in schema:
        if not is_number(schema["multipleOf"]):
            _bad(14, "$jsonSchema keyword 'multipleOf' must be a number")
        factor = schema["multipleOf"]
        if (factor.to_decimal() if isinstance(factor, Decimal128) else factor) <= 0:
            _bad(9, "$jsonSchema keyword 'multipleOf' must have a positive value")
    _bound(schema, "maximum", "exclusiveMaximum")
    _bound(schema, "minimum", "exclusiveMinimum")
    # array keywords
    for keyword in ("minItems", "maxItems"):
        _count(schema, keyword)
    if "uniqueItems" in schema and not isinstance(schema["uniqueItems"], bool):
        _bad(14, "$jsonSchema keyword 'uniqueItems' must be a boolean")
    if "items" in schema:
        items = schema["items"]
        if isinstance(items, list):
            for item in items:
                if not isinstance(item, Mapping):
                    _bad(14, "$jsonSchema keyword 'items' requires that each element of the array is an object, but "
                             f"found a {_type(item)}")
            for item in items:
                _check_json_schema(item, False)
        elif isinstance(items, Mapping):
            _check_json_schema(items, False)
        else:
            _bad(14, f"$jsonSchema keyword 'items' must be an array or an object, not {_type(items)}")
    if "additionalItems" in schema:
        extra = schema["additionalItems"]
        if isinstance(extra, Mapping):
            _check_json_schema(extra, False)
        elif not isinstance(extra, bool):
            _bad(14, "$jsonSchema keyword 'additionalItems' must be either an object or a boolean, but got a "
                     f"{_type(extra)}")
    # encryption keywords
    if "encrypt" in schema and "encryptMetadata" in schema:
        fail("encrypt_and_metadata")
    if "encryptMetadata" in schema:
        if not isinstance(schema["encryptMetadata"], Mapping):
            fail("keyword_object", keyword="encryptMetadata")
        if not schema["encryptMetadata"]:
            fail("metadata_empty")
        _metadata_fields(schema["encryptMetadata"], "encryptMetadata")
    if "encrypt" in schema:
        if not isinstance(schema["encrypt"], Mapping):
            fail("keyword_object", keyword="encrypt")
        _metadata_fields(schema["encrypt"], "encrypt")
    # object keywords
    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list):
            _bad(14, f"$jsonSchema keyword 'required' must be an array, but found an element of type "
                     f"{_type(required)}")
        for name in required:
            if type(name) is not str:
                _bad(14, "$jsonSchema keyword 'required' must be an array of strings, but found an element of type: "
                         f"{_type(name)}")
        if len(set(required)) != len(required):
            _bad(9, "$jsonSchema keyword 'required' array cannot contain duplicate values")
        if not required:
            _bad(9, "$jsonSchema keyword 'required' cannot be an empty array")
    if "properties" in schema:
        if not isinstance(schema["properties"], Mapping):
            _bad(14, "$jsonSchema keyword 'properties' must be an object")
        for name, sub in schema["properties"].items():
            if not isinstance(sub, Mapping):
                fail("nested_not_object", keyword="properties", name=name)
            _check_json_schema(sub, False)
    if "patternProperties" in schema:
        if not isinstance(schema["patternProperties"], Mapping):
            _bad(14, "$jsonSchema keyword 'patternProperties' must be an object")
        for pattern, sub in schema["patternProperties"].items():
            if not isinstance(sub, Mapping):
                _bad(14, f"$jsonSchema keyword 'patternProperties' has property '{pattern}' which is not an object")
            problem = pcre_error(pattern)
            if problem is not None:
                _bad(2, f"Invalid regular expression: {problem}")
            _check_json_schema(sub, False)
    if "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        if isinstance(extra, Mapping):
            _check_json_schema(extra, False)
        elif not isinstance(extra, bool):
            _bad(14, "$jsonSchema keyword 'additionalProperties' must be an object or a boolean")
    for keyword in ("minProperties", "maxProperties"):
        _count(schema, keyword)
    if "dependencies" in schema:
        dependencies = schema["dependencies"]
        if not isinstance(dependencies, Mapping):
            _bad(14, "$jsonSchema keyword 'dependencies' must be an object")
        for name, dependency in dependencies.items():
            if isinstance(dependency, Mapping):
                _check_json_schema(dependency, False)
            elif isinstance(dependency, list):
                if not dependency:
                    _bad(9, f"property '{name}' in $jsonSchema keyword 'dependencies' cannot be an empty array")
                for item in dependency:
                    if type(item) is not str:
                        _bad(14, f"array '{name}' in $jsonSchema keyword 'dependencies' can only contain strings, "
                                 f"but found element of type: {_type(item)}")
                seen: set[str] = set()
                for item in dependency:
                    if item in seen:
                        _bad(9, f"array '{name}' in $jsonSchema keyword 'dependencies' contains duplicate element: "
                                f"{item}")
                    seen.add(item)
            else:
                _bad(14, f"property '{name}' in $jsonSchema keyword 'dependencies' must be either an object or an "
                         "array")
    # logical keywords
    for keyword in ("allOf", "anyOf", "oneOf"):
        _subschema_list(schema, keyword)
    if "not" in schema:
        if not isinstance(schema["not"], Mapping):
            _bad(14, f"$jsonSchema keyword 'not' must be an object, but found an element of type "
                     f"{_type(schema['not'])}")
        _check_json_schema(schema["not"], False)
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list):
            _bad(14, f"$jsonSchema keyword 'enum' must be an array, but found an element of type {_type(values)}")
        if not values:
            _bad(9, "$jsonSchema keyword 'enum' cannot be an empty array")
        keys = [order_key(_unordered(value)) for value in values]
        if len(set(keys)) != len(keys):
            _bad(9, "$jsonSchema keyword 'enum' array cannot contain duplicate values.")


def _unordered(value: Any) -> Any:
    """`value` with its documents' fields in a canonical order (mongod compares enum values ignoring it)."""
    if isinstance(value, Mapping):
        return {name: _unordered(value[name]) for name in sorted(value)}
    if isinstance(value, list):
        return [_unordered(item) for item in value]
    return value


def _type_names(value: Any, keyword: str) -> frozenset[str]:
    """The type aliases named by a `bsonType`/`type` value (a string or an array of strings)."""
    # type() rather than isinstance: bson's Code is a str subclass, and JavaScript is not a type name.
    if type(value) is not str and not isinstance(value, list):
        fail("type_set_type", keyword=keyword)
    names = [value] if type(value) is str else value
    if not names:
        _bad(9, f"$jsonSchema keyword '{keyword}' must name at least one type")
    if not all(type(name) is str for name in names):
        fail("type_set_elements", keyword=keyword)
    if "integer" in names:
        fail("type_integer")
    if len(set(names)) != len(names):
        fail("type_duplicate", keyword=keyword, name=next(n for n in names if names.count(n) > 1))
    aliases = JSON_TYPES if keyword == "type" else {name: name for name in TYPE_ALIASES}
    result: set[str] = set()
    for name in names:
        if name not in aliases:
            fail("unknown_bson_type", name=name)
        result.add(aliases[name])
    return frozenset(result)


def _compile(pattern: str) -> RulePattern:
    return compile_pattern(pattern)  # bounded-time search; 51141 for a bad pattern, as before


def _restricts_to_object(schema: Mapping[str, Any]) -> bool:
    """True when the subschema admits objects only: then (and only then) its fields may be encrypted."""
    for keyword in ("bsonType", "type"):
        if keyword in schema:
            names = _type_names(schema[keyword], keyword)
            return names == {"object"}
    return False


def _check_keywords(schema: Mapping[str, Any], remote: bool) -> None:
    for keyword in schema:
        if keyword not in FLE_KEYWORDS:
            fail("keyword_unsupported", keyword=keyword)
        if not remote and keyword not in LOCAL_KEYWORDS:
            fail("keyword_remote_only", keyword=keyword)


def _metadata_fields(spec: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """keyId/algorithm (and bsonType for `encrypt`) of an encrypt or encryptMetadata object, checked."""
    allowed = ("keyId", "algorithm", "bsonType") if owner == "encrypt" else ("keyId", "algorithm")
    fields: dict[str, Any] = {}
    for name, value in spec.items():
        if name not in allowed:
            fail("encrypt_field" if owner == "encrypt" else "metadata_field", field=name)
        fields[name] = value
    if "algorithm" in fields:
        if not isinstance(fields["algorithm"], str):
            from markd import bsonvalues as values

            fail("idl_wrong_type", field=f"{owner}.algorithm", actual=values.bson_type(fields["algorithm"]),
                 expected="string")
        if fields["algorithm"] not in ALGORITHMS:
            fail("bad_algorithm", value=fields["algorithm"], field=owner)
    if "keyId" in fields:
        key_id = fields["keyId"]
        if isinstance(key_id, str):
            if not key_id.startswith("/"):
                fail("bad_pointer", pointer=key_id)
        elif not isinstance(key_id, list):
            fail("key_id_kind", type=bsonvalues.bson_type(key_id))
        else:
            for element in key_id:
                if type(element) is bytes:  # pymongo's bson decodes BinData of subtype 0 as bytes
                    element = Binary(element, 0)
                if not isinstance(element, Binary):
                    fail("key_id_not_bindata", type=bsonvalues.bson_type(element))
                if element.subtype != 4:
                    fail("key_id_not_uuid", subtype=element.subtype)
                if len(element) != 16:
                    fail("key_id_uuid_length")
            if not key_id:
                fail("key_id_empty")
    if "bsonType" in fields:
        fields["bsonType"] = _type_names(fields["bsonType"], "bsonType")
    return fields


def _encrypted(spec: Mapping[str, Any], inherited: Mapping[str, Any]) -> Encrypted:
    fields = {**inherited, **_metadata_fields(spec, "encrypt")}
    if "algorithm" not in fields:
        fail("no_algorithm")
    if "keyId" not in fields:
        fail("no_key_id")
    algorithm = ALGORITHMS[fields["algorithm"]]
    key_id = fields["keyId"]
    key: Binary | str = key_id if isinstance(key_id, str) else Binary(bytes(key_id[0]), 4)
    types: frozenset[str] = fields.get("bsonType", frozenset())
    if algorithm == DETERMINISTIC:
        if len(types) != 1 or "number" in types:
            fail("deterministic_one_type")
        if isinstance(key, str):
            fail("deterministic_pointer")
    illegal = NOT_DETERMINISTIC if algorithm == DETERMINISTIC else NEVER_ENCRYPTABLE
    for name in TYPE_ORDER:
        if name in types and name in illegal:
            fail("schema_type_illegal", type=name)
    return Encrypted(algorithm, key, types)


def _build(schema: Mapping[str, Any], remote: bool, *, allow_encrypt: bool, inherited: Mapping[str, Any],
           top_level: bool = False, allow_random: bool = True) -> SchemaNode:
    """The encryption tree of one (already JSON-Schema-checked) subschema, checked in mongocryptd's order."""
    _check_keywords(schema, remote)
    # Nothing inside arrays or logical combinators may be encrypted: their subschemas are only checked.
    for keyword, sub in _subschemas(schema):
        if keyword in ("items", "additionalItems", "allOf", "anyOf", "oneOf", "not"):
            _build(sub, remote, allow_encrypt=False, inherited=inherited)
    if "encrypt" in schema:
        if not allow_encrypt:
            fail("encrypt_not_allowed")
        if len(schema) > 1:
            fail("encrypt_siblings")
        encrypted = _encrypted(schema["encrypt"], inherited)
        if encrypted.algorithm == RANDOM and not allow_random:
            fail("id_algorithm", algorithm=RANDOM_NAME)
        return node(encrypted)
    if "encryptMetadata" in schema:
        if not allow_encrypt:
            fail("metadata_not_allowed")
        inherited = {**inherited, **_metadata_fields(schema["encryptMetadata"], "encryptMetadata")}

    fields_may_encrypt = allow_encrypt and _restricts_to_object(schema)
    properties: dict[str, SchemaNode] = {}
    for name, sub in schema.get("properties", {}).items():
        # A dotted property name would make the encrypted path ambiguous with a nested one; and
        # the top-level _id is compared by the server itself: it may only be deterministic.
        properties[name] = _build(sub, remote, allow_encrypt=fields_may_encrypt and "." not in name,
                                  inherited=inherited,
                                  allow_random=allow_random and not (top_level and name == "_id"))
    additional = schema.get("additionalProperties")
    additional_node = (
        _build(additional, remote, allow_encrypt=fields_may_encrypt, inherited=inherited,
               allow_random=allow_random and not (top_level and "_id" not in properties))
        if isinstance(additional, Mapping) else None
    )
    patterns = []
    for pattern, sub in schema.get("patternProperties", {}).items():
        compiled = _compile(pattern)
        patterns.append((compiled, _build(sub, remote, allow_encrypt=fields_may_encrypt, inherited=inherited,
                                          allow_random=allow_random and not (
                                              top_level and compiled.search("_id")))))
    return node(None, properties, tuple(patterns), additional_node)

