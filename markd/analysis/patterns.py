"""Rule patterns (`patternProperties`): compiled once, searched in bounded time.

Engine choice. mongocryptd compiles these with PCRE2 and searches field names with them. A
backtracking engine (Python's `re`, PCRE without its match limit) takes exponential time on patterns
such as `^(a+)+$`, and one rule would stall every client. So:

- RE2 (`google-re2`) first: linear in the field name's length whatever the pattern, so a search can
  never explode. For ordinary patterns it agrees with PCRE2 as mongod builds it (UTF-8 on, Unicode
  properties off): `\\d`, `\\w`, `\\s` and `\\b` are ASCII-only in both (Python's `re` makes them
  Unicode), `\\z`, `\\A`, `\\Q...\\E` and POSIX classes work in both (Python's `re` rejects `\\z` and
  `\\Q`). One known difference: RE2's `$` does not match before a final newline; PCRE's does.
- `regex` (the PyPI package) for what RE2 refuses to compile but PCRE accepts (look-arounds,
  backreferences, atomic groups, possessive quantifiers): a backtracking engine with a `timeout`.

Either way a command gets at most `DEFAULT_LIMIT_SECS` of matching in total (the meter below); past it
the command fails closed with a CommandError, as PCRE2 fails a match that hits its match limit.
The server can also arm a short *slice* meter: a command run on the event loop that overruns it
raises `SliceExpired` so the server can rerun it off the loop (the analysis is pure, so rerunning is
safe).
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import re
import time
from typing import Any, NoReturn

import re2
from re2 import _re2

from markd.errors import CommandError

# Matching time one command may spend on rule patterns, in total.
DEFAULT_LIMIT_SECS = 1.0
# PCRE2 refuses longer patterns ("pattern string is longer than the limit set by the application"):
# mongod sets this limit, and RE2's compiled program stays small with it.
MAX_PATTERN_LENGTH = 32764

BAD_PATTERN_CODE = 51141  # Invalid regular expression in 'patternProperties'
MATCH_LIMIT_CODE = 2  # BadValue: mongod's code for a value it cannot evaluate

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print every rejected pattern on stderr
_RE2_OPTIONS.never_capture = True  # only "does it match" is asked: no capture bookkeeping
_UNANCHORED = re2._Anchor.UNANCHORED
_NO_MATCH = (-1, -1)


class SliceExpired(BaseException):
    """The slice meter ran out: the server reruns the command off the event loop.

    A BaseException so that no `except Exception` in the analysis can swallow it."""


# A plain class, not a dataclass: creating one costs ~4 M instructions at start-up (issue 15).
class Meter:
    """Matching time spent by one command, against its limit (and, on the loop, a slice)."""

    __slots__ = ("limit", "slice", "spent")

    def __init__(self, limit: float = DEFAULT_LIMIT_SECS, slice: float | None = None, spent: float = 0.0) -> None:
        self.limit = limit
        self.slice = slice
        self.spent = spent

    def __repr__(self) -> str:
        return f"Meter(limit={self.limit}, slice={self.slice}, spent={self.spent})"

    def charge(self, seconds: float) -> None:
        self.spent += seconds
        if self.slice is not None and self.spent > self.slice:
            raise SliceExpired
        if self.spent > self.limit:
            raise CommandError(
                MATCH_LIMIT_CODE,
                "Regular expression matching in 'patternProperties' exceeded the limit of "
                f"{self.limit * 1000:g} ms per command: PCRE error string: match limit exceeded")

    def remaining(self) -> float:
        bound = self.limit if self.slice is None else min(self.limit, self.slice)
        return max(bound - self.spent, 0.0)


_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("markd_pattern_meter", default=None)


class metered:  # lower case: used like the function it replaced, `with metered(...) as meter`
    """Run one command under a fresh meter (the server wraps each command in this).

    A class rather than a @contextmanager generator: it is entered for every command."""

    __slots__ = ("meter", "token")

    def __init__(self, limit: float = DEFAULT_LIMIT_SECS, slice_secs: float | None = None) -> None:
        self.meter = Meter(limit, slice_secs)

    def __enter__(self) -> Meter:
        self.token = _meter.set(self.meter)
        return self.meter

    def __exit__(self, *exc_info: object) -> None:
        _meter.reset(self.token)


def _current_meter() -> Meter:
    # A caller that set no meter (a unit test, an embedding) still gets the bound, per search.
    return _meter.get() or Meter()


# A plain class, not a dataclass: creating one costs ~4 M instructions at start-up (issue 15).
class RulePattern:
    """A compiled rule pattern; `search(name)` says whether it matches anywhere in `name`. Equal (and hashed)
    by its pattern."""

    __slots__ = ("_fallback", "_re2", "pattern")

    def __init__(self, pattern: str, _re2: Any = None, _fallback: Any = None) -> None:
        self.pattern = pattern
        self._re2 = _re2
        self._fallback = _fallback

    def __eq__(self, other: object) -> bool:
        return type(other) is RulePattern and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"RulePattern(pattern={self.pattern!r})"

    @property
    def engine(self) -> str:
        return "re2" if self._re2 is not None else "regex"

    def search(self, name: str) -> bool:
        meter = _current_meter()
        started = time.perf_counter()
        if self._re2 is not None:
            encoded = name.encode("utf-8", "surrogatepass")
            found = self._re2.Match(_UNANCHORED, encoded, 0, len(encoded))[0] != _NO_MATCH
        else:
            try:
                found = self._fallback.search(name, timeout=max(meter.remaining(), 1e-6)) is not None
            except TimeoutError:
                found = False
                meter.charge(meter.limit + 1.0)  # raises: the bound was hit
        meter.charge(time.perf_counter() - started)
        return found


def pcre_error(pattern: str) -> str | None:
    """PCRE2's description of what is wrong with `pattern` (mongod compiles rules with PCRE2), or None when
    it compiles; the engines' own description where the PCRE2 library is not on this machine."""
    library = _pcre2()
    if library is None:
        try:
            re.compile(pattern)
        except re.error as problem:
            return str(problem)
        return None
    encoded = pattern.encode("utf-8", "surrogatepass")
    code, offset = ctypes.c_int(), ctypes.c_size_t()
    compiled = library.pcre2_compile_8(encoded, len(encoded), _PCRE2_UTF, ctypes.byref(code), ctypes.byref(offset),
                                       None)
    if compiled:
        library.pcre2_code_free_8(compiled)
        return None
    buffer = ctypes.create_string_buffer(256)
    library.pcre2_get_error_message_8(code, buffer, len(buffer))
    return buffer.value.decode("utf-8", "replace")


