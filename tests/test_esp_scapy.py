"""ESP interoperability against scapy's independent implementation (scapy.layers.ipsec).

Both directions for every suite, tunnel and transport mode, IPv4/IPv6 inner and outer,
with and without UDP encapsulation (RFC 3948) and ESN (RFC 4303 2.2.1). Traps from
/work/shared/notes/test-oracles.md: scapy's decrypt mutates its argument (always pass a
fresh parse), a seq/esn of 0 cannot be requested (we start at 1 and use a non-zero high
half), and for AEADs scapy's crypt_key is key || salt, as ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Packet, Raw

from ipsecd.esp.sa import InboundSa, Mode, OutboundSa, SaParams
from ipsecd.esp.spd import Selector
from ipsecd.iana import EncrId, IntegId


@dataclass(frozen=True)
class Suite:
    encr: EncrId
    encr_key_len: int
    integ: IntegId
    integ_key_len: int
    scapy_crypt: str
    scapy_auth: str | None


SUITES = {
    "gcm128": Suite(EncrId.ENCR_AES_GCM_16, 16 + 4, IntegId.NONE, 0, "AES-GCM", None),
    "gcm256": Suite(EncrId.ENCR_AES_GCM_16, 32 + 4, IntegId.NONE, 0, "AES-GCM", None),
    "chacha": Suite(EncrId.ENCR_CHACHA20_POLY1305, 32 + 4, IntegId.NONE, 0, "CHACHA20-POLY1305", None),
    "cbc128-sha256": Suite(EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA2_256_128, 32, "AES-CBC", "SHA2-256-128"),
    "cbc256-sha384": Suite(EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_384_192, 48, "AES-CBC", "SHA2-384-192"),
    "cbc256-sha512": Suite(EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_512_256, 64, "AES-CBC", "SHA2-512-256"),
    "cbc128-sha1": Suite(EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA1_96, 20, "AES-CBC", "HMAC-SHA1-96"),
    "null-sha256": Suite(EncrId.ENCR_NULL, 0, IntegId.AUTH_HMAC_SHA2_256_128, 32, "NULL", "SHA2-256-128"),
}

# (mode, outer family, inner family); transport mode has no separate inner header
LAYOUTS = [
    (Mode.TUNNEL, 4, 4),
    (Mode.TUNNEL, 4, 6),
    (Mode.TUNNEL, 6, 4),
    (Mode.TUNNEL, 6, 6),
    (Mode.TRANSPORT, 4, 4),
    (Mode.TRANSPORT, 6, 6),
]

ADDRS = {
    4: (ip_address("192.0.2.1"), ip_address("198.51.100.2")),  # (local, remote)
    6: (ip_address("2001:db8::1"), ip_address("2001:db8:ffff::2")),
}
INNER = {4: ("10.1.0.5", "10.2.0.7"), 6: ("fd00:1::5", "fd00:2::7")}  # (local side, remote side)
PAYLOAD_SIZES = (0, 1, 2, 3, 13, 14, 15, 16, 17, 100, 1300)
ESN_HIGH = 7
SPI = 0xC0DE0042


def _ip(version: int, src: str | IPv4Address | IPv6Address, dst: str | IPv4Address | IPv6Address) -> Packet:
    return IP(src=str(src), dst=str(dst)) if version == 4 else IPv6(src=str(src), dst=str(dst))


def _params(suite: Suite, keys: tuple[bytes, bytes], mode: Mode, outer: int, encap: bool, esn: bool) -> SaParams:
    local, remote = ADDRS[outer]
    return SaParams(
        spi=SPI,
        encr=suite.encr,
        encr_key=keys[0],
        integ=suite.integ,
        integ_key=keys[1],
        esn=esn,
        mode=mode,
        local_addr=local,
        remote_addr=remote,
        encap=encap,
    )


def _scapy_sa(
    suite: Suite, keys: tuple[bytes, bytes], mode: Mode, outer: int, encap: bool, esn: bool, sender_is_peer: bool
) -> SecurityAssociation:
    local, remote = ADDRS[outer]
    src, dst = (remote, local) if sender_is_peer else (local, remote)
    kwargs: dict[str, object] = {}
    if mode == Mode.TUNNEL:
        kwargs["tunnel_header"] = _ip(outer, src, dst)
    if encap:
        kwargs["nat_t_header"] = UDP(sport=4500, dport=4500)
    return SecurityAssociation(
        ESP,
        spi=SPI,
        crypt_algo=suite.scapy_crypt,
        crypt_key=keys[0] or None,
        auth_algo=suite.scapy_auth,
        auth_key=keys[1] or None,
        esn_en=esn,
        esn=ESN_HIGH if esn else 0,
        **kwargs,
    )


def _keys(suite: Suite) -> tuple[bytes, bytes]:
    return os.urandom(suite.encr_key_len), os.urandom(suite.integ_key_len)


def _plain_packet(mode: Mode, outer: int, inner: int, size: int, from_peer: bool) -> Packet:
    loc: object
    rem: object
    if mode == Mode.TUNNEL:
        loc, rem = INNER[inner]
        ver = inner
    else:
        loc, rem = ADDRS[outer]
        ver = outer
    src, dst = (rem, loc) if from_peer else (loc, rem)
    return _ip(ver, str(src), str(dst)) / UDP(sport=40000 + size, dport=53) / Raw(os.urandom(size))


def _esp_bytes(wire: bytes, outer: int, encap: bool) -> bytes:
    """Strip the outer IP (and UDP) header scapy put in front of the ESP packet."""
    hdr = 20 if outer == 4 else 40
    if encap:
        udp = UDP(wire[hdr : hdr + 8])
        assert (udp.sport, udp.dport) == (4500, 4500)
        hdr += 8
    return wire[hdr:]


def _wrap(esp: bytes, outer: int, encap: bool) -> Packet:
    """Put our ESP bytes behind an outer header (as the data plane would) and re-dissect."""
    local, remote = ADDRS[outer]
    hdr: Packet
    if outer == 4:
        hdr = IP(src=str(local), dst=str(remote), proto=17 if encap else 50)
    else:
        hdr = IPv6(src=str(local), dst=str(remote), nh=17 if encap else 50)
    pkt = hdr / UDP(sport=4500, dport=4500, chksum=0) / Raw(esp) if encap else hdr / Raw(esp)
    raw = bytes(pkt)
    return IP(raw) if outer == 4 else IPv6(raw)


CASES = [
    pytest.param(
        name,
        mode,
        outer,
        inner,
        encap,
        esn,
        id=f"{name}-{mode}-o{outer}i{inner}-{'nat' if encap else 'esp'}-{'esn' if esn else '32'}",
    )
    for name in SUITES
    for mode, outer, inner in LAYOUTS
    for encap in (False, True)
    for esn in (False, True)
]


@pytest.mark.parametrize(("name", "mode", "outer", "inner", "encap", "esn"), CASES)
def test_scapy_encrypts_we_decrypt(name: str, mode: Mode, outer: int, inner: int, encap: bool, esn: bool) -> None:
    suite = SUITES[name]
    keys = _keys(suite)
    ours = InboundSa(_params(suite, keys, mode, outer, encap, esn))
    if esn:
        ours.replay.top = ESN_HIGH << 32  # as if traffic had already crossed into this subspace
    theirs = _scapy_sa(suite, keys, mode, outer, encap, esn, sender_is_peer=True)
    local, remote = ADDRS[outer]
    for seq, size in enumerate(PAYLOAD_SIZES, start=1):
        pkt = _plain_packet(mode, outer, inner, size, from_peer=True)
        wire = bytes(theirs.encrypt(pkt, seq_num=seq))
        got = ours.unprotect(_esp_bytes(wire, outer, encap), remote.packed, local.packed)
        if mode == Mode.TUNNEL:
            assert got == bytes(pkt)
        else:
            parsed = IP(got) if outer == 4 else IPv6(got)
            assert parsed.src == str(remote) and parsed.dst == str(local)
            assert bytes(parsed[UDP]) == bytes(pkt[UDP])
            if outer == 4:
                assert parsed.len == len(got)
                assert parsed.chksum == _ipv4_checksum(got)
            else:
                assert parsed.plen == len(got) - 40
    assert ours.counters.packets == len(PAYLOAD_SIZES)
    assert ours.highest_seq == ((ESN_HIGH << 32) if esn else 0) + len(PAYLOAD_SIZES)


def _ipv4_checksum(packet: bytes) -> int:
    """The checksum scapy computes for this header (field zeroed and rebuilt)."""
    p = IP(packet)
    del p.chksum
    return IP(bytes(p)).chksum


@pytest.mark.parametrize(("name", "mode", "outer", "inner", "encap", "esn"), CASES)
def test_we_encrypt_scapy_decrypts(name: str, mode: Mode, outer: int, inner: int, encap: bool, esn: bool) -> None:
    suite = SUITES[name]
    keys = _keys(suite)
    ours = OutboundSa(_params(suite, keys, mode, outer, encap, esn))
    if esn:
        ours.seq = ESN_HIGH << 32
    theirs = _scapy_sa(suite, keys, mode, outer, encap, esn, sender_is_peer=False)
    for size in PAYLOAD_SIZES:
        pkt = _plain_packet(mode, outer, inner, size, from_peer=False)
        esp = ours.protect(bytes(pkt))
        # the sequence number on the wire is the low half; the IV of the AEADs is the full counter
        assert int.from_bytes(esp[4:8], "big") == ours.seq & 0xFFFFFFFF
        if suite.scapy_auth is None:
            assert int.from_bytes(esp[8:16], "big") == ours.seq
        dec = theirs.decrypt(_wrap(esp, outer, encap))
        if mode == Mode.TUNNEL:
            assert bytes(dec) == bytes(pkt)
        else:
            assert bytes(dec[UDP]) == bytes(pkt[UDP])
    # RFC 4303 2.4: total ESP length is a multiple of 4 (and of the block for CBC)
    assert len(esp) % 4 == 0


@pytest.mark.parametrize("name", list(SUITES))
def test_esn_rollover_against_scapy(name: str) -> None:
    """Sequence numbers crossing 2^32: our sender moves the high half, our receiver infers it."""
    suite = SUITES[name]
    keys = _keys(suite)
    params = _params(suite, keys, Mode.TUNNEL, 4, False, True)
    out, inb = OutboundSa(params), InboundSa(params)
    out.seq = 0xFFFFFFFD
    inb.replay.top = 0xFFFFFFFD
    pkt = _plain_packet(Mode.TUNNEL, 4, 4, 10, from_peer=False)
    seen = []
    for _ in range(4):
        esp = out.protect(bytes(pkt))
        seq_full = out.seq
        seen.append(seq_full)
        # scapy, told the right high half, agrees on the ICV/AAD
        sc = _scapy_sa(suite, keys, Mode.TUNNEL, 4, False, True, sender_is_peer=False)
        sc.esn = seq_full >> 32  # set on the SA: a per-call esn of 0 would fall back to the default
        assert bytes(sc.decrypt(_wrap(esp, 4, False))) == bytes(pkt)
        assert inb.unprotect(esp) == bytes(pkt)
    assert seen == [0xFFFFFFFE, 0xFFFFFFFF, 0x1_0000_0000, 0x1_0000_0001]
    assert inb.highest_seq == 0x1_0000_0001


def test_selectors_enforced_with_scapy_traffic() -> None:
    suite = SUITES["gcm256"]
    keys = _keys(suite)
    base = _params(suite, keys, Mode.TUNNEL, 4, True, False)
    params = replace(
        base,
        local_ts=(Selector.from_prefix("10.1.0.0/16"),),
        remote_ts=(Selector.from_prefix("10.2.0.0/16", proto=17),),
    )
    ours = InboundSa(params)
    theirs = _scapy_sa(suite, keys, Mode.TUNNEL, 4, True, False, sender_is_peer=True)
    ok = IP(src="10.2.0.7", dst="10.1.0.5") / UDP(sport=1, dport=2) / Raw(b"hello")
    assert ours.unprotect(_esp_bytes(bytes(theirs.encrypt(ok, seq_num=1)), 4, True)) == bytes(ok)
