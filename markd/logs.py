"""Logging: text or JSON lines, to stdout or a file.

Log records carry command names, namespaces, field paths, sizes and timings: never a value taken
from a document.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import logging.handlers
import os
import sys
from typing import Any

LOGGER_NAME = "markd"
log = logging.getLogger(LOGGER_NAME)
# No log line is longer than this (a deep stack or a long namespace must not write 30 KB lines).
MAX_LINE_CHARS = 2048
MAX_ATTR_CHARS = 512


def _short(value: Any) -> Any:
    """An attribute value cut to MAX_ATTR_CHARS characters (numbers and booleans stay as they are)."""
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = str(value)
    return text if len(text) <= MAX_ATTR_CHARS else text[:MAX_ATTR_CHARS] + f"...({len(text)} chars)"


def bounded(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return line[: MAX_LINE_CHARS - 40] + f"...(truncated, {len(line)} chars)"


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
            entry["attr"] = {key: _short(value) for key, value in attr.items()}
        if record.exc_info:
            entry["exc"] = _short(self.formatException(record.exc_info))
        line = json.dumps(entry, default=str)
        if len(line) > MAX_LINE_CHARS:  # still valid JSON: the attributes give way to a note
            entry["attr"] = {"truncated": len(line)}
            entry.pop("exc", None)
            line = json.dumps(entry, default=str)
        return bounded(line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        attr = getattr(record, "attr", None)
        if attr:
            text += " " + " ".join(f"{key}={_short(value)}" for key, value in attr.items())
        return bounded(text)


_STAMP = "%Y-%m-%dT%H-%M-%S"
# The log file configure() opened (None: stdout), for reopen() and rotate().
_logpath: str | None = None


def _rename_aside(logpath: str) -> str | None:
    """Move `logpath` to `<path>.<UTC time>` (mongod's name for an old log), `.N` added if that is taken;
    the new name, or None if there was nothing to move or it could not be moved."""
    if not os.path.isfile(logpath) or os.path.getsize(logpath) == 0:
        return None
    base = f"{logpath}.{datetime.datetime.now(datetime.timezone.utc).strftime(_STAMP)}"
    target, n = base, 0
    while os.path.exists(target):
        n += 1
        target = f"{base}.{n}"
    os.rename(logpath, target)
    return target


def _keep_previous_log(logpath: str) -> bool:
    """As mongod without --logappend: a previous log (say, a crash's) is renamed `<path>.<UTC time>`, not
    truncated. True when the path is now free to append to."""
    try:
        return _rename_aside(logpath) is not None
    except OSError:
        return False


LOG_FILE_MODE = 0o640


class _OwnerGroupFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler whose files (the first, and each one reopened after a rotation) are
    created 0640, never world-readable whatever the umask."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if self.mode.startswith("a") else os.O_TRUNC)
        fd = os.open(self.baseFilename, flags, LOG_FILE_MODE)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def _file_handler(logpath: str, mode: str) -> logging.Handler:
    # Watched: when logrotate (or an operator) moves or deletes the file, the next line reopens it.
    handler = _OwnerGroupFileHandler(logpath, mode=mode, encoding="utf-8")
    handler.mode = "a"  # whatever reopens it later (a move noticed, SIGHUP) must never truncate
    return handler


def configure(logpath: str | None, append: bool, log_format: str, verbosity: int, quiet: bool) -> None:
    """Send the markd logger to `logpath` (or stdout). A log file that cannot be opened falls back to
    stderr with a warning: losing the log must never cost the daemon."""
    global _logpath
    _logpath = logpath
    unopenable: OSError | None = None
    handler: logging.Handler
    if logpath and not append:
        append = _keep_previous_log(logpath)
    try:
        handler = _file_handler(logpath, "a" if append else "w") if logpath else logging.StreamHandler(sys.stdout)
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


def reopen(reason: str = "SIGHUP") -> bool:
    """Open the log file afresh, appending (after logrotate moved it, or to leave a stderr fallback).
    Logging to stdout: nothing to do. False, with a warning in the old log, if it cannot be opened."""
    if not _logpath:
        log.info("no log file to reopen; logging to stdout", extra={"attr": {"signal": reason}})
        return False
    old = log.handlers[0] if log.handlers else None
    try:
        handler = _file_handler(_logpath, "a")
    except OSError as exc:
        log.warning("cannot reopen the log file; still logging to the old one",
                    extra={"attr": {"logpath": _logpath, "error": exc.strerror or str(exc)}})
        return False
    if old is not None and old.formatter is not None:
        handler.setFormatter(old.formatter)
    log.handlers[:] = [handler]
    if old is not None:
        old.close()
    log.info("log file reopened", extra={"attr": {"logpath": _logpath, "signal": reason}})
    return True


def rotate(mode: str = "rename", reason: str = "SIGUSR1") -> bool:
    """mongod's logRotate: `rename` moves the file to `<path>.<UTC time>` and starts a new one; `reopen`
    only reopens (for logrotate's `create`, which has already moved it)."""
    if mode == "rename" and _logpath:
        log.info("log rotation initiated", extra={"attr": {"logpath": _logpath, "signal": reason}})
        try:
            renamed = _rename_aside(_logpath)
        except OSError as exc:
            log.warning("cannot rename the log file; reopening it instead",
                        extra={"attr": {"logpath": _logpath, "error": exc.strerror or str(exc)}})
            renamed = None
        if renamed:
            reopened = reopen(reason)
            log.info("log rotated", extra={"attr": {"renamedTo": renamed}})
            return reopened
    return reopen(reason)
