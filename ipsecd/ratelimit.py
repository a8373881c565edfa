"""Rate-limited logging: bad packets are logged, but a flood cannot flood the log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field


@dataclass
class RateLimitedLogger:
    """At most ``burst`` lines per ``interval`` seconds per key; the rest are counted and summarised."""

    logger: logging.Logger
    interval: float = 10.0
    burst: int = 5
    _windows: dict[str, tuple[float, int, int]] = field(default_factory=dict)

    def log(self, level: int, key: str, msg: str, *args: object, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        start, shown, suppressed = self._windows.get(key, (t, 0, 0))
        if t - start >= self.interval:
            if suppressed:
                self.logger.log(level, "%s: %d more suppressed in the last %.0fs", key, suppressed, t - start)
            start, shown, suppressed = t, 0, 0
        if shown < self.burst:
            self.logger.log(level, msg, *args)
            shown += 1
        else:
            suppressed += 1
        self._windows[key] = (start, shown, suppressed)
        if len(self._windows) > 4096:  # bound memory under a flood of distinct keys
            self._windows.clear()
