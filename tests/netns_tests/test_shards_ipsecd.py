"""Two IKE shards (settings.ike_shards: 2) with real packets: B runs two IKE processes, A one.

A initiates PEERS connections (one IKE SA each, distinct identities and selectors) to B, and
B one to A (start actions live on shard 0). The kernel spreads A's IKE_SA_INITs over B's two
shards by a hash of SPIi; B's SPIr then names its shard (first octet modulo 2), so list-sas
tells which shard holds an SA. Checked: every SA on both ends, SPIs mirrored, traffic through
every Child SA, list-sas/status/stats summed over both shards, IKE and Child SA rekeys that B
starts on both shards (shard 1 then initiates: the answers come back by SPIi), and DPD on both
shards: when A dies, each shard declares its own peers dead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, why_no_ipsecd
from tests.netns import Topology, ping_counts

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PEERS = 10  # A's IKE SAs: all on one of B's shards by chance with probability 2 / 2**10
PSK = "shards-test-psk-0123456789"
IKE, ESP = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
PEER_DEAD = r"peer dead|peer is dead"
METRICS_PORT = 9810
Make = Callable[..., Ipsecd]


def _conn(k: int, *, local: str, remote: str | list[str], lid: str, rid: str, lts: str, rts: str,
          start: bool, **extra: Any) -> dict[str, Any]:
    return {"local_addrs": [local], "remote_addrs": remote, "proposals": [IKE],
            "local": {"auth": "psk", "id": lid}, "remote": {"auth": "psk", "id": rid},
            "children": {f"net{k}": child_config(local_ts=[lts], remote_ts=[rts], esp_proposals=[ESP],
                                                 start_action="start" if start else "none",
                                                 **extra.pop("child", {}))},
            **extra}


def _configs(t: Topology) -> tuple[dict[str, Any], dict[str, Any]]:
    a: dict[str, Any] = {"connections": {}, "secrets": {"ike": []}}
    b: dict[str, Any] = {"settings": {"ike_shards": 2, "metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"}},
                         "connections": {}, "secrets": {"ike": []}}
    # B's side: it rekeys (IKE and Child SAs) and runs DPD, so both happen on both of its shards
    b_life = {"rekey_time": "12s", "rand_time": "3s", "over_time": "20s", "dpd_delay": "2s", "dpd_timeout": "6s",
              "retransmit": {"tries": 2, "timeout": 1.0, "base": 1.5}}
    for k in range(PEERS + 1):
        a_lan, b_lan = f"10.1.{k}.0/24", f"10.2.{k}.0/24"
        a_id, b_id = f"a{k}.test", "b.test"
        b_starts = k == PEERS  # one SA the other way: B initiates it (shard 0)
        a["connections"][f"c{k}"] = _conn(k, local=t.a_addr, remote=[t.b_addr] if not b_starts else "%any",
                                          lid=a_id, rid=b_id, lts=a_lan, rts=b_lan, start=not b_starts)
        b["connections"][f"c{k}"] = _conn(k, local=t.b_addr, remote=[t.a_addr] if b_starts else "%any",
                                          lid=b_id, rid=a_id, lts=b_lan, rts=a_lan, start=b_starts,
                                          child={"rekey_time": "8s", "rand_time": "3s", "life_time": "30s"},
                                          **dict(b_life))
        for doc in (a, b):
            doc["secrets"]["ike"].append({"id": [a_id, b_id], "secret": PSK})
    return a, b


def _wait(pred: Callable[[], bool], timeout: float, what: str, *daemons: Ipsecd) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout}s\n" + "\n".join(d.log_tail(40) for d in daemons))
        time.sleep(0.2)


def _settled(a: Ipsecd, b: Ipsecd) -> Callable[[], bool]:
    """Every connection: one IKE SA with one installed Child SA on each end, SPIs mirrored."""
    def check() -> bool:
        sa_a, sa_b = a.list_sas(), b.list_sas()
        if len(sa_a) != PEERS + 1 or len(sa_b) != PEERS + 1:
            return False
        mine = {(s["spi_i"], s["spi_r"]): s for s in sa_a}
        for s in sa_b:
            other = mine.get((s["spi_i"], s["spi_r"]))
            if other is None or s["state"] != "ESTABLISHED" or len(s["child_sas"]) != 1 \
                    or len(other["child_sas"]) != 1:
                return False
            kb, ka = s["child_sas"][0], other["child_sas"][0]
            if kb["state"] != "INSTALLED" or (kb["spi_in"], kb["spi_out"]) != (ka["spi_out"], ka["spi_in"]):
                return False
        return True
    return check


def _shard_of(sa: dict[str, Any]) -> int:
    """B's shard of one of B's SAs: the first octet of B's own SPI, modulo 2 (ike/shard.py)."""
    ours = sa["spi_r"] if not sa["initiator"] else sa["spi_i"]
    return int(ours[:2], 16) % 2


