"""A least-recently-used cache bounded by bytes as well as by entries, safe across threads.

For the analysis caches (parsed schemas, per-schema path answers): a bound by count alone lets a
client fill memory with a few huge entries (300 schemas carrying a 15 MB `description`; 4,096 field
paths of 10 MB each). Each entry has a size, given by the caller (what the entry costs: its key's
bytes plus what was built from them); the cache drops least recently used entries until both bounds
hold, and never stores an entry bigger than its whole byte budget.

Caches created without explicit bounds follow the process-wide defaults, which the server sets from
`--schemaCacheMB` at start (`configure`), so a cache made at import time still obeys the flag.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 256
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


# A plain class, not a dataclass: creating one costs ~4 M instructions at start-up (issue 15).
class _Defaults:
    __slots__ = ("max_bytes", "max_entries")

    def __init__(self) -> None:
        self.max_entries = DEFAULT_MAX_ENTRIES
        self.max_bytes = DEFAULT_MAX_BYTES


_DEFAULTS = _Defaults()


def configure(max_bytes: int | None = None, max_entries: int | None = None) -> None:
    """Set the bounds of every cache created without its own (the server calls this at start)."""
    if max_bytes is not None:
        _DEFAULTS.max_bytes = max(0, int(max_bytes))
    if max_entries is not None:
        _DEFAULTS.max_entries = max(0, int(max_entries))


class CacheStats(NamedTuple):
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int


class ByteLRU(Generic[K, V]):
    """`get(key)` / `put(key, value, size)`, evicting least recently used entries beyond the bounds."""

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def max_entries(self) -> int:
        return _DEFAULTS.max_entries if self._max_entries is None else self._max_entries

    @property
    def max_bytes(self) -> int:
        return _DEFAULTS.max_bytes if self._max_bytes is None else self._max_bytes

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value for `key` (now the most recently used), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: K, value: V, size: int) -> bool:
        """Store `value` as costing `size` bytes; False (and nothing stored) if it exceeds the whole budget."""
        size = max(int(size), 0)
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            if size > self.max_bytes or self.max_entries == 0:
                return False
            self._entries[key] = (value, size)
            self._bytes += size
            self._shrink()
            return True

    def discard(self, key: K) -> None:
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.evictions, len(self._entries), self._bytes)

    def _shrink(self) -> None:
        max_entries, max_bytes = self.max_entries, self.max_bytes
        while self._entries and (len(self._entries) > max_entries or self._bytes > max_bytes):
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
            self.evictions += 1
