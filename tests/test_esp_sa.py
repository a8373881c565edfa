"""SA behaviour: drops with the right reason and counters, modes, selectors, SAD, fuzzing."""

from __future__ import annotations

import contextlib
import os
import random
import struct
from dataclasses import replace
from ipaddress import ip_address

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from ipsecd.errors import LocalProtocolError
from ipsecd.esp.packet import build_ipv4_header
from ipsecd.esp.sa import DropReason, EspDrop, InboundSa, Mode, OutboundSa, SaCounters, SaParams
from ipsecd.esp.sad import Sad
from ipsecd.esp.spd import Selector
from ipsecd.esp.transform import AeadTransform, CbcHmacTransform
from ipsecd.iana import EncrId, IntegId

GCM_KEY = bytes(range(36))
CBC_KEY = bytes(range(32))
HMAC_KEY = bytes(range(100, 132))


def params(**kw: object) -> SaParams:
    base: dict[str, object] = {
        "spi": 0x11223344,
        "encr": EncrId.ENCR_AES_GCM_16,
        "encr_key": GCM_KEY,
        "integ": IntegId.NONE,
        "integ_key": b"",
        "esn": False,
        "mode": Mode.TUNNEL,
        "local_addr": ip_address("192.0.2.1"),
        "remote_addr": ip_address("192.0.2.2"),
        "name": "test-child",
    }
    base.update(kw)
    return SaParams(**base)  # type: ignore[arg-type]


def cbc_params(**kw: object) -> SaParams:
    return params(
        encr=EncrId.ENCR_AES_CBC, encr_key=CBC_KEY, integ=IntegId.AUTH_HMAC_SHA2_256_128, integ_key=HMAC_KEY, **kw
    )


SUITE_PARAMS = {
    "gcm": params,
    "chacha": lambda **kw: params(encr=EncrId.ENCR_CHACHA20_POLY1305, **kw),
    "cbc": cbc_params,
    "null": lambda **kw: params(
        encr=EncrId.ENCR_NULL, encr_key=b"", integ=IntegId.AUTH_HMAC_SHA1_96, integ_key=bytes(20), **kw
    ),
}

INNER = bytes(IP(src="10.2.0.7", dst="10.1.0.5") / UDP(sport=5000, dport=53) / Raw(b"query" * 10))
INNER6 = bytes(IPv6(src="fd00:2::7", dst="fd00:1::5") / UDP(sport=5000, dport=53) / Raw(b"query6"))


def expect_drop(reason: DropReason, fn: object, *args: object) -> None:
    with pytest.raises(EspDrop) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.reason is reason


def aead_forge(p: SaParams, seq: int, plaintext: bytes) -> bytes:
    """An authentic packet with arbitrary plaintext (padding/trailer chosen by the test)."""
    return AeadTransform(p.encr, p.encr_key, p.spi, p.esn).seal_with_iv(seq, seq.to_bytes(8, "big"), plaintext)


# --- round trips and basic counters ---------------------------------------------------------


@pytest.mark.parametrize("suite", list(SUITE_PARAMS))
@pytest.mark.parametrize("esn", [False, True])
def test_round_trip_and_counters(suite: str, esn: bool) -> None:
    p = SUITE_PARAMS[suite](esn=esn)  # type: ignore[operator]
    out, inb = OutboundSa(p), InboundSa(p)
    for pkt in (INNER, INNER6, INNER):
        assert inb.unprotect(out.protect(pkt)) == pkt
    # bytes-like inputs straight from receive buffers
    assert inb.unprotect(bytearray(out.protect(memoryview(INNER)))) == INNER
    assert inb.unprotect(memoryview(out.protect(bytearray(INNER6)))) == INNER6
    assert out.seq == 5
    assert out.counters.packets == inb.counters.packets == 5
    assert out.counters.bytes == inb.counters.bytes == 3 * len(INNER) + 2 * len(INNER6)


@pytest.mark.parametrize("suite", list(SUITE_PARAMS))
def test_reordered_delivery(suite: str) -> None:
    """In particular for CBC: the long-lived decryptor must not depend on packet order."""
    p = SUITE_PARAMS[suite]()  # type: ignore[operator]
    out, inb = OutboundSa(p), InboundSa(p)
    pkts = [bytes(IP(src="10.2.0.7", dst="10.1.0.5") / Raw(os.urandom(i))) for i in range(30)]
    esps = [out.protect(x) for x in pkts]
    order = list(range(30))
    random.Random(7).shuffle(order)
    for i in order:
        assert inb.unprotect(esps[i]) == pkts[i]


