"""A shard's own control link to the data-plane worker (shell/shard_dataplane.py, worker.py
``ControlLinks``) and the jobs that stay with the primary (routes, the TUN's MTU)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any

import pytest

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.channel import DataPlaneError
from ipsecd.dataplane.client import DataPlaneOptions
from ipsecd.dataplane.netconf import NetConf, ShardRoutes
from ipsecd.dataplane.udp import bind_udp
from ipsecd.dataplane.worker import Worker
from ipsecd.esp.spd import Action, Policy, Selector
from ipsecd.shell.shard_dataplane import ShardDataPlane
from ipsecd.shell.shards import ShardLink, _route_args, dataplane_handlers
from tests.dp_static_peer import static_params


@contextmanager
def worker_with_links(shards: int) -> Iterator[tuple[Worker, socket.socket, list[socket.socket]]]:
    """An in-process worker: the daemon's control socket and ``shards`` shard sockets (our ends)."""
    ctrl_w, ctrl = socket.socketpair()
    pairs = [socket.socketpair() for _ in range(shards)]
    tun_w, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (ctrl_w, ctrl, tun_w, tun, *(x for p in pairs for x in p)):
        s.setblocking(False)
    udp = bind_udp("127.0.0.1", 0, reuseport=False, gro=True, buffer_size=1 << 20)
    w = Worker(ctrl_w, tun_w.fileno(), [udp], [], m.WorkerConfig(tun_name="fake"),
               shard_controls=[a for a, _ in pairs])
    w.start()
    try:
        yield w, ctrl, [b for _, b in pairs]
    finally:
        w._epoll.close()
        for s in (ctrl_w, ctrl, tun_w, tun, udp, *(x for p in pairs for x in p)):
            s.close()


def frames(sock: socket.socket) -> list[m.Message]:
    dec, out = m.FrameDecoder(), []
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += dec.feed(data)


def sa(reqid: int, spi_in: int, spi_out: int, remote_net: str = "10.2.0.0/24") -> m.InstallSa:
    sa_in, sa_out, _ = static_params("a", "127.0.0.1", "127.0.0.2", "10.1.0.0/24", remote_net, encap=True)
    sa_in = dataclasses.replace(sa_in, spi=spi_in)
    sa_out = dataclasses.replace(sa_out, spi=spi_out)
    pol = Policy(Selector.from_prefix("10.1.0.0/24"), Selector.from_prefix(remote_net), Action.PROTECT, sa_ref=reqid)
    return m.InstallSa(reqid, sa_in, sa_out, (pol,), 1400, m.Lifetime())


def test_each_link_gets_its_own_replies_and_events_go_to_the_daemon() -> None:
    with worker_with_links(1) as (w, daemon, (shard,)):
        assert isinstance(frames(daemon)[0], m.Hello) and isinstance(frames(shard)[0], m.Hello)
        # the same request id on both links: each answer goes back where its request came from
        shard.sendall(m.encode(dataclasses.replace(sa(2, 0x02000001, 0x02000002), id=5)))
        for _ in range(3):
            w.step(0.01)
        daemon.sendall(m.encode(m.GetCounters(id=5)))
        for _ in range(3):
            w.step(0.01)
        assert frames(shard) == [m.Ack(5)]
        (counters,) = frames(daemon)
        assert isinstance(counters, m.Counters) and counters.id == 5
        assert {s.spi for s in counters.sas} == {0x02000001, 0x02000002}
        # a batch on a shard's link is acked on that link, as one BatchAck
        batch = m.Batch((dataclasses.replace(sa(4, 0x02000003, 0x02000004), id=1), m.DeleteSa(2, (), id=2)))
        shard.sendall(m.encode(batch))
        w.step(0.01)
        (ack,) = frames(shard)
        assert isinstance(ack, m.BatchAck) and [a.id for a in ack.acks] == [1, 2] and all(a.ok for a in ack.acks)
        assert frames(daemon) == []
        # an event produced while a shard's request is handled still goes to the daemon
        links = w._link
        links.current = links.shards[0]
        links.send(m.LifetimeReached(4, 0x02000003, "in", "soft", "bytes", 1, 1))
        links.current = links.primary
        assert frames(shard) == [] and [type(x) for x in frames(daemon)] == [m.LifetimeReached]
        # a shard that goes away is forgotten; the worker goes on serving the daemon
        shard.close()
        w.step(0.01)
        assert w.running and links.shards == []
        daemon.sendall(m.encode(m.GetCounters(id=6)))
        w.step(0.01)
        (c2,) = frames(daemon)
        assert isinstance(c2, m.Counters) and {s.spi for s in c2.sas} == {0x02000003, 0x02000004}


def test_a_bad_frame_on_a_shards_link_drops_that_link_only() -> None:
    with worker_with_links(1) as (w, daemon, (shard,)):
        frames(daemon), frames(shard)
        shard.sendall(b"\x00\x00\x00\x05junk!")
        w.step(0.01)
        assert w.running and w._link.shards == []
        assert [type(x) for x in frames(shard)] == [m.WorkerError]


