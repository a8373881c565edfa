"""SA lifecycle between two ipsecd under real traffic: rekeys, lifetimes, DPD and peer restarts.

Unit tests drive the engine's timers with a fake clock; these run the real daemons
with short lifetimes in the pair topology and check what a user would notice: lost
pings, stalled TCP, SAs left behind after a rekey or a crash.  A (a.test) initiates,
B (b.test) responds unless a test says otherwise.

Durations are module constants so a longer soak (the issue asks for 60 s) is one
edit away; the defaults keep the whole file around a minute and a half.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import CommandFailed, Topology, iperf3, iperf3_interval_bytes, ping_counts, tcp_transfer

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

CONN = "peer"
CHILD = "net"
PSK = "lifecycle-test-psk-0123456789"
IKE = "aes256gcm16-prfsha256-ecp256"
ESP = "aes256gcm16"

# child rekey every ~5 s under load for the 60 s in `make bench` (IPSECD_SOAK=1); in `make test`
# every ~2.5 s for 15 s: as many rekeys (and collisions) in half the time
SOAK = os.environ.get("IPSECD_SOAK") == "1"
LOAD_SECONDS = 60 if SOAK else 15
# (rekey_time, rand_time) of A's and B's Child SA: A's rekey window inside B's
LOAD_REKEY_A, LOAD_REKEY_B = (("5s", "1s"), ("6s", "2s")) if SOAK else (("3s", "1s"), ("4s", "2s"))
PING_INTERVAL = 0.02
IPERF_RATE = "50M"  # well below what the tunnel carries on a 2-core CI machine
CHILD_REKEYED = rf"Child SA {CHILD} rekeyed"
# an established IKE SA closed because the peer stopped answering (ike_sa.py: "peer dead: ...")
PEER_DEAD = r"peer dead|peer is dead"

Make = Callable[..., Ipsecd]
Jsonish = dict[str, Any]


# ------------------------------------------------------------------------- helpers
def _configs(t: Topology, *, a_child: Jsonish | None = None, b_child: Jsonish | None = None,
             a_conn: Jsonish | None = None, b_conn: Jsonish | None = None,
             b_initiates: bool = False) -> tuple[Jsonish, Jsonish]:
    """A's and B's config documents; ``*_child``/``*_conn`` add lifecycle keys to one side."""
    a = ipsecd_config(
        name=CONN, local_addrs=[t.a_addr], remote_addrs=[t.b_addr], local_id="a.test", remote_id="b.test",
        psk=PSK, proposals=[IKE], **(a_conn or {}),
        children={CHILD: child_config(local_ts=[t.a_lan_net], remote_ts=[t.b_lan_net], esp_proposals=[ESP],
                                      start_action="start", **(a_child or {}))})
    b = ipsecd_config(
        name=CONN, local_addrs=[t.b_addr], remote_addrs=[t.a_addr] if b_initiates else "%any",
        local_id="b.test", remote_id="a.test", psk=PSK, proposals=[IKE], **(b_conn or {}),
        children={CHILD: child_config(local_ts=[t.b_lan_net], remote_ts=[t.a_lan_net], esp_proposals=[ESP],
                                      start_action="start" if b_initiates else "none", **(b_child or {}))})
    return a, b


def _pair(make: Make, t: Topology, **kw: Any) -> tuple[Ipsecd, Ipsecd]:
    """Start B, then A, and wait until both report the Child SA installed."""
    a_cfg, b_cfg = _configs(t, **kw)
    b = make(t.b, b_cfg, name="b")
    a = make(t.a, a_cfg, name="a")
    a.wait_established(15, child=CHILD)
    b.wait_established(15, child=CHILD)
    return a, b


def _snapshot(d: Ipsecd) -> tuple[list[Jsonish], list[Jsonish]]:
    """(IKE SAs, all their Child SAs) as the daemon reports them right now."""
    sas = d.list_sas()
    return sas, [c for ike in sas for c in ike["child_sas"]]


def _settled(a: Ipsecd, b: Ipsecd, timeout: float) -> tuple[Jsonish, Jsonish]:
    """Wait for a moment where each side has one IKE SA with one installed child, mirrored.

    Mid-rekey a side legitimately holds two Child SAs (or IKE SAs) for a moment, so
    this polls; on timeout the assertion shows both last views.
    """
    end = time.monotonic() + timeout
    while True:
        (ike_a, kids_a), (ike_b, kids_b) = _snapshot(a), _snapshot(b)
        if (len(ike_a) == len(ike_b) == 1 and len(kids_a) == len(kids_b) == 1
                and ike_a[0]["state"] == ike_b[0]["state"] == "ESTABLISHED"
                and kids_a[0]["state"] == kids_b[0]["state"] == "INSTALLED"
                and (ike_a[0]["spi_i"], ike_a[0]["spi_r"]) == (ike_b[0]["spi_i"], ike_b[0]["spi_r"])
                and kids_a[0]["spi_in"] == kids_b[0]["spi_out"] and kids_a[0]["spi_out"] == kids_b[0]["spi_in"]):
            return ike_a[0], ike_b[0]
        if time.monotonic() > end:
            raise AssertionError(f"SAs not settled to one mirrored pair within {timeout}s\n"
                                 f"A: {ike_a}\nB: {ike_b}\n{a.log_tail(30)}\n{b.log_tail(30)}")
        time.sleep(0.1)


def _ping_ok(t: Topology, count: int = 3) -> None:
    """A few pings both ways through the tunnel, every one answered."""
    for ns, src, dst in ((t.a, t.a_lan, t.b_lan), (t.b, t.b_lan, t.a_lan)):
        res = ns.ping(dst, count=count, src=src, interval=0.1, deadline=5, check=False)
        assert ping_counts(res.stdout) == (count, count), f"{src} -> {dst}: {res.stdout}{res.stderr}"


def _wait_for(pred: Callable[[], bool], timeout: float, what: str, *daemons: Ipsecd) -> float:
    """Poll ``pred`` until true; returns the seconds it took, or fails with the daemons' logs."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            tails = "\n".join(d.log_tail(30) for d in daemons)
            raise AssertionError(f"{what}: not within {timeout}s\n{tails}")
        time.sleep(0.1)
    return time.monotonic() - start


