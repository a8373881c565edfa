"""Installing a Child SA costs no netlink call when a route already serves it (issue 11).

A login storm of road warriors (virtual IPs from a pool) or of clients proposing the same
inner host must not write a route per SA: routes are claimed in memory and only a new or
changed route is written. The path MTU is looked up as the worker's marked sockets send,
so a host-to-host SA (its remote selector covers the peer) cannot shrink the next SA's MTU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from ipaddress import IPv4Network, ip_address, ip_network
from typing import Any

import pytest

from ipsecd.dataplane import netconf
from ipsecd.dataplane.netconf import NetConf, TrapRoutes
from ipsecd.esp.spd import Selector
from ipsecd.pools import parse_range, pool_addrs
from ipsecd.settings_from_config import protect_policies
from ipsecd.shell.installer import ChildSaInstaller
from tests.netns import topology_or_skip
from tests.netns_dp import PYTHON, ROOT, dp_prefix

LAN = [Selector.from_prefix("10.2.0.0/24")]
POOL = (IPv4Network("10.3.0.0/24"),)


class _FakeIpr:
    def __init__(self, log: list[tuple[str, str, int]]) -> None:
        self.log = log

    def route(self, op: str, **kw: Any) -> None:
        self.log.append((op, str(kw["dst"]), int(kw.get("metrics", {}).get("mtu", 0))))


@pytest.fixture
def nl(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """Every netlink route call any NetConf makes in this test."""
    log: list[tuple[str, str, int]] = []

    @contextlib.contextmanager
    def fake() -> Iterator[_FakeIpr]:
        yield _FakeIpr(log)

    monkeypatch.setattr(netconf, "_ipr", fake)
    return log


def _host(reqid: int, remote: str) -> list[Any]:
    return protect_policies(reqid, LAN, [Selector.from_prefix(remote)])


def test_clients_proposing_the_same_host_share_one_route(nl: list[tuple[str, str, int]]) -> None:
    nc = NetConf("tun", ifindex=7)
    for reqid in range(1, 201):
        nc.add_routes(reqid, _host(reqid, "10.1.0.1/32"), 1400)
    assert nl == [("replace", "10.1.0.1/32", 1400)]  # one write for 200 Child SAs
    for reqid in range(1, 200):
        nc.remove_routes(reqid)
    assert len(nl) == 1  # still claimed by reqid 200
    nc.remove_routes(200)
    assert nl[-1] == ("del", "10.1.0.1/32", 0) and not nc.route_owners()


def test_a_pool_route_serves_every_virtual_ip(nl: list[tuple[str, str, int]]) -> None:
    nc = NetConf("tun", ifindex=7)
    for i in range(1, 101):
        added = nc.add_routes(i, _host(i, f"10.3.0.{i}/32"), 1400, cover=POOL)
        assert added == [POOL[0]]
    nc.add_routes(500, _host(500, "10.9.0.1/32"), 1400, cover=POOL)  # outside the pool: its own route
    assert nl == [("replace", "10.3.0.0/24", 1400), ("replace", "10.9.0.1/32", 1400)]
    nc.add_routes(101, _host(101, "10.3.0.101/32"), 1380, cover=POOL)  # a client behind a smaller path MTU
    nc.add_routes(102, _host(102, "10.3.0.102/32"), 1420, cover=POOL)  # a bigger one changes nothing
    assert nl[2:] == [("replace", "10.3.0.0/24", 1380)]
    for i in range(1, 103):
        nc.remove_routes(i)
    assert nl[-1] == ("del", "10.3.0.0/24", 0)
    assert nc.routed_reqids() == {500}


def test_a_trap_and_many_sas_claim_without_scans(nl: list[tuple[str, str, int]]) -> None:
    """Releasing one owner touches only its own routes (an index, not a walk over all routes)."""
    nc = NetConf("tun", ifindex=7)
    for i in range(1, 2001):
        nc.add_routes(i, _host(i, f"10.{i // 250}.{i % 250}.1/32"), 1400)
    nc.add_routes(9, _host(9, "10.200.0.0/16"), 1400, owner=TrapRoutes(9))
    assert len(nc._owned[1]) == 1 and len(nc.route_owners()) == 2001
    assert nc.release_routes(1) == [dict(dst="10.0.1.1/32", oif=7, table=220, metrics={"mtu": 1400})]
    nc.remove_routes(9)
    assert TrapRoutes(9) in nc.route_owners() and 9 not in nc.routed_reqids()
    nc.cleanup()
    assert sum(1 for op, _, _ in nl if op == "del") == 2000 and not nc.route_owners()


class _Conn:
    pools = ("rw", "gone")


class _Pool:
    addrs = (ip_address("10.3.0.0"), ip_address("10.3.1.9"))
    routed = ()  # a PoolConfig made without the config parser: the range is routed exactly


class _Config:
    connections = {"rw": _Conn()}
    pools = {"rw": _Pool()}


def test_the_installer_offers_the_connection_pools_as_route_cover() -> None:
    inst = ChildSaInstaller.__new__(ChildSaInstaller)
    inst.config = lambda: _Config  # type: ignore[assignment,return-value]
    inst._covers = (None, {})
    got = inst._pool_prefixes("rw")
    assert got == (ip_network("10.3.0.0/24"), ip_network("10.3.1.0/29"), ip_network("10.3.1.8/31"))
    assert inst._pool_prefixes("rw") is got  # worked out once per configuration
    assert inst._pool_prefixes("other") == ()


def test_a_subnet_pool_is_routed_as_the_subnet_a_range_exactly() -> None:
    def routed(text: str) -> list[str]:
        return [str(n) for n in pool_addrs(text)[1]]

    assert routed("10.3.0.0/29") == ["10.3.0.0/29"]  # serves .1-.6, routed whole
    assert routed("fd00:3::/120") == ["fd00:3::/120"]
    assert routed("10.3.0.1-10.3.0.6") == ["10.3.0.1/32", "10.3.0.2/31", "10.3.0.4/31", "10.3.0.6/32"]
    assert pool_addrs("10.3.0.0/29")[0] == parse_range("10.3.0.0/29")


# A route into a TUN-like device covering the peer's own address, the rule the data plane
# installs (``not fwmark MARK lookup 220``): the marked lookup must still see the real link.
_PMTU = """
import json, sys
from ipaddress import ip_address
from ipsecd.dataplane.netconf import NetConf, path_mtu
nc = NetConf("tund0", mark=0x2E5C)
peer = ip_address(sys.argv[1])
async def run():
    return await nc.run(nc.path_mtu, peer), await nc.run(nc.path_mtu, peer)
