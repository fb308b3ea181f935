"""markd as a service: pymongo reaches it over TCP and over its Unix socket, and bad input on one
connection never disturbs another."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from pymongo import MongoClient
from pymongo.encryption_options import AutoEncryptionOpts

from tests.support.fake_mongod import FakeMongod
from tests.support.process import (
    OP_MSG,
    OP_REPLY,
    PATIENCE,
    MarkdProcess,
    RawConnection,
    assert_markd_answered_insert,
    command_count,
    compressed_frame,
    encrypted_insert,
    markd_metrics,
    op_msg_frame,
    op_query_frame,
    poll_until,
    ssn_schema,
)

FRAME_TIMEOUT = 2.0
KMS = {"local": {"key": os.urandom(96)}}
# mongod's OpMsg parse: illegal flags 223, checksum 282, sections 40430-40433, no body 40587; 22 for BSON
PROTOCOL_ERROR_CODES = {22, 40, 223, 282, 40430, 40431, 40432, 40433, 40587}


@pytest.fixture(scope="module")
def daemon() -> Iterator[MarkdProcess]:
    with MarkdProcess(args=[f"--frameTimeoutSecs={FRAME_TIMEOUT}"]) as process:
        yield process


class Pinger:
    """A well-behaved pymongo client on its own connection, pinging all the time."""

    def __init__(self, process: MarkdProcess) -> None:
        self.client = process.client(maxPoolSize=1)
        self.answers = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assert self.client.admin.command("ping")["ok"] == 1
                self.answers += 1
            except BaseException as exc:  # recorded: the test fails on it
                self.errors.append(exc)
            time.sleep(0.005)

    def assert_served_since(self, answers_before: int) -> None:
        poll_until(lambda: self.errors or self.answers > answers_before + 2,
                   f"the well-behaved client to get answers (stalled at {self.answers})", interval=0.01)
        assert not self.errors, f"the well-behaved client got errors: {self.errors}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


@pytest.fixture(scope="module")
def pinger(daemon: MarkdProcess) -> Iterator[Pinger]:
    pinger = Pinger(daemon)
    yield pinger
    pinger.stop()
    assert not pinger.errors


@pytest.fixture(scope="module")
def markd_client(daemon: MarkdProcess) -> Iterator[MongoClient[Any]]:
    with daemon.client() as client:
        yield client


# pymongo with auto-encryption, bypassing the spawn --------------------------------------------
def _auto_encrypting_client(mongod: FakeMongod, mongocryptd_uri: str) -> tuple[MongoClient[Any], str]:
    key_id = mongod.create_data_key(KMS)
    opts = AutoEncryptionOpts(KMS, "keyvault.datakeys", schema_map={"db.coll": ssn_schema(key_id)},
                              mongocryptd_uri=mongocryptd_uri, mongocryptd_bypass_spawn=True)
    return MongoClient(mongod.uri, auto_encryption_opts=opts, serverSelectionTimeoutMS=30_000), "123-45-6789"


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_bypass_spawn_reaches_markd(daemon, markd_client, transport):
    if transport == "tcp":
        uri = daemon.uri
    else:
        uri = "mongodb://" + urllib.parse.quote(str(daemon.socket_path), safe="")
        assert uri.startswith("mongodb://%2F") and uri.endswith("mongocryptd.sock")
    before = command_count(markd_metrics(markd_client), "insert")
    with FakeMongod() as mongod:
        client, plaintext = _auto_encrypting_client(mongod, uri)
        with client:
            error = encrypted_insert(client, {"ssn": plaintext, "n": 1})
        inserted = [c.body["documents"][0] for c in mongod.received("insert") if c.database == "db"]
    assert_markd_answered_insert(markd_client, error, inserted, plaintext, before)


def test_unix_socket_speaks_the_same_protocol(daemon):
    with RawConnection(daemon.socket_path) as connection:
        reply = connection.command({"hello": 1, "$db": "admin"})
    assert reply["iscryptd"] is True
    assert oct(os.stat(daemon.socket_path).st_mode & 0o777) == "0o700"


def test_pid_file_names_port_socket_and_pid(daemon):
    content = daemon.pidfile_content()
    assert content == {"port": daemon.port, "domainSocket": str(daemon.socket_path), "pid": daemon.process.pid}


# handshake and protocol features --------------------------------------------------------------
def test_legacy_op_query_handshake_gets_op_reply(daemon):
    with RawConnection(daemon.port) as connection:
        connection.send(op_query_frame({"ismaster": 1, "helloOk": True, "client": {"driver": {"name": "x"}}},
                                       request_id=11))
        reply = connection.read_reply()
    assert (reply.op_code, reply.response_to) == (OP_REPLY, 11)
    document = reply.document
    assert document["ismaster"] is True and document["iscryptd"] is True
    assert document["maxWireVersion"] >= 26 and document["minWireVersion"] == 0
    assert document["maxBsonObjectSize"] == 16 * 1024 * 1024
    assert document["maxMessageSizeBytes"] == 48_000_000
    assert "compression" not in document
    assert document["helloOk"] is True  # asked for with helloOk: the driver may switch to hello


def test_legacy_op_query_wrapped_in_dollar_query(daemon):
    with RawConnection(daemon.port) as connection:
        connection.send(op_query_frame({"$query": {"isMaster": 1}, "$readPreference": {"mode": "primary"}}))
        assert connection.read_reply().document["iscryptd"] is True


@pytest.mark.parametrize("query,collection", [({"find": "c"}, "db.$cmd"), ({"ismaster": 1}, "db.coll"),
                                              ({"ping": 1}, "admin.$cmd")])
def test_op_query_other_than_the_handshake_is_refused(daemon, query, collection):
    with RawConnection(daemon.port) as connection:
        connection.send(op_query_frame(query, collection=collection, request_id=3))
        reply = connection.read_reply()
        assert reply.op_code == OP_REPLY
        assert reply.document["ok"] == 0 and reply.document["code"] == 352
        # The connection stays usable.
        assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1


def test_op_msg_handshake_on_any_database_as_libmongocrypt_sends_it(daemon):
    with RawConnection(daemon.port) as connection:
        reply = connection.command({"isMaster": 1, "$db": "db"})
    assert reply["ismaster"] is True and reply["iscryptd"] is True


def test_op_msg_without_db_is_an_error(daemon):
    with RawConnection(daemon.port) as connection:
        reply = connection.command({"ping": 1})
    assert reply["ok"] == 0 and reply["code"] == 40571


def test_kind1_sequence_is_merged_before_analysis(daemon):
    documents = [{"_id": 1, "ssn": "seq"}, {"_id": 2}]
    command = {"insert": "coll", "jsonSchema": {}, "isRemoteSchema": False, "$db": "db"}
    with RawConnection(daemon.port) as connection:
        connection.send(op_msg_frame(command, request_id=5, sequences=[("documents", documents)]))
        reply = connection.read_reply().document
        if reply["ok"] == 1:  # real analysis: the merged documents come back in the result
            assert reply["result"]["documents"] == documents
        else:  # fail-closed analysis: refused by the analysis, not by the wire layer
            assert reply["code"] not in PROTOCOL_ERROR_CODES, reply
        # A sequence that duplicates a body field is the wire layer's error.
        duplicate = dict(command, documents=documents)
        connection.send(op_msg_frame(duplicate, request_id=6, sequences=[("documents", documents)]))
        reply = connection.read_reply().document
        assert reply["ok"] == 0 and reply["errmsg"] == "Duplicate field between body and document sequence documents"


def test_date_outside_pythons_range_is_not_invalid_bson(daemon):
    from bson.datetime_ms import DatetimeMS

    far = DatetimeMS(2**62)
    command = {"find": "c", "filter": {"d": far}, "jsonSchema": {}, "isRemoteSchema": False, "$db": "db"}
    with RawConnection(daemon.port) as connection:
        reply = connection.command(command)
    assert reply.get("code") not in PROTOCOL_ERROR_CODES, reply
    if reply["ok"] == 1:
        marked = reply["result"]["filter"]["d"]  # mongocryptd writes {d: v} as {d: {$eq: v}}
        assert far in (marked, marked.get("$eq") if isinstance(marked, dict) else None)


def test_more_to_come_gets_no_reply(daemon):
    with RawConnection(daemon.port) as connection:
        connection.send(op_msg_frame({"ping": 1, "$db": "admin"}, request_id=1, flags=2))
        connection.send(op_msg_frame({"ping": 1, "$db": "admin"}, request_id=2))
        assert connection.read_reply().response_to == 2


def test_checksummed_request_is_answered(daemon):
    with RawConnection(daemon.port) as connection:
        connection.send(op_msg_frame({"ping": 1, "$db": "admin"}, request_id=8, checksum=True))
        reply = connection.read_reply()
    assert reply.response_to == 8 and reply.document["ok"] == 1


@pytest.mark.parametrize("compressor", [0, 2], ids=["noop", "zlib"])
def test_op_compressed_is_answered_uncompressed(daemon, compressor):
    with RawConnection(daemon.port) as connection:
        connection.send(compressed_frame(op_msg_frame({"hello": 1, "$db": "admin"}, request_id=21), compressor))
        reply = connection.read_reply()
    assert (reply.op_code, reply.response_to) == (OP_MSG, 21)
    assert reply.document["iscryptd"] is True


def test_pipelined_requests_are_answered_in_order(daemon):
    with RawConnection(daemon.port) as connection:
        connection.send(b"".join(op_msg_frame({"ping": 1, "$db": "admin"}, request_id=i) for i in range(1, 201)))
        assert [connection.read_reply().response_to for _ in range(200)] == list(range(1, 201))


def test_unknown_command_and_admin_commands(daemon, markd_client):
    with RawConnection(daemon.port) as connection:
        assert connection.command({"frobnicate": 1, "$db": "admin"}) == {
            "ok": 0.0, "errmsg": "no such command: 'frobnicate'", "code": 59, "codeName": "CommandNotFound"}
        assert connection.command({"endSessions": [], "$db": "admin"})["ok"] == 1
    build = markd_client.admin.command("buildInfo")
    assert build["ok"] == 1 and isinstance(build["versionArray"], list)
    assert markd_client.admin.command("getCmdLineOpts")["argv"][0] == "mongocryptd"


# bad input, each on its own connection, while a good client keeps getting answers ---------------
def _header(length: int, op_code: int = OP_MSG) -> bytes:
    return struct.pack("<iiii", length, 1, 0, op_code)


def _invalid_bson_body() -> bytes:
    body = bytearray(bson.encode({"ping": 1, "s": "abc", "$db": "admin"}))
    body[14] = 0x99  # the type byte of "s"
    payload = b"\x00\x00\x00\x00\x00" + bytes(body)
    return _header(16 + len(payload)) + payload


def _bad_checksum() -> bytes:
    frame = bytearray(op_msg_frame({"ping": 1, "$db": "admin"}, checksum=True))
    frame[-1] ^= 0x55
    return bytes(frame)


# name -> (bytes, what markd does: "close" the connection or "error" reply and keep it)
BAD_INPUT = {
    "truncated_header": (_header(100)[:10], "close_on_eof"),
    "length_below_16": (_header(8) + b"\x00" * 8, "close"),
    "length_negative": (_header(-5) + b"\x00" * 8, "close"),
    "length_above_max": (_header(48_000_001) + b"\x00" * 64, "close"),
    "unknown_opcode": (_header(24, op_code=2010) + b"\x00" * 8, "close"),
    "op_reply_from_client": (_header(56, op_code=1) + b"\x00" * 40, "close"),
    "invalid_bson_body": (_invalid_bson_body(), "error"),
    "checksum_mismatch": (_bad_checksum(), "error"),
    "unknown_required_flag": (op_msg_frame({"ping": 1, "$db": "admin"}, flags=1 << 3), "error"),
    "op_msg_no_sections": (_header(20) + b"\x00\x00\x00\x00", "close"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input_is_contained_to_its_connection(daemon, pinger, name):
    data, effect = BAD_INPUT[name]
    answers = pinger.answers
    with RawConnection(daemon.port) as connection:
        connection.send(data)
        if effect == "close":
            assert connection.is_closed_by_peer(), "markd kept a connection it cannot frame"
        elif effect == "close_on_eof":
            connection.sock.shutdown(socket.SHUT_WR)
            assert connection.is_closed_by_peer()
        else:
            reply = connection.read_reply()
            assert reply.document["ok"] == 0 and reply.document["code"] in PROTOCOL_ERROR_CODES, reply.document
            # Readable frame, unreadable content: the connection stays open and usable.
            assert connection.command({"ping": 1, "$db": "admin"}, request_id=2)["ok"] == 1
    pinger.assert_served_since(answers)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_contained(daemon, pinger, seed):
    rng = random.Random(seed)
    answers = pinger.answers
    with RawConnection(daemon.port) as connection:
        connection.send(bytes(rng.getrandbits(8) for _ in range(4096)))
        # Either unframeable at once, or a plausible length that never completes (dropped after the frame timeout).
        assert connection.is_closed_by_peer()
    pinger.assert_served_since(answers)


def test_stalled_half_frame_is_dropped_after_the_frame_timeout(daemon, pinger):
    frame = op_msg_frame({"ping": 1, "$db": "admin"})
    answers = pinger.answers
    with RawConnection(daemon.port) as stalled, RawConnection(daemon.port) as healthy:
        started = time.monotonic()
        stalled.send(frame[: len(frame) // 2])
        # Not before the timeout (load can only delay markd's timer, never advance it) ...
        assert not stalled.is_closed_by_peer(timeout=FRAME_TIMEOUT / 2)
        assert healthy.command({"ping": 1, "$db": "admin"})["ok"] == 1
        # ... but after it, however long a loaded machine takes to get there.
        assert stalled.is_closed_by_peer()
        assert time.monotonic() - started >= FRAME_TIMEOUT - 0.2  # uvloop's clock has millisecond steps
        assert healthy.command({"ping": 1, "$db": "admin"})["ok"] == 1
    pinger.assert_served_since(answers)


def test_a_slow_but_complete_sender_is_not_dropped(daemon):
    """The frame clock restarts with every complete message: ten half-frames in a row, each completed
    well within the timeout (a margin of 1.75 s for a loaded machine), add up to more than the timeout."""
    frame = op_msg_frame({"ping": 1, "$db": "admin"}, request_id=4)
    pause = FRAME_TIMEOUT / 8
    with RawConnection(daemon.port) as connection:
        connection.send(frame[:10])
        for _ in range(10):
            time.sleep(pause)
            connection.send(frame[10:] + frame[:10])  # this message completed, the next one begun
            assert connection.read_reply().response_to == 4
        connection.send(frame[10:])
        assert connection.read_reply().response_to == 4


def test_thousand_connections_opened_and_dropped():
    """A daemon of its own, so the only other connections are this test's: the count must come back to exactly
    the watcher and the well-behaved client."""
    with MarkdProcess() as daemon, RawConnection(daemon.port) as watch, RawConnection(daemon.port) as healthy:
        assert healthy.command({"ping": 1, "$db": "admin"})["ok"] == 1  # accepted, then
        assert watch.other_connections() == 1  # the well-behaved client is the only other one
        sockets = []
        for i in range(1000):
            sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=PATIENCE)
            if i % 2:  # half of them reset instead of closing politely
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if i % 3 == 0:
                sock.sendall(op_msg_frame({"ping": 1, "$db": "admin"})[:7])
            sockets.append(sock)
            if i % 100 == 0:  # served all along
                assert healthy.command({"ping": 1, "$db": "admin"}, request_id=i + 1)["ok"] == 1
        # All accepted before any is closed: a connection reset while still in the kernel's accept queue
        # never reaches markd.
        watch.wait_for_accepted(1002)
        for sock in sockets:
            sock.close()
        assert watch.wait_for_other_connections(at_most=1) == 1
        assert healthy.command({"ping": 1, "$db": "admin"})["ok"] == 1
