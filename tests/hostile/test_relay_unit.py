"""The lossy relay's decisions and frame handling, without namespaces (tests/lossy_relay.py)."""

from __future__ import annotations

import struct

from tests.lossy_relay import Impairer, Impairment, classify, zero_udp_checksum

ETH = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"


def _ipv4(proto: int, payload: bytes) -> bytes:
    return ETH + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                             bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2))) + payload


def _udp(sport: int, dport: int, body: bytes, csum: int = 0xBEEF) -> bytes:
    return _ipv4(17, struct.pack("!HHHH", sport, dport, 8 + len(body), csum) + body)


def test_classify() -> None:
    assert classify(_udp(500, 500, b"\x11" * 28)) == "ike"
    assert classify(_udp(4500, 4500, b"\x00\x00\x00\x00" + b"\x11" * 28)) == "ike"  # non-ESP marker
    assert classify(_udp(4500, 4500, b"\xc0\xff\xee\x01" + b"\x00" * 20)) == "esp"  # ESP in UDP (RFC 3948)
    assert classify(_udp(4500, 4500, b"\xff")) == "ip"  # NAT-T keepalive
    assert classify(_ipv4(50, b"\xc0\xff\xee\x01" + b"\x00" * 20)) == "esp"
    assert classify(_ipv4(1, b"\x08\x00" + b"\x00" * 30)) == "ip"
    assert classify(b"\xff" * 12 + b"\x08\x06" + b"\x00" * 28) is None  # ARP: never harmed


def test_udp_checksum_is_zeroed_and_other_frames_untouched() -> None:
    frame = _udp(500, 500, b"x" * 30)
    out = zero_udp_checksum(frame)
    assert len(out) == len(frame) and out[40:42] == b"\x00\x00" and out[:40] == frame[:40]
    esp = _ipv4(50, b"\x01" * 24)
    assert zero_udp_checksum(esp) == esp


def test_decisions_are_deterministic_and_near_the_asked_rates() -> None:
    imp = Impairment(loss=0.2, reorder=0.1, seed=7)
    frames = [_udp(500, 500, bytes([i % 256]) * 40) for i in range(5000)]
    a, b = Impairer(imp), Impairer(imp)
    da = [a.decide(f) for f in frames]
    assert da == [b.decide(f) for f in frames]
    dropped = sum(d is None for d in da)
    held = sum(1 for d in da if d)
    assert 900 < dropped < 1100 and 320 < held < 480, (dropped, held)
    assert a.stats.dropped == dropped and a.stats.by_kind["ike"] == [5000, dropped]


def test_unselected_traffic_passes_and_drop_by_index() -> None:
    imp = Impairment(loss=1.0, match="ike")
    i = Impairer(imp)
    assert i.decide(_ipv4(50, b"\x01" * 24)) == 0.0  # ESP not selected: passes even at 100 % loss
    assert i.decide(_udp(500, 500, b"x" * 30)) is None
    exact = Impairer(Impairment(match="ike", drop=(1, 3)))
    assert [exact.decide(_udp(500, 500, b"y" * 30)) for _ in range(5)] == [0.0, None, 0.0, None, 0.0]
