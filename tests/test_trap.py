"""On-demand ("trap") Child SAs, RFC 4301 5.1 / RFC 7296 1.3 and 2.9.

Two halves, both in-process:

* the data-plane worker (a datagram socketpair stands in for the TUN): packets hitting a
  trap before its SA exists are queued (bounded by count, bytes, total and age -- the age on
  the worker's state with a fake clock), an Acquire names the first one, and the queue
  leaves ESP-protected, in order, right after InstallSa; the trap outlives its SAs;
* the IKE engine (two managers back to back, fake clock): an acquire puts the packet's
  host pair first in TSi/TSr, the Child SA carries the trap's fixed reqid on both ends,
  our responder narrows that to the configured subnets, and repeated acquires start one
  negotiation only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from ipaddress import ip_address, ip_network

import pytest

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.state import SendEsp
from ipsecd.dataplane.worker import Drop
from ipsecd.esp.sa import DropReason
from ipsecd.esp.spd import Selector
from ipsecd.iana import ExchangeType, PayloadType, ProtocolId, TsType
from ipsecd.ike.events import ChildSaDeleted, ChildSaEstablished, IkeSaEstablished
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.message import decode_header, decode_message
from ipsecd.ike.payloads import TrafficSelector, TsPayload
from ipsecd.ike.proposal import parse_proposals
from ipsecd.ike.settings import ChildSettings, IkeSettings, TsSpec
from ipsecd.ike.ts import TriggerPacket, narrow, ts_to_str
from ipsecd.settings_from_config import protect_policies
from tests.dp_static_peer import static_params
from tests.ike_pair import Pair, make_pair, make_settings, make_settings_b
from tests.test_dataplane_state import arm_trap, make_state
from tests.test_dataplane_state import install as install_state
from tests.test_dataplane_unit import Side, _side, close, install, pump, udp4

REQID = 1  # the reqid tests/dp_static_peer.static_params installs its SA under


# =========================================================================== worker


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side]]:
    a, b = _side(acquire_interval=0.0), _side()
    yield a, b
    close(a, b)


def _trap(side: Side, name: str = "a-out", ident: int = 50) -> None:
    """A trap on A for what static_params' SA carries (equal policies, same reqid)."""
    pols = protect_policies(REQID, [Selector.from_prefix("10.1.0.0/24")], [Selector.from_prefix("10.2.0.0/24")], name)
    side.worker.handle(m.InstallTrap(REQID, tuple(pols), id=ident))
    assert side.messages() == [m.Ack(ident)]


def _reinstall_a(a: Side, b: Side) -> None:
    """A's half of static_params' SA again (B's stays as it is)."""
    a.messages()
    sa_in, sa_out, pols = static_params("a", "127.0.0.1", "127.0.0.1", "10.1.0.0/24", "10.2.0.0/24", encap=True,
                                        remote_port=b.port)
    a.worker.handle(m.InstallSa(REQID, sa_in, sa_out, tuple(pols), id=12))
    assert a.messages() == [m.Ack(12)]


def _acquires(side: Side) -> list[m.Acquire]:
    return [e for e in side.messages() if isinstance(e, m.Acquire)]


def test_queued_packets_leave_protected_in_order_after_install(sides: tuple[Side, Side]) -> None:
    a, b = sides
    _trap(a)
    pkts = [udp4("10.1.0.5", "10.2.0.7", bytes([i]) * 100) for i in range(5)]
    for p in pkts:
        a.tun.send(p)
    pump(a)
    assert a.worker.state.stats["acquire_queued"] == 5
    assert DropReason.NO_SA not in a.worker.state.drops  # held, not dropped
    acq = _acquires(a)
    assert acq and acq[0] == m.Acquire(REQID, ip_address("10.1.0.5"), ip_address("10.2.0.7"), 17, 1111, 2222)
    install(a, b)  # InstallSa for the trapped reqid sends the queue at once
    assert a.worker.state.stats["acquire_queue_sent"] == 5
    pump(a, b)
    assert b.read_tun() == pkts
    (out,) = [s for s in a.worker.counters().sas if s.direction == "out"]
    assert out.packets == 5 and out.seq == 5  # ESP-protected on the new SA, sequence 1..5
    assert not a.worker.state.drops
    # later packets take the normal path
    later = udp4("10.1.0.5", "10.2.0.7", b"after")
    a.tun.send(later)
    pump(a, b)
    assert b.read_tun() == [later]


