"""packet.py: IP parsing, ICMP "too big" builders, MSS clamp, ESP overhead / TUN MTU."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from ipsecd.esp.packet import (
    clamp_tcp_mss,
    esp_overhead,
    fragment_ipv4,
    icmp_frag_needed,
    icmpv6_packet_too_big,
    inet_checksum,
    parse_ip,
    tun_mtu,
)
from ipsecd.esp.sa import Mode, OutboundSa, SaParams
from ipsecd.iana import EncrId, IntegId

GW4 = IPv4Address("10.1.0.1")
GW6 = IPv6Address("fd00:1::1")


# --- parse_ip -----------------------------------------------------------------------------------


def test_parse_ipv4_udp_with_options() -> None:
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / UDP(sport=7, dport=9))
    assert parse_ip(pkt) == (4, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17, 7, 9, 24)


def test_parse_ipv6_extension_chain() -> None:
    pkt = bytes(
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrFragment(offset=0, m=1)
        / IPv6ExtHdrDestOpt()
        / TCP(sport=443, dport=5555)
    )
    parsed = parse_ip(pkt)
    assert parsed is not None
    assert parsed[0] == 6 and parsed[3] == 6 and parsed[4:6] == (443, 5555)
    assert parsed[6] == 40 + 8 + 8 + 8 + 8
    assert parsed[1] == ip_address("fd00::1").packed


def test_parse_fragments_have_no_ports() -> None:
    v4 = bytes(IP(src="1.1.1.1", dst="2.2.2.2", frag=100, proto=6) / Raw(bytes(20)))
    assert parse_ip(v4)[4:6] == (None, None)  # type: ignore[index]
    first = bytes(IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / TCP(sport=1, dport=2) / Raw(bytes(20)))
    assert parse_ip(first)[4:6] == (1, 2)  # type: ignore[index]


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x45" + bytes(18),  # 19 bytes
        b"\x44" + bytes(19),  # IHL 4
        b"\x4f" + bytes(19),  # IHL 15 > length
        bytes.fromhex("45000064") + bytes(16),  # total length 100 > 20
        b"\x60" + bytes(38),  # 39-byte IPv6
        b"\x60\x00\x00\x00\x00\x10" + bytes(34),  # payload length beyond the data
        b"\x70" + bytes(40),
    ],
)
def test_parse_rejects_malformed(junk: bytes) -> None:
    assert parse_ip(junk) is None


def test_parse_truncated_transport_header_has_no_ports() -> None:
    pkt = bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=6) / Raw(b"\x00\x50"))
    assert parse_ip(pkt)[4:6] == (None, None)  # type: ignore[index]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_parse_fuzz(data: bytes) -> None:
    parse_ip(data)
    clamp_tcp_mss(data, 1300)
    icmp_frag_needed(data, 1400, GW4)
    icmpv6_packet_too_big(data, 1400, GW6)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.sampled_from([0, 1, 2, 3]))
def test_parse_fuzz_valid_headers(tail: bytes, kind: int) -> None:
    """Structurally plausible headers over random payloads (hits the extension-header walk)."""
    if kind == 0:
        pkt = bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=tail[0]) / Raw(tail[1:]))
    else:
        nh = (0, 43, 44, 60, 51)[tail[0] % 5] if kind != 3 else tail[0]
        pkt = bytes(IPv6(src="::1", dst="::2", nh=nh) / Raw(tail[1:]))
    parse_ip(pkt)


def test_inet_checksum_matches_scapy() -> None:
    for payload in (b"", b"\x01", b"abc", bytes(range(256)) * 3):
        pkt = IP(src="1.2.3.4", dst="5.6.7.8") / ICMP() / Raw(payload)
        raw = bytes(pkt)
        icmp = bytearray(raw[20:])
        icmp[2:4] = b"\x00\x00"
        assert inet_checksum(bytes(icmp)) == IP(raw)[ICMP].chksum
    assert inet_checksum(bytes(8)) == 0xFFFF


# --- ICMP too big -------------------------------------------------------------------------------


def test_icmp_frag_needed_parsed_by_scapy() -> None:
    orig = IP(src="10.1.0.50", dst="8.8.8.8", flags="DF") / TCP(sport=1234, dport=443) / Raw(bytes(1400))
    raw = bytes(orig)
    reply = icmp_frag_needed(raw, 1380, GW4)
    assert reply is not None
    p = IP(reply)
    assert p.src == "10.1.0.1" and p.dst == "10.1.0.50" and p.proto == 1
    assert len(reply) <= 576 and p.len == len(reply)
    assert p[ICMP].type == 3 and p[ICMP].code == 4 and p[ICMP].nexthopmtu == 1380
    assert bytes(p[IPerror])[:28] == raw[:28]  # original header + 8 bytes at least
    ip_sum, icmp_sum = p.chksum, p[ICMP].chksum
    del p.chksum
    del p[ICMP].chksum
    again = IP(bytes(p))
    assert (again.chksum, again[ICMP].chksum) == (ip_sum, icmp_sum)


def test_icmp_frag_needed_small_packet_quoted_whole_and_mtu_clamped() -> None:
    raw = bytes(IP(src="10.1.0.50", dst="8.8.8.8") / UDP(sport=1, dport=2) / Raw(b"hi"))
    reply = icmp_frag_needed(raw, 20, ip_address("10.1.0.1").packed)
    assert reply is not None
    assert reply.endswith(raw)
    assert IP(reply)[ICMP].nexthopmtu == 68


@pytest.mark.parametrize(
    "orig",
    [
        IP(src="10.1.0.50", dst="8.8.8.8") / ICMP(type=3, code=1) / Raw(bytes(28)),  # an ICMP error
        IP(src="10.1.0.50", dst="8.8.8.8", frag=5, proto=6) / Raw(bytes(64)),  # non-first fragment
        IP(src="0.0.0.0", dst="8.8.8.8") / UDP(),
        IP(src="224.0.0.5", dst="8.8.8.8") / UDP(),
        IPv6(src="fd00::1", dst="fd00::2") / UDP(),  # wrong family
    ],
)
def test_icmp_frag_needed_refused(orig: IP) -> None:
    assert icmp_frag_needed(bytes(orig), 1400, GW4) is None


def test_icmp_frag_needed_for_echo_request_allowed() -> None:
    raw = bytes(IP(src="10.1.0.50", dst="8.8.8.8") / ICMP(type=8) / Raw(bytes(1500)))
    assert icmp_frag_needed(raw, 1400, GW4) is not None


def test_icmpv6_packet_too_big_parsed_by_scapy() -> None:
    orig = IPv6(src="fd00:1::50", dst="2001:db8::8") / UDP(sport=5, dport=6) / Raw(bytes(1450))
    raw = bytes(orig)
    reply = icmpv6_packet_too_big(raw, 1400, GW6)
    assert reply is not None
    p = IPv6(reply)
    assert p.src == "fd00:1::1" and p.dst == "fd00:1::50" and p.nh == 58
    assert len(reply) <= 1280 and p.plen == len(reply) - 40
    ptb = p[ICMPv6PacketTooBig]
    assert ptb.type == 2 and ptb.code == 0 and ptb.mtu == 1400
    assert reply[48:] == raw[: 1280 - 48]
    chk = ptb.cksum
    del ptb.cksum
    assert IPv6(bytes(p))[ICMPv6PacketTooBig].cksum == chk


def test_icmpv6_ptb_mtu_floor_and_refusals() -> None:
    raw = bytes(IPv6(src="fd00:1::50", dst="2001:db8::8") / UDP() / Raw(bytes(100)))
    reply = icmpv6_packet_too_big(raw, 1000, GW6.packed)
    assert reply is not None and IPv6(reply)[ICMPv6PacketTooBig].mtu == 1280
    err = bytes(IPv6(src="fd00:1::50", dst="2001:db8::8") / ICMPv6DestUnreach() / Raw(bytes(48)))
    assert icmpv6_packet_too_big(err, 1400, GW6) is None
    assert icmpv6_packet_too_big(bytes(IPv6(src="ff02::1", dst="fd00::1") / UDP()), 1400, GW6) is None
    assert icmpv6_packet_too_big(bytes(IPv6(src="::", dst="fd00::1") / UDP()), 1400, GW6) is None
    assert icmpv6_packet_too_big(bytes(IP() / UDP()), 1400, GW6) is None


# --- MSS clamp ----------------------------------------------------------------------------------


def _mss(pkt: IP | IPv6) -> int | None:
    for name, value in pkt[TCP].options:
        if name == "MSS":
            return int(value)
    return None


def _tcp_checksum_ok(raw: bytes, v6: bool = False) -> bool:
    p = IPv6(raw) if v6 else IP(raw)
    chk = p[TCP].chksum
    del p[TCP].chksum
    parsed = IPv6(bytes(p)) if v6 else IP(bytes(p))
    return bool(parsed[TCP].chksum == chk)


@pytest.mark.parametrize(
    "options",
    [
        [("MSS", 1460)],
        [("NOP", None), ("MSS", 1460), ("NOP", None)],  # MSS at an odd offset
        [("SAckOK", b""), ("MSS", 8960), ("WScale", 7), ("Timestamp", (1, 0))],
        [("WScale", 2), ("MSS", 65495)],
    ],
)
def test_mss_clamped_with_valid_checksum(options: list[tuple[str, object]]) -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=80, flags="S", options=options))
    out = clamp_tcp_mss(raw, 1360)
    assert _mss(IP(out)) == 1360
    assert _tcp_checksum_ok(out)
    assert len(out) == len(raw)


def test_mss_clamp_ipv6_syn_ack() -> None:
    raw = bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(flags="SA", options=[("MSS", 1440)]))
    out = clamp_tcp_mss(bytearray(raw), 1340)
    assert isinstance(out, bytes)
    assert _mss(IPv6(out)) == 1340 and _tcp_checksum_ok(out, v6=True)


def test_mss_clamp_leaves_other_packets_alone() -> None:
    cases = [
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A", options=[("MSS", 1460)]),  # not a SYN
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S", options=[("MSS", 1200)]),  # already small
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S"),  # no MSS option
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(bytes(40)),
    ]
    for pkt in cases:
        raw = bytes(pkt)
        assert clamp_tcp_mss(raw, 1300) == raw
    broken = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S", options=[("MSS", 1460)])))
    broken[20 + 21] = 0  # option length 0 in the MSS option: parsing stops
    assert clamp_tcp_mss(bytes(broken), 1300) == bytes(broken)


# --- overhead / MTU -----------------------------------------------------------------------------


def _params(encr: EncrId, ek: int, integ: IntegId, ik: int, encap: bool, v6: bool) -> SaParams:
    a = ip_address("2001:db8::1" if v6 else "192.0.2.1")
    b = ip_address("2001:db8::2" if v6 else "192.0.2.2")
    return SaParams(
        spi=0x100,
        encr=encr,
        encr_key=bytes(ek),
        integ=integ,
        integ_key=bytes(ik),
        esn=False,
        mode=Mode.TUNNEL,
        local_addr=a,
        remote_addr=b,
        encap=encap,
    )


OVERHEAD_CASES = [
    (EncrId.ENCR_AES_GCM_16, 36, IntegId.NONE, 0),
    (EncrId.ENCR_CHACHA20_POLY1305, 36, IntegId.NONE, 0),
    (EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_256_128, 32),
    (EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA1_96, 20),
    (EncrId.ENCR_NULL, 0, IntegId.AUTH_HMAC_SHA2_512_256, 64),
]


def test_esp_overhead_documented_example() -> None:
    assert esp_overhead(_params(EncrId.ENCR_AES_GCM_16, 36, IntegId.NONE, 0, True, False)) == 45
    assert esp_overhead(_params(EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_256_128, 32, False, False)) == (
        8 + 16 + 15 + 2 + 16
    )


@pytest.mark.parametrize(("encr", "ek", "integ", "ik"), OVERHEAD_CASES)
@pytest.mark.parametrize("encap", [False, True])
@pytest.mark.parametrize("v6", [False, True])
def test_overhead_and_tun_mtu_against_real_packets(
    encr: EncrId, ek: int, integ: IntegId, ik: int, encap: bool, v6: bool
) -> None:
    params = _params(encr, ek, integ, ik, encap, v6)
    out = OutboundSa(params)
    over = esp_overhead(params)
    udp = 8 if encap else 0
    worst = 0
    for n in range(20, 120):
        pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / Raw(bytes(n - 20)))
        actual = len(out.protect(pkt)) + udp - n
        assert actual <= over
        worst = max(worst, actual)
    assert worst == over  # the bound is tight
    outer = 40 if v6 else 20
    for path_mtu in (576, 1280, 1400, 1500, 9000):
        inner = tun_mtu(params, path_mtu)
        fits = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / Raw(bytes(inner - 20)))
        assert outer + udp + len(out.protect(fits)) <= path_mtu
        bigger = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / Raw(bytes(inner - 19)))
        assert outer + udp + len(out.protect(bigger)) > path_mtu
        assert inner >= path_mtu - outer - over


@pytest.mark.parametrize("mtu", [68, 500, 576, 1218, 1279])
@pytest.mark.parametrize("options", [b"", b"\x07\x07\x04" + bytes(4) + b"\x00", b"\x94\x04\x00\x00"])
def test_fragment_ipv4_reassembles_with_scapy(mtu: int, options: bytes) -> None:
    """RFC 791 3.2: pieces within the MTU, data in multiples of 8, copied options only after the first."""
    from scapy.layers.inet import defragment

    pkt = IP(src="10.1.0.5", dst="10.2.0.7", id=0x1234, flags=0, options=options) / UDP(sport=1, dport=2) / Raw(
        bytes(range(256)) * 5)
    wire = bytes(pkt)
    frags = fragment_ipv4(wire, mtu)
    assert frags is not None and len(frags) > 1
    assert all(len(f) <= mtu for f in frags)
    parsed = [IP(f) for f in frags]
    assert all(IP(bytes(p)).chksum == p.chksum for p in parsed)  # checksums verify
    assert all(p.id == 0x1234 for p in parsed)
    assert [p.flags.MF for p in parsed] == [1] * (len(frags) - 1) + [0]
    first_hl, later_hl = parsed[0].ihl, {p.ihl for p in parsed[1:]}
    assert first_hl * 4 == 20 + len(options) + (-len(options) % 4)
    if options.startswith(b"\x94"):  # router alert: copied
        assert later_hl == {first_hl}
    else:  # record route (not copied) or none
        assert later_hl == {5}
    (whole,) = defragment(parsed)
    assert bytes(whole[UDP]) == bytes(pkt[UDP])


def test_fragment_ipv4_refuses_what_it_must_not_cut() -> None:
    wire = bytes(IP(src="10.1.0.5", dst="10.2.0.7", flags="DF") / UDP() / Raw(bytes(1000)))
    assert fragment_ipv4(wire, 576) is None  # DF: the sender gets ICMP instead
    assert fragment_ipv4(bytes(IP() / UDP() / Raw(bytes(100))), 576) == [bytes(IP() / UDP() / Raw(bytes(100)))]
    assert fragment_ipv4(b"\x60" + bytes(60), 40) is None  # not IPv4
    assert fragment_ipv4(bytes(IP() / Raw(bytes(100))), 27) is None  # no room for 8 octets
    # an already fragmented packet is cut further, keeping its offset and MF
    frag = IP(src="10.1.0.5", dst="10.2.0.7", flags="MF", frag=100) / Raw(bytes(800))
    parts = [IP(f) for f in fragment_ipv4(bytes(frag), 300) or []]
    assert [p.frag for p in parts] == [100, 135, 170] and all(p.flags.MF for p in parts)
