"""SA lifecycle in two in-process engines: CREATE_CHILD_SA, Child and IKE SA rekeying,
lifetimes, collisions (RFC 7296 2.8.1, 2.25), DPD, INITIAL_CONTACT, simultaneous
initiation. Fake time only: the pair harness jumps the clock to the next timer."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from ipaddress import ip_network

import pytest

from ipsecd.iana import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.events import (
    Cause,
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import decode_header, decode_message
from ipsecd.ike.payloads import KePayload, SaPayload
from ipsecd.ike.proposal import parse_proposals
from ipsecd.ike.settings import ChildSettings, IkeSettings, TsSpec
from ipsecd.shell.views import sa_info
from tests.ike_pair import Pair, make_pair, make_settings, make_settings_b


# --------------------------------------------------------------------------- helpers
def _second_child(s: IkeSettings, local: str, remote: str, esp: Sequence[str]) -> IkeSettings:
    extra = ChildSettings("net2", (TsSpec(ip_network(local)),), (TsSpec(ip_network(remote)),),
                          tuple(parse_proposals(list(esp), ProtocolId.ESP)))
    return dataclasses.replace(s, children=(*s.children, extra))


def _with_child(s: IkeSettings, **kw: object) -> IkeSettings:
    return dataclasses.replace(s, children=tuple(dataclasses.replace(c, **kw) for c in s.children))


def _settings(esp: Sequence[str] = ("aes256gcm16",), esp_b: Sequence[str] | None = None, *,
              child: dict[str, object] | None = None, **ike: object) -> tuple[IkeSettings, IkeSettings]:
    sa = dataclasses.replace(make_settings(esp=esp), **ike)  # type: ignore[arg-type]
    sb = dataclasses.replace(make_settings_b(esp=esp_b or esp), **ike)  # type: ignore[arg-type]
    if child:
        sa, sb = _with_child(sa, **child), _with_child(sb, **child)
    return sa, sb


def _up(pair: Pair) -> tuple[IkeSa, IkeSa]:
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(30)
    return _consistent(pair)


def _only(mgr: IkeManager) -> IkeSa:
    sas = [s for s in mgr.list_sas() if s.state == IkeState.ESTABLISHED]
    assert len(sas) == 1, [(s.ike_sa_id, s.state) for s in mgr.list_sas()]
    return sas[0]


def _live(events: list[Event]) -> set[bytes]:
    """The inbound SPIs a daemon following the events would have installed now."""
    live: set[bytes] = set()
    for e in events:
        if isinstance(e, ChildSaEstablished):
            assert e.spi_in not in live
            live.add(e.spi_in)
        elif isinstance(e, ChildSaDeleted):
            assert e.spi_in in live, "deleted a Child SA that was never announced"
            live.discard(e.spi_in)
    return live


def _consistent(pair: Pair) -> tuple[IkeSa, IkeSa]:
    """One IKE SA per side, the same one, and Child SAs that pair up with matching keys."""
    ia, ib = _only(pair.a), _only(pair.b)
    assert pair.a.list_sas() == [ia] and pair.b.list_sas() == [ib]
    assert (ia.spi_i, ia.spi_r) == (ib.spi_i, ib.spi_r)
    assert ia.keys == ib.keys
    by_out = {c.spi_out: c for c in ib.children}
    assert len(ia.children) == len(ib.children)
    for c in ia.children:
        peer = by_out[c.spi_in]
        assert peer.spi_in == c.spi_out
        assert c.event.keys_out == peer.event.keys_in and c.event.keys_in == peer.event.keys_out
        assert c.event.ike_sa_id == ia.ike_sa_id and peer.event.ike_sa_id == ib.ike_sa_id
    assert _live(pair.events_a) == {c.spi_in for c in ia.children}
    assert _live(pair.events_b) == {c.spi_in for c in ib.children}
    return ia, ib


def _exchanges(pair: Pair, start: int = 0) -> list[tuple[str, ExchangeType, bool]]:
    out = []
    for tag, data in pair.sent[start:]:
        h = decode_header(data)
        out.append((tag, ExchangeType(h.exchange), h.is_response))
    return out


def _events(events: list[Event], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


# ------------------------------------------------------------- CREATE_CHILD_SA
@pytest.mark.parametrize("esp", [("aes256gcm16",), ("aes256gcm16-ecp256",), ("aes128-sha256-modp2048",)])
def test_additional_child_via_create_child_sa(esp: tuple[str, ...]) -> None:
    sa, sb = _settings(esp)
    sa = _second_child(sa, "10.1.1.0/24", "10.2.1.0/24", esp)
    sb = _second_child(sb, "10.2.1.0/24", "10.1.1.0/24", esp)
    pair = make_pair(sa, sb)
    ia, ib = _up(pair)
    assert sorted(c.event.child for c in ia.children) == ["net", "net2"]
    assert len({c.event.reqid for c in ia.children}) == 2
    ccsa = [d for tag, d in pair.sent if decode_header(d).exchange == ExchangeType.CREATE_CHILD_SA]
    assert len(ccsa) == 2
    req = decode_message(ccsa[0], ib.sk_in)  # A's request, opened with B's inbound keys
    pfs = "-ecp256" in esp[0] or "modp" in esp[0]
    assert (req.get(KePayload) is not None) == pfs
    ke_transforms = [t for p in req.get(SaPayload).proposals for t in p.transforms  # type: ignore[union-attr]
                     if t.type == 4]
    assert bool(ke_transforms) == pfs
    (net2,) = [c for c in ia.children if c.event.child == "net2"]
    assert [str(t.start_addr) for t in net2.event.local_ts] == ["10.1.1.0"]


def test_create_child_sa_responder_refuses_unknown_ts() -> None:
    sa, sb = _settings()
    sa = _second_child(sa, "10.1.9.0/24", "10.2.9.0/24", ("aes256gcm16",))
    pair = make_pair(sa, sb)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(30)
    ia, _ib = _consistent(pair)
    assert [c.event.child for c in ia.children] == ["net"]
    assert any("TS_UNACCEPTABLE" in getattr(e, "reason", "") for e in pair.events_a)


def test_child_pfs_invalid_ke_payload_retry() -> None:
    sa, sb = _settings(("aes256gcm16-x25519-ecp256",), ("aes256gcm16-ecp256",))
    pair = make_pair(sa, sb)
    ia, _ = _up(pair)
    start = len(pair.sent)
    pair.a.rekey_child(ia.children[0].spi_in, pair.now)
    pair.run_until_quiet(30)
    ia, _ib = _consistent(pair)
    first_resp = decode_message(pair.sent[start + 1][1], ia.sk_in)
    n = first_resp.notify(NotifyType.INVALID_KE_PAYLOAD)
    assert n is not None and n.data == (19).to_bytes(2, "big")
    kinds = _exchanges(pair, start)
    assert [k[1] for k in kinds[:4]] == [ExchangeType.CREATE_CHILD_SA] * 4
    assert decode_header(pair.sent[start + 2][1]).message_id == decode_header(pair.sent[start][1]).message_id + 1
    assert ia.children[0].event.rekeyed_spi_in is not None


# ------------------------------------------------------------------ child rekey
def _rekey_child(pair: Pair, mgr: IkeManager, ike: IkeSa, spi_in: bytes) -> None:
    assert mgr.owner_of(spi_in) is ike
    assert mgr.rekey_child(spi_in, pair.now)


@pytest.mark.parametrize("by", ["a", "b"])
@pytest.mark.parametrize("esp", ["aes256gcm16", "aes256gcm16-ecp256"])
def test_child_rekey(by: str, esp: str) -> None:
    pair = make_pair(*_settings((esp,)))
    ia, ib = _up(pair)
    old_a, old_b = ia.children[0].event, ib.children[0].event
    n_a, n_b = len(pair.events_a), len(pair.events_b)
    mgr, ike, old = (pair.a, ia, old_a) if by == "a" else (pair.b, ib, old_b)
    _rekey_child(pair, mgr, ike, old.spi_in)
    pair.run_until_quiet(30)
    ia, ib = _consistent(pair)
    new_a, new_b = ia.children[0].event, ib.children[0].event
    assert {new_a.spi_in, new_a.spi_out}.isdisjoint({old_a.spi_in, old_a.spi_out})
    assert new_a.keys != old_a.keys
    assert new_a.reqid == old_a.reqid and new_b.reqid == old_b.reqid
    assert new_a.rekeyed_spi_in == old_a.spi_in and new_b.rekeyed_spi_in == old_b.spi_in
    for events, old_ev, _new_ev in ((pair.events_a[n_a:], old_a, new_a), (pair.events_b[n_b:], old_b, new_b)):
        est = [i for i, e in enumerate(events) if isinstance(e, ChildSaEstablished)]
        dele = [i for i, e in enumerate(events) if isinstance(e, ChildSaDeleted)]
        assert len(est) == 1 and len(dele) == 1 and est[0] < dele[0], events  # make before break
        gone = events[dele[0]]
        assert gone.spi_in == old_ev.spi_in and gone.reqid_in_use
    kinds = [(k[1], k[2]) for k in _exchanges(pair)[-4:]]
    assert kinds == [(ExchangeType.CREATE_CHILD_SA, False), (ExchangeType.CREATE_CHILD_SA, True),
                     (ExchangeType.INFORMATIONAL, False), (ExchangeType.INFORMATIONAL, True)]


def test_rekey_responder_emits_new_sa_before_its_response_leaves() -> None:
    """The ordering contract: the events of a receive call include the new inbound SA."""
    pair = make_pair()
    ia, ib = _up(pair)
    pair.a.rekey_child(ia.children[0].spi_in, pair.now)
    ((req, local, remote, _),) = pair.a.datagrams_to_send()
    pair.b.receive_datagram(req, remote, local, pair.now)
    ev = pair.b.next_event()
    assert isinstance(ev, ChildSaEstablished) and ev.rekeyed_spi_in == ib.children[0].spi_in
    assert len(pair.b.datagrams_to_send()) == 1


@pytest.mark.parametrize("lost", [0, 1, 2, 3])
def test_child_rekey_message_loss_recovered(lost: int) -> None:
    pair = make_pair()
    ia, _ = _up(pair)
    start = len(pair.sent)
    pair.deliver = lambda i, d, tag: i != start + lost
    _rekey_child(pair, pair.a, ia, ia.children[0].spi_in)
    pair.run_until_quiet(60)
    ia, _ib = _consistent(pair)
    assert len(ia.children) == 1 and ia.children[0].event.rekeyed_spi_in is not None
    assert ia.counters.get("retransmits", 0) >= 1


@pytest.mark.parametrize("seed", range(6))
def test_simultaneous_child_rekey_requests_cross(seed: int) -> None:
    """RFC 7296 2.8.1: both rekey the same SA at once; one redundant SA, removed by its creator."""
    pair = make_pair(seed=seed)
    ia, ib = _up(pair)
    old_a = ia.children[0].spi_in
    pair.a.rekey_child(old_a, pair.now)
    pair.b.rekey_child(ib.children[0].spi_in, pair.now)
    pair.run_until_quiet(60)
    ia, ib = _consistent(pair)
    assert len(ia.children) == 1
    assert ia.children[0].spi_in != old_a
    # three SAs existed on each side over time: old, ours, theirs; two were deleted
    assert len(_events(pair.events_a, ChildSaEstablished)) == 3
    assert len(_events(pair.events_a, ChildSaDeleted)) == 2


@pytest.mark.parametrize("late", ["a", "b"])
def test_child_rekey_collision_one_request_late(late: str) -> None:
    """One side's rekey request is lost, so the other side's exchange completes first; the late
    request is retransmitted and answered TEMPORARY_FAILURE: no duplicates remain."""
    pair = make_pair()
    ia, ib = _up(pair)
    start = len(pair.sent)
    tag = "a->b" if late == "a" else "b->a"
    pair.deliver = lambda i, d, t: not (i < start + 2 and t == tag)
    pair.a.rekey_child(ia.children[0].spi_in, pair.now)
    pair.b.rekey_child(ib.children[0].spi_in, pair.now)
    pair.run_until_quiet(60)
    ia, ib = _consistent(pair)
    assert len(ia.children) == 1
    assert ia.children[0].event.rekeyed_spi_in is not None


def test_delete_crossing_rekey() -> None:
    pair = make_pair()
    ia, ib = _up(pair)
    pair.a.delete_child(ia.children[0].spi_in, pair.now)
    pair.b.rekey_child(ib.children[0].spi_in, pair.now)
    pair.run_until_quiet(60)
    ia, ib = _consistent(pair)
    assert not ia.children and not ib.children
    resp = [decode_message(d, ib.sk_in) for t, d in pair.sent
            if t == "a->b" and decode_header(d).exchange == ExchangeType.CREATE_CHILD_SA]
    assert resp and resp[0].notify(NotifyType.TEMPORARY_FAILURE) is not None


def test_delete_completes_before_late_rekey() -> None:
    """The rekey request arrives after the delete finished: CHILD_SA_NOT_FOUND, nothing recreated."""
    pair = make_pair()
    ia, ib = _up(pair)
    start = len(pair.sent)
    pair.deliver = lambda i, d, t: not (t == "b->a" and i < start + 2)
    pair.a.delete_child(ia.children[0].spi_in, pair.now)
    pair.b.rekey_child(ib.children[0].spi_in, pair.now)
    pair.run_until_quiet(60)
    ia, ib = _consistent(pair)
    assert not ia.children and not ib.children


def test_child_sa_not_found_recreates_child() -> None:
    pair = make_pair()
    ia, ib = _up(pair)
    ib.children.take_all()  # B lost the Child SA without telling A
    _rekey_child(pair, pair.a, ia, ia.children[0].spi_in)
    pair.run_until_quiet(30)
    ia, ib = _only(pair.a), _only(pair.b)
    assert len(ia.children) == 1 and len(ib.children) == 1
    assert ia.children[0].spi_out == ib.children[0].spi_in
    assert ia.children[0].event.rekeyed_spi_in is None  # created from scratch
    assert any(isinstance(e, ChildSaDeleted) and "CHILD_SA_NOT_FOUND" in e.reason for e in pair.events_a)


# ------------------------------------------------------------------- IKE rekey
@pytest.mark.parametrize("by", ["a", "b"])
def test_ike_rekey_moves_children(by: str) -> None:
    sa, sb = _settings()
    sa = _second_child(sa, "10.1.1.0/24", "10.2.1.0/24", ("aes256gcm16",))
    sb = _second_child(sb, "10.2.1.0/24", "10.1.1.0/24", ("aes256gcm16",))
    pair = make_pair(sa, sb)
    ia, ib = _up(pair)
    kids_a = sorted(c.spi_in for c in ia.children)
    old_ids = (ia.ike_sa_id, ib.ike_sa_id)
    ike = ia if by == "a" else ib
    (pair.a if by == "a" else pair.b).rekey_ike(ike.ike_sa_id, pair.now)
    pair.run_until_quiet(30)
    na, nb = _consistent(pair)
    assert (na.ike_sa_id, nb.ike_sa_id) != old_ids
    assert (na.spi_i, na.spi_r) != (ia.spi_i, ia.spi_r)
    assert na.keys != ia.keys
    assert sorted(c.spi_in for c in na.children) == kids_a
    assert na.initiator == (by == "a") and nb.initiator == (by == "b")
    for events, old in ((pair.events_a, ia), (pair.events_b, ib)):
        (rk,) = _events(events, IkeSaRekeyed)
        assert rk.ike_sa_id == old.ike_sa_id and len(rk.child_spis_in) == 2
        (closed,) = _events(events, IkeSaClosed)
        assert closed.ike_sa_id == old.ike_sa_id and closed.replaced_by == rk.new_ike_sa_id
        assert not _events(events, ChildSaDeleted)
    # the new IKE SA carries on: a child rekey and then terminate by name
    _rekey_child(pair, pair.a, na, na.children[0].spi_in)
    pair.run_until_quiet(30)
    _consistent(pair)
    assert pair.a.terminate("conn", pair.now) == 1
    pair.run_until_quiet(30)
    assert pair.a.list_sas() == [] and pair.b.list_sas() == []


@pytest.mark.parametrize("lost", [0, 1, 2, 3])
def test_ike_rekey_message_loss_recovered(lost: int) -> None:
    pair = make_pair()
    ia, _ = _up(pair)
    start = len(pair.sent)
    pair.deliver = lambda i, d, tag: i != start + lost
    pair.a.rekey_ike(ia.ike_sa_id, pair.now)
    pair.run_until_quiet(60)
    na, _ = _consistent(pair)
    assert na is not ia and len(na.children) == 1


@pytest.mark.parametrize("seed", range(6))
def test_simultaneous_ike_rekey(seed: int) -> None:
    pair = make_pair(seed=seed)
    ia, ib = _up(pair)
    kid = ia.children[0].spi_in
    pair.a.rekey_ike(ia.ike_sa_id, pair.now)
    pair.b.rekey_ike(ib.ike_sa_id, pair.now)
    pair.run_until_quiet(120)
    na, _nb = _consistent(pair)
    assert na.rekeyed_from is not None and [c.spi_in for c in na.children] == [kid]
    assert not _events(pair.events_a, ChildSaDeleted) and not _events(pair.events_b, ChildSaDeleted)


@pytest.mark.parametrize("late", ["a", "b"])
def test_ike_rekey_collision_one_request_late(late: str) -> None:
    pair = make_pair()
    ia, ib = _up(pair)
    start = len(pair.sent)
    tag = "a->b" if late == "a" else "b->a"
    pair.deliver = lambda i, d, t: not (i < start + 2 and t == tag)
    pair.a.rekey_ike(ia.ike_sa_id, pair.now)
    pair.b.rekey_ike(ib.ike_sa_id, pair.now)
    pair.run_until_quiet(120)
    na, _nb = _consistent(pair)
    assert len(na.children) == 1


@pytest.mark.parametrize("first", ["child", "ike"])
def test_child_rekey_crossing_ike_rekey(first: str) -> None:
    """RFC 7296 2.25.2: each side answers the other's request TEMPORARY_FAILURE; both retry later."""
    pair = make_pair()
    ia, ib = _up(pair)
    if first == "child":
        pair.a.rekey_child(ia.children[0].spi_in, pair.now)
        pair.b.rekey_ike(ib.ike_sa_id, pair.now)
    else:
        pair.a.rekey_ike(ia.ike_sa_id, pair.now)
        pair.b.rekey_child(ib.children[0].spi_in, pair.now)
    pair.run_until_quiet(120)
    na, _nb = _consistent(pair)
    assert na.rekeyed_from is not None
    assert len(na.children) == 1 and na.children[0].event.rekeyed_spi_in is not None
    assert any(decode_message(d, ia.sk_in if t == "b->a" else ib.sk_in).notify(NotifyType.TEMPORARY_FAILURE)
               for t, d in pair.sent if decode_header(d).exchange == ExchangeType.CREATE_CHILD_SA
               and decode_header(d).is_response and decode_header(d).spi_i == ia.spi_i)


