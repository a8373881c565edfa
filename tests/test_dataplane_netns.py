"""The data plane for real: TUN devices, ESP sockets and netlink in network namespaces.

Two namespaces joined by veth (192.0.2.1 <-> 192.0.2.2), LAN addresses 10.1.0.1 and
10.2.0.1 on ``lo``; each runs a ``DataPlane`` with static test keys (tests/dp_static_peer.py),
no IKE. All namespaces are named ``ipd-dp-...`` and removed whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import select
import subprocess
from collections.abc import Iterator

import pytest

from tests.netns import Topology, topology_or_skip
from tests.netns_dp import PYTHON, ROOT, StaticPeer, dp_prefix, static_pair

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

TCP_BYTES = 4 * 1024 * 1024

# A TCP sink that reports how many bytes arrived and their SHA-256, then exits.
_SINK = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""
_SOURCE = """
import socket, sys
n = int(sys.argv[3]); block = bytes(range(256)) * 256
c = socket.create_connection((sys.argv[2], 5201), timeout=10, source_address=(sys.argv[1], 0))
sent = 0
while sent < n:
    k = min(len(block), n - sent); c.sendall(block[:k]); sent += k
c.close()
"""


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology_or_skip("pair", prefix=dp_prefix()) as t:
        yield t


def _tcp_transfer(topo: Topology, nbytes: int = TCP_BYTES) -> None:
    """Send ``nbytes`` over TCP from A's LAN address to B's and check length and digest."""
    proc = subprocess.Popen(topo.b.exec_argv([PYTHON, "-u", "-c", _SINK, topo.b_lan]), stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 10)[0], "sink did not start"
        assert proc.stdout.readline().strip() == "listening"
        topo.a.run([PYTHON, "-c", _SOURCE, topo.a_lan, topo.b_lan, str(nbytes)], timeout=30)
        assert select.select([proc.stdout], [], [], 15)[0], "sink did not finish"
        got, digest = proc.stdout.readline().split()
        block = bytes(range(256)) * 256
        h = hashlib.sha256()
        sent = 0
        while sent < nbytes:
            k = min(len(block), nbytes - sent)
            h.update(block[:k])
            sent += k
        assert int(got) == nbytes and digest == h.hexdigest()
    finally:
        proc.kill()
        proc.wait()


def test_reuseport_steering_on_this_kernel(topo: Topology) -> None:
    """IKE (non-ESP marker) reaches the socket bound first, ESP and keepalives the GRO socket."""
    for addr in ("127.0.0.1", topo.a_addr, "::1"):
        res = topo.a.run([PYTHON, "-m", "tests.netns_dp", "steer", addr], timeout=20, env={"PYTHONPATH": str(ROOT)})
        got = json.loads(res.stdout)
        assert got["ike"] == ["00000000"] * 5, (addr, got)
        assert got["worker"] == ["12345678"] * 5 + ["ff"], (addr, got)


@pytest.mark.parametrize("encap", [True, False], ids=["udp4500", "raw-esp"])
def test_tunnel_ping_tcp_and_bad_packets(topo: Topology, encap: bool) -> None:
    extra = [] if encap else ["--raw"]
    with static_pair(topo, *extra) as (a, b):
        assert a.ready["mtu"] == (1438 if encap else 1446)
        topo.a.ping(topo.b_lan, count=3, src=topo.a_lan, interval=0.1, deadline=5)
        _tcp_transfer(topo)
        before = b.counters()
        # hostile input into B's UDP 4500 / protocol 50
        inj = topo.a.run([PYTHON, "-m", "tests.dp_static_peer", "inject", "--side", "a", "--local", topo.a_addr,
                          "--remote", topo.b_addr, "--local-net", topo.a_lan_net, "--remote-net", topo.b_lan_net,
                          "--count", "3", *extra], env={"PYTHONPATH": str(ROOT)})
        sent = json.loads(inj.stdout)
        topo.a.ping(topo.b_lan, count=2, src=topo.a_lan, interval=0.1, deadline=5)  # still works
        after = b.counters()
        d0, d1 = before["global"]["drops"], after["global"]["drops"]

        def delta(reason: str) -> int:
            return int(d1.get(reason, 0)) - int(d0.get(reason, 0))

        assert delta("short") == sent["short"] + sent["short_esp"]
        assert delta("unknown_spi") == sent["unknown_spi"]
        assert delta("icv") == sent["bad_icv"]
        assert delta("replay") == sent["replay"]
        if encap:
            assert delta("ike_on_worker") == sent["ike_marker"]
        sa_in = next(v for v in after["sas"].values() if v["direction"] == "in")
        assert sa_in["packets"] > 100  # the TCP transfer went through the SA
        stats = after["global"]["stats"]
        if encap:
            assert stats.get("udp_gro_batches", 0) > 0, stats  # GRO really coalesced the TCP burst
            assert a.counters()["global"]["stats"]["udp_tx_sendmsg"] < sa_in["packets"]  # and GSO batched


def test_transport_mode_between_hosts(topo: Topology) -> None:
    with static_pair(topo, "--raw", mode="transport") as (a, b):
        topo.a.ping(topo.b_addr, count=3, interval=0.1, deadline=5)
        ca, cb = a.counters(), b.counters()
        out_a = next(v for v in ca["sas"].values() if v["direction"] == "out")
        in_b = next(v for v in cb["sas"].values() if v["direction"] == "in")
        assert out_a["packets"] >= 3 and in_b["packets"] >= 3


def test_routes_and_rules_removed_on_stop(topo: Topology) -> None:
    peer = StaticPeer(topo.a.name, ["--side", "a", "--local", topo.a_addr, "--remote", topo.b_addr,
                                    "--local-net", topo.a_lan_net, "--remote-net", topo.b_lan_net])
    try:
        peer.start()
        assert topo.b_lan_net in topo.a.run(["ip", "route", "show", "table", "220"]).stdout
        assert "lookup 220" in topo.a.run(["ip", "rule"]).stdout
    finally:
        peer.stop()
    assert topo.a.run(["ip", "route", "show", "table", "220"], check=False).stdout.strip() == ""
    assert "lookup 220" not in topo.a.run(["ip", "rule"]).stdout
    assert "ipsecdp0" not in topo.a.run(["ip", "link"]).stdout


def test_worker_crash_is_reported_and_cleans_up(topo: Topology) -> None:
    peer = StaticPeer(topo.a.name, ["--side", "a", "--local", topo.a_addr, "--remote", topo.b_addr,
                                    "--local-net", topo.a_lan_net, "--remote-net", topo.b_lan_net])
    try:
        peer.start()
        assert peer.command("killworker") == {"event": "WorkerExited", "running": False}
        # the TUN (and with it every route through it) died with the worker: no black hole
        assert "ipsecdp0" not in topo.a.run(["ip", "link"]).stdout
        assert topo.a.run(["ip", "route", "show", "table", "220"], check=False).stdout.strip() == ""
    finally:
        peer.stop()
