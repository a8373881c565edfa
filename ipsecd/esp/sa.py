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
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from cryptography.exceptions import InvalidTag

from ipsecd.errors import IpsecdError, LocalProtocolError
from ipsecd.esp.ipcomp import NH_IPCOMP, Compressor, IpcompError, decompress
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
    TRAILERS,
    AeadTransform,
    EspTransform,
    check_key_lengths,
    make_transform,
    suite_spec,
)
from ipsecd.iana import EncrId, IntegId, IpProto

SEQ_MAX_32 = 0xFFFFFFFF
SEQ_MAX_64 = 0xFFFFFFFFFFFFFFFF

_U16 = struct.Struct("!H")
_unpack_u16 = _U16.unpack_from
_unpack_u32 = struct.Struct("!I").unpack_from
_unpack_v4_addrs = struct.Struct("!II").unpack_from
_unpack_v6_addrs = struct.Struct("!QQQQ").unpack_from
# Tunnel-mode fast path: the fields of the inner header that the checks need, in one call.
# IPv4: version/IHL, total length, source, destination (RFC 791 3.1).
_unpack_v4_head = struct.Struct("!BxH8xII").unpack_from
# IPv6: version/traffic class byte, payload length, source and destination as 64-bit
# halves (RFC 8200 3).
_unpack_v6_head = struct.Struct("!B3xH2xQQQQ").unpack_from
# "!IIQ": SPI, low 32 bits of the sequence number, 8-byte explicit IV = the full sequence
# number (RFC 4106 3.1 / 8.1 allow a counter; it never repeats under one key).
_pack_aead_hdr = struct.Struct("!IIQ").pack
_pack_aead_nonce = struct.Struct("!4sQ").pack  # salt || explicit IV (RFC 4106 4, RFC 7634 2)
# Outbound trailer (padding || pad length || next header) per next header, indexed by
# ``-(len(payload) + 2) & 3``: AEAD payloads are aligned to 4 bytes (RFC 4303 2.4).
_AEAD_TRAILERS_V4 = tuple(TRAILERS[pad][int(IpProto.IPV4)] for pad in range(4))
_AEAD_TRAILERS_V6 = tuple(TRAILERS[pad][int(IpProto.IPV6)] for pad in range(4))
_V4_MAX = (1 << 32) - 1
_V6_MAX = (1 << 128) - 1
# Next header values as plain ints: comparing against IntEnum members costs more per packet.
_NH_IPV4 = int(IpProto.IPV4)
_NH_IPV6 = int(IpProto.IPV6)
_NH_NONE = int(IpProto.NO_NEXT_HEADER)
_V6_FORBIDDEN_IN_TRANSPORT = frozenset((0, 43, 44))  # Hop-by-Hop, Routing, Fragment


class Mode(StrEnum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class IpsecProto(StrEnum):
    """Which IPsec protocol an SA speaks (RFC 7296 3.3.1 Protocol ID): one per Child SA."""

    ESP = "esp"  # RFC 4303
    AH = "ah"  # RFC 4302: integrity only, the outer IP header included (ipsecd.esp.ah)


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
    IPCOMP = "ipcomp"  # authentic, but the IPComp payload would not decompress (RFC 3173 3.2)
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


@dataclass(frozen=True, slots=True)  # slots: two per Child SA in the worker (issue 11, memory)
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
    protocol: IpsecProto = IpsecProto.ESP
    # IPComp (RFC 3173) inside this SA: the CPI, 0 for none. Outbound it is the peer's CPI
    # (what goes in our IPComp headers), inbound ours (what the peer's must carry), as with SPIs.
    ipcomp_cpi: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.spi <= 0xFFFFFFFF:
            raise LocalProtocolError("SPI must be 1..2^32-1 (0 is reserved, RFC 4303 2.1)")
        object.__setattr__(self, "encr", EncrId(self.encr))
        object.__setattr__(self, "integ", IntegId(self.integ))
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "protocol", IpsecProto(self.protocol))
        if not 0 <= self.ipcomp_cpi <= 0xFFFF:
            raise LocalProtocolError("an IPComp CPI is 16 bits (RFC 3173 2.2)")
        if self.protocol is IpsecProto.AH:
            # RFC 4302: integrity only; AH covers the outer IP header, which NAT rewrites, so
            # it cannot be UDP-encapsulated (RFC 3948 covers ESP only)
            if self.encr != EncrId.ENCR_NULL or self.encr_key or self.integ == IntegId.NONE:
                raise LocalProtocolError("an AH SA takes an integrity algorithm and no encryption")
            if self.encap:
                raise LocalProtocolError("AH cannot be UDP-encapsulated (NAT breaks its ICV, RFC 3948 covers ESP)")
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
        object.__setattr__(self, "name", sys.intern(self.name))  # a connection's SAs share it


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


