"""AH and IPComp between two ipsecd daemons in namespaces: real packets, checked on the wire.

A initiates, B responds (as in test_two_ipsecd.py). Each test negotiates with IKE, sends
pings and a TCP transfer across, checks both daemons' counters agree SA by SA, and reads a
tcpdump capture of B's outer interface with scapy: AH packets carry the negotiated SPI
(and, with IPComp, an IPComp header with the CPI B announced); ESP with IPComp shrinks the
compressible transfer on the wire. strongSwan's libipsec has neither AH nor IPComp, and this
kernel has no XFRM AH, so ipsecd is both ends here (docs/interop.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import AH, ESP
from scapy.packet import Packet
from scapy.utils import rdpcap

from tests.ipsecd_proc import Ipsecd, ipsecd_config, why_no_ipsecd
from tests.netns import Netns, Topology, kill_group, tcp_transfer
from tests.netns_tests.test_two_ipsecd import Make, _assert_counters_match, _child, _ping_both

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(90),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

CONN = "peer"
PSK = "ahcomp-test-psk-0123456789abcdef"
IKE = "aes256gcm16-prfsha256-ecp256"
TCP_BYTES = 1024 * 1024


def _child_conf(lts: list[str], rts: list[str], mode: str, start: str, **kw: Any) -> dict[str, Any]:
    return {"local_ts": lts, "remote_ts": rts, "mode": mode, "start_action": start, **kw}


def _pair(make: Make, t: Topology, a_addr: str, b_addr: str, lts: list[str], rts: list[str], *, mode: str = "tunnel",
          a_child: dict[str, Any], b_child: dict[str, Any]) -> tuple[Ipsecd, Ipsecd]:
    b = make(t.b, ipsecd_config(
        name=CONN, local_addrs=[b_addr], remote_addrs="%any", local_id="b.test", remote_id="a.test", psk=PSK,
        proposals=[IKE], children={"net": _child_conf(rts, lts, mode, "none", **b_child)}), name="b")
    a = make(t.a, ipsecd_config(
        name=CONN, local_addrs=[a_addr], remote_addrs=[b_addr], local_id="a.test", remote_id="b.test", psk=PSK,
        proposals=[IKE], children={"net": _child_conf(lts, rts, mode, "start", **a_child)}), name="a")
    return a, b


class Capture:
    """tcpdump on B's eth0 for IPsec protocols, read back with scapy."""

    def __init__(self, ns: Netns, path: Path) -> None:
        self.path = path
        log = path.with_suffix(".log")
        self.proc = ns.popen(["tcpdump", "-i", "eth0", "-U", "-n", "-w", str(path),
                              "ip proto 51 or ip proto 50 or ip6 proto 51 or ip6 proto 50"], log_path=log)
        end = time.monotonic() + 10
        while "listening on" not in (log.read_text(errors="replace") if log.exists() else ""):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise AssertionError(f"tcpdump did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)

    def packets(self) -> list[Packet]:
        time.sleep(0.3)  # -U writes each packet as it comes; let the last ones land
        kill_group(self.proc, grace=2.0)
        return list(rdpcap(str(self.path)))


def _ah_of(p: Packet) -> AH | None:
    return p.getlayer(AH)


@pytest.mark.parametrize("integ", ["sha256", "sha384", "sha512"])
def test_ah_tunnel_ipv4(topology: Topology, ipsecd_factory: Make, tmp_path: Path, integ: str) -> None:
    t = topology
    a, b = _pair(ipsecd_factory, t, t.a_addr, t.b_addr, [t.a_lan_net], [t.b_lan_net],
                 a_child={"ah_proposals": [integ]}, b_child={"ah_proposals": ["sha512", "sha384", "sha256"]})
    ike_a, ike_b = a.wait_established(15, child="net"), b.wait_established(15, child="net")
    ca, cb = _child(ike_a), _child(ike_b)
    assert ca["protocol"] == cb["protocol"] == "ah", (ca, cb)
    assert ca["spi_in"] == cb["spi_out"] and ca["proposal"] == cb["proposal"], (ca, cb)
    assert ca["proposal"].startswith({"sha256": "HMAC_SHA2_256_128", "sha384": "HMAC_SHA2_384_192",
                                      "sha512": "HMAC_SHA2_512_256"}[integ]), ca
    cap = Capture(t.b, tmp_path / "ah4.pcap")
    _ping_both(t, t.a_lan, t.b_lan)
    assert tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, TCP_BYTES) == TCP_BYTES
    _assert_counters_match(a, b, min_packets=50)
    pkts = cap.packets()
    ahs = [p for p in pkts if _ah_of(p) is not None]
    assert len(ahs) >= 100 and not [p for p in pkts if ESP in p], len(pkts)
    spis = {f"{p[AH].spi:08x}" for p in ahs}
    assert spis == {ca["spi_in"], ca["spi_out"]}, (spis, ca)
    for p in ahs[:20]:
        assert p[IP].proto == 51 and p[AH].nh == 4  # tunnel mode: IPv4 inside AH, in clear
        assert IP(bytes(p[AH].payload)).src in (t.a_lan, t.b_lan)


