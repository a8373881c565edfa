"""Two ipsecd daemons with ``settings.dataplane.workers: 2`` each, real IKE: Child SAs rekeyed
every 2-4 s by both ends under ping and TCP load.

Each rekey gives the Child SA a new inbound SPI, which picks its owner worker afresh
(dataplane/handoff.py): about half the rekeys move the pair to the other worker, as
make-before-break (the new inbound SA first, then the new outbound SA, then ``SetOwner`` stops
the old owner sending; the old inbound SA stays until IKE deletes it). Nothing may be lost:
every ping answered, the TCP stream never stalls, no replay or unknown-SPI drops beyond
what the old SAs' last packets explain, and both workers of each side carried traffic.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.ipsecd_proc import Ipsecd, why_no_ipsecd
from tests.netns import Topology, iperf3, iperf3_interval_bytes, ping_counts
from tests.netns_tests.test_lifecycle_two_ipsecd import CHILD, CHILD_REKEYED, IPERF_RATE, Make, _configs, _settled

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

SECONDS = 15  # A rekeys every 2-3 s, B every 2-4 s: as many rekeys (and SPIs) as 24 s at 3-5 s gave
PING_INTERVAL = 0.02


def _dataplane(d: Ipsecd) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(d.ctl("stats", "--json").stdout)["dataplane"])


@pytest.mark.timeout(SECONDS + 90)
def test_child_rekeys_with_two_workers_lose_nothing(topology: Topology, ipsecd_factory: Make, tmp_path: Path) -> None:
    t = topology
    a_cfg, b_cfg = _configs(t, a_child={"rekey_time": "3s", "rand_time": "1s", "life_time": "15s"},
                            b_child={"rekey_time": "4s", "rand_time": "2s", "life_time": "15s"})
    for cfg in (a_cfg, b_cfg):
        cfg["settings"] = {"dataplane": {"workers": 2}}
    b = ipsecd_factory(t.b, b_cfg, name="b")
    a = ipsecd_factory(t.a, a_cfg, name="a")
    a.wait_established(20, child=CHILD)
    b.wait_established(20, child=CHILD)

    count = int(SECONDS / PING_INTERVAL)
    ping_log = tmp_path / "ping.log"
    ping = t.a.popen(["ping", "-n", "-q", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "2",
                      "-I", t.a_lan, t.b_lan], ping_log)
    spis: set[str] = set()
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(iperf3, t.b, t.b_lan, t.a, t.a_lan, seconds=SECONDS, bitrate=IPERF_RATE)
        while not stream.done():
            spis.update(c["spi_in"] for ike in a.list_sas() for c in ike["child_sas"])
            time.sleep(0.5)
        run = stream.result()
    ping.wait(timeout=30)
    sent, got = ping_counts(ping_log.read_text())
    rekeys = a.log_count(CHILD_REKEYED)
    owners = {int(s, 16) % 2 for s in spis}
    print(f"{rekeys} rekeys, {len(spis)} SPIs (owners {sorted(owners)}), ping {got}/{sent}, "
          f"iperf3 {run.received} bytes")
    assert sent == count and got == sent, f"lost {sent - got} of {sent} pings during {rekeys} rekeys"
    per_second = iperf3_interval_bytes(run)
    assert len(per_second) >= SECONDS - 1 and all(n > 0 for n in per_second), per_second
    assert rekeys >= 3 and owners == {0, 1}, (rekeys, spis)  # the pair really moved between workers
    _settled(a, b, timeout=8)
    for d in (a, b):
        dp = _dataplane(d)
        assert len(dp["workers"]) == 2, dp
        # each worker owned the pair for some rekey generations and sent ESP then (raw ESP here: no NAT)
        sent_by = [w["stats"].get("raw_tx_packets", 0) + w["stats"].get("udp_tx_packets", 0) for w in dp["workers"]]
        assert all(n > 0 for n in sent_by), dp["workers"]
        for bad in ("replay", "handoff_error", "icv", "internal_error"):
            assert dp["drops"].get(bad, 0) == 0, dp["drops"]


@pytest.mark.timeout(90)
def test_trap_with_two_workers(topology: Topology, ipsecd_factory: Make) -> None:
    """start_action trap with two workers on A: the first packets hit the trap in whichever
    worker's TUN queue read them (each worker may acquire; IKE starts one negotiation), the
    queued packets go to the owner once the SA is installed (SetOwner), and traffic flows."""
    t = topology
    a_cfg, b_cfg = _configs(t)
    a_cfg["connections"]["peer"]["children"][CHILD]["start_action"] = "trap"
    for cfg in (a_cfg, b_cfg):
        cfg["settings"] = {"dataplane": {"workers": 2}}
    b = ipsecd_factory(t.b, b_cfg, name="b")
    a = ipsecd_factory(t.a, a_cfg, name="a")
    time.sleep(0.5)
    assert not a.list_sas(), "a trap must not start the IKE SA by itself"
    res = t.a.ping(t.b_lan, count=10, src=t.a_lan, interval=0.2, deadline=15, check=False)
    sent, got = ping_counts(res.stdout)
    assert got >= sent - 2, res.stdout  # the first ones may wait in the trap queue or be lost to its bounds
    a.wait_established(15, child=CHILD)
    b.wait_established(15, child=CHILD)
    dp = _dataplane(a)
    assert len(dp["workers"]) == 2 and dp["drops"].get("handoff_error", 0) == 0, dp
    gc_figures = json.loads(a.ctl("stats", "--json").stdout)["gc"]  # each process's collector, by name
    assert set(gc_figures) == {"ike-0", "worker-0", "worker-1"}, gc_figures
    res = t.a.ping(t.b_lan, count=5, src=t.a_lan, interval=0.1, deadline=5, check=False)
    assert ping_counts(res.stdout) == (5, 5), res.stdout
