"""The only daemon-side table of Child SAs, and the one place that installs them in the data plane.

Ordering (RFC 7296 2.8 make-before-break, the contract in ipsecd/ike/manager.py):
- a new Child SA: the datagrams its IKE SA produced meanwhile (our answer to the peer,
  or our Delete of the SA a rekey replaced) are held (``hold``) until the SA is in the
  data plane -- both directions, its policies and routes, so the peer's first packet
  and its reply both find their way; keepalives come after. Other IKE SAs' datagrams
  never wait.
- a rekey we answered: inbound at once, but we keep sending on the old SA until the
  initiator (who installs both directions on our answer) deletes it (``_retire``).
- everything for one reqid happens in order (installs, peer moves, removals), so a
  NAT-T peer update can never overtake the install it applies to.
A failed install fails the Child SA in IKE as well (Cause.INSTALL_FAILED): IKE and the
data plane never disagree about which SAs exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from ipsecd.dataplane import messages as dp
from ipsecd.esp.sa import SaParams
from ipsecd.esp.spd import range_to_prefixes
from ipsecd.ike.events import (
    Cause,
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    Event,
    IkeSaMoved,
)
from ipsecd.settings_from_config import child_sa_params

if TYPE_CHECKING:
    from ipsecd.config import ChildConfig, Config
    from ipsecd.ike.shard import Shard
    from ipsecd.shell.ike_shell import IkeShell

log = logging.getLogger("ipsecd.child")
RETIRE_GRACE = 2.0  # seconds an old inbound SA still decrypts after its rekey completed
TRAFFIC_POLL = 5.0  # seconds between reading inbound counters for DPD (RFC 7296 2.4)


@dataclass
class _PendingOut:
    """A rekey we answered: the new outbound SA waits for the initiator's Delete of the old one."""

    spi_in: bytes
    outbound: SaParams
    lifetime: dp.Lifetime
    mss: int | None


class ChildTags:
    """The tag of each (connection, child): a small integer its Child SAs carry into the worker
    (``InstallSa.tag``), under which the worker sums their counters, removed SAs included, so
    a metrics scrape reads O(connections) sums instead of every SA's counters (issue 11).

    Tags are handed out in order of first use and never reused while the process lives (a
    connection a reload removed keeps its tag: its totals stay labelled). IKE shards share the
    one worker: shard k of N hands out k+1, k+1+N, k+1+2N..., so no two processes collide and
    each labels its own (``ControlHandlers.counters``). 0 is "no tag". Bounded by the config's
    (connection, child) names: nothing a peer sends adds one."""

    def __init__(self, shard: Shard) -> None:
        self._first, self._step = shard.index + 1, shard.count
        self.tags: dict[tuple[str, str], int] = {}

    def of(self, conn: str, child: str) -> int:
        tag = self.tags.get((conn, child))
        if tag is None:
            tag = self.tags[(conn, child)] = self._first + self._step * len(self.tags)
        return tag

    def names(self) -> dict[str, list[str]]:
        """tag (as text, for JSON) -> [connection, child]."""
        return {str(t): [conn, child] for (conn, child), t in self.tags.items()}


