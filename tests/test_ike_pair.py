"""Two engines negotiating in memory: the whole IKE_SA_INIT + IKE_AUTH flow and its failure modes."""

from __future__ import annotations

import pytest

from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.events import ChildSaDeleted, ChildSaEstablished, ChildSaFailed, IkeSaClosed, IkeSaEstablished
from ipsecd.ike.frontdoor import FrontDoorSettings
from ipsecd.ike.ike_sa import IkeState
from ipsecd.ike.message import decode_header, decode_message
from tests.ike_pair import A_ADDR, B_ADDR, make_pair, make_settings


def _children(events: list) -> list[ChildSaEstablished]:
    return [e for e in events if isinstance(e, ChildSaEstablished)]


def _assert_up(pair) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_a), pair.events_a
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_b), pair.events_b
    (ca,) = _children(pair.events_a)
    (cb,) = _children(pair.events_b)
    assert ca.spi_in == cb.spi_out and ca.spi_out == cb.spi_in
    assert ca.keys_out == cb.keys_in and ca.keys_in == cb.keys_out
    assert ca.proposal.transforms == cb.proposal.transforms
    assert ca.local_ts == cb.remote_ts and ca.remote_ts == cb.local_ts
    return ca, cb


@pytest.mark.parametrize("ike,esp", [
    ("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
    ("aes256-sha384-ecp384", "aes256-sha512"),
    ("aes128gcm16-prfsha512-x448", "aes128gcm16"),
])
def test_establish(ike: str, esp: str) -> None:
    sa = make_settings(ike=(ike,), esp=(esp,))
    sb = make_settings(local_id="b.test", remote_id="a.test", ike=(ike,), esp=(esp,), local_ts=("10.2.0.0/24",),
                       remote_ts=("10.1.0.0/24",), local_addrs=(B_ADDR,), remote_addrs=(A_ADDR,))
    pair = make_pair(sa, sb)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    ca, cb = _assert_up(pair)
    assert ca.mode == cb.mode == "tunnel"
    assert not ca.encap
    (ike_a,) = pair.a.list_sas()
    (ike_b,) = pair.b.list_sas()
    assert ike_a.state == ike_b.state == IkeState.ESTABLISHED
    assert ike_a.spi_i == ike_b.spi_i and ike_a.spi_r == ike_b.spi_r
    assert ike_a.keys == ike_b.keys
    assert str(ike_b.remote_identity) == "a.test" and str(ike_a.remote_identity) == "b.test"


@pytest.mark.parametrize("lost", [0, 1, 2, 3])
def test_loss_of_each_message_is_recovered_by_retransmission(lost: int) -> None:
    pair = make_pair(deliver=lambda i, d, tag: i != lost)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(60)
    _assert_up(pair)
    assert pair.a.list_sas()[0].counters.get("retransmits", 0) >= 1


def test_retransmission_gives_up() -> None:
    pair = make_pair(deliver=lambda i, d, tag: tag == "b->a")
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(200)
    closed = [e for e in pair.events_a if isinstance(e, IkeSaClosed)]
    assert closed and "did not answer" in closed[0].reason
    # tries=3: the original plus three retransmissions with exponential back-off
    assert len(pair.sent) == 4
    assert pair.a.list_sas() == []


def test_invalid_ke_payload_retry() -> None:
    sa = make_settings(ike=("aes256gcm16-prfsha256-x25519", "aes256gcm16-prfsha256-ecp256"))
    sb = make_settings(local_id="b.test", remote_id="a.test", ike=("aes256gcm16-prfsha256-ecp256",),
                       local_ts=("10.2.0.0/24",), remote_ts=("10.1.0.0/24",), local_addrs=(B_ADDR,),
                       remote_addrs=(A_ADDR,))
    pair = make_pair(sa, sb)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _assert_up(pair)
    second = decode_message(pair.sent[1][1])
    n = second.notify(NotifyType.INVALID_KE_PAYLOAD)
    assert n is not None and n.data == (19).to_bytes(2, "big")
    assert decode_header(pair.sent[2][1]).message_id == 0  # the retry keeps message ID 0
    assert pair.b.counters == {} or "internal_error" not in pair.b.counters


def test_no_proposal_chosen() -> None:
    sa = make_settings(ike=("aes128-sha256-modp2048",))
    pair = make_pair(sa)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    resp = decode_message(pair.sent[1][1])
    assert resp.notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None
    (closed,) = [e for e in pair.events_a if isinstance(e, IkeSaClosed)]
    assert "NO_PROPOSAL_CHOSEN" in closed.reason
    assert pair.a.list_sas() == [] and pair.b.list_sas() == []


def test_wrong_psk_authentication_failed() -> None:
    sa = make_settings(psk=b"one secret")
    pair = make_pair(sa)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert not _children(pair.events_a) and not _children(pair.events_b)
    (closed_b,) = [e for e in pair.events_b if isinstance(e, IkeSaClosed)]
    assert "AUTH payload does not match" in closed_b.reason
    (closed_a,) = [e for e in pair.events_a if isinstance(e, IkeSaClosed)]
    assert "AUTHENTICATION_FAILED" in closed_a.reason
    assert pair.a.list_sas() == [] and pair.b.list_sas() == []


def test_ts_narrowing() -> None:
    # A asks for 10.0.0.0/8 === 10.2.0.0/16; B only allows 10.1.0.0/24 === 10.2.0.0/24
    sa = make_settings(local_ts=("10.0.0.0/8",), remote_ts=("10.2.0.0/16",))
    pair = make_pair(sa)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    ca, _cb = _assert_up(pair)
    assert [str(t.start_addr) + "-" + str(t.end_addr) for t in ca.local_ts] == ["10.1.0.0-10.1.0.255"]
    assert [str(t.start_addr) + "-" + str(t.end_addr) for t in ca.remote_ts] == ["10.2.0.0-10.2.0.255"]


def test_ts_unacceptable_keeps_ike_sa() -> None:
    sa = make_settings(local_ts=("10.7.0.0/24",))
    pair = make_pair(sa)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_a)
    failed = [e for e in pair.events_a if isinstance(e, ChildSaFailed)]
    assert failed and "TS_UNACCEPTABLE" in failed[0].reason
    assert not _children(pair.events_a)