def test_padding_alignment() -> None:
    for mk, align in ((params, 4), (cbc_params, 16)):
        out = OutboundSa(mk())
        for n in range(20, 60):
            pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / Raw(bytes(n - 20)))
            esp = out.protect(pkt)
            iv = 8 if align == 4 else 16
            icv = 16
            assert (len(esp) - 8 - iv - icv) % align == 0


# --- drops ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(SUITE_PARAMS))
def test_short(suite: str) -> None:
    p = SUITE_PARAMS[suite]()  # type: ignore[operator]
    inb = InboundSa(p)
    esp = OutboundSa(p).protect(INNER)
    for n in (0, 1, 7, 8, inb.transform.overhead_min - 1):
        expect_drop(DropReason.SHORT, inb.unprotect, esp[:n])
    assert inb.counters.drops[DropReason.SHORT] == 5
    assert inb.counters.packets == 0


@pytest.mark.parametrize("suite", list(SUITE_PARAMS))
def test_every_flipped_byte_fails_icv(suite: str) -> None:
    p = SUITE_PARAMS[suite]()  # type: ignore[operator]
    out, inb = OutboundSa(p), InboundSa(p)
    esp = out.protect(INNER)
    for i in range(len(esp)):
        bad = bytearray(esp)
        bad[i] ^= 0x01 if i != 7 else 0x02  # keep the sequence number non-zero
        expect_drop(DropReason.ICV, inb.unprotect, bytes(bad))
    assert inb.counters.drops[DropReason.ICV] == len(esp)
    # forgeries did not move the window: the genuine packet still passes
    assert inb.unprotect(esp) == INNER
    assert inb.highest_seq == 1


@pytest.mark.parametrize("suite", list(SUITE_PARAMS))
def test_truncated_fails_icv_or_short(suite: str) -> None:
    p = SUITE_PARAMS[suite]()  # type: ignore[operator]
    inb = InboundSa(p)
    esp = OutboundSa(p).protect(INNER)
    for cut in range(1, 40):
        with pytest.raises(EspDrop) as info:
            inb.unprotect(esp[:-cut])
        assert info.value.reason in (DropReason.ICV, DropReason.SHORT, DropReason.MALFORMED)


def test_replay_dropped_and_counted() -> None:
    p = params()
    out, inb = OutboundSa(p), InboundSa(p)
    esps = [out.protect(INNER) for _ in range(3)]
    for e in esps:
        inb.unprotect(e)
    expect_drop(DropReason.REPLAY, inb.unprotect, esps[1])
    expect_drop(DropReason.REPLAY, inb.unprotect, esps[2])
    assert inb.counters.drops == {DropReason.REPLAY: 2}
    assert inb.counters.packets == 3


def test_too_old_dropped() -> None:
    p = params(replay_window=64)
    out, inb = OutboundSa(p), InboundSa(p)
    first = out.protect(INNER)
    out.seq = 100
    inb.unprotect(out.protect(INNER))
    expect_drop(DropReason.REPLAY, inb.unprotect, first)


def test_bad_padding_bytes() -> None:
    p = params()
    inb = InboundSa(p)
    body = INNER  # 70 bytes: 70 + 2 -> pad 2 to reach a multiple of 4
    good = body + bytes((1, 2, 2, 4))
    assert inb.unprotect(aead_forge(p, 1, good)) == INNER
    for seq, trailer in enumerate(
        (bytes((1, 3, 2, 4)), bytes((0, 0, 2, 4)), bytes((2, 1, 2, 4))),
        start=2,
    ):
        expect_drop(DropReason.PADDING, inb.unprotect, aead_forge(p, seq, body + trailer))
    # pad length larger than the plaintext
    expect_drop(DropReason.PADDING, inb.unprotect, aead_forge(p, 9, bytes((1, 2, 200, 4))))
    assert inb.counters.drops[DropReason.PADDING] == 4


def test_padding_beyond_minimum_is_accepted() -> None:
    """RFC 4303 2.4: a sender may pad more than needed (up to 255), e.g. to hide lengths."""
    p = params()
    pad = bytes(range(1, 15))
    assert InboundSa(p).unprotect(aead_forge(p, 1, INNER + pad + bytes((14, 4)))) == INNER


