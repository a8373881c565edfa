"""ipsecd against ipsecd: two daemons in the pair (or NAT) topology, with real traffic through ESP.

A (a.test) always initiates with ``start_action: start``; B (b.test) only responds
(``remote_addrs: %any``).  Each test checks both daemons' own reports against each
other (SPIs mirrored, same proposal and mode) and then proves that packets really
crossed the SAs by reading the per-SA counters, because in transport mode or with a
misrouted tunnel a ping can succeed without any ESP at all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Netns, Topology, tcp_transfer, topology_or_skip

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(60),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

CONN = "peer"
PSK = "two-ipsecd-test-psk-0123456789"
IKE = "aes256gcm16-prfsha256-ecp256"
ESP = "aes256gcm16"
TCP_BYTES = 4 * 1024 * 1024

Make = Callable[..., Ipsecd]
Children = dict[str, dict[str, Any]]


def _children(a_nets: dict[str, tuple[list[str], list[str]]], *, mode: str = "tunnel",
              start_action: str = "none") -> Children:
    """``{name: (local_ts, remote_ts)}`` -> child configs with the common ESP proposal."""
    return {name: child_config(local_ts=lts, remote_ts=rts, esp_proposals=[ESP], mode=mode,
                               start_action=start_action)
            for name, (lts, rts) in a_nets.items()}


def _pair(make: Make, a_ns: Netns, a_addr: str, b_ns: Netns, b_addr: str,
          nets: dict[str, tuple[list[str], list[str]]], *, mode: str = "tunnel",
          a_psk: str = PSK, b_psk: str = PSK) -> tuple[Ipsecd, Ipsecd]:
    """Start responder B, then initiator A; ``nets`` is given from A's point of view."""
    b = make(b_ns, ipsecd_config(
        name=CONN, local_addrs=[b_addr], remote_addrs="%any", local_id="b.test", remote_id="a.test",
        psk=b_psk, proposals=[IKE],
        children=_children({n: (r, loc) for n, (loc, r) in nets.items()}, mode=mode)), name="b")
    a = make(a_ns, ipsecd_config(
        name=CONN, local_addrs=[a_addr], remote_addrs=[b_addr], local_id="a.test", remote_id="b.test",
        psk=a_psk, proposals=[IKE], children=_children(nets, mode=mode, start_action="start")), name="a")
    return a, b


def _wait_all_children(d: Ipsecd, names: set[str], timeout: float = 15.0) -> dict[str, Any]:
    """Wait until the IKE SA is ESTABLISHED with every child in ``names`` INSTALLED."""
    end = time.monotonic() + timeout
    ike = d.wait_established(timeout)
    while {c["name"] for c in ike["child_sas"] if c["state"] == "INSTALLED"} < names:
        if time.monotonic() > end:
            raise AssertionError(f"children {names} not all installed: {ike}\n{d.log_tail()}")
        time.sleep(0.1)
        ike = d.wait_established(timeout)
    return ike


def _child(ike: dict[str, Any], name: str = "net") -> dict[str, Any]:
    kids = [c for c in ike["child_sas"] if c["name"] == name and c["state"] == "INSTALLED"]
    assert len(kids) == 1, ike
    return kids[0]


def _children_now(d: Ipsecd) -> dict[str, dict[str, Any]]:
    """Installed children of the (single) established IKE SA, by SPI in."""
    out: dict[str, dict[str, Any]] = {}
    for ike in d.list_sas():
        for c in ike["child_sas"]:
            if c["state"] == "INSTALLED":
                out[c["spi_in"]] = c
    return out


