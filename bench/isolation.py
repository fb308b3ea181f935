"""Issue 14's attacks, measured: the other client's worst round trip and markd's peak RSS per attack.

    /work/venv/bin/python -m bench.isolation                 # every attack, a fresh markd for each
    /work/venv/bin/python -m bench.isolation --only regex,flood
    /work/venv/bin/python -m bench.isolation --markd /path/to/old/venv/bin/markd   # the figures before

While an attack runs, a well-behaved client sends `hello` + a CSFLE `find` every 50 ms (as in the
issue) and records each pair's round trip; RSS is markd's process plus its analysis processes,
sampled every 50 ms. Nothing is asserted: targets (worst round trip < 100 ms, flood peak RSS < 600 MB)
are reported as pass/MISS. Writes bench/isolation.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/isolation.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bson
from bson.binary import Binary

from bench import procstat, servers

BENCH_DIR = Path(__file__).resolve().parent
KEY = Binary(uuid.UUID(int=14).bytes, 4)
DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
SCHEMA = {"bsonType": "object", "properties": {"ssn": {"encrypt": {
    "keyId": [KEY], "bsonType": "string", "algorithm": DETERMINISTIC}}}}
ROUND_TRIP_TARGET_MS = 100.0
FLOOD_RSS_TARGET_MB = 600.0
_HEADER = struct.Struct("<iiii")


def frame(command: dict[str, Any], request_id: int = 1, sequences: dict[str, list[Any]] | None = None) -> bytes:
    sections = b"\x00" + bson.encode(command)
    for name, documents in (sequences or {}).items():
        payload = name.encode() + b"\x00" + b"".join(bson.encode(d) for d in documents)
        sections += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    return _HEADER.pack(16 + 4 + len(sections), request_id, 0, 2013) + b"\x00\x00\x00\x00" + sections


def compressed(message: bytes) -> bytes:
    length, request_id, response_to, op_code = _HEADER.unpack_from(message)
    body = struct.pack("<iiB", op_code, length - 16, 2) + zlib.compress(message[16:], 9)
    return _HEADER.pack(16 + len(body), request_id, response_to, 2012) + body


def read_reply(sock: socket.socket) -> bytes:
    header = _recv(sock, 16)
    return header + _recv(sock, _HEADER.unpack(header)[0] - 16)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def connect(port: int, timeout: float = 120.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


FIND = frame({"find": "c", "filter": {"ssn": "123-45-6789"}, "jsonSchema": SCHEMA, "isRemoteSchema": False,
              "$db": "db"}, 2)
HELLO = frame({"hello": 1, "$db": "admin"}, 1)


@dataclass
class Watch:
    """The well-behaved client and the RSS sampler, in threads."""

    port: int
    pid: int
    round_trips_ms: list[float] = field(default_factory=list)
    wrong: int = 0
    peak_rss_kb: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self) -> None:
        with connect(self.port) as sock:
            while not self.stop.is_set():
                started = time.perf_counter()
                sock.sendall(HELLO)
                read_reply(sock)
                sock.sendall(FIND)
                reply = bson.decode(read_reply(sock)[21:])
                self.round_trips_ms.append((time.perf_counter() - started) * 1000)
                if not reply.get("hasEncryptionPlaceholders"):
                    self.wrong += 1
                time.sleep(0.05)

    def sampler(self) -> None:
        while not self.stop.is_set():
            self.peak_rss_kb = max(self.peak_rss_kb, tree_rss_kb(self.pid))
            time.sleep(0.05)


def tree_rss_kb(pid: int) -> int:
    """markd's RSS plus its children's (the analysis processes)."""
    return procstat.tree_rss_kb(pid)


# the attacks ---------------------------------------------------------------------------------------
def attack_regex(port: int) -> None:
    schema = {"bsonType": "object", "patternProperties": {"^(a+)+$": SCHEMA["properties"]["ssn"]}}
    with connect(port, timeout=600) as sock:
        sock.sendall(frame({"insert": "c", "documents": [{"a" * 26 + "!": "v"}], "jsonSchema": schema,
                            "isRemoteSchema": False, "$db": "db"}))
        read_reply(sock)


def attack_pipeline(port: int) -> None:
    batch = b"".join(frame({"hello": 1, "$db": "admin"}, i) for i in range(20_000))  # 1 MB
    with connect(port) as sock:
        for _ in range(5):
            sender = threading.Thread(target=sock.sendall, args=(batch,))
            sender.start()
            for _ in range(20_000):
                read_reply(sock)
            sender.join()


def attack_no_read(port: int) -> None:
    sock = connect(port, timeout=0.5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    batch = b"".join(frame({"hello": 1, "$db": "admin"}, i) for i in range(20_000))
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            sock.sendall(batch)
    except OSError:
        pass
    time.sleep(3)
    sock.close()


def attack_flood(port: int) -> None:
    documents = [{"ssn": "1", "blob": "x" * (15_900_000)}] * 3  # 47.7 MB inflated
    message = compressed(frame({"insert": "c", "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"},
                               9, {"documents": documents}))
    floods = []
    for _ in range(60):
        sock = connect(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(message)
        floods.append(sock)
    time.sleep(10)
    for sock in floods:
        sock.close()


def attack_field_names(port: int) -> None:
    with connect(port, timeout=600) as sock:
        for n in range(20):
            name = f"{n:02d}" + "f" * (10 * 1024 * 1024)
            sock.sendall(frame({"insert": "c", "documents": [{name: "v", "ssn": "1"}], "jsonSchema": SCHEMA,
                                "isRemoteSchema": False, "$db": "db"}, n))
            read_reply(sock)


def attack_schemas(port: int) -> None:
    with connect(port, timeout=600) as sock:
        for n in range(300):
            schema = {**SCHEMA, "description": f"{n}" + "d" * (15 * 1024 * 1024)}
            sock.sendall(frame({"find": "c", "filter": {"ssn": "1"}, "jsonSchema": schema, "isRemoteSchema": False,
                                "$db": "db"}, n))
            read_reply(sock)


def attack_idle(port: int) -> None:
    idle = []
    for _ in range(10_000):
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(2)
    for sock in idle:
        sock.close()


def attack_depth(port: int) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        with connect(port) as sock:
            for depth in range(200, 901, 100):
                query: dict[str, Any] = {"ssn": "1"}
                for _ in range(depth):
                    query = {"$and": [query]}
                expression: dict[str, Any] = {"$eq": ["$ssn", "1"]}
                for _ in range(depth):
                    expression = {"$not": [expression]}
                pipeline: list[Any] = [{"$match": {"x": 1}}]
                for _ in range(depth // 3):
                    pipeline = [{"$lookup": {"from": "c", "as": "j", "pipeline": pipeline}}]
                for command in ({"find": "c", "filter": query},
                                {"aggregate": "c", "pipeline": [{"$match": {"$expr": expression}}], "cursor": {}},
                                {"aggregate": "c", "pipeline": pipeline, "cursor": {}}):
                    sock.sendall(frame({**command, "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}))
                    read_reply(sock)
    finally:
        sys.setrecursionlimit(limit)


def attack_big_requests(port: int) -> None:
    with connect(port, timeout=600) as sock:
        big_in = frame({"find": "c", "filter": {"ssn": {"$in": [str(n) for n in range(100_000)]}},
                        "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"})
        big_insert = frame({"insert": "c", "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}, 2,
                           {"documents": [{"ssn": str(n)} for n in range(100_000)]})
        big_message = frame({"insert": "c", "jsonSchema": SCHEMA, "isRemoteSchema": False, "$db": "db"}, 3,
                            {"documents": [{"ssn": "1", "blob": "b" * 15_900_000}] * 3})
        for message in (big_in, big_insert, big_message):
            sock.sendall(message)
            read_reply(sock)


def attack_tls(port: int) -> None:
    silent = socket.create_connection(("127.0.0.1", port))
    silent.settimeout(60)
    started = time.monotonic()
    try:
        silent.recv(1)
    except OSError:
        pass
    ATTACK_NOTES["tls"] = f"closed by markd after {time.monotonic() - started:.1f} s"
    silent.close()


ATTACK_NOTES: dict[str, str] = {}


@dataclass
class Attack:
    key: str
    what: str
    run: Callable[[int], None]
    tls: bool = False


ATTACKS = [
    Attack("regex", 'patternProperties "^(a+)+$", field "a"*26+"!"', attack_regex),
    Attack("pipeline", "pipelined 1 MB batches of hello (read)", attack_pipeline),
    Attack("noread", "a client that never reads its replies", attack_no_read),
    Attack("flood", "60 conns x 46 KB zlib -> 47.7 MB insert, never read", attack_flood),
    Attack("names", "a new 10 MB field name per request, same schema", attack_field_names),
    Attack("schemas", "300 schemas with a 15 MB description", attack_schemas),
    Attack("idle", "10,000 idle connections", attack_idle),
    Attack("tls", "a TLS connection that never starts its handshake", attack_tls, tls=True),
    Attack("depth", "nesting 200-900 ($and, $expr $not, $lookup)", attack_depth),
    Attack("big", "$in of 100k, insert of 100k docs, a 48 MB message", attack_big_requests),
]


@dataclass
class Result:
    key: str
    what: str
    worst_round_trip_ms: float
    p50_round_trip_ms: float
    rounds: int
    wrong_answers: int
    peak_rss_mb: float
    rss_after_mb: float
    seconds: float
    note: str = ""
    survived: bool = True


def tls_args(workdir: Path) -> list[str]:
    from tests.test_ops import _certificates

    certs = _certificates(workdir)
    return ["--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(certs["server"])]


def run_attack(attack: Attack, markd: str | None, extra: list[str]) -> Result:
    workdir = servers.private_workdir()
    args = [*extra]
    if attack.tls:
        args += tls_args(workdir)
    if markd:
        process = start_external(markd, workdir, args)
    else:
        process = servers.start_markd(workdir, extra_args=args)
    watch = Watch(process.port, process.pid)
    threads = []
    if not attack.tls:
        threads.append(threading.Thread(target=watch.client, daemon=True))
    threads.append(threading.Thread(target=watch.sampler, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    note = ""
    try:
        attack.run(process.port)
    except Exception as exc:  # an attack that markd ends early (it closed the connection) is still measured
        note = f"attack ended: {type(exc).__name__}"
    elapsed = time.monotonic() - started
    time.sleep(3.0)
    watch.stop.set()
    for thread in threads:
        thread.join(30)
    survived = process.process is not None and process.process.poll() is None
    rss_after = tree_rss_kb(process.pid) / 1024
    process.stop()
    servers.remove_workdir(workdir)
    trips = sorted(watch.round_trips_ms)
    return Result(attack.key, attack.what, round(trips[-1], 1) if trips else 0.0,
                  round(trips[len(trips) // 2], 2) if trips else 0.0, len(trips), watch.wrong,
                  round(watch.peak_rss_kb / 1024, 1), round(rss_after, 1), round(elapsed, 1),
                  ATTACK_NOTES.get(attack.key, note), survived)


def start_external(markd: str, workdir: Path, args: list[str]) -> servers.ServerProcess:
    port = servers.free_port()
    command = [markd, "--port", str(port), "--pidfilepath", str(workdir / "markd.pid"), "--unixSocketPrefix",
               str(workdir), "--logpath", str(workdir / "markd.log"), *args]
    return servers.ServerProcess("markd", command, port, workdir).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated attack keys")
    parser.add_argument("--markd", help="another markd executable (e.g. an older checkout's)")
    parser.add_argument("--output", default=str(BENCH_DIR / "isolation.json"))
    options = parser.parse_args()
    wanted = set(options.only.split(",")) if options.only else None
    results = []
    for attack in ATTACKS:
        if wanted and attack.key not in wanted:
            continue
        print(f"{attack.key}: {attack.what} ...", file=sys.stderr, flush=True)
        result = run_attack(attack, options.markd, [])
        results.append(result)
        print(f"  worst round trip {result.worst_round_trip_ms} ms (p50 {result.p50_round_trip_ms}, "
              f"{result.rounds} rounds, {result.wrong_answers} wrong), peak RSS {result.peak_rss_mb} MB, "
              f"after {result.rss_after_mb} MB, survived {result.survived} {result.note}", file=sys.stderr)
    print("| attack | what | worst round trip ms | p50 ms | wrong | peak RSS MB | RSS after MB | result |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ok = r.survived and r.wrong_answers == 0 and (r.worst_round_trip_ms < ROUND_TRIP_TARGET_MS or r.key == "tls")
        if r.key == "flood":
            ok = ok and r.peak_rss_mb < FLOOD_RSS_TARGET_MB
        print(f"| {r.key} | {r.what} | {r.worst_round_trip_ms} | {r.p50_round_trip_ms} | {r.wrong_answers} | "
              f"{r.peak_rss_mb} | {r.rss_after_mb} | {'pass' if ok else 'MISS'}{' - ' + r.note if r.note else ''} |")
    Path(options.output).write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
