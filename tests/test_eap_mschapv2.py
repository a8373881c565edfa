"""EAP-MSCHAPv2: RFC 2759 9.2 and RFC 3079 3.5.3 known answers, both roles, retries, bad input."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from ipsecd.eap import mschapv2 as m
from ipsecd.eap.method import Failure, FailureReason, NtHash, Secret, Send, Step, Success
from ipsecd.eap.packet import EapPacket
from ipsecd.eap.session import EapAuthenticator, EapPeer, MethodOffer
from ipsecd.iana import EapCode, EapType

# RFC 2759 9.2 (also the inputs of RFC 3079 3.5)
USER = b"User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
CHALLENGE = bytes.fromhex("D02E4386BCE91226")
NT_HASH = bytes.fromhex("44EBBA8D5312B8D611474411F56989AE")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
HASH_HASH = bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F")
AUTH_RESPONSE = "407A5589115FD0D6209F510FE9C04566932CDA56"
# RFC 3079 3.5.3 (128-bit keys)
MASTER_KEY = bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_128 = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")


def test_rfc2759_section_9_2_vectors() -> None:
    assert m.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == CHALLENGE
    assert m.nt_password_hash(PASSWORD) == NT_HASH
    assert m.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, NT_HASH) == NT_RESPONSE
    assert m.hash_nt_password_hash(NT_HASH) == HASH_HASH
    auth = m.authenticator_response(NT_HASH, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER)
    assert auth.hex().upper() == AUTH_RESPONSE


def test_rfc3079_section_3_5_3_vectors_and_msk_layout() -> None:
    assert m.master_key(HASH_HASH, NT_RESPONSE) == MASTER_KEY
    assert m.asymmetric_start_key(MASTER_KEY, 16, is_send=True, is_server=True) == SEND_START_KEY_128
    # the client's receive key is the server's send key, and vice versa
    assert m.asymmetric_start_key(MASTER_KEY, 16, is_send=False, is_server=False) == SEND_START_KEY_128
    msk = m.mschapv2_msk(NT_HASH, NT_RESPONSE)
    assert len(msk) == 64
    assert msk[:16] == m.asymmetric_start_key(MASTER_KEY, 16, is_send=False, is_server=True)
    assert msk[16:32] == SEND_START_KEY_128  # strongSwan: receive key | send key | 32 zeros
    assert msk[32:] == bytes(32)


def test_domain_prefix_is_not_hashed() -> None:
    assert m.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, b"CORP\\User") == CHALLENGE


def challenge(identifier: int, ms_id: int, chal: bytes, name: bytes = b"srv") -> EapPacket:
    """An EAP-MSCHAPv2 Challenge request, built by hand (not by the code under test)."""
    body = bytes([16]) + chal + name
    header = bytes([1, ms_id]) + (4 + len(body)).to_bytes(2, "big")
    return EapPacket.request(identifier, EapType.MSCHAPV2, header + body)


def _fixed(*chunks: bytes) -> Callable[[int], bytes]:
    it = iter(chunks)
    return lambda n: next(it)[:n]


def test_peer_answers_the_rfc_challenge_with_the_rfc_response() -> None:
    peer = m.MschapV2Peer(USER, PASSWORD, rng=_fixed(PEER_CHALLENGE))
    step = peer.process(challenge(1, 9, AUTH_CHALLENGE))
    assert isinstance(step, Send)
    data = step.packet.data
    assert data[:2] == bytes([2, 9]) and int.from_bytes(data[2:4], "big") == len(data)
    assert data[4] == 49 and data[5:21] == PEER_CHALLENGE and data[29:53] == NT_RESPONSE and data[54:] == USER
    ok = EapPacket.request(2, EapType.MSCHAPV2, bytes([3, 9, 0, 46]) + b"S=" + AUTH_RESPONSE.encode())
    step = peer.process(ok)
    assert isinstance(step, Send) and step.packet.data == b"\x03"
    assert peer.msk == m.mschapv2_msk(NT_HASH, NT_RESPONSE)


# ------------------------------------------------------------ in-process round trips
Users = dict[bytes, Secret]


def run(auth: EapAuthenticator, peer: EapPeer, max_rounds: int = 20) -> tuple[Step, Step, list[Send]]:
    """Pump packets between both sides until each has an outcome; returns (auth, peer, sends)."""
    sends: list[Send] = []
    step = auth.start()
    for _ in range(max_rounds):
        if isinstance(step, Send):
            sends.append(step)
            peer_step = peer.process(step.packet.encode())
            if not isinstance(peer_step, Send):
                return step, peer_step, sends
            step = auth.process(peer_step.packet.encode())
        else:
            assert isinstance(step, Success | Failure)
            assert step.final is not None
            return step, peer.process(step.final.encode()), sends
    raise AssertionError("conversation did not end")


def gateway(users: Users, identity: bytes | None = None, **kw: object) -> EapAuthenticator:
    def make(ident: bytes) -> m.MschapV2Authenticator:
        return m.MschapV2Authenticator(ident, users.get, **kw)  # type: ignore[arg-type]
    return EapAuthenticator([MethodOffer(EapType.MSCHAPV2, make)], identity)


def client(identity: bytes, secret: Secret | None) -> EapPeer:
    return EapPeer(identity, [(EapType.MSCHAPV2, lambda ident: m.MschapV2Peer(ident, secret))])


@pytest.mark.parametrize("stored", ["s3cret-pw", NtHash(m.nt_password_hash("s3cret-pw"))])
def test_round_trip_with_identity_stage_and_equal_msk(stored: Secret) -> None:
    auth_end, peer_end, sends = run(gateway({b"alice": stored}), client(b"alice", "s3cret-pw"))
    assert isinstance(auth_end, Success) and isinstance(peer_end, Success)
    assert auth_end.msk == peer_end.msk and len(auth_end.msk) == 64
    assert auth_end.identity == b"alice" and auth_end.method == EapType.MSCHAPV2
    assert auth_end.final is not None and auth_end.final.code == EapCode.SUCCESS
    assert sends[0].packet.type == EapType.IDENTITY
    assert auth_end.msk.hex() not in repr(auth_end)


def test_peer_with_nt_hash_secret() -> None:
    a, p, _ = run(gateway({b"bob": "pw"}), client(b"bob", NtHash(m.nt_password_hash("pw"))))
    assert isinstance(a, Success) and isinstance(p, Success) and a.msk == p.msk


def test_wrong_password_gives_clear_outcome_on_both_sides() -> None:
    a, p, sends = run(gateway({b"alice": "right"}), client(b"alice", "wrong"))
    assert isinstance(a, Failure) and a.reason == FailureReason.WRONG_PASSWORD
    assert "wrong password for user alice" in a.message and "right" not in a.message and "wrong\"" not in a.message
    assert a.final is not None and a.final.code == EapCode.FAILURE
    assert isinstance(p, Failure) and p.reason == FailureReason.WRONG_PASSWORD and "E=691" in p.message
    retry = sends[-1]
    assert retry.delay == m.DEFAULT_RETRY_DELAY
    assert retry.packet.data[0] == m.OpCode.FAILURE and b"E=691 R=1 C=" in retry.packet.data


def test_unknown_user_looks_like_a_wrong_password_on_the_wire() -> None:
    a, _p, sends = run(gateway({b"alice": "pw"}), client(b"mallory", "pw"))
    assert isinstance(a, Failure) and a.reason == FailureReason.UNKNOWN_USER
    assert "no EAP secret for user mallory" in a.message
    assert b"E=691" in sends[-1].packet.data


def test_retries_like_windows_then_give_up_after_the_limit() -> None:
    """A client that answers each E=691 with a new Response (Windows prompting again)."""
    auth = gateway({b"alice": "right"}, identity=b"alice", max_retries=2, retry_delay=0.0)
    step = auth.start()
    attempts = 0
    for password in itertools.cycle(["wrong"]):
        assert isinstance(step, Send), step
        peer = m.MschapV2Peer(b"alice", password)
        data = step.packet.data
        if data[0] == m.OpCode.FAILURE:  # turn the retry into a challenge for a fresh peer
            chal = bytes.fromhex(m._fields(data[4:])["C"])
            data = challenge(0, data[1], chal).data
        resp = peer.process(EapPacket.request(step.packet.identifier, EapType.MSCHAPV2, data))
        assert isinstance(resp, Send)
        attempts += 1
        step = auth.process(resp.packet.encode())
        if not isinstance(step, Send):
            break
    assert attempts == 3
    assert isinstance(step, Failure) and step.reason == FailureReason.WRONG_PASSWORD
    assert "2 retries used up" in step.message


def test_retry_with_the_right_password_succeeds() -> None:
    auth = gateway({b"alice": "right"}, identity=b"alice", retry_delay=0.0)
    step = auth.start()
    assert isinstance(step, Send)
    resp = m.MschapV2Peer(b"alice", "wrong").process(step.packet)
    assert isinstance(resp, Send)
    step = auth.process(resp.packet.encode())
    assert isinstance(step, Send) and step.packet.data[0] == m.OpCode.FAILURE
    chal = bytes.fromhex(m._fields(step.packet.data[4:])["C"])
    peer = m.MschapV2Peer(b"alice", "right")
    resp = peer.process(challenge(step.packet.identifier, step.packet.data[1], chal))
    assert isinstance(resp, Send)
    step = auth.process(resp.packet.encode())
    assert isinstance(step, Send) and step.packet.data[0] == m.OpCode.SUCCESS
    ack = peer.process(step.packet)
    assert isinstance(ack, Send)
    end = auth.process(ack.packet.encode())
    assert isinstance(end, Success) and end.msk == peer.msk


def test_peer_rejects_a_server_that_does_not_know_the_password() -> None:
    peer = client(b"alice", "pw")
    assert isinstance(peer.process(challenge(1, 1, bytes(16), b"evil").encode()), Send)
    fake = EapPacket.request(2, EapType.MSCHAPV2, bytes([3, 1, 0, 46]) + b"S=" + b"0" * 40)
    out = peer.process(fake.encode())
    assert isinstance(out, Failure) and out.reason == FailureReason.SERVER_NOT_AUTHENTICATED


def test_peer_refuses_success_before_the_server_proved_itself() -> None:
    peer = client(b"alice", "pw")
    assert isinstance(peer.process(challenge(1, 1, bytes(16), b"evil").encode()), Send)
    out = peer.process(EapPacket.success(1).encode())
    assert isinstance(out, Failure) and out.reason == FailureReason.SERVER_NOT_AUTHENTICATED


def test_peer_without_a_secret_says_so() -> None:
    _a, p, _ = run(gateway({b"alice": "pw"}), client(b"alice", None))
    assert isinstance(p, Failure) and p.reason == FailureReason.NO_SECRET


@pytest.mark.parametrize("data", [
    b"",  # no OpCode
    bytes([2, 1, 0, 10]) + b"short",  # Response too short
    bytes([2, 1, 0, 58, 48]) + bytes(53),  # wrong Value-Size
    bytes([3]),  # Success before any Response
    bytes([9]),  # unknown OpCode
])
def test_authenticator_malformed_responses_fail_cleanly(data: bytes) -> None:
    auth = gateway({b"alice": "pw"}, identity=b"alice")
    first = auth.start()
    assert isinstance(first, Send)
    out = auth.process(EapPacket.response(first.packet.identifier, EapType.MSCHAPV2, data).encode())
    assert isinstance(out, Failure) and out.reason == FailureReason.PROTOCOL_ERROR
    assert out.final is not None and out.final.code == EapCode.FAILURE


@pytest.mark.parametrize("data", [
    bytes([1, 1, 0]),  # shorter than the MS header
    bytes([1, 1, 0, 9, 16, 1, 2, 3, 4]),  # challenge too short
    bytes([1, 1, 0, 30]) + bytes(26),  # MS-Length mismatch
    bytes([1, 1, 0, 21, 8]) + bytes(16),  # Value-Size 8
    bytes([3, 1, 0, 10]) + b"S=12",  # Success before a challenge
])
def test_peer_malformed_requests_fail_cleanly(data: bytes) -> None:
    out = client(b"alice", "pw").process(EapPacket.request(1, EapType.MSCHAPV2, data).encode())
    assert isinstance(out, Failure) and out.reason == FailureReason.PROTOCOL_ERROR
