"""imagefs.lru.SizedLRU: bounded by the values' total size, least recently used first out."""

from __future__ import annotations

from imagefs.lru import SizedLRU


def test_least_recently_used_goes_first_and_size_is_what_counts() -> None:
    made: list[str] = []

    def make(key: str) -> list[int] | None:
        made.append(key)
        return None if key == "none" else [0] * {"a": 4, "b": 4, "c": 4, "big": 50}.get(key, 1)

    cache: SizedLRU[str, list[int]] = SizedLRU(10, len)
    assert cache.get("a", make) == [0] * 4 and cache.get("b", make) is not None
    cache.get("a", make)  # a is used last now: b goes first
    cache.get("c", make)  # 12 > 10: b out
    cache.get("a", make)
    cache.get("b", make)
    assert made == ["a", "b", "c", "b"]
    assert cache.get("big", make) is not None  # the one just used stays, whatever its size
    assert cache.get("big", make) is not None and made[-1] == "big" and made.count("big") == 1
    cache.get("a", make)
    assert made[-1] == "a"  # everything else went to make room for big
    assert cache.get("none", make) is None and cache.get("none", make) is None
    assert made.count("none") == 2  # None is not kept
