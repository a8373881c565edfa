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
running loop's thread; the client calls these functions through ``asyncio.to_thread`` and
each call opens its own netlink socket.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

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


@dataclass(frozen=True)
class TrapRoutes:
    """Route owner for a trap's routes (see ``NetConf.add_routes``).

    A trap and the Child SAs negotiated for it share one reqid; owning the trap's routes
    under a key of their own lets deleting the SA (``remove_routes(reqid)``) leave them in
    place, so the next packet still reaches the TUN and triggers a new acquire.
    """

    reqid: int


RouteOwner = int | TrapRoutes  # a reqid (Child SA routes) or a trap


@contextlib.contextmanager
def _ipr() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def selector_networks(sel: Selector) -> list[Network]:
    """The CIDR prefixes that exactly cover a selector's address range."""
    bits = 32 if sel.version == 4 else 128
    out: list[Network] = []
    for net, plen in range_to_prefixes(sel.lo, sel.hi, bits):
        out.append(ip_network((net, plen)))
    return out


def path_mtu(remote: IPv4Address | IPv6Address, mark: int = 0) -> int:
    """MTU towards ``remote`` for packets carrying fwmark ``mark``: the route's mtu metric (a
    PMTU the kernel learned included) if set, else the outgoing link's MTU.

    ``mark`` must be the worker's socket mark: ESP to the peer leaves with it, so it takes the
    route the worker's packets take. Asked without it, a Child SA whose remote selectors cover
    the peer's own address (0.0.0.0/0, transport mode) answers with its own TUN route, whose
    mtu metric is the previous SA's inner MTU: each new SA would shrink the MTU by one more
    ESP overhead (1400 -> 102 over 25 SAs) until installs fail.
    """
    with _ipr() as ipr:
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


def local_address_in(selectors: Iterable[Selector]) -> IPv4Address | IPv6Address | None:
    """A local address of this host inside one of ``selectors`` (the route's preferred source)."""
    sels = list(selectors)
    if not sels:
        return None
    with _ipr() as ipr:
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
    _routes: dict[tuple[Network, int], set[RouteOwner]] = field(default_factory=dict)  # (prefix, table) -> owners
    _route_args: dict[tuple[Network, int], dict[str, Any]] = field(default_factory=dict)
    _rules: list[dict[str, Any]] = field(default_factory=list)

    # ---------------------------------------------------------------- link
    def link_up(self, mtu: int) -> int:
        """Set the TUN's MTU and bring it up; returns its ifindex."""
        with _ipr() as ipr:
            idx = ipr.link_lookup(ifname=self.tun_name)
            if not idx:
                raise LookupError(f"no interface {self.tun_name}")
            self.ifindex = int(idx[0])
            ipr.link("set", index=self.ifindex, mtu=mtu, state="up")
        return self.ifindex

    def set_mtu(self, mtu: int) -> None:
        with _ipr() as ipr:
            ipr.link("set", index=self.ifindex, mtu=mtu)

    def add_address(self, network: str) -> None:
        """Put an address on the TUN (e.g. a virtual IP assigned by the peer), ``"10.3.0.2/32"``."""
        iface = ip_network(network, strict=False)
        addr = network.split("/")[0]
        with _ipr() as ipr:
            try:
                ipr.addr("add", index=self.ifindex, address=addr, prefixlen=iface.prefixlen)
            except NetlinkError as e:
                if e.code != _EEXIST:
                    raise

    def remove_address(self, network: str) -> None:
        """Take an address off the TUN again (the virtual IP's IKE SA is gone); gone already is fine."""
        iface = ip_network(network, strict=False)
        with _ipr() as ipr:
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
        with _ipr() as ipr:
            try:
                ipr.route("add", dst=str(net), table=self.table, type="throw")
            except NetlinkError as e:
                if e.code != _EEXIST:
                    raise

    def remove_bypass(self, addr: str) -> None:
        with _ipr() as ipr:
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
        with _ipr() as ipr:
            for rule in wanted:
                try:
                    ipr.rule("add", **rule)
                except NetlinkError as e:
                    if e.code != _EEXIST:
                        raise
                self._rules.append(rule)

    def remove_rules(self) -> None:
        with _ipr() as ipr:
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
    ) -> list[Network]:
        """Route the remote selectors of ``reqid``'s PROTECT policies into the TUN.

        Routes are reference-counted by owner (``reqid`` unless ``owner`` is given, e.g.
        ``TrapRoutes(reqid)``): during a rekey two reqids may share a prefix, a trap and its
        SA always do, and the route stays until the last owner is removed. ``prefsrc`` maps IP
        version to the preferred source. Returns the prefixes routed.
        """
        tbl = self.table if table is None else table
        who: RouteOwner = reqid if owner is None else owner
        added: list[Network] = []
        with _ipr() as ipr:
            for pol in policies:
                if pol.action is not Action.PROTECT or pol.sa_ref != reqid:
                    continue
                for net in selector_networks(pol.remote):
                    key = (net, tbl)
                    users = self._routes.setdefault(key, set())
                    users.add(who)
                    # IPv6 routes never below 1280 (RFC 8200 5; the data plane fragments the outer packet)
                    net_mtu = mtu if net.version == 4 else max(mtu, IPV6_MIN_MTU)
                    args: dict[str, Any] = dict(dst=str(net), oif=self.ifindex, table=tbl, metrics={"mtu": net_mtu})
                    src = (prefsrc or {}).get(net.version)
                    if src is not None:
                        args["prefsrc"] = str(src)
                    # replace: a rekey may change the MTU or source; an older route must not block it
                    ipr.route("replace", **args)
                    self._route_args[key] = args
                    added.append(net)
        return added

    def remove_routes(self, owner: RouteOwner) -> None:
        """Drop ``owner``'s claim on its routes; a route goes when nobody else claims it."""
        with _ipr() as ipr:
            for key, users in list(self._routes.items()):
                if owner not in users:
                    continue
                users.discard(owner)
                if users:
                    continue
                args = self._route_args.pop(key, None)
                del self._routes[key]
                if args is None:
                    continue
                try:
                    ipr.route("del", dst=args["dst"], oif=args["oif"], table=args["table"])
                except NetlinkError as e:
                    if e.code not in (_ENOENT, _ESRCH):  # already gone with the TUN: fine
                        raise

    def routed_reqids(self) -> set[int]:
        """Reqids with Child SA routes (trap routes are listed by ``route_owners``)."""
        return {r for users in self._routes.values() for r in users if isinstance(r, int)}

    def route_owners(self) -> set[RouteOwner]:
        return {r for users in self._routes.values() for r in users}

    def cleanup(self) -> None:
        """Remove every route and rule this object added (shutdown, or a failed start)."""
        for owner in self.route_owners():
            with contextlib.suppress(NetlinkError, OSError):
                self.remove_routes(owner)
        with contextlib.suppress(NetlinkError, OSError):
            self.remove_rules()
