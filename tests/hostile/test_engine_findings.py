"""Findings of issue 13 in the IKE engine, as deterministic in-memory tests (a fake clock).

They were ``xfail(strict=True)`` until the engine was fixed; now they pin the fixes. The
namespace versions with a real lossy path are in test_lossy_netns.py.
"""

from __future__ import annotations

from dataclasses import replace

from ipsecd.ike.events import Cause, IkeSaClosed, IkeSaRekeyed
from ipsecd.ike.message import decode_header
from tests.ike_pair import Pair, make_pair, make_settings

REKEY, OVER, CHILD_REKEY = 25.0, 2.5, 24.0  # issue 13: rekey_time 25s, default over_time (10 %)
LOST = 4  # after IKE_SA_INIT and IKE_AUTH (datagrams 0-3): A's Child SA rekey request


def _issue_pair() -> Pair:
    """rand_time 0 pins the timers: Child SA rekey at 24 s, IKE SA rekey at 25 s, hard lifetime 27.5 s."""
    base = make_settings(tries=5)
    child = replace(base.children[0], rekey_time=CHILD_REKEY, rand_time=0.0, life_time=60.0)
    a = replace(base, rekey_time=REKEY, over_time=OVER, rand_time=0.0, children=(child,),
                retransmit=replace(base.retransmit, timeout=4.0, base=1.8))
    pair = make_pair(a, deliver=lambda i, d, tag: i != LOST, seed=3)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(5)
    return pair


def test_ike_sa_rekey_queued_behind_a_retransmission_beats_the_hard_lifetime() -> None:
    pair = _issue_pair()
    pair.advance(40)
    assert pair.sent[LOST][0] == "a->b" and decode_header(pair.sent[LOST][1]).message_id == 2
    closed = [e for e in pair.events_a if isinstance(e, IkeSaClosed) and e.replaced_by is None]
    assert closed == [], closed
    assert any(isinstance(e, IkeSaRekeyed) for e in pair.events_a)


def _window_respected(pair: Pair) -> None:
    """A requests only within the message-ID window of 1 (RFC 7296 2.3): n+1 after n was answered."""
    answered: dict[bytes, int] = {}
    for i, (tag, data) in enumerate(pair.sent):
        h = decode_header(data)
        key = h.spi_i + h.spi_r
        if tag == "b->a" and h.is_response:
            answered[key] = max(answered.get(key, -1), h.message_id)
        elif tag == "a->b" and not h.is_response and h.message_id > 0:
            assert h.message_id <= answered.get(key, -1) + 1, f"datagram {i}: request {h.message_id} too early"


def test_no_request_is_sent_beyond_the_message_id_window() -> None:
    pair = _issue_pair()
    pair.advance(60)
    _window_respected(pair)


def test_a_delete_waits_for_the_request_in_flight() -> None:
    """A terminate while a request is unanswered: the Delete waits for the window (RFC 7296 2.3),
    the abandoned request is retransmitted, and both peers end up without the SA."""
    pair = _issue_pair()
    pair.a.rekey_child(next(iter(pair.a.list_sas()[0].children)).spi_in, pair.now)  # datagram 4: lost
    assert pair.a.terminate("conn", pair.now) == 1
    pair.advance(30)
    _window_respected(pair)
    assert pair.a.list_sas() == [] and pair.b.list_sas() == []


def test_a_delete_behind_an_unanswered_request_gives_up_like_a_delete() -> None:
    """The peer is gone: the SA closes DELETE_TIMEOUT (10 s) after the terminate, with its cause,
    not after the whole retransmission budget of the request in flight."""
    pair = _issue_pair()
    pair.deliver = lambda i, d, tag: False
    pair.a.rekey_child(next(iter(pair.a.list_sas()[0].children)).spi_in, pair.now)
    pair.a.terminate("conn", pair.now)
    pair.advance(9)
    assert pair.a.list_sas()
    pair.advance(2)
    (closed,) = [e for e in pair.events_a if isinstance(e, IkeSaClosed)]
    assert closed.cause is Cause.DELETED_LOCALLY and "before our Delete" in closed.reason, closed


def test_a_dead_peer_still_ends_an_sa_past_its_hard_lifetime() -> None:
    """The hard lifetime waits for a rekey under way; the retransmission budget still ends it."""
    pair = _issue_pair()
    pair.deliver = lambda i, d, tag: False  # B is gone
    pair.advance(200)
    closed = [e for e in pair.events_a if isinstance(e, IkeSaClosed)]
    assert closed and pair.a.list_sas() == []


# ------------------------------------------------------------------ the front door
BLOCK_THRESHOLD = 5  # strongSwan's charon.block_threshold default; ipsecd's is 50 (laptops behind one NAT)


def test_one_source_answering_cookies_is_limited_to_a_few_half_open_sas() -> None:
    import os

    from ipsecd.ike.frontdoor import FrontDoorSettings
    from tests.flood import build_init, public_values, stamp
    from tests.ike_pair import A_ADDR, B_ADDR, make_settings_b

    responder = make_pair(sb=make_settings_b(remote_id="%any", remote_addrs=("%any",))).b
    responder.front.configure(FrontDoorSettings(block_threshold=BLOCK_THRESHOLD))
    attacker = (A_ADDR, 500)
    template, pool = build_init(), public_values(4)
    for i in range(300):
        spi, nonce = os.urandom(8), os.urandom(32)
        request = bytes(stamp(template, spi, pool[i % 4], nonce))
        responder.receive_datagram(request, (B_ADDR, 500), attacker, 1000.0 + i * 0.001)
        for answer, _, _, _ in responder.datagrams_to_send():
            cookie = _cookie(answer)
            if cookie is not None:  # do what a real client does (RFC 7296 2.6)
                again = bytes(stamp(build_init(cookie=cookie), spi, pool[i % 4], nonce))
                responder.receive_datagram(again, (B_ADDR, 500), attacker, 1000.0 + i * 0.001)
                responder.datagrams_to_send()
    half_open = [sa for sa in responder.list_sas() if sa.remote[0] == A_ADDR]
    assert len(half_open) <= BLOCK_THRESHOLD, f"{len(half_open)} half-open IKE SAs from one address"


def _cookie(answer: bytes) -> bytes | None:
    from tests.flood import _cookie_of

    return _cookie_of(answer)
