"""Pre-shared key authentication (RFC 7296 2.15): AUTH = prf(prf(PSK, "Key Pad for IKEv2"), octets)."""

from __future__ import annotations

from ipsecd.iana import AuthMethod
from ipsecd.ike.authenticators import AuthContext, AuthFailure, NoResume
from ipsecd.ike.events import LoginResult
from ipsecd.ike.keymat import psk_auth_data, verify_psk_auth
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import AuthPayload, Payload
from ipsecd.ike.tasks import Status
from ipsecd.logsafe import safe


class PskBuilder(NoResume):
    """Our AUTH with the secret of (our identity, the peer's)."""

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def build(self, out: list[Payload]) -> None:
        ctx, sa = self.ctx, self.ctx.sa
        peer = ctx.peer if ctx.peer_id is not None else sa.settings.remote_id
        psk = sa.settings.psk_lookup(ctx.me, peer)
        if psk is None:
            raise AuthFailure(f"no PSK configured for {ctx.me} - {safe(peer)}", LoginResult.NO_CREDENTIAL)
        out.append(AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, psk_auth_data(sa.prf, psk,
                                                                                           ctx.my_octets())))

    def process(self, msg: Message) -> Status:
        return Status.DONE


class PskVerifier(NoResume):
    """The peer's AUTH against the secret of (our identity, its identity), in constant time."""

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def build(self, out: list[Payload]) -> None:
        return None

    def process(self, msg: Message) -> Status:
        ctx, sa = self.ctx, self.ctx.sa
        auth = msg.get(AuthPayload)
        peer = safe(ctx.peer)
        if auth is None:
            raise AuthFailure(f"peer {peer} sent no AUTH payload, PSK authentication expected")
        if auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            raise AuthFailure(f"peer {peer} uses AUTH method {_method_name(auth.method)}, the connection "
                              "expects a pre-shared key (psk)")
        psk = sa.settings.psk_lookup(ctx.me, ctx.peer)
        if psk is None:
            raise AuthFailure(f"no PSK configured for {ctx.me} - {peer}", LoginResult.NO_CREDENTIAL)
        if not verify_psk_auth(sa.prf, psk, ctx.peer_octets(), auth.data):
            raise AuthFailure(f"authentication of {peer} failed: its AUTH payload does not match our PSK")
        sa.log.info("authentication of '%s' with pre-shared key successful", peer)
        return Status.DONE


def _method_name(method: int) -> str:
    try:
        return f"{method} ({AuthMethod(method).name})"
    except ValueError:
        return str(method)