def _ping_all(t: Topology) -> None:
    for k in range(PEERS + 1):
        res = t.a.ping(f"10.2.{k}.1", count=2, src=f"10.1.{k}.1", interval=0.1, deadline=5, check=False)
        assert ping_counts(res.stdout) == (2, 2), f"tunnel {k}: {res.stdout}{res.stderr}"


@pytest.mark.timeout(150)
def test_two_shards_with_several_peers(topology: Topology, ipsecd_factory: Make) -> None:
    t = topology
    for k in range(1, PEERS + 1):  # 10.1.0.1 and 10.2.0.1 are the topology's own
        t.a.run(["ip", "addr", "add", f"10.1.{k}.1/32", "dev", "lo"])
        t.b.run(["ip", "addr", "add", f"10.2.{k}.1/32", "dev", "lo"])
    a_cfg, b_cfg = _configs(t)
    b = ipsecd_factory(t.b, b_cfg, name="b")
    _wait(lambda: b.log_count(r"IKE shard 1 of 2 started") >= 1, 15, "shard 1 started", b)
    a = ipsecd_factory(t.a, a_cfg, name="a")
    _wait(_settled(a, b), 40, "every SA up and mirrored", a, b)

    sas = b.list_sas()
    shards = [_shard_of(s) for s in sas]
    print(f"B's SAs per shard: {shards.count(0)} on shard 0, {shards.count(1)} on shard 1")
    assert 0 in shards and 1 in shards, sas
    assert all(_shard_of(s) == 0 for s in sas if s["initiator"])  # B's start actions run on shard 0
    _ping_all(t)

    status = json.loads(b.ctl("status", "--json").stdout)
    assert status["ike_shards"] == 2 and status["ike_sas"] == status["child_sas"] == PEERS + 1, status
    stats = json.loads(b.ctl("stats", "--json").stdout)
    assert stats["events"]["ike_sas_established"] == PEERS + 1, stats  # each shard counted its own
    assert set(stats["gc"]) == {"ike-0", "ike-1", "worker-0"}, stats["gc"]  # side by side, not summed

    # rekeys started by B: IKE SAs (new SPIs on both shards) and Child SAs
    before = {(s["spi_i"], s["spi_r"]) for s in sas}
    _wait(lambda: b.log_count(r"IKE SA rekeyed") >= PEERS + 1, 45, "every IKE SA rekeyed", a, b)
    _wait(_settled(a, b), 20, "settled after the rekeys", a, b)
    after = b.list_sas()
    assert not before & {(s["spi_i"], s["spi_r"]) for s in after}
    assert {_shard_of(s) for s in after} == {0, 1}
    assert b.log_count(r"Child SA net\d+ rekeyed") >= PEERS + 1, b.log_tail()
    _ping_all(t)
    # metrics add up the shards too
    text = t.b.run(["curl", "-s", f"http://127.0.0.1:{METRICS_PORT}/metrics"]).stdout
    ike_sas = sum(int(v) for v in re.findall(r'^ipsecd_ike_sas\{state="ESTABLISHED"\} (\d+)', text, re.M))
    rekeys = re.search(r'^ipsecd_rekeys_total\{kind="ike"\} (\d+)', text, re.M)
    assert ike_sas == PEERS + 1 and rekeys is not None and int(rekeys.group(1)) >= PEERS + 1, text
    # traffic per (connection, child) from the one worker, each shard labelling the Child SAs it
    # installed (issue 11: tags k+1, k+1+N...): every child's pings counted, across its rekey
    for sa in after:
        for child in sa["child_sas"]:
            got = re.search(rf'^ipsecd_child_sa_packets_total\{{conn="{re.escape(sa["name"])}",'
                            rf'child="{re.escape(child["name"])}",direction="in"\}} (\d+)', text, re.M)
            assert got is not None and int(got.group(1)) > 0, (sa["name"], child["name"], text)
    assert "spi=" not in text

    # DPD on both shards: A dies, each of B's shards finds its own peers dead and clears their SAs
    a.kill()
    _wait(lambda: not b.list_sas(), 30, "B clears every SA by DPD", b)
    assert b.log_count(PEER_DEAD) >= PEERS + 1, b.log_tail()

    # SIGTERM to the whole group (as systemd does): the primary stops shard 1, nobody looks crashed
    b.stop()
    assert b.log_count(r"shard1 ipsecd.cfg: shutdown:") == 1 and b.log_count(r"ipsecd.cfg: shutdown:") == 2, \
        b.log_tail()
    assert b.log_count("CRITICAL") == 0, b.log_tail()