def test_dummy_packet_dropped_silently() -> None:
    p = params()
    inb = InboundSa(p)
    expect_drop(DropReason.DUMMY, inb.unprotect, aead_forge(p, 1, b"\x00" * 6 + bytes((0, 59))))
    assert inb.counters.drops == {DropReason.DUMMY: 1}
    assert inb.highest_seq == 1  # authentic, so the window moved (RFC 4303 3.4.3)


def test_tfc_padding_removed() -> None:
    p = params()
    tfc = bytes(37)
    plain = INNER + tfc
    pad = (-(len(plain) + 2)) % 4
    pkt = aead_forge(p, 1, plain + bytes(range(1, pad + 1)) + bytes((pad, 4)))
    assert InboundSa(p).unprotect(pkt) == INNER


@pytest.mark.parametrize(
    "plain",
    [
        INNER + bytes((1, 2, 2, 41)),  # says IPv6, is IPv4
        INNER6 + bytes((1, 2, 2, 4)),  # says IPv4, is IPv6
        INNER + bytes((1, 2, 2, 17)),  # UDP directly in tunnel mode
        INNER[:2] + b"\xff\xff" + INNER[4:] + bytes((1, 2, 2, 4)),  # total length beyond the data
        b"\x45" + bytes(9) + bytes((1, 2)) + bytes((2, 4)),  # 10-byte "IPv4 packet"
        b"\x43" + INNER[1:] + bytes((1, 2, 2, 4)),  # IHL 3
    ],
)
def test_bad_inner(plain: bytes) -> None:
    p = params()
    expect_drop(DropReason.BAD_INNER, InboundSa(p).unprotect, aead_forge(p, 1, plain))


def test_selector_check() -> None:
    p = params(
        local_ts=(Selector.from_prefix("10.1.0.0/16"),),
        remote_ts=(Selector.from_prefix("10.2.0.0/16", proto=17, ports=(5000, 5000)),),
    )
    out, inb = OutboundSa(p), InboundSa(p)
    assert inb.unprotect(out.protect(INNER)) == INNER
    wrong = [
        IP(src="10.3.0.7", dst="10.1.0.5") / UDP(sport=5000, dport=53),  # src outside remote_ts
        IP(src="10.2.0.7", dst="10.9.0.5") / UDP(sport=5000, dport=53),  # dst outside local_ts
        IP(src="10.2.0.7", dst="10.1.0.5") / TCP(sport=5000, dport=53),  # wrong protocol
        IP(src="10.2.0.7", dst="10.1.0.5") / UDP(sport=5001, dport=53),  # wrong port
        IP(src="10.2.0.7", dst="10.1.0.5", frag=10) / Raw(b"x" * 16),  # non-first fragment: no ports
    ]
    for pkt in wrong:
        expect_drop(DropReason.SELECTOR, inb.unprotect, out.protect(bytes(pkt)))
    assert INNER6 and inb.counters.drops[DropReason.SELECTOR] == len(wrong)
    # IPv6 traffic on an IPv4-only SA
    expect_drop(DropReason.SELECTOR, inb.unprotect, out.protect(INNER6))


def test_selector_any_v4_only_blocks_v6() -> None:
    p = params(local_ts=(Selector.any(4),), remote_ts=(Selector.any(4),))
    out, inb = OutboundSa(p), InboundSa(p)
    assert inb.unprotect(out.protect(INNER)) == INNER
    expect_drop(DropReason.SELECTOR, inb.unprotect, out.protect(INNER6))


def test_seq_exhausted_without_esn() -> None:
    out = OutboundSa(params())
    out.seq = 0xFFFFFFFE
    esp = out.protect(INNER)
    assert esp[4:8] == b"\xff\xff\xff\xff"
    expect_drop(DropReason.SEQ_EXHAUSTED, out.protect, INNER)
    expect_drop(DropReason.SEQ_EXHAUSTED, out.protect, INNER)
    assert out.seq == 0xFFFFFFFF
    assert out.counters.drops == {DropReason.SEQ_EXHAUSTED: 2}
    assert out.counters.packets == 1


def test_esn_sender_continues_past_2_32() -> None:
    p = params(esn=True)
    out = OutboundSa(p)
    out.seq = 0xFFFFFFFF
    esp = out.protect(INNER)
    assert esp[4:8] == b"\x00\x00\x00\x00"  # low half on the wire
    assert esp[8:16] == (1 << 32).to_bytes(8, "big")  # IV = full counter
    inb = InboundSa(p)
    inb.replay.top = 0xFFFFFFF0
    assert inb.unprotect(esp) == INNER


