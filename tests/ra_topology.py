"""A remote-access network in namespaces: a gateway, a router with a small MTU that drops IP
fragments, and road-warrior clients, optionally all behind one NAT.

``RaTopology(clients=1, mtu=1280, drop_fragments=True, nat=False)``::

    GW eth0 192.0.2.1/24, 2001:db8:1::1/64          (LAN 10.1.0.1/32 on lo)
      |   MTU ``mtu`` on both ends
    R  eth0 192.0.2.254/24, 2001:db8:1::fe/64
       without NAT, per client i:  R ci 100.64.i.254/24, 2001:db8:1i::fe/64
                                   <->  Ci eth0 100.64.i.2/24, 2001:db8:1i::2/64
       with ``nat=True``:          R eth1 198.51.100.254/24  <->  NAT eth0 198.51.100.1/24 (masquerades)
                                   per client i: NAT ci 10.99.i.1/24  <->  Ci eth0 10.99.i.2/24 (IPv4 only)
    Ci LAN 10.2.i.1/32 on lo

Every link the router touches has MTU ``mtu`` at both ends, so each host's route knows it;
the router drops every IPv4 fragment (iptables ``-f``) and IPv6 fragment (ip6tables ``-m frag``)
it would forward, so a datagram larger than ``mtu`` never arrives: neither an IKE message
sent unfragmented nor an oversized ESP packet. The router keeps no conntrack state (which
would reassemble fragments before the filter sees them).

The object also looks like a :class:`tests.netns.Topology` for client 0 (``a`` = the
gateway, ``b`` = client 0, ``a_addr``, ``b_seen_from_a``, ``a_lan_net`` ...), so the helpers
of tests/ra_interop.py work on it unchanged; :meth:`view` gives the same face for client i.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.netns import Netns, Topology, unique_prefix, why_no_netns

GW_ADDR, GW_ADDR6 = "192.0.2.1", "2001:db8:1::1"
ROUTER_GW_SIDE, ROUTER_GW_SIDE6 = "192.0.2.254", "2001:db8:1::fe"
NAT_OUTSIDE, ROUTER_NAT_SIDE = "198.51.100.1", "198.51.100.254"


@dataclass
class Client:
    """One road warrior: its namespace, addresses, LAN, and how the gateway sees it."""

    ns: Netns
    addr: str
    addr6: str | None
    lan: str
    lan_net: str
    seen_from_gw: str  # its own address, or the NAT's outside address


@dataclass
class View:
    """The Topology face of (gateway, client i) for tests/ra_interop.py's helpers."""

    a: Netns
    b: Netns
    a_addr: str
    b_addr: str
    a_seen_from_b: str
    b_seen_from_a: str
    a_lan: str
    b_lan: str
    a_lan_net: str
    b_lan_net: str
    a_addr6: str | None
    b_addr6: str | None


