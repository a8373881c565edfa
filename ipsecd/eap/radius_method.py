"""EAP-RADIUS pass-through: the gateway relays the EAP conversation to a RADIUS server.

An :class:`~ipsecd.eap.method.AuthenticatorMethod` with ``relays = True``: every EAP
response (Naks included; the server picks the method) becomes an Access-Request, and
every step that needs the server is a :class:`~ipsecd.eap.method.Pending` whose
``request`` is an :class:`~ipsecd.eap.radius.AccessRequest`.  The shell gives it to
the daemon's :class:`~ipsecd.eap.radius.RadiusClient` (through
:class:`~ipsecd.eap.radius_io.RadiusIo` or its own loop) and calls ``resume`` with the
:class:`~ipsecd.eap.radius.RadiusAnswer`:

* Access-Challenge -> the EAP-Request inside goes to the client (State kept for the next request);
* Access-Accept -> Success: MSK = MS-MPPE-Recv-Key | MS-MPPE-Send-Key, ``final`` the
  server's EAP-Success, ``extra`` the answer (Class, Framed-IP-Address, Session-Timeout
  for accounting and the CP reply);
* Access-Reject -> Failure(REJECTED) with the server's Reply-Message;
* no server answered -> Failure(SERVER_UNREACHABLE).

Like strongSwan's eap-radius with ``eap_start = no``, the conversation opens with an
EAP-Response/Identity built from the identity the session already has (from its own
EAP-Identity round, or the IKE identity), so the server chooses the method at once.
"""

from __future__ import annotations

from ipsecd.eap.method import AuthenticatorMethod, Failure, FailureReason, Pending, Send, Step, Success
from ipsecd.eap.packet import EapDecodeError, EapPacket
from ipsecd.eap.radius import AccessRequest, AnswerKind, RadiusAnswer
from ipsecd.errors import LocalProtocolError
from ipsecd.iana import EapCode, EapType
from ipsecd.logsafe import safe

EAP_RADIUS = 0  # MethodOffer type for the relay: not an EAP type, the server decides


class EapRadiusRelay(AuthenticatorMethod):
    eap_type = EAP_RADIUS
    relays = True

    def __init__(self, identity: bytes, *, calling_station_id: str = "", called_station_id: str = "") -> None:
        self.identity = identity
        self._calling = calling_station_id
        self._called = called_station_id
        self._state: bytes | None = None
        self._method = 0
        self._waiting = False

    def _ask(self, response: EapPacket) -> Pending:
        if response.type not in (None, EapType.NAK, EapType.IDENTITY, EapType.NOTIFICATION):
            self._method = response.method or 0
        self._waiting = True
        return Pending(AccessRequest(self.identity, response.encode(), self._state, self._calling, self._called))

    def start(self, identifier: int) -> Step:
        return self._ask(EapPacket.response((identifier - 1) & 0xFF, EapType.IDENTITY, self.identity))

    def process(self, packet: EapPacket) -> Step:
        return self._ask(packet)

    def resume(self, answer: object) -> Step:
        if not self._waiting or not isinstance(answer, RadiusAnswer):
            raise LocalProtocolError("EAP-RADIUS relay resumed without a pending RadiusAnswer")
        self._waiting = False
        who = safe(self.identity)
        if answer.kind == AnswerKind.TIMEOUT:
            return Failure(FailureReason.SERVER_UNREACHABLE, f"no RADIUS server answered for user {who}",
                           self.identity)
        try:
            eap = EapPacket.decode(answer.eap_message) if answer.eap_message else None
        except EapDecodeError as exc:
            return Failure(FailureReason.PROTOCOL_ERROR, f"RADIUS server {answer.server} sent bad EAP: {exc}",
                           self.identity)
        if answer.kind == AnswerKind.CHALLENGE:
            if eap is None or eap.code != EapCode.REQUEST:
                return Failure(FailureReason.PROTOCOL_ERROR,
                               f"RADIUS server {answer.server} sent an Access-Challenge without an EAP-Request",
                               self.identity)
            self._state = answer.state
            return Send(eap)
        if answer.kind == AnswerKind.ACCEPT:
            if not answer.msk:
                return Failure(FailureReason.PROTOCOL_ERROR,
                               f"RADIUS server {answer.server} accepted {who} without MS-MPPE keys: no MSK",
                               self.identity)
            final = eap if eap is not None and eap.code == EapCode.SUCCESS else None
            return Success(answer.msk, b"", self.identity, self._method, final, answer)
        final = eap if eap is not None and eap.code == EapCode.FAILURE else None
        why = f": {answer.reply_message}" if answer.reply_message else ""
        return Failure(FailureReason.REJECTED, f"RADIUS server {answer.server} rejected user {who}{why}",
                       self.identity, final)
