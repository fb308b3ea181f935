"""Closed-loop load over real sockets: N connections, each sends a frame, waits for the whole reply, repeats.

The client is an asyncio Protocol on uvloop in the benchmark's own process. It never decodes a
reply: it reads the 16-byte header for the length and peeks at the first element to count
`{ok: 0}` error replies. On a 2-core machine the client and the server share the CPUs, so
numbers are relative: compare markd with the floor measured by the same client in the same run.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import procstat

_HEADER = struct.Struct("<iiii")
_ERROR_PREFIX_DOUBLE = b"\x01ok\x00" + struct.pack("<d", 0.0)
_ERROR_PREFIX_INT32 = b"\x10ok\x00" + struct.pack("<i", 0)
_PEEK = 48  # bytes of each reply kept: header, flags, section kind, document length, first element


@dataclass
class LoadResult:
    connections: int
    seconds: float
    completed: int
    error_replies: int
    latencies_ns: list[int]
    server_cpu_seconds: float
    client_cpu_seconds: float
    server_rss_max_kb: int
    reply_bytes: int
    other_cpu_cores: float  # CPU busy on the machine beyond server and client (other processes), in cores

    @property
    def commands_per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def server_cpu_us_per_command(self) -> float:
        return self.server_cpu_seconds * 1e6 / self.completed if self.completed else 0.0

    def percentile_us(self, fraction: float) -> float:
        if not self.latencies_ns:
            return 0.0
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        return ordered[index] / 1000.0


@dataclass
class _Window:
    """What all connections of one run share: whether to keep going and whether to record."""

    running: bool = True
    recording: bool = False
    completed: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    reply_bytes: int = 0
    idle: asyncio.Event | None = None
    outstanding: int = 0


class ClosedLoopConnection(asyncio.Protocol):
    def __init__(self, request: bytes, window: _Window, setup_frame: bytes | None) -> None:
        self.request = request
        self.window = window
        self.setup_frame = setup_frame
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.received = 0
        self.expected = 0
        self.sent_at = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.setup_frame is not None:
            self.transport.write(self.setup_frame)  # no reply: the floor's control frame
        self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed"))
        if self.in_flight:
            self.in_flight = False
            self._finished()

    def send(self) -> None:
        assert self.transport is not None
        self.in_flight = True
        self.window.outstanding += 1
        self.received = 0
        self.expected = 0
        self.head.clear()
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        head = self.head
        if len(head) < _PEEK:
            head += data[: _PEEK - len(head)]
        self.received += len(data)
        if not self.expected and len(head) >= 16:
            self.expected = _HEADER.unpack_from(head)[0]
        if not self.expected or self.received < self.expected:
            return
        now = time.perf_counter_ns()
        window = self.window
        self.in_flight = False
        if window.recording:
            window.completed += 1
            window.latencies_ns.append(now - self.sent_at)
            element = bytes(head[25:37])
            if element == _ERROR_PREFIX_DOUBLE or element[:8] == _ERROR_PREFIX_INT32:
                window.errors += 1
        window.reply_bytes = self.expected
        if window.running:
            window.outstanding -= 1
            self.send()
        else:
            self._finished()

    def _finished(self) -> None:
        window = self.window
        window.outstanding -= 1
        if window.outstanding <= 0 and window.idle is not None:
            window.idle.set()


async def open_connections(port: int, count: int, factory: Callable[[], asyncio.Protocol],
                           batch: int = 64) -> list[tuple[asyncio.Transport, asyncio.Protocol]]:
    loop = asyncio.get_running_loop()
    opened: list[tuple[asyncio.Transport, asyncio.Protocol]] = []
    for start in range(0, count, batch):
        results = await asyncio.gather(*(loop.create_connection(factory, "127.0.0.1", port)
                                         for _ in range(min(batch, count - start))))
        opened.extend(results)  # type: ignore[arg-type]
    return opened


async def closed_loop(port: int, request: bytes, connections: int, seconds: float, warmup: float,
                      server_pid: int, setup_frame: bytes | None = None) -> LoadResult:
    """Run `connections` closed loops for warmup + seconds; record only the last `seconds`."""
    window = _Window(idle=asyncio.Event())
    pairs = await open_connections(port, connections, lambda: ClosedLoopConnection(request, window, setup_frame))
    protocols = [protocol for _transport, protocol in pairs]
    for protocol in protocols:
        assert isinstance(protocol, ClosedLoopConnection)
        await protocol.ready
        protocol.send()
    await asyncio.sleep(warmup)
    rss_max = 0
    # markd's whole tree: its workers (--workers) and analysis processes (large requests) work for it.
    cpu_before = procstat.tree_cpu_seconds(server_pid)
    client_before = os.times()
    machine_before = procstat.machine_busy_seconds()
    started = time.perf_counter()
    window.recording = True
    deadline = started + seconds
    while True:
        rss_max = max(rss_max, procstat.rss_kb(server_pid))
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        await asyncio.sleep(min(0.05, remaining))
    window.recording = False
    elapsed = time.perf_counter() - started
    cpu_after = procstat.tree_cpu_seconds(server_pid)
    client_after = os.times()
    machine_after = procstat.machine_busy_seconds()
    window.running = False
    if window.outstanding > 0:
        try:
            await asyncio.wait_for(window.idle.wait(), timeout=30)  # type: ignore[union-attr]
        except asyncio.TimeoutError:
            pass
    for transport, _protocol in pairs:
        transport.close()
    await asyncio.sleep(0)
    server_cpu = cpu_after - cpu_before
    client_cpu = (client_after.user + client_after.system) - (client_before.user + client_before.system)
    return LoadResult(
        connections=connections,
        seconds=elapsed,
        completed=window.completed,
        error_replies=window.errors,
        latencies_ns=window.latencies_ns,
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=client_cpu,
        server_rss_max_kb=rss_max,
        reply_bytes=window.reply_bytes,
        other_cpu_cores=max(0.0, (machine_after - machine_before - server_cpu - client_cpu) / elapsed),
    )


class _IdleConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.expected = 0

    def data_received(self, data: bytes) -> None:
        if not self.expected and len(data) >= 4:
            self.expected = int.from_bytes(data[:4], "little", signed=True)
        self.received += len(data)
        if self.expected and self.received >= self.expected and not self.replied.done():
            self.replied.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.replied.done():
            self.replied.set_exception(exc or ConnectionError("closed"))


async def idle_connections_rss(port: int, count: int, hello: bytes, server_pid: int) -> tuple[int, int]:
    """(RSS before, RSS with `count` open connections that each completed one hello), in KB."""
    await asyncio.sleep(0.2)
    before = procstat.rss_kb(server_pid)
    pairs = await open_connections(port, count, _IdleConnection)
    for transport, _protocol in pairs:
        transport.write(hello)
    await asyncio.gather(*(protocol.replied for _transport, protocol in pairs))  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    during = procstat.rss_kb(server_pid)
    for transport, _protocol in pairs:
        transport.close()
    await asyncio.sleep(0.1)
    return before, during


async def one_reply(port: int, request: bytes, setup_frame: bytes | None = None, timeout: float = 60.0) -> bytes:
    """Send one frame, return the whole reply frame."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        try:
            if setup_frame is not None:
                writer.write(setup_frame)
            writer.write(request)
            await writer.drain()
            header = await reader.readexactly(16)
            length = _HEADER.unpack_from(header)[0]
            return header + await reader.readexactly(length - 16)
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)


def merge(results: list[LoadResult]) -> LoadResult:
    """Several rounds of the same measurement as one."""
    seconds = sum(r.seconds for r in results)
    return LoadResult(
        connections=results[0].connections,
        seconds=seconds,
        completed=sum(r.completed for r in results),
        error_replies=sum(r.error_replies for r in results),
        latencies_ns=[latency for r in results for latency in r.latencies_ns],
        server_cpu_seconds=sum(r.server_cpu_seconds for r in results),
        client_cpu_seconds=sum(r.client_cpu_seconds for r in results),
        server_rss_max_kb=max(r.server_rss_max_kb for r in results),
        reply_bytes=results[-1].reply_bytes,
        other_cpu_cores=sum(r.other_cpu_cores * r.seconds for r in results) / seconds if seconds else 0.0,
    )
