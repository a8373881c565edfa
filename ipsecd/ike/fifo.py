"""``Fifo``: a queue that is nearly always empty or holds a few items, at a list's size.

Every IKE SA keeps a few such queues (its events, its signals, its exchange queue). A
``collections.deque`` allocates a 64-slot block as soon as it exists (~600 bytes empty); at
20,000 IKE SAs that alone was ~35 MiB. A list is 56 bytes empty, and with a handful of
items ``pop(0)`` is as fast as ``popleft``.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Fifo(list[T]):
    """``deque``'s ``append``/``popleft``/``appendleft`` on a list (for short queues only)."""

    __slots__ = ()

    def popleft(self) -> T:
        return self.pop(0)

    def appendleft(self, item: T) -> None:
        self.insert(0, item)
