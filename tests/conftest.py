"""Shared fixtures: one real markd process per test session, clients to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from tests.support import plaintext_watch
from tests.support.process import MarkdProcess

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
