"""ESP Security Associations (RFC 4303): per-direction state and the per-packet entry points.

``OutboundSa.protect(ip_packet) -> esp_bytes`` and ``InboundSa.unprotect(esp_bytes) ->
ip_packet`` are the whole data-plane interface. They are sans-I/O: no sockets, no clock,
no logging; the outer IP/UDP header is the caller's business (for UDP encapsulation,
RFC 3948, the caller adds/strips the UDP header; the bytes here start at the SPI).

Every way a packet can be refused is an :class:`EspDrop` carrying a :class:`DropReason`;
nothing else escapes ``protect``/``unprotect`` whatever the input bytes. The SA's counters
have already been updated when the exception is raised.

Modes:

* Tunnel (RFC 4303 3.1.2): the payload is the whole inner packet; next header 4 or 41.
  Inbound, anything after the inner packet's own length is TFC padding (RFC 4303 2.7)
  and is cut off.
* Transport (RFC 4303 3.1.1): outbound strips the IP header and protects the upper-layer
  payload under the original protocol number. IPv4 options are not carried (the outer
  header is the caller's); IPv4 fragments are refused (BAD_INNER) because the receiver
  could not rebuild them. IPv6: only the fixed 40-byte header is stripped; a Destination
  Options header right after it travels inside ESP (allowed after ESP, RFC 4303 3.1.1),
  while Hop-by-Hop, Routing and Fragment headers, which must precede ESP and which the
  caller's outer header cannot carry, are refused (BAD_INNER). Inbound rebuilds a plain
  IPv4/IPv6 header from the outer addresses; with UDP encapsulation the TCP/UDP checksum
  is recomputed, since NAT changed the addresses it covered (RFC 3948 3.1.2). That the
  packet's own addresses are the SA's endpoints is the SPD's job, not checked here.

Traffic selectors: an empty ``local_ts``/``remote_ts`` means "no restriction" (useful for
tests); IKE-installed SAs always carry the negotiated selectors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from ipsecd.errors import IpsecdError, LocalProtocolError
from ipsecd.esp.packet import (
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    build_ipv4_header,
    build_ipv6_header,
    inet_checksum,
    parse_ip_ints,
)
from ipsecd.esp.replay import MAX_WINDOW, ReplayWindow
from ipsecd.esp.spd import Selector
from ipsecd.esp.transform import (
    PAD_BYTES,
    TRAILER_LEN,
    EspTransform,
    check_key_lengths,
    make_transform,
    suite_spec,
)
from ipsecd.ike.constants import EncrId, IntegId, IpProto

SEQ_MAX_32 = 0xFFFFFFFF
SEQ_MAX_64 = 0xFFFFFFFFFFFFFFFF

_U16 = struct.Struct("!H")
_unpack_u16 = _U16.unpack_from
_unpack_u32 = struct.Struct("!I").unpack_from
_unpack_v4_addrs = struct.Struct("!II").unpack_from
_unpack_v6_addrs = struct.Struct("!QQQQ").unpack_from
# Next header values as plain ints: comparing against IntEnum members costs more per packet.
_NH_IPV4 = int(IpProto.IPV4)
_NH_IPV6 = int(IpProto.IPV6)
_NH_NONE = int(IpProto.NO_NEXT_HEADER)
_V6_FORBIDDEN_IN_TRANSPORT = frozenset((0, 43, 44))  # Hop-by-Hop, Routing, Fragment


class Mode(StrEnum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class DropReason(StrEnum):
    """Why a packet was not forwarded: the data plane keeps one counter per value."""

    SHORT = "short"  # shorter than header + IV + minimal trailer + ICV
    UNKNOWN_SPI = "unknown_spi"
    REPLAY = "replay"  # duplicate or left of the window (RFC 4303 3.4.3)
    ICV = "icv"  # integrity check failed (RFC 4303 3.4.4)
    PADDING = "padding"  # pad length too large or pad bytes not 1, 2, 3, ... (RFC 4303 2.4)
    SELECTOR = "selector"  # inner packet outside the SA's traffic selectors (RFC 4301 5.2)
    TOO_BIG = "too_big"
    NO_POLICY = "no_policy"
    DISCARD_POLICY = "discard"
    BAD_INNER = "bad_inner"  # inner packet malformed or not of the expected kind
    SEQ_EXHAUSTED = "seq_exhausted"  # the sender's counter would cycle (RFC 4303 3.3.3)
    DUMMY = "dummy"  # next header 59: a dummy/TFC packet, discarded silently (RFC 4303 2.6)
    MALFORMED = "malformed"  # authentic but structurally impossible (e.g. CBC not block aligned)
    NO_SA = "no_sa"  # PROTECT policy whose outbound SA is not (yet) installed


class EspDrop(IpsecdError):
    """A packet was dropped; ``reason`` says why. Cheap: no message formatting at raise time."""

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason) -> None:
        self.reason = reason

    def __str__(self) -> str:
        return f"ESP drop: {self.reason.value}"

    def __reduce__(self) -> tuple[type[EspDrop], tuple[DropReason]]:
        return (EspDrop, (self.reason,))


@dataclass(frozen=True)
class SaParams:
    """What IKE negotiated for one direction of a Child SA. ``repr`` never shows keys.

    For the AEADs ``encr_key`` is the key followed by its 4-byte salt (the RFC 4106 /
    RFC 7634 KEYMAT layout); ``integ`` is then ``IntegId.NONE``. Construction validates
    algorithms and key lengths so a bad negotiation fails at install, not per packet.
    """

    spi: int
    encr: EncrId
    encr_key: bytes = field(repr=False)
    integ: IntegId
    integ_key: bytes = field(repr=False)
    esn: bool
    mode: Mode
    local_addr: IPv4Address | IPv6Address
    remote_addr: IPv4Address | IPv6Address
    encap: bool = False
    local_port: int = 4500
    remote_port: int = 4500
    local_ts: tuple[Selector, ...] = ()
    remote_ts: tuple[Selector, ...] = ()
    replay_window: int = 1024
    name: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.spi <= 0xFFFFFFFF:
            raise LocalProtocolError("SPI must be 1..2^32-1 (0 is reserved, RFC 4303 2.1)")
        object.__setattr__(self, "encr", EncrId(self.encr))
        object.__setattr__(self, "integ", IntegId(self.integ))
        object.__setattr__(self, "mode", Mode(self.mode))
        suite_spec(self.encr, self.integ)
        check_key_lengths(self.encr, self.encr_key, self.integ, self.integ_key)
        if self.local_addr.version != self.remote_addr.version:
            raise LocalProtocolError("SA outer addresses mix IPv4 and IPv6")
        if not (0 < self.local_port <= 65535 and 0 < self.remote_port <= 65535):
            raise LocalProtocolError("UDP encapsulation ports must be 1..65535")
        if not 0 <= self.replay_window <= MAX_WINDOW:
            raise LocalProtocolError(f"replay window must be 0..{MAX_WINDOW}")
        object.__setattr__(self, "local_ts", tuple(self.local_ts))
        object.__setattr__(self, "remote_ts", tuple(self.remote_ts))


@dataclass(slots=True)
class SaCounters:
    """Per-SA traffic counters.

    ``bytes`` counts IP packet bytes on the clear side: inner packets handed to ``protect``
    (outbound) or returned by ``unprotect`` (inbound); ``packets`` counts those packets.
    ``drops`` counts refused packets by reason.
    """

    bytes: int = 0
    packets: int = 0
    drops: dict[DropReason, int] = field(default_factory=dict)

    def count_drop(self, reason: DropReason) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def merge(self, other: SaCounters) -> None:
        """Add ``other`` into this one (aggregation across SAs)."""
        self.bytes += other.bytes
        self.packets += other.packets
        for reason, n in other.drops.items():
            self.drops[reason] = self.drops.get(reason, 0) + n


def _selectors_match(selectors: tuple[Selector, ...], version: int, addr: int, proto: int, port: int | None) -> bool:
    for sel in selectors:  # noqa: SIM110 (no generator object per packet)
        if sel.contains(version, addr, proto, port):
            return True
    return False


class OutboundSa:
    """The sending side of a Child SA: sequence numbers, padding, encryption.

    ``seq`` is the last sequence number used (0 before the first packet). Without ESN the
    last usable value is 2^32-1; the packet after that raises ``EspDrop(SEQ_EXHAUSTED)``
    (RFC 4303 3.3.3: the counter must never cycle). The lifecycle code should rekey well
    before, by watching ``seq`` against ``seq_limit``.
    """

    __slots__ = ("_seal", "_tunnel", "counters", "params", "seq", "seq_limit", "transform")

    def __init__(self, params: SaParams) -> None:
        self.params = params
        self.seq = 0
        self.seq_limit = SEQ_MAX_64 if params.esn else SEQ_MAX_32
        self.counters = SaCounters()
        self.transform: EspTransform = make_transform(
            params.encr, params.encr_key, params.integ, params.integ_key, params.spi, params.esn
        )
        self._seal = self.transform.seal
        self._tunnel = params.mode == Mode.TUNNEL

    def __repr__(self) -> str:
        return f"<OutboundSa {self.params.name!r} spi=0x{self.params.spi:08x} seq={self.seq}>"

    @property
    def spi(self) -> int:
        return self.params.spi

    def _drop(self, reason: DropReason) -> EspDrop:
        self.counters.count_drop(reason)
        return EspDrop(reason)

    def protect(self, ip_packet: bytes | bytearray | memoryview) -> bytes:
        """ESP-protect one IP packet; returns ``SPI .. ICV`` (no outer IP/UDP header).

        ``ip_packet`` may be any bytes-like object (a bytearray or memoryview from a receive
        buffer is copied to bytes first).
        """
        if ip_packet.__class__ is not bytes:
            ip_packet = bytes(ip_packet)
        seq = self.seq + 1
        if seq > self.seq_limit:
            raise self._drop(DropReason.SEQ_EXHAUSTED)
        n = len(ip_packet)
        if self._tunnel:
            version = ip_packet[0] >> 4 if n >= IPV4_HEADER_LEN else 0
            if version == 4:
                nh = _NH_IPV4
            elif version == 6 and n >= IPV6_HEADER_LEN:
                nh = _NH_IPV6
            else:
                raise self._drop(DropReason.BAD_INNER)
            payload = ip_packet
        else:
            payload, nh = self._strip_header(ip_packet)
        self.seq = seq
        esp = self._seal(seq, payload, nh)
        counters = self.counters
        counters.packets += 1
        counters.bytes += n
        return esp

    def _strip_header(self, packet: bytes) -> tuple[bytes, int]:
        """Transport mode: the upper-layer payload and its protocol (see module docstring)."""
        n = len(packet)
        version = packet[0] >> 4 if n >= IPV4_HEADER_LEN else 0
        if version == 4:
            hlen = (packet[0] & 0x0F) * 4
            total = _unpack_u16(packet, 2)[0]
            if hlen < IPV4_HEADER_LEN or total < hlen or total > n:
                raise self._drop(DropReason.BAD_INNER)
            if _unpack_u16(packet, 6)[0] & 0x3FFF:  # MF or a fragment offset
                raise self._drop(DropReason.BAD_INNER)
            return packet[hlen:total], packet[9]
        if version == 6 and n >= IPV6_HEADER_LEN:
            total = IPV6_HEADER_LEN + _unpack_u16(packet, 4)[0]
            nh = packet[6]
            if total > n or nh in _V6_FORBIDDEN_IN_TRANSPORT:
                raise self._drop(DropReason.BAD_INNER)
            return packet[IPV6_HEADER_LEN:total], nh
        raise self._drop(DropReason.BAD_INNER)


class InboundSa:
    """The receiving side of a Child SA: replay window, decryption, inner-packet checks.

    Processing order per RFC 4303 3.4: length check, replay pre-check on the sequence
    number (3.4.3), ICV / AEAD verification (3.4.4), only then the window update, then the
    trailer (2.4: the pad bytes are checked), next header and the inbound selector check
    of RFC 4301 5.2.
    """

    __slots__ = (
        "_fix_l4",
        "_local_ts",
        "_min_len",
        "_open",
        "_remote_ts",
        "_ts_addr_only",
        "_ts_free",
        "_tunnel",
        "counters",
        "params",
        "replay",
        "transform",
    )

    def __init__(self, params: SaParams) -> None:
        self.params = params
        self.counters = SaCounters()
        self.replay = ReplayWindow(params.replay_window, params.esn)
        self.transform: EspTransform = make_transform(
            params.encr, params.encr_key, params.integ, params.integ_key, params.spi, params.esn
        )
        self._open = self.transform.open
        self._min_len = self.transform.overhead_min
        self._tunnel = params.mode == Mode.TUNNEL
        self._local_ts = params.local_ts
        self._remote_ts = params.remote_ts
        # IP versions for which both sides are unrestricted: their packets skip the parse.
        self._ts_free = _unrestricted_versions(params.local_ts) & _unrestricted_versions(params.remote_ts)
        # Per IP version, when every selector of that version is address-only (protocol and
        # ports ANY, the usual case): the (lo, hi) ranges of each side, so the check needs only
        # the two addresses instead of a full parse. None for a side means "unrestricted".
        self._ts_addr_only = {
            v: (_address_ranges(params.remote_ts, v), _address_ranges(params.local_ts, v))
            for v in (4, 6)
            if _address_only(params.remote_ts, v) and _address_only(params.local_ts, v)
        }
        self._fix_l4 = params.encap and not self._tunnel

    def __repr__(self) -> str:
        return f"<InboundSa {self.params.name!r} spi=0x{self.params.spi:08x} top={self.replay.top}>"

    @property
    def spi(self) -> int:
        return self.params.spi

    @property
    def highest_seq(self) -> int:
        """Highest authenticated sequence number so far (64-bit with ESN)."""
        return self.replay.top

    def _drop(self, reason: DropReason) -> EspDrop:
        self.counters.count_drop(reason)
        return EspDrop(reason)

    def unprotect(
        self, esp: bytes | bytearray | memoryview, outer_src: bytes | None = None, outer_dst: bytes | None = None
    ) -> bytes:
        """Verify and decrypt one ESP packet (starting at the SPI); returns the IP packet for the TUN.

        ``outer_src``/``outer_dst`` (packed addresses of the outer header) matter in transport
        mode only, where they become the rebuilt header's addresses; they default to the SA's
        remote/local addresses. ``esp`` may be any bytes-like object (copied to bytes if it is
        not already).
        """
        if esp.__class__ is not bytes:
            esp = bytes(esp)
        if len(esp) < self._min_len:
            raise self._drop(DropReason.SHORT)
        replay = self.replay
        seq = replay.check(_unpack_u32(esp, 4)[0])
        if seq is None:
            raise self._drop(DropReason.REPLAY)
        plain = self._open(esp, seq)
        if plain is None:
            raise self._drop(DropReason.ICV)
        replay.update(seq)
        # Trailer: ... padding || pad length || next header (RFC 4303 2.4-2.6)
        m = len(plain)
        if m < TRAILER_LEN:
            raise self._drop(DropReason.MALFORMED)
        pad_len = plain[m - 2]
        nh = plain[m - 1]
        end = m - TRAILER_LEN - pad_len
        if pad_len and (end < 0 or plain[end : m - TRAILER_LEN] != PAD_BYTES[pad_len]):
            raise self._drop(DropReason.PADDING)
        if self._tunnel:
            # Inline on purpose (hot path). The inner header's own length decides where the
            # packet ends; anything after it up to the padding is TFC padding (RFC 4303 2.7).
            first = plain[0] if end else 0
            if nh == _NH_IPV4:
                if end < IPV4_HEADER_LEN or first >> 4 != 4 or (first & 0x0F) < 5:
                    raise self._drop(DropReason.BAD_INNER)
                total = _unpack_u16(plain, 2)[0]
                if total > end or total < (first & 0x0F) * 4:
                    raise self._drop(DropReason.BAD_INNER)
            elif nh == _NH_IPV6:
                if end < IPV6_HEADER_LEN or first >> 4 != 6:
                    raise self._drop(DropReason.BAD_INNER)
                total = IPV6_HEADER_LEN + _unpack_u16(plain, 4)[0]
                if total > end:
                    raise self._drop(DropReason.BAD_INNER)
            elif nh == _NH_NONE:
                raise self._drop(DropReason.DUMMY)
            else:
                raise self._drop(DropReason.BAD_INNER)
            packet = plain[:total]
        else:
            if nh == _NH_NONE:
                raise self._drop(DropReason.DUMMY)
            packet = self._rebuild_transport(plain[:end], nh, outer_src, outer_dst)
        if packet[0] >> 4 not in self._ts_free:
            self._check_selectors(packet)
        counters = self.counters
        counters.packets += 1
        counters.bytes += len(packet)
        return packet

    def _rebuild_transport(self, payload: bytes, nh: int, src: bytes | None, dst: bytes | None) -> bytes:
        """Transport mode: a fresh IP header in front of the decrypted upper-layer payload."""
        src_b = src if src is not None else self.params.remote_addr.packed
        dst_b = dst if dst is not None else self.params.local_addr.packed
        if len(src_b) == 4 and len(dst_b) == 4:
            if len(payload) > 0xFFFF - IPV4_HEADER_LEN:
                raise self._drop(DropReason.BAD_INNER)
            if self._fix_l4:
                payload = _fix_l4_checksum(4, src_b, dst_b, nh, payload)
            return build_ipv4_header(src_b, dst_b, nh, len(payload)) + payload
        if len(src_b) == 16 and len(dst_b) == 16:
            if len(payload) > 0xFFFF:
                raise self._drop(DropReason.BAD_INNER)
            if self._fix_l4:
                payload = _fix_l4_checksum(6, src_b, dst_b, nh, payload)
            return build_ipv6_header(src_b, dst_b, nh, len(payload)) + payload
        raise self._drop(DropReason.MALFORMED)

    def _check_selectors(self, packet: bytes) -> None:
        """RFC 4301 5.2 step 4: the packet must fall inside the SA's negotiated selectors."""
        version = packet[0] >> 4
        fast = self._ts_addr_only.get(version)
        if fast is not None:
            # Address-only selectors: the inner packet was length-checked already, so the
            # fixed header holding both addresses is present.
            if version == 4:
                src, dst = _unpack_v4_addrs(packet, 12)
            else:
                s_hi, s_lo, d_hi, d_lo = _unpack_v6_addrs(packet, 8)
                src, dst = (s_hi << 64) | s_lo, (d_hi << 64) | d_lo
            remote_ranges, local_ranges = fast
            if remote_ranges is not None and not _in_ranges(remote_ranges, src):
                raise self._drop(DropReason.SELECTOR)
            if local_ranges is not None and not _in_ranges(local_ranges, dst):
                raise self._drop(DropReason.SELECTOR)
            return
        parsed = parse_ip_ints(packet)
        if parsed is None:
            raise self._drop(DropReason.BAD_INNER)
        version, src, dst, proto, sport, dport, _hlen = parsed
        if self._remote_ts and not _selectors_match(self._remote_ts, version, src, proto, sport):
            raise self._drop(DropReason.SELECTOR)
        if self._local_ts and not _selectors_match(self._local_ts, version, dst, proto, dport):
            raise self._drop(DropReason.SELECTOR)


