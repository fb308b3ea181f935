"""markd as an operated service (issue 7): metrics over HTTP and as an admin command, JSON logs with
no document value in them, TLS, and limits on connections, message size and half-sent frames."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import socket
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import MongoClient
from pymongo.encryption_options import AutoEncryptionOpts
from pymongo.errors import ServerSelectionTimeoutError

from tests.support.fake_mongod import FakeMongod
from tests.support.process import (
    PATIENCE,
    MarkdProcess,
    RawConnection,
    assert_markd_answered_insert,
    command_count,
    encrypted_insert,
    free_port,
    markd_metrics,
    op_msg_frame,
    ssn_schema,
)

KMS = {"local": {"key": os.urandom(96)}}


def _http_get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=PATIENCE) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


# metrics ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metered() -> Iterator[MarkdProcess]:
    with MarkdProcess(args=[f"--metricsPort={free_port()}"]) as process:
        yield process


def _metrics_port(process: MarkdProcess) -> int:
    return int(next(a.split("=", 1)[1] for a in process.args if a.startswith("--metricsPort=")))


def test_get_markd_metrics_counts_commands_by_name_and_outcome(metered):
    marking = {"find": "coll", "filter": {"a": 1}, "jsonSchema": {}, "isRemoteSchema": False}
    with metered.client() as client:
        before = markd_metrics(client)
        for _ in range(3):
            client.admin.command("ping")
        client.admin.command({"frobnicate": 1}, check=False)
        client.db.command(marking, check=False)
        after = markd_metrics(client)
    assert command_count(after, "ping", "ok") - command_count(before, "ping", "ok") == 3
    # Unknown names are pooled: a client-chosen string is neither logged nor a Prometheus label.
    assert command_count(after, "(unknown)", "CommandNotFound") - command_count(before, "(unknown)") == 1
    assert command_count(after, "find") - command_count(before, "find") == 1
    # Only marking commands feed the latency histogram.
    assert sum(after["latency"]["counts"]) - sum(before["latency"]["counts"]) == 1
    assert len(after["latency"]["counts"]) == len(after["latency"]["bucketsSecs"]) + 1
    assert after["connections"]["current"] >= 1 and after["connections"]["totalCreated"] >= 1
    assert set(after["schemaCache"]) == {"hits", "misses"}
    assert after["ok"] == 1


def test_prometheus_text_on_metrics_port(metered):
    port = _metrics_port(metered)
    # One raw connection and no driver (whose monitor opens connections of its own): the gauge is exact.
    with RawConnection(metered.port) as connection:
        connection.command({"ping": 1, "$db": "admin"})
        connection.command({"insert": "c", "documents": [{"x": 1}], "jsonSchema": {}, "isRemoteSchema": False,
                            "$db": "db"})
        others = connection.wait_for_other_connections(at_most=0)  # earlier tests' clients are gone
        status, content_type, text = _http_get(port, "/metrics")
        assert connection.other_connections() == others == 0
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert re.search(r'^markd_commands_total\{command="ping",outcome="ok"\} [1-9]\d*$', text, re.M)
    assert re.search(r'^markd_commands_total\{command="insert",outcome="[A-Za-z0-9]+"\} [1-9]', text, re.M)
    buckets = re.findall(r'^markd_marking_duration_seconds_bucket\{le="([^"]+)"\} (\d+)$', text, re.M)
    assert buckets[-1][0] == "+Inf" and int(buckets[-1][1]) >= 1
    counts = [int(count) for _, count in buckets]
    assert counts == sorted(counts), "histogram buckets are cumulative"
    assert re.search(r"^markd_marking_duration_seconds_count \d+$", text, re.M)
    assert re.search(r"^markd_open_connections 1$", text, re.M)  # the raw connection, not the HTTP one
    assert re.search(r"^markd_schema_cache_hits_total \d+$", text, re.M)
    assert "# TYPE markd_commands_total counter" in text
    assert _http_get(port, "/other")[0] == 404


def test_metrics_port_is_off_by_default():
    with MarkdProcess() as daemon:
        started = next(line for line in daemon.wait_for_log("markd started").splitlines() if "markd started" in line)
        assert started.endswith("metricsPort=")


# logs -------------------------------------------------------------------------------------------
def test_json_logs_one_object_per_line():
    with MarkdProcess(args=["--logFormat", "json"]) as daemon:
        with daemon.client() as client:
            client.admin.command("ping")
            client.db.command({"count": "c", "query": {}}, check=False)
        daemon.wait_for_log('"command": "count"')
        lines = daemon.log_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"t", "s", "c", "msg"} <= set(entry) for entry in entries)
    started = next(e for e in entries if e["msg"] == "markd started")
    assert started["s"] == "INFO" and started["attr"]["pid"] > 0 and started["attr"]["port"] > 0
    count = next(e for e in entries if e["msg"] == "command" and e["attr"]["command"] == "count")
    assert count["s"] == "DEBUG"
    assert count["attr"]["ns"] == "db.c"
    assert set(count["attr"]) >= {"conn", "outcome", "durationMicros", "requestBytes", "replyBytes"}


def test_quiet_logs_only_warnings():
    with MarkdProcess(args=["--quiet", "--logpath", "quiet.log"]) as daemon:
        with daemon.client() as client:
            client.admin.command("ping")
        assert daemon.stop() == 0
        log = (daemon.workdir / "quiet.log").read_text()
    assert "markd started" not in log and "command" not in log


# Values no log line may ever contain, sent through every path that carries document values.
PLAINTEXTS = ["PLAIN-ssn-5550123", "PLAIN-filter-9f3a", "PLAIN-update-77c1", "PLAIN-pipeline-e2d0",
              "PLAIN-qe-range-4411", "PLAIN-garbage-0b1c", "PLAIN-badschema-31aa", "PLAIN-unknown-8d2e",
              "PLAIN-explain-c0de", "PLAIN-seq-d0c5"]


def _plaintext_commands(key_id: Any) -> list[dict[str, Any]]:
    schema = ssn_schema(key_id)
    csfle = {"jsonSchema": schema, "isRemoteSchema": False}
    qe_fields = {"escCollection": "enxcol_.c.esc", "ecocCollection": "enxcol_.c.ecoc", "fields": [
        {"path": "age", "keyId": key_id, "bsonType": "string", "queries": [{"queryType": "equality"}]}]}
    qe = {"encryptionInformation": {"type": 1, "schema": {"db.c": qe_fields}}}
    return [
        {"insert": "c", "documents": [{"ssn": PLAINTEXTS[0]}], **csfle},
        {"find": "c", "filter": {"ssn": PLAINTEXTS[1], "other": {"$in": [PLAINTEXTS[1]]}}, **csfle},
        {"update": "c", "updates": [{"q": {"ssn": "x"}, "u": {"$set": {"ssn": PLAINTEXTS[2]}}}], **csfle},
        {"aggregate": "c", "pipeline": [{"$match": {"ssn": PLAINTEXTS[3]}}], "cursor": {}, **csfle},
        {"find": "c", "filter": {"age": PLAINTEXTS[4]}, **qe},
        {"insert": "c", "documents": [{"age": PLAINTEXTS[4]}], **qe},
        {"find": "c", "filter": {"ssn": PLAINTEXTS[6]}, "isRemoteSchema": False,
         "jsonSchema": {"bsonType": "objIct", "properties": {"ssn": {"enum": [PLAINTEXTS[6]]}}}},
        {PLAINTEXTS[7]: PLAINTEXTS[7], "x": PLAINTEXTS[7]},
        {"explain": {"find": "c", "filter": {"ssn": PLAINTEXTS[8]}, **csfle}, "verbosity": "queryPlanner"},
        {"insert": "c", "documents": [{"ssn": {"$bad": PLAINTEXTS[0]}}], "jsonSchema": "not a schema",
         "isRemoteSchema": False},
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_plaintext_value_reaches_the_log(log_format):
    """Every path that carries values, at debug level, then the whole log is grepped for each value."""
    key_id = bson.Binary(os.urandom(16), 4)
    with MarkdProcess(args=["--logFormat", log_format]) as daemon:
        with daemon.client() as client:
            for command in _plaintext_commands(key_id):
                client.db.command(command, check=False)
        with RawConnection(daemon.port) as connection:
            # Sequences (as pymongo sends documents), with a duplicate that the wire layer refuses.
            seq = [("documents", [{"ssn": PLAINTEXTS[9]}])]
            connection.send(op_msg_frame({"insert": "c", "jsonSchema": {}, "isRemoteSchema": False, "$db": "db"},
                                         sequences=seq))
            connection.read_reply()
            connection.send(op_msg_frame({"insert": "c", "documents": [], "$db": "db"}, sequences=seq))
            connection.read_reply()
        with RawConnection(daemon.port) as connection:
            # A readable frame with unreadable BSON around a plaintext, then garbage that closes the connection.
            body = bytearray(bson.encode({"find": "c", "filter": {"v": PLAINTEXTS[5]}, "$db": "db"}))
            body[body.index(PLAINTEXTS[5].encode()) - 6] = 0x99
            payload = b"\x00" * 5 + bytes(body)
            connection.send(struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload)
            connection.read_reply()
            connection.send(struct.pack("<iiii", 100, 1, 0, 2010) + PLAINTEXTS[5].encode() * 6)
            connection.is_closed_by_peer(timeout=3)
        # Through libmongocrypt too, as a real application sends values.
        with FakeMongod() as mongod:
            real_key = mongod.create_data_key(KMS)
            opts = AutoEncryptionOpts(KMS, "keyvault.datakeys", schema_map={"db.coll": ssn_schema(real_key)},
                                      mongocryptd_uri=daemon.uri, mongocryptd_bypass_spawn=True)
            with MongoClient(mongod.uri, auto_encryption_opts=opts) as app:
                encrypted_insert(app, {"ssn": PLAINTEXTS[0], "name": PLAINTEXTS[1]})
                try:
                    app.db.coll.find_one({"ssn": PLAINTEXTS[1]})
                except Exception:  # refused or answered: either way the log must be clean
                    pass
        daemon.stop()
        log = daemon.log_text()
    assert "command" in log and len(log.splitlines()) > 20, "the log must be at debug level for this test to mean much"
    for plaintext in PLAINTEXTS:
        assert plaintext not in log, f"{plaintext} leaked into the log"
        assert plaintext.encode().hex() not in log


# TLS --------------------------------------------------------------------------------------------
def _certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("markd test CA")).issuer_name(name("markd test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(common_name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM) + key_pem(key)

    paths = {"ca": directory / "ca.pem", "server": directory / "server.pem", "client": directory / "client.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server"].write_bytes(leaf("markd", ExtendedKeyUsageOID.SERVER_AUTH,
                                     [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    paths["client"].write_bytes(leaf("app", ExtendedKeyUsageOID.CLIENT_AUTH, []))
    return paths


@pytest.fixture(scope="module")
def tls_markd(tmp_path_factory) -> Iterator[tuple[MarkdProcess, dict[str, Path]]]:
    certs = _certificates(tmp_path_factory.mktemp("tls"))
    args = ["--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(certs["server"]),
            "--tlsCAFile", str(certs["ca"])]
    with MarkdProcess(args=args) as process:
        yield process, certs


def test_tls_with_client_certificate(tls_markd):
    daemon, certs = tls_markd
    with MongoClient(daemon.uri, tls=True, tlsCAFile=str(certs["ca"]), tlsCertificateKeyFile=str(certs["client"]),
                     serverSelectionTimeoutMS=30_000) as client:
        assert client.admin.command("hello")["iscryptd"] is True


def test_tls_refuses_plaintext_and_certificateless_clients(tls_markd):
    daemon, certs = tls_markd
    with MongoClient(daemon.uri, serverSelectionTimeoutMS=1000) as plain, pytest.raises(ServerSelectionTimeoutError):
        plain.admin.command("ping")
    with MongoClient(daemon.uri, tls=True, tlsCAFile=str(certs["ca"]), serverSelectionTimeoutMS=1000) as anonymous:
        with pytest.raises(ServerSelectionTimeoutError):
            anonymous.admin.command("ping")
    # And a client that does not trust markd's CA refuses markd.
    with MongoClient(daemon.uri, tls=True, tlsCertificateKeyFile=str(certs["client"]),
                     serverSelectionTimeoutMS=1000) as untrusting, pytest.raises(ServerSelectionTimeoutError):
        untrusting.admin.command("ping")
    # The daemon is unharmed.
    with RawConnection(daemon.socket_path) as local:
        assert local.command({"ping": 1, "$db": "admin"})["ok"] == 1


def test_auto_encryption_reaches_markd_over_tls(tls_markd):
    daemon, certs = tls_markd
    uri = (f"mongodb://localhost:{daemon.port}/?tls=true&tlsCAFile={certs['ca']}"
           f"&tlsCertificateKeyFile={certs['client']}")
    with FakeMongod() as mongod:
        key_id = mongod.create_data_key(KMS)
        opts = AutoEncryptionOpts(KMS, "keyvault.datakeys", schema_map={"db.coll": ssn_schema(key_id)},
                                  mongocryptd_uri=uri, mongocryptd_bypass_spawn=True)
        with MongoClient(mongod.uri, auto_encryption_opts=opts, serverSelectionTimeoutMS=30_000) as client:
            error = encrypted_insert(client, {"ssn": "TLS-ssn-1"})
        inserted = [c.body["documents"][0] for c in mongod.received("insert") if c.database == "db"]
    with MongoClient(uri, serverSelectionTimeoutMS=30_000) as markd_client:
        assert_markd_answered_insert(markd_client, error, inserted, "TLS-ssn-1")


def _healthcheck(*args: str) -> int:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "markd.healthcheck", "--timeout", str(PATIENCE / 2), *args],
                          capture_output=True, text=True, timeout=PATIENCE).returncode


def test_healthcheck_needs_a_client_certificate_when_markd_has_a_ca_file(tls_markd):
    """docs/deploy.md's container health check with --tlsCAFile: --tls, the CA and a client certificate."""
    daemon, certs = tls_markd
    base = ["--host", "localhost", "--port", str(daemon.port), "--tls", "--tlsCAFile", str(certs["ca"])]
    assert _healthcheck(*base, "--tlsCertificateKeyFile", str(certs["client"])) == 0
    assert _healthcheck(*base) == 1  # no client certificate: refused, as mongod refuses it
    assert _healthcheck("--port", str(daemon.port), "--tlsAllowInvalidCertificates",
                        "--tlsCertificateKeyFile", str(certs["client"])) == 0


