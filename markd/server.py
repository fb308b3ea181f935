"""The asyncio layer: listeners, one thin Protocol per connection, fairness, budgets and shutdown.

Everything that decides what to answer lives in the sans-IO core (`markd.core`, `markd.wire`,
`markd.commands`, `markd.analysis`); this module only moves bytes, keeps time and shares the process
fairly between connections:

- Requests up to `INLINE_MAX_BYTES` are answered on the event loop, round-robin between connections,
  at most `SLICE_SECS` of them before the loop looks at its sockets again; one connection's
  pipelined requests are answered in order but interleaved with everyone else's.
- Larger requests (and small ones whose rule patterns overrun their slice) go to the analysis
  processes (`markd.pool`), so one big analysis never blocks the loop nor holds its GIL.
- Every request and reply held counts against one in-flight budget (`--inFlightBudgetMB`); a request
  that does not fit waits, unread, in the kernel's socket buffer. Large requests may use three
  quarters of it, so they cannot starve small ones.
- A client that does not read its replies stops being read and served (back-pressure) and is dropped
  after `--frameTimeoutSecs`; at `--maxConns`, the longest-idle connection makes room for a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import os
import resource
import signal
import socket
import ssl
import stat
import sys
import time
from typing import TYPE_CHECKING, Any

import markd
from markd import cache, core, healthcheck, limits, logs, memory, warm
from markd.analysis.patterns import SliceExpired
from markd.commands import ConnectionInfo, Dispatcher, NeedsServer
from markd.config import Settings
from markd.logs import log
from markd.metrics import Metrics
from markd.pidfile import PidFile, PidFileLocked, release_endpoint
from markd.wire import FrameReader, ProtocolError, frame_cost

if TYPE_CHECKING:
    from markd.group import WorkerLink
    from markd.pool import AnalysisPool

# Requests whose cost (frame_cost) is at most this are answered on the event loop.
INLINE_MAX_BYTES = 16 * 1024
# The most the loop spends answering requests before it polls its sockets again.
SLICE_SECS = 0.002
# Pattern matching an inline request may do before it is handed to an analysis process.
PATTERN_SLICE_SECS = 0.001
# Stop serving (and reading) a client whose replies pile up unread beyond this.
_WRITE_HIGH_WATER = 256 * 1024
# Stop reading a client whose received requests wait unanswered beyond this.
_QUEUE_HIGH_WATER = 1024 * 1024
# Large requests may hold at most this share of the in-flight budget; the rest is for small ones.
_LARGE_SHARE = 0.75
_BUDGET_SWEEP_SECS = 0.25
_LOG_INTERVAL_SECS = 10.0
# maxConns by default: this share of the file descriptor limit (as mongod), which markd raises to
# its hard limit, up to _FD_TARGET.
_CONNS_PER_FD = 0.8
_FD_TARGET = 65_536
# At shutdown: how long requests already sent get to be read and answered, and the hard limit.
_GRACE_SECS = 0.05
_DRAIN_SECS = 5.0
# How long a process holding our port or socket gets to answer hello before it is taken for a stranger.
_PEER_PROBE_SECS = 5.0


class AlreadyRunning(Exception):
    """Another markd (a peer answering hello with iscryptd) holds the pid file, the port or the socket:
    this one is not needed."""


class PortInUse(Exception):
    """The port or the Unix socket is held by a process that is not a cryptd: markd cannot serve."""


async def _held_by(kind: str, where: str, **target: Any) -> Exception:
    """Who holds an address markd could not take: AlreadyRunning for a cryptd, PortInUse for anyone else."""
    if await asyncio.to_thread(healthcheck.answers_as_cryptd, timeout=_PEER_PROBE_SECS, **target):
        return AlreadyRunning(f"{kind} {where} is served by another cryptd")
    return PortInUse(f"{kind} in use by another process ({where})")


def default_max_conns() -> int:
    """What the file descriptor limit allows: its soft limit raised to the hard one (up to _FD_TARGET), 80%."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = _FD_TARGET if hard == resource.RLIM_INFINITY else min(hard, _FD_TARGET)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
    usable = _FD_TARGET if soft == resource.RLIM_INFINITY else soft
    return max(int(usable * _CONNS_PER_FD), 1)


