"""EAP sessions: Identity stage, eap-dynamic selection with Nak, identifiers, retransmits, relays."""

from __future__ import annotations

from typing import ClassVar

import pytest

from ipsecd.eap.method import AuthenticatorMethod, Failure, FailureReason, PeerMethod, Pending, Send, Step, Success
from ipsecd.eap.packet import EapPacket
from ipsecd.eap.session import EapAuthenticator, EapPeer, MethodOffer
from ipsecd.errors import LocalProtocolError
from ipsecd.iana import EapCode, EapType


class EchoAuth(AuthenticatorMethod):
    """One request, succeed on a response echoing it: enough to test the session around a method."""

    eap_type: ClassVar[int] = EapType.MD5_CHALLENGE

    def __init__(self, identity: bytes, eap_type: int) -> None:
        self.identity, self.t, self.id = identity, eap_type, 0

    def start(self, identifier: int) -> Step:
        self.id = identifier
        return Send(EapPacket.request(identifier, self.t, b"ping"))

    def process(self, packet: EapPacket) -> Step:
        if packet.data == b"ping":
            return Success(b"k" * 64)
        return Failure(FailureReason.WRONG_PASSWORD, "bad echo")


class EchoPeer(PeerMethod):
    eap_type: ClassVar[int] = EapType.MD5_CHALLENGE

    def __init__(self, eap_type: int) -> None:
        super().__init__()
        self.t = eap_type

    def process(self, packet: EapPacket) -> Step:
        self.msk = b"k" * 64
        return Send(EapPacket.response(packet.identifier, self.t, packet.data))


def offer(t: int) -> MethodOffer:
    return MethodOffer(t, lambda ident: EchoAuth(ident, t))


def peer_with(*types: int) -> EapPeer:
    def factory(t: int):  # type: ignore[no-untyped-def]
        def make(_ident: bytes) -> EchoPeer:
            p = EchoPeer(t)
            p.eap_type = t  # type: ignore[misc]
            return p
        return make
    return EapPeer(b"carol", [(t, factory(t)) for t in types])


def converse(auth: EapAuthenticator, peer: EapPeer) -> tuple[Step, Step, list[EapPacket]]:
    wire: list[EapPacket] = []
    step = auth.start()
    while isinstance(step, Send):
        wire.append(step.packet)
        answer = peer.process(step.packet.encode())
        assert isinstance(answer, Send), answer
        wire.append(answer.packet)
        step = auth.process(answer.packet.encode())
    assert isinstance(step, Success | Failure) and step.final is not None
    return step, peer.process(step.final.encode()), wire


def test_identity_stage_when_identity_unknown() -> None:
    a, p, wire = converse(EapAuthenticator([offer(EapType.TLS)]), peer_with(EapType.TLS))
    assert wire[0].type == EapType.IDENTITY and wire[1].data == b"carol"
    assert isinstance(a, Success) and a.identity == b"carol" and isinstance(p, Success)
    assert a.final is not None and a.final.identifier == wire[-1].identifier


def test_known_identity_skips_identity_stage() -> None:
    a, _p, wire = converse(EapAuthenticator([offer(EapType.TLS)], identity=b"carol"), peer_with(EapType.TLS))
    assert wire[0].type == EapType.TLS and isinstance(a, Success)


def test_nak_selects_the_peers_alternative_among_allowed() -> None:
    auth = EapAuthenticator([offer(EapType.TLS), offer(EapType.MSCHAPV2)], identity=b"carol")
    a, p, wire = converse(auth, peer_with(EapType.MSCHAPV2))
    assert wire[1].type == EapType.NAK and wire[1].nak_types() == [EapType.MSCHAPV2]
    assert wire[2].type == EapType.MSCHAPV2 and wire[2].identifier == (wire[1].identifier + 1) & 0xFF
    assert isinstance(a, Success) and a.method == EapType.MSCHAPV2 and isinstance(p, Success)


def test_preference_order_ours_or_the_peers() -> None:
    offers = [offer(EapType.MD5_CHALLENGE), offer(EapType.TLS), offer(EapType.MSCHAPV2)]
    peer_types = (EapType.MSCHAPV2, EapType.TLS)
    a, _, _ = converse(EapAuthenticator(offers, identity=b"c"), peer_with(*peer_types))
    assert isinstance(a, Success) and a.method == EapType.TLS
    a, _, _ = converse(EapAuthenticator(offers, identity=b"c", prefer_peer=True), peer_with(*peer_types))
    assert isinstance(a, Success) and a.method == EapType.MSCHAPV2


