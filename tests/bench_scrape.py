"""Micro-benchmark of a metrics scrape's and an accounting Stop's data-plane reads (not a test).

    python -m tests.bench_scrape [--sas 20000] [--tags 10] [--repeat 5]

Before (issue 11): every scrape and every RADIUS Stop sent ``GetCounters``: the worker built a
snapshot of every SA (2 per Child SA) and JSON-encoded it, the IKE process decoded it and made
a dict per SA (``SaJobs.counters``) -- the scrape twice over (once itself, once through
``list_sas``, which also built an ``sa_info`` dict per SA, not measured here).
After: a scrape sends ``GetTotals``: the worker walks its SAs once and answers one sum per tag
(per (connection, child)); a Stop sends ``GetSaCounters`` for its session's pair only.

Measured, CPU ms per read, median of ``--repeat``, in process (the worker's state is built
as tests/test_dataplane_state.py builds a gateway of ``--sas`` road warriors, tagged in
``--tags`` groups): the worker's side (build the answer + encode) and the IKE process's side
(decode + what SaJobs does with it: the time its event loop is blocked).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

from ipsecd.dataplane import messages as m
from ipsecd.dataplane import readouts
from ipsecd.dataplane.client import SaJobs
from ipsecd.ike.child_sa import ChildSaState
from ipsecd.ike.state import IkeState
from ipsecd.metrics import state_counts
from tests.bench_heard import _OneWorker as HeardWorker
from tests.bench_heard import _run
from tests.test_dataplane_state import _road_warrior, make_state, messages


class _OneWorker(HeardWorker, SaJobs):
    """SaJobs over one in-process frame (bench_heard's fake), for the per-SPI reads too."""

    def _owner_of_spi(self, spi: int) -> int:
        return 0

    async def _request(self, build: Callable[[int], m.Message], worker: int = 0) -> m.Message:
        return m.decode_body(self.frame[4:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sas", type=int, default=20000, help="Child SAs held (2 SAs each)")
    ap.add_argument("--tags", type=int, default=10, help="(connection, child) groups")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    perf = time.process_time
    st = make_state()
    gc.disable()
    try:
        installs = tuple(dataclasses.replace(_road_warrior(i, m.Lifetime()), tag=1 + i % args.tags)
                         for i in range(args.sas))
        st.handle(m.Batch(installs), 0.0)  # type: ignore[arg-type]
    finally:
        gc.enable()
    messages(st)
    for i, sa in enumerate(st.sad.inbound.values()):  # some traffic, so the numbers are not all 0
        sa.counters.bytes, sa.counters.packets = 1000 + i, 10
    loop = asyncio.new_event_loop()  # sa_counters gathers its parts: it needs one (its overhead is counted)
    k = args.sas // 2
    pair = (0x10000000 + k, 0x20000000 + k)
    reads: dict[str, Callable[[], tuple[bytes, Callable[[bytes], object]]]] = {
        "GetCounters (before: scrape, Stop)": lambda: (
            m.encode(readouts.counters(st, 1)), lambda f: _run(SaJobs.counters(_OneWorker(f)))),
        "GetTotals (after: scrape)": lambda: (
            m.encode(readouts.totals(st, 1)), lambda f: _run(SaJobs.totals(_OneWorker(f)))),
        "GetSaCounters 1 pair (after: Stop)": lambda: (
            m.encode(readouts.sa_counters(st, m.GetSaCounters((pair[0],), (pair[1],), id=1))),
            lambda f: loop.run_until_complete(SaJobs.sa_counters(_OneWorker(f), [pair]))),  # gather: a loop
    }
    print(f"{args.sas} Child SAs in {args.tags} tags; CPU ms per read, median of {args.repeat} "
          "(worker build+encode | IKE decode+use)")
    for name, read in reads.items():
        rows = []
        for _ in range(args.repeat):
            t0 = perf()
            frame, use = read()
            t1 = perf()
            use(frame)
            t2 = perf()
            rows.append((t1 - t0, t2 - t1, len(frame)))
        w = statistics.median(r[0] for r in rows) * 1e3
        i = statistics.median(r[1] for r in rows) * 1e3
        print(f"  {name:<36} {w:8.2f} | {i:8.2f} ms   frame {rows[0][2]:>9} B")
    # the walk alone (the worker's side of GetTotals without the encoding)
    walk = []
    for _ in range(args.repeat):
        t0 = perf()
        readouts.totals(st, 1)
        walk.append(perf() - t0)
    print(f"  GetTotals walk alone: {statistics.median(walk) * 1e3:.2f} ms CPU in the worker "
          f"({statistics.median(walk) * 1e9 / (2 * args.sas):.0f} ns per SA)")
    # the IKE side's remaining O(SAs): the state gauges counted off the engine's table
    sas = [SimpleNamespace(state=IkeState.ESTABLISHED, children=[SimpleNamespace(state=ChildSaState.INSTALLED)])
           for _ in range(args.sas)]
    counts = []
    for _ in range(args.repeat):
        t0 = perf()
        state_counts(sas)
        counts.append(perf() - t0)
    print(f"  state_counts over {args.sas} IKE SAs: {statistics.median(counts) * 1e3:.2f} ms CPU in the IKE process")


if __name__ == "__main__":
    main()
