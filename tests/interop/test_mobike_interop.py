"""MOBIKE (RFC 4555) against strongSwan 5.9.8 (kernel-libipsec) with two uplinks.

The topology is the usual pair (A 192.0.2.1 --eth0-- B 192.0.2.2) plus a second uplink
(A 198.51.100.1 / 2001:db8:1::1 --eth1-- B 198.51.100.2 / 2001:db8:1::2). B reaches A's first
addresses through eth1 too, with a worse metric: when B's eth0 goes down the kernel routes over
eth1 and the mobile side moves (over IPv4, and for the strongSwan client over IPv6 as well).

* ipsecd gateway in A, charon road warrior in B (mobike = yes): charon sends
  UPDATE_SA_ADDRESSES from 198.51.100.2, ipsecd checks return routability and moves the Child
  SAs; libipsec then rekeys every Child SA (it cannot update one in place).
* ipsecd road warrior in B, charon gateway in A: ipsecd notices the route change over netlink
  and moves with UPDATE_SA_ADDRESSES.

Both: pings run through the tunnel every 50 ms while the link goes down and for a few seconds
after the move; the longest gap between answers (or from the last answer to the end) is the
outage (under 2 s), the IKE SA is the same one on both sides (SPIs),
both agree on the Child SA's SPIs and algorithms, and traffic crosses both ways afterwards.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Netns, Topology, wait_for
from tests.strongswan import Charon, ChildParams, ConnParams, swan_proposal

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PSK = "interop-mobike-psk-0123456789"
CONN, CHILD = "rw", "net"
A2, B2 = "198.51.100.1", "198.51.100.2"
A2_6, B2_6 = "2001:db8:1::1", "2001:db8:1::2"
MAX_OUTAGE = 2.0
PINGS_BEFORE = 1.0  # seconds of pings over the first uplink before it goes
PINGS_AFTER = 3.0  # seconds of pings after the move was seen, then the pinger is stopped


def _second_uplink(topo: Topology, *, fallback: bool = True) -> None:
    subprocess.run(["ip", "-n", topo.a.name, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1",
                    "netns", topo.b.name], check=True, capture_output=True, text=True)
    for ns, addr, addr6 in ((topo.a, A2, A2_6), (topo.b, B2, B2_6)):
        ns.run(["ip", "addr", "add", f"{addr}/24", "dev", "eth1"])
        ns.run(["ip", "addr", "add", f"{addr6}/64", "dev", "eth1", "nodad"])
        ns.run(["ip", "link", "set", "eth1", "up"])
        for key in ("all", "default", "eth0", "eth1"):
            ns.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
    if fallback:  # B's way to A's first addresses over the second uplink, worse than the connected route
        topo.b.run(["ip", "route", "add", "192.0.2.0/24", "via", A2, "dev", "eth1", "metric", "500"])
        topo.b.run(["ip", "-6", "route", "add", "2001:db8::/64", "via", A2_6, "dev", "eth1", "metric", "2048"])
    wait_for("second uplink", lambda: topo.b.ping(A2, count=1, deadline=1, check=False).returncode == 0)
    wait_for("second uplink (IPv6)", lambda: topo.b.ping(A2_6, count=1, deadline=1, check=False).returncode == 0)


def _pinger(ns: Netns, src: str, dst: str, seconds: float = 30) -> subprocess.Popen[bytes]:
    """Pings every 50 ms with timestamps (-D) until :func:`_outage` stops them (``seconds``: a cap)."""
    return subprocess.Popen(ns.exec_argv(["ping", "-n", "-D", "-i", "0.05", "-W", "1", "-w", str(int(seconds)),
                                          "-I", src, dst]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _outage(proc: subprocess.Popen[bytes], after: float = PINGS_AFTER) -> tuple[float, int]:
    """Once the move was seen: ``after`` more seconds of pings, then stop the pinger. The longest
    gap between two answered pings, or from the last answer to the stop (pings that never came
    back count as an outage too), in seconds; and the number answered."""
    time.sleep(after)
    stopped = None
    if proc.poll() is None:
        stopped = time.time()  # the clock of ping -D's stamps
        proc.send_signal(signal.SIGINT)  # ip netns exec execs ping: this is ping's PID
    out, _ = proc.communicate(timeout=60)
    stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out.decode(), re.M)]
    assert len(stamps) > 10, out.decode()[-2000:]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    if stopped is not None:
        gaps.append(stopped - stamps[-1])
    return max(gaps), len(stamps)


def _ours_child(sa: dict[str, Any]) -> dict[str, Any]:
    kids = [c for c in sa["child_sas"] if c["state"] == "INSTALLED"]
    assert len(kids) >= 1, sa
    return kids[-1]


def _agree(ours: Ipsecd, theirs: Charon, our_spis: tuple[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Same IKE SA as before on both sides, and a Child SA both hold with matching SPIs and algorithms."""
    (sa,) = [s for s in ours.list_sas() if s["state"] == "ESTABLISHED"]
    (tsa,) = theirs.list_sas()
    assert (sa["spi_i"], sa["spi_r"]) == our_spis, (sa, our_spis)
    assert (tsa["initiator-spi"], tsa["responder-spi"]) == our_spis, tsa
    theirs_kids = {c["spi-in"]: c for c in tsa["child-sas"] if c["state"] == "INSTALLED"}
    mine = [c for c in sa["child_sas"] if c["state"] == "INSTALLED" and c["spi_out"] in theirs_kids]
    assert mine, (sa, tsa)
    t = theirs_kids[mine[-1]["spi_out"]]
    assert t["spi-out"] == mine[-1]["spi_in"]
    assert swan_proposal(t) == mine[-1]["proposal"], (t, mine[-1])
    return sa, tsa


