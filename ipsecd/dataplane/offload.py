"""TUN offloads, sans-I/O: virtio-net headers, TSO/USO segmentation, TCP receive coalescing.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (tun.py) the kernel hands the TUN reader TCP
super-segments of up to 64 KiB (and UDP ones with USO) behind a ``struct virtio_net_hdr``,
and accepts such super-packets on write.  One read then feeds dozens of ESP packets and one
write delivers dozens of decrypted segments: the syscalls per byte, the data plane's real
budget (docs/performance.md), drop by the same factor.

The semantics are virtio-net's (virtio spec 1.2, 5.1.6.2 "Packet Transmission"):

* ``flags & NEEDS_CSUM``: the L4 checksum is not finished.  The field at
  ``csum_start + csum_offset`` holds the pseudo-header sum; the sender of the packet must
  fold the ones' complement sum from ``csum_start`` to the end into it.
* ``gso_type`` TCPV4 / TCPV6 / UDP_L4 with ``gso_size``: the payload after the L4 header is
  to be cut into ``gso_size`` pieces, each with its own copy of the headers (IP length,
  IPv4 id +1 per segment, TCP sequence advanced, FIN/PSH only on the last piece, CWR only
  on the first, every checksum complete).
* ``hdr_len`` is a hint only (the kernel's own ``virtio_net_hdr_to_skb`` recomputes it);
  the L4 header is found at ``csum_start`` and its length read from the packet.

Nothing here trusts the header: every offset is checked against the packet before slicing
and a malformed super-packet raises :class:`OffloadError` (the worker counts it as a drop).

Receive (``TcpCoalescer``): decrypted TCP segments that continue one another (same
addresses, ports, IP fields, TCP options and ACK; contiguous sequence numbers; equal sizes
but for a shorter last one) are merged into one super-packet written with ``gso_type``
TCPV4/TCPV6, ``NEEDS_CSUM`` and the pseudo-header sum in the TCP checksum field, as the
kernel's own GRO would hand it up.  Every segment's TCP checksum is verified before it is
merged, because the merged packet's checksum will not be checked again by anyone.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

__all__ = [
    "GSO_NONE", "GSO_TCPV4", "GSO_TCPV6", "GSO_UDP_L4", "NEEDS_CSUM", "DATA_VALID", "VNET_HDR_LEN", "ZERO_VNET_HDR",
    "OffloadError", "TcpCoalescer", "VnetHdr", "checksum", "finish_checksum", "parse_vnet_hdr", "segment",
    "tcp_checksum_ok",
]

# linux/virtio_net.h
VNET_HDR_LEN = 10  # struct virtio_net_hdr: the TUN default (TUNSETVNETHDRSZ not used)
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
# Native byte order: a TUN device without TUNSETVNETLE/BE uses the host's (tun_is_little_endian).
_VNET = struct.Struct("=BBHHHH")
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

Buf = bytes | bytearray | memoryview
_H = struct.Struct("!H")
_I = struct.Struct("!I")
_HH = struct.Struct("!HH")
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128
MAX_SUPER = 65535  # IP total length (v4) / payload length (v6) limit of one super-packet
MAX_COALESCE = 64  # segments per super-packet (the kernel's GRO limit is MAX_SKB_FRAGS-ish)


class OffloadError(ValueError):
    """A super-packet the kernel gave (or claims to give) that cannot be segmented."""


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _VNET.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)


def parse_vnet_hdr(buf: bytes) -> VnetHdr:
    if len(buf) < VNET_HDR_LEN:
        raise OffloadError("shorter than a virtio-net header")
    return VnetHdr(*_VNET.unpack_from(buf))


# ---------------------------------------------------------------- checksums (RFC 1071)
_FOLD_MIN_BITS = 1024  # below this, one division is cheaper than another fold


@functools.lru_cache(maxsize=1024)
def _fold_plan(nbytes: int) -> tuple[tuple[int, int], ...]:
    """(shift, mask) pairs halving a ``nbytes``-byte integer down to ~_FOLD_MIN_BITS bits,
    each shift a multiple of 16 bits. A plan made for a length serves any shorter buffer
    too (shifts past its end give 0), so callers round the length up (1024 plans at most)."""
    plan = []
    bits = nbytes * 8
    while bits > _FOLD_MIN_BITS:
        k = ((bits + 31) >> 5) << 4
        plan.append((k, (1 << k) - 1))
        bits = k + 1
    return tuple(plan)


def _sum(data: Buf) -> int:
    """Ones' complement sum of ``data`` as big-endian 16-bit words, reduced mod 0xFFFF (0 stands
    for 0xFFFF, the same value in ones' complement).

    2**16 = 1 (mod 0xFFFF), so the sum of the words equals the whole buffer read as one
    integer, mod 0xFFFF: C-level passes instead of a Python loop over 700 words. The buffer
    is read little-endian (CPython converts that faster) and the result byte-swapped back:
    the sum is byte-order independent up to that swap (RFC 1071 2.(B)); an odd last byte
    lands in the low half of a little-endian word, i.e. padded with a zero on the right.
    The division is the slow part (one hardware divide per 30-bit digit: 1.7 us for 1336
    bytes here), so a long integer is first folded: ``x = (x >> k) + (x & (2**k - 1))``
    with k a multiple of 16 keeps x's remainder and halves its length, and shifts, masks
    and additions cost a tenth of a divide per digit (1336 bytes: 1.4 us instead of 1.8).
    """
    n = len(data)
    x = int.from_bytes(data, "little")
    if n > 256:
        for k, mask in _fold_plan((n + 63) & ~63):
            x = (x >> k) + (x & mask)
    v = x % 0xFFFF
    return ((v & 0xFF) << 8) | (v >> 8)


def checksum(*parts: Buf) -> int:
    """The Internet checksum of the concatenation of ``parts`` (each of even length but the last)."""
    s = 0
    for p in parts:
        s += _sum(p)
    s %= 0xFFFF
    return 0xFFFF - s if s else 0


def _pseudo(ip: Buf, version: int, proto: int, l4_len: int) -> bytes:
    if version == 4:
        return bytes(ip[12:20]) + struct.pack("!BBH", 0, proto, l4_len)
    return bytes(ip[8:40]) + struct.pack("!IxxxB", l4_len, proto)


def tcp_checksum_ok(pkt: Buf, version: int, l4: int) -> bool:
    """Whether the TCP checksum of ``pkt`` (IP header of ``l4`` bytes) is right (RFC 9293 3.1)."""
    return checksum(_pseudo(pkt, version, 6, len(pkt) - l4), memoryview(pkt)[l4:]) == 0


def _pseudo_sum_field(ip: Buf, version: int, proto: int, l4_len: int) -> int:
    """What NEEDS_CSUM expects in the checksum field: the folded (not inverted) pseudo-header sum."""
    s = _sum(_pseudo(ip, version, proto, l4_len))
    return s if s else 0xFFFF


def finish_checksum(pkt: Buf, hdr: VnetHdr) -> bytes:
    """Complete a NEEDS_CSUM checksum: fold the sum from csum_start to the end into the field."""
    start, field = hdr.csum_start, hdr.csum_start + hdr.csum_offset
    if start >= len(pkt) or field + 2 > len(pkt):
        raise OffloadError("checksum offsets outside the packet")
    buf = bytearray(pkt)
    c = checksum(memoryview(buf)[start:])
    if c == 0 and buf[9 if buf[0] >> 4 == 4 else 6] == 17:
        c = 0xFFFF  # RFC 768: a computed UDP checksum of zero is sent as all ones
    _H.pack_into(buf, field, c)
    return bytes(buf)


# ---------------------------------------------------------------- transmit: segmentation
def _l3(pkt: Buf) -> tuple[int, int, int]:
    """(version, L4 offset, L4 protocol) of a plain IPv4 / IPv6 packet (no v6 extension headers)."""
    if not pkt:
        raise OffloadError("empty packet")
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or len(pkt) < ihl:
            raise OffloadError("bad IPv4 header length")
        if _H.unpack_from(pkt, 6)[0] & 0x3FFF:
            raise OffloadError("fragment handed over for segmentation")
        return 4, ihl, pkt[9]
    if version == 6:
        if len(pkt) < 40:
            raise OffloadError("short IPv6 header")
        return 6, 40, pkt[6]
    raise OffloadError("not IP")


def segment(hdr: VnetHdr, pkt: Buf) -> list[bytes]:
    """The wire packets a (super-)packet read from the TUN stands for, checksums complete.

    ``pkt`` is what follows the virtio-net header.  A packet without GSO comes back alone
    (its checksum finished if NEEDS_CSUM); a TSO / USO one in ``gso_size`` pieces.
    """
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if hdr.flags & NEEDS_CSUM:
            return [finish_checksum(pkt, hdr)]
        return [bytes(pkt)]
    version, l4, proto = _l3(pkt)
    if gso in (GSO_TCPV4, GSO_TCPV6):
        if proto != 6 or (version == 4) != (gso == GSO_TCPV4):
            raise OffloadError("TSO type does not match the packet")
        return _segment_tcp(pkt, version, l4, hdr.gso_size)
    if gso == GSO_UDP_L4:
        if proto != 17:
            raise OffloadError("USO on a non-UDP packet")
        return _segment_udp(pkt, version, l4, hdr.gso_size)
    raise OffloadError(f"unsupported gso_type {hdr.gso_type}")


def _ip_header(pkt: Buf, version: int, l4: int, l4_len: int, index: int) -> bytearray:
    """A copy of the IP header for one segment whose L4 part is ``l4_len`` bytes."""
    ip = bytearray(pkt[:l4])
    if version == 4:
        _H.pack_into(ip, 2, l4 + l4_len)
        _H.pack_into(ip, 4, (_H.unpack_from(pkt, 4)[0] + index) & 0xFFFF)  # id +1 per segment, as the kernel
        ip[10:12] = b"\x00\x00"
        _H.pack_into(ip, 10, checksum(ip))
    else:
        _H.pack_into(ip, 4, l4 - 40 + l4_len)
    return ip


def _segment_tcp(pkt: Buf, version: int, l4: int, mss: int) -> list[bytes]:
    """TSO in software, as tcp_gso_segment: headers copied per piece, checksums summed
    incrementally (the header words that change are added to precomputed sums; the
    payload is summed once, in C), the payload copied once into its output packet."""
    n = len(pkt)
    if n < l4 + 20:
        raise OffloadError("short TCP header")
    thl = (pkt[l4 + 12] >> 4) * 4
    start = l4 + thl
    if thl < 20 or n < start:
        raise OffloadError("bad TCP header length")
    if mss <= 0:
        raise OffloadError("TSO with gso_size 0")
    mv = memoryview(pkt)
    ip = bytearray(mv[:l4])
    tcp = bytearray(mv[l4:start])
    first_seq = _I.unpack_from(tcp, 4)[0]
    flags0 = tcp[13]
    tcp[4:8] = b"\x00\x00\x00\x00"
    tcp[13] = 0
    tcp[16:18] = b"\x00\x00"
    # pseudo-header (addresses, protocol) + TCP header without seq, flags and checksum
    addrs = mv[12:20] if version == 4 else mv[8:40]
    base = _sum(addrs) + 6 + _sum(tcp)
    if version == 4:
        ip[2:6] = b"\x00\x00\x00\x00"
        ip[10:12] = b"\x00\x00"
        ip_base = _sum(ip)
        ip_id = _H.unpack_from(pkt, 4)[0]
    else:
        ip_base = ip_id = 0
    mid_flags = flags0 & ~(TCP_FIN | TCP_PSH) & 0xFF
    out = []
    pack = _H.pack_into
    pack2 = _HH.pack_into
    fb = int.from_bytes
    # Payload sums inline (_sum without the call): a bytes slice is the cheapest input for
    # int.from_bytes (a memoryview is copied through the buffer protocol first), and the
    # fold plan is the same for every piece of one super-segment.
    buf = pkt if pkt.__class__ is bytes else bytes(pkt)
    plan = _fold_plan((mss + 63) & ~63) if mss > 256 else ()
    off = start
    i = 0
    while True:
        end = off + mss
        last = end >= n
        if last:
            end = n
        data = buf[off:end]
        l4_len = thl + end - off
        if version == 4:
            ident = (ip_id + i) & 0xFFFF  # id +1 per segment, as the kernel (inet_gso_segment)
            pack2(ip, 2, l4 + l4_len, ident)
            c = (ip_base + l4 + l4_len + ident) % 0xFFFF
            pack(ip, 10, 0xFFFF - c if c else 0)
        else:
            pack(ip, 4, l4 - 40 + l4_len)
        seq = (first_seq + off - start) & 0xFFFFFFFF
        flags = flags0 if last else mid_flags
        if i:
            flags &= ~TCP_CWR & 0xFF  # CWR only on the first segment (RFC 3168 6.1.2, as tcp_gso_segment)
        _I.pack_into(tcp, 4, seq)
        tcp[13] = flags
        x = fb(data, "little")
        for k, mask in plan:
            x = (x >> k) + (x & mask)
        # x is the payload's sum with the bytes of each word swapped (read little-endian);
        # swapping a 16-bit value is a rotation by 8, i.e. x * 2**8 mod 0xFFFF: one shift,
        # and one division for everything
        c = (base + l4_len + (seq >> 16) + (seq & 0xFFFF) + flags + (x << 8)) % 0xFFFF
        pack(tcp, 16, 0xFFFF - c if c else 0)
        out.append(b"".join((ip, tcp, data)))
        if last:
            return out
        off = end
        i += 1


def _segment_udp(pkt: Buf, version: int, l4: int, size: int) -> list[bytes]:
    if len(pkt) < l4 + 8:
        raise OffloadError("short UDP header")
    if size <= 0:
        raise OffloadError("USO with gso_size 0")
    mv = memoryview(pkt)
    out = []
    for i, off in enumerate(range(l4 + 8, max(len(pkt), l4 + 9), size)):
        data = mv[off : min(off + size, len(pkt))]
        ip = _ip_header(pkt, version, l4, 8 + len(data), i)
        udp = bytearray(pkt[l4 : l4 + 8])
        _H.pack_into(udp, 4, 8 + len(data))
        udp[6:8] = b"\x00\x00"
        c = checksum(_pseudo(ip, version, 17, 8 + len(data)), udp, data)
        _H.pack_into(udp, 6, c or 0xFFFF)  # RFC 768
        out.append(b"".join((ip, udp, data)))
    return out


# ---------------------------------------------------------------- receive: coalescing
class TcpCoalescer:
    """Merge consecutive TCP segments of one flow into GRO super-packets (module docstring).

    ``add(pkt)`` returns what must be written now, in order (a finished super-packet and/or
    packets that cannot be merged), each as (virtio-net header, packet); ``flush()`` the rest.
    One run is open at a time: packets of another flow close it, so order is kept per flow
    and overall.

    Checksums are verified once per run, not once per segment: each valid segment's sum
    (pseudo-header + TCP header + payload, its checksum field included) is 0xFFFF, i.e. 0
    mod 0xFFFF, so the sum over the run is 0 mod 0xFFFF too. The whole packets are added
    as integers while the run grows (one C-level conversion per segment, no slice) and
    reduced once at the flush, where the IP headers' share is accounted for (RFC 1071
    2.(A)-(B): the sum is linear and word-order independent; each packet's integer starts
    word-aligned, so odd lengths add up right too). A run that fails is checked segment by
    segment: the bad ones are dropped and counted (``bad_segments``), the others written
    without offload.
    """

    def __init__(self) -> None:
        self._key = -1  # IP + TCP header bytes that must match, masked (_KEY4/_KEY6); -1: no run
        self._pkts: list[bytes] = []
        self._version = 0
        self._l4 = 0
        self._thl = 0
        self._mss = 0
        self._next_seq = 0
        self._len = 0  # L4 payload bytes so far
        self._acc = 0  # sum of the segments (whole packets) read as little-endian integers
        self._closed = False  # the last segment was short or carried PSH: nothing may follow
        self._psh = False
        self.coalesced = 0  # segments merged into super-packets (a statistic)
        self.bad_runs = 0  # runs whose checksum sum failed (checked segment by segment)
        self.bad_segments = 0  # segments dropped for a wrong TCP checksum (found in bad runs)

    def add(self, pkt: bytes) -> list[tuple[bytes, bytes]]:
        info = _tcp_info(pkt)
        if info is None:
            out = self.flush() if self._pkts else []
            out.append((ZERO_VNET_HDR, pkt))
            return out
        version, l4, thl, key, seq, plen, flags = info
        if (self._pkts and not self._closed and seq == self._next_seq and key == self._key
                and plen <= self._mss and l4 + thl + self._len + plen <= MAX_SUPER):
            self._pkts.append(pkt)
            self._acc += int.from_bytes(pkt, "little")  # whole packet: no slice copy (see flush)
            self._next_seq = (seq + plen) & 0xFFFFFFFF
            self._len += plen
            if plen < self._mss or plen & 1 or flags & TCP_PSH or len(self._pkts) >= MAX_COALESCE:
                self._closed = True  # (an odd length would shift the next payload's words)
                if flags & TCP_PSH:
                    self._psh = True
            return []
        out = self.flush() if self._pkts else []
        if plen == 0 or flags & ~(TCP_ACK | TCP_PSH):
            out.append((ZERO_VNET_HDR, pkt))  # pure ACKs, SYN, FIN, RST, URG: as they are
            return out
        self._key, self._version, self._l4, self._thl, self._mss = key, version, l4, thl, plen
        self._pkts = [pkt]
        self._acc = int.from_bytes(pkt, "little")
        self._next_seq = (seq + plen) & 0xFFFFFFFF
        self._len = plen
        self._psh = bool(flags & TCP_PSH)
        self._closed = self._psh or bool(plen & 1)
        return out

    def flush(self) -> list[tuple[bytes, bytes]]:
        pkts = self._pkts
        if not pkts:
            return []
        self._pkts = []
        self._closed = False
        if len(pkts) == 1:
            return [(ZERO_VNET_HDR, pkts[0])]
        version, l4, thl = self._version, self._l4, self._thl
        head = pkts[0]
        # RFC 1071: the pseudo-headers differ only in their length word (every segment but the
        # last is mss long), so their sum is n * (addresses + protocol) + the lengths. The
        # accumulator holds whole packets (the IP header is 20 or 40 bytes: word alignment
        # kept). An IPv4 header with a valid checksum sums to zero, so it drops out (and a bad
        # one fails the run, as it should). IPv6 headers match but for the payload length,
        # which equals the TCP length the pseudo-header adds: take the rest out instead.
        v = self._acc % 0xFFFF
        n = len(pkts)
        v = (v & 0xFF) << 8 | v >> 8
        if version == 4:
            total = v + n * (_sum(head[12:20]) + 6) + n * thl + self._len
        else:
            total = v - n * (_sum(head[0:4]) + _sum(head[6:8])) + 6 * n
        if total % 0xFFFF:
            # Some segment is corrupt (or, in theory, two errors cancel -- as for any
            # per-packet Internet checksum). Find it: check each alone, drop and count only
            # the bad ones, write the good ones unmerged (the kernel checks them again).
            self.bad_runs += 1
            out = []
            for p in pkts:
                if tcp_checksum_ok(p, version, l4):
                    out.append((ZERO_VNET_HDR, p))
                else:
                    self.bad_segments += 1
            return out
        self.coalesced += n
        ip = bytearray(head[:l4])
        l4_len = thl + self._len
        if version == 4:
            _H.pack_into(ip, 2, l4 + l4_len)
            ip[10:12] = b"\x00\x00"
            _H.pack_into(ip, 10, checksum(ip))
        else:
            _H.pack_into(ip, 4, l4 - 40 + l4_len)
        tcp = bytearray(head[l4 : l4 + thl])
        if self._psh:
            tcp[13] |= TCP_PSH
        _H.pack_into(tcp, 16, _pseudo_sum_field(ip, version, 6, l4_len))
        hdr = VnetHdr(NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, l4 + thl, self._mss, l4, 16)
        start = l4 + thl
        return [(hdr.pack(), b"".join((ip, tcp, *(memoryview(p)[start:] for p in pkts))))]


def _key_mask(spans: tuple[tuple[int, int, int], ...]) -> int:
    """A little-endian byte mask: ``value`` on bytes [start, end) of each span, 0 elsewhere."""
    m = 0
    for start, end, value in spans:
        for i in range(start, end):
            m |= value << (8 * i)
    return m


# The header bytes two segments must share to be merged, as masks over the IP + TCP header
# read as one little-endian integer (one slice, one conversion, one AND instead of six
# slices joined): IPv4 tos, DF/ttl/proto, addresses + ports, ack + data offset, flags but
# PSH, urgent pointer + options; IPv6 version/class/flow label, hop limit, addresses +
# ports, ack + data offset, flags but PSH, urgent pointer + options. Lengths, IPv4 id and
# checksum, sequence numbers, window and TCP checksum may differ (the merged packet keeps
# the first one's window, as the kernel's tcp_gro_receive does). The data offset is in the
# key, so keys of different header lengths never meet.
_KEY4 = _key_mask(((1, 2, 0xFF), (6, 10, 0xFF), (12, 24, 0xFF), (28, 33, 0xFF), (33, 34, 0xF7), (38, 60, 0xFF)))
_KEY6 = _key_mask(((0, 4, 0xFF), (7, 44, 0xFF), (48, 53, 0xFF), (53, 54, 0xF7), (58, 80, 0xFF)))


def _tcp_info(pkt: bytes) -> tuple[int, int, int, int, int, int, int] | None:
    """(version, L4 offset, TCP header length, match key, seq, payload length, flags) of a plain
    TCP packet that could be coalesced; None for anything else."""
    n = len(pkt)
    if n < 40:
        return None
    b0 = pkt[0]
    if b0 == 0x45:
        if pkt[9] != 6 or _H.unpack_from(pkt, 2)[0] != n or _H.unpack_from(pkt, 6)[0] & 0x3FFF:
            return None  # other protocols, fragments, or a length the packet does not have
        thl = (pkt[32] >> 4) * 4
        if thl < 20 or n < 20 + thl:
            return None
        key = int.from_bytes(pkt[: 20 + thl], "little") & _KEY4
        return 4, 20, thl, key, _I.unpack_from(pkt, 24)[0], n - 20 - thl, pkt[33]
    if b0 >> 4 == 6:
        if n < 60 or pkt[6] != 6 or _H.unpack_from(pkt, 4)[0] != n - 40:
            return None
        thl = (pkt[52] >> 4) * 4
        if thl < 20 or n < 40 + thl:
            return None
        key = int.from_bytes(pkt[: 40 + thl], "little") & _KEY6
        return 6, 40, thl, key, _I.unpack_from(pkt, 44)[0], n - 40 - thl, pkt[53]
    return None
