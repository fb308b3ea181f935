"""--workers N (issue 15): N processes serving one port under one supervisor: connections handed out in
turn, one pid file, one idle-shutdown clock, metrics summed, a worker that dies restarted."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.process import MarkdProcess, RawConnection, free_port, op_msg_frame, ssn_schema

PING = op_msg_frame({"ping": 1, "$db": "admin"})
METRICS = op_msg_frame({"getMarkdMetrics": 1, "$db": "admin"})


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                    text = stat.read()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                children.append(int(entry))
    return children


def _metrics(port: int) -> dict[str, object]:
    with RawConnection(port) as connection:
        connection.send(METRICS)
        return connection.read_reply().document


def _poll(condition, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def group() -> Iterator[MarkdProcess]:
    with MarkdProcess(args=["--workers=2"]) as process:
        yield process


def test_two_workers_share_the_port_and_the_connections(group):
    assert group.process is not None
    pidfile = json.loads(group.pidfile.read_text())
    assert pidfile["pid"] == group.process.pid and pidfile["port"] == group.port  # one pid file: the supervisor's
    workers = _poll(lambda: len(_children(group.process.pid)) == 2 and _children(group.process.pid))
    connections = [RawConnection(group.port) for _ in range(8)]
    try:
        for connection in connections:
            connection.send(PING)
            assert connection.read_reply().document["ok"] == 1
        summary = _metrics(group.port)
        assert sorted(summary["workers"]["pids"]) == sorted(workers)
        # Handed out in turn: 8 connections (and the one asking) spread evenly, not 8 to one.
        assert sorted(summary["workers"]["connectionsPerWorker"]) == [4, 5]
        # Summed: every worker's pings, whichever worker was asked.
        pings = sum(row["count"] for row in summary["commands"] if row["command"] == "ping")
        assert pings == 8 and summary["connections"]["current"] == 9
    finally:
        for connection in connections:
            connection.close()


def test_marking_works_in_every_worker(group):
    schema = ssn_schema(__import__("bson").binary.Binary(os.urandom(16), 4))
    command = {"find": "people", "filter": {"ssn": "123"}, "jsonSchema": schema, "isRemoteSchema": False,
               "$db": "db"}
    for _ in range(4):  # connections alternate between the two workers
        with RawConnection(group.port) as connection:
            connection.send(op_msg_frame(command))
            assert connection.read_reply().document["hasEncryptionPlaceholders"] is True


def test_a_dead_worker_is_restarted(group):
    assert group.process is not None
    first = _poll(lambda: len(_children(group.process.pid)) == 2 and _children(group.process.pid))
    os.kill(first[0], signal.SIGKILL)
    replaced = _poll(lambda: (len(set(_children(group.process.pid)) - {first[0]}) == 2
                              and _children(group.process.pid)))
    assert first[0] not in replaced
    for _ in range(4):
        with RawConnection(group.port) as connection:
            connection.send(PING)
            assert connection.read_reply().document["ok"] == 1
    summary = _poll(lambda: (lambda m: m if m["workers"]["restarts"] == 1 and m["workers"]["reporting"] == 2
                             else None)(_metrics(group.port)))
    assert summary["workers"]["running"] == 2
    assert "worker exited; restarting it" in group.log_text()


def test_sigterm_to_the_supervisor_stops_every_worker():
    process = MarkdProcess(args=["--workers=3"]).start()
    try:
        assert process.process is not None
        workers = _poll(lambda: len(_children(process.process.pid)) == 3 and _children(process.process.pid))
        process.process.send_signal(signal.SIGTERM)
        assert process.exit_code() == 0
        for pid in workers:
            assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
        assert not process.pidfile.exists() and not process.socket_path.exists()
    finally:
        process.cleanup()


def test_the_shutdown_command_stops_the_group(group):
    assert group.process is not None
    with RawConnection(group.port) as connection:
        connection.send(op_msg_frame({"shutdown": 1, "$db": "admin"}))
    assert group.exit_code() == 0
    assert "a worker asked the group to stop" in group.log_text()


def test_one_idle_clock_for_the_group():
    process = MarkdProcess(args=["--workers=2", "--idleShutdownTimeoutSecs=2"]).start()
    try:
        assert process.process is not None
        # Commands on one connection (one worker) keep the whole group up, past the timeout.
        with RawConnection(process.port) as connection:
            until = time.monotonic() + 3.5
            while time.monotonic() < until:
                connection.send(PING)
                assert connection.read_reply().document["ok"] == 1
                time.sleep(0.2)
        assert process.process.poll() is None
        assert process.exit_code(timeout=20) == 0  # then idle: all of it stops
        assert "idle shutdown" in process.log_text()
    finally:
        process.cleanup()


def test_prometheus_metrics_are_summed():
    metrics_port = free_port()
    with MarkdProcess(args=["--workers=2", f"--metricsPort={metrics_port}"]) as process:
        for _ in range(6):
            with RawConnection(process.port) as connection:
                connection.send(PING)
                connection.read_reply()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'markd_commands_total{command="ping",outcome="ok"} 6' in text


def test_workers_from_the_config_file(tmp_path):
    config = tmp_path / "markd.yaml"
    config.write_text("markd:\n  workers: 2\n")
    with MarkdProcess(args=[f"--config={config}"]) as process:
        assert process.process is not None
        _poll(lambda: len(_children(process.process.pid)) == 2)
        assert _metrics(process.port)["workers"]["configured"] == 2


def _command_line(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read()


def test_one_process_by_default(markd):
    # A driver spawns markd without --workers: one process serves, no supervisor, no workers section
    # (its only children, if any, are analysis processes, `python -m markd.worker`, not forked copies).
    assert "workers" not in _metrics(markd.port)
    assert markd.process is not None
    own = _command_line(markd.process.pid)
    assert [child for child in _children(markd.process.pid) if _command_line(child) == own] == []


def test_workers_must_be_positive():
    process = MarkdProcess(args=["--workers=0"], wait=False).start()
    try:
        assert process.exit_code() != 0
    finally:
        process.cleanup()


def test_a_second_group_on_the_port_gives_way(group, tmp_path):
    # The port held by a cryptd: the second one exits 0, as a single markd does (its supervisor probes hello).
    second = MarkdProcess(args=["--workers=2", f"--pidfilepath={tmp_path / 'second.pid'}"], port=group.port,
                          wait=False).start()
    try:
        assert second.exit_code(timeout=30) == 0
        assert "another markd is already serving" in second.log_text()
    finally:
        second.cleanup()
