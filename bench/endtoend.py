"""End to end: encrypted inserts and finds through pymongo, markd in-process against markd the daemon.

    python -m bench.endtoend                 # ~2 minutes; prints a table, writes bench/results-endtoend.json
    python -m bench.endtoend --quick         # ~30 s
    python -m bench.run --endtoend           # the socket benchmarks, then this (into bench/results.json)

The application is a pymongo `MongoClient` with `AutoEncryptionOpts` (schema_map for CSFLE,
encrypted_fields_map for Queryable Encryption, a local KMS key) doing one operation at a time:

- in-process: `crypt_shared_lib_path=markd.crypt_shared.library_path(), crypt_shared_lib_required=True`;
- daemon: `mongocryptd_uri=<markd>, mongocryptd_bypass_spawn=True`, markd a real process.

The "mongod" is tests/support/fake_mongod.py in its own process, answering the application's
inserts with ok and its finds with the first document inserted (so its cost stays the same for
the whole run; the key vault is real).  The application runs in a child process per round and
mode (libmongocrypt allows one way per process: while it holds a crypt_shared library it refuses
clients that do not name it); modes alternate over the rounds so background load hits both alike.
mongod and the daemon are pinned to one CPU, the application (and, in-process, the analysis) to
the other.

Figures per operation and mode: p50/p99 latency, operations/s (one application thread), the
application process's CPU per operation (in-process it includes the analysis), the daemon's CPU
per operation, and their sum with mongod's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/endtoend.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procstat, servers, workloads

BENCH_DIR = Path(__file__).resolve().parent
MODES = ("in-process", "daemon")
OPERATIONS = ("csfle_insert", "csfle_find", "qe_insert", "qe_find")
KEY_VAULT = "keyvault.datakeys"
LOCAL_MASTER_KEY = bytes(range(96))
KMS = {"local": {"key": LOCAL_MASTER_KEY}}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the mongod process -------------------------------------------------------------------------
def serve_mongod(port_file: Path) -> None:
    """A stand-in mongod whose cost does not grow: application writes are not kept, finds are canned."""
    import threading

    from tests.support.fake_mongod import FakeMongod, _cursor

    class BenchMongod(FakeMongod):
        def _dispatch(self, database: str, body: dict[str, Any], connection_id: int) -> dict[str, Any]:
            reply = super()._dispatch(database, body, connection_id)
            with self._lock:
                self.commands.clear()  # FakeMongod records every command; nothing here reads them
            return reply

    canned: dict[str, list[Any]] = {}

    def insert(database: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace = f"{database}.{body['insert']}"
        documents = body.get("documents", [])
        if namespace == KEY_VAULT:
            mongod.add_documents(namespace, documents)
        else:
            canned.setdefault(namespace, documents[:1])
        return {"n": len(documents), "ok": 1.0}

    def find(database: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace = f"{database}.{body['find']}"
        if namespace == KEY_VAULT:
            return mongod._find(database, body)
        return _cursor(namespace, canned.get(namespace, []))

    mongod = BenchMongod(handlers={"insert": insert, "find": find}).start()
    port_file.write_text(str(mongod.port))
    threading.Event().wait()


def start_mongod(workdir: Path, cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "mongod.port"

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    process = subprocess.Popen([sys.executable, "-m", "bench.endtoend", "mongod", str(port_file)],
                               cwd=servers.REPO_ROOT, preexec_fn=pin if cpus else None)
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the stand-in mongod did not start")
        time.sleep(0.02)
    return process, int(port_file.read_text())


# ---- the application ------------------------------------------------------------------------------
def encryption_maps(keys: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = workloads.csfle_json_schema()
    schema["encryptMetadata"] = {"keyId": [keys["csfle"]]}
    fields = workloads.qe_encrypted_fields()
    fields["fields"][0]["keyId"] = keys["qe_equality"]
    fields["fields"][1]["keyId"] = keys["qe_range"]
    return {workloads.CSFLE_NAMESPACE: schema}, {workloads.QE_NAMESPACE: fields}


def measure_client(mode: str, mongod_uri: str, markd_uri: str, keys: dict[str, Any], seconds: float,
                   warmup: int, pids: dict[str, int]) -> dict[str, Any]:
    """One application process: every operation in a closed loop for `seconds`, after `warmup` of each."""
    from pymongo import MongoClient
    from pymongo.encryption_options import AutoEncryptionOpts

    import markd.crypt_shared

    schema_map, encrypted_fields_map = encryption_maps(keys)
    analysis: dict[str, Any] = (
        {"crypt_shared_lib_path": markd.crypt_shared.library_path(), "crypt_shared_lib_required": True}
        if mode == "in-process" else {"mongocryptd_uri": markd_uri, "mongocryptd_bypass_spawn": True})
    options = AutoEncryptionOpts(KMS, KEY_VAULT, schema_map=schema_map, encrypted_fields_map=encrypted_fields_map,
                                 **analysis)
    client: MongoClient[Any] = MongoClient(mongod_uri, auto_encryption_opts=options, serverSelectionTimeoutMS=5000)
    database = client[workloads.DATABASE]
    people, patients = database[workloads.CSFLE_COLLECTION], database[workloads.QE_COLLECTION]
    counter = iter(range(10**9))
    person, patient = workloads.person(0), workloads.patient(0)

    def run_operation(name: str) -> None:
        index = next(counter)
        if name == "csfle_insert":
            people.insert_one({**workloads.person(index % 1000), "_id": index})
        elif name == "csfle_find":
            assert people.find_one({"ssn": person["ssn"]}) is not None
        elif name == "qe_insert":
            patients.insert_one({**workloads.patient(index % 1000), "_id": index})
        else:
            assert patients.find_one({"ssn": patient["ssn"]}) is not None

    figures: dict[str, Any] = {}
    try:
        for name in OPERATIONS:  # warm: keys fetched, caches filled, connections open
            for _ in range(warmup):
                run_operation(name)
        for name in OPERATIONS:
            latencies: list[float] = []
            servers_before = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
            busy_before = procstat.machine_busy_seconds()
            cpu_before = time.process_time()
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                begin = time.perf_counter()
                run_operation(name)
                latencies.append(time.perf_counter() - begin)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_before
            server_cpu = {f"{n}_cpu": procstat.cpu_seconds(pid) - servers_before[n] for n, pid in pids.items()}
            # What other processes used meanwhile, in cores: above ~0.2 the figures are noisy.
            other = (procstat.machine_busy_seconds() - busy_before - cpu - sum(server_cpu.values())) / elapsed
            latencies.sort()
            figures[name] = {"count": len(latencies), "elapsed": elapsed, "client_cpu": cpu, **server_cpu,
                             "other_load": max(0.0, other),
                             "p50_us": latencies[len(latencies) // 2] * 1e6,
                             "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6}
    finally:
        client.close()
    return figures


# ---- the run ------------------------------------------------------------------------------------------
def create_keys(mongod_uri: str) -> dict[str, Any]:
    from bson.codec_options import CodecOptions
    from pymongo import MongoClient
    from pymongo.encryption import ClientEncryption

    with MongoClient(mongod_uri, serverSelectionTimeoutMS=5000) as client:
        encryption = ClientEncryption(KMS, KEY_VAULT, client, CodecOptions())
        try:
            return {name: encryption.create_data_key("local") for name in ("csfle", "qe_equality", "qe_range")}
        finally:
            encryption.close()


def run_client(mode: str, mongod_uri: str, markd_uri: str, keys: dict[str, Any], seconds: float, warmup: int,
               pids: dict[str, int], cpus: set[int] | None, workdir: Path) -> dict[str, Any]:
    import bson

    request = workdir / "client.in.bson"
    result = workdir / "client.out.json"
    request.write_bytes(bson.encode({"mode": mode, "mongod": mongod_uri, "markd": markd_uri, "keys": keys,
                                     "seconds": seconds, "warmup": warmup, "pids": pids}))

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    done = subprocess.run([sys.executable, "-m", "bench.endtoend", "client", str(request), str(result)],
                          cwd=servers.REPO_ROOT, preexec_fn=pin if cpus else None, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} client failed: {done.stderr[-2000:]}")
    return json.loads(result.read_text())


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per operation and mode: latency medians over the rounds, rates and CPU over all of them."""
    summary: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        for mode in MODES:
            mine = [r for r in rounds if r["mode"] == mode]
            figures = [r["figures"][operation] for r in mine]
            count = sum(f["count"] for f in figures)
            markd_cpu = sum(f["markd_cpu"] for f in figures) if mode == "daemon" else 0.0
            mongod_cpu = sum(f["mongod_cpu"] for f in figures)
            summary.setdefault(operation, {})[mode] = {
                "p50_us": round(statistics.median(f["p50_us"] for f in figures), 1),
                "p99_us": round(statistics.median(f["p99_us"] for f in figures), 1),
                "ops_per_s": round(count / sum(f["elapsed"] for f in figures)),
                "client_cpu_us": round(sum(f["client_cpu"] for f in figures) / count * 1e6, 1),
                "markd_cpu_us": round(markd_cpu / count * 1e6, 1),
                "mongod_cpu_us": round(mongod_cpu / count * 1e6, 1),
                "count": count,
                "other_load": round(max(f["other_load"] for f in figures), 2),
            }
    return summary


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| operation | p50 µs in-process / daemon | p50 ratio | p99 µs in-process / daemon | "
             "ops/s in-process / daemon | app CPU µs/op in-process / daemon | markd daemon CPU µs/op | "
             "all CPU µs/op in-process / daemon (app + markd + mongod) | other load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for operation, modes in summary.items():
        inproc, daemon = modes["in-process"], modes["daemon"]
        total_in = inproc["client_cpu_us"] + inproc["mongod_cpu_us"]
        total_daemon = daemon["client_cpu_us"] + daemon["markd_cpu_us"] + daemon["mongod_cpu_us"]
        lines.append(
            f"| {operation} | {inproc['p50_us']:,.0f} / {daemon['p50_us']:,.0f} | "
            f"{inproc['p50_us'] / daemon['p50_us']:.2f}x | {inproc['p99_us']:,.0f} / {daemon['p99_us']:,.0f} | "
            f"{inproc['ops_per_s']:,} / {daemon['ops_per_s']:,} | "
            f"{inproc['client_cpu_us']:,.0f} / {daemon['client_cpu_us']:,.0f} | {daemon['markd_cpu_us']:,.0f} | "
            f"{total_in:,.0f} / {total_daemon:,.0f} | "
            f"{max(inproc['other_load'], daemon['other_load']):.2f} |")
    return "\n".join(lines)


