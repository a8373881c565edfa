"""The daemon's stderr handler: lines leave once per event-loop turn, warnings at once."""

from __future__ import annotations

import asyncio
import io
import logging

from ipsecd.logsetup import BatchedStreamHandler, LineFormatter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed = ""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def _logger(stream: CountingStream) -> logging.Logger:
    h = BatchedStreamHandler(stream)  # type: ignore[arg-type]
    h.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    lg = logging.getLogger("test.batched")
    lg.handlers[:] = [h]
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return lg


def test_lines_of_one_turn_leave_in_one_flush_warnings_at_once() -> None:
    stream = CountingStream()
    lg = _logger(stream)

    async def main() -> None:
        lg.info("one")
        lg.info("two")
        assert stream.flushes == 0 and stream.flushed == ""  # buffered until the turn ends
        await asyncio.sleep(0)
        assert stream.flushes == 1 and stream.flushed.count("\n") == 2
        lg.info("three")
        lg.warning("four")  # at once, with what the turn logged before it
        assert stream.flushes == 2 and "three" in stream.flushed and "four" in stream.flushed
        await asyncio.sleep(0)
        assert stream.flushes == 3  # the turn's scheduled flush (nothing new: harmless)

    asyncio.run(main())
    lg.info("no loop")  # start-up, threads: written at once
    assert stream.flushes == 4 and stream.flushed.endswith("no loop\n")


def test_time_text_made_once_per_second() -> None:
    fmt = LineFormatter("%(asctime)s %(message)s", "%H:%M:%S")
    rec = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    rec.created = 1_000_000.25
    first = fmt.formatTime(rec, "%H:%M:%S")
    rec.created = 1_000_000.75
    assert fmt.formatTime(rec, "%H:%M:%S") is first  # the same second: the same text
    rec.created = 1_000_001.0
    assert fmt.formatTime(rec, "%H:%M:%S") != first
