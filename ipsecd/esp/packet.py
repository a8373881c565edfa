"""IP packet helpers for the ESP data plane: selector extraction, ICMP "too big", MSS clamp.

Everything here takes raw packets from a TUN device or a decrypted ESP payload, so every
length is checked before it is used, and malformed input yields ``None`` (or the packet
unchanged, for the MSS clamp) rather than an exception: the caller decides whether that is
a drop and counts it.

IPv6 extension headers understood by :func:`parse_ip`: Hop-by-Hop (0), Routing (43),
Fragment (44), Destination Options (60) and AH (51), at most ``MAX_EXT_HEADERS`` of them;
any other next header value is taken as the upper-layer protocol (ESP, 50, included: its
payload is opaque).

Ports of a packet (RFC 4301 4.4.1.1): TCP, UDP, UDP-Lite and SCTP carry them in their first
4 bytes. ICMP and ICMPv6 put type and code in the "port" as ``type << 8 | code`` (RFC 7296
3.13.1), reported for both source and destination. Non-first fragments, truncated headers
and protocols without ports have no ports at all: ``None``, which the SPD treats as OPAQUE.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from ipsecd.esp.transform import ESP_HEADER_LEN, TRAILER_LEN, suite_spec
from ipsecd.iana import IpProto

if TYPE_CHECKING:
    from ipsecd.esp.sa import SaParams

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
UDP_HEADER_LEN = 8
ICMP_HEADER_LEN = 8
MAX_EXT_HEADERS = 8
IPV4_MIN_MTU = 68  # RFC 791
IPV6_MIN_MTU = 1280  # RFC 8200 section 5
ICMPV4_ERROR_MAX = 576  # RFC 1812 4.3.2.3: an ICMP error datagram need not exceed 576 bytes
DEFAULT_TTL = 64

_PORT_PROTOS = frozenset((IpProto.TCP, IpProto.UDP, 132, 136))  # + SCTP, UDP-Lite
_ICMP_ERROR_TYPES_V4 = frozenset((3, 4, 5, 11, 12))  # RFC 1122 3.2.2: never answer these
_V6_EXT_8 = frozenset((0, 43, 60))  # length field in 8-octet units, first 8 not counted
_V6_FRAGMENT = 44
_V6_AH = 51

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PORTS = struct.Struct("!HH")
_unpack_v4_fixed = struct.Struct("!BxHxxHxBxxII").unpack_from  # ver/IHL, length, frag, proto, src, dst
_V6_ADDRS = struct.Struct("!QQQQ")
_V4_HDR = struct.Struct("!BBHHHBBH4s4s")
_V6_HDR = struct.Struct("!IHBB16s16s")
_ICMP_HDR = struct.Struct("!BBHI")

# Parsed selector fields: version, src, dst, protocol, source port, destination port,
# offset of the upper-layer header.
ParsedIp = tuple[int, bytes, bytes, int, int | None, int | None, int]
ParsedIpInts = tuple[int, int, int, int, int | None, int | None, int]


def inet_checksum(data: bytes, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of ``data``, plus an already summed ``initial`` value.

    Sums with one big-integer conversion instead of a Python loop over 16-bit words: as
    2^16 = 1 (mod 0xFFFF), the whole buffer read as one big-endian number is congruent to
    the sum of its words, so ``N % 0xFFFF`` is the one's complement sum (with 0 standing
    for 0xFFFF unless everything was zero).
    """
    if len(data) & 1:
        data += b"\x00"
    total = int.from_bytes(data, "big") + initial
    folded = total % 0xFFFF
    if folded == 0 and total:
        folded = 0xFFFF
    return ~folded & 0xFFFF


def _pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """One's complement sum contribution of the TCP/UDP/ICMPv6 pseudo-header (RFC 793, RFC 8200 8.1)."""
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length