class Throttled:
    """A warning logged at most once per interval, with how many were held back since the last one."""

    def __init__(self, message: str, interval: float = _LOG_INTERVAL_SECS) -> None:
        self.message = message
        self.interval = interval
        self.last = -interval
        self.held_back = 0

    def __call__(self, **attr: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.held_back += 1
            return
        log.warning(self.message, extra={"attr": {**attr, "sinceLastLogged": self.held_back,
                                                  "intervalSecs": self.interval}})
        self.last = now
        self.held_back = 0


class InFlightBudget:
    """Bytes of requests and replies held, against one limit; waiters are admitted in arrival order."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self.used = 0
        self.peak = 0
        self.waits = 0
        self._waiting: collections.OrderedDict[MarkdProtocol, None] = collections.OrderedDict()
        self._admitting = False

    def fits(self, cost: int) -> bool:
        if self.used == 0:
            return True  # a message larger than the whole budget still gets through, alone
        cap = self.limit * _LARGE_SHARE if cost > INLINE_MAX_BYTES else self.limit
        return self.used + cost <= cap

    def take(self, amount: int) -> None:
        self.used += amount
        self.peak = max(self.peak, self.used)

    def give(self, amount: int) -> None:
        self.used -= amount
        if self._waiting and amount > 0:
            self._admit()

    def wait(self, connection: MarkdProtocol) -> None:
        self.waits += 1
        self._waiting[connection] = None

    def forget(self, connection: MarkdProtocol) -> None:
        self._waiting.pop(connection, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _admit(self) -> None:
        # An admitted connection may answer at once and give budget back: no nested pass.
        if self._admitting:
            return
        self._admitting = True
        try:
            self._admit_pass()
        finally:
            self._admitting = False

    def _admit_pass(self) -> None:
        # Small requests first (they never wait long), then large ones in arrival order.
        for small_pass in (True, False):
            for connection in list(self._waiting):
                if connection not in self._waiting:
                    continue
                cost = connection.head_cost()
                if cost is None or (cost <= INLINE_MAX_BYTES) != small_pass:
                    continue
                if not self.fits(cost):
                    if not small_pass:
                        return  # keep arrival order among large requests
                    continue
                del self._waiting[connection]
                connection.admitted(cost)


class MarkdProtocol(asyncio.Protocol):
    """One client connection: frames in (as the budget allows), replies out, in order."""

    def __init__(self, server: MarkdServer, connection_id: int | None = None) -> None:
        self.server = server
        self._given_id = connection_id  # a worker's connections are numbered by the supervisor, group-wide
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.info = ConnectionInfo(0, "", True)
        self.queue: collections.deque[tuple[bytes, int]] = collections.deque()  # admitted, in order
        self.queued_bytes = 0
        # Frames received whole whose declared size the budget cannot take yet (a small zlib frame that
        # inflates to 48 MB): they wait, after `queue`, until it can.
        self.unadmitted: collections.deque[tuple[bytes, int]] = collections.deque()
        self.head_reserved = 0  # budget taken for the frame being received
        self.reply_held = 0  # budget taken for replies not yet flushed to the socket
        self.out: list[bytes] = []
        self.busy = False  # a request of this connection is in an analysis process
        self.active = False  # it has sent a whole request
        self.in_ready = False
        self.closed = False
        self.write_paused = False
        self.waiting_budget = False
        self._reading_paused = False
        self._frame_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        server = self.server
        peer_text, is_local = _describe_peer(transport.get_extra_info("peername"))
        connection_id = self._given_id if self._given_id is not None else server.next_connection_id()
        self.info = ConnectionInfo(connection_id, peer_text, is_local)
        if not server.admit(self):
            transport.abort()
            self.closed = True
            return
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        log.debug("connection accepted", extra={"attr": {"conn": self.info.connection_id, "remote": peer_text}})

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.release(self)
        budget = self.server.budget
        budget.forget(self)
        budget.give(self.queued_bytes + self.head_reserved + self.reply_held)
        self.queue.clear()
        self.unadmitted.clear()
        self.queued_bytes = self.head_reserved = self.reply_held = 0
        self.out.clear()
        self._cancel_frame_timer()
        self._cancel_write_timer()
        log.debug("connection ended", extra={"attr": {"conn": self.info.connection_id}})

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()
        if self._write_timer is None and self.server.settings.frame_timeout_secs > 0:
            self._write_timer = asyncio.get_running_loop().call_later(
                self.server.settings.frame_timeout_secs, self._write_timed_out)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._cancel_write_timer()
        self.sync_reply_held()
        self._update_reading()
        self.server.schedule(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        server = self.server
        server.touch(self)
        budget = server.budget
        try:
            frames = self.reader.feed(data)
            for frame in frames:
                cost = frame_cost(frame) or len(frame)
                if self.head_reserved:  # this frame's bytes were admitted when its header came in
                    budget.give(self.head_reserved)
                    self.head_reserved = 0
                    budget.take(cost)
                elif self.unadmitted or not budget.fits(cost):
                    self.unadmitted.append((frame, cost))
                    if not self.waiting_budget:
                        self.waiting_budget = True
                        budget.wait(self)
                    continue
                else:
                    budget.take(cost)
                self.queue.append((frame, cost))
                self.queued_bytes += cost
            self._admit_head()
        except ProtocolError as exc:
            self.drop(str(exc))
            return
        if frames:
            self.active = True
            # The half-sent-frame clock starts again with each frame the client finishes.
            self._cancel_frame_timer()
        self._arm_frame_timer()
        self._update_reading()
        if frames:
            server.schedule(self)

    # the budget --------------------------------------------------------------------------------
    def head_cost(self) -> int | None:
        """The cost of what this connection waits to have admitted next."""
        if self.unadmitted:
            return self.unadmitted[0][1]
        try:
            return self.reader.head_cost()
        except ProtocolError:
            return None

    def _admit_head(self) -> None:
        """Take budget for the frame being received, or stop reading until it fits."""
        if self.head_reserved or self.waiting_budget or not self.reader.pending:
            return
        cost = self.reader.head_cost()
        if cost is None:
            return
        if self.server.budget.fits(cost):
            self.server.budget.take(cost)
            self.head_reserved = cost
        else:
            self.waiting_budget = True
            self.server.budget.wait(self)

    def admitted(self, cost: int) -> None:
        """The budget has room for the frame this connection waits to receive (or has received)."""
        if self.closed:
            return
        budget = self.server.budget
        budget.take(cost)
        self.waiting_budget = False
        if not self.unadmitted:
            self.head_reserved = cost
            self._update_reading()
            return
        self.queue.append(self.unadmitted.popleft())
        self.queued_bytes += cost
        while self.unadmitted:
            next_cost = self.unadmitted[0][1]
            if not budget.fits(next_cost):
                self.waiting_budget = True
                budget.wait(self)
                break
            budget.take(next_cost)
            self.queue.append(self.unadmitted.popleft())
            self.queued_bytes += next_cost
        if not self.waiting_budget:
            self._admit_head()
        self._update_reading()
        self.server.schedule(self)

    def sync_reply_held(self) -> None:
        """Count the replies still in the transport's buffer against the budget."""
        if self.transport is None or self.closed:
            return
        size = self.transport.get_write_buffer_size()
        if size != self.reply_held:
            delta = size - self.reply_held
            self.reply_held = size
            if delta > 0:
                self.server.budget.take(delta)
            else:
                self.server.budget.give(-delta)
        if size:
            self.server.reply_watch.add(self)
        else:
            self.server.reply_watch.discard(self)

    # serving -----------------------------------------------------------------------------------
    @property
    def servable(self) -> bool:
        return bool(self.queue) and not (self.busy or self.write_paused or self.closed)

    @property
    def idle(self) -> bool:
        """Nothing received, queued, being answered or unsent: safe to close to make room."""
        return not (self.reader.pending or self.queue or self.unadmitted or self.busy or self.out
                    or self.reply_held)

    def serve_one(self) -> None:
        """Answer the next request: here if it is small, else in an analysis process."""
        frame, cost = self.queue.popleft()
        self.queued_bytes -= cost
        server = self.server
        if cost > INLINE_MAX_BYTES and server.offloading:
            self._off_loop(frame, cost)
            return
        try:
            outcome = core.process_frame(frame, self.info, server.dispatcher,
                                         PATTERN_SLICE_SECS if server.offloading else None)
        except SliceExpired:
            self._off_loop(frame, cost)
            return
        self.finish(outcome, cost)

    def _off_loop(self, frame: bytes, cost: int) -> None:
        self.busy = True
        self.queued_bytes += cost  # still held until answered
        self.server.offloaded += 1
        task = asyncio.get_running_loop().create_task(self.server.analysis_pool().run(frame, self.info))
        task.add_done_callback(lambda done: self._answered(done, cost))

    def _answered(self, task: asyncio.Task[core.Outcome], cost: int) -> None:
        self.busy = False
        if self.closed:  # connection_lost already gave back what was queued, this request included
            return
        self.queued_bytes -= cost
        if task.cancelled():
            self.server.budget.give(cost)
            return
        self.finish(task.result(), cost)
        self.flush()
        self._update_reading()
        self.server.schedule(self)

    def finish(self, outcome: core.Outcome, cost: int) -> None:
        server = self.server
        server.last_activity = time.monotonic()
        server.budget.give(cost)
        server.record(outcome, self.info)
        if outcome.close_reason is not None:
            self.drop(outcome.close_reason)
            return
        if outcome.shutdown:
            server.shutdown_command(self)
            return
        if outcome.needs_server:
            if server.link is not None:
                self._answer_for_group(outcome)
                return
            outcome = server.answer_here(outcome)
        if outcome.reply:
            self.out.append(outcome.reply)

    def _answer_for_group(self, outcome: core.Outcome) -> None:
        """getMarkdMetrics in a worker: the whole group's figures, gathered by the supervisor (this
        connection's later requests wait, so replies stay in order)."""
        self.busy = True

        def answered(task: asyncio.Task[dict[str, Any]]) -> None:
            self.busy = False
            if self.closed:
                return
            self.out.append(self.server.group_metrics_reply(outcome, task))
            self.flush()
            self._update_reading()
            self.server.schedule(self)

        asyncio.get_running_loop().create_task(self.server.group_snapshot()).add_done_callback(answered)

    def flush(self) -> None:
        if not self.out or self.closed or self.transport is None:
            self.out.clear()
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out.clear()
        self.transport.write(data)
        self.sync_reply_held()

    @property
    def pending_work(self) -> bool:
        """A frame half received, requests queued or being answered, or a reply not yet flushed."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.closed:
            return False
        return bool(self.reader.pending or self.queue or self.unadmitted or self.busy
                    or transport.get_write_buffer_size())

    # helpers -----------------------------------------------------------------------------------
    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            return
        pause = self.write_paused or self.waiting_budget or self.queued_bytes > _QUEUE_HIGH_WATER
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
            self._cancel_frame_timer()  # markd stopped reading: a half-received frame is not the client's stall
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
            self._arm_frame_timer()

    def drop(self, reason: str) -> None:
        log.info("closing connection after a bad message",
                 extra={"attr": {"conn": self.info.connection_id, "reason": reason}})
        self.server.metrics.protocol_error()
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _arm_frame_timer(self) -> None:
        """A client that sends part of a frame and stalls is dropped after frame_timeout_secs."""
        if self.reader.pending and not self._reading_paused:
            if self._frame_timer is None and self.server.settings.frame_timeout_secs > 0:
                loop = asyncio.get_running_loop()
                self._frame_timer = loop.call_later(self.server.settings.frame_timeout_secs,
                                                    self._frame_timed_out)
        else:
            self._cancel_frame_timer()

    def _cancel_frame_timer(self) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def _frame_timed_out(self) -> None:
        self._frame_timer = None
        if self.reader.pending and not self._reading_paused:
            self.drop(f"incomplete message for {self.server.settings.frame_timeout_secs:g}s")

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if self.write_paused:
            log.info("closing a connection that does not read its replies",
                     extra={"attr": {"conn": self.info.connection_id,
                                     "unreadBytes": self.reply_held,
                                     "secs": self.server.settings.frame_timeout_secs}})
            self.close(abort=True)


def _describe_peer(peer: Any) -> tuple[str, bool]:
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
        try:
            local = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            local = False
        return f"{host}:{peer[1]}", local
    return "unix", True  # a Unix socket peer is on this machine


class MarkdServer:
    """Holds the listeners, the dispatcher, the scheduler, the budget and the shutdown machinery."""

    def __init__(self, settings: Settings, argv: list[str], parsed_options: dict[str, Any],
                 pidfile: PidFile | None = None, link: WorkerLink | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # A worker of a group (--workers N): its supervisor owns the listeners, the pid file, the idle
        # clock, and sums the metrics of every worker.
        self.link = link
        self.dispatcher = Dispatcher(argv=argv, parsed_options=parsed_options,
                                     shutdown_enabled=not settings.disable_shutdown_command,
                                     redact_errors=settings.redact_errors,
                                     extra_commands={"getMarkdMetrics": self._metrics_command})
        self.max_conns = settings.max_conns if settings.max_conns is not None else default_max_conns()
        # Ordered by last activity: the first idle one is the longest idle.
        self.connections: collections.OrderedDict[MarkdProtocol, None] = collections.OrderedDict()
        self.budget = InFlightBudget(settings.in_flight_budget_mb * 1024 * 1024)
        self.reply_watch: set[MarkdProtocol] = set()
        self.ready: collections.deque[MarkdProtocol] = collections.deque()
        # The analysis processes, created with the first large request (markd.pool, and the processes it
        # starts, are not needed before: a driver-spawned markd often never sees one).
        self.offloading = settings.analysis_processes > 0
        self.pool: AnalysisPool | None = None
        self._pool_config = {
            "argv": argv, "parsed": parsed_options, "shutdown_enabled": not settings.disable_shutdown_command,
            "redact_errors": settings.redact_errors,
            "schema_cache_bytes": settings.schema_cache_mb * 1024 * 1024, "server_commands": ["getMarkdMetrics"]}
        self.offloaded = 0
        self.evicted = 0
        self.refused = 0
        self._pumping = False
        self._pump_handle: asyncio.Handle | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._log_refused = Throttled("connection refused because too many open connections")
        self._log_evicted = Throttled("too many open connections: closed the longest-idle one to admit a new one")
        self.metrics.extra = self.resource_snapshot
        self.servers: list[asyncio.AbstractServer] = []
        # The CLI takes the pid file before it opens the log, so a losing racer never truncates the winner's log.
        self.pidfile = None if link is not None else pidfile or (PidFile(settings.pidfile) if settings.pidfile
                                                                 else None)
        self.socket_path: str | None = None
        self.last_activity = time.monotonic()
        self.warm_up_secs = 0.0
        self._ssl: ssl.SSLContext | None = None
        self._connection_ids = 0
        self._stop: asyncio.Event | None = None
        self.stop_reason = ""

    def analysis_pool(self) -> AnalysisPool:
        if self.pool is None:
            from markd.pool import AnalysisPool

            self.pool = AnalysisPool(self.settings.analysis_processes, self._pool_config)
        return self.pool

    def next_connection_id(self) -> int:
        self._connection_ids += 1
        return self._connection_ids

    # connections -------------------------------------------------------------------------------
    def admit(self, connection: MarkdProtocol) -> bool:
        """Make room for a new connection: at the limit, close an idle one (or refuse this one)."""
        if len(self.connections) >= self.max_conns:
            # Connections that never sent a request go first (an idle flood), then the longest idle.
            victim = next((other for other in self.connections if other.idle and not other.active), None)
            victim = victim or next((other for other in self.connections if other.idle), None)
            if victim is None:
                self.refused += 1
                self._log_refused(limit=self.max_conns, remote=connection.info.peer)
                return False
            self.evicted += 1
            self._log_evicted(limit=self.max_conns)
            self.release(victim)
            victim.close(abort=True)
        self.connections[connection] = None
        self.metrics.connection_opened()
        return True

    def release(self, connection: MarkdProtocol) -> None:
        if self.connections.pop(connection, False) is None:
            self.metrics.connection_closed()
        self.reply_watch.discard(connection)

    def touch(self, connection: MarkdProtocol) -> None:
        if connection in self.connections:
            self.connections.move_to_end(connection)

    # the scheduler: round-robin, in slices -----------------------------------------------------
    def schedule(self, connection: MarkdProtocol) -> None:
        if connection.in_ready or not connection.servable:
            return
        connection.in_ready = True
        self.ready.append(connection)
        if not self._pumping and self._pump_handle is None:
            self.pump()

    def pump(self) -> None:
        """Answer ready connections one request at a time, round-robin, for at most SLICE_SECS."""
        self._pump_handle = None
        self._pumping = True
        served: dict[MarkdProtocol, None] = {}
        deadline = time.perf_counter() + SLICE_SECS
        try:
            while self.ready and time.perf_counter() < deadline:
                connection = self.ready.popleft()
                connection.in_ready = False
                if not connection.servable:
                    continue
                connection.serve_one()
                served[connection] = None
                if connection.servable:
                    connection.in_ready = True
                    self.ready.append(connection)
        finally:
            self._pumping = False
        for connection in served:
            connection.flush()
            connection._update_reading()
        if self.ready:
            self._pump_handle = asyncio.get_running_loop().call_soon(self.pump)

    # outcomes ----------------------------------------------------------------------------------
    def record(self, outcome: core.Outcome, connection: ConnectionInfo) -> None:
        if outcome.close_reason is None and not outcome.needs_server:
            self.metrics.command_done(outcome.name, outcome.outcome, outcome.seconds, marking=outcome.marking)
        core.log_outcome(log, outcome, connection)

    def answer_here(self, outcome: core.Outcome) -> core.Outcome:
        """A command an analysis process handed back (getMarkdMetrics): the state is here."""
        self.metrics.command_done(outcome.name, "ok")
        return core.reply_to(outcome, self.metrics.command_reply({}))

    def shutdown_command(self, connection: MarkdProtocol) -> None:
        # As mongocryptd: no reply, the daemon exits (markd still answers what other clients had sent).
        log.info("terminating, shutdown command received", extra={"attr": {"conn": connection.info.connection_id}})
        connection.close()
        if self.link is not None:
            self.link.request_stop("shutdown command")  # the supervisor stops every worker
            return
        self.request_shutdown("shutdown command")

    def _metrics_command(self, command: dict[str, Any]) -> dict[str, Any]:
        if self.link is not None:
            raise NeedsServer  # the group's figures, gathered asynchronously (MarkdProtocol._answer_for_group)
        return self.metrics.command_reply(command)

    async def group_snapshot(self) -> dict[str, Any]:
        """The whole group's metrics (this worker's own if the supervisor does not answer in time)."""
        assert self.link is not None
        try:
            return await self.link.gather()
        except (asyncio.TimeoutError, asyncio.CancelledError, OSError):
            return {**self.metrics.snapshot(), "workers": {"reporting": 1, "configured": self.link.configured}}

    def group_metrics_reply(self, outcome: core.Outcome, task: asyncio.Task[dict[str, Any]]) -> bytes:
        self.metrics.command_done(outcome.name, "ok")
        snapshot = task.result() if not task.cancelled() and task.exception() is None else self.metrics.snapshot()
        return core.reply_to(outcome, {**snapshot, "ok": 1.0}).reply or b""

    def adopt(self, sock: socket.socket, kind: str, connection_id: int) -> None:
        """A connection the supervisor accepted and handed over ("tcp", "unix" or "metrics")."""
        loop = asyncio.get_running_loop()
        protocol: Any
        if kind == "metrics":
            def protocol() -> asyncio.Protocol:
                return MetricsHttpProtocol(self)
        else:
            def protocol() -> asyncio.Protocol:
                return MarkdProtocol(self, connection_id)
        tls = self._ssl if kind == "tcp" else None
        adopted = loop.create_task(loop.connect_accepted_socket(
            protocol, sock, ssl=tls, ssl_handshake_timeout=self.settings.tls_handshake_timeout_secs if tls else None))

        def check(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:  # gone before it was adopted
                sock.close()

        adopted.add_done_callback(check)

    def handle_frame(self, frame: bytes, connection: ConnectionInfo) -> bytes | None:
        """One frame in, the reply frame (or None) out, in line: for tests and tools without sockets."""
        self.last_activity = time.monotonic()
        outcome = core.process_frame(frame, connection, self.dispatcher)
        self.record(outcome, connection)
        if outcome.close_reason is not None:
            raise ProtocolError(outcome.close_reason)
        if outcome.shutdown:
            self.request_shutdown("shutdown command")
            return None
        if outcome.needs_server:
            outcome = self.answer_here(outcome)
        return outcome.reply

    def resource_snapshot(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "inFlight": {"bytes": self.budget.used, "peakBytes": self.budget.peak, "limitBytes": self.budget.limit,
                         "waiting": self.budget.waiting, "waits": self.budget.waits},
            "connectionLimit": {"maxConns": self.max_conns, "evicted": self.evicted, "refused": self.refused},
            "analysisProcesses": {"running": pool.processes if pool else 0, "started": pool.started if pool else 0,
                                  "recycled": pool.recycled if pool else 0, "requests": self.offloaded},
        }

    async def _sweep(self) -> None:
        """Replies drain without telling us: recount them now and then (and give memory back when idle)."""
        trimmed = True
        while True:
            await asyncio.sleep(_BUDGET_SWEEP_SECS)
            for connection in list(self.reply_watch):
                connection.sync_reply_held()
            if self.link is not None:
                self.link.report_activity(self.last_activity)
            if self.budget.used > INLINE_MAX_BYTES * 64:
                trimmed = False
            elif not trimmed and self.budget.used == 0:
                memory.trim()
                trimmed = True

    # lifecycle ---------------------------------------------------------------------------------
    def request_shutdown(self, reason: str = "shutdown command") -> None:
        self.stop_reason = reason
        if self._stop is not None:
            self._stop.set()

    async def start(self) -> None:
        """Take the pid file, bind every listener, write the pid file. AlreadyRunning if not needed."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        memory.tune_allocator()
        sys.setrecursionlimit(max(sys.getrecursionlimit(), limits.RECURSION_LIMIT))
        cache.configure(max_bytes=settings.schema_cache_mb * 1024 * 1024)
        if self.link is not None:
            # A worker: the supervisor bound the listeners, warmed the analysis before forking it, and
            # decides about Ctrl-C (SIGINT) for the group; it rotates the log and sends SIGHUP to reopen it.
            self._ssl = _ssl_context(settings)
            loop.add_signal_handler(signal.SIGTERM, self.request_shutdown, "SIGTERM")
            loop.add_signal_handler(signal.SIGHUP, logs.reopen, "SIGHUP")
            self.link.attach(self)
            self._sweeper = asyncio.create_task(self._sweep())
            return
        # Before anything listens: a signal that arrives once a client can connect must mean a clean stop.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_shutdown, signal.Signals(signum).name)
        # SIGHUP (whose default would kill the daemon) reopens the log file; SIGUSR1 rotates it, as mongod.
        loop.add_signal_handler(signal.SIGHUP, logs.reopen, "SIGHUP")
        loop.add_signal_handler(signal.SIGUSR1, logs.rotate, settings.log_rotate, "SIGUSR1")
        if self.pidfile is not None:
            try:
                self.pidfile.acquire()
            except PidFileLocked as exc:
                raise AlreadyRunning(f"pid file {exc} is locked by another process") from exc
        # Before listening: the analysis imported and exercised, so that the first marking request a
        # driver sends, as soon as it can connect, is answered warm (the pid file is ours already).
        self.warm_up_secs = self._warm_up()
        try:
            ssl_context = _ssl_context(settings)
            for address in _resolve(settings.listen_addresses, settings.ipv6):
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                try:
                    server = await loop.create_server(
                        lambda: MarkdProtocol(self), host=address, port=settings.port, family=family,
                        reuse_address=True, ssl=ssl_context, backlog=1024,
                        ssl_handshake_timeout=settings.tls_handshake_timeout_secs if ssl_context else None,
                    )
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise await _held_by("port", f"{address}:{settings.port}", host=address, port=settings.port,
                                             tls=ssl_context is not None) from exc
                    raise
                self.servers.append(server)
            if settings.socket_path:
                self.servers.append(await self._listen_unix(settings.socket_path))
            if settings.metrics_port is not None:
                self.servers.append(await loop.create_server(
                    lambda: MetricsHttpProtocol(self), host=settings.metrics_bind_ip,
                    port=settings.metrics_port, reuse_address=True))
        except BaseException:
            self._close_listeners()
            await self._wait_listeners_closed()
            if self.pidfile is not None:
                self.pidfile.release()
            raise
        if self.pidfile is not None:
            self.pidfile.write(self.bound_port, self.socket_path)
        for address in self.bound_addresses:
            if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
                log.warning("listening on a non-loopback address: anyone who can reach it can use this daemon",
                            extra={"attr": {"address": address, "tls": settings.tls_mode}})
        for address in self.metrics_addresses:
            if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
                log.warning("metrics port on a non-loopback address: anyone who can reach it can read markd's "
                            "metrics", extra={"attr": {"address": address, "port": settings.metrics_port}})
        self._sweeper = asyncio.create_task(self._sweep())

    def _warm_up(self) -> float:
        try:
            return warm.warm_up(self.dispatcher)
        except Exception as exc:  # a bug here must not stop markd serving, only leave it cold
            log.error("warm-up failed", extra={"attr": core.where(exc)})
            return 0.0

    @property
    def bound_addresses(self) -> list[str]:
        """The IP addresses the command listeners actually bound (hostnames resolved)."""
        return [str(sock.getsockname()[0]) for server in self.servers for sock in server.sockets
                if sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.getsockname()[1] != self.settings.metrics_port]

    @property
    def metrics_addresses(self) -> list[str]:
        return [str(sock.getsockname()[0]) for server in self.servers for sock in server.sockets
                if sock.family in (socket.AF_INET, socket.AF_INET6)
                and self.settings.metrics_port is not None and sock.getsockname()[1] == self.settings.metrics_port]

    @property
    def bound_port(self) -> int:
        for server in self.servers:
            for sock in server.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    return int(sock.getsockname()[1])
        return self.settings.port

    async def _listen_unix(self, path: str) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        if os.path.exists(path):
            if _socket_is_live(path):
                raise await _held_by("unix socket", path, socket_path=path)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
        server = await loop.create_unix_server(lambda: MarkdProtocol(self), path=path, backlog=1024)
        try:
            os.chmod(path, self.settings.unix_socket_permissions)
        except BaseException:
            server.close()
            raise
        self.socket_path = path
        return server

    def _close_listeners(self) -> None:
        """Stop accepting; connections already open stay open."""
        for server in self.servers:
            server.close()

    async def _wait_listeners_closed(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        self.servers.clear()

    async def serve(self) -> str:
        """Run until a signal, the shutdown command or the idle timeout; returns why it stopped."""
        assert self._stop is not None
        if self.link is not None:
            log.debug("worker started", extra={"attr": {"worker": self.link.index, "pid": os.getpid()}})
            await self._stop.wait()
            await self.shutdown()
            return self.stop_reason
        idle_task = asyncio.create_task(self._watch_idle()) if self.settings.idle_shutdown_secs > 0 else None
        log.info("markd started", extra={"attr": {
            "version": markd.__version__, "pid": os.getpid(), "port": self.bound_port,
            "addresses": ",".join(self.settings.listen_addresses), "unixSocket": self.socket_path or "",
            "idleShutdownTimeoutSecs": self.settings.idle_shutdown_secs,
            "maxConns": self.max_conns, "inFlightBudgetMB": self.settings.in_flight_budget_mb,
            "analysisProcesses": self.settings.analysis_processes,
            "warmUpMicros": int(self.warm_up_secs * 1e6),
            "tls": self.settings.tls_mode, "metricsPort": self.settings.metrics_port or ""}})
        notify_systemd("READY=1", f"STATUS=serving on port {self.bound_port}", f"MAINPID={os.getpid()}")
        await self._stop.wait()
        if idle_task is not None:
            idle_task.cancel()
        notify_systemd("STOPPING=1", f"STATUS=stopping: {self.stop_reason}")
        await self.shutdown()
        return self.stop_reason

    async def _watch_idle(self) -> None:
        timeout = self.settings.idle_shutdown_secs
        while True:
            idle = time.monotonic() - self.last_activity
            if idle >= timeout:
                log.info("idle shutdown", extra={"attr": {"idleShutdownTimeoutSecs": timeout}})
                self.request_shutdown("idle timeout")
                return
            await asyncio.sleep(min(timeout - idle + 0.01, 1.0))

    async def shutdown(self) -> None:
        """Stop accepting, answer what is in flight, close connections, clean up files."""
        if self.link is None:
            log.info("shutting down", extra={"attr": {"reason": self.stop_reason}})
        else:  # the supervisor says it for the group
            log.debug("worker shutting down", extra={"attr": {"worker": self.link.index, "reason": self.stop_reason}})
        self._close_listeners()
        # Requests a client finished sending before the signal sit in socket buffers: a short grace
        # lets the loop read and answer them; a frame still arriving gets until the deadline.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DRAIN_SECS
        await asyncio.sleep(_GRACE_SECS)
        while loop.time() < deadline and any(connection.pending_work for connection in self.connections):
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.pool is not None:
            await self.pool.close()
        await self._wait_listeners_closed()
        if self.link is not None:
            self.link.close()
            log.debug("worker stopped", extra={"attr": {"worker": self.link.index}})
            return
        release_endpoint(self.socket_path, self.pidfile)
        log.info("markd stopped")


class MetricsHttpProtocol(asyncio.Protocol):
    """`GET /metrics` answers Prometheus text; anything else 404. One request per connection."""

    def __init__(self, server: MarkdServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.request = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(5.0, transport.abort)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.request += data
        if b"\r\n\r\n" not in self.request:
            if len(self.request) > 8192:
                self.transport.abort()
            return
        parts = bytes(self.request).split(b" ", 2)
        path = parts[1].split(b"?")[0] if len(parts) > 2 else b""
        self.request.clear()
        if parts[0] == b"GET" and path == b"/metrics":
            if self.server.link is not None:  # a worker: the group's figures
                task = asyncio.get_running_loop().create_task(self.server.group_snapshot())
                task.add_done_callback(lambda done: self._respond(
                    b"200 OK", self.server.metrics.prometheus_text(
                        done.result() if not done.cancelled() and done.exception() is None else None).encode()))
                return
            self._respond(b"200 OK", self.server.metrics.prometheus_text().encode())
        else:
            self._respond(b"404 Not Found", b"not found\n")

    def _respond(self, status: bytes, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        self.transport.close()


def _resolve(addresses: tuple[str, ...], ipv6: bool) -> list[str]:
    """Each IP once: hostnames resolved (IPv4 only unless --ipv6, as mongod), duplicates dropped, so
    "127.0.0.1,localhost" binds one socket instead of failing on its own port."""
    resolved: list[str] = []
    for address in addresses:
        try:
            ipaddress.ip_address(address.split("%")[0])
            candidates = [address]
        except ValueError:
            family = socket.AF_UNSPEC if ipv6 else socket.AF_INET
            infos = socket.getaddrinfo(address, None, family=family, type=socket.SOCK_STREAM)
            candidates = [str(info[4][0]) for info in infos]
        resolved += [candidate for candidate in candidates if candidate not in resolved]
    return resolved


def notify_systemd(*lines: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path, or '@' for the abstract
    namespace). Not under systemd's Type=notify: nothing to do. Never fatal."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("ignoring NOTIFY_SOCKET: neither a path nor an abstract address",
                    extra={"attr": {"notifySocket": address}})
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(2.0)
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd", extra={"attr": {"notifySocket": address.replace("\0", "@"),
                                                             "error": exc.strerror or str(exc)}})
        return False
    return True


