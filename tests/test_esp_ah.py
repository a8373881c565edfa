"""AH (RFC 4302) against scapy's independent implementation (scapy.layers.ipsec), both directions.

Every integrity algorithm we offer for AH (HMAC-SHA2-256-128/384-192/512-256, RFC 4868, and
HMAC-SHA1-96), tunnel and transport mode, IPv4 and IPv6 outer headers, with and without ESN.
scapy zeroes the mutable fields itself (its ``zero_mutable_fields``) and pads the AH header
to 8 bytes over IPv6, so a packet either side builds verifies on the other only if both
agree on every covered byte. Then: the mutable fields really are mutable (a router's TTL,
TOS and DF changes keep the ICV), the immutable ones are not, replay, IPv6 options headers
before AH, and IPComp inside AH.
"""

from __future__ import annotations

import os
import zlib
from ipaddress import ip_address

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, PadN
from scapy.layers.ipsec import AH, SecurityAssociation
from scapy.packet import Packet, Raw

from ipsecd.esp.ah import AhInboundSa, AhOutboundSa, ah_header_len
from ipsecd.esp.ipcomp import IPCOMP_HEADER_LEN
from ipsecd.esp.sa import DropReason, EspDrop, IpsecProto, Mode, SaParams
from ipsecd.esp.spd import Selector
from ipsecd.iana import EncrId, IntegId

INTEGS = {
    "sha256": (IntegId.AUTH_HMAC_SHA2_256_128, 32, "SHA2-256-128"),
    "sha384": (IntegId.AUTH_HMAC_SHA2_384_192, 48, "SHA2-384-192"),
    "sha512": (IntegId.AUTH_HMAC_SHA2_512_256, 64, "SHA2-512-256"),
    "sha1": (IntegId.AUTH_HMAC_SHA1_96, 20, "HMAC-SHA1-96"),
}
ADDRS = {
    4: (ip_address("192.0.2.1"), ip_address("198.51.100.2")),  # (local, remote)
    6: (ip_address("2001:db8::1"), ip_address("2001:db8:ffff::2")),
}
INNER = {4: ("10.1.0.5", "10.2.0.7"), 6: ("fd00:1::5", "fd00:2::7")}
SPI = 0xA4A40042
ESN_HIGH = 5


def _params(integ: str, key: bytes, mode: Mode, version: int, esn: bool, **kw: object) -> SaParams:
    local, remote = ADDRS[version]
    return SaParams(spi=SPI, encr=EncrId.ENCR_NULL, encr_key=b"", integ=INTEGS[integ][0], integ_key=key, esn=esn,
                    mode=mode, local_addr=local, remote_addr=remote, protocol=IpsecProto.AH, **kw)  # type: ignore[arg-type]


def _mirror(p: SaParams) -> SaParams:
    """The peer's view: same SPI and key, addresses swapped (what the peer's inbound SA holds)."""
    from dataclasses import replace

    return replace(p, local_addr=p.remote_addr, remote_addr=p.local_addr)


def _scapy_sa(integ: str, key: bytes, mode: Mode, src: object, dst: object, version: int,
              esn: bool) -> SecurityAssociation:
    tunnel = None
    if mode is Mode.TUNNEL:
        tunnel = IP(src=str(src), dst=str(dst)) if version == 4 else IPv6(src=str(src), dst=str(dst))
    return SecurityAssociation(AH, spi=SPI, auth_algo=INTEGS[integ][2], auth_key=key, tunnel_header=tunnel,
                               esn_en=esn, esn=ESN_HIGH if esn else 0)


def _inner(version: int, size: int = 200, src_side: int = 0) -> bytes:
    src, dst = INNER[version] if src_side == 0 else INNER[version][::-1]
    hdr: Packet = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
    return bytes(hdr / UDP(sport=1234, dport=5678) / Raw(os.urandom(size)))


def _transport_packet(version: int, src: object, dst: object, size: int = 200) -> Packet:
    hdr: Packet = IP(src=str(src), dst=str(dst)) if version == 4 else IPv6(src=str(src), dst=str(dst))
    return hdr / TCP(sport=4000, dport=80, flags="PA") / Raw(os.urandom(size))


CASES = [(integ, mode, outer, inner) for integ in INTEGS for (mode, outer, inner) in (
    (Mode.TUNNEL, 4, 4), (Mode.TUNNEL, 4, 6), (Mode.TUNNEL, 6, 6), (Mode.TUNNEL, 6, 4),
    (Mode.TRANSPORT, 4, 4), (Mode.TRANSPORT, 6, 6))]


def _seed_high(sa: AhOutboundSa | AhInboundSa, esn: bool, seq_low: int) -> None:
    if not esn:
        return
    if isinstance(sa, AhOutboundSa):
        sa.seq = (ESN_HIGH << 32) | (seq_low - 1)
    else:
        sa.replay.top = (ESN_HIGH << 32) | (seq_low - 1)


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize(("integ", "mode", "outer", "inner"), CASES,
                         ids=[f"{c[0]}-{c[1].value}-v{c[2]}in{c[3]}" for c in CASES])
