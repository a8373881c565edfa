"""TUN offloads for real, checked on the wire: a TCP transfer through static-key data planes
with offloads on, captured on B's veth and decrypted by scapy with the test keys.

What must hold (offload.py): A read TSO super-segments from its TUN and B wrote GRO
super-packets to its TUN (the workers' counters say so), yet every ESP packet on the wire
carries one ordinary inner packet -- no larger than the tunnel MTU, with IP and TCP
checksums exactly as scapy computes them, and TCP sequence numbers that tile the stream.
Tunnel mode over IPv4 (ESP-in-UDP and raw ESP) and transport mode over IPv6 (ESP-in-UDP).
UDP GSO is off here (``--no-gso``): a veth passes GSO datagrams whole, so the capture would
see several ESP packets glued into one UDP payload with no record of where they split.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Packet
from scapy.utils import rdpcap

from tests.dp_static_peer import SPI_TO_B, static_key
from tests.netns import Topology, kill_group, tcp_transfer, topology_or_skip
from tests.netns_dp import PYTHON, StaticPeer, dp_prefix, static_pair

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

NBYTES = 1 << 19


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology_or_skip("pair", prefix=dp_prefix()) as t:
        yield t


@contextlib.contextmanager
def capture(topo: Topology, path: Path) -> Iterator[dict[str, int]]:
    """tcpdump on B's veth for ESP (raw or in UDP 4500) while the body runs; the dict it
    yields holds, after the block, how many packets the kernel dropped from the capture."""
    result = {"dropped": 0}
    proc = subprocess.Popen(topo.b.exec_argv(["tcpdump", "-i", topo.b_if, "-B", "32768", "-U", "-s", "0",
                                              "-w", str(path),
                                              "udp port 4500 or ip proto 50 or ip6 proto 50"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on eth0 ..." once the capture runs
        assert "listening" in line, line
        yield result
        # tcpdump may lag behind on a loaded machine, and SIGINT does not drain what the
        # kernel still holds for it: wait until the file stops growing
        size, end = -1, time.monotonic() + 15
        while time.monotonic() < end:
            time.sleep(0.5)
            now = path.stat().st_size if path.exists() else 0
            if now == size:
                break
            size = now
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            _out, err = proc.communicate(timeout=5)
            m = re.search(r"(\d+) packets? dropped by kernel", err or "")
            result["dropped"] = int(m.group(1)) if m else 0
        except subprocess.TimeoutExpired:
            kill_group(proc)


@contextlib.contextmanager
def transport6_pair(topo: Topology) -> Iterator[tuple[StaticPeer, StaticPeer]]:
    assert topo.a_addr6 and topo.b_addr6
    a6, b6 = topo.a_addr6, topo.b_addr6
    a = StaticPeer(topo.a.name, ["--side", "a", "--local", a6, "--remote", b6, "--local-net", f"{a6}/128",
                                 "--remote-net", f"{b6}/128", "--mode", "transport", "--no-gso", "--offload"])
    b = StaticPeer(topo.b.name, ["--side", "b", "--local", b6, "--remote", a6, "--local-net", f"{b6}/128",
                                 "--remote-net", f"{a6}/128", "--mode", "transport", "--no-gso", "--offload"])
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def _inner_packets(pcap: Path, tunnel: bool, v6: bool, src: str, dst: str) -> list[Packet]:
    """Every ESP packet from A to B in the capture, decrypted by scapy (AES-256-GCM, the test key)."""
    outer_cls = IPv6 if v6 else IP
    sa = SecurityAssociation(ESP, spi=SPI_TO_B, crypt_algo="AES-GCM", crypt_key=static_key(SPI_TO_B),
                             **({"tunnel_header": outer_cls(src=src, dst=dst)} if tunnel else {}))
    out = []
    for frame in rdpcap(str(pcap)):
        ip = frame[outer_cls] if frame.haslayer(outer_cls) else None
        if ip is None or ip.src != src:
            continue
        if ip.haslayer(UDP):
            esp_bytes = bytes(ip[UDP].payload)
            if len(esp_bytes) < 8 or esp_bytes[:4] == b"\x00\x00\x00\x00":
                continue  # keepalive or IKE
        else:
            esp_bytes = bytes(ip[ESP])
        if int.from_bytes(esp_bytes[:4], "big") != SPI_TO_B:
            continue
        proto = {"nh": 50} if v6 else {"proto": 50}
        pkt = outer_cls(bytes(outer_cls(src=src, dst=dst, **proto) / ESP(esp_bytes)))
        out.append(sa.decrypt(pkt))
    return out


def _check_stream(inner: list[Packet], v6: bool, mtu: int, complete: bool) -> None:
    ip_cls = IPv6 if v6 else IP
    data = [p for p in inner if p.haslayer(TCP) and len(p[TCP].payload)]
    assert data, "no TCP data packets captured"
    for p in inner:
        wire = bytes(p)
        assert len(wire) <= mtu, f"inner packet of {len(wire)} bytes > MTU {mtu}: a super-segment went out whole"
        fresh = p.copy()
        if not v6:
            del fresh[IP].chksum
            del fresh[IP].len
        else:
            del fresh[IPv6].plen
        if fresh.haslayer(TCP):
            del fresh[TCP].chksum
        assert bytes(ip_cls(bytes(fresh))) == wire, "a checksum or length differs from scapy's"
    # the data segments tile the byte stream: each starts where an earlier one ended
    seen: dict[int, int] = {}
    for p in data:
        seen[p[TCP].seq] = len(p[TCP].payload)
    total = sum(seen.values())
    ends = {(s + n) & 0xFFFFFFFF for s, n in seen.items()}
    starts = sorted(seen)
    if complete:  # the capture lost nothing (on a loaded machine tcpdump may drop some)
        assert total >= NBYTES
        assert sum(1 for s in starts if s not in ends) == 1, "the stream has holes"


@pytest.mark.parametrize("case", ["tunnel4-udp", "tunnel4-raw", "transport6-udp"])
def test_offloaded_tcp_is_ordinary_esp_on_the_wire(topo: Topology, tmp_path: Path, case: str) -> None:
    pcap = tmp_path / "b.pcap"
    v6 = case == "transport6-udp"
    if v6:
        pair = transport6_pair(topo)
    else:
        pair = static_pair(topo, "--no-gso", "--offload", *(["--raw"] if case.endswith("raw") else []))
    with pair as (a, b):
        if v6:
            assert topo.a_addr6 and topo.b_addr6
            src, dst, client, server = topo.a_addr6, topo.b_addr6, topo.a_addr6, topo.b_addr6
        else:
            src, dst, client, server = topo.a_addr, topo.b_addr, topo.a_lan, topo.b_lan
        with capture(topo, pcap) as cap:
            assert tcp_transfer(topo.b, server, topo.a, client, NBYTES) == NBYTES
        stats_a, stats_b = a.counters()["global"]["stats"], b.counters()["global"]["stats"]
        mtu = a.ready["mtu"] if not v6 else 1500
    assert stats_a.get("tun_rx_super", 0) > 0, stats_a  # A really read TSO super-segments
    assert stats_b.get("tun_tx_coalesced", 0) > 0, stats_b  # B really wrote GRO super-packets
    _check_stream(_inner_packets(pcap, not v6, v6, src, dst), v6, mtu, cap["dropped"] == 0)


# A UDP application using UDP GSO (UDP_SEGMENT): its 10,000-byte sends reach the TUN whole (USO).
_UDP_SINK = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 6000)); s.settimeout(5)
print("ready", flush=True)
sizes = []
try:
    while len(sizes) < int(sys.argv[2]):
        sizes.append(len(s.recv(65535)))
except socket.timeout:
    pass
print(json.dumps(sizes), flush=True)
"""
_UDP_GSO_SOURCE = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
s.setsockopt(socket.IPPROTO_UDP, 103, 1000)  # UDP_SEGMENT: the kernel cuts each send into 1000-byte datagrams
for i in range(int(sys.argv[3])):
    s.sendto(bytes([i]) * 10000, (sys.argv[2], 6000))
    time.sleep(0.02)  # UDP has no flow control: pace, so the sink's socket buffer keeps up
