"""Lifetimes of an IKE SA and its Child SAs by time (RFC 7296 2.8, 2.4), as strongSwan sets them.

Soft: rekey after ``rekey_time`` minus a random part of ``rand_time`` (so two peers do
not rekey at once). Hard: IKE SA at rekey_time + over_time, Child SA at life_time.
Reauthentication at ``reauth_time``. DPD probes after ``dpd_delay`` without IKE or
ESP from the peer. Byte/packet limits are the data plane's and reach us through the
owner (IkeManager.rekey_child / expire_child).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.ike.child_sa import ChildSa, ChildSaState
from ipsecd.ike.events import Cause, ReauthDue
from ipsecd.ike.state import IkeState
from ipsecd.ike.tasks import TaskKind

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa


def arm_ike(sa: IkeSa) -> None:
    s = sa.settings
    if s.rekey_time > 0:
        sa.rekey_at = sa.now + max(s.rekey_time - sa.jitter(s.rand_time), 0.0)
        if s.over_time > 0:
            sa.hard_at = sa.now + s.rekey_time + s.over_time
    if s.reauth_time > 0 and sa.reauth_at is None:
        # RFC 7296 2.8 reauthentication: a fresh IKE_SA_INIT/IKE_AUTH, not a rekey; a rekeyed
        # IKE SA inherits its predecessor's deadline, or rekeys would postpone it forever
        sa.reauth_at = sa.now + max(s.reauth_time - sa.jitter(s.rand_time), 0.0)


def arm_child(sa: IkeSa, c: ChildSa) -> None:
    s = c.settings
    if s is None:
        return
    if s.rekey_time > 0:
        c.rekey_at = sa.now + max(s.rekey_time - sa.jitter(s.rand_time), 0.0)
    if s.life_time > 0:
        c.expire_at = sa.now + s.life_time


def dpd_at(sa: IkeSa) -> float | None:
    d = sa.settings.dpd_delay
    if d <= 0 or sa.state != IkeState.ESTABLISHED or not sa.exchanges.idle:
        return None
    return max(sa.last_received, sa.last_traffic_in) + d


def deadlines(sa: IkeSa) -> list[float]:
    """Every lifetime deadline of an established IKE SA and its Child SAs."""
    out = [x for x in (sa.rekey_at, sa.hard_at, sa.reauth_at, dpd_at(sa)) if x is not None]
    for c in sa.children:
        out += [x for x in (c.rekey_at, c.expire_at) if x is not None]
    return out


def rekey_under_way(sa: IkeSa) -> bool:
    """Our IKE SA rekey is in flight or queued behind a request in flight (waiting for the
    network, not for a retry after the peer refused it)."""
    ex = sa.exchanges
    return ex.in_flight({TaskKind.IKE_REKEY}) or any(t.kind is TaskKind.IKE_REKEY for ts in ex.queue for t in ts)


def on_timer(sa: IkeSa, now: float) -> None:
    if sa.hard_at is not None and now >= sa.hard_at and rekey_under_way(sa):
        # The rekey may be queued behind a request being retransmitted (issue 13: 20 % loss,
        # over_time 2.5 s, retransmits after 4 s). The retransmission budget decides whether the
        # peer is dead (the SA then closes); the clock alone must not take a working tunnel down.
        sa.hard_at = now + sa.exchanges.timeout(0)
        sa.log.debug("hard lifetime (rekey_time + over_time) passed with the rekey under way: waiting for it")
    elif sa.hard_at is not None and now >= sa.hard_at:
        sa.hard_at = None
        sa.log.info("IKE SA reached its hard lifetime (rekey_time + over_time): deleting it")
        sa.delete(Cause.EXPIRED, "IKE SA lifetime expired")
        return
    if sa.rekey_at is not None and now >= sa.rekey_at:
        sa.rekey()
    if sa.reauth_at is not None and now >= sa.reauth_at:
        sa.reauth_at = None
        sa.signal(ReauthDue())
    for c in sa.children:
        if c.expire_at is not None and now >= c.expire_at:
            sa.expire_child(c.spi_in, hard=True)
        elif c.rekey_at is not None and now >= c.rekey_at:
            c.rekey_at = None
            if c.state == ChildSaState.INSTALLED:
                sa.child_log.info("Child SA %s reached its soft lifetime", c.name)
                sa.rekey_child(c.spi_in)
    for tasks in sa.exchanges.release_due(now):
        sa.enqueue(tasks)
    dpd = dpd_at(sa)
    if dpd is not None and now >= dpd:
        sa.log.debug("no traffic from the peer for %.0fs: checking liveness", sa.settings.dpd_delay)
        sa.send_liveness()