def test_nak_with_nothing_acceptable_fails_with_no_common_method() -> None:
    auth = EapAuthenticator([offer(EapType.TLS)], identity=b"carol")
    a, p, _ = converse(auth, peer_with(EapType.MSCHAPV2))
    assert isinstance(a, Failure) and a.reason == FailureReason.NO_COMMON_METHOD
    assert "carol" in a.message and "MSCHAPV2" in a.message and "TLS" in a.message
    assert isinstance(p, Failure) and p.reason == FailureReason.REJECTED


def test_a_type_is_not_offered_twice() -> None:
    auth = EapAuthenticator([offer(EapType.TLS), offer(EapType.MSCHAPV2)], identity=b"c")
    first = auth.start()
    assert isinstance(first, Send)
    out = auth.process(EapPacket.nak(first.packet.identifier, [EapType.TLS]).encode())
    assert isinstance(out, Failure) and out.reason == FailureReason.NO_COMMON_METHOD


@pytest.mark.parametrize("reply", [
    b"\x02\x00\x00",  # malformed
    EapPacket.request(0, EapType.IDENTITY).encode(),  # a request
    EapPacket.response(0x77, EapType.TLS, b"x").encode(),  # wrong identifier (set below)
    EapPacket.response(0, EapType.MSCHAPV2, b"x").encode(),  # another method's type
])
def test_bad_responses_end_with_protocol_error_and_eap_failure(reply: bytes) -> None:
    auth = EapAuthenticator([offer(EapType.TLS)], identity=b"c", rng=lambda n: b"\x00")
    assert isinstance(auth.start(), Send)
    out = auth.process(reply)
    assert isinstance(out, Failure) and out.reason == FailureReason.PROTOCOL_ERROR
    assert out.final is not None and out.final.code == EapCode.FAILURE
    with pytest.raises(LocalProtocolError):
        auth.process(reply)


def test_round_limit() -> None:
    class Endless(EchoAuth):
        def process(self, packet: EapPacket) -> Step:
            self.id += 1
            return Send(EapPacket.request(self.id, self.t, b"more"))

    auth = EapAuthenticator([MethodOffer(EapType.TLS, lambda i: Endless(i, EapType.TLS))], b"c", max_rounds=5)
    step = auth.start()
    for _ in range(10):
        if not isinstance(step, Send):
            break
        step = auth.process(EapPacket.response(step.packet.identifier, EapType.TLS).encode())
    assert isinstance(step, Failure) and step.reason == FailureReason.TOO_MANY_ROUNDS


def test_pending_and_resume() -> None:
    class Asking(EchoAuth):
        relays = True

        def start(self, identifier: int) -> Step:
            self.id = identifier
            return Pending(("ask", identifier))

        def resume(self, answer: object) -> Step:
            return Send(EapPacket.request(self.id, self.t, str(answer).encode()))

    auth = EapAuthenticator([MethodOffer(EapType.TLS, lambda i: Asking(i, EapType.TLS))], b"c")
    step = auth.start()
    assert isinstance(step, Pending)
    with pytest.raises(LocalProtocolError):
        auth.process(b"")
    step = auth.resume("ok")
    assert isinstance(step, Send) and step.packet.data == b"ok"
    with pytest.raises(LocalProtocolError):
        auth.resume("again")


def test_peer_naks_unknown_types_repeats_retransmits_and_answers_notifications() -> None:
    peer = peer_with(EapType.MSCHAPV2, EapType.TLS)
    nak = peer.process(EapPacket.request(3, EapType.MD5_CHALLENGE, b"x").encode())
    assert isinstance(nak, Send) and nak.packet.nak_types() == [EapType.MSCHAPV2, EapType.TLS]
    note = peer.process(EapPacket.request(4, EapType.NOTIFICATION, b"hello").encode())
    assert isinstance(note, Send) and note.packet.type == EapType.NOTIFICATION and note.packet.data == b""
    req = EapPacket.request(5, EapType.TLS, b"ping").encode()
    first = peer.process(req)
    assert peer.process(req) is first  # RFC 3748 4.1 retransmission
    other = peer.process(EapPacket.request(6, EapType.MSCHAPV2, b"x").encode())
    assert isinstance(other, Failure) and other.reason == FailureReason.PROTOCOL_ERROR


def test_peer_refuses_early_success() -> None:
    out = peer_with(EapType.TLS).process(EapPacket.success(1).encode())
    assert isinstance(out, Failure) and out.reason == FailureReason.SERVER_NOT_AUTHENTICATED
