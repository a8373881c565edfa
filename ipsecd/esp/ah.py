"""AH Security Associations (RFC 4302): integrity for the whole packet, outer IP header included.

The sibling of :mod:`ipsecd.esp.sa` for SAs negotiated with Protocol ID AH. Sans-I/O like
it: ``AhOutboundSa.protect(ip_packet)`` and ``AhInboundSa.unprotect(packet)`` take and give
bytes and raise :class:`EspDrop` (the data plane's one drop type, same reasons and counters)
for every refused packet, whatever the input.

Why the interface differs from ESP's: AH's ICV covers the outer IP header (RFC 4302 3.3.3),
so the SA builds that header itself and the receiver needs it back.

* Outbound, ``seal`` returns the complete packet ``outer IP header || AH || payload``.
  ``protect`` returns what a raw socket sends: the same for IPv4 (sent with IP_HDRINCL,
  the kernel only fills in the header checksum, a mutable field), and the packet from the
  AH header on for IPv6, whose raw sockets never take the IPv6 header (RFC 3542 3); the
  kernel's header then equals ours in every field the ICV covers (version, payload length,
  next header 51, addresses), and the others (traffic class, flow label, hop limit) are
  mutable and zeroed for the ICV. Our IPv4 Identification comes from a per-SA counter that
  skips 0 (a zero ID is replaced by the kernel, and the ID is covered by the ICV).
* Inbound, ``unprotect`` takes the complete packet: IPv4 raw sockets deliver the header;
  for IPv6 the shell rebuilds it (:meth:`AhInboundSa.unprotect_v6`) from the addresses
  and the length, which is exact unless extension headers preceded AH -- those the kernel
  has consumed, so such packets fail the ICV (counted as ``icv``). Given a full IPv6 packet,
  Hop-by-Hop and Destination Options headers before AH are handled (their mutable option
  data zeroed, RFC 4302 3.3.3.1.2.1); a Routing header is refused (``bad_inner``).

ICV input (RFC 4302 3.3.3): the IP header with its mutable fields zeroed (IPv4: TOS, flags
and fragment offset, TTL, checksum, and the mutable options; IPv6: traffic class, flow label,
hop limit), the AH header with the ICV field zeroed (padding included), the payload and,
with ESN, the high 32 bits of the sequence number appended (RFC 4302 2.5.1, 3.3.3.1).

The ICV is the truncated HMAC of RFC 4868 (SHA-256/384/512) or RFC 2404 (SHA-1); the AH
header is padded to a multiple of 8 bytes over IPv6 and 4 over IPv4 (RFC 4302 2.6, 3.3.3.2.1).
Modes, replay window, ESN, selectors and IPComp (applied before AH outbound and after it
inbound, RFC 3173) behave as for ESP. AH cannot be UDP-encapsulated (SaParams refuses it).
"""

from __future__ import annotations

import os
import struct

from cryptography.hazmat.primitives import constant_time, hmac

from ipsecd.errors import LocalProtocolError
from ipsecd.esp.ipcomp import NH_IPCOMP, Compressor, IpcompError, decompress
from ipsecd.esp.packet import (
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    ah_header_len,
    build_ipv6_header,
    inet_checksum,
    parse_ip_ints,
)
from ipsecd.esp.replay import ReplayWindow
from ipsecd.esp.sa import (
    SEQ_MAX_32,
    SEQ_MAX_64,
    DropReason,
    EspDrop,
    IpsecProto,
    Mode,
    OutboundSa,
    SaCounters,
    SaParams,
    outbound_payload,
    selectors_match,
)
from ipsecd.esp.spd import Selector
from ipsecd.esp.transform import integ_params
from ipsecd.iana import IpProto

AH_FIXED_LEN = 12  # Next Header, Payload Len, Reserved, SPI, Sequence Number (RFC 4302 2)
NH_AH = int(IpProto.AH)
_NH_IPV4 = int(IpProto.IPV4)
_NH_IPV6 = int(IpProto.IPV6)
DEFAULT_TTL = 64