def _assert_mirrored(ike_a: dict[str, Any], ike_b: dict[str, Any], mode: str, encap: bool,
                     names: set[str]) -> None:
    """Both daemons describe the same IKE SA and the same Child SAs, seen from opposite ends."""
    assert ike_a["state"] == ike_b["state"] == "ESTABLISHED"
    assert ike_a["initiator"] is True and ike_b["initiator"] is False
    assert (ike_a["spi_i"], ike_a["spi_r"]) == (ike_b["spi_i"], ike_b["spi_r"])
    assert ike_a["proposal"] == ike_b["proposal"] == "AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256"
    assert (ike_a["local_id"], ike_a["remote_id"]) == (ike_b["remote_id"], ike_b["local_id"]) == ("a.test", "b.test")
    for name in names:
        ca, cb = _child(ike_a, name), _child(ike_b, name)
        assert re.fullmatch(r"[0-9a-f]{8}", ca["spi_in"]) and re.fullmatch(r"[0-9a-f]{8}", ca["spi_out"])
        assert ca["spi_in"] == cb["spi_out"] and ca["spi_out"] == cb["spi_in"], (ca, cb)
        assert ca["proposal"] == cb["proposal"] == "AES_GCM_16-256"
        assert ca["mode"] == cb["mode"] == mode
        assert ca["encap"] is cb["encap"] is encap, (ca, cb)
        assert ca["local_ts"] == cb["remote_ts"] and ca["remote_ts"] == cb["local_ts"], (ca, cb)


def _settled_counters(a: Ipsecd, b: Ipsecd, timeout: float = 3.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """A's and B's children once every packet A (B) sent has been counted in by B (A).

    Polls because the last ACKs may still be in flight when the transfer returns; on
    timeout returns the last reading so the caller's assertion shows the numbers.
    """
    end = time.monotonic() + timeout
    while True:
        ca, cb = _children_now(a), _children_now(b)
        pairs = [(x, cb.get(x["spi_out"])) for x in ca.values()]
        if all(y is not None and x["packets_out"] == y["packets_in"] and x["packets_in"] == y["packets_out"]
               for x, y in pairs) or time.monotonic() > end:
            return ca, cb
        time.sleep(0.1)


def _assert_counters_match(a: Ipsecd, b: Ipsecd, min_packets: int) -> None:
    """Every packet and byte A encrypted, B decrypted, and the other way round."""
    ca, cb = _settled_counters(a, b)
    assert ca, "A has no installed Child SA"
    for x in ca.values():
        y = cb[x["spi_out"]]
        assert x["packets_out"] >= min_packets and x["packets_in"] >= min_packets, x
        assert (x["packets_out"], x["bytes_out"]) == (y["packets_in"], y["bytes_in"]), (x, y)
        assert (x["packets_in"], x["bytes_in"]) == (y["packets_out"], y["bytes_out"]), (x, y)
        assert not x.get("drops_in") and not y.get("drops_in"), (x, y)


def _ping_both(topo: Topology, a_addr: str, b_addr: str, count: int = 3) -> None:
    res = topo.a.ping(b_addr, count=count, src=a_addr, interval=0.1, deadline=5, check=False)
    assert res.returncode == 0, f"A -> B: {res.stdout}{res.stderr}"
    res = topo.b.ping(a_addr, count=count, src=b_addr, interval=0.1, deadline=5, check=False)
    assert res.returncode == 0, f"B -> A: {res.stdout}{res.stderr}"


# ------------------------------------------------------------------------- tests
def test_tunnel_ipv4(topology: Topology, ipsecd_factory: Make) -> None:
    """Site-to-site tunnel over raw ESP: ping both ways, a TCP transfer, counters agree SA by SA."""
    t = topology
    a, b = _pair(ipsecd_factory, t.a, t.a_addr, t.b, t.b_addr, {"net": ([t.a_lan_net], [t.b_lan_net])})
    ike_a, ike_b = a.wait_established(15, child="net"), b.wait_established(15, child="net")
    _assert_mirrored(ike_a, ike_b, "tunnel", False, {"net"})
    # MOBIKE (on by default) moves IKE to 4500 from IKE_AUTH on, NAT or not (RFC 4555 3.3); ESP stays raw
    assert ike_a["local"] == f"{t.a_addr}[4500]" and ike_b["remote"] == f"{t.a_addr}[4500]"

    _ping_both(t, t.a_lan, t.b_lan)
    assert tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, TCP_BYTES) == TCP_BYTES
    _assert_counters_match(a, b, min_packets=100)
    x = _child(a.list_sas()[0])
    assert x["bytes_out"] > TCP_BYTES  # the payload plus inner IP/TCP headers


