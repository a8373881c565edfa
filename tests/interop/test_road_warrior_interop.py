"""Road warriors against strongSwan 5.9.8: virtual IPs, DNS, pools, many laptops behind one NAT.

Layout (``NatOffice``): N client namespaces, each its own laptop (10.99.i.2), behind one
NAT namespace that masquerades them all to 192.0.2.1; the gateway beyond it (192.0.2.2)
with a LAN on lo (10.2.0.1, fd00:2::1). The clients are strongSwan 5.9.8 charons with
kernel-libipsec and ``vips = 0.0.0.0, ::`` (or only 0.0.0.0), each with its own identity
and the ``resolve`` plugin writing the DNS servers it is given to a file; the gateway is
ipsecd with an IPv4 and an IPv6 pool. And the other way round: ipsecd as the client of a
strongSwan gateway with swanctl pools.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config
from tests.netns import Netns, Topology, fake_resolvconf, interface_addresses, wait_for, why_no_netns
from tests.strongswan import PLUGINS, Charon, ChildParams, ConnParams

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

PSK = "road-warrior-interop-psk-0123456789"
GW, NAT_OUT = "192.0.2.2", "192.0.2.1"
LAN4, LAN6 = "10.2.0.1", "fd00:2::1"
LAN_TS = ("10.2.0.0/24", "fd00:2::/64")
MakeCharon = Callable[..., Charon]
MakeIpsecd = Callable[..., Ipsecd]


class NatOffice(Topology):
    """Client namespaces c0..cN-1 behind one masquerading NAT, the gateway (``b``) beyond it."""

    def __init__(self, n: int) -> None:
        super().__init__("nat", ipv6=False)
        self.clients = [Netns(f"{self.prefix}-c{i}") for i in range(n)]
        self.b_seen_from_a = GW

    @property
    def namespaces(self) -> list[Netns]:
        assert self.nat is not None
        return [*getattr(self, "clients", []), self.nat, self.b]

    def client_addr(self, i: int) -> str:
        return f"10.99.{i}.2"

    def _build(self) -> None:
        nat = self.nat
        assert nat is not None
        for ns in self.namespaces:
            self._add_ns(ns)
        for i, c in enumerate(self.clients):
            self._veth(c, "eth0", nat, f"c{i}")
            c.run(["ip", "addr", "add", f"{self.client_addr(i)}/24", "dev", "eth0"])
            c.run(["ip", "route", "add", "default", "via", f"10.99.{i}.1"])
            nat.run(["ip", "addr", "add", f"10.99.{i}.1/24", "dev", f"c{i}"])
        self._veth(nat, "eth1", self.b, "eth0")
        nat.run(["ip", "addr", "add", f"{NAT_OUT}/24", "dev", "eth1"])
        self.b.run(["ip", "addr", "add", f"{GW}/24", "dev", "eth0"])
        self.b.run(["ip", "addr", "add", f"{LAN4}/32", "dev", "lo"])
        self.b.run(["ip", "addr", "add", f"{LAN6}/128", "dev", "lo"])
        nat.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        nat.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth1", "-j", "MASQUERADE"])
        end = time.monotonic() + 5
        while self.clients and self.clients[0].ping(GW, count=1, deadline=1, check=False).returncode != 0:
            if time.monotonic() > end:
                raise RuntimeError("the office network never came up")


@pytest.fixture
def office_factory() -> Any:
    made: list[NatOffice] = []

    def make(n: int) -> NatOffice:
        why = why_no_netns()
        if why:
            pytest.skip(why)
        topo = NatOffice(n)
        made.append(topo)
        return topo.__enter__()

    try:
        yield make
    finally:
        for topo in made:
            topo.close()


def gateway_doc(tmp_path: Path, *, addrs4: str = "10.3.0.0/29", unique: str = "no") -> dict[str, Any]:
    doc = ipsecd_config(name="rw", local_addrs=[GW], remote_addrs="%any", local_id="gw.test", remote_id="%any",
                        psk=PSK, children={"lan": child_config(local_ts=list(LAN_TS), remote_ts=["dynamic"])},
                        unique=unique)
    doc["connections"]["rw"]["pools"] = ["rw4", "rw6"]
    doc["pools"] = {"rw4": {"addrs": addrs4, "dns": "10.2.0.53", "25": "corp.example"},
                    "rw6": {"addrs": "fd00:3::/120", "dns": "fd00:2::53"}}
    doc["settings"] = {"lease_db": str(tmp_path / "gw-state" / "leases.db")}
    return doc


def start_client(make: MakeCharon, topo: NatOffice, i: int, tmp_path: Path, *, v6: bool = True,
                 identity: str | None = None, name: str | None = None) -> Charon:
    resolv = tmp_path / f"c{i}-resolv.conf"
    extra = (f"  load = {PLUGINS} resolve\n  plugins {{\n    resolve {{\n      file = {resolv}\n    }}\n  }}\n"
             "  filelog {\n    main {\n      ike = 2\n      cfg = 2\n    }\n  }\n")
    conn = ConnParams(name="rw", local_addrs=[topo.client_addr(i)], remote_addrs=[GW],
                      local_id=identity or f"c{i}.test", remote_id="gw.test", psk=PSK,
                      children=(ChildParams(name="lan", local_ts=("dynamic",), remote_ts=LAN_TS),),
                      extra={"vips": "0.0.0.0,::" if v6 else "0.0.0.0"})
    return make(topo.clients[i], conn, name=name or f"c{i}", extra_charon=extra)


def client_vips(ch: Charon) -> list[str]:
    ike = ch.wait_established(20, child="lan")
    return list(ike.get("local-vips", []))


def resolv_text(tmp_path: Path, i: int) -> str:
    path = tmp_path / f"c{i}-resolv.conf"
    return path.read_text() if path.exists() else ""


# --------------------------------------------------------------------------- strongSwan clients, ipsecd gateway


def test_four_strongswan_clients_behind_one_nat(office_factory: Any, charon_factory: MakeCharon,
                                                ipsecd_factory: MakeIpsecd, tmp_path: Path) -> None:
    topo = office_factory(4)
    gw = ipsecd_factory(topo.b, gateway_doc(tmp_path), name="gw")
    clients = [start_client(charon_factory, topo, i, tmp_path, v6=i < 2) for i in range(4)]
    for ch in clients:
        ch.initiate("lan", timeout=20)

    vips = [client_vips(ch) for ch in clients]
    v4 = [next(a for a in v if ":" not in a) for v in vips]
    assert len(set(v4)) == 4 and all(a.startswith("10.3.0.") for a in v4), vips
    v6 = [[a for a in v if ":" in a] for v in vips]
    assert all(len(v6[i]) == 1 for i in (0, 1)) and v6[0] != v6[1] and v6[2] == v6[3] == [], vips

    sas = gw.list_sas()
    assert len(sas) == 4 and {s["remote"].split("[")[0] for s in sas} == {NAT_OUT}
    assert len({s["remote"] for s in sas}) == 4  # one address, four NAT ports
    by_id = {s["remote_id"]: s for s in sas}
    for i, ch in enumerate(clients):
        gw_sa = by_id[f"c{i}.test"]
        assert sorted(gw_sa["remote_vips"]) == sorted(vips[i])
        (child,) = gw_sa["child_sas"]
        assert sorted(child["remote_ts"]) == sorted(f"{a}/{128 if ':' in a else 32}" for a in vips[i])
        (swan_child,) = ch.list_sas()[0]["child-sas"]
        assert sorted(swan_child["local-ts"]) == sorted(child["remote_ts"])  # TS narrowed to the lease
        assert sorted(swan_child["remote-ts"]) == sorted(LAN_TS)
        # DNS through strongSwan's resolve plugin; the DNS domain (RFC 8598) reached its attribute handling
        wait_for(f"c{i}'s resolv.conf", lambda i=i: "10.2.0.53" in resolv_text(tmp_path, i))  # type: ignore[misc]
        assert ("fd00:2::53" in resolv_text(tmp_path, i)) == (i < 2)
        assert "INTERNAL_DNS_DOMAIN" in ch.log_text()

    for i in range(len(clients)):
        topo.clients[i].ping(LAN4, count=2)
        topo.b.ping(v4[i], count=2, src=LAN4)
        if i < 2:
            topo.clients[i].ping(LAN6, count=2)
            topo.b.ping(v6[i][0], count=2, src=LAN6)
    pools = {p["name"]: p for p in json.loads(gw.ctl("list-pools", "--json").stdout)["pools"]}
    assert (pools["rw4"]["online"], pools["rw6"]["online"]) == (4, 2)


def test_exhaustion_then_a_restart_keeps_the_leases(office_factory: Any, charon_factory: MakeCharon,
                                                    ipsecd_factory: MakeIpsecd, tmp_path: Path) -> None:
    topo = office_factory(3)
    doc = gateway_doc(tmp_path, addrs4="10.3.0.1-10.3.0.2")
    gw = ipsecd_factory(topo.b, doc, name="gw")
    clients = [start_client(charon_factory, topo, i, tmp_path, v6=False) for i in range(3)]
    clients[0].initiate("lan", timeout=20)
    clients[1].initiate("lan", timeout=20)
    assert (client_vips(clients[0]), client_vips(clients[1])) == (["10.3.0.1"], ["10.3.0.2"])

    refused = clients[2].initiate("lan", timeout=20, check=False)
    assert refused.returncode != 0
    wait_for("charon to log the refusal", lambda: "INTERNAL_ADDRESS_FAILURE" in clients[2].log_text())
    assert "no IPv4 address left for 'c2.test' in pools rw4, rw6: exhausted" in gw.log_text()
    assert "answering INTERNAL_ADDRESS_FAILURE" in gw.log_text()
    assert {s["remote_id"] for s in gw.list_sas() if s["child_sas"]} == {"c0.test", "c1.test"}

    gw.stop()  # a graceful stop: the clients hear the Deletes
    wait_for("the clients to lose their SAs", lambda: not clients[0].list_sas() and not clients[1].list_sas())
    gw = ipsecd_factory(topo.b, doc, name="gw2")
    out = gw.ctl("list-pools", "--leases").stdout
    assert re.search(r"10\.3\.0\.1\s+offline 'c0\.test'", out) and re.search(r"10\.3\.0\.2\s+offline 'c1\.test'",
                                                                              out), out
    clients[1].initiate("lan", timeout=20)  # in the other order: each gets its own address back
    clients[0].initiate("lan", timeout=20)
    assert (client_vips(clients[0]), client_vips(clients[1])) == (["10.3.0.1"], ["10.3.0.2"])
    topo.clients[0].ping(LAN4, count=2)
    topo.clients[1].ping(LAN4, count=2)


def test_ten_clients_behind_one_nat_connect_together(office_factory: Any, charon_factory: MakeCharon,
                                                     ipsecd_factory: MakeIpsecd, tmp_path: Path) -> None:
    topo = office_factory(10)
    gw = ipsecd_factory(topo.b, gateway_doc(tmp_path, addrs4="10.3.0.0/27"), name="gw")
    clients = [start_client(charon_factory, topo, i, tmp_path, v6=False) for i in range(10)]
    with ThreadPoolExecutor(10) as pool:  # all at once, as an office after a Wi-Fi outage
        results = list(pool.map(lambda ch: ch.initiate("lan", timeout=30, check=False), clients))
    assert [r.returncode for r in results] == [0] * 10, [r.stdout[-500:] for r in results if r.returncode]
    vips = [client_vips(ch)[0] for ch in clients]
    assert len(set(vips)) == 10
    sas = gw.list_sas()
    assert len(sas) == 10 and {s["remote"].split("[")[0] for s in sas} == {NAT_OUT}
    for i in range(10):
        topo.clients[i].ping(LAN4, count=1, deadline=5)
    # the front door sent no cookies and dropped nothing for one busy source address
    stats = json.loads(gw.ctl("stats", "--json").stdout)["ike"]
    assert not stats.get("cookies_sent") and not stats.get("half_open_limit"), stats


@pytest.mark.parametrize("unique", ["keep", "replace"])
def test_unique_with_two_laptops_of_one_user(office_factory: Any, charon_factory: MakeCharon,
                                             ipsecd_factory: MakeIpsecd, tmp_path: Path, unique: str) -> None:
    topo = office_factory(2)
    gw = ipsecd_factory(topo.b, gateway_doc(tmp_path, unique=unique), name="gw")
    first = start_client(charon_factory, topo, 0, tmp_path, v6=False, identity="alice.test")
    second = start_client(charon_factory, topo, 1, tmp_path, v6=False, identity="alice.test")
    first.initiate("lan", timeout=20)
    client_vips(first)
    result = second.initiate("lan", timeout=20, check=False)
    if unique == "keep":
        assert result.returncode != 0
        wait_for("the refusal", lambda: "AUTHENTICATION_FAILED" in second.log_text())
        (sa,) = gw.list_sas()
        assert sa["remote"] == gw.list_sas()[0]["remote"] and sa["child_sas"]
        topo.clients[0].ping(LAN4, count=2)
    else:
        assert result.returncode == 0
        wait_for("the first laptop's SA to be deleted", lambda: not first.list_sas(), timeout=15)
        (sa,) = gw.list_sas()
        assert sa["remote_id"] == "alice.test" and sa["child_sas"]
        topo.clients[1].ping(LAN4, count=2)


# --------------------------------------------------------------------------- ipsecd client, strongSwan gateway

def test_ipsecd_client_of_a_strongswan_gateway(topology: Topology, charon_factory: MakeCharon,
                                               ipsecd_factory: MakeIpsecd, tmp_path: Path) -> None:
    topo = topology
    topo.b.run(["ip", "addr", "add", f"{LAN6}/128", "dev", "lo"])
    gw = charon_factory(topo.b, ConnParams(
        name="rw", local_addrs=[topo.b_addr], remote_addrs=["%any"], local_id="gw.test", remote_id="alice.test",
        psk=PSK, children=(ChildParams(name="lan", local_ts=("10.2.0.0/24", "fd00:2::/64"),
                                       remote_ts=("dynamic",)),),
        extra={"pools": "rw4,rw6"},
        pools={"rw4": {"addrs": "10.3.0.0/24", "dns": "10.2.0.53"}, "rw6": {"addrs": "fd00:3::/120",
                                                                         "dns": "fd00:2::53"}}), name="gw")
    env, dns_log = fake_resolvconf(tmp_path)
    doc = ipsecd_config(name="home", local_addrs=[topo.a_addr], remote_addrs=[topo.b_addr], local_id="alice.test",
                        remote_id="gw.test", psk=PSK, children={"lan": child_config(
                            local_ts=["dynamic"], remote_ts=list(LAN_TS), start_action="start")})
    doc["connections"]["home"]["vips"] = ["0.0.0.0", "::"]
    client = ipsecd_factory(topo.a, doc, name="client", env=env)

    ike = client.wait_established(20, child="lan")
    swan = gw.wait_established(10, child="lan")
    assert sorted(swan.get("remote-vips", [])) == sorted(ike["local_vips"])
    assert next(a for a in ike["local_vips"] if ":" not in a).startswith("10.3.0.")
    assert next(a for a in ike["local_vips"] if ":" in a).startswith("fd00:3::")
    (child,) = ike["child_sas"]
    assert sorted(child["local_ts"]) == sorted(f"{a}/{128 if ':' in a else 32}" for a in ike["local_vips"])
    (swan_child,) = swan["child-sas"]
    assert sorted(swan_child["remote-ts"]) == sorted(child["local_ts"])
    v4 = next(a for a in ike["local_vips"] if ":" not in a)
    v6 = next(a for a in ike["local_vips"] if ":" in a)
    wait_for("the virtual IPs on ipsec0", lambda: v4 in interface_addresses(topo.a, "ipsec0"))
    topo.a.ping(LAN4, count=3)
    topo.a.ping(LAN6, count=3)
    topo.b.ping(v4, count=3, src=LAN4)
    topo.b.ping(v6, count=3, src=LAN6)
    wait_for("resolvconf", lambda: dns_log.exists() and "nameserver 10.2.0.53" in dns_log.read_text())
    assert "nameserver fd00:2::53" in dns_log.read_text()
    client.down("home")
    wait_for("the virtual IP to go", lambda: v4 not in interface_addresses(topo.a, "ipsec0"))
    wait_for("resolvconf -d", lambda: "resolvconf -d ipsec0.ipsecd" in dns_log.read_text())
