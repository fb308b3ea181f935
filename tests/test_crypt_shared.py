"""markd in-process: the mongo_crypt_v1 library (markd.crypt_shared) as libmongocrypt uses it.

- through its C ABI in a child process (tests/support/crypt_shared_abi.py): every reply byte for byte
  the daemon's for the same command, refusals with the daemon's code and message, the ABI's edge
  cases, many threads at once;
- loaded by the real libmongocrypt in this process (pymongo with `crypt_shared_lib_path` +
  `crypt_shared_lib_required=True`, against the stand-in mongod): CSFLE and Queryable Encryption
  marked and encrypted, the same deterministic ciphertext as through the daemon, a refused query's
  message reaching the application, commands over several collections (crypt_shared >= 8.1);
- loaded by a C program linking Debian's libmongocrypt (tests/crypt_shared_host.c): no Python of
  its own, markings all the same.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import Int64
from bson.binary import Binary
from bson.codec_options import CodecOptions
from pymongo import MongoClient
from pymongo.encryption_options import AutoEncryptionOpts
from pymongo.errors import EncryptionError

import markd
import markd.crypt_shared
from markd import bsonvalues, commands
from markd.crypt_shared import build, embedded
from markd.errors import CommandError
from tests.support.fake_mongod import FakeMongod, emulate_database
from tests.support.process import MarkdProcess, RawConnection

REPO = Path(__file__).resolve().parents[1]
HOST_SOURCE = REPO / "tests" / "crypt_shared_host.c"
DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RANDOM = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
VERSION_STR = f"markd {markd.__version__} (mongo_crypt_v1 {commands.SERVER_VERSION})"
KMS = {"local": {"key": bytes(range(96))}}
CODEC = CodecOptions()
ERROR_EXCEPTION = 2


def _library() -> str:
    try:
        return markd.crypt_shared.library_path()
    except markd.crypt_shared.LibraryUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def library() -> str:
    return _library()


# ---- the commands both ways in --------------------------------------------------------------
KEY = Binary(bytes(range(16)), 4)
OTHER_KEY = Binary(bytes(range(16, 32)), 4)
THIRD_KEY = Binary(bytes(range(32, 48)), 4)
SCHEMA = {"bsonType": "object", "properties": {
    "ssn": {"encrypt": {"keyId": [KEY], "bsonType": "string", "algorithm": DETERMINISTIC}},
    "secret": {"encrypt": {"keyId": [OTHER_KEY], "algorithm": RANDOM}},
    "n": {"encrypt": {"keyId": [KEY], "bsonType": "long", "algorithm": DETERMINISTIC}},
    "sym": {"encrypt": {"keyId": [KEY], "bsonType": "symbol", "algorithm": DETERMINISTIC}},
}}
QE_FIELDS = {"escCollection": "enxcol_.coll.esc", "ecocCollection": "enxcol_.coll.ecoc", "fields": [
    {"path": "eq", "keyId": KEY, "bsonType": "string", "queries": {"queryType": "equality", "contention": Int64(0)}},
    {"path": "r", "keyId": OTHER_KEY, "bsonType": "int",
     "queries": {"queryType": "range", "contention": Int64(0), "min": 0, "max": 100, "sparsity": Int64(1),
                 "trimFactor": 1}},
    {"path": "un", "keyId": THIRD_KEY, "bsonType": "string"},
]}
QE_INFO = {"type": 1, "schema": {"db.coll": QE_FIELDS}}


def csfle(command: dict[str, Any]) -> dict[str, Any]:
    return {**command, "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}


def qe(command: dict[str, Any]) -> dict[str, Any]:
    return {**command, "encryptionInformation": QE_INFO, "$db": "db"}


# (id, command) as libmongocrypt sends them to crypt_shared; the daemon gets the same bytes.
COMMANDS: list[tuple[str, dict[str, Any]]] = [
    ("csfle-find", csfle({"find": "coll", "filter": {"ssn": "123-45-6789", "plain": 1}})),
    ("csfle-find-in", csfle({"find": "coll", "filter": {"ssn": {"$in": ["b", "a", "b"]}}, "projection": {"x": 1}})),
    ("csfle-insert", csfle({"insert": "coll", "documents": [{"ssn": "1", "secret": {"a": [1, 2]}, "n": Int64(5)}]})),
    ("csfle-symbol-undefined", csfle({"find": "coll", "filter": {"sym": bsonvalues.Symbol("s"),
                                                                 "other": bsonvalues.Undefined()}})),
    ("csfle-update", csfle({"update": "coll", "updates": [{"q": {"ssn": "1"}, "u": {"$set": {"ssn": "2"}}}]})),
    ("csfle-delete", csfle({"delete": "coll", "deletes": [{"q": {"ssn": "1"}, "limit": 1}]})),
    ("csfle-aggregate", csfle({"aggregate": "coll", "pipeline": [{"$match": {"ssn": "1"}}, {"$project": {"x": 1}}],
                               "cursor": {}})),
    ("csfle-count", csfle({"count": "coll", "query": {"ssn": "1"}})),
    ("csfle-distinct", csfle({"distinct": "coll", "key": "plain", "query": {"ssn": "1"}})),
    ("csfle-findAndModify", csfle({"findAndModify": "coll", "query": {"ssn": "1"},
                                   "update": {"$set": {"n": Int64(1)}}})),
    # crypt_shared's explain: $db (and, for QE, encryptionInformation) inside the explained command too.
    ("csfle-explain", {"explain": {"find": "coll", "filter": {"ssn": "1"}, "$db": "db"}, "verbosity": "queryPlanner",
                       "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}),
    ("qe-explain", {"explain": {"find": "coll", "filter": {"eq": "v"}, "encryptionInformation": QE_INFO, "$db": "db"},
                    "verbosity": "queryPlanner", "$db": "db"}),  # the daemon's form: DAEMON_FORMS
    ("qe-insert", qe({"insert": "coll", "documents": [{"eq": "v", "r": 7, "un": "u", "plain": True}]})),
    ("qe-find", qe({"find": "coll", "filter": {"eq": "v", "_id": 1}})),
    ("qe-range", qe({"aggregate": "coll", "pipeline": [{"$match": {"r": {"$gte": 5, "$lt": 50}}}], "cursor": {}})),
    ("qe-create", qe({"create": "coll", "encryptedFields": QE_FIELDS})),
    ("unencrypted-schema", {"find": "coll", "filter": {"a": 1}, "jsonSchema": {}, "isRemoteSchema": True, "$db": "db"}),
    # refusals
    ("refused-range-on-deterministic", csfle({"find": "coll", "filter": {"ssn": {"$gt": "1"}}})),
    ("refused-random-equality", csfle({"find": "coll", "filter": {"secret": 1}})),
    ("refused-qe-regex", qe({"find": "coll", "filter": {"eq": {"$regex": "^a"}}})),
    ("refused-no-schema", {"find": "coll", "filter": {}, "$db": "db"}),
    ("refused-aggregate-no-schema", {"aggregate": "coll", "pipeline": [], "cursor": {}, "$db": "db"}),
    ("refused-unknown-command", {"frobnicate": "coll", "$db": "db"}),
    ("refused-no-db", csfle({"find": "coll", "filter": {}}) | {"$db": None}),
]


# Where libmongocrypt sends mongocryptd another form than crypt_shared: QE rules beside `explain`,
# not inside the explained command (mc-schema-broker.c). The replies must still be the same bytes.
DAEMON_FORMS: dict[str, dict[str, Any]] = {
    "qe-explain": {"explain": {"find": "coll", "filter": {"eq": "v"}, "$db": "db"}, "verbosity": "queryPlanner",
                   "encryptionInformation": QE_INFO, "$db": "db"},
}


def command_bytes(command: dict[str, Any]) -> bytes:
    if command.get("$db", "") is None:  # the one case without $db
        command = {k: v for k, v in command.items() if k != "$db"}
    return bsonvalues.encode(command)


def daemon_reply(connection: RawConnection, body: bytes) -> bytes:
    """markd's reply body (its exact bytes) to an OP_MSG whose body is `body`."""
    frame = struct.pack("<iiiiI", 16 + 4 + 1 + len(body), 7, 0, 2013, 0) + b"\x00" + body
    connection.send(frame)
    length = struct.unpack("<i", connection._recv_exactly(4))[0]
    payload = connection._recv_exactly(length - 4)
    assert payload[12:17] == b"\x00\x00\x00\x00\x00"  # no flags, one kind-0 section
    return payload[17:]


