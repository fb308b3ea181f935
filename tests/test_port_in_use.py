"""A busy port or socket: only another cryptd (the pid file lock, or a peer answering hello with
iscryptd: true) means "another markd is already serving" (exit 0); any other process holding it is
"in use by another process" (exit 48, as mongod when it cannot listen), with real foreign listeners."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from markd.cli import EXIT_NET_ERROR
from tests.support.fake_mongod import FakeMongod
from tests.support.process import MONGOCRYPTD, PATIENCE, MarkdProcess, RawConnection

ANOTHER_MARKD = "another markd is already serving; exiting"


def run_markd(port: int, workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A markd with its own pid file, socket directory and log, run to its exit."""
    argv = [MONGOCRYPTD, f"--port={port}", "--pidfilepath", str(workdir / "second.pid"),
            "--unixSocketPrefix", str(workdir), "--logpath", str(workdir / "second.log"), *extra]
    # Generous: a silent listener costs markd its whole hello probe before it gives up.
    return subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=120)


def assert_refused_as_foreign(result: subprocess.CompletedProcess[str], workdir: Path, what: str) -> None:
    assert result.returncode == EXIT_NET_ERROR, (result.returncode, result.stderr)
    assert f"{what} in use by another process" in result.stderr, result.stderr
    log = (workdir / "second.log").read_text()
    assert f"{what} in use by another process" in log and ANOTHER_MARKD not in log
    assert "Traceback" not in result.stderr + log
    assert not (workdir / "second.pid").exists(), "the pid file must go with the daemon that could not start"


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """Some other program's TCP port: listening, never answering."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def test_port_held_by_a_silent_program(silent_listener, tmp_path):
    result = run_markd(silent_listener, tmp_path)
    assert_refused_as_foreign(result, tmp_path, "port")
    assert not (tmp_path / "mongocryptd.sock").exists()


def test_port_held_by_a_mongod(tmp_path):
    """A server that speaks the protocol but is no cryptd (hello without iscryptd) is not another markd."""
    with FakeMongod() as mongod:
        result = run_markd(mongod.port, tmp_path)
        assert_refused_as_foreign(result, tmp_path, "port")
        assert any(c.body.get("hello") for c in mongod.received("hello")), "markd should have asked who it is"


def test_unix_socket_held_by_another_program(tmp_path):
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "mongocryptd.sock"))
        listener.listen(8)
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = int(free.getsockname()[1])
        result = run_markd(port, tmp_path)
    assert_refused_as_foreign(result, tmp_path, "unix socket")


def test_port_held_by_another_markd_with_its_own_pid_file(tmp_path):
    """No shared lock, but the peer answers hello with iscryptd: true: this one is not needed."""
    with MarkdProcess() as first:
        result = run_markd(first.port, tmp_path)
        assert result.returncode == 0, result.stderr
        assert ANOTHER_MARKD in (tmp_path / "second.log").read_text()
        assert "served by another cryptd" in (tmp_path / "second.log").read_text()
        with RawConnection(first.port) as connection:  # the first is untouched
            assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
    assert not (tmp_path / "second.pid").exists()


def test_pid_file_held_by_another_markd(tmp_path):
    with MarkdProcess() as first:
        argv = [MONGOCRYPTD, "--port=0", "--pidfilepath", str(first.pidfile), "--unixSocketPrefix", str(tmp_path),
                "--logpath", str(tmp_path / "second.log")]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE)
        assert result.returncode == 0, result.stderr
        assert ANOTHER_MARKD in (tmp_path / "second.log").read_text()
        assert "is locked by another process" in (tmp_path / "second.log").read_text()
        assert first.pidfile_content()["pid"] == first.process.pid
