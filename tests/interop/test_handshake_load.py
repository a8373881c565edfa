"""Smoke of the handshake load benchmark (tests/bench_handshake.py), so the harness does not rot.

strongSwan's load-tester (built into build/loadtester by tests/loadtester/build.sh on
first use) opens 200 IKE SAs, each with a Child SA, against ipsecd as a responder, with
up to 64 handshakes in flight.  Every one must come up, as the initiator's log and
ipsecd itself both say.  Timings are printed, never judged.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from tests.bench_handshake import RESPONDER_CPU, Bench, IpsecdResponder, build_plugin, pin, rss_kib, run_stage
from tests.ipsecd_proc import why_no_ipsecd
from tests.netns import Topology

# The budget covers a first-time plugin build (~30 s-3 min); the load itself is capped at 60 s.
pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.timeout(900),
              pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or "")]

COUNT = 200


def test_200_handshakes_against_ipsecd(topology: Topology, tmp_path: Path) -> None:
    plugin = build_plugin()
    b = Bench(plugin, tmp_path, secrets.token_hex(16), in_flight=64, settle=1.0, stall=30.0)
    resp = IpsecdResponder(topology, tmp_path / "ipsecd", b.psk)
    try:
        resp.start()
        for pid in resp.pids().values():
            pin(pid, RESPONDER_CPU)
        base = {k: rss_kib(p) for k, p in resp.pids().items()}
        st = run_stage(b, resp, topology, 1, 0, COUNT, COUNT, base, 0, time.monotonic() + 60)
        print(st.line())
        log = (tmp_path / "ipsecd-r1-s0" / "charon.log").read_text(errors="replace")
        assert not st.partial, f"not done within 60 s: {st.line()}\n{log[-3000:]}\n{resp.daemon.log_tail()}"
        assert (st.established, st.children, st.failed) == (COUNT, COUNT, 0), f"{st.line()}\n{st.errors}"
        assert len(st.latencies_ms) == COUNT
        assert resp.held() == (COUNT, COUNT)
    finally:
        resp.stop()
