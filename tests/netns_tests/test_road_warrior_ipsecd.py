"""ipsecd as a road-warrior client of an ipsecd gateway with address pools, in namespaces.

A (192.0.2.1) is the laptop: ``vips: [0.0.0.0, "::"]``. B (192.0.2.2) is the gateway
with an IPv4 and an IPv6 pool and a "LAN" (10.2.0.1, fd00:2::1 on lo). The client's
virtual IPs must be on its TUN, the traffic selectors narrowed to them, pings must cross
both ways over IPv4 and IPv6, the DNS servers and domain must reach resolvconf (a fake
one on the client's PATH records the calls), and ``down`` must undo it all while the
gateway keeps the lease offline for the same user.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Topology, fake_resolvconf, interface_addresses, wait_for

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(90),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

Make = Callable[..., Ipsecd]
LAN6 = "fd00:2::1"


def gateway_config(tmp_path: Path, local_addr: str, *, addrs4: str = "10.3.0.0/29",
                   **extra: Any) -> dict[str, Any]:
    doc = ipsecd_config(name="rw", local_addrs=[local_addr], remote_addrs="%any", local_id="gw.test",
                        remote_id="%any", children={"lan": child_config(
                            local_ts=["10.2.0.0/24", "fd00:2::/64"], remote_ts=["dynamic"])}, **extra)
    doc["connections"]["rw"]["pools"] = ["rw4", "rw6"]
    doc["pools"] = {"rw4": {"addrs": addrs4, "dns": "10.2.0.53", "25": "corp.example"},
                    "rw6": {"addrs": "fd00:3::/120", "dns": "fd00:2::53"}}
    doc["settings"] = {"lease_db": str(tmp_path / "gw-state" / "leases.db")}
    doc["secrets"]["ike"][0]["id"] = ["gw.test", "%any"]
    return doc


def client_config(gw_addr: str, *, local_id: str = "alice.test", remote_ts: tuple[str, ...] = (
        "10.2.0.0/24", "fd00:2::/64")) -> dict[str, Any]:
    doc = ipsecd_config(name="home", local_addrs=[], remote_addrs=[gw_addr], local_id=local_id, remote_id="gw.test",
                        children={"lan": child_config(local_ts=["dynamic"], remote_ts=list(remote_ts),
                                                      start_action="start")})
    doc["connections"]["home"]["vips"] = ["0.0.0.0", "::"]
    del doc["connections"]["home"]["local_addrs"]
    return doc


def test_ipsecd_client_gets_virtual_ips_dns_and_traffic_flows(topology: Topology, tmp_path: Path,
                                                              ipsecd_factory: Make) -> None:
    topo = topology
    topo.b.run(["ip", "addr", "add", f"{LAN6}/128", "dev", "lo"])
    gw = ipsecd_factory(topo.b, gateway_config(tmp_path, topo.b_addr), name="gw")
    env, dns_log = fake_resolvconf(tmp_path)
    client = ipsecd_factory(topo.a, client_config(topo.b_addr), name="client", env=env)

    ike = client.wait_established(20, child="lan")
    assert ike["local_vips"] == ["10.3.0.1", "fd00:3::1"], ike
    (child,) = ike["child_sas"]
    assert child["local_ts"] == ["10.3.0.1/32", "fd00:3::1/128"]
    assert child["remote_ts"] == ["10.2.0.0/24", "fd00:2::/64"]
    (gw_ike,) = gw.list_sas()
    assert gw_ike["remote_vips"] == ["10.3.0.1", "fd00:3::1"] and gw_ike["remote_id"] == "alice.test"
    assert gw_ike["child_sas"][0]["remote_ts"] == ["10.3.0.1/32", "fd00:3::1/128"]
    vips = {"10.3.0.1", "fd00:3::1"}
    wait_for("virtual IPs on the client's TUN", lambda: vips <= interface_addresses(topo.a, "ipsec0"))
    out = client.ctl("list-sas").stdout
    assert "@ 192.0.2.2[4500]" in out or "@ 192.0.2.2[500]" in out
    assert "[10.3.0.1 fd00:3::1]" in out

    # traffic both ways, IPv4 and IPv6; the client's source is its virtual IP (the route's prefsrc)
    topo.a.ping(topo.b_lan, count=3)
    topo.a.ping(LAN6, count=3)
    topo.b.ping("10.3.0.1", count=3, src=topo.b_lan)
    topo.b.ping("fd00:3::1", count=3, src=LAN6)
    (gw_ike,) = gw.list_sas()
    assert gw_ike["child_sas"][0]["packets_in"] >= 12
    # the gateway routes each pool once, not each client's virtual IP (issue 11: cheap installs)
    routes = topo.b.run(["ip", "route", "show", "table", "220"]).stdout
    routes6 = topo.b.run(["ip", "-6", "route", "show", "table", "220"]).stdout
    assert "10.3.0.0/29 dev ipsec0" in routes and "10.3.0.1 " not in routes, routes
    assert "fd00:3::/120 dev ipsec0" in routes6 and "fd00:3::1 " not in routes6, routes6

    wait_for("resolvconf", lambda: dns_log.exists() and "nameserver" in dns_log.read_text())
    text = dns_log.read_text()
    assert "resolvconf -a ipsec0.ipsecd" in text
    assert "nameserver 10.2.0.53" in text and "nameserver fd00:2::53" in text and "search corp.example" in text

    pools = json.loads(gw.ctl("list-pools", "--leases", "--json").stdout)["pools"]
    assert {(p["name"], p["online"]) for p in pools} == {("rw4", 1), ("rw6", 1)}
    assert "10.3.0.1                                online  'alice.test'" in gw.ctl("list-pools", "--leases").stdout

    client.down("home")
    wait_for("virtual IPs gone from the TUN", lambda: not vips & interface_addresses(topo.a, "ipsec0"))
    wait_for("resolvconf -d", lambda: "resolvconf -d ipsec0.ipsecd" in dns_log.read_text())
    wait_for("the gateway's SA gone", lambda: not gw.list_sas())
    wait_for("the pool route gone with the last client",
             lambda: "10.3.0.0/29" not in topo.b.run(["ip", "route", "show", "table", "220"]).stdout)
    pools = json.loads(gw.ctl("list-pools", "--json").stdout)["pools"]
    assert {(p["name"], p["online"], p["offline"]) for p in pools} == {("rw4", 0, 1), ("rw6", 0, 1)}


def test_everything_through_the_gateway_keeps_the_ike_path(topology: Topology, tmp_path: Path,
                                                           ipsecd_factory: Make) -> None:
    """remote_ts 0.0.0.0/0 covers the gateway's own address: IKE, ESP and a plain ping to it stay outside."""
    topo = topology
    gw_doc = gateway_config(tmp_path, topo.b_addr)
    gw_doc["connections"]["rw"]["children"]["lan"]["local_ts"] = ["0.0.0.0/0"]
    gw_doc["connections"]["rw"]["dpd_delay"] = "2s"
    gw_doc["connections"]["rw"]["dpd_timeout"] = "3s"
    ipsecd_factory(topo.b, gw_doc, name="gw")
    doc = client_config(topo.b_addr, remote_ts=("0.0.0.0/0",))
    doc["connections"]["home"]["vips"] = ["0.0.0.0"]
    doc["connections"]["home"]["dpd_delay"] = "2s"
    doc["connections"]["home"]["dpd_timeout"] = "3s"  # a cut IKE path would close the SA within ~5 s
    client = ipsecd_factory(topo.a, doc, name="client")
    ike = client.wait_established(20, child="lan")
    assert ike["child_sas"][0]["remote_ts"] == ["0.0.0.0/0"]
    wait_for("virtual IP on the TUN", lambda: "10.3.0.1" in interface_addresses(topo.a, "ipsec0"))
    topo.a.ping(topo.b_lan, count=3)  # through the tunnel
    before = client.list_sas()[0]["child_sas"][0]["packets_out"]
    topo.a.ping(topo.b_addr, count=3)  # the gateway's own address: outside (the throw route)
    assert client.list_sas()[0]["child_sas"][0]["packets_out"] == before
    route = topo.a.run(["ip", "route", "show", "table", "220"]).stdout
    assert f"throw {topo.b_addr}" in route and "default dev ipsec0" in route
    time.sleep(7)  # DPD runs over the IKE path: the same SA stays up
    (after,) = client.list_sas()
    assert after["state"] == "ESTABLISHED" and after["id"] == ike["id"]
