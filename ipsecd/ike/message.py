"""IKEv2 messages: the fixed header, the SK envelope, and per-exchange payload rules.

The rules live in one table (``RULES``) so that what an exchange may carry is
read in one place and checked before any task sees the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ipsecd.errors import LocalProtocolError, RemoteProtocolError
from ipsecd.iana import (
    GENERIC_PAYLOAD_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_VERSION,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    is_error_notify,
)
from ipsecd.ike.codec import (
    decode_payloads,
    decode_raw,
    encode_payloads,
    generic_header,
    split_payloads,
)
from ipsecd.ike.payloads import NotifyPayload, Payload, UnknownPayload

SPI_LEN = 8
MAX_MESSAGE_ID = 0xFFFFFFFF
# RFC 7383 2.5: the SKF payload's generic header, then Fragment Number and Total Fragments
SKF_HEADER_LEN = GENERIC_PAYLOAD_HEADER_LEN + 4
MAX_TOTAL_FRAGMENTS = 0xFFFF


class SkCipher(Protocol):
    """The SK payload's protection (ipsecd/ike/sk.py), as this module needs it."""

    def sealed_len(self, plaintext_len: int) -> int: ...

    def seal(self, associated: bytes, plaintext: bytes) -> bytes: ...

    def open(self, associated: bytes, body: bytes) -> bytes: ...


