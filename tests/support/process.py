"""Start real markd processes for tests: a free port, a private pid file and socket directory.

Tests never depend on timing: they wait for an event or poll for a state, and every bound here is
generous (PATIENCE), so a loaded machine only makes a run slower, never red.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import MongoClient

from tests.support import plaintext_watch

# The console script next to this interpreter (the venv's bin/), as drivers find it on PATH.
BIN_DIR = Path(sys.executable).parent
MONGOCRYPTD = str(BIN_DIR / "mongocryptd")
# How long a test waits for something a working markd does at once (start, answer, close, exit):
# only a broken markd ever uses it up, a machine under load merely eats into it.
PATIENCE = 60.0

T = TypeVar("T")


def poll_until(check: Callable[[], T], what: str, timeout: float = PATIENCE, interval: float = 0.05) -> T:
    """Call `check` until it returns something true, and return that; AssertionError naming `what` if it
    never does within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"still waiting after {timeout:g}s for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = PATIENCE, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class MarkdProcess:
    """A markd started with `mongocryptd` from the venv; stop() or use as a context manager."""

    args: list[str] = field(default_factory=list)
    port: int = 0  # 0: a free one, chosen here (and chosen again if another process takes it first)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="markd-test-")))
    process: subprocess.Popen[bytes] | None = None
    wait: bool = True
    port_chosen_here: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not self.port:
            self.port, self.port_chosen_here = free_port(), True

    @property
    def pidfile(self) -> Path:
        return self.workdir / "mongocryptd.pid"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "mongocryptd.sock"

    @property
    def logfile(self) -> Path:
        return self.workdir / "markd.log"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def command_line(self) -> list[str]:
        line = [MONGOCRYPTD, f"--port={self.port}", "--pidfilepath", str(self.pidfile),
                "--unixSocketPrefix", str(self.workdir)]
        if not any(a.startswith("--logpath") for a in self.args):
            line += ["--logpath", str(self.logfile), "--logappend", "-v"]
        return line + self.args

    def start(self) -> MarkdProcess:
        """Start markd; with `wait`, return once it serves: its pid file names it (it writes the file once every
        listener is bound), so an answer on the port from some other process never passes for it."""
        for _attempt in range(5):
            self.process = subprocess.Popen(self.command_line(), cwd=self.workdir,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if not self.wait or self._serving():
                return self
            # It exited at startup. Other test runs share this machine: one may have taken the port between
            # free_port() and markd's bind. A port chosen here is chosen again; any other exit is a failure.
            code = self.process.returncode
            stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            if self.process.stderr:
                self.process.stderr.close()
            port_lost = code == 48 or (code == 0 and "another markd is already serving" in self.log_text())
            if not (self.port_chosen_here and port_lost):
                raise AssertionError(f"markd exited at startup with {code}: {stderr}{self.log_text()}")
            self.port = free_port()
        raise AssertionError("markd could not get a free port in 5 attempts")

    def _effective_pidfile(self) -> Path:
        flags = [a for a in self.args if a.startswith("--pidfilepath")]
        if not flags:
            return self.pidfile
        last = flags[-1]
        return Path(last.split("=", 1)[1] if "=" in last else self.args[self.args.index(last) + 1])

    def _serving(self) -> bool:
        assert self.process is not None
        process, pidfile = self.process, self._effective_pidfile()

        def ours() -> bool:
            try:
                return json.loads(pidfile.read_text()).get("pid") == process.pid
            except (OSError, ValueError):  # not yet written
                return False

        poll_until(lambda: process.poll() is not None or ours(), f"markd (pid {process.pid}) to serve")
        if process.poll() is not None:
            return False
        wait_for_port(self.port)
        return True

    def client(self, **kwargs: object) -> MongoClient[dict[str, object]]:
        options: dict[str, object] = {"serverSelectionTimeoutMS": int(PATIENCE * 1000), **kwargs}
        return MongoClient(self.uri, **options)

    def pidfile_content(self) -> dict[str, object]:
        return json.loads(self.pidfile.read_text())

    def wait_for_log(self, needle: str, timeout: float = PATIENCE) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the log after {timeout}s:\n{self.log_text()}")

    def exit_code(self, timeout: float = PATIENCE) -> int:
        """Wait for the process to exit by itself; its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, timeout: float = PATIENCE) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def cleanup(self) -> None:
        self.stop()
        plaintext_watch.check_log(str(self.logfile), self.log_text())
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MarkdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def raw_command(client: MongoClient[dict[str, object]], database: str, command: dict[str, object]) -> dict[str, object]:
    """Send a command and return the reply decoded with markd's exact-type decoder (ok: 0 included)."""
    from bson.raw_bson import RawBSONDocument

    from markd import bsonvalues

    encoded = bsonvalues.encode(command)
    # As pymongo's _EncryptionIO does: the top level as a dict, nested documents left raw.
    top_level = dict(RawBSONDocument(encoded).items())
    reply = client[database].command(top_level, check=False,
                                     codec_options=bson.codec_options.CodecOptions(document_class=RawBSONDocument))
    return bsonvalues.decode(reply.raw)




# Raw wire helpers: frames built by hand (not with markd's codec), for tests that must send what a
# well-behaved driver never would.
_HEADER = struct.Struct("<iiii")
OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013


def op_msg_frame(command: dict[str, object], *, request_id: int = 1, flags: int = 0,
                 sequences: Sequence[tuple[str, Sequence[dict[str, object]]]] = (), checksum: bool = False) -> bytes:
    """An OP_MSG: one kind-0 body, then a kind-1 section per (identifier, documents)."""
    sections = b"\x00" + bson.encode(command)
    for identifier, documents in sequences:
        payload = identifier.encode() + b"\x00" + b"".join(bson.encode(doc) for doc in documents)
        sections += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    if checksum:
        flags |= 1
    length = 16 + 4 + len(sections) + (4 if checksum else 0)
    frame = _HEADER.pack(length, request_id, 0, OP_MSG) + struct.pack("<I", flags) + sections
    if checksum:
        from markd.wire.crc32c import crc32c

        frame += struct.pack("<I", crc32c(frame))
    return frame


def op_query_frame(query: dict[str, object], *, collection: str = "admin.$cmd", request_id: int = 1) -> bytes:
    body = struct.pack("<i", 0) + collection.encode() + b"\x00" + struct.pack("<ii", 0, -1) + bson.encode(query)
    return _HEADER.pack(16 + len(body), request_id, 0, OP_QUERY) + body


def compressed_frame(frame: bytes, compressor: int) -> bytes:
    """`frame` wrapped in OP_COMPRESSED: compressor 0 is noop, 2 is zlib."""
    _, request_id, response_to, op_code = _HEADER.unpack_from(frame)
    payload = frame[16:]
    data = zlib.compress(payload) if compressor == 2 else payload
    body = struct.pack("<iiB", op_code, len(payload), compressor) + data
    return _HEADER.pack(16 + len(body), request_id, response_to, OP_COMPRESSED) + body


# Dates outside Python's range come back as DatetimeMS instead of failing the test's decoder.
_REPLY_OPTIONS = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)