def test_esp_no_proposal_chosen_keeps_ike_sa() -> None:
    sa = make_settings(esp=("aes128-sha256",))
    pair = make_pair(sa)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_b)
    failed = [e for e in pair.events_b if isinstance(e, ChildSaFailed)]
    assert failed and "no ESP proposal matched" in failed[0].reason


def test_transport_mode() -> None:
    sa = make_settings(mode="transport", local_ts=("dynamic",), remote_ts=("dynamic",))
    sb = make_settings(local_id="b.test", remote_id="a.test", mode="transport", local_ts=("dynamic",),
                       remote_ts=("dynamic",), local_addrs=(B_ADDR,), remote_addrs=(A_ADDR,))
    pair = make_pair(sa, sb)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    ca, cb = _assert_up(pair)
    assert ca.mode == cb.mode == "transport"
    assert str(ca.local_ts[0].start_addr) == A_ADDR and str(ca.remote_ts[0].start_addr) == B_ADDR


def test_forced_encap_moves_to_4500() -> None:
    sa = make_settings(force_encap=True)
    pair = make_pair(sa)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    ca, cb = _assert_up(pair)
    assert ca.encap and cb.encap
    assert ca.remote[1] == 4500 and cb.remote[1] == 4500


def test_delete_ike_sa_both_sides() -> None:
    pair = make_pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _assert_up(pair)
    assert pair.a.terminate("conn", pair.now) == 1
    pair.run_until_quiet()
    assert pair.a.list_sas() == [] and pair.b.list_sas() == []
    assert any(isinstance(e, ChildSaDeleted) for e in pair.events_b)
    assert any(isinstance(e, IkeSaClosed) and "deleted by peer" in e.reason for e in pair.events_b)
    exchanges = [decode_header(d).exchange for _, d in pair.sent]
    assert exchanges[-2:] == [ExchangeType.INFORMATIONAL, ExchangeType.INFORMATIONAL]


def test_cookie_demanded_when_under_load() -> None:
    pair = make_pair()
    pair.b.front.configure(FrontDoorSettings(cookie_threshold=0))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _assert_up(pair)
    first_resp = decode_message(pair.sent[1][1])
    assert first_resp.notify(NotifyType.COOKIE) is not None
    retry = decode_message(pair.sent[2][1])
    assert retry.payloads[0].notify_type == NotifyType.COOKIE  # RFC 7296 2.6: COOKIE first


def test_responder_answers_retransmitted_request_from_cache() -> None:
    pair = make_pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _assert_up(pair)
    tag, auth_req = pair.sent[2]
    assert tag == "a->b"
    pair.b.receive_datagram(auth_req, (B_ADDR, 500), (A_ADDR, 500), pair.now)
    out = pair.b.datagrams_to_send()
    assert len(out) == 1 and out[0][0] == pair.sent[3][1]
    assert _children(pair.events_b) and len(pair.b.list_sas()[0].children) == 1