import asyncio
marked = asyncio.run(run())
print(json.dumps({"marked": list(marked), "unmarked": path_mtu(peer)}))
"""


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_path_mtu_is_looked_up_past_our_own_tunnel_routes() -> None:
    with topology_or_skip("pair", prefix=dp_prefix()) as topo:
        a = topo.a
        a.run(["ip", "link", "add", "tund0", "type", "veth", "peer", "name", "tund1"])  # a stand-in TUN
        a.run(["ip", "link", "set", "tund1", "up"])
        a.run(["ip", "link", "set", "tund0", "mtu", "1400", "up"])
        a.run(["ip", "rule", "add", "not", "fwmark", "0x2e5c/0x2e5c", "lookup", "220", "pref", "220"])
        a.run(["ip", "route", "add", f"{topo.b_addr}/32", "dev", "tund0", "table", "220"])
        out = a.run([PYTHON, "-c", _PMTU, topo.b_addr], env={"PYTHONPATH": str(ROOT)}).stdout
        got = json.loads(out.strip().splitlines()[-1])
        link = int(a.run(["cat", f"/sys/class/net/{topo.a_if}/mtu"]).stdout)
        assert got["unmarked"] == 1400  # what main did: the previous SA's TUN route
        assert got["marked"] == [link, link] and link > 1400


def test_netconf_run_keeps_one_socket_in_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[object] = []

    class _Sock:
        def __init__(self) -> None:
            opened.append(self)
            self.closed = False

        def route(self, op: str, **kw: Any) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(netconf, "IPRoute", _Sock)

    async def main() -> None:
        nc = NetConf("tun", ifindex=7)
        for i in range(1, 51):
            _, writes = nc.claim_routes(i, _host(i, f"10.1.{i}.1/32"), 1400)
            await nc.run(nc.write_routes, writes)
        assert len(opened) == 1
        await nc.close()
        assert opened[0].closed  # type: ignore[attr-defined]

    asyncio.run(main())


def test_concurrent_installs_share_one_path_mtu_lookup() -> None:
    from ipsecd.dataplane.client import DataPlane

    calls: list[object] = []

    def lookup(remote: object) -> int:
        calls.append(remote)
        if len(calls) == 2:
            raise OSError("netlink hiccup")
        return 1500

    async def main() -> None:
        dp = DataPlane()
        dp.netconf.path_mtu = lookup  # type: ignore[method-assign]
        peer, other = ip_address("192.0.2.2"), ip_address("192.0.2.3")
        got = await asyncio.gather(*(dp._path_mtu(peer) for _ in range(50)))
        assert got == [1500] * 50 and calls == [peer]  # one lookup for a storm's 50 installs
        assert await dp._path_mtu(peer) == 1500 and len(calls) == 1  # cached
        with pytest.raises(OSError):
            await dp._path_mtu(other)
        assert await dp._path_mtu(other) == 1500 and len(calls) == 3  # a failure is not cached
        await dp.netconf.close()

    asyncio.run(main())


def test_a_route_that_failed_to_write_is_written_by_the_next_sa(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first SA's route write fails (that SA fails, IKE deletes it); the second SA of the
    same prefix must not take the route for granted."""
    from ipsecd.dataplane.client import DataPlane

    writes: list[str] = []

    def write(batch: list[dict[str, Any]]) -> None:
        writes.append(batch[0]["dst"])
        if len(writes) == 1:
            raise OSError(22, "Invalid argument")

    async def main() -> None:
        dp = DataPlane()
        dp.netconf.ifindex = 7
        dp.netconf.write_routes = write  # type: ignore[method-assign]
        with pytest.raises(OSError):
            await dp._write_routes(dp.netconf.claim_routes(1, _host(1, "10.1.0.1/32"), 1400)[1])
        await dp._write_routes(dp.netconf.claim_routes(2, _host(2, "10.1.0.1/32"), 1400)[1])
        assert writes == ["10.1.0.1/32", "10.1.0.1/32"]
        await dp._write_routes(dp.netconf.claim_routes(3, _host(3, "10.1.0.1/32"), 1400)[1])
        assert len(writes) == 2  # written now: the third SA shares it
        await dp.netconf.close()

    asyncio.run(main())