def run_abi(library: str, mode: str, request: dict[str, Any], tmp_path: Path,
            environment: dict[str, str] | None = None) -> dict[str, Any]:
    source, target = tmp_path / f"{mode}.in.bson", tmp_path / f"{mode}.out.bson"
    source.write_bytes(bson.encode(request))
    done = subprocess.run([sys.executable, "-m", "tests.support.crypt_shared_abi", library, mode, str(source),
                           str(target)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(environment or {})})
    assert done.returncode == 0, done.stdout + done.stderr
    return bson.decode(target.read_bytes(), CODEC)


@pytest.fixture(scope="module")
def daemon_replies() -> list[bytes]:
    with MarkdProcess() as process:
        connection = RawConnection(process.port)
        try:
            return [daemon_reply(connection, command_bytes(DAEMON_FORMS.get(case, command)))
                    for case, command in COMMANDS]
        finally:
            connection.close()


def test_replies_are_the_daemons_byte_for_byte(library: str, daemon_replies: list[bytes], tmp_path: Path) -> None:
    request = {"commands": [Binary(command_bytes(command)) for _, command in COMMANDS]}
    results = run_abi(library, "analyze", request, tmp_path)["results"]
    refusals = 0
    for (case, _), daemon, result in zip(COMMANDS, daemon_replies, results, strict=True):
        daemon_document = bsonvalues.decode(daemon)
        if daemon_document["ok"] == 1.0:
            assert "reply" in result, (case, result)
            assert bytes(result["reply"]) == daemon, case
            assert result["error"] == 0 and result["explanation"] == "", case
        else:
            refusals += 1
            assert "reply" not in result and result["length"] == 0, (case, result)
            assert (result["error"], result["code"], result["explanation"]) == (
                ERROR_EXCEPTION, daemon_document["code"], daemon_document["errmsg"]), case
    assert refusals == sum(case.startswith("refused-") for case, _ in COMMANDS)
    # The markings are there: a deterministic CSFLE placeholder for the find, QE ones for the insert.
    find = bsonvalues.decode(daemon_replies[0])
    assert find["hasEncryptionPlaceholders"] is True
    assert bytes(find["result"]["filter"]["$and"][0]["ssn"]["$eq"])[:1] == b"\x00"


