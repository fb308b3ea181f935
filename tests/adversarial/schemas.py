"""The encryption rules the generator uses: CSFLE jsonSchemas and QE encryptedFields, with fixed keys.

Each scheme variant is a rule document plus this package's own answer to "which paths are encrypted,
with what type" (`Field`), which is all the generator needs to tie a secret to an encrypted field.  The
rules are written as `Doc`s so that a variant can repeat a key (issue 12 class 9).
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from bson import Int64
from bson.binary import Binary

from tests.adversarial.rawbson import Doc

DET = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RANDOM = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
DB = "db"
COLL = "coll"
OTHER = "other"  # a second encrypted collection ($lookup, $unionWith, $graphLookup)
PLAIN = "plain"  # an unencrypted collection


def _key(n: int) -> Binary:
    return Binary(uuid.UUID(f"5ec12e7a-0000-4000-8000-{n:012d}").bytes, 4)


KEY_NAMES = ("ssn", "pin", "note", "acct", "dob", "notes", "pattern", "meta", "score", "when", "txt", "sub",
             "other.ssn", "other.pin")
KEYS: dict[str, Binary] = {name: _key(i + 1) for i, name in enumerate(KEY_NAMES)}

RANGE_MIN, RANGE_MAX = 0, 2_000_000_000
DATE_MIN, DATE_MAX = datetime.datetime(2000, 1, 1), datetime.datetime(2100, 1, 1)


@dataclass(frozen=True)
class Field:
    """An encrypted path, as this package understands the rules."""

    path: str
    bson_type: str  # the type a value must have ("any": random CSFLE without bsonType)
    kind: str  # det | rand | equality | range | unindexed | text | substring

    @property
    def leaf(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def parent(self) -> str | None:
        return self.path.rsplit(".", 1)[0] if "." in self.path else None

    @property
    def secret_type(self) -> str:
        return "string" if self.bson_type == "any" else self.bson_type


@dataclass(frozen=True)
class Scheme:
    name: str  # csfle | csfle-meta | qe | qe-range
    flavour: str  # csfle | qe
    fields: tuple[Field, ...]
    other_fields: tuple[Field, ...]

    def field(self, path: str) -> Field:
        return next(f for f in self.fields if f.path == path)


def _enc(key: Any, bson_type: str | None, algorithm: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if key is not None:
        spec["keyId"] = key if isinstance(key, str) else [key]
    if bson_type is not None:
        spec["bsonType"] = bson_type
    if algorithm is not None:
        spec["algorithm"] = algorithm
    return {"encrypt": spec}


# ------------------------------------------------------------------------------------------------
# CSFLE
# ------------------------------------------------------------------------------------------------

def csfle_properties(meta: bool) -> Doc:
    """The `properties` of db.coll; with `meta`, ssn and nested.pin inherit the root's encryptMetadata."""
    ssn = _enc(None, "string", None) if meta else _enc(KEYS["ssn"], "string", DET)
    pin = _enc(None, "int", None) if meta else _enc(KEYS["pin"], "int", DET)
    if meta:  # nested's own encryptMetadata (random) overrides the root's: pin names its algorithm and key
        pin = _enc(KEYS["meta"], "int", DET)
    # nested.note inherits algorithm and key from nested's encryptMetadata.
    nested = {"bsonType": "object",
              "encryptMetadata": {"algorithm": RANDOM, "keyId": [KEYS["note"]]},
              "properties": {"pin": pin, "note": _enc(None, "string", None)}}
    return Doc([
        ("ssn", ssn),
        ("nested", nested),
        ("acct", _enc(KEYS["acct"], "long", DET)),
        ("dob", _enc(KEYS["dob"], "date", DET)),
        ("notes", _enc(KEYS["notes"], None, RANDOM)),
        ("alt", _enc("/keyName", "string", RANDOM)),  # a JSON-pointer keyId: the key's altName is in the document
    ])


def csfle_schema(meta: bool = False, *, properties: Doc | None = None) -> Doc:
    pairs: list[tuple[str, Any]] = [("bsonType", "object")]
    if meta:
        pairs.append(("encryptMetadata", {"algorithm": DET, "keyId": [KEYS["meta"]]}))
    pairs.append(("properties", properties if properties is not None else csfle_properties(meta)))
    pairs.append(("patternProperties", {"^enc_": _enc(KEYS["pattern"], "string", DET)}))
    return Doc(pairs)


