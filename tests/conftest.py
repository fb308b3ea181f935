"""Shared fixtures: one real markd process per test session, clients to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from tests.support.process import MarkdProcess


@pytest.fixture(scope="session")
def markd() -> Iterator[MarkdProcess]:
    with MarkdProcess() as process:
        yield process


@pytest.fixture(scope="session")
def client(markd: MarkdProcess) -> Iterator[MongoClient[Any]]:
    with markd.client() as mongo:
        yield mongo