def test_trap_outlives_its_sa_and_remove_trap_disarms(sides: tuple[Side, Side]) -> None:
    a, b = sides
    _trap(a)
    install(a, b)
    assert len(a.worker.state.spd) == 2  # the trap's entry and the SA's own (equal) entry
    a.worker.handle(m.DeleteSa(REQID, id=60))  # the SA goes (close_action / dpd_action = trap)
    assert m.Ack(60) in a.messages()
    assert len(a.worker.state.spd) == 1 and not a.worker.state.out
    p = udp4("10.1.0.5", "10.2.0.9", b"again")
    a.tun.send(p)
    pump(a)
    assert [e.dst for e in _acquires(a)] == [ip_address("10.2.0.9")]  # acquires again
    _reinstall_a(a, b)  # a fresh SA of the same reqid takes the queued packet
    pump(a, b)
    assert b.read_tun() == [p]
    a.worker.handle(m.DeleteSa(REQID, id=61))
    a.tun.send(udp4("10.1.0.5", "10.2.0.9", b"orphan"))
    pump(a)
    a.worker.handle(m.RemoveTrap(REQID, id=62))
    assert m.Ack(62) in a.messages()
    assert a.worker.state.drops[Drop.ACQUIRE_REMOVED] == 1
    assert len(a.worker.state.spd) == 0 and not a.worker.state.traps.traps and a.worker.state.traps.queued_bytes == 0
    a.tun.send(udp4("10.1.0.5", "10.2.0.9"))
    pump(a)
    assert a.worker.state.drops[DropReason.NO_POLICY] == 1


def test_remove_trap_keeps_the_live_sas_policies(sides: tuple[Side, Side]) -> None:
    a, b = sides
    _trap(a)
    install(a, b)
    a.worker.handle(m.RemoveTrap(REQID, id=70))
    assert len(a.worker.state.spd) == 1  # the SA's own entry
    p = udp4("10.1.0.5", "10.2.0.7", b"still")
    a.tun.send(p)
    pump(a, b)
    assert b.read_tun() == [p]
    a.worker.handle(m.DeleteSa(REQID, id=71))
    assert len(a.worker.state.spd) == 0


def test_queue_bounds_drop_the_oldest() -> None:
    a, b = _side(acquire_queue_packets=4, acquire_queue_bytes=3000), _side()
    try:
        _trap(a)
        small = [udp4("10.1.0.5", "10.2.0.7", bytes([i]) * 10) for i in range(6)]
        for p in small:
            a.tun.send(p)
        pump(a)
        assert a.worker.state.drops[Drop.ACQUIRE_OVERFLOW] == 2  # count bound: 4
        assert [pkt for _t, pkt in a.worker.state.traps.traps[REQID].queue] == small[2:]
        big = [udp4("10.1.0.5", "10.2.0.7", bytes([i]) * 1000) for i in range(3)]
        for p in big:
            a.tun.send(p)
        a.tun.send(udp4("10.1.0.5", "10.2.0.7", bytes(4000)))  # larger than the whole byte bound
        pump(a)
        trap = a.worker.state.traps.traps[REQID]
        assert trap.nbytes <= 3000 and len(trap.queue) <= 4
        assert trap.nbytes == sum(len(p) for _t, p in trap.queue) == a.worker.state.traps.queued_bytes
        kept = [pkt for _t, pkt in trap.queue]
        # big[2] pushed out the rest of the small ones and big[0] (3 x 1028 > 3000 bytes);
        # the 4 KB packet can never fit and was refused at once
        assert kept == big[1:]
        assert a.worker.state.drops[Drop.ACQUIRE_OVERFLOW] == 2 + 4 + 1 + 1
        a.messages()
        install(a, b)
        pump(a, b)
        assert b.read_tun() == kept  # what survived, in order
    finally:
        close(a, b)


