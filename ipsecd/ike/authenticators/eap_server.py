"""The peer logs in with EAP: we are the EAP authenticator, or relay to RADIUS (RFC 7296 2.16).

Rounds, responder side:

1. the first IKE_AUTH request has no AUTH: the conversation starts (EAP-Identity first
   when ``remote.eap_id`` is ``%any``), its first request goes into our response;
2. each following request carries one EAP response; each answer one EAP request, and
   the last one EAP-Success (or EAP-Failure, after which the IKE SA goes);
3. then the client's AUTH, computed with the MSK as the shared secret, must verify;
   our answer carries our AUTH computed the same way.

A RADIUS relay step makes ``process`` return ``Status.WAIT``: the request goes to the
owner (``pending``), the answer comes back through ``resume``. A method that asks to slow
down (MSCHAPv2 after a wrong password) sets ``respond_after`` of the exchange for our response.
"""

from __future__ import annotations

from ipsecd.eap.method import Failure, FailureReason, Pending, Send, Step, Success
from ipsecd.eap.packet import EapPacket
from ipsecd.eap.radius_method import EAP_RADIUS
from ipsecd.eap.session import EapAuthenticator, type_name
from ipsecd.iana import AuthMethod, EapType
from ipsecd.ike.authenticators import AuthContext, AuthFailure
from ipsecd.ike.authenticators.eap_methods import MUTUAL_METHODS, server_offers
from ipsecd.ike.events import LoginResult
from ipsecd.ike.keymat import psk_auth_data, verify_psk_auth
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import AuthPayload, EapPayload, Payload
from ipsecd.ike.tasks import Status
from ipsecd.logsafe import safe

# What an EAP failure means for the login metrics.
LOGIN_RESULTS = {
    FailureReason.WRONG_PASSWORD: LoginResult.WRONG_PASSWORD,
    FailureReason.UNKNOWN_USER: LoginResult.UNKNOWN_USER,
    FailureReason.ACCOUNT_RESTRICTED: LoginResult.REJECTED,
    FailureReason.NO_SECRET: LoginResult.NO_CREDENTIAL,
    FailureReason.SERVER_NOT_AUTHENTICATED: LoginResult.BAD_AUTH,
    FailureReason.CERTIFICATE_REJECTED: LoginResult.CERTIFICATE,
    FailureReason.TLS_ERROR: LoginResult.PROTOCOL,
    FailureReason.NO_COMMON_METHOD: LoginResult.NO_CONFIG,
    FailureReason.PROTOCOL_ERROR: LoginResult.PROTOCOL,
    FailureReason.REJECTED: LoginResult.REJECTED,
    FailureReason.SERVER_UNREACHABLE: LoginResult.SERVER_UNREACHABLE,
    FailureReason.PEER_ABORTED: LoginResult.ABANDONED,
    FailureReason.TOO_MANY_ROUNDS: LoginResult.PROTOCOL,
}


def method_label(eap_type: int | None, configured: str) -> str:
    """The login method as the metrics name it: the EAP method that ran."""
    if configured == "eap-radius" or eap_type == EAP_RADIUS:
        return "eap-radius"
    if eap_type == EapType.MSCHAPV2:
        return "eap-mschapv2"
    if eap_type == EapType.TLS:
        return "eap-tls"
    return "eap"


class EapServer:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        sa = ctx.sa
        wanted = sa.settings.remote_auth.eap_id
        if wanted is None:  # strongSwan: without eap_id the IKE identity is the EAP identity
            identity: bytes | None = ctx.peer.to_wire()[1]
        elif wanted.is_any:  # ask for it: Windows' IKE identity is only its IP address
            identity = None
        else:
            identity = wanted.to_wire()[1]
        offers = server_offers(ctx)
        if not offers:
            raise AuthFailure(f"{sa.settings.remote_auth.method}: no EAP method can run (EAP-TLS needs our "
                              "certificate)", LoginResult.NO_CREDENTIAL)
        self.session = EapAuthenticator(offers, identity, rng=sa.ctx.rng)
        self.pending: object | None = None  # the outside request a WAIT stands for
        self.success: Success | None = None
        self.failure: Failure | None = None
        self.verified = False  # the client's AUTH from the MSK verified
        self.refused: tuple[LoginResult, str] | None = None  # the last attempt refused (the client may retry)
        self._out: EapPacket | None = None
        self._delay = 0.0

    @property
    def method(self) -> str:
        return method_label(self.session.method_type, self.ctx.sa.settings.remote_auth.method)

    @property
    def mutual(self) -> bool:
        return self.session.method_type in MUTUAL_METHODS

    @property
    def identity(self) -> bytes | None:
        return self.success.identity if self.success is not None else self.session.identity

    def failure_result(self) -> LoginResult:
        return LOGIN_RESULTS.get(self.failure.reason, LoginResult.PROTOCOL) if self.failure else LoginResult.PROTOCOL

    # ------------------------------------------------------------ the verbs
    def start(self) -> Status:
        return self._step(self.session.start())

    def process(self, msg: Message) -> Status:
        sa, peer = self.ctx.sa, safe(self.ctx.peer)
        if self.success is not None:
            auth = msg.get(AuthPayload)
            if auth is None or auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
                raise AuthFailure(f"peer {peer} sent no AUTH computed from the EAP MSK after EAP-Success",
                                  LoginResult.PROTOCOL)
            if not verify_psk_auth(sa.prf, self.success.msk, self.ctx.peer_octets(), auth.data):
                raise AuthFailure(f"peer {peer} passed {type_name(self.success.method)} but its AUTH does not "
                                  "verify with the MSK (a relayed or tampered conversation)")
            self.verified = True
            sa.log.info("authentication of '%s' (EAP identity '%s') with %s successful", peer,
                        safe(self.success.identity), self.method)
            return Status.DONE
        eap = msg.get(EapPayload)
        if eap is None:
            raise AuthFailure(f"peer {peer} sent neither an EAP payload nor AUTH during EAP", LoginResult.PROTOCOL)
        return self._step(self.session.process(eap.data))

    def resume(self, answer: object) -> Status:
        self.pending = None
        return self._step(self.session.resume(answer))

    def build(self, out: list[Payload]) -> None:
        sa = self.ctx.sa
        if self._out is not None:
            out.append(EapPayload(self._out.encode()))
            self._out = None
            if self._delay > 0:
                sa.exchanges.respond_after = self._delay  # slow down password guessing (strongSwan: 2 s)
                self._delay = 0.0
        elif self.verified and self.success is not None:
            # RFC 7296 2.16: our AUTH in the last message is also computed with the MSK
            out.append(AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE,
                                   psk_auth_data(sa.prf, self.success.msk, self.ctx.my_octets())))

    # ------------------------------------------------------------ steps
    def _step(self, step: Step) -> Status:
        sa = self.ctx.sa
        if isinstance(step, Send):
            self._out, self._delay = step.packet, step.delay
            if step.refused is not None:
                self.refused = (LOGIN_RESULTS.get(step.refused.reason, LoginResult.PROTOCOL), step.refused.message)
                sa.log.warning("EAP login of %s refused: %s; the client may try again", safe(self.ctx.peer),
                               step.refused.message)
        elif isinstance(step, Pending):
            self.pending = step.request
            return Status.WAIT
        elif isinstance(step, Success):
            self.success, self._out = step, step.final
            sa.log.info("EAP method %s succeeded for '%s', MSK established", type_name(step.method),
                        safe(step.identity))
        elif isinstance(step, Failure):
            self.failure, self._out = step, step.final
        return Status.NEED_MORE