def test_ours_to_scapy(integ: str, mode: Mode, outer: int, inner: int, esn: bool) -> None:
    key = os.urandom(INTEGS[integ][1])
    out = AhOutboundSa(_params(integ, key, mode, outer, esn))
    local, remote = ADDRS[outer]
    peer = _scapy_sa(integ, key, mode, local, remote, outer, esn)
    for n in range(1, 4):
        _seed_high(out, esn, 1000 + n) if n == 1 else None
        if mode is Mode.TUNNEL:
            clear = _inner(inner)
        else:
            clear = bytes(_transport_packet(outer, local, remote))
        wire = out.seal(clear)
        parsed = IP(wire) if outer == 4 else IPv6(wire)
        ah = parsed[AH]
        assert ah.spi == SPI and ah.seq == (out.seq & 0xFFFFFFFF)
        assert len(bytes(ah)) - len(bytes(ah.payload)) == ah_header_len(len(ah.icv) - len(ah.padding or b""), outer)
        plain = peer.decrypt(IP(wire) if outer == 4 else IPv6(wire))  # raises on a wrong ICV
        if mode is Mode.TUNNEL:
            assert bytes(plain) == clear
        else:
            assert bytes(plain.payload) == clear[20 if outer == 4 else 40:]
        # what the raw socket sends: IPv4 with its header (IP_HDRINCL), IPv6 from AH on
        assert out.protect(clear)[:1] == (b"\x45" if outer == 4 else bytes([ah.nh])) or outer == 6


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize(("integ", "mode", "outer", "inner"), CASES,
                         ids=[f"{c[0]}-{c[1].value}-v{c[2]}in{c[3]}" for c in CASES])
def test_scapy_to_ours(integ: str, mode: Mode, outer: int, inner: int, esn: bool) -> None:
    key = os.urandom(INTEGS[integ][1])
    ours = AhInboundSa(_params(integ, key, mode, outer, esn))
    local, remote = ADDRS[outer]
    peer = _scapy_sa(integ, key, mode, remote, local, outer, esn)
    _seed_high(ours, esn, 500)
    for seq in (500, 502, 501):
        if mode is Mode.TUNNEL:
            clear = _inner(inner, src_side=1)
            wire = bytes(peer.encrypt(IP(clear) if inner == 4 else IPv6(clear), seq_num=seq))
            assert ours.unprotect(wire) == clear
        else:
            pkt = _transport_packet(outer, remote, local)
            wire = bytes(peer.encrypt(pkt, seq_num=seq))
            got = ours.unprotect(wire)
            hl = 20 if outer == 4 else 40
            assert got[hl:] == bytes(pkt)[hl:]
            assert got[12:20] == bytes(pkt)[12:20] if outer == 4 else got[8:40] == bytes(pkt)[8:40]
    with pytest.raises(EspDrop) as e:
        ours.unprotect(wire)  # the same packet again
    assert e.value.reason is DropReason.REPLAY


@pytest.mark.parametrize("integ", list(INTEGS))
def test_round_trip_and_v6_socket_view(integ: str) -> None:
    """Ours to ours; the IPv6 raw-socket form (no IPv6 header) verifies after unprotect_v6."""
    key = os.urandom(INTEGS[integ][1])
    for version in (4, 6):
        p = _params(integ, key, Mode.TUNNEL, version, False)
        out, into = AhOutboundSa(p), AhInboundSa(_mirror(p))
        clear = _inner(version)
        if version == 4:
            assert into.unprotect(out.protect(clear)) == clear
        else:
            local, remote = ADDRS[6]
            assert into.unprotect_v6(out.protect(clear), local.packed, remote.packed) == clear


def test_mutable_fields_do_not_count_immutable_ones_do() -> None:
    key = os.urandom(32)
    p = _params("sha256", key, Mode.TUNNEL, 4, False)
    out, into = AhOutboundSa(p), AhInboundSa(_mirror(p))
    wire = bytearray(out.seal(_inner(4)))
    wire[1] = 0xB8  # TOS/DSCP rewritten by a router
    wire[6] |= 0x40  # DF set on the way
    wire[8] = 3  # TTL decremented
    wire[10:12] = b"\x12\x34"  # checksum (would be recomputed)
    assert into.unprotect(bytes(wire))
    for pos in (4, 13, 60):  # Identification, a source address byte, a payload byte
        bad = bytearray(out.seal(_inner(4)))
        bad[pos] ^= 1
        with pytest.raises(EspDrop) as e:
            into.unprotect(bytes(bad))
        assert e.value.reason is DropReason.ICV


