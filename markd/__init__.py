"""markd: an open, drop-in mongocryptd (query analysis for MongoDB automatic encryption)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from markd.checker import CheckResult

__version__ = "0.1.0"


def check(rules: Any, command: Any = None, *, namespace: str | None = None, filter: Any = None,
          pipeline: Any = None) -> CheckResult:
    """Try `command` against encryption `rules` offline, with the daemon's own analysis (`markd check`).

    `rules`: a CSFLE jsonSchema, a schema map {ns: jsonSchema}, a QE encryptedFields document or an
    encrypted_fields_map {ns: encryptedFields} (also as Django's `showencryptedfieldsmap` prints it), as a
    dict or Extended JSON text.  `command`: the command document (or `filter=` / `pipeline=` for a find or
    an aggregate on `namespace`).  Returns a `markd.checker.CheckResult` (`.accepted`, `.marked`, `.refusal`,
    `.to_dict()`: the `markd check --json` document); raises `markd.checker.BadInput` for input that cannot
    be checked.  See docs/check.md.
    """
    from markd.checker import check as run_check

    return run_check(rules, command, namespace=namespace, filter=filter, pipeline=pipeline)
