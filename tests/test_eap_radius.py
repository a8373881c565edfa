"""RADIUS client core: encoding (pyrad as the server-side oracle), verification, MPPE keys, failover, relay."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from pyrad import packet as rp
from pyrad.dictionary import Dictionary

from ipsecd.eap import mschapv2
from ipsecd.eap.method import Failure, FailureReason, Pending, Send, Step, Success
from ipsecd.eap.packet import EapPacket
from ipsecd.eap.radius import (
    DICTIONARY_PATH,
    AccessRequest,
    AccountingRecord,
    AnswerKind,
    RadiusAnswer,
    RadiusClient,
    RadiusResult,
    RadiusServer,
    RadiusSettings,
    decrypt_mppe_key,
)
from ipsecd.eap.radius_method import EAP_RADIUS, EapRadiusRelay
from ipsecd.eap.session import EapAuthenticator, EapPeer, MethodOffer
from ipsecd.iana import AcctStatusType, AcctTerminateCause, EapCode, EapType, RadiusCode

SECRET = b"testing123"
DICT = Dictionary(str(DICTIONARY_PATH))
S1 = RadiusServer("192.0.2.10", SECRET)
S2 = RadiusServer("192.0.2.11", b"other-secret")


def server_view(raw: bytes, secret: bytes = SECRET, acct: bool = False) -> rp.Packet:
    cls = rp.AcctPacket if acct else rp.AuthPacket
    return cls(packet=raw, secret=secret, dict=DICT)


def reply(req: rp.Packet, code: int, *, ma: bool = True, **attrs: object) -> bytes:
    rep = req.CreateReply()
    rep.code = code
    for key, value in attrs.items():
        values = value if isinstance(value, list) else [value]
        if key.startswith("_"):
            rep[int(key[1:])] = values
        else:
            rep[key.replace("_", "-")] = values
    if ma:
        rep.add_message_authenticator()
        return rep.ReplyPacket()
    # unsigned: a correct Response Authenticator but no Message-Authenticator
    attrs_raw = b"".join(bytes([k, len(v) + 2]) + v for k, vs in rep.items() if k != 80 for v in vs)
    head = bytes([code, req.id]) + (20 + len(attrs_raw)).to_bytes(2, "big")
    return head + hashlib.md5(head + req.authenticator + attrs_raw + req.secret).digest() + attrs_raw


def one_request(client: RadiusClient) -> tuple[bytes, tuple[str, int]]:
    out = client.datagrams_to_send()
    assert len(out) == 1
    return out[0]


def test_access_request_layout() -> None:
    client = RadiusClient([S1], RadiusSettings(nas_identifier="gw1", nas_ip="192.0.2.1"))
    eap = EapPacket.response(5, EapType.TLS, b"\x00" + bytes(range(256)) * 3).encode()  # 3 attributes
    client.access_request(AccessRequest(b"alice", eap, b"st-1", "198.51.100.7[4500]", "192.0.2.1[4500]"), 0.0)
    raw, addr = one_request(client)
    assert addr == ("192.0.2.10", 1812)
    req = server_view(raw)
    assert req.code == RadiusCode.ACCESS_REQUEST
    assert raw[20] == 80  # Message-Authenticator first (BlastRADIUS)
    assert req.verify_message_authenticator()
    chunks = req[79]
    assert [len(c) for c in chunks] == [253, 253, 253, len(eap) - 759] and b"".join(chunks) == eap
    assert req[24] == [b"st-1"]
    assert req["User-Name"] == ["alice"] and req["NAS-Identifier"] == ["gw1"]
    assert req["NAS-IP-Address"] == ["192.0.2.1"] and req["NAS-Port-Type"] == ["Virtual"]
    assert req["Calling-Station-Id"] == ["198.51.100.7[4500]"] and req["Called-Station-Id"] == ["192.0.2.1[4500]"]


def test_octets_that_look_like_hex_are_sent_verbatim() -> None:
    client = RadiusClient([S1])
    state = b"0x4142"  # pyrad's string conventions would turn this into b"AB"
    client.access_request(AccessRequest(b"a", b"\x02\x01\x00\x05\x01", state), 0.0)
    assert server_view(one_request(client)[0])[24] == [state]


def test_challenge_is_verified_and_decoded() -> None:
    client = RadiusClient([S1])
    h = client.access_request(AccessRequest(b"alice", b"\x02\x01\x00\x05\x01"), 0.0)
    raw, addr = one_request(client)
    req = server_view(raw)
    eap = EapPacket.request(2, EapType.MSCHAPV2, b"x" * 300).encode()
    good = reply(req, RadiusCode.ACCESS_CHALLENGE, _79=[eap[:253], eap[253:]], _24=b"state-2")
    # forged: wrong secret; unsigned: no Message-Authenticator; stray: unknown identifier
    forged_req = server_view(raw, b"wrong")
    client.receive_datagram(reply(forged_req, RadiusCode.ACCESS_CHALLENGE, _79=eap[:200]), addr, 0.1)
    client.receive_datagram(reply(req, RadiusCode.ACCESS_ACCEPT, ma=False), addr, 0.1)
    client.receive_datagram(good[:1] + bytes([good[1] ^ 1]) + good[2:], addr, 0.1)
    client.receive_datagram(good[:10], addr, 0.1)
    assert client.next_event() is None and client.counters.dropped == 4
    client.receive_datagram(good, addr, 0.2)
    event = client.next_event()
    assert isinstance(event, RadiusResult) and event.handle == h
    assert event.answer.kind == AnswerKind.CHALLENGE and event.answer.eap_message == eap
    assert event.answer.state == b"state-2" and event.answer.server == "192.0.2.10:1812"
    assert client.next_timer() is None and client.outstanding == 0


def test_accept_mppe_keys_give_the_msk_in_strongswan_order() -> None:
    client = RadiusClient([S1])
    client.access_request(AccessRequest(b"alice", b"\x02\x01\x00\x05\x01"), 0.0)
    raw, addr = one_request(client)
    req = server_view(raw)
    rep = req.CreateReply()
    rep.code = RadiusCode.ACCESS_ACCEPT
    rep.request_authenticator = req.authenticator  # pyrad's RFC 2868 salt encryption = RFC 2548's: the oracle
    recv_key, send_key = bytes(range(32)), bytes(range(100, 132))
    rep[(311, 17)] = [rep.SaltCrypt(recv_key)]
    rep[(311, 16)] = [rep.SaltCrypt(send_key)]
    rep[79] = [EapPacket.success(2).encode()]
    rep[25] = [b"class-A"]
    rep["Framed-IP-Address"] = "10.3.0.7"
    rep["Session-Timeout"] = 3600
    rep["Reply-Message"] = "hi\nthere"
    rep.add_message_authenticator()
    client.receive_datagram(rep.ReplyPacket(), addr, 0.1)
    event = client.next_event()
    assert event is not None
    ans = event.answer
    assert ans.kind == AnswerKind.ACCEPT and ans.msk == recv_key + send_key
    assert ans.framed_ip == "10.3.0.7" and ans.classes == (b"class-A",) and ans.session_timeout == 3600
    assert ans.reply_message == "hi\\x0athere"  # peer-supplied text is log-safe
    assert recv_key.hex() not in repr(ans)


def test_decrypt_mppe_key_rejects_bad_lengths_and_salts() -> None:
    pkt = rp.AuthPacket(secret=SECRET, dict=DICT)
    pkt.request_authenticator = b"R" * 16
    enc = pkt.SaltCrypt(b"k" * 16)
    assert decrypt_mppe_key(enc, SECRET, b"R" * 16) == b"k" * 16
    assert decrypt_mppe_key(enc[:-1], SECRET, b"R" * 16) is None
    assert decrypt_mppe_key(enc[:2], SECRET, b"R" * 16) is None
    assert decrypt_mppe_key(bytes([enc[0] & 0x7F]) + enc[1:], SECRET, b"R" * 16) is None
    assert decrypt_mppe_key(enc, b"wrong", b"R" * 16) != b"k" * 16


def test_retransmit_with_backoff_then_fail_over_and_come_back() -> None:
    settings = RadiusSettings(timeouts=(2.0, 4.0, 8.0), dead_time=60.0)
    client = RadiusClient([S1, S2], settings)
    client.access_request(AccessRequest(b"alice", b"\x02\x01\x00\x05\x01"), 0.0)
    first, addr = one_request(client)
    assert addr[0] == S1.host and client.next_timer() == 2.0
    client.handle_timer(2.0)
    assert client.datagrams_to_send() == [(first, addr)]  # same bytes: same id and authenticator
    assert client.next_timer() == 6.0
    client.handle_timer(6.0)
    assert client.datagrams_to_send() == [(first, addr)] and client.next_timer() == 14.0
    client.handle_timer(14.0)
    raw2, addr2 = one_request(client)
    assert addr2[0] == S2.host and client.counters.failovers == 1
    assert server_view(raw2, S2.secret).verify_message_authenticator()  # re-signed with server 2's secret
    client.receive_datagram(reply(server_view(raw2, S2.secret), RadiusCode.ACCESS_REJECT), addr2, 15.0)
    ev = client.next_event()
    assert ev is not None and ev.answer.kind == AnswerKind.REJECT and ev.answer.server.startswith(S2.host)
    # S1 is dead for 60 s: the next request goes straight to S2 ...
    client.access_request(AccessRequest(b"bob", b"\x02\x01\x00\x05\x01"), 20.0)
    assert one_request(client)[1][0] == S2.host
    # ... and after that S1 is the first choice again
    client.access_request(AccessRequest(b"carol", b"\x02\x01\x00\x05\x01"), 75.0)
    assert one_request(client)[1][0] == S1.host


def test_no_server_answers_gives_timeout() -> None:
    client = RadiusClient([S1, S2], RadiusSettings(timeouts=(1.0,), dead_time=30.0))
    h = client.access_request(AccessRequest(b"alice", b"\x02\x01\x00\x05\x01"), 0.0)
    now = 0.0
    while (t := client.next_timer()) is not None:
        now = t
        client.handle_timer(now)
    assert now == 2.0 and len(client.datagrams_to_send()) == 2
    ev = client.next_event()
    assert ev == RadiusResult(h, RadiusAnswer(AnswerKind.TIMEOUT)) and client.counters.timeouts == 1


def test_identifier_space_exhaustion_queues_requests() -> None:
    client = RadiusClient([S1])
    for i in range(257):
        client.access_request(AccessRequest(b"u%d" % i, b"\x02\x01\x00\x05\x01"), 0.0)
    sent = client.datagrams_to_send()
    assert len(sent) == 256 and client.outstanding == 257
    req = server_view(sent[0][0])
    client.receive_datagram(reply(req, RadiusCode.ACCESS_REJECT), sent[0][1], 0.5)
    late = client.datagrams_to_send()
    assert len(late) == 1 and late[0][0][1] == req.id  # the freed Identifier


def test_accounting_start_and_stop() -> None:
    client = RadiusClient([S1], RadiusSettings(nas_identifier="gw1"))
    start = AccountingRecord(AcctStatusType.START, "5a1b-1", b"alice", framed_ip="10.3.0.7", classes=(b"c1",),
                             calling_station_id="198.51.100.7[4500]")
    h = client.accounting_request(start, 0.0)
    raw, addr = one_request(client)
    assert addr == (S1.host, 1813)
    req = server_view(raw, acct=True)
    assert req.VerifyAcctRequest()
    assert req["Acct-Status-Type"] == [1] and req["Acct-Session-Id"] == ["5a1b-1"] and req[25] == [b"c1"]
    assert req["Framed-IP-Address"] == ["10.3.0.7"] and "Acct-Input-Octets" not in req
    ack = req.CreateReply()
    ack.code = RadiusCode.ACCOUNTING_RESPONSE
    client.receive_datagram(ack.ReplyPacket(), addr, 0.1)
    ev = client.next_event()
    assert ev is not None and ev.handle == h and ev.answer.kind == AnswerKind.ACCEPT
    stop = AccountingRecord(AcctStatusType.STOP, "5a1b-1", b"alice", input_octets=(5 << 32) + 7,
                            output_octets=1000, input_packets=9, output_packets=8, session_time=61,
                            terminate_cause=AcctTerminateCause.USER_REQUEST)
    client.accounting_request(stop, 1.0)
    req = server_view(one_request(client)[0], acct=True)
    assert req.VerifyAcctRequest()
    assert req["Acct-Input-Octets"] == [7] and req["Acct-Input-Gigawords"] == [5]
    assert req["Acct-Output-Octets"] == [1000] and req["Acct-Session-Time"] == [61]
    assert req["Acct-Terminate-Cause"] == [1] and req["Acct-Status-Type"] == [2]


# ------------------------------------------------------------ the relay, end to end in-process
class FakeEapRadiusServer:
    """A RADIUS server whose EAP side is our own MSCHAPv2 authenticator (a different code path: server role)."""

    def __init__(self, users: dict[bytes, str]) -> None:
        self.users = users
        self.eap: EapAuthenticator | None = None

    def answer(self, raw: bytes) -> bytes:
        req = server_view(raw)
        assert req.verify_message_authenticator()
        eap_in = b"".join(req[79])
        if self.eap is None:
            self.eap = EapAuthenticator([MethodOffer(EapType.MSCHAPV2, lambda i: mschapv2.MschapV2Authenticator(
                i, self.users.get, retry_delay=0.0, max_retries=0))], identity=EapPacket.decode(eap_in).data)
            step: Step = self.eap.start()
        else:
            step = self.eap.process(eap_in)
        if isinstance(step, Send):
            return reply(req, RadiusCode.ACCESS_CHALLENGE, _79=step.packet.encode(), _24=b"S")
        assert isinstance(step, Success | Failure) and step.final is not None
        if isinstance(step, Failure):
            return reply(req, RadiusCode.ACCESS_REJECT, _79=step.final.encode(), Reply_Message="bad login")
        rep = req.CreateReply()
        rep.code = RadiusCode.ACCESS_ACCEPT
        rep.request_authenticator = req.authenticator
        rep[(311, 17)] = [rep.SaltCrypt(step.msk[:16])]
        rep[(311, 16)] = [rep.SaltCrypt(step.msk[16:32])]
        rep[79] = [step.final.encode()]
        rep.add_message_authenticator()
        return rep.ReplyPacket()


def drive(users: dict[bytes, str], password: str, server_up: bool = True) -> tuple[Step, Step]:
    client = RadiusClient([S1], RadiusSettings(timeouts=(1.0,)))
    fake = FakeEapRadiusServer(users)
    gateway = EapAuthenticator([MethodOffer(EAP_RADIUS, lambda ident: EapRadiusRelay(ident))])
    peer = EapPeer(b"alice", [(EapType.MSCHAPV2, lambda ident: mschapv2.MschapV2Peer(ident, password))])
    now = 0.0

    def fulfil(pending: Pending) -> Step:
        nonlocal now
        assert isinstance(pending.request, AccessRequest)
        client.access_request(pending.request, now)
        while (ev := client.next_event()) is None:
            for raw, addr in client.datagrams_to_send():
                if server_up:
                    client.receive_datagram(fake.answer(raw), addr, now)
            if client.outstanding and not server_up:
                now = client.next_timer() or now
                client.handle_timer(now)
        return gateway.resume(ev.answer)

    step = gateway.start()
    for _ in range(20):
        if isinstance(step, Pending):
            step = fulfil(step)
            continue
        if isinstance(step, Send):
            answer = peer.process(step.packet.encode())
            assert isinstance(answer, Send)
            step = gateway.process(answer.packet.encode())
            continue
        break
    assert isinstance(step, Success | Failure) and step.final is not None
    return step, peer.process(step.final.encode())


def test_relay_round_trip_through_a_radius_server() -> None:
    gw, peer = drive({b"alice": "pw"}, "pw")
    assert isinstance(gw, Success) and isinstance(peer, Success)
    assert gw.msk == peer.msk[:32] and peer.msk[32:] == bytes(32)  # RADIUS carries 16+16 octets
    assert gw.method == EapType.MSCHAPV2 and gw.final is not None and gw.final.code == EapCode.SUCCESS
    assert isinstance(gw.extra, RadiusAnswer)


def test_relay_reject_and_unreachable() -> None:
    gw, peer = drive({b"alice": "pw"}, "nope")
    assert isinstance(gw, Failure) and gw.reason == FailureReason.REJECTED
    assert "rejected user alice: bad login" in gw.message
    assert isinstance(peer, Failure) and peer.reason == FailureReason.REJECTED  # plain EAP-Failure, no E=691
    gw, _ = drive({b"alice": "pw"}, "pw", server_up=False)
    assert isinstance(gw, Failure) and gw.reason == FailureReason.SERVER_UNREACHABLE


def test_relay_refuses_accept_without_keys_and_bad_eap() -> None:
    relay = EapRadiusRelay(b"alice")
    assert isinstance(relay.start(1), Pending)
    out = relay.resume(RadiusAnswer(AnswerKind.ACCEPT, EapPacket.success(1).encode(), server="s"))
    assert isinstance(out, Failure) and "without MS-MPPE keys" in out.message
    relay = EapRadiusRelay(b"alice")
    relay.start(1)
    out = relay.resume(RadiusAnswer(AnswerKind.CHALLENGE, b"\x01\x02", server="s"))
    assert isinstance(out, Failure) and out.reason == FailureReason.PROTOCOL_ERROR
    relay = EapRadiusRelay(b"alice")
    relay.start(1)
    out = relay.resume(RadiusAnswer(AnswerKind.CHALLENGE, EapPacket.success(1).encode(), server="s"))
    assert isinstance(out, Failure) and "without an EAP-Request" in out.message


@pytest.mark.parametrize("make", [lambda: RadiusClient([])])
def test_client_needs_a_server(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()
