"""``DataPlane``: the control process's handle on the data-plane worker (asyncio).

The daemon creates one ``DataPlane``, ``await start()``s it after the IKE sockets are bound,
installs Child SAs as IKE negotiates them and reads counters and events. Everything that
touches packets runs in the worker process (worker.py); this object

* opens the TUN device and the ESP sockets here, before the worker exists, so the UDP
  socket joins port 4500's reuseport group in a known position (udp.py) and a failure to
  open anything surfaces in ``start()`` as an exception rather than as a dead child,
* starts ``python -m ipsecd.dataplane.worker`` with those fds and a socketpair for the
  versioned messages of messages.py (spoken through channel.py, which batches concurrent
  requests), then closes its own copies (a crashed worker then takes the TUN, and every
  route through it, with it: no black hole survives),
* does the netlink work (netconf.py) in its one netlink thread (pyroute2 0.9 runs its own
  event loop), and as little of it as it can per Child SA: the path MTU per peer and the
  routes' preferred source are cached for a while, a route that already serves is not
  written again (see netconf.py),
* turns the worker's exit into a ``WorkerExited`` event; restarting is the daemon's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.channel import DataPlaneError
from ipsecd.dataplane.esp_steering import (
    AH_SPI_OFFSET,
    ESP_SPI_OFFSET,
    attach_filter,
    natt_workers_program,
    raw_spi_filter,
)
from ipsecd.dataplane.handoff import handoff_pairs
from ipsecd.dataplane.ike_steering import attach_reuseport_program
from ipsecd.dataplane.netconf import NetConf, TrapRoutes
from ipsecd.dataplane.tun import enable_offloads, offload_names, open_tun
from ipsecd.dataplane.udp import (
    DEFAULT_SOCKET_BUFFER,
    attach_natt_steering,
    bind_udp,
    open_raw_ah,
    open_raw_esp,
    port_in_use,
)
from ipsecd.dataplane.workers import Owners, WorkerFds, WorkerSet, merge_counters
from ipsecd.esp.packet import IPV6_MIN_MTU, tun_mtu
from ipsecd.esp.sa import SaParams
from ipsecd.esp.spd import Action, Policy, Selector
from ipsecd.gcpolicy import figures_from_wire

log = logging.getLogger("ipsecd.esp")

DEFAULT_TUN_MTU = 1400
DEFAULT_MARK = 0x2E5C  # arbitrary but fixed: the fwmark on the worker's own ESP sockets
PMTU_TTL = 60.0  # seconds a peer's path MTU is reused before it is looked up again
PREFSRC_TTL = 10.0  # seconds a route source found for some local selectors is reused
CACHE_MAX = 4096  # entries per cache (peers, selector sets): past it the cache starts over
SA_COUNTERS_CHUNK = 2048  # Child SAs per GetSaCounters (two snapshots each, ~150 KiB of answer)

__all__ = ["DataPlane", "DataPlaneError", "DataPlaneOptions", "SaJobs"]


async def cached(netconf: NetConf, cache: dict[Any, tuple[float, asyncio.Future[Any]]], key: Any, ttl: float,
                 fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in ``netconf``'s netlink thread, its answer reused for ``ttl`` seconds: a
    storm's concurrent installs share one lookup instead of each making its own."""
    now = time.monotonic()
    hit = cache.get(key)
    if hit is None or hit[0] <= now or (hit[1].done() and hit[1].exception() is not None):
        if len(cache) >= CACHE_MAX:
            cache.clear()
        fut = asyncio.ensure_future(netconf.run(fn, *args))
        hit = cache[key] = (now + ttl, fut)
    if hit[1].done():  # the common case: no shield, no await
        return hit[1].result()
    return await asyncio.shield(hit[1])