def test_redact_errors_in_process(library: str, tmp_path: Path) -> None:
    """MARKD_REDACT_ERRORS=1 is the library's --redactErrors: a quoted value becomes its type."""
    refused = command_bytes(csfle({"find": "coll", "filter": {"ssn": {"$regex": "^123-45"}}}))
    explanations = []
    for name, flag in (("plain", "0"), ("redacted", "1")):
        (tmp_path / name).mkdir()
        results = run_abi(library, "analyze", {"commands": [Binary(refused)]}, tmp_path / name,
                          {"MARKD_REDACT_ERRORS": flag})["results"]
        explanations.append(results[0]["explanation"])
    plain, redacted = explanations
    assert plain.endswith('{ ssn: { $regex: "^123-45" } }'), plain
    assert redacted.endswith("{ ssn: { $regex: string } }"), redacted


def test_each_way_takes_its_own_explain_form(library: str, tmp_path: Path) -> None:
    """The daemon refuses QE rules inside an explained command, as mongocryptd; the library takes them there."""
    nested = command_bytes(dict(COMMANDS)["qe-explain"])
    with MarkdProcess() as process:
        connection = RawConnection(process.port)
        daemon = bsonvalues.decode(daemon_reply(connection, nested))
        connection.close()
    assert (daemon["ok"], daemon["code"]) == (0.0, 6365900)
    (result,) = run_abi(library, "analyze", {"commands": [Binary(nested)]}, tmp_path)["results"]
    assert "reply" in result and bsonvalues.decode(bytes(result["reply"]))["hasEncryptionPlaceholders"] is True


