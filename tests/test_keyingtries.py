"""keyingtries (ipsecd/ike/keying.py) with two engines and a fake clock: attempts, waits, outcomes.

The "network" between the engines is a switch the test flips; every IKE_SA_INIT request A
sends is noted with the time it left (its SPIi names the attempt). Retransmissions here:
1 s, 2 s, 4 s, so an attempt the peer never answers is given up 7 s after it began.
"""

from __future__ import annotations

import dataclasses
import itertools

from ipsecd.iana import ExchangeType
from ipsecd.ike.events import Cause, ChildSaEstablished, IkeSaClosed, IkeSaEstablished, InitiationFailed
from ipsecd.ike.keying import AFTER, RETRY_CAP, Next, retry_delay
from ipsecd.ike.message import decode_header
from tests.ike_pair import Pair, make_pair, make_settings, make_settings_b

ATTEMPT = 7.0  # 1 + 2 + 4 s of retransmissions (tries=2, timeout 1, base 2)


class Net:
    """The link A -> B and back: up or down; records when each attempt's IKE_SA_INIT first left A."""

    def __init__(self, up: bool = False) -> None:
        self.up = up
        self.pair: Pair | None = None
        self.inits: dict[bytes, float] = {}  # SPIi -> time of its first IKE_SA_INIT request
        self.drop_auth_of: set[bytes] = set()  # attempts whose IKE_AUTH requests are lost

    def __call__(self, i: int, data: bytes, tag: str) -> bool:
        hdr = decode_header(data)
        assert self.pair is not None
        if tag == "a->b" and not hdr.is_response:
            if hdr.exchange == ExchangeType.IKE_SA_INIT:
                self.inits.setdefault(hdr.spi_i, self.pair.now)
            if hdr.exchange == ExchangeType.IKE_AUTH and hdr.spi_i in self.drop_auth_of:
                return False
        return self.up

    def starts(self) -> list[float]:
        return sorted(self.inits.values())


def _pair(keyingtries: int, net: Net, **b: object) -> Pair:
    a = dataclasses.replace(make_settings(tries=2), keyingtries=keyingtries)
    pair = make_pair(a, make_settings_b(tries=2, **b), seed=7, deliver=net)
    net.pair = pair
    return pair


def _failed(p: Pair) -> list[InitiationFailed]:
    return [e for e in p.events_a if isinstance(e, InitiationFailed)]


def test_every_cause_has_a_rule_and_only_silence_is_retried() -> None:
    assert set(AFTER) == set(Cause)
    assert {c for c, n in AFTER.items() if n is Next.RETRY} == {Cause.TIMEOUT}
    assert AFTER[Cause.AUTH_FAILED] is Next.FAIL and AFTER[Cause.NO_PROPOSAL] is Next.FAIL
    assert AFTER[Cause.DELETED_LOCALLY] is Next.DONE


