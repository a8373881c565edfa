"""IKE_AUTH: identities, the connection the peer turns out to be, and both authentications
(RFC 7296 1.2, 2.15, 2.16; the methods live in ipsecd/ike/authenticators/).

Each side's authentication is an authenticator: ``mine`` proves us (PSK, our certificate,
or EAP as a client), ``theirs`` checks the peer (PSK, its certificate, or EAP as the
gateway). With PSK and certificates IKE_AUTH is one round trip; with EAP it takes one
round per EAP message plus one for the AUTH payloads keyed from the MSK, and the task
answers NEED_MORE until then (the Child SA of IKE_AUTH waits: ``IkeSa.authenticating``).

The IKE SA becomes ESTABLISHED here, before the Child SA of the same exchange is
created (the task order of IKE_AUTH is IkeAuth, then ChildCreate): the initiator when
the last response's AUTH verifies, the responder when it builds its last AUTH.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import AuthMethod, CertEncoding, ExchangeType, IdType, NotifyType, PayloadType
from ipsecd.identity import ANY_IDENTITY, Identity
from ipsecd.ike.authenticators import (
    AuthContext,
    Authenticator,
    AuthFailure,
    PeerLogin,
    PendingLogin,
    certreq_data,
    own_credential,
    release_auth_material,
    report_login,
)
from ipsecd.ike.authenticators.eap_client import EapClient
from ipsecd.ike.authenticators.eap_server import EapServer
from ipsecd.ike.authenticators.psk import PskBuilder, PskVerifier
from ipsecd.ike.authenticators.pubkey import PubkeyBuilder, PubkeyVerifier
from ipsecd.ike.events import AuthRequest, Cause, InitialContact, LoginResult
from ipsecd.ike.payloads import AuthPayload, CertReqPayload, IdPayload, NotifyPayload, Payload
from ipsecd.ike.proposal import select_proposal
from ipsecd.ike.settings import PSK, PUBKEY, IkeSettings
from ipsecd.ike.tasks import Hooks, Refuse, Status, TaskFailed, TaskKind, cause_of_notify, notify_name
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


def _id_payload(kind: PayloadType, ident: Identity) -> IdPayload:
    return IdPayload(kind, *ident.to_wire())


def _accepts_negotiated(conn: IkeSettings, sa: IkeSa) -> bool:
    """A connection chosen by identity must accept what IKE_SA_INIT already negotiated:
    switching to it must not smuggle in another connection's (weaker) algorithms."""
    return sa.proposal is None or select_proposal(conn.ike_proposals, [sa.proposal]) is not None


def my_identity(sa: IkeSa) -> Identity:
    """Our IKE identity: the configured one; with a certificate and no ``id``, the certificate's
    subject (as strongSwan); else the address the IKE SA uses."""
    s = sa.settings
    if s.local_id is None and s.local_auth.method == PUBKEY:
        own = own_credential(sa, ANY_IDENTITY)
        if own is not None:
            return Identity.from_wire(IdType.ID_DER_ASN1_DN, own.cert.subject.public_bytes())
    return sa.local_identity


def _builder(ctx: AuthContext) -> Authenticator:
    method = ctx.sa.settings.local_auth.method
    if method == PSK:
        return PskBuilder(ctx)
    if method == PUBKEY:
        return PubkeyBuilder(ctx)
    return EapClient(ctx)


def _verifier(ctx: AuthContext, with_auth: bool) -> Authenticator:
    """The peer's checker: its AUTH payload says PSK or signature; none means EAP (RFC 7296 2.16)."""
    if not with_auth:
        return EapServer(ctx)
    return PskVerifier(ctx) if ctx.sa.settings.remote_auth.method == PSK else PubkeyVerifier(ctx)


def _x509_certreqs(msg: Message) -> list[bytes]:
    return [p.data for p in msg.get_all(CertReqPayload) if p.encoding == CertEncoding.X509_CERTIFICATE_SIGNATURE]


