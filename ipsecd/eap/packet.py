"""EAP packet codec (RFC 3748 4 and 5).

One frozen dataclass, :class:`EapPacket`, for all four codes.  Requests and responses
carry a Type; for the Expanded Type (254, RFC 3748 5.7) the 3-octet Vendor-Id and
4-octet Vendor-Type are parsed into their own fields and ``data`` is what follows them.

Every length is checked before anything is sliced.  Malformed input raises
:class:`EapDecodeError`, a :class:`~ipsecd.errors.RemoteProtocolError` whose notify is
AUTHENTICATION_FAILED (what the IKE layer answers when an EAP exchange cannot go on,
RFC 7296 2.16); no other exception leaves :meth:`EapPacket.decode`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import EapCode, EapType, NotifyType

EAP_HEADER_LEN = 4  # Code, Identifier, Length (2)
EXPANDED_HEADER_LEN = 7  # Vendor-Id (3), Vendor-Type (4), after the Type octet
MAX_EAP_LEN = 0xFFFF
VENDOR_IETF = 0  # RFC 3748 5.7: Vendor-Id 0 means the Vendor-Type is an IETF type


class EapDecodeError(RemoteProtocolError):
    """The peer sent an EAP packet that cannot be parsed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, notify=NotifyType.AUTHENTICATION_FAILED)


@dataclass(frozen=True)
class EapPacket:
    """One EAP packet.  ``type`` is None for Success/Failure; unknown types stay plain ints."""

    code: EapCode
    identifier: int
    type: int | None = None
    data: bytes = b""
    vendor_id: int = 0  # Expanded Type only
    vendor_type: int = 0

    # ------------------------------------------------------------ constructors
    @classmethod
    def request(cls, identifier: int, eap_type: int, data: bytes = b"") -> EapPacket:
        return cls(EapCode.REQUEST, identifier & 0xFF, eap_type, data)

    @classmethod
    def response(cls, identifier: int, eap_type: int, data: bytes = b"") -> EapPacket:
        return cls(EapCode.RESPONSE, identifier & 0xFF, eap_type, data)

    @classmethod
    def success(cls, identifier: int) -> EapPacket:
        return cls(EapCode.SUCCESS, identifier & 0xFF)

    @classmethod
    def failure(cls, identifier: int) -> EapPacket:
        return cls(EapCode.FAILURE, identifier & 0xFF)

    @classmethod
    def nak(cls, identifier: int, wanted: list[int]) -> EapPacket:
        """A Legacy Nak (RFC 3748 5.3.1) listing the types we would accept; [] sends 0 (none)."""
        return cls.response(identifier, EapType.NAK, bytes(wanted) if wanted else b"\x00")

    # ------------------------------------------------------------ views
    @property
    def is_request(self) -> bool:
        return self.code == EapCode.REQUEST

    @property
    def is_response(self) -> bool:
        return self.code == EapCode.RESPONSE

    @property
    def method(self) -> int | None:
        """The method type, looking through an IETF Expanded Type (vendor 0) to the type it names."""
        if self.type == EapType.EXPANDED and self.vendor_id == VENDOR_IETF:
            return self.vendor_type
        return self.type

    def nak_types(self) -> list[int]:
        """The types a Nak response asks for (RFC 3748 5.3); 0 (none acceptable) is dropped."""
        if self.type == EapType.NAK:
            return [t for t in self.data if t != 0]
        if self.type == EapType.EXPANDED and self.vendor_id == VENDOR_IETF and self.vendor_type == EapType.NAK:
            # RFC 3748 5.3.2: a list of 8-octet expanded entries; IETF ones name a plain type
            out: list[int] = []
            for off in range(0, len(self.data) - len(self.data) % 8, 8):
                if self.data[off] != EapType.EXPANDED:
                    continue
                vendor = int.from_bytes(self.data[off + 1:off + 4], "big")
                vtype = int.from_bytes(self.data[off + 4:off + 8], "big")
                if vendor == VENDOR_IETF and vtype != 0:
                    out.append(vtype)
            return out
        return []

    def __str__(self) -> str:
        name = EapCode(self.code).name
        if self.type is None:
            return f"EAP-{name} id={self.identifier}"
        try:
            tname = EapType(self.type).name
        except ValueError:
            tname = str(self.type)
        return f"EAP-{name}/{tname} id={self.identifier} len={len(self.data)}"

    # ------------------------------------------------------------ wire form
    def encode(self) -> bytes:
        if self.type is None:
            if self.code not in (EapCode.SUCCESS, EapCode.FAILURE):
                raise ValueError(f"EAP {self.code!r} needs a Type")
            return struct.pack("!BBH", self.code, self.identifier, EAP_HEADER_LEN)
        body = bytes([self.type])
        if self.type == EapType.EXPANDED:
            body += self.vendor_id.to_bytes(3, "big") + self.vendor_type.to_bytes(4, "big")
        body += self.data
        length = EAP_HEADER_LEN + len(body)
        if length > MAX_EAP_LEN:
            raise ValueError(f"EAP packet of {length} octets does not fit the Length field")
        return struct.pack("!BBH", self.code, self.identifier, length) + body

    @classmethod
    def decode(cls, data: bytes) -> EapPacket:
        """Parse one EAP packet; octets after Length are link padding and ignored (RFC 3748 4)."""
        if len(data) < EAP_HEADER_LEN:
            raise EapDecodeError(f"EAP packet of {len(data)} octets is shorter than its header")
        code, identifier, length = struct.unpack_from("!BBH", data)
        if length < EAP_HEADER_LEN:
            raise EapDecodeError(f"EAP Length {length} is below the header size")
        if length > len(data):
            raise EapDecodeError(f"EAP Length {length} exceeds the {len(data)} octets received")
        try:
            ecode = EapCode(code)
        except ValueError:
            raise EapDecodeError(f"unknown EAP Code {code}") from None
        if ecode in (EapCode.SUCCESS, EapCode.FAILURE):
            if length != EAP_HEADER_LEN:  # RFC 3748 4.2: no data
                raise EapDecodeError(f"EAP-{ecode.name} with Length {length}, expected {EAP_HEADER_LEN}")
            return cls(ecode, identifier)
        if length < EAP_HEADER_LEN + 1:
            raise EapDecodeError(f"EAP-{ecode.name} without a Type octet")
        eap_type = data[EAP_HEADER_LEN]
        body = bytes(data[EAP_HEADER_LEN + 1:length])
        if eap_type == EapType.EXPANDED:
            if len(body) < EXPANDED_HEADER_LEN:
                raise EapDecodeError(f"EAP Expanded Type with {len(body)} octets, needs {EXPANDED_HEADER_LEN}")
            vendor_id = int.from_bytes(body[:3], "big")
            vendor_type = int.from_bytes(body[3:7], "big")
            return cls(ecode, identifier, eap_type, body[EXPANDED_HEADER_LEN:], vendor_id, vendor_type)
        if eap_type == EapType.NAK and ecode != EapCode.RESPONSE:
            raise EapDecodeError("EAP Nak in a request")  # RFC 3748 5.3: response only
        return cls(ecode, identifier, eap_type, body)