def _socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_mode in ("disabled", "", None):
        return None
    if settings.tls_mode != "requireTLS":
        raise ValueError(f"unsupported tlsMode {settings.tls_mode!r}: use disabled or requireTLS")
    if not settings.tls_certificate_key_file:
        raise ValueError("--tlsMode requireTLS needs --tlsCertificateKeyFile")
    # A bare server context: create_default_context would also trust the system CAs for client certificates.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_certificate_key_file, password=settings.tls_certificate_key_file_password)
    if settings.tls_ca_file:
        context.load_verify_locations(settings.tls_ca_file)
        context.verify_mode = (
            ssl.CERT_OPTIONAL if settings.tls_allow_connections_without_certificates else ssl.CERT_REQUIRED
        )
    return context


def event_loop_runner() -> Any:
    """uvloop.run where uvloop is installed, else asyncio.run."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        return asyncio.run


def run(settings: Settings, argv: list[str], parsed_options: dict[str, Any], pidfile: PidFile | None = None) -> int:
    """Run the daemon to completion; the process exit code."""
    if settings.workers > 1:
        from markd import group

        return group.run(settings, argv, parsed_options, pidfile)
    runner = event_loop_runner()

    async def main() -> int:
        server = MarkdServer(settings, argv, parsed_options, pidfile)
        try:
            await server.start()
        except AlreadyRunning as exc:
            log.info("another markd is already serving; exiting", extra={"attr": {"reason": str(exc)}})
            return 0
        await server.serve()
        return 0

    return runner(main())
