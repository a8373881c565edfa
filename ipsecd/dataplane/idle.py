"""Idle SAs give their cipher contexts back (issue 11, memory per tunnel).

An ESP SA builds its OpenSSL AEAD context (~2.5 KiB of RSS per direction) on its first
packet (ipsecd.esp.sa). A road warrior's tunnel carries traffic for a while and then idles
for hours; this sweep hands the contexts of such SAs back, and the next packet builds them
again (~10 us, once). Sans-I/O: time comes in as ``now``.

Nothing scans all SAs on a tick: a round starts with a snapshot of the SAD (a C-level copy
of its references) and each tick visits at most ``per_tick`` SAs of it. A visit releases
the context of an SA whose packet counter has not moved since its visit in the previous
round, so an SA idle for between one and two periods lets go; one that carries a packet per
period keeps its context. Rounds run ``period`` apart, and only while they can achieve
something: the previous round left contexts in place, or packets moved since it started
(the worker's traffic totals), since only a packet builds a context, and SAs are installed.
An idle worker has no timer for it.
"""

from __future__ import annotations

from ipsecd.esp.sa import InboundSa, OutboundSa
from ipsecd.esp.sad import Sad

IDLE_PERIOD = 300.0  # seconds between two visits of an SA
PER_TICK = 1024  # SAs visited per tick while a round runs
TICK = 1.0  # seconds between the ticks of a round


class IdleSweep:
    """See the module docstring; ``packets`` is the worker's traffic total, both directions."""

    __slots__ = ("_held", "_next_slice", "_packets", "_queue", "_round_at", "per_tick", "period", "released")

    def __init__(self, period: float = IDLE_PERIOD, per_tick: int = PER_TICK) -> None:
        self.period = period
        self.per_tick = per_tick
        self._queue: list[InboundSa | OutboundSa] = []  # the SAs the round in progress has yet to visit
        self._next_slice = 0.0
        self._round_at = 0.0  # when the last round started (the clock's origin before the first)
        self._packets = 0  # the traffic total then
        self._held = 0  # contexts that round left in place
        self.released = 0  # contexts handed back so far

    def due(self, sad: Sad, packets: int) -> float | None:
        if self._queue:
            return self._next_slice
        if (self._held or packets != self._packets) and (sad.inbound or sad.outbound):
            return self._round_at + self.period
        return None

    def run(self, sad: Sad, now: float, packets: int) -> None:
        due = self.due(sad, packets)
        if due is None or now < due:
            return
        if not self._queue:  # a new round over the SAs installed now
            self._queue = [sa for sa in (*sad.inbound.values(), *sad.outbound.values())
                           if isinstance(sa, InboundSa | OutboundSa)]
            self._round_at, self._packets, self._held = now, packets, 0
        queue = self._queue
        cut = max(0, len(queue) - self.per_tick)
        for sa in queue[cut:]:
            self.released += sa.release_if_idle()
            self._held += sa._transform is not None
        del queue[cut:]
        self._next_slice = now + TICK
