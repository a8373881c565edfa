"""The remote-access site of issue 10's "Tests", the one namespace topology for remote access:
laptops behind one NAT, a router, the ipsecd gateway, a LAN host behind it. Parametrised, for
every step of the scenario and for the fragmentation / path-MTU tests.

::

    c0 ─┐ 10.99.i.2/24 (eth0, "Wi-Fi")      192.0.2.1 (+ .3 for second uplinks)
    c1 ─┤ 10.98.i.2/24 (eth1, "LTE", uplinks=2)
    ... ├── nat ── eth1 192.0.2.0/24 ── router ── 198.51.100.0/24 ── gw ── 10.10.0.0/24, fd00:10::/64 ── lan
    cN ─┘  (masquerade;                 (mtu, drop_fragments)        ipsecd   (10.10.0.1)       (10.10.0.2)
            10.98/16 → 192.0.2.3)
    each client: a LAN address 10.2.i.1/32 on lo (for fixed traffic selectors, :meth:`view`)

* ``mtu``: the MTU of every link between the NAT and the gateway(s) (the 1280-byte path of
  the issue); the clients' own links stay at 1500, so the NAT (whose conntrack reassembles
  first) and the gateway fragment what does not fit;
* ``drop_fragments``: the router, which does no NAT and keeps no conntrack state, drops every
  IPv4 fragment and every IPv6 fragment it would forward, so no fragmented datagram crosses
  (RFC 7383's reason to exist); :meth:`fragments_dropped` counts them;
* ``ipv6_outside=True``: the outside path carries IPv6 too, routed without NAT as a home
  router does: client i 2001:db8:99:i::2 (uplink 0), NAT 2001:db8:1::1, router 2001:db8:1::fe
  and 2001:db8:2::1, gateway 2001:db8:2::2;
* ``gateways=2``: a second gateway ``gw2`` (198.51.101.2) on another router port, with the
  LAN host's addresses on its loopback, for IKE redirect (RFC 5685);
* ``uplinks=2``: each client gets a second uplink (eth1) that the NAT maps to a second
  public address, for MOBIKE: ``use_uplink(i, 1)`` moves client i's default route there,
  ``uplink_down(i, 0)`` pulls the cable of the first.

Clients are strongSwan 5.9.8 charons, configured either by ipsecd's Linux client profile
(:func:`site_client`, ``tests/profile_clients.py``) or by tests/ra_interop.py's helpers through
:meth:`RemoteAccessSite.view`; the gateway is ipsecd with the site's certificate chain
(:func:`site_pki`: RSA-4096 root, two intermediates, about 5 KB), EAP-MSCHAPv2 users, IPv4 and
IPv6 pools with DNS and a DNS domain (:func:`site_gateway_doc`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config
from tests.netns import Netns, Topology, why_no_netns
from tests.pki import Issued, TestPki, write_swanctl
from tests.profile_clients import profile_client
from tests.ra_interop import RA_PLUGINS
from tests.strongswan import Charon

GW_ID = "vpn.example.com"
CONN = "rw"
NAT_OUT, NAT_OUT2, ROUTER_NAT = "192.0.2.1", "192.0.2.3", "192.0.2.254"
GW_OUT, ROUTER_GW = "198.51.100.2", "198.51.100.1"
GW2_OUT, ROUTER_GW2 = "198.51.101.2", "198.51.101.1"  # the second gateway (gateways=2), for redirects
GW_LAN4, GW_LAN6 = "10.10.0.1", "fd00:10::1"
LAN4, LAN6 = "10.10.0.2", "fd00:10::2"  # the LAN host behind the gateway
LAN_TS = ("10.10.0.0/24", "fd00:10::/64")
DNS4, DNS6, DOMAIN = "10.10.0.53", "fd00:10::53", "corp.example"

GW_OUT6, ROUTER_GW6 = "2001:db8:2::2", "2001:db8:2::1"  # ipv6_outside=True: routed, no NAT
NAT_OUT6, ROUTER_NAT6 = "2001:db8:1::1", "2001:db8:1::fe"


@dataclass
class View:
    """The tests.netns.Topology face of (ipsecd's namespace ``a``, charon's ``b``) for tests/ra_interop.py."""

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


class RemoteAccessSite(Topology):
    """Clients c0..cN-1 behind one NAT, a router, the gateway (``gw``) and a LAN host (``lan``)."""

    def __init__(self, clients: int, *, mtu: int | None = None, drop_fragments: bool = False,
                 uplinks: int = 1, gateways: int = 1, ipv6_outside: bool = False) -> None:
        super().__init__("nat", ipv6=False)
        if uplinks not in (1, 2) or gateways not in (1, 2):
            raise ValueError("uplinks, gateways: 1 or 2")
        self.mtu, self.drop_fragments, self.uplinks = mtu, drop_fragments, uplinks
        self.ipv6_outside = ipv6_outside
        self.clients = [Netns(f"{self.prefix}-c{i}") for i in range(clients)]
        self.router = Netns(f"{self.prefix}-r")
        self.lan = Netns(f"{self.prefix}-lan")
        self.gw = self.b
        self.gw2 = Netns(f"{self.prefix}-gw2") if gateways == 2 else None
        self.b_seen_from_a = GW_OUT

    @property
    def namespaces(self) -> list[Netns]:
        assert self.nat is not None
        extra = [self.router, self.lan, *([self.gw2] if self.gw2 is not None else [])] if hasattr(self, "gw2") else []
        return [*getattr(self, "clients", []), self.nat, *extra, self.b]

    @staticmethod
    def client_addr(i: int, uplink: int = 0) -> str:
        return f"10.{99 - uplink}.{i}.2"

    @staticmethod
    def client_addr6(i: int) -> str:
        return f"2001:db8:99:{i:x}::2"

    @staticmethod
    def client_lan(i: int) -> tuple[str, str]:
        """Client i's LAN address (on its loopback) and prefix, for fixed traffic selectors."""
        return f"10.2.{i}.1", f"10.2.{i}.0/24"

    def view(self, i: int, *, v6: bool = False, ipsecd_on_client: bool = False) -> View:
        """The Topology face tests/ra_interop.py's helpers take: ipsecd in ``a``, charon in ``b``.

        By default ipsecd is the gateway and client i's charon its road warrior (behind the NAT
        over IPv4; ``v6``: over the routed IPv6 outside). ``ipsecd_on_client``: the roles turned
        round, ipsecd the road warrior in client i, charon the gateway in ``gw``."""
        if v6 and not self.ipv6_outside:
            raise ValueError("v6: build the site with ipv6_outside=True")
        lan, lan_net = self.client_lan(i)
        client = self.client_addr6(i) if v6 else self.client_addr(i)
        seen = client if v6 else NAT_OUT
        gw = GW_OUT6 if v6 else GW_OUT
        if ipsecd_on_client:
            return View(self.clients[i], self.gw, client, gw, seen, gw, lan, GW_LAN4, lan_net, LAN_TS[0])
        return View(self.gw, self.clients[i], gw, client, gw, seen, GW_LAN4, lan, LAN_TS[0], lan_net)

    def _build(self) -> None:
        nat = self.nat
        assert nat is not None
        for ns in self.namespaces:
            self._add_ns(ns)
            # no DAD: IPv6 addresses (and the link-local next hops) usable at once, bind() does not fail
            ns.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"])
        for i, c in enumerate(self.clients):
            for up in range(self.uplinks):
                net = 99 - up
                self._veth(c, f"eth{up}", nat, f"c{i}u{up}")
                c.run(["ip", "addr", "add", f"10.{net}.{i}.2/24", "dev", f"eth{up}"])
                nat.run(["ip", "addr", "add", f"10.{net}.{i}.1/24", "dev", f"c{i}u{up}"])
            c.run(["ip", "route", "add", "default", "via", f"10.99.{i}.1"])
            c.run(["ip", "addr", "add", f"{self.client_lan(i)[0]}/32", "dev", "lo"])
        self._veth(nat, "eth1", self.router, "eth0")
        self._veth(self.router, "eth1", self.gw, "eth0")
        self._veth(self.gw, "eth1", self.lan, "eth0")
        nat.run(["ip", "addr", "add", f"{NAT_OUT}/24", "dev", "eth1"])
        nat.run(["ip", "addr", "add", f"{NAT_OUT2}/24", "dev", "eth1"])
        nat.run(["ip", "route", "add", "default", "via", ROUTER_NAT])
        self.router.run(["ip", "addr", "add", f"{ROUTER_NAT}/24", "dev", "eth0"])
        self.router.run(["ip", "addr", "add", f"{ROUTER_GW}/24", "dev", "eth1"])
        self.gw.run(["ip", "addr", "add", f"{GW_OUT}/24", "dev", "eth0"])
        self.gw.run(["ip", "route", "add", "default", "via", ROUTER_GW])
        self.gw.run(["ip", "addr", "add", f"{GW_LAN4}/24", "dev", "eth1"])
        self.gw.run(["ip", "addr", "add", f"{GW_LAN6}/64", "dev", "eth1", "nodad"])
        self.lan.run(["ip", "addr", "add", f"{LAN4}/24", "dev", "eth0"])
        self.lan.run(["ip", "addr", "add", f"{LAN6}/64", "dev", "eth0", "nodad"])
        self.lan.run(["ip", "route", "add", "default", "via", GW_LAN4])
        self.lan.run(["ip", "-6", "route", "add", "default", "via", GW_LAN6])
        for ns in (nat, self.router, self.gw):
            ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.gw.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        nat.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.98.0.0/16", "-o", "eth1", "-j", "SNAT",
                 "--to-source", NAT_OUT2])
        nat.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth1", "-j", "MASQUERADE"])
        if self.ipv6_outside:
            self._build_ipv6_outside()
        if self.gw2 is not None:
            self._veth(self.router, "eth2", self.gw2, "eth0")
            self.router.run(["ip", "addr", "add", f"{ROUTER_GW2}/24", "dev", "eth2"])
            self.gw2.run(["ip", "addr", "add", f"{GW2_OUT}/24", "dev", "eth0"])
            self.gw2.run(["ip", "route", "add", "default", "via", ROUTER_GW2])
            self.gw2.run(["ip", "addr", "add", f"{LAN4}/32", "dev", "lo"])
            self.gw2.run(["ip", "addr", "add", f"{LAN6}/128", "dev", "lo"])
        if self.mtu is not None:
            # both ends of every link past the NAT, so each host's route knows the path MTU
            small = [(nat, "eth1"), (self.router, "eth0"), (self.router, "eth1"), (self.gw, "eth0")]
            if self.gw2 is not None:
                small += [(self.router, "eth2"), (self.gw2, "eth0")]
            for ns, dev in small:
                ns.run(["ip", "link", "set", "dev", dev, "mtu", str(self.mtu)])
        if self.drop_fragments:
            # no NAT here, so no conntrack defragmentation before FORWARD (strongswan-peer notes)
            self.router.run(["iptables", "-A", "FORWARD", "-f", "-j", "DROP"])
            self.router.run(["ip6tables", "-A", "FORWARD", "-m", "frag", "-j", "DROP"])
        self._wait_up()

    def _build_ipv6_outside(self) -> None:
        nat = self.nat
        assert nat is not None
        for i, c in enumerate(self.clients):
            c.run(["ip", "addr", "add", f"{self.client_addr6(i)}/64", "dev", "eth0", "nodad"])
            nat.run(["ip", "addr", "add", f"2001:db8:99:{i:x}::1/64", "dev", f"c{i}u0", "nodad"])
            c.run(["ip", "-6", "route", "add", "default", "via", f"2001:db8:99:{i:x}::1"])
        nat.run(["ip", "addr", "add", f"{NAT_OUT6}/64", "dev", "eth1", "nodad"])
        nat.run(["ip", "-6", "route", "add", "default", "via", ROUTER_NAT6])
        self.router.run(["ip", "addr", "add", f"{ROUTER_NAT6}/64", "dev", "eth0", "nodad"])
        self.router.run(["ip", "addr", "add", f"{ROUTER_GW6}/64", "dev", "eth1", "nodad"])
        self.router.run(["ip", "-6", "route", "add", "2001:db8:99::/48", "via", NAT_OUT6])
        self.gw.run(["ip", "addr", "add", f"{GW_OUT6}/64", "dev", "eth0", "nodad"])
        self.gw.run(["ip", "-6", "route", "add", "default", "via", ROUTER_GW6])
        for ns in (nat, self.router):
            ns.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])

    def _wait_up(self, timeout: float = 8.0) -> None:
        end = time.monotonic() + timeout
        probes: list[tuple[Netns, str]] = [(self.lan, GW_LAN4), (self.lan, GW_LAN6)]
        if self.clients:
            probes.append((self.clients[0], GW_OUT))
            if self.ipv6_outside:
                probes.append((self.clients[0], GW_OUT6))
        for ns, dst in probes:
            while ns.ping(dst, count=1, deadline=1, check=False).returncode != 0:
                if time.monotonic() > end:
                    raise RuntimeError(f"the site never came up: {ns.name} cannot reach {dst}")

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

    # ------------------------------------------------------------ what a MOBIKE test does to a laptop
    def use_uplink(self, i: int, uplink: int) -> None:
        """Client i's default route through its uplink ``uplink`` (0 Wi-Fi, 1 LTE)."""
        net = 99 - uplink
        self.clients[i].run(["ip", "route", "replace", "default", "via", f"10.{net}.{i}.1", "dev", f"eth{uplink}"])

    def uplink_down(self, i: int, uplink: int) -> None:
        self.clients[i].run(["ip", "link", "set", "dev", f"eth{uplink}", "down"])