@pytest.mark.timeout(60)
def test_a_dead_shard_stops_the_daemon(topology: Topology, ipsecd_factory: Make) -> None:
    """A shard that dies (here SIGKILL) takes the daemon down with exit code 1, as a dead
    data-plane worker does: the service manager restarts everything, no half-served SPIs."""
    t = topology
    _a, b_cfg = _configs(t)
    b = ipsecd_factory(t.b, b_cfg, name="b")
    _wait(lambda: b.log_count(r"IKE shard 1 of 2 started") >= 1, 15, "shard 1 started", b)
    assert b.proc is not None
    shard = [pid for pid in _children(b.proc.pid) if b"--shard-link" in _cmdline(pid)]
    assert len(shard) == 1, shard
    os.kill(shard[0], signal.SIGKILL)
    assert b.proc.wait(timeout=30) == 1
    assert b.log_count(r"CRITICAL ipsecd.cfg: IKE shard 1 exited") == 1, b.log_tail()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.mark.timeout(150)
def test_initial_contact_reaches_the_other_shard(topology: Topology, ipsecd_factory: Make) -> None:
    """A client (A) that crashes and reconnects sends INITIAL_CONTACT (RFC 7296 2.4); its new
    IKE SA lands on either of B's shards (a hash of its SPIi). A is crashed and restarted until
    the new SA is on the other shard than the old one: that shard drops the old SA at once
    (ike/xshard.py), not by DPD (B runs none here), and B lists only the new one."""
    t = topology
    a_cfg, b_cfg = _one_client(t)
    b = ipsecd_factory(t.b, b_cfg, name="b")
    _wait(lambda: b.log_count(r"IKE shard 1 of 2 started") >= 1, 15, "shard 1 started", b)
    a = ipsecd_factory(t.a, a_cfg, name="a")

    def one_new_sa(old: set[tuple[str, str]]) -> Callable[[], bool]:
        def check() -> bool:
            sas = b.list_sas()
            return (len(sas) == 1 and (sas[0]["spi_i"], sas[0]["spi_r"]) not in old
                    and sas[0]["state"] == "ESTABLISHED" and len(sas[0]["child_sas"]) == 1
                    and sas[0]["child_sas"][0]["state"] == "INSTALLED")
        return check

    _wait(one_new_sa(set()), 30, "the first IKE SA", a, b)
    seen: set[tuple[str, str]] = set()
    crossed = 0
    for _attempt in range(12):  # each restart lands on the other shard with probability 1/2
        (old,) = b.list_sas()
        seen.add((old["spi_i"], old["spi_r"]))
        a.kill()
        a.start()
        # the old SA must go by INITIAL_CONTACT (no DPD configured), whichever shard the new one is on
        _wait(one_new_sa(seen), 30, "the new IKE SA replaced the old one", a, b)
        (new,) = b.list_sas()
        if _shard_of(new) != _shard_of(old):
            crossed += 1
            if crossed == 2:  # both directions seen: 0 -> 1 and 1 -> 0 are as likely; two is enough
                break
    assert crossed >= 1, "every restart landed on the same shard"
    print(f"INITIAL_CONTACT crossed shards {crossed} time(s) in {len(seen)} restart(s)")
    assert b.log_count(r"replaced: peer sent INITIAL_CONTACT") >= len(seen), b.log_tail()
    (a_sa,) = a.list_sas()
    (b_sa,) = b.list_sas()
    assert (a_sa["spi_i"], a_sa["spi_r"]) == (b_sa["spi_i"], b_sa["spi_r"])
    res = t.a.ping("10.2.0.1", count=2, src="10.1.0.1", interval=0.1, deadline=5, check=False)
    assert ping_counts(res.stdout) == (2, 2), res.stdout + res.stderr
    assert b.log_count("did not answer its") == 0 and b.log_count("CRITICAL") == 0, b.log_tail()


