"""CSFLE (FLE1) analysis: commands checked against `jsonSchema` encryption rules.

Modules: `schema` (the jsonSchema as an encryption tree), `placeholders` (what a marked value looks
like, and when a value may not be marked), `walk` (whole documents), `match` (the match language),
`expressions` (aggregation expressions), `pipeline` (stages), `update` (update documents),
`commands` (one handler per command) and `errors` (mongocryptd's codes and messages).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markd.analysis import MarkResult


def mark(command: Mapping[str, Any]) -> MarkResult:
    """The marked command for a CSFLE marking command, or the CommandError mongocryptd would give."""
    from markd.analysis.csfle import commands

    return commands.mark(command)


def cache_stats() -> tuple[int, int]:
    """(hits, misses) of the parsed-schema cache."""
    from markd.analysis.csfle import schema

    return schema.cache_stats()