_PCRE2_UTF = 0x00080000


@functools.lru_cache(maxsize=1)
def _pcre2() -> Any:
    """libpcre2-8 through ctypes, or None (only its error messages are used: matching stays bounded here)."""
    from ctypes import util  # here: it runs ldconfig, and imports subprocess and tempfile

    name = util.find_library("pcre2-8")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
        library.pcre2_compile_8.restype = ctypes.c_void_p
        library.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.c_void_p]
        library.pcre2_code_free_8.argtypes = [ctypes.c_void_p]
        library.pcre2_get_error_message_8.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return library


def compile_pattern(pattern: str) -> RulePattern:
    """Compile a `patternProperties` key; CommandError 51141 when no engine (and not PCRE) accepts it."""
    if len(pattern.encode("utf-8", "surrogatepass")) > MAX_PATTERN_LENGTH:
        _bad(pattern, "pattern string is longer than the limit set by the application")
    compiled = _re2.RE2(pattern.encode("utf-8", "surrogatepass"), _RE2_OPTIONS)
    if compiled.ok():
        return RulePattern(pattern, _re2=compiled)
    import regex  # only for what RE2 refuses (look-arounds, backreferences): not worth its import otherwise

    try:
        fallback = regex.compile(pattern, regex.VERSION0 | regex.ASCII)
    except (regex.error, ValueError, OverflowError) as problem:
        # The message markd has always given: the `re` module's description of the problem.
        try:
            re.compile(pattern)
        except re.error as described:
            _bad(pattern, str(described))
        _bad(pattern, str(problem))
    return RulePattern(pattern, _fallback=fallback)


def _bad(pattern: str, error: str) -> NoReturn:
    raise CommandError(BAD_PATTERN_CODE,
                       f"Invalid regular expression in 'patternProperties': {pattern} PCRE error string: {error}")
