"""Logging: one line per event on stderr, levels per subsystem, and a live feed for ``ipsecctl log``.

Subsystems follow strongSwan's names (ike, child, esp, net, cfg) as loggers
``ipsecd.<subsystem>``; strongSwan's numeric levels map onto Python's.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from typing import TextIO

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


class LineFormatter(logging.Formatter):
    """The daemon's format, with the time text made once per second, not once per line
    (``time.strftime`` was ~5 % of a handshake's log cost in a login storm)."""

    _second: int = -1
    _text: str = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # logging's name
        sec = int(record.created)
        if sec != self._second:
            self._text = time.strftime(datefmt or "%H:%M:%S", self.converter(sec))
            self._second = sec
        return self._text


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes at most once per event-loop turn.

    A login storm logs 3 lines per handshake; with stderr on a pipe (journald) a write(2)
    per line was ~11 % of the responder's CPU per handshake (tests/bench_engine.py). Lines
    below WARNING are buffered and flushed by a callback at the end of the current loop turn
    (every line of one batch of datagrams in one write); WARNING and above, lines from other
    threads and lines logged with no loop running are flushed at once. ``logging.shutdown``
    at exit flushes the rest (a SIGKILL loses at most the current turn's lines).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:  # logging's own contract: report, never raise
            self.handleError(record)
            return
        if record.levelno < logging.WARNING:
            if self._pending:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop in this thread (start-up, executor threads, tests)
                loop = None
            if loop is not None:
                self._pending = True
                loop.call_soon(self._flush_turn)
                return
        self._flush(record)

    def _flush(self, record: logging.LogRecord | None = None) -> None:
        try:
            self.flush()
        except Exception:  # e.g. journald's pipe gone: reported on stderr, the daemon goes on
            if record is not None:
                self.handleError(record)

    def _flush_turn(self) -> None:
        self._pending = False
        self._flush()


def _stderr_stream() -> TextIO:
    """A fully buffered text stream on fd 2 (Python's own stderr is line-buffered: one write
    per line), or sys.stderr itself when it is not a file descriptor (a test capturing it)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    return open(os.dup(fd), "w", buffering=1 << 16, encoding=enc, errors="backslashreplace")


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
    fmt = LineFormatter(f"%(asctime)s.%(msecs)03d %(levelname)-7s {tag}%(name)s: %(message)s", "%H:%M:%S")
    # The format uses no caller, thread or process fields: don't compute them for every record
    # (the logging HOWTO's "Optimization"; walking the stack for the caller was ~4 % of the IKE
    # process's CPU in a login storm, at 3 lines per handshake)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("ipsecd")
    for old in root.handlers:
        if isinstance(old, BatchedStreamHandler) and old.stream is not sys.stderr:
            old.flush()
            old.stream.close()  # our own dup of fd 2
    root.handlers.clear()
    stderr = BatchedStreamHandler(_stderr_stream())
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
