"""IPComp (RFC 3173) with DEFLATE (RFC 2394) against zlib, and inside ESP SAs.

zlib is the independent implementation of raw deflate (``wbits=-15``): what we compress it
must inflate, what it deflates (any level, any window) we must inflate. Then the rules of
RFC 3173 2.2 (compress only if smaller, the small-packet threshold, flags and CPI checks)
and the ESP integration: IPComp before encryption outbound (next header 108, the peer's CPI
in the IPComp header), after decryption inbound, uncompressed packets still accepted.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import replace
from ipaddress import ip_address

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from ipsecd.esp.ipcomp import (
    DEFLATE_THRESHOLD,
    IPCOMP_HEADER_LEN,
    MAX_DECOMPRESSED,
    IpcompError,
    compress,
    decompress,
)
from ipsecd.esp.sa import DropReason, EspDrop, InboundSa, Mode, OutboundSa, SaParams
from ipsecd.iana import EncrId, IntegId

CPI = 0x2345
TEXT = b"GET /index.html HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n" * 20


@pytest.mark.parametrize("size", [DEFLATE_THRESHOLD, 200, 1400, 9000, 60000])
def test_ours_inflates_with_zlib(size: int) -> None:
    data = (TEXT * (size // len(TEXT) + 1))[:size]
    out, nh = compress(data, 4, CPI)
    assert nh == 108
    assert out[:4] == struct.pack("!BBH", 4, 0, CPI)
    assert zlib.decompress(out[IPCOMP_HEADER_LEN:], -15) == data
    assert decompress(out, CPI) == (data, 4)


@pytest.mark.parametrize("level", [1, 6, 9])
@pytest.mark.parametrize("wbits", [-9, -11, -15])
def test_zlib_deflate_inflates_with_ours(level: int, wbits: int) -> None:
    c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    body = c.compress(TEXT) + c.flush()
    assert decompress(struct.pack("!BBH", 41, 0, CPI) + body, CPI) == (TEXT, 41)


def test_only_if_smaller_and_threshold() -> None:
    small = TEXT[: DEFLATE_THRESHOLD - 1]
    assert compress(small, 4, CPI) == (small, 4)  # below the threshold: not even tried
    noise = os.urandom(1400)
    assert compress(noise, 6, CPI) == (noise, 6)  # incompressible: sent as is (RFC 3173 2.2)


def test_refusals() -> None:
    good, _ = compress(TEXT, 4, CPI)
    with pytest.raises(IpcompError):
        decompress(good[:3], CPI)  # short header
    with pytest.raises(IpcompError):
        decompress(good, CPI + 1)  # not our CPI
    with pytest.raises(IpcompError):
        decompress(good[:1] + b"\x01" + good[2:], CPI)  # flags must be zero
    with pytest.raises(IpcompError):
        decompress(good[:-5], CPI)  # truncated stream
    with pytest.raises(IpcompError):
        decompress(good + b"junk", CPI)  # data after the stream
    with pytest.raises(IpcompError):
        decompress(good[:4] + os.urandom(100), CPI)  # garbage
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = bomb.compress(bytes(MAX_DECOMPRESSED + 1000)) + bomb.flush()
    assert len(body) < 200
    with pytest.raises(IpcompError):
        decompress(struct.pack("!BBH", 4, 0, CPI) + body, CPI)  # inflates past an IP packet


def _esp_pair(mode: Mode, cpi_out: int, cpi_in: int) -> tuple[OutboundSa, InboundSa]:
    key = os.urandom(32)
    local, remote = ip_address("192.0.2.1"), ip_address("198.51.100.2")
    p = SaParams(spi=0x1000, encr=EncrId.ENCR_NULL, encr_key=b"", integ=IntegId.AUTH_HMAC_SHA2_256_128,
                 integ_key=key, esn=False, mode=mode, local_addr=local, remote_addr=remote, ipcomp_cpi=cpi_out)
    return OutboundSa(p), InboundSa(replace(p, local_addr=remote, remote_addr=local, ipcomp_cpi=cpi_in))


def _esp_null_payload(esp: bytes) -> tuple[bytes, int]:
    """ESP with ENCR_NULL + 16-byte ICV read by hand: (payload without padding, next header)."""
    body = esp[8:-16]
    pad, nh = body[-2], body[-1]
    return body[: len(body) - 2 - pad], nh


@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
def test_esp_with_ipcomp(mode: Mode) -> None:
    out, into = _esp_pair(mode, CPI, CPI)
    if mode is Mode.TUNNEL:
        clear = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=1, dport=80) / Raw(TEXT))
    else:
        clear = bytes(IP(src="192.0.2.1", dst="198.51.100.2") / TCP(sport=1, dport=80) / Raw(TEXT))
    esp = out.protect(clear)
    payload, nh = _esp_null_payload(esp)
    assert nh == 108  # IPComp inside ESP (RFC 3173 5)
    assert payload[:4] == struct.pack("!BBH", 4 if mode is Mode.TUNNEL else 6, 0, CPI)
    inner = zlib.decompress(payload[4:], -15)
    assert inner == (clear if mode is Mode.TUNNEL else clear[20:])
    assert len(esp) < len(clear)
    got = into.unprotect(esp)
    assert got[20:] == clear[20:] if mode is Mode.TRANSPORT else got == clear
    # a small packet goes uncompressed, and the receiver takes it as well
    ping = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / UDP(sport=1, dport=2) / Raw(b"hi"))
    if mode is Mode.TRANSPORT:
        ping = bytes(IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=1, dport=2) / Raw(b"hi"))
    esp = out.protect(ping)
    assert _esp_null_payload(esp)[1] in (4, 17)
    assert into.unprotect(esp)[20:] == ping[20:]


def test_esp_ipcomp_wrong_cpi_dropped() -> None:
    out, into = _esp_pair(Mode.TUNNEL, CPI, CPI + 1)
    clear = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=1, dport=80) / Raw(TEXT))
    with pytest.raises(EspDrop) as e:
        into.unprotect(out.protect(clear))
    assert e.value.reason is DropReason.IPCOMP


def test_backoff_for_incompressible_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    """After BACKOFF_AFTER packets that did not shrink, BACKOFF_PACKETS go out without an attempt;
    then compression is tried again (and sticks while packets shrink)."""
    from ipsecd.esp import ipcomp

    calls: list[int] = []
    real = ipcomp.compress

    def counting(payload: bytes, nh: int, cpi: int, threshold: int = DEFLATE_THRESHOLD) -> tuple[bytes, int]:
        calls.append(len(payload))
        return real(payload, nh, cpi, threshold)

    monkeypatch.setattr(ipcomp, "compress", counting)
    c = ipcomp.Compressor(CPI)
    noise = [os.urandom(1400) for _ in range(ipcomp.BACKOFF_AFTER + ipcomp.BACKOFF_PACKETS)]
    assert all(c(p, 4) == (p, 4) for p in noise)  # every one goes out as it came
    assert len(calls) == ipcomp.BACKOFF_AFTER  # only the first ones were tried
    assert c(TEXT, 4)[1] == 108 and len(calls) == ipcomp.BACKOFF_AFTER + 1  # tried again: it shrinks
    for _ in range(ipcomp.BACKOFF_AFTER - 1):  # misses reset by a success: no back-off yet
        c(os.urandom(1400), 4)
    assert c(TEXT, 4)[1] == 108
    assert c(b"x" * 10, 4) == (b"x" * 10, 4)  # under the threshold: neither tried nor counted