@dataclass(frozen=True)
class DataPlaneOptions:
    """Every knob of the data plane; ``from_settings`` accepts the config's DataplaneSettings."""

    tun_name: str = "ipsec0"
    mtu: int | None = None  # TUN link MTU; None = the first SA's tunnel MTU (path MTU - overhead)
    listen4: str | None = "0.0.0.0"
    listen6: str | None = "::"
    natt_port: int = 4500
    raw_esp: bool = True
    mark: int = DEFAULT_MARK
    policy_routing: bool = True
    route_table: int = 220
    rule_priority: int = 220
    path_mtu: int | None = None  # None = from the route to each peer
    socket_buffer: int = DEFAULT_SOCKET_BUFFER
    batch: int = 64
    gso: bool = True
    gro: bool = True
    mss_clamp: bool = True
    offload: bool = False  # TUN offloads (tun.enable_offloads, offload.py); off: see docs/performance.md
    offload_tso: bool = True  # with offload: also ask for TSO/USO reads (False: GRO writes only)
    steering: bool = True
    workers: int = 1  # worker processes, one TUN queue each (workers.py, handoff.py)
    python: str = sys.executable
    worker_log_level: str = "INFO"

    @classmethod
    def from_settings(cls, settings: object | None) -> DataPlaneOptions:
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        known = {f.name for f in fields(cls)}
        kwargs = {k: getattr(settings, k) for k in known if hasattr(settings, k)}
        if kwargs.get("tun_name") is None:
            kwargs.pop("tun_name", None)
        return cls(**kwargs)