def test_undecodable_commands_get_the_daemons_errors(library: str, tmp_path: Path) -> None:
    bad = [b"\x0c\x00\x00\x00\x02a\x00\xff\xff\xff\x7f\x00",  # a string longer than its document
           b"\x05\x00\x00\x00\x01",  # not terminated
           b"\x0d\x00\x00\x00\x10a\x00\x01\x00\x00\x00\x00\x00"]  # trailing bytes inside the document
    with MarkdProcess() as process:
        connection = RawConnection(process.port)
        daemon = [bsonvalues.decode(daemon_reply(connection, body)) for body in bad]
        connection.close()
    results = run_abi(library, "analyze", {"commands": [Binary(b) for b in bad]}, tmp_path)["results"]
    for expected, result in zip(daemon, results, strict=True):
        assert expected["ok"] == 0.0
        assert (result["error"], result["code"], result["explanation"]) == (
            ERROR_EXCEPTION, expected["code"], expected["errmsg"])


def test_abi_edge_cases(library: str, tmp_path: Path) -> None:
    seen = run_abi(library, "abi", {"commands": [Binary(command_bytes(COMMANDS[0][1]))]}, tmp_path)
    major, minor, patch = (int(p) for p in commands.SERVER_VERSION.split("."))
    assert seen["version"] == major << 48 | minor << 32 | patch << 16
    assert seen["version_str"] == VERSION_STR
    assert seen["fresh_status"] == {"error": 0, "code": 0, "explanation": ""}
    assert seen["null_status"] == {"error": -1, "explanation": ""}
    assert seen["destroy_without_lib"][0] == 4 and seen["destroy_without_lib"][1]["error"] == 4
    assert seen["lib_created"] is True
    assert seen["second_lib"][0] is True and seen["second_lib"][1]["error"] == 3  # one lib at a time
    assert seen["analyzer_of_foreign_lib"][0] is True and seen["analyzer_of_foreign_lib"][1]["error"] == 5
    # After a success the status says so, and its explanation is "" (libmongocrypt strlen()s it).
    assert seen["after_success"] == [0, {"error": 0, "code": 0, "explanation": ""}]
    assert seen["null_document"]["error"] == ERROR_EXCEPTION and seen["null_document"]["length"] == 0
    assert seen["short_document"] == {"error": ERROR_EXCEPTION, "code": 22,
                                      "explanation": "invalid BSON document length", "length": 0}
    assert seen["garbage_document"]["error"] == ERROR_EXCEPTION and seen["garbage_document"]["code"] == 22
    assert seen["null_analyzer"]["error"] == 5
    assert seen["null_status_analysis"]["error"] == -1 and "reply" in seen["null_status_analysis"]
    assert seen["destroy_foreign_lib"][0] == 5
    assert seen["destroyed"] == 0
    assert seen["analysis_after_destroy"]["error"] == 4
    assert seen["created_again"] == [True, {"error": 0, "code": 0, "explanation": ""}]
    assert seen["analysis_again"] == 0


