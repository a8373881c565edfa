"""Volume and sequence-number lifetimes of the worker's SAs (RFC 4301 4.4.2.1), without scans.

Counting is the SAs' job (``counters.bytes/packets``, ``OutboundSa.seq``); this module decides
when to look at those counters. Looking at every SA on every tick cost O(SAs) per tick -- 42 %
of the worker's CPU at 5,000 SAs (issue 11). Here an SA is looked at only once it *could*
have reached its next limit:

* The shell keeps, per direction, an upper bound of the bytes and packets all SAs together
  can have processed (``Traffic``: what it read from the TUN, what arrived as ESP). No SA's
  counter can grow by more than that total grows.
* When an SA is checked, the distance to its next limit (bytes left, packets left, and for
  an outbound SA the sequence numbers left before the soft or hard "seq" limit) is added to
  the current total and pushed on a heap. Until the total passes that mark the SA cannot
  have reached the limit, so a tick costs one comparison with each heap's top.

An SA far from its limits is therefore touched again only after the whole worker moved that
much traffic, and nothing is added to the per-packet path. Checks still happen on ticks of
``lifetime_check_interval`` (the caller's timer), so a limit may be overshot by what flows in
one interval, as before.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from ipsecd.dataplane import messages as m
from ipsecd.esp.ah import AnyOutboundSa
from ipsecd.esp.sa import SaCounters

SEQ_SOFT_MARGIN = 1 << 28  # soft "seq" lifetime this many packets before the counter would cycle
COMPACT_FLOOR = 1024  # heap entries tolerated beyond twice the live ones before stale ones are dropped

Key = tuple[str, int]  # ("out", reqid) or ("in", spi)
_Mark = tuple[int, int, Key]  # (traffic total at which the SA may cross, generation, key)


@dataclass(slots=True)
class Traffic:
    """Upper bounds of what all SAs of each direction together processed; the shell adds to
    them (per drain, not per packet) and they only grow."""

    out_bytes: int = 0
    out_packets: int = 0
    in_bytes: int = 0
    in_packets: int = 0

    @property
    def packets(self) -> int:
        """Both directions: the idle sweep (idle.py) runs only after some moved."""
        return self.out_packets + self.in_packets


@dataclass(slots=True)
class Watched:
    direction: str  # "out" | "in"
    reqid: int
    spi: int
    counters: SaCounters
    lifetime: m.Lifetime
    sa: AnyOutboundSa | None = None  # outbound: its sequence number is watched too
    sent: frozenset[str] = frozenset()  # "soft:bytes", "hard:seq"... already reported (shared while empty)
    gen: int = 0  # which heap entries are current (older ones are skipped when popped)


class LifetimeWatch:
    """The SAs with limits, each on a heap keyed by the traffic total at which it may cross."""

    def __init__(self) -> None:
        self.traffic = Traffic()
        self._watched: dict[Key, Watched] = {}
        self._out_bytes: list[_Mark] = []
        self._out_packets: list[_Mark] = []
        self._in_bytes: list[_Mark] = []
        self._in_packets: list[_Mark] = []
        self._gen = 0

    def watch(self, w: Watched) -> None:
        """Start (or, on a rekey of the same key, restart) watching an SA."""
        key = (w.direction, w.reqid if w.direction == "out" else w.spi)
        self._watched[key] = w
        self._arm(key, w)
        self._maybe_compact()  # a restart leaves the old entries of the key stale

    def forget(self, direction: str, ident: int) -> None:
        """The SA is gone: its heap entries become stale (dropped when they surface, or when
        stale entries outnumber live ones: ``_compact``)."""
        self._watched.pop((direction, ident), None)
        self._maybe_compact()

    def heap_entries(self) -> int:
        return len(self._out_bytes) + len(self._out_packets) + len(self._in_bytes) + len(self._in_packets)

    def _maybe_compact(self) -> None:
        """Stale entries of SAs far from any limit never surface (an outbound SA's sequence mark
        is ~2**32 packets away): without this, every SA installed and deleted would leave its
        entries behind for good (issue 11: the worker grew by megabytes while holding a few SAs).
        Each SA has at most one entry per heap of its direction, so live entries are at most
        2 per SA; rebuilding once the heaps hold twice that (and a floor) is O(1) amortized."""
        if self.heap_entries() <= 4 * len(self._watched) + COMPACT_FLOOR:
            return
        for heap in (self._out_bytes, self._out_packets, self._in_bytes, self._in_packets):
            heap[:] = [e for e in heap if (w := self._watched.get(e[2])) is not None and w.gen == e[1]]
            heapq.heapify(heap)

    def pending(self) -> bool:
        """Whether some SA may have reached a limit since it was last checked."""
        t = self.traffic
        return bool(
            (self._out_bytes and self._out_bytes[0][0] <= t.out_bytes)
            or (self._out_packets and self._out_packets[0][0] <= t.out_packets)
            or (self._in_bytes and self._in_bytes[0][0] <= t.in_bytes)
            or (self._in_packets and self._in_packets[0][0] <= t.in_packets)
        )

    def check(self) -> list[tuple[Watched, str, str]]:
        """Limits reached since the last check, as (SA, kind, what), each reported once.

        A hard limit ends the watch (the caller removes the SA). A hard byte/packet limit
        counts only once its soft event went out at an earlier check: a flow fast enough to
        cross both between two checks still gets its rekey started before the SA is cut (the
        hard limit is then late by at most one check interval).
        """
        t = self.traffic
        due: dict[Key, Watched] = {}
        for heap, total in ((self._out_bytes, t.out_bytes), (self._out_packets, t.out_packets),
                            (self._in_bytes, t.in_bytes), (self._in_packets, t.in_packets)):
            while heap and heap[0][0] <= total:
                _mark, gen, key = heapq.heappop(heap)
                w = self._watched.get(key)
                if w is not None and w.gen == gen:
                    due[key] = w
        out: list[tuple[Watched, str, str]] = []
        for key, w in due.items():  # re-armed only now: nothing is popped twice in one check
            hard = False
            for kind, what in _hits(w):
                w.sent = w.sent | {f"{kind}:{what}"}
                out.append((w, kind, what))
                if kind == "hard":
                    hard = True
                    break
            if hard:
                del self._watched[key]
            else:
                self._arm(key, w)
        return out

    def _arm(self, key: Key, w: Watched) -> None:
        self._gen += 1
        w.gen = gen = self._gen
        lt, c, sent = w.lifetime, w.counters, w.sent
        left_bytes = _left(c.bytes, lt.soft_bytes, lt.hard_bytes, "bytes", sent)
        left_packets = _left(c.packets, lt.soft_packets, lt.hard_packets, "packets", sent)
        sa = w.sa
        if sa is not None:  # every protected packet takes one sequence number
            marks = [lim for lim, name in ((sa.seq_limit - SEQ_SOFT_MARGIN, "soft:seq"), (sa.seq_limit, "hard:seq"))
                     if name not in sent]
            if marks:
                left_seq = max(0, min(marks) - sa.seq)
                left_packets = left_seq if left_packets is None else min(left_packets, left_seq)
        t = self.traffic
        if w.direction == "out":
            heaps, totals = (self._out_bytes, self._out_packets), (t.out_bytes, t.out_packets)
        else:
            heaps, totals = (self._in_bytes, self._in_packets), (t.in_bytes, t.in_packets)
        if left_bytes is not None:
            heapq.heappush(heaps[0], (totals[0] + left_bytes, gen, key))
        if left_packets is not None:
            heapq.heappush(heaps[1], (totals[1] + left_packets, gen, key))


def _left(used: int, soft: int, hard: int, what: str, sent: frozenset[str]) -> int | None:
    """How much may still pass before the next event for ``what``; None: nothing left to report."""
    if soft and f"soft:{what}" not in sent:
        return max(0, soft - used)
    if hard and f"hard:{what}" not in sent:
        return max(0, hard - used)
    return None


def _hits(w: Watched) -> list[tuple[str, str]]:
    """The limits of ``w`` reached now and not yet reported, soft before hard."""
    lt, c, sent = w.lifetime, w.counters, w.sent
    hits: list[tuple[str, str]] = []
    for what, used, soft, hard in (("bytes", c.bytes, lt.soft_bytes, lt.hard_bytes),
                                   ("packets", c.packets, lt.soft_packets, lt.hard_packets)):
        if hard and used >= hard and (not soft or f"soft:{what}" in sent):
            hits.append(("hard", what))
        elif soft and used >= soft:
            hits.append(("soft", what))
    sa = w.sa
    if sa is not None:
        if sa.seq >= sa.seq_limit:
            hits.append(("hard", "seq"))  # RFC 4303 3.3.3: the counter must not cycle
        elif sa.seq >= sa.seq_limit - SEQ_SOFT_MARGIN:
            hits.append(("soft", "seq"))
    return [(kind, what) for kind, what in hits if f"{kind}:{what}" not in sent]
