"""Address pools with two IKE shards (settings.ike_shards: 2), with real packets.

B is a gateway with one IPv4 pool and two IKE processes; A runs PEERS road-warrior
connections (distinct identities, each asking for a virtual IP). The kernel spreads them
over B's shards; each shard leases its own share of the pool (pools.py: offsets equal to
its index modulo 2), so every client gets a distinct address whose parity names the shard
that holds its SA. Both shards route the pool's one prefix into the TUN (each shard's
routes are written by the primary and held for it): traffic flows from every virtual IP,
``list-pools`` adds up both shards' leases, and the leases survive in the one lease file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, why_no_ipsecd
from tests.netns import Topology, ping_counts

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PEERS = 10  # all on one shard by chance with probability 2 / 2**10
PSK = "shards-pools-psk-0123456789"
IKE, ESP = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
POOL_FIRST = ip_address("10.3.0.1")
Make = Callable[..., Ipsecd]


def _configs(t: Topology, lease_db: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    a: dict[str, Any] = {"connections": {}, "secrets": {"ike": []}}
    for k in range(PEERS):
        a["connections"][f"c{k}"] = {
            "remote_addrs": [t.b_addr], "proposals": [IKE], "vips": ["0.0.0.0"],
            "local": {"auth": "psk", "id": f"rw{k}.test"}, "remote": {"auth": "psk", "id": "gw.test"},
            "children": {f"lan{k}": child_config(local_ts=["dynamic"], remote_ts=[f"10.2.{k}.1/32"],
                                                 esp_proposals=[ESP], start_action="start")}}
        a["secrets"]["ike"].append({"id": [f"rw{k}.test", "gw.test"], "secret": PSK})
    b: dict[str, Any] = {
        "settings": {"ike_shards": 2, "lease_db": str(lease_db)},
        "pools": {"rw4": {"addrs": "10.3.0.0/24", "dns": "10.2.0.53"}},
        "connections": {"rw": {
            "local_addrs": [t.b_addr], "remote_addrs": "%any", "proposals": [IKE], "pools": ["rw4"],
            "local": {"auth": "psk", "id": "gw.test"}, "remote": {"auth": "psk", "id": "%any"},
            "children": {"lan": child_config(local_ts=["10.2.0.0/16"], remote_ts=["dynamic"],
                                             esp_proposals=[ESP])}}},
        "secrets": {"ike": [{"id": ["gw.test", "%any"], "secret": PSK}]}}
    return a, b


def _wait(pred: Callable[[], bool], timeout: float, what: str, *daemons: Ipsecd) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout}s\n" + "\n".join(d.log_tail(40) for d in daemons))
        time.sleep(0.2)


def _shard_of(sa: dict[str, Any]) -> int:
    return int(sa["spi_r"][:2], 16) % 2  # B responded: its SPIr's first octet names the shard


@pytest.mark.timeout(120)
def test_pools_with_two_shards(topology: Topology, tmp_path: Path, ipsecd_factory: Make) -> None:
    t = topology
    for k in range(1, PEERS):  # 10.2.0.1 is the topology's own
        t.b.run(["ip", "addr", "add", f"10.2.{k}.1/32", "dev", "lo"])
    lease_db = tmp_path / "gw-state" / "leases.db"
    a_cfg, b_cfg = _configs(t, lease_db)
    b = ipsecd_factory(t.b, b_cfg, name="b")
    _wait(lambda: b.log_count(r"IKE shard 1 of 2 started") >= 1, 15, "shard 1 started", b)
    a = ipsecd_factory(t.a, a_cfg, name="a")

    def up() -> bool:
        sas = b.list_sas()
        return len(sas) == PEERS and all(s["state"] == "ESTABLISHED" and len(s["child_sas"]) == 1
                                         and s["child_sas"][0]["state"] == "INSTALLED" for s in sas) \
            and len(a.list_sas()) == PEERS
    _wait(up, 40, "every client up", a, b)

    sas = b.list_sas()
    shards = [_shard_of(s) for s in sas]
    print(f"clients per shard: {shards.count(0)} on shard 0, {shards.count(1)} on shard 1")
    assert 0 in shards and 1 in shards, sas
    vips = [ip_address(s["remote_vips"][0]) for s in sas]
    assert len(set(vips)) == PEERS, vips
    for s, vip in zip(sas, vips, strict=True):  # each shard leased from its own share of the pool
        assert (int(vip) - int(POOL_FIRST)) % 2 == _shard_of(s), (s["spi_r"], vip)

    pools = json.loads(b.ctl("list-pools", "--leases", "--json").stdout)["pools"]
    (rw4,) = pools
    assert rw4["online"] == PEERS and rw4["offline"] == 0, rw4
    assert sorted(ip_address(x["address"]) for x in rw4["leases"]) == sorted(vips)

    # traffic from every client's virtual IP, over whichever shard holds its SA
    by_id = {s["remote_id"]: ip_address(s["remote_vips"][0]) for s in sas}
    for k in range(PEERS):
        src = str(by_id[f"rw{k}.test"])
        res = t.a.ping(f"10.2.{k}.1", count=2, src=src, interval=0.1, deadline=5, check=False)
        assert ping_counts(res.stdout) == (2, 2), f"client {k} ({src}): {res.stdout}{res.stderr}"

    # one route for the pool in B's table, whichever shard's SAs need it
    routes = t.b.run(["ip", "-4", "route", "show", "table", "220"]).stdout
    assert routes.count("10.3.0.0/24") == 1, routes

    a.stop()
    _wait(lambda: not b.list_sas(), 20, "B's SAs gone with the clients", b)
    pools = json.loads(b.ctl("list-pools", "--json").stdout)["pools"]
    assert pools[0]["online"] == 0 and pools[0]["offline"] == PEERS, pools
    b.stop()
    rows = sqlite3.connect(lease_db).execute("SELECT address, identity FROM leases").fetchall()
    assert sorted(ip_address(r[0]) for r in rows) == sorted(vips), rows
