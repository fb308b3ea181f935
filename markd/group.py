"""`--workers N`: N processes serving one port, under one supervisor (issue 15).

One markd process uses one core. With `--workers N` the process the CLI started becomes a supervisor:

- it holds the pid file (its own pid in it), binds every listener, and warms the analysis once; then
  it forks N workers from that warm state (each a full `MarkdServer` with its own event loop, in-flight
  budget, connection limit and analysis processes; see `worker_settings` for how they are sized);
- it accepts every connection itself and hands it to the next worker in turn, with its file
  descriptor over the worker's control socket (SCM_RIGHTS). A listener shared by forked accept loops
  lets one process take a whole burst of connections (8 clients, 8 to 0), and SO_REUSEPORT would also
  let a second markd bind the same port silently; handing them over spreads them evenly and keeps
  "address in use" meaning "another markd is serving";
- it keeps the group's one idle-shutdown clock (each worker reports when it last answered a command),
  gathers the workers' metrics for whichever worker (or metrics connection) asks, restarts a worker
  that dies (forked again from the same warm state, after a back-off if it keeps dying), and stops
  the group on SIGTERM/SIGINT, the shutdown command (a worker asks), idleness, or a lost worker
  that cannot be restarted.

The supervisor never runs an event loop: it is a single-threaded `selectors` loop, so forking a
replacement worker from it is safe. A worker whose supervisor disappears (its control socket closes)
stops, like a worker sent SIGTERM: it finishes what it was answering, then exits.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import json
import math
import os
import selectors
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from markd import cache, limits, logs, memory, metrics, warm
from markd.commands import Dispatcher
from markd.config import Settings
from markd.logs import log
from markd.pidfile import PidFile, release_endpoint

if TYPE_CHECKING:
    from markd.server import MarkdServer

# A worker that dies this soon after it started is restarted after a growing delay (a crash loop must
# not fork as fast as it can); one that lived longer is restarted at once.
_HEALTHY_SECS = 10.0
_RESTART_DELAYS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)
_IDLE_CHECK_SECS = 1.0
_GATHER_SECS = 2.0  # how long a metrics request waits for the workers' figures
_STOP_SECS = 8.0  # how long stopping workers get before SIGKILL (their own drain is 5 s)
_MESSAGE_BYTES = 1 << 20  # largest control message (a worker's metrics snapshot is a few KB)
_ACCEPT_BATCH = 64
_FDS_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)  # room for a few descriptors per packet


def worker_settings(settings: Settings) -> Settings:
    """One worker's share of the group's limits: the in-flight budget and an explicit --maxConns are
    divided between the workers (the group holds what one markd would); each worker starts analysis
    processes as it needs them, at most its share of --analysisProcesses rounded up (so one each by
    default, started only by a large request); each keeps its own schema caches (--schemaCacheMB each:
    a schema is parsed once per worker that sees it)."""
    workers = settings.workers
    return settings.with_overrides(
        in_flight_budget_mb=max(1, settings.in_flight_budget_mb // workers),
        max_conns=math.ceil(settings.max_conns / workers) if settings.max_conns is not None else None,
        analysis_processes=math.ceil(settings.analysis_processes / workers),
    )


# -- the control channel ----------------------------------------------------------------------------
# One SOCK_SEQPACKET socket pair per worker: one JSON object per packet (message boundaries kept, and a
# handed-over connection's descriptor travels with its own packet).
#   supervisor -> worker: {"op": "conn", "kind": "tcp"|"unix"|"metrics", "id": n} + one fd,
#                         {"op": "snapshot", "id": g}, {"op": "gathered", "id": k, "snapshot": {...}}
#   worker -> supervisor: {"op": "snapshot", "id": g, "snapshot": {...}}, {"op": "gather", "id": k},
#                         {"op": "active", "at": monotonic seconds}, {"op": "stop", "reason": text}


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode()


def _receive(channel: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One packet and the descriptors it carries; (None, []) at end of stream. BlockingIOError if none."""
    data, ancillary, _flags, _address = channel.recvmsg(_MESSAGE_BYTES, _FDS_SPACE)
    descriptors: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            descriptors.extend(received)
    if not data:
        for descriptor in descriptors:
            os.close(descriptor)
        return None, []
    return json.loads(data), descriptors