# ------------------------------------------------------------------- lifetimes
def test_child_soft_lifetime_rekeys_and_hard_lifetime_deletes() -> None:
    pair = make_pair(*_settings(child=dict(rekey_time=100.0, life_time=110.0, rand_time=10.0)))
    ia, ib = _up(pair)
    t0 = pair.now
    first = ia.children[0].spi_in
    st = sa_info(ia)["child_sas"][0]  # type: ignore[index]
    assert 90 <= st["rekey_in"] <= 100 and st["expires_in"] == 110
    pair.run_until_quiet(100.5)
    ia, ib = _consistent(pair)
    assert ia.children[0].spi_in != first and ia.children[0].event.rekeyed_spi_in is not None
    assert pair.now - t0 >= 85
    # no rekey at all: the hard lifetime deletes the Child SA on both ends
    pair2 = make_pair(*_settings(child=dict(rekey_time=0.0, life_time=50.0, rand_time=0.0)))
    ia, ib = _up(pair2)
    t0 = pair2.now
    pair2.advance(49)
    assert len(ia.children) == 1
    pair2.advance(10)
    ia, ib = _consistent(pair2)
    assert not ia.children and not ib.children
    (gone,) = _events(pair2.events_a, ChildSaDeleted)
    assert "hard lifetime" in gone.reason


