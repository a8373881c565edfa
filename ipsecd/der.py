"""The few DER (X.690) pieces ipsecd needs beyond what ``cryptography`` exposes.

RFC 7427 AUTH payloads carry an AlgorithmIdentifier in front of the signature,
identities compare Distinguished Names RDN by RDN, and a CERTREQ names a CA by the
SHA-1 of its raw SubjectPublicKeyInfo.  All of that is small, peer-supplied DER: this
reader checks every length against the bytes that are really there, accepts only
definite, minimally encoded lengths and low tag numbers, and raises :class:`DerError`
(a ``ValueError``) for anything else.  It never recurses on its own: callers walk the
structures they expect, so a deeply nested input costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
SEQUENCE = 0x30
SET = 0x31
# Character string types a DN attribute value may use (RFC 5280 4.1.2.4, X.520).
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
T61_STRING = 0x14
IA5_STRING = 0x16
BMP_STRING = 0x1E
UNIVERSAL_STRING = 0x1C
ASCII_STRING_TAGS = frozenset({UTF8_STRING, PRINTABLE_STRING, T61_STRING, IA5_STRING})

MAX_LENGTH_OCTETS = 4  # 4 GiB: far above anything IKE carries, and it keeps ints small


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


def context(number: int, constructed: bool = True) -> int:
    """The tag octet of ``[number]`` (context-specific class), e.g. ``[0]`` -> 0xA0."""
    if not 0 <= number <= 30:
        raise ValueError(f"context tag [{number}] needs the high-tag-number form")
    return (0xA0 if constructed else 0x80) | number


@dataclass(frozen=True)
class Tlv:
    """One DER element: its tag octet, its contents and the whole encoding."""

    tag: int
    value: bytes
    raw: bytes

    def children(self) -> list[Tlv]:
        """The elements inside a constructed value (SEQUENCE, SET, [n])."""
        if not self.tag & 0x20:
            raise DerError(f"tag 0x{self.tag:02x} is primitive, it has no elements")
        return read_all(self.value)

    def expect(self, tag: int, what: str) -> Tlv:
        if self.tag != tag:
            raise DerError(f"{what}: expected tag 0x{tag:02x}, got 0x{self.tag:02x}")
        return self


def read_tlv(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """The element at ``offset`` and the offset just after it."""
    if offset + 2 > len(data):
        raise DerError(f"truncated element at offset {offset}: {len(data) - offset} bytes left")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError(f"high tag numbers are not used here (tag 0x{tag:02x} at offset {offset})")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError(f"indefinite length at offset {offset} (BER, not DER)")
    else:
        count = first & 0x7F
        if count > MAX_LENGTH_OCTETS:
            raise DerError(f"length of {count} octets at offset {offset}")
        if pos + count > len(data):
            raise DerError(f"truncated length at offset {offset}")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError(f"length at offset {offset} is not minimally encoded")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError(f"element at offset {offset} claims {length} bytes, {len(data) - pos} are there")
    return Tlv(tag, bytes(data[pos:end]), bytes(data[offset:end])), end


def read_single(data: bytes) -> Tlv:
    """Exactly one element filling ``data``."""
    tlv, end = read_tlv(data)
    if end != len(data):
        raise DerError(f"{len(data) - end} bytes after the element")
    return tlv


def read_all(data: bytes) -> list[Tlv]:
    """The elements that exactly fill ``data``, in order."""
    out: list[Tlv] = []
    pos = 0
    while pos < len(data):
        tlv, pos = read_tlv(data, pos)
        out.append(tlv)
    return out


def encode(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + value


def sequence(*elements: bytes) -> bytes:
    return encode(SEQUENCE, b"".join(elements))


def null() -> bytes:
    return b"\x05\x00"


def encode_integer(n: int) -> bytes:
    """A non-negative INTEGER (two's complement, leading 0x00 when the top bit is set)."""
    if n < 0:
        raise ValueError("only non-negative integers are encoded here")
    body = n.to_bytes(n.bit_length() // 8 + 1, "big")
    return encode(INTEGER, body)


def decode_integer(tlv: Tlv, what: str) -> int:
    body = tlv.expect(INTEGER, what).value
    if not body:
        raise DerError(f"{what}: empty INTEGER")
    if len(body) > 1 and ((body[0] == 0 and body[1] < 0x80) or (body[0] == 0xFF and body[1] >= 0x80)):
        raise DerError(f"{what}: INTEGER is not minimally encoded")
    if body[0] >= 0x80:
        raise DerError(f"{what}: negative INTEGER")
    return int.from_bytes(body, "big")


def encode_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"not an OID: {dotted}")
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return encode(OID, bytes(body))


def decode_oid(tlv: Tlv, what: str = "OID") -> str:
    body = tlv.expect(OID, what).value
    if not body or body[-1] & 0x80:
        raise DerError(f"{what}: truncated OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    start = True
    for octet in body:
        if start and octet == 0x80:
            raise DerError(f"{what}: OID arc with a leading 0x80 (not DER)")
        value = (value << 7) | (octet & 0x7F)
        start = not octet & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def algorithm_identifier(oid: str, parameters: bytes | None = None) -> bytes:
    """AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }."""
    return sequence(encode_oid(oid), parameters or b"")


def parse_algorithm_identifier(data: bytes) -> tuple[str, Tlv | None]:
    """The OID and the parameters element (None when absent) of one AlgorithmIdentifier."""
    parts = read_single(data).expect(SEQUENCE, "AlgorithmIdentifier").children()
    if not 1 <= len(parts) <= 2:
        raise DerError(f"AlgorithmIdentifier with {len(parts)} elements")
    return decode_oid(parts[0], "AlgorithmIdentifier.algorithm"), parts[1] if len(parts) == 2 else None


def spki_from_tbs(tbs_certificate: bytes) -> bytes:
    """The raw SubjectPublicKeyInfo element of a TBSCertificate (RFC 5280 4.1).

    TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    validity, subject, subjectPublicKeyInfo, ... }: the seventh element, or the sixth
    when the (v1) version is left out.
    """
    parts = read_single(tbs_certificate).expect(SEQUENCE, "TBSCertificate").children()
    index = 6 if parts and parts[0].tag == context(0) else 5
    if len(parts) <= index:
        raise DerError("TBSCertificate is too short")
    return parts[index].expect(SEQUENCE, "subjectPublicKeyInfo").raw
