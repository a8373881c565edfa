"""Traps and the packets waiting behind them while IKE negotiates (RFC 4301 5.1), sans-I/O.

A trap is a set of PROTECT policies for a reqid installed before its SA (strongSwan's
``start_action = trap``). Packets that hit it wait in a per-reqid queue, in arrival order,
so the first packets of a flow are sent once IKE has finished instead of being lost to the
application's retransmission timer. Bounds (``WorkerConfig.acquire_queue_*``): per reqid by
count and bytes (the oldest go first), over all traps by bytes (new packets are refused),
and by age. Expiry is driven by a heap holding, per trap with packets, when its oldest one
expires: a timer tick touches only queues that have something to expire.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from ipsecd.dataplane import messages as m
from ipsecd.esp.spd import Policy

# Drop reasons of packets held by a trap (the worker's Drop lists them with the others)
ACQUIRE_OVERFLOW = "acquire_queue_overflow"  # pushed out (oldest first) by the per-reqid bounds
ACQUIRE_FULL = "acquire_queue_full"  # refused: all traps together hold acquire_queue_total bytes
ACQUIRE_EXPIRED = "acquire_queue_expired"  # waited longer than acquire_queue_timeout
ACQUIRE_REMOVED = "acquire_queue_removed"  # its trap was removed before an SA came


@dataclass(slots=True)
class Trap:
    """The PROTECT policies of one trapped reqid and the (arrival time, packet) queue behind them."""

    policies: tuple[Policy, ...]
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    nbytes: int = 0
    expiry: float | None = None  # the heap entry that stands for this queue (None: none)


class TrapQueues:
    """Every trap of the worker and the bounded queues behind them."""

    def __init__(self, drops: dict[str, int], stats: dict[str, int]) -> None:
        self.traps: dict[int, Trap] = {}
        self.queued_bytes = 0  # over every queue, bounded by acquire_queue_total
        self._drops = drops
        self._stats = stats
        self._expiry: list[tuple[float, int]] = []  # (when a trap's oldest packet expires, reqid)

    def get(self, reqid: int) -> Trap | None:
        return self.traps.get(reqid)

    def arm(self, reqid: int, policies: tuple[Policy, ...]) -> tuple[Policy, ...]:
        """Install or replace the trap of ``reqid``; returns the policies it replaced."""
        trap = self.traps.get(reqid)
        if trap is None:
            self.traps[reqid] = Trap(policies)
            return ()
        old, trap.policies = trap.policies, policies
        return old

    def disarm(self, reqid: int) -> tuple[Policy, ...]:
        """Remove the trap of ``reqid``, dropping (and counting) what it held; returns its policies."""
        trap = self.traps.pop(reqid, None)
        if trap is None:
            return ()
        for _item in self.take(trap):
            self._drop(ACQUIRE_REMOVED)
        return trap.policies

    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def enqueue(self, trap: Trap, reqid: int, pkt: bytes, now: float, cfg: m.WorkerConfig) -> None:
        """Queue one packet behind its trap, keeping every bound (oldest packets go first)."""
        size = len(pkt)
        if size > cfg.acquire_queue_bytes or cfg.acquire_queue_packets <= 0:
            self._drop(ACQUIRE_OVERFLOW)
            return
        if self.queued_bytes + size > cfg.acquire_queue_total:
            self._drop(ACQUIRE_FULL)
            return
        q = trap.queue
        while q and (len(q) >= cfg.acquire_queue_packets or trap.nbytes + size > cfg.acquire_queue_bytes):
            _t, old = q.popleft()
            trap.nbytes -= len(old)
            self.queued_bytes -= len(old)
            self._drop(ACQUIRE_OVERFLOW)
        q.append((now, pkt))
        trap.nbytes += size
        self.queued_bytes += size
        if trap.expiry is None:
            trap.expiry = now + cfg.acquire_queue_timeout
            heapq.heappush(self._expiry, (trap.expiry, reqid))
        self._stats["acquire_queued"] = self._stats.get("acquire_queued", 0) + 1

    def take(self, trap: Trap) -> list[tuple[float, bytes]]:
        """Empty a trap's queue (bookkeeping included) and return what it held. Its heap entry
        stays and is found empty when it comes due."""
        items = list(trap.queue)
        trap.queue.clear()
        self.queued_bytes -= trap.nbytes
        trap.nbytes = 0
        return items

    def next_expiry(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    def expire(self, now: float, timeout: float) -> None:
        """Drop queued packets older than ``timeout``: only the queues whose oldest packet is due."""
        heap = self._expiry
        while heap and heap[0][0] <= now:
            when, reqid = heapq.heappop(heap)
            trap = self.traps.get(reqid)
            if trap is None or trap.expiry != when:
                continue  # the trap went, or a newer entry stands for it
            trap.expiry = None
            q = trap.queue
            while q and q[0][0] + timeout <= now:
                _t, old = q.popleft()
                trap.nbytes -= len(old)
                self.queued_bytes -= len(old)
                self._drop(ACQUIRE_EXPIRED)
            if q:
                trap.expiry = q[0][0] + timeout
                heapq.heappush(heap, (trap.expiry, reqid))
