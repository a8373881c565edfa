"""UDP GSO/GRO on the ESP socket, for real: TCP through static-key data planes with TUN
offloads and UDP GSO on, captured on B's veth and decrypted by scapy (the independent oracle).

A veth passes a GSO datagram whole, so the capture holds UDP payloads that are several ESP
packets glued together (that is the proof that one ``sendmsg`` carried them). The pcap has
no record of the segment size, so the oracle finds it: in a run, the next ESP packet starts
where the SPI reappears with the next sequence number (a false match in ciphertext has
probability 2**-64). Each piece must then decrypt to one ordinary inner packet no larger
than the tunnel MTU, with the checksums scapy computes, tiling the TCP stream; B must have
received GRO batches and written coalesced super-packets.

Also: the fallback when the kernel refuses UDP_SEGMENT (an outer MTU below the ESP size:
EINVAL, remembered), and a corrupted inner TCP checksum inside a GSO burst, found by the
receiver's aggregate check and dropped alone (counted as ``inner_tcp_checksum``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Packet
from scapy.utils import rdpcap

from tests.dp_static_peer import SPI_TO_B, static_key
from tests.netns import Topology, tcp_transfer, topology_or_skip
from tests.netns_dp import PYTHON, ROOT, StaticPeer, dp_prefix, static_pair
from tests.test_offload_netns import NBYTES, _check_stream, capture

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology_or_skip("pair", prefix=dp_prefix()) as t:
        yield t


def split_gso(payload: bytes, spi: int) -> list[bytes]:
    """The ESP packets in one captured UDP payload (one, or a GSO run of equal-size ones)."""
    if len(payload) < 16 or int.from_bytes(payload[:4], "big") != spi:
        return [payload]
    want = payload[:4] + ((int.from_bytes(payload[4:8], "big") + 1) & 0xFFFFFFFF).to_bytes(4, "big")
    size = payload.find(want, 16)
    if size < 0:
        return [payload]
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    seq0 = int.from_bytes(payload[4:8], "big")
    for i, p in enumerate(pieces):
        assert p[:4] == payload[:4] and int.from_bytes(p[4:8], "big") == seq0 + i, "not a GSO run"
    return pieces


def inner_packets(pcap: Path, tunnel: bool, v6: bool, src: str, dst: str) -> tuple[list[Packet], int]:
    """Every ESP packet from A to B, GSO runs split, decrypted by scapy; and how many runs."""
    outer_cls = IPv6 if v6 else IP
    sa = SecurityAssociation(ESP, spi=SPI_TO_B, crypt_algo="AES-GCM", crypt_key=static_key(SPI_TO_B),
                             **({"tunnel_header": outer_cls(src=src, dst=dst)} if tunnel else {}))
    out, runs = [], 0
    proto = {"nh": 50} if v6 else {"proto": 50}
    for frame in rdpcap(str(pcap)):
        ip = frame[outer_cls] if frame.haslayer(outer_cls) else None
        if ip is None or ip.src != src or not ip.haslayer(UDP):
            continue
        pieces = split_gso(bytes(ip[UDP].payload), SPI_TO_B)
        runs += len(pieces) > 1
        for esp in pieces:
            if len(esp) < 8 or int.from_bytes(esp[:4], "big") != SPI_TO_B:
                continue  # keepalive, IKE
            out.append(sa.decrypt(outer_cls(bytes(outer_cls(src=src, dst=dst, **proto) / ESP(esp)))))
    return out, runs


@contextlib.contextmanager
def offload_pair(topo: Topology, mode: str, v6: bool) -> Iterator[tuple[StaticPeer, StaticPeer]]:
    """Static peers with TUN offloads and UDP GSO/GRO (the default), outer IPv4 or IPv6."""
    if not v6:
        with static_pair(topo, "--offload", mode=mode) as pair:
            yield pair
        return
    assert topo.a_addr6 and topo.b_addr6
    a6, b6 = topo.a_addr6, topo.b_addr6
    if mode == "transport":
        nets_a, nets_b = (f"{a6}/128", f"{b6}/128"), (f"{b6}/128", f"{a6}/128")
    else:
        nets_a, nets_b = (topo.a_lan_net, topo.b_lan_net), (topo.b_lan_net, topo.a_lan_net)
    common = ["--mode", mode, "--offload"]
    a = StaticPeer(topo.a.name, ["--side", "a", "--local", a6, "--remote", b6, "--local-net", nets_a[0],
                                 "--remote-net", nets_a[1], *common])
    b = StaticPeer(topo.b.name, ["--side", "b", "--local", b6, "--remote", a6, "--local-net", nets_b[0],
                                 "--remote-net", nets_b[1], *common])
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("case", ["tunnel4", "transport4", "tunnel6", "transport6"])
def test_gso_sent_esp_decrypts_to_ordinary_packets(topo: Topology, tmp_path: Path, case: str) -> None:
    pcap = tmp_path / "b.pcap"
    mode = "tunnel" if case.startswith("tunnel") else "transport"
    v6 = case.endswith("6")
    if v6:
        assert topo.a_addr6 and topo.b_addr6
        src, dst = topo.a_addr6, topo.b_addr6
    else:
        src, dst = topo.a_addr, topo.b_addr
    client, server = (topo.a_lan, topo.b_lan) if mode == "tunnel" else (src, dst)
    with offload_pair(topo, mode, v6) as (a, b):
        with capture(topo, pcap) as cap:
            assert tcp_transfer(topo.b, server, topo.a, client, NBYTES) == NBYTES
        sa, sb = a.counters()["global"], b.counters()["global"]
        mtu = 1500 if case == "transport6" else a.ready["mtu"]
    stats_a, stats_b = sa["stats"], sb["stats"]
    assert stats_a["udp_tx_sendmsg"] < stats_a["udp_tx_packets"] / 4, stats_a  # GSO carried the runs
    assert stats_b.get("udp_gro_batches", 0) > 0, stats_b  # B received GSO bursts as GRO batches
    assert stats_b.get("tun_tx_coalesced", 0) > 0, stats_b
    assert not sb["drops"].get("inner_tcp_checksum"), sb
    inner, runs = inner_packets(pcap, mode == "tunnel", v6, src, dst)
    assert runs > 0, "no GSO run on the wire"
    _check_stream(inner, v6 and mode == "transport", mtu, cap["dropped"] == 0)


def test_gso_refused_by_the_kernel_falls_back_to_single_sends(topo: Topology) -> None:
    """A's outer MTU lowered below the ESP packet size: the kernel refuses UDP_SEGMENT (EINVAL), the
    worker sends the run one datagram each (fragmented: DF is off), remembers, and TCP gets
    every byte through."""
    with static_pair(topo) as (a, _b):
        # after the start: the data plane sized its TUN for 1500, the link now carries less
        topo.a.run(["ip", "link", "set", topo.a_if, "mtu", "1280"])
        assert tcp_transfer(topo.b, topo.b_lan, topo.a, topo.a_lan, NBYTES) == NBYTES
        stats = a.counters()["global"]["stats"]
    assert 1 <= stats.get("udp_gso_refused", 0) <= 5, stats  # asked once per size, not per run
    assert stats["udp_tx_sendmsg"] >= stats["udp_tx_packets"] - 5 * 64, stats


_CORRUPT_BURST = """
import socket, sys
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw
from ipsecd.dataplane.udp import send_gso
from ipsecd.esp.sa import OutboundSa
from tests.dp_static_peer import static_params
local, remote, lnet, rnet, src, dst = sys.argv[1:7]
_in, out, _ = static_params("a", local, remote, lnet, rnet, encap=True)
sa = OutboundSa(out)
sa.seq = 1 << 20  # far right of B's replay window
segs = [bytearray(bytes(IP(src=src, dst=dst, flags="DF", id=7 + i) / TCP(sport=40000, dport=5999, seq=1000 + 1000 * i,
                                                                     ack=1, flags="A", window=500)
                        / Raw(bytes([i]) * 1000))) for i in range(6)]
segs[3][-5] ^= 0x20  # payload changed after the checksum was computed
esp = [sa.protect(bytes(s)) for s in segs]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((local, 4599))
send_gso(sock, (remote, 4500), None, len(esp[0]), esp)
print("sent", len(esp))
"""


def test_corrupted_inner_checksum_in_a_gso_burst_is_dropped_alone(topo: Topology) -> None:
    with static_pair(topo, "--offload") as (_a, b):
        path = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        res = topo.a.run([PYTHON, "-c", _CORRUPT_BURST, topo.a_addr, topo.b_addr, topo.a_lan_net, topo.b_lan_net,
                          topo.a_lan, topo.b_lan], env={"PYTHONPATH": path})
        assert "sent 6" in res.stdout
        deadline = time.monotonic() + 10
        g = b.counters()["global"]
        while not g["drops"].get("inner_tcp_checksum") and time.monotonic() < deadline:
            time.sleep(0.1)
            g = b.counters()["global"]
    assert g["drops"].get("inner_tcp_checksum") == 1, g
    assert g["stats"].get("udp_gro_batches", 0) >= 1, g