def test_ipv6_outer_ipv4_and_ipv6_inner(topology: Topology, ipsecd_factory: Make) -> None:
    """IKE and ESP over IPv6, carrying one IPv4 and one IPv6 child in the same IKE SA."""
    t = topology
    assert t.a_addr6 and t.b_addr6
    a6, b6 = "fd00:1::1", "fd00:2::1"
    t.a.run(["ip", "-6", "addr", "add", f"{a6}/128", "dev", "lo", "nodad"])
    t.b.run(["ip", "-6", "addr", "add", f"{b6}/128", "dev", "lo", "nodad"])
    nets = {"net": ([t.a_lan_net], [t.b_lan_net]), "net6": (["fd00:1::/64"], ["fd00:2::/64"])}
    a, b = _pair(ipsecd_factory, t.a, t.a_addr6, t.b, t.b_addr6, nets)
    ike_a, ike_b = _wait_all_children(a, set(nets)), _wait_all_children(b, set(nets))
    _assert_mirrored(ike_a, ike_b, "tunnel", False, set(nets))
    assert ike_a["local"] == f"{t.a_addr6}[4500]" and ike_b["remote"] == f"{t.a_addr6}[4500]", (ike_a, ike_b)

    _ping_both(t, t.a_lan, t.b_lan)
    _ping_both(t, a6, b6)
    assert tcp_transfer(t.b, b6, t.a, a6, 1024 * 1024) == 1024 * 1024
    _assert_counters_match(a, b, min_packets=3)
    six = _child(a.list_sas()[0], "net6")
    assert six["packets_out"] > 50, six  # the TCP transfer went through the IPv6 child


def test_transport_mode(topology: Topology, ipsecd_factory: Make) -> None:
    """Host-to-host transport mode: the outer addresses' own traffic is protected.

    The hosts can reach each other without IPsec too, so only the SA counters prove
    that the ping and the TCP stream were really ESP.
    """
    t = topology
    a, b = _pair(ipsecd_factory, t.a, t.a_addr, t.b, t.b_addr, {"net": (["dynamic"], ["dynamic"])},
                 mode="transport")
    ike_a, ike_b = a.wait_established(15, child="net"), b.wait_established(15, child="net")
    _assert_mirrored(ike_a, ike_b, "transport", False, {"net"})
    ca = _child(ike_a)
    assert ca["local_ts"] == [f"{t.a_addr}/32"] and ca["remote_ts"] == [f"{t.b_addr}/32"], ca

    before = _child(a.list_sas()[0])
    _ping_both(t, t.a_addr, t.b_addr, count=4)
    after = _child(a.list_sas()[0])
    assert after["packets_out"] - before["packets_out"] >= 8, (before, after)  # 4 requests + 4 replies
    assert after["packets_in"] - before["packets_in"] >= 8, (before, after)
    assert tcp_transfer(t.b, t.b_addr, t.a, t.a_addr, TCP_BYTES) == TCP_BYTES
    _assert_counters_match(a, b, min_packets=100)


@pytest.fixture(params=[None, "40000-40999"], ids=["nat-keeps-ports", "nat-remaps-ports"])
def nat_topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """The NAT layout, once keeping and once rewriting UDP source ports (500/4500 -> 40000+)."""
    with topology_or_skip("nat", nat_ports=request.param) as topo:
        yield topo


