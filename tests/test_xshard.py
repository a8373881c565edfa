"""INITIAL_CONTACT and ``unique`` across IKE shards (ike/xshard.py, shell/xshard.py).

Gateway shards are IkeManagers of their own (``Shard(k, n)``), each with a ClaimRelay on a
fake shell; the relays talk through JSON round trips as the shard links carry them. Each
client is pinned to one shard (the kernel's steering is tested in test_shards.py): what
matters here is that the two SAs of one identity live on different shards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ipsecd.identity import Identity
from ipsecd.ike.events import Cause, Event, IkeSaClosed
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.relations import IC_REASON
from ipsecd.ike.shard import Shard
from ipsecd.ike.state import IkeState
from ipsecd.ike.xshard import (
    Claim,
    Outcome,
    Reply,
    Rule,
    apply,
    claim_of,
    decode_claim,
    decode_reply,
    encode_claim,
    encode_reply,
)
from ipsecd.pools import MemoryLeaseStore, PoolManager, PoolSpec, parse_range
from ipsecd.shell.xshard import ClaimRelay
from tests.test_ike_cp import GW, NAT, client_settings, gateway_settings


def wire(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


class FakeShell:
    """What ClaimRelay uses of IkeShell: the manager, act(), tasks.spawn()."""

    def __init__(self, manager: IkeManager, clock: Callable[[], float]) -> None:
        self.manager = manager
        self.clock = clock
        self.tasks = self
        self.pending: list[Coroutine[Any, Any, Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        self.pending.append(coro)

    def act(self, job: Callable[[IkeManager, float], Any]) -> Any:
        return job(self.manager, self.clock())


@dataclasses.dataclass
class ShardedOffice:
    """n gateway shards; client i reaches shard home[i] (through one NAT, as test_ike_cp's Office)."""

    gws: list[IkeManager]
    relays: list[ClaimRelay] = dataclasses.field(default_factory=list)
    clients: list[IkeManager] = dataclasses.field(default_factory=list)
    home: list[int] = dataclasses.field(default_factory=list)
    now: float = 1000.0
    gw_events: list[list[Event]] = dataclasses.field(default_factory=list)
    client_events: dict[int, list[Event]] = dataclasses.field(default_factory=dict)
    relay: bool = True

    def __post_init__(self) -> None:
        n = len(self.gws)
        self.gw_events = [[] for _ in range(n)]
        for k, gw in enumerate(self.gws):
            r = ClaimRelay(FakeShell(gw, lambda: self.now), k)  # type: ignore[arg-type]
            self.relays.append(r)
        # the primary asks every shard but the origin; a shard asks the primary (on_relay)
        self.relays[0].peers = self._gather
        for k in range(1, n):
            self.relays[k].peers = self._to_primary

    async def _gather(self, claim: dict[str, Any], origin: int) -> list[Any]:
        return [wire(await r.on_claim(wire(claim))) for k, r in enumerate(self.relays) if k not in (0, origin)]

    async def _to_primary(self, claim: dict[str, Any], origin: int) -> list[Any]:
        return wire(await self.relays[0].on_relay(wire(claim)))

    def add(self, i: int, shard: int) -> int:
        self.clients.append(IkeManager([client_settings(i)], now=self.now))
        self.home.append(shard)
        return len(self.clients) - 1

    def up(self, c: int) -> None:
        self.now += 1.0  # INITIAL_CONTACT replaces only SAs up before the new one started
        self.clients[c].initiate("rw", self.now)
        self.pump()

    def pump(self) -> None:
        for _ in range(50):
            moved = self._move()
            ran = self._run_claims()
            if not moved and not ran:
                return
        raise AssertionError("did not settle")

    def _move(self) -> bool:
        moved = False
        for _ in range(200):
            step = False
            for i, c in enumerate(self.clients):
                for d in c.datagrams_to_send():
                    step = True
                    src = (NAT, 40000 + 100 * i + d.local[1] % 100)
                    self.gws[self.home[i]].receive_datagram(d.data, d.remote, src, self.now)
            for gw in self.gws:
                for d in gw.datagrams_to_send():
                    step = True
                    port = d.remote[1] - 40000
                    i, local_port = port // 100, 500 if port % 100 == 0 else 4500
                    c = self.clients[i]
                    c.receive_datagram(d.data, (c.connections[0].local_addrs[0], local_port), d.local, self.now)
            for i, c in enumerate(self.clients):
                while (ev := c.next_event()) is not None:
                    self.client_events.setdefault(i, []).append(ev)
            for k, gw in enumerate(self.gws):
                while (ev := gw.next_event()) is not None:
                    self.gw_events[k].append(ev)
                    if self.relay:
                        self.relays[k].on_event(ev)
            if not step:
                return moved
            moved = True
        raise AssertionError("did not settle")

    def _run_claims(self) -> bool:
        ran = False
        for r in self.relays:
            shell: FakeShell = r.shell  # type: ignore[assignment]
            while shell.pending:
                ran = True
                asyncio.run(shell.pending.pop(0))
        return ran

    def closed(self, k: int) -> list[IkeSaClosed]:
        return [e for e in self.gw_events[k] if isinstance(e, IkeSaClosed)]

    def client_closed(self, c: int) -> list[IkeSaClosed]:
        return [e for e in self.client_events.get(c, []) if isinstance(e, IkeSaClosed)]


def _pools() -> PoolManager:
    return PoolManager([PoolSpec("rw4", *parse_range("10.3.0.0/29"), ())], MemoryLeaseStore())


def sharded(n: int = 2, unique: str = "no", relay: bool = True) -> ShardedOffice:
    gws = [IkeManager([gateway_settings(unique=unique, pools=("rw4",))], now=1000.0, attributes=_pools(),
                      shard=Shard(k, n)) for k in range(n)]
    return ShardedOffice(gws, relay=relay)


def same_user_twice(unique: str, *, first: int = 0, second: int = 1, n: int = 2,
                    initial_contact: bool = True) -> ShardedOffice:
    o = sharded(n, unique)
    o.up(o.add(0, first))
    c = o.add(0, second)  # the same identity (c0.test), a fresh engine: it sends INITIAL_CONTACT
    if not initial_contact:
        o.clients[c].ctx.add_contact("rw", GW, 999)  # it believes it has another SA: no INITIAL_CONTACT
    o.up(c)
    return o


# ------------------------------------------------------------------ the messages
def _claim(**kw: Any) -> Claim:
    base: dict[str, Any] = dict(rule=Rule.INITIAL_CONTACT, local=Identity.parse("gw.test"),
                                remote=Identity.parse("c0.test"), ike_sa_id=7, shard=1,
                                started_at=1000.25, established_at=1000.5)
    base.update(kw)
    return Claim(**base)


@pytest.mark.parametrize("remote", ["c0.test", "user@example.com", "192.0.2.7", "2001:db8::1",
                                    "C=CH, O=strongSwan, CN=carol", "%any"])
@pytest.mark.parametrize("rule", list(Rule))
def test_claim_round_trips_through_json(remote: str, rule: Rule) -> None:
    c = _claim(rule=rule, remote=Identity.parse(remote))
    back = decode_claim(wire(encode_claim(c)))
    assert back == c and str(back.remote) == str(c.remote) and hash(back.remote) == hash(c.remote)


def test_a_claim_from_the_wire_identity_matches_the_parsed_one() -> None:
    t, data = Identity.parse("c0.test").to_wire()
    c = _claim(remote=Identity.from_wire(int(t), data))
    assert decode_claim(wire(encode_claim(c))).remote == Identity.parse("c0.test")


@pytest.mark.parametrize("mangle", [
    lambda d: d.pop("rule"), lambda d: d.update(rule="evict"), lambda d: d.update(local="gw.test"),
    lambda d: d.update(remote=[2, "zz"]), lambda d: d.update(remote=[300, ""]), lambda d: d.update(remote=[True, ""]),
    lambda d: d.update(remote=[2, "00" * 5000]), lambda d: d.update(ike_sa_id=None), lambda d: d.update(started_at="x"),
])
def test_malformed_claims_are_refused(mangle: Callable[[dict[str, Any]], Any]) -> None:
    d = wire(encode_claim(_claim()))
    mangle(d)
    with pytest.raises(ValueError):
        decode_claim(d)
    with pytest.raises(ValueError):
        decode_claim([d])


def test_reply_round_trips_and_refuses_garbage() -> None:
    for r in (Reply(Outcome.NONE), Reply(Outcome.CLOSED, (3, 5)), Reply(Outcome.KEEP_OLDER, (2,))):
        assert decode_reply(wire(encode_reply(r))) == r
    for bad in ({"outcome": "maybe"}, {}, [], {"outcome": "none", "ike_sa_ids": ["x"]}):
        with pytest.raises(ValueError):
            decode_reply(bad)


# ------------------------------------------------------------------ the rules across shards
def test_initial_contact_on_another_shard_drops_the_old_sa_silently() -> None:
    o = same_user_twice("no")
    assert o.gws[0].list_sas() == [] and len(o.gws[1].list_sas()) == 1
    (closed,) = o.closed(0)
    assert closed.cause is Cause.REPLACED and closed.reason == IC_REASON
    assert o.client_closed(0) == []  # no Delete: the peer lost that SA (RFC 7296 2.4)
    assert o.gws[0].attributes.describe()[0]["online"] == 0  # type: ignore[union-attr]  # its lease is free
    assert o.closed(1) == []


def test_without_the_relay_the_old_sa_stays_on_its_shard() -> None:
    o = sharded(2, "no", relay=False)
    o.up(o.add(0, 0))
    o.up(o.add(0, 1))
    assert len(o.gws[0].list_sas()) == len(o.gws[1].list_sas()) == 1  # the gap this module closes


def test_initial_contact_on_the_same_shard_is_still_the_managers() -> None:
    o = same_user_twice("no", first=1, second=1)
    assert len(o.gws[1].list_sas()) == 1 and [c.reason for c in o.closed(1)] == [IC_REASON]


def test_no_initial_contact_and_unique_no_keep_both() -> None:
    o = same_user_twice("no", initial_contact=False)
    assert len(o.gws[0].list_sas()) == len(o.gws[1].list_sas()) == 1


def test_unique_never_ignores_initial_contact_across_shards() -> None:
    o = same_user_twice("never")
    assert len(o.gws[0].list_sas()) == len(o.gws[1].list_sas()) == 1


@pytest.mark.parametrize("initial_contact", [True, False])
def test_unique_replace_deletes_the_older_sa_on_the_other_shard(initial_contact: bool) -> None:
    o = same_user_twice("replace", initial_contact=initial_contact)
    assert o.gws[0].list_sas() == [] and len(o.gws[1].list_sas()) == 1
    (closed,) = o.closed(0)
    new_id = o.gws[1].list_sas()[0].ike_sa_id
    assert closed.cause is Cause.REPLACED and closed.reason == f"replaced by IKE SA {new_id} (unique: replace)"
    assert o.client_closed(0)[0].cause is Cause.DELETED_BY_PEER  # with a Delete: the first laptop hears it


def test_unique_keep_deletes_the_newcomer_on_the_other_shard() -> None:
    o = same_user_twice("keep")
    (old,) = o.gws[0].list_sas()
    assert old.state is IkeState.ESTABLISHED and len(old.children) == 1 and o.closed(0) == []
    assert o.gws[1].list_sas() == []
    (refused,) = o.closed(1)
    assert refused.cause is Cause.DUPLICATE and refused.established
    assert refused.reason == (f"cancelling the IKE SA: 'c0.test' already has IKE SA {old.ike_sa_id} "
                              "and connection rw has unique: keep")
    assert o.client_closed(1)[0].cause is Cause.DELETED_BY_PEER and o.client_closed(0) == []


@pytest.mark.parametrize("n,first,second", [(3, 0, 2), (3, 1, 2), (3, 2, 0), (3, 2, 1)])
def test_three_shards_claims_travel_through_the_primary(n: int, first: int, second: int) -> None:
    o = same_user_twice("no", first=first, second=second, n=n)
    assert [len(g.list_sas()) for g in o.gws] == [1 if k == second else 0 for k in range(n)]
    assert [c.reason for c in o.closed(first)] == [IC_REASON]


def test_replace_at_the_same_instant_on_two_shards_leaves_exactly_one() -> None:
    o = sharded(2, "replace", relay=False)
    a, b = o.add(0, 0), o.add(0, 1)
    o.clients[a].initiate("rw", o.now)
    o.clients[b].initiate("rw", o.now)
    o.pump()
    sa0, sa1 = o.gws[0].list_sas()[0], o.gws[1].list_sas()[0]
    assert sa0.established_at == sa1.established_at  # one clock: a tie, broken by the shard
    c0, c1 = claim_of(sa0, False, 0), claim_of(sa1, False, 1)
    assert c0 is not None and c1 is not None
    r1 = apply(o.gws[1], c0, o.now, 1)  # shard 1's SA is not older than shard 0's: it stays
    r0 = apply(o.gws[0], c1, o.now, 0)  # shard 0's is (tie: the lower shard): deleted
    assert r1 == Reply(Outcome.NONE) and r0 == Reply(Outcome.DELETED, (sa0.ike_sa_id,))
    o.pump()
    assert o.gws[0].list_sas() == [] and len(o.gws[1].list_sas()) == 1


def test_keep_at_the_same_instant_on_two_shards_refuses_exactly_one() -> None:
    o = sharded(2, "keep", relay=False)
    a, b = o.add(0, 0), o.add(0, 1)
    o.clients[a].initiate("rw", o.now)
    o.clients[b].initiate("rw", o.now)
    o.pump()
    sa0, sa1 = o.gws[0].list_sas()[0], o.gws[1].list_sas()[0]
    c0, c1 = claim_of(sa0, True, 0), claim_of(sa1, True, 1)
    assert c0 is not None and c1 is not None and c0.rule is c1.rule is Rule.KEEP
    assert apply(o.gws[1], c0, o.now, 1).outcome is Outcome.NONE  # shard 0's claim: keep it
    assert apply(o.gws[0], c1, o.now, 0) == Reply(Outcome.KEEP_OLDER, (sa0.ike_sa_id,))  # shard 1's must go


def test_no_claim_for_a_rekeyed_sa_an_initiator_under_keep_or_unique_no() -> None:
    o = same_user_twice("no", initial_contact=False)
    sa = o.gws[1].list_sas()[0]
    assert claim_of(sa, False, 1) is None
    sa.rekeyed_from = 1
    assert claim_of(sa, True, 1) is None
    client_sa = o.clients[1].list_sas()[0]
    client_sa.settings = dataclasses.replace(client_sa.settings, unique="keep")
    assert claim_of(client_sa, False, 0) is None  # UniqueCheck is the responder's


def test_a_claim_that_cannot_be_delivered_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    o = same_user_twice("no", initial_contact=False)
    relay = o.relays[1]

    async def broken(claim: dict[str, Any], origin: int) -> list[Any]:
        from ipsecd.dataplane.channel import DataPlaneError
        raise DataPlaneError("link to the primary closed")

    sa = o.gws[1].list_sas()[0]
    claim = claim_of(sa, True, 1)
    assert claim is not None
    asyncio.run(relay._claim(claim, broken))
    assert "did not answer its initial_contact claim" in caplog.text
    assert len(o.gws[0].list_sas()) == 1


def test_a_claim_over_a_real_shard_link() -> None:
    """The claimant's relay on one end of a ShardLink socketpair, the other shard's on the other."""
    import socket

    from ipsecd.shell.shards import ShardLink

    o = sharded(2, "no", relay=False)
    o.up(o.add(0, 1))  # the old SA, on shard 1
    c = o.add(0, 0)
    o.up(c)  # the new one, with INITIAL_CONTACT, on shard 0 (no relay yet: both still up)
    assert len(o.gws[0].list_sas()) == len(o.gws[1].list_sas()) == 1
    new = o.gws[0].list_sas()[0]
    claim = claim_of(new, True, 0)
    assert claim is not None and claim.rule is Rule.INITIAL_CONTACT

    async def run() -> list[Any]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        primary = ShardLink(a, {}, "shard 1")
        shard = ShardLink(b, {"claim": o.relays[1].on_claim}, "the primary")
        await primary.start()
        await shard.start()
        try:
            return [await primary.call("claim", claim=encode_claim(claim))]
        finally:
            primary.close()
            shard.close()

    (reply,) = asyncio.run(run())
    assert decode_reply(reply).outcome is Outcome.CLOSED
    o.pump()
    assert o.gws[1].list_sas() == [] and [c.reason for c in o.closed(1)] == [IC_REASON]