class IkeAuth(Hooks):
    exchange = ExchangeType.IKE_AUTH
    kind = TaskKind.IKE_AUTH
    target = None

    def __init__(self) -> None:
        self.ctx: AuthContext | None = None
        self.mine: Authenticator | None = None  # proves us
        self.theirs: Authenticator | None = None  # checks the peer
        self.theirs_done = False
        self.eap_only = False  # RFC 5998: no AUTH of ours (responder) / none from the gateway (initiator)
        self.initial_contact = False
        self._ours: list[Payload] = []  # responder: IDr, CERT, AUTH, prepared while a refusal is still possible

    # ================================================================ initiator
    def build_i(self, sa: IkeSa) -> list[Payload]:
        if self.ctx is None:
            return self._first_request(sa)
        assert self.mine is not None
        out: list[Payload] = []
        try:
            self.mine.build(out)
        except AuthFailure as e:
            raise _ours_failed(e) from None
        return out

    def _first_request(self, sa: IkeSa) -> list[Payload]:
        s = sa.settings
        me = sa.my_identity = my_identity(sa)
        ctx = AuthContext(sa, my_id=_id_payload(PayloadType.IDi, me))
        payloads: list[Payload] = [ctx.my_id]  # type: ignore[list-item]
        if s.send_certreq and s.remote_auth.method == PUBKEY:
            data = certreq_data(sa)
            if data:  # RFC 7296 3.7: the SHA-1 hashes of the trust anchors we would accept
                payloads.append(CertReqPayload(CertEncoding.X509_CERTIFICATE_SIGNATURE, data))
        if not s.remote_id.contains_wildcards():  # RFC 7296 2.15: IDr names one identity, not a pattern
            payloads.append(_id_payload(PayloadType.IDr, s.remote_id))
        try:
            self.mine = _builder(ctx)
            self.mine.build(payloads)
        except AuthFailure as e:
            raise _ours_failed(e) from None
        if not sa.ctx.has_contact(s.name, sa.remote[0], sa.ike_sa_id):
            # RFC 7296 2.4: only when no other IKE SA with this peer exists (as strongSwan), so
            # two ends that initiate at once do not wipe each other's fresh SAs
            payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
        if s.local_auth.eap:
            payloads.append(NotifyPayload(NotifyType.EAP_ONLY_AUTHENTICATION))  # RFC 5998: we can do without
        self.ctx = ctx
        return payloads

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        ctx = self.ctx
        assert ctx is not None and self.mine is not None
        auth = msg.get(AuthPayload)
        errors = msg.error_notifies()
        if errors and auth is None and msg.get_type(PayloadType.EAP) is None:
            n = errors[0].notify_type
            raise TaskFailed(f"peer refused IKE_AUTH with {notify_name(n)}"
                             + (": check that both sides use the same credentials and IDs"
                                if n == NotifyType.AUTHENTICATION_FAILED else ""), cause_of_notify(n))
        if ctx.peer_id is None:
            self._first_response(sa, msg, auth)
        try:
            status = self.mine.process(msg)
        except AuthFailure as e:
            raise _ours_failed(e) from None
        if status is not Status.DONE:
            sa.authenticating = True
            return Status.NEED_MORE
        if not self.theirs_done and not self.eap_only:
            raise TaskFailed("IKE_AUTH ended without the peer authenticating itself", Cause.AUTH_FAILED)
        sa.authenticating = False
        sa.login = PeerLogin(sa.settings.remote_auth.method, None,
                             getattr(self.theirs, "certificate", None))
        release_auth_material(sa)
        sa.establish()
        return Status.DONE

    def _first_response(self, sa: IkeSa, msg: Message, auth: AuthPayload | None) -> None:
        ctx = self.ctx
        assert ctx is not None
        idr = next((p for p in msg.get_all(IdPayload) if p.kind == PayloadType.IDr), None)
        if idr is None:
            raise TaskFailed("IKE_AUTH response lacks IDr")
        ident = Identity.from_wire(idr.id_type, idr.data)
        if not sa.settings.remote_id.matches(ident):
            raise TaskFailed(f"peer identified as {safe(ident)}, expected {sa.settings.remote_id}", Cause.AUTH_FAILED)
        ctx.peer_id = idr
        sa.remote_identity = ident
        if auth is None:
            # RFC 5998: a gateway without AUTH of its own is accepted only when configured so
            # (remote.auth: eap-tls, as strongSwan), and only after a mutual method
            if not isinstance(self.mine, EapClient) or not sa.settings.remote_auth.eap:
                raise TaskFailed(f"peer {safe(ident)} sent no AUTH payload (EAP-only authentication, RFC 5998); "
                                 f"remote.auth is {sa.settings.remote_auth.method}", Cause.AUTH_FAILED)
            self.eap_only = self.mine.require_mutual = True
            return
        if sa.settings.remote_auth.eap:
            raise TaskFailed(f"peer {safe(ident)} authenticated with AUTH method {int(auth.method)}, but remote.auth "
                             f"is {sa.settings.remote_auth.method} (EAP-only: the gateway proves itself by EAP)",
                             Cause.AUTH_FAILED)
        self.theirs = _verifier(ctx, True)
        try:
            self.theirs.process(msg)
        except AuthFailure as e:
            raise TaskFailed(e.reason, Cause.AUTH_FAILED) from None
        self.theirs_done = True

    # ================================================================ responder
    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        try:
            if self.ctx is None:
                status = self._first_request_r(sa, msg)
            else:
                assert self.theirs is not None
                status = self.theirs.process(msg)
        except AuthFailure as e:
            raise self._refuse(sa, e) from None
        return self._progress(sa, status)

    def resume(self, sa: IkeSa, answer: object) -> Status:
        """The outside answer a WAIT asked for (a RADIUS reply)."""
        assert self.theirs is not None
        try:
            status = self.theirs.resume(answer)
        except AuthFailure as e:
            raise self._refuse(sa, e) from None
        return self._progress(sa, status)

    def _first_request_r(self, sa: IkeSa, msg: Message) -> Status:
        idi = idr = None
        for p in msg.get_all(IdPayload):
            if p.kind == PayloadType.IDi:
                idi = p
            elif p.kind == PayloadType.IDr:
                idr = p
        if idi is None:
            raise RemoteProtocolError("IKE_AUTH request without IDi", NotifyType.INVALID_SYNTAX)
        ident = Identity.from_wire(idi.id_type, idi.data)
        sa.remote_identity = ident
        auth = msg.get(AuthPayload)
        ext = sa.auth_ext
        ext.certreqs += _x509_certreqs(msg)  # unknown CAs are ignored later (Windows sends ~38)
        ext.certreq_seen = ext.certreq_seen or bool(msg.get_all(CertReqPayload))
        ext.eap_only = msg.notify(NotifyType.EAP_ONLY_AUTHENTICATION) is not None
        named = Identity.from_wire(idr.id_type, idr.data) if idr is not None else None
        sa.login_pending = PendingLogin("eap" if auth is None else (
            PSK if auth.method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE else PUBKEY))
        sa.settings = _choose_connection(sa, ident, named, auth)
        self.initial_contact = msg.notify(NotifyType.INITIAL_CONTACT) is not None
        me = sa.my_identity = my_identity(sa)
        ctx = self.ctx = AuthContext(sa, my_id=_id_payload(PayloadType.IDr, me), peer_id=idi)
        self.theirs = _verifier(ctx, auth is not None)
        status = self.theirs.start() if isinstance(self.theirs, EapServer) else self.theirs.process(msg)
        self._ours = [ctx.my_id]  # type: ignore[list-item]
        # RFC 5998, as strongSwan: no AUTH of ours when configured so (local.auth is EAP: the
        # method proves us, and the config allows only mutual EAP-TLS there) and the client allows it
        self.eap_only = sa.settings.local_auth.eap
        if self.eap_only and not (ext.eap_only and isinstance(self.theirs, EapServer)):
            raise AuthFailure(f"local.auth {sa.settings.local_auth.method} asks for EAP-only authentication "
                              "(RFC 5998), but the client did not announce EAP_ONLY_AUTHENTICATION",
                              LoginResult.NO_CONFIG)
        if not self.eap_only:
            self.mine = _builder(ctx)
            self.mine.build(self._ours)
        return status

    def _progress(self, sa: IkeSa, status: Status) -> Status:
        if isinstance(self.theirs, EapServer):
            if sa.login_pending is not None:
                sa.login_pending.method = self.theirs.method
                sa.login_pending.refused = self.theirs.refused or sa.login_pending.refused
            if status is Status.WAIT:
                sa.emit(AuthRequest(sa.ike_sa_id, sa.settings.name, sa.exchanges.expected_id, self.theirs.pending))
        if status is Status.DONE:
            self.theirs_done = True
            sa.authenticating = False
            # who the peer is, known now, in process_r: the tasks after us in this round (unique,
            # the CP task's lease) key by it -- the EAP identity after EAP (cp.client_identity)
            method = sa.login_pending.method if sa.login_pending is not None else ""
            theirs = self.theirs
            if isinstance(theirs, EapServer):
                extra = theirs.success.extra if theirs.success is not None else None
                sa.login = PeerLogin(method, theirs.identity, None, extra)
            else:
                sa.login = PeerLogin(method, None, getattr(theirs, "certificate", None))
        else:
            sa.authenticating = True
        return status

    def build_r(self, sa: IkeSa) -> list[Payload]:
        out, self._ours = self._ours, []
        theirs = self.theirs
        if isinstance(theirs, EapServer):
            theirs.build(out)
            if theirs.failure is not None:
                why = f"EAP login of {safe(sa.remote_identity)} failed: {theirs.failure.message}"
                sa.fail_reason = why
                report_login(sa, theirs.failure_result(), why, theirs.identity)
                sa.close_after_response(Cause.AUTH_FAILED, why)  # the EAP-Failure goes out first
                return out
        if not self.theirs_done:
            return out
        report_login(sa, LoginResult.SUCCESS)
        release_auth_material(sa)  # our AUTH is in ``out`` already
        sa.establish(self.initial_contact)
        if self.initial_contact:
            sa.signal(InitialContact())
        return out

    def _refuse(self, sa: IkeSa, e: AuthFailure) -> Refuse:
        report_login(sa, e.result, e.reason, self.theirs.identity if isinstance(self.theirs, EapServer) else None)
        cause = Cause.CONFIG if e.result == LoginResult.NO_CREDENTIAL else Cause.AUTH_FAILED
        return Refuse(NotifyType.AUTHENTICATION_FAILED, e.reason, cause, fatal=True)