def _ping_both(topo: Topology) -> None:
    for ns, src, dst in ((topo.a, topo.a_lan, topo.b_lan), (topo.b, topo.b_lan, topo.a_lan)):
        res = ns.ping(dst, count=3, src=src, interval=0.1, deadline=6, check=False)
        assert res.returncode == 0, f"{src} -> {dst}: {res.stdout}{res.stderr}"


def _wait_charon_child(theirs: Charon) -> None:
    wait_for("charon's Child SA", lambda: bool(theirs.list_sas()) and any(
        c["state"] == "INSTALLED" for c in theirs.list_sas()[0]["child-sas"]), 15)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_strongswan_client_moves_to_its_second_uplink(
        topology: Topology, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
        family: int) -> None:
    topo = topology
    _second_uplink(topo)
    assert topo.a_addr6 and topo.b_addr6
    gw_addr, old, new = (topo.a_addr, topo.b_addr, B2) if family == 4 else (topo.a_addr6, topo.b_addr6, B2_6)
    gw = ipsecd_factory(topo.a, ipsecd_config(
        name=CONN, local_addrs=[gw_addr], remote_addrs="%any", local_id="a.test", remote_id="b.test", psk=PSK,
        children={CHILD: child_config(local_ts=[topo.a_lan_net], remote_ts=[topo.b_lan_net])}, mobike=True),
        name="ipsecd")
    client = charon_factory(topo.b, ConnParams(
        name=CONN, local_addrs=["%any"], remote_addrs=[gw_addr], local_id="b.test", remote_id="a.test", psk=PSK,
        mobike=True, children=[ChildParams(name=CHILD, local_ts=[topo.b_lan_net], remote_ts=[topo.a_lan_net])]))
    client.initiate(CHILD)
    sa = gw.wait_established(15, child=CHILD)
    _wait_charon_child(client)
    assert sa["mobike"] and sa["remote"] == f"{old}[4500]", sa
    spis = (sa["spi_i"], sa["spi_r"])
    _ping_both(topo)

    pinger = _pinger(topo.b, topo.b_lan, topo.a_lan)
    time.sleep(PINGS_BEFORE)
    topo.b.run(["ip", "link", "set", "eth0", "down"])  # Wi-Fi gone: charon roams to eth1
    wait_for("the gateway to see the move", lambda: any(
        s["remote"] == f"{new}[4500]" for s in gw.list_sas()), 10)
    gap, answered = _outage(pinger)
    print(f"MOBIKE outage, strongSwan client moving (IPv{family}): {gap:.2f} s ({answered} pings answered)")
    assert gap < MAX_OUTAGE, gap

    wait_for("libipsec's rekeys to settle", lambda: len(gw.list_sas()) == 1 and len(
        [c for c in gw.list_sas()[0]["child_sas"] if c["state"] == "INSTALLED"]) == 1, 15)
    sa, _tsa = _agree(gw, client, spis)
    assert sa["remote"] == f"{new}[4500]" and sa["mobike_moves"] >= 1, sa
    _ping_both(topo)
    log = gw.log_text()
    assert "MOBIKE: peer moved from" in log and "return routability" in log, log[-3000:]
    ipsecctl = gw.ctl("list-sas").stdout
    assert f"@ {new}[4500]" in ipsecctl and "MOBIKE, moved" in ipsecctl, ipsecctl


