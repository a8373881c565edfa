"""Rate-limited logging: bad packets are logged, but a flood cannot flood the log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ipsecd.logsafe import safe

MAX_KEYS = 256
"""Keys with a window of their own. Keys are meant to be a fixed vocabulary ("malformed",
"unknown_spi", ...); should a caller ever build them from peer data, the keys past this
share one overflow window, so a flood of distinct keys still logs at most
``(MAX_KEYS + 1) * burst`` lines per interval instead of resetting every window."""
OVERFLOW_KEY = "(other)"


@dataclass
class RateLimitedLogger:
    """At most ``burst`` lines per ``interval`` seconds per key; the rest are counted and summarised."""

    logger: logging.Logger
    interval: float = 10.0
    burst: int = 5
    max_keys: int = MAX_KEYS
    _windows: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    _next_sweep: float = float("-inf")  # sweeping the full table is O(max_keys): at most once a second

    def log(self, level: int, key: str, msg: str, *args: object, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        if key not in self._windows and len(self._windows) >= self.max_keys:
            if t >= self._next_sweep:
                self._next_sweep = t + 1.0
                self._expire(level, t)
            if len(self._windows) >= self.max_keys:
                key = OVERFLOW_KEY
        start, shown, suppressed = self._windows.get(key, (t, 0, 0))
        if t - start >= self.interval:
            self._summary(level, key, suppressed, t - start)
            start, shown, suppressed = t, 0, 0
        if shown < self.burst:
            self.logger.log(level, msg, *args)
            shown += 1
        else:
            suppressed += 1
        self._windows[key] = (start, shown, suppressed)

    def _expire(self, level: int, now: float) -> None:
        """Close the windows that have ended, with their "suppressed" summaries, to make room."""
        for k, (start, _, suppressed) in list(self._windows.items()):
            if now - start >= self.interval:
                self._summary(level, k, suppressed, now - start)
                del self._windows[k]

    def _summary(self, level: int, key: str, suppressed: int, span: float) -> None:
        if suppressed:
            self.logger.log(level, "%s: %d more suppressed in the last %.0fs", safe(key, 64), suppressed, span)
