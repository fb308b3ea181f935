"""Faults (issue 9): clients that vanish mid-frame or mid-reply, SIGTERM under load, a full log disk,
an unopenable log file, and an unwritable pid file directory."""

from __future__ import annotations

import signal
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from pymongo.errors import AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError

from tests.support.process import PATIENCE, MarkdProcess, RawConnection, op_msg_frame, poll_until

PING = op_msg_frame({"ping": 1, "$db": "admin"})
HELLO = op_msg_frame({"hello": 1, "$db": "admin"})


@pytest.fixture(scope="module")
def daemon() -> Iterator[MarkdProcess]:
    with MarkdProcess(args=["--frameTimeoutSecs=5"]) as process:
        yield process


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_mid_frame(daemon, how):
    with RawConnection(daemon.port) as watch:
        baseline, accepted = watch.other_connections(), watch.connections_accepted()
        for n, cut in enumerate((3, 16, len(HELLO) - 1), start=1):
            sock = socket.create_connection(("127.0.0.1", daemon.port))
            sock.sendall(HELLO[:cut])
            # Accepted first: a connection reset in the kernel's accept queue never reaches markd.
            watch.wait_for_accepted(accepted + n)
            if how == "reset":
                _reset(sock)
            else:
                sock.close()
        assert watch.wait_for_other_connections(at_most=baseline) <= baseline
        assert watch.command({"ping": 1, "$db": "admin"})["ok"] == 1
    assert daemon.process.poll() is None


def test_client_gone_mid_reply(daemon):
    """Thousands of pipelined requests, then a reset before reading a byte: markd's writes fail mid-reply."""
    with RawConnection(daemon.port) as watch:
        baseline, accepted = watch.other_connections(), watch.connections_accepted()
        for n in range(1, 4):
            sock = socket.create_connection(("127.0.0.1", daemon.port))
            sock.sendall(HELLO * 20_000)  # about 4 MB of replies: far more than the socket buffers hold
            watch.wait_for_accepted(accepted + n)  # a reset in the accept queue never reaches markd
            _reset(sock)
        assert watch.wait_for_other_connections(at_most=baseline) <= baseline
        assert watch.command({"ping": 1, "$db": "admin"})["ok"] == 1
    assert daemon.process.poll() is None


def test_a_client_that_never_reads_does_not_stall_others(daemon):
    """A hog sends far more requests than every buffer between it and markd can hold as replies, and reads
    none. markd stops reading from it (back-pressure), so the hog's send never completes; meanwhile another
    client is answered."""
    hog = socket.create_connection(("127.0.0.1", daemon.port))
    flood = HELLO * 800_000  # about 44 MB of requests, some 250 MB of replies: no buffer holds that
    sender_done = threading.Event()
    sender_error: list[BaseException] = []

    def send_flood() -> None:
        try:
            hog.sendall(flood)
        except OSError as exc:  # the test's own shutdown below
            sender_error.append(exc)
        sender_done.set()

    sender = threading.Thread(target=send_flood, daemon=True)
    try:
        with RawConnection(daemon.port) as other:
            before = _hello_count(other)
            sender.start()
            # The hog's stream is being answered (its replies are piling up unread) ...
            poll_until(lambda: sender_done.is_set() or _hello_count(other) > before + 2_000,
                       "markd to answer the hog's first requests")
            # ... and the other client is served, ping after ping, while the hog is stuck.
            for i in range(50):
                assert other.command({"ping": 1, "$db": "admin"}, request_id=i + 1)["ok"] == 1
            # The hog's 44 MB can never all be read: its send is stuck, or markd dropped it for leaving its
            # replies unread (--frameTimeoutSecs). A send that completed would mean no back-pressure.
            assert not sender_done.is_set() or sender_error, "markd read all the hog sent: no back-pressure"
    finally:
        hog.shutdown(socket.SHUT_RDWR)  # wakes the blocked sendall
        sender.join(PATIENCE)
        _reset(hog)
    assert daemon.process.poll() is None


def _hello_count(connection: RawConnection) -> int:
    metrics = connection.command({"getMarkdMetrics": 1, "$db": "admin"})
    return sum(row["count"] for row in metrics["commands"] if row["command"] == "hello")


def test_sigterm_answers_requests_already_sent_then_exits_zero():
    with MarkdProcess() as daemon:
        connections = [RawConnection(daemon.port) for _ in range(20)]
        for connection in connections:
            connection.command({"ping": 1, "$db": "admin"})  # accepted and handshaken before the signal
        for connection in connections:
            connection.send(b"".join(op_msg_frame({"ping": 1, "$db": "admin"}, request_id=i) for i in range(1, 101)))
        daemon.process.send_signal(signal.SIGTERM)
        for connection in connections:
            assert [connection.read_reply().response_to for _ in range(100)] == list(range(1, 101))
            assert connection.is_closed_by_peer()
            connection.close()
        assert daemon.exit_code() == 0
        assert not daemon.pidfile.exists() and not daemon.socket_path.exists()