def test_owner_triggered_rekey_and_expiry() -> None:
    """Byte/packet limits live in the data plane: the daemon calls expire_child()."""
    pair = make_pair(*_settings(child=dict(rekey_bytes=1000, life_bytes=2000)))
    ia, ib = _up(pair)
    assert ia.children[0].settings is not None and ia.children[0].settings.rekey_bytes == 1000
    old = ia.children[0].spi_in
    assert pair.a.expire_child(old, hard=False, now=pair.now)
    pair.run_until_quiet(30)
    ia, ib = _consistent(pair)
    assert ia.children[0].spi_in != old
    assert pair.b.expire_child(ib.children[0].spi_in, hard=True, now=pair.now)
    pair.run_until_quiet(30)
    ia, ib = _consistent(pair)
    assert not ia.children


def test_ike_lifetimes() -> None:
    pair = make_pair(*_settings(rekey_time=300.0, rand_time=30.0, over_time=60.0))
    ia, ib = _up(pair)
    assert 270 <= sa_info(ia)["rekey_in"] <= 300  # type: ignore[operator]
    pair.run_until_quiet(301)
    na, _nb = _consistent(pair)
    assert na is not ia and na.rekeyed_from is not None and len(na.children) == 1
    # hard limit: rekeying impossible (peer refuses everything) -> deleted at rekey_time + over_time
    pair2 = make_pair(*_settings(rekey_time=300.0, rand_time=0.0, over_time=60.0))
    ia, ib = _up(pair2)
    t0 = pair2.now
    # B refuses every rekey (NO_PROPOSAL_CHOSEN): A retries until the hard limit
    ib.settings = dataclasses.replace(ib.settings, ike_proposals=tuple(
        parse_proposals(["aes128-sha256-modp2048"], ProtocolId.IKE)))
    ib.rekey_at = ib.hard_at = None
    pair2.run_until_quiet(370)
    closed = [e for e in pair2.events_a if isinstance(e, IkeSaClosed)]
    assert closed and closed[0].reason == "IKE SA lifetime expired"
    assert pair2.now - t0 <= 361


