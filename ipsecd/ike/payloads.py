"""One frozen dataclass per IKEv2 payload (RFC 7296 section 3).

These are the shared vocabulary of the IKE code: the codec turns them into
bytes and back, the tasks build and read them. Field names follow the RFC's
figure labels. Addresses are ``ipaddress`` objects, SPIs are bytes as on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Union

from ipsecd.iana import (
    AuthMethod,
    CertEncoding,
    CfgType,
    IdType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)

IPAddress = Union[IPv4Address, IPv6Address]


@dataclass(frozen=True, slots=True)
class Transform:
    """RFC 7296 3.3.2. ``key_length`` is the Key Length attribute in bits, or None."""

    type: TransformType
    id: int
    key_length: int | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    """RFC 7296 3.3.1. ``spi`` is 8 bytes (IKE rekey), 4 bytes (ESP/AH) or empty."""

    num: int
    protocol: ProtocolId
    spi: bytes
    transforms: tuple[Transform, ...]

    def of_type(self, ttype: TransformType) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == ttype)


@dataclass(frozen=True)
class SaPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]


@dataclass(frozen=True)
class KePayload:
    payload_type: ClassVar[PayloadType] = PayloadType.KE
    group: int
    data: bytes


@dataclass(frozen=True)
class IdPayload:
    """IDi or IDr (3.5); ``kind`` says which. ``data`` is the identification data."""

    kind: PayloadType  # PayloadType.IDi or PayloadType.IDr
    id_type: IdType
    data: bytes

    @property
    def payload_type(self) -> PayloadType:  # type: ignore[override]
        return self.kind


@dataclass(frozen=True)
class CertPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.CERT
    encoding: CertEncoding
    data: bytes


@dataclass(frozen=True)
class CertReqPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: CertEncoding
    data: bytes


@dataclass(frozen=True)
class AuthPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.AUTH
    method: AuthMethod
    data: bytes


@dataclass(frozen=True)
class NoncePayload:
    payload_type: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes


@dataclass(frozen=True)
class NotifyPayload:
    """3.10. ``notify_type`` stays an int so unknown types survive a round trip."""

    payload_type: ClassVar[PayloadType] = PayloadType.NOTIFY
    notify_type: int
    protocol: ProtocolId = ProtocolId.NONE
    spi: bytes = b""
    data: bytes = b""


@dataclass(frozen=True)
class DeletePayload:
    """3.11. For IKE, ``spis`` is empty; for ESP/AH each SPI is 4 bytes."""

    payload_type: ClassVar[PayloadType] = PayloadType.DELETE
    protocol: ProtocolId
    spis: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class VendorIdPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """3.13.1. ``ip_proto`` 0 means any; ports are inclusive ranges."""

    ts_type: TsType
    ip_proto: int
    start_port: int
    end_port: int
    start_addr: IPAddress
    end_addr: IPAddress


@dataclass(frozen=True)
class TsPayload:
    """TSi or TSr (3.13); ``kind`` says which."""

    kind: PayloadType  # PayloadType.TSi or PayloadType.TSr
    selectors: tuple[TrafficSelector, ...]

    @property
    def payload_type(self) -> PayloadType:  # type: ignore[override]
        return self.kind


@dataclass(frozen=True)
class CpPayload:
    """3.15. ``attributes`` are (ConfigAttribute type as int, value) pairs."""

    payload_type: ClassVar[PayloadType] = PayloadType.CP
    cfg_type: CfgType
    attributes: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class EapPayload:
    """3.16. ``data`` is the whole EAP message (Code, Identifier, Length, ...)."""

    payload_type: ClassVar[PayloadType] = PayloadType.EAP
    data: bytes


@dataclass(frozen=True)
class UnknownPayload:
    """A payload type this codec does not know; kept only if not critical (2.5)."""

    kind: int
    critical: bool
    data: bytes = field(repr=False)

    @property
    def payload_type(self) -> int:
        return self.kind


Payload = Union[
    SaPayload,
    KePayload,
    IdPayload,
    CertPayload,
    CertReqPayload,
    AuthPayload,
    NoncePayload,
    NotifyPayload,
    DeletePayload,
    VendorIdPayload,
    TsPayload,
    CpPayload,
    EapPayload,
    UnknownPayload,
]