def test_the_wait_doubles_up_to_the_cap_with_at_most_half_more_at_random() -> None:
    assert [retry_delay(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert retry_delay(1, 0.999) < 3.0 and retry_delay(3, 0.5) == 10.0
    assert retry_delay(10_000, 0.999) < RETRY_CAP * 1.5


def test_three_attempts_then_initiation_failed() -> None:
    net = Net(up=False)
    p = _pair(3, net)
    p.a.initiate("conn", p.now)
    p.run_until_quiet(600)

    starts = net.starts()
    assert len(starts) == 3, starts  # three IKE SAs, each with its own SPI
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert ATTEMPT + 2 <= gaps[0] < ATTEMPT + 3, gaps  # 2 s (+ up to 50 %) after the first gave up
    assert ATTEMPT + 4 <= gaps[1] < ATTEMPT + 6, gaps
    closed = [e for e in p.events_a if isinstance(e, IkeSaClosed)]
    assert [e.cause for e in closed] == [Cause.TIMEOUT] * 3
    (failed,) = _failed(p)
    assert (failed.name, failed.child, failed.attempts, failed.cause) == ("conn", None, 3, Cause.TIMEOUT)
    assert failed.ike_sa_id == closed[-1].ike_sa_id
    assert p.events_a[-1] == failed  # after the last attempt's IkeSaClosed
    assert p.a.counters["keying_retries"] == 2 and p.a.counters["initiations_failed"] == 1
    assert p.a.get_timer() is None and not p.a.sas  # nothing left to do: no fourth attempt, ever


def test_keyingtries_1_is_one_attempt() -> None:
    net = Net(up=False)
    p = _pair(1, net)
    p.a.initiate("conn", p.now)
    p.run_until_quiet(600)
    assert len(net.inits) == 1
    assert [f.attempts for f in _failed(p)] == [1]
    assert "keying_retries" not in p.a.counters


def test_keyingtries_0_tries_until_the_peer_answers() -> None:
    net = Net(up=False)
    p = _pair(0, net)
    p.a.initiate("conn", p.now)
    p.advance(1200)
    starts = net.starts()
    assert len(starts) >= 12, starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert max(gaps) < ATTEMPT + RETRY_CAP * 1.5 + 0.01, gaps  # the wait stops growing at the cap
    assert max(gaps) >= ATTEMPT + RETRY_CAP, gaps
    assert _failed(p) == [] and not any(isinstance(e, IkeSaEstablished) for e in p.events_a)

    net.up = True  # the head end is back: the next attempt (or the retransmission under way) gets through
    p.run_until_quiet(ATTEMPT + RETRY_CAP * 1.5 + 5)
    assert any(isinstance(e, IkeSaEstablished) for e in p.events_a)
    assert any(isinstance(e, ChildSaEstablished) for e in p.events_a)
    assert any(isinstance(e, ChildSaEstablished) for e in p.events_b)
    assert _failed(p) == [] and not p.a.keying.waiting and not p.a.keying.live


def test_a_success_ends_the_initiation_and_the_next_one_counts_from_1() -> None:
    net = Net(up=False)
    p = _pair(2, net)
    p.a.initiate("conn", p.now)
    p.run_until_quiet(ATTEMPT + 1)  # the first attempt gave up; the second waits
    assert len(net.inits) == 1 and len(p.a.keying.waiting) == 1
    net.up = True
    p.run_until_quiet(30)
    (up,) = [e for e in p.events_a if isinstance(e, IkeSaEstablished)]
    assert len(net.inits) == 2 and _failed(p) == []

    # the tunnel is lost later (as after DPD) and a new initiation starts while the peer is away
    p.a.delete_ike(up.ike_sa_id, p.now, silent=True)
    net.up = False
    before = len(net.inits)
    p.a.initiate("conn", p.now)
    p.run_until_quiet(600)
    assert len(net.inits) - before == 2  # two attempts again, not one (the count did not carry over)
    assert [f.attempts for f in _failed(p)] == [2]


def test_authentication_failed_is_not_retried() -> None:
    net = Net(up=True)
    p = _pair(3, net, psk=b"not the same secret at all")
    p.a.initiate("conn", p.now)
    p.run_until_quiet(600)
    assert len(net.inits) == 1  # strongSwan: only a peer that does not answer is asked again
    (failed,) = _failed(p)
    assert (failed.attempts, failed.cause) == (1, Cause.AUTH_FAILED)
    assert not p.a.keying.waiting and "keying_retries" not in p.a.counters


def test_no_answer_to_ike_auth_is_retried_with_a_new_ike_sa() -> None:
    net = Net(up=True)
    p = _pair(2, net)
    first = p.a.initiate("conn", p.now)
    net.drop_auth_of.add(first.spi_i)
    p.run_until_quiet(60)
    assert len(net.inits) == 2
    closed = [e for e in p.events_a if isinstance(e, IkeSaClosed)]
    assert [(e.ike_sa_id, e.cause) for e in closed] == [(first.ike_sa_id, Cause.TIMEOUT)]
    (up,) = [e for e in p.events_a if isinstance(e, IkeSaEstablished)]
    assert up.ike_sa_id != first.ike_sa_id and _failed(p) == []


def test_down_drops_the_waiting_retry() -> None:
    net = Net(up=False)
    p = _pair(0, net)
    p.a.initiate("conn", p.now)
    p.run_until_quiet(ATTEMPT + 1)
    assert p.a.keying.waiting
    p.a.terminate("conn", p.now)
    assert not p.a.keying.waiting and p.a.get_timer() is None
    p.advance(300)
    assert len(net.inits) == 1 and _failed(p) == []


def test_acquire_while_a_retry_waits_is_ignored_and_the_retry_keeps_the_trigger_child() -> None:
    net = Net(up=False)
    p = _pair(0, net)
    reqid = p.a.assign_reqid("conn", "net")
    assert p.a.acquire(reqid, p.now) is not None
    p.run_until_quiet(ATTEMPT + 1)
    assert [a.child for _, _, a in p.a.keying.waiting] == ["net"]
    assert p.a.acquire(reqid, p.now) is None  # more packets for the trap: the retry will bring it
    assert p.a.counters["acquires_ignored"] == 1 and len(net.inits) == 1
    net.up = True
    p.run_until_quiet(30)
    kids = [e for e in p.events_a if isinstance(e, ChildSaEstablished)]
    assert [k.reqid for k in kids] == [reqid] and len(net.inits) == 2


def test_a_retry_for_a_connection_gone_by_a_reload_is_dropped() -> None:
    net = Net(up=False)
    p = _pair(0, net)
    p.a.initiate("conn", p.now)
    p.run_until_quiet(ATTEMPT + 1)
    p.a.update_connections([])
    p.advance(120)
    assert len(net.inits) == 1 and not p.a.keying.waiting and not p.a.sas