@dataclass
class Reply:
    request_id: int
    response_to: int
    op_code: int
    document: dict[str, object]


class RawConnection:
    """A plain socket to markd (TCP port or Unix socket path) that sends bytes and reads replies."""

    def __init__(self, address: int | str | Path, timeout: float = PATIENCE) -> None:
        if isinstance(address, int):
            self.sock = socket.create_connection(("127.0.0.1", address), timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(address))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
            data += chunk
        return bytes(data)

    def read_reply(self) -> Reply:
        length, request_id, response_to, op_code = _HEADER.unpack(self._recv_exactly(16))
        payload = self._recv_exactly(length - 16)
        if op_code == OP_MSG:
            flags = struct.unpack_from("<I", payload)[0]
            assert payload[4] == 0, "markd replies with one kind-0 section"
            body = payload[5 : len(payload) - (4 if flags & 1 else 0)]
        elif op_code == OP_REPLY:
            body = payload[20:]
        else:
            raise AssertionError(f"unexpected reply opCode {op_code}")
        return Reply(request_id, response_to, op_code, bson.decode(body, _REPLY_OPTIONS))

    def command(self, command: dict[str, object], request_id: int = 1) -> dict[str, object]:
        self.send(op_msg_frame(command, request_id=request_id))
        reply = self.read_reply()
        assert reply.response_to == request_id
        return reply.document

    def is_closed_by_peer(self, timeout: float = PATIENCE) -> bool:
        """True once markd has closed this connection (EOF or reset) within `timeout`; replies that arrive
        meanwhile are read and dropped."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def _connection_metrics(self) -> dict[str, int]:
        connections = self.command({"getMarkdMetrics": 1, "$db": "admin"})["connections"]
        assert isinstance(connections, dict)
        return connections

    def other_connections(self) -> int:
        """How many client connections markd has open besides this one (getMarkdMetrics)."""
        return int(self._connection_metrics()["current"]) - 1

    def connections_accepted(self) -> int:
        """How many client connections markd has accepted since it started (this one included)."""
        return int(self._connection_metrics()["totalCreated"])

    def wait_for_accepted(self, at_least: int, timeout: float = PATIENCE) -> None:
        """Poll until markd has accepted `at_least` connections in all: a client's connect returns once the
        kernel has the connection, before markd's accept."""
        poll_until(lambda: self.connections_accepted() >= at_least, f"markd to accept {at_least} connections",
                   timeout)

    def wait_for_other_connections(self, at_most: int, timeout: float = PATIENCE) -> int:
        """Poll markd's count of open connections (besides this one) until it is at most `at_most`."""
        counts: list[int] = []

        def settled() -> bool:
            counts.append(self.other_connections())
            return counts[-1] <= at_most

        try:
            poll_until(settled, f"markd to have at most {at_most} other connections open", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: still {counts[-1]}") from None
        return counts[-1]

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def markd_metrics(client: MongoClient[dict[str, object]]) -> dict[str, object]:
    return client.admin.command("getMarkdMetrics")


def command_count(metrics: dict[str, object], name: str, outcome: str | None = None) -> int:
    rows = metrics["commands"]
    assert isinstance(rows, list)
    return sum(row["count"] for row in rows
               if row["command"] == name and (outcome is None or row["outcome"] == outcome))


DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"


def ssn_schema(key_id: object) -> dict[str, object]:
    """A CSFLE schema with one deterministically encrypted string field, `ssn`."""
    return {"bsonType": "object",
            "properties": {"ssn": {"encrypt": {"keyId": [key_id], "bsonType": "string", "algorithm": DETERMINISTIC}}}}


def encrypted_insert(client: MongoClient[dict[str, object]], document: dict[str, object]) -> Exception | None:
    """Insert through an auto-encrypting client; the error it ended with, if any."""
    try:
        client.db.coll.insert_one(document)
    except Exception as exc:  # the test decides whether this error is markd's
        return exc
    return None


def assert_markd_answered_insert(markd_client: MongoClient[dict[str, object]], error: Exception | None,
                                 inserted: list[dict[str, object]], plaintext: str, before: int = 0) -> None:
    """libmongocrypt asked markd to mark an insert, and what the application saw came from markd.

    Valid with the fail-closed stub analysis (markd refuses: the app sees markd's error) and with
    real analysis (markd marks: the server receives ciphertext, never the plaintext).
    """
    metrics = markd_metrics(markd_client)
    assert command_count(metrics, "insert") > before, f"markd never saw the insert: {metrics['commands']}"
    outcomes = {row["outcome"] for row in metrics["commands"] if row["command"] == "insert"}
    if error is not None:
        cause = getattr(error, "cause", error)
        details = getattr(cause, "details", None) or {}
        code_name = details.get("codeName") if isinstance(details, dict) else None
        if code_name is None and hasattr(details, "get"):
            code_name = details.get("codeName")
        assert code_name in outcomes, f"{error!r} is not markd's answer ({outcomes})"
        assert not inserted, "a refused marking must not reach the server"
    else:
        assert "ok" in outcomes
        assert inserted, "the insert never reached the server"
        for document in inserted:
            ssn = document.get("ssn")
            assert getattr(ssn, "subtype", None) == 6, f"ssn reached the server as {ssn!r}"
            assert plaintext.encode() not in bson.encode(document)
