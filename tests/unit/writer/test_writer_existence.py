from __future__ import annotations

import threading

import pytest

from cloudlog_writer.existence import BoundedTtlCache, ExistenceCache
from cloudlog_writer.locks import StripedLocks


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_size_bound_evicts_least_recently_used() -> None:
    cache: BoundedTtlCache[str, int] = BoundedTtlCache(3, 100, Clock())
    for key in "abc":
        cache.put(key, 1)
    assert "a" in cache  # touch a: b is now the least recently used
    cache.put("d", 1)
    assert len(cache) == 3
    assert "b" not in cache
    assert all(k in cache for k in "acd")


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache: BoundedTtlCache[str, int] = BoundedTtlCache(10, 60, clock)
    cache.put("a", 7)
    clock.now = 59.9
    assert cache.get("a") == 7
    clock.now = 60.0
    assert cache.get("a") is None
    assert "a" not in cache
    assert len(cache) == 0  # an expired entry is dropped, not kept around


def test_lookup_tells_missing_from_stored_none() -> None:
    cache: BoundedTtlCache[str, str | None] = BoundedTtlCache(10, 60, Clock())
    cache.put("k", None)
    assert cache.lookup("k") == (True, None)
    assert cache.lookup("other") == (False, None)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        BoundedTtlCache(0, 1)
    with pytest.raises(ValueError):
        BoundedTtlCache(1, 0)


def test_existence_cache_groups_streams_and_forget() -> None:
    cache = ExistenceCache(100, 60, Clock())
    cache.add_group("g", retention_days=7)
    cache.add_stream("g", "s")
    cache.add_group("g")  # "exists" again must not erase the known retention
    assert cache.has_group("g") and cache.has_stream("g", "s")
    assert cache.group_retention_days("g") == 7
    cache.forget("g", "s")
    assert not cache.has_group("g") and not cache.has_stream("g", "s")


def test_existence_cache_bound_is_shared_and_holds_under_threads() -> None:
    cache = ExistenceCache(50, 60, Clock())

    def fill(offset: int) -> None:
        for i in range(1000):
            cache.add_stream("g", f"s{offset}-{i}")

    threads = [threading.Thread(target=fill, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50


def test_striped_locks_same_key_same_lock_and_bounded() -> None:
    locks = StripedLocks(16)
    assert locks.lock_for(("g", "s")) is locks.lock_for(("g", "s"))
    assert len({id(locks.lock_for(("g", f"s{i}"))) for i in range(1000)}) <= 16
