"""Every BSON type a CSFLE placeholder may carry keeps its exact type, byte for byte, through markd and
libmongocrypt: the placeholder is 0x00 + {a, ki, v} with `v` as sent, and the ciphertext decrypts
to the same value of the same type (int32 stays int32, symbol stays symbol, ...).
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Code, Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.max_key import MaxKey
from bson.min_key import MinKey

from markd import bsonvalues
from markd.bsonvalues import DBPointer, Symbol, Undefined
from tests.support.crypt import CryptDriver

DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RANDOM = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"

# (bsonType alias, value) for each type deterministic encryption accepts (the spec's types.json list)
DETERMINISTIC_VALUES: list[tuple[str, Any]] = [
    ("string", "four-score"),
    ("int", 7),
    ("long", Int64(7)),
    ("objectId", ObjectId("5f0c8b1e2a9b3c4d5e6f7a8b")),
    ("symbol", Symbol("a-symbol")),
    ("binData", Binary(b"\x01\x02\x03", 0)),
    ("javascript", Code("return 1")),
    ("timestamp", Timestamp(1_700_000_000, 3)),
    ("regex", Regex("^ab+c", "im")),
    ("date", datetime.datetime(2024, 2, 29, 12, 0, 0, 123000)),
    ("dbPointer", DBPointer("db.other", ObjectId("5f0c8b1e2a9b3c4d5e6f7a8c"))),
]
# Types only the random algorithm may encrypt.
RANDOM_ONLY_VALUES: list[tuple[str, Any]] = [
    ("double", 1.5),
    ("decimal", Decimal128("1.50")),
    ("bool", True),
    ("object", {"street": "Main", "n": Int64(1)}),
    ("array", [1, "two", Int64(3)]),
    ("javascriptWithScope", Code("return x", {"x": 1})),
]


@pytest.fixture(scope="module")
def driver(markd):
    crypt = CryptDriver(markd.uri)
    crypt.key = crypt.create_key()  # type: ignore[attr-defined]
    yield crypt
    crypt.close()


def _mark_and_encrypt(driver: CryptDriver, algorithm: str, bson_type: str, value: Any) -> tuple[Binary, Any]:
    schema = {"bsonType": "object", "properties": {
        "secret": {"encrypt": {"keyId": [driver.key], "algorithm": algorithm, "bsonType": bson_type}}}}
    driver.schema_map = {"db.coll": schema}
    encrypted = driver.encrypt("db", {"insert": "coll", "documents": [{"_id": 1, "secret": value}]})
    placeholder = driver.exchanges[-1].reply["result"]["documents"][0]["secret"]
    return placeholder, encrypted["documents"][0]["secret"]


def _check(driver: CryptDriver, algorithm: str, bson_type: str, value: Any) -> None:
    placeholder, ciphertext = _mark_and_encrypt(driver, algorithm, bson_type, value)
    a = 1 if algorithm == DETERMINISTIC else 2
    expected = b"\x00" + bsonvalues.encode({"a": a, "ki": driver.key, "v": value})
    assert isinstance(placeholder, Binary) and placeholder.subtype == 6
    assert bytes(placeholder) == expected, "placeholder is not 0x00 + {a, ki, v} with v as sent"
    assert isinstance(ciphertext, Binary) and ciphertext.subtype == 6 and ciphertext[0] == a
    decrypted = driver.decrypt_value(ciphertext)
    assert bsonvalues.bson_type(decrypted) == bson_type
    assert bsonvalues.encode({"v": decrypted}) == bsonvalues.encode({"v": value})


@pytest.mark.parametrize(("bson_type", "value"), DETERMINISTIC_VALUES, ids=[t for t, _ in DETERMINISTIC_VALUES])
def test_deterministic_value_keeps_its_type(driver, bson_type, value):
    _check(driver, DETERMINISTIC, bson_type, value)


@pytest.mark.parametrize(("bson_type", "value"), DETERMINISTIC_VALUES + RANDOM_ONLY_VALUES,
                         ids=[t for t, _ in DETERMINISTIC_VALUES + RANDOM_ONLY_VALUES])
def test_random_value_keeps_its_type(driver, bson_type, value):
    _check(driver, RANDOM, bson_type, value)


REFUSED_BY_DETERMINISTIC = [*RANDOM_ONLY_VALUES, ("null", None), ("undefined", Undefined()),
                            ("minKey", MinKey()), ("maxKey", MaxKey())]


@pytest.mark.parametrize(("bson_type", "value"), REFUSED_BY_DETERMINISTIC, ids=[t for t, _ in REFUSED_BY_DETERMINISTIC])
def test_deterministic_refuses_types_it_cannot_encrypt(client, driver, bson_type, value):
    from tests.support.process import raw_command

    schema = {"bsonType": "object", "properties": {
        "secret": {"encrypt": {"keyId": [driver.key], "algorithm": DETERMINISTIC, "bsonType": bson_type}}}}
    reply = raw_command(client, "db", {"insert": "coll", "documents": [{"secret": value}],
                                       "jsonSchema": schema, "isRemoteSchema": False})
    assert reply["ok"] == 0.0, reply
    # The spec's types.json: "Cannot encrypt element of type: <type>" (mongocryptd 6.0+ wording).
    assert f"Cannot encrypt element of type: {bson_type}" in reply["errmsg"], reply