def test_queue_total_bound_across_traps() -> None:
    a = _side(acquire_queue_total=2500)
    try:
        _trap(a)
        other = protect_policies(2, [Selector.from_prefix("10.1.0.0/24")], [Selector.from_prefix("10.3.0.0/24")])
        a.worker.handle(m.InstallTrap(2, tuple(other), id=51))
        for dst in ("10.2.0.7", "10.3.0.7", "10.2.0.8"):
            a.tun.send(udp4("10.1.0.5", dst, bytes(1000)))
        pump(a)
        assert a.worker.state.drops[Drop.ACQUIRE_FULL] == 1
        assert a.worker.state.traps.queued_bytes <= 2500
        assert {e.reqid for e in _acquires(a)} == {1, 2}
    finally:
        close(a)


def test_queued_packets_expire() -> None:
    """Fake clock on the worker's state: a queued packet older than acquire_queue_timeout is
    dropped by the timer (which runs only when the oldest one is due), younger ones wait."""
    st = make_state(acquire_queue_timeout=0.05)
    arm_trap(st)
    st.outbound(udp4("10.1.0.5", "10.2.0.7", b"stale"), 100.0)
    assert st.get_timer() == pytest.approx(100.05)
    st.outbound(udp4("10.1.0.5", "10.2.0.7", b"fresh"), 100.08)
    st.handle_timer(100.08)
    assert st.drops[Drop.ACQUIRE_EXPIRED] == 1  # the timer removed the old one
    assert len(st.traps.traps[REQID].queue) == 1
    assert st.get_timer() == pytest.approx(100.13)
    st.handle_timer(100.16)
    assert st.drops[Drop.ACQUIRE_EXPIRED] == 2
    assert st.traps.queued_bytes == 0 and st.get_timer() is None
    st.take_outputs()
    install_state(st, now=100.2)
    assert not [o for o in st.take_outputs() if isinstance(o, SendEsp)]


def test_install_trap_refuses_foreign_policies(sides: tuple[Side, Side]) -> None:
    a, _b = sides
    wrong = protect_policies(9, [Selector.from_prefix("10.1.0.0/24")], [Selector.from_prefix("10.2.0.0/24")])
    a.worker.handle(m.InstallTrap(REQID, tuple(wrong), id=80))
    (ack,) = a.messages()
    assert isinstance(ack, m.Ack) and not ack.ok and "sa_ref" in ack.error
    assert len(a.worker.state.spd) == 0


def test_trap_messages_round_trip() -> None:
    pols = tuple(protect_policies(3, [Selector.from_prefix("10.1.0.0/24")], [Selector.from_prefix("10.2.0.0/24")]))
    msgs: list[m.Message] = [m.InstallTrap(3, pols, id=1), m.RemoveTrap(3, id=2)]
    assert m.FrameDecoder().feed(b"".join(m.encode(x) for x in msgs)) == msgs


# =========================================================================== engine

TRIGGER = TriggerPacket("10.1.0.5", "10.2.0.7", 17, 1111, 2222)


def _child(name: str, local: str, remote: str, **kw: object) -> ChildSettings:
    return ChildSettings(name, (TsSpec(ip_network(local)),), (TsSpec(ip_network(remote)),),
                         tuple(parse_proposals(["aes256gcm16"], ProtocolId.ESP)), **kw)  # type: ignore[arg-type]


def _with_children(s: IkeSettings, *children: ChildSettings) -> IkeSettings:
    return dataclasses.replace(s, children=children)


def _strs(tss: Iterable[TrafficSelector]) -> list[str]:
    return [ts_to_str(t) for t in tss]


def _proposed_ts(pair: Pair, exchange: ExchangeType, index: int = 0) -> tuple[list[str], list[str]]:
    """TSi and TSr of A's index-th request of ``exchange``, opened with B's keys."""
    reqs = [d for tag, d in pair.sent
            if tag == "a->b" and decode_header(d).exchange == exchange and not decode_header(d).is_response]
    (ib,) = [s for s in pair.b.sas.values() if s.state == IkeState.ESTABLISHED]
    msg = decode_message(reqs[index], ib.sk_in)
    ts = {p.kind: p.selectors for p in msg.get_all(TsPayload)}
    return _strs(ts[PayloadType.TSi]), _strs(ts[PayloadType.TSr])


def _established(events: Sequence[object], child: str = "net") -> list[ChildSaEstablished]:
    return [e for e in events if isinstance(e, ChildSaEstablished) and e.child == child]