def _tunnel_up(t: Topology) -> Callable[[], bool]:
    def probe() -> bool:
        return t.a.ping(t.b_lan, count=1, src=t.a_lan, deadline=1, check=False).returncode == 0
    return probe


# ------------------------------------------------------------------------- tests
@pytest.mark.timeout(LOAD_SECONDS + 60)
def test_child_rekey_under_load(topology: Topology, ipsecd_factory: Make, tmp_path: Path) -> None:
    """Child SAs rekeyed every ~5 s (~2.5 s in `make test`) by both ends lose no ping and never stall a TCP stream.

    A's rekey window (4-5 s; 2-3 s) is inside B's (4-6 s; 2-4 s), so either side can be first and
    rekey collisions happen now and then; make-before-break must hide all of it.
    life_time is generous: this is about rekeying, not about hard expiry racing it.
    iperf3 is capped at IPERF_RATE: at full speed the tunnel's queues drop an
    occasional ping even without any rekey (measured: 5 of 1000 in 20 s), and that
    congestion loss is not what this test is about.
    """
    t = topology
    a, b = _pair(ipsecd_factory, t,
                 a_child={"rekey_time": LOAD_REKEY_A[0], "rand_time": LOAD_REKEY_A[1], "life_time": "15s"},
                 b_child={"rekey_time": LOAD_REKEY_B[0], "rand_time": LOAD_REKEY_B[1], "life_time": "15s"})
    first = a.list_sas()[0]["child_sas"][0]["spi_in"]

    count = int(LOAD_SECONDS / PING_INTERVAL)
    ping_log = tmp_path / "ping.log"
    ping = t.a.popen(["ping", "-n", "-q", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "2",
                      "-I", t.a_lan, t.b_lan], ping_log)
    spis: set[str] = {first}
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(iperf3, t.b, t.b_lan, t.a, t.a_lan, seconds=LOAD_SECONDS, bitrate=IPERF_RATE)
        while not stream.done():  # sample SPIs meanwhile: rekeys must really change them
            spis.update(c["spi_in"] for c in _snapshot(a)[1])
            time.sleep(0.5)
        run = stream.result()
    ping.wait(timeout=30)
    sent, got = ping_counts(ping_log.read_text())

    rekeys = a.log_count(CHILD_REKEYED)
    by_a, by_b = a.log_count(r"rekeying Child SA"), b.log_count(r"rekeying Child SA")
    print(f"{rekeys} child rekeys (A started {by_a}, B started {by_b}), {len(spis)} SPIs seen, "
          f"ping {got}/{sent}, iperf3 {run.received} bytes, {run.retransmits} retransmits")
    assert sent == count and got == sent, f"lost {sent - got} of {sent} pings during {rekeys} rekeys"
    per_second = iperf3_interval_bytes(run)
    assert len(per_second) >= LOAD_SECONDS - 1 and all(n > 0 for n in per_second), per_second
    assert rekeys >= 4 and len(spis) >= 5, (rekeys, spis)
    assert b.log_count(CHILD_REKEYED) == rekeys, "A and B disagree on the number of rekeys"
    _settled(a, b, timeout=8)
    _ping_ok(t)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rekeyer", ["a", "b"], ids=["initiator-rekeys", "responder-rekeys"])