def _ours_failed(e: AuthFailure) -> TaskFailed:
    """Our own authentication cannot be done (initiator): the IKE SA fails."""
    return TaskFailed(e.reason, Cause.CONFIG if e.result == LoginResult.NO_CREDENTIAL else Cause.AUTH_FAILED)


def _choose_connection(sa: IkeSa, ident: Identity, named: Identity | None, auth: AuthPayload | None) -> IkeSettings:
    """The connection whose IDs match the peer's IDi (and the IDr it named, if any) best, as
    strongSwan's quality sum, among those whose remote auth fits what the peer does (AUTH
    payload or EAP) and that accept what IKE_SA_INIT negotiated."""
    scored = [(c.id_match(ident, named), i, c) for i, c in enumerate(sa.candidates)]
    matching = [(q, i, c) for q, i, c in scored if q]
    if not matching:
        raise AuthFailure(f"no connection accepts peer identity {safe(ident)} (configured remote ids: "
                          f"{', '.join(str(c.remote_id) for c in sa.candidates)})", LoginResult.NO_CONFIG)
    method = auth.method if auth is not None else None
    fitting = [(q, i, c) for q, i, c in matching if c.remote_auth.accepts_auth_payload(method)]
    if not fitting:
        does = "asks for EAP (no AUTH payload)" if auth is None else f"sends AUTH method {int(auth.method)}"
        raise AuthFailure(f"peer {safe(ident)} {does}, but no connection accepting its identity expects that "
                          f"(configured: {', '.join(f'{c.name}: {c.remote_auth.method}' for _q, _i, c in matching)})",
                          LoginResult.NO_CONFIG)
    acceptable = [c for _q, _i, c in sorted(fitting, key=lambda t: (-t[0], t[1])) if _accepts_negotiated(c, sa)]
    if not acceptable:
        raise AuthFailure(f"connection {fitting[0][2].name} accepts peer identity {safe(ident)} but not the IKE "
                          "proposal negotiated in IKE_SA_INIT", LoginResult.NO_CONFIG)
    return acceptable[0]
