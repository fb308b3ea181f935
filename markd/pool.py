"""The analysis processes (markd.worker), from the server's side: asyncio only, one job per process.

Jobs wait in one FIFO queue. A connection has at most one job at a time (its requests are answered
in order), so FIFO order is round-robin between connections: a client with a queue of huge requests
delays another client's large request by at most one of its own.

Processes start on the first large request (a driver-spawned markd that only ever sees small
requests never pays for one), stop after `IDLE_SECS` without work, and are replaced when their RSS
stays above `RECYCLE_RSS_BYTES` after a request (a fresh one is ~40 MB), so memory taken by an attack
is returned to the system when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from markd import worker
from markd.commands import ConnectionInfo
from markd.core import Outcome
from markd.errors import CommandError
from markd.logs import log
from markd.wire import encode_op_msg

IDLE_SECS = 30.0
RECYCLE_RSS_BYTES = 128 * 1024 * 1024
_FLAG_MORE_TO_COME = 1 << 1


@dataclass
class _Job:
    frame: bytes
    connection: ConnectionInfo
    done: asyncio.Future[Outcome]


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def failed(frame: bytes, code: int, errmsg: str, code_name: str, outcome: str) -> Outcome:
    """An error answer to `frame` built from its header alone (the worker could not answer it)."""
    request_id = struct.unpack_from("<i", frame, 4)[0] if len(frame) >= 8 else 0
    op_code = struct.unpack_from("<i", frame, 12)[0] if len(frame) >= 16 else 0
    flags = struct.unpack_from("<I", frame, 16)[0] if op_code == 2013 and len(frame) >= 20 else 0
    result = Outcome(outcome=outcome, request_bytes=len(frame), request_id=request_id,
                     more_to_come=bool(flags & _FLAG_MORE_TO_COME))
    if op_code != 2013:  # not an OP_MSG (a compressed or legacy frame this large): close, as for a bad frame
        result.close_reason = errmsg
    elif not result.more_to_come:
        result.reply = encode_op_msg(request_id, CommandError(code, errmsg, code_name).to_reply())
    return result


@dataclass
class _Process:
    child: asyncio.subprocess.Process
    jobs: int = 0


@dataclass
class AnalysisPool:
    """`await pool.run(frame, connection)` answers one frame in an analysis process."""

    size: int
    config: dict[str, Any]
    _queue: asyncio.Queue[_Job | None] = field(default_factory=asyncio.Queue)
    _slots: list[asyncio.Task[None]] = field(default_factory=list)
    _processes: dict[int, _Process] = field(default_factory=dict)
    started: int = 0
    recycled: int = 0

    async def run(self, frame: bytes, connection: ConnectionInfo) -> Outcome:
        if not self._slots:
            self._slots = [asyncio.create_task(self._slot(n)) for n in range(max(self.size, 1))]
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(frame, connection, done))
        return await done

    @property
    def processes(self) -> int:
        return len(self._processes)

    def worker_pids(self) -> list[int]:
        return [process.child.pid for process in self._processes.values()]

    async def close(self) -> None:
        for _ in self._slots:
            self._queue.put_nowait(None)
        for slot in self._slots:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot, timeout=5.0)
        for number in list(self._processes):
            await self._stop(number)
        self._slots.clear()

    # one slot = one process, started lazily ---------------------------------------------------------
    async def _slot(self, number: int) -> None:
        while True:
            try:
                job = await asyncio.wait_for(self._queue.get(), timeout=IDLE_SECS)
            except asyncio.TimeoutError:
                await self._stop(number)  # idle: give its memory back
                continue
            if job is None:
                return
            try:
                outcome = await self._answer(number, job)
            except Exception as exc:  # the process died or spoke nonsense: this request fails, not the daemon
                await self._stop(number)
                log.error("analysis process failed", extra={"attr": {"conn": job.connection.connection_id,
                                                                     "error": type(exc).__name__}})
                outcome = failed(job.frame, 1, "markd internal error: the analysis process exited",
                                 "InternalError", "InternalError")
            if not job.done.done():
                job.done.set_result(outcome)
            job.frame = b""
            await self._maybe_recycle(number)

    async def _answer(self, number: int, job: _Job) -> Outcome:
        process = self._processes.get(number) or await self._start(number)
        child = process.child
        assert child.stdin is not None and child.stdout is not None
        peer = job.connection.peer.encode("utf-8", "replace")
        child.stdin.write(worker.REQUEST_HEADER.pack(len(job.frame), job.connection.connection_id,
                                                     int(job.connection.is_local), len(peer)) + peer)
        child.stdin.write(job.frame)
        await child.stdin.drain()
        size = worker.ANSWER_HEADER.unpack(await child.stdout.readexactly(worker.ANSWER_HEADER.size))[0]
        kind, value = pickle.loads(await child.stdout.readexactly(size))  # our own child: a trusted pipe
        process.jobs += 1
        if kind == "MemoryError":
            return failed(job.frame, 146, "markd ran out of memory analysing this command",
                          "ExceededMemoryLimit", "ExceededMemoryLimit")
        assert isinstance(value, Outcome)
        return value

    async def _start(self, number: int) -> _Process:
        environment = {**os.environ, worker.CONFIG_ENV: json.dumps(self.config, default=str)}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "markd.worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=environment, limit=1024 * 1024)
        process = _Process(child)
        self._processes[number] = process
        self.started += 1
        log.info("analysis process started", extra={"attr": {"pid": child.pid}})
        return process

    async def _maybe_recycle(self, number: int) -> None:
        process = self._processes.get(number)
        if process is None:
            return
        rss = _rss_bytes(process.child.pid)
        if rss > RECYCLE_RSS_BYTES:
            self.recycled += 1
            log.info("analysis process recycled", extra={"attr": {"pid": process.child.pid, "rssBytes": rss}})
            await self._stop(number)

    async def _stop(self, number: int) -> None:
        process = self._processes.pop(number, None)
        if process is None:
            return
        child = process.child
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), timeout=2.0)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