def test_ike_sa_rekey(topology: Topology, ipsecd_factory: Make, rekeyer: str) -> None:
    """An IKE SA rekey (by either end) gives new IKE SPIs and keeps the Child SA and its traffic."""
    t = topology
    short = {"rekey_time": "5s", "rand_time": "1s", "over_time": "10s"}  # 4-5 s: after the first snapshot
    a, b = _pair(ipsecd_factory, t, **{f"{rekeyer}_conn": short})
    before, _ = _settled(a, b, timeout=5)
    kid_before = before["child_sas"][0]
    rekeyed = a if rekeyer == "a" else b

    _wait_for(lambda: rekeyed.log_count(r"IKE SA rekeyed") >= 1, 12, "IKE SA rekey", a, b)
    after, after_b = _settled(a, b, timeout=5)
    assert (after["spi_i"], after["spi_r"]) != (before["spi_i"], before["spi_r"]), (before, after)
    assert after["initiator"] is (rekeyer == "a") and after_b["initiator"] is (rekeyer == "b"), (after, after_b)
    kid = after["child_sas"][0]
    assert (kid["spi_in"], kid["spi_out"]) == (kid_before["spi_in"], kid_before["spi_out"]), (kid_before, kid)
    _ping_ok(t)
    assert a.log_count(r"Child SA .* (established|rekeyed)") == 1, a.log_tail()


@pytest.mark.timeout(60)
def test_dpd_restart_after_peer_killed(topology: Topology, ipsecd_factory: Make) -> None:
    """dpd_action restart: a SIGKILLed responder is declared dead, and the tunnel comes back with it.

    DPD probes after dpd_delay (1 s) of silence; with retransmits 0.5 s, 0.75 s, 1.125 s
    the probe is given up after ~2.4 s (dpd_timeout 6 s caps it anyway).  The daemon then
    re-initiates 5 s (RESTART_DELAY) after the dead peer; keyingtries 0 (what a tunnel that
    must come back by itself uses) keeps that initiation trying if B is slow to start.
    """
    t = topology
    dpd = {"dpd_delay": "1s", "dpd_timeout": "6s", "retransmit": {"tries": 2, "timeout": 0.5, "base": 1.5},
           "keyingtries": 0}
    a, b = _pair(ipsecd_factory, t, a_conn=dpd, a_child={"dpd_action": "restart"})
    old, _ = _settled(a, b, timeout=5)
    _ping_ok(t, count=2)

    b.kill()
    took = _wait_for(lambda: a.log_count(PEER_DEAD) >= 1, 2 + 6 + 5, "A declares B dead", a)
    print(f"peer declared dead {took:.1f}s after the kill")
    assert all(s["spi_i"] != old["spi_i"] for s in a.list_sas()), a.list_sas()  # the dead SA is gone

    b.start()
    took = _wait_for(_tunnel_up(t), 5 + 6, "tunnel back after B restarted", a, b)
    print(f"tunnel back {took:.1f}s after B restarted")
    _settled(a, b, timeout=5)
    _ping_ok(t)


@pytest.mark.timeout(120)
def test_dpd_spared_while_esp_arrives(topology: Topology, ipsecd_factory: Make) -> None:
    """A peer we hear ESP from is not probed (RFC 7296 2.4): the daemon's traffic watch (GetHeard
    every 5 s) moves the DPD deadline; once the ESP stops, DPD probes after dpd_delay."""
    t = topology
    a_cfg, b_cfg = _configs(t, a_conn={"dpd_delay": "8s"})
    a_cfg["settings"] = {"log_level": "debug"}  # the probe's "checking liveness" line is at debug
    b = ipsecd_factory(t.b, b_cfg, name="b")
    a = ipsecd_factory(t.a, a_cfg, name="a")
    a.wait_established(15, child=CHILD)
    b.wait_established(15, child=CHILD)
    _settled(a, b, timeout=5)
    probes = a.log_count("checking liveness")
    # ESP from B to A for 17 s, more than twice dpd_delay: A hears its peer the whole time
    res = t.b.ping(t.a_lan, count=100, src=t.b_lan, interval=0.17, deadline=30, check=False)
    sent, got = ping_counts(res.stdout)
    assert sent == 100 and got >= 95, res.stdout
    assert a.log_count("checking liveness") == probes, a.log_tail(30)
    took = _wait_for(lambda: a.log_count("checking liveness") > probes, 8 + 5 + 10, "A probes a silent peer", a)
    print(f"first probe {took:.1f}s after the ESP stopped")