def parse_ip_ints(packet: bytes) -> ParsedIpInts | None:
    """Like :func:`parse_ip` but with addresses as integers: what the SPD matches on.

    Returns None for anything that is not a well-formed IPv4/IPv6 header (wrong version,
    truncated, lengths that disagree, too many extension headers).
    """
    n = len(packet)
    if n < IPV4_HEADER_LEN:
        return None
    version = packet[0] >> 4
    if version == 4:
        # one unpack for the whole fixed header: this runs for every outbound packet (SPD)
        vihl, total, frag, proto, src, dst = _unpack_v4_fixed(packet)
        hlen = (vihl & 0x0F) * 4
        if hlen < IPV4_HEADER_LEN or total < hlen or total > n:
            return None
        if frag & 0x1FFF:  # non-first fragment: no ports
            return version, src, dst, proto, None, None, hlen
        end = total
    elif version == 6:
        if n < IPV6_HEADER_LEN:
            return None
        end = IPV6_HEADER_LEN + _U16.unpack_from(packet, 4)[0]
        if end > n:
            return None
        s_hi, s_lo, d_hi, d_lo = _V6_ADDRS.unpack_from(packet, 8)
        src = (s_hi << 64) | s_lo
        dst = (d_hi << 64) | d_lo
        proto = packet[6]
        hlen = IPV6_HEADER_LEN
        for _ in range(MAX_EXT_HEADERS):
            if proto in _V6_EXT_8:
                if hlen + 2 > end:
                    return None
                proto, ext_len = packet[hlen], (packet[hlen + 1] + 1) * 8
            elif proto == _V6_FRAGMENT:
                if hlen + 8 > end:
                    return None
                next_proto = packet[hlen]
                if _U16.unpack_from(packet, hlen + 2)[0] & 0xFFF8:  # offset != 0: non-first
                    return version, src, dst, next_proto, None, None, hlen + 8
                proto, ext_len = next_proto, 8
            elif proto == _V6_AH:
                if hlen + 2 > end:
                    return None
                proto, ext_len = packet[hlen], (packet[hlen + 1] + 2) * 4
            else:
                break
            hlen += ext_len
            if hlen > end:
                return None
        else:
            return None
    else:
        return None
    if proto in _PORT_PROTOS:
        if hlen + 4 <= end:
            sport, dport = _PORTS.unpack_from(packet, hlen)
            return version, src, dst, proto, sport, dport, hlen
        return version, src, dst, proto, None, None, hlen
    if (proto == IpProto.ICMP or proto == IpProto.IPV6_ICMP) and hlen + 2 <= end:
        tc = _U16.unpack_from(packet, hlen)[0]
        return version, src, dst, proto, tc, tc, hlen
    return version, src, dst, proto, None, None, hlen


def parse_ip(packet: bytes) -> ParsedIp | None:
    """``(version, src, dst, proto, sport, dport, header_len)`` of an IP packet, or None.

    ``src``/``dst`` are the raw 4- or 16-byte addresses; ``header_len`` is the offset of the
    upper-layer header (after IPv4 options or the IPv6 extension headers listed in the
    module docstring); ports are None when the packet has none (see module docstring).
    """
    parsed = parse_ip_ints(packet)
    if parsed is None:
        return None
    version, _s, _d, proto, sport, dport, hlen = parsed
    if version == 4:
        return version, packet[12:16], packet[16:20], proto, sport, dport, hlen
    return version, packet[8:24], packet[24:40], proto, sport, dport, hlen


def _addr_bytes(addr: IPv4Address | IPv6Address | bytes) -> bytes:
    return addr if isinstance(addr, bytes) else addr.packed


def build_ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = DEFAULT_TTL) -> bytes:
    """A 20-byte IPv4 header (no options, ID 0, DF clear) with its checksum filled in."""
    hdr = _V4_HDR.pack(0x45, 0, IPV4_HEADER_LEN + payload_len, 0, 0, ttl, proto, 0, src, dst)
    return hdr[:10] + _U16.pack(inet_checksum(hdr)) + hdr[12:]