def test_nat_traversal(nat_topo: Topology, ipsecd_factory: Make) -> None:
    """A behind a masquerading NAT: both detect it, float to 4500 and carry ESP in UDP.

    With port remapping B must answer to whatever port the NAT chose, not 4500.
    """
    t = nat_topo
    a, b = _pair(ipsecd_factory, t.a, t.a_addr, t.b, t.b_addr, {"net": ([t.a_lan_net], [t.b_lan_net])})
    ike_a, ike_b = a.wait_established(15, child="net"), b.wait_established(15, child="net")
    _assert_mirrored(ike_a, ike_b, "tunnel", True, {"net"})
    assert ike_a["encap"] is True and ike_b["encap"] is True, (ike_a, ike_b)
    assert ike_a["nat_local"] is True and ike_b["nat_remote"] is True, (ike_a, ike_b)
    assert ike_a["local"] == f"{t.a_addr}[4500]", ike_a
    assert ike_a["remote"] == f"{t.b_addr}[4500]", ike_a
    assert ike_b["remote"].startswith(f"{t.a_seen_from_b}["), ike_b  # the NAT's address, not 10.99.1.2
    if t.nat_ports:
        assert 40000 <= int(ike_b["remote"].split("[")[1].rstrip("]")) <= 40999, ike_b

    _ping_both(t, t.a_lan, t.b_lan)
    assert tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, TCP_BYTES) == TCP_BYTES
    _assert_counters_match(a, b, min_packets=100)


def test_down_removes_sas_on_both_sides(topology: Topology, ipsecd_factory: Make) -> None:
    """``ipsecctl down`` on the initiator deletes the SAs at both ends and the tunnel stops carrying traffic."""
    t = topology
    a, b = _pair(ipsecd_factory, t.a, t.a_addr, t.b, t.b_addr, {"net": ([t.a_lan_net], [t.b_lan_net])})
    a.wait_established(15, child="net")
    b.wait_established(15, child="net")
    _ping_both(t, t.a_lan, t.b_lan, count=2)

    a.down(CONN)
    end = time.monotonic() + 5
    while (a.list_sas() or b.list_sas()) and time.monotonic() < end:
        time.sleep(0.1)
    assert a.list_sas() == [] and b.list_sas() == [], (a.list_sas(), b.list_sas())
    for side in (t.a, t.b):  # no route left that points into the dead tunnel
        assert side.run(["ip", "route", "show", "table", "220"], check=False).stdout.strip() == "", side.name
    res = t.a.ping(t.b_lan, count=1, src=t.a_lan, deadline=1, check=False)
    assert res.returncode != 0, res.stdout
    res = t.b.ping(t.a_lan, count=1, src=t.b_lan, deadline=1, check=False)
    assert res.returncode != 0, res.stdout
    # start_action=start must not bring it back by itself after an explicit down
    assert a.list_sas() == [] and b.list_sas() == []


def test_wrong_psk(topology: Topology, ipsecd_factory: Make) -> None:
    """Different PSKs: no SA anywhere; B's log names the failed authentication, A's the notify it got."""
    t = topology
    a, b = _pair(ipsecd_factory, t.a, t.a_addr, t.b, t.b_addr, {"net": ([t.a_lan_net], [t.b_lan_net])},
                 a_psk="psk-of-a-0123456789", b_psk="psk-of-b-9876543210")
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if "AUTHENTICATION_FAILED" in a.log_text():
            break
        time.sleep(0.1)
    time.sleep(0.5)
    for d in (a, b):
        sas = d.list_sas()
        assert not [s for s in sas if s["state"] == "ESTABLISHED"], sas
    end = time.monotonic() + 5
    while (a.list_sas() or b.list_sas()) and time.monotonic() < end:
        time.sleep(0.1)
    assert a.list_sas() == [] and b.list_sas() == [], (a.list_sas(), b.list_sas())
    assert re.search(r"authentication of a\.test failed", b.log_text()), b.log_tail()
    assert "AUTHENTICATION_FAILED" in a.log_text(), a.log_tail()
    assert t.a.ping(t.b_lan, count=1, src=t.a_lan, deadline=1, check=False).returncode != 0
