"""The daemon as users run it: bad configs, the demo, reload, sd_notify, the list-sas contract."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ipsecd.config import load_config
from ipsecd.daemon import Daemon
from ipsecd.logsetup import LogHub
from ipsecd.settings_from_config import validate_proposal
from tests.ipsecd_proc import (
    PROJECT_ROOT,
    Ipsecd,
    child_config,
    ipsecd_config,
    venv_python,
    world_readable_runtime,
)
from tests.netns import Topology

IKE_KEYS = {"name", "state", "local", "remote", "local_id", "remote_id", "initiator", "proposal", "child_sas"}
CHILD_KEYS = {"name", "state", "spi_in", "spi_out", "mode", "encap", "proposal", "local_ts", "remote_ts",
              "bytes_in", "bytes_out", "packets_in", "packets_out"}


def run_ipsecd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_python(), "-m", "ipsecd", *args], capture_output=True, text=True, timeout=60,
                          cwd=PROJECT_ROOT)


def test_bad_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("connections:\n  b:\n    remote_addrs: [192.0.2.2]\n    local: {auth: psk, id: a.test}\n"
                   "    remote: {auth: psk, id: b.test}\n    children:\n      net:\n        local_ts: [10.1.0.0/33]\n")
    r = run_ipsecd("--config", str(bad), "--control-socket", str(tmp_path / "s.sock"))
    assert r.returncode == 2
    assert f"{bad}:8 connections.b.children.net.local_ts[0]" in r.stderr
    assert not (tmp_path / "s.sock").exists()
    r = run_ipsecd("--check-config", str(bad))
    assert r.returncode != 0 and "10.1.0.0/33" in r.stderr
    r = run_ipsecd("--check-config", str(PROJECT_ROOT / "configs" / "demo" / "branch-a.yaml"))
    assert r.returncode == 0 and "configuration OK" in r.stdout
    r = run_ipsecd("--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr


def test_config_warnings_are_logged_on_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ipsecd.yaml"
    path.write_text(yaml.safe_dump(ipsecd_config(local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"])))
    daemon = Daemon(load_config(path, proposal_validator=validate_proposal), str(tmp_path / "s.sock"), LogHub(),
                    dataplane=False)
    text = path.read_text().replace("    local_addrs:", "    local_port: 4500\n    local_addrs:", 1)
    path.write_text(text)
    line = text.splitlines().index("    local_port: 4500") + 1
    with caplog.at_level(logging.WARNING, logger="ipsecd.cfg"):
        # what ipsecd does did not change (port 500 either way): the connection is left alone
        assert asyncio.run(daemon.reload())["changed"] == []
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:{line} connections.peer.local_port: accepted but not implemented yet: IKE is always sent from "
        "port 500 (4500 after NAT detection) (in effect: 500)"]


def test_reload_applies_front_door_settings(tmp_path: Path) -> None:
    path = tmp_path / "ipsecd.yaml"
    config = ipsecd_config(local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"])
    path.write_text(yaml.safe_dump(config))
    daemon = Daemon(load_config(path, proposal_validator=validate_proposal), str(tmp_path / "s.sock"), LogHub(),
                    dataplane=False)
    assert daemon.shell.manager.front.settings.block_threshold == 50
    path.write_text(yaml.safe_dump({**config, "settings": {"block_threshold": 7, "cookie_threshold": 0}}))
    assert asyncio.run(daemon.reload())["changed"] == []  # no connection is touched
    front = daemon.shell.manager.front.settings
    assert (front.block_threshold, front.cookie_threshold) == (7, 0)


@pytest.mark.netns
def test_make_demo_script() -> None:
    r = subprocess.run([venv_python(), "-m", "ipsecd.demo"], capture_output=True, text=True, timeout=180,
                       cwd=PROJECT_ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "demo succeeded" in r.stdout
    assert "0% packet loss" in r.stdout
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("branch-") == 0


def _pair(topo: Topology, tmp_path: Path, **extra_a: object) -> tuple[Ipsecd, Ipsecd]:
    a = Ipsecd(topo.a, tmp_path / "a", ipsecd_config(
        local_addrs=[topo.a_addr], remote_addrs=[topo.b_addr], local_id="a.test", remote_id="b.test",
        children={"net": child_config(local_ts=["10.1.0.0/24"], remote_ts=["10.2.0.0/24"], start_action="start")},
        **extra_a))
    b = Ipsecd(topo.b, tmp_path / "b", ipsecd_config(
        local_addrs=[topo.b_addr], remote_addrs="%any", local_id="b.test", remote_id="a.test",
        children={"net": child_config(local_ts=["10.2.0.0/24"], remote_ts=["10.1.0.0/24"])}))
    return a, b


@pytest.mark.netns
def test_list_sas_contract_and_reload_keeps_untouched_sa(topology: Topology, tmp_path: Path) -> None:
    a, b = _pair(topology, tmp_path)
    b.config["connections"]["peer"]["local_port"] = 4500  # accepted, not implemented: a warning in the log
    with b, a:
        ike = a.wait_established(15, child="net")
        b.wait_established(15, child="net")
        for sa in a.list_sas() + b.list_sas():
            assert set(sa) >= IKE_KEYS
            for child in sa["child_sas"]:
                assert set(child) >= CHILD_KEYS
                assert len(child["spi_in"]) == 8 and int(child["spi_in"], 16)
        spis = (ike["child_sas"][0]["spi_in"], ike["child_sas"][0]["spi_out"])
        topology.a.ping(topology.b_lan, count=2, src=topology.a_lan)

        # add a connection, reload: the running tunnel keeps its SAs and its traffic
        a.config["connections"]["spare"] = {
            **a.config["connections"]["peer"], "remote_addrs": ["192.0.2.99"],
            "children": {"x": child_config(local_ts=["10.1.1.0/24"], remote_ts=["10.9.0.0/24"])},
            "local_port": 4500}
        a.write_config()
        r = a.ctl("reload")
        assert r.returncode == 0
        assert "connections.peer.local_port: accepted but not implemented yet" in b.log_text()  # at start
        assert "connections.spare.local_port: accepted but not implemented yet" in a.log_text()  # at reload
        conns = a.ctl("list-conns", "--json").stdout
        assert "spare" in conns
        (after,) = [sa for sa in a.list_sas() if sa["name"] == "peer"]
        assert (after["child_sas"][0]["spi_in"], after["child_sas"][0]["spi_out"]) == spis
        topology.a.ping(topology.b_lan, count=2, src=topology.a_lan)

        # remove the running connection, reload: it is deleted on both sides with a Delete
        del a.config["connections"]["peer"]
        a.write_config()
        assert a.ctl("reload").returncode == 0
        end = time.monotonic() + 10
        while time.monotonic() < end and (a.list_sas() or b.list_sas()):
            time.sleep(0.2)
        assert a.list_sas() == [] and b.list_sas() == []


@pytest.mark.netns
def test_sd_notify_ready_after_sockets_are_bound(topology: Topology, tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(notify))
        s.settimeout(15)
        a, _b = _pair(topology, tmp_path)
        a.write_config()
        proc = topology.a.popen([venv_python(), "-m", "ipsecd", "--config", str(a.config_path),
                                 "--control-socket", a.socket], a.log_path, cwd=PROJECT_ROOT,
                                env={"NOTIFY_SOCKET": str(notify), "PYTHONPATH": str(PROJECT_ROOT)})
        try:
            msg = s.recv(4096).decode()
            assert "READY=1" in msg
            # READY means IKE's ports are bound: a second daemon on the same ports must fail
            probe = topology.a.run([sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, "
                                    "socket.SOCK_DGRAM); s.bind(('0.0.0.0', 500))"], check=False)
            assert probe.returncode != 0
        finally:
            proc.terminate()
            proc.wait(10)
        assert "STOPPING=1" in s.recv(4096).decode()


@pytest.mark.netns
def test_daemon_as_unprivileged_user_with_capabilities(topology: Topology) -> None:
    """--user drops root but keeps CAP_NET_ADMIN/BIND_SERVICE/RAW: ports 500/4500, TUN, routes still work.

    It runs from a copy nobody can read (world_readable_runtime), so it works wherever the
    checkout and its venv live, /root (0700) included.
    """
    work = Path(tempfile.mkdtemp(prefix="ipd-user-", dir="/tmp"))
    try:
        work.chmod(0o755)
        a, b = _pair(topology, work)
        a.runtime = world_readable_runtime(work / "runtime")
        a.extra_args = ["--user", "nobody"]
        with b, a:
            a.wait_established(15, child="net")
            topology.a.ping(topology.b_lan, count=2, src=topology.a_lan)
            users = subprocess.run(["ps", "-ww", "-eo", "user=,args="], capture_output=True, text=True).stdout
            assert any(line.split()[0] == "nobody" and "ipsecd" in line and str(a.config_path) in line
                       for line in users.splitlines()), users
            # the data-plane worker, started after the drop, runs the copy too
            assert any(line.split()[0] == "nobody" and "ipsecd.dataplane.worker" in line
                       for line in users.splitlines()), users
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.netns
def test_metrics_endpoint_and_key_export(topology: Topology, tmp_path: Path) -> None:
    a, b = _pair(topology, tmp_path)
    a.config["settings"] = {"metrics": {"listen": "127.0.0.1:9810"}, "debug": {"allow_key_export": True}}
    with b, a:
        ike = a.wait_established(15, child="net")
        topology.a.ping(topology.b_lan, count=3, src=topology.a_lan)
        fetch = ("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9810/metrics', "
                 "timeout=5).read().decode())")
        text = topology.a.run([sys.executable, "-c", fetch]).stdout
        assert 'ipsecd_ike_sas{state="ESTABLISHED"} 1' in text
        spi_out = ike["child_sas"][0]["spi_out"]
        for process in ("ike-0", "worker-0"):  # each process's garbage collector (gcpolicy.GcStats)
            for family in ("ipsecd_gc_passes_total", "ipsecd_gc_pause_seconds_total", "ipsecd_gc_pause_max_seconds"):
                assert f'{family}{{process="{process}",generation="2"}} ' in text, (family, process)
        stats = json.loads(a.ctl("stats", "--json").stdout)
        assert set(stats["gc"]) == {"ike-0", "worker-0"} and "gc" not in stats["dataplane"]
        assert set(stats["gc"]["worker-0"]["2"]) == {"passes", "seconds", "max_seconds"}
        # per (connection, child, direction), summed in the worker (issue 11): no spi label
        assert any(line.startswith("ipsecd_child_sa_packets_total{") and 'child="net"' in line
                   and 'direction="out"' in line and not line.endswith(" 0") for line in text.splitlines()), text
        assert "spi=" not in text

        out = tmp_path / "keys"
        r = a.ctl("export-keys", "--format", "wireshark", "--out", str(out))
        assert r.returncode == 0, r.stderr
        ike_table = (out / "ikev2_decryption_table").read_text()
        esp_table = (out / "esp_sa").read_text()
        assert ike["spi_i"] in ike_table.replace('"', "") and spi_out in esp_table.lower()
        assert "SA keys exported" in a.log_text()
        # the responder did not opt in: it refuses
        r = b.ctl("export-keys", "--format", "wireshark", "--out", str(tmp_path / "nokeys"), check=False)
        assert r.returncode == 1 and "allow_key_export" in r.stderr


@pytest.mark.netns
def test_trap_tunnel_comes_up_on_first_packet(topology: Topology, tmp_path: Path) -> None:
    """start_action=trap: nothing until a packet matches; that packet is queued, sent once the SA is up."""
    a, b = _pair(topology, tmp_path)
    a.config["connections"]["peer"]["children"]["net"]["start_action"] = "trap"
    with b, a:
        time.sleep(1.0)
        assert a.list_sas() == []  # no traffic, no tunnel
        ping = topology.a.run(["ping", "-c", "5", "-i", "0.2", "-W", "3", "-I", topology.a_lan, topology.b_lan],
                              check=False)
        assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
        (sa,) = a.list_sas()
        assert sa["child_sas"][0]["local_ts"] == ["10.1.0.0/24"]
        stats = a.ctl("stats", "--json").stdout
        assert '"acquire_queue_sent"' in stats and '"cookies_required": false' in stats
        # the trap outlives the SA: after down, the next packet brings the tunnel back
        a.down("peer")
        end = time.monotonic() + 10
        while time.monotonic() < end and a.list_sas():
            time.sleep(0.2)
        again = topology.a.ping(topology.b_lan, count=3, src=topology.a_lan, check=False)
        assert again.returncode == 0, again.stdout
        assert len(a.list_sas()) == 1


@pytest.mark.netns
def test_close_action_trap_rearms_after_peer_deletes(topology: Topology, tmp_path: Path) -> None:
    a, b = _pair(topology, tmp_path)
    a.config["connections"]["peer"]["children"]["net"]["close_action"] = "trap"
    with b, a:
        a.wait_established(15, child="net")
        b.down("peer")  # the peer closes the tunnel
        end = time.monotonic() + 10
        while time.monotonic() < end and a.list_sas():
            time.sleep(0.2)
        assert a.list_sas() == []
        time.sleep(0.5)
        ping = topology.a.ping(topology.b_lan, count=4, src=topology.a_lan, check=False)
        assert ping.returncode == 0, ping.stdout + a.log_tail()
        assert len(a.list_sas()) == 1


def test_gc_policy_freezes_after_full_passes_and_thaws_every_refresh() -> None:
    """What survives gen-1 and full collections is frozen (full passes walk only what came
    since); every ``refresh`` seconds everything is thawed and the next full pass walks it all
    (closed SAs are freed by reference counting, tests/test_sa_cycles.py: the thaw is the
    safety net for an unforeseen cycle, which must still be freed)."""
    import gc

    from ipsecd.gcpolicy import GcPolicy

    policy = GcPolicy(refresh=3600.0)
    gc.callbacks.append(policy)
    try:
        gc.unfreeze()
        junk = [[i] for i in range(1000)]
        gc.collect(1)  # a gen-1 pass: its survivors are frozen
        assert gc.get_freeze_count() >= len(junk)
        gc.unfreeze()
        gc.collect()  # a full pass too
        frozen = gc.get_freeze_count()
        assert frozen >= len(junk)
        gc.collect(0)  # a young pass changes nothing
        assert gc.get_freeze_count() == frozen
        cycle: list[object] = []
        cycle.append(cycle)
        policy.thawed_at -= 3600.0  # the refresh is due
        gc.collect()
        assert gc.get_freeze_count() == 0 and policy.thawing  # thawed: the next full pass walks all
        gc.collect(1)
        assert gc.get_freeze_count() == 0  # no freezing before that full pass
        del cycle
        assert gc.collect() >= 1  # the cycle is found
        assert not policy.thawing and gc.get_freeze_count() > 0
    finally:
        gc.callbacks.remove(policy)
        gc.unfreeze()


def test_the_data_plane_worker_tunes_gc_before_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker holds every Child SA (~20 objects each): without the policy a full pass at
    20,000 SAs held installs, and so IKE_AUTH answers, for 100-200 ms (docs/performance.md)."""
    from ipsecd.dataplane import worker as worker_mod

    calls: list[str] = []

    class FakeWorker:
        def __init__(self, *args: object, **kwargs: object) -> None:
            calls.append("init")

        def run(self) -> None:
            calls.append("run")

    monkeypatch.setattr(worker_mod, "Worker", FakeWorker)
    monkeypatch.setattr(worker_mod, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(worker_mod.signal, "signal", lambda *args: None)
    control, other = socket.socketpair()
    tun_r, tun_w = os.pipe()
    try:
        assert worker_mod.main(["--control", str(control.detach()), "--tun", str(tun_r)]) == 0
    finally:
        other.close()
        for fd in (tun_r, tun_w):
            with contextlib.suppress(OSError):
                os.close(fd)
    assert calls == ["init", "tune_gc", "run"]


def test_gc_policy_thaws_hourly_by_default() -> None:
    from ipsecd.gcpolicy import REFRESH, GcPolicy

    assert GcPolicy().refresh == REFRESH == 3600.0


def test_gc_stats_count_and_time_every_pass_per_generation() -> None:
    import gc

    from ipsecd.gcpolicy import GcStats, figures_from_wire, figures_to_wire

    stats = GcStats()
    gc.callbacks.insert(0, stats)
    try:
        gc.collect(0)
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(stats)
    f = stats.figures()
    assert f["0"]["passes"] >= 2 and f["2"]["passes"] >= 1  # (automatic young passes may add some)
    assert 0 < f["2"]["max_seconds"] <= f["2"]["seconds"] < 5
    assert set(f) == {"0", "1", "2"} and set(f["1"]) == {"passes", "seconds", "max_seconds"}
    back = figures_from_wire(figures_to_wire(f))  # the worker's Counters carry microseconds
    assert back["2"]["passes"] == f["2"]["passes"]
    assert abs(back["2"]["seconds"] - f["2"]["seconds"]) < 1e-6
    assert figures_from_wire({"2.passes": 1, "unknown": 7}) == {"2": {"passes": 1, "seconds": 0.0,
                                                                      "max_seconds": 0.0}}
