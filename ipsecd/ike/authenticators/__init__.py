"""Authenticators: one side's authentication in IKE_AUTH, one class per method (strongSwan's authenticator_t).

The ``ike_auth`` task holds two of them per IKE SA: a *builder* that proves who we are
(:mod:`.psk`, :mod:`.pubkey`, or :mod:`.eap_client` when we log in with EAP) and a
*verifier* that checks the peer (:mod:`.psk`, :mod:`.pubkey`, or :mod:`.eap_server` when the
peer logs in with EAP). Both have the same three verbs:

``build(out)``
    append this side's payloads to the message we are building (CERT and AUTH, an EAP
    payload, the final AUTH keyed from the MSK, ...);
``process(msg)``
    read the peer's message; returns ``Status.DONE`` when this side is authenticated,
    ``NEED_MORE`` for another round of IKE_AUTH (EAP, RFC 7296 2.16), or ``WAIT`` when a
    verifier needs an answer from outside the engine (a RADIUS round trip), which then
    comes through ``resume(answer)``;
``resume(answer)``
    the answer a ``WAIT`` asked for.

A failure raises :class:`AuthFailure`: a sentence for the admin (peer text escaped, no
secret in it) and a :class:`~ipsecd.ike.events.LoginResult` for the metrics.

The octets each AUTH signs or MACs (RFC 7296 2.15) come from :class:`AuthContext`, which
knows both ID payloads as sent: ours when we build it, the peer's when it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ipsecd.credentials import CredentialError, OwnCredential
from ipsecd.errors import LocalProtocolError
from ipsecd.iana import HashAlgorithm
from ipsecd.identity import Identity
from ipsecd.ike.backref import BackRef
from ipsecd.ike.codec import encode_payload_body
from ipsecd.ike.events import Login, LoginResult
from ipsecd.ike.keymat import signed_octets
from ipsecd.ike.payloads import IdPayload, Payload
from ipsecd.ike.tasks import Status
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


class AuthFailure(Exception):
    """This side's authentication failed: ``reason`` for the log, ``result`` for the metrics."""

    def __init__(self, reason: str, result: LoginResult = LoginResult.BAD_AUTH) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


class Authenticator(Protocol):
    def build(self, out: list[Payload]) -> None: ...
    def process(self, msg: Message) -> Status: ...
    def resume(self, answer: object) -> Status: ...


class NoResume:
    """Default ``resume`` for authenticators that never wait."""

    def resume(self, answer: object) -> Status:
        raise LocalProtocolError(f"{type(self).__name__} never waits for an outside answer")


@dataclass(slots=True)
class AuthExtensions:
    """What the peer announced that decides how we authenticate (IKE_SA_INIT and first IKE_AUTH)."""

    hashes: frozenset[HashAlgorithm] | None = None  # RFC 7427 4; None: no SIGNATURE_HASH_ALGORITHMS at all
    certreqs: list[bytes] = field(default_factory=list)  # CA hashes of the X.509 CERTREQs it sent
    certreq_seen: bool = False  # any CERTREQ at all (send_cert: ifasked)
    eap_only: bool = False  # EAP_ONLY_AUTHENTICATION (RFC 5998)
    redirect_supported: bool = False  # REDIRECT_SUPPORTED in its IKE_SA_INIT (RFC 5685 3)


@dataclass(frozen=True, slots=True)
class PeerLogin:
    """Who the peer turned out to be and how it proved it (list-sas, accounting, uniqueness)."""

    method: str  # psk | pubkey | eap-mschapv2 | eap-tls | eap-radius
    eap_identity: bytes | None = None
    certificate: str | None = None  # subject of its validated certificate
    extra: object | None = None  # eap-radius: the RadiusAnswer (Class, Framed-IP-Address, Session-Timeout)


@dataclass
class PendingLogin:
    """A peer's login under way (responder); reported once by :func:`report_login`."""

    method: str
    refused: tuple[LoginResult, str] | None = None  # refused once, the peer may try again (wrong password)


def release_auth_material(sa: IkeSa) -> None:
    """IKE_AUTH is over: drop what only the AUTH payloads were computed over (both IKE_SA_INIT
    messages, SK_pi/SK_pr; RFC 7296 2.15). A later exchange never needs them -- a rekey
    derives from SK_d, a retransmitted IKE_AUTH request is answered from the cached
    response -- and a gateway holds thousands of established SAs (issue 11, memory)."""
    sa.init_request = sa.init_response = b""
    if sa.keys is not None:
        sa.keys = sa.keys.without_auth_keys()


