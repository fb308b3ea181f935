"""Resource isolation (issue 14): each attack of the issue's table, against a real markd, while a
well-behaved client keeps getting correct answers. No timing is asserted: speed and memory are
bench/isolation.py's figures; here every attack must be survived and the other client served."""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bson.binary import Binary
from pymongo import MongoClient

from tests.support.process import (
    DETERMINISTIC,
    MarkdProcess,
    RawConnection,
    markd_metrics,
    op_msg_frame,
    ssn_schema,
)

KEY = Binary(uuid.UUID(int=14).bytes, 4)
SCHEMA = ssn_schema(KEY)
FIND = {"find": "c", "filter": {"ssn": "123-45-6789"}, "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}


def marked_find(connection: RawConnection, request_id: int = 7) -> None:
    """The other client's round trip: hello, then a CSFLE find whose value must come back marked."""
    assert connection.command({"hello": 1, "$db": "admin"}, request_id)["iscryptd"] is True
    reply = connection.command(FIND, request_id + 1)
    assert reply["ok"] == 1 and reply["hasEncryptionPlaceholders"] is True, reply
    placeholder = reply["result"]["filter"]["ssn"]["$eq"] if isinstance(reply["result"]["filter"]["ssn"], dict) \
        else reply["result"]["filter"]["ssn"]
    assert getattr(placeholder, "subtype", None) == 6, reply


class OtherClient:
    """A well-behaved client doing `marked_find` in a loop on its own connection, in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rounds = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with RawConnection(self.port, timeout=60) as connection:
                while not self._stop.is_set():
                    marked_find(connection, 100 + 2 * (self.rounds % 1000))
                    self.rounds += 1
                    time.sleep(0.02)
        except BaseException as exc:  # reported by stop()
            self.failures.append(exc)

    def __enter__(self) -> OtherClient:
        self._thread.start()
        return self

    def wait_rounds(self, count: int, timeout: float = 60.0) -> None:
        target = self.rounds + count
        deadline = time.monotonic() + timeout
        while self.rounds < target and not self.failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.failures, self.failures
        assert self.rounds >= target, f"the other client made {self.rounds} rounds, wanted {target}"

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self.failures, self.failures


@pytest.fixture(scope="module")
def daemon() -> Iterator[MarkdProcess]:
    args = ["--frameTimeoutSecs=3", "--inFlightBudgetMB=64", "--maxConns=64"]
    with MarkdProcess(args=args) as process:
        yield process


def survives(daemon: MarkdProcess, attack: Callable[[], None], rounds: int = 5) -> None:
    """Run `attack` while the other client keeps asking; both must finish, markd must still be up."""
    with OtherClient(daemon.port) as other:
        other.wait_rounds(1)
        attack()
        other.wait_rounds(rounds)
    assert daemon.process is not None and daemon.process.poll() is None
    with RawConnection(daemon.port) as connection:
        marked_find(connection)


def encrypt_rule() -> dict[str, Any]:
    return {"encrypt": {"keyId": [KEY], "bsonType": "string", "algorithm": DETERMINISTIC}}


# the table of the issue, row by row ------------------------------------------------------------
def test_catastrophic_pattern_is_answered_correctly(daemon):
    schema = {"bsonType": "object", "patternProperties": {"^(a+)+$": encrypt_rule()}}
    evil = "a" * 26 + "!"

    def attack() -> None:
        with RawConnection(daemon.port, timeout=60) as connection:
            for round_ in range(3):
                reply = connection.command({"insert": "c", "documents": [{evil: "v", "aaaa": "secret"}],
                                            "jsonSchema": schema, "isRemoteSchema": False, "$db": "db"}, round_)
                assert reply["ok"] == 1, reply
                document = reply["result"]["documents"][0]
                assert document[evil] == "v"  # does not match ^(a+)+$: left alone, as PCRE would
                assert getattr(document["aaaa"], "subtype", None) == 6  # matches: marked

    survives(daemon, attack)


def test_pipelined_megabyte_batches_of_hello_are_answered_in_order(daemon):
    hello = [op_msg_frame({"hello": 1, "$db": "admin"}, request_id=i) for i in range(20_000)]
    batch = b"".join(hello)
    assert len(batch) > 1_000_000

    def attack() -> None:
        with RawConnection(daemon.port, timeout=60) as connection:
            for _ in range(3):
                sender = threading.Thread(target=connection.send, args=(batch,))
                sender.start()
                for expected in range(len(hello)):
                    assert connection.read_reply().response_to == expected
                sender.join()

    survives(daemon, attack)


def test_a_client_that_never_reads_is_stopped_and_dropped(daemon):
    # Counted over one raw connection: a driver's monitor would open connections of its own meanwhile.
    watch = RawConnection(daemon.port)
    before = watch.other_connections()
    greedy = socket.create_connection(("127.0.0.1", daemon.port))
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = op_msg_frame({"hello": 1, "$db": "admin"}) * 1000

    def attack() -> None:
        greedy.settimeout(0.5)
        sent = 0
        try:
            while sent < 200:  # markd stops reading it long before: sendall times out
                greedy.sendall(frame)
                sent += 1
        except (TimeoutError, OSError):
            pass

    try:
        survives(daemon, attack)
        daemon.wait_for_log("does not read its replies")
        assert watch.wait_for_other_connections(at_most=before) <= before  # the greedy one is gone
    finally:
        greedy.close()
        watch.close()


def _compressed(frame: bytes) -> bytes:
    _, request_id, response_to, op_code = struct.unpack_from("<iiii", frame)
    payload = frame[16:]
    body = struct.pack("<iiB", op_code, len(payload), 2) + zlib.compress(payload, 9)
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, 2012) + body


def test_compressed_floods_count_at_their_inflated_size(daemon):
    # 20 connections each send a ~45 KB zlib frame that inflates to a 45 MB insert, and never read.
    big = {"insert": "c", "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}
    documents = [{"ssn": "1", "blob": "x" * (15 * 1024 * 1024)}] * 3  # a kind-1 sequence, as drivers send it
    frame = _compressed(op_msg_frame(big, request_id=9, sequences=[("documents", documents)]))
    assert len(frame) < 100_000
    floods: list[socket.socket] = []

    def attack() -> None:
        for _ in range(20):
            flood = socket.create_connection(("127.0.0.1", daemon.port))
            flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            flood.sendall(frame)
            floods.append(flood)
        with daemon.client() as client:
            deadline = time.monotonic() + 60
            while markd_metrics(client)["inFlight"]["waits"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            in_flight = markd_metrics(client)["inFlight"]
        assert in_flight["waits"] > 0, in_flight  # some had to wait for the budget
        assert in_flight["peakBytes"] <= in_flight["limitBytes"] + 50 * 1024 * 1024, in_flight

    try:
        survives(daemon, attack)
    finally:
        for flood in floods:
            flood.close()
    # And one that is read: it is answered, and its document marked.
    with RawConnection(daemon.port, timeout=120) as connection:
        connection.send(frame)
        reply = connection.read_reply()
        assert reply.response_to == 9
        assert getattr(reply.document["result"]["documents"][0]["ssn"], "subtype", None) == 6


def test_a_new_huge_field_name_per_request(daemon):
    def attack() -> None:
        with RawConnection(daemon.port, timeout=120) as connection:
            for round_ in range(5):
                name = chr(ord("a") + round_) * (2 * 1024 * 1024)
                reply = connection.command({"insert": "c", "documents": [{name: "v", "ssn": "1"}],
                                            "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}, round_)
                assert reply["ok"] == 1 and reply["hasEncryptionPlaceholders"] is True

    survives(daemon, attack)


def test_many_schemas_with_huge_descriptions(daemon):
    def attack() -> None:
        with RawConnection(daemon.port, timeout=120) as connection:
            for round_ in range(20):
                schema = {**SCHEMA, "description": f"{round_}" + "d" * (1024 * 1024)}
                reply = connection.command({**FIND, "jsonSchema": schema}, round_)
                assert reply["ok"] == 1 and reply["hasEncryptionPlaceholders"] is True

    survives(daemon, attack)


def test_idle_connection_flood_cannot_lock_out_a_live_client(daemon):
    idle: list[socket.socket] = []

    def attack() -> None:
        for _ in range(80):  # more than --maxConns=64
            idle.append(socket.create_connection(("127.0.0.1", daemon.port)))
        with RawConnection(daemon.port) as newcomer:  # admitted: an idle one made room
            marked_find(newcomer)

    try:
        survives(daemon, attack)
        with daemon.client() as client:
            assert markd_metrics(client)["connectionLimit"]["evicted"] > 0
        log = daemon.log_text()
        assert log.count("closed the longest-idle one to admit a new one") < 10  # throttled, not one per connection
    finally:
        for connection in idle:
            connection.close()


DEPTHS = [200, 400, 900]


def _nested_and(depth: int) -> dict[str, Any]:
    query: dict[str, Any] = {"ssn": "1"}
    for _ in range(depth):
        query = {"$and": [query]}
    return {**FIND, "filter": query}


def _nested_not(depth: int) -> dict[str, Any]:
    expression: dict[str, Any] = {"$eq": ["$ssn", "1"]}
    for _ in range(depth):
        expression = {"$not": [expression]}
    return {"aggregate": "c", "pipeline": [{"$match": {"$expr": expression}}], "cursor": {},
            "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}


def _nested_lookup(depth: int) -> dict[str, Any]:
    pipeline: list[dict[str, Any]] = [{"$match": {"x": 1}}]
    for _ in range(depth):
        pipeline = [{"$lookup": {"from": "c", "as": "j", "pipeline": pipeline}}]
    return {"aggregate": "c", "pipeline": pipeline, "cursor": {}, "jsonSchema": SCHEMA, "isRemoteSchema": False,
            "$db": "db"}


def _nested_document(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {"x": 1}
    for _ in range(depth):
        document = {"a": document}
    return {"insert": "c", "documents": [document], "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}


def _deep_frame(command: dict[str, Any], request_id: int) -> bytes:
    # pymongo's encoder recurses: raise the limit for building the frame, in this process only.
    import sys

    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return op_msg_frame(command, request_id=request_id)
    finally:
        sys.setrecursionlimit(saved)


@pytest.mark.parametrize("build", [_nested_and, _nested_not, _nested_lookup, _nested_document],
                         ids=["and", "expr-not", "lookup", "document"])
def test_nesting_beyond_mongod_limits_gets_mongod_errors(daemon, build):
    def attack() -> None:
        with RawConnection(daemon.port, timeout=60) as connection:
            for request_id, depth in enumerate(DEPTHS):
                connection.send(_deep_frame(build(depth), request_id))
                reply = connection.read_reply().document
                assert reply["ok"] == 0, reply
                assert (reply["code"], reply["codeName"]) in ((15, "Overflow"), (232, "MaxSubPipelineDepthExceeded"))
                if reply["code"] == 15:
                    assert reply["errmsg"] == "BSONObj exceeded maximum nested object depth: 200"
                else:
                    assert reply["errmsg"] == "Maximum number of nested sub-pipelines exceeded. Limit is 20"

    survives(daemon, attack)
    assert max(len(line) for line in daemon.log_text().splitlines()) <= 2048


def test_nesting_within_the_limits_is_analysed(daemon):
    with RawConnection(daemon.port, timeout=60) as connection:
        # command -> documents -> document -> 198 levels: the innermost is 200 below the top, as deep as mongod allows.
        connection.send(_deep_frame(_nested_document(198), 1))
        reply = connection.read_reply().document
        assert reply["ok"] == 1, reply
        connection.send(_deep_frame(_nested_document(199), 3))  # one more: refused
        assert connection.read_reply().document["code"] == 15
        connection.send(_deep_frame(_nested_lookup(20), 2))  # 20 nested sub-pipelines: allowed
        assert connection.read_reply().document["ok"] == 1


def test_large_analyses_run_off_the_event_loop(daemon):
    big_in = {**FIND, "filter": {"ssn": {"$in": [str(n) for n in range(100_000)]}}}
    big_insert = {"insert": "c", "documents": [{"ssn": str(n)} for n in range(100_000)], "jsonSchema": SCHEMA,
                  "isRemoteSchema": False, "$db": "db"}
    near_limit = {"insert": "c", "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}
    near_limit_documents = [{"ssn": "1", "blob": "b" * (15 * 1024 * 1024)}] * 3
    with daemon.client() as client:
        before = markd_metrics(client)["analysisProcesses"]["requests"]

    def attack() -> None:
        with RawConnection(daemon.port, timeout=300) as connection:
            reply = connection.command(big_in, 1)
            assert reply["ok"] == 1 and len(reply["result"]["filter"]["ssn"]["$in"]) == 100_000
            reply = connection.command(big_insert, 2)
            assert reply["ok"] == 1 and len(reply["result"]["documents"]) == 100_000
            frame = op_msg_frame(near_limit, request_id=3, sequences=[("documents", near_limit_documents)])
            assert len(frame) > 45_000_000
            connection.send(frame)
            reply_document = connection.read_reply().document
            assert reply_document["ok"] == 1, {k: v for k, v in reply_document.items() if k != "result"}

    survives(daemon, attack)
    with daemon.client() as client:
        assert markd_metrics(client)["analysisProcesses"]["requests"] >= before + 3


# connections and exposure ----------------------------------------------------------------------
def test_tls_handshake_that_never_starts_is_dropped(tmp_path):
    from tests.test_ops import _certificates

    certs = _certificates(tmp_path)
    args = ["--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(certs["server"]),
            "--tlsAllowConnectionsWithoutCertificates", "--tlsCAFile", str(certs["ca"]),
            "--tlsHandshakeTimeoutSecs", "1"]
    with MarkdProcess(args=args) as daemon:
        silent = socket.create_connection(("127.0.0.1", daemon.port))
        silent.settimeout(30)
        try:
            assert silent.recv(1) == b""  # markd gave up on it and closed it
        except ConnectionResetError:
            pass
        finally:
            silent.close()
        with MongoClient(daemon.uri, tls=True, tlsCAFile=str(certs["ca"]), serverSelectionTimeoutMS=30_000) as client:
            assert client.admin.command("hello")["iscryptd"] is True


def test_pid_file_and_log_file_are_created_owner_only():
    old_umask = os.umask(0o002)
    try:
        with MarkdProcess() as daemon:
            daemon.wait_for_log("markd started")
            assert stat.S_IMODE(os.stat(daemon.pidfile).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(daemon.logfile).st_mode) == 0o640
    finally:
        os.umask(old_umask)


def test_get_cmd_line_opts_is_admin_only_and_censors_passwords():
    with MarkdProcess(args=["--tlsCertificateKeyFilePassword=hunter2"]) as daemon, daemon.client() as client:
        refused = client.db.command("getCmdLineOpts", check=False)
        assert (refused["code"], refused["codeName"]) == (13, "Unauthorized")
        assert refused["errmsg"] == "getCmdLineOpts may only be run against the admin database."
        argv = client.admin.command("getCmdLineOpts")["argv"]
        assert "--tlsCertificateKeyFilePassword=<password>" in argv
        assert not any("hunter2" in argument for argument in argv)


def test_shutdown_on_any_database_exits_without_a_reply():
    with MarkdProcess() as daemon, RawConnection(daemon.port) as connection:
        connection.send(op_msg_frame({"shutdown": 1, "$db": "test"}, request_id=5))
        assert connection.is_closed_by_peer(timeout=10)  # no reply: the connection just ends
        assert daemon.exit_code() == 0
        assert "terminating, shutdown command received" in daemon.log_text()


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_disable_shutdown_command(how, tmp_path):
    args = ["--disableShutdownCommand"]
    if how == "yaml":
        config = tmp_path / "markd.yaml"
        config.write_text("markd:\n  disableShutdownCommand: true\n")
        args = ["--config", str(config)]
    with MarkdProcess(args=args) as daemon, daemon.client() as client:
        reply = client.admin.command("shutdown", check=False)
        assert (reply["ok"], reply["code"]) == (0, 13)
        assert "disableShutdownCommand" in reply["errmsg"]
        assert daemon.process is not None and daemon.process.poll() is None


def test_metrics_port_stays_on_loopback_when_the_main_port_does_not():
    from tests.support.process import free_port

    metrics_port = free_port()
    with MarkdProcess(args=["--bind_ip_all", f"--metricsPort={metrics_port}"]) as daemon:
        daemon.wait_for_log("markd started")
        listeners = open("/proc/net/tcp").read().splitlines()[1:]
        local = {line.split()[1] for line in listeners if line.split()[3] == "0A"}  # LISTEN
        assert f"0100007F:{metrics_port:04X}" in local  # 127.0.0.1
        assert f"00000000:{metrics_port:04X}" not in local
        assert "metrics port on a non-loopback address" not in daemon.log_text()
    with MarkdProcess(args=[f"--metricsPort={metrics_port}", "--metricsBindIp=0.0.0.0"]) as daemon:
        daemon.wait_for_log("metrics port on a non-loopback address")


def test_settings_are_flags_and_yaml(tmp_path):
    config = tmp_path / "markd.yaml"
    config.write_text("markd:\n  inFlightBudgetMB: 32\n  schemaCacheMB: 8\n  analysisProcesses: 2\n"
                      "  tlsHandshakeTimeoutSecs: 4\n")
    with MarkdProcess(args=["--config", str(config), "--maxConns=99"]) as daemon, daemon.client() as client:
        metrics = markd_metrics(client)
        assert metrics["inFlight"]["limitBytes"] == 32 * 1024 * 1024
        assert metrics["connectionLimit"]["maxConns"] == 99
        parsed = client.admin.command("getCmdLineOpts")["parsed"]
        assert parsed["markd"]["schemaCacheMB"] == 8 and parsed["markd"]["analysisProcesses"] == 2


def test_default_max_conns_follows_the_file_descriptor_limit():
    import resource

    with MarkdProcess() as daemon, daemon.client() as client:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        expected_fds = min(hard, 65_536) if hard != resource.RLIM_INFINITY else 65_536
        assert markd_metrics(client)["connectionLimit"]["maxConns"] == int(max(soft, expected_fds) * 0.8)
