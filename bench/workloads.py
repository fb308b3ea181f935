"""The benchmark workloads: what libmongocrypt asks markd, as the exact OP_MSG frames pymongo sends.

Each marking workload is produced the way an application produces it: pymongocrypt's AutoEncrypter
(libmongocrypt 1.x) is given a `schema_map` (CSFLE) or an `encrypted_fields_map` (QE) and the
application's command; libmongocrypt builds the command for mongocryptd and hands it to a callback
that does exactly what pymongo's `_EncryptionIO.mark_command` does (inflate the top level, then
`Database.command`). That pymongo client talks to markd through a recording proxy, so the frames
replayed by the benchmark are byte for byte what pymongo put on the wire (kind-1 `documents`
sequences, `$db`, `$readPreference`...). Without pymongocrypt the commands are built by hand and
encoded with pymongo's own OP_MSG encoder.
"""

from __future__ import annotations

import datetime
import socket
import struct
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.binary import Binary
from bson.int64 import Int64

DATABASE = "bench"
CSFLE_COLLECTION = "people"
QE_COLLECTION = "patients"
CSFLE_NAMESPACE = f"{DATABASE}.{CSFLE_COLLECTION}"
QE_NAMESPACE = f"{DATABASE}.{QE_COLLECTION}"

DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RANDOM = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"

OP_MSG = 2013
_HEADER = struct.Struct("<iiii")

# Fixed key ids: marking never needs the keys themselves.
CSFLE_KEY_ID = Binary(uuid.UUID("6b1c1f3e-2f0a-4c55-9d0e-1d2b3c4d5e6f").bytes, 4)
QE_EQUALITY_KEY_ID = Binary(uuid.UUID("8f9e0d1c-2b3a-4958-8776-a5b4c3d2e1f0").bytes, 4)
QE_RANGE_KEY_ID = Binary(uuid.UUID("0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9").bytes, 4)


@dataclass
class Workload:
    """One request frame replayed over and over, and what its reply should look like."""

    key: str  # "a", "b", ... as in issue 8
    name: str
    description: str
    request: bytes  # a whole OP_MSG frame, exactly as pymongo sends it
    marking: bool  # a command markd must analyse (its reply carries placeholders)
    source: str = "pymongocrypt"  # how the frame was produced
    command_name: str = ""
    notes: list[str] = field(default_factory=list)


def csfle_json_schema() -> dict[str, Any]:
    """A jsonSchema with 5 encrypted fields: 2 deterministic, 3 random (one of them a whole object)."""
    return {
        "bsonType": "object",
        "encryptMetadata": {"keyId": [CSFLE_KEY_ID]},
        "properties": {
            "ssn": {"encrypt": {"bsonType": "string", "algorithm": DETERMINISTIC}},
            "phone": {"encrypt": {"bsonType": "string", "algorithm": DETERMINISTIC}},
            "salary": {"encrypt": {"bsonType": "int", "algorithm": RANDOM}},
            "notes": {"encrypt": {"bsonType": "string", "algorithm": RANDOM}},
            "address": {"encrypt": {"bsonType": "object", "algorithm": RANDOM}},
            "profile": {
                "bsonType": "object",
                "properties": {"nickname": {"bsonType": "string"}},
            },
        },
    }


def qe_encrypted_fields() -> dict[str, Any]:
    """encryptedFields with an equality field and a range field (what the app gives the driver)."""
    return {
        "fields": [
            {
                "path": "ssn",
                "keyId": QE_EQUALITY_KEY_ID,
                "bsonType": "string",
                "queries": {"queryType": "equality", "contention": Int64(8)},
            },
            {
                "path": "age",
                "keyId": QE_RANGE_KEY_ID,
                "bsonType": "int",
                "queries": {
                    "queryType": "range",
                    "contention": Int64(8),
                    "sparsity": Int64(2),
                    "trimFactor": 6,
                    "min": 0,
                    "max": 200,
                },
            },
        ],
    }


def person(index: int) -> dict[str, Any]:
    """A ~1 KB document with the 5 CSFLE-encrypted fields and unencrypted padding."""
    return {
        "_id": index,
        "name": f"Person Number {index:06d}",
        "ssn": f"{100 + index % 800:03d}-{index % 100:02d}-{index % 10000:04d}",
        "phone": f"+1-555-{index % 1000:03d}-{index % 10000:04d}",
        "salary": 50_000 + index % 100_000,
        "notes": ("Allergic to penicillin; follow-up in six months. " * 5)[:240],
        "address": {"street": f"{index} Main Street", "city": "Springfield", "zip": f"{index % 100000:05d}"},
        "profile": {"nickname": f"p{index}", "tags": ["alpha", "beta", "gamma"]},
        "city": "Springfield",
        "age": 20 + index % 60,
        "created": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        "padding": "x" * 450,
    }