def selectors_match(selectors: tuple[Selector, ...], version: int, addr: int, proto: int, port: int | None) -> bool:
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

    ``protect`` has an inlined path for the data plane's usual SA (AEAD, tunnel mode, no
    ESN) that does the transform's ``seal`` work itself; every other SA goes through
    ``transform.seal``. Both produce identical packets (the tests compare them with scapy).
    """

    __slots__ = ("_compress", "_fast", "_idle_mark", "_seal", "_transform", "_tunnel", "counters", "params", "seq",
                 "seq_limit")

    def __init__(self, params: SaParams) -> None:
        self.params = params
        self._compress = Compressor(params.ipcomp_cpi) if params.ipcomp_cpi else None
        self.seq = 0
        self.seq_limit = SEQ_MAX_64 if params.esn else SEQ_MAX_32
        self.counters = SaCounters()
        self._tunnel = params.mode == Mode.TUNNEL
        # The cipher context is built on the first packet, not here (see release_transform):
        # until then protect() takes _protect_generic, which builds it and comes back.
        self._transform: EspTransform | None = None
        self._idle_mark = 0  # packets at the idle sweep's previous visit (dataplane/idle.py)
        self._seal: Callable[[int, bytes, int], bytes] | None = None
        # (encrypt, salt, spi) for the inlined AEAD tunnel path, else None.
        self._fast: tuple[Callable[[bytes, bytes, bytes | None], bytes], bytes, int] | None = None

    @property
    def transform(self) -> EspTransform:
        """The SA's cipher state, built on first use."""
        t = self._transform
        return t if t is not None else self._build()

    def _build(self) -> EspTransform:
        # An OpenSSL AEAD context is ~2.5 KiB of RSS: an idle tunnel (a road warrior's, most
        # of the day) holds none (issue 11, memory per tunnel). ~10 us once, on its first packet.
        params = self.params
        t = self._transform = make_transform(
            params.encr, params.encr_key, params.integ, params.integ_key, params.spi, params.esn
        )
        self._seal = t.seal
        if isinstance(t, AeadTransform) and not params.esn and self._tunnel and self._compress is None:
            self._fast = (t.encrypt, t.salt, t.spi)
        return t

    def release_transform(self) -> bool:
        """Drop the cipher context (an idle SA); the next packet builds it again. True if one was held."""
        held = self._transform is not None
        self._transform = self._seal = self._fast = None
        return held

    def release_if_idle(self) -> bool:
        """The idle sweep's visit: release the context if no packet went out since the previous one."""
        packets = self.counters.packets
        idle = packets == self._idle_mark
        self._idle_mark = packets
        return idle and self.release_transform()

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
        fast = self._fast
        if fast is None:
            return self._protect_generic(ip_packet)
        if ip_packet.__class__ is not bytes:
            ip_packet = bytes(ip_packet)
        seq = self.seq + 1
        if seq > self.seq_limit:  # RFC 4303 3.3.3: never cycle
            raise self._drop(DropReason.SEQ_EXHAUSTED)
        n = len(ip_packet)
        # Tunnel mode (RFC 4303 3.1.2): next header 4 or 41 from the inner version.
        first = ip_packet[0] if n >= IPV4_HEADER_LEN else 0
        if first >> 4 == 4:
            trailers = _AEAD_TRAILERS_V4
        elif first >> 4 == 6 and n >= IPV6_HEADER_LEN:
            trailers = _AEAD_TRAILERS_V6
        else:
            raise self._drop(DropReason.BAD_INNER)
        self.seq = seq
        encrypt, salt, spi = fast
        # What AeadTransform.seal_32 does, inline: SPI || seq || IV=seq, AAD = SPI || seq
        # (RFC 4106 5), padding 1, 2, 3... to a multiple of 4 (RFC 4303 2.4).
        hdr = _pack_aead_hdr(spi, seq, seq)
        esp = hdr + encrypt(_pack_aead_nonce(salt, seq), ip_packet + trailers[-(n + TRAILER_LEN) & 3], hdr[:8])
        counters = self.counters
        counters.packets += 1
        counters.bytes += n
        return esp

    def _protect_generic(self, ip_packet: bytes | bytearray | memoryview) -> bytes:
        """``protect`` for every SA the inlined path does not cover (CBC/NULL, ESN, transport),
        and the first packet after the cipher context was built or released."""
        if self._seal is None:
            self._build()
            if self._fast is not None:
                return self.protect(ip_packet)
        assert self._seal is not None
        if ip_packet.__class__ is not bytes:
            ip_packet = bytes(ip_packet)
        seq = self.seq + 1
        if seq > self.seq_limit:
            raise self._drop(DropReason.SEQ_EXHAUSTED)
        n = len(ip_packet)
        inner = outbound_payload(ip_packet, self._tunnel, self._compress)
        if inner is None:
            raise self._drop(DropReason.BAD_INNER)
        payload, nh = inner
        self.seq = seq
        esp = self._seal(seq, payload, nh)
        counters = self.counters
        counters.packets += 1
        counters.bytes += n
        return esp

