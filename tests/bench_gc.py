"""What closed IKE SAs leave to the cyclic garbage collector: ``python -m tests.bench_gc
[--sas 1000] [--rounds 3]``.

Not a pytest test (its numbers are for people; tests/test_sa_cycles.py is the check). Two
in-process engines (tests/ike_pair.py) establish ``--sas`` IKE SAs with a Child SA each,
rekey every Child SA and delete every IKE SA, with the collector disabled. Then
``gc.collect()`` says how many objects only it could free (the reference cycles the closed
SAs left: 0 when they die by reference counting), and how long that pass took; the CPU
seconds of the churn itself (``time.process_time()``) show what the weak back-pointers
cost. Runs on any tree, so two trees compare interleaved (A B B A, docs/performance.md).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from ipsecd.ike.ike_sa import IkeState
from tests.ike_pair import make_pair

BATCH = 8


def churn(sas: int) -> tuple[float, int, float, int]:
    """(CPU seconds of the churn, objects the collector found, seconds of that pass, SAs closed)."""
    pair = make_pair()
    gc.collect()
    gc.disable()
    try:
        t0 = time.process_time()
        for i in range(sas):
            pair.a.initiate("conn", pair.now)
            if i % BATCH == BATCH - 1:  # a few at a time: the front door's per-address limits
                pair.run_until_quiet(5)
        pair.run_until_quiet(30)
        spis = [sa.children[0].spi_in for sa in pair.a.list_sas() if sa.children]
        for spi in spis:
            pair.a.rekey_child(spi, pair.now)
        pair.run_until_quiet(30)
        ids = [sa.ike_sa_id for sa in pair.a.list_sas() if sa.state == IkeState.ESTABLISHED]
        for ike_sa_id in ids:
            pair.a.delete_ike(ike_sa_id, pair.now)
        closed = len(ids)
        pair.run_until_quiet(30)
        cpu = time.process_time() - t0
        assert pair.a.list_sas() == [] and pair.b.list_sas() == []
        pair.events_a.clear()
        pair.events_b.clear()
        t1 = time.perf_counter()
        found = gc.collect()
        return cpu, found, time.perf_counter() - t1, closed
    finally:
        gc.enable()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sas", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    cpus = []
    for r in range(a.rounds):
        cpu, found, took, closed = churn(a.sas)
        cpus.append(cpu / closed * 1e6)
        print(f"round {r + 1}: {closed} IKE SAs established, Child SA rekeyed, deleted: {cpus[-1]:.0f} CPU µs each; "
              f"left to the collector: {found} objects ({found / closed:.1f} per SA), its pass {took * 1e3:.1f} ms",
              flush=True)
    print(f"median {statistics.median(cpus):.0f} CPU µs per SA (both engines)")


if __name__ == "__main__":
    main()
