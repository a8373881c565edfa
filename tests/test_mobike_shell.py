"""The shell side of MOBIKE: AddressWatch turns the host's addresses and routes into engine calls.

The kernel lookups are replaced (``addresses``, ``source_for``); the engines are the fake-clock
pair of tests/test_mobike_pair.py, so a move it starts runs to the end in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipsecd.ike.manager import IkeManager
from ipsecd.shell.mobike import AddressWatch
from tests.ike_pair import A_ADDR, B_ADDR
from tests.test_mobike_pair import A2, Net, _net, _up


class _Shell:
    """What AddressWatch uses of IkeShell: the manager and ``act``."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.manager: IkeManager = net.a
        self.jobs = 0

    def act(self, job: Callable[[IkeManager, float], Any]) -> Any:
        self.jobs += 1
        return job(self.manager, self.net.now)


def test_route_change_moves_the_sa_and_addresses_reach_the_engine() -> None:
    net = _net()
    ia, ib = _up(net)
    routes = {B_ADDR: A_ADDR}
    shell = _Shell(net)
    watch = AddressWatch(shell, source_for=lambda peer: routes.get(peer, "0.0.0.0"))  # type: ignore[arg-type]
    watch.check([A_ADDR, A2])
    assert net.a.ctx.local_addresses == (A_ADDR, A2) and shell.jobs == 0  # the path is the best one already
    routes[B_ADDR] = A2  # the first uplink lost its route: the kernel now leaves from A2
    net.down.add(A_ADDR)
    watch.check([A2])
    assert shell.jobs == 1
    net.run_until_quiet(10)
    assert ia.local == (A2, 4500) and ib.remote == (A2, 4500)
    watch.check([A2])
    assert shell.jobs == 1  # nothing more to do


def test_virtual_ips_and_unrouted_peers_are_no_paths() -> None:
    from ipaddress import ip_address

    net = _net()
    ia, _ib = _up(net)
    ia.vips.local = [ip_address("10.3.0.5")]
    shell = _Shell(net)
    # the only route to the gateway goes through the tunnel (source: our virtual IP)
    watch = AddressWatch(shell, source_for=lambda peer: "10.3.0.5")  # type: ignore[arg-type]
    watch.check([A_ADDR, "10.3.0.5"])
    assert net.a.ctx.local_addresses == (A_ADDR,)  # a virtual IP is never advertised
    assert shell.jobs == 0 and ia.local[0] == A_ADDR
    assert watch.paths(B_ADDR, ("192.0.2.22",), {A_ADDR}) == []


def test_a_rekey_answered_before_the_move_sends_its_new_sa_to_the_new_address() -> None:
    """The installer holds a rekey responder's new outbound SA until the old one is deleted;
    a move meanwhile must re-aim it, or traffic goes to the old address once it is used."""
    import asyncio
    import dataclasses

    from ipsecd.ike.events import ChildSaEstablished, IkeSaMoved
    from tests.test_shell import FakeDataPlane, _shell, _until

    async def main() -> None:
        dp = FakeDataPlane()
        shell, _transport, installer = _shell(dp)
        net = _net()
        _up(net)
        ev = next(e for e in net.events_b if isinstance(e, ChildSaEstablished))
        rekeyed = dataclasses.replace(ev, spi_in=b"\x0a\x0b\x0c\x0d", spi_out=b"\x01\x01\x01\x01",
                                      rekeyed_spi_in=ev.spi_in, initiator=False)
        installer.on_event(rekeyed)
        await _until(lambda: ev.reqid in installer._pending_out)
        installer.on_event(IkeSaMoved(ev.ike_sa_id, ev.name, ev.local, ("198.51.100.7", 4500), (ev.reqid,)))
        await _until(lambda: str(installer._pending_out[ev.reqid].outbound.remote_addr) == "198.51.100.7")
        shell.close()

    asyncio.run(main())


def test_the_peers_current_address_is_preferred_to_probing_its_others() -> None:
    net = _net()
    ia, _ib = _up(net)
    ia.mobike.peer_addrs = ("192.0.2.22", "2001:db8::22")
    calls: list[list[tuple[str, str]]] = []
    shell = _Shell(net)
    shell.manager.roam = lambda i, paths, now: calls.append(list(paths)) or True  # type: ignore[method-assign]
    routes = {B_ADDR: A2, "192.0.2.22": A2, "2001:db8::22": "2001:db8::5"}
    watch = AddressWatch(shell, source_for=lambda peer: routes.get(peer, "0.0.0.0"))  # type: ignore[arg-type]
    watch.check([A2, "2001:db8::5"])
    assert calls == [[(A2, B_ADDR)]]  # a route to its current address: no probe of the others
    del routes[B_ADDR]
    watch.check([A2, "2001:db8::5"])
    assert calls[-1] == [(A2, "192.0.2.22"), ("2001:db8::5", "2001:db8::22")]
