"""markd.cache.ByteLRU: bounded by entries and by bytes, least recently used out first."""

from __future__ import annotations

import threading

import pytest

from markd import cache
from markd.cache import ByteLRU


def test_evicts_least_recently_used_beyond_the_entry_bound() -> None:
    lru: ByteLRU[str, int] = ByteLRU(max_entries=2, max_bytes=1000)
    lru.put("a", 1, 10)
    lru.put("b", 2, 10)
    assert lru.get("a") == 1  # "b" is now the least recently used
    lru.put("c", 3, 10)
    assert "b" not in lru and lru.get("a") == 1 and lru.get("c") == 3
    assert lru.stats().evictions == 1


def test_evicts_until_the_byte_bound_holds() -> None:
    lru: ByteLRU[str, str] = ByteLRU(max_entries=100, max_bytes=100)
    for name in "abcde":
        lru.put(name, name, 30)
    assert lru.nbytes <= 100
    assert list(name for name in "abcde" if name in lru) == ["c", "d", "e"]


def test_an_entry_bigger_than_the_budget_is_not_stored_and_evicts_nothing() -> None:
    lru: ByteLRU[str, str] = ByteLRU(max_entries=10, max_bytes=100)
    lru.put("small", "s", 10)
    assert lru.put("huge", "h", 101) is False
    assert "huge" not in lru and lru.get("small") == "s"


def test_replacing_a_key_replaces_its_size() -> None:
    lru: ByteLRU[str, str] = ByteLRU(max_entries=10, max_bytes=100)
    lru.put("k", "v1", 60)
    lru.put("k", "v2", 20)
    assert lru.nbytes == 20 and lru.get("k") == "v2" and len(lru) == 1


def test_hits_and_misses_are_counted() -> None:
    lru: ByteLRU[str, int] = ByteLRU(max_entries=10, max_bytes=100)
    assert lru.get("x") is None
    lru.put("x", 1, 1)
    assert lru.get("x") == 1
    stats = lru.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (1, 1, 1, 1)


def test_caches_without_their_own_bounds_follow_configure() -> None:
    lru: ByteLRU[int, int] = ByteLRU()
    saved = (cache._DEFAULTS.max_bytes, cache._DEFAULTS.max_entries)
    try:
        cache.configure(max_bytes=50, max_entries=1000)
        for key in range(10):
            lru.put(key, key, 10)
        assert lru.nbytes == 50 and len(lru) == 5
    finally:
        cache.configure(max_bytes=saved[0], max_entries=saved[1])


@pytest.mark.parametrize("threads", [4])
def test_concurrent_use_keeps_the_books_straight(threads: int) -> None:
    lru: ByteLRU[int, int] = ByteLRU(max_entries=64, max_bytes=640)

    def churn(offset: int) -> None:
        for i in range(5000):
            key = (i * 7 + offset) % 200
            if lru.get(key) is None:
                lru.put(key, key, 10)

    workers = [threading.Thread(target=churn, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(lru) <= 64 and lru.nbytes <= 640
    assert lru.nbytes == 10 * len(lru)