@dataclass
class SiteGateway:
    """The gateway's PKI: the root its clients trust, its own certificate and the intermediates between."""

    root: Issued
    cert: Issued
    intermediates: Sequence[Issued] = ()

    def chain_octets(self) -> int:
        """What the gateway sends in CERT payloads: its certificate and the intermediates, DER."""
        return sum(len(c.cert_bytes("der")) for c in (self.cert, *self.intermediates))


def site_pki(pki: TestPki, *, gw_id: str = GW_ID, sans: Sequence[str] = ()) -> SiteGateway:
    """The issue's ~5 KB chain: RSA-4096 root, two RSA-4096 intermediates, an RSA-4096 gateway
    certificate with a gateway's usual names (RSA: Windows and Apple verify it). Keys come from
    the session's pool, so a module builds it in well under a second after the first."""
    root = pki.root("Site Root CA", "rsa4096")
    inter1 = pki.intermediate(root, "Site Intermediate 1", "rsa4096")
    inter2 = pki.intermediate(inter1, "Site Intermediate 2", "rsa4096")
    names = [f"DNS:{gw_id}", "DNS:vpn-eu.example.com", "DNS:vpn-us.example.com", *sans]
    return SiteGateway(root, pki.end_entity(inter2, gw_id, "rsa4096", sans=names), [inter1, inter2])


