"""Two IKE managers wired back to back in memory, with a fake clock and a lossy "network"."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network

from ipsecd.iana import ProtocolId
from ipsecd.identity import Identity
from ipsecd.ike.events import Event
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.proposal import parse_proposals
from ipsecd.ike.settings import ChildSettings, IkeSettings, RetransmitSettings, TsSpec

A_ADDR, B_ADDR = "192.0.2.1", "192.0.2.2"


def make_settings(name: str = "conn", *, local_id: str = "a.test", remote_id: str = "b.test",
                  psk: bytes = b"correct horse battery staple", ike: Sequence[str] = ("aes256gcm16-prfsha256-ecp256",),
                  esp: Sequence[str] = ("aes256gcm16",), local_ts: Sequence[str] = ("10.1.0.0/24",),
                  remote_ts: Sequence[str] = ("10.2.0.0/24",), mode: str = "tunnel",
                  local_addrs: Sequence[str] = (A_ADDR,), remote_addrs: Sequence[str] = (B_ADDR,),
                  tries: int = 3, force_encap: bool = False) -> IkeSettings:
    me_id, peer_id = Identity.parse(local_id), Identity.parse(remote_id)

    def psk_lookup(me: Identity, peer: Identity) -> bytes | None:
        return psk if me_id.matches(me) and peer_id.matches(peer) else None

    def spec(t: str) -> TsSpec:
        return TsSpec(None) if t == "dynamic" else TsSpec(ip_network(t))

    child = ChildSettings("net", tuple(spec(t) for t in local_ts), tuple(spec(t) for t in remote_ts),
                          tuple(parse_proposals(list(esp), ProtocolId.ESP)), mode=mode)
    return IkeSettings(name, tuple(parse_proposals(list(ike), ProtocolId.IKE)), me_id,
                       peer_id, (child,), psk_lookup, tuple(local_addrs), tuple(remote_addrs),
                       retransmit=RetransmitSettings(tries=tries, timeout=1.0, base=2.0), force_encap=force_encap)


Filter = Callable[[int, bytes, str], bool]  # (index of datagram, data, "a->b"/"b->a") -> deliver?


@dataclass
class Pair:
    a: IkeManager
    b: IkeManager
    now: float = 1000.0
    deliver: Filter = field(default=lambda i, d, direction: True)
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    events_a: list[Event] = field(default_factory=list)
    events_b: list[Event] = field(default_factory=list)

    def pump(self, max_rounds: int = 200, horizon: float = 600.0) -> None:
        """Move datagrams and fire timers until nothing is due within ``horizon`` seconds.

        Established SAs always keep lifetime timers (rekey hours ahead), so "no timer
        at all" never happens once a pair is up; the horizon bounds the wait instead.
        """
        for _ in range(max_rounds):
            moved = self._move()
            if moved:
                continue
            timers = [t for t in (self.a.get_timer(), self.b.get_timer())
                      if t is not None and t <= self.now + horizon]
            if not timers:
                return
            self.now = max(self.now, min(timers))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
        raise AssertionError("pair did not settle")

    def run_until_quiet(self, seconds: float = 20.0) -> None:
        """Like pump, but stops once time has advanced ``seconds`` (idle SAs keep timers)."""
        end = self.now + seconds
        for _ in range(500):
            if self._move():
                continue
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None and t <= end]
            if not timers:
                return
            self.now = max(self.now, min(timers))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)

    def advance(self, seconds: float) -> None:
        """run_until_quiet, then let the clock reach the end even if no timer was due."""
        end = self.now + seconds
        self.run_until_quiet(seconds)
        self.now = max(self.now, end)

    def _move(self) -> bool:
        moved = False
        for src, dst, tag in ((self.a, self.b, "a->b"), (self.b, self.a, "b->a")):
            for data, local, remote, _ in src.datagrams_to_send():
                moved = True
                idx = len(self.sent)
                self.sent.append((tag, data))
                if self.deliver(idx, data, tag):
                    dst.receive_datagram(data, remote, local, self.now)
        for mgr, sink in ((self.a, self.events_a), (self.b, self.events_b)):
            while (ev := mgr.next_event()) is not None:
                sink.append(ev)
        return moved


def make_settings_b(**kw: object) -> IkeSettings:
    """B's mirror image of make_settings()'s defaults."""
    args: dict[str, object] = dict(local_id="b.test", remote_id="a.test", local_ts=("10.2.0.0/24",),
                                   remote_ts=("10.1.0.0/24",), local_addrs=(B_ADDR,), remote_addrs=(A_ADDR,))
    args.update(kw)
    return make_settings(**args)  # type: ignore[arg-type]


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """Deterministic SPIs, nonces and jitter: lets a test pick which side wins a nonce race."""
    r = random.Random(seed)
    return r.randbytes


def make_pair(sa: IkeSettings | None = None, sb: IkeSettings | None = None, *, seed: int | None = None,
              **kw: object) -> Pair:
    sa = sa or make_settings()
    sb = sb or make_settings_b()
    if seed is None:
        a = IkeManager([sa], now=1000.0)
        b = IkeManager([sb], now=1000.0)
    else:
        a = IkeManager([sa], now=1000.0, rng=seeded_rng(seed))
        b = IkeManager([sb], now=1000.0, rng=seeded_rng(seed + 10_000))
    return Pair(a, b, **kw)  # type: ignore[arg-type]