class RaTopology(Topology):
    """See the module docstring."""

    def __init__(self, clients: int = 1, *, mtu: int = 1280, drop_fragments: bool = True, nat: bool = False,
                 prefix: str | None = None) -> None:
        if not 1 <= clients <= 50:
            raise ValueError("1 to 50 clients")
        super().__init__("pair", prefix=prefix or unique_prefix())
        self.mtu = mtu
        self.drop_fragments = drop_fragments
        self.behind_nat = nat
        self.ipv6 = not nat
        self.router = Netns(f"{self.prefix}-r")
        self.nat = Netns(f"{self.prefix}-nat") if nat else None
        self.clients: list[Client] = []
        for i in range(clients):
            ns = self.b if i == 0 else Netns(f"{self.prefix}-c{i}")
            addr = f"10.99.{i}.2" if nat else f"100.64.{i}.2"
            self.clients.append(Client(ns, addr, None if nat else f"2001:db8:{0x10 + i:x}::2", f"10.2.{i}.1",
                                       f"10.2.{i}.0/24", NAT_OUTSIDE if nat else addr))
        c0 = self.clients[0]
        self.a_addr, self.a_addr6 = GW_ADDR, (GW_ADDR6 if self.ipv6 else None)
        self.a_seen_from_b = GW_ADDR
        self.b_addr, self.b_addr6, self.b_seen_from_a = c0.addr, c0.addr6, c0.seen_from_gw
        self.b_lan, self.b_lan_net = c0.lan, c0.lan_net

    @property
    def namespaces(self) -> list[Netns]:
        middle = [n for n in (self.router, self.nat) if n is not None]
        return [self.a, *middle, *(c.ns for c in self.clients)]

    def view(self, i: int) -> View:
        c = self.clients[i]
        return View(self.a, c.ns, self.a_addr, c.addr, GW_ADDR, c.seen_from_gw, self.a_lan, c.lan, self.a_lan_net,
                    c.lan_net, self.a_addr6, c.addr6)

    # ------------------------------------------------------------ build
    def _link(self, left: Netns, lname: str, right: Netns, rname: str, mtu: int | None) -> None:
        self._veth(left, lname, right, rname)
        if mtu is not None:
            left.run(["ip", "link", "set", lname, "mtu", str(mtu)])
            right.run(["ip", "link", "set", rname, "mtu", str(mtu)])

    @staticmethod
    def _addr(ns: Netns, dev: str, *addrs: str | None) -> None:
        for a in addrs:
            if a is not None:
                # nodad: without it IPv6 addresses stay "tentative" for ~2 s and bind() fails
                ns.run(["ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else [])])

    def _build(self) -> None:
        for ns in self.namespaces:
            self._add_ns(ns)
            # no DAD: link-local addresses (IPv6 neighbour discovery, the next hops) usable at once
            ns.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"])
        gw, r, v6 = self.a, self.router, self.ipv6
        gw.run(["ip", "addr", "add", f"{self.a_lan}/32", "dev", "lo"])
        self._link(gw, "eth0", r, "eth0", self.mtu)
        self._addr(gw, "eth0", f"{GW_ADDR}/24", f"{GW_ADDR6}/64" if v6 else None)
        self._addr(r, "eth0", f"{ROUTER_GW_SIDE}/24", f"{ROUTER_GW_SIDE6}/64" if v6 else None)
        gw.run(["ip", "route", "add", "default", "via", ROUTER_GW_SIDE])
        if v6:
            gw.run(["ip", "-6", "route", "add", "default", "via", ROUTER_GW_SIDE6])
        r.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        r.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        if self.nat is None:
            for i, c in enumerate(self.clients):
                self._link(r, f"c{i}", c.ns, "eth0", self.mtu)
                self._addr(r, f"c{i}", f"100.64.{i}.254/24", f"2001:db8:{0x10 + i:x}::fe/64")
                self._addr(c.ns, "eth0", f"{c.addr}/24", f"{c.addr6}/64")
                c.ns.run(["ip", "route", "add", "default", "via", f"100.64.{i}.254"])
                c.ns.run(["ip", "-6", "route", "add", "default", "via", f"2001:db8:{0x10 + i:x}::fe"])
        else:
            nat = self.nat
            self._link(r, "eth1", nat, "eth0", self.mtu)
            self._addr(r, "eth1", f"{ROUTER_NAT_SIDE}/24")
            self._addr(nat, "eth0", f"{NAT_OUTSIDE}/24")
            nat.run(["ip", "route", "add", "default", "via", ROUTER_NAT_SIDE])
            nat.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            nat.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"])
            for i, c in enumerate(self.clients):
                # the clients' own links keep the default MTU: the small one is further along
                self._link(nat, f"c{i}", c.ns, "eth0", None)
                self._addr(nat, f"c{i}", f"10.99.{i}.1/24")
                self._addr(c.ns, "eth0", f"{c.addr}/24")
                c.ns.run(["ip", "route", "add", "default", "via", f"10.99.{i}.1"])
        for c in self.clients:
            c.ns.run(["ip", "addr", "add", f"{c.lan}/32", "dev", "lo"])
        if self.drop_fragments:
            r.run(["iptables", "-A", "FORWARD", "-f", "-j", "DROP"])
            r.run(["ip6tables", "-A", "FORWARD", "-m", "frag", "-j", "DROP"])
        self._wait_link()

    def fragments_dropped(self) -> int:
        """Packets the router's fragment rules dropped so far (IPv4 plus IPv6)."""
        total = 0
        for tool in ("iptables", "ip6tables"):
            out = self.router.run([tool, "-L", "FORWARD", "-v", "-n", "-x"]).stdout
            for line in out.splitlines()[2:]:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "DROP":
                    total += int(fields[0])
        return total


@contextlib.contextmanager
def ra_topology_or_skip(clients: int = 1, **kw: object) -> Iterator[RaTopology]:
    """An RaTopology, or pytest.skip when namespaces are not usable here."""
    why = why_no_netns()
    if why:
        pytest.skip(why)
    with RaTopology(clients, **kw) as topo:  # type: ignore[arg-type]
        yield topo
