"""A metrics scrape and RADIUS accounting without O(all SAs) in the IKE loop (issue 11).

* the worker's per-tag totals (dataplane/readouts.py): what removed, rekeyed, expired and
  moved-away SAs counted stays in their tag's sums;
* ``GetSaCounters``/``GetTotals``/``Totals`` and ``InstallSa.tag`` round trips, and the
  state's answers;
* the client side: ``sa_counters`` asks each pair of its owner worker, ``totals`` sums workers;
* the IKE side's snapshot (``ControlHandlers.metrics_snapshot``) builds no dict per SA and
  reads no per-SA counters unless ``settings.metrics.per_sa``: the same work (and the same
  exposition) at 10 and at 20,000 synthetic SAs, counted, never timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from ipsecd.dataplane import messages as m
from ipsecd.dataplane import readouts
from ipsecd.dataplane.client import SaJobs
from ipsecd.dataplane.handoff import owner_of_spi
from ipsecd.ike.shard import Shard
from ipsecd.metrics import render, state_counts
from ipsecd.shell import control
from ipsecd.shell.control import ControlHandlers
from ipsecd.shell.installer import ChildTags
from tests.dp_static_peer import static_params
from tests.test_dataplane_state import REQID, State, make_state, messages
from tests.test_metrics import parse

TAG = 7


def _install(st: State, tag: int = TAG, reqid: int = REQID, spi_step: int = 0) -> tuple[int, int]:
    sa_in, sa_out, pols = static_params("a", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", encap=True)
    sa_in = dataclasses.replace(sa_in, spi=sa_in.spi + spi_step)
    sa_out = dataclasses.replace(sa_out, spi=sa_out.spi + spi_step)
    st.handle(m.InstallSa(reqid, sa_in, sa_out, tuple(pols), 1400, m.Lifetime(), tag=tag, id=1), 0.0)
    assert messages(st) == [m.Ack(1)]
    return sa_in.spi, sa_out.spi


def _count(st: State, spi_in: int, b_in: int, b_out: int) -> None:
    """Traffic as the packet paths count it (per SA, nothing else)."""
    c = st.sad.inbound[spi_in].counters
    c.bytes += b_in
    c.packets += 1
    o = st.out[REQID].sa.counters
    o.bytes += b_out
    o.packets += 1


def _totals(st: State) -> dict[int, tuple[int, int, int, int]]:
    st.handle(m.GetTotals(id=3), 0.0)
    (reply,) = messages(st)
    assert isinstance(reply, m.Totals) and reply.id == 3
    return {t.tag: (t.bytes_in, t.packets_in, t.bytes_out, t.packets_out) for t in reply.tags}


# ---------------------------------------------------------------------------- the worker's totals


def test_tag_totals_survive_rekey_and_removal() -> None:
    st = make_state()
    spi_in, _ = _install(st)
    _count(st, spi_in, 100, 50)
    assert _totals(st) == {TAG: (100, 1, 50, 1)}
    # rekey (RFC 7296 2.8): the new pair arrives under the same reqid, the old outbound SA is
    # replaced at once, the old inbound SA goes a moment later
    new_in, _ = _install(st, spi_step=0x100)
    assert _totals(st) == {TAG: (100, 1, 50, 1)}  # the replaced outbound SA's 50 octets stay
    st.sad.inbound[new_in].counters.bytes += 7
    st.out[REQID].sa.counters.bytes += 9
    st.handle(m.DeleteSa(None, (spi_in,), policies=False, id=4), 0.0)
    assert messages(st) == [m.Ack(4)]
    assert _totals(st) == {TAG: (107, 1, 59, 1)}
    # the Child SA closes: everything it ever counted stays, the reqid is forgotten
    st.handle(m.DeleteSa(REQID, id=5), 0.0)
    assert messages(st) == [m.Ack(5)]
    assert not st.sad.inbound and not st.out and REQID not in st.tags.reqid_tag
    assert _totals(st) == {TAG: (107, 1, 59, 1)}
    # the next login of the same (connection, child) adds to the same sums
    spi3, _ = _install(st, reqid=REQID + 1, spi_step=0x200)
    st.sad.inbound[spi3].counters.bytes += 1
    assert _totals(st) == {TAG: (108, 1, 59, 1)}


def test_tag_totals_keep_expired_and_moved_away_sas() -> None:
    st = make_state()
    spi_in, _ = _install(st)
    _count(st, spi_in, 10, 20)
    st._remove_in(spi_in)  # a hard lifetime (state._check_lifetimes) removes an SA on its own
    assert _totals(st) == {TAG: (10, 1, 20, 1)}
    st.handle(m.SetOwner(REQID, 1, id=6), 0.0)  # several workers: a rekey moved the pair away
    assert messages(st) == [m.Ack(6)] and REQID not in st.out
    assert _totals(st) == {TAG: (10, 1, 20, 1)}


def test_untagged_sas_sum_under_zero_and_drops_ride_along() -> None:
    st = make_state()
    spi_in, _ = _install(st, tag=0)
    _count(st, spi_in, 3, 4)
    st.drops["replay"] = 2
    st.handle(m.GetTotals(id=1), 0.0)
    (reply,) = messages(st)
    assert isinstance(reply, m.Totals)
    assert reply.tags == (m.TagTotal(0, 3, 1, 4, 1),) and reply.drops == {"replay": 2}


# ---------------------------------------------------------------------------- messages


def test_new_messages_round_trip() -> None:
    sa_in, sa_out, pols = static_params("a", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", encap=True)
    for msg in (m.GetSaCounters((1, 2), (3, 0), id=5), m.GetTotals(id=6),
                m.Totals(7, (m.TagTotal(1, 2, 3, 4, 5), m.TagTotal(9, 0, 0, 0, 0)), {"replay": 1}, {"x": 2}),
                m.InstallSa(1, sa_in, sa_out, tuple(pols), 1400, tag=42, id=8)):
        frame = m.encode(msg)  # type: ignore[arg-type]
        assert m.decode_body(frame[4:]) == msg
        assert m.FrameDecoder().feed(frame) == [msg]
    assert m.PROTOCOL_VERSION == 8


@pytest.mark.parametrize("body", [
    b'[7,"GetSaCounters",[1,2],[3],1]',  # the pairs do not pair
    b'[7,"GetSaCounters",[1,"2"],[3,4],1]',  # not an integer
    b'[7,"Totals",1,[[1,2,3,4]],{},{}]',  # a TagTotal field short
    b'[7,"Totals",1,[[1,2,3,4,true]],{},{}]',  # a bool is no count
    b'[6,"GetTotals",1]',  # the previous protocol
])
def test_bad_frames_are_refused(body: bytes) -> None:
    with pytest.raises(m.ProtocolError):
        m.decode_body(body)


def test_sa_counters_answers_only_the_asked_pairs() -> None:
    st = make_state()
    spi_in, spi_out = _install(st)
    _count(st, spi_in, 100, 50)
    st.handle(m.GetSaCounters((spi_in, 0xDEAD), (spi_out, 0xBEEF), id=9), 0.0)
    (reply,) = messages(st)
    assert isinstance(reply, m.Counters) and reply.id == 9 and reply.drops == {} and reply.stats == {}
    assert [(s.spi, s.direction, s.bytes) for s in reply.sas] == [(spi_in, "in", 100), (spi_out, "out", 50)]
    # after a rekey the old pair's outbound SPI is no longer the reqid's: only its inbound SA answers
    _install(st, spi_step=0x100)
    st.handle(m.GetSaCounters((spi_in,), (spi_out,), id=10), 0.0)
    (reply,) = messages(st)
    assert isinstance(reply, m.Counters) and [(s.spi, s.direction) for s in reply.sas] == [(spi_in, "in")]


# ---------------------------------------------------------------------------- the client side


class _Links(SaJobs):
    """SaJobs over fake worker links: the states themselves, answered in process."""

    def __init__(self, states: list[State]) -> None:
        self.states = states
        self.asked: list[tuple[int, m.Message]] = []

    def _owner_of_spi(self, spi: int) -> int:
        return owner_of_spi(spi, len(self.states)) if len(self.states) > 1 else 0

    async def _request(self, build: Any, worker: int = 0) -> m.Message:
        msg = build(1)
        self.asked.append((worker, msg))
        self.states[worker].handle(msg, 0.0)
        (reply,) = messages(self.states[worker])
        return reply

    async def _broadcast(self, build: Any) -> list[m.Message]:
        return [await self._request(build, k) for k in range(len(self.states))]


def test_sa_counters_asks_each_owner_and_totals_sum_workers() -> None:
    states = [make_state(), make_state()]
    sa_in, _, _ = static_params("a", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", encap=True)
    owner = owner_of_spi(sa_in.spi, 2)
    spi_in, spi_out = _install(states[owner])
    _count(states[owner], spi_in, 100, 50)
    other = 1 - owner
    spi2, _ = _install(states[other], reqid=REQID + 5, spi_step=0x1)  # the tag's other SA, on the other worker
    links = _Links(states)
    snaps = asyncio.run(links.sa_counters([(spi_in, spi_out)]))
    assert [(s.spi, s.direction, s.bytes) for s in snaps] == [(spi_in, "in", 100), (spi_out, "out", 50)]
    assert [k for k, _ in links.asked] == [owner]  # one request, to the owner only
    states[other].sad.inbound[spi2].counters.bytes += 5
    sums, _drops, _gc = asyncio.run(links.totals())
    assert sums == {TAG: [105, 1, 50, 1]}  # both workers' SAs of the tag, summed


def test_sa_counters_in_parts() -> None:
    links = _Links([make_state()])
    pairs = [(i + 1, i + 1) for i in range(2048 * 2 + 1)]
    assert asyncio.run(links.sa_counters(pairs)) == []
    assert len(links.asked) == 3 and all(isinstance(x, m.GetSaCounters) for _, x in links.asked)


# ---------------------------------------------------------------------------- the IKE side


def test_child_tags_are_small_stable_and_apart_across_shards() -> None:
    one = ChildTags(Shard())
    assert [one.of("rw", "net"), one.of("hq", "net"), one.of("rw", "net")] == [1, 2, 1]
    assert one.names() == {"1": ["rw", "net"], "2": ["hq", "net"]}
    s0, s1 = ChildTags(Shard(0, 3)), ChildTags(Shard(1, 3))
    a = {s0.of(f"c{i}", "x") for i in range(50)}
    b = {s1.of(f"c{i}", "x") for i in range(50)}
    assert not a & b and 0 not in a | b


class _Sa:
    def __init__(self, state: str, children: int) -> None:
        self.state = state
        self.children = [SimpleNamespace(state="INSTALLED") for _ in range(children)]


class _Dataplane:
    def __init__(self, sums: dict[int, list[int]]) -> None:
        self.sums = sums
        self.counter_calls = 0

    async def totals(self) -> tuple[dict[int, list[int]], dict[str, int], dict[str, Any]]:
        gc = {"worker-0": {"2": {"passes": 1, "seconds": 0.01, "max_seconds": 0.01}}}
        return {t: list(v) for t, v in self.sums.items()}, {"replay": 1}, gc

    async def counters(self) -> dict[str, Any]:
        self.counter_calls += 1
        return {"sas": {}, "global": {}}


def _daemon(n: int, per_sa: bool = False) -> Any:
    tags = ChildTags(Shard())
    tags.of("rw", "net")
    tags.of("hq", "lan")
    sas = {i: _Sa("ESTABLISHED" if i % 10 else "CONNECTING", 1 if i % 10 else 0) for i in range(n)}
    sas[-1] = _Sa("CLOSED", 0)
    manager = SimpleNamespace(sas=sas, total_counters=lambda: {"malformed": 1},
                              list_sas=lambda: [sa for sa in sas.values() if sa.state != "CLOSED"])
    stats = SimpleNamespace(events={"ike_sas_established": n}, failures={}, rekeys={"child": 3}, logins={})
    settings = SimpleNamespace(metrics=SimpleNamespace(per_sa=per_sa))
    return SimpleNamespace(shell=SimpleNamespace(manager=manager), stats=stats, installer=SimpleNamespace(tags=tags),
                           config=SimpleNamespace(settings=settings), shard=SimpleNamespace(index=0),
                           dataplane=_Dataplane({1: [1000, 10, 2000, 20], 2: [5, 1, 6, 1], 0: [0, 0, 0, 0]}))


def test_snapshot_builds_nothing_per_sa(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scrape at 10 and at 20,000 SAs: no sa_info, no per-SA counters read, the same
    series; only the state gauges' values differ."""
    calls = {"sa_info": 0}

    def counting_sa_info(*a: Any, **kw: Any) -> Any:
        calls["sa_info"] += 1
        return {}

    monkeypatch.setattr(control, "sa_info", counting_sa_info)
    texts = {}
    for n in (10, 20_000):
        d = _daemon(n)
        snap = asyncio.run(ControlHandlers(d, None).metrics_snapshot())  # type: ignore[arg-type]
        assert calls["sa_info"] == 0 and d.dataplane.counter_calls == 0
        assert snap.ike_states == {"ESTABLISHED": n - n // 10, "CONNECTING": n // 10}
        assert snap.child_states == {"INSTALLED": n - n // 10}
        texts[n] = render(snap)
        _, samples = parse(texts[n])
        assert samples[("ipsecd_child_sa_bytes_total", (("child", "net"), ("conn", "rw"), ("direction", "in")))] == 1000
        assert samples[("ipsecd_child_sa_packets_total", (("child", "lan"), ("conn", "hq"), ("direction", "out")))] == 1
        assert samples[("ipsecd_drops_total", (("reason", "replay"),))] == 1
        assert not any(k[0].startswith("ipsecd_child_sa_spi_") for k in samples)
        # the worker's collector comes with GetTotals (no GetCounters for it either)
        assert ("ipsecd_gc_passes_total", (("generation", "2"), ("process", "worker-0"))) in samples
    assert len(texts[10].splitlines()) == len(texts[20_000].splitlines())
    # opted in: the per-SPI families come back (through list_sas, O(SAs))
    d = _daemon(10, per_sa=True)
    snap = asyncio.run(ControlHandlers(d, None).metrics_snapshot())  # type: ignore[arg-type]
    assert snap.per_sa and d.dataplane.counter_calls == 1 and calls["sa_info"] == 10
    families, _ = parse(render(snap))
    assert "ipsecd_child_sa_spi_bytes_total" in families


def test_state_counts_skip_closed() -> None:
    assert state_counts([_Sa("ESTABLISHED", 2), _Sa("CLOSED", 1), _Sa("DELETING", 0)]) == {
        "ike": {"ESTABLISHED": 1, "DELETING": 1}, "child": {"INSTALLED": 2}}


def test_walk_of_the_worker_is_linear_and_the_answer_is_not() -> None:
    """GetTotals walks the worker's SAs once (counted in lines of Python, at 10 vs 2,000 SAs,
    as a ratio) and answers in O(tags): the frame has the same size."""
    from tests.test_dataplane_state import _gateway, _work

    tags, work = {}, {}
    for n in (10, 2000):
        st = _gateway(n)
        work[n] = _work(lambda st=st: readouts.totals(st))  # type: ignore[misc]
        tags[n] = readouts.totals(st).tags
    assert len(tags[10]) == len(tags[2000]) == 1  # one tag (0: the fixture's installs carry none)
    assert work[2000] < work[10] * 2000 / 10 * 1.2  # linear, no worse
