"""Logging: text or JSON lines, to stdout or a file.

Log records carry command names, namespaces, field paths, sizes and timings: never a value taken
from a document.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import sys
from typing import Any

LOGGER_NAME = "markd"
log = logging.getLogger(LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: t, s (severity), c (component), msg, attr."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "t": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "s": record.levelname,
            "c": record.name,
            "msg": record.getMessage(),
        }
        attr = getattr(record, "attr", None)
        if attr:
            entry["attr"] = attr
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        attr = getattr(record, "attr", None)
        if attr:
            text += " " + " ".join(f"{key}={value}" for key, value in attr.items())
        return text


def _keep_previous_log(logpath: str) -> bool:
    """As mongod without --logappend: a previous log (say, a crash's) is renamed `<path>.<UTC time>`, not
    truncated. True when the path is now free to append to."""
    try:
        if not os.path.isfile(logpath) or os.path.getsize(logpath) == 0:
            return False
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
        os.rename(logpath, f"{logpath}.{stamp}")
    except OSError:
        return False
    return True


def configure(logpath: str | None, append: bool, log_format: str, verbosity: int, quiet: bool) -> None:
    """Send the markd logger to `logpath` (or stdout). A log file that cannot be opened falls back to
    stderr with a warning: losing the log must never cost the daemon."""
    unopenable: OSError | None = None
    handler: logging.Handler
    if logpath and not append:
        append = _keep_previous_log(logpath)
    try:
        # Watched: when logrotate (or an operator) moves or deletes the file, the next line reopens it.
        handler = (logging.handlers.WatchedFileHandler(logpath, mode="a" if append else "w", encoding="utf-8")
                   if logpath else logging.StreamHandler(sys.stdout))
    except OSError as exc:
        unopenable = exc
        handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-5s [%(name)s] %(message)s"))
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if quiet else logging.INFO
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # A full disk or a vanished log file must not take the daemon down with it.
    logging.raiseExceptions = False
    if unopenable is not None:
        log.warning("cannot open the log file; logging to stderr instead",
                    extra={"attr": {"logpath": logpath, "error": unopenable.strerror or str(unopenable)}})