def users(n: int) -> dict[str, str]:
    return {f"user{i}": f"user{i}-Passw0rd" for i in range(n)}


def site_gateway_doc(tmp: Path, creds: SiteGateway, *, n_users: int, pool4: str = "10.3.0.0/28",
                     pool6: str | None = "fd00:3::/120", unique: str = "replace",
                     proposals: Sequence[str] = ("aes256gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"),
                     esp: Sequence[str] = ("aes256gcm16", "aes256-sha256"), **conn: Any) -> dict[str, Any]:
    """ipsecd's configuration for the site: certificate gateway, EAP-MSCHAPv2 users, pools with DNS."""
    directory = write_swanctl(tmp / "gw-creds", own=[creds.cert], certs=list(creds.intermediates), cas=[creds.root])
    pools = {"rw4": {"addrs": pool4, "dns": DNS4, "25": DOMAIN}}
    if pool6:
        pools["rw6"] = {"addrs": pool6, "dns": DNS6}
    return {
        "connections": {CONN: {
            "local_addrs": [GW_OUT], "remote_addrs": "%any", "proposals": list(proposals), "send_cert": "always",
            "unique": unique, "pools": list(pools),
            "local": {"auth": "pubkey", "id": GW_ID, "certs": [f"{GW_ID}.pem"]},
            "remote": {"auth": "eap-mschapv2", "eap_id": "%any"},
            "children": {CONN: child_config(local_ts=list(LAN_TS), remote_ts=["dynamic"], esp_proposals=list(esp))},
            **conn,
        }},
        "pools": pools,
        "secrets": {"eap": [{"id": u, "secret": p} for u, p in users(n_users).items()]},
        "settings": {"credentials": str(directory), "lease_db": str(tmp / "gw-state" / "leases.db")},
    }