def csfle_other_schema() -> Doc:
    return Doc([("bsonType", "object"), ("properties", {
        "ssn": _enc(KEYS["other.ssn"], "string", DET),
        "nested": {"bsonType": "object", "properties": {"pin": _enc(KEYS["other.pin"], "int", DET)}}})])


CSFLE_FIELDS = (
    Field("ssn", "string", "det"), Field("nested.pin", "int", "det"), Field("nested.note", "string", "rand"),
    Field("acct", "long", "det"), Field("dob", "date", "det"), Field("notes", "any", "rand"),
    Field("alt", "string", "rand"), Field("enc_a", "string", "det"), Field("enc_zz", "string", "det"),
)
OTHER_FIELDS = (Field("ssn", "string", "det"), Field("nested.pin", "int", "det"))

# ------------------------------------------------------------------------------------------------
# Queryable Encryption
# ------------------------------------------------------------------------------------------------

def _text_query(kind: str) -> dict[str, Any]:
    query: dict[str, Any] = {"queryType": kind, "contention": Int64(0), "strMinQueryLength": Int64(2),
                             "strMaxQueryLength": Int64(20), "caseSensitive": True, "diacriticSensitive": True}
    if kind == "substring":
        query["strMaxLength"] = Int64(60)
    return query


def _range(minimum: Any, maximum: Any) -> dict[str, Any]:
    return {"queryType": "range", "contention": Int64(0), "sparsity": Int64(1), "trimFactor": 1,
            "min": minimum, "max": maximum}


def qe_field_docs(pin_range: bool = False) -> list[Any]:
    equality = {"queryType": "equality", "contention": Int64(0)}
    return [
        {"path": "ssn", "keyId": KEYS["ssn"], "bsonType": "string", "queries": equality},
        {"path": "nested.pin", "keyId": KEYS["pin"], "bsonType": "int",
         "queries": _range(RANGE_MIN, RANGE_MAX) if pin_range else equality},
        {"path": "score", "keyId": KEYS["score"], "bsonType": "int", "queries": _range(RANGE_MIN, RANGE_MAX)},
        {"path": "when", "keyId": KEYS["when"], "bsonType": "date", "queries": _range(DATE_MIN, DATE_MAX)},
        {"path": "acct", "keyId": KEYS["acct"], "bsonType": "long"},
        {"path": "txt", "keyId": KEYS["txt"], "bsonType": "string",
         "queries": [_text_query("prefix"), _text_query("suffix")]},
        {"path": "sub", "keyId": KEYS["sub"], "bsonType": "string", "queries": _text_query("substring")},
    ]


def qe_encrypted_fields(pin_range: bool = False, *, fields: list[Any] | None = None, collection: str = COLL) -> Doc:
    return Doc([("escCollection", f"enxcol_.{collection}.esc"), ("ecocCollection", f"enxcol_.{collection}.ecoc"),
                ("fields", qe_field_docs(pin_range) if fields is None else fields)])


def qe_other_encrypted_fields() -> Doc:
    equality = {"queryType": "equality", "contention": Int64(0)}
    return qe_encrypted_fields(fields=[
        {"path": "ssn", "keyId": KEYS["other.ssn"], "bsonType": "string", "queries": equality},
        {"path": "nested.pin", "keyId": KEYS["other.pin"], "bsonType": "int", "queries": equality}],
        collection=OTHER)


def qe_fields(pin_range: bool) -> tuple[Field, ...]:
    return (
        Field("ssn", "string", "equality"), Field("nested.pin", "int", "range" if pin_range else "equality"),
        Field("score", "int", "range"), Field("when", "date", "range"), Field("acct", "long", "unindexed"),
        Field("txt", "string", "text"), Field("sub", "string", "substring"),
    )


