"""Query analysis: a marking command in, the marked command (or a CommandError) out.

Pure: no sockets, no clocks.  `mark_command` is the one entry point the server calls for every
command libmongocrypt sends for marking.  It decides the flavour and hands over:

- CSFLE (FLE1): the command carries `jsonSchema` + `isRemoteSchema`, or `csfleEncryptionSchemas`
  -> `markd.analysis.csfle`;
- Queryable Encryption (FLE2): the command (or the explained one) carries `encryptionInformation`
  -> `markd.analysis.qe`.

Each flavour returns a `MarkResult`; this module shapes the reply envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from markd.errors import CommandError

# Every command libmongocrypt sends to mongocryptd for marking.
MARKING_COMMANDS = frozenset(
    {
        "aggregate",
        "bulkWrite",
        "collMod",
        "count",
        "create",
        "createIndexes",
        "delete",
        "distinct",
        "explain",
        "find",
        "findAndModify",
        "findandmodify",
        "insert",
        "update",
    }
)

CSFLE_FIELDS = ("jsonSchema", "isRemoteSchema", "csfleEncryptionSchemas")
QE_FIELD = "encryptionInformation"


@dataclass(frozen=True, slots=True)
class MarkResult:
    """What a flavour's analysis decided for one command."""

    result: dict[str, Any]
    has_encryption_placeholders: bool
    schema_requires_encryption: bool


def _carries(command: dict[str, Any], field: str) -> bool:
    """Whether the rules sit at the top level, in the explained command, or (bulkWrite) in nsInfo[0]."""
    if field in command:
        return True
    inner = command.get("explain")
    if isinstance(inner, dict) and field in inner:
        return True
    namespaces = command.get("nsInfo")
    return (
        isinstance(namespaces, list) and bool(namespaces) and isinstance(namespaces[0], dict)
        and field in namespaces[0]
    )


def mark_command(command: dict[str, Any]) -> dict[str, Any]:
    """The reply to a marking command: {hasEncryptionPlaceholders, schemaRequiresEncryption, result, ok}."""
    if _carries(command, QE_FIELD):
        from markd.analysis import qe

        marked = qe.mark(command)
    elif any(_carries(command, field) for field in CSFLE_FIELDS):
        from markd.analysis import csfle

        marked = csfle.mark(command)
    else:
        # Without encryption rules there is nothing to prove a value safe against: refuse, as
        # mongocryptd does (aggregate, which may name several namespaces, with its own wording).
        name = next(iter(command), "")
        if name == "explain" and isinstance(command.get("explain"), dict):
            name = next(iter(command["explain"]), "")
        if name == "aggregate":
            raise CommandError(
                9686705, "Must specify either jsonSchema, csfleEncryptionSchemas or encryptionInformation"
            )
        raise CommandError(51073, "jsonSchema or encryptionInformation is required")
    result = dict(marked.result)
    result.pop("$db", None)
    return {
        "hasEncryptionPlaceholders": marked.has_encryption_placeholders,
        "schemaRequiresEncryption": marked.schema_requires_encryption,
        "result": result,
        "ok": 1.0,
    }


def cache_stats() -> tuple[int, int]:
    """(hits, misses) of the parsed-schema caches of both flavours."""
    hits = misses = 0
    import sys

    for name in ("markd.analysis.csfle", "markd.analysis.qe"):
        module = sys.modules.get(name)
        stats = getattr(module, "cache_stats", None)
        if stats is not None:
            flavour_hits, flavour_misses = stats()
            hits += flavour_hits
            misses += flavour_misses
    return hits, misses