def _one_client(t: Topology, **b_extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A (one process, identity a0.test, starts c0) and B (two shards, any address)."""
    secrets = {"ike": [{"id": ["a0.test", "b.test"], "secret": PSK}]}
    a_cfg = {"connections": {"c0": _conn(0, local=t.a_addr, remote=[t.b_addr], lid="a0.test", rid="b.test",
                                         lts="10.1.0.0/24", rts="10.2.0.0/24", start=True)}, "secrets": secrets}
    b_cfg = {"settings": {"ike_shards": 2},
             "connections": {"c0": _conn(0, local=t.b_addr, remote="%any", lid="b.test", rid="a0.test",
                                         lts="10.2.0.0/24", rts="10.1.0.0/24", start=False, **b_extra)},
             "secrets": secrets}
    return a_cfg, b_cfg


@pytest.mark.timeout(150)
def test_unique_keep_refuses_a_newcomer_on_the_other_shard(topology: Topology, ipsecd_factory: Make) -> None:
    """``unique: keep``: A crashes and reconnects while B still holds its old IKE SA (no DPD).
    The newcomer is refused whichever shard it lands on: on the old SA's shard inside IKE_AUTH,
    on the other one deleted right after it (ike/xshard.py). A is restarted until that happened
    on the other shard; B keeps the old SA, untouched."""
    t = topology
    a_cfg, b_cfg = _one_client(t, unique="keep")
    b = ipsecd_factory(t.b, b_cfg, name="b")
    _wait(lambda: b.log_count(r"IKE shard 1 of 2 started") >= 1, 15, "shard 1 started", b)
    a = ipsecd_factory(t.a, a_cfg, name="a")
    _wait(lambda: len(b.list_sas()) == 1 and b.list_sas()[0]["state"] == "ESTABLISHED", 30, "the first SA", a, b)
    (old,) = b.list_sas()
    other = "shard1" if _shard_of(old) == 0 else None
    refusal = r"already has IKE SA \d+ and connection c0 has unique: keep"

    def refused_on_the_other_shard() -> bool:
        lines = [ln for ln in b.log_text().splitlines() if re.search(refusal, ln)]
        return any(("shard1" in ln) == (other is not None) for ln in lines)

    for _attempt in range(12):
        seen = b.log_count(refusal)
        a.kill()
        a.start()
        _wait(lambda seen=seen: b.log_count(refusal) > seen, 30, "the newcomer refused", a, b)  # type: ignore[misc]
        if refused_on_the_other_shard():
            break
    assert refused_on_the_other_shard(), b.log_tail()
    _wait(lambda: [(s["spi_i"], s["spi_r"]) for s in b.list_sas()] == [(old["spi_i"], old["spi_r"])], 20,
          "B holds only the old SA", a, b)
    assert b.list_sas()[0]["state"] == "ESTABLISHED" and len(b.list_sas()[0]["child_sas"]) == 1
    assert b.log_count("CRITICAL") == 0, b.log_tail()
