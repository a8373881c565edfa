"""TUN offload packet logic (ipsecd/dataplane/offload.py) against scapy's independent bytes.

The kernel hands over a super-segment with NEEDS_CSUM and the pseudo-header sum in the L4
checksum field; segmenting it must give exactly what scapy builds for each piece (lengths,
IPv4 ids, sequence numbers, flags, checksums). Coalescing those pieces must give the
super-packet back, which segments into the same pieces again.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ipsecd.dataplane.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadError,
    TcpCoalescer,
    VnetHdr,
    checksum,
    finish_checksum,
    parse_vnet_hdr,
    segment,
)

TS = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 67890))]


def _ip(version: int, **kw: object) -> IP | IPv6:
    if version == 4:
        return IP(src="10.1.0.1", dst="10.2.0.1", flags="DF", **{"id": 0x1234, **kw})
    return IPv6(src="fd00:1::1", dst="fd00:2::1", **kw)


def _as_from_tun(pkt: bytes, version: int, proto: int) -> bytes:
    """What the kernel hands over with NEEDS_CSUM: the L4 checksum field holds the folded
    pseudo-header sum of the whole L4 length, not the finished checksum."""
    l4 = 20 if version == 4 else 40
    field = l4 + (16 if proto == 6 else 6)
    l4_len = len(pkt) - l4
    if version == 4:
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, proto, l4_len)
    else:
        pseudo = pkt[8:40] + struct.pack("!IxxxB", l4_len, proto)
    partial = 0xFFFF - checksum(pseudo)  # folded, not inverted
    return pkt[:field] + struct.pack("!H", partial) + pkt[field + 2 :]


def _tcp_super(version: int, payload: bytes, flags: str = "PA", seq: int = 1000) -> bytes:
    return bytes(_ip(version) / TCP(sport=40000, dport=5201, seq=seq, ack=777, flags=flags, window=500,
                                    options=TS) / Raw(payload))


def _expected_tcp(version: int, payload: bytes, mss: int, flags: str = "PA", seq: int = 1000) -> list[bytes]:
    out = []
    chunks = [payload[i : i + mss] for i in range(0, len(payload), mss)]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        f = flags if last else flags.replace("P", "").replace("F", "")
        if i:
            f = f.replace("C", "")
        ip = _ip(version, id=0x1234 + i) if version == 4 else _ip(version)
        out.append(bytes(ip / TCP(sport=40000, dport=5201, seq=seq + i * mss, ack=777, flags=f, window=500,
                                  options=TS) / Raw(chunk)))
    return out


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("size", [1, 1347, 1348, 5000, 65000])
def test_tso_segments_match_scapy(version: int, size: int) -> None:
    payload = os.urandom(size)
    mss = 1348
    sup = _as_from_tun(_tcp_super(version, payload), version, 6)
    l4 = 20 if version == 4 else 40
    hdr = VnetHdr(NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, l4 + 32, mss, l4, 16)
    got = segment(parse_vnet_hdr(hdr.pack() + sup), sup)
    assert got == _expected_tcp(version, payload, mss)


def test_tso_sequence_wraps_and_cwr_fin_only_where_allowed() -> None:
    payload = os.urandom(3000)
    sup = _as_from_tun(_tcp_super(4, payload, flags="FPAC", seq=0xFFFFFF00), 4, 6)
    got = segment(VnetHdr(NEEDS_CSUM, GSO_TCPV4, 52, 1000, 20, 16), sup)
    want = [bytes(_ip(4, id=0x1234 + i) / TCP(sport=40000, dport=5201, seq=(0xFFFFFF00 + i * 1000) & 0xFFFFFFFF,
                                              ack=777, flags=f, window=500, options=TS)
                  / Raw(payload[i * 1000 : (i + 1) * 1000]))
            for i, f in enumerate(["AC", "A", "FPA"])]
    assert got == want


@pytest.mark.parametrize("version", [4, 6])
def test_uso_segments_match_scapy(version: int) -> None:
    payload = os.urandom(3000)
    sup = _as_from_tun(bytes(_ip(version) / UDP(sport=5000, dport=6000) / Raw(payload)), version, 17)
    l4 = 20 if version == 4 else 40
    got = segment(VnetHdr(NEEDS_CSUM, GSO_UDP_L4, l4 + 8, 1200, l4, 6), sup)
    want = []
    for i in range(3):
        ip = _ip(version, id=0x1234 + i) if version == 4 else _ip(version)
        want.append(bytes(ip / UDP(sport=5000, dport=6000) / Raw(payload[i * 1200 : (i + 1) * 1200])))
    assert got == want


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", [6, 17])
def test_needs_csum_without_gso_is_finished(version: int, proto: int) -> None:
    l4pkt = TCP(sport=1, dport=2, seq=5, flags="PA") if proto == 6 else UDP(sport=1, dport=2)
    plain = bytes(_ip(version) / l4pkt / Raw(os.urandom(333)))
    l4 = 20 if version == 4 else 40
    hdr = VnetHdr(NEEDS_CSUM, GSO_NONE, 0, 0, l4, 16 if proto == 6 else 6)
    assert segment(hdr, _as_from_tun(plain, version, proto)) == [plain]
    assert segment(VnetHdr(), plain) == [plain]  # no flags: passed through untouched


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_gives_back_the_super_packet(version: int) -> None:
    payload = os.urandom(20000)
    mss = 1348
    segs = _expected_tcp(version, payload, mss)
    co = TcpCoalescer()
    out = [w for s in segs for w in co.add(s)] + co.flush()
    assert len(out) == 1
    vnet, sup = out[0]
    hdr = parse_vnet_hdr(vnet)
    l4 = 20 if version == 4 else 40
    assert (hdr.flags, hdr.gso_type, hdr.gso_size, hdr.csum_start, hdr.csum_offset, hdr.hdr_len) == (
        NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, mss, l4, 16, l4 + 32)
    # NEEDS_CSUM semantics: finishing the checksum gives scapy's packet (first id, PSH of the last)
    assert finish_checksum(sup, hdr) == _tcp_super(version, payload)
    assert segment(hdr, sup) == segs  # and the kernel's TSO view of it is the original segments
    assert co.coalesced == len(segs)


def test_coalescer_keeps_order_and_refuses_what_it_must() -> None:
    a = _expected_tcp(4, os.urandom(4000), 1000)  # 4 segments, PSH on the last
    other = bytes(_ip(4) / TCP(sport=40001, dport=5201, seq=1, ack=1, flags="A") / Raw(b"x" * 1000))
    syn = bytes(_ip(4) / TCP(sport=40002, dport=5201, flags="S"))
    udp = bytes(_ip(4) / UDP(sport=1, dport=2) / Raw(b"u" * 100))
    bad = bytearray(a[2])
    bad[-1] ^= 1  # corrupted payload: its TCP checksum fails, it must not be merged
    co = TcpCoalescer()
    out = []
    for p in (a[0], a[1], other, bytes(bad), syn, udp, a[3]):
        out += co.add(p)
    out += co.flush()
    hdrs = [parse_vnet_hdr(h) for h, _ in out]
    assert [h.gso_type for h in hdrs] == [GSO_TCPV4, GSO_NONE, GSO_NONE, GSO_NONE, GSO_NONE, GSO_NONE]
    assert [p for h, p in out[1:]] == [other, bytes(bad), syn, udp, a[3]]
    assert all(h == ZERO_VNET_HDR for h, _ in out[1:])
    assert segment(hdrs[0], out[0][1]) == a[:2]


def test_coalescer_stops_after_a_short_or_psh_segment() -> None:
    segs = _expected_tcp(6, os.urandom(2500), 1000)  # 1000, 1000, 500 (PSH)
    after = _expected_tcp(6, os.urandom(1000), 1000, seq=1000 + 2500)
    co = TcpCoalescer()
    out = [w for s in segs + after for w in co.add(s)] + co.flush()
    assert len(out) == 2
    assert segment(parse_vnet_hdr(out[0][0]), out[0][1]) == segs
    assert out[1] == (ZERO_VNET_HDR, after[0])


def test_malformed_super_packets_raise_offload_error_only() -> None:
    rng = random.Random(12)
    base = _as_from_tun(_tcp_super(4, os.urandom(3000)), 4, 6)
    for _ in range(3000):
        pkt = bytearray(base[: rng.randrange(0, len(base) + 1)])
        for _ in range(rng.randrange(0, 4)):
            if pkt:
                pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        hdr = VnetHdr(rng.choice([0, NEEDS_CSUM]), rng.choice([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 2, 0x81]),
                      rng.randrange(0, 80), rng.choice([0, 1, 536, 1348, 70000 & 0xFFFF]),
                      rng.randrange(0, 80), rng.randrange(0, 40))
        with contextlib.suppress(OffloadError):
            segment(hdr, bytes(pkt))
        co = TcpCoalescer()
        co.add(bytes(pkt))
        co.flush()


def test_vnet_header_length_checked() -> None:
    with pytest.raises(OffloadError):
        parse_vnet_hdr(b"\x00" * (VNET_HDR_LEN - 1))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("where", [0, 2, 4])
def test_a_corrupted_segment_inside_a_run_is_found_and_dropped(version: int, where: int) -> None:
    """The run's aggregate checksum fails: each segment is checked alone, only the bad one is
    dropped (and counted), the others go out unmerged."""
    segs = _expected_tcp(version, os.urandom(5000), 1000, flags="A")
    bad = bytearray(segs[where])
    bad[-10] ^= 0x40
    feed = [*segs[:where], bytes(bad), *segs[where + 1 :]]
    co = TcpCoalescer()
    out = [w for s in feed for w in co.add(s)] + co.flush()
    assert out == [(ZERO_VNET_HDR, p) for i, p in enumerate(feed) if i != where]
    assert co.bad_runs == 1 and co.bad_segments == 1 and co.coalesced == 0


def test_a_corrupted_checksum_field_is_found_too() -> None:
    segs = _expected_tcp(4, os.urandom(4000), 1000, flags="A")
    bad = bytearray(segs[1])
    bad[36] ^= 0x01  # the TCP checksum field itself
    co = TcpCoalescer()
    out = [w for s in [segs[0], bytes(bad), *segs[2:]] for w in co.add(s)] + co.flush()
    assert [p for _h, p in out] == [segs[0], *segs[2:]] and co.bad_segments == 1


def test_a_bad_ipv4_header_checksum_fails_the_run_too() -> None:
    """The aggregate covers whole packets: a wrong IPv4 header checksum (TCP fine) unmerges
    the run; no segment is dropped here (the kernel judges the IP header)."""
    segs = _expected_tcp(4, os.urandom(4000), 1000, flags="A")
    bad = bytearray(segs[2])
    bad[10] ^= 0x01
    feed = [*segs[:2], bytes(bad), *segs[3:]]
    co = TcpCoalescer()
    out = [w for s in feed for w in co.add(s)] + co.flush()
    assert out == [(ZERO_VNET_HDR, p) for p in feed] and co.bad_runs == 1 and co.bad_segments == 0


def test_coalescer_handles_odd_and_unequal_sizes() -> None:
    """An odd-sized segment closes the run (the next payload would start mid-word)."""
    a = bytes(_ip(4) / TCP(sport=1, dport=2, seq=100, ack=1, flags="A") / Raw(b"a" * 999))
    b = bytes(_ip(4) / TCP(sport=1, dport=2, seq=1099, ack=1, flags="A") / Raw(b"b" * 999))
    co = TcpCoalescer()
    out = co.add(a) + co.add(b) + co.flush()
    assert out == [(ZERO_VNET_HDR, a), (ZERO_VNET_HDR, b)]