def test_outbound_bad_inner() -> None:
    out = OutboundSa(params())
    for junk in (b"", b"\x45", bytes(19), b"\x50" + bytes(30), b"\x60" + bytes(30)):
        expect_drop(DropReason.BAD_INNER, out.protect, junk)
    assert out.seq == 0


def test_misaligned_cbc_is_malformed_and_harmless() -> None:
    """An authentic but not block-aligned CBC packet must not desynchronise the decryptor."""
    p = cbc_params()
    out, inb = OutboundSa(p), InboundSa(p)
    first = out.protect(INNER)
    body = struct.pack("!II", p.spi, 50) + os.urandom(16 + 21)
    mac = hmac.HMAC(HMAC_KEY, hashes.SHA256())
    mac.update(body)
    expect_drop(DropReason.MALFORMED, inb.unprotect, body + mac.finalize()[:16])
    assert inb.unprotect(first) == INNER
    assert inb.unprotect(out.protect(INNER6)) == INNER6


def test_cbc_fresh_iv_per_packet() -> None:
    out = OutboundSa(cbc_params())
    ivs = {out.protect(INNER)[8:24] for _ in range(300)}  # crosses an IV-pool refill
    assert len(ivs) == 300


# --- transport mode -----------------------------------------------------------------------------


def test_transport_ipv4_round_trip_rebuilds_header() -> None:
    p = params(mode=Mode.TRANSPORT)
    out, inb = OutboundSa(p), InboundSa(p)
    orig = (
        IP(src="192.0.2.2", dst="192.0.2.1", ttl=9, id=77, options=b"\x01\x01\x01\x00")
        / UDP(sport=1, dport=2)
        / Raw(b"data")
    )
    esp = out.protect(bytes(orig))
    got = IP(inb.unprotect(esp))  # defaults: outer addresses from the SA
    assert got.src == "192.0.2.2" and got.dst == "192.0.2.1" and got.proto == 17
    assert bytes(got[UDP]) == bytes(orig[UDP])
    chk = got.chksum
    del got.chksum
    assert IP(bytes(got)).chksum == chk


def test_transport_ipv4_fragment_refused() -> None:
    out = OutboundSa(params(mode=Mode.TRANSPORT))
    frag = IP(src="192.0.2.1", dst="192.0.2.2", flags="MF") / UDP() / Raw(b"x" * 16)
    expect_drop(DropReason.BAD_INNER, out.protect, bytes(frag))


def test_transport_ipv6_extension_headers() -> None:
    p = params(mode=Mode.TRANSPORT, local_addr=ip_address("2001:db8::1"), remote_addr=ip_address("2001:db8::2"))
    out, inb = OutboundSa(p), InboundSa(p)
    hbh = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP() / Raw(b"x")
    expect_drop(DropReason.BAD_INNER, out.protect, bytes(hbh))
    dst_opts = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=9) / Raw(b"y")
    got = IPv6(inb.unprotect(out.protect(bytes(dst_opts)), p.local_addr.packed, p.remote_addr.packed))
    assert got.nh == 60
    assert bytes(got[IPv6ExtHdrDestOpt]) == bytes(dst_opts[IPv6ExtHdrDestOpt])


def test_transport_nat_fixes_l4_checksum() -> None:
    """RFC 3948 3.1.2: the peer behind NAT computed the checksum over its private address."""
    p = params(mode=Mode.TRANSPORT, encap=True)
    out, inb = OutboundSa(p), InboundSa(p)
    for l4 in (TCP(sport=1234, dport=80, flags="S"), UDP(sport=1234, dport=53)):
        private = IP(src="10.0.0.9", dst="192.0.2.1") / l4 / Raw(b"payload!")
        public_src = ip_address("203.0.113.77").packed
        got = IP(inb.unprotect(out.protect(bytes(private)), public_src, p.local_addr.packed))
        assert got.src == "203.0.113.77"
        layer = got[TCP] if TCP in got else got[UDP]
        chk = layer.chksum
        del layer.chksum
        assert IP(bytes(got))[type(layer)].chksum == chk


def test_transport_bad_outer_address_length() -> None:
    p = params(mode=Mode.TRANSPORT)
    esp = OutboundSa(p).protect(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP()))
    expect_drop(DropReason.MALFORMED, InboundSa(p).unprotect, esp, b"\x01\x02\x03", b"\x01\x02\x03\x04")


# --- params, errors, SAD ------------------------------------------------------------------------


def test_params_repr_hides_keys() -> None:
    p = params(encr_key=bytes.fromhex("deadbeef" * 9))
    text = repr(p) + repr(OutboundSa(p)) + repr(InboundSa(p))
    assert "deadbeef" not in text and "encr_key" not in text and "integ_key" not in text