def test_acquire_puts_the_packet_first_and_both_ends_agree_on_the_subnets() -> None:
    pair = make_pair()
    ra = pair.a.assign_reqid("conn", "net")
    rb = pair.b.assign_reqid("conn", "net")
    sa = pair.a.acquire(ra, pair.now, TRIGGER)
    assert isinstance(sa, IkeSa)
    pair.run_until_quiet(30)
    # RFC 7296 2.9: the packet's host pair (with its protocol and ports) first, then the config
    ts_i, ts_r = _proposed_ts(pair, ExchangeType.IKE_AUTH)
    assert ts_i == ["10.1.0.5/32[17/1111]", "10.1.0.0/24"]
    assert ts_r == ["10.2.0.7/32[17/2222]", "10.2.0.0/24"]
    (ea,) = _established(pair.events_a)
    (eb,) = _established(pair.events_b)
    # our responder keeps only the largest selectors: the host pair lies inside the subnets
    assert (_strs(ea.local_ts), _strs(ea.remote_ts)) == (["10.1.0.0/24"], ["10.2.0.0/24"])
    assert (_strs(eb.local_ts), _strs(eb.remote_ts)) == (["10.2.0.0/24"], ["10.1.0.0/24"])
    assert ea.reqid == ra and eb.reqid == rb  # each end's trap reqid, whoever initiated


def test_narrower_responder_keeps_the_part_holding_the_packet() -> None:
    sb = _with_children(make_settings_b(), _child("net", "10.2.0.0/25", "10.1.0.0/24"))
    pair = make_pair(make_settings(), sb)
    pair.a.acquire(pair.a.assign_reqid("conn", "net"), pair.now, TRIGGER)
    pair.run_until_quiet(30)
    (ea,) = _established(pair.events_a)
    (eb,) = _established(pair.events_b)
    assert _strs(ea.remote_ts) == _strs(eb.local_ts) == ["10.2.0.0/25"]
    assert _strs(ea.local_ts) == _strs(eb.remote_ts) == ["10.1.0.0/24"]


def test_host_only_responder_gets_the_host_pair() -> None:
    sb = _with_children(make_settings_b(), _child("net", "10.2.0.7/32", "10.1.0.5/32"))
    pair = make_pair(make_settings(), sb)
    pair.a.acquire(pair.a.assign_reqid("conn", "net"), pair.now, TRIGGER)
    pair.run_until_quiet(30)
    (ea,) = _established(pair.events_a)
    assert (_strs(ea.local_ts), _strs(ea.remote_ts)) == (["10.1.0.5/32"], ["10.2.0.7/32"])


def test_trigger_outside_the_configuration_is_not_offered() -> None:
    pair = make_pair()
    pair.a.acquire(pair.a.assign_reqid("conn", "net"), pair.now, TriggerPacket("10.9.0.1", "10.2.0.7"))
    pair.run_until_quiet(30)
    assert _proposed_ts(pair, ExchangeType.IKE_AUTH) == (["10.1.0.0/24"], ["10.2.0.0/24"])
    assert len(_established(pair.events_a)) == 1


def test_icmp_trigger_proposes_no_ports() -> None:
    assert _strs(TriggerPacket("10.1.0.5", "10.2.0.7", 1, 0x0800, 0x0800).selectors()) == \
        ["10.1.0.5/32[1]", "10.2.0.7/32[1]"]
    assert _strs(TriggerPacket("fd00::1", "fd00::2").selectors()) == ["fd00::1/128", "fd00::2/128"]


def test_narrow_drops_selectors_inside_others() -> None:
    (host_i, _), subnet = TRIGGER.selectors(), make_ts("10.1.0.0", "10.1.0.255")
    assert narrow([host_i, subnet], [subnet]) == [subnet]
    assert narrow([host_i, subnet], [make_ts("10.1.0.5", "10.1.0.5")]) == [make_ts("10.1.0.5", "10.1.0.5")]


def make_ts(lo: str, hi: str) -> TrafficSelector:
    return TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535, ip_address(lo), ip_address(hi))