@dataclass(frozen=True)
class IkeHeader:
    """RFC 7296 3.1 header, fields as received (exchange stays an int)."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    major: int
    minor: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)


P = TypeVar("P")


@dataclass(frozen=True)
class Message:
    """A decoded (or to-be-encoded) IKE message; for encrypted ones ``payloads``
    are those inside SK."""

    spi_i: bytes
    spi_r: bytes
    exchange: ExchangeType
    message_id: int
    is_initiator: bool  # I flag: the sender is the original initiator of the IKE SA
    is_response: bool  # R flag
    payloads: list[Payload] = field(default_factory=list)
    encrypted: bool = False

    def get(self, cls: type[P]) -> P | None:
        return next((p for p in self.payloads if isinstance(p, cls)), None)

    def get_all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def get_type(self, ptype: PayloadType) -> Payload | None:
        """First payload of a wire type; tells IDi from IDr and TSi from TSr."""
        return next((p for p in self.payloads if p.payload_type == ptype), None)

    def notify(self, notify_type: NotifyType) -> NotifyPayload | None:
        return next((n for n in self.notifies() if n.notify_type == notify_type), None)

    def notifies(self) -> list[NotifyPayload]:
        return self.get_all(NotifyPayload)

    def error_notifies(self) -> list[NotifyPayload]:
        return [n for n in self.notifies() if is_error_notify(n.notify_type)]


# --- header -----------------------------------------------------------------


def decode_header(data: bytes) -> IkeHeader:
    """Parse and check the fixed header; the datagram must be exactly one message."""
    if len(data) < IKE_HEADER_LEN:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes is shorter than an IKE header")
    version = data[17]
    header = IkeHeader(
        spi_i=data[0:8],
        spi_r=data[8:16],
        next_payload=data[16],
        major=version >> 4,
        minor=version & 0x0F,
        exchange=data[18],
        flags=data[19],
        message_id=int.from_bytes(data[20:24], "big"),
        length=int.from_bytes(data[24:28], "big"),
    )
    # RFC 7296 2.5: a different major version is dropped; the reply names ours.
    if header.major != IKE_VERSION >> 4:
        raise RemoteProtocolError(f"IKE major version {header.major}", notify=NotifyType.INVALID_MAJOR_VERSION)
    if header.length != len(data):
        raise RemoteProtocolError(f"header length {header.length} but datagram of {len(data)} bytes")
    return header


def _encode_header(msg: Message, next_payload: int, length: int) -> bytes:
    if len(msg.spi_i) != SPI_LEN or len(msg.spi_r) != SPI_LEN:
        raise LocalProtocolError("IKE SPIs must be 8 bytes")
    if not 0 <= msg.message_id <= MAX_MESSAGE_ID:
        raise LocalProtocolError(f"message ID {msg.message_id} out of range")
    flags = HeaderFlag.NONE
    if msg.is_initiator:
        flags |= HeaderFlag.INITIATOR
    if msg.is_response:
        flags |= HeaderFlag.RESPONSE
    return (
        msg.spi_i
        + msg.spi_r
        + bytes((next_payload, IKE_VERSION, int(msg.exchange), int(flags)))
        + msg.message_id.to_bytes(4, "big")
        + length.to_bytes(4, "big")
    )


# --- messages ---------------------------------------------------------------


def encode_message(msg: Message, sk: SkCipher | None = None) -> bytes:
    """Serialise a message; encrypted ones carry all payloads in one trailing SK payload."""
    first, chain = encode_payloads(msg.payloads)
    if not msg.encrypted:
        return _encode_header(msg, first, IKE_HEADER_LEN + len(chain)) + chain
    if sk is None:
        raise LocalProtocolError("encrypted message but no SK keys")
    # RFC 7296 3.14: header and SK generic header are authenticated, so their
    # final lengths must be known before sealing.
    sealed_len = sk.sealed_len(len(chain))
    sk_header = generic_header(first, sealed_len)
    header = _encode_header(msg, PayloadType.SK, IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + sealed_len)
    associated = header + sk_header
    sealed = sk.seal(associated, chain)
    if len(sealed) != sealed_len:
        raise LocalProtocolError(f"SK cipher produced {len(sealed)} bytes, announced {sealed_len}")
    return associated + sealed


def decode_message(data: bytes, sk: SkCipher | None = None) -> Message:
    """Parse a datagram; opens SK with ``sk`` (IntegrityError propagates).

    SKF (RFC 7383 fragments) is not handled here: it raises a silent-drop
    RemoteProtocolError, the caller reassembles before calling this.
    """
    header = decode_header(data)
    try:
        exchange = ExchangeType(header.exchange)
    except ValueError:
        raise RemoteProtocolError(f"unknown exchange type {header.exchange}") from None
    chain = data[IKE_HEADER_LEN:]
    raws = split_payloads(header.next_payload, chain)
    sk_raws = [r for r in raws if r.type == PayloadType.SK]
    if any(r.type == PayloadType.SKF for r in raws):
        raise RemoteProtocolError("SKF fragment reached decode_message unreassembled")
    if not sk_raws:
        return Message(
            header.spi_i,
            header.spi_r,
            exchange,
            header.message_id,
            header.is_initiator,
            header.is_response,
            [decode_raw(r) for r in raws],
            encrypted=False,
        )
    # split_payloads stops after SK, so SK is always last; anything before it
    # would be unencrypted alongside encrypted payloads, which RFC 7296 never uses.
    if len(raws) != 1:
        raise RemoteProtocolError("payloads outside the SK payload", notify=NotifyType.INVALID_SYNTAX)
    sk_raw = raws[0]
    if sk is None:
        raise RemoteProtocolError("encrypted message but no SK keys")
    body_start = IKE_HEADER_LEN + sk_raw.offset + GENERIC_PAYLOAD_HEADER_LEN
    inner = sk.open(data[:body_start], sk_raw.body)
    return Message(
        header.spi_i,
        header.spi_r,
        exchange,
        header.message_id,
        header.is_initiator,
        header.is_response,
        decode_payloads(sk_raw.next_type, inner),
        encrypted=True,
    )


# --- fragments (RFC 7383) --------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """One verified and decrypted SKF fragment: a piece of the inner payload chain."""

    header: IkeHeader
    number: int
    total: int
    first_type: int  # the SKF Next Payload: the first inner payload's type (fragment 1 only)
    plaintext: bytes


def _fragment_chunk(sk: SkCipher, room: int) -> int:
    """The most plaintext octets whose sealed form fits ``room`` octets."""
    n = room
    while n > 0 and sk.sealed_len(n) > room:
        # sealed_len grows by one per octet, plus at most a block of padding
        n -= max(1, sk.sealed_len(n) - room)
    return max(n, 0)


def encode_fragments(msg: Message, sk: SkCipher, max_datagram: int) -> list[bytes]:
    """RFC 7383 2.5: the message's inner payload chain cut into pieces, each sealed on its
    own in an SKF payload of a datagram of at most ``max_datagram`` octets (the IKE header
    on). Every fragment repeats the header with the same message ID; only the first names
    the first inner payload (RFC 7383 2.5: 0 in the others)."""
    if not msg.encrypted:
        raise LocalProtocolError("only encrypted messages are fragmented (RFC 7383 2.5)")
    first, chain = encode_payloads(msg.payloads)
    chunk = _fragment_chunk(sk, max_datagram - IKE_HEADER_LEN - SKF_HEADER_LEN)
    if chunk < 1:
        raise LocalProtocolError(f"a fragment of {max_datagram} octets has no room for data")
    pieces = [chain[i : i + chunk] for i in range(0, len(chain), chunk)] or [b""]
    total = len(pieces)
    if total > MAX_TOTAL_FRAGMENTS:
        raise LocalProtocolError(f"message of {len(chain)} octets needs {total} fragments")
    out = []
    for number, piece in enumerate(pieces, 1):
        sealed_len = sk.sealed_len(len(piece))
        skf = generic_header(first if number == 1 else 0, 4 + sealed_len) \
            + number.to_bytes(2, "big") + total.to_bytes(2, "big")
        header = _encode_header(msg, PayloadType.SKF, IKE_HEADER_LEN + len(skf) + sealed_len)
        # RFC 7383 2.5.3: header, SKF header and the two fragment fields are authenticated
        associated = header + skf
        sealed = sk.seal(associated, piece)
        if len(sealed) != sealed_len:
            raise LocalProtocolError(f"SK cipher produced {len(sealed)} bytes, announced {sealed_len}")
        out.append(associated + sealed)
    return out


def is_fragment(data: bytes) -> bool:
    """Does the datagram carry an SKF payload (its first and only payload)?"""
    return len(data) > 16 and data[16] == PayloadType.SKF


def decode_fragment(data: bytes, sk: SkCipher, max_total: int = MAX_TOTAL_FRAGMENTS) -> Fragment:
    """Parse and verify one SKF datagram (RFC 7383 2.6): the numbers are checked before any
    decryption, the ICV before anything is kept (IntegrityError propagates)."""
    header = decode_header(data)
    if header.next_payload != PayloadType.SKF:
        raise RemoteProtocolError("not an SKF fragment")
    if header.exchange == ExchangeType.IKE_SA_INIT:
        raise RemoteProtocolError("IKE_SA_INIT is never fragmented (RFC 7383 2.5)")
    raws = split_payloads(header.next_payload, data[IKE_HEADER_LEN:])
    if len(raws) != 1 or len(raws[0].body) < 4:
        raise RemoteProtocolError("malformed SKF payload")
    raw = raws[0]
    number, total = int.from_bytes(raw.body[0:2], "big"), int.from_bytes(raw.body[2:4], "big")
    # RFC 7383 2.6: numbers start at 1, never above the total
    if not 1 <= number <= total:
        raise RemoteProtocolError(f"SKF fragment {number} of {total}")
    if total > max_total:
        raise RemoteProtocolError(f"SKF fragment of a message in {total} fragments, at most {max_total} accepted")
    body_start = IKE_HEADER_LEN + raw.offset + SKF_HEADER_LEN
    plaintext = sk.open(data[:body_start], raw.body[4:])
    return Fragment(header, number, total, raw.next_type, plaintext)


def message_from_chain(header: IkeHeader, first_type: int, chain: bytes) -> Message:
    """The message reassembled from its fragments' plaintexts (RFC 7383 2.6)."""
    try:
        exchange = ExchangeType(header.exchange)
    except ValueError:
        raise RemoteProtocolError(f"unknown exchange type {header.exchange}") from None
    return Message(header.spi_i, header.spi_r, exchange, header.message_id, header.is_initiator,
                   header.is_response, decode_payloads(first_type, chain), encrypted=True)


