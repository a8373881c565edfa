"""Deleting every IKE SA at shutdown, in a bounded time whatever the daemon holds.

A gateway holding thousands of SAs must still stop inside systemd's stop timeout
(``TimeoutStopSec``, 90 s by default). Sending every Delete at once overflows the peers'
(often one load balancer's or NAT's) receive queues and our own: most are lost and wait for
a retransmission that never comes before we give up. So the Deletes go out in a window:
at most ``window`` outstanding, the next one as soon as an earlier IKE SA is gone
(answered, or given up by its own retransmission limit), until every SA is gone or the
deadline passes. What is still open then is simply dropped: the peer's DPD cleans up
(RFC 7296 2.4), as after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipsecd.ike.events import Cause

if TYPE_CHECKING:
    from ipsecd.shell.ike_shell import IkeShell

log = logging.getLogger("ipsecd.cfg")

WINDOW = 128  # Deletes outstanding at a time
POLL = 0.02  # seconds between looks at which SAs are gone


@dataclass(frozen=True)
class ShutdownReport:
    held: int  # IKE SAs when shutdown began
    deleted: int  # Deletes sent
    left: int  # IKE SAs still open at the deadline (dropped without an answer)
    seconds: float


def wait_budget(n: int, base: float, per_sa: float, cap: float) -> float:
    """Seconds to wait for ``n`` SAs' Deletes: ``base + n * per_sa``, never over ``cap``."""
    return min(base + n * per_sa, cap)


async def delete_all(shell: IkeShell, budget: float, window: int = WINDOW) -> ShutdownReport:
    """Delete every IKE SA, ``window`` Deletes at a time, for at most ``budget`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + budget
    manager = shell.manager
    todo = [sa.ike_sa_id for sa in manager.list_sas()]
    todo.reverse()  # pop() from the end: the oldest SAs first
    held = len(todo)
    sent: set[int] = set()
    outstanding: set[int] = set()
    while manager.sas and loop.time() < deadline:
        outstanding = {i for i in outstanding if i in manager.sas}
        if not todo and len(manager.sas) > len(outstanding):  # SAs that began meanwhile
            todo = [i for i in manager.sas if i not in sent]
        while todo and len(outstanding) < window:
            ike_sa_id = todo.pop()
            if ike_sa_id not in manager.sas:
                continue
            shell.act(lambda m, now, i=ike_sa_id: m.delete_ike(i, now, Cause.DELETED_LOCALLY,  # type: ignore[misc]
                                                             "shutting down"))
            outstanding.add(ike_sa_id)
            sent.add(ike_sa_id)
        await asyncio.sleep(POLL)
    left = len(manager.sas)
    took = loop.time() - start
    if left:
        log.warning("shutdown: %d IKE SA(s) still open after %.1f s: dropped without an answer", left, took)
    return ShutdownReport(held, len(sent), left, took)
