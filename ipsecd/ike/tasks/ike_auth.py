"""IKE_AUTH identities and pre-shared-key authentication (RFC 7296 1.2, 2.15)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import AuthMethod, ExchangeType, NotifyType, PayloadType
from ipsecd.identity import Identity
from ipsecd.ike.codec import encode_payload_body
from ipsecd.ike.keymat import psk_auth_data, signed_octets, verify_psk_auth
from ipsecd.ike.payloads import AuthPayload, IdPayload, NotifyPayload, Payload
from ipsecd.ike.tasks import TaskFailed

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


def _id_payload(kind: PayloadType, ident: Identity) -> IdPayload:
    return IdPayload(kind, *ident.to_wire())


def peer_identity(p: IdPayload) -> Identity:
    return Identity.from_wire(p.id_type, p.data)


class IkeAuth:
    exchange = ExchangeType.IKE_AUTH

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        me = sa.settings.local_identity(sa.local[0])
        idi = _id_payload(PayloadType.IDi, me)
        psk = sa.settings.psk_lookup(me, sa.settings.remote_id)
        if psk is None:
            raise TaskFailed(f"no PSK configured for {me} - {sa.settings.remote_id}")
        octets = signed_octets(sa.prf, sa.keys_required.sk_pi, sa.init_request, sa.nonce_r,
                               encode_payload_body(idi))
        payloads: list[Payload] = [idi]
        if not sa.settings.remote_id.contains_wildcards():  # RFC 7296 2.15: IDr only names one identity
            payloads.append(_id_payload(PayloadType.IDr, sa.settings.remote_id))
        payloads.append(AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth_data(sa.prf, psk, octets)))
        if sa.has_contact is None or not sa.has_contact(sa):
            # RFC 7296 2.4: only when no other IKE SA with this peer exists (as strongSwan), so
            # two ends that initiate at once do not wipe each other's fresh SAs
            payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
        return payloads

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        errors = msg.error_notifies()
        idr = msg.get(IdPayload)
        auth = msg.get(AuthPayload)
        if errors and auth is None:
            name = _notify_name(errors[0].notify_type)
            raise TaskFailed(f"peer refused IKE_AUTH with {name}"
                             + (": check that both sides use the same PSK and IDs"
                                if errors[0].notify_type == NotifyType.AUTHENTICATION_FAILED else ""))
        if idr is None or idr.kind != PayloadType.IDr or auth is None:
            raise TaskFailed("IKE_AUTH response lacks IDr or AUTH")
        ident = peer_identity(idr)
        if not sa.settings.remote_id.matches(ident):
            raise TaskFailed(f"peer identified as {ident}, expected {sa.settings.remote_id}")
        self._verify(sa, idr, auth, ident, sa.init_response, sa.nonce_i, sa.keys_required.sk_pr)
        sa.remote_identity = ident

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> None:
        idi = None
        idr = None
        for p in msg.get_all(IdPayload):
            if p.kind == PayloadType.IDi:
                idi = p
            elif p.kind == PayloadType.IDr:
                idr = p
        auth = msg.get(AuthPayload)
        if idi is None:
            raise RemoteProtocolError("IKE_AUTH request without IDi", NotifyType.INVALID_SYNTAX)
        ident = peer_identity(idi)
        sa.remote_identity = ident
        if auth is None:
            sa.fail_reason = f"peer {ident} asked for EAP, which is not configured"
            raise RemoteProtocolError(sa.fail_reason, NotifyType.AUTHENTICATION_FAILED)
        # Pick the connection that matches the peer's identity (and ours, if the peer named it)
        # best; the first of equally good ones, as strongSwan
        named = peer_identity(idr) if idr is not None else None
        best = max(sa.candidates, key=lambda c: c.id_match(ident, named), default=None)
        if best is None or not best.id_match(ident, named):
            sa.fail_reason = (f"no connection accepts peer identity {ident}"
                              f" (configured remote ids: {', '.join(str(c.remote_id) for c in sa.candidates)})")
            raise RemoteProtocolError(sa.fail_reason, NotifyType.AUTHENTICATION_FAILED)
        sa.settings = best
        self._verify(sa, idi, auth, ident, sa.init_request, sa.nonce_r, sa.keys_required.sk_pi)
        if msg.notify(NotifyType.INITIAL_CONTACT) is not None:
            sa.initial_contact = True

    def build_r(self, sa: IkeSa) -> list[Payload]:
        me = sa.settings.local_identity(sa.local[0])
        idr = _id_payload(PayloadType.IDr, me)
        assert sa.remote_identity is not None
        psk = sa.settings.psk_lookup(me, sa.remote_identity)
        assert psk is not None  # checked in process_r
        octets = signed_octets(sa.prf, sa.keys_required.sk_pr, sa.init_response, sa.nonce_i,
                               encode_payload_body(idr))
        return [idr, AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth_data(sa.prf, psk, octets))]

    # -- shared ------------------------------------------------------------
    def _verify(self, sa: IkeSa, id_payload: IdPayload, auth: AuthPayload, ident: Identity,
                real_message: bytes, nonce: bytes, sk_p: bytes) -> None:
        if auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            sa.fail_reason = f"peer {ident} uses AUTH method {auth.method}, only PSK is configured"
            raise _auth_failed(sa)
        me = sa.settings.local_identity(sa.local[0])
        psk = sa.settings.psk_lookup(me, ident)
        if psk is None:
            sa.fail_reason = f"no PSK configured for {me} - {ident}"
            raise _auth_failed(sa)
        octets = signed_octets(sa.prf, sk_p, real_message, nonce, encode_payload_body(id_payload))
        if not verify_psk_auth(sa.prf, psk, octets, auth.data):
            sa.fail_reason = f"authentication of {ident} failed: its AUTH payload does not match our PSK"
            raise _auth_failed(sa)


def _auth_failed(sa: IkeSa) -> Exception:
    if sa.initiator:
        return TaskFailed(sa.fail_reason)
    return RemoteProtocolError(sa.fail_reason, NotifyType.AUTHENTICATION_FAILED)


def _notify_name(t: int) -> str:
    try:
        return NotifyType(t).name
    except ValueError:
        return f"notify {t}"
