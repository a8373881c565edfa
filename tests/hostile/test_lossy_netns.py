"""Handshakes, rekeys and traffic through a lossy, reordering path (issue 13, tests/lossy_relay.py).

The ``lossy`` layout puts a userspace relay between A and B that drops 20 % of the IKE
and ESP frames in each direction and holds back 10 % by 50 ms so later ones overtake
them (ping on the outer path is untouched, so the path itself comes up). A (a.test)
initiates, B (b.test) responds. What a user would notice is checked: SAs that do
come up and rekey, SPIs both ends agree on, traffic that keeps flowing, and no SA
deleted by a lifetime because its rekey could not get through.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ipsecd.config import RetransmitConfig
from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Netns, Topology, ping_counts, tcp_transfer, topology_or_skip
from tests.strongswan import Charon, ChildParams, ConnParams

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

CONN, CHILD = "peer", "net"
PSK = "lossy-path-psk-0123456789"
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
LOSS, REORDER = 0.2, 0.1
HARD_LIFETIME = r"reached its hard lifetime"
# retransmit fast so a test is tens of seconds, not minutes; the schedule is still RFC 7296 2.1 back-off
QUICK_RETRANSMIT = {"timeout": 1.0, "base": 1.5, "tries": 8}

Jsonish = dict[str, Any]
MakeIpsecd = Callable[..., Ipsecd]
MakeCharon = Callable[..., Charon]


def _pair(make: MakeIpsecd, t: Topology, *, a_conn: Jsonish, a_child: Jsonish, b_conn: Jsonish | None = None,
          b_child: Jsonish | None = None, timeout: float = 40) -> tuple[Ipsecd, Ipsecd]:
    a = make(t.a, ipsecd_config(
        name=CONN, local_addrs=[t.a_addr], remote_addrs=[t.b_addr], local_id="a.test", remote_id="b.test", psk=PSK,
        proposals=[IKE], **a_conn,
        children={CHILD: child_config(local_ts=[t.a_lan_net], remote_ts=[t.b_lan_net], esp_proposals=[ESP],
                                      start_action="start", **a_child)}), name="a", start=False)
    b = make(t.b, ipsecd_config(
        name=CONN, local_addrs=[t.b_addr], remote_addrs="%any", local_id="b.test", remote_id="a.test", psk=PSK,
        proposals=[IKE], **(b_conn or {}),
        children={CHILD: child_config(local_ts=[t.b_lan_net], remote_ts=[t.a_lan_net], esp_proposals=[ESP],
                                      **(b_child or {}))}), name="b")
    a.start()
    a.wait_established(timeout, child=CHILD)
    b.wait_established(timeout, child=CHILD)
    return a, b


def _wait(pred: Callable[[], bool], timeout: float, what: str, *logs: Ipsecd | Charon) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout}s\n" + "\n".join(d.log_tail(40) for d in logs))
        time.sleep(0.2)


def _ping_series(ns: Netns, src: str, dst: str, seconds: float, interval: float, log: Path) -> Any:
    return ns.popen(["ping", "-n", "-c", str(int(seconds / interval)), "-i", str(interval), "-W", "1", "-I", src,
                     dst], log)


_REPLY = re.compile(r"icmp_seq=(\d+)")


def longest_outage(ping_output: str, count: int, interval: float) -> float:
    """Seconds of the longest run of unanswered pings in ``ping`` output (a lost ping is a gap)."""
    got = sorted({int(m) for m in _REPLY.findall(ping_output)})
    edges = [0, *got, count + 1]
    return max((b - a - 1) for a, b in itertools.pairwise(edges)) * interval


def _ping_some(t: Topology, count: int = 40) -> int:
    """``count`` pings A -> B through the tunnel; how many were answered (each way crosses the loss).

    Without -w: with a deadline, ping keeps sending until ``count`` replies arrive.
    """
    res = t.a.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "1", "-I", t.a_lan, t.b_lan],
                  check=False, timeout=count * 0.05 + 15)
    sent, got = ping_counts(res.stdout)
    assert sent == count, res.stdout
    return got


def _assert_relay_harmed(t: Topology) -> Jsonish:
    stats = t.relay_stats()
    for kind in ("ike", "esp"):
        selected, dropped = stats["by_kind"].get(kind, [0, 0])
        assert selected > 0 and dropped > 0, f"the relay never dropped {kind}: {stats}"
    assert stats["reordered"] > 0, stats
    return stats


# ------------------------------------------------------------------------- two ipsecd
@pytest.mark.timeout(180)
def test_two_ipsecd_establish_rekey_and_carry_traffic_through_loss(ipsecd_factory: MakeIpsecd) -> None:
    """20 % loss + 10 % reordering: IKE_SA_INIT/IKE_AUTH, Child SA rekeys, an IKE SA rekey, and traffic.

    The IKE SA rekeys after 8-10 s, the Child SA every 3-4 s: two Child SA rekeys fall due
    before the IKE SA rekey, which may queue behind one still retransmitting.
    """
    with topology_or_skip("lossy", loss=LOSS, reorder=REORDER, seed=11) as t:
        a, b = _pair(ipsecd_factory, t,
                     a_conn={"rekey_time": "10s", "rand_time": "2s", "over_time": "30s",
                             "retransmit": QUICK_RETRANSMIT},
                     a_child={"rekey_time": "4s", "rand_time": "1s", "life_time": "40s"},
                     b_conn={"retransmit": QUICK_RETRANSMIT})
        _wait(lambda: a.log_count(r"IKE SA rekeyed") >= 1 and a.log_count(r"Child SA .* rekeyed") >= 2, 90,
              "an IKE SA rekey and two Child SA rekeys", a, b)
        answered = _ping_some(t)
        moved = tcp_transfer(t.b, t.b_lan, t.a, t.a_lan, 100_000, timeout=60)
        stats = _assert_relay_harmed(t)
        print(f"relay: {stats}; pings answered {answered}/40; TCP moved {moved} bytes")
        assert answered >= 10, f"only {answered}/40 pings answered through 20 % loss each way"
        assert moved == 100_000
        assert a.log_count(HARD_LIFETIME) == b.log_count(HARD_LIFETIME) == 0, a.log_tail() + b.log_tail()
        sa_a, sa_b = a.list_sas(), b.list_sas()
        assert any(s["state"] == "ESTABLISHED" and s["child_sas"] for s in sa_a), sa_a
        assert any(s["state"] == "ESTABLISHED" and s["child_sas"] for s in sa_b), sa_b


# Issue 13: "an IKE SA must not hit its hard lifetime because its rekey was queued behind
# retransmitting exchanges (seen under 20 % loss with rekey_time: 25s: the IKE SA was deleted
# at rekey_time + over_time and the tunnel was down ~10 s)".
ISSUE_REKEY_TIME = 25  # over_time then defaults to 10 %: 2.5 s; the first retransmission waits 4 s
# The mechanism needs only over_time (10 % of rekey_time by default) shorter than the first
# retransmission (RetransmitConfig().timeout, 4 s), i.e. rekey_time < 40 s: the deterministic
# test and `make test`'s random-loss run use shorter ones, to reach the rekey sooner.
QUEUED_REKEY_TIME = 14
SHORT_REKEY_TIME = 10
PING_INTERVAL = 0.2
MAX_OUTAGE = 5.0  # 25 pings in a row lost to random 20 % loss each way: p = 0.36**25, never

def _run_pings(t: Topology, seconds: float, log: Path) -> float:
    """Ping A -> B through the tunnel for ``seconds``; the longest outage seen."""
    count = int(seconds / PING_INTERVAL)
    ping = _ping_series(t.a, t.a_lan, t.b_lan, seconds, PING_INTERVAL, log)
    ping.wait(timeout=seconds + 30)
    return longest_outage(log.read_text(), count, PING_INTERVAL)


@pytest.mark.timeout(120)
def test_ike_sa_rekey_queued_behind_a_retransmitting_exchange(ipsecd_factory: MakeIpsecd, tmp_path: Path) -> None:
    """The issue's mechanism, made deterministic: the Child SA rekey request just before the IKE SA rekey is lost.

    rand_time 0 pins the timers: the Child SA rekeys at 13 s, the IKE SA at 14 s, the
    hard lifetime is 15.4 s (over_time: the default 10 %). The relay harms IKE only and
    drops exactly the fifth IKE frame (after IKE_SA_INIT and IKE_AUTH: the Child SA
    rekey request), so that exchange is still waiting for its first retransmission
    (17 s) when the IKE SA rekey falls due and when its hard lifetime passes. Neither SA
    may die of its lifetime, the tunnel must stay up. (The issue's rekey_time 25 s gives
    24, 25, 27.5 and 28 s: the same order.) The pings stop 12 s after the rekey, before
    the new IKE SA's own rekey (~31 s), so exactly one IKE SA rekey is expected.
    """
    rekey = QUEUED_REKEY_TIME
    # the lost request's first retransmission comes after the IKE SA's hard lifetime
    assert rekey - 1 + RetransmitConfig().timeout > rekey * 1.1
    with topology_or_skip("lossy", loss=0.0, reorder=0.0, match="ike", drop=(4,)) as t:
        a, _ = _pair(ipsecd_factory, t, a_conn={"rekey_time": f"{rekey}s", "rand_time": "0s"},
                     a_child={"rekey_time": f"{rekey - 1}s", "rand_time": "0s", "life_time": "60s"})
        outage = _run_pings(t, rekey + 12, tmp_path / "ping.log")
        stats = t.relay_stats()
        print(f"longest outage {outage:.1f}s, relay {stats}")
        # the fifth IKE frame is A's first request after IKE_AUTH: the Child SA rekey
        assert stats["dropped"] == 1 and a.log_count(r"rekeying Child SA") >= 1, f"{stats}\n{a.log_tail()}"
        assert a.log_count(HARD_LIFETIME) == 0, f"the IKE SA reached its hard lifetime\n{a.log_tail(40)}"
        assert outage < MAX_OUTAGE, f"tunnel down for {outage:.1f}s\n{a.log_tail(40)}"
        assert a.log_count(r"IKE SA rekeyed") == 1


# three IKE SA lifetimes: the issue's rekey_time 25 s in `make bench` (IPSECD_SOAK=1); in `make test`
# SHORT_REKEY_TIME (over_time 1 s, still far below the first retransmission's 4 s)
SOAK = os.environ.get("IPSECD_SOAK") == "1"
LOSS_REKEY_TIME = ISSUE_REKEY_TIME if SOAK else SHORT_REKEY_TIME
ISSUE_SECONDS = 3 * LOSS_REKEY_TIME


@pytest.mark.timeout(ISSUE_SECONDS + 120)
def test_ike_sa_lifetime_under_random_loss(ipsecd_factory: MakeIpsecd, tmp_path: Path) -> None:
    """The issue's settings: rekey_time 25s (10 s in `make test`), default over_time and retransmits, Child SAs
    rekeying meanwhile, 20 % loss and 10 % reordering of IKE and ESP for three IKE SA lifetimes."""
    with topology_or_skip("lossy", loss=LOSS, reorder=REORDER, seed=13) as t:
        a, b = _pair(ipsecd_factory, t, a_conn={"rekey_time": f"{LOSS_REKEY_TIME}s"},
                     a_child={"rekey_time": "9s", "rand_time": "3s", "life_time": "60s"}, timeout=60)
        outage = _run_pings(t, ISSUE_SECONDS, tmp_path / "ping.log")
        rekeys = a.log_count(r"IKE SA rekeyed") + b.log_count(r"IKE SA rekeyed")
        hard = a.log_count(HARD_LIFETIME) + b.log_count(HARD_LIFETIME)
        print(f"IKE SA rekeys {rekeys}, hard-lifetime deletions {hard}, longest outage {outage:.1f}s, "
              f"relay {t.relay_stats()}")
        assert hard == 0, f"an IKE SA reached its hard lifetime under loss\n{a.log_tail(80)}\n{b.log_tail(40)}"
        assert outage < MAX_OUTAGE, f"tunnel down for {outage:.1f}s\n{a.log_tail(80)}"
        assert rekeys >= 2


# ------------------------------------------------------------------------- strongSwan as the peer
@pytest.mark.interop
@pytest.mark.timeout(180)
def test_strongswan_peer_through_loss(ipsecd_factory: MakeIpsecd, charon_factory: MakeCharon) -> None:
    """ipsecd (A) and charon (B) through 20 % loss + reordering: establish, rekey both SAs, carry traffic.

    charon retransmits after 1 s up to 6 times (its tests' usual 3 tries fail 1 in 60
    exchanges at this loss rate); it also sends ESP in UDP 4500 (kernel-libipsec), so
    the relay harms ESP-in-UDP here.
    """
    with topology_or_skip("lossy", loss=LOSS, reorder=REORDER, seed=17) as t:
        theirs = charon_factory(t.b, ConnParams(
            name=CONN, local_addrs=[t.b_addr], remote_addrs=["%any"], local_id="b.test", remote_id="a.test",
            psk=PSK, proposals=[IKE],
            children=[ChildParams(name=CHILD, local_ts=[t.b_lan_net], remote_ts=[t.a_lan_net],
                                  esp_proposals=[ESP])]),
            name="charon", extra_charon="  retransmit_tries = 6\n")
        ours = ipsecd_factory(t.a, ipsecd_config(
            name=CONN, local_addrs=[t.a_addr], remote_addrs=[t.b_addr], local_id="a.test", remote_id="b.test",
            psk=PSK, proposals=[IKE], rekey_time="10s", rand_time="2s", over_time="30s",
            retransmit=QUICK_RETRANSMIT,
            children={CHILD: child_config(local_ts=[t.a_lan_net], remote_ts=[t.b_lan_net], esp_proposals=[ESP],
                                          start_action="start", rekey_time="4s", rand_time="1s",
                                          life_time="40s")}), name="ipsecd")
        ours.wait_established(40, child=CHILD)
        theirs.wait_established(40, child=CHILD)
        _wait(lambda: ours.log_count(r"IKE SA rekeyed") >= 1 and ours.log_count(r"Child SA .* rekeyed") >= 2, 90,
              "an IKE SA rekey and two Child SA rekeys with charon", ours, theirs)
        answered = _ping_some(t)
        stats = _assert_relay_harmed(t)
        print(f"relay: {stats}; pings answered {answered}/40")
        assert answered >= 10, f"only {answered}/40 pings answered through 20 % loss each way"
        assert ours.log_count(HARD_LIFETIME) == 0, ours.log_tail()
        _wait(lambda: _agree(ours, theirs), 20, "ipsecd and charon agreeing on one IKE SA and its Child SA",
              ours, theirs)


def _agree(ours: Ipsecd, theirs: Charon) -> bool:
    o = [s for s in ours.list_sas() if s["state"] == "ESTABLISHED"]
    th = [s for s in theirs.list_sas() if s["state"] == "ESTABLISHED"]
    if len(o) != 1 or len(th) != 1:
        return False
    if (o[0]["spi_i"], o[0]["spi_r"]) != (th[0]["initiator-spi"], th[0]["responder-spi"]):
        return False
    ok = [c for c in o[0]["child_sas"] if c["state"] == "INSTALLED"]
    tk = [c for c in th[0]["child-sas"] if c["state"] == "INSTALLED"]
    return any((c["spi_in"], c["spi_out"]) == (k["spi-out"], k["spi-in"]) for c in ok for k in tk)


def test_longest_outage() -> None:
    out = "\n".join(f"64 bytes from 10.2.0.1: icmp_seq={n} ttl=64 time=0.1 ms" for n in (1, 2, 5, 6, 10))
    assert longest_outage(out, 10, 0.2) == pytest.approx(0.6)  # 7, 8, 9 lost
    assert longest_outage("", 10, 0.5) == pytest.approx(5.0)