class WorkerLink:
    """A worker's end of its control socket, in its event loop."""

    def __init__(self, channel: socket.socket, index: int, configured: int) -> None:
        self.channel = channel
        self.index = index
        self.configured = configured
        self.server: MarkdServer | None = None
        self._outgoing: list[bytes] = []
        self._writing = False
        self._gathers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_gather = 0
        self._reported_activity = 0.0

    def attach(self, server: MarkdServer) -> None:
        self.server = server
        self.channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.channel.fileno())
            loop.remove_writer(self.channel.fileno())
        for future in self._gathers.values():
            if not future.done():
                future.cancel()
        self.channel.close()

    # what the server asks -----------------------------------------------------------------------
    async def gather(self) -> dict[str, Any]:
        """The group's metrics, summed by the supervisor from every worker's figures."""
        self._next_gather += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._gathers[self._next_gather] = future
        self.send({"op": "gather", "id": self._next_gather})
        try:
            return await asyncio.wait_for(future, _GATHER_SECS + 1.0)
        finally:
            self._gathers.pop(self._next_gather, None)

    def report_activity(self, at: float) -> None:
        if at != self._reported_activity:
            self._reported_activity = at
            self.send({"op": "active", "at": at})

    def request_stop(self, reason: str) -> None:
        self.send({"op": "stop", "reason": reason})

    # the socket ---------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self._outgoing.append(_encode(message))
        self._flush()

    def _flush(self) -> None:
        while self._outgoing:
            try:
                self.channel.send(self._outgoing[0])
            except BlockingIOError:
                if not self._writing:
                    self._writing = True
                    asyncio.get_running_loop().add_writer(self.channel.fileno(), self._writable)
                return
            except OSError:
                self._outgoing.clear()
                return
            self._outgoing.pop(0)

    def _writable(self) -> None:
        self._writing = False
        asyncio.get_running_loop().remove_writer(self.channel.fileno())
        self._flush()

    def _readable(self) -> None:
        server = self.server
        assert server is not None
        while True:
            try:
                message, descriptors = _receive(self.channel)
            except BlockingIOError:
                return
            except OSError:
                message, descriptors = None, []
            if message is None:  # the supervisor is gone: stop, as for SIGTERM
                asyncio.get_running_loop().remove_reader(self.channel.fileno())
                server.request_shutdown("supervisor gone")
                return
            operation = message.get("op")
            if operation == "conn" and descriptors:
                for extra in descriptors[1:]:
                    os.close(extra)
                server.adopt(socket.socket(fileno=descriptors[0]), str(message.get("kind")), int(message["id"]))
                continue
            for descriptor in descriptors:
                os.close(descriptor)
            if operation == "snapshot":
                self.send({"op": "snapshot", "id": message["id"], "snapshot": server.metrics.snapshot()})
            elif operation == "gathered":
                future = self._gathers.get(int(message["id"]))
                if future is not None and not future.done():
                    future.set_result(message["snapshot"])


# -- the supervisor ---------------------------------------------------------------------------------


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.channel: socket.socket | None = None
        self.started = 0.0
        self.failures = 0  # deaths in a row soon after starting
        self.restart_at: float | None = None
        self.last_activity = 0.0


class _Gather:
    def __init__(self, requester: int, request_id: int, waiting: set[int], deadline: float) -> None:
        self.requester = requester
        self.request_id = request_id
        self.waiting = waiting
        self.snapshots: list[dict[str, Any]] = []
        self.deadline = deadline