class AuthContext:
    """The IKE SA and both ID payloads as sent: what every AUTH of this IKE_AUTH is computed over.

    The IKE_AUTH task keeps it (and the SA keeps the task while EAP runs): ``sa`` is a weak
    reference (ike/backref.py), so a closed IKE SA is freed without the cyclic GC."""

    __slots__ = ("_sa", "my_id", "peer_id")
    sa: BackRef[IkeSa] = BackRef("_sa")

    def __init__(self, sa: IkeSa, my_id: IdPayload | None = None, peer_id: IdPayload | None = None) -> None:
        self.sa = sa
        self.my_id = my_id
        self.peer_id = peer_id

    def my_octets(self) -> bytes:
        """RFC 7296 2.15: what our AUTH signs (our IKE_SA_INIT message, the peer's nonce, our ID)."""
        sa, keys = self.sa, self.sa.keys_required
        assert self.my_id is not None
        if sa.initiator:
            return signed_octets(sa.prf, keys.sk_pi, sa.init_request, sa.nonce_r, encode_payload_body(self.my_id))
        return signed_octets(sa.prf, keys.sk_pr, sa.init_response, sa.nonce_i, encode_payload_body(self.my_id))

    def peer_octets(self) -> bytes:
        sa, keys = self.sa, self.sa.keys_required
        assert self.peer_id is not None
        if sa.initiator:
            return signed_octets(sa.prf, keys.sk_pr, sa.init_response, sa.nonce_i, encode_payload_body(self.peer_id))
        return signed_octets(sa.prf, keys.sk_pi, sa.init_request, sa.nonce_r, encode_payload_body(self.peer_id))

    @property
    def peer(self) -> Identity:
        assert self.peer_id is not None
        return Identity.from_wire(self.peer_id.id_type, self.peer_id.data)

    @property
    def me(self) -> Identity:
        assert self.my_id is not None
        return Identity.from_wire(self.my_id.id_type, self.my_id.data)


def report_login(sa: IkeSa, result: LoginResult, reason: str = "", eap_identity: bytes | None = None) -> None:
    """Responder: the peer's login ended (a Login event for the metrics), once per IKE SA.

    A peer that goes away after a refused attempt (a wrong password it does not retry)
    counts with that refusal, not as abandoned."""
    pending = sa.login_pending
    if sa.initiator or pending is None:
        return
    if result == LoginResult.ABANDONED and pending.refused is not None:
        result, reason = pending.refused[0], f"{pending.refused[1]}; the client gave up"
    eap = eap_identity or (sa.login.eap_identity if sa.login is not None else None)
    sa.emit(Login(sa.ike_sa_id, sa.settings.name, pending.method, result, safe(sa.remote_identity),
                  safe(eap) if eap else "", reason))
    sa.login_pending = None


def own_credential(sa: IkeSa, identity: Identity) -> OwnCredential | None:
    """Our certificate and key for this SA: ``local.certs`` if configured (the first one the store
    has a key for), else one under a CA the peer asked for, else one holding ``identity``."""
    store = sa.ctx.credentials
    now = sa.ctx.wall_time(sa.now)
    certs = sa.settings.local_auth.certs
    if certs:
        for name in certs:
            own = store.own_credential(cert_file=name, now=now)
            if own is not None:
                return own
        return None
    wire = identity.to_wire() if not identity.is_any else None
    if sa.auth_ext.certreqs:
        own = store.own_for_certreq(sa.auth_ext.certreqs, wire, now)
        if own is not None:
            return own
    return store.own_credential(identity=wire, now=now)


def missing_credential(sa: IkeSa, identity: Identity) -> str:
    """Why :func:`own_credential` found nothing, for the admin."""
    certs = sa.settings.local_auth.certs
    where = sa.ctx.credentials.directory
    if certs:
        return (f"none of local.certs ({', '.join(certs)}) is in {where}/x509 with its private key in "
                f"{where}/private")
    return f"no certificate holding our identity '{identity}' with its private key in {where} (set local.certs)"


def certreq_data(sa: IkeSa) -> bytes:
    """The Certification Authority field of the CERTREQ we send: our trust anchors for this
    connection (RFC 7296 3.7); empty when there are none (or cacerts names a missing file)."""
    try:
        return sa.ctx.credentials.certreq_data(sa.settings.remote_auth.cacerts)
    except CredentialError as e:
        sa.log.warning("no CERTREQ sent: %s", e)
        return b""


__all__ = ["AuthContext", "AuthExtensions", "AuthFailure", "Authenticator", "NoResume", "PeerLogin", "PendingLogin",
           "Status",
           "certreq_data", "missing_credential", "own_credential", "report_login"]