def outbound_payload(ip_packet: bytes, tunnel: bool, compress: Compressor | None) -> tuple[bytes, int] | None:
    """What an outbound ESP or AH SA protects, and its next header: the whole inner packet in
    tunnel mode, the upper-layer payload in transport mode; with IPComp compressed first
    (RFC 3173 5: compress, then ESP/AH over the result). None: a packet the SA cannot carry."""
    if tunnel:
        version = ip_packet[0] >> 4 if len(ip_packet) >= IPV4_HEADER_LEN else 0
        if version == 4:
            nh = _NH_IPV4
        elif version == 6 and len(ip_packet) >= IPV6_HEADER_LEN:
            nh = _NH_IPV6
        else:
            return None
        payload = ip_packet
    else:
        split = strip_transport_header(ip_packet)
        if split is None:
            return None
        payload, nh = split
    if compress is not None:
        payload, nh = compress(payload, nh)
    return payload, nh


def strip_transport_header(packet: bytes) -> tuple[bytes, int] | None:
    """Transport mode (ESP and AH): the upper-layer payload and its protocol, or None for a
    packet the SA cannot carry (malformed, an IPv4 fragment, IPv6 extension headers that must
    precede the IPsec header; see the module docstring)."""
    n = len(packet)
    version = packet[0] >> 4 if n >= IPV4_HEADER_LEN else 0
    if version == 4:
        hlen = (packet[0] & 0x0F) * 4
        total = _unpack_u16(packet, 2)[0]
        if hlen < IPV4_HEADER_LEN or total < hlen or total > n:
            return None
        if _unpack_u16(packet, 6)[0] & 0x3FFF:  # MF or a fragment offset
            return None
        return packet[hlen:total], packet[9]
    if version == 6 and n >= IPV6_HEADER_LEN:
        total = IPV6_HEADER_LEN + _unpack_u16(packet, 4)[0]
        nh = packet[6]
        if total > n or nh in _V6_FORBIDDEN_IN_TRANSPORT:
            return None
        return packet[IPV6_HEADER_LEN:total], nh
    return None


