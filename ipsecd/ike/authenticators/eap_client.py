"""We log in with EAP (ipsecd as a road-warrior client, RFC 7296 2.16).

Our first IKE_AUTH request has no AUTH; the gateway answers with its own AUTH and the
first EAP request. We answer each EAP request until EAP-Success, then send AUTH computed
with the MSK, and the gateway's last response must carry its AUTH computed the same way.
A gateway that sent no AUTH in its first response (EAP-only, RFC 5998) is accepted only
when the method proved it too (EAP-TLS): then that final AUTH is all it proves.
"""

from __future__ import annotations

from ipsecd.eap.method import Failure, Send, Success
from ipsecd.eap.session import EapPeer, type_name
from ipsecd.iana import AuthMethod
from ipsecd.ike.authenticators import AuthContext, AuthFailure, NoResume, missing_credential
from ipsecd.ike.authenticators.eap_methods import MUTUAL_METHODS, client_methods
from ipsecd.ike.authenticators.eap_server import LOGIN_RESULTS
from ipsecd.ike.events import LoginResult
from ipsecd.ike.keymat import psk_auth_data, verify_psk_auth
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import AuthPayload, EapPayload, Payload
from ipsecd.ike.tasks import Status
from ipsecd.logsafe import safe


class EapClient(NoResume):
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        sa = ctx.sa
        local = sa.settings.local_auth
        self.identity = (local.eap_id or ctx.me).to_wire()[1]
        methods = client_methods(ctx, self.identity)
        if not methods:
            what = "a password in secrets.eap" if local.method == "eap-mschapv2" else \
                missing_credential(sa, ctx.me) if local.method == "eap-tls" else \
                "a password in secrets.eap or a certificate"
            raise AuthFailure(f"{local.method}: nothing to log in with as '{safe(self.identity)}': {what}",
                              LoginResult.NO_CREDENTIAL)
        self.peer = EapPeer(self.identity, methods)
        self.require_mutual = False  # the gateway sent no AUTH of its own (EAP-only)
        self.msk: bytes | None = None
        self._out: Send | None = None
        self._auth_sent = False

    def build(self, out: list[Payload]) -> None:
        if self._out is not None:
            out.append(EapPayload(self._out.packet.encode()))
            self._out = None
        elif self.msk is not None:
            sa = self.ctx.sa
            out.append(AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE,
                                   psk_auth_data(sa.prf, self.msk, self.ctx.my_octets())))
            self._auth_sent = True
        # the first request: nothing; no AUTH tells the gateway we want EAP (RFC 7296 2.16)

    def process(self, msg: Message) -> Status:
        sa = self.ctx.sa
        gateway = safe(self.ctx.peer)
        if self._auth_sent and self.msk is not None:
            auth = msg.get(AuthPayload)
            if auth is None or not verify_psk_auth(sa.prf, self.msk, self.ctx.peer_octets(), auth.data):
                raise AuthFailure(f"gateway {gateway}: its AUTH does not verify with the EAP MSK")
            if self.require_mutual and self.peer.method_type not in MUTUAL_METHODS:
                raise AuthFailure(f"gateway {gateway} sent no AUTH of its own (EAP-only, RFC 5998), but "
                                  f"{type_name(self.peer.method_type)} does not authenticate it: refused")
            sa.log.info("authentication of gateway '%s' with the %s MSK successful", gateway,
                        type_name(self.peer.method_type))
            return Status.DONE
        eap = msg.get(EapPayload)
        if eap is None:
            raise AuthFailure(f"gateway {gateway} sent no EAP payload", LoginResult.PROTOCOL)
        step = self.peer.process(eap.data)
        if isinstance(step, Send):
            self._out = step
        elif isinstance(step, Success):
            self.msk = step.msk
            sa.log.info("EAP method %s succeeded as '%s', MSK established", type_name(step.method),
                        safe(self.identity))
        elif isinstance(step, Failure):
            raise AuthFailure(f"EAP login as '{safe(self.identity)}' failed: {step.message}",
                              LOGIN_RESULTS.get(step.reason, LoginResult.PROTOCOL))
        else:
            raise AuthFailure("EAP peer asked for an outside answer", LoginResult.PROTOCOL)
        return Status.NEED_MORE
