"""A warm start: the analysis imported and exercised before markd listens (issue 15).

A driver spawns mongocryptd and sends its first marking request right after its first `hello`. Left
cold, that request would pay for importing the analysis (tens of milliseconds) and for every first
call on its way. `warm_up` answers a few synthetic requests of each scheme, framed as a driver frames
them, through the same path as a real request (wire decode, dispatch, analysis, reply encode), so
the first real one only pays for parsing its own rules. Nothing here is logged or counted.
"""

from __future__ import annotations

import struct
import time
import uuid
from typing import Any

import bson
from bson import Int64
from bson.binary import Binary

from markd import core
from markd.commands import ConnectionInfo, Dispatcher
from markd.logs import log

_HEADER = struct.Struct("<iiii")
_OP_MSG = 2013
_KEY = Binary(uuid.UUID(int=0x5EED).bytes, 4)
_DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
_RANDOM = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
_CONNECTION = ConnectionInfo(0, "warm-up", True)

_JSON_SCHEMA = {
    "bsonType": "object",
    "encryptMetadata": {"keyId": [_KEY]},
    "properties": {
        "ssn": {"encrypt": {"bsonType": "string", "algorithm": _DETERMINISTIC}},
        "n": {"encrypt": {"bsonType": "int", "algorithm": _DETERMINISTIC}},
        "notes": {"encrypt": {"algorithm": _RANDOM}},
        "profile": {"bsonType": "object", "properties": {"code": {"encrypt": {"bsonType": "string",
                                                                             "algorithm": _DETERMINISTIC}}}},
    },
}
_ENCRYPTION_INFORMATION = {"type": 1, "schema": {"warm.c": {
    "escCollection": "enxcol_.c.esc", "ecocCollection": "enxcol_.c.ecoc",
    "fields": [
        {"path": "ssn", "keyId": _KEY, "bsonType": "string", "queries": {"queryType": "equality",
                                                                        "contention": Int64(8)}},
        {"path": "age", "keyId": _KEY, "bsonType": "int", "queries": {
            "queryType": "range", "contention": Int64(8), "sparsity": Int64(2), "trimFactor": 6, "min": 0,
            "max": 200}},
    ]}}}
_CSFLE = {"jsonSchema": _JSON_SCHEMA, "isRemoteSchema": False, "$db": "warm"}
_QE = {"encryptionInformation": _ENCRYPTION_INFORMATION, "$db": "warm"}

# (body, kind-1 documents): what libmongocrypt sends for the commonest commands of each scheme.
_REQUESTS: tuple[tuple[dict[str, Any], list[dict[str, Any]]], ...] = (
    ({"insert": "c", "ordered": True, **_CSFLE},
     [{"_id": 1, "ssn": "000-00-0000", "n": 1, "notes": "x", "profile": {"code": "c"}, "other": [1]}]),
    ({"find": "c", "filter": {"ssn": {"$in": ["a", "b"]}, "n": 2, "other": {"$gt": 1}}, **_CSFLE}, []),
    ({"aggregate": "c", "pipeline": [{"$match": {"ssn": "a"}}, {"$project": {"ssn": 1}}, {"$limit": 1}],
      "cursor": {}, **_CSFLE}, []),
    ({"update": "c", "updates": [{"q": {"ssn": "a"}, "u": {"$set": {"n": 3}}}], **_CSFLE}, []),
    ({"insert": "c", "ordered": True, **_QE}, [{"_id": 1, "ssn": "000-00-0000", "age": 30, "other": 1}]),
    ({"find": "c", "filter": {"ssn": "a", "age": {"$gte": 18, "$lte": 65}}, **_QE}, []),
)


def frame(body: dict[str, Any], documents: list[dict[str, Any]], request_id: int = 0) -> bytes:
    """An OP_MSG as a driver sends it: the body, and `documents` as a kind-1 sequence."""
    sections = b"\x00" + bson.encode(body)
    if documents:
        payload = b"documents\x00" + b"".join(bson.encode(document) for document in documents)
        sections += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    message = b"\x00\x00\x00\x00" + sections
    return _HEADER.pack(16 + len(message), request_id, 0, _OP_MSG) + message


def warm_up(dispatcher: Dispatcher) -> float:
    """Answer the synthetic requests (every one must be marked); the seconds it took."""
    started = time.perf_counter()
    for index, (body, documents) in enumerate(_REQUESTS):
        outcome = core.process_frame(frame(body, documents, index), _CONNECTION, dispatcher)
        reply = bson.decode(outcome.reply[21:]) if outcome.reply else {}
        if not reply.get("hasEncryptionPlaceholders"):
            # Not fatal (markd answers as before, only colder), but a sign the analysis changed under us.
            log.warning("warm-up request not marked", extra={"attr": {
                "command": next(iter(body)), "outcome": outcome.outcome, "code": reply.get("code", 0)}})
    return time.perf_counter() - started