def decode_datagrams(datagrams: Sequence[bytes], sk: SkCipher | None = None) -> Message:
    """The one message some datagrams carry: a whole message, or all its fragments in any
    order (duplicates ignored). For tools and tests; the engine reassembles fragment by
    fragment with bounds (ike/fragments.py)."""
    if not any(is_fragment(d) for d in datagrams):
        if len(datagrams) != 1:
            raise RemoteProtocolError(f"{len(datagrams)} unfragmented datagrams for one message")
        return decode_message(datagrams[0], sk)
    if sk is None:
        raise RemoteProtocolError("encrypted message but no SK keys")
    frags = {f.number: f for f in (decode_fragment(d, sk) for d in datagrams)}
    total = {f.total for f in frags.values()}
    if len(total) != 1 or set(frags) != set(range(1, max(total) + 1)):
        raise RemoteProtocolError(f"fragments {sorted(frags)} of {sorted(total)}")
    return message_from_chain(frags[1].header, frags[1].first_type, b"".join(frags[n].plaintext for n in sorted(frags)))


# --- per-exchange rules -----------------------------------------------------

ANY = 255  # "no upper bound" in a count range


@dataclass(frozen=True)
class Rule:
    """Which payloads one side of an exchange may carry.

    ``counts`` maps every allowed type to (min, max); types not listed are not
    allowed. ``together``: each group must be all present or all absent.
    ``one_of``: each group needs at least one member present. A response with
    an error notify (or a waiving status notify such as COOKIE) skips the
    minimums, ``together`` and ``one_of``; the allowed types and maximums stay.
    """

    encrypted: bool
    counts: Mapping[PayloadType, tuple[int, int]]
    together: tuple[frozenset[PayloadType], ...] = ()
    one_of: tuple[frozenset[PayloadType], ...] = ()