# ------------------------------------------------------------------------- DPD
def test_dpd_closes_a_silent_peer() -> None:
    pair = make_pair(*_settings(dpd_delay=30.0, dpd_action="restart"))
    _ia, _ib = _up(pair)
    t0 = pair.now
    pair.deliver = lambda i, d, tag: False  # the peer vanished
    pair.run_until_quiet(200)
    (closed,) = _events(pair.events_a, IkeSaClosed)
    assert closed.cause is Cause.PEER_DEAD and "peer dead" in closed.reason
    # dpd_delay + the retransmission schedule (timeouts 1, 2, 4, 8 seconds)
    assert pair.now - t0 <= 30 + 1 + 2 + 4 + 8 + 0.001
    assert any(isinstance(e, ChildSaDeleted) for e in pair.events_a)


def test_dpd_waits_while_esp_arrives() -> None:
    pair = make_pair(*_settings(dpd_delay=30.0))
    ia, ib = _up(pair)
    t0 = pair.now
    start = len(pair.sent)
    pair.advance(20)
    ia.note_inbound_traffic(t0 + 20)
    ib.note_inbound_traffic(t0 + 20)
    pair.advance(25)
    assert len(pair.sent) == start  # no probe yet: ESP was seen 25s ago
    pair.advance(10)
    probes = [d for _, d in pair.sent[start:] if decode_header(d).exchange == ExchangeType.INFORMATIONAL]
    assert len(probes) >= 2 and _consistent(pair)


