"""Load and soak: many concurrent raw connections to a real markd, mixed valid and invalid traffic.

Every worker holds one connection and sends a fixed number of requests (CI: `rounds`) or loops until a
deadline (the soak: `duration`):

- valid commands (OP_MSG hello, legacy OP_QUERY ismaster, marking commands, an unknown command):
  hello must succeed, and every other command must get exactly the reply it got in isolation;
- now and then invalid traffic: a mutated frame, a frame whose length lies (client gone mid-frame),
  a command sent and the socket closed before the reply (client gone mid-reply), a truncated header.
  Each bad input is followed by a hello: the replies up to the hello's tell whether markd answered the
  bad input, and EOF that it closed the connection; nothing waits on a clock. After a bad input that
  earns an error reply the same connection must keep answering; after one that makes markd close the
  connection (or that we abandon) the worker reconnects.

Traffic starts once every worker is connected and markd holds every connection (its descriptor count
says so), so the peak is a state reached, not a sample that happened to be taken in time.
Meanwhile a monitor samples markd's open file descriptors and RSS from /proc.  `run_load` returns
a `LoadReport`; the caller asserts on it (tests/test_load.py) or prints it (tests/fuzz/run_long.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.binary import Binary

from tests.fuzz import frames

_HEADER = struct.Struct("<iiii")
KEY_ID = Binary(uuid.UUID("12345678-1234-4678-9234-123456789abc").bytes, 4)

CSFLE_SCHEMA = {
    "bsonType": "object",
    "properties": {
        "ssn": {"encrypt": {"keyId": [KEY_ID], "bsonType": "string",
                            "algorithm": "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"}},
        "medical": {"encrypt": {"keyId": [KEY_ID], "algorithm": "AEAD_AES_256_CBC_HMAC_SHA_512-Random"}},
    },
}
QE_INFO = {
    "type": 1,
    "schema": {"db.coll": {
        "escCollection": "enxcol_.coll.esc", "ecocCollection": "enxcol_.coll.ecoc",
        "fields": [{"path": "ssn", "keyId": KEY_ID, "bsonType": "string",
                    "queries": {"queryType": "equality", "contention": bson.Int64(8)}}],
    }},
}

# name -> (database, command) for the commands whose reply must not change under load.
MARKING_COMMANDS: dict[str, tuple[str, dict[str, Any]]] = {
    "csfle_find": ("db", {"find": "coll", "filter": {"ssn": "123-45-6789"}, "jsonSchema": CSFLE_SCHEMA,
                          "isRemoteSchema": False}),
    "csfle_insert": ("db", {"insert": "coll", "documents": [{"_id": 1, "ssn": "1", "medical": {"x": 1}}],
                            "jsonSchema": CSFLE_SCHEMA, "isRemoteSchema": False}),
    "csfle_unencrypted": ("db", {"find": "coll", "filter": {"a": 1}, "jsonSchema": {}, "isRemoteSchema": False}),
    "qe_insert": ("db", {"insert": "coll", "documents": [{"_id": 1, "ssn": "123"}], "encryptionInformation": QE_INFO}),
    "qe_find": ("db", {"find": "coll", "filter": {"ssn": "123"}, "encryptionInformation": QE_INFO}),
    "unknown": ("admin", {"frobnicate": 1}),
    "no_schema": ("db", {"find": "coll", "filter": {"a": 1}}),
}


class ConnectionDropped(Exception):
    pass


def _frame_for(name: str, request_id: int) -> bytes:
    database, command = MARKING_COMMANDS[name]
    return frames.op_msg(command, database, request_id)


async def _read_reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        header = await asyncio.wait_for(reader.readexactly(16), timeout)
        length, _request_id, response_to, op_code = _HEADER.unpack(header)
        body = await asyncio.wait_for(reader.readexactly(length - 16), timeout)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ConnectionDropped(str(exc)) from exc
    if op_code == 2013:
        return response_to, bson.decode(body[5:])
    if op_code == 1:
        return response_to, bson.decode(body[20:])
    raise AssertionError(f"reply with opCode {op_code}")


@dataclass
class LoadReport:
    connections: int
    duration: float  # seconds of traffic, or 0 with rounds
    rounds: int = 0  # requests per worker, or 0 with a duration
    valid_sent: int = 0
    valid_ok: int = 0
    invalid_sent: int = 0
    invalid_answered: int = 0  # bad input that earned an error reply, the connection kept
    invalid_closed: int = 0  # bad input after which markd closed the connection (or we abandoned it)
    reconnects: int = 0
    connect_failures: int = 0
    errors: list[str] = field(default_factory=list)  # valid commands that got a wrong or no reply
    internal_errors: int = 0  # InternalError (code 1) replies to anything
    crash_frames: list[bytes] = field(default_factory=list)  # the (first 20) bad inputs that earned code 1
    fd_baseline: int = 0
    fd_peak: int = 0
    fd_end: int = 0
    rss_start_kib: int = 0
    rss_warm_kib: int = 0  # after every kind of command has been answered once (imports, caches)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the load, KiB)
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    concurrent_peak: int = 0
    elapsed: float = 0.0

    def summary(self) -> str:
        rate = self.valid_sent / self.elapsed if self.elapsed else 0.0
        return (
            f"{self.connections} connections, {self.elapsed:.1f}s: {self.valid_sent} valid commands "
            f"({rate:.0f}/s), {self.valid_ok} answered as expected, {len(self.errors)} wrong; "
            f"{self.invalid_sent} invalid inputs ({self.invalid_answered} answered with an error, "
            f"{self.invalid_closed} closed), {self.reconnects} reconnects, {self.connect_failures} connect failures, "
            f"{self.internal_errors} InternalError replies; peak {self.concurrent_peak} connections open at once; "
            f"markd fds {self.fd_baseline} -> peak {self.fd_peak} -> {self.fd_end}; "
            f"RSS {self.rss_start_kib} KiB at start, {self.rss_warm_kib} KiB warm -> peak {self.rss_peak_kib} KiB "
            f"-> {self.rss_end_kib} KiB after the clients left"
        )


def fd_count(pid: int) -> int:
    """markd's open TCP sockets (its listener and its client connections). Its analysis processes'
    channels (socket pairs, which come and go with large requests, not with clients) are not counted."""
    tcp_inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as lines:
                tcp_inodes.update(line.split()[9] for line in list(lines)[1:] if len(line.split()) > 9)
        except OSError:
            continue
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in tcp_inodes:
            count += 1
    return count


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE (markd started afterwards inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(16, len(data)) if len(data) > 16 else 0
        data[at] = rng.randrange(256)
    data[0:4] = struct.pack("<i", len(data))  # a readable frame with broken content
    return bytes(data)


# Generous bounds for what a working markd does at once: reply, accept, release descriptors.
_PATIENCE = 60.0


class _Load:
    def __init__(self, host: str, port: int, pid: int, connections: int, duration: float, rounds: int, seed: int,
                 invalid_ratio: float) -> None:
        self.host, self.port, self.pid = host, port, pid
        self.report = LoadReport(connections, duration, rounds)
        self.deadline = 0.0
        self.seed = seed
        self.invalid_ratio = invalid_ratio
        self.expected: dict[str, dict[str, Any]] = {}
        self.open_now = 0
        self.connect_gate = asyncio.Semaphore(128)  # ramp up without overflowing the listen backlog
        self.connected = 0
        self.all_connected = asyncio.Event()
        self.traffic = asyncio.Event()  # set once markd holds every connection
        self.finished = asyncio.Event()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        for attempt in range(50):
            try:
                async with self.connect_gate:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                            _PATIENCE)
                self.open_now += 1
                self.report.concurrent_peak = max(self.report.concurrent_peak, self.open_now)
                return reader, writer
            except (OSError, asyncio.TimeoutError):
                self.report.connect_failures += 1
                await asyncio.sleep(0.05 * (attempt + 1))
        raise ConnectionError("could not connect to markd")

    def close(self, writer: asyncio.StreamWriter) -> None:
        self.open_now -= 1
        writer.close()

    async def isolation_replies(self) -> None:
        reader, writer = await self.connect()
        for index, name in enumerate(MARKING_COMMANDS):
            writer.write(_frame_for(name, index + 1))
            await writer.drain()
            _, reply = await _read_reply(reader, _PATIENCE)
            self.expected[name] = reply
        self.close(writer)

    def check(self, kind: str, reply: dict[str, Any]) -> None:
        report = self.report
        if reply.get("code") == 1:
            report.internal_errors += 1
        if kind in ("hello", "ismaster"):
            ok = reply.get("ok") == 1 and reply.get("iscryptd") is True
        else:
            ok = reply == self.expected[kind]
        if ok:
            report.valid_ok += 1
        elif len(report.errors) < 50:
            report.errors.append(f"{kind}: {reply}")
        else:
            report.errors.append(kind)

    async def valid(self, rng: random.Random, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request_id: int) -> None:
        kind = rng.choice(["hello", "hello", "ismaster", *MARKING_COMMANDS])
        if kind == "hello":
            frame = frames.op_msg({"hello": 1}, "admin", request_id)
        elif kind == "ismaster":
            frame = frames.op_query(frames.HANDSHAKE, request_id=request_id)
        else:
            frame = _frame_for(kind, request_id)
        self.report.valid_sent += 1
        writer.write(frame)
        await writer.drain()
        try:
            response_to, reply = await _read_reply(reader, _PATIENCE)
        except (ConnectionDropped, asyncio.TimeoutError) as exc:
            self.report.errors.append(f"{kind}: no reply ({type(exc).__name__} {exc})")
            raise ConnectionDropped("valid command unanswered") from exc
        if response_to != request_id:
            self.report.errors.append(f"{kind}: responseTo {response_to} != {request_id}")
        self.check(kind, reply)

    async def invalid(self, rng: random.Random, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      request_id: int) -> bool:
        """Send one bad input; True when the connection is still usable afterwards."""
        report = self.report
        report.invalid_sent += 1
        kind = rng.choice(["mutated", "mutated", "lying_length", "gone_mid_reply", "garbage_header", "bad_bson"])
        seed = frames.SEEDS[rng.choice(frames.SEED_NAMES)]
        sent = b""
        if kind == "mutated":
            sent = _mutate(rng, seed)
            writer.write(sent)
        elif kind == "lying_length":  # the header promises more than is sent, then the client goes away
            writer.write(struct.pack("<i", len(seed) + rng.randint(1, 1000)) + seed[4:])
            await writer.drain()
            report.invalid_closed += 1
            return False
        elif kind == "gone_mid_reply":
            writer.write(frames.op_msg({"hello": 1}, "admin", request_id) * rng.randint(1, 50))
            await writer.drain()
            report.invalid_closed += 1
            return False
        elif kind == "garbage_header":
            writer.write(struct.pack("<iiii", rng.choice([0, 3, -5, 2**31 - 1, 48_000_001]), 1, 0, 2013))
        else:  # a readable OP_MSG whose body is not BSON
            body = b"\x00\x00\x00\x00\x00" + struct.pack("<i", 12) + b"\x10a\x00\x01\x00\x00\x00\x7f"
            writer.write(_HEADER.pack(16 + len(body), request_id, 0, 2013) + body)
        await writer.drain()
        # A hello behind it: markd answers the bad input (or not: moreToCome) and then the hello, or closes.
        sentinel = request_id + 1_000_000_000
        writer.write(frames.op_msg({"hello": 1}, "admin", sentinel))
        answers: list[dict[str, Any]] = []
        try:
            await writer.drain()
            while True:
                response_to, reply = await _read_reply(reader, _PATIENCE)
                if response_to == sentinel:
                    break
                answers.append(reply)
        except (ConnectionDropped, ConnectionError):
            report.invalid_closed += 1
            return False
        except asyncio.TimeoutError:
            report.errors.append(f"{kind}: neither an answer nor a close after a bad input")
            return False
        for reply in answers:
            if reply.get("code") == 1:
                report.internal_errors += 1
                if len(report.crash_frames) < 20:
                    report.crash_frames.append(sent)
        if answers:
            report.invalid_answered += 1
        return True

    async def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + index)
        reader, writer = await self.connect()
        # Traffic starts once every worker is connected, so all the connections are open at once
        # (otherwise early workers' reconnects after bad inputs can keep the peak short of the count).
        self.connected += 1
        if self.connected == self.report.connections:
            self.all_connected.set()
        await self.traffic.wait()
        request_id = 1
        try:
            while self.more(request_id - 1):
                request_id += 1
                usable = True
                try:
                    if rng.random() < self.invalid_ratio:
                        usable = await self.invalid(rng, reader, writer, request_id)
                    else:
                        await self.valid(rng, reader, writer, request_id)
                except (ConnectionDropped, ConnectionError):
                    usable = False
                if not usable:
                    self.close(writer)
                    self.report.reconnects += 1
                    reader, writer = await self.connect()
                # Yield so 1,000 workers share the loop fairly.
                await asyncio.sleep(rng.random() * 0.01)
        finally:
            self.close(writer)
            await asyncio.sleep(0)

    def more(self, done: int) -> bool:
        if self.report.rounds:
            return done < self.report.rounds
        return time.monotonic() < self.deadline

    async def open_the_gate(self) -> None:
        """Once every worker is connected, wait until markd has accepted every connection, then let traffic go."""
        report = self.report
        await self.all_connected.wait()
        until = time.monotonic() + _PATIENCE
        while True:
            report.fd_peak = max(report.fd_peak, fd_count(self.pid))
            if report.fd_peak >= report.fd_baseline + report.connections or time.monotonic() > until:
                break
            await asyncio.sleep(0.05)
        self.deadline = time.monotonic() + report.duration
        self.traffic.set()

    async def monitor(self) -> None:
        report = self.report
        await self.traffic.wait()
        started = time.monotonic()
        next_sample = started
        while not self.finished.is_set():
            rss = rss_kib(self.pid)
            report.fd_peak = max(report.fd_peak, fd_count(self.pid))
            report.rss_peak_kib = max(report.rss_peak_kib, rss)
            if time.monotonic() >= next_sample:
                report.rss_samples.append((round(time.monotonic() - started, 1), rss))
                next_sample += 5.0
            try:
                await asyncio.wait_for(self.finished.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    async def run(self) -> LoadReport:
        report = self.report
        report.fd_baseline = fd_count(self.pid)
        report.rss_start_kib = rss_kib(self.pid)
        await self.isolation_replies()
        report.rss_warm_kib = rss_kib(self.pid)
        started = time.monotonic()
        gate = asyncio.create_task(self.open_the_gate())
        monitor = asyncio.create_task(self.monitor())
        results = await asyncio.gather(*(self.worker(i) for i in range(report.connections)), return_exceptions=True)
        report.elapsed = time.monotonic() - started
        self.finished.set()
        self.traffic.set()  # in case every worker died before the gate opened
        gate.cancel()
        await monitor
        for result in results:
            if isinstance(result, BaseException):
                report.errors.append(f"worker died: {type(result).__name__}: {result}")
        # Every client is closed: markd must be back at its baseline.
        until = time.monotonic() + _PATIENCE
        while time.monotonic() < until:
            report.fd_end = fd_count(self.pid)
            if report.fd_end <= report.fd_baseline:
                break
            await asyncio.sleep(0.2)
        report.rss_end_kib = rss_kib(self.pid)
        return report


def run_load(port: int, pid: int, *, connections: int = 1000, duration: float = 0.0, rounds: int = 0, seed: int = 9,
             invalid_ratio: float = 0.1, host: str = "127.0.0.1") -> LoadReport:
    """Drive markd at host:port (pid for /proc) and report; loopback only. Each worker sends `rounds`
    requests, or traffic goes on for `duration` seconds (a soak)."""
    assert host in ("127.0.0.1", "::1", "localhost"), "load is only ever sent to a loopback address"
    assert (rounds > 0) != (duration > 0), "give rounds or a duration"
    raise_fd_limit(connections * 2 + 256)
    load = _Load(host, port, pid, connections, duration, rounds, seed, invalid_ratio)
    try:
        import uvloop

        return uvloop.run(load.run())
    except ImportError:  # pragma: no cover
        return asyncio.run(load.run())