def test_allow_connections_without_certificates(tmp_path):
    certs = _certificates(tmp_path)
    args = ["--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(certs["server"]), "--tlsCAFile",
            str(certs["ca"]), "--tlsAllowConnectionsWithoutCertificates"]
    with MarkdProcess(args=args) as daemon:
        base = ["--host", "localhost", "--port", str(daemon.port), "--tls", "--tlsCAFile", str(certs["ca"])]
        assert _healthcheck(*base) == 0
        assert _healthcheck(*base, "--tlsCertificateKeyFile", str(certs["client"])) == 0
        # A certificate that is presented must still be signed by the CA: one from another CA is refused.
        (tmp_path / "other").mkdir()
        stranger = _certificates(tmp_path / "other")
        assert _healthcheck(*base, "--tlsCertificateKeyFile", str(stranger["client"])) == 1


def test_encrypted_certificate_key_with_its_password(tmp_path):
    """--tlsCertificateKeyFilePassword (mongod's) unlocks an encrypted key; getCmdLineOpts never shows it."""
    from cryptography.hazmat.primitives import serialization

    certs = _certificates(tmp_path)
    pem = certs["server"].read_bytes()
    cert_pem = pem[: pem.index(b"-----BEGIN PRIVATE KEY-----")]
    key = serialization.load_pem_private_key(pem[len(cert_pem):], password=None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(cert_pem + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.BestAvailableEncryption(b"PLAIN-tls-pw-41")))
    args = ["--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(locked),
            "--tlsCertificateKeyFilePassword", "PLAIN-tls-pw-41"]
    with MarkdProcess(args=args) as daemon:
        assert _healthcheck("--host", "localhost", "--port", str(daemon.port), "--tls", "--tlsCAFile",
                            str(certs["ca"])) == 0
        with MongoClient(daemon.uri, tls=True, tlsCAFile=str(certs["ca"]), serverSelectionTimeoutMS=30_000) as client:
            options = client.admin.command("getCmdLineOpts")
        assert options["parsed"]["net"]["tls"]["certificateKeyFilePassword"] == "<password>"
        assert "PLAIN-tls-pw-41" not in repr(options)
        assert "PLAIN-tls-pw-41" not in daemon.log_text()
    wrong = MarkdProcess(args=[*args[:-1], "not-it"], wait=False).start()
    try:
        assert wrong.exit_code() == 1  # a clear startup error, not a daemon without TLS
    finally:
        wrong.cleanup()