class Supervisor:
    """The process that holds the pid file and the listeners, and keeps N workers running."""

    def __init__(self, settings: Settings, argv: list[str], parsed_options: dict[str, Any],
                 pidfile: PidFile | None = None) -> None:
        self.settings = settings
        self.argv = argv
        self.parsed_options = parsed_options
        self.pidfile = pidfile or (PidFile(settings.pidfile) if settings.pidfile else None)
        self.workers = [_Worker(index) for index in range(settings.workers)]
        self.listeners: dict[int, tuple[socket.socket, str]] = {}  # fd -> (socket, kind)
        self.selector = selectors.DefaultSelector()
        self.socket_path: str | None = None
        self.started = time.monotonic()
        self.last_activity = self.started
        self.stopping = False
        self.stop_reason = ""
        self.restarts = 0
        self.connections = 0
        self._turn = 0
        self._gathers: dict[int, _Gather] = {}
        self._next_gather = 0
        self._signals: list[int] = []
        self._wakeup_read, self._wakeup_write = os.pipe()

    # start ------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; the process exit code."""
        from markd.server import AlreadyRunning

        settings = self.settings
        memory.tune_allocator()
        sys.setrecursionlimit(max(sys.getrecursionlimit(), limits.RECURSION_LIMIT))
        cache.configure(max_bytes=settings.schema_cache_mb * 1024 * 1024)
        self._install_signals()
        if self.pidfile is not None:
            try:
                self.pidfile.acquire()
            except Exception as exc:
                log.info("another markd is already serving; exiting",
                         extra={"attr": {"reason": f"pid file {exc} is locked by another process"}})
                return 0
        # Warm once, before listening: every worker is forked from this state, as is every replacement.
        try:
            warmed = warm.warm_up(Dispatcher(argv=self.argv, parsed_options=self.parsed_options,
                                             shutdown_enabled=not settings.disable_shutdown_command))
        except Exception as exc:  # a bug here must not stop markd serving, only leave it cold
            log.error("warm-up failed", extra={"attr": {"error": type(exc).__name__}})
            warmed = 0.0
        try:
            self._bind()
        except AlreadyRunning as exc:
            self._close_listeners()
            if self.pidfile is not None:
                self.pidfile.release()
            log.info("another markd is already serving; exiting", extra={"attr": {"reason": str(exc)}})
            return 0
        except BaseException:
            self._close_listeners()
            if self.pidfile is not None:
                self.pidfile.release()
            raise
        for worker in self.workers:
            self._spawn(worker)
        if self.pidfile is not None:
            self.pidfile.write(self.port, self.socket_path)
        from markd.server import notify_systemd

        log.info("markd started", extra={"attr": {
            "version": __import__("markd").__version__, "pid": os.getpid(), "port": self.port,
            "addresses": ",".join(settings.listen_addresses), "unixSocket": self.socket_path or "",
            "idleShutdownTimeoutSecs": settings.idle_shutdown_secs, "workers": settings.workers,
            "workerPids": ",".join(str(worker.pid) for worker in self.workers),
            "inFlightBudgetMB": settings.in_flight_budget_mb, "warmUpMicros": int(warmed * 1e6),
            "tls": settings.tls_mode, "metricsPort": settings.metrics_port or ""}})
        notify_systemd("READY=1", f"STATUS=serving on port {self.port} with {settings.workers} workers",
                       f"MAINPID={os.getpid()}")
        try:
            self._loop()
        finally:
            notify_systemd("STOPPING=1", f"STATUS=stopping: {self.stop_reason}")
            self._shutdown()
        return 0

    @property
    def port(self) -> int:
        for sock, kind in self.listeners.values():
            if kind == "tcp":
                return int(sock.getsockname()[1])
        return self.settings.port

    def _bind(self) -> None:
        """The listeners, as MarkdServer.start binds them: a port or socket held by another cryptd is
        AlreadyRunning (exit 0), held by anything else PortInUse."""
        from markd.server import _resolve, _socket_is_live

        settings = self.settings
        tls = settings.tls_mode not in ("disabled", "", None)
        for address in _resolve(settings.listen_addresses, settings.ipv6):
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            self._listen(family, (address, settings.port), "tcp",
                         lambda address=address: _holder("port", f"{address}:{settings.port}", host=address,
                                                         port=settings.port, tls=tls))
        if settings.socket_path:
            path = settings.socket_path
            if os.path.exists(path):
                if _socket_is_live(path):
                    raise _holder("unix socket", path, socket_path=path)
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)
            self._listen(socket.AF_UNIX, path, "unix", lambda: _holder("unix socket", path, socket_path=path))
            os.chmod(path, settings.unix_socket_permissions)
            self.socket_path = path
        if settings.metrics_port is not None:
            self._listen(socket.AF_INET6 if ":" in settings.metrics_bind_ip else socket.AF_INET,
                         (settings.metrics_bind_ip, settings.metrics_port), "metrics", None)

    def _listen(self, family: int, address: Any, kind: str, held: Callable[[], Exception] | None) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and held is not None:
                    raise held() from exc
                raise
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.listeners[sock.fileno()] = (sock, kind)

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_write, False)
        signal.set_wakeup_fd(self._wakeup_write)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    # workers ----------------------------------------------------------------------------------------
    def _spawn(self, worker: _Worker) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                parent_end.close()
                self._become_worker(worker.index)
                code = worker_main(child_end, worker.index, self.settings, self.argv, self.parsed_options)
            except BaseException as exc:  # never return into the supervisor's loop
                with contextlib.suppress(Exception):
                    log.error("worker failed", extra={"attr": {"error": type(exc).__name__}})
            finally:
                os._exit(code)
        child_end.close()
        parent_end.setblocking(False)
        worker.pid, worker.channel, worker.started, worker.restart_at = pid, parent_end, time.monotonic(), None
        worker.last_activity = 0.0
        self.selector.register(parent_end, selectors.EVENT_READ, ("worker", worker))

    def _become_worker(self, index: int) -> None:
        """In a freshly forked worker: drop everything that is the supervisor's."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        # Ctrl-C (and `systemctl kill -s USR1`) reach every process of the group: the supervisor decides
        # for SIGINT, and rotates the log for SIGUSR1 (then tells the workers to reopen it with SIGHUP).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self.selector.close()
        for sock, _kind in self.listeners.values():
            sock.close()
        for other in self.workers:
            if other.channel is not None:
                other.channel.close()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)
        if self.pidfile is not None:
            self.pidfile.detach()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue
            self._lost(worker, status)

    def _lost(self, worker: _Worker, status: int) -> None:
        if worker.channel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.channel)
            worker.channel.close()
            worker.channel = None
        pid, worker.pid = worker.pid, 0
        for gather in self._gathers.values():
            gather.waiting.discard(worker.index)
        if self.stopping:
            return
        lived = time.monotonic() - worker.started
        worker.failures = 0 if lived >= _HEALTHY_SECS else worker.failures + 1
        delay = _RESTART_DELAYS[min(worker.failures, len(_RESTART_DELAYS) - 1)]
        worker.restart_at = time.monotonic() + delay
        cause = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                 else f"exit code {os.WEXITSTATUS(status)}")
        log.warning("worker exited; restarting it", extra={"attr": {
            "worker": worker.index, "pid": pid, "cause": cause, "restartInSecs": delay}})

    # the loop ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        selector = self.selector
        for sock, kind in self.listeners.values():
            selector.register(sock, selectors.EVENT_READ, ("listener", kind))
        selector.register(self._wakeup_read, selectors.EVENT_READ, ("signals", None))
        next_idle_check = time.monotonic() + _IDLE_CHECK_SECS
        while not self.stopping:
            now = time.monotonic()
            timeout = next_idle_check - now
            for worker in self.workers:
                if worker.restart_at is not None:
                    timeout = min(timeout, worker.restart_at - now)
            for gather in self._gathers.values():
                timeout = min(timeout, gather.deadline - now)
            for key, _mask in selector.select(max(timeout, 0.0)):
                role, detail = key.data
                if role == "listener":
                    self._accept(key.fileobj, detail)  # type: ignore[arg-type]
                elif role == "worker":
                    self._from_worker(detail)
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wakeup_read, 512)
            self._handle_signals()
            self._reap()
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None and now >= worker.restart_at and not self.stopping:
                    self.restarts += 1
                    self._spawn(worker)
            for gather_id in [g for g, gather in self._gathers.items() if not gather.waiting or now >= gather.deadline]:
                self._answer_gather(gather_id)
            if now >= next_idle_check:
                next_idle_check = now + _IDLE_CHECK_SECS
                self._check_idle(now)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                logs.reopen("SIGHUP")
                self._tell_workers(signal.SIGHUP)
            elif signum == signal.SIGUSR1:
                logs.rotate(self.settings.log_rotate, "SIGUSR1")
                self._tell_workers(signal.SIGHUP)  # they reopen the file the supervisor rotated to

    def _tell_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signum)

    def _check_idle(self, now: float) -> None:
        timeout = self.settings.idle_shutdown_secs
        if timeout > 0 and now - self.last_activity >= timeout:
            log.info("idle shutdown", extra={"attr": {"idleShutdownTimeoutSecs": timeout}})
            self.stop("idle timeout")

    def stop(self, reason: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason

    # connections ------------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket, kind: str) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                connection, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, a connection reset before it was accepted...
                log.warning("accept failed", extra={"attr": {"error": exc.strerror or str(exc)}})
                return
            try:
                self._hand_over(connection, kind)
            finally:
                connection.close()  # the worker has its own descriptor now (or the client is refused)

    def _hand_over(self, connection: socket.socket, kind: str) -> None:
        live = [worker for worker in self.workers if worker.channel is not None]
        self.connections += 1
        for attempt in range(len(live)):
            worker = live[(self._turn + attempt) % len(live)]
            assert worker.channel is not None
            message = _encode({"op": "conn", "kind": kind, "id": self.connections})
            try:
                worker.channel.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", [connection.fileno()]))])
            except OSError:
                continue  # that worker cannot take it now (dying, or its queue is full): the next one
            self._turn = (self._turn + attempt + 1) % len(live)
            return
        log.warning("no worker could take a connection; closed it", extra={"attr": {"kind": kind}})

    # messages from workers --------------------------------------------------------------------------
    def _from_worker(self, worker: _Worker) -> None:
        while worker.channel is not None:
            try:
                message, descriptors = _receive(worker.channel)
            except BlockingIOError:
                return
            except OSError:
                message, descriptors = None, []
            for descriptor in descriptors:
                os.close(descriptor)
            if message is None:  # it is exiting: _reap will see it go
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(worker.channel)
                return
            operation = message.get("op")
            if operation == "active":
                worker.last_activity = float(message["at"])
                self.last_activity = max(self.last_activity, worker.last_activity)
            elif operation == "gather":
                self._start_gather(worker.index, int(message["id"]))
            elif operation == "snapshot":
                gather = self._gathers.get(int(message["id"]))
                if gather is not None and worker.index in gather.waiting:
                    gather.waiting.discard(worker.index)
                    gather.snapshots.append(message["snapshot"])
            elif operation == "stop":
                log.info("terminating: a worker asked the group to stop",
                         extra={"attr": {"worker": worker.index, "reason": str(message.get("reason"))}})
                self.stop(str(message.get("reason", "worker")))

    def _start_gather(self, requester: int, request_id: int) -> None:
        self._next_gather += 1
        live = {worker.index for worker in self.workers if worker.channel is not None}
        self._gathers[self._next_gather] = _Gather(requester, request_id, set(live),
                                                   time.monotonic() + _GATHER_SECS)
        for worker in self.workers:
            if worker.index in live:
                self._send(worker, {"op": "snapshot", "id": self._next_gather})

    def _answer_gather(self, gather_id: int) -> None:
        gather = self._gathers.pop(gather_id)
        total = metrics.summed(gather.snapshots)
        total["uptimeSecs"] = time.monotonic() - self.started
        total["workers"] = {
            "configured": len(self.workers), "running": sum(1 for w in self.workers if w.pid),
            "reporting": len(gather.snapshots), "restarts": self.restarts,
            "pids": [worker.pid for worker in self.workers if worker.pid],
            "connectionsPerWorker": [snapshot.get("connections", {}).get("current", 0)
                                     for snapshot in gather.snapshots],
        }
        requester = self.workers[gather.requester]
        self._send(requester, {"op": "gathered", "id": gather.request_id, "snapshot": total})

    def _send(self, worker: _Worker, message: dict[str, Any]) -> None:
        if worker.channel is None:
            return
        try:
            worker.channel.send(_encode(message))
        except OSError:  # full or gone: the gather times out without it, _reap sees a death
            pass

    # stop -------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        log.info("shutting down", extra={"attr": {"reason": self.stop_reason}})
        self._close_listeners()
        self._tell_workers(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_SECS
        while any(worker.pid for worker in self.workers) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for worker in self.workers:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
        while any(worker.pid for worker in self.workers):
            self._reap()
            time.sleep(0.01)
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.close()
        release_endpoint(self.socket_path, self.pidfile)
        log.info("markd stopped")

    def _close_listeners(self) -> None:
        for sock, _kind in self.listeners.values():
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()
        self.listeners.clear()


def _holder(kind: str, where: str, **target: Any) -> Exception:
    """markd.server._held_by, without an event loop (the supervisor has none)."""
    from markd import healthcheck
    from markd.server import _PEER_PROBE_SECS, AlreadyRunning, PortInUse

    if healthcheck.answers_as_cryptd(timeout=_PEER_PROBE_SECS, **target):
        return AlreadyRunning(f"{kind} {where} is served by another cryptd")
    return PortInUse(f"{kind} in use by another process ({where})")


def worker_main(channel: socket.socket, index: int, settings: Settings, argv: list[str],
                parsed_options: dict[str, Any]) -> int:
    """A worker: a MarkdServer fed connections by the supervisor, until it is told (or left) to stop."""
    from markd.server import MarkdServer, event_loop_runner

    link = WorkerLink(channel, index, settings.workers)

    async def main() -> int:
        server = MarkdServer(worker_settings(settings), argv, parsed_options, pidfile=None, link=link)
        await server.start()
        await server.serve()
        return 0

    runner: Callable[..., int] = event_loop_runner()
    return runner(main())


def run(settings: Settings, argv: list[str], parsed_options: dict[str, Any], pidfile: PidFile | None = None) -> int:
    return Supervisor(settings, argv, parsed_options, pidfile).run()