@pytest.mark.parametrize(
    "bad",
    [
        {"spi": 0},
        {"encr_key": bytes(21)},  # AES-GCM: 16/24/32 + 4 bytes of salt
        {"encr_key": bytes(32)},  # a GCM key without its salt
        {"integ": IntegId.AUTH_HMAC_SHA2_256_128, "integ_key": bytes(32)},  # AEAD + INTEG
        {"encr": EncrId.ENCR_AES_CBC, "encr_key": bytes(16)},  # CBC without INTEG
        {
            "encr": EncrId.ENCR_AES_CBC,
            "encr_key": bytes(15),
            "integ": IntegId.AUTH_HMAC_SHA2_256_128,
            "integ_key": bytes(32),
        },
        {
            "encr": EncrId.ENCR_AES_CBC,
            "encr_key": bytes(16),
            "integ": IntegId.AUTH_HMAC_SHA2_256_128,
            "integ_key": bytes(16),
        },
        {"encr": EncrId.ENCR_3DES, "encr_key": bytes(24), "integ": IntegId.AUTH_HMAC_SHA1_96, "integ_key": bytes(20)},
        {"remote_addr": ip_address("2001:db8::1")},
        {"replay_window": -1},
    ],
)
def test_params_validation(bad: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        params(**bad)


def test_esp_drop_is_cheap_and_printable() -> None:
    e = EspDrop(DropReason.ICV)
    assert e.reason is DropReason.ICV
    assert "icv" in str(e)


def test_sad_lookup_and_counters() -> None:
    sad = Sad()
    p_in = params(spi=0x1000)
    p_out = params(spi=0x2000)
    peer_out = OutboundSa(p_in)  # the peer's outbound = our inbound
    sad.add_inbound(InboundSa(p_in))
    with pytest.raises(LocalProtocolError):
        sad.add_inbound(InboundSa(p_in))
    assert sad.add_outbound(7, OutboundSa(p_out)) is None
    assert sad.lookup_inbound(0x1000) is not None and sad.lookup_inbound(0x1001) is None
    sa, esp = sad.protect(7, INNER)
    assert sa.spi == 0x2000 and esp[:4] == b"\x00\x00\x20\x00"
    expect_drop(DropReason.NO_SA, sad.protect, 8, INNER)

    sa_in, pkt = sad.unprotect(peer_out.protect(INNER))
    assert pkt == INNER and sa_in.spi == 0x1000
    expect_drop(DropReason.UNKNOWN_SPI, sad.unprotect, b"\x00\x00\x99\x99" + bytes(40))
    expect_drop(DropReason.SHORT, sad.unprotect, b"\x00\x00\x10")
    expect_drop(DropReason.ICV, sad.unprotect, b"\x00\x00\x10\x00\x00\x00\x00\x05" + bytes(56))
    assert sad.drops == {DropReason.NO_SA: 1, DropReason.UNKNOWN_SPI: 1, DropReason.SHORT: 1}

    # rekey: the old outbound SA's counters stay in the totals
    old = sad.add_outbound(7, OutboundSa(params(spi=0x3000)))
    assert old is not None and old.spi == 0x2000
    sad.protect(7, INNER)
    totals = sad.totals()
    assert totals.outbound.packets == 2
    assert totals.inbound.packets == 1
    assert totals.all_drops()[DropReason.ICV] == 1
    assert sad.remove(inbound_spi=0x1000) == 1
    assert sad.remove(outbound_spi=0x3000) == 1
    assert sad.remove(reqid=7, inbound_spi=0x1000) == 0
    totals = sad.totals()
    assert (totals.inbound.packets, totals.outbound.packets) == (1, 2)


def test_counters_merge() -> None:
    a = SaCounters(10, 1, {DropReason.ICV: 2})
    a.merge(SaCounters(5, 2, {DropReason.ICV: 1, DropReason.REPLAY: 4}))
    assert (a.bytes, a.packets, a.drops) == (15, 3, {DropReason.ICV: 3, DropReason.REPLAY: 4})


# --- fuzzing: nothing but EspDrop ever escapes ---------------------------------------------------


FUZZ_SAS = {
    "gcm": params(),
    "cbc": cbc_params(),
    "gcm-transport": params(mode=Mode.TRANSPORT, encap=True),
    "gcm-ts": params(local_ts=(Selector.from_prefix("10.1.0.0/16"),), remote_ts=(Selector.any(6),)),
}


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), which=st.sampled_from(list(FUZZ_SAS)))
def test_fuzz_unprotect_random_bytes(data: bytes, which: str) -> None:
    inb = InboundSa(FUZZ_SAS[which])
    with contextlib.suppress(EspDrop):
        inb.unprotect(data)


