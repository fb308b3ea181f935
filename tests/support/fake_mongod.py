"""A stand-in mongod for tests: enough of the wire protocol for pymongo with auto-encryption.

`FakeMongod` listens on a free loopback port in a background thread and answers:

- the handshake (`hello` / `isMaster` / `ismaster`, legacy OP_QUERY with OP_REPLY, or OP_MSG) as a
  standalone server with a configurable `maxWireVersion`;
- `listCollections`, from configurable collection infos (`validator: {$jsonSchema}` for CSFLE,
  `options.encryptedFields` for Queryable Encryption);
- `insert` / `find` / `update` / `delete` against a small in-memory store, so the key vault works:
  keys that `ClientEncryption.create_data_key` inserts are found again by libmongocrypt's key query
  (`{$or: [{_id: {$in: [...]}}, {keyAltNames: {$in: [...]}}]}`);
- anything else with `{ok: 1}` (and an empty cursor for cursor commands).

Every command received is recorded (`commands`), so a test can check what actually reached the
server, e.g. that an encrypted field arrived as ciphertext.  It is deliberately independent of
markd's own wire code: framing is done here with `struct` and pymongo's `bson`.
"""

from __future__ import annotations

import datetime
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013

_HEADER = struct.Struct("<iiii")
_INT32 = struct.Struct("<i")
# Binary subtype 4 stays a Binary (not uuid.UUID) so key _ids compare as the bytes they are.
_CODEC = CodecOptions()
_CURSOR_COMMANDS = frozenset({"find", "aggregate", "listCollections", "listIndexes", "getMore"})

CommandHandler = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ReceivedCommand:
    """One command as the server saw it: database, name and the body with sequences merged in."""

    database: str
    name: str
    body: dict[str, Any]


def _matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """The tiny subset of MongoDB matching the key vault and simple tests need."""
    for key, condition in query.items():
        if key == "$or":
            if not any(_matches(document, clause) for clause in condition):
                return False
        elif key == "$and":
            if not all(_matches(document, clause) for clause in condition):
                return False
        elif isinstance(condition, Mapping) and "$in" in condition:
            if not any(_value_matches(document.get(key), candidate) for candidate in condition["$in"]):
                return False
        elif not _value_matches(document.get(key), condition):
            return False
    return True


def _value_matches(value: Any, wanted: Any) -> bool:
    # As in MongoDB, a query value matches an array that holds it.
    if isinstance(value, list) and not isinstance(wanted, list):
        return wanted in value
    return bool(value == wanted)


