"""The asyncio layer: listeners, one thin Protocol per connection, idle and signal shutdown.

Everything that decides what to answer lives in the sans-IO core (`markd.wire`, `markd.commands`,
`markd.analysis`); this module only moves bytes and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import ssl
import stat
import time
import traceback
from typing import Any

import bson
from bson.errors import InvalidBSON

import markd
from markd import bsonvalues, logs
from markd.analysis import MARKING_COMMANDS
from markd.commands import UNKNOWN_COMMAND, ConnectionInfo, Dispatcher
from markd.config import Settings
from markd.errors import CommandError
from markd.logs import log
from markd.metrics import Metrics
from markd.pidfile import PidFile, PidFileLocked
from markd.wire import (
    FrameReader,
    OpMsg,
    OpQuery,
    ProtocolError,
    encode_op_msg,
    encode_op_reply,
    parse_message,
)

_HANDSHAKE_NAMES = ("hello", "isMaster", "ismaster")
# Stop reading from a client whose replies pile up unread beyond this.
_WRITE_HIGH_WATER = 4 * 1024 * 1024
# At shutdown: how long requests already sent get to be read and answered, and the hard limit.
_GRACE_SECS = 0.05
_DRAIN_SECS = 5.0
_STACK_FRAMES = 12


class AlreadyRunning(Exception):
    """Another markd holds the pid file, the port or the socket: this one is not needed."""


def _command_name(command: dict[str, Any]) -> str:
    return next(iter(command), "")


def _namespace(command: dict[str, Any]) -> str:
    name = _command_name(command)
    target = command.get(name)
    database = command.get("$db", "")
    if name == "explain" and isinstance(target, dict):
        inner = _command_name(target)
        database = target.get("$db", database)
        target = target.get(inner)
    return f"{database}.{target}" if isinstance(target, str) else str(database)


class MarkdProtocol(asyncio.Protocol):
    """One client connection: frames in, replies out, with back-pressure both ways."""

    def __init__(self, server: MarkdServer) -> None:
        self.server = server
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.info = ConnectionInfo(0, "", True)
        self._reading_paused = False
        self._writing_paused = False
        self._frame_timer: asyncio.TimerHandle | None = None

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        server = self.server
        peer = transport.get_extra_info("peername")
        peer_text, is_local = _describe_peer(peer)
        self.info = ConnectionInfo(server.next_connection_id(), peer_text, is_local)
        if len(server.connections) >= server.settings.max_conns:
            log.warning("connection refused because too many open connections",
                        extra={"attr": {"limit": server.settings.max_conns, "remote": peer_text}})
            transport.abort()
            return
        server.connections.add(self)
        server.metrics.connection_opened()
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        log.debug("connection accepted", extra={"attr": {"conn": self.info.connection_id, "remote": peer_text}})

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.server.metrics.connection_closed()
        self._cancel_frame_timer()
        log.debug("connection ended", extra={"attr": {"conn": self.info.connection_id}})

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            frames = self.reader.feed(data)
        except ProtocolError as exc:
            self._drop(str(exc))
            return
        for frame in frames:
            if transport.is_closing():
                return
            try:
                reply = self.server.handle_frame(frame, self.info)
            except ProtocolError as exc:
                self._drop(str(exc))
                return
            except Exception as exc:  # a bug must cost this connection, never the daemon
                log.error("internal error while reading a message",
                          extra={"attr": {"conn": self.info.connection_id, **_where(exc)}})
                self._drop("internal error")
                return
            if reply:
                transport.write(reply)
        if frames:
            # The half-sent-frame clock starts again with each frame the client finishes.
            self._cancel_frame_timer()
        self._arm_frame_timer()

    @property
    def busy(self) -> bool:
        """A frame half received or a reply not yet flushed: shutdown waits for it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        return bool(self.reader.pending or transport.get_write_buffer_size())

    # helpers -----------------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        log.info("closing connection after a bad message",
                 extra={"attr": {"conn": self.info.connection_id, "reason": reason}})
        self.server.metrics.protocol_error()
        if self.transport is not None:
            self.transport.abort()

    def _arm_frame_timer(self) -> None:
        """A client that sends part of a frame and stalls is dropped after frame_timeout_secs."""
        if self.reader.pending:
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
        if self.reader.pending:
            self._drop(f"incomplete message for {self.server.settings.frame_timeout_secs:g}s")