_T = PayloadType
_CHILD = frozenset({_T.SA, _T.TSi, _T.TSr})
_TS = frozenset({_T.TSi, _T.TSr})

_IKE_SA_INIT = Rule(
    encrypted=False,
    counts={_T.SA: (1, 1), _T.KE: (1, 1), _T.NONCE: (1, 1), _T.NOTIFY: (0, ANY), _T.VENDOR_ID: (0, ANY),
            _T.CERTREQ: (0, ANY)},
)  # fmt: skip

# RFC 7296 2.16: later IKE_AUTH requests of an EAP run carry only EAP, or only AUTH.
_IKE_AUTH_REQUEST = Rule(
    encrypted=True,
    counts={_T.IDi: (0, 1), _T.AUTH: (0, 1), _T.CERT: (0, ANY), _T.CERTREQ: (0, ANY), _T.IDr: (0, 1),
            _T.SA: (0, 1), _T.TSi: (0, 1), _T.TSr: (0, 1), _T.CP: (0, 1), _T.NOTIFY: (0, ANY),
            _T.VENDOR_ID: (0, ANY), _T.EAP: (0, 1)},
    together=(_CHILD,),
    one_of=(frozenset({_T.IDi, _T.AUTH, _T.EAP}),),
)  # fmt: skip

_IKE_AUTH_RESPONSE = Rule(
    encrypted=True,
    counts={_T.IDr: (0, 1), _T.AUTH: (0, 1), _T.CERT: (0, ANY), _T.SA: (0, 1), _T.TSi: (0, 1),
            _T.TSr: (0, 1), _T.CP: (0, 1), _T.NOTIFY: (0, ANY), _T.VENDOR_ID: (0, ANY), _T.EAP: (0, 1)},
    together=(_CHILD,),
    one_of=(frozenset({_T.IDr, _T.AUTH, _T.EAP}),),
)  # fmt: skip

_CREATE_CHILD_SA = Rule(
    encrypted=True,
    counts={_T.SA: (1, 1), _T.NONCE: (1, 1), _T.KE: (0, 1), _T.TSi: (0, 1), _T.TSr: (0, 1),
            _T.NOTIFY: (0, ANY), _T.VENDOR_ID: (0, ANY)},
    together=(_TS,),
)  # fmt: skip

_INFORMATIONAL = Rule(
    encrypted=True,
    counts={_T.NOTIFY: (0, ANY), _T.DELETE: (0, ANY), _T.CP: (0, 1), _T.VENDOR_ID: (0, ANY)},
)

# RFC 9242: IKE_INTERMEDIATE carries extension payloads (RFC 9370: one KE) and notifies.
_IKE_INTERMEDIATE = Rule(
    encrypted=True,
    counts={_T.KE: (0, 1), _T.NOTIFY: (0, ANY), _T.VENDOR_ID: (0, ANY)},
)

