"""IKE_AUTH identities and pre-shared-key authentication (RFC 7296 1.2, 2.15).

The IKE SA becomes ESTABLISHED here, before the Child SA of the same exchange is
created (the task order of IKE_AUTH is IkeAuth, then ChildCreate): the initiator
when the response's AUTH verifies, the responder when it builds its own AUTH.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import AuthMethod, ExchangeType, NotifyType, PayloadType
from ipsecd.identity import Identity
from ipsecd.ike.codec import encode_payload_body
from ipsecd.ike.events import Cause, InitialContact
from ipsecd.ike.keymat import psk_auth_data, signed_octets, verify_psk_auth
from ipsecd.ike.payloads import AuthPayload, IdPayload, NotifyPayload, Payload
from ipsecd.ike.proposal import select_proposal
from ipsecd.ike.settings import IkeSettings
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


class IkeAuth(Hooks):
    exchange = ExchangeType.IKE_AUTH
    kind = TaskKind.IKE_AUTH
    target = None

    def __init__(self) -> None:
        self.initial_contact = False

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        s = sa.settings
        me = sa.local_identity
        idi = _id_payload(PayloadType.IDi, me)
        psk = s.psk_lookup(me, s.remote_id)
        if psk is None:
            raise TaskFailed(f"no PSK configured for {me} - {s.remote_id}", Cause.CONFIG)
        octets = signed_octets(sa.prf, sa.keys_required.sk_pi, sa.init_request, sa.nonce_r,
                               encode_payload_body(idi))
        payloads: list[Payload] = [idi]
        if not s.remote_id.contains_wildcards():  # RFC 7296 2.15: IDr names one identity, not a pattern
            payloads.append(_id_payload(PayloadType.IDr, s.remote_id))
        payloads.append(AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth_data(sa.prf, psk, octets)))
        if not sa.ctx.has_contact(s.name, sa.remote[0], sa.ike_sa_id):
            # RFC 7296 2.4: only when no other IKE SA with this peer exists (as strongSwan), so
            # two ends that initiate at once do not wipe each other's fresh SAs
            payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
        return payloads

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        errors = msg.error_notifies()
        idr = msg.get(IdPayload)
        auth = msg.get(AuthPayload)
        if errors and auth is None:
            n = errors[0].notify_type
            raise TaskFailed(f"peer refused IKE_AUTH with {notify_name(n)}"
                             + (": check that both sides use the same PSK and IDs"
                                if n == NotifyType.AUTHENTICATION_FAILED else ""), cause_of_notify(n))
        if idr is None or idr.kind != PayloadType.IDr or auth is None:
            raise TaskFailed("IKE_AUTH response lacks IDr or AUTH")
        ident = Identity.from_wire(idr.id_type, idr.data)
        if not sa.settings.remote_id.matches(ident):
            raise TaskFailed(f"peer identified as {safe(ident)}, expected {sa.settings.remote_id}", Cause.AUTH_FAILED)
        why = _verify(sa, idr, auth, ident, sa.init_response, sa.nonce_i, sa.keys_required.sk_pr)
        if why is not None:
            raise TaskFailed(why, Cause.AUTH_FAILED)
        sa.remote_identity = ident
        sa.establish()
        return Status.DONE

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        idi = idr = None
        for p in msg.get_all(IdPayload):
            if p.kind == PayloadType.IDi:
                idi = p
            elif p.kind == PayloadType.IDr:
                idr = p
        auth = msg.get(AuthPayload)
        if idi is None:
            raise RemoteProtocolError("IKE_AUTH request without IDi", NotifyType.INVALID_SYNTAX)
        ident = Identity.from_wire(idi.id_type, idi.data)
        sa.remote_identity = ident
        if auth is None:
            raise _refuse(f"peer {safe(ident)} asked for EAP, which is not configured")
        # The connection whose IDs match the peer's IDi (and the IDr it named, if any) best, as
        # strongSwan's quality sum; it must also accept what IKE_SA_INIT negotiated
        named = Identity.from_wire(idr.id_type, idr.data) if idr is not None else None
        scored = [(c.id_match(ident, named), i, c) for i, c in enumerate(sa.candidates)]
        matching = [(q, i, c) for q, i, c in scored if q]
        if not matching:
            raise _refuse(f"no connection accepts peer identity {safe(ident)}"
                          f" (configured remote ids: {', '.join(str(c.remote_id) for c in sa.candidates)})")
        acceptable = [c for _q, _i, c in sorted(matching, key=lambda t: (-t[0], t[1])) if _accepts_negotiated(c, sa)]
        if not acceptable:
            raise _refuse(f"connection {matching[0][2].name} accepts peer identity {safe(ident)} but not the IKE "
                          "proposal negotiated in IKE_SA_INIT")
        sa.settings = acceptable[0]
        why = _verify(sa, idi, auth, ident, sa.init_request, sa.nonce_r, sa.keys_required.sk_pi)
        if why is not None:
            raise _refuse(why)
        self.initial_contact = msg.notify(NotifyType.INITIAL_CONTACT) is not None
        return Status.DONE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        s = sa.settings
        me = sa.local_identity
        idr = _id_payload(PayloadType.IDr, me)
        assert sa.remote_identity is not None
        psk = s.psk_lookup(me, sa.remote_identity)
        assert psk is not None  # checked in process_r
        octets = signed_octets(sa.prf, sa.keys_required.sk_pr, sa.init_response, sa.nonce_i,
                               encode_payload_body(idr))
        sa.establish()
        if self.initial_contact:
            sa.signal(InitialContact())
        return [idr, AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth_data(sa.prf, psk, octets))]


def _verify(sa: IkeSa, id_payload: IdPayload, auth: AuthPayload, ident: Identity,
            real_message: bytes, nonce: bytes, sk_p: bytes) -> str | None:
    """None when the peer's AUTH verifies, else why not (in words an admin can act on)."""
    if auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
        return f"peer {safe(ident)} uses AUTH method {auth.method}, only PSK is configured"
    psk = sa.settings.psk_lookup(sa.local_identity, ident)
    if psk is None:
        return f"no PSK configured for {sa.local_identity} - {safe(ident)}"
    octets = signed_octets(sa.prf, sk_p, real_message, nonce, encode_payload_body(id_payload))
    if not verify_psk_auth(sa.prf, psk, octets, auth.data):
        return f"authentication of {safe(ident)} failed: its AUTH payload does not match our PSK"
    return None


def _refuse(reason: str) -> Refuse:
    return Refuse(NotifyType.AUTHENTICATION_FAILED, reason, Cause.AUTH_FAILED, fatal=True)
