"""Queryable Encryption (FLE2) analysis: commands checked against `encryptedFields`."""

from __future__ import annotations

from typing import Any

from markd.analysis import MarkResult
from markd.errors import CommandError


def mark(command: dict[str, Any]) -> MarkResult:
    raise CommandError(6411901, "markd cannot yet analyze Queryable Encryption commands; refusing rather than risk plaintext")


def cache_stats() -> tuple[int, int]:
    return 0, 0