@pytest.mark.timeout(60)
def test_both_initiate_then_responder_restarts(topology: Topology, ipsecd_factory: Make) -> None:
    """Both ends start_action start: one IKE SA survives the simultaneous start, and a restarted B
    (state lost, no DPD) replaces A's stale SA through INITIAL_CONTACT."""
    t = topology
    quick = {"retransmit": {"tries": 3, "timeout": 1.0, "base": 1.5}}
    a_cfg, b_cfg = _configs(t, b_initiates=True, a_conn=quick, b_conn=quick)
    b = ipsecd_factory(t.b, b_cfg, name="b", start=False)
    a = ipsecd_factory(t.a, a_cfg, name="a", start=False)
    with ThreadPoolExecutor(2) as pool:  # start together so the two IKE_SA_INITs cross
        for f in [pool.submit(a.start), pool.submit(b.start)]:
            f.result()
    first, _ = _settled(a, b, timeout=15)
    print(f"duplicates resolved: A {a.log_count('duplicates one')}, B {b.log_count('duplicates one')}")
    _ping_ok(t, count=2)

    b.kill()
    b.start()
    _wait_for(lambda: any((s["spi_i"], s["spi_r"]) != (first["spi_i"], first["spi_r"]) for s in a.list_sas()),
              10, "A sees the restarted B's new IKE SA", a, b)
    now, _ = _settled(a, b, timeout=15)
    assert (now["spi_i"], now["spi_r"]) != (first["spi_i"], first["spi_r"])
    assert a.log_count(r"INITIAL_CONTACT") >= 1, a.log_tail()
    _ping_ok(t)


@pytest.mark.timeout(60)
def test_rekey_bytes(topology: Topology, ipsecd_factory: Make) -> None:
    """rekey_bytes 2M on both ends: an 8 MiB TCP transfer rekeys at least twice and arrives intact.

    The worker checks volume limits every 0.25 s, and unpaced the transfer is over in
    well under a second, so it is paced at 2 MiB/s: each SA then crosses its limit
    while it is watched.  life_bytes is set far above so a rekey racing the hard limit
    is not what is tested.
    """
    t = topology
    vol = {"rekey_bytes": "2M", "rand_bytes": 0, "life_bytes": "64M"}
    a, b = _pair(ipsecd_factory, t, a_child=vol, b_child=vol)
    nbytes = 8 * 1024 * 1024
    assert tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, nbytes, timeout=30, rate=2 * 1024 * 1024) == nbytes
    rekeys = a.log_count(CHILD_REKEYED)
    assert rekeys >= 2, a.log_tail()
    assert re.search(r"reached its bytes soft limit", a.log_text() + b.log_text()), a.log_tail()
    _settled(a, b, timeout=8)
    _ping_ok(t)


@pytest.mark.timeout(60)
def test_rekey_bytes_default_life_bytes_fast_stream(topology: Topology, ipsecd_factory: Make) -> None:
    """rekey_bytes with the default life_bytes must rekey, not expire, however fast the data comes.

    With default life_bytes the gap between soft and hard limit is 10 % (here
    0.1-0.2 MB); at 8 MiB/s the worker's 0.25 s check sees 2 MiB more each time, so
    it almost always finds both limits crossed at once.  Kernel IPsec checks per
    packet and always rekeys first; ipsecd should at least send the soft event too.
    """
    t = topology
    a, _ = _pair(ipsecd_factory, t, a_child={"rekey_bytes": "1M"})
    nbytes = 8 * 1024 * 1024
    try:
        moved = tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, nbytes, timeout=5, rate=8 * 1024 * 1024)
    except (CommandFailed, subprocess.TimeoutExpired) as e:
        moved = -1
        print(f"transfer failed: {str(e)[:200]}")
    kids = _snapshot(a)[1]
    assert a.log_count(r"hard limit") == 0 and moved == nbytes and kids, \
        f"moved {moved}, children left {kids}\n{a.log_tail(20)}"
    assert a.log_count(CHILD_REKEYED) >= 2, a.log_tail()
