"""Where markd's time goes per command, stage by stage, in process (no sockets, no event loop).

    /work/venv/bin/python -m bench.stages             # every workload
    /work/venv/bin/python -m bench.stages --only b,c --cprofile 15

Each workload's frame (captured from pymongo + pymongocrypt as in bench.run) goes through the same
calls markd's server makes for one frame: frame reading, `parse_message`, the exact-type decode,
the dispatcher (query analysis), the reply encode and the OP_MSG framing. Times are the median CPU
time (thread time) of repeated calls, in microseconds; they exclude the syscalls and the event loop that the
socket benchmark (bench.run) includes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers, workloads
from markd import bsonvalues
from markd.commands import ConnectionInfo, Dispatcher
from markd.errors import CommandError
from markd.wire import codec

STAGES = ("frame_reader", "parse_message", "decode", "dispatch", "encode_reply", "frame_reply")


def median_us(call: Callable[[], object], budget_seconds: float = 0.3, max_batches: int = 2_000) -> float:
    """Median CPU time of one `call`, in µs: calls are timed in batches of at least ~0.2 ms of this
    thread's CPU time (other processes on a shared machine do not count, and the clock's own cost is
    spread over the batch), and the median batch is divided by its size."""
    call()
    started = time.thread_time_ns()
    call()
    single_ns = max(1, time.thread_time_ns() - started)
    batch = max(1, 200_000 // single_ns)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_seconds
    while len(samples) < max_batches and (len(samples) < 7 or time.perf_counter() < deadline):
        started = time.thread_time_ns()
        for _ in range(batch):
            call()
        samples.append((time.thread_time_ns() - started) / 1000 / batch)
    return statistics.median(samples)


def stage_costs(frame: bytes, dispatcher: Dispatcher, connection: ConnectionInfo,
                budget_seconds: float) -> dict[str, float]:
    costs: dict[str, float] = {}
    costs["frame_reader"] = median_us(lambda: codec.FrameReader().feed(frame), budget_seconds)
    costs["parse_message"] = median_us(lambda: codec.parse_message(frame), budget_seconds)
    message = codec.parse_message(frame)
    assert isinstance(message, codec.OpMsg)
    costs["decode"] = median_us(lambda: message.command, budget_seconds)
    command = message.command

    def dispatch() -> dict[str, Any]:
        try:
            return dispatcher.handle(message.command, connection)
        except CommandError as exc:
            return exc.to_reply()

    # The analysis may change the command it is given: time it on a fresh decode, minus the decode.
    costs["dispatch"] = max(0.0, median_us(dispatch, budget_seconds) - costs["decode"])
    reply = dispatch()
    costs["encode_reply"] = median_us(lambda: bsonvalues.encode(reply), budget_seconds)
    body = bsonvalues.encode(reply)
    costs["frame_reply"] = median_us(lambda: codec.encode_op_msg(1, body), budget_seconds)
    costs["total"] = sum(costs[stage] for stage in STAGES)
    _ = command
    return costs


def cprofile_top(frame: bytes, dispatcher: Dispatcher, connection: ConnectionInfo, top: int,
                 seconds: float = 1.0) -> str:
    message = codec.parse_message(frame)
    assert isinstance(message, codec.OpMsg)

    def one() -> None:
        parsed = codec.parse_message(frame)
        assert isinstance(parsed, codec.OpMsg)
        try:
            reply = dispatcher.handle(parsed.command, connection)
        except CommandError as exc:
            reply = exc.to_reply()
        codec.encode_op_msg(1, bsonvalues.encode(reply))

    profiler = cProfile.Profile()
    deadline = time.perf_counter() + seconds
    calls = 0
    profiler.enable()
    while time.perf_counter() < deadline or calls < 3:
        one()
        calls += 1
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    start = text.find("   ncalls")
    return f"{calls} commands under cProfile (inflates Python-call-heavy code)\n" + text[start:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="markd's per-command cost, stage by stage")
    parser.add_argument("--only", default="", help="comma-separated workload keys")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="also print cProfile's top N")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per stage measurement")
    args = parser.parse_args(argv)

    workdir = servers.private_workdir()
    markd = servers.start_markd(workdir)
    try:
        chosen = workloads.build_workloads(markd.port, lambda message: print(message, file=sys.stderr))
    finally:
        markd.stop()
        servers.remove_workdir(workdir)
    if args.only:
        chosen = [w for w in chosen if w.key in args.only.split(",")]
    chosen = [w for w in chosen if w.key != "g"]  # g is b's frame over many connections

    dispatcher = Dispatcher(argv=[], parsed_options={})
    connection = ConnectionInfo(1, "127.0.0.1:1", True)
    print("µs per command (median), in process:")
    print(f"| wl | workload | {' | '.join(STAGES)} | total |")
    print("|---|---|" + "---|" * (len(STAGES) + 1))
    for workload in chosen:
        costs = stage_costs(workload.request, dispatcher, connection, args.budget)
        cells = " | ".join(f"{costs[stage]:,.1f}" for stage in (*STAGES, "total"))
        print(f"| {workload.key} | {workload.name} | {cells} |")
    if args.cprofile:
        for workload in chosen:
            print(f"\n== ({workload.key}) {workload.name}")
            print(cprofile_top(workload.request, dispatcher, connection, args.cprofile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