@settings(max_examples=300, deadline=None)
@given(plain=st.binary(max_size=120), which=st.sampled_from(["gcm", "gcm-transport", "gcm-ts"]))
def test_fuzz_authentic_garbage_plaintext(plain: bytes, which: str) -> None:
    """Authentic packets whose decrypted content is arbitrary: trailer/inner parsing must hold."""
    p = FUZZ_SAS[which]
    inb = InboundSa(p)
    with contextlib.suppress(EspDrop):
        inb.unprotect(aead_forge(p, 1, plain), b"\x01\x02\x03\x04", b"\x05\x06\x07\x08")


@settings(max_examples=200, deadline=None)
@given(pkt=st.binary(max_size=100), which=st.sampled_from(list(FUZZ_SAS)))
def test_fuzz_protect(pkt: bytes, which: str) -> None:
    out = OutboundSa(FUZZ_SAS[which])
    with contextlib.suppress(EspDrop):
        out.protect(pkt)


def test_cbc_transform_object_reused() -> None:
    out = OutboundSa(cbc_params())
    assert isinstance(out.transform, CbcHmacTransform)
    t = out.transform
    out.protect(INNER)
    assert out.transform is t


def test_replace_params_keeps_validation() -> None:
    with pytest.raises(LocalProtocolError):
        replace(params(), spi=0)


@settings(max_examples=150, deadline=None)
@given(
    suite=st.sampled_from(list(SUITE_PARAMS)),
    esn=st.booleans(),
    start=st.integers(min_value=0, max_value=(1 << 34)),
    sizes=st.lists(st.integers(min_value=0, max_value=1500), min_size=1, max_size=6),
    window=st.sampled_from([0, 64, 1024, 4096]),
    transport=st.booleans(),
)
def test_round_trip_property(suite: str, esn: bool, start: int, sizes: list[int], window: int, transport: bool) -> None:
    p = SUITE_PARAMS[suite](  # type: ignore[operator]
        esn=esn, replay_window=window, mode=Mode.TRANSPORT if transport else Mode.TUNNEL
    )
    if not esn:
        start %= 0xFFFFFFFF - len(sizes)
    out, inb = OutboundSa(p), InboundSa(p)
    out.seq = inb.replay.top = start
    src, dst = p.remote_addr.packed, p.local_addr.packed
    for n in sizes:
        payload = os.urandom(n)
        pkt = build_ipv4_header(src, dst, 253, n) + payload  # protocol 253: experimentation
        got = inb.unprotect(out.protect(pkt))
        if transport:
            assert got[20:] == payload and got[9] == 253 and got[12:20] == src + dst
        else:
            assert got == pkt
    assert inb.highest_seq == start + len(sizes)


# --- the inlined AEAD tunnel paths must behave exactly like the generic ones ----------------------

# Selector configurations that exercise each way the inlined path checks selectors: precomputed
# single ranges (v4 and v6), merged adjacent ranges, an empty range (no v6 allowed), ranges with
# a gap (full check), protocol/port selectors (full check) and "no restriction".
FAST_TS: dict[str, dict[str, tuple[Selector, ...]]] = {
    "none": {},
    "single": {
        "local_ts": (Selector.from_prefix("10.1.0.0/16"), Selector.from_prefix("fd00:1::/64")),
        "remote_ts": (Selector.from_prefix("10.2.0.0/16"), Selector.from_prefix("fd00:2::/64")),
    },
    "merged": {
        "local_ts": (Selector.from_prefix("0.0.0.0/1"), Selector.from_prefix("128.0.0.0/1")),
        "remote_ts": (Selector.from_range("10.2.0.0", "10.2.0.9"), Selector.from_range("10.2.0.10", "10.2.0.255")),
    },
    "gap": {
        "local_ts": (Selector.from_prefix("10.1.0.0/24"), Selector.from_prefix("10.1.2.0/24")),
        "remote_ts": (Selector.any(4), Selector.any(6)),
    },
    "ports": {
        "local_ts": (Selector.from_prefix("10.1.0.0/16"),),
        "remote_ts": (Selector.from_prefix("10.2.0.0/16", proto=17, ports=(5000, 5000)),),
    },
}