class SaJobs:
    """The Child SA jobs on a control link to the worker(s): the daemon's ``DataPlane`` and an IKE
    shard's (shell/shard_dataplane.py) share them. What differs is the link (``_request``,
    ``_broadcast``), which worker owns a Child SA (the ``_send_*`` hooks: ``DataPlane`` with
    several workers asks its ``Owners``), and who writes what has one owner: the TUN's MTU
    (``set_link_mtu``) and the routes (``_put_routes``, ``_delete_routes``); the daemon does both
    itself, a shard asks it."""

    options: DataPlaneOptions
    netconf: NetConf  # route claims in memory; its netlink thread for lookups (path MTU, route source)
    _mtus: dict[int, int]  # reqid -> inner MTU of its installed Child SA
    _link_mtu: int
    # netlink answers kept a while: peer -> path MTU, local selectors -> route source
    _pmtu: dict[IPv4Address | IPv6Address, tuple[float, asyncio.Future[int]]]
    _srcs: dict[tuple[Selector, ...], tuple[float, asyncio.Future[IPv4Address | IPv6Address | None]]]

    async def _request(self, build: Callable[[int], m.Message], worker: int = 0) -> m.Message:
        raise NotImplementedError

    async def _broadcast(self, build: Callable[[int], m.Message]) -> list[m.Message]:
        """The same request to every worker (one link: just that one)."""
        return [await self._request(build)]

    async def set_link_mtu(self, link: int) -> None:
        raise NotImplementedError

    async def _put_routes(self, writes: list[dict[str, Any]]) -> None:
        """Write the routes a claim needs; raising fails the Child SA (IKE deletes it)."""
        raise NotImplementedError

    async def _delete_routes(self, gone: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    # Where a Child SA's requests go: one worker unless a subclass knows owners (DataPlane).
    async def _send_install(self, reqid: int, inbound: SaParams | None, outbound: SaParams | None,
                            build: Callable[[int, tuple[Policy, ...]], m.Message],
                            policies: tuple[Policy, ...]) -> None:
        await self._request(lambda i: build(i, policies))

    async def _send_inbound(self, reqid: int, inbound: SaParams, build: Callable[[int], m.Message]) -> None:
        await self._request(build)

    async def _send_outbound(self, reqid: int, build: Callable[[int], m.Message]) -> None:
        await self._request(build)

    async def _send_delete_inbound(self, spis: tuple[int, ...]) -> None:
        await self._request(lambda i: m.DeleteSa(None, spis, policies=False, id=i))

    def _owner_of(self, reqid: int) -> int:
        return 0

    def _forget(self, reqid: int) -> None:
        pass

    async def install_child_sa(
        self,
        inbound: SaParams | None,
        outbound: SaParams | None,
        reqid: int,
        policies: list[Policy] | tuple[Policy, ...],
        route_via_tun: bool = True,
        lifetime: m.Lifetime | None = None,
        mss_clamp: int | None = 0,
        route_cover: tuple[IPv4Network | IPv6Network, ...] = (),
        tag: int = 0,
    ) -> int:
        """Install a Child SA (both halves, policies) and route its remote selectors into the TUN.

        Returns the inner MTU the SA can carry. ``route_via_tun=False`` leaves routing to the
        user (route-based VPN: point routes at the TUN yourself; the policies still decide).
        ``route_cover``: prefixes whose one route may serve the SA's remote selectors (a pool's,
        for a virtual IP), so a login storm adds no route per client. ``tag``: the worker sums
        the SA's counters under it (``totals``), also after the SA is gone.
        """
        o = self.options
        mtu = o.mtu or DEFAULT_TUN_MTU
        if outbound is not None:
            pmtu = o.path_mtu
            if pmtu is None:
                # with the worker's mark: the route its ESP takes, never our own TUN routes
                pmtu = await self._path_mtu(outbound.remote_addr)
            mtu = tun_mtu(outbound, pmtu)
            if o.mtu:
                mtu = min(mtu, o.mtu)
        await self._send_install(reqid, inbound, outbound, lambda i, pols: m.InstallSa(
            reqid, inbound, outbound, pols, mtu, lifetime or m.Lifetime(), mss_clamp, tag, id=i), tuple(policies))
        self._mtus[reqid] = mtu
        # the link never below 1280 (RFC 8200 5): the kernel takes IPv6 off a smaller one, and
        # with it the IPv6 routes and virtual IPs; IPv4 routes carry the smaller MTU (claim_routes)
        link = max(mtu, IPV6_MIN_MTU)
        if o.mtu is None and outbound is not None and link != self._link_mtu:
            await self.set_link_mtu(link)
        if route_via_tun and o.policy_routing:
            mine = [p for p in policies if p.action is Action.PROTECT and p.sa_ref == reqid]
            src = await self._prefsrc(mine)
            await self._write_routes(self.netconf.claim_routes(reqid, mine, mtu, src, cover=route_cover)[1])
        return mtu

    async def _write_routes(self, writes: list[dict[str, Any]]) -> None:
        """Write the routes a claim needs (usually none: a route that already serves just gains
        an owner); if that fails, the next claim of those prefixes writes them again, and the
        caller's SA fails (IKE deletes it)."""
        if not writes:
            return
        try:
            await self._put_routes(writes)
        except Exception:
            self.netconf.unclaim_writes(writes)
            raise

    async def _path_mtu(self, remote: IPv4Address | IPv6Address) -> int:
        return await cached(self.netconf, self._pmtu, remote, PMTU_TTL, self.netconf.path_mtu, remote)

    async def _prefsrc(self, policies: list[Policy]) -> dict[int, IPv4Address | IPv6Address | None]:
        """Per IP version, a local address inside the policies' local selectors (route source)."""
        out: dict[int, IPv4Address | IPv6Address | None] = {}
        for version in (4, 6):
            sels = tuple(p.local for p in policies if p.local.version == version)
            if sels:
                out[version] = await cached(self.netconf, self._srcs, sels, PREFSRC_TTL,
                                            self.netconf.local_address_in, sels)
        return out

    async def install_inbound(self, reqid: int, inbound: SaParams, lifetime: m.Lifetime | None = None,
                              tag: int = 0) -> None:
        """Add an inbound SA to ``reqid`` without touching its outbound SA (rekey responder, RFC 7296 2.8)."""
        mtu = self._mtus.get(reqid) or self.options.mtu or DEFAULT_TUN_MTU
        await self._send_inbound(reqid, inbound, lambda i: m.InstallSa(
            reqid, inbound, None, (), mtu, lifetime or m.Lifetime(), tag=tag, id=i))

    async def install_outbound(self, reqid: int, outbound: SaParams, lifetime: m.Lifetime | None = None,
                               mss_clamp: int | None = 0, tag: int = 0) -> None:
        """Switch ``reqid``'s traffic to a new outbound SA (the old one stops being used at once)."""
        mtu = self._mtus.get(reqid) or self.options.mtu or DEFAULT_TUN_MTU
        await self._send_outbound(reqid, lambda i: m.InstallSa(
            reqid, None, outbound, (), mtu, lifetime or m.Lifetime(), mss_clamp, tag, id=i))

    async def delete_inbound(self, spis: tuple[int, ...]) -> None:
        """Remove only these inbound SAs (the rekeyed predecessor of a live Child SA)."""
        await self._send_delete_inbound(spis)

    async def update_sa_peer(
        self, reqid: int, remote_addr: IPv4Address | IPv6Address | str, remote_port: int = 4500,
        local_addr: IPv4Address | IPv6Address | str | None = None,
    ) -> None:
        """The peer's outer address/port changed (NAT rebinding seen by IKE, RFC 7296 2.23)."""
        ra = ip_address(remote_addr)
        la = ip_address(local_addr) if local_addr is not None else None
        await self._request(lambda i: m.UpdateSaPeer(reqid, ra, remote_port, la, id=i), self._owner_of(reqid))

    async def delete_child_sa(self, reqid: int, inbound_spis: tuple[int, ...] = ()) -> None:
        """Remove the SAs and policies of ``reqid`` and the routes only it used."""
        await self._broadcast(lambda i: m.DeleteSa(reqid, inbound_spis, id=i))
        self._forget(reqid)
        self._mtus.pop(reqid, None)
        gone = self.netconf.release_routes(reqid)
        if gone:
            await self._delete_routes(gone)

    async def set_keepalive(self, peer: IPv4Address | IPv6Address | str, port: int = 4500,
                            interval: float = 20.0) -> None:
        """NAT keepalives from our 4500 socket to ``peer`` (RFC 3948 2.3); interval 0 stops them."""
        addr = ip_address(peer)
        await self._request(lambda i: m.SetKeepalive(addr, port, interval, id=i))

    async def heard(self) -> set[int]:
        """Inbound SPIs that received packets since this link's previous call (DPD's poll, RFC
        7296 2.4): only the active ones, where ``counters`` lists every SA (issue 11). Several
        workers: each is asked and the answers joined (an SA lives in one of them)."""
        replies = await self._broadcast(lambda i: m.GetHeard(id=i))
        out: set[int] = set()
        for r in replies:
            if isinstance(r, m.Heard):
                out.update(r.spis)
        return out

    def _owner_of_spi(self, spi: int) -> int:
        """The worker holding the Child SA whose inbound SPI is ``spi`` (one link: 0)."""
        return 0

    async def sa_counters(self, pairs: list[tuple[int, int]]) -> list[m.SaCounterSnapshot]:
        """The counters of these Child SAs only, each given as (inbound SPI, outbound SPI): RADIUS
        accounting's read, O(asked) where ``counters`` is O(all SAs) (issue 11). Several workers:
        each pair is asked of its owner (the worker of the inbound SPI), as DPD's poll is
        answered by each. An SA already removed is absent; an outbound SPI a rekey replaced too."""
        by_worker: dict[int, list[tuple[int, int]]] = {}
        for spi_in, spi_out in pairs:
            by_worker.setdefault(self._owner_of_spi(spi_in), []).append((spi_in, spi_out))

        def ask(part: list[tuple[int, int]]) -> Callable[[int], m.Message]:
            ins, outs = tuple(p[0] for p in part), tuple(p[1] for p in part)
            return lambda i: m.GetSaCounters(ins, outs, id=i)

        # an interim of every session asks for many: in parts, each answer well below MAX_FRAME
        replies = await asyncio.gather(*(self._request(ask(part[j:j + SA_COUNTERS_CHUNK]), k)
                                         for k, part in by_worker.items()
                                         for j in range(0, len(part), SA_COUNTERS_CHUNK)))
        return [s for r in replies if isinstance(r, m.Counters) for s in r.sas]

    async def totals(self) -> tuple[dict[int, list[int]], dict[str, int], dict[str, Any]]:
        """Per tag (``install_child_sa(tag=)``): [bytes_in, packets_in, bytes_out, packets_out]
        summed over its SAs since the worker started, removed ones included (never decreasing
        while the worker lives), the data plane's drops by reason, and each worker's
        garbage-collector figures (``worker-N``). One walk of the SAs in the worker, an answer
        of O(tags): the metrics scrape's read (issue 11)."""
        sums: dict[int, list[int]] = {}
        drops: dict[str, int] = {}
        gc: dict[str, Any] = {}
        for index, r in enumerate(await self._broadcast(lambda i: m.GetTotals(id=i))):
            if not isinstance(r, m.Totals):
                continue
            if r.gc:
                gc[f"worker-{index}"] = figures_from_wire(r.gc)
            for t in r.tags:
                s = sums.setdefault(t.tag, [0, 0, 0, 0])
                for k, v in enumerate((t.bytes_in, t.packets_in, t.bytes_out, t.packets_out)):
                    s[k] += v
            for reason, n in r.drops.items():
                drops[reason] = drops.get(reason, 0) + n
        return sums, drops, gc

    async def counters(self) -> dict[str, Any]:
        """Per-SPI counters (key: 8 hex digits) and the worker's drops and statistics.

        ``{"sas": {"c0ffee01": {"direction", "reqid", "bytes", "packets", "drops", "seq"}},
        "global": {"drops": {reason: n}, "drops_total": n, "stats": {name: n}}}``
        """
        replies = await self._broadcast(lambda i: m.GetCounters(id=i))
        reply = merge_counters(replies)
        sas: dict[str, Any] = {}
        for s in reply.sas:
            key = f"{s.spi:08x}"
            if key in sas:  # inbound and outbound SPIs are separate spaces: a clash is possible
                key += f"-{s.direction}"
            sas[key] = {"direction": s.direction, "reqid": s.reqid, "bytes": s.bytes, "packets": s.packets,
                        "drops": dict(s.drops), "seq": s.seq}
        out: dict[str, Any] = {"sas": sas, "global": {"drops": dict(reply.drops),
                                                       "drops_total": sum(reply.drops.values()),
                                                       "stats": dict(reply.stats)}}
        # each worker's garbage collector, by process (docs/ipsecctl.md "stats"): never summed
        out["global"]["gc"] = {f"worker-{i}": figures_from_wire(r.gc)
                               for i, r in enumerate(replies) if isinstance(r, m.Counters) and r.gc}
        if len(replies) > 1:  # several workers: the sums above, and each worker's own
            out["workers"] = [{"drops": dict(r.drops), "stats": dict(r.stats)}
                              for r in replies if isinstance(r, m.Counters)]
        return out


@dataclass
class DataPlane(SaJobs):
    """Asyncio front of one data-plane worker (see module docstring)."""

    settings: object | None = None
    options: DataPlaneOptions = field(init=False)
    netconf: NetConf = field(init=False)
    tun_name: str = field(init=False, default="")
    steering: dict[str, int] = field(init=False, default_factory=dict)  # listen address -> IKE socket index
    offloads: int = field(init=False, default=0)  # TUN_F_* flags the kernel accepted
    # IKE shards past the first: before start(), how many; after, one control socket each (the worker's
    # other end), for the daemon to hand to its shards (shell/shard_dataplane.py)
    shard_links: int = field(init=False, default=0)
    shard_sockets: list[socket.socket] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.options = DataPlaneOptions.from_settings(self.settings)
        o = self.options
        self.netconf = NetConf(o.tun_name, o.route_table, o.rule_priority, o.mark)
        self._workers = WorkerSet(self._emit)
        self._owners = Owners(self._workers, self.options.workers)  # which worker holds each reqid's SAs
        self._events: asyncio.Queue[m.Event] = asyncio.Queue(maxsize=1024)
        self._callbacks: list[Callable[[m.Event], None]] = []
        self._mtus: dict[int, int] = {}  # reqid -> inner MTU of its installed Child SA
        self._traps: dict[int, tuple[Policy, ...]] = {}
        self._stopping = False
        self._link_mtu = 0
        # netlink answers kept a while: peer -> path MTU, local selectors -> route source
        self._pmtu: dict[IPv4Address | IPv6Address, tuple[float, asyncio.Future[int]]] = {}
        self._srcs: dict[tuple[Selector, ...], tuple[float, asyncio.Future[IPv4Address | IPv6Address | None]]] = {}

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._workers.running

    @property
    def pid(self) -> int | None:
        """The (first) worker's pid."""
        return self._workers.pids[0] if len(self._workers) else None

    @property
    def pids(self) -> list[int]:
        return self._workers.pids

    async def start(self) -> None:
        """Open TUN queues and sockets, configure the link and rules, start the workers, handshake."""
        o = self.options
        n = o.workers
        workers: list[WorkerFds] = []
        socks: list[socket.socket] = []
        if n > 1 and o.offload:  # the hand-over carries plain IP packets (config.py refuses it too)
            raise DataPlaneError("several workers are not implemented with TUN offloads")
        try:
            for k in range(n):  # queue k of a multi-queue TUN for worker k (the kernel picks by flow hash)
                tun_fd, name = open_tun(o.tun_name if k == 0 else self.tun_name, vnet_hdr=o.offload,
                                        multi_queue=n > 1)
                self.tun_name = name
                workers.append(WorkerFds(tun_fd))
            if o.offload and o.offload_tso:
                self.offloads = enable_offloads(workers[0].tun)
            self.netconf.tun_name = self.tun_name
            self._link_mtu = o.mtu or DEFAULT_TUN_MTU
            await self.netconf.run(self.netconf.link_up, self._link_mtu)
            self._open_udp(workers, socks)
            if o.raw_esp:
                self._open_raw(open_raw_esp, workers, socks, ESP_SPI_OFFSET)
                self._open_raw(open_raw_ah, workers, socks, AH_SPI_OFFSET)  # AH is never UDP-encapsulated
            if not workers[0].udp and not workers[0].raw:
                raise DataPlaneError("no ESP socket could be opened")
            if n > 1:
                pairs = handoff_pairs(n, o.socket_buffer)
                socks += [s for pair in pairs for s in pair]
                for k, w in enumerate(workers):
                    w.inbox = pairs[k][0]
                    w.peers = {j: pairs[j][1] for j in range(n) if j != k}
            if o.policy_routing:
                await self.netconf.run(self.netconf.install_rules)
            if self.shard_links:  # config.py refuses several workers with several IKE shards
                shards = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(self.shard_links)]
                self.shard_sockets = [a for a, _ in shards]
                workers[0].shard_controls = [b for _, b in shards]
                socks += workers[0].shard_controls
            await self._workers.spawn(o.python, o.worker_log_level, workers)
        except BaseException:
            await self._workers.stop()
            for sock in socks + self.shard_sockets:
                sock.close()
            for w in workers:
                os.close(w.tun)
            await self.netconf.run(self.netconf.cleanup)
            await self.netconf.close()
            raise
        # The workers hold their own copies now; ours must go, or the TUN and the 4500 socket
        # would outlive a crashed worker.
        for sock in socks:
            sock.close()
        for w in workers:
            os.close(w.tun)
        try:
            await self._workers.handshake(lambda k: m.WorkerConfig(
                tun_name=self.tun_name, batch=o.batch, gso=o.gso, mss_clamp=o.mss_clamp, vnet_hdr=o.offload))
        except BaseException:
            await self.stop()
            raise
        log.info("data plane started: %s %s, TUN %s (MTU %d, offloads %s)",
                 "worker pid" if n == 1 else f"{n} workers, pids", ",".join(map(str, self.pids)), self.tun_name,
                 self._link_mtu, offload_names(self.offloads) if o.offload else "off")

    def _open_udp(self, workers: list[WorkerFds], socks: list[socket.socket]) -> None:
        """Each worker's UDP 4500 socket per family, in port 4500's reuseport group after the IKE
        socket (or before it): the steering program is written for that order (udp.py,
        esp_steering.py)."""
        o = self.options
        n = len(workers)
        for addr in (o.listen4, o.listen6):
            if addr is None:
                continue
            ike_first = port_in_use(addr, o.natt_port)
            group: list[socket.socket] = []
            try:
                for _ in range(n):
                    group.append(bind_udp(addr, o.natt_port, reuseport=True, mark=o.mark, gro=o.gro,
                                          buffer_size=o.socket_buffer))
            except OSError as e:
                for sock in group:
                    sock.close()
                if ":" in addr and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    log.info("IPv6 unavailable: no ESP-in-UDP over IPv6")
                    continue
                raise
            socks += group
            # Our index in the group is 1 when IKE bound first, else 0 (udp.py); workers k: 1+k or k.
            ike_index = 0 if ike_first else n
            if o.steering:
                if n == 1:
                    attach_natt_steering(group[0], ike_index=ike_index)
                else:
                    slots = [k + 1 if ike_first else k for k in range(n)]
                    attach_reuseport_program(group[0], natt_workers_program(slots, ike_index))
                self.steering[addr] = ike_index
            for w, sock in zip(workers, group, strict=True):
                w.udp.append(sock)

    def _open_raw(self, opener: Callable[..., socket.socket], workers: list[WorkerFds],
                  socks: list[socket.socket], spi_offset: int) -> None:
        """Raw sockets of one IPsec protocol (``open_raw_esp`` or ``open_raw_ah``), per family and
        worker; with several workers each keeps only the SPIs it owns (esp_steering.py)."""
        o = self.options
        n = len(workers)
        for family, addr in ((socket.AF_INET, o.listen4), (socket.AF_INET6, o.listen6)):
            if addr is None:
                continue
            for k, w in enumerate(workers):
                try:
                    sock = opener(family, mark=o.mark, buffer_size=o.socket_buffer)
                except OSError as e:
                    if family == socket.AF_INET6 and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        break
                    raise
                socks.append(sock)
                if n > 1:
                    attach_filter(sock, raw_spi_filter(k, n, ipv4=family == socket.AF_INET, spi_offset=spi_offset))
                (w.ah if spi_offset == AH_SPI_OFFSET else w.raw).append(sock)

    async def stop(self) -> None:
        """Shut the workers down (gracefully, then by signal) and remove routes and rules."""
        self._stopping = True
        await self._workers.stop()
        await self.netconf.run(self.netconf.cleanup)
        await self.netconf.close()
        self._mtus.clear()
        self._traps.clear()
        self._pmtu.clear()
        self._srcs.clear()
        self._owners.clear()
        self._workers = WorkerSet(self._emit)  # a DataPlane may be started again
        self._owners = Owners(self._workers, self.options.workers)

    # ------------------------------------------------------------------ SAs and policies
    async def set_link_mtu(self, link: int) -> None:
        """The TUN's MTU follows the last Child SA installed (ours, or an IKE shard's)."""
        if link != self._link_mtu:
            self._link_mtu = link
            await self.netconf.run(self.netconf.set_mtu, link)

    @property
    def link_mtu(self) -> int:
        return self._link_mtu

    async def _put_routes(self, writes: list[dict[str, Any]]) -> None:
        await self.netconf.run(self.netconf.write_routes, writes)

    async def _delete_routes(self, gone: list[dict[str, Any]]) -> None:
        await self.netconf.run(self.netconf.delete_routes, gone)

    async def _send_install(self, reqid: int, inbound: SaParams | None, outbound: SaParams | None,
                            build: Callable[[int, tuple[Policy, ...]], m.Message],
                            policies: tuple[Policy, ...]) -> None:
        await self._alive()
        await self._owners.install(reqid, inbound, outbound, build, policies)

    async def _send_inbound(self, reqid: int, inbound: SaParams, build: Callable[[int], m.Message]) -> None:
        await self._alive()
        await self._owners.install_inbound(reqid, inbound, build)

    async def _send_outbound(self, reqid: int, build: Callable[[int], m.Message]) -> None:
        await self._alive()
        await self._owners.install_outbound(reqid, build)

    async def _send_delete_inbound(self, spis: tuple[int, ...]) -> None:
        await self._alive()
        await self._owners.delete_inbound(spis)

    def _owner_of(self, reqid: int) -> int:
        return self._owners.of_reqid(reqid)

    def _owner_of_spi(self, spi: int) -> int:
        return self._owners.of_spi(spi) if self._owners.count > 1 else 0

    def _forget(self, reqid: int) -> None:
        self._owners.forget(reqid)

    # ------------------------------------------------------------------ traps (on-demand SAs)
    async def install_trap(self, reqid: int, policies: list[Policy] | tuple[Policy, ...],
                           route_via_tun: bool = True) -> None:
        """Arm a trap: PROTECT ``policies`` for ``reqid`` (and routes into the TUN) before any SA.

        RFC 4301 5.1 / RFC 7296 1.3 on-demand SAs, strongSwan's ``start_action = trap``. The
        first outbound packet that matches makes the worker queue it (bounded, see
        ``WorkerConfig.acquire_queue_*``) and emit an ``Acquire`` event with the packet's
        addresses, protocol and ports; the daemon then negotiates a Child SA whose reqid MUST
        be this one (``IkeManager.assign_reqid``), and ``install_child_sa`` sends the queue.
        The trap stays armed across its SAs: when an SA of the reqid is deleted the trap's
        policies and routes remain and the next packet acquires again, until ``remove_trap``.
        Calling it again for the same reqid replaces the policies (and adds routes).
        """
        pols = tuple(policies)
        await self._broadcast(lambda i: m.InstallTrap(reqid, pols, id=i))
        self._traps[reqid] = pols
        if route_via_tun and self.options.policy_routing:
            mtu = self._link_mtu or self.options.mtu or DEFAULT_TUN_MTU
            src = await self._prefsrc(list(pols))
            await self._write_routes(self.netconf.claim_routes(reqid, pols, mtu, src, None, TrapRoutes(reqid))[1])

    async def remove_trap(self, reqid: int) -> None:
        """Disarm the trap of ``reqid`` (reload, shutdown): queued packets are dropped and
        counted; a Child SA of the reqid that is still installed keeps its own policies."""
        self._traps.pop(reqid, None)
        await self._broadcast(lambda i: m.RemoveTrap(reqid, id=i))
        await self.netconf.run(self.netconf.delete_routes, self.netconf.release_routes(TrapRoutes(reqid)))

    @property
    def traps(self) -> dict[int, tuple[Policy, ...]]:
        """The armed traps: reqid -> policies (a copy)."""
        return dict(self._traps)

    # ------------------------------------------------------------------ events
    def on_event(self, callback: Callable[[m.Event], None]) -> None:
        """Call ``callback(event)`` for every worker event (in addition to ``events()``)."""
        self._callbacks.append(callback)

    async def events(self) -> AsyncIterator[m.Event]:
        """Worker events: Acquire, UnknownSpiReport, LifetimeReached, WorkerError, WorkerExited."""
        while True:
            ev = await self._events.get()
            yield ev
            if isinstance(ev, m.WorkerExited):
                return

    def _emit(self, ev: m.Event) -> None:
        for cb in self._callbacks:
            try:
                cb(ev)
            except Exception:
                log.exception("data-plane event callback failed")
        try:
            self._events.put_nowait(ev)
        except asyncio.QueueFull:  # nobody is reading events(): keep the newest
            with contextlib.suppress(asyncio.QueueEmpty):
                self._events.get_nowait()
            self._events.put_nowait(ev)

    # ------------------------------------------------------------------ transport
    async def _alive(self) -> None:
        if not self.running:
            raise DataPlaneError("data plane worker is not running")

    async def _request(self, build: Callable[[int], m.Message], worker: int = 0) -> m.Message:
        await self._alive()
        return await self._workers.request(worker, build)

    async def _broadcast(self, build: Callable[[int], m.Message]) -> list[m.Message]:
        await self._alive()
        return await self._workers.broadcast(build)
