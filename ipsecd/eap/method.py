"""The EAP method API: what every method, on either side, takes and hands back.

A method is a small sans-I/O state machine.  The authenticator side (the gateway, or
ipsecd relaying to RADIUS) implements :class:`AuthenticatorMethod`, the peer side (the
road warrior) :class:`PeerMethod`.  Each call returns one :data:`Step`:

``Send(packet, delay, refused)``
    the next EAP packet to put into the EAP payload; ``delay`` > 0 asks the shell to
    hold it that many seconds (after a wrong password, to slow down guessing, as
    strongSwan's 2 s ``RETRY_DELAY``); ``refused`` says why the attempt was refused
    when the peer may try again (for the log, and for the login's outcome if it gives up).
``Pending(request)``
    the method needs an answer from outside (a RADIUS round trip).  The shell fulfils
    ``request`` asynchronously and calls ``resume(answer)`` with the result; nothing
    else may be fed to the method meanwhile.  This is the only way a method asks for I/O.
``Success(msk, emsk, identity, final)``
    the method concluded: ``msk`` keys the IKE AUTH payload (RFC 7296 2.16);
    ``identity`` is the EAP identity that was authenticated; on the authenticator side
    ``final`` is the EAP-Success to send.  Keys are never in a repr.
``Failure(reason, message, identity, final)``
    ``reason`` is a :class:`FailureReason` for code to branch on, ``message`` a sentence
    for the admin's log (peer-supplied names already passed through ``logsafe.safe``,
    no secret in it); ``final`` the EAP-Failure to send, if any.

Methods never see raw bytes from the wire: :mod:`ipsecd.eap.session` decodes packets,
checks identifiers and codes, runs the Identity stage and Nak handling, and only then
hands a method the packets of its own type.

User secrets come from a :data:`SecretLookup` callable ``(eap_identity) -> Secret | None``:
a plaintext password (``str``) or an :class:`NtHash` (MD4 of the UTF-16LE password, as
swanctl's ``ntlm`` secrets and FreeRADIUS's NT-Password hold it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from ipsecd.eap.packet import EapPacket
from ipsecd.errors import LocalProtocolError

NT_HASH_LEN = 16


class FailureReason(Enum):
    """Why an EAP conversation failed: stable names for code, counters and tests."""

    WRONG_PASSWORD = "wrong-password"
    UNKNOWN_USER = "unknown-user"
    ACCOUNT_RESTRICTED = "account-restricted"  # MSCHAPv2 E=646..649: hours, disabled, expired, no dial-in
    NO_SECRET = "no-secret"  # peer side: nothing configured to answer with
    SERVER_NOT_AUTHENTICATED = "server-not-authenticated"  # peer side: the authenticator proved nothing
    CERTIFICATE_REJECTED = "certificate-rejected"
    TLS_ERROR = "tls-error"
    NO_COMMON_METHOD = "no-common-method"
    PROTOCOL_ERROR = "protocol-error"
    REJECTED = "rejected"  # EAP-Failure from the authenticator, or RADIUS Access-Reject
    SERVER_UNREACHABLE = "server-unreachable"  # no RADIUS server answered
    PEER_ABORTED = "peer-aborted"
    TOO_MANY_ROUNDS = "too-many-rounds"


@dataclass(frozen=True)
class NtHash:
    """A password in NT-hash form (16 octets): usable for MSCHAPv2 on both sides, never logged."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.value) != NT_HASH_LEN:
            raise ValueError(f"an NT hash has {NT_HASH_LEN} octets, not {len(self.value)}")

    @classmethod
    def from_hex(cls, text: str) -> NtHash:
        text = text.removeprefix("0x")
        return cls(bytes.fromhex(text))


Secret = str | NtHash
SecretLookup = Callable[[bytes], Secret | None]


@dataclass(frozen=True)
class Send:
    packet: EapPacket
    delay: float = 0.0
    refused: Failure | None = None  # the method refused this attempt, the peer may try again (MSCHAPv2 E=691)


@dataclass(frozen=True)
class Pending:
    request: object


@dataclass(frozen=True)
class Success:
    msk: bytes = field(repr=False)
    emsk: bytes = field(default=b"", repr=False)
    identity: bytes = b""
    method: int = 0
    final: EapPacket | None = None
    extra: object | None = None  # EAP-RADIUS: the RadiusAnswer (Class, Framed-IP-Address, ...)


@dataclass(frozen=True)
class Failure:
    reason: FailureReason
    message: str
    identity: bytes = b""
    final: EapPacket | None = None


Step = Send | Pending | Success | Failure


class AuthenticatorMethod(ABC):
    """Gateway side of one method.

    ``start(identifier)`` returns the first request (with that identifier, and the
    following ones counting up from it); ``process(response)`` gets only responses of
    this method's type (or, for a relay, every response); ``resume(answer)`` completes
    a :class:`Pending`.
    """

    eap_type: ClassVar[int]
    relays: ClassVar[bool] = False  # a relay (RADIUS) handles Naks and method choice itself

    @abstractmethod
    def start(self, identifier: int) -> Step: ...

    @abstractmethod
    def process(self, packet: EapPacket) -> Step: ...

    def resume(self, answer: object) -> Step:
        raise LocalProtocolError(f"{type(self).__name__} is not waiting for an external answer")


class PeerMethod(ABC):
    """Road-warrior side of one method: requests in, :class:`Send` or :class:`Failure` out.

    Once the method has done its part it sets ``msk`` (and ``emsk``); the session then
    accepts the authenticator's EAP-Success.  A method that learnt why it is failing
    (e.g. MSCHAPv2 E=691) keeps it in ``failure`` so the EAP-Failure that follows is
    reported with that reason.
    """

    eap_type: ClassVar[int]

    def __init__(self) -> None:
        self.msk: bytes | None = None
        self.emsk: bytes = b""
        self.failure: Failure | None = None

    @abstractmethod
    def process(self, packet: EapPacket) -> Step: ...


AuthenticatorFactory = Callable[[bytes], AuthenticatorMethod]  # (eap_identity) -> method
PeerFactory = Callable[[bytes], PeerMethod]  # (our eap_identity) -> method