def build_ipv6_header(
    src: bytes, dst: bytes, next_header: int, payload_len: int, hop_limit: int = DEFAULT_TTL
) -> bytes:
    """A 40-byte IPv6 header, traffic class and flow label 0."""
    return _V6_HDR.pack(6 << 28, payload_len, next_header, hop_limit, src, dst)


def icmp_frag_needed(orig_packet: bytes, mtu: int, src_addr: IPv4Address | bytes) -> bytes | None:
    """ICMP Destination Unreachable / Fragmentation Needed (type 3, code 4; RFC 792, RFC 1191 4).

    Sent from ``src_addr`` (our address on the inner side) back to the sender of
    ``orig_packet`` when it does not fit the tunnel; ``mtu`` goes in the Next-Hop MTU field
    (clamped to 68..65535). The quote is as much of the original as keeps the whole error
    within 576 bytes (RFC 1812 4.3.2.3), at least the header plus 8 bytes when present.

    Returns None when no error may be sent (RFC 1122 3.2.2 / RFC 1812 4.3.2.7): the original
    is not IPv4, is malformed, is a non-first fragment, is itself an ICMP error, or came from
    an unspecified, broadcast or multicast source.
    """
    parsed = parse_ip_ints(orig_packet)
    if parsed is None or parsed[0] != 4:
        return None
    _v, src_int, _dst, proto, sport, _dport, _hlen = parsed
    if _U16.unpack_from(orig_packet, 6)[0] & 0x1FFF:
        return None
    if proto == IpProto.ICMP and (sport is None or (sport >> 8) in _ICMP_ERROR_TYPES_V4):
        return None
    if src_int == 0 or src_int == 0xFFFFFFFF or (src_int >> 28) == 0xE:
        return None
    total = _U16.unpack_from(orig_packet, 2)[0]
    quote = orig_packet[: min(total, ICMPV4_ERROR_MAX - IPV4_HEADER_LEN - ICMP_HEADER_LEN)]
    mtu = max(IPV4_MIN_MTU, min(mtu, 0xFFFF))
    icmp = _ICMP_HDR.pack(3, 4, 0, mtu) + quote  # unused (16 bits) || Next-Hop MTU (16 bits)
    icmp = icmp[:2] + _U16.pack(inet_checksum(icmp)) + icmp[4:]
    return build_ipv4_header(_addr_bytes(src_addr), orig_packet[12:16], IpProto.ICMP, len(icmp)) + icmp


def icmpv6_packet_too_big(orig_packet: bytes, mtu: int, src_addr: IPv6Address | bytes) -> bytes | None:
    """ICMPv6 Packet Too Big (type 2, code 0; RFC 4443 3.2) back to the sender of ``orig_packet``.

    ``mtu`` is reported as at least 1280 (RFC 8200 5: no IPv6 link is smaller; the tunnel
    must fragment below that). The quote is as much of the original as keeps the error
    within the minimum MTU (RFC 4443 2.4 (c)). Returns None when no error may be sent
    (RFC 4443 2.4 (e)): not IPv6, malformed, itself an ICMPv6 error, or from the unspecified
    or a multicast source.
    """
    parsed = parse_ip_ints(orig_packet)
    if parsed is None or parsed[0] != 6:
        return None
    _v, src_int, _dst, proto, sport, _dport, _hlen = parsed
    if proto == IpProto.IPV6_ICMP and (sport is None or (sport >> 8) < 128):
        return None
    if src_int == 0 or (src_int >> 120) == 0xFF:
        return None
    total = IPV6_HEADER_LEN + _U16.unpack_from(orig_packet, 4)[0]
    quote = orig_packet[: min(total, IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN)]
    src = _addr_bytes(src_addr)
    dst = orig_packet[8:24]
    icmp = _ICMP_HDR.pack(2, 0, 0, max(IPV6_MIN_MTU, min(mtu, 0xFFFFFFFF))) + quote
    csum = inet_checksum(icmp, _pseudo_header_sum(src, dst, IpProto.IPV6_ICMP, len(icmp)))
    icmp = icmp[:2] + _U16.pack(csum) + icmp[4:]
    return build_ipv6_header(src, dst, IpProto.IPV6_ICMP, len(icmp)) + icmp


