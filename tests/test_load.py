"""Load: 1,000 concurrent connections with mixed valid and invalid traffic against a real markd.

A fixed amount of work, not a duration: every connection sends MARKD_LOAD_ROUNDS requests (8) once all
of them are open. `python -m tests.fuzz.run_long --load` runs the 60 s soak.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.fuzz.core import known_crash
from tests.fuzz.load import raise_fd_limit, run_load
from tests.support.process import MarkdProcess

CONNECTIONS = int(os.environ.get("MARKD_LOAD_CONNECTIONS", "1000"))
ROUNDS = int(os.environ.get("MARKD_LOAD_ROUNDS", "8"))


@pytest.fixture
def quiet_markd():
    raise_fd_limit(CONNECTIONS * 2 + 256)  # markd inherits the limit
    workdir = Path(tempfile.mkdtemp(prefix="markd-load-"))
    # No -v: per-command debug lines would measure the log file, not markd.
    with MarkdProcess(workdir=workdir, args=["--logpath", str(workdir / "markd.log")]) as process:
        yield process


def test_thousand_connections_mixed_traffic(quiet_markd):
    assert quiet_markd.process is not None
    report = run_load(quiet_markd.port, quiet_markd.process.pid, connections=CONNECTIONS, rounds=ROUNDS)
    print(report.summary())
    assert report.errors == [], report.errors[:10]
    # InternalError replies may only come from bad inputs, and only from known findings (xfail tests elsewhere).
    unknown = [frame for frame in report.crash_frames if known_crash(frame) is None]
    assert unknown == [], f"new InternalError findings: {unknown[:3]}"
    assert report.valid_sent > CONNECTIONS and report.valid_ok == report.valid_sent
    assert report.invalid_sent > 0 and report.invalid_answered > 0 and report.invalid_closed > 0
    assert report.concurrent_peak >= CONNECTIONS
    assert report.fd_peak >= report.fd_baseline + CONNECTIONS * 0.9  # the connections really were open at once
    assert report.fd_end <= report.fd_baseline, "markd kept file descriptors after every client closed"
    assert quiet_markd.process.poll() is None, "markd died under load"