def _address_only(selectors: tuple[Selector, ...], version: int) -> bool:
    return all(s.proto == 0 and s.any_port for s in selectors if s.version == version)


def _address_ranges(selectors: tuple[Selector, ...], version: int) -> tuple[tuple[int, int], ...] | None:
    """Ranges of one IP version, or None when the side is unrestricted (no selectors at all)."""
    if not selectors:
        return None
    return tuple((s.lo, s.hi) for s in selectors if s.version == version)


def _in_ranges(ranges: tuple[tuple[int, int], ...], addr: int) -> bool:
    # A plain loop on purpose: any() over a generator costs a generator object per packet.
    for lo, hi in ranges:  # noqa: SIM110
        if lo <= addr <= hi:
            return True
    return False


def _unrestricted_versions(selectors: tuple[Selector, ...]) -> frozenset[int]:
    """IP versions for which ``selectors`` match everything (all of them when empty)."""
    if not selectors:
        return frozenset((4, 6))
    return frozenset(s.version for s in selectors if s.is_any)


def _fix_l4_checksum(version: int, src: bytes, dst: bytes, proto: int, segment: bytes) -> bytes:
    """Recompute a TCP/UDP checksum for the post-NAT addresses (RFC 3948 3.1.2, transport mode).

    The peer computed it over its own (pre-NAT) addresses, which we do not know in IKEv2, so
    incremental fixing is impossible; a full recomputation is. A zero UDP checksum over IPv4
    means "none" and stays zero.
    """
    if proto == IpProto.TCP:
        off = 16
        if len(segment) < 20:
            return segment
    elif proto == IpProto.UDP:
        off = 6
        if len(segment) < 8 or (version == 4 and segment[6:8] == b"\x00\x00"):
            return segment
    else:
        return segment
    zeroed = segment[:off] + b"\x00\x00" + segment[off + 2 :]
    pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + len(segment)
    csum = inet_checksum(zeroed, pseudo)
    if csum == 0 and proto == IpProto.UDP:
        csum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    return zeroed[:off] + _U16.pack(csum) + zeroed[off + 2 :]


__all__ = [
    "SEQ_MAX_32",
    "SEQ_MAX_64",
    "DropReason",
    "EspDrop",
    "InboundSa",
    "Mode",
    "OutboundSa",
    "SaCounters",
    "SaParams",
    "Selector",
]