def resolv_path(tmp: Path, i: int) -> Path:
    return tmp / f"c{i}-resolv.conf"


def site_client(make: Callable[..., Charon], site: RemoteAccessSite, gw: Ipsecd, i: int, tmp: Path, *,
                user: str | None = None, name: str | None = None) -> Charon:
    """Client i: a charon set up by the Linux profile of ``user`` (default user<i>), DNS into its own file."""
    settings = (f"  load = {RA_PLUGINS} resolve\n  plugins {{\n    resolve {{\n      file = {resolv_path(tmp, i)}\n"
                "    }\n  }\n  filelog {\n    main {\n      cfg = 2\n    }\n  }\n")
    return profile_client(make, site.clients[i], gw, CONN, user or f"user{i}", tmp, server=GW_OUT,
                          name=name or f"c{i}", charon_settings=settings)


@pytest.fixture
def ra_site() -> Iterator[Callable[..., RemoteAccessSite]]:
    """``make(clients, mtu=None, drop_fragments=False, uplinks=1, gateways=1, ipv6_outside=False)``
    -> a built :class:`RemoteAccessSite` (or a skip without namespaces); all torn down after."""
    made: list[RemoteAccessSite] = []

    def make(clients: int, **kw: Any) -> RemoteAccessSite:
        why = why_no_netns()
        if why:
            pytest.skip(why)
        site = RemoteAccessSite(clients, **kw)
        made.append(site)
        return site.__enter__()  # type: ignore[return-value]

    try:
        yield make
    finally:
        for site in made:
            site.close()