def test_dpd_timeout_caps_the_wait() -> None:
    pair = make_pair(*_settings(dpd_delay=10.0, dpd_timeout=5.0))
    _ia, _ = _up(pair)
    t0 = pair.now
    pair.deliver = lambda i, d, tag: False
    pair.run_until_quiet(100)
    (closed,) = _events(pair.events_a, IkeSaClosed)
    assert closed.cause is Cause.PEER_DEAD and "dpd_timeout" in closed.reason
    assert pair.now - t0 <= 15.001


def test_invalid_ike_spi_from_a_rebooted_peer() -> None:
    pair = make_pair(*_settings(dpd_delay=30.0))
    ia, _ib = _up(pair)
    t0 = pair.now
    pair.b = IkeManager([pair.b.connections[0]], now=pair.now)  # B rebooted and forgot everything
    pair.events_b = []
    pair.run_until_quiet(200)
    assert pair.b.counters.get("invalid_ike_spi_sent", 0) >= 1
    answer = [d for t, d in pair.sent if t == "b->a"][-1]
    assert decode_message(answer).notify(NotifyType.INVALID_IKE_SPI) is not None  # unprotected
    (closed,) = _events(pair.events_a, IkeSaClosed)
    assert closed.cause is Cause.PEER_DEAD
    # the hint cut the wait: dpd_delay + two short tries instead of the full back-off
    assert pair.now - t0 < 30 + 1 + 2 + 4
    assert ia.counters.get("invalid_ike_spi", 0) >= 1