@dataclass
class RecordingNetConf(NetConf):
    """The primary's NetConf without netlink: what it would write and delete."""

    written: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    mtus: list[int] = field(default_factory=list)

    def write_routes(self, writes: Any) -> None:
        self.written += list(writes)

    def delete_routes(self, gone: Any, keep_going: bool = False) -> None:
        self.deleted += list(gone)

    def set_mtu(self, mtu: int) -> None:
        self.mtus.append(mtu)


class PrimaryDataPlane:
    """What dataplane_handlers asks of the primary's DataPlane."""

    def __init__(self) -> None:
        self.tun_name = "ipsec-test"
        self.netconf = RecordingNetConf("ipsec-test", ifindex=77)
        self.link_mtu = 1400

    async def set_link_mtu(self, mtu: int) -> None:
        self.link_mtu = mtu
        self.netconf.set_mtu(mtu)


def test_shard_installs_on_its_own_channel_and_routes_through_the_primary() -> None:
    primary_dp = PrimaryDataPlane()
    nc = primary_dp.netconf
    # the primary routes the same prefix for one of its own SAs
    own = Policy(Selector.from_prefix("10.1.0.0/24"), Selector.from_prefix("10.2.0.0/24"), Action.PROTECT, sa_ref=1)
    nc.write_routes(nc.claim_routes(1, [own], 1400)[1])
    assert len(nc.written) == 1

    with worker_with_links(1) as (w, daemon, (shard_sock,)):
        frames(daemon)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                w.step(0.005)

        t = threading.Thread(target=serve)
        t.start()
        try:
            async def main() -> dict[str, Any]:
                one, two = socket.socketpair()
                primary = ShardLink(one, dataplane_handlers(lambda: primary_dp), "shard 1")
                link = ShardLink(two, {}, "the primary")
                await primary.start()
                await link.start()
                dp = ShardDataPlane(link, shard_sock, DataPlaneOptions(path_mtu=1500), 1)
                await dp.start()
                assert dp.netconf.ifindex == 77 and dp.netconf.tun_name == "ipsec-test"
                a, b = sa(2, 0x02000011, 0x02000012), sa(4, 0x02000013, 0x02000014)
                # two Child SAs of this shard on one prefix (concurrently: one Batch to the worker)
                mtus = await asyncio.gather(
                    dp.install_child_sa(a.inbound, a.outbound, 2, a.policies),
                    dp.install_child_sa(b.inbound, b.outbound, 4, b.policies))
                c = sa(6, 0x02000015, 0x02000016, "10.3.0.0/24")
                await dp.install_child_sa(c.inbound, c.outbound, 6, c.policies)
                counters = await dp.counters()
                await dp.delete_child_sa(2)
                await dp.delete_child_sa(6)
                held_after_one = set(nc._owned.get(ShardRoutes(1), set()))
                await dp.delete_child_sa(4)
                await dp.stop()
                primary.close()
                link.close()
                return {"mtus": mtus, "counters": counters, "held": held_after_one}

            out = asyncio.run(main())
        finally:
            stop.set()
            t.join()
    assert out["mtus"][0] == out["mtus"][1] and 1300 < out["mtus"][0] < 1500
    assert {"02000011", "02000012", "02000013", "02000014", "02000015"} <= set(out["counters"]["sas"])
    # the TUN's MTU was asked of the primary once (the SAs' MTU differs from its 1400)
    assert nc.mtus == [max(out["mtus"][0], 1280)]
    # routes: 10.2.0.0/24 once for the shard's two SAs (already the primary's: held, written again
    # with the shard's MTU), 10.3.0.0/24 once; its delete went to the kernel, 10.2.0.0/24 stays
    dsts = [r["dst"] for r in nc.written]
    assert dsts == ["10.2.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]
    assert [r["dst"] for r in nc.deleted] == ["10.3.0.0/24"]
    assert out["held"] == {(ip_network("10.2.0.0/24"), 220)}
    assert ShardRoutes(1) not in nc._owned and nc._routes[(ip_network("10.2.0.0/24"), 220)] == {1}
    # the primary's own SA goes: now the route goes too
    assert [r["dst"] for r in nc.release_routes(1)] == ["10.2.0.0/24"]


def test_malformed_route_requests_are_refused() -> None:
    ok = {"dst": "10.2.0.0/24", "oif": 3, "table": 220, "metrics": {"mtu": 1400}, "prefsrc": "10.1.0.1", "x": 1}
    assert _route_args(ok) == {"dst": "10.2.0.0/24", "oif": 3, "table": 220, "metrics": {"mtu": 1400},
                               "prefsrc": "10.1.0.1"}
    with pytest.raises(DataPlaneError):
        _route_args({"dst": "10.2.0.0/24"})
    with pytest.raises(ValueError):
        _route_args({"dst": "not a prefix", "oif": 3, "table": 220, "metrics": {"mtu": 1}})
