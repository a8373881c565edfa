"""Netlink configuration for the data plane (pyroute2): TUN link, addresses, routes, rules.

Routing model (as strongSwan's kernel-libipsec does it, so the two behave alike):

* Routes for the remote traffic selectors of every PROTECT policy point into the TUN and
  live in their own table (``table``, default 220), each with an ``mtu`` metric equal to
  what the SA can carry (IPv6 routes and the TUN link never below 1280, RFC 8200 5), so
  the kernel itself answers "fragmentation needed" for most oversized packets and local
  TCP picks the right MSS. ``prefsrc`` is a local address inside the local traffic
  selector when the host has one, so locally generated traffic leaves with a source the
  policy covers.
* One rule, ``not fwmark MARK/MARK lookup TABLE`` at ``rule_priority``, consults that table
  for every packet except those the worker sends itself: the worker's sockets carry
  ``SO_MARK = MARK``. Without this, a tunnel covering the peer's own address (transport
  mode, or a 0.0.0.0/0 tunnel) would route our ESP back into the TUN, a loop.
* Two rules just before it, ``ipproto udp sport 500|4500 lookup main``, keep the control
  process's IKE packets (which carry no mark) out of the tunnel too (RFC 4301 5.1: IKE
  must bypass the SPD).

pyroute2 0.9 drives its own asyncio loop internally, so it cannot be called from a
running loop's thread. ``NetConf.run`` calls these methods in one thread of its own, which
keeps one netlink socket open (a socket per call cost more than the call itself); called
from any other thread a method opens a socket of its own, as before.

Per Child SA the common case costs no netlink call at all (a login storm of road warriors
or of clients proposing the same inner host): routes are claimed in memory first
(``claim_routes``, the event loop's thread) and only a route that is new or must change is
written (``write_routes``, the netlink thread, in order). A route that already serves -- the
same prefix, or a pool's prefix covering a virtual IP (``cover``) -- just gains an owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ipsecd.esp.packet import IPV6_MIN_MTU
from ipsecd.esp.spd import Action, Policy, Selector, range_to_prefixes

log = logging.getLogger("ipsecd.esp")

FIB_RULE_INVERT = 2
MAIN_TABLE = 254
IKE_PORTS = (500, 4500)
DEFAULT_PATH_MTU = 1500
_ENOENT = 2
_ESRCH = 3
_EEXIST = 17
_EADDRNOTAVAIL = 99

Network = IPv4Network | IPv6Network
RouteKey = tuple[Network, int]  # (prefix, table)
T = TypeVar("T")


@dataclass(frozen=True)
class TrapRoutes:
    """Route owner for a trap's routes (see ``NetConf.add_routes``).

    A trap and the Child SAs negotiated for it share one reqid; owning the trap's routes
    under a key of their own lets deleting the SA (``remove_routes(reqid)``) leave them in
    place, so the next packet still reaches the TUN and triggers a new acquire.
    """

    reqid: int


@dataclass(frozen=True)
class ShardRoutes:
    """Route owner for the routes an IKE shard's Child SAs need (``NetConf.hold_routes``)."""

    shard: int


RouteOwner = int | TrapRoutes | ShardRoutes  # a reqid (Child SA routes), a trap, an IKE shard


@contextlib.contextmanager
def _ipr() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


@functools.lru_cache(maxsize=4096)
def selector_networks(sel: Selector) -> tuple[Network, ...]:
    """The CIDR prefixes that exactly cover a selector's address range.

    Memoized: the route claims keep these objects (``_owned``), and the Child SAs of one
    client or pool ask for the same ones, which are then shared (issue 11, memory)."""
    bits = 32 if sel.version == 4 else 128
    return tuple(ip_network((net, plen)) for net, plen in range_to_prefixes(sel.lo, sel.hi, bits))


def path_mtu(remote: IPv4Address | IPv6Address, mark: int = 0, ipr: Any = None) -> int:
    """MTU towards ``remote`` for packets carrying fwmark ``mark``: the route's mtu metric (a
    PMTU the kernel learned included) if set, else the outgoing link's MTU. ``ipr``: a netlink
    socket to use (``NetConf.path_mtu`` passes its kept one), else one is opened.

    ``mark`` must be the worker's socket mark: ESP to the peer leaves with it, so it takes the
    route the worker's packets take. Asked without it, a Child SA whose remote selectors cover
    the peer's own address (0.0.0.0/0, transport mode) answers with its own TUN route, whose
    mtu metric is the previous SA's inner MTU: each new SA would shrink the MTU by one more
    ESP overhead (1400 -> 102 over 25 SAs) until installs fail.
    """
    with contextlib.nullcontext(ipr) if ipr is not None else _ipr() as ipr:
        try:
            routes = ipr.route("get", dst=str(remote), **({"mark": mark} if mark else {}))
        except NetlinkError:
            return DEFAULT_PATH_MTU
        for r in routes:
            metrics = r.get_attr("RTA_METRICS")
            if metrics is not None:
                mtu = metrics.get_attr("RTAX_MTU")
                if mtu:
                    return int(mtu)
            oif = r.get_attr("RTA_OIF")
            if oif:
                links = ipr.link("get", index=oif)
                if links:
                    mtu = links[0].get_attr("IFLA_MTU")
                    if mtu:
                        return int(mtu)
    return DEFAULT_PATH_MTU


