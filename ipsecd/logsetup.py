"""Logging: one line per event on stderr, levels per subsystem, and a live feed for ``ipsecctl log``.

Subsystems follow strongSwan's names (ike, child, esp, net, cfg) as loggers
``ipsecd.<subsystem>``; strongSwan's numeric levels map onto Python's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress

SUBSYSTEMS = ("ike", "child", "esp", "net", "cfg", "ctl")
# strongSwan: -1 silent, 0 basic, 1 audit, 2 control, 3+ raw
_NUMERIC = {-1: logging.CRITICAL + 10, 0: logging.WARNING, 1: logging.INFO, 2: logging.INFO, 3: logging.DEBUG,
            4: logging.DEBUG}


def _level(v: object) -> int:
    if isinstance(v, int):
        return _NUMERIC.get(max(-1, min(4, v)), logging.INFO)
    name = str(v).upper()
    lvl = logging.getLevelName(name)
    return lvl if isinstance(lvl, int) else logging.INFO


class LogHub(logging.Handler):
    """Fans formatted records out to ``ipsecctl log --follow`` subscribers (bounded queues)."""

    def __init__(self) -> None:
        super().__init__()
        self._queues: set[asyncio.Queue[str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if not self._queues:
            return
        line = self.format(record)
        for q in list(self._queues):
            with suppress(asyncio.QueueFull):
                q.put_nowait(line)

    async def subscribe(self) -> AsyncIterator[str]:
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        self._queues.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.discard(q)


def setup_logging(level: object = "info", per_subsystem: Mapping[str, object] | None = None, tag: str = "") -> LogHub:
    """``tag``: what every line names its process by (an IKE shard's "shard1 ", shell/shards.py)."""
    tag = tag.replace("%", "%%")
    fmt = logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname)-7s {tag}%(name)s: %(message)s", "%H:%M:%S")
    # The format uses no caller, thread or process fields: don't compute them for every record
    # (the logging HOWTO's "Optimization"; walking the stack for the caller was ~4 % of the IKE
    # process's CPU in a login storm, at 3 lines per handshake)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("ipsecd")
    root.handlers.clear()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    hub = LogHub()
    hub.setFormatter(fmt)
    root.addHandler(stderr)
    root.addHandler(hub)
    root.setLevel(_level(level))
    root.propagate = False
    for sub, lvl in (per_subsystem or {}).items():
        # 1 is strongSwan's default verbosity: it inherits log_level rather than pinning INFO
        logging.getLogger(f"ipsecd.{sub}").setLevel(logging.NOTSET if lvl == 1 else _level(lvl))
    return hub