def test_ipv6_options_header_before_ah_from_scapy() -> None:
    """A Hop-by-Hop header with a mutable option before AH: scapy zeroes its data for the ICV, so do we."""
    key = os.urandom(32)
    local, remote = ADDRS[6]
    ours = AhInboundSa(_params("sha256", key, Mode.TRANSPORT, 6, False))
    peer = _scapy_sa("sha256", key, Mode.TRANSPORT, remote, local, 6, False)
    hbh = IPv6ExtHdrHopByHop(options=[PadN(otype=0x3E, optdata=b"\x01\x02\x03\x04")])
    pkt = IPv6(src=str(remote), dst=str(local)) / hbh / UDP(sport=1, dport=2) / Raw(b"x" * 50)
    wire = bytearray(bytes(peer.encrypt(pkt, seq_num=1)))
    wire[44:48] = b"\xff\xfe\xfd\xfc"  # mutable option data changed in transit (0x20 bit set in 0x3E)
    got = ours.unprotect(bytes(wire))
    assert got[6] == 17 and got[40:44] == b"\x00\x01\x00\x02" and got[48:] == b"x" * 50


def test_selectors_and_bad_input() -> None:
    key = os.urandom(32)
    sel_remote = (Selector.from_prefix("10.2.0.0/16"),)
    sel_local = (Selector.from_prefix("10.1.0.0/16"),)
    p = _params("sha256", key, Mode.TUNNEL, 4, False, local_ts=sel_local, remote_ts=sel_remote)
    into = AhInboundSa(p)
    out = AhOutboundSa(_mirror(_params("sha256", key, Mode.TUNNEL, 4, False)))
    assert into.unprotect(out.seal(_inner(4, src_side=1)))
    with pytest.raises(EspDrop) as e:
        into.unprotect(out.seal(_inner(4, src_side=0)))  # reversed: outside the selectors
    assert e.value.reason is DropReason.SELECTOR
    for junk in (b"", b"\x45", os.urandom(30), b"\x45" + bytes(40), b"\x60" + bytes(60)):
        with pytest.raises(EspDrop):
            into.unprotect(junk)


def test_ah_with_ipcomp() -> None:
    key = os.urandom(64)
    p = _params("sha512", key, Mode.TUNNEL, 4, False, ipcomp_cpi=0x1234)
    out, into = AhOutboundSa(p), AhInboundSa(_mirror(p))
    clear = bytes(IP(src="10.1.0.5", dst="10.2.0.7") / UDP(sport=1, dport=2) / Raw(b"compress me " * 100))
    wire = out.seal(clear)
    ah = IP(wire)[AH]
    assert ah.nh == 108
    comp = bytes(ah.payload)
    assert comp[2:4] == b"\x12\x34" and comp[0] == 4
    assert zlib.decompress(comp[IPCOMP_HEADER_LEN:], -15) == clear
    assert len(wire) < len(clear)
    assert into.unprotect(wire) == clear


def test_params_refuse_what_ah_cannot_do() -> None:
    key = os.urandom(32)
    from ipsecd.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        _params("sha256", key, Mode.TUNNEL, 4, False, encap=True)
    with pytest.raises(LocalProtocolError):
        SaParams(spi=SPI, encr=EncrId.ENCR_AES_CBC, encr_key=bytes(16), integ=IntegId.AUTH_HMAC_SHA2_256_128,
                 integ_key=key, esn=False, mode=Mode.TUNNEL, local_addr=ADDRS[4][0], remote_addr=ADDRS[4][1],
                 protocol=IpsecProto.AH)


def test_ipv4_options_from_scapy() -> None:
    """Router Alert is immutable and covered, Record Route is mutable and zeroed whole
    (RFC 4302 Appendix A.1): a router filling in Record Route keeps the ICV valid."""
    from scapy.layers.inet import IPOption_Router_Alert, IPOption_RR

    key = os.urandom(32)
    local, remote = ADDRS[4]
    ours = AhInboundSa(_params("sha256", key, Mode.TUNNEL, 4, False))
    tunnel = IP(src=str(remote), dst=str(local), options=[IPOption_Router_Alert(), IPOption_RR(routers=["0.0.0.0"])])
    peer = SecurityAssociation(AH, spi=SPI, auth_algo="SHA2-256-128", auth_key=key, tunnel_header=tunnel)
    clear = _inner(4, src_side=1)
    wire = bytearray(bytes(peer.encrypt(IP(clear), seq_num=1)))
    assert (wire[0] & 0x0F) > 5
    rr = bytes(wire).index(b"\x07", 20)  # Record Route: a router writes its address and moves the pointer
    wire[rr + 2] += 4
    wire[rr + 3 : rr + 7] = bytes([198, 51, 100, 77])
    assert ours.unprotect(bytes(wire)) == clear
    bad = bytearray(bytes(peer.encrypt(IP(clear), seq_num=2)))
    bad[22] ^= 1  # inside the Router Alert value: immutable
    with pytest.raises(EspDrop) as e:
        ours.unprotect(bytes(bad))
    assert e.value.reason is DropReason.ICV
