"""Cold start (issue 15): spawn to the first `hello`, and the first marking request of a fresh markd.

A driver spawns mongocryptd and connects as soon as it can; its first command is a `hello`, its first
marking request follows. Each figure is measured on a fresh process, `--runs` times, for markd and
for the floor (`bench/floor.py`, a minimal uvloop server: Python's own start-up is in it too):

- spawn to hello: from `Popen` to the `hello` reply, the connection retried every millisecond until
  something listens (a connection accepted before markd serves waits in the listen backlog);
- first request: the round trip of the first marking request (after that `hello`), whose schema
  markd has not seen: the cost of a cold analysis, one schema parsed.

    /work/venv/bin/python -m bench.startup            # 7 runs each; needs pymongocrypt for real frames
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers, workloads

_HEADER = struct.Struct("<iiii")


@dataclass
class StartupFigures:
    runs: int
    spawn_to_hello_ms: list[float] = field(default_factory=list)
    first_request_ms: dict[str, list[float]] = field(default_factory=dict)  # workload key -> round trips
    floor_spawn_to_hello_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        def median(values: list[float]) -> float:
            return round(statistics.median(values), 2) if values else 0.0

        out = {"spawn_to_hello_ms": median(self.spawn_to_hello_ms),
               "floor_spawn_to_hello_ms": median(self.floor_spawn_to_hello_ms)}
        for key, values in self.first_request_ms.items():
            out[f"first_request_ms_{key}"] = median(values)
        return out


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 16 or len(data) < _HEADER.unpack_from(data)[0]:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed before the reply")
        data += chunk
    return data


def _connect(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before listening")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            time.sleep(0.001)
    raise TimeoutError(f"nothing listening on {port}")


def spawn_and_hello(command: list[str], port: int, workdir: Path, cpus: set[int] | None = None
                    ) -> tuple[float, socket.socket, subprocess.Popen[bytes]]:
    """(ms from spawn to the hello reply, the open connection, the process)."""
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=pin if cpus else None)
    sock = _connect(port, process)
    sock.sendall(workloads.hello_frame())
    _read_reply(sock)
    return (time.perf_counter() - started) * 1000, sock, process


def round_trip_ms(sock: socket.socket, frame: bytes) -> float:
    started = time.perf_counter()
    sock.sendall(frame)
    _read_reply(sock)
    return (time.perf_counter() - started) * 1000


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def markd_command(port: int, workdir: Path, extra: list[str] | None = None) -> list[str]:
    """What a driver runs (idle shutdown on, its own pid file and socket directory), logging to a file."""
    executable = servers.markd_executable()
    command = [executable] if executable else [sys.executable, "-m", "markd.cli"]
    return [*command, "--idleShutdownTimeoutSecs", "60", "--port", str(port), "--pidfilepath",
            str(workdir / "markd.pid"), "--unixSocketPrefix", str(workdir), "--logpath", str(workdir / "markd.log"),
            *(extra or [])]


def measure(frames: dict[str, bytes], runs: int, cpus: set[int] | None = None,
            extra_args: list[str] | None = None) -> StartupFigures:
    """`runs` fresh markds (and floors): spawn to hello, then each frame's first round trip (one per run)."""
    figures = StartupFigures(runs)
    for key in frames:
        figures.first_request_ms[key] = []
    for _ in range(runs):
        for key, frame in frames.items():
            workdir = servers.private_workdir()
            port = servers.free_port()
            try:
                hello_ms, sock, process = spawn_and_hello(markd_command(port, workdir, extra_args), port, workdir, cpus)
                try:
                    figures.first_request_ms[key].append(round_trip_ms(sock, frame))
                    if key == next(iter(frames)):
                        figures.spawn_to_hello_ms.append(hello_ms)
                finally:
                    sock.close()
                    _stop(process)
            finally:
                servers.remove_workdir(workdir)
        port = servers.free_port()
        workdir = servers.private_workdir()
        try:
            hello_ms, sock, process = spawn_and_hello([sys.executable, "-m", "bench.floor", "--port", str(port)],
                                                      port, servers.REPO_ROOT, cpus)
            sock.close()
            _stop(process)
            figures.floor_spawn_to_hello_ms.append(hello_ms)
        finally:
            servers.remove_workdir(workdir)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cold start: spawn to hello, first marking request")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", default="b,c,e1", help="workloads whose first request is timed")
    args = parser.parse_args(argv)
    servers.compile_markd()
    workdir = servers.private_workdir()
    markd = servers.start_markd(workdir)
    try:
        chosen = {w.key: w.request for w in workloads.build_workloads(markd.port, lambda m: print(m, file=sys.stderr))
                  if w.key in args.only.split(",")}
    finally:
        markd.stop()
        servers.remove_workdir(workdir)
    figures = measure(chosen, args.runs)
    for name, value in figures.summary().items():
        print(f"{name}: {value} (median of {args.runs})")
    print(f"spawn to hello, every run (ms): {[round(v, 1) for v in figures.spawn_to_hello_ms]}")
    print(f"floor spawn to hello, every run (ms): {[round(v, 1) for v in figures.floor_spawn_to_hello_ms]}")
    for key, values in figures.first_request_ms.items():
        print(f"first request {key}, every run (ms): {[round(v, 2) for v in values]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
