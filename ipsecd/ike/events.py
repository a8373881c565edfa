"""What the IKE engine hands to its owner, and what an IKE SA tells its manager.

Two kinds of frozen dataclasses live here:

* **Events** (the ``Event`` union) leave the engine through ``IkeManager.next_event()``
  for the daemon or a test: SAs established, rekeyed, moved, failed or gone. Outcomes
  are a :class:`Cause` (a small fixed set, usable as a metrics label and for restart
  decisions); ``reason`` is the sentence for the log and never parsed.
* **Signals** (the ``Signal`` union) go from one IKE SA to the manager that owns it
  and stop there, as aioquic reports ``ConnectionIdIssued``/``Retired`` to its server:
  an SPI to route by, an IKE SA born from a rekey, reauthentication due, a peer's
  INITIAL_CONTACT. The manager acts on them; nothing polls the SA's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, NamedTuple

from ipsecd.ike.keymat import ChildKeys
from ipsecd.ike.payloads import Proposal, TrafficSelector

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa

Endpoint = tuple[str, int]


class Datagram(NamedTuple):
    """One IKE message to send; ``ike_sa_id`` lets the owner hold it back per SA (see manager.py)."""

    data: bytes
    local: Endpoint
    remote: Endpoint
    ike_sa_id: int = 0


class Cause(StrEnum):
    """Why an IKE or Child SA went away or failed to come up."""

    DELETED_LOCALLY = "deleted_locally"  # by request: down, reload, shutdown
    DELETED_BY_PEER = "deleted_by_peer"
    PEER_DEAD = "peer_dead"  # an established SA's peer stopped answering (DPD, retransmissions)
    TIMEOUT = "timeout"  # never came up: no answer, or a half-open SA timed out
    AUTH_FAILED = "auth_failed"
    NO_PROPOSAL = "no_proposal"
    INVALID_KE = "invalid_ke"
    TS_UNACCEPTABLE = "ts_unacceptable"
    PEER_REFUSED = "peer_refused"  # the peer answered with another error notify
    PROTOCOL_ERROR = "protocol_error"  # the peer sent something invalid
    CONFIG = "config"  # our own configuration cannot do it (no PSK for the IDs, no KE method)
    REKEYED = "rekeyed"  # replaced by a rekey: nothing was lost
    REAUTHENTICATED = "reauthenticated"
    REPLACED = "replaced"  # a newer SA of the same identities took over (INITIAL_CONTACT, unique)
    DUPLICATE = "duplicate"  # both ends initiated at once; this one was redundant
    EXPIRED = "expired"  # hard lifetime reached
    INSTALL_FAILED = "install_failed"  # the data plane refused the Child SA
    REDIRECTED = "redirected"  # sent to another gateway (RFC 5685) before it came up


class LoginResult(StrEnum):
    """How a peer's authentication in IKE_AUTH ended: a small fixed set (a metrics label)."""

    SUCCESS = "success"
    BAD_AUTH = "bad_auth"  # its AUTH payload (PSK MAC or signature) did not verify, or a method we do not accept
    CERTIFICATE = "certificate"  # its certificate was refused: path validation, revocation, identity
    NO_CREDENTIAL = "no_credential"  # we lack what the method needs: no PSK, certificate or key
    WRONG_PASSWORD = "wrong_password"
    UNKNOWN_USER = "unknown_user"
    REJECTED = "rejected"  # RADIUS Access-Reject, or an account restriction
    SERVER_UNREACHABLE = "server_unreachable"  # no RADIUS server answered
    NO_CONFIG = "no_config"  # no connection accepts the peer's identity and method
    PROTOCOL = "protocol"  # malformed or unexpected EAP, TLS failure
    ABANDONED = "abandoned"  # the peer went away mid-way (the SA timed out or was deleted)


# Causes that mean "something went wrong" when an SA never came up (metrics, restarts).
SETUP_FAILURES = frozenset({Cause.TIMEOUT, Cause.AUTH_FAILED, Cause.NO_PROPOSAL, Cause.INVALID_KE,
                            Cause.TS_UNACCEPTABLE, Cause.PEER_REFUSED, Cause.PROTOCOL_ERROR, Cause.CONFIG,
                            Cause.INSTALL_FAILED})


# ------------------------------------------------------------------ events (to the owner)
@dataclass(frozen=True)
class IkeSaEstablished:
    ike_sa_id: int
    name: str
    initial_contact: bool = False  # the peer sent INITIAL_CONTACT (RFC 7296 2.4): other shards hear of it


@dataclass(frozen=True)
class IkeSaClosed:
    """The IKE SA is gone. ``cause`` says why (act on it); ``reason`` is for people.

    ``replaced_by`` names the IKE SA that took over after a rekey: nothing was lost.
    ``established`` tells whether it was ever up (a failed setup has it False).
    """

    ike_sa_id: int
    name: str
    cause: Cause
    reason: str
    established: bool = False
    replaced_by: int | None = None


@dataclass(frozen=True)
class InitiationFailed:
    """An initiation gave up (ike/keying.py): ``attempts`` IKE SAs were tried, as ``keyingtries``
    allows; the last closed with ``cause``. Nothing retries it by itself any more (a trap still
    starts a new initiation on its next packet)."""

    name: str
    child: str | None  # the child it was for; None: every child of the connection
    attempts: int
    cause: Cause
    reason: str
    ike_sa_id: int  # the last attempt's IKE SA


