"""Time as the engines see it: a monotonic number of seconds passed in by the caller.

The sans-I/O engines never read the clock themselves; the daemon passes
``MonotonicClock().now()`` and tests pass ``FakeClock`` values they control.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


@dataclass
class FakeClock:
    t: float = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t