# ---------------------------------------------------- INITIAL_CONTACT, duplicates
def test_initial_contact_clears_stale_sas() -> None:
    pair = make_pair()
    _old_a, old_b = _up(pair)
    # A restarts: a fresh manager with the same config initiates again
    pair.a = IkeManager([pair.a.connections[0]], now=pair.now)
    pair.events_a = []
    pair.now += 100
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(30)
    _ia, ib = _consistent(pair)
    assert ib is not old_b and old_b.state == IkeState.CLOSED
    closed = [e for e in pair.events_b if isinstance(e, IkeSaClosed)]
    assert closed and "INITIAL_CONTACT" in closed[0].reason
    assert any(isinstance(e, ChildSaDeleted) and e.ike_sa_id == old_b.ike_sa_id for e in pair.events_b)
    # B did not send a Delete for the stale SA (the peer has no state for it)
    assert not any(t == "b->a" and decode_header(d).exchange == ExchangeType.INFORMATIONAL and
                   not decode_header(d).is_response for t, d in pair.sent[-6:])


def test_no_initial_contact_with_an_existing_sa() -> None:
    pair = make_pair()
    _ia, _ = _up(pair)
    sa2 = pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(10)
    auth = [d for t, d in pair.sent if t == "a->b" and decode_header(d).exchange == ExchangeType.IKE_AUTH]
    (b_side,) = [s for s in pair.b.sas.values() if s.spi_i == sa2.spi_i]
    msg = decode_message(auth[-1], b_side.sk_in)
    assert msg.notify(NotifyType.INITIAL_CONTACT) is None


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("b_delay", [0.0, 0.5])
def test_simultaneous_initiation_leaves_one_sa(seed: int, b_delay: float) -> None:
    pair = make_pair(seed=seed)
    pair.a.initiate("conn", pair.now)
    if b_delay:
        pair.a.datagrams_to_send()  # A's first IKE_SA_INIT is lost
    pair.b.initiate("conn", pair.now)
    pair.run_until_quiet(60)
    ia, _ib = _consistent(pair)
    assert len(ia.children) == 1
    est = _events(pair.events_a, IkeSaEstablished)
    assert len(est) in (1, 2)


def test_status_lists_lifetimes() -> None:
    pair = make_pair()
    ia, _ = _up(pair)
    st = sa_info(ia)
    assert st["expires_in"] == 14400 + 1440
    (kid,) = st["child_sas"]  # type: ignore[misc]
    assert kid["expires_in"] == 3960 and 3240 <= kid["rekey_in"] <= 3600
    assert kid["state"] == "INSTALLED"