@pytest.mark.parametrize("fallback", [True, False], ids=["same-gateway-address", "gateway-second-address"])
def test_ipsecd_client_moves_when_its_uplink_goes_down(
        topology: Topology, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
        fallback: bool) -> None:
    """``gateway-second-address``: the gateway's first address becomes unreachable; ipsecd probes
    the addresses charon advertised (ADDITIONAL_IP4/6_ADDRESS) and moves to one that answers."""
    topo = topology
    _second_uplink(topo, fallback=fallback)
    gw = charon_factory(topo.a, ConnParams(
        name=CONN, local_addrs=["%any"], remote_addrs=["%any"], local_id="a.test", remote_id="b.test", psk=PSK,
        mobike=True, children=[ChildParams(name=CHILD, local_ts=[topo.a_lan_net], remote_ts=[topo.b_lan_net])]))
    client = ipsecd_factory(topo.b, ipsecd_config(
        name=CONN, local_addrs=[], remote_addrs=[topo.a_addr], local_id="b.test", remote_id="a.test", psk=PSK,
        children={CHILD: child_config(local_ts=[topo.b_lan_net], remote_ts=[topo.a_lan_net])}), name="ipsecd")
    client.up(CONN)
    sa = client.wait_established(15, child=CHILD)
    _wait_charon_child(gw)
    assert sa["mobike"] and sa["local"] == f"{topo.b_addr}[4500]", sa
    spis = (sa["spi_i"], sa["spi_r"])
    _ping_both(topo)

    pinger = _pinger(topo.b, topo.b_lan, topo.a_lan)
    time.sleep(PINGS_BEFORE)
    topo.b.run(["ip", "link", "set", "eth0", "down"])
    moved = {f"{B2}[4500]", f"{B2_6}[4500]"}  # without the first gateway address, either family may answer first
    wait_for("ipsecd to move", lambda: any(s["local"] in moved for s in client.list_sas()), 10)
    gap, answered = _outage(pinger)
    print(f"MOBIKE outage, ipsecd client moving: {gap:.2f} s ({answered} pings answered)")
    assert gap < MAX_OUTAGE, gap

    wait_for("charon's rekeys to settle", lambda: len(
        [c for c in client.list_sas()[0]["child_sas"] if c["state"] == "INSTALLED"]) == 1, 15)
    sa, tsa = _agree(client, gw, spis)
    if fallback:
        assert tsa["remote-host"] == B2 and sa["remote"] == f"{topo.a_addr}[4500]", (sa, tsa)
    else:
        assert tsa["remote-host"] in (B2, B2_6) and sa["remote"] in (f"{A2}[4500]", f"{A2_6}[4500]"), (sa, tsa)
    _ping_both(topo)
    assert "MOBIKE: IKE SA moved to" in client.log_text()


def test_ipsecd_road_warrior_keeps_its_virtual_ip_across_the_move(
        topology: Topology, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd]) -> None:
    """ipsecd as a road warrior with a virtual IP from a strongSwan gateway's pool: after the
    move the same IKE SA carries the same virtual IP, and the tunnel routes still leave from it."""
    topo = topology
    _second_uplink(topo)
    gw = charon_factory(topo.a, ConnParams(
        name=CONN, local_addrs=["%any"], remote_addrs=["%any"], local_id="a.test", remote_id="b.test", psk=PSK,
        mobike=True, children=[ChildParams(name=CHILD, local_ts=[topo.a_lan_net], remote_ts=["dynamic"])],
        extra={"pools": "rw4"}, pools={"rw4": {"addrs": "10.3.0.0/24"}}))
    doc = ipsecd_config(name=CONN, local_addrs=[], remote_addrs=[topo.a_addr], local_id="b.test", remote_id="a.test",
                        psk=PSK, children={CHILD: child_config(local_ts=["dynamic"], remote_ts=[topo.a_lan_net])})
    doc["connections"][CONN]["vips"] = ["0.0.0.0"]
    client = ipsecd_factory(topo.b, doc, name="ipsecd")
    client.up(CONN)
    sa = client.wait_established(15, child=CHILD)
    _wait_charon_child(gw)
    (vip,) = sa["local_vips"]
    spis = (sa["spi_i"], sa["spi_r"])
    wait_for("a ping over the tunnel", lambda: topo.b.ping(topo.a_lan, count=1, src=vip, deadline=2,
                                                          check=False).returncode == 0)

    pinger = _pinger(topo.b, vip, topo.a_lan)
    time.sleep(PINGS_BEFORE)
    topo.b.run(["ip", "link", "set", "eth0", "down"])
    wait_for("ipsecd to move", lambda: any(s["local"] == f"{B2}[4500]" for s in client.list_sas()), 10)
    gap, answered = _outage(pinger)
    print(f"MOBIKE outage, ipsecd road warrior with a virtual IP moving: {gap:.2f} s ({answered} pings answered)")
    assert gap < MAX_OUTAGE, gap

    wait_for("charon's rekeys to settle", lambda: len(
        [c for c in client.list_sas()[0]["child_sas"] if c["state"] == "INSTALLED"]) == 1, 15)
    sa, tsa = _agree(client, gw, spis)
    assert sa["local_vips"] == [vip] and tsa["remote-vips"] == [vip] and tsa["remote-host"] == B2, (sa, tsa)
    for ns, src, dst in ((topo.b, vip, topo.a_lan), (topo.a, topo.a_lan, vip)):
        res = ns.ping(dst, count=3, src=src, interval=0.1, deadline=6, check=False)
        assert res.returncode == 0, f"{src} -> {dst}: {res.stdout}{res.stderr}"