def test_tls_without_certificate_file_is_a_clear_startup_error():
    daemon = MarkdProcess(args=["--tlsMode", "requireTLS"], wait=False).start()
    try:
        assert daemon.exit_code() == 1
        assert "requireTLS needs --tlsCertificateKeyFile" in daemon.log_text()
        assert not daemon.pidfile.exists()
    finally:
        daemon.cleanup()


# limits and exposure ----------------------------------------------------------------------------
def test_at_max_connections_the_longest_idle_connection_makes_room():
    with MarkdProcess(args=["--maxConns", "4"]) as daemon:
        held = [RawConnection(daemon.port) for _ in range(4)]
        try:
            for connection in held:
                assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
            for connection in held[1:]:  # held[0] is now the longest idle
                assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
            with RawConnection(daemon.port) as newcomer:
                assert newcomer.command({"ping": 1, "$db": "admin"})["ok"] == 1  # admitted, not reset
                assert held[0].is_closed_by_peer()  # the longest-idle one was closed for it
                for connection in held[1:]:
                    assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
        finally:
            for connection in held:
                connection.close()
        assert "closed the longest-idle one to admit a new one" in daemon.wait_for_log("longest-idle")


def test_oversized_document_in_a_readable_frame_is_an_error_reply():
    with MarkdProcess() as daemon, RawConnection(daemon.port, timeout=20) as connection:
        big = {"insert": "c", "documents": [{"blob": bson.Binary(b"\x00" * (17 * 1024 * 1024))}], "$db": "db"}
        connection.send(op_msg_frame(big, request_id=3))
        reply = connection.read_reply()
        assert reply.response_to == 3 and reply.document["ok"] == 0
        assert "too large" in reply.document["errmsg"]
        assert connection.command({"ping": 1, "$db": "admin"}, request_id=4)["ok"] == 1


