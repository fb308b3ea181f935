"""Watch every value the test run sends, and every markd log it produces: no value may reach a log.

A pymongo command listener (registered for every client the tests create: raw clients, the
libmongocrypt harness's client, pymongo's own mongocryptd client under auto-encryption) records
the string values in each command; each markd log is scanned for them before its directory goes.
Names are not values: keys, the command's target collection, `$db`, `$`-references, the field paths a
distinct key or a join stage's options give, and the encryption rules themselves (which name field paths,
as markd's errors and logs may) are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pymongo import monitoring

# Shorter strings ("x", "abc", "default") are as likely to be vocabulary as secrets.
MIN_LENGTH = 8
# (`encryptedFields` is a create/collMod's own copy of the rules: field paths and query types, which markd's
# refusal log lines name.)
_RULES = frozenset({"jsonSchema", "encryptionInformation", "csfleEncryptionSchemas", "encryptedFields", "nsInfo",
                    "lsid", "$db"})

sent_values: set[str] = set()
findings: list[tuple[str, str]] = []  # (log file, value)


# Options of these stages whose string values name fields (markd's refusal log lines name those paths).
_PATH_OPTIONS = {
    "$lookup": frozenset({"localField", "foreignField", "as"}),
    "$graphLookup": frozenset({"connectFromField", "connectToField", "as", "depthField"}),
    "$unwind": frozenset({"includeArrayIndex"}),
    "$geoNear": frozenset({"key", "distanceField", "includeLocs"}),
}


def _strings(value: Any, stage: str = "") -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        path_options = _PATH_OPTIONS.get(stage, frozenset())
        for key, item in value.items():
            if key not in _RULES and not (key in path_options and isinstance(item, str)):
                yield from _strings(item, key)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def values_in(command: Mapping[str, Any]) -> set[str]:
    """The string values of a command worth watching for."""
    items = list(command.items())
    body = items[1:] if items else []  # the first value names the collection
    if items and items[0][0] == "distinct":
        body = [(key, item) for key, item in body if key != "key"]  # the distinct key names a field
    return {
        text
        for key, item in body
        if key not in _RULES
        for text in _strings(item)
        if len(text) >= MIN_LENGTH and not text.startswith("$")
    }


class _Recorder(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        try:
            sent_values.update(values_in(event.command))
        except Exception:
            pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def install() -> None:
    monitoring.register(_Recorder())


# markd logs each command's namespace; a collection name sent as a value elsewhere (a $lookup's
# `from`, a listCollections filter) is a name there, not a secret.
_NAMESPACE = re.compile(r'ns=\S+|"ns": ?"[^"]*"')


def leaked(log_text: str) -> list[str]:
    text = _NAMESPACE.sub(" ", log_text)
    return sorted(value for value in sent_values if value in text)


def check_log(name: str, log_text: str) -> None:
    findings.extend((name, value) for value in leaked(log_text))
