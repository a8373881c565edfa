"""The IKE side of the shell: datagrams and the clock in, datagrams out, events to the parts.

As aioquic's asyncio protocol: ``on_datagrams``/``on_timer`` feed the sans-I/O manager,
``flush`` drains what it produced -- events first, to the installer, the connection
policy and the counters, then the datagrams -- and re-arms one timer. A datagram of an
IKE SA whose inbound Child SA is still being installed is held by the installer and
sent once that SA is in the data plane (the ordering contract in ipsecd/ike/manager.py,
kept per IKE SA: other SAs' datagrams never wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ipsecd.ike.events import Event, IkeSaClosed, IkeSaEstablished
from ipsecd.ike.frontdoor import opens_ike_sa
from ipsecd.ike.manager import IkeManager
from ipsecd.shell.stats import ShellStats

if TYPE_CHECKING:
    from ipsecd.dataplane.ike_socket import IkeTransport
    from ipsecd.shell.installer import ChildSaInstaller
    from ipsecd.shell.policy import ConnectionPolicy
    from ipsecd.shell.radius import RadiusService
    from ipsecd.shell.vips import VirtualIpShell
    from ipsecd.shell.xshard import ClaimRelay

log = logging.getLogger("ipsecd.ike")
T = TypeVar("T")


class TaskSet:
    """Background tasks that are never lost: kept until done, and a failure is logged."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, what))
        return task

    def _done(self, task: asyncio.Future[Any], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("%s failed: %s: %s", what, type(exc).__name__, exc, exc_info=exc)

    def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()


class IkeShell:
    def __init__(self, manager: IkeManager, transport: IkeTransport, stats: ShellStats) -> None:
        self.manager = manager
        self.transport = transport
        self.stats = stats
        self.tasks = TaskSet()
        self.installer: ChildSaInstaller | None = None
        self.policy: ConnectionPolicy | None = None
        self.vips: VirtualIpShell | None = None  # a client's virtual IPs and DNS (before the installer)
        self.radius: RadiusService | None = None
        self.xshard: ClaimRelay | None = None  # IKE shards: INITIAL_CONTACT and unique across them
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, list[asyncio.Future[Event]]] = {}

    # ------------------------------------------------------------------ input
    def on_datagram(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self.on_datagrams([(data, local, remote)])

    def on_datagrams(self, batch: list[tuple[bytes, tuple[str, int], tuple[str, int]]]) -> None:
        """What the socket held at one wake-up: the datagrams of IKE SAs we may hold first;
        the IKE_SA_INITs that would open new ones one loop turn later.

        Under a login storm the queue holds both, and a finishing login (its IKE_AUTH) is
        worth more than a new one starting: its answer is computed first, and the install of
        its Child SA (which its response waits for, the ordering contract below) goes to the
        data plane before the new SAs' key exchanges take the CPU -- the turn in between runs
        the install tasks just spawned. charon orders its job queue by exchange too
        (process_message_job.c: INFORMATIONAL high, IKE_SA_INIT and CREATE_CHILD_SA medium,
        IKE_AUTH low, because its IKE_AUTH may block one of its threads on RADIUS or OCSP;
        here nothing blocks the loop, so the shorter way to a finished handshake goes first;
        charon sheds IKE_SA_INITs under load with init_limit_job_load, our front door's limits
        do that). Order within each group is kept; an IKE_SA_INIT request has no IKE SA yet,
        so nothing overtakes a datagram of its own SA. The ordering contract holds for each
        group: every event (installs) is handled before any datagram of it is sent."""
        now = time.monotonic()
        fresh = []
        for item in batch:
            if opens_ike_sa(item[0]):
                fresh.append(item)
            else:
                self.manager.receive_datagram(item[0], item[1], item[2], now)
        if fresh and len(fresh) < len(batch):
            self.flush()
            asyncio.get_running_loop().call_soon(self._receive, fresh)
        else:
            self._receive(fresh)

    def _receive(self, batch: list[tuple[bytes, tuple[str, int], tuple[str, int]]]) -> None:
        now = time.monotonic()
        for data, local, remote in batch:
            self.manager.receive_datagram(data, local, remote, now)
        self.flush()

    def on_timer(self) -> None:
        self._timer = None
        self.manager.handle_timer(time.monotonic())
        self.flush()

    def act(self, job: Callable[[IkeManager, float], T]) -> T:
        """Run one job on the manager now (initiate, terminate, rekey, ...) and flush its output."""
        try:
            return job(self.manager, time.monotonic())
        finally:
            self.flush()

    # ------------------------------------------------------------------ output
    def flush(self) -> None:
        datagrams = self.manager.datagrams_to_send()
        while (ev := self.manager.next_event()) is not None:
            self.stats.on_event(ev)
            if self.vips is not None:
                self.vips.on_event(ev)
            if self.radius is not None:  # before the installer: accounting reads a Child SA's counters first
                self.radius.on_event(ev)
            if self.installer is not None:
                self.installer.on_event(ev)
            if self.policy is not None:
                self.policy.on_event(ev)
            if self.xshard is not None:
                self.xshard.on_event(ev)
            if isinstance(ev, IkeSaEstablished | IkeSaClosed):
                for fut in self._waiters.pop(ev.ike_sa_id, []):
                    if not fut.done():
                        fut.set_result(ev)
        for d in datagrams:
            if self.installer is None or not self.installer.hold(d):
                self.transport.send(d.data, d.local, d.remote)
        self._arm()

    def _arm(self) -> None:
        t = self.manager.get_timer()
        if self._timer is not None:
            if t is not None and self._timer.when() == t:
                return
            self._timer.cancel()
            self._timer = None
        if t is not None:
            self._timer = asyncio.get_running_loop().call_at(t, self.on_timer)

    def outcome(self, ike_sa_id: int) -> asyncio.Future[Event]:
        """Resolves with the IkeSaEstablished or IkeSaClosed of this IKE SA."""
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(ike_sa_id, []).append(fut)
        return fut

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.tasks.cancel_all()