_AH_HDR = struct.Struct("!BBHII")  # next header, payload len, reserved, SPI, seq low
_V4_HDR = struct.Struct("!BBHHHBBH4s4s")
_V4_ZEROED = struct.Struct("!BxHH3xB2x4s4s")  # ver/IHL, [TOS], total, ID, [flags/frag, TTL], proto, [csum]
_V6_HDR = struct.Struct("!IHBB16s16s")
_SEQ_HI = struct.Struct("!I")
_U16 = struct.Struct("!H")
# RFC 4302 3.3.3.1.1.2 / Appendix A: IPv4 options whose value never changes in transit. All
# others are mutable and zeroed for the ICV (the option type and length bytes included).
_IMMUTABLE_V4_OPTIONS = frozenset((0, 1, 130, 133, 134, 148, 149))
_V6_OPTS_HEADERS = frozenset((0, 60))  # Hop-by-Hop, Destination Options (RFC 8200 4.3, 4.6)
_V6_ROUTING = 43


class _AhBase:
    __slots__ = ("_hmac", "_icv_len", "_v6", "counters", "params")

    def __init__(self, params: SaParams) -> None:
        if params.protocol is not IpsecProto.AH:
            raise LocalProtocolError("an AH SA needs SaParams with protocol AH")
        self.params = params
        _key_len, self._icv_len, hash_cls = integ_params(params.integ)
        self._hmac = hmac.HMAC(params.integ_key, hash_cls())  # keyed once; copied per packet
        self._v6 = params.remote_addr.version == 6
        self.counters = SaCounters()

    @property
    def spi(self) -> int:
        return self.params.spi

    def _drop(self, reason: DropReason) -> EspDrop:
        self.counters.count_drop(reason)
        return EspDrop(reason)

    def _icv(self, parts: tuple[bytes, ...], seq: int) -> bytes:
        mac = self._hmac.copy()
        for p in parts:
            mac.update(p)
        if self.params.esn:
            mac.update(_SEQ_HI.pack(seq >> 32))  # RFC 4302 2.5.1: high half, never sent
        return mac.finalize()[: self._icv_len]