def _generic(sa: InboundSa) -> InboundSa:
    """The same SA with the inlined path switched off (what every non-AEAD/ESN/transport SA uses)."""
    sa.transform  # noqa: B018 (built first: building sets up the inlined path)
    sa._fast = None
    return sa


def _built(sa: InboundSa) -> InboundSa:
    """The SA once its cipher context exists (built on the first packet, or here)."""
    sa.transform  # noqa: B018
    return sa


def _outcome(sa: InboundSa, esp: bytes) -> bytes | DropReason:
    try:
        return sa.unprotect(esp)
    except EspDrop as e:
        return e.reason


def test_fast_path_is_used_and_bounds_are_precomputed() -> None:
    assert InboundSa(params(**FAST_TS["single"]))._fast is None  # type: ignore[arg-type]  # no context before use
    assert _built(InboundSa(params(**FAST_TS["single"])))._fast is not None  # type: ignore[arg-type]
    assert _built(InboundSa(params(esn=True)))._fast is None
    assert _built(InboundSa(params(mode=Mode.TRANSPORT)))._fast is None
    assert _built(InboundSa(cbc_params()))._fast is None
    fast = _built(InboundSa(params(**FAST_TS["merged"])))._fast  # type: ignore[arg-type]
    assert fast is not None
    v4, v6 = fast[6], fast[7]
    assert v4 == (0x0A020000, 0x0A0200FF, 0, 0xFFFFFFFF)
    assert v6 is not None and v6[0] > v6[1]  # no IPv6 selector on either side: nothing passes
    fast = _built(InboundSa(params(**FAST_TS["gap"])))._fast  # type: ignore[arg-type]
    assert fast is not None and fast[6] is None  # two ranges: the full check