def test_repeated_acquires_start_one_negotiation() -> None:
    pair = make_pair()
    r = pair.a.assign_reqid("conn", "net")
    first = pair.a.acquire(r, pair.now, TRIGGER)
    assert first is not None
    for i in range(5):  # the worker repeats acquires while packets keep coming
        pair.now += 0.2
        assert pair.a.acquire(r, pair.now, TriggerPacket("10.1.0.5", f"10.2.0.{10 + i}")) is None
        pair._move()
    pair.run_until_quiet(30)
    inits = [d for tag, d in pair.sent if tag == "a->b" and decode_header(d).exchange == ExchangeType.IKE_SA_INIT]
    assert len(inits) == 1
    assert len(_established(pair.events_a)) == 1
    # the SA is up: a late acquire (raced the install) changes nothing
    n = len(pair.sent)
    assert pair.a.acquire(r, pair.now, TRIGGER) is None
    pair.run_until_quiet(5)
    assert len(pair.sent) == n
    assert pair.a.counters["acquires"] == 1 and pair.a.counters["acquires_ignored"] == 6


def test_acquire_while_the_peer_sets_up_is_ignored() -> None:
    pair = make_pair()
    r = pair.a.assign_reqid("conn", "net")
    pair.b.initiate("conn", pair.now)
    for tag_data in pair.b.datagrams_to_send():  # B's IKE_SA_INIT reaches A, A answers
        pair.a.receive_datagram(tag_data[0], tag_data[2], tag_data[1], pair.now)
    assert pair.a.acquire(r, pair.now, TRIGGER) is None
    pair.run_until_quiet(30)
    (ea,) = _established(pair.events_a)
    assert ea.reqid == r and not ea.initiator  # the peer's Child SA carries our trap's reqid


def test_acquire_on_an_established_ike_sa_uses_create_child_sa() -> None:
    sa = _with_children(make_settings(), _child("net", "10.1.0.0/24", "10.2.0.0/24"),
                        _child("web", "10.1.0.0/24", "10.2.5.0/24", start_action="trap"))
    sb = _with_children(make_settings_b(), _child("net", "10.2.0.0/24", "10.1.0.0/24"),
                        _child("web", "10.2.5.0/24", "10.1.0.0/24"))
    pair = make_pair(sa, sb)
    r = pair.a.assign_reqid("conn", "web")
    pair.a.initiate("conn", pair.now, child="net")
    pair.run_until_quiet(30)
    assert len(_established(pair.events_a, "net")) == 1 and not _established(pair.events_a, "web")
    got = pair.a.acquire(r, pair.now, TriggerPacket("10.1.0.5", "10.2.5.80", 6, 40000, 443))
    assert got is not None and got.state == IkeState.ESTABLISHED
    assert pair.a.acquire(r, pair.now, TRIGGER) is None  # in flight: ignored
    pair.run_until_quiet(30)
    assert _proposed_ts(pair, ExchangeType.CREATE_CHILD_SA) == (
        ["10.1.0.5/32[6/40000]", "10.1.0.0/24"], ["10.2.5.80/32[6/443]", "10.2.5.0/24"])
    (web,) = _established(pair.events_a, "web")
    assert web.reqid == r and web.ike_sa_id == got.ike_sa_id
    assert len([e for e in pair.events_a if isinstance(e, IkeSaEstablished)]) == 1


def test_acquire_while_our_ike_sa_connects_queues_the_child() -> None:
    sa = _with_children(make_settings(), _child("net", "10.1.0.0/24", "10.2.0.0/24"),
                        _child("web", "10.1.0.0/24", "10.2.5.0/24"))
    sb = _with_children(make_settings_b(), _child("net", "10.2.0.0/24", "10.1.0.0/24"),
                        _child("web", "10.2.5.0/24", "10.1.0.0/24"))
    pair = make_pair(sa, sb)
    r = pair.a.assign_reqid("conn", "web")
    ike = pair.a.initiate("conn", pair.now, child="net")
    assert pair.a.acquire(r, pair.now, TriggerPacket("10.1.0.5", "10.2.5.80")) is ike
    pair.run_until_quiet(30)
    (web,) = _established(pair.events_a, "web")
    assert web.reqid == r


