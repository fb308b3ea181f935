"""mongocryptd's codes and messages for refusals both schemes share, in one table.

Each scheme adds its own table (`csfle.errors`, `qe.errors`) for what only it says; a rule raises by
key, and the scheme in force decides the wording where the two differ.
"""

from __future__ import annotations

from typing import NoReturn

from markd.errors import CommandError

# key -> (code, message template). Templates take keyword arguments (paths, names, types).
ERRORS: dict[str, tuple[int, str]] = {
    "through_encrypted": (51102, "Invalid operation on path '{path}' which contains an encrypted path prefix."),
    "conflicting_metadata": (51142, "Found conflicting encryption metadata for path: '{path}'"),
    "unknown_path": (31133, "Cannot get metadata for path whose encryption properties are not known until runtime."),
}


def error(key: str, /, table: dict[str, tuple[int, str]] | None = None, **fields: object) -> CommandError:
    """The CommandError for `key`, from `table` when it has the key, else from the shared table."""
    code, template = (table or {}).get(key) or ERRORS[key]
    return CommandError(code, template.format(**fields) if fields else template)


def fail(key: str, /, **fields: object) -> NoReturn:
    raise error(key, **fields)