def test_non_loopback_bind_warns():
    with MarkdProcess(args=["--bind_ip_all"]) as daemon:
        log = daemon.wait_for_log("non-loopback")
        assert "address=0.0.0.0" in log
        with daemon.client() as client:
            assert client.admin.command("ping")["ok"] == 1


def test_loopback_by_hostname_does_not_warn():
    with MarkdProcess(args=["--bind_ip", "localhost"]) as daemon:
        daemon.wait_for_log("markd started")
        assert "non-loopback" not in daemon.log_text()
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=PATIENCE):
            pass


def test_internal_error_is_logged_without_the_exception_message():
    """A bug's message may quote a value (f"bad {value}"): the log keeps the type and the stack only."""
    import logging

    from markd.commands import ConnectionInfo
    from markd.config import Settings
    from markd.logs import TextFormatter
    from markd.server import MarkdServer

    server = MarkdServer(Settings(pidfile=""), ["markd"], {})

    def buggy(command: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"cannot handle {command['v']}")

    server.dispatcher.extra_commands["buggy"] = buggy
    records: list[str] = []
    handler = logging.Handler()
    formatter = TextFormatter("%(message)s")
    handler.emit = lambda record: records.append(formatter.format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("markd")
    logger.addHandler(handler)
    try:
        frame = op_msg_frame({"buggy": 1, "v": "PLAIN-internal-e7", "$db": "admin"}, request_id=2)
        reply = server.handle_frame(frame, ConnectionInfo(1, "test", True))
    finally:
        logger.removeHandler(handler)
    assert reply is not None and bson.decode(reply[21:])["code"] == 1
    text = "\n".join(records)
    assert "error=ValueError" in text and "test_ops.py" in text
    assert "PLAIN-internal-e7" not in text


def test_schema_cache_hits_are_counted(metered):
    schema = ssn_schema(bson.Binary(os.urandom(16), 4))
    command = {"find": "c", "filter": {"ssn": "x"}, "jsonSchema": schema, "isRemoteSchema": False}
    with metered.client() as client:
        client.db.command(command, check=False)  # parsed (or found) once
        before = markd_metrics(client)["schemaCache"]
        for _ in range(3):
            assert client.db.command(command, check=False)["ok"] == 1
        after = markd_metrics(client)["schemaCache"]
        _, _, text = _http_get(_metrics_port(metered), "/metrics")
    assert after["hits"] - before["hits"] >= 3
    assert f"markd_schema_cache_hits_total {after['hits']}" in text
