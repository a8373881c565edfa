"""The work per datagram and per timer does not grow with the number of SAs held (issue 11).

A gateway holds thousands of IKE SAs of one connection, many from one NAT address.
The same handshake (and the timer work around it) is run against a manager holding
10 and one holding 20,000 such SAs, and the Python function calls the manager makes
are counted (not timed: counts are exact and do not depend on the machine's load).
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from ipsecd.identity import Identity
from ipsecd.ike import lifetimes
from ipsecd.ike.child_sa import ChildSa
from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.manager import IkeManager
from tests.ike_pair import A_ADDR, B_ADDR, make_pair, make_settings, make_settings_b


def _template_child() -> ChildSaEstablished:
    pair = make_pair(seed=1)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    return next(e for e in pair.events_b if isinstance(e, ChildSaEstablished))


def _gateway(n: int, template: ChildSaEstablished) -> IkeManager:
    """A responder holding ``n`` established IKE SAs (one Child SA each) of one connection,
    every one from the same NAT address as the test's initiator."""
    rnd = random.Random(7)
    mgr = IkeManager([make_settings_b(remote_id="%any")], now=1000.0, rng=random.Random(9).randbytes)
    conn = mgr.connections[0]
    for i in range(n):
        sa = IkeSa(conn, mgr.ctx.alloc_ike_id(), False, (B_ADDR, 4500), (A_ADDR, 10000 + i), 1000.0, ctx=mgr.ctx)
        sa.spi_i = rnd.randbytes(8)
        sa.begin_responder(sa.spi_i, sa.local, sa.remote)
        sa.state = IkeState.ESTABLISHED
        sa.established_at = 1000.0
        sa.remote_identity = Identity.parse(f"client{i}.example")
        lifetimes.arm_ike(sa)
        mgr.table.add(sa)
        mgr.table.route(sa.spi_r, sa)
        mgr.table.index(sa, IkeSaEstablished(sa.ike_sa_id, conn.name))
        ev = dataclasses.replace(template, ike_sa_id=sa.ike_sa_id, spi_in=rnd.randbytes(4), spi_out=rnd.randbytes(4))
        child = ChildSa(ev, settings=conn.children[0], established_at=1000.0)
        lifetimes.arm_child(sa, child)
        sa.children.add(child)
        mgr.table.index(sa, ev)
        mgr.table.timers.set(sa.ike_sa_id, sa.get_timer())
    return mgr


def _count_calls(job: Callable[[], None]) -> int:
    calls = 0

    def prof(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(prof)
    try:
        job()
    finally:
        sys.setprofile(None)
    return calls


def test_per_datagram_work_is_flat_from_10_to_20000_sas() -> None:
    template = _template_child()
    small, large = _gateway(10, template), _gateway(20_000, template)
    assert len(large.sas) == 20_000
    work_small = _run_handshake(small)
    work_large = _run_handshake(large)
    assert work_small > 100  # a handshake really ran
    # the same handshake, the same calls (a few log-size heap steps aside)
    assert work_large <= work_small * 1.05, (work_small, work_large)


def _run_handshake(mgr: IkeManager) -> int:
    """A complete handshake against ``mgr``; returns the calls the gateway made."""
    client = IkeManager([make_settings(remote_id="b.test")], now=1000.0, rng=random.Random(3).randbytes)
    client.initiate("conn", 1000.0)
    total = 0
    for _ in range(2):
        (req,) = client.datagrams_to_send()
        answers: list[Any] = []

        def feed(req: Any = req, answers: list[Any] = answers) -> None:
            mgr.receive_datagram(req.data, (B_ADDR, 500), (A_ADDR, 500), 1000.0)
            mgr.get_timer()
            mgr.handle_timer(1000.0)  # nothing due: must not look at every SA
            while mgr.next_event() is not None:
                pass
            answers.extend(mgr.datagrams_to_send())

        total += _count_calls(feed)
        for d in answers:
            client.receive_datagram(d.data, (A_ADDR, 500), (B_ADDR, 500), 1000.0)
    assert any(sa.state == IkeState.ESTABLISHED for sa in client.list_sas())
    return total


def test_the_count_notices_a_scan() -> None:
    """The instrument works: a walk over every SA (what get_timer() used to do) shows up."""
    template = _template_child()
    small, large = _gateway(10, template), _gateway(2_000, template)

    def scan(mgr: IkeManager) -> int:
        return _count_calls(lambda: [sa.get_timer() for sa in mgr.sas.values()])

    assert scan(large) > 100 * scan(small) / 10
