"""IP Payload Compression (RFC 3173) with DEFLATE (RFC 2394), as a step inside an ESP or AH SA.

IKEv2 negotiates IPComp only next to an ESP or AH Child SA (RFC 7296 2.22, IPCOMP_SUPPORTED),
so compression is not an SA of its own here but a step of that SA's packet path:

* outbound, before ESP/AH (RFC 3173 2.2 / 5: compression comes first, encryption cannot be
  compressed): ``payload, next header -> IPComp header || deflate(payload), 108`` -- or the
  payload unchanged when compressing does not pay;
* inbound, after ESP/AH: a next header of 108 (IPComp) is decompressed back to the
  original payload and its own next header; anything else passes through as sent.

What "payload" is follows the mode of the enclosing SA, as for ESP: the whole inner packet
in tunnel mode (next header 4/41), the upper-layer data in transport mode.

Rules kept (RFC 3173 2.2, 3.2, 3.3):

* Compress-only-if-smaller: a packet whose compressed form plus the 4-byte IPComp header
  is not smaller than the original goes out uncompressed, without an IPComp header; the
  receiver accepts both.
* A 'do not compress' threshold: payloads shorter than :data:`DEFLATE_THRESHOLD` bytes are
  sent as they are without trying. 90 bytes is what Linux uses for deflate
  (``xfrm_algo.c``, the ``threshold`` of its deflate entry), so small packets (TCP ACKs,
  pings) cost no compression attempt in either implementation.
* Each packet is compressed on its own (RFC 3173 2.1: no history across packets), so a
  lost or reordered packet never affects another.
* Back-off for incompressible traffic (:class:`Compressor`, one per outbound SA): after
  :data:`BACKOFF_AFTER` packets in a row that did not shrink (already compressed or
  encrypted data), the next :data:`BACKOFF_PACKETS` are sent uncompressed without trying.
  Deflating a 1400-byte packet costs 10-20 times its encryption here, all of it wasted on
  such a flow; sending uncompressed is always allowed (the receiver must accept both, RFC
  3173 2.2), so this changes only how often compression is attempted.
* The receiver bounds what it inflates: at most :data:`MAX_DECOMPRESSED` bytes (an IP
  packet's maximum), so a small "zip bomb" cannot make it allocate more.

DEFLATE details (RFC 2394 2): raw deflate, no zlib header or checksum. We compress with a
2 KiB window (``wbits=-11``) because that is what Linux's IPComp inflates with; a packet up
to the MTU never references further back anyway, and it keeps jumbo frames interoperable.
We inflate with the largest window (``wbits=-15``), which reads any raw deflate stream.
"""

from __future__ import annotations

import struct
import zlib

from ipsecd.iana import IpProto

IPCOMP_HEADER_LEN = 4  # Next Header (1), Flags (1), CPI (2): RFC 3173 2.2
DEFLATE_THRESHOLD = 90  # bytes of payload below which compression is not attempted (Linux's value)
MAX_DECOMPRESSED = 65535  # no IP packet is larger
CPI_MIN = 256  # RFC 3173 3.3: 0-63 well known, 64-255 reserved; negotiated CPIs from 256
CPI_MAX = 61439  # 61440-65535 are for private use
COMPRESS_WBITS = -11  # raw deflate, 2 KiB window (Linux's DEFLATE_DEF_WINBITS)
DECOMPRESS_WBITS = -15  # raw deflate, any window
NH_IPCOMP = int(IpProto.IPCOMP)

_HDR = struct.Struct("!BBH")


class IpcompError(ValueError):
    """An IPComp payload that cannot be taken: bad header, wrong CPI, broken or oversized stream."""


def compress(payload: bytes, nh: int, cpi: int, threshold: int = DEFLATE_THRESHOLD) -> tuple[bytes, int]:
    """``(IPComp header || deflate(payload), 108)``, or ``(payload, nh)`` when it does not pay.

    ``cpi`` is the peer's CPI (the one it announced in IPCOMP_SUPPORTED, RFC 7296 3.10.1), as
    an outbound ESP SA carries the peer's SPI.
    """
    if len(payload) < threshold:
        return payload, nh
    body = zlib.compress(payload, 6, COMPRESS_WBITS)
    if len(body) + IPCOMP_HEADER_LEN >= len(payload):
        return payload, nh  # RFC 3173 2.2: send the original when compression does not shrink it
    return _HDR.pack(nh, 0, cpi) + body, NH_IPCOMP


BACKOFF_AFTER = 8  # consecutive packets that did not shrink...
BACKOFF_PACKETS = 32  # ...then this many go uncompressed without an attempt


class Compressor:
    """The outbound IPComp step of one SA: :func:`compress` with the back-off described above."""

    __slots__ = ("_misses", "_skip", "cpi", "threshold")

    def __init__(self, cpi: int, threshold: int = DEFLATE_THRESHOLD) -> None:
        self.cpi = cpi
        self.threshold = threshold
        self._misses = 0
        self._skip = 0

    def __call__(self, payload: bytes, nh: int) -> tuple[bytes, int]:
        if len(payload) < self.threshold:
            return payload, nh
        if self._skip:
            self._skip -= 1
            return payload, nh
        out = compress(payload, nh, self.cpi, self.threshold)
        if out[1] == NH_IPCOMP:
            self._misses = 0
        else:
            self._misses += 1
            if self._misses >= BACKOFF_AFTER:
                self._misses = 0
                self._skip = BACKOFF_PACKETS
        return out


def decompress(data: bytes, cpi: int) -> tuple[bytes, int]:
    """The original payload and its next header from ``IPComp header || deflate stream``.

    ``cpi`` is ours (what we announced). Raises :class:`IpcompError` on a short header, a
    non-zero flags octet (RFC 3173 2.2: reserved, must be zero), another CPI, a stream that
    is broken, truncated, or followed by garbage, or one that inflates beyond
    :data:`MAX_DECOMPRESSED` bytes.
    """
    if len(data) < IPCOMP_HEADER_LEN:
        raise IpcompError("shorter than the IPComp header")
    nh, flags, got_cpi = _HDR.unpack_from(data)
    if flags:
        raise IpcompError("flags octet is not zero")
    if got_cpi != cpi:
        raise IpcompError(f"CPI {got_cpi} is not ours ({cpi})")
    d = zlib.decompressobj(DECOMPRESS_WBITS)
    try:
        out = d.decompress(data[IPCOMP_HEADER_LEN:], MAX_DECOMPRESSED)
    except zlib.error as e:
        raise IpcompError(f"deflate stream is broken: {e}") from None
    if d.unconsumed_tail:
        raise IpcompError(f"inflates beyond {MAX_DECOMPRESSED} bytes")
    if not d.eof or d.unused_data:
        raise IpcompError("deflate stream is truncated or followed by other data")
    return out, nh


__all__ = [
    "BACKOFF_AFTER",
    "BACKOFF_PACKETS",
    "CPI_MAX",
    "CPI_MIN",
    "DEFLATE_THRESHOLD",
    "IPCOMP_HEADER_LEN",
    "Compressor",
    "NH_IPCOMP",
    "IpcompError",
    "compress",
    "decompress",
]
