"""Shared pieces of the CSFLE tests (no tests here): a schema over real keys, placeholders read back as tuples."""

from __future__ import annotations

from typing import Any

from bson.binary import Binary

from markd import bsonvalues

DET = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RND = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"


def encrypt(key: Binary | str, algorithm: str, bson_type: str | list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"keyId": key if isinstance(key, str) else [key], "algorithm": algorithm}
    if bson_type is not None:
        spec["bsonType"] = bson_type
    return {"encrypt": spec}


def schema_for(key: Binary) -> dict[str, Any]:
    """The schema most rows run against: every kind of encrypted field, nested and not."""
    return {
        "bsonType": "object",
        "properties": {
            "ssn": encrypt(key, DET, "string"),
            "age": encrypt(key, DET, "int"),
            "rnd": encrypt(key, RND, "string"),
            "any": encrypt(key, RND),
            "num": encrypt(key, RND, "number"),
            "alt": encrypt("/keyName", RND, "string"),
            "doc": {"bsonType": "object", "properties": {"inner": encrypt(key, DET, "string"),
                                                         "deep": {"bsonType": "object", "properties": {
                                                             "leaf": encrypt(key, DET, "long")}}}},
            "plain": {"bsonType": "string"},
        },
    }


def P(algorithm: int, value: Any, alt: str | None = None) -> tuple[Any, ...]:
    """What a placeholder reads back as (see `unmark`)."""
    return ("placeholder", algorithm, alt, value)


def read_placeholder(value: Binary) -> dict[str, Any]:
    assert value.subtype == 6 and value[:1] == b"\x00", value
    return bsonvalues.decode(bytes(value[1:]))


def unmark(value: Any) -> Any:
    """`value` with every FLE1 placeholder replaced by ("placeholder", a, keyAltName, v)."""
    if isinstance(value, Binary) and value.subtype == 6:
        body = read_placeholder(value)
        assert set(body) in ({"a", "ki", "v"}, {"a", "ka", "v"}), body
        assert type(body["a"]) is int
        return P(body["a"], body["v"], body.get("ka"))
    if isinstance(value, dict):
        return {k: unmark(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unmark(v) for v in value]
    return value


def placeholders(value: Any) -> list[Binary]:
    if isinstance(value, Binary) and value.subtype == 6:
        return [value]
    if isinstance(value, dict):
        return [p for v in value.values() for p in placeholders(v)]
    if isinstance(value, list):
        return [p for v in value for p in placeholders(v)]
    return []