def test_a_bug_in_the_analysis_is_a_status_not_a_crash(library: str, tmp_path: Path) -> None:
    request = {"commands": [Binary(command_bytes(COMMANDS[0][1]))]}
    source, target = tmp_path / "in.bson", tmp_path / "out.bson"
    source.write_bytes(bson.encode(request))
    done = subprocess.run([sys.executable, "-m", "tests.support.crypt_shared_abi", library, "internal-error",
                           str(source), str(target)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = bson.decode(target.read_bytes(), CODEC)["results"]
    expected = [f"markd internal error: {name}" for name in ("RuntimeError", "KeyboardInterrupt", "RecursionError")]
    assert [(r["error"], r["code"], r["explanation"]) for r in results[:3]] == [(ERROR_EXCEPTION, 1, e)
                                                                                 for e in expected]
    assert "reply" in results[3] and results[3]["error"] == 0
    assert results[4] == {"lib_created": False, "error": ERROR_EXCEPTION, "code": 1, "explanation": expected[2]}
    # Logged by type and stack only: the exception's message quoted a value.
    assert "internal error in mongo_crypt_v1 analysis" in done.stderr
    assert "value-that-must-not-leak" not in done.stderr


def test_many_threads_analyse_at_once(library: str, daemon_replies: list[bytes], tmp_path: Path) -> None:
    request = {"commands": [Binary(command_bytes(command)) for _, command in COMMANDS], "threads": 16, "rounds": 8}
    outcome = run_abi(library, "threads", request, tmp_path)
    assert outcome["calls"] == 16 * 8 * len(COMMANDS)
    assert outcome["mismatches"] == 0
    for daemon, result in zip(daemon_replies, outcome["results"], strict=True):
        if "reply" in result:
            assert bytes(result["reply"]) == daemon


def test_python_module_prints_the_path(library: str) -> None:
    done = subprocess.run([sys.executable, "-m", "markd.crypt_shared"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [library] and Path(library).is_absolute() and Path(library).is_file()


def test_library_path_explains_a_missing_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(markd.crypt_shared, "PACKAGE_DIR", tmp_path)
    with pytest.raises(markd.crypt_shared.LibraryUnavailable, match="has not been built"):
        markd.crypt_shared.library_path()
    (tmp_path / build.FAILED_NOTE).write_text("mongo_crypt_v1.so was not built when markd was installed: no cc\n")
    with pytest.raises(markd.crypt_shared.LibraryUnavailable, match="no cc"):
        markd.crypt_shared.library_path()


def test_a_library_from_another_markd_is_refused() -> None:
    embedded.check_versions(markd.__version__, commands.SERVER_VERSION)
    with pytest.raises(CommandError, match="reinstall markd"):
        embedded.check_versions("0.0.1", commands.SERVER_VERSION)
    with pytest.raises(CommandError, match="reinstall markd"):
        embedded.check_versions(markd.__version__, "7.0.0")


# libmongocrypt gates features on crypt_shared's version as it gates them on mongocryptd's maxWireVersion
# (src/mongocrypt-ctx-encrypt.c): create/createIndexes from 6.0 (wire 17; crypt_shared always gets them),
# several collections' schemas from 8.1 (26), mixing CSFLE and QE schemas from 8.2 (27).
FEATURE_GATES = [(17, (6, 0, 0)), (26, (8, 1, 0)), (27, (8, 2, 0))]


@pytest.mark.parametrize(("wire_version", "server_line"), FEATURE_GATES)
def test_version_enables_what_the_daemons_wire_version_enables(wire_version: int,
                                                               server_line: tuple[int, int, int]) -> None:
    version = build.version_number(commands.SERVER_VERSION)
    gate = build.version_number(".".join(map(str, server_line)))
    assert (commands.MAX_WIRE_VERSION >= wire_version) == (version >= gate)
    assert build.versions() == (markd.__version__, commands.SERVER_VERSION)


# ---- the real libmongocrypt in this process (pymongo) ----------------------------------------
class Deployment:
    def __init__(self, mongod: FakeMongod, library: str) -> None:
        self.mongod = mongod
        self.library = library
        self.key = mongod.create_data_key(KMS, "keyvault.datakeys")
        self.other_key = mongod.create_data_key(KMS, "keyvault.datakeys")
        self.clients: list[MongoClient[Any]] = []

    def schema(self, key: Any) -> dict[str, Any]:
        return {"bsonType": "object", "properties": {
            "ssn": {"encrypt": {"keyId": [key], "bsonType": "string", "algorithm": DETERMINISTIC}},
            "card": {"encrypt": {"keyId": [key], "bsonType": "string", "algorithm": RANDOM}}}}

    def client(self, **analysis: Any) -> MongoClient[Any]:
        options = AutoEncryptionOpts(KMS, "keyvault.datakeys", **analysis)
        client: MongoClient[Any] = MongoClient(self.mongod.uri, auto_encryption_opts=options,
                                               serverSelectionTimeoutMS=5000)
        self.clients.append(client)
        return client

    def in_process(self, **maps: Any) -> MongoClient[Any]:
        return self.client(crypt_shared_lib_path=self.library, crypt_shared_lib_required=True, **maps)

    def stored(self, namespace: str) -> list[dict[str, Any]]:
        return self.mongod.documents(namespace)


@pytest.fixture
def deployment(library: str) -> Iterator[Deployment]:
    with emulate_database(FakeMongod()) as mongod:
        deployment = Deployment(mongod, library)
        try:
            yield deployment
        finally:
            for client in deployment.clients:
                client.close()


def ciphertext(value: Any, first_byte: int) -> bool:
    return isinstance(value, Binary) and value.subtype == 6 and len(value) > 1 and value[0] == first_byte


def test_csfle_in_process_gives_the_daemons_ciphertext(deployment: Deployment) -> None:
    schema_map = {"db.coll": deployment.schema(deployment.key), "db.viad": deployment.schema(deployment.key)}
    # First through the daemon, closed before the library is loaded: while libmongocrypt holds a
    # crypt_shared library, it refuses every other auto-encrypting client that does not name the same one.
    with MarkdProcess() as process:
        through_daemon = deployment.client(schema_map=schema_map, mongocryptd_uri=process.uri,
                                           mongocryptd_bypass_spawn=True)
        through_daemon.db.viad.insert_one({"_id": 1, "ssn": "123-45-6789", "card": "4111", "name": "Ann"})
        through_daemon.close()
    (via_daemon,) = deployment.stored("db.viad")
    in_process = deployment.in_process(schema_map=schema_map)
    in_process.db.coll.insert_one({"_id": 1, "ssn": "123-45-6789", "card": "4111", "name": "Ann"})
    (stored,) = deployment.stored("db.coll")
    assert ciphertext(stored["ssn"], 1) and ciphertext(stored["card"], 2) and stored["name"] == "Ann"
    # Deterministic: the daemon's markings made the very same ciphertext.
    assert via_daemon["ssn"] == stored["ssn"]
    # A find marks, encrypts (the stand-in sees ciphertext) and decrypts what comes back.
    found = in_process.db.coll.find_one({"ssn": "123-45-6789"})
    assert found == {"_id": 1, "ssn": "123-45-6789", "card": "4111", "name": "Ann"}
    (find,) = [c.body for c in deployment.mongod.received("find") if c.body.get("find") == "coll"]
    assert find["filter"]["ssn"]["$eq"] == stored["ssn"]
    assert b"123-45-6789" not in bson.encode(find)


def test_qe_in_process(deployment: Deployment) -> None:
    fields = {"fields": [
        {"path": "eq", "keyId": deployment.key, "bsonType": "string",
         "queries": {"queryType": "equality", "contention": 0}},
        {"path": "r", "keyId": deployment.other_key, "bsonType": "int",
         "queries": {"queryType": "range", "contention": 0, "min": 0, "max": 100, "sparsity": 1, "trimFactor": 1}}]}
    client = deployment.in_process(encrypted_fields_map={"db.qe": fields})
    client.db.create_collection("qe", encryptedFields=fields)
    client.db.qe.insert_one({"_id": 1, "eq": "alpha", "r": 42, "plain": "p"})
    (stored,) = deployment.stored("db.qe")
    assert ciphertext(stored["eq"], 11) and ciphertext(stored["r"], 11)  # FLE2InsertUpdatePayloadV2
    assert stored["plain"] == "p"
    assert client.db.qe.find_one({"eq": "alpha"})["r"] == 42
    assert [d["_id"] for d in client.db.qe.find({"r": {"$gte": 40, "$lt": 50}})] == [1]
    find = next(c.body for c in deployment.mongod.received("find") if c.body.get("find") == "qe")
    assert ciphertext(find["filter"]["eq"]["$eq"], 12)  # FLE2FindEqualityPayloadV2
    assert b"alpha" not in bson.encode(find)
    # An explain: libmongocrypt hands crypt_shared its QE rules inside the explained command.
    client.db.qe.find({"eq": "alpha"}).explain()
    (explain,) = [c.body for c in deployment.mongod.received("explain")]
    assert ciphertext(explain["explain"]["filter"]["eq"]["$eq"], 12) and b"alpha" not in bson.encode(explain)


def test_a_refused_query_reaches_the_application_with_the_daemons_message(deployment: Deployment) -> None:
    schema_map = {"db.coll": deployment.schema(deployment.key)}
    client = deployment.in_process(schema_map=schema_map)
    with pytest.raises(EncryptionError) as raised:
        client.db.coll.find_one({"ssn": {"$gt": "1"}})
    # What the daemon says to the same command, word for word.
    with MarkdProcess() as process:
        connection = RawConnection(process.port)
        command = {"find": "coll", "filter": {"ssn": {"$gt": "1"}}, "jsonSchema": bson.decode(
            bson.encode(schema_map["db.coll"])), "isRemoteSchema": False, "$db": "db"}
        daemon = bsonvalues.decode(daemon_reply(connection, bsonvalues.encode(command)))
        connection.close()
    message = str(raised.value)
    assert f"[crypt_shared {VERSION_STR}]" in message
    assert f"failed: {daemon['errmsg']} [Error {ERROR_EXCEPTION}, code {daemon['code']}]" in message
    assert not deployment.mongod.received("find") or all(
        c.body.get("find") != "coll" for c in deployment.mongod.received("find"))


def test_commands_over_several_collections(deployment: Deployment) -> None:
    """libmongocrypt sends csfleEncryptionSchemas only to a crypt_shared of 8.1 or later."""
    schema_map = {"db.coll": deployment.schema(deployment.key), "db.other": deployment.schema(deployment.key)}
    client = deployment.in_process(schema_map=schema_map)
    pipeline = [{"$match": {"ssn": "1"}},
                {"$lookup": {"from": "other", "localField": "x", "foreignField": "x", "as": "joined"}}]
    assert list(client.db.coll.aggregate(pipeline)) == []
    (aggregate,) = [c.body for c in deployment.mongod.received("aggregate") if c.body.get("aggregate") == "coll"]
    assert ciphertext(aggregate["pipeline"][0]["$match"]["ssn"]["$eq"], 1)


def test_many_threads_share_one_client(deployment: Deployment) -> None:
    client = deployment.in_process(schema_map={"db.coll": deployment.schema(deployment.key)})
    threads, rounds = 16, 10
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            start.wait()
            for round_ in range(rounds):
                ssn = f"{index:03d}-{round_:02d}"
                client.db.coll.insert_one({"_id": f"{index}.{round_}", "ssn": ssn})
                # The stand-in matches on _id only; the marking and the decryption are libmongocrypt's.
                assert client.db.coll.find_one({"_id": f"{index}.{round_}", "ssn": ssn})["ssn"] == ssn
                with pytest.raises(EncryptionError, match="analyze_query"):
                    client.db.coll.find_one({"ssn": {"$lt": ssn}})
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    stored = deployment.stored("db.coll")
    assert len(stored) == threads * rounds and all(ciphertext(d["ssn"], 1) for d in stored)


# ---- a host without Python: a C program linking the system's libmongocrypt ----------------------
def _compile_host(tmp_path: Path) -> Path:
    pkg_config = shutil.which("pkg-config")
    flags = subprocess.run([pkg_config, "--cflags", "--libs", "libmongocrypt"], capture_output=True, text=True) \
        if pkg_config else None
    if flags is None or flags.returncode != 0 or not shutil.which("cc"):
        message = "needs cc and libmongocrypt's headers (apt-get install libmongocrypt-dev pkg-config)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    program = tmp_path / "crypt_shared_host"
    done = subprocess.run(["cc", "-Wall", "-Werror", "-o", str(program), str(HOST_SOURCE), *flags.stdout.split()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return program


def run_c_host(program: Path, library: str, cwd: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    done = subprocess.run([str(program), library], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_a_c_program_marks_through_the_library(library: str, tmp_path: Path) -> None:
    program = _compile_host(tmp_path)
    lines = run_c_host(program, library, tmp_path)
    assert lines["VERSION"] == VERSION_STR
    find = json.loads(lines["FIND"])
    assert find["filter"]["ssn"]["$eq"]["$binary"]["subType"] == "06"
    insert = json.loads(lines["INSERT"])
    assert insert["documents"][0]["ssn"]["$binary"]["subType"] == "06" and insert["documents"][0]["name"] == "Ann"
    assert "123-45-6789" not in lines["FIND"] and "987-65-4321" not in lines["INSERT"]
    expected = embedded_refusal({"find": "coll", "filter": {"ssn": {"$gt": "1"}}})
    assert f"analyze_query\" failed: {expected.errmsg} [Error {ERROR_EXCEPTION}, code {expected.code}]" in \
        lines["REFUSED"]


def embedded_refusal(command: dict[str, Any]) -> CommandError:
    """What markd's analysis says to `command` on a deterministic string `ssn` (the C host's schema)."""
    schema = {"bsonType": "object", "properties": {"ssn": {"encrypt": {
        "keyId": [Binary(os.urandom(16), 4)], "bsonType": "string", "algorithm": DETERMINISTIC}}}}
    with pytest.raises(CommandError) as raised:
        embedded.analyze(bsonvalues.encode({**command, "jsonSchema": schema, "isRemoteSchema": False, "$db": "db"}))
    return raised.value


def test_a_library_that_cannot_find_markd_fails_closed(library: str, tmp_path: Path) -> None:
    """Copied away from any markd (and no environment recorded): libmongocrypt's init fails with why."""
    program = _compile_host(tmp_path)
    lonely = tmp_path / "a" / "b" / "c" / "mongo_crypt_v1.so"
    lonely.parent.mkdir(parents=True)
    shutil.copy2(library, lonely)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    done = subprocess.run([str(program), str(lonely)], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert "lib_create() failed: markd: the mongo_crypt_v1 library cannot load markd into Python" in done.stderr
    assert "No module named 'markd'" in done.stderr


# A Python without markd (nor pymongo) loading the library, as the spec harness's venv does: ctypes only.
_BARE_HOST = """
import ctypes, importlib.util, sys
assert importlib.util.find_spec("markd") is None and importlib.util.find_spec("bson") is None
library = ctypes.CDLL(sys.argv[1])
library.mongo_crypt_v1_status_create.restype = ctypes.c_void_p
library.mongo_crypt_v1_status_get_explanation.restype = ctypes.c_char_p
library.mongo_crypt_v1_status_get_explanation.argtypes = [ctypes.c_void_p]
library.mongo_crypt_v1_lib_create.restype = ctypes.c_void_p
library.mongo_crypt_v1_lib_create.argtypes = [ctypes.c_void_p]
library.mongo_crypt_v1_query_analyzer_create.restype = ctypes.c_void_p
library.mongo_crypt_v1_query_analyzer_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
analyze = library.mongo_crypt_v1_analyze_query
analyze.restype = ctypes.POINTER(ctypes.c_uint8)
analyze.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32,
                    ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
status = library.mongo_crypt_v1_status_create()
lib = library.mongo_crypt_v1_lib_create(status)
assert lib, library.mongo_crypt_v1_status_get_explanation(status)
analyzer = library.mongo_crypt_v1_query_analyzer_create(lib, status)
length = ctypes.c_uint32()
reply = analyze(analyzer, bytes.fromhex(sys.argv[2]), b"db.coll", 7, ctypes.byref(length), status)
assert reply, library.mongo_crypt_v1_status_get_explanation(status)
print(ctypes.string_at(reply, length.value).hex())
library.mongo_crypt_v1_bson_free(reply)
"""


def test_a_python_without_markd_takes_it_from_the_librarys_environment(library: str) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    probe = subprocess.run([base, "-I", "-c", "import sys; print(sys.version_info[:2]); import markd"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode == 0 or probe.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip("needs this Python's base interpreter, without markd")
    command = command_bytes(COMMANDS[0][1])
    done = subprocess.run([base, "-I", "-c", _BARE_HOST, library, command.hex()], cwd="/", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert bytes.fromhex(done.stdout.strip()) == embedded.analyze(command)