class ChildSaInstaller:
    def __init__(self, shell: IkeShell, dataplane: Any, config: Callable[[], Config]) -> None:
        self.shell = shell
        self.dataplane = dataplane  # ipsecd.dataplane.client.DataPlane, or None (--no-dataplane)
        self.config = config
        self.children: dict[bytes, ChildSaEstablished] = {}  # inbound SPI -> the Child SA
        self._spi_in_of: dict[bytes, bytes] = {}  # outbound SPI -> inbound SPI
        self._encap_peers: Counter[tuple[str, int]] = Counter()  # UDP-encapsulated Child SAs per peer endpoint
        self.ready = asyncio.Event()  # IKE may finish a Child SA while the worker still starts
        self.install_failures = 0
        self._holding: dict[int, int] = {}  # IKE SA id -> inbound installs under way
        self._held: dict[int, list[Datagram]] = {}
        self._last: dict[int, asyncio.Future[Any]] = {}  # reqid -> its latest data-plane job
        self._pending_out: dict[int, _PendingOut] = {}  # reqid -> rekey responder's new outbound SA
        self._covers: tuple[object, dict[str, tuple[IPv4Network | IPv6Network, ...]]] = (None, {})
        self.stopping = False  # shutdown: the worker and every route go at once, no job per deleted SA
        self.tags = ChildTags(shell.manager.shard)
        if dataplane is None:
            self.ready.set()

    # ------------------------------------------------------------------ from the IKE shell
    def on_event(self, ev: Event) -> None:
        if isinstance(ev, ChildSaEstablished):
            self.children[ev.spi_in] = ev
            self._spi_in_of[ev.spi_out] = ev.spi_in
            if ev.encap:
                self._encap_peers[ev.remote] += 1
            if self.dataplane is not None:
                # this IKE SA's next datagrams (our answer, or the Delete of a rekeyed SA) wait
                # until the new SA can receive
                self._hold_for(ev.ike_sa_id)
                self._serial(ev.reqid, lambda: self._install(ev), f"install of Child SA {ev.name}/{ev.child}")
        elif isinstance(ev, ChildSaDeleted):
            gone = self.children.pop(ev.spi_in, None)
            if gone is not None:
                self._spi_in_of.pop(gone.spi_out, None)
                if gone.encap:
                    self._encap_peers[gone.remote] -= 1
                    if self._encap_peers[gone.remote] <= 0:
                        del self._encap_peers[gone.remote]
            self.shell.manager.release_spi(ev.spi_in)
            if self.dataplane is None or self.stopping:
                return
            if ev.reqid_in_use:
                # A rekey we answered is complete (the initiator deleted the old SA): switch our
                # outbound to the new SA before our answer to that Delete leaves, or the peer
                # drops the old inbound SA while we still send on it.
                self._hold_for(ev.ike_sa_id)
                self._serial(ev.reqid, lambda: self._retire(ev),
                             f"switch to the new outbound SA of {ev.name}/{ev.child}")
            else:
                self._serial(ev.reqid, lambda: self._uninstall(ev, gone), f"removal of Child SA {ev.name}/{ev.child}")
        elif isinstance(ev, IkeSaMoved) and self.dataplane is not None:
            log.info("Child SAs of %s follow to %s[%d] - %s[%d]", ev.name, ev.local[0], ev.local[1], ev.remote[0],
                     ev.remote[1])
            for reqid in ev.child_reqids:
                self._serial(reqid, functools.partial(self._move, reqid, ev), f"peer update of {ev.name}")

    def hold(self, d: Datagram) -> bool:
        """Keep ``d`` back while its IKE SA's inbound Child SA is not installed yet."""
        if not self._holding.get(d.ike_sa_id):
            return False
        self._held.setdefault(d.ike_sa_id, []).append(d)
        return True

    def _hold_for(self, ike_sa_id: int) -> None:
        self._holding[ike_sa_id] = self._holding.get(ike_sa_id, 0) + 1

    def _release(self, ike_sa_id: int) -> None:
        left = self._holding.get(ike_sa_id, 0) - 1
        if left > 0:
            self._holding[ike_sa_id] = left
            return
        self._holding.pop(ike_sa_id, None)
        for d in self._held.pop(ike_sa_id, []):
            self.shell.transport.send(d.data, d.local, d.remote)

    # ------------------------------------------------------------------ data-plane jobs
    def _serial(self, reqid: int, job: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        """Run ``job()`` after every earlier job of the same reqid (the coroutine is made only then,
        so a job cancelled at shutdown leaves no coroutine that was never awaited)."""
        before = self._last.get(reqid)

        async def run() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await job()

        task = self.shell.tasks.spawn(run(), what)
        self._last[reqid] = task
        task.add_done_callback(lambda t: self._last.pop(reqid, None) if self._last.get(reqid) is t else None)

    def _child_config(self, ev: ChildSaEstablished | ChildSaDeleted) -> ChildConfig | None:
        conn = self.config().connections.get(ev.name)
        return conn.children.get(ev.child) if conn is not None else None

    async def _install(self, ev: ChildSaEstablished) -> None:
        inbound, outbound, policies = child_sa_params(ev)
        child = self._child_config(ev)
        clamp = None if child is None or child.mss_clamp is None else (
            0 if child.mss_clamp == "auto" else int(child.mss_clamp))
        lifetime = volume_lifetime(child)
        tag = self.tags.of(ev.name, ev.child)
        try:
            if not self.ready.is_set():  # wait_for costs a task: only while the worker starts
                await asyncio.wait_for(self.ready.wait(), 30)
            if self.shell.vips is not None:  # a client: its virtual IP is the routes' source
                await self.shell.vips.ready(ev.ike_sa_id)
            if ev.rekeyed_spi_in is not None and not ev.initiator:
                # a rekey we answered: receive on the new SA at once, keep sending on the old
                # one until the rekey initiator deletes it
                await self.dataplane.install_inbound(ev.reqid, inbound, lifetime, tag=tag)
                self._pending_out[ev.reqid] = _PendingOut(ev.spi_in, outbound, lifetime, clamp)
                return
            self._pending_out.pop(ev.reqid, None)
            # Both directions and the policies, so the peer's first packet finds its answer's way
            # back; route-based children (interface set) get no routes: the user routes into the TUN
            await self.dataplane.install_child_sa(inbound, outbound, ev.reqid, policies, mss_clamp=clamp,
                                                  route_via_tun=child is None or child.interface is None,
                                                  lifetime=lifetime, route_cover=self._pool_prefixes(ev.name),
                                                  tag=tag)
        except Exception as e:
            self.install_failures += 1
            self.shell.stats.count("child_sa_install_failures")
            why = f"the data plane refused it: {e}"
            log.error("cannot install Child SA %s/%s: %s: deleting it", ev.name, ev.child, why)
            self.shell.act(lambda m, now: m.delete_child(ev.spi_in, now, Cause.INSTALL_FAILED, why))
            return
        finally:
            self._release(ev.ike_sa_id)
        await self._keepalive(ev)

    def _pool_prefixes(self, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
        """The prefixes of the connection's pools: one route each serves every client's virtual IP."""
        config = self.config()
        seen, cache = self._covers
        if seen is not config:
            cache = {}
            self._covers = (config, cache)
        got = cache.get(name)
        if got is None:
            conn = config.connections.get(name)
            nets: list[IPv4Network | IPv6Network] = []
            for pool in conn.pools if conn is not None else ():
                spec = config.pools.get(pool)
                if spec is None:
                    continue
                lo, hi = spec.addrs
                nets += spec.routed or [ip_network((n, plen)) for n, plen in
                                        range_to_prefixes(int(lo), int(hi), lo.max_prefixlen)]
            got = cache[name] = tuple(nets)
        return got

    async def _keepalive(self, ev: ChildSaEstablished) -> None:
        sa = self.shell.manager.find(ev.ike_sa_id)
        keep_alive = self.config().settings.keep_alive
        if sa is not None and sa.local_behind_nat and ev.encap and keep_alive > 0:
            # RFC 3948 2.3: keep our NAT mapping open from the port ESP uses
            await self.dataplane.set_keepalive(ev.remote[0], ev.remote[1], keep_alive)

    async def _retire(self, ev: ChildSaDeleted) -> None:
        """A rekeyed predecessor (or a losing collision twin) goes; its successor keeps the reqid."""
        try:
            pending = self._pending_out.get(ev.reqid)
            if pending is not None and pending.spi_in == ev.spi_in:
                self._pending_out.pop(ev.reqid, None)  # the twin that lost: never send on it
            pending = self._pending_out.pop(ev.reqid, None)
            if pending is not None:
                await self.dataplane.install_outbound(ev.reqid, pending.outbound, pending.lifetime, pending.mss,
                                                      tag=self.tags.of(ev.name, ev.child))
        finally:
            self._release(ev.ike_sa_id)
        # packets the peer sent on the old SA may still be in flight: accept them a moment longer
        self.shell.tasks.spawn(self._remove_inbound_later(ev.spi_in), f"removal of old inbound SA {ev.spi_in.hex()}")

    async def _remove_inbound_later(self, spi_in: bytes) -> None:
        await asyncio.sleep(RETIRE_GRACE)
        await self.dataplane.delete_inbound((int.from_bytes(spi_in, "big"),))

    async def _uninstall(self, ev: ChildSaDeleted, gone: ChildSaEstablished | None) -> None:
        self._pending_out.pop(ev.reqid, None)
        await self.dataplane.delete_child_sa(ev.reqid)
        if gone is not None and gone.encap and gone.remote not in self._encap_peers:
            await self.dataplane.set_keepalive(gone.remote[0], gone.remote[1], 0)

    async def _move(self, reqid: int, ev: IkeSaMoved) -> None:
        """RFC 7296 2.23 / RFC 4555: ESP follows the peer's new address/port (only SAs that are installed)."""
        pending = self._pending_out.get(reqid)
        if pending is not None:
            # a rekey we answered before the move: its outbound SA, not yet in use, goes there too
            out = pending.outbound
            self._pending_out[reqid] = dataclasses.replace(pending, outbound=dataclasses.replace(
                out, local_addr=ip_address(ev.local[0]), remote_addr=ip_address(ev.remote[0]),
                local_port=ev.local[1] if out.encap else out.local_port,
                remote_port=ev.remote[1] if out.encap else out.remote_port))
        if any(c.reqid == reqid for c in self.children.values()):
            await self.dataplane.update_sa_peer(reqid, ev.remote[0], ev.remote[1], ev.local[0])

    # ------------------------------------------------------------------ from the data plane
    def on_lifetime(self, ev: dp.LifetimeReached) -> None:
        """Volume lifetimes reached in the worker become rekeys or deletes in IKE (RFC 4301 4.4.2.1)."""
        spi = ev.spi.to_bytes(4, "big")
        spi_in = spi if ev.direction == "in" else self._spi_in_of.get(spi)
        if spi_in is None:
            return
        if ev.kind == "soft":
            log.info("Child SA %s reached its %s soft limit: rekeying", spi_in.hex(), ev.what)
            self.shell.act(lambda m, now: m.rekey_child(spi_in, now))
        else:
            log.info("Child SA %s reached its %s hard limit: deleting", spi_in.hex(), ev.what)
            self.shell.act(lambda m, now: m.expire_child(spi_in, True, now))

    async def watch_inbound_traffic(self) -> None:
        """DPD only probes a peer that is silent: ESP arriving counts as a sign of life (RFC 7296 2.4).
        The worker answers with the inbound SPIs that received packets since the previous poll
        (GetHeard): no per-SA counters cross the link or stay here between polls (issue 11)."""
        while True:
            await asyncio.sleep(TRAFFIC_POLL)
            try:
                heard = await self.dataplane.heard()
            except Exception as e:  # the worker may be restarting: try again next time
                log.debug("cannot read the data plane's heard SPIs: %s", e)
                continue
            self._note_traffic(heard)

    def _note_traffic(self, heard: Iterable[int]) -> None:
        """Tell IKE which inbound SAs received packets since the last poll (an SPI this process
        does not own, e.g. another IKE shard's, is ignored by the manager)."""
        now = time.monotonic()
        note = self.shell.manager.note_inbound_traffic
        for spi in heard:
            note(spi.to_bytes(4, "big"), now)
        self.shell.flush()


def volume_lifetime(child: ChildConfig | None) -> dp.Lifetime:
    """Byte/packet limits for the worker, the soft ones pulled earlier by a random part of rand_*."""
    if child is None:
        return dp.Lifetime()

    def soft(limit: int, rand: int) -> int:
        return max(1, limit - random.randint(0, min(rand, limit // 2))) if limit else 0

    return dp.Lifetime(soft_bytes=soft(child.rekey_bytes, child.rand_bytes), hard_bytes=child.life_bytes,
                       soft_packets=soft(child.rekey_packets, child.rand_packets), hard_packets=child.life_packets)