def patient(index: int) -> dict[str, Any]:
    return {
        "_id": index,
        "name": f"Patient {index:06d}",
        "ssn": f"{100 + index % 800:03d}-{index % 100:02d}-{index % 10000:04d}",
        "age": 20 + index % 60,
        "ward": "cardiology",
        "padding": "y" * 200,
    }


def application_commands() -> list[tuple[str, str, str, str, bool, dict[str, Any]]]:
    """(key, name, description, flavour, marking, command) as the application issues them."""
    in_values = [f"{100 + i:03d}-{i % 100:02d}-{i:04d}" for i in range(100)]
    pipeline = [
        {"$match": {"ssn": "123-45-6789", "age": {"$gte": 21}}},
        {"$addFields": {"region": "north"}},
        {"$project": {"name": 1, "ssn": 1, "city": 1, "region": 1, "age": 1}},
        {"$sort": {"name": 1}},
        {"$limit": 50},
    ]
    return [
        ("b", "csfle_insert_1kb", "CSFLE insert, one ~1 KB document, 5 encrypted fields", "csfle", True,
         {"insert": CSFLE_COLLECTION, "documents": [person(1)], "ordered": True}),
        ("c", "csfle_find_in100", "CSFLE find, $in of 100 values on a deterministic field", "csfle", True,
         {"find": CSFLE_COLLECTION, "filter": {"ssn": {"$in": in_values}}}),
        ("d", "csfle_aggregate_5stage", "CSFLE aggregate, 5 stages ($match $addFields $project $sort $limit)",
         "csfle", True, {"aggregate": CSFLE_COLLECTION, "pipeline": pipeline, "cursor": {}}),
        ("e1", "qe_insert", "QE insert, equality + range field", "qe", True,
         {"insert": QE_COLLECTION, "documents": [patient(1)], "ordered": True}),
        ("e2", "qe_range_find", "QE find, two-sided range on the range field", "qe", True,
         {"find": QE_COLLECTION, "filter": {"age": {"$gte": 30, "$lte": 60}}}),
        ("f", "csfle_insert_batch_1000", "CSFLE insert batch of 1,000 documents (~1 MB)", "csfle", True,
         {"insert": CSFLE_COLLECTION, "documents": [person(i) for i in range(1000)], "ordered": True}),
    ]


# -- frames -------------------------------------------------------------------------------------------------


def op_msg_frame(command: dict[str, Any], database: str, request_id: int = 1) -> bytes:
    """A command framed by pymongo's own OP_MSG encoder (kind-1 sequence for insert.documents...)."""
    from bson.codec_options import DEFAULT_CODEC_OPTIONS
    from pymongo import message

    command = dict(command)
    _request_id, frame, _size, _max_doc = message._op_msg(0, command, database, None, DEFAULT_CODEC_OPTIONS)
    return with_request_id(frame, request_id)


def with_request_id(frame: bytes, request_id: int) -> bytes:
    buffer = bytearray(frame)
    struct.pack_into("<i", buffer, 4, request_id)
    return bytes(buffer)


def command_name_of(frame: bytes) -> str:
    """The first key of an OP_MSG body ("" for anything else)."""
    _length, _request_id, _response_to, op_code = _HEADER.unpack_from(frame)
    if op_code != OP_MSG or len(frame) < 27 or frame[20] != 0:
        return ""
    name_end = frame.index(b"\x00", 26)
    return frame[26:name_end].decode("utf-8", "replace")


def hello_frame() -> bytes:
    return op_msg_frame({"hello": 1}, "admin")


# -- capture through pymongocrypt ---------------------------------------------------------------------------


