"""Micro-benchmark of DPD's traffic poll (not a test): CPU per poll, in-process.

    python -m tests.bench_heard [--sas 20000] [--active 0,1000,20000] [--repeat 5]

Every ``TRAFFIC_POLL`` (5 s) the IKE process learns which inbound SAs received packets
(RFC 7296 2.4: DPD spares a peer it hears from). Before: ``GetCounters``, a snapshot of
every SA (2 per Child SA) JSON-encoded by the worker, decoded and turned into a dict per SA
by the IKE process (``SaJobs.counters``), then compared with the previous poll's counts.
Now: ``GetHeard``, the inbound SPIs that received packets since the previous poll only.

Measured here: the frame's encoding (the worker's side) and, separately, its decoding plus
what the IKE process does with it (the time its event loop is blocked), for ``--sas`` Child
SAs of which ``--active`` received packets. Not measured: the worker's building of the
snapshots (before) -- so the "before" figures understate. Only the message layer and
``SaJobs`` are used, so ``PYTHONPATH=/other/tree`` measures another tree as long as it has
``GetHeard`` (the "before" half needs only ``GetCounters``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.client import SaJobs


class _OneWorker:
    """What ``SaJobs.counters``/``heard`` need of ``self``: a broadcast answered by one reply."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame

    async def _broadcast(self, build: Callable[[int], m.Message]) -> list[m.Message]:
        return [m.decode_body(self.frame[4:])]


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    raise RuntimeError("the coroutine waited")


def _old_note(counters: dict[str, Any], seen: dict[str, int], note: Callable[[bytes, float], None]) -> dict[str, int]:
    """The traffic watch before GetHeard (installer._note_traffic of branch int)."""
    now = time.monotonic()
    fresh: dict[str, int] = {}
    for key, c in counters.get("sas", {}).items():
        packets = int(c.get("packets", 0))
        if c.get("direction") != "in" or not packets:
            continue
        fresh[key] = packets
        if packets != seen.get(key):
            note(bytes.fromhex(key[:8]), now)
    return fresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sas", type=int, default=20000, help="Child SAs held (2 SAs each)")
    ap.add_argument("--active", default="0,1000,20000", help="comma-separated: Child SAs that received packets")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    perf = time.process_time
    notes: list[bytes] = []

    def note(spi: bytes, now: float) -> None:
        notes.append(spi)

    print(f"{args.sas} Child SAs; CPU ms per poll, median of {args.repeat} (worker encode | IKE decode+use)")
    for active in (int(a) for a in args.active.split(",")):
        snaps = []
        for i in range(args.sas):
            spi_in, spi_out = 0x10000000 + i, 0x20000000 + i
            snaps.append(m.SaCounterSnapshot(spi_in, "in", i + 1, 1000 * (i < active), 10 * (i < active), {}, 0))
            snaps.append(m.SaCounterSnapshot(spi_out, "out", i + 1, 1000, 10, {}, 10))
        counters = m.Counters(1, tuple(snaps), {"short": 1}, {"tun_rx_packets": 3})
        heard = m.Heard(1, tuple(0x10000000 + i for i in range(active)))
        rows: dict[str, list[tuple[float, float, int]]] = {"before (GetCounters)": [], "after (GetHeard)": []}
        for _ in range(args.repeat):
            t0 = perf()
            frame = m.encode(counters)
            t1 = perf()
            got = _run(SaJobs.counters(_OneWorker(frame)))  # type: ignore[arg-type]
            _old_note(got, {}, note)
            del got
            t2 = perf()
            rows["before (GetCounters)"].append((t1 - t0, t2 - t1, len(frame)))
            t0 = perf()
            frame = m.encode(heard)
            t1 = perf()
            now = time.monotonic()
            for spi in _run(SaJobs.heard(_OneWorker(frame))):  # type: ignore[arg-type]
                note(spi.to_bytes(4, "big"), now)
            t2 = perf()
            rows["after (GetHeard)"].append((t1 - t0, t2 - t1, len(frame)))
            notes.clear()
        for name, vals in rows.items():
            enc = statistics.median(v[0] for v in vals) * 1e3
            use = statistics.median(v[1] for v in vals) * 1e3
            print(f"  active {active:>6}  {name:<22} {enc:8.2f} | {use:8.2f} ms   frame {vals[0][2]:>9} B")


if __name__ == "__main__":
    main()