_IPV4_DF, _IPV4_MF = 0x4000, 0x2000
_IPV4_COPIED = 0x80  # option type bit: copied into every fragment (RFC 791 3.1)


def _options_for_later_fragments(options: bytes) -> bytes:
    """The IPv4 options a non-first fragment carries: only those with the copied flag,
    padded to a 4-byte multiple (RFC 791 3.2)."""
    out = bytearray()
    pos = 0
    while pos < len(options):
        kind = options[pos]
        if kind == 0:  # End of Option List
            break
        if kind == 1:  # No Operation
            pos += 1
            continue
        if pos + 1 >= len(options) or options[pos + 1] < 2:
            break
        size = options[pos + 1]
        if kind & _IPV4_COPIED:
            out += options[pos : pos + size]
        pos += size
    out += bytes(-len(out) % 4)
    return bytes(out)


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes] | None:
    """Cut an IPv4 packet into fragments of at most ``mtu`` octets (RFC 791 3.2), or None when
    it must not or cannot be: DF set, malformed, or ``mtu`` too small for 8 octets of data.

    The tunnel uses this before encryption for a packet that does not fit the SA: the
    fragments each travel in their own ESP packet and the far end's host reassembles them,
    so nothing depends on the outer path passing IP fragments (many drop them). A packet
    that is itself a fragment is cut further, keeping its offset and MF.
    """
    n = len(packet)
    if n < IPV4_HEADER_LEN or packet[0] >> 4 != 4:
        return None
    hlen = (packet[0] & 0x0F) * 4
    total = _U16.unpack_from(packet, 2)[0]
    flags_offset = _U16.unpack_from(packet, 6)[0]
    if hlen < IPV4_HEADER_LEN or total < hlen or total > n or flags_offset & _IPV4_DF:
        return None
    if total <= mtu:
        return [packet[:total]]
    header, payload = packet[:hlen], packet[hlen:total]
    later = packet[:IPV4_HEADER_LEN] + _options_for_later_fragments(packet[IPV4_HEADER_LEN:hlen])
    offset, more = flags_offset & 0x1FFF, flags_offset & _IPV4_MF
    out: list[bytes] = []
    pos = 0
    while pos < len(payload):
        head = header if not out else later
        room = (mtu - len(head)) // 8 * 8
        if room < 8:
            return None
        piece = payload[pos : pos + room]
        last = pos + len(piece) >= len(payload)
        frag = bytearray(head + piece)
        frag[0] = 0x40 | (len(head) // 4)
        _U16.pack_into(frag, 2, len(frag))
        _U16.pack_into(frag, 6, (offset + pos // 8) | (more if last else _IPV4_MF))
        _U16.pack_into(frag, 10, 0)
        _U16.pack_into(frag, 10, inet_checksum(bytes(frag[: len(head)])))
        out.append(bytes(frag))
        pos += len(piece)
    return out


def _csum_replace16(checksum: int, old: int, new: int) -> int:
    """Incremental checksum update HC' = ~(~HC + ~m + m') (RFC 1624 section 3, eqn. 3)."""
    total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def clamp_tcp_mss(packet: bytes | bytearray, mss: int) -> bytes:
    """Lower the MSS option of a TCP SYN (or SYN-ACK) to ``mss``; other packets pass unchanged.

    Why: hosts behind the tunnel pick their MSS from their own MTU, and PMTUD through a
    tunnel is fragile (ICMP filtered); clamping keeps TCP segments within the tunnel MTU.
    The TCP checksum is patched incrementally (RFC 1624) rather than recomputed, which
    also works for options at an odd offset (RFC 1071 byte-order independence: a field at
    an odd offset contributes its byte-swapped value to the sum).
    Never raises: malformed packets come back unchanged (as bytes).
    """
    data = bytes(packet)
    parsed = parse_ip_ints(data)
    if parsed is None or parsed[3] != IpProto.TCP or parsed[4] is None:
        return data
    tcp = parsed[6]
    n = len(data)
    if tcp + 20 > n or not data[tcp + 13] & 0x02:  # no full header, or not SYN
        return data
    doff = (data[tcp + 12] >> 4) * 4
    if doff < 20 or tcp + doff > n:
        return data
    pos = tcp + 20
    end = tcp + doff
    while pos < end:
        kind = data[pos]
        if kind == 0:  # End of Option List
            break
        if kind == 1:  # No-Operation
            pos += 1
            continue
        if pos + 2 > end:
            break
        olen = data[pos + 1]
        if olen < 2 or pos + olen > end:
            break
        if kind == 2 and olen == 4:  # Maximum Segment Size (RFC 9293 3.2)
            old = _U16.unpack_from(data, pos + 2)[0]
            if old <= mss:
                return data
            new = max(0, min(mss, 0xFFFF))
            csum = _U16.unpack_from(data, tcp + 16)[0]
            if (pos + 2 - tcp) & 1:
                old_w, new_w = ((old & 0xFF) << 8) | (old >> 8), ((new & 0xFF) << 8) | (new >> 8)
            else:
                old_w, new_w = old, new
            out = bytearray(data)
            _U16.pack_into(out, pos + 2, new)
            _U16.pack_into(out, tcp + 16, _csum_replace16(csum, old_w, new_w))
            return bytes(out)
        pos += olen
    return data


def esp_overhead(params: SaParams) -> int:
    """Worst-case bytes ESP adds to a packet under ``params`` (outer IP header excluded).

    ``8`` (SPI + sequence number) ``+ IV`` (8 for GCM/ChaCha20, 16 for CBC, 0 for NULL)
    ``+ (align - 1)`` (the most padding needed to reach the alignment: 4 for the AEADs and
    NULL, the 16-byte block for CBC) ``+ 2`` (pad length + next header) ``+ ICV`` (16 for the
    AEADs, the truncated HMAC length otherwise) ``+ 8`` with UDP encapsulation (RFC 3948).
    E.g. AES-GCM with NAT-T: 8 + 8 + 3 + 2 + 16 + 8 = 45. In tunnel mode the whole inner
    packet is the payload, so ``TUN MTU = path MTU - outer IP header - esp_overhead``
    always fits; :func:`tun_mtu` computes the exact (slightly larger) value.
    """
    spec = suite_spec(params.encr, params.integ)
    udp = UDP_HEADER_LEN if params.encap else 0
    return ESP_HEADER_LEN + spec.iv_len + spec.align - 1 + TRAILER_LEN + spec.icv_len + udp


def tun_mtu(params: SaParams, path_mtu: int) -> int:
    """Largest inner packet that still fits ``path_mtu`` once ESP-protected (tunnel mode).

    The space left after the outer IP header (20/40 bytes by the family of the outer
    addresses), UDP, the ESP header, IV and ICV must hold ``payload + 2`` rounded up to the
    alignment, so the payload may be ``floor(space / align) * align - 2``.
    """
    spec = suite_spec(params.encr, params.integ)
    outer = IPV4_HEADER_LEN if params.remote_addr.version == 4 else IPV6_HEADER_LEN
    udp = UDP_HEADER_LEN if params.encap else 0
    space = path_mtu - outer - udp - ESP_HEADER_LEN - spec.iv_len - spec.icv_len
    return max(0, (space // spec.align) * spec.align - TRAILER_LEN)