@dataclass(frozen=True)
class IkeSaRekeyed:
    """RFC 7296 1.3.2: the IKE SA was rekeyed; its Child SAs now belong to ``new_ike_sa_id``.

    The Child SAs themselves are untouched (same SPIs, keys, reqids); only the
    IKE SA that manages them changed. Later events for them carry the new id.
    """

    ike_sa_id: int
    name: str
    new_ike_sa_id: int
    child_spis_in: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class IkeSaMoved:
    """The IKE SA runs between new endpoints: ESP of every Child SA must follow. RFC 7296 2.23:
    an authenticated request came from a new address or port (NAT rebinding, the move to
    port 4500); RFC 4555: a MOBIKE address update completed (either side's address)."""

    ike_sa_id: int
    name: str
    local: Endpoint
    remote: Endpoint
    child_reqids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ChildSaEstablished:
    """Everything the data plane needs to install both directions of a Child SA."""

    ike_sa_id: int
    name: str  # connection name
    child: str
    reqid: int
    spi_in: bytes
    spi_out: bytes
    proposal: Proposal
    keys: ChildKeys = field(repr=False)
    initiator: bool  # we initiated the exchange that created it (selects the KEYMAT halves)
    mode: str
    encap: bool
    local: Endpoint
    remote: Endpoint
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    replay_window: int = 1024
    # Set when this SA replaces another one in a rekey (RFC 7296 1.3.3): the inbound
    # SPI of the old SA. Install the new SA (both directions, outbound switches to it)
    # and keep the old inbound SA until its ChildSaDeleted arrives (make-before-break).
    rekeyed_spi_in: bytes | None = None
    # IPComp (RFC 3173) negotiated with IPCOMP_SUPPORTED (RFC 7296 2.22, 3.10.1): our CPI
    # (inbound IPComp headers carry it) and the peer's (outbound ones do); 0 when not in use.
    ipcomp_cpi_in: int = 0
    ipcomp_cpi_out: int = 0

    @property
    def keys_in(self) -> tuple[bytes, bytes]:
        """(encryption key, integrity key) protecting traffic we receive."""
        k = self.keys
        return (k.encr_r, k.integ_r) if self.initiator else (k.encr_i, k.integ_i)

    @property
    def keys_out(self) -> tuple[bytes, bytes]:
        k = self.keys
        return (k.encr_i, k.integ_i) if self.initiator else (k.encr_r, k.integ_r)


@dataclass(frozen=True)
class VirtualIpsAssigned:
    """The gateway assigned us virtual IPs (RFC 7296 2.19) in IKE_AUTH, with its DNS servers and
    DNS domains (RFC 8598). Emitted before the Child SAs of that exchange: the owner puts the
    addresses on the TUN first, so the Child SA's routes can use them as source."""

    ike_sa_id: int
    name: str
    addresses: tuple[IPv4Address | IPv6Address, ...]
    dns: tuple[IPv4Address | IPv6Address, ...] = ()
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChildSaFailed:
    ike_sa_id: int
    name: str
    child: str
    cause: Cause
    reason: str


@dataclass(frozen=True)
class ChildSaDeleted:
    """A Child SA is gone. ``reqid_in_use``: another Child SA with the same reqid
    (its rekeyed successor) is still installed, so the daemon must remove only this
    SA pair by SPI and keep the policies (pointing them at the survivor)."""

    ike_sa_id: int
    name: str
    child: str
    reqid: int
    spi_in: bytes
    spi_out: bytes
    cause: Cause
    reason: str = ""
    reqid_in_use: bool = False


@dataclass(frozen=True)
class Login:
    """The peer's authentication as responder (a client logging in) concluded.

    ``method`` is what the peer used (psk, pubkey, eap-mschapv2, eap-tls, eap-radius,
    eap: EAP that ended before a method was chosen), ``result`` how it ended (a metrics
    label), ``reason`` the admin's sentence (peer text already escaped).
    """

    ike_sa_id: int
    name: str
    method: str
    result: LoginResult
    peer: str  # the IKE identity, escaped
    eap_identity: str = ""  # escaped; "" without EAP
    reason: str = ""


@dataclass(frozen=True)
class AuthRequest:
    """The IKE SA's authentication waits for an answer from outside the engine.

    Today: an EAP-RADIUS round trip (``request`` is an ipsecd.eap.radius.AccessRequest).
    The owner performs it and hands the answer (a RadiusAnswer) to
    ``IkeManager.auth_answer(ike_sa_id, token, answer, now)``; meanwhile the peer's
    retransmissions of its request are dropped (RFC 7296 2.1: we owe it one response).
    """

    ike_sa_id: int
    name: str
    token: int
    request: object


Event = (IkeSaEstablished | IkeSaClosed | IkeSaRekeyed | IkeSaMoved | ChildSaEstablished | ChildSaFailed
         | ChildSaDeleted | VirtualIpsAssigned | Login | AuthRequest | InitiationFailed)


# ------------------------------------------------------------------ signals (SA -> its manager)
@dataclass(frozen=True)
class SpiAssigned:
    """Our IKE SPI of this SA is known: route datagrams for it here."""

    spi: bytes


@dataclass(frozen=True)
class Spawned:
    """An IKE SA born from a rekey (RFC 7296 1.3.2): the manager adopts it."""

    sa: IkeSa


@dataclass(frozen=True)
class ReauthDue:
    """reauth_time is reached: the manager builds the replacement (RFC 7296 2.8)."""


@dataclass(frozen=True)
class InitialContact:
    """The authenticated peer sent INITIAL_CONTACT (RFC 7296 2.4)."""


@dataclass(frozen=True)
class Settled:
    """No exchange of ours is queued or in flight (every Child SA asked for has its answer)."""


Signal = SpiAssigned | Spawned | ReauthDue | InitialContact | Settled
