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

`emulate_database(mongod)` (opt-in, see its section below) adds a catalog (`create` recorded with
its encryptedFields and returned by listCollections, indexes, `drop`) and queries over the stored
documents (`find`, `aggregate`, `count`), matching Queryable Encryption payloads on their tokens.

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
from bson.binary import Binary
from bson.codec_options import CodecOptions, DatetimeConversion
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

        with MongoClient(self.uri, serverSelectionTimeoutMS=30_000) as client:
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


# --- opt-in database emulation (Django MongoDB Backend's end-to-end test) ------------------------
#
# `emulate_database(mongod)` installs handlers that make the stand-in keep a catalog and answer
# queries over what was stored, enough for an ORM to run migrations and queries through
# auto-encryption:  `create` records the collection (its `encryptedFields` with mongod's default
# state-collection names) so that listCollections returns it;  `drop`, `createIndexes`,
# `listIndexes`, `count` work on that catalog;  `find` and `aggregate` evaluate filters and a few
# pipeline stages over the stored documents;  `update` (`$set`, `$unset`, replacement, upsert) and
# `delete` change the documents their filter surely matches.
#
# Queryable Encryption filters are evaluated on the tokens, as mongod does it, without decrypting:
# the FLE2InsertUpdatePayloadV2 (blob subtype 11) the driver inserts and the FLE2FindEqualityPayloadV2
# (12) it queries with both carry `l`, the ServerDerivedFromDataToken of the value; a range insert
# carries one `l` per edge (`g`), a range find one per edge of the query's minimal cover
# (`payload.g`), so a stored value is in range iff the two sets share a token.  A range find stub
# (the second half of a two-sided range, with no `payload`) defers to its pair.  Stored documents
# keep the insert payloads (mongod would rewrite them into indexed values); libmongocrypt decrypts
# both forms, so what the application reads back is right.
#
# Whatever the stand-in cannot evaluate (e.g. `$expr`, an unknown operator or stage) keeps the
# document: such a filter answers with the stored documents rather than with nothing.

_EMULATION_CODEC = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_UNKNOWN = None  # an evaluator's answer when the stand-in cannot tell
_MISSING = object()
_REMOVE = object()
FLE2_INSERT_UPDATE_PAYLOAD_V2 = 11
FLE2_FIND_EQUALITY_PAYLOAD_V2 = 12
FLE2_FIND_RANGE_PAYLOAD_V2 = 13
_NOT_OPTIONS = frozenset({"create", "$db", "lsid", "$clusterTime", "writeConcern", "txnNumber",
                          "encryptionInformation", "autocommit", "startTransaction", "apiVersion"})


def fle2_payload(value: Any) -> tuple[int, dict[str, Any]] | None:
    """(blob subtype, document) of a QE insert/find payload in BinData 6, else None."""
    if (isinstance(value, Binary) and value.subtype == 6 and len(value) > 1
            and value[0] in (FLE2_INSERT_UPDATE_PAYLOAD_V2, FLE2_FIND_EQUALITY_PAYLOAD_V2,
                             FLE2_FIND_RANGE_PAYLOAD_V2)):
        try:
            return value[0], bson.decode(bytes(value[1:]), _EMULATION_CODEC)
        except (bson.errors.InvalidBSON, ValueError, OverflowError):
            return None
    return None


def encrypted_match(stored: Any, query: Any) -> bool | None:
    """Does a stored QE value match a QE find payload? Compares the tokens, as mongod does."""
    found = fle2_payload(query)
    if found is None:
        return _UNKNOWN
    kind, wanted = found
    if kind == FLE2_FIND_RANGE_PAYLOAD_V2 and "payload" not in wanted:
        return True
    held = fle2_payload(stored)
    if held is None or held[0] != FLE2_INSERT_UPDATE_PAYLOAD_V2:
        return False if not isinstance(stored, Binary) else _UNKNOWN
    document = held[1]
    if kind == FLE2_FIND_EQUALITY_PAYLOAD_V2:
        return "l" in document and bytes(document["l"]) == bytes(wanted.get("l", b""))
    edges = {bytes(edge["l"]) for edge in document.get("g", [])}
    return bool(edges & {bytes(edge["l"]) for edge in wanted["payload"].get("g", [])})


