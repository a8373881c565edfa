"""IKEv2 payload wire codec (RFC 7296 section 3).

Decoding is strict about structure (every length is checked before it is
used, and a malformed payload raises ``RemoteProtocolError`` carrying
INVALID_SYNTAX) but lenient about registry values: an unknown ID type, auth
method, certificate encoding or notify protocol stays a plain ``int`` so the
payload round-trips and the consumer decides what it means.

Choices where RFC 7296 leaves room:

* Unknown payload type, critical bit clear: kept as ``UnknownPayload`` (2.5
  says skip it; keeping it lets the rule table and logs see it).
* Proposal whose protocol or some transform type we do not know: the whole
  proposal is dropped from the SA payload (3.3.6: such a proposal is
  unacceptable, the others are processed as usual). An SA payload may thus
  decode with fewer proposals, or none, which proposal selection answers with
  NO_PROPOSAL_CHOSEN.
* Transform carrying an attribute we do not know: that transform alone is
  dropped (we cannot honour what it asks for); the rest of the proposal stays.
* Traffic selector of an unknown TS type: skipped via its Selector Length.
  Dropping a selector only narrows what the peer offered, which is safe.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar, cast

from ipsecd.errors import LocalProtocolError, RemoteProtocolError
from ipsecd.iana import (
    GENERIC_PAYLOAD_HEADER_LEN,
    AuthMethod,
    CertEncoding,
    CfgType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformAttr,
    TransformType,
    TsType,
)
from ipsecd.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)

CRITICAL_BIT = 0x80
ATTR_FORMAT_TV = 0x8000  # RFC 7296 3.3.5: AF bit set = Type/Value, 2-byte value
LAST_PROPOSAL = 0
MORE_PROPOSALS = 2
LAST_TRANSFORM = 0
MORE_TRANSFORMS = 3
PROPOSAL_HEADER_LEN = 8
TRANSFORM_HEADER_LEN = 8
TS_IPV4_LEN = 16
TS_IPV6_LEN = 40
TS_HEADER_LEN = 4
NONCE_MIN_LEN = 16  # RFC 7296 2.10
NONCE_MAX_LEN = 256
EAP_HEADER_LEN = 4
MAX_PAYLOAD_LEN = 0xFFFF

# RFC 7296 3.3.1: allowed SPI sizes per protocol (IKE: 0 in IKE_SA_INIT, 8 when rekeying).
PROPOSAL_SPI_SIZES: dict[ProtocolId, frozenset[int]] = {
    ProtocolId.IKE: frozenset({0, 8}),
    ProtocolId.AH: frozenset({4}),
    ProtocolId.ESP: frozenset({4}),
}
DELETE_SPI_SIZES: dict[ProtocolId, int] = {ProtocolId.IKE: 0, ProtocolId.AH: 4, ProtocolId.ESP: 4}

E = TypeVar("E", bound=IntEnum)


def _syntax(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, notify=NotifyType.INVALID_SYNTAX)


def _lenient(enum_cls: type[E], value: int) -> E:
    """The enum member, or the bare int for values the registry has but we do not."""
    try:
        return enum_cls(value)
    except ValueError:
        return cast(E, value)


def _known(enum_cls: type[E], value: int) -> E | None:
    try:
        return enum_cls(value)
    except ValueError:
        return None


class Reader:
    """Cursor over received bytes; every read is bounds-checked (INVALID_SYNTAX on overrun)."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise _syntax(f"{self._what}: needs {n} bytes, {self.remaining} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def end(self) -> None:
        if self.remaining:
            raise _syntax(f"{self._what}: {self.remaining} trailing bytes")