@dataclass
class FakeMongod:
    """A standalone "mongod" on 127.0.0.1; use `with FakeMongod(...) as mongod:` or start()/stop()."""

    max_wire_version: int = 25
    # "db.coll" -> the listCollections document (name, type, options...).
    collection_infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Extra or overriding command handlers: name -> f(database, body) -> reply.
    handlers: dict[str, CommandHandler] = field(default_factory=dict)
    commands: list[ReceivedCommand] = field(default_factory=list)
    # "db.coll" -> raw stored documents.
    store: dict[str, list[RawBSONDocument]] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._connection_ids = 0
        self._closing = threading.Event()

    # configuration -----------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def set_collection_info(self, database: str, name: str, **info: Any) -> None:
        """What listCollections answers for db.name, e.g. options={"validator": {"$jsonSchema": ...}}."""
        self.collection_infos[f"{database}.{name}"] = {"name": name, "type": "collection",
                                                        "options": {}, "info": {"readOnly": False}, **info}

    def add_documents(self, namespace: str, documents: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            stored = self.store.setdefault(namespace, [])
            stored.extend(RawBSONDocument(bson.encode(doc)) for doc in documents)

    def documents(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return [bson.decode(doc.raw, _CODEC) for doc in self.store.get(namespace, [])]

    def create_data_key(self, kms_providers: dict[str, Any], key_vault_namespace: str = "keyvault.datakeys",
                        key_alt_name: str | None = None) -> Any:
        """A new data key, inserted into this server's key vault by pymongo's ClientEncryption."""
        from pymongo import MongoClient
        from pymongo.encryption import ClientEncryption

        with MongoClient(self.uri, serverSelectionTimeoutMS=5000) as client:
            encryption = ClientEncryption(kms_providers, key_vault_namespace, client, _CODEC)
            try:
                provider = next(iter(kms_providers))
                return encryption.create_data_key(provider, key_alt_names=[key_alt_name] if key_alt_name else None)
            finally:
                encryption.close()

    def received(self, name: str) -> list[ReceivedCommand]:
        with self._lock:
            return [command for command in self.commands if command.name == name]

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FakeMongod:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, name="fake-mongod-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._listener is not None:
            # shutdown() wakes the accept() blocked in the other thread; close() alone may not.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeMongod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the wire ----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(connection)
                self._connection_ids += 1
                connection_id = self._connection_ids
            thread = threading.Thread(target=self._serve, args=(connection, connection_id),
                                      name=f"fake-mongod-conn{connection_id}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection: socket.socket, connection_id: int) -> None:
        try:
            while True:
                header = _recv_exactly(connection, 16)
                if header is None:
                    return
                length, request_id, _, op_code = _HEADER.unpack(header)
                payload = _recv_exactly(connection, length - 16)
                if payload is None:
                    return
                reply = self._answer(op_code, request_id, payload, connection_id)
                if reply is not None:
                    connection.sendall(reply)
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def _answer(self, op_code: int, request_id: int, payload: bytes, connection_id: int) -> bytes | None:
        if op_code == OP_QUERY:
            # flags, fullCollectionName cstring, numberToSkip, numberToReturn, query document.
            name_end = payload.index(b"\x00", 4)
            collection = payload[4:name_end].decode()
            query = bson.decode(payload[name_end + 9 :], _CODEC)
            query = query.get("$query", query)
            reply = self._dispatch(collection.split(".", 1)[0], query, connection_id)
            body = bson.encode(reply)
            prefix = struct.pack("<iqii", 8, 0, 0, 1)
            return _HEADER.pack(16 + len(prefix) + len(body), 0, request_id, OP_REPLY) + prefix + body
        if op_code != OP_MSG:
            raise OSError(f"fake mongod does not speak opCode {op_code}")
        flags = _INT32.unpack_from(payload, 0)[0]
        end = len(payload) - (4 if flags & 1 else 0)
        body: dict[str, Any] = {}
        offset = 4
        while offset < end:
            kind = payload[offset]
            offset += 1
            size = _INT32.unpack_from(payload, offset)[0]
            if kind == 0:
                body.update(bson.decode(payload[offset : offset + size], _CODEC))
            else:
                name_end = payload.index(b"\x00", offset + 4)
                identifier = payload[offset + 4 : name_end].decode()
                documents = list(bson.decode_iter(payload[name_end + 1 : offset + size], _CODEC))
                body[identifier] = documents
            offset += size
        reply = self._dispatch(str(body.get("$db", "admin")), body, connection_id)
        if flags & 2:  # moreToCome: the client wants no answer
            return None
        encoded = bson.encode(reply)
        return _HEADER.pack(16 + 5 + len(encoded), 0, request_id, OP_MSG) + b"\x00" * 5 + encoded

    # commands ----------------------------------------------------------------------------------
    def _dispatch(self, database: str, body: dict[str, Any], connection_id: int) -> dict[str, Any]:
        name = next(iter(body), "")
        with self._lock:
            self.commands.append(ReceivedCommand(database, name, body))
        handler = self.handlers.get(name)
        if handler is not None:
            return handler(database, body)
        if name.lower() in ("hello", "ismaster"):
            return self._hello(name, connection_id)
        if name == "listCollections":
            return self._list_collections(database, body)
        if name == "insert":
            documents = body.get("documents", [])
            self.add_documents(f"{database}.{body['insert']}", documents)
            return {"n": len(documents), "ok": 1.0}
        if name == "find":
            return self._find(database, body)
        if name in ("update", "delete"):
            return {"n": 0, "nModified": 0, "ok": 1.0}
        if name == "buildInfo" or name == "buildinfo":
            return {"version": "8.0.0", "versionArray": [8, 0, 0, 0], "ok": 1.0}
        if name in _CURSOR_COMMANDS:
            return _cursor(f"{database}.{body.get(name)}", [])
        return {"ok": 1.0}

    def _hello(self, name: str, connection_id: int) -> dict[str, Any]:
        return {
            "isWritablePrimary" if name == "hello" else "ismaster": True,
            "helloOk": True,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": datetime.datetime.now(datetime.timezone.utc),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": connection_id,
            "minWireVersion": 0,
            "maxWireVersion": self.max_wire_version,
            "readOnly": False,
            "ok": 1.0,
        }

    def _list_collections(self, database: str, body: dict[str, Any]) -> dict[str, Any]:
        query = body.get("filter") or {}
        infos = [
            RawBSONDocument(bson.encode(info))
            for namespace, info in self.collection_infos.items()
            if namespace.split(".", 1)[0] == database and _matches(info, query)
        ]
        return _cursor(f"{database}.$cmd.listCollections", infos)

    def _find(self, database: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace = f"{database}.{body['find']}"
        query = body.get("filter") or {}
        with self._lock:
            stored = list(self.store.get(namespace, []))
        found = [doc for doc in stored if _matches(bson.decode(doc.raw, _CODEC), query)]
        return _cursor(namespace, found)


def _cursor(namespace: str, batch: list[Any]) -> dict[str, Any]:
    return {"cursor": {"id": bson.Int64(0), "ns": namespace, "firstBatch": batch}, "ok": 1.0}


def _recv_exactly(connection: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = connection.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