def _get_path(document: Any, path: str) -> Any:
    current = document
    for part in path.split("."):
        if not (isinstance(current, Mapping) and part in current):
            return _MISSING
        current = current[part]
    return current


def _with_path(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    copy = dict(document)
    copy[head] = _with_path(dict(document.get(head) or {}), rest, value) if rest else value
    return copy


def _set_path(document: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if rest:
        inner = document.get(head)
        if not isinstance(inner, dict):
            inner = document[head] = {}
        _set_path(inner, rest, value)
    else:
        document[head] = value


def _unset_path(document: dict[str, Any], path: str) -> None:
    head, _, rest = path.partition(".")
    if rest:
        if isinstance(document.get(head), dict):
            _unset_path(document[head], rest)
    else:
        document.pop(head, None)


def _ordered(value: Any) -> tuple[str, Any] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return "number", float(value)
    if isinstance(value, bson.Decimal128):
        return "number", float(value.to_decimal())
    if isinstance(value, str):
        return "string", value
    if isinstance(value, datetime.datetime):
        return "date", value.replace(tzinfo=None)
    return None


def _equal(value: Any, wanted: Any) -> bool | None:
    if fle2_payload(wanted) is not None:
        return encrypted_match(value, wanted)
    if isinstance(value, list) and not isinstance(wanted, list):
        results = [_equal(item, wanted) for item in value]
        return True if True in results else (_UNKNOWN if _UNKNOWN in results else False)
    if isinstance(value, Binary) and value.subtype == 6:
        return _UNKNOWN  # ciphertext against a plaintext: only mongod's real index could say
    a, b = _ordered(value), _ordered(wanted)
    if a is not None and b is not None:
        return a == b
    return type(value) is type(wanted) and bool(value == wanted)


def _operator(value: Any, operator: str, argument: Any) -> bool | None:
    present = value is not _MISSING
    if operator == "$eq":
        return _equal(value, argument) if present else argument is None
    if operator in ("$ne", "$nin", "$not"):
        positive = {"$ne": "$eq", "$nin": "$in"}.get(operator)
        result = (_operator(value, positive, argument) if positive
                  else _condition(value, argument) if isinstance(argument, Mapping) else _UNKNOWN)
        return _UNKNOWN if result is None else not result
    if operator == "$in":
        results = [_operator(value, "$eq", item) for item in argument]
        return True if True in results else (_UNKNOWN if _UNKNOWN in results else False)
    if operator == "$exists":
        return present == bool(argument)
    if operator in ("$gt", "$gte", "$lt", "$lte"):
        if fle2_payload(argument) is not None:
            return encrypted_match(value if present else None, argument)
        a, b = _ordered(value) if present else None, _ordered(argument)
        if a is None or b is None or a[0] != b[0]:
            return False if not present else _UNKNOWN
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[operator]
    return _UNKNOWN


def _condition(value: Any, condition: Any) -> bool | None:
    if isinstance(condition, Mapping) and condition and all(str(key).startswith("$") for key in condition):
        results = [_operator(value, operator, argument) for operator, argument in condition.items()]
    else:
        results = [_operator(value, "$eq", condition)]
    return False if False in results else (_UNKNOWN if _UNKNOWN in results else True)


def evaluate_filter(document: Mapping[str, Any], query: Mapping[str, Any] | None) -> bool | None:
    """True or False when the stand-in can evaluate the filter on the document, None when it can't."""
    results: list[bool | None] = []
    for key, condition in (query or {}).items():
        if key in ("$and", "$or", "$nor"):
            parts = [evaluate_filter(document, clause) for clause in condition]
            if key == "$and":
                result = False if False in parts else (_UNKNOWN if _UNKNOWN in parts else True)
            else:
                result = True if True in parts else (_UNKNOWN if _UNKNOWN in parts else False)
                if key == "$nor" and result is not None:
                    result = not result
            results.append(result)
        elif key.startswith("$"):
            results.append(_UNKNOWN)  # $expr, $text, $where...
        else:
            results.append(_condition(_get_path(document, key), condition))
    return False if False in results else (_UNKNOWN if _UNKNOWN in results else True)


def _expression(document: Mapping[str, Any], expression: Any) -> Any:
    """The few aggregation expressions an ORM's count/exists pipelines use; LookupError otherwise."""
    if isinstance(expression, str):
        if expression == "$$REMOVE":
            return _REMOVE
        if expression.startswith("$$"):
            raise LookupError(expression)
        if expression.startswith("$"):
            value = _get_path(document, expression[1:])
            return _REMOVE if value is _MISSING else value
        return expression
    if isinstance(expression, list):
        return [_expression(document, item) for item in expression]
    if not isinstance(expression, Mapping):
        return expression
    if len(expression) != 1 or not str(next(iter(expression))).startswith("$"):
        return {key: _expression(document, value) for key, value in expression.items()}
    (operator, argument), = expression.items()

    def value_of(item: Any) -> Any:
        return _expression(document, item)

    if operator in ("$literal", "$const"):
        return argument
    if operator == "$eq":
        left, right = (value_of(item) for item in argument)
        if any(isinstance(side, Binary) and side.subtype == 6 for side in (left, right)):
            raise LookupError("$eq on ciphertext")
        return (None if left is _REMOVE else left) == (None if right is _REMOVE else right)
    if operator in ("$type", "$first") and isinstance(argument, list) and len(argument) == 1:
        argument = argument[0]  # mongod writes a one-argument expression's argument as a one-element array
    if operator == "$type":
        value = value_of(argument)
        return "missing" if value is _REMOVE else type(value).__name__
    if operator == "$not":
        return not value_of(argument[0] if isinstance(argument, list) else argument)
    if operator == "$or":
        return any(value_of(item) for item in argument)
    if operator == "$and":
        return all(value_of(item) for item in argument)
    if operator == "$cond":
        test, then, otherwise = ((argument["if"], argument["then"], argument["else"])
                                 if isinstance(argument, Mapping) else argument)
        return value_of(then) if value_of(test) else value_of(otherwise)
    if operator == "$switch":
        for branch in argument["branches"]:
            if value_of(branch["case"]):
                return value_of(branch["then"])
        return value_of(argument.get("default", "$$REMOVE"))
    if operator == "$ifNull":
        for item in argument:
            value = value_of(item)
            if value is not _REMOVE and value is not None:
                return value
        return None
    if operator == "$first":
        value = value_of(argument)
        return value[0] if isinstance(value, list) and value else _REMOVE
    raise LookupError(operator)


def run_pipeline(documents: list[dict[str, Any]], pipeline: list[Mapping[str, Any]],
                 collection: Callable[[str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What the stand-in can run of a pipeline: $match (unevaluable filters keep the document),
    $limit, $skip, $project, $addFields, $replaceWith, $collStats, $group on null, $unwind, $lookup
    without `let`.  A stage it cannot run leaves the documents as they are."""
    out = list(documents)
    for stage in pipeline:
        (name, argument), = stage.items()
        try:
            if name == "$match":
                out = [document for document in out if evaluate_filter(document, argument) is not False]
            elif name == "$limit":
                out = out[: int(argument)]
            elif name == "$skip":
                out = out[int(argument):]
            elif name == "$collStats":
                out = [{}]
            elif name == "$lookup" and not argument.get("let"):
                joined = run_pipeline(collection(argument["from"]), argument.get("pipeline", []), collection)
                local, foreign = argument.get("localField"), argument.get("foreignField")
                out = [dict(document, **{argument["as"]: [
                    other for other in joined
                    if local is None or _equal(_get_path(other, foreign), _get_path(document, local)) is True]})
                    for document in out]
            elif name == "$unwind":
                path = (argument if isinstance(argument, str) else argument["path"]).lstrip("$")
                keep = isinstance(argument, Mapping) and argument.get("preserveNullAndEmptyArrays", False)
                unwound = []
                for document in out:
                    value = _get_path(document, path)
                    if isinstance(value, list) and value:
                        unwound.extend(_with_path(document, path, item) for item in value)
                    elif isinstance(value, list) or value is _MISSING or value is None:
                        if keep:
                            unwound.append(document)
                    else:
                        unwound.append(document)
                out = unwound
            elif name in ("$replaceWith", "$replaceRoot"):
                new_root = argument if name == "$replaceWith" else argument["newRoot"]
                out = [_expression(document, new_root) for document in out]
            elif name == "$group" and argument.get("_id") in (None, {"$const": None}):
                row: dict[str, Any] = {"_id": None}
                for key, accumulator in argument.items():
                    if key == "_id":
                        continue
                    (kind, operand), = accumulator.items()
                    if kind != "$sum":
                        raise LookupError(kind)
                    values = [_expression(document, operand) for document in out]
                    row[key] = sum(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
                out = [row] if out else []
            elif name in ("$project", "$addFields"):
                excluding = name == "$project" and any(
                    value in (0, False) and not isinstance(value, str) for value in argument.values())
                projected = []
                for document in out:
                    if name == "$addFields":
                        new = dict(document)
                    elif excluding:
                        new = {k: v for k, v in document.items() if argument.get(k, 1) not in (0, False)}
                    else:
                        new = {k: v for k, v in document.items() if k == "_id" or argument.get(k) in (1, True)}
                    for key, value in argument.items():
                        if isinstance(value, (bool, int)) and value in (0, 1):
                            continue
                        result = _expression(document, value)
                        if result is not _REMOVE:
                            new[key] = result
                    projected.append(new)
                out = projected
        except (LookupError, KeyError, TypeError, ValueError):
            continue
    return out


def emulate_database(mongod: FakeMongod) -> FakeMongod:
    """Install the catalog and query handlers described above (opt-in; returns the stand-in)."""
    indexes: dict[str, list[dict[str, Any]]] = {}

    def stored(database: str, name: str) -> list[dict[str, Any]]:
        with mongod._lock:
            raw = list(mongod.store.get(f"{database}.{name}", []))
        return [bson.decode(document.raw, _EMULATION_CODEC) for document in raw]

    def create(database: str, body: dict[str, Any]) -> dict[str, Any]:
        name = str(body["create"])
        options = {key: value for key, value in body.items() if key not in _NOT_OPTIONS}
        fields = options.get("encryptedFields")
        if isinstance(fields, Mapping):  # mongod fills in the state collection names
            options["encryptedFields"] = {"escCollection": f"enxcol_.{name}.esc",
                                          "ecocCollection": f"enxcol_.{name}.ecoc", **fields}
        if f"{database}.{name}" in mongod.collection_infos:
            return {"ok": 0.0, "code": 48, "codeName": "NamespaceExists",
                    "errmsg": f"Collection {database}.{name} already exists."}
        mongod.set_collection_info(database, name, options=options)
        indexes[f"{database}.{name}"] = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
        return {"ok": 1.0}

    def drop(database: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace = f"{database}.{body['drop']}"
        mongod.collection_infos.pop(namespace, None)
        indexes.pop(namespace, None)
        with mongod._lock:
            mongod.store.pop(namespace, None)
        return {"ok": 1.0}

    def create_indexes(database: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace = f"{database}.{body['createIndexes']}"
        if namespace not in mongod.collection_infos:
            mongod.set_collection_info(database, str(body["createIndexes"]))
        known = indexes.setdefault(namespace, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
        before = len(known)
        for index in body.get("indexes", []):
            if index.get("name") not in {existing["name"] for existing in known}:
                known.append({"v": 2, **index})
        return {"numIndexesBefore": before, "numIndexesAfter": len(known), "ok": 1.0}

    def list_indexes(database: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace = f"{database}.{body['listIndexes']}"
        if namespace not in indexes:
            return {"ok": 0.0, "code": 26, "codeName": "NamespaceNotFound", "errmsg": f"ns does not exist: {namespace}"}
        return _cursor(namespace, list(indexes[namespace]))

    def find(database: str, body: dict[str, Any]) -> dict[str, Any]:
        name = str(body["find"])
        found = [d for d in stored(database, name) if evaluate_filter(d, body.get("filter")) is not False]
        if body.get("limit"):
            found = found[: abs(int(body["limit"]))]
        return _cursor(f"{database}.{name}", found)

    def aggregate(database: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["aggregate"]
        documents = stored(database, str(name)) if isinstance(name, str) else []
        result = run_pipeline(documents, body.get("pipeline", []), lambda other: stored(database, other))
        return _cursor(f"{database}.{name}", result)

    def count(database: str, body: dict[str, Any]) -> dict[str, Any]:
        documents = stored(database, str(body["count"]))
        return {"n": sum(evaluate_filter(d, body.get("query")) is not False for d in documents), "ok": 1.0}

    def rewrite(database: str, name: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        namespace = f"{database}.{name}"
        with mongod._lock:
            documents = [bson.decode(d.raw, _EMULATION_CODEC) for d in mongod.store.get(namespace, [])]
            mongod.store[namespace] = [RawBSONDocument(bson.encode(d)) for d in change(documents)]

    def update(database: str, body: dict[str, Any]) -> dict[str, Any]:
        """Updates by `$set` / `$unset` or a replacement, on documents whose filter evaluates to true."""
        totals = {"n": 0, "nModified": 0}
        upserted: list[dict[str, Any]] = []

        def apply(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for index, statement in enumerate(body.get("updates", [])):
                change = statement.get("u")
                if not isinstance(change, Mapping) or (change and any(
                        key.startswith("$") and key not in ("$set", "$unset") for key in change)):
                    raise LookupError(f"the stand-in cannot apply the update {change!r}")
                matched = [d for d in documents if evaluate_filter(d, statement.get("q")) is True]
                if not statement.get("multi"):
                    matched = matched[:1]
                if not matched and statement.get("upsert"):
                    new = {k: v for k, v in (statement.get("q") or {}).items() if not k.startswith("$")}
                    new.setdefault("_id", bson.ObjectId())
                    documents.append(new)
                    matched = [new]
                    upserted.append({"index": index, "_id": new["_id"]})
                else:
                    totals["n"] += len(matched)
                for document in matched:
                    if change and not next(iter(change)).startswith("$"):
                        kept = document.get("_id")
                        document.clear()
                        document.update(change)
                        document.setdefault("_id", kept)
                    for path, value in dict(change.get("$set") or {}).items():
                        _set_path(document, path, value)
                    for path in dict(change.get("$unset") or {}):
                        _unset_path(document, path)
                    totals["nModified"] += 1
            return documents

        try:
            rewrite(database, str(body["update"]), apply)
        except LookupError as error:
            return {"ok": 0.0, "code": 9, "codeName": "FailedToParse", "errmsg": str(error)}
        reply: dict[str, Any] = {"n": totals["n"] + len(upserted), "nModified": totals["nModified"] - len(upserted),
                                 "ok": 1.0}
        if upserted:
            reply["upserted"] = upserted
        return reply

    def delete(database: str, body: dict[str, Any]) -> dict[str, Any]:
        removed = [0]

        def apply(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for statement in body.get("deletes", []):
                matched = [d for d in documents if evaluate_filter(d, statement.get("q")) is True]
                if statement.get("limit") == 1:
                    matched = matched[:1]
                removed[0] += len(matched)
                documents = [d for d in documents if not any(d is m for m in matched)]
            return documents

        rewrite(database, str(body["delete"]), apply)
        return {"n": removed[0], "ok": 1.0}

    mongod.handlers.update({"create": create, "drop": drop, "createIndexes": create_indexes,
                            "listIndexes": list_indexes, "find": find, "aggregate": aggregate, "count": count,
                            "update": update, "delete": delete})
    return mongod


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
