"""Findings that are known and still open, each pinned by a strict xfail regression test.

A crash is identified by its signature: the exception type and the innermost markd frame
(file, function).  The CI fuzzers skip inputs whose crash has a known signature (the regression
test keeps the bug visible); a crash with a new signature fails the build.
"""

from __future__ import annotations

import traceback
from types import TracebackType

# id -> (exception type, file under markd/, function)
KNOWN_CRASHES: dict[str, tuple[str, str, str]] = {
}


def signature(exc: BaseException) -> tuple[str, str, str]:
    """(exception type, markd file, function) of the innermost markd frame of `exc`."""
    frames = traceback.extract_tb(exc.__traceback__ if isinstance(exc.__traceback__, TracebackType) else None)
    for frame in reversed(frames):
        marker = frame.filename.rfind("/markd/")
        if marker >= 0 and "/tests/" not in frame.filename:
            return type(exc).__name__, frame.filename[marker + 1 :], frame.name
    last = frames[-1] if frames else None
    return type(exc).__name__, last.filename if last else "?", last.name if last else "?"


def known_id(exc: BaseException) -> str | None:
    sig = signature(exc)
    for finding, known in KNOWN_CRASHES.items():
        if known == sig:
            return finding
    return None