def test_deleted_trap_child_is_renegotiated_with_the_same_reqid() -> None:
    pair = make_pair()
    r = pair.a.assign_reqid("conn", "net")
    pair.a.acquire(r, pair.now, TRIGGER)
    pair.run_until_quiet(30)
    (first,) = _established(pair.events_a)
    pair.a.delete_child(first.spi_in, pair.now)
    pair.run_until_quiet(10)
    assert [e.reqid for e in pair.events_a if isinstance(e, ChildSaDeleted)] == [r]
    pair.a.acquire(r, pair.now, TRIGGER)  # the trap stayed armed: the next packet acquires
    pair.run_until_quiet(30)
    assert [e.reqid for e in _established(pair.events_a)] == [r, r]
    assert _established(pair.events_a)[1].ike_sa_id == first.ike_sa_id  # CREATE_CHILD_SA, same IKE SA


def test_rekey_keeps_the_fixed_reqid() -> None:
    pair = make_pair()
    r = pair.a.assign_reqid("conn", "net")
    pair.a.acquire(r, pair.now, TRIGGER)
    pair.run_until_quiet(30)
    (first,) = _established(pair.events_a)
    pair.a.rekey_child(first.spi_in, pair.now)
    pair.run_until_quiet(30)
    assert [e.reqid for e in _established(pair.events_a)] == [r, r]


@pytest.mark.parametrize("seed", range(4))
def test_both_ends_acquire_at_once(seed: int) -> None:
    """Both gateways trap and send at once: the duplicate IKE SA goes, and the Child SA
    that goes with it says its reqid is still in use (the survivor carries the same one)."""
    pair = make_pair(seed=seed)
    ra, rb = pair.a.assign_reqid("conn", "net"), pair.b.assign_reqid("conn", "net")
    pair.a.acquire(ra, pair.now, TRIGGER)
    pair.b.acquire(rb, pair.now, TriggerPacket("10.2.0.7", "10.1.0.5"))
    pair.run_until_quiet(60)
    for mgr, events, r in ((pair.a, pair.events_a, ra), (pair.b, pair.events_b, rb)):
        (ike,) = mgr.list_sas()
        assert [c.event.reqid for c in ike.children] == [r]
        (gone,) = [e for e in events if isinstance(e, ChildSaDeleted)]  # the duplicate's
        assert gone.reqid == r and gone.reqid_in_use


def test_assign_and_release_reqids() -> None:
    pair = make_pair()
    r = pair.a.assign_reqid("conn", "net")
    assert pair.a.assign_reqid("conn", "net") == r and pair.a.reqid_for("conn", "net") == r
    with pytest.raises(ValueError):
        pair.a.assign_reqid("other", "net", reqid=r)
    assert pair.a.assign_reqid("conn", "net", reqid=77) == 77
    assert pair.a.reqid_for("conn", "net") == 77
    assert pair.a.release_reqid("conn") == [77]
    assert pair.a.reqid_for("conn", "net") is None
    assert pair.a.acquire(77, pair.now, TRIGGER) is None
    assert pair.a.counters["acquires_unknown"] == 1
    # a dynamic reqid never collides with a fixed one
    fixed = pair.a.assign_reqid("conn", "net")
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(30)
    (e,) = _established(pair.events_a)
    assert e.reqid == fixed


# =========================================================================== routes


class _FakeIpr:
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def route(self, op: str, **kw: object) -> None:
        self.log.append((op, str(kw["dst"])))


def test_trap_routes_outlive_the_sa_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from ipsecd.dataplane import netconf

    log: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def fake() -> Iterator[_FakeIpr]:
        yield _FakeIpr(log)

    monkeypatch.setattr(netconf, "_ipr", fake)
    nc = netconf.NetConf("tun", ifindex=7)
    pols = protect_policies(5, [Selector.from_prefix("10.1.0.0/24")], [Selector.from_prefix("10.2.0.0/24")])
    nc.add_routes(5, pols, 1400, owner=netconf.TrapRoutes(5))
    nc.add_routes(5, pols, 1380)  # the SA of the trap: same prefix, same reqid
    nc.remove_routes(5)  # SA deleted: the trap still routes into the TUN
    assert log == [("replace", "10.2.0.0/24"), ("replace", "10.2.0.0/24")]
    assert nc.route_owners() == {netconf.TrapRoutes(5)} and nc.routed_reqids() == set()
    nc.remove_routes(netconf.TrapRoutes(5))
    assert log[-1] == ("del", "10.2.0.0/24") and not nc.route_owners()