class InboundSa:
    """The receiving side of a Child SA: replay window, decryption, inner-packet checks.

    Processing order per RFC 4303 3.4: length check, replay pre-check on the sequence
    number (3.4.3), ICV / AEAD verification (3.4.4), only then the window update, then the
    trailer (2.4: the pad bytes are checked), next header and the inbound selector check
    of RFC 4301 5.2.

    ``unprotect`` has an inlined path for the data plane's usual SA (AEAD, tunnel mode, no
    ESN): the transform's ``open``, the replay window's common case and, for selectors that
    reduce to one address range per side, the selector check are done in place, with the
    same checks in the same order; everything else takes ``_unprotect_generic``.
    """

    __slots__ = (
        "_cpi",
        "_fast",
        "_fix_l4",
        "_idle_mark",
        "_local_ts",
        "_min_len",
        "_open",
        "_remote_ts",
        "_transform",
        "_ts_addr_only",
        "_ts_free",
        "_tunnel",
        "counters",
        "params",
        "replay",
    )

    def __init__(self, params: SaParams) -> None:
        self.params = params
        self.counters = SaCounters()
        self.replay = ReplayWindow(params.replay_window, params.esn)
        # Built on the first packet (OutboundSa._build says why): until then unprotect()
        # takes _unprotect_generic, which builds the context and comes back.
        self._transform: EspTransform | None = None
        self._idle_mark = 0  # packets at the idle sweep's previous visit (dataplane/idle.py)
        self._open: Callable[[bytes, int], bytes | None] | None = None
        self._min_len = 0
        self._tunnel = params.mode == Mode.TUNNEL
        self._local_ts = params.local_ts
        self._remote_ts = params.remote_ts
        # IP versions for which both sides are unrestricted: their packets skip the parse.
        free = _unrestricted_versions(params.local_ts) & _unrestricted_versions(params.remote_ts)
        self._ts_free = _VERSION_SETS[free]
        self._ts_addr_only = _NO_RANGES  # set by _build: only a packet reads it
        self._fix_l4 = params.encap and not self._tunnel
        self._cpi = params.ipcomp_cpi
        self._fast: _InboundFast | None = None

    @property
    def transform(self) -> EspTransform:
        """The SA's cipher state, built on first use."""
        t = self._transform
        return t if t is not None else self._build()

    def _build(self) -> EspTransform:
        params = self.params
        t = self._transform = make_transform(
            params.encr, params.encr_key, params.integ, params.integ_key, params.spi, params.esn
        )
        self._open = t.open
        self._min_len = t.overhead_min
        # Per IP version, when every selector of that version is address-only (protocol and
        # ports ANY, the usual case): the (lo, hi) ranges of each side, so the check needs only
        # the two addresses instead of a full parse. None for a side means "unrestricted".
        self._ts_addr_only = {
            v: (_address_ranges(params.remote_ts, v), _address_ranges(params.local_ts, v))
            for v in (4, 6)
            if _address_only(params.remote_ts, v) and _address_only(params.local_ts, v)
        }
        if isinstance(t, AeadTransform) and not params.esn and self._tunnel and not self._cpi:
            # The window's size never changes after construction; top and bitmap are read
            # from self.replay per packet (tests and the lifecycle code may set top).
            size = self.replay.size
            # A version both sides leave unrestricted passes whatever the selector list says
            # besides (the same shortcut as _ts_free in the generic path).
            v4 = (0, _V4_MAX, 0, _V4_MAX) if 4 in self._ts_free else _bounds(params.remote_ts, params.local_ts, 4)
            v6 = (0, _V6_MAX, 0, _V6_MAX) if 6 in self._ts_free else _bounds(params.remote_ts, params.local_ts, 6)
            self._fast = (t.decrypt, t.salt, t.overhead_min, self.replay, size, (1 << size) - 1, v4, v6)
        return t

    def release_transform(self) -> bool:
        """Drop the cipher context (an idle SA); the next packet builds it again. True if one was held."""
        held = self._transform is not None
        self._transform = self._open = self._fast = None
        return held

    def release_if_idle(self) -> bool:
        """The idle sweep's visit: release the context if no packet came in since the previous one."""
        packets = self.counters.packets
        idle = packets == self._idle_mark
        self._idle_mark = packets
        return idle and self.release_transform()

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
        fast = self._fast
        if fast is None:
            return self._unprotect_generic(esp, outer_src, outer_dst)
        if esp.__class__ is not bytes:
            esp = bytes(esp)
        decrypt, salt, min_len, replay, size, mask, v4, v6 = fast
        if len(esp) < min_len:
            raise self._drop(DropReason.SHORT)
        seq = _unpack_u32(esp, 4)[0]
        top = replay.top
        # Replay pre-check before the AEAD (RFC 4303 3.4.3). A number right of the window
        # (the in-order case) is always new; anything else, 0 included, asks the window.
        if seq <= top and replay.check(seq) is None:
            raise self._drop(DropReason.REPLAY)
        # AeadTransform.open_32 inline: nonce = salt || explicit IV, AAD = SPI || seq
        # (RFC 4106 4-5, RFC 7634 2); a wrong tag is InvalidTag (RFC 4303 3.4.4).
        try:
            plain = decrypt(salt + esp[8:16], esp[16:], esp[:8])
        except InvalidTag:
            raise self._drop(DropReason.ICV) from None
        # Authentic: only now may the window move (RFC 4303 3.4.3). ReplayWindow.update's
        # sliding case inline; the shift is bounded by the size, so no huge int is built.
        if seq > top:
            shift = seq - top
            replay.bitmap = ((replay.bitmap << shift) | 1) & mask if shift < size else 1 & mask
            replay.top = seq
        else:
            replay.update(seq)
        # The common case (RFC 4303 2.4, 2.7): no TFC padding and the minimal padding to a
        # multiple of 4 (what our protect sends; other senders that pad more are correct
        # too, just slower here). The plaintext is then exactly
        # ``inner packet || 1, 2, .. p || p || next header``, so comparing everything after
        # the inner packet (as long as its header says) with the trailer we would have sent
        # checks padding, pad length and next header in one go. Everything else (longer
        # padding, TFC padding, dummy packets, anything malformed) takes _tunnel_inner,
        # which checks step by step and picks the drop reason.
        first = plain[0]  # min_len leaves at least 4 bytes of plaintext
        if first >> 4 == 4:
            if len(plain) >= IPV4_HEADER_LEN + TRAILER_LEN:
                _, total, src, dst = _unpack_v4_head(plain)
                # IHL >= 5 and within the total length (RFC 791 3.1), then the trailer.
                if (
                    first >= 0x45
                    and (first & 0x0F) * 4 <= total
                    and plain[total:] == _AEAD_TRAILERS_V4[-(total + TRAILER_LEN) & 3]
                ):
                    if v4 is None:
                        packet = plain[:total]
                        self._check_selectors(packet)
                    else:
                        # RFC 4301 5.2: source inside the remote selector, destination in ours.
                        r_lo, r_hi, l_lo, l_hi = v4
                        if not (r_lo <= src <= r_hi and l_lo <= dst <= l_hi):
                            raise self._drop(DropReason.SELECTOR)
                        packet = plain[:total]
                    counters = self.counters
                    counters.packets += 1
                    counters.bytes += total
                    return packet
        elif first >> 4 == 6 and len(plain) >= IPV6_HEADER_LEN + TRAILER_LEN:
            _, payload_len, s_hi, s_lo, d_hi, d_lo = _unpack_v6_head(plain)
            total = IPV6_HEADER_LEN + payload_len
            if plain[total:] == _AEAD_TRAILERS_V6[-(total + TRAILER_LEN) & 3]:
                if v6 is None:
                    packet = plain[:total]
                    self._check_selectors(packet)
                else:
                    r_lo, r_hi, l_lo, l_hi = v6
                    if not (r_lo <= (s_hi << 64 | s_lo) <= r_hi and l_lo <= (d_hi << 64 | d_lo) <= l_hi):
                        raise self._drop(DropReason.SELECTOR)
                    packet = plain[:total]
                counters = self.counters
                counters.packets += 1
                counters.bytes += total
                return packet
        packet = self._tunnel_inner(plain, v4, v6)
        counters = self.counters
        counters.packets += 1
        counters.bytes += len(packet)
        return packet

    def _tunnel_inner(
        self, plain: bytes, v4: tuple[int, int, int, int] | None, v6: tuple[int, int, int, int] | None
    ) -> bytes:
        """Trailer, next header, inner header and selectors of a decrypted tunnel-mode payload.

        The full sequence of RFC 4303 2.4-2.7 and RFC 4301 5.2 for what the recognition of the
        usual trailer in ``unprotect`` did not accept. ``v4``/``v6`` are the selector bounds
        (see :func:`_bounds`); None means the full selector check.
        """
        # Trailer: ... padding || pad length || next header (RFC 4303 2.4-2.6); the caller's
        # length check leaves at least 4 bytes of plaintext, so both trailer bytes exist.
        m = len(plain)
        pad_len = plain[m - 2]
        nh = plain[m - 1]
        end = m - TRAILER_LEN - pad_len
        # The pad_len bytes before the trailer must be 1, 2, 3, ... (RFC 4303 2.4); an end
        # below 0 (more padding than bytes) is a padding error too.
        if pad_len and (end < 0 or plain[end : m - TRAILER_LEN] != PAD_BYTES[pad_len]):
            raise self._drop(DropReason.PADDING)
        # The inner header's own length decides where the packet ends; anything after it up
        # to the padding is TFC padding (RFC 4303 2.7).
        if nh == _NH_IPV4:
            if end < IPV4_HEADER_LEN:
                raise self._drop(DropReason.BAD_INNER)
            first, total, src, dst = _unpack_v4_head(plain)
            # version 4, IHL >= 5, header length <= total length <= what was decrypted
            if not (0x45 <= first <= 0x4F and (first & 0x0F) * 4 <= total <= end):
                raise self._drop(DropReason.BAD_INNER)
            if v4 is not None:
                r_lo, r_hi, l_lo, l_hi = v4
                if not (r_lo <= src <= r_hi and l_lo <= dst <= l_hi):
                    raise self._drop(DropReason.SELECTOR)
                return plain[:total]
        elif nh == _NH_IPV6:
            if end < IPV6_HEADER_LEN:
                raise self._drop(DropReason.BAD_INNER)
            first, payload_len, s_hi, s_lo, d_hi, d_lo = _unpack_v6_head(plain)
            total = IPV6_HEADER_LEN + payload_len
            if first >> 4 != 6 or total > end:
                raise self._drop(DropReason.BAD_INNER)
            if v6 is not None:
                r_lo, r_hi, l_lo, l_hi = v6
                if not (r_lo <= (s_hi << 64 | s_lo) <= r_hi and l_lo <= (d_hi << 64 | d_lo) <= l_hi):
                    raise self._drop(DropReason.SELECTOR)
                return plain[:total]
        elif nh == _NH_NONE:
            raise self._drop(DropReason.DUMMY)  # RFC 4303 2.6
        else:
            raise self._drop(DropReason.BAD_INNER)
        packet = plain[:total]
        self._check_selectors(packet)
        return packet

    def _unprotect_generic(
        self, esp: bytes | bytearray | memoryview, outer_src: bytes | None, outer_dst: bytes | None
    ) -> bytes:
        """``unprotect`` for every SA the inlined path does not cover (CBC/NULL, ESN, transport),
        and the first packet after the cipher context was built or released."""
        if self._open is None:
            self._build()
            if self._fast is not None:
                return self.unprotect(esp, outer_src, outer_dst)
        assert self._open is not None
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
        if nh == NH_IPCOMP and self._cpi:
            # RFC 3173 3.2: decompress after ESP; the sender may also have sent it uncompressed
            try:
                plain, nh = decompress(plain[:end], self._cpi)
            except IpcompError:
                raise self._drop(DropReason.IPCOMP) from None
            end = len(plain)
        if self._tunnel:
            # The inner header's own length decides where the packet ends; anything after it
            # up to the padding is TFC padding (RFC 4303 2.7).
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
        if self._remote_ts and not selectors_match(self._remote_ts, version, src, proto, sport):
            raise self._drop(DropReason.SELECTOR)
        if self._local_ts and not selectors_match(self._local_ts, version, dst, proto, dport):
            raise self._drop(DropReason.SELECTOR)


