"""A timer per key in a heap: O(log n) to set, earliest in O(1) amortised.

Each key (an IKE SA id) has at most one live deadline; re-setting it pushes a new
entry and leaves the old one in the heap, skipped lazily when it surfaces (its
deadline no longer matches). The heap is rebuilt when stale entries outnumber
live ones, so memory stays proportional to the number of keys.
"""

from __future__ import annotations

import heapq


class TimerHeap:
    __slots__ = ("_deadline", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._deadline: dict[int, float] = {}

    def set(self, key: int, when: float | None) -> None:
        if when is None:
            self._deadline.pop(key, None)
            return
        if self._deadline.get(key) == when:
            return
        self._deadline[key] = when
        heapq.heappush(self._heap, (when, key))
        if len(self._heap) > 2 * len(self._deadline) + 64:
            self._heap = [(t, k) for k, t in self._deadline.items()]
            heapq.heapify(self._heap)

    def _trim(self) -> None:
        heap, live = self._heap, self._deadline
        while heap and live.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

    def earliest(self) -> float | None:
        self._trim()
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[int]:
        """Keys whose deadline is at or before ``now``; their deadlines are consumed."""
        out: list[int] = []
        heap, live = self._heap, self._deadline
        while True:
            self._trim()
            if not heap or heap[0][0] > now:
                return out
            _, key = heapq.heappop(heap)
            del live[key]
            out.append(key)

    def __len__(self) -> int:
        return len(self._deadline)