def local_address_in(selectors: Iterable[Selector], ipr: Any = None) -> IPv4Address | IPv6Address | None:
    """A local address of this host inside one of ``selectors`` (the route's preferred source)."""
    sels = list(selectors)
    if not sels:
        return None
    with contextlib.nullcontext(ipr) if ipr is not None else _ipr() as ipr:
        for msg in ipr.addr("dump"):
            text = msg.get_attr("IFA_ADDRESS")
            if not text:
                continue
            addr = ip_address(text)
            if addr.is_loopback or addr.is_link_local:
                continue
            for sel in sels:
                if sel.version == addr.version and sel.lo <= int(addr) <= sel.hi and not sel.is_any:
                    return addr
    return None


@dataclass
class NetConf:
    """The netlink state one DataPlane owns, so it can all be removed again."""

    tun_name: str
    table: int = 220
    rule_priority: int = 220
    mark: int = 0
    ifindex: int = 0
    _routes: dict[RouteKey, set[RouteOwner]] = field(default_factory=dict)  # (prefix, table) -> owners
    _route_args: dict[RouteKey, dict[str, Any]] = field(default_factory=dict)
    # owner -> its routes (no scans); a tuple, not a set: an owner has one or two (a set is 216 bytes)
    _owned: dict[RouteOwner, tuple[RouteKey, ...]] = field(default_factory=dict)
    _rules: list[dict[str, Any]] = field(default_factory=list)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)  # the netlink thread (``run``)
    _nl_thread: int | None = field(default=None, repr=False)
    _nl: Any = field(default=None, repr=False)  # its IPRoute, opened on first use

    # ---------------------------------------------------------------- the netlink thread
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` (a method of this object) in the netlink thread; calls run in order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="netlink", initializer=self._bind_thread)
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def _bind_thread(self) -> None:
        self._nl_thread = threading.get_ident()

    @contextlib.contextmanager
    def _ipr(self) -> Iterator[Any]:
        """The netlink thread's kept socket; any other thread gets a socket of its own."""
        if threading.get_ident() != self._nl_thread:
            with _ipr() as fresh:
                yield fresh
            return
        if self._nl is None:
            self._nl = IPRoute()
        try:
            yield self._nl
        except OSError as e:
            if not isinstance(e, NetlinkError):  # the socket itself failed: open a new one next time
                self._close_socket()
            raise

    def _close_socket(self) -> None:
        nl, self._nl = self._nl, None
        if nl is not None:
            with contextlib.suppress(Exception):
                nl.close()

    async def close(self) -> None:
        """Close the kept socket (in its thread) and stop the thread."""
        if self._pool is None:
            return
        await self.run(self._close_socket)
        self._pool.shutdown(wait=False)
        self._pool = None

    def path_mtu(self, remote: IPv4Address | IPv6Address) -> int:
        """``path_mtu`` as the worker's marked sockets see it."""
        with self._ipr() as ipr:
            return path_mtu(remote, self.mark, ipr)

    def local_address_in(self, selectors: Iterable[Selector]) -> IPv4Address | IPv6Address | None:
        with self._ipr() as ipr:
            return local_address_in(selectors, ipr)

    # ---------------------------------------------------------------- link
    def link_up(self, mtu: int) -> int:
        """Set the TUN's MTU and bring it up; returns its ifindex."""
        with self._ipr() as ipr:
            idx = ipr.link_lookup(ifname=self.tun_name)
            if not idx:
                raise LookupError(f"no interface {self.tun_name}")
            self.ifindex = int(idx[0])
            ipr.link("set", index=self.ifindex, mtu=mtu, state="up")
        return self.ifindex

    def set_mtu(self, mtu: int) -> None:
        with self._ipr() as ipr:
            ipr.link("set", index=self.ifindex, mtu=mtu)

    def add_address(self, network: str) -> None:
        """Put an address on the TUN (e.g. a virtual IP assigned by the peer), ``"10.3.0.2/32"``."""
        iface = ip_network(network, strict=False)
        addr = network.split("/")[0]
        with self._ipr() as ipr:
            try:
                ipr.addr("add", index=self.ifindex, address=addr, prefixlen=iface.prefixlen)
            except NetlinkError as e:
                if e.code != _EEXIST:
                    raise

    def remove_address(self, network: str) -> None:
        """Take an address off the TUN again (the virtual IP's IKE SA is gone); gone already is fine."""
        iface = ip_network(network, strict=False)
        with self._ipr() as ipr:
            try:
                ipr.addr("del", index=self.ifindex, address=network.split("/")[0], prefixlen=iface.prefixlen)
            except NetlinkError as e:
                if e.code not in (_ENOENT, _ESRCH, _EADDRNOTAVAIL):
                    raise

    def add_bypass(self, addr: str) -> None:
        """A ``throw`` route for ``addr`` in our table: traffic to it skips the tunnel routes and
        goes by the main table. A client tunnelling everything (0.0.0.0/0) keeps its gateway
        reachable outside the tunnel, as strongSwan's libipsec routes its peer."""
        net = ip_network(addr)
        with self._ipr() as ipr:
            try:
                ipr.route("add", dst=str(net), table=self.table, type="throw")
            except NetlinkError as e:
                if e.code != _EEXIST:
                    raise

    def remove_bypass(self, addr: str) -> None:
        with self._ipr() as ipr:
            try:
                ipr.route("del", dst=str(ip_network(addr)), table=self.table, type="throw")
            except NetlinkError as e:
                if e.code not in (_ENOENT, _ESRCH):
                    raise

    # ---------------------------------------------------------------- rules
    def install_rules(self) -> None:
        """The policy-routing rules of the module docstring (idempotent)."""
        if not self.mark:
            raise ValueError("policy routing needs a nonzero fwmark for the worker's sockets")
        wanted: list[dict[str, Any]] = []
        for family in (2, 10):  # AF_INET, AF_INET6
            for port in IKE_PORTS:
                wanted.append(
                    dict(family=family, table=MAIN_TABLE, priority=self.rule_priority - 1, ip_proto=17,
                         sport_range=f"{port}:{port}")
                )
            wanted.append(
                dict(family=family, table=self.table, priority=self.rule_priority, fwmark=self.mark,
                     fwmask=self.mark, flags=FIB_RULE_INVERT)
            )
        with self._ipr() as ipr:
            for rule in wanted:
                try:
                    ipr.rule("add", **rule)
                except NetlinkError as e:
                    if e.code != _EEXIST:
                        raise
                self._rules.append(rule)

    def remove_rules(self) -> None:
        with self._ipr() as ipr:
            for rule in self._rules:
                with contextlib.suppress(NetlinkError):
                    ipr.rule("del", **rule)
        self._rules.clear()

    # ---------------------------------------------------------------- routes
    def add_routes(
        self,
        reqid: int,
        policies: Iterable[Policy],
        mtu: int,
        prefsrc: dict[int, IPv4Address | IPv6Address | None] | None = None,
        table: int | None = None,
        owner: RouteOwner | None = None,
        cover: Iterable[Network] = (),
    ) -> list[Network]:
        """Route the remote selectors of ``reqid``'s PROTECT policies into the TUN (claim + write)."""
        added, writes = self.claim_routes(reqid, policies, mtu, prefsrc, table, owner, cover)
        self.write_routes(writes)
        return added

    def claim_routes(
        self,
        reqid: int,
        policies: Iterable[Policy],
        mtu: int,
        prefsrc: dict[int, IPv4Address | IPv6Address | None] | None = None,
        table: int | None = None,
        owner: RouteOwner | None = None,
        cover: Iterable[Network] = (),
    ) -> tuple[list[Network], list[dict[str, Any]]]:
        """Claim the routes of ``reqid``'s PROTECT policies; returns (prefixes claimed, routes to write).

        No netlink here. Routes are reference-counted by owner (``reqid`` unless ``owner`` is
        given, e.g. ``TrapRoutes(reqid)``): during a rekey two reqids may share a prefix, a trap
        and its SA always do, and the route stays until the last owner is removed. A remote
        selector inside one of ``cover`` (a pool's prefixes, for road warriors' virtual IPs)
        claims that prefix's route instead of a route of its own. Only a route that is new, or
        whose MTU or source changes, is returned for ``write_routes`` (``replace``: a rekey may
        change the MTU or source; an older route must not block it); a covering route is only
        ever lowered to the smallest MTU of the SAs it serves.
        """
        tbl = self.table if table is None else table
        who: RouteOwner = reqid if owner is None else owner
        covers = list(cover)
        added: list[Network] = []
        writes: list[dict[str, Any]] = []
        for pol in policies:
            if pol.action is not Action.PROTECT or pol.sa_ref != reqid:
                continue
            for net in selector_networks(pol.remote):
                wide = next((c for c in covers if c.version == net.version and net.subnet_of(c)), None)  # type: ignore[arg-type]
                dst = net if wide is None else wide
                key = (dst, tbl)
                self._routes.setdefault(key, set()).add(who)
                owned = self._owned.get(who, ())
                if key not in owned:
                    self._owned[who] = (*owned, key)
                # IPv6 routes never below 1280 (RFC 8200 5; the data plane fragments the outer packet)
                net_mtu = mtu if dst.version == 4 else max(mtu, IPV6_MIN_MTU)
                args: dict[str, Any] = dict(dst=str(dst), oif=self.ifindex, table=tbl, metrics={"mtu": net_mtu})
                src = (prefsrc or {}).get(dst.version)
                if src is not None:
                    args["prefsrc"] = str(src)
                old = self._route_args.get(key)
                if old is not None and (old == args or (wide is not None and old["metrics"]["mtu"] <= net_mtu)):
                    added.append(dst)
                    continue
                self._route_args[key] = args
                writes.append(args)
                added.append(dst)
        return added, writes

    def unclaim_writes(self, writes: Iterable[dict[str, Any]]) -> None:
        """``write_routes(writes)`` failed: those routes are not in the kernel, so the next claim
        of their prefixes must write them again (the owners' claims stay until released)."""
        for args in writes:
            key = (ip_network(args["dst"]), args["table"])
            if self._route_args.get(key) is args:
                del self._route_args[key]

    def hold_routes(self, owner: RouteOwner, routes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Routes another process claimed and asks us to write (an IKE shard's: it counts its own
        Child SAs per prefix and writes through us): ``owner`` holds them beside our own owners,
        so neither side deletes a prefix the other still routes. Returns what to write."""
        todo = list(routes)
        for args in todo:
            key = (ip_network(args["dst"]), int(args["table"]))
            self._routes.setdefault(key, set()).add(owner)
            owned = self._owned.get(owner, ())
            if key not in owned:
                self._owned[owner] = (*owned, key)
            self._route_args[key] = args
        return todo

    def drop_routes(self, owner: RouteOwner, routes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """``owner`` no longer needs these prefixes; returns the routes nobody claims any more."""
        gone: list[dict[str, Any]] = []
        drop = {(ip_network(args["dst"]), int(args["table"])): args for args in routes}
        mine = tuple(k for k in self._owned.get(owner, ()) if k not in drop)
        if mine:
            self._owned[owner] = mine
        for key in drop:
            users = self._routes.get(key)
            if users is None:
                continue
            users.discard(owner)
            if not users:
                del self._routes[key]
                old = self._route_args.pop(key, None)
                if old is not None:
                    gone.append(old)
        if not mine:
            self._owned.pop(owner, None)
        return gone

    def write_routes(self, writes: Iterable[dict[str, Any]]) -> None:
        todo = list(writes)
        if not todo:
            return
        with self._ipr() as ipr:
            for args in todo:
                ipr.route("replace", **args)

    def remove_routes(self, owner: RouteOwner) -> None:
        """Drop ``owner``'s claim on its routes; a route goes when nobody else claims it."""
        self.delete_routes(self.release_routes(owner))

    def release_routes(self, owner: RouteOwner) -> list[dict[str, Any]]:
        """``owner``'s claims go (no netlink); returns the routes nobody claims any more."""
        gone: list[dict[str, Any]] = []
        for key in self._owned.pop(owner, ()):
            users = self._routes.get(key)
            if users is None:
                continue
            users.discard(owner)
            if users:
                continue
            del self._routes[key]
            args = self._route_args.pop(key, None)
            if args is not None:
                gone.append(args)
        return gone

    def delete_routes(self, gone: Iterable[dict[str, Any]], keep_going: bool = False) -> None:
        """Delete these routes; ``keep_going``: past any error (cleanup), else the first one raises."""
        todo = list(gone)
        if not todo:
            return
        with self._ipr() as ipr:
            for args in todo:
                try:
                    ipr.route("del", dst=args["dst"], oif=args["oif"], table=args["table"])
                except NetlinkError as e:
                    if e.code not in (_ENOENT, _ESRCH) and not keep_going:  # gone with the TUN: fine
                        raise

    def routed_reqids(self) -> set[int]:
        """Reqids with Child SA routes (trap routes are listed by ``route_owners``)."""
        return {r for r in self._owned if isinstance(r, int)}

    def route_owners(self) -> set[RouteOwner]:
        return set(self._owned)

    def cleanup(self) -> None:
        """Remove every route and rule this object added (shutdown, or a failed start)."""
        gone = list(self._route_args.values())
        self._routes.clear()
        self._route_args.clear()
        self._owned.clear()
        with contextlib.suppress(NetlinkError, OSError):
            self.delete_routes(gone, keep_going=True)
        with contextlib.suppress(NetlinkError, OSError):
            self.remove_rules()
