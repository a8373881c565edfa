"""Smoke of the handshake load benchmark (tests/bench_handshake.py), so the harness does not rot.

strongSwan's load-tester (built into build/loadtester by tests/loadtester/build.sh on
first use) opens 200 IKE SAs, each with a Child SA, against ipsecd as a responder, with
up to 64 handshakes in flight, driven through the plugin's control socket.  Every one
must come up, as the initiator's log and ipsecd itself both say.  Timings are printed,
never judged.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from tests.bench_handshake import (
    RESPONDER_CPU,
    Bench,
    BenchPki,
    IpsecdResponder,
    LoadInitiator,
    LogWatch,
    build_plugin,
    initiator_conf,
    pin,
    read_tail,
    rss_kib,
    run_stage,
)
from tests.ipsecd_proc import why_no_ipsecd
from tests.netns import Topology

# The budget covers a first-time plugin build (~30 s-3 min); the load itself is capped at 60 s.
pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.timeout(900),
              pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or "")]

COUNT = 200


@pytest.mark.parametrize("shards", [1, 2], ids=["one-ike-process", "two-ike-shards"])
def test_200_handshakes_against_ipsecd(topology: Topology, tmp_path: Path, shards: int) -> None:
    """With ``shards`` 2 strongSwan's clients are spread over two IKE processes by the kernel
    (settings.ike_shards): every SA still comes up, both shards hold some, list-sas sums them."""
    b = Bench(build_plugin(), tmp_path, secrets.token_hex(16), in_flight=64, settle=1.0)
    resp = IpsecdResponder(topology, tmp_path / "ipsecd", b.psk, shards=shards)
    conf = initiator_conf(tmp_path / "init" / "charon.log", responder=topology.b_addr,
                          initiator=topology.a_addr, psk=b.psk, tag="smoke", in_flight=b.in_flight)
    init = LoadInitiator(topology.a, tmp_path / "init", b.plugin, conf)
    try:
        resp.start()
        for pid in resp.pids().values():
            pin(pid, RESPONDER_CPU)
        init.start()
        base = {k: rss_kib(p) for k, p in resp.pids().items()}
        st = run_stage(b, resp, init, LogWatch(init.log_path), 1, 0, COUNT, COUNT, base, 0, time.monotonic() + 60)
        print(st.line())
        assert not st.partial, f"not done within 60 s: {st.line()}\n{read_tail(init.log_path)}\n" \
                               f"{resp.daemon.log_tail()}"
        assert (st.established, st.children, st.failed) == (COUNT, COUNT, 0), f"{st.line()}\n{st.errors}"
        assert len(st.latencies_ms) == COUNT
        assert resp.held() == (COUNT, COUNT)
        if shards > 1:  # our SPIr's first octet names the shard (ipsecd/ike/shard.py)
            sas = json.loads(resp.daemon.ctl("list-sas", "--json", timeout=60).stdout)["ike_sas"]
            per = [sum(1 for sa in sas if int(sa["spi_r"][:2], 16) % 2 == k) for k in (0, 1)]
            print(f"IKE SAs per shard: {per}")
            assert min(per) >= COUNT // 4, per  # a hash of SPIi: about half each
    finally:
        init.kill()
        resp.stop()


def test_certificate_logins_against_ipsecd(topology: Topology, tmp_path: Path) -> None:
    """--auth pubkey: the plugin's on-the-fly client certificates, RFC 7427 both ways."""
    count = 60
    b = Bench(build_plugin(), tmp_path, secrets.token_hex(16), in_flight=16, settle=1.0,
              pki=BenchPki.make(tmp_path / "pki"))
    resp = IpsecdResponder(topology, tmp_path / "ipsecd", b.psk, b.pki)
    conf = initiator_conf(tmp_path / "init" / "charon.log", responder=topology.b_addr,
                          initiator=topology.a_addr, psk=b.psk, tag="certs", in_flight=b.in_flight, pki=b.pki)
    init = LoadInitiator(topology.a, tmp_path / "init", b.plugin, conf)
    try:
        resp.start()
        init.start()
        base = {k: rss_kib(p) for k, p in resp.pids().items()}
        st = run_stage(b, resp, init, LogWatch(init.log_path), 1, 0, count, count, base, 0, time.monotonic() + 60)
        print(st.line())
        assert (st.established, st.children, st.failed) == (count, count, 0), \
            f"{st.line()}\n{st.errors}\n{read_tail(init.log_path)}\n{resp.daemon.log_tail()}"
        assert "RFC 7427" in resp.daemon.log_text()
    finally:
        init.kill()
        resp.stop()
