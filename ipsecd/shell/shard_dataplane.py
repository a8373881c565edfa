"""An IKE shard's data plane: its own control channel to the one worker (``settings.ike_shards``).

A shard k >= 1 installs its Child SAs by talking to the worker directly, on a socketpair the
primary created when it started the worker (``DataPlane.shard_sockets``; the worker answers
each link's requests on that link, dataplane/worker.py ``ControlLinks``). Nothing of an
install passes through the primary: the SA is encoded once, as the worker protocol encodes
it (dataplane/messages.py), and concurrent installs leave in one ``Batch`` (channel.py).

What has one owner stays with the primary, asked over the shard link (shell/shards.py):

* **routes**: the shard counts its Child SAs per prefix itself (a ``NetConf`` in memory,
  the same ``claim_routes`` as the primary's) and asks the primary only when a route must
  be written or is no longer needed by any of its SAs; the primary holds those routes for
  the shard beside its own (``NetConf.hold_routes``), so neither deletes a prefix the other
  still routes. A login storm whose clients share a prefix (a pool's, or one inner host)
  costs one such call, not one per SA;
* **the TUN's MTU** (rarely changes: when a peer's path MTU differs);
* **events**: the worker sends them to the primary, which forwards a shard's by its reqid.

Netlink lookups that only read (a peer's path MTU with the worker's mark, a route source)
run in the shard's own netlink thread, cached as the primary caches them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.channel import REQUEST_TIMEOUT, DataPlaneError, WorkerChannel
from ipsecd.dataplane.client import (
    DEFAULT_TUN_MTU,
    PMTU_TTL,
    PREFSRC_TTL,
    DataPlaneOptions,
    cached,
    counters_view,
)
from ipsecd.dataplane.netconf import NetConf
from ipsecd.esp.packet import IPV6_MIN_MTU, tun_mtu
from ipsecd.esp.sa import SaParams
from ipsecd.esp.spd import Action, Policy, Selector

log = logging.getLogger("ipsecd.esp")


@dataclass
class ShardDataPlane:
    """What a shard's installer calls a DataPlane (module docstring)."""

    link: Any  # shell.shards.ShardLink to the primary
    sock: socket.socket  # this shard's control socket to the worker
    options: DataPlaneOptions
    shard: int
    netconf: NetConf = field(init=False)
    _channel: WorkerChannel | None = field(init=False, default=None)
    _mtus: dict[int, int] = field(init=False, default_factory=dict)  # reqid -> inner MTU
    _link_mtu: int = field(init=False, default=0)
    _pmtu: dict[Any, Any] = field(init=False, default_factory=dict)
    _srcs: dict[Any, Any] = field(init=False, default_factory=dict)

    async def start(self) -> None:
        """Learn the TUN from the primary, then greet the worker on our own channel."""
        info = await self.link.call("dataplane_info")
        o = self.options
        self.netconf = NetConf(str(info["tun_name"]), o.route_table, o.rule_priority, o.mark,
                               ifindex=int(info["ifindex"]))
        self._link_mtu = int(info["link_mtu"])
        self.sock.setblocking(False)
        self._channel = WorkerChannel(self.sock, self._on_event)
        self._channel.start()
        hello = await asyncio.wait_for(self._channel.hello, REQUEST_TIMEOUT)
        if hello.version != m.PROTOCOL_VERSION:
            raise DataPlaneError(f"worker speaks protocol {hello.version}, expected {m.PROTOCOL_VERSION}")

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel.fail_pending(DataPlaneError("data plane stopped"))
            self._channel = None
        if hasattr(self, "netconf"):
            await self.netconf.close()

    def _on_event(self, ev: m.Event) -> None:
        # the worker sends every event to the primary (it forwards ours by reqid): never here
        log.debug("unexpected data-plane event on shard %d's channel: %s", self.shard, type(ev).__name__)

    async def _request(self, build: Any) -> m.Message:
        channel = self._channel
        if channel is None or channel.closed:
            raise DataPlaneError("data plane worker is not running")
        return await channel.request(build)

    # ------------------------------------------------------------------ as DataPlane (client.py)
    async def install_child_sa(
        self, inbound: SaParams | None, outbound: SaParams | None, reqid: int,
        policies: list[Policy] | tuple[Policy, ...], route_via_tun: bool = True, lifetime: m.Lifetime | None = None,
        mss_clamp: int | None = 0, route_cover: tuple[Any, ...] = (),
    ) -> int:
        """As ``DataPlane.install_child_sa``: the worker directly, routes and the TUN's MTU by the primary."""
        o = self.options
        mtu = o.mtu or DEFAULT_TUN_MTU
        if outbound is not None:
            pmtu = o.path_mtu
            if pmtu is None:
                pmtu = await cached(self.netconf, self._pmtu, outbound.remote_addr, PMTU_TTL,
                                    self.netconf.path_mtu, outbound.remote_addr)
            mtu = tun_mtu(outbound, pmtu)
            if o.mtu:
                mtu = min(mtu, o.mtu)
        await self._request(lambda i: m.InstallSa(reqid, inbound, outbound, tuple(policies), mtu,
                                                  lifetime or m.Lifetime(), mss_clamp, id=i))
        self._mtus[reqid] = mtu
        link = max(mtu, IPV6_MIN_MTU)  # RFC 8200 5, as DataPlane
        if o.mtu is None and outbound is not None and link != self._link_mtu:
            self._link_mtu = link
            await self.link.call("set_link_mtu", mtu=link)
        if route_via_tun and o.policy_routing:
            mine = [p for p in policies if p.action is Action.PROTECT and p.sa_ref == reqid]
            src = await self._prefsrc(mine)
            writes = self.netconf.claim_routes(reqid, mine, mtu, src, cover=route_cover)[1]
            if writes:
                try:
                    await self.link.call("hold_routes", shard=self.shard, routes=writes)
                except Exception:
                    self.netconf.unclaim_writes(writes)
                    raise
        return mtu

    async def _prefsrc(self, policies: list[Policy]) -> dict[int, IPv4Address | IPv6Address | None]:
        out: dict[int, IPv4Address | IPv6Address | None] = {}
        for version in (4, 6):
            sels: tuple[Selector, ...] = tuple(p.local for p in policies if p.local.version == version)
            if sels:
                out[version] = await cached(self.netconf, self._srcs, sels, PREFSRC_TTL,
                                            self.netconf.local_address_in, sels)
        return out

    async def install_inbound(self, reqid: int, inbound: SaParams, lifetime: m.Lifetime | None = None) -> None:
        mtu = self._mtus.get(reqid) or self.options.mtu or DEFAULT_TUN_MTU
        await self._request(lambda i: m.InstallSa(reqid, inbound, None, (), mtu, lifetime or m.Lifetime(), id=i))

    async def install_outbound(self, reqid: int, outbound: SaParams, lifetime: m.Lifetime | None = None,
                               mss_clamp: int | None = 0) -> None:
        mtu = self._mtus.get(reqid) or self.options.mtu or DEFAULT_TUN_MTU
        await self._request(lambda i: m.InstallSa(reqid, None, outbound, (), mtu, lifetime or m.Lifetime(),
                                                  mss_clamp, id=i))

    async def delete_inbound(self, spis: tuple[int, ...]) -> None:
        await self._request(lambda i: m.DeleteSa(None, spis, policies=False, id=i))

    async def delete_child_sa(self, reqid: int, inbound_spis: tuple[int, ...] = ()) -> None:
        await self._request(lambda i: m.DeleteSa(reqid, inbound_spis, id=i))
        self._mtus.pop(reqid, None)
        gone = self.netconf.release_routes(reqid)
        if gone:  # our last SA on these prefixes went: the primary deletes them unless it still routes them
            await self.link.call("drop_routes", shard=self.shard, routes=gone)

    async def update_sa_peer(self, reqid: int, remote_addr: IPv4Address | IPv6Address | str, remote_port: int = 4500,
                             local_addr: IPv4Address | IPv6Address | str | None = None) -> None:
        ra = ip_address(remote_addr)
        la = ip_address(local_addr) if local_addr is not None else None
        await self._request(lambda i: m.UpdateSaPeer(reqid, ra, remote_port, la, id=i))

    async def set_keepalive(self, peer: IPv4Address | IPv6Address | str, port: int = 4500,
                            interval: float = 20.0) -> None:
        addr = ip_address(peer)
        await self._request(lambda i: m.SetKeepalive(addr, port, interval, id=i))

    async def counters(self) -> dict[str, Any]:
        reply = await self._request(lambda i: m.GetCounters(id=i))
        assert isinstance(reply, m.Counters)
        return counters_view(reply)

    async def install_trap(self, *_args: Any, **_kw: Any) -> None:
        raise DataPlaneError("traps live on shard 0")

    async def remove_trap(self, *_args: Any, **_kw: Any) -> None:
        raise DataPlaneError("traps live on shard 0")