SCHEMES: dict[str, Scheme] = {
    "csfle": Scheme("csfle", "csfle", CSFLE_FIELDS, OTHER_FIELDS),
    "csfle-meta": Scheme("csfle-meta", "csfle",
                         CSFLE_FIELDS,
                         OTHER_FIELDS),
    "qe": Scheme("qe", "qe", qe_fields(False), OTHER_FIELDS),
    "qe-range": Scheme("qe-range", "qe", qe_fields(True), OTHER_FIELDS),
}


# ------------------------------------------------------------------------------------------------
# The rules as libmongocrypt attaches them, with the duplicate-key variants of class 9
# ------------------------------------------------------------------------------------------------

RULE_DUPLICATES = {
    "csfle": ("jsonSchema twice", "properties twice", "a property twice", "namespace twice in csfleEncryptionSchemas",
              "isRemoteSchema twice"),
    "qe": ("encryptionInformation twice", "namespace twice in schema", "fields twice", "path twice",
           "schema twice"),
}


def ns(collection: str) -> str:
    return f"{DB}.{collection}"


def csfle_rules(scheme: Scheme, namespaces: tuple[str, ...], *, multi: bool,
                duplicate: str | None) -> list[tuple[str, Any]]:
    """The fields libmongocrypt adds to a CSFLE command (jsonSchema + isRemoteSchema, or csfleEncryptionSchemas)."""
    meta = scheme.name == "csfle-meta"
    properties = csfle_properties(meta)
    if duplicate == "a property twice":
        properties = Doc([*properties.pairs, ("ssn", {})])
    schema = csfle_schema(meta, properties=properties)
    if duplicate == "properties twice":
        schema = Doc([*schema.pairs, ("properties", {})])
    schemas = {COLL: schema, OTHER: csfle_other_schema(), PLAIN: {}}
    if multi or len(namespaces) > 1:
        entries: list[tuple[str, Any]] = [
            (ns(name), {"jsonSchema": schemas.get(name, {}), "isRemoteSchema": False}) for name in namespaces]
        if duplicate == "namespace twice in csfleEncryptionSchemas":
            entries.append((ns(COLL), {"jsonSchema": {}, "isRemoteSchema": False}))
        return [("csfleEncryptionSchemas", Doc(entries))]
    pairs: list[tuple[str, Any]] = [("jsonSchema", schemas.get(namespaces[0], {})), ("isRemoteSchema", False)]
    if duplicate == "jsonSchema twice":
        pairs.insert(1, ("jsonSchema", {}))
    if duplicate == "isRemoteSchema twice":
        pairs.append(("isRemoteSchema", True))
    return pairs


def qe_rules(scheme: Scheme, namespaces: tuple[str, ...], *, duplicate: str | None) -> list[tuple[str, Any]]:
    """`encryptionInformation` as libmongocrypt attaches it for these namespaces."""
    pin_range = scheme.name == "qe-range"
    fields = qe_field_docs(pin_range)
    if duplicate == "path twice":
        fields = [Doc([("path", "ssn"), ("path", "unrelated"), ("keyId", KEYS["ssn"]), ("bsonType", "string"),
                       ("queries", {"queryType": "equality", "contention": Int64(0)})]), *fields[1:]]
    coll = qe_encrypted_fields(pin_range, fields=fields)
    if duplicate == "fields twice":
        coll = Doc([*coll.pairs, ("fields", [])])
    by_name = {COLL: coll, OTHER: qe_other_encrypted_fields(), PLAIN: Doc([("fields", [])])}
    entries: list[tuple[str, Any]] = [(ns(name), by_name[name]) for name in namespaces]
    if duplicate == "namespace twice in schema":
        entries.append((ns(COLL), Doc([("escCollection", "enxcol_.coll.esc"), ("ecocCollection", "enxcol_.coll.ecoc"),
                                        ("fields", [])])))
    info_pairs: list[tuple[str, Any]] = [("type", 1), ("schema", Doc(entries))]
    if duplicate == "schema twice":
        info_pairs.append(("schema", Doc([(ns(COLL), Doc([("fields", [])]))])))
    pairs: list[tuple[str, Any]] = [("encryptionInformation", Doc(info_pairs))]
    if duplicate == "encryptionInformation twice":
        pairs.append(("encryptionInformation", Doc([("type", 1), ("schema", {ns(COLL): {"fields": []}})])))
    return pairs