_inner_parts = st.tuples(
    st.sampled_from([4, 6]),
    st.sampled_from(["10.2.0.7", "10.3.0.7", "fd00:2::7", "fd00:3::7"]),
    st.sampled_from(["10.1.0.5", "10.1.2.5", "10.1.1.5", "fd00:1::5"]),
    st.sampled_from([6, 17, 58]),
    st.binary(max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(
    which=st.sampled_from(list(FAST_TS)),
    inner=_inner_parts,
    length_delta=st.sampled_from([0, 0, 0, -1, 1, -30, 300]),
    first_byte=st.sampled_from([None, None, 0x44, 0x46, 0x55, 0x60, 0x45]),
    pad_len=st.integers(min_value=0, max_value=9),
    bad_pad=st.sampled_from([False, False, False, True]),
    nh=st.sampled_from([None, None, 4, 41, 59, 17]),
    tfc=st.binary(max_size=5),
)
def test_fast_and_generic_unprotect_agree(
    which: str,
    inner: tuple[int, str, str, int, bytes],
    length_delta: int,
    first_byte: int | None,
    pad_len: int,
    bad_pad: bool,
    nh: int | None,
    tfc: bytes,
) -> None:
    """Authentic packets with valid and subtly broken inner headers, padding, trailers and
    selectors: the inlined path must return the same packet or drop for the same reason."""
    version, src, dst, proto, payload = inner
    if (":" in src) != (version == 6):
        src = "10.2.0.7" if version == 4 else "fd00:2::7"
    if (":" in dst) != (version == 6):
        dst = "10.1.0.5" if version == 4 else "fd00:1::5"
    l4 = UDP(sport=5000, dport=53) if proto == 17 else TCP(sport=5000, dport=53) if proto == 6 else Raw(b"")
    ip = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
    pkt = bytearray(bytes(ip / l4 / Raw(payload)))
    if length_delta:
        field = (2, 4) if version == 4 else (4, 6)
        value = int.from_bytes(pkt[field[0] : field[1]], "big") + length_delta
        pkt[field[0] : field[1]] = (value % 0x10000).to_bytes(2, "big")
    if first_byte is not None:
        # IPv4: odd IHL/version values; IPv6: other traffic-class nibbles, or a v4 first byte
        pkt[0] = first_byte if version == 4 else 0x45 if first_byte == 0x60 else 0x60 | (first_byte & 0x0F)
    padding = bytearray(range(1, pad_len + 1))
    if bad_pad and padding:
        padding[-1] ^= 0xFF
    trailer_nh = nh if nh is not None else (4 if version == 4 else 41)
    plain = bytes(pkt) + tfc + bytes(padding) + bytes((pad_len, trailer_nh))
    p = params(**FAST_TS[which])  # type: ignore[arg-type]
    esp = aead_forge(p, 1, plain)
    fast_sa, generic_sa = _built(InboundSa(p)), _generic(InboundSa(p))
    assert fast_sa._fast is not None
    result = _outcome(fast_sa, esp)
    event(result if isinstance(result, DropReason) else "accepted")
    assert result == _outcome(generic_sa, esp)
    assert fast_sa.counters == generic_sa.counters
    assert fast_sa.replay == generic_sa.replay


@settings(max_examples=150, deadline=None)
@given(
    window=st.sampled_from([0, 1, 64, 1024]),
    start=st.integers(min_value=0, max_value=0xFFFFFFFF - 3000),
    offsets=st.lists(st.integers(min_value=-1100, max_value=1100), min_size=1, max_size=40),
    forged=st.sets(st.integers(min_value=0, max_value=39)),
)
def test_fast_replay_matches_generic(window: int, start: int, offsets: list[int], forged: set[int]) -> None:
    """Reordered, duplicated, far-ahead and forged packets: the inlined replay handling (the
    pre-check before the AEAD, the window moving only for authentic packets, RFC 4303 3.4.3)
    gives the generic path's results packet by packet."""
    p = params(replay_window=window)
    out = OutboundSa(p)
    fast_sa, generic_sa = _built(InboundSa(p)), _generic(InboundSa(p))
    fast_sa.replay.top = generic_sa.replay.top = start
    for i, off in enumerate(offsets):
        seq = start + off
        if not 0 <= seq <= 0xFFFFFFFF:
            continue
        out.seq = seq - 1 if seq else 0xFFFFFFFF  # protect() uses seq (0 only via a forged header)
        if seq == 0:
            esp = bytearray(OutboundSa(p).protect(INNER))
            esp[4:8] = bytes(4)
        else:
            esp = bytearray(out.protect(INNER))
        if i in forged:
            esp[-1] ^= 1  # the tag no longer verifies
        result = _outcome(fast_sa, bytes(esp))
        event(result if isinstance(result, DropReason) else "accepted")
        assert result == _outcome(generic_sa, bytes(esp))
        assert fast_sa.replay == generic_sa.replay


@settings(max_examples=150, deadline=None)
@given(pkt=st.binary(max_size=80), version=st.sampled_from([4, 6, None]), seq=st.integers(0, 0xFFFFFFFF))
def test_fast_and_generic_protect_agree(pkt: bytes, version: int | None, seq: int) -> None:
    """Same bytes out (or the same drop) from the inlined and the generic protect."""
    if version == 4:
        pkt = bytes(IP(src="10.1.0.5", dst="10.2.0.7") / Raw(pkt))
    elif version == 6:
        pkt = bytes(IPv6(src="fd00:1::5", dst="fd00:2::7") / Raw(pkt))
    fast, generic = OutboundSa(params()), OutboundSa(params())
    fast.transform, generic.transform  # noqa: B018 (built: the first packet would build them)
    generic._fast = None
    assert fast._fast is not None
    fast.seq = generic.seq = seq

    def outcome(sa: OutboundSa) -> bytes | DropReason:
        try:
            return sa.protect(pkt)
        except EspDrop as e:
            return e.reason

    assert outcome(fast) == outcome(generic)
    assert fast.seq == generic.seq and fast.counters == generic.counters


def test_cipher_context_is_built_on_first_packet_and_can_be_released() -> None:
    """An idle SA holds no OpenSSL context (issue 11, memory per tunnel): it is built on the
    first packet, dropped by release_transform() and built again by the next packet."""
    p = params()
    out, inb = OutboundSa(p), InboundSa(p)
    assert out._transform is None and inb._transform is None
    first = out.protect(INNER)
    assert out._fast is not None and inb._transform is None
    assert inb.unprotect(first) == INNER and inb._fast is not None
    assert out.release_transform() and inb.release_transform()
    assert not out.release_transform()
    assert out._transform is None and inb._fast is None
    second = out.protect(INNER)
    assert inb.unprotect(second) == INNER
    assert out.seq == 2 and inb.replay.top == 2 and inb.counters.packets == 2
    with pytest.raises(EspDrop):
        inb.unprotect(first)  # the window survived the release: still a replay
    cbc = cbc_params()
    out_cbc, in_cbc = OutboundSa(cbc), InboundSa(cbc)
    assert in_cbc.unprotect(out_cbc.protect(INNER)) == INNER
    out_cbc.release_transform()
    in_cbc.release_transform()
    assert in_cbc.unprotect(out_cbc.protect(INNER)) == INNER