class AhOutboundSa(_AhBase):
    """The sending side of an AH SA: sequence numbers, the outer header, the ICV."""

    __slots__ = ("_ah_len", "_compress", "_dst", "_ident", "_pad", "_plen_field", "_spi", "_src", "_tunnel",
                 "_zero_icv", "seq", "seq_limit")

    def __init__(self, params: SaParams) -> None:
        super().__init__(params)
        if params.local_addr.is_unspecified:
            # the ICV covers the source address, so it must be known before sending
            raise LocalProtocolError("an AH SA needs a concrete local address")
        self.seq = 0
        self.seq_limit = SEQ_MAX_64 if params.esn else SEQ_MAX_32
        self._ah_len = ah_header_len(self._icv_len, params.remote_addr.version)
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._src = params.local_addr.packed
        self._dst = params.remote_addr.packed
        # per-SA constants of the per-packet path
        self._tunnel = params.mode is Mode.TUNNEL
        self._compress = Compressor(params.ipcomp_cpi) if params.ipcomp_cpi else None
        self._spi = params.spi
        self._plen_field = self._ah_len // 4 - 2  # RFC 4302 2.2: AH length in 32-bit words, minus 2
        self._zero_icv = bytes(self._ah_len - AH_FIXED_LEN)  # ICV field (padding included) for the ICV input
        self._pad = bytes(self._ah_len - AH_FIXED_LEN - self._icv_len)  # sent after the ICV (RFC 4302 2.6)

    def __repr__(self) -> str:
        return f"<AhOutboundSa {self.params.name!r} spi=0x{self.params.spi:08x} seq={self.seq}>"

    def protect(self, ip_packet: bytes | bytearray | memoryview) -> bytes:
        """What the raw AH socket sends (module docstring): IPv4 with header, IPv6 from AH on."""
        hdr, rest = self._build(ip_packet)
        return rest if self._v6 else hdr + rest

    def seal(self, ip_packet: bytes | bytearray | memoryview) -> bytes:
        """The complete AH packet, outer IP header included."""
        hdr, rest = self._build(ip_packet)
        return hdr + rest

    def _build(self, ip_packet: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
        if ip_packet.__class__ is not bytes:
            ip_packet = bytes(ip_packet)
        seq = self.seq + 1
        if seq > self.seq_limit:  # RFC 4302 3.3.2: the counter must never cycle
            raise self._drop(DropReason.SEQ_EXHAUSTED)
        n = len(ip_packet)
        inner = outbound_payload(ip_packet, self._tunnel, self._compress)
        if inner is None:
            raise self._drop(DropReason.BAD_INNER)
        payload, nh = inner
        self.seq = seq
        ah_len = self._ah_len
        ah_fixed = _AH_HDR.pack(nh, self._plen_field, 0, self._spi, seq & SEQ_MAX_32)
        if self._v6:
            plen = ah_len + len(payload)
            if plen > 0xFFFF:
                raise self._drop(DropReason.TOO_BIG)
            hdr = build_ipv6_header(self._src, self._dst, NH_AH, plen)
            zeroed = _V6_HDR.pack(6 << 28, plen, NH_AH, 0, self._src, self._dst)
        else:
            total = IPV4_HEADER_LEN + ah_len + len(payload)
            if total > 0xFFFF:
                raise self._drop(DropReason.TOO_BIG)
            ident = self._ident = (self._ident % 0xFFFF) + 1  # 1..65535: never 0 (module docstring)
            raw = _V4_HDR.pack(0x45, 0, total, ident, 0, DEFAULT_TTL, NH_AH, 0, self._src, self._dst)
            hdr = raw[:10] + _U16.pack(inet_checksum(raw)) + raw[12:]
            zeroed = _V4_HDR.pack(0x45, 0, total, ident, 0, 0, NH_AH, 0, self._src, self._dst)
        mac = self._hmac.copy()  # _icv inlined: one call layer less per packet
        mac.update(zeroed)
        mac.update(ah_fixed)
        mac.update(self._zero_icv)
        mac.update(payload)
        if self.params.esn:
            mac.update(_SEQ_HI.pack(seq >> 32))  # RFC 4302 2.5.1
        rest = b"".join((ah_fixed, mac.finalize()[: self._icv_len], self._pad, payload))
        counters = self.counters
        counters.packets += 1
        counters.bytes += n
        return hdr, rest


class AhInboundSa(_AhBase):
    """The receiving side of an AH SA: replay window, ICV, inner-packet and selector checks.

    Order as RFC 4302 3.4: header checks, replay pre-check (3.4.3), ICV (3.4.4), only then
    the window update, then the payload (IPComp, tunnel/transport) and the selectors.
    """

    __slots__ = ("replay",)

    def __init__(self, params: SaParams) -> None:
        super().__init__(params)
        self.replay = ReplayWindow(params.replay_window, params.esn)

    def __repr__(self) -> str:
        return f"<AhInboundSa {self.params.name!r} spi=0x{self.params.spi:08x} top={self.replay.top}>"

    @property
    def highest_seq(self) -> int:
        return self.replay.top

    def unprotect_v6(self, data: bytes, src: bytes, dst: bytes) -> bytes:
        """An IPv6 raw socket's payload (AH first): the header rebuilt from the addresses."""
        if len(data) > 0xFFFF:
            raise self._drop(DropReason.MALFORMED)
        return self.unprotect(build_ipv6_header(src, dst, NH_AH, len(data), 0) + data)

    def unprotect(self, packet: bytes | bytearray | memoryview) -> bytes:
        """Verify one complete AH packet (outer IP header first); returns the IP packet for the TUN."""
        if packet.__class__ is not bytes:
            packet = bytes(packet)
        n = len(packet)
        version = packet[0] >> 4 if n else 0
        if version == 4 and n >= IPV4_HEADER_LEN:
            zeroed_hdr, ah_at, end = self._v4_header(packet)
        elif version == 6 and n >= IPV6_HEADER_LEN:
            zeroed_hdr, ah_at, end = self._v6_header(packet)
        else:
            raise self._drop(DropReason.SHORT)
        if end - ah_at < AH_FIXED_LEN + self._icv_len:
            raise self._drop(DropReason.SHORT)
        nh, plen, _res, spi, seq_low = _AH_HDR.unpack_from(packet, ah_at)
        ah_len = (plen + 2) * 4
        if spi != self.params.spi or ah_len < AH_FIXED_LEN + self._icv_len or ah_at + ah_len > end:
            raise self._drop(DropReason.MALFORMED)
        replay = self.replay
        seq = replay.check(seq_low)
        if seq is None:
            raise self._drop(DropReason.REPLAY)
        icv_at = ah_at + AH_FIXED_LEN
        got = packet[icv_at : icv_at + self._icv_len]
        payload = packet[ah_at + ah_len : end]
        want = self._icv((zeroed_hdr, packet[ah_at:icv_at], bytes(ah_len - AH_FIXED_LEN), payload), seq)
        if not constant_time.bytes_eq(want, got):
            raise self._drop(DropReason.ICV)
        replay.update(seq)
        if nh == NH_IPCOMP and self.params.ipcomp_cpi:
            try:
                payload, nh = decompress(payload, self.params.ipcomp_cpi)
            except IpcompError:
                raise self._drop(DropReason.IPCOMP) from None
        if self.params.mode is Mode.TUNNEL:
            inner = self._tunnel_inner(payload, nh)
        elif nh == int(IpProto.NO_NEXT_HEADER):
            raise self._drop(DropReason.DUMMY)
        else:
            inner = self._rebuild_transport(payload, nh, packet, version)
        self._check_selectors(inner)
        counters = self.counters
        counters.packets += 1
        counters.bytes += len(inner)
        return inner

    # -- header parsing ------------------------------------------------------
    def _v4_header(self, packet: bytes) -> tuple[bytes, int, int]:
        """The IPv4 header as the ICV sees it, where AH starts, where the packet ends."""
        first = packet[0]
        ihl = (first & 0x0F) * 4
        total = _U16.unpack_from(packet, 2)[0]
        if ihl < IPV4_HEADER_LEN or total < ihl or total > len(packet):
            raise self._drop(DropReason.MALFORMED)
        if packet[9] != NH_AH or _U16.unpack_from(packet, 6)[0] & 0x3FFF:
            raise self._drop(DropReason.MALFORMED)  # not AH, or a fragment (RFC 4302 3.4.1)
        ver_ihl, total, ident, proto, src, dst = _V4_ZEROED.unpack_from(packet)
        fixed = _V4_HDR.pack(ver_ihl, 0, total, ident, 0, 0, proto, 0, src, dst)
        if ihl == IPV4_HEADER_LEN:
            return fixed, ihl, total
        return fixed + self._v4_options(packet[IPV4_HEADER_LEN:ihl]), ihl, total

    def _v4_options(self, opts: bytes) -> bytes:
        """IPv4 options with the mutable ones zeroed whole (RFC 4302 3.3.3.1.1.2)."""
        out = bytearray(opts)
        i = 0
        while i < len(opts):
            kind = opts[i]
            if kind == 0:  # End of Option List: the rest is padding, zero anyway
                break
            if kind == 1:  # No Operation
                i += 1
                continue
            if i + 1 >= len(opts) or opts[i + 1] < 2 or i + opts[i + 1] > len(opts):
                raise self._drop(DropReason.MALFORMED)
            olen = opts[i + 1]
            if kind not in _IMMUTABLE_V4_OPTIONS:
                out[i : i + olen] = bytes(olen)
            i += olen
        return bytes(out)

    def _v6_header(self, packet: bytes) -> tuple[bytes, int, int]:
        """The IPv6 header and any options headers before AH as the ICV sees them."""
        _vtf, plen, nh, _hl, src, dst = _V6_HDR.unpack_from(packet)
        end = IPV6_HEADER_LEN + plen
        if end > len(packet):
            raise self._drop(DropReason.MALFORMED)
        parts = [_V6_HDR.pack(6 << 28, plen, nh, 0, src, dst)]
        pos = IPV6_HEADER_LEN
        while nh != NH_AH:
            if nh not in _V6_OPTS_HEADERS or pos + 8 > end:
                # a Routing header would need reordering (RFC 4302 3.3.3.1.2.2): not supported
                raise self._drop(DropReason.BAD_INNER if nh == _V6_ROUTING else DropReason.MALFORMED)
            hlen = (packet[pos + 1] + 1) * 8
            if pos + hlen > end:
                raise self._drop(DropReason.MALFORMED)
            parts.append(self._v6_options(packet[pos : pos + hlen]))
            nh = packet[pos]
            pos += hlen
        return b"".join(parts), pos, end

    def _v6_options(self, ext: bytes) -> bytes:
        """A Hop-by-Hop/Destination Options header with the data of mutable options zeroed
        (option type bit 0x20, RFC 8200 4.2; RFC 4302 3.3.3.1.2.1)."""
        out = bytearray(ext)
        i = 2
        while i < len(ext):
            otype = ext[i]
            if otype == 0:  # Pad1
                i += 1
                continue
            if i + 1 >= len(ext) or i + 2 + ext[i + 1] > len(ext):
                raise self._drop(DropReason.MALFORMED)
            olen = ext[i + 1]
            if otype & 0x20:
                out[i + 2 : i + 2 + olen] = bytes(olen)
            i += 2 + olen
        return bytes(out)

    # -- the payload ----------------------------------------------------------
    def _tunnel_inner(self, payload: bytes, nh: int) -> bytes:
        """The inner packet of a tunnel-mode payload, cut to its own length (RFC 4301 5.1.2)."""
        m = len(payload)
        first = payload[0] if m else 0
        if nh == int(IpProto.IPV4):
            if m < IPV4_HEADER_LEN or first >> 4 != 4 or (first & 0x0F) < 5:
                raise self._drop(DropReason.BAD_INNER)
            total = _U16.unpack_from(payload, 2)[0]
            if total > m or total < (first & 0x0F) * 4:
                raise self._drop(DropReason.BAD_INNER)
        elif nh == int(IpProto.IPV6):
            if m < IPV6_HEADER_LEN or first >> 4 != 6:
                raise self._drop(DropReason.BAD_INNER)
            total = IPV6_HEADER_LEN + _U16.unpack_from(payload, 4)[0]
            if total > m:
                raise self._drop(DropReason.BAD_INNER)
        elif nh == int(IpProto.NO_NEXT_HEADER):
            raise self._drop(DropReason.DUMMY)
        else:
            raise self._drop(DropReason.BAD_INNER)
        return payload if total == m else payload[:total]

    def _rebuild_transport(self, payload: bytes, nh: int, packet: bytes, version: int) -> bytes:
        """Transport mode: the outer header becomes the packet's own, with the payload's protocol
        (the AH header and anything before it removed, RFC 4302 3.1)."""
        if nh == NH_IPCOMP:
            raise self._drop(DropReason.BAD_INNER)  # IPComp without a negotiated CPI
        if version == 4:
            src, dst = packet[12:16], packet[16:20]
            if len(payload) > 0xFFFF - IPV4_HEADER_LEN:
                raise self._drop(DropReason.BAD_INNER)
            raw = _V4_HDR.pack(0x45, packet[1], IPV4_HEADER_LEN + len(payload), 0, 0, packet[8], nh, 0, src, dst)
            hdr = raw[:10] + _U16.pack(inet_checksum(raw)) + raw[12:]
        else:
            src, dst = packet[8:24], packet[24:40]
            if len(payload) > 0xFFFF:
                raise self._drop(DropReason.BAD_INNER)
            hdr = build_ipv6_header(src, dst, nh, len(payload))
        # Transport AH never crosses NAT (SaParams refuses encap): the L4 checksum is intact.
        return hdr + payload

    def _check_selectors(self, packet: bytes) -> None:
        """RFC 4301 5.2: the inner packet must fall inside the SA's negotiated selectors."""
        local_ts: tuple[Selector, ...] = self.params.local_ts
        remote_ts: tuple[Selector, ...] = self.params.remote_ts
        if not local_ts and not remote_ts:
            return
        parsed = parse_ip_ints(packet)
        if parsed is None:
            raise self._drop(DropReason.BAD_INNER)
        version, src, dst, proto, sport, dport, _hlen = parsed
        if remote_ts and not selectors_match(remote_ts, version, src, proto, sport):
            raise self._drop(DropReason.SELECTOR)
        if local_ts and not selectors_match(local_ts, version, dst, proto, dport):
            raise self._drop(DropReason.SELECTOR)


# What the data plane's outbound paths hold: an ESP or an AH SA (both: protect, seq, counters).
AnyOutboundSa = OutboundSa | AhOutboundSa

__all__ = ["AH_FIXED_LEN", "AhInboundSa", "AhOutboundSa", "AnyOutboundSa", "ah_header_len"]