class RecordingProxy:
    """A TCP proxy in front of markd that keeps every byte a client sends (in threads; setup only)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.recorded: list[bytearray] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            stream = bytearray()
            with self._lock:
                self.recorded.append(stream)
            threading.Thread(target=self._pump, args=(client, upstream, stream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, record: bytearray | None) -> None:
        try:
            while True:
                data = source.recv(1 << 20)
                if not data:
                    break
                if record is not None:
                    record += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def frames(self) -> list[bytes]:
        """Every whole frame recorded so far, across connections, then forget them."""
        frames: list[bytes] = []
        with self._lock:
            for stream in self.recorded:
                offset = 0
                while len(stream) - offset >= 16:
                    length = _HEADER.unpack_from(stream, offset)[0]
                    if len(stream) - offset < length:
                        break
                    frames.append(bytes(stream[offset : offset + length]))
                    offset += length
                del stream[:offset]
        return frames

    def close(self) -> None:
        self._closed = True
        self.listener.close()


class _MarkingCaptured(Exception):
    """Raised after libmongocrypt has asked for markings: the rest of encryption is not needed."""


def capture_with_pymongocrypt(markd_port: int, log: Callable[[str], None]) -> dict[str, bytes]:
    """Frames (by workload key) pymongo sends to mongocryptd when libmongocrypt marks each command."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import DEFAULT_RAW_BSON_OPTIONS, RawBSONDocument
    from pymongo import MongoClient
    from pymongo.synchronous.encryption import _inflate_bson
    from pymongocrypt.options import MongoCryptOptions
    from pymongocrypt.synchronous.auto_encrypter import AutoEncrypter
    from pymongocrypt.synchronous.state_machine import MongoCryptCallback

    proxy = RecordingProxy(markd_port)
    mongocryptd_client: MongoClient[Any] = MongoClient(
        f"mongodb://127.0.0.1:{proxy.port}", serverSelectionTimeoutMS=5000, connect=False
    )

    class Callback(MongoCryptCallback):
        def kms_request(self, kms_context: Any) -> None:
            raise _MarkingCaptured

        def collection_info(self, database: str, filter: bytes) -> Any:
            return None

        def mark_command(self, database: str, cmd: bytes) -> bytes:
            # pymongo's _EncryptionIO.mark_command, line for line.
            inflated_cmd = _inflate_bson(cmd, DEFAULT_RAW_BSON_OPTIONS)
            res = mongocryptd_client[database].command(inflated_cmd, codec_options=DEFAULT_RAW_BSON_OPTIONS,
                                                       check=False)
            if not res.get("ok"):
                raise _MarkingCaptured
            return res.raw

        def fetch_keys(self, filter: bytes) -> Any:
            raise _MarkingCaptured

        def insert_data_key(self, data_key: bytes) -> Binary:
            raise _MarkingCaptured

        def bson_encode(self, doc: Any) -> bytes:
            return bson.encode(doc)

        def close(self) -> None:
            pass

    options = MongoCryptOptions(
        {"local": {"key": b"\x01" * 96}},
        schema_map=bson.encode({CSFLE_NAMESPACE: csfle_json_schema()}),
        encrypted_fields_map=bson.encode({QE_NAMESPACE: qe_encrypted_fields()}),
    )
    encrypter = AutoEncrypter(Callback(), options)
    captured: dict[str, bytes] = {}
    raw_options: CodecOptions[RawBSONDocument] = DEFAULT_RAW_BSON_OPTIONS
    try:
        proxy.frames()
        for key, _name, _description, _flavour, _marking, command in application_commands():
            try:
                encrypter.encrypt(DATABASE, bson.encode(command, codec_options=raw_options))
            except _MarkingCaptured:
                pass
            except Exception as exc:  # libmongocrypt refused the command before asking markd
                log(f"  workload {key}: libmongocrypt raised {type(exc).__name__}: {exc}")
            expected = next(iter(command))
            frames = [frame for frame in proxy.frames() if command_name_of(frame) == expected]
            if frames:
                captured[key] = with_request_id(frames[-1], 1)
    finally:
        encrypter.close()
        mongocryptd_client.close()
        proxy.close()
    return captured


def hand_built_frame(flavour: str, command: dict[str, Any]) -> bytes:
    """The command libmongocrypt would send, built by hand (used only without pymongocrypt)."""
    command = dict(command)
    if flavour == "csfle":
        command["jsonSchema"] = csfle_json_schema()
        command["isRemoteSchema"] = False
    else:
        collection = QE_COLLECTION
        encrypted_fields = {
            "escCollection": f"enxcol_.{collection}.esc",
            "ecocCollection": f"enxcol_.{collection}.ecoc",
            **qe_encrypted_fields(),
        }
        command["encryptionInformation"] = {"type": 1, "schema": {QE_NAMESPACE: encrypted_fields}}
    return op_msg_frame(command, DATABASE)


def build_workloads(markd_port: int, log: Callable[[str], None]) -> list[Workload]:
    """Every workload of issue 8 (g reuses b's frame over 256 connections)."""
    try:
        captured = capture_with_pymongocrypt(markd_port, log)
        capture_error = ""
    except ImportError as exc:
        captured, capture_error = {}, f"pymongocrypt unavailable ({exc})"
    if capture_error:
        log(f"  {capture_error}: building marking commands by hand")
    workloads = [Workload("a", "hello", "hello round trip", hello_frame(), marking=False, source="pymongo encoder",
                          command_name="hello")]
    for key, name, description, flavour, marking, command in application_commands():
        frame = captured.get(key)
        source = "pymongocrypt"
        if frame is None:
            frame = hand_built_frame(flavour, command)
            source = "hand-built"
            if not capture_error:
                log(f"  workload {key}: libmongocrypt did not ask markd; using a hand-built command")
        workloads.append(Workload(key, name, description, frame, marking, source, next(iter(command))))
    b = next(w for w in workloads if w.key == "b")
    workloads.append(Workload("g", "csfle_insert_256conns", "CSFLE insert (b) over 256 concurrent connections",
                              b.request, marking=True, source=b.source, command_name=b.command_name))
    return workloads