def test_sigterm_waits_for_a_frame_being_received():
    with MarkdProcess() as daemon, RawConnection(daemon.port) as connection:
        # On loopback, sendall returns once the bytes are in markd's socket buffer: markd reads them before it
        # acts on the signal's wakeup or in its first drain pass, so the half frame counts as being received.
        connection.send(PING[:10])
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_for_log("shutting down")
        connection.send(PING[10:])  # markd waits up to 5 s for it: plenty, even on a loaded machine
        assert connection.read_reply().document["ok"] == 1
        assert daemon.exit_code() == 0


def test_sigterm_under_pymongo_load_exits_zero_and_no_reply_is_garbled():
    with MarkdProcess() as daemon:
        failures: list[BaseException] = []
        answered = [0]
        stop = threading.Event()
        signalled = threading.Event()

        def work() -> None:
            with daemon.client(serverSelectionTimeoutMS=10_000, retryReads=False) as client:
                while not stop.is_set():
                    try:
                        reply = client.db.command({"count": "c", "query": {}, "jsonSchema": {},
                                                   "isRemoteSchema": False}, check=False)
                        assert "ok" in reply
                        answered[0] += 1
                    except (AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError) as exc:
                        if not signalled.is_set():  # before the signal nothing may fail
                            failures.append(exc)
                        return  # the daemon went away between requests: expected once it stops
                    except BaseException as exc:
                        failures.append(exc)
                        return

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        # Real load first: a few hundred commands answered.
        poll_until(lambda: answered[0] >= 400 or failures, "the clients to get going")
        signalled.set()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.exit_code() == 0
        stop.set()
        for thread in threads:
            thread.join(PATIENCE)
        assert failures == []


def test_log_disk_full_does_not_stop_the_daemon():
    # Every write to /dev/full fails with ENOSPC, as on a full disk.
    with MarkdProcess(args=["--logpath", "/dev/full", "-v"]) as daemon:
        with daemon.client() as client:
            for _ in range(200):
                assert client.admin.command("ping")["ok"] == 1
        assert daemon.process.poll() is None
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.exit_code() == 0


def test_unopenable_log_file_says_so_on_stderr():
    daemon = MarkdProcess(args=["--logpath", "/dev/null/markd.log"], wait=True).start()
    try:
        with daemon.client() as client:
            client.admin.command("ping")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.exit_code() == 0
        stderr = daemon.process.stderr.read().decode()
        assert "cannot open the log file; logging to stderr instead" in stderr
        assert "markd started" in stderr
    finally:
        daemon.cleanup()


def test_pid_file_directory_unwritable_is_a_clear_startup_error():
    """Not startable without its lock: markd exits 1 (not 0) and says why on stderr and in the log."""
    daemon = MarkdProcess(args=["--pidfilepath", "/dev/null/sub/mongocryptd.pid"], wait=False).start()
    try:
        assert daemon.exit_code() == 1
        stderr = daemon.process.stderr.read().decode()
        assert "cannot open the pid file /dev/null/sub/mongocryptd.pid: Not a directory" in stderr
        assert "--pidfilepath" in stderr
        assert "cannot open the pid file" in daemon.log_text()
        assert "Traceback" not in stderr
        assert not daemon.socket_path.exists()
    finally:
        daemon.cleanup()


def test_default_pid_file_in_a_read_only_working_directory_is_skipped_with_a_warning(tmp_path):
    """A driver spawns markd with the app's working directory; if ./mongocryptd.pid cannot be created there
    markd still serves (warning), since only an explicit --pidfilepath is the operator's promise of a lock."""
    import subprocess

    from tests.support.process import MONGOCRYPTD, free_port, wait_for_port

    port = free_port()
    log = tmp_path / "markd.log"
    process = subprocess.Popen([MONGOCRYPTD, f"--port={port}", "--nounixsocket", "--logpath", str(log)],
                               cwd="/proc", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        with RawConnection(port) as connection:
            assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
        assert "running without a pid file" in log.read_text()
    finally:
        process.terminate()
        assert process.wait(PATIENCE) == 0


def test_log_file_moved_away_is_reopened(tmp_path):
    """logrotate moves the file: markd's next line goes to a new file at --logpath, none is lost to the old inode."""
    log = tmp_path / "markd.log"
    with MarkdProcess(args=["--logpath", str(log), "-v"]) as daemon, daemon.client() as client:
        client.admin.command("ping")
        log.rename(tmp_path / "markd.log.1")
        client.admin.command("buildInfo")
        # markd writes a command's debug line before its reply: the line is there once the reply is.
        assert "command=buildInfo" in log.read_text()
        assert "command=ping" in (tmp_path / "markd.log.1").read_text()
        log.unlink()  # deleted outright: recreated too
        client.admin.command("getCmdLineOpts")
        assert "command=getCmdLineOpts" in log.read_text()


def test_previous_log_is_kept_not_truncated(tmp_path):
    """Without --logappend a restart (say, systemd's after a crash) renames the old log instead of erasing it."""
    log = tmp_path / "markd.log"
    log.write_text("the previous run's last words\n")
    with MarkdProcess(args=["--logpath", str(log)]) as daemon:
        with daemon.client() as client:
            client.admin.command("ping")
    assert "markd started" in log.read_text()
    kept = [path for path in tmp_path.iterdir() if path.name.startswith("markd.log.")]
    assert len(kept) == 1 and kept[0].read_text() == "the previous run's last words\n"
    assert "last words" not in log.read_text()