"""


def test_uso_super_datagrams_leave_as_single_datagrams(topo: Topology, tmp_path: Path) -> None:
    """UDP GSO through the tunnel: the TUN hands over 10-datagram super-packets (USO, where the
    kernel has it); on the wire every ESP packet holds one 1000-byte datagram with scapy's
    checksum, and all of them arrive."""
    pcap = tmp_path / "b.pcap"
    sends = 20
    with static_pair(topo, "--no-gso", "--offload") as (a, _b):
        sink = subprocess.Popen(topo.b.exec_argv([PYTHON, "-u", "-c", _UDP_SINK, topo.b_lan, str(sends * 10)]),
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            with capture(topo, pcap):
                topo.a.run([PYTHON, "-c", _UDP_GSO_SOURCE, topo.a_lan, topo.b_lan, str(sends)])
                sizes = json.loads(sink.stdout.readline())
        finally:
            kill_group(sink)
        stats_a = a.counters()["global"]["stats"]
        uso = "uso4" in a.ready["offloads"]
    assert len(sizes) == sends * 10 and set(sizes) == {1000}, (len(sizes), set(sizes), stats_a)
    if uso:
        assert stats_a.get("tun_rx_super", 0) >= sends // 2, stats_a
    inner = _inner_packets(pcap, True, False, topo.a_addr, topo.b_addr)
    udp = [p for p in inner if p.haslayer(UDP) and p[UDP].dport == 6000]
    assert len(udp) >= len(sizes)
    for p in udp:
        wire = bytes(p)
        fresh = p.copy()
        del fresh[IP].chksum, fresh[IP].len, fresh[UDP].chksum, fresh[UDP].len
        assert len(p[UDP].payload) == 1000 and bytes(IP(bytes(fresh))) == wire
