"""A gateway holding many SAs stops within systemd's stop timeout (issue 11).

strongSwan's load-tester opens ``IPSECD_SHUTDOWN_SAS`` IKE SAs (default 500 in ``make
test``; ``make bench`` runs 5,000) against ipsecd; then SIGTERM. ipsecd must exit with status 0 well
within systemd's default ``TimeoutStopSec`` (90 s): here within ``SHUTDOWN_BUDGET``,
having sent Deletes (the initiator sees them) and removed its routes and rules.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.bench_handshake import (
    RESPONDER_CPU,
    Bench,
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

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.timeout(900),
              pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or "")]

COUNT = int(os.environ.get("IPSECD_SHUTDOWN_SAS", "500"))
SHUTDOWN_BUDGET = 30.0  # seconds: ipsecd's own cap is 20 s (daemon.SHUTDOWN_WAIT_MAX + cleanup)


def test_sigterm_with_many_sas_is_bounded(topology: Topology, tmp_path: Path) -> None:
    b = Bench(build_plugin(), tmp_path, secrets.token_hex(16), in_flight=64, settle=1.0)
    resp = IpsecdResponder(topology, tmp_path / "ipsecd", b.psk)
    conf = initiator_conf(tmp_path / "init" / "charon.log", responder=topology.b_addr,
                          initiator=topology.a_addr, psk=b.psk, tag="stop", in_flight=b.in_flight)
    init = LoadInitiator(topology.a, tmp_path / "init", b.plugin, conf)
    try:
        resp.start()
        for pid in resp.pids().values():
            pin(pid, RESPONDER_CPU)
        init.start()
        base = {k: rss_kib(p) for k, p in resp.pids().items()}
        st = run_stage(b, resp, init, LogWatch(init.log_path), 1, 0, COUNT, COUNT, base, 0,
                       time.monotonic() + 600)
        print(st.line())
        assert st.established == COUNT, f"{st.line()}\n{read_tail(init.log_path)}"
        proc = resp.daemon.proc
        assert proc is not None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=SHUTDOWN_BUDGET)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ipsecd holding {COUNT} SAs still running {SHUTDOWN_BUDGET} s after SIGTERM\n"
                                 f"{resp.daemon.log_tail()}") from None
        took = time.monotonic() - t0
        print(f"shutdown with {COUNT} SAs: {took:.2f} s")
        log = resp.daemon.log_text()
        assert rc == 0, log[-3000:]
        assert f"deleting {COUNT} IKE SA(s)" in log
        deletes = read_tail(init.log_path, 10 ** 8).count("received DELETE for IKE_SA")
        assert deletes > 0, "the initiator saw no Delete"
        print(f"the initiator received {deletes} Deletes")
        assert topology.b.run(["ip", "route", "show", "table", "220"], check=False).stdout.strip() == ""
        assert "lookup 220" not in topology.b.run(["ip", "rule"]).stdout
    finally:
        init.kill()
        resp.stop()
