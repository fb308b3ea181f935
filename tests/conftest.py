"""Shared fixtures: one real markd process per test session, clients to it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from pymongo import MongoClient

from tests.support import plaintext_watch
from tests.support.process import MarkdProcess

# Nothing in hypothesis may judge by the clock either: no per-example deadline, no "too slow" health check
# (both fire on a loaded machine). Every test's own settings() inherits this.
settings.register_profile("markd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# CI runs the property tests on a fixed sequence of examples, so a red run is reproducible; runs by
# hand (and tests/fuzz/run_long.py) keep exploring new ones.
settings.register_profile("ci", parent=settings.get_profile("markd"), derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "markd")

# Before any client exists: every command any test sends is watched for values that reach a markd log.
plaintext_watch.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The whole run's markd logs hold none of the values the run sent (issue 7)."""
    if plaintext_watch.findings:
        lines = [f"  {log}: {value!r}" for log, value in plaintext_watch.findings[:20]]
        print("\nPLAINTEXT IN MARKD LOGS:\n" + "\n".join(lines))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif exitstatus == 0:
        print(f"\nplaintext watch: {len(plaintext_watch.sent_values)} values sent, none in any markd log")


@pytest.fixture(scope="session")
def markd() -> Iterator[MarkdProcess]:
    with MarkdProcess() as process:
        yield process


@pytest.fixture(scope="session")
def client(markd: MarkdProcess) -> Iterator[MongoClient[Any]]:
    with markd.client() as mongo:
        yield mongo
