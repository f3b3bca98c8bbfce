"""A cache of the values used last, bounded by their total size rather than their number.

For things decoded from the index on demand whose size a hostile image chooses
(a sparse map of a million chunks, a directory of a million names): a count of
entries would bound nothing.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

__all__ = ["SizedLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SizedLRU(Generic[K, V]):
    """Values by key, the least recently used dropped once their sizes add up to
    more than ``limit``; the one just used is kept whatever its size."""

    __slots__ = ("_limit", "_size", "_values", "_total")

    def __init__(self, limit: int, size: Callable[[V], int]) -> None:
        self._limit = limit
        self._size = size
        self._values: dict[K, V] = {}  # insertion order is the LRU order
        self._total = 0

    def get(self, key: K, make: Callable[[K], V | None]) -> V | None:
        """The value for ``key``, made by ``make(key)`` if it is not kept (None is
        returned as it is, and not kept)."""
        value = self._values.pop(key, None)
        if value is None:
            value = make(key)
            if value is None:
                return None
            self._total += self._size(value)
        self._values[key] = value
        while self._total > self._limit and len(self._values) > 1:
            self._total -= self._size(self._values.pop(next(iter(self._values))))
        return value