def run(seconds: float, rounds: int, warmup: int, pin: bool) -> dict[str, Any]:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="markd-bench-e2e-"))
    server_cpus, client_cpus = servers.cpu_layout(pin)
    mongod_process = None
    markd_server = None
    try:
        mongod_process, mongod_port = start_mongod(workdir, server_cpus)
        markd_server = servers.start_markd(workdir, server_cpus)
        mongod_uri = f"mongodb://127.0.0.1:{mongod_port}/?directConnection=true"
        markd_uri = f"mongodb://127.0.0.1:{markd_server.port}"
        keys = create_keys(mongod_uri)
        pids = {"markd": markd_server.pid, "mongod": mongod_process.pid}
        log(f"mongod pid {mongod_process.pid} port {mongod_port}; markd pid {markd_server.pid} port "
            f"{markd_server.port}; application on CPUs {sorted(client_cpus) if client_cpus else 'any'}")
        results: list[dict[str, Any]] = []
        for round_index in range(rounds):
            for mode in MODES if round_index % 2 == 0 else tuple(reversed(MODES)):
                figures = run_client(mode, mongod_uri, markd_uri, keys, seconds, warmup, pids, client_cpus, workdir)
                results.append({"round": round_index, "mode": mode, "figures": figures})
                log(f"round {round_index + 1}/{rounds} {mode}: " + ", ".join(
                    f"{op} p50 {figures[op]['p50_us']:.0f} µs" for op in OPERATIONS))
        summary = summarise(results)
    finally:
        if markd_server is not None:
            markd_server.stop()
        if mongod_process is not None:
            mongod_process.terminate()
            mongod_process.wait(10)
        servers.remove_workdir(workdir)
    return {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds_per_operation": seconds, "rounds": rounds, "warmup_operations": warmup,
        "cpu_layout": {"mongod_and_daemon": sorted(server_cpus) if server_cpus else "any",
                       "application": sorted(client_cpus) if client_cpus else "any"},
        "summary": summary, "rounds_detail": results, "run_seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mongod"]:
        serve_mongod(Path(argv[1]))
        return 0
    if argv[:1] == ["client"]:
        import bson

        request = bson.decode(Path(argv[1]).read_bytes())
        figures = measure_client(request["mode"], request["mongod"], request["markd"], request["keys"],
                                 request["seconds"], request["warmup"], request["pids"])
        Path(argv[2]).write_text(json.dumps(figures))
        return 0
    parser = argparse.ArgumentParser(description="encrypted insert and find end to end: in-process vs the daemon")
    parser.add_argument("--quick", action="store_true", help="short phases (about 30 s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per operation and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (each runs both modes)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--output", default=str(BENCH_DIR / "results-endtoend.json"))
    args = parser.parse_args(argv)
    seconds, rounds, warmup = (0.5, 2, 50) if args.quick else (args.seconds, args.rounds, 300)
    results = run(seconds, rounds, warmup, not args.no_pin)
    print(format_table(results["summary"]))
    print(f"\n{rounds} rounds x {seconds} s per operation and mode: {results['run_seconds']} s")
    Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