# Per-SA constants of InboundSa's inlined path: AEAD decrypt, salt, minimum packet length,
# replay window, its size and mask, then the IPv4 and IPv6 selector bounds (see _bounds).
_InboundFast = tuple[
    Callable[[bytes, bytes, bytes | None], bytes],
    bytes,
    int,
    ReplayWindow,
    int,
    int,
    "tuple[int, int, int, int] | None",
    "tuple[int, int, int, int] | None",
]


def _bounds(
    remote_ts: tuple[Selector, ...], local_ts: tuple[Selector, ...], version: int
) -> tuple[int, int, int, int] | None:
    """``(remote lo, remote hi, local lo, local hi)`` when the selectors of ``version`` are one
    address range per side and look at nothing else; None when a full check is needed.

    An empty side is unrestricted (the whole address space); a side with selectors of the
    other version only allows nothing, expressed as the empty range ``(1, 0)``. Overlapping
    or adjacent ranges of one side are merged first, so ``0.0.0.0/1 + 128.0.0.0/1`` is one.
    """
    if not (_address_only(remote_ts, version) and _address_only(local_ts, version)):
        return None
    top = _V4_MAX if version == 4 else _V6_MAX
    remote = _merged_range(remote_ts, version, top)
    local = _merged_range(local_ts, version, top)
    if remote is None or local is None:
        return None
    return remote + local


def _merged_range(selectors: tuple[Selector, ...], version: int, top: int) -> tuple[int, int] | None:
    """The single (lo, hi) that ``selectors`` cover for ``version``, or None if it takes several."""
    if not selectors:
        return (0, top)
    ranges = sorted((s.lo, s.hi) for s in selectors if s.version == version)
    if not ranges:
        return (1, 0)  # nothing of this version passes: lo <= x <= hi never holds
    lo, hi = ranges[0]
    for r_lo, r_hi in ranges[1:]:
        if r_lo > hi + 1:
            return None  # a gap: more than one range
        hi = max(hi, r_hi)
    return (lo, hi)


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


_NO_RANGES: dict[int, tuple[tuple[tuple[int, int], ...] | None, tuple[tuple[int, int], ...] | None]] = {}
# The four possible _ts_free values, shared by every SA (a frozenset is 216 bytes).
_VERSION_SETS = {s: s for s in (frozenset(), frozenset((4,)), frozenset((6,)), frozenset((4, 6)))}


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
    "IpsecProto",
    "Mode",
    "OutboundSa",
    "SaCounters",
    "SaParams",
    "Selector",
]