def _where(exc: BaseException) -> dict[str, str]:
    """An exception's type and stack, without its message: messages may quote a document's values."""
    frames = traceback.extract_tb(exc.__traceback__)[-_STACK_FRAMES:]  # the innermost: where it broke
    return {"error": type(exc).__name__,
            "stack": " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in reversed(frames))}


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
    """Holds the listeners, the dispatcher and the shutdown machinery."""

    def __init__(self, settings: Settings, argv: list[str], parsed_options: dict[str, Any],
                 pidfile: PidFile | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(argv=argv, parsed_options=parsed_options, on_shutdown=self.request_shutdown,
                                     extra_commands={"getMarkdMetrics": self.metrics.command_reply})
        self.connections: set[MarkdProtocol] = set()
        self.servers: list[asyncio.AbstractServer] = []
        # The CLI takes the pid file before it opens the log, so a losing racer never truncates the winner's log.
        self.pidfile = pidfile or (PidFile(settings.pidfile) if settings.pidfile else None)
        self.socket_path: str | None = None
        self.last_activity = time.monotonic()
        self._connection_ids = 0
        self._stop: asyncio.Event | None = None
        self.stop_reason = ""

    def next_connection_id(self) -> int:
        self._connection_ids += 1
        return self._connection_ids

    # the pure-ish core call --------------------------------------------------------------------
    def handle_frame(self, frame: bytes, connection: ConnectionInfo) -> bytes | None:
        """One frame in, the reply frame (or None for moreToCome) out."""
        self.last_activity = time.monotonic()
        message = parse_message(frame)
        started = time.perf_counter()
        if isinstance(message, OpQuery):
            return self._handle_op_query(message, connection)
        assert isinstance(message, OpMsg)
        name = "?"
        namespace = ""
        outcome = "ok"
        try:
            if message.error is not None:
                raise message.error
            command = message.command
            name = self.dispatcher.reported_name(_command_name(command))
            namespace = _namespace(command) if name != UNKNOWN_COMMAND else str(command.get("$db", ""))
            if "$db" not in command:
                raise CommandError(40571, "OP_MSG requests require a $db argument")
            reply = self.dispatcher.handle(command, connection)
            body = bsonvalues.encode(reply)
        except CommandError as exc:
            outcome = exc.code_name
            body = bson.encode(exc.to_reply())
        except InvalidBSON as exc:
            outcome = "InvalidBSON"
            body = bson.encode(CommandError(22, str(exc)).to_reply())
        except Exception as exc:  # a bug must cost one command, never the daemon
            log.error("internal error while handling a command", extra={"attr": {"command": name, **_where(exc)}})
            outcome = "InternalError"
            body = bson.encode(CommandError(1, f"markd internal error: {type(exc).__name__}").to_reply())
        elapsed = time.perf_counter() - started
        self.metrics.command_done(name, outcome, elapsed, marking=name in MARKING_COMMANDS)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("command", extra={"attr": {
                "conn": connection.connection_id, "command": name, "ns": namespace, "outcome": outcome,
                "durationMicros": int(elapsed * 1e6), "requestBytes": len(frame), "replyBytes": len(body)}})
        if message.more_to_come:
            return None
        return encode_op_msg(message.request_id, body)

    def _handle_op_query(self, message: OpQuery, connection: ConnectionInfo) -> bytes:
        try:
            query = bsonvalues.decode(message.query)
        except InvalidBSON as exc:
            raise ProtocolError("invalid OP_QUERY: InvalidBSON") from exc
        # Drivers wrap a legacy command with read preference as {$query: {...}}.
        if "$query" in query and isinstance(query["$query"], dict):
            query = query["$query"]
        name = self.dispatcher.reported_name(_command_name(query))
        if message.collection.endswith(".$cmd") and name in _HANDSHAKE_NAMES:
            reply = self.dispatcher.handle(query, connection)
            self.metrics.command_done(name, "ok")
        else:
            reply = CommandError(
                352,
                f"Unsupported OP_QUERY command: {_command_name(query)}. The client driver may require an upgrade. "
                "For more details see https://dochub.mongodb.org/core/legacy-opcode-removal",
                "UnsupportedOpQueryCommand",
            ).to_reply()
            self.metrics.command_done(name, "UnsupportedOpQueryCommand")
        return encode_op_reply(message.request_id, bson.encode(reply))

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
        try:
            ssl_context = _ssl_context(settings)
            for address in _resolve(settings.listen_addresses, settings.ipv6):
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                try:
                    server = await loop.create_server(
                        lambda: MarkdProtocol(self), host=address, port=settings.port, family=family,
                        reuse_address=True, ssl=ssl_context, backlog=1024,
                    )
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise AlreadyRunning(f"address {address}:{settings.port} is already in use") from exc
                    raise
                self.servers.append(server)
            if settings.socket_path:
                self.servers.append(await self._listen_unix(settings.socket_path))
            if settings.metrics_port is not None:
                self.servers.append(await loop.create_server(
                    lambda: MetricsHttpProtocol(self.metrics), host=settings.listen_addresses[0],
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

    @property
    def bound_addresses(self) -> list[str]:
        """The IP addresses the command listeners actually bound (hostnames resolved)."""
        return [str(sock.getsockname()[0]) for server in self.servers for sock in server.sockets
                if sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.getsockname()[1] != self.settings.metrics_port]

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
                raise AlreadyRunning(f"unix socket {path} is in use by another process")
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
        idle_task = asyncio.create_task(self._watch_idle()) if self.settings.idle_shutdown_secs > 0 else None
        log.info("markd started", extra={"attr": {
            "version": markd.__version__, "pid": os.getpid(), "port": self.bound_port,
            "addresses": ",".join(self.settings.listen_addresses), "unixSocket": self.socket_path or "",
            "idleShutdownTimeoutSecs": self.settings.idle_shutdown_secs,
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
        log.info("shutting down", extra={"attr": {"reason": self.stop_reason}})
        self._close_listeners()
        # Requests a client finished sending before the signal sit in socket buffers: a short grace
        # lets the loop read and answer them; a frame still arriving gets until the deadline.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DRAIN_SECS
        await asyncio.sleep(_GRACE_SECS)
        while loop.time() < deadline and any(connection.busy for connection in self.connections):
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        await self._wait_listeners_closed()
        if self.socket_path:
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        if self.pidfile is not None:
            self.pidfile.release()
        log.info("markd stopped")


class MetricsHttpProtocol(asyncio.Protocol):
    """`GET /metrics` answers Prometheus text; anything else 404. One request per connection."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
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
        if parts[0] == b"GET" and path == b"/metrics":
            status, body = b"200 OK", self.metrics.prometheus_text().encode()
        else:
            status, body = b"404 Not Found", b"not found\n"
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
    context.load_cert_chain(settings.tls_certificate_key_file)
    if settings.tls_ca_file:
        context.load_verify_locations(settings.tls_ca_file)
        context.verify_mode = (
            ssl.CERT_OPTIONAL if settings.tls_allow_connections_without_certificates else ssl.CERT_REQUIRED
        )
    return context


def run(settings: Settings, argv: list[str], parsed_options: dict[str, Any], pidfile: PidFile | None = None) -> int:
    """Run the daemon to completion; the process exit code."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        runner = asyncio.run

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