def _u8(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{what} {value} does not fit in one octet")
    return bytes((value,))


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{what} {value} does not fit in two octets")
    return struct.pack("!H", value)


# --- encoding ---------------------------------------------------------------


def _encode_transform(t: Transform, last: bool) -> bytes:
    attrs = b""
    if t.key_length is not None:
        attrs = _u16(ATTR_FORMAT_TV | TransformAttr.KEY_LENGTH, "attribute") + _u16(t.key_length, "key length")
    length = TRANSFORM_HEADER_LEN + len(attrs)
    return (
        _u8(LAST_TRANSFORM if last else MORE_TRANSFORMS, "last")
        + b"\x00"
        + _u16(length, "transform length")
        + _u8(t.type, "transform type")
        + b"\x00"
        + _u16(t.id, "transform id")
        + attrs
    )


def _encode_proposal(p: Proposal, last: bool) -> bytes:
    transforms = b"".join(_encode_transform(t, i == len(p.transforms) - 1) for i, t in enumerate(p.transforms))
    length = PROPOSAL_HEADER_LEN + len(p.spi) + len(transforms)
    return (
        _u8(LAST_PROPOSAL if last else MORE_PROPOSALS, "last")
        + b"\x00"
        + _u16(length, "proposal length")
        + _u8(p.num, "proposal num")
        + _u8(p.protocol, "protocol id")
        + _u8(len(p.spi), "SPI size")
        + _u8(len(p.transforms), "transform count")
        + p.spi
        + transforms
    )


def _encode_selector(ts: TrafficSelector) -> bytes:
    want = IPv4Address if ts.ts_type == TsType.TS_IPV4_ADDR_RANGE else IPv6Address
    if not (isinstance(ts.start_addr, want) and isinstance(ts.end_addr, want)):
        raise LocalProtocolError(f"traffic selector {ts.ts_type!r} with addresses of the wrong family")
    length = TS_IPV4_LEN if want is IPv4Address else TS_IPV6_LEN
    return (
        _u8(ts.ts_type, "TS type")
        + _u8(ts.ip_proto, "IP protocol")
        + _u16(length, "selector length")
        + _u16(ts.start_port, "start port")
        + _u16(ts.end_port, "end port")
        + ts.start_addr.packed
        + ts.end_addr.packed
    )


def _encode_sa(p: SaPayload) -> bytes:
    return b"".join(_encode_proposal(prop, i == len(p.proposals) - 1) for i, prop in enumerate(p.proposals))


def _encode_ke(p: KePayload) -> bytes:
    return _u16(p.group, "KE group") + b"\x00\x00" + p.data


def _encode_id(p: IdPayload) -> bytes:
    return _u8(p.id_type, "ID type") + b"\x00\x00\x00" + p.data


def _encode_cert(p: CertPayload | CertReqPayload) -> bytes:
    return _u8(p.encoding, "cert encoding") + p.data


def _encode_auth(p: AuthPayload) -> bytes:
    return _u8(p.method, "auth method") + b"\x00\x00\x00" + p.data


def _encode_notify(p: NotifyPayload) -> bytes:
    header = _u8(p.protocol, "protocol id") + _u8(len(p.spi), "SPI size") + _u16(p.notify_type, "notify type")
    return header + p.spi + p.data


def _encode_delete(p: DeletePayload) -> bytes:
    size = len(p.spis[0]) if p.spis else DELETE_SPI_SIZES.get(p.protocol, 0)
    if any(len(s) != size for s in p.spis):
        raise LocalProtocolError("delete payload SPIs differ in size")
    return _u8(p.protocol, "protocol id") + _u8(size, "SPI size") + _u16(len(p.spis), "SPI count") + b"".join(p.spis)


def _encode_ts(p: TsPayload) -> bytes:
    return _u8(len(p.selectors), "TS count") + b"\x00\x00\x00" + b"".join(_encode_selector(s) for s in p.selectors)


def _encode_cp(p: CpPayload) -> bytes:
    out = [_u8(p.cfg_type, "CFG type"), b"\x00\x00\x00"]
    for attr_type, value in p.attributes:
        if not 0 <= attr_type <= 0x7FFF:
            raise LocalProtocolError(f"config attribute type {attr_type} does not fit in 15 bits")
        out.append(_u16(attr_type, "attribute type") + _u16(len(value), "attribute length") + value)
    return b"".join(out)


def encode_payload_body(p: Payload) -> bytes:
    """The payload body without its generic header (what RFC 7296 2.15 signs for IDs)."""
    if isinstance(p, SaPayload):
        return _encode_sa(p)
    if isinstance(p, KePayload):
        return _encode_ke(p)
    if isinstance(p, IdPayload):
        return _encode_id(p)
    if isinstance(p, CertPayload | CertReqPayload):
        return _encode_cert(p)
    if isinstance(p, AuthPayload):
        return _encode_auth(p)
    if isinstance(p, NotifyPayload):
        return _encode_notify(p)
    if isinstance(p, DeletePayload):
        return _encode_delete(p)
    if isinstance(p, TsPayload):
        return _encode_ts(p)
    if isinstance(p, CpPayload):
        return _encode_cp(p)
    if isinstance(p, NoncePayload | VendorIdPayload | EapPayload | UnknownPayload):
        return p.data
    raise LocalProtocolError(f"cannot encode {type(p).__name__}")


def generic_header(next_type: int, body_len: int, critical: bool = False) -> bytes:
    """RFC 7296 3.2 generic payload header for a body of ``body_len`` bytes."""
    length = GENERIC_PAYLOAD_HEADER_LEN + body_len
    if length > MAX_PAYLOAD_LEN:
        raise LocalProtocolError(f"payload of {length} bytes exceeds the 16-bit length field")
    return _u8(next_type, "next payload") + _u8(CRITICAL_BIT if critical else 0, "flags") + _u16(length, "length")


def encode_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """Chain payloads: (type of the first, bytes). The critical bit is only ever
    set on an ``UnknownPayload`` that asks for it (tests build such messages)."""
    if not payloads:
        return PayloadType.NO_NEXT_PAYLOAD, b""
    out = []
    for i, p in enumerate(payloads):
        next_type = int(payloads[i + 1].payload_type) if i + 1 < len(payloads) else PayloadType.NO_NEXT_PAYLOAD
        body = encode_payload_body(p)
        critical = isinstance(p, UnknownPayload) and p.critical
        out.append(generic_header(next_type, len(body), critical) + body)
    return int(payloads[0].payload_type), b"".join(out)


# --- decoding ---------------------------------------------------------------


@dataclass(frozen=True)
class RawPayload:
    """One payload cut out of a chain, not yet interpreted.

    ``offset`` is where its generic header starts in the chain's bytes;
    ``next_type`` is its Next Payload field (for SK/SKF: the first inner type).
    """

    type: int
    next_type: int
    critical: bool
    offset: int
    body: bytes


# Payloads whose Next Payload field points inside them (RFC 7296 3.14, RFC 7383 2.5);
# they end the outer chain.
CHAIN_ENDING_TYPES = frozenset({PayloadType.SK, PayloadType.SKF})


def split_payloads(first_type: int, data: bytes) -> list[RawPayload]:
    """Cut a payload chain into raw payloads, checking every generic header length."""
    out: list[RawPayload] = []
    pos = 0
    current = first_type
    while current != PayloadType.NO_NEXT_PAYLOAD:
        if len(data) - pos < GENERIC_PAYLOAD_HEADER_LEN:
            raise _syntax(f"payload {current}: truncated generic header at offset {pos}")
        next_type, flags, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < GENERIC_PAYLOAD_HEADER_LEN or pos + length > len(data):
            raise _syntax(f"payload {current}: bad length {length} at offset {pos}")
        body = data[pos + GENERIC_PAYLOAD_HEADER_LEN : pos + length]
        out.append(RawPayload(current, next_type, bool(flags & CRITICAL_BIT), pos, body))
        pos += length
        if current in CHAIN_ENDING_TYPES:
            break
        current = next_type
    if pos != len(data):
        raise _syntax(f"{len(data) - pos} bytes after the last payload")
    return out


def _decode_transform(r: Reader) -> tuple[Transform | None, bool, bool]:
    """(transform or None if it carries an unknown attribute, type known?, more follow?)."""
    last = r.u8()
    if last not in (LAST_TRANSFORM, MORE_TRANSFORMS):
        raise _syntax(f"transform: Last Substruc {last}")
    r.u8()
    length = r.u16()
    if length < TRANSFORM_HEADER_LEN:
        raise _syntax(f"transform: length {length}")
    sub = Reader(r.take(length - 4), "transform")
    ttype, _, tid = sub.u8(), sub.u8(), sub.u16()
    key_length: int | None = None
    understood = True
    while sub.remaining:
        attr = sub.u16()
        attr_type = attr & ~ATTR_FORMAT_TV
        is_tv = bool(attr & ATTR_FORMAT_TV)
        value = sub.u16() if is_tv else None
        if not is_tv:
            sub.take(sub.u16())
        if attr_type != TransformAttr.KEY_LENGTH:
            understood = False
        # RFC 7296 3.3.5: Key Length is always Type/Value format and appears once.
        elif value is None or key_length is not None:
            raise _syntax("transform: malformed or repeated Key Length attribute")
        else:
            key_length = value
    known_type = _known(TransformType, ttype)
    more = last == MORE_TRANSFORMS
    if known_type is None or not understood:
        return None, known_type is not None, more
    return Transform(known_type, tid, key_length), True, more


def _decode_proposal(r: Reader, expected_num: int | None) -> tuple[Proposal | None, bool, int]:
    """(proposal or None if unusable, more follow?, its number)."""
    last = r.u8()
    if last not in (LAST_PROPOSAL, MORE_PROPOSALS):
        raise _syntax(f"proposal: Last Substruc {last}")
    r.u8()
    length = r.u16()
    if length < PROPOSAL_HEADER_LEN:
        raise _syntax(f"proposal: length {length}")
    sub = Reader(r.take(length - 4), "proposal")
    num, proto, spi_size, count = sub.u8(), sub.u8(), sub.u8(), sub.u8()
    # RFC 7296 3.3.1: numbered from one, each one more than the previous; but a response's
    # single proposal carries the number of the one accepted, so the first may be any non-zero number.
    if (expected_num is None and num == 0) or (expected_num is not None and num != expected_num):
        raise _syntax(f"proposal: number {num}, expected {expected_num}")
    protocol = _known(ProtocolId, proto)
    if protocol is not None and spi_size not in PROPOSAL_SPI_SIZES.get(protocol, frozenset()):
        raise _syntax(f"proposal: SPI size {spi_size} for protocol {proto}")
    spi = sub.take(spi_size)
    transforms: list[Transform] = []
    usable = protocol is not None and protocol in PROPOSAL_SPI_SIZES
    seen = 0
    more = True
    while sub.remaining:
        if not more:
            raise _syntax("proposal: data after the last transform")
        transform, type_known, more = _decode_transform(sub)
        seen += 1
        usable = usable and type_known
        if transform is not None:
            transforms.append(transform)
    if more and seen:
        raise _syntax("proposal: last transform not marked last")
    if seen != count:
        raise _syntax(f"proposal: {seen} transforms, header says {count}")
    if not usable or protocol is None:
        return None, last == MORE_PROPOSALS, num
    return Proposal(num, protocol, spi, tuple(transforms)), last == MORE_PROPOSALS, num


def _decode_sa(body: bytes) -> SaPayload:
    r = Reader(body, "SA")
    proposals: list[Proposal] = []
    num: int | None = None
    more = True
    while more:
        if not r.remaining:
            raise _syntax("SA: missing proposal")
        proposal, more, got = _decode_proposal(r, num)
        num = got + 1
        if proposal is not None:
            proposals.append(proposal)
    r.end()
    return SaPayload(tuple(proposals))


def _decode_ke(body: bytes) -> KePayload:
    r = Reader(body, "KE")
    group = r.u16()
    r.u16()
    return KePayload(group, r.rest())


def _decode_id(kind: PayloadType) -> Callable[[bytes], IdPayload]:
    def decode(body: bytes) -> IdPayload:
        r = Reader(body, kind.name)
        id_type = _lenient(IdType, r.u8())
        r.take(3)
        return IdPayload(kind, id_type, r.rest())

    return decode


def _decode_cert(body: bytes) -> CertPayload:
    r = Reader(body, "CERT")
    return CertPayload(_lenient(CertEncoding, r.u8()), r.rest())


def _decode_certreq(body: bytes) -> CertReqPayload:
    r = Reader(body, "CERTREQ")
    return CertReqPayload(_lenient(CertEncoding, r.u8()), r.rest())


def _decode_auth(body: bytes) -> AuthPayload:
    r = Reader(body, "AUTH")
    method = _lenient(AuthMethod, r.u8())
    r.take(3)
    return AuthPayload(method, r.rest())


def _decode_nonce(body: bytes) -> NoncePayload:
    if not NONCE_MIN_LEN <= len(body) <= NONCE_MAX_LEN:
        raise _syntax(f"Nonce: {len(body)} bytes, RFC 7296 2.10 requires 16..256")
    return NoncePayload(body)


def _decode_notify(body: bytes) -> NotifyPayload:
    r = Reader(body, "Notify")
    proto, spi_size, ntype = r.u8(), r.u8(), r.u16()
    spi = r.take(spi_size)
    # RFC 7296 3.10: with no SPI the Protocol ID is meaningless and ignored.
    protocol = _lenient(ProtocolId, proto) if spi_size else ProtocolId.NONE
    return NotifyPayload(ntype, protocol, spi, r.rest())


def _decode_delete(body: bytes) -> DeletePayload:
    r = Reader(body, "Delete")
    proto, spi_size, count = r.u8(), r.u8(), r.u16()
    protocol = _known(ProtocolId, proto)
    # RFC 7296 3.11: IKE SA deletes carry no SPI; ESP/AH carry 4-byte SPIs.
    if protocol is None or protocol not in DELETE_SPI_SIZES:
        raise _syntax(f"Delete: protocol {proto}")
    if spi_size != DELETE_SPI_SIZES[protocol]:
        raise _syntax(f"Delete: SPI size {spi_size} for {protocol.name}")
    if protocol == ProtocolId.IKE and count:
        raise _syntax("Delete: IKE SA delete with SPIs")
    spis = tuple(r.take(spi_size) for _ in range(count))
    r.end()
    return DeletePayload(protocol, spis)


def _decode_selector(r: Reader) -> TrafficSelector | None:
    ts_type, proto, length = r.u8(), r.u8(), r.u16()
    if length < TS_HEADER_LEN:
        raise _syntax(f"traffic selector: length {length}")
    sub = Reader(r.take(length - TS_HEADER_LEN), "traffic selector")
    known = _known(TsType, ts_type)
    if known is None:
        return None
    want = TS_IPV4_LEN if known == TsType.TS_IPV4_ADDR_RANGE else TS_IPV6_LEN
    if length != want:
        raise _syntax(f"traffic selector: {known.name} with length {length}")
    start_port, end_port = sub.u16(), sub.u16()
    size = (want - 8) // 2
    addr = IPv4Address if known == TsType.TS_IPV4_ADDR_RANGE else IPv6Address
    start, end = addr(sub.take(size)), addr(sub.take(size))
    return TrafficSelector(known, proto, start_port, end_port, start, end)


def _decode_ts(kind: PayloadType) -> Callable[[bytes], TsPayload]:
    def decode(body: bytes) -> TsPayload:
        r = Reader(body, kind.name)
        count = r.u8()
        r.take(3)
        selectors = [_decode_selector(r) for _ in range(count)]
        r.end()
        return TsPayload(kind, tuple(s for s in selectors if s is not None))

    return decode


def _decode_cp(body: bytes) -> CpPayload:
    r = Reader(body, "CP")
    cfg_type = _lenient(CfgType, r.u8())
    r.take(3)
    attributes = []
    while r.remaining:
        # RFC 7296 3.15.1: the top bit is reserved and ignored on receipt.
        attr_type = r.u16() & 0x7FFF
        attributes.append((attr_type, r.take(r.u16())))
    return CpPayload(cfg_type, tuple(attributes))


def _decode_eap(body: bytes) -> EapPayload:
    # RFC 3748 4: Code, Identifier, Length; Length covers the whole EAP packet.
    if len(body) < EAP_HEADER_LEN or int.from_bytes(body[2:4], "big") != len(body):
        raise _syntax("EAP: length field does not match the payload")
    return EapPayload(body)


_DECODERS: dict[int, Callable[[bytes], Payload]] = {
    PayloadType.SA: _decode_sa,
    PayloadType.KE: _decode_ke,
    PayloadType.IDi: _decode_id(PayloadType.IDi),
    PayloadType.IDr: _decode_id(PayloadType.IDr),
    PayloadType.CERT: _decode_cert,
    PayloadType.CERTREQ: _decode_certreq,
    PayloadType.AUTH: _decode_auth,
    PayloadType.NONCE: _decode_nonce,
    PayloadType.NOTIFY: _decode_notify,
    PayloadType.DELETE: _decode_delete,
    PayloadType.VENDOR_ID: VendorIdPayload,
    PayloadType.TSi: _decode_ts(PayloadType.TSi),
    PayloadType.TSr: _decode_ts(PayloadType.TSr),
    PayloadType.CP: _decode_cp,
    PayloadType.EAP: _decode_eap,
}


def decode_raw(raw: RawPayload) -> Payload:
    """Interpret one raw payload (RFC 7296 2.5 critical-bit rules)."""
    decoder = _DECODERS.get(raw.type)
    if decoder is not None:
        return decoder(raw.body)  # the critical bit is ignored on types we know
    if raw.type in CHAIN_ENDING_TYPES:
        raise _syntax(f"payload type {raw.type} is not allowed here")
    if raw.critical:
        raise RemoteProtocolError(
            f"unsupported critical payload type {raw.type}",
            notify=NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
            notify_data=bytes((raw.type,)),
        )
    return UnknownPayload(raw.type, False, raw.body)


def decode_payloads(first_type: int, data: bytes) -> list[Payload]:
    """Decode a complete chain with no SK/SKF payload in it (raises INVALID_SYNTAX if one is)."""
    return [decode_raw(raw) for raw in split_payloads(first_type, data)]
