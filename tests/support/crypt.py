"""The real libmongocrypt (pymongocrypt) driving a real markd: marks, then encrypts, with no mongod.

`CryptDriver.encrypt(db, command)` runs libmongocrypt's auto-encryption state machine: it asks
markd for markings over a real pymongo connection (as pymongo's `_EncryptionIO` does), fetches
keys from an in-memory key vault, and returns the encrypted command.  Every exchange with markd
is recorded, so a test can look at the markings and at what libmongocrypt made of them.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongocrypt.options import MongoCryptOptions
from pymongocrypt.synchronous.auto_encrypter import AutoEncrypter
from pymongocrypt.synchronous.explicit_encrypter import ExplicitEncrypter
from pymongocrypt.synchronous.state_machine import MongoCryptCallback

from markd import bsonvalues

RAW = CodecOptions(document_class=RawBSONDocument, uuid_representation=UuidRepresentation.UNSPECIFIED)
LOCAL_MASTER_KEY = os.urandom(96)


@dataclass
class Exchange:
    database: str
    sent: dict[str, Any]
    reply: dict[str, Any]


@dataclass
class _Callback(MongoCryptCallback):
    markd: MongoClient[Any] | None
    keys: dict[bytes, bytes] = field(default_factory=dict)  # key _id bytes -> raw key document
    collection_infos: dict[str, dict[str, Any]] = field(default_factory=dict)  # "db.coll" -> listCollections doc
    exchanges: list[Exchange] = field(default_factory=list)
    # When True, answer a key request with only the keys its filter asks for (libmongocrypt refuses
    # keys it did not request: "unexpected key returned, does not match any requests").
    only_requested_keys: bool = False

    def kms_request(self, kms_context: Any) -> None:  # local KMS only
        raise AssertionError("no KMS request expected with the local provider")

    def collection_info(self, database: str, filter: bytes) -> Any:
        query = bson.decode(filter)
        name = query.get("name")
        names = name.get("$in", []) if isinstance(name, dict) else [name]
        found = [bson.encode(self.collection_infos[f"{database}.{n}"]) for n in names
                 if f"{database}.{n}" in self.collection_infos]
        return found if found else None

    def mark_command(self, database: str, cmd: bytes) -> bytes:
        assert self.markd is not None, "this driver has no markd"
        # As pymongo's _EncryptionIO does: the top level as a dict, nested documents left raw.
        top_level = dict(RawBSONDocument(cmd, RAW).items())
        reply = self.markd[database].command(top_level, codec_options=RAW, check=False)
        self.exchanges.append(Exchange(database, bsonvalues.decode(cmd), bsonvalues.decode(reply.raw)))
        if not reply.get("ok"):
            from pymongo.errors import OperationFailure

            raise OperationFailure(reply.get("errmsg", ""), reply.get("code"), reply)
        return reply.raw

    def fetch_keys(self, filter: bytes) -> Any:
        if not self.only_requested_keys:
            yield from self.keys.values()
            return
        wanted_ids, wanted_names = _requested_keys(bson.decode(filter))
        for raw in self.keys.values():
            key = bson.decode(raw)
            if bytes(key["_id"]) in wanted_ids or wanted_names & set(key.get("keyAltNames", [])):
                yield raw

    def insert_data_key(self, data_key: bytes) -> Binary:
        document = bson.decode(data_key, RAW)
        key_id = document["_id"]
        self.keys[bytes(key_id)] = data_key
        return key_id

    def bson_encode(self, doc: Any) -> bytes:
        return bson.encode(doc)

    def close(self) -> None:
        pass


def _requested_keys(query: dict[str, Any]) -> tuple[set[bytes], set[str]]:
    """The key _ids and keyAltNames a key-vault filter `{$or: [{_id: {$in}}, {keyAltNames: {$in}}]}` names."""
    ids: set[bytes] = set()
    names: set[str] = set()
    for clause in query.get("$or", [query]):
        for value in clause.get("_id", {}).get("$in", []):
            ids.add(bytes(value))
        for value in clause.get("keyAltNames", {}).get("$in", []):
            names.add(value)
    return ids, names


class CryptDriver:
    """libmongocrypt with a local KMS key, an in-memory key vault and markd for markings."""

    def __init__(self, markd_uri: str | None, *, schema_map: dict[str, Any] | None = None,
                 encrypted_fields_map: dict[str, Any] | None = None, only_requested_keys: bool = False) -> None:
        self.client: MongoClient[Any] | None = (
            MongoClient(markd_uri, serverSelectionTimeoutMS=30_000) if markd_uri else None
        )
        self.callback = _Callback(self.client, only_requested_keys=only_requested_keys)
        self.kms_providers = {"local": {"key": LOCAL_MASTER_KEY}}
        self._explicit = ExplicitEncrypter(self.callback, MongoCryptOptions(self.kms_providers))
        self._auto: AutoEncrypter | None = None
        self._schema_map = schema_map
        self.encrypted_fields_map = encrypted_fields_map
        # As pymongo sets it: lets libmongocrypt encrypt commands over several collections ($lookup).
        self.enable_multiple_collinfo = False

    @property
    def schema_map(self) -> dict[str, Any] | None:
        return self._schema_map

    @schema_map.setter
    def schema_map(self, schema_map: dict[str, Any] | None) -> None:
        """A new schema map; libmongocrypt is set up again with it on the next encrypt."""
        self._schema_map = schema_map
        self._auto = None

    def create_key(self, alt_name: str | None = None) -> Binary:
        """A new data key in the vault; its UUID as BinData 4."""
        raw_id = self._explicit.create_data_key("local", key_alt_names=[alt_name] if alt_name else None)
        return Binary(bytes(raw_id), 4) if not isinstance(raw_id, Binary) else raw_id

    def set_collection_info(self, database: str, name: str, info: dict[str, Any]) -> None:
        """What listCollections would answer for db.name (validator / encryptedFields)."""
        self.callback.collection_infos[f"{database}.{name}"] = {"name": name, "type": "collection", **info}

    def _auto_encrypter(self) -> AutoEncrypter:
        if self._auto is None:
            options = MongoCryptOptions(
                self.kms_providers,
                schema_map=bson.encode(self.schema_map) if self.schema_map else None,
                encrypted_fields_map=bson.encode(self.encrypted_fields_map) if self.encrypted_fields_map else None,
                **({"enable_multiple_collinfo": True} if self.enable_multiple_collinfo else {}),
            )
            self._auto = AutoEncrypter(self.callback, options)
        return self._auto

    def encrypt(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        """The command as libmongocrypt would send it to mongod, decoded exactly."""
        encrypted = self._auto_encrypter().encrypt(database, bsonvalues.encode(command))
        return bsonvalues.decode(bytes(encrypted))

    def decrypt_value(self, ciphertext: Binary) -> Any:
        """Decrypt one BinData 6 ciphertext (proves what libmongocrypt put in it)."""
        plain = self._explicit.decrypt(bson.encode({"v": ciphertext}))
        return bsonvalues.decode(bytes(plain))["v"]

    def explicit_encrypt(self, value: Any, key_id: Binary, algorithm: str, **opts: Any) -> Binary:
        encoded = bsonvalues.encode({"v": value})
        result = self._explicit.encrypt(encoded, algorithm, key_id=bytes(key_id), **opts)
        return bson.decode(bytes(result))["v"]

    @property
    def exchanges(self) -> list[Exchange]:
        return self.callback.exchanges

    def close(self) -> None:
        if self._auto is not None:
            self._auto.close()
        self._explicit.close()
        if self.client is not None:
            self.client.close()


def new_uuid() -> Binary:
    return Binary(uuid.uuid4().bytes, 4)
