"""markd as drivers spawn it: found on PATH as `mongocryptd`, one daemon per pid file however many
processes start at once, and gone again after the idle timeout."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.encryption_options import AutoEncryptionOpts

from tests.support.fake_mongod import FakeMongod
from tests.support.process import (
    BIN_DIR,
    PATIENCE,
    MarkdProcess,
    assert_markd_answered_insert,
    encrypted_insert,
    free_port,
    poll_until,
    ssn_schema,
    wait_for_port,
)

KMS = {"local": {"key": os.urandom(96)}}


def _pid_state(pid: int) -> str | None:
    """The process state letter from /proc (None when gone); a zombie ("Z") has exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _wait_gone(pid: int, timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _pid_state(pid) in (None, "Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def private_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="markd-spawn-") as directory:
        yield Path(directory)


def test_pymongo_spawns_markd_from_path_and_marks_through_it(private_dir, monkeypatch):
    # As in an application's venv: PATH leads to bin/mongocryptd, which is markd.
    monkeypatch.setenv("PATH", f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    port = free_port()
    pidfile = private_dir / "mongocryptd.pid"
    logfile = private_dir / "markd.log"
    spawn_args = [f"--port={port}", f"--pidfilepath={pidfile}", f"--unixSocketPrefix={private_dir}",
                  f"--logpath={logfile}", "-v"]
    with FakeMongod() as mongod:
        key_id = mongod.create_data_key(KMS)
        opts = AutoEncryptionOpts(KMS, "keyvault.datakeys", schema_map={"db.coll": ssn_schema(key_id)},
                                  mongocryptd_uri=f"mongodb://127.0.0.1:{port}", mongocryptd_spawn_args=spawn_args)
        assert opts._mongocryptd_spawn_args[-1] == "--idleShutdownTimeoutSecs=60"  # pymongo's own addition
        daemon_pid = None
        try:
            with MongoClient(mongod.uri, auto_encryption_opts=opts, serverSelectionTimeoutMS=10000) as client:
                plaintext = "987-65-4321"
                error = encrypted_insert(client, {"ssn": plaintext})
                daemon_pid = json.loads(pidfile.read_text())["pid"]
                inserted = [c.body["documents"][0] for c in mongod.received("insert") if c.database == "db"]
                with MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=30_000) as markd_client:
                    assert_markd_answered_insert(markd_client, error, inserted, plaintext)
                    options = markd_client.admin.command("getCmdLineOpts")
            # Spawned by pymongo, not by this test: the daemon runs the venv's mongocryptd script.
            assert options["argv"] == ["mongocryptd", *spawn_args]
            assert options["parsed"]["processManagement"]["idleShutdownTimeoutSecs"] == 60
            cmdline = Path(f"/proc/{daemon_pid}/cmdline").read_bytes().split(b"\0")
            assert str(BIN_DIR / "mongocryptd").encode() in cmdline
            log = logfile.read_text()
            assert "markd started" in log and "command=insert ns=db.coll" in log
        finally:
            if daemon_pid is not None:
                os.kill(daemon_pid, signal.SIGTERM)
                assert _wait_gone(daemon_pid)
        assert not pidfile.exists()
        assert not (private_dir / "mongocryptd.sock").exists()


def test_two_daemons_racing_for_one_pid_file(private_dir):
    port = free_port()
    shared = ["--pidfilepath", str(private_dir / "shared.pid"), "--unixSocketPrefix", str(private_dir)]
    first = MarkdProcess(args=[*shared, "--logpath", str(private_dir / "first.log")], port=port, wait=False)
    second = MarkdProcess(args=[*shared, "--logpath", str(private_dir / "second.log")], port=port, wait=False)
    try:
        first.start()
        second.start()
        processes = {"first": first, "second": second}
        poll_until(lambda: any(p.process.poll() is not None for p in processes.values()), "one of the two to exit")
        exited = [name for name, p in processes.items() if p.process.poll() is not None]
        assert len(exited) == 1, "exactly one of the two must give way"
        loser = exited[0]
        winner = "second" if loser == "first" else "first"
        assert processes[loser].process.returncode == 0
        assert "another markd is already serving; exiting" in (private_dir / f"{loser}.log").read_text()
        wait_for_port(port)
        assert processes[winner].process.poll() is None
        content = json.loads((private_dir / "shared.pid").read_text())
        assert content["pid"] == processes[winner].process.pid and content["port"] == port
    finally:
        first.stop()
        second.stop()


def test_eight_spawned_at_once_leave_exactly_one(private_dir):
    port = free_port()
    args = ["--pidfilepath", str(private_dir / "mongocryptd.pid"), "--unixSocketPrefix", str(private_dir),
            "--logpath", str(private_dir / "markd.log"), "--logappend"]
    daemons = [MarkdProcess(args=args, port=port, wait=False) for _ in range(8)]
    try:
        for daemon in daemons:
            daemon.start()
        # Each loser exits only after it has lost the lock, so once seven have exited none is left to race.
        poll_until(lambda: sum(d.process.poll() is None for d in daemons) <= 1, "seven of the eight to exit")
        alive = [d for d in daemons if d.process.poll() is None]
        assert len(alive) == 1
        assert all(d.process.returncode == 0 for d in daemons if d is not alive[0])
        wait_for_port(port)
        assert alive[0].process.poll() is None
        assert json.loads((private_dir / "mongocryptd.pid").read_text())["pid"] == alive[0].process.pid
        log = (private_dir / "markd.log").read_text()
        assert log.count("another markd is already serving; exiting") == 7
        assert log.count("markd started") == 1
    finally:
        for daemon in daemons:
            daemon.stop()


def test_idle_shutdown_fires_after_the_timeout(private_dir):
    with MarkdProcess(args=["--idleShutdownTimeoutSecs=1.5"]) as daemon:
        started = time.monotonic()
        with daemon.client() as client:
            client.admin.command("ping")
        assert daemon.exit_code() == 0
        # Not before the timeout after the last command (load can only make it later).
        assert time.monotonic() - started >= 1.5 - 0.2  # uvloop's clock has millisecond steps
        assert "idle shutdown" in daemon.log_text()
        assert not daemon.pidfile.exists()
        assert not daemon.socket_path.exists()


def test_idle_shutdown_waits_while_a_client_keeps_sending():
    """Commands every 50 ms for longer than the 2 s idle timeout keep markd up; it stops 2 s after the last."""
    with MarkdProcess(args=["--idleShutdownTimeoutSecs=2"]) as daemon:
        with daemon.client() as client:
            until = time.monotonic() + 3
            while True:
                last_sent = time.monotonic()
                client.admin.command("ping")
                if last_sent > until:
                    break
                time.sleep(0.05)
            assert daemon.process.poll() is None, "markd shut down while a client was sending commands"
        assert daemon.exit_code() == 0
        assert time.monotonic() - last_sent >= 2 - 0.2
