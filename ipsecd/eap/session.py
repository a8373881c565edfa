"""One EAP conversation per side: the Identity stage, method choice and Nak, outcomes.

:class:`EapAuthenticator` is the gateway's side (RFC 3748 authenticator, RFC 7296 2.16
responder); :class:`EapPeer` the road warrior's.  Both take and return raw EAP octets
as carried in the IKE EAP payload and hand back :mod:`ipsecd.eap.method` steps.

Authenticator, in order:

1. ``identity`` None (``eap_id = %any``, and always for Windows, whose IDi is its IP
   address) -> an EAP-Request/Identity first; the response names the user.
2. The first allowed method is offered (``eap-dynamic``: the list is our preference).
   A Nak lists what the peer wants instead; the first of those we allow and have not
   tried is started (``prefer_peer`` takes the peer's order instead of ours).  A Nak
   naming nothing acceptable -> Failure(NO_COMMON_METHOD).  A relay method (RADIUS)
   gets every response, Naks included: the server chooses.
3. The method runs; its terminal step gets the EAP-Success/Failure to send, with the
   identifier of the last response (RFC 3748 4.2).

Malformed packets, unexpected codes or identifiers end the conversation with
Failure(PROTOCOL_ERROR) and an EAP-Failure; no exception leaves :meth:`process`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipsecd.eap.method import (
    AuthenticatorFactory,
    AuthenticatorMethod,
    Failure,
    FailureReason,
    PeerFactory,
    PeerMethod,
    Send,
    Step,
    Success,
)
from ipsecd.eap.packet import EapDecodeError, EapPacket
from ipsecd.errors import LocalProtocolError
from ipsecd.iana import EapCode, EapType
from ipsecd.logsafe import safe

DEFAULT_MAX_ROUNDS = 50  # EAP-TLS with a 1 KB fragment size and a 5 KB chain needs ~15


def type_name(eap_type: int | None) -> str:
    try:
        return EapType(eap_type).name if eap_type is not None else "none"
    except ValueError:
        return str(eap_type)


@dataclass(frozen=True)
class MethodOffer:
    """One method the authenticator allows: its EAP type and how to make it for an identity."""

    eap_type: int
    factory: AuthenticatorFactory


class EapAuthenticator:
    """The gateway side of one EAP conversation (one per IKE SA in IKE_AUTH)."""

    def __init__(self, methods: Sequence[MethodOffer], identity: bytes | None = None, *,
                 prefer_peer: bool = False, max_rounds: int = DEFAULT_MAX_ROUNDS,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        if not methods:
            raise LocalProtocolError("EapAuthenticator needs at least one method")
        self._offers = list(methods)
        self.identity = identity
        self._prefer_peer = prefer_peer
        self._max_rounds = max_rounds
        self._rng = rng
        self._method: AuthenticatorMethod | None = None
        self._method_type: int | None = None
        self._tried: set[int] = set()
        self._last_id: int | None = None  # identifier of the request awaiting its response
        self._rounds = 0
        self._pending = False
        self._done = False

    @property
    def method_type(self) -> int | None:
        return self._method_type

    @property
    def done(self) -> bool:
        return self._done

    # ------------------------------------------------------------ entry points
    def start(self) -> Step:
        """The first EAP request: Identity, or the preferred method when the identity is known."""
        first_id = self._rng(1)[0]
        if self.identity is None:
            return self._send(EapPacket.request(first_id, EapType.IDENTITY))
        return self._start_method(self._offers[0], first_id)

    def process(self, data: bytes) -> Step:
        """One EAP response from the peer (the EAP payload of an IKE_AUTH request)."""
        if self._done or self._pending:
            raise LocalProtocolError("EAP conversation is finished or waiting for an answer")
        try:
            packet = EapPacket.decode(data)
        except EapDecodeError as exc:
            return self._fail(FailureReason.PROTOCOL_ERROR, f"malformed EAP response: {exc}")
        if packet.code != EapCode.RESPONSE:
            return self._fail(FailureReason.PROTOCOL_ERROR, f"expected an EAP-Response, got {packet}")
        if packet.identifier != self._last_id:
            return self._fail(FailureReason.PROTOCOL_ERROR,
                              f"EAP-Response identifier {packet.identifier}, expected {self._last_id}")
        self._rounds += 1
        if self._rounds > self._max_rounds:
            return self._fail(FailureReason.TOO_MANY_ROUNDS, f"EAP conversation exceeded {self._max_rounds} rounds")
        if self._method is None:
            return self._identity_response(packet)
        if packet.type == EapType.NOTIFICATION:
            return self._fail(FailureReason.PROTOCOL_ERROR, "unsolicited EAP-Response/Notification")
        if not self._method.relays:
            if packet.nak_types() or packet.type == EapType.NAK:
                return self._nak(packet)
            if packet.method != self._method_type:
                return self._fail(FailureReason.PROTOCOL_ERROR,
                                  f"EAP-Response of type {type_name(packet.method)} during "
                                  f"{type_name(self._method_type)}")
        return self._finish(self._method.process(packet))

    def resume(self, answer: object) -> Step:
        """Feed the answer to the :class:`~ipsecd.eap.method.Pending` request the last step returned."""
        if not self._pending or self._method is None:
            raise LocalProtocolError("EAP conversation is not waiting for an answer")
        self._pending = False
        return self._finish(self._method.resume(answer))

    # ------------------------------------------------------------ stages
    def _identity_response(self, packet: EapPacket) -> Step:
        if packet.type != EapType.IDENTITY:
            return self._fail(FailureReason.PROTOCOL_ERROR, f"expected EAP-Response/Identity, got {packet}")
        # RFC 4284: a NUL may separate network selection hints from the name
        self.identity = packet.data.split(b"\x00", 1)[0]
        return self._start_method(self._offers[0], packet.identifier + 1)

    def _start_method(self, offer: MethodOffer, identifier: int) -> Step:
        assert self.identity is not None
        self._method = offer.factory(self.identity)
        self._method_type = offer.eap_type
        self._tried.add(offer.eap_type)
        return self._finish(self._method.start(identifier & 0xFF))

    def _nak(self, packet: EapPacket) -> Step:
        wanted = packet.nak_types()
        allowed = {o.eap_type: o for o in self._offers if o.eap_type not in self._tried}
        order = wanted if self._prefer_peer else [o.eap_type for o in self._offers]
        for eap_type in order:
            if eap_type in allowed and eap_type in wanted:
                return self._start_method(allowed[eap_type], packet.identifier + 1)
        offered = ", ".join(type_name(t) for t in wanted) or "nothing"
        ours = ", ".join(type_name(o.eap_type) for o in self._offers)
        return self._fail(FailureReason.NO_COMMON_METHOD,
                          f"EAP peer {safe(self.identity)} refused {type_name(self._method_type)} and wants "
                          f"{offered}; allowed here: {ours}")

    # ------------------------------------------------------------ outcomes
    def _send(self, packet: EapPacket, delay: float = 0.0, refused: Failure | None = None) -> Send:
        self._last_id = packet.identifier
        return Send(packet, delay, refused)

    def _finish(self, step: Step) -> Step:
        if isinstance(step, Send):
            if step.packet.code in (EapCode.SUCCESS, EapCode.FAILURE):
                raise LocalProtocolError("a method must end with Success/Failure, not send one")
            return self._send(step.packet, step.delay, step.refused)
        if isinstance(step, Success):
            self._done = True
            final = step.final or EapPacket.success(self._last_id or 0)
            return Success(step.msk, step.emsk, step.identity or self.identity or b"",
                           step.method or self._method_type or 0, final, step.extra)
        if isinstance(step, Failure):
            self._done = True
            final = step.final or EapPacket.failure(self._last_id or 0)
            return Failure(step.reason, step.message, step.identity or self.identity or b"", final)
        self._pending = True
        return step

    def _fail(self, reason: FailureReason, message: str) -> Failure:
        self._done = True
        return Failure(reason, message, self.identity or b"", EapPacket.failure(self._last_id or 0))


class EapPeer:
    """The road-warrior side: answers Identity, Naks unsupported types, runs the method."""

    def __init__(self, identity: bytes, methods: Sequence[tuple[int, PeerFactory]]) -> None:
        self.identity = identity
        self._factories = dict(methods)
        self._order = [t for t, _ in methods]
        self._method: PeerMethod | None = None
        self._last_request: tuple[int, bytes] | None = None
        self._last_response: Send | None = None
        self._done = False

    @property
    def method_type(self) -> int | None:
        return None if self._method is None else self._method.eap_type

    def process(self, data: bytes) -> Step:
        """One EAP request (or Success/Failure) from the authenticator."""
        if self._done:
            raise LocalProtocolError("EAP conversation is finished")
        try:
            packet = EapPacket.decode(data)
        except EapDecodeError as exc:
            return self._fail(FailureReason.PROTOCOL_ERROR, f"malformed EAP request: {exc}")
        if packet.code == EapCode.SUCCESS:
            return self._success()
        if packet.code == EapCode.FAILURE:
            self._done = True
            if self._method is not None and self._method.failure is not None:
                return self._method.failure
            return Failure(FailureReason.REJECTED, "the EAP authenticator sent EAP-Failure", self.identity)
        if packet.code != EapCode.REQUEST:
            return self._fail(FailureReason.PROTOCOL_ERROR, f"expected an EAP-Request, got {packet}")
        # RFC 3748 4.1: a retransmitted request gets the same response again
        key = (packet.identifier, bytes(data))
        if key == self._last_request and self._last_response is not None:
            return self._last_response
        step = self._request(packet)
        if isinstance(step, Send):
            self._last_request, self._last_response = key, step
        elif isinstance(step, Failure):
            self._done = True
        return step

    def _request(self, packet: EapPacket) -> Step:
        if packet.type == EapType.IDENTITY:
            return Send(EapPacket.response(packet.identifier, EapType.IDENTITY, self.identity))
        if packet.type == EapType.NOTIFICATION:
            return Send(EapPacket.response(packet.identifier, EapType.NOTIFICATION))
        if self._method is None:
            factory = self._factories.get(packet.method or 0)
            if factory is None:
                return Send(EapPacket.nak(packet.identifier, self._order))
            self._method = factory(self.identity)
        elif packet.method != self._method.eap_type:
            return self._fail(FailureReason.PROTOCOL_ERROR,
                              f"EAP-Request of type {type_name(packet.method)} during "
                              f"{type_name(self._method.eap_type)}")
        return self._method.process(packet)

    def _success(self) -> Step:
        self._done = True
        method = self._method
        if method is None or method.msk is None:
            # RFC 3748 4.2 / 7.2: a Success before the method proved the server is an attack
            what = "before any method ran" if method is None else f"before {type_name(method.eap_type)} finished"
            return Failure(FailureReason.SERVER_NOT_AUTHENTICATED, f"EAP-Success {what}", self.identity)
        return Success(method.msk, method.emsk, self.identity, method.eap_type)

    def _fail(self, reason: FailureReason, message: str) -> Failure:
        self._done = True
        return Failure(reason, message, self.identity)