def test_ah_transport_ipv6(topology: Topology, ipsecd_factory: Make, tmp_path: Path) -> None:
    t = topology
    assert t.a_addr6 and t.b_addr6
    a, b = _pair(ipsecd_factory, t, t.a_addr6, t.b_addr6, ["dynamic"], ["dynamic"], mode="transport",
                 a_child={"ah_proposals": ["sha512"]}, b_child={"ah_proposals": ["sha512"]})
    ike_a, ike_b = a.wait_established(15, child="net"), b.wait_established(15, child="net")
    ca = _child(ike_a)
    assert ca["protocol"] == "ah" and ca["mode"] == "transport" and _child(ike_b)["protocol"] == "ah"
    cap = Capture(t.b, tmp_path / "ah6.pcap")
    _ping_both(t, t.a_addr6, t.b_addr6, count=4)
    assert tcp_transfer(t.b, t.b_addr6, t.a, t.a_addr6, TCP_BYTES) == TCP_BYTES
    _assert_counters_match(a, b, min_packets=50)
    ahs = [p for p in cap.packets() if IPv6 in p and p[IPv6].nh == 51]
    assert len(ahs) >= 100
    assert {f"{p[AH].spi:08x}" for p in ahs} == {ca["spi_in"], ca["spi_out"]}
    assert {p[AH].nh for p in ahs} <= {6, 58}  # TCP and ICMPv6 right after AH
    # 12 + 32-byte ICV, padded to a multiple of 8 over IPv6 (RFC 4302 2.6): 48 bytes
    assert all((p[AH].payloadlen + 2) * 4 == 48 for p in ahs)


def test_ah_with_ipcomp(topology: Topology, ipsecd_factory: Make, tmp_path: Path) -> None:
    """AH leaves the payload readable: the IPComp header with B's CPI is on the wire (RFC 3173 2.2)."""
    t = topology
    conf = {"ah_proposals": ["sha256"], "ipcomp": True}
    a, b = _pair(ipsecd_factory, t, t.a_addr, t.b_addr, [t.a_lan_net], [t.b_lan_net], a_child=conf, b_child=conf)
    ca, cb = _child(a.wait_established(15, child="net")), _child(b.wait_established(15, child="net"))
    assert ca["ipcomp"] and ca["ipcomp"] == cb["ipcomp"][::-1], (ca, cb)
    cpi_a, cpi_b = ca["ipcomp"]
    human = a.ctl("list-sas").stdout
    assert f"AH:{ca['proposal']}" in human and f"IPComp CPIs {cpi_a:04x}_i {cpi_b:04x}_o" in human, human
    assert f"IPComp CPIs {cpi_a:04x}_i {cpi_b:04x}_o" in a.log_text()  # the Child SA's log line
    cap = Capture(t.b, tmp_path / "ahcomp.pcap")
    _ping_both(t, t.a_lan, t.b_lan)  # small: sent uncompressed
    assert tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, TCP_BYTES) == TCP_BYTES
    _assert_counters_match(a, b, min_packets=50)
    ahs = [p for p in cap.packets() if AH in p]
    to_b = [p for p in ahs if p[IP].dst == t.b_addr]
    comp = [p for p in to_b if p[AH].nh == 108]
    assert len(comp) >= 50, len(comp)
    for p in comp[:20]:
        hdr = bytes(p[AH].payload)[:4]
        assert hdr[0] == 4 and hdr[1] == 0 and int.from_bytes(hdr[2:4], "big") == cpi_b
        assert len(p) < 1000  # bytes(range(256)) repeated: deflate shrinks a full segment a lot
    assert any(p[AH].nh == 4 for p in to_b)  # pings under the threshold went uncompressed
    assert all(int.from_bytes(bytes(p[AH].payload)[2:4], "big") == cpi_a
               for p in ahs if p[IP].dst == t.a_addr and p[AH].nh == 108)


def test_esp_with_ipcomp(topology: Topology, ipsecd_factory: Make, tmp_path: Path) -> None:
    t = topology
    conf = {"esp_proposals": ["aes256gcm16"], "ipcomp": True}
    a, b = _pair(ipsecd_factory, t, t.a_addr, t.b_addr, [t.a_lan_net], [t.b_lan_net], a_child=conf, b_child=conf)
    ca = _child(a.wait_established(15, child="net"))
    assert ca["protocol"] == "esp" and len(ca["ipcomp"]) == 2
    cap = Capture(t.b, tmp_path / "espcomp.pcap")
    _ping_both(t, t.a_lan, t.b_lan)
    assert tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, 4 * TCP_BYTES) == 4 * TCP_BYTES
    _assert_counters_match(a, b, min_packets=50)
    esp = [p for p in cap.packets() if ESP in p and p[IP].dst == t.b_addr]
    assert len(esp) >= 50
    x = _child(a.list_sas()[0])
    # 4 MiB crossed, but far fewer bytes of ESP: the segments were compressed before encryption
    assert x["bytes_out"] > 4 * TCP_BYTES
    wire = sum(len(p[IP]) for p in esp)
    assert wire < x["bytes_out"] / 2, (wire, x["bytes_out"])
