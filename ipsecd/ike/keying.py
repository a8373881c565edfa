"""keyingtries: how many IKE SAs one initiation may use, and when the next one goes.

An *initiation* is one wish to have a connection (or one child of it) up: start_action
start, ``ipsecctl up``, a trap's acquire, a restart after dpd_action or close_action. Each
*attempt* is a fresh IKE SA (new SPI, new nonces, new key exchange). strongSwan's charon
counts, per IKE SA still connecting, how often the retransmission sequence ran out
("peer not responding") and starts over until the connection's ``keyingtries`` is
reached; ``keyingtries = 0`` never stops. A setup that failed for any other reason is not
retried: the peer answered, and asking again would get the same answer (and, for
authentication, lock out accounts or fill the peer's logs). ``AFTER`` is that rule as a
table over every :class:`Cause`.

Between attempts ipsecd waits ``retry_delay(n)``: RETRY_BASE doubling per failed attempt
up to RETRY_CAP, plus up to RETRY_JITTER of it at random. charon starts over at once,
which is harmless with its default schedule (an attempt already takes ~165 s of
retransmissions), but with the short schedules operators pick for fast failover
(``retransmit.tries: 2``, one attempt every ~5 s) ``keyingtries: 0`` would hammer a head
end that is down for hours. The cap keeps a branch from sleeping long once the head end is
back (the attempt under way notices it anyway: its retransmissions reach it); the jitter
spreads the branches that lost the same head end at the same moment, so they do not come
back in lockstep into its front door (cookies, half-open limits).

A success ends the initiation: the next one (after a DPD restart, say) counts from 1 again.
When the budget is spent the engine emits :class:`~ipsecd.ike.events.InitiationFailed`
with the last attempt's cause; a trap stays armed (the next packet starts a new
initiation), start_action start waits for ``ipsecctl up``, a reload or a restart.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from ipsecd.ike.events import Cause, Event, IkeSaClosed, IkeSaEstablished, InitiationFailed
from ipsecd.ike.ts import TriggerPacket

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.manager import IkeManager

log = logging.getLogger("ipsecd.ike")

RETRY_BASE = 2.0  # seconds before the second attempt
RETRY_CAP = 60.0  # the wait stops doubling here
RETRY_JITTER = 0.5  # up to this share of the wait is added at random


class Next(Enum):
    """What an attempt that closed before it was established leads to."""

    RETRY = "retry"  # counted; another attempt while keyingtries allows
    FAIL = "fail"  # the initiation failed for good: InitiationFailed
    DONE = "done"  # not a failure: asked for, or another IKE SA took over


AFTER: dict[Cause, Next] = {
    Cause.TIMEOUT: Next.RETRY,  # no answer (IKE_SA_INIT or IKE_AUTH): the peer may be back later
    Cause.AUTH_FAILED: Next.FAIL,
    Cause.NO_PROPOSAL: Next.FAIL,
    Cause.INVALID_KE: Next.FAIL,  # the group switch is retried inside the exchange (RFC 7296 1.2)
    Cause.TS_UNACCEPTABLE: Next.FAIL,
    Cause.PEER_REFUSED: Next.FAIL,
    Cause.PROTOCOL_ERROR: Next.FAIL,
    Cause.CONFIG: Next.FAIL,
    Cause.INSTALL_FAILED: Next.FAIL,
    Cause.EXPIRED: Next.FAIL,
    Cause.PEER_DEAD: Next.FAIL,
    Cause.DELETED_BY_PEER: Next.FAIL,
    Cause.REDIRECTED: Next.FAIL,
    Cause.DELETED_LOCALLY: Next.DONE,  # down, reload, shutdown
    Cause.REKEYED: Next.DONE,
    Cause.REAUTHENTICATED: Next.DONE,
    Cause.REPLACED: Next.DONE,
    Cause.DUPLICATE: Next.DONE,  # the peer's simultaneous IKE SA is the one that came up
}


def retry_delay(failed: int, jitter: float = 0.0) -> float:
    """Seconds to wait after attempt number ``failed`` (1-based) failed; ``jitter`` in [0, 1)."""
    wait = min(RETRY_BASE * 2.0 ** min(failed - 1, 32), RETRY_CAP)
    return wait * (1.0 + RETRY_JITTER * jitter)


@dataclass(frozen=True)
class Attempt:
    """One attempt of an initiation: what to initiate again, and its number (1-based)."""

    name: str
    child: str | None  # None: every child of the connection
    trigger: TriggerPacket | None  # the packet of an acquire (RFC 7296 2.9)
    number: int = 1


@dataclass
class Keying:
    """The attempts of one engine: the IKE SAs still connecting, and the retries waiting."""

    live: dict[int, Attempt] = field(default_factory=dict)  # IKE SA id -> the attempt it is
    waiting: list[tuple[float, int, Attempt]] = field(default_factory=list)  # a heap of retries due
    _seq: int = 0

    def track(self, sa: IkeSa, attempt: Attempt) -> None:
        """``sa`` was just created for ``attempt``; a new initiation replaces a retry of the same."""
        if attempt.number == 1:
            self.cancel(attempt.name, attempt.child)
        self.live[sa.ike_sa_id] = attempt

    def retry_waiting(self, name: str, child: str) -> bool:
        """Does a retry of connection ``name`` that brings ``child`` wait to go?"""
        return any(a.name == name and a.child in (None, child) for _, _, a in self.waiting)

    def cancel(self, name: str | None = None, child: str | None = None) -> int:
        """Drop the retries waiting for ``name`` (None: all; with ``child``: only its own). Returns how many."""
        keep = [w for w in self.waiting
                if name is not None and (w[2].name != name or (child is not None and w[2].child != child))]
        dropped = len(self.waiting) - len(keep)
        if dropped:
            heapq.heapify(keep)
            self.waiting = keep
        return dropped

    def earliest(self, other: float | None) -> float | None:
        """The sooner of ``other`` (the SAs' timers) and the first retry due."""
        if not self.waiting:
            return other
        first = self.waiting[0][0]
        return first if other is None else min(first, other)

    def after(self, sa: IkeSa, ev: Event, counters: MutableMapping[str, int]) -> tuple[Event, ...]:
        """``sa`` emitted ``ev``: end its initiation on success, schedule the next attempt or give up."""
        if isinstance(ev, IkeSaEstablished):
            self.live.pop(ev.ike_sa_id, None)
            return ()
        if not isinstance(ev, IkeSaClosed):
            return ()
        attempt = self.live.pop(ev.ike_sa_id, None)
        if attempt is None or ev.established or ev.replaced_by is not None:
            return ()
        step = AFTER[ev.cause]
        if step is Next.DONE:
            return ()
        tries = sa.settings.keyingtries
        of = f"{tries}" if tries else "forever"
        if step is Next.RETRY and (tries == 0 or attempt.number < tries):
            delay = retry_delay(attempt.number, sa.jitter(1.0))
            self._seq += 1
            heapq.heappush(self.waiting, (sa.now + delay, self._seq, dataclasses.replace(attempt,
                                                                                        number=attempt.number + 1)))
            counters["keying_retries"] = counters.get("keying_retries", 0) + 1
            sa.log.info("peer not responding, trying again (attempt %d of %s) in %.1fs", attempt.number + 1, of,
                        delay)
            return ()
        counters["initiations_failed"] = counters.get("initiations_failed", 0) + 1
        sa.log.warning("initiating %s failed after %d attempt(s) (keyingtries %s): %s", sa.settings.name,
                       attempt.number, of, ev.reason)
        return (InitiationFailed(sa.settings.name, attempt.child, attempt.number, ev.cause, ev.reason,
                                 ev.ike_sa_id),)

    def retry_due(self, manager: IkeManager, now: float) -> None:
        """Start the attempts whose wait is over (a connection gone by a reload is skipped)."""
        while self.waiting and self.waiting[0][0] <= now:
            _, _, attempt = heapq.heappop(self.waiting)
            try:
                manager.initiate(attempt.name, now, trigger=attempt.trigger, child=attempt.child, attempt=attempt)
            except (KeyError, ValueError) as e:
                log.info("%s: attempt %d not started: %s", attempt.name, attempt.number, e)