# RFC 9370 2.2.3: one KE plus the ADDITIONAL_KEY_EXCHANGE notify.
_IKE_FOLLOWUP_KE = Rule(
    encrypted=True,
    counts={_T.KE: (1, 1), _T.NOTIFY: (0, ANY), _T.VENDOR_ID: (0, ANY)},
)

RULES: Mapping[tuple[ExchangeType, bool], Rule] = {
    (ExchangeType.IKE_SA_INIT, False): _IKE_SA_INIT,
    (ExchangeType.IKE_SA_INIT, True): _IKE_SA_INIT,
    (ExchangeType.IKE_AUTH, False): _IKE_AUTH_REQUEST,
    (ExchangeType.IKE_AUTH, True): _IKE_AUTH_RESPONSE,
    (ExchangeType.CREATE_CHILD_SA, False): _CREATE_CHILD_SA,
    (ExchangeType.CREATE_CHILD_SA, True): _CREATE_CHILD_SA,
    (ExchangeType.INFORMATIONAL, False): _INFORMATIONAL,
    (ExchangeType.INFORMATIONAL, True): _INFORMATIONAL,
    (ExchangeType.IKE_INTERMEDIATE, False): _IKE_INTERMEDIATE,
    (ExchangeType.IKE_INTERMEDIATE, True): _IKE_INTERMEDIATE,
    (ExchangeType.IKE_FOLLOWUP_KE, False): _IKE_FOLLOWUP_KE,
    (ExchangeType.IKE_FOLLOWUP_KE, True): _IKE_FOLLOWUP_KE,
}

# Status notifies that, in a response, replace the normal payloads
# (RFC 7296 2.6 COOKIE, RFC 5685 REDIRECT).
WAIVING_STATUS_NOTIFIES = frozenset({NotifyType.COOKIE, NotifyType.REDIRECT})


def _violation(msg: Message, what: str, notify: NotifyType | None = NotifyType.INVALID_SYNTAX) -> RemoteProtocolError:
    direction = "response" if msg.is_response else "request"
    return RemoteProtocolError(f"{msg.exchange.name} {direction}: {what}", notify=notify)


def _waived(msg: Message) -> bool:
    return msg.is_response and any(
        is_error_notify(n.notify_type) or n.notify_type in WAIVING_STATUS_NOTIFIES for n in msg.notifies()
    )


def check_message(msg: Message) -> None:
    """Check ``msg`` against ``RULES``; raises INVALID_SYNTAX naming the first violation.

    Wrong encryption state is the exception: such a message is unauthenticated
    where it must not be (or makes no sense), so it is a silent drop (notify None).
    """
    rule = RULES.get((msg.exchange, msg.is_response))
    if rule is None:
        raise _violation(msg, "exchange not supported")
    if msg.encrypted != rule.encrypted:
        raise _violation(msg, "must be encrypted" if rule.encrypted else "must not be encrypted", notify=None)
    counts: dict[int, int] = {}
    for p in msg.payloads:
        if isinstance(p, UnknownPayload):
            continue
        counts[p.payload_type] = counts.get(p.payload_type, 0) + 1
    for ptype, n in counts.items():
        allowed = rule.counts.get(PayloadType(ptype))
        if allowed is None:
            raise _violation(msg, f"{PayloadType(ptype).name} payload not allowed")
        if n > allowed[1]:
            raise _violation(msg, f"{n} {PayloadType(ptype).name} payloads, at most {allowed[1]} allowed")
    if _waived(msg):
        return
    for ptype, (low, _) in rule.counts.items():
        if counts.get(ptype, 0) < low:
            raise _violation(msg, f"missing {ptype.name} payload")
    for group in rule.together:
        present = {t for t in group if counts.get(t)}
        if present and present != group:
            names = ", ".join(sorted(t.name for t in group - present))
            raise _violation(msg, f"{names} missing (these come together)")
    for group in rule.one_of:
        if not any(counts.get(t) for t in group):
            raise _violation(msg, "needs one of " + ", ".join(sorted(t.name for t in group)))
