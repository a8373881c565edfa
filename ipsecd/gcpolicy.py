"""The cyclic garbage collector's settings for a process that holds tens of thousands of SAs:
the IKE process, its shards and the data-plane worker (each calls :func:`tune_gc` once started).

A full collection walks every tracked object. 20,000 IKE SAs are well over a million objects,
and 20,000 Child SAs in the worker ~400,000: left to the default policy, a full pass stops
the process for 100-500 ms, and every handshake (in the IKE process) or every install (in the
worker: IKE_AUTH waits for its answer) that arrives meanwhile waits behind it -- the
handshake p99 of docs/performance.md "Latency under load".
"""

from __future__ import annotations

import gc
import time

# Python's cyclic GC: a young-generation pass per 10,000 net allocations instead of 700.
# A handshake leaves no reference cycles behind (its objects die by reference counting, or
# live as long as the SA), so frequent passes only walk the same survivors again: with the
# default thresholds GC was ~15 % of the CPU per handshake in tests/bench_engine.py. 10,000
# keeps a young pass short (latency under load) while running it ~14x less often. The worker's
# SA records are the same story: they live as long as their SA.
GC_THRESHOLDS = (10_000, 10, 10)


class GcPolicy:
    """A gc callback: what survives a gen-1 or full collection is frozen (gc.freeze), so the
    old generation stays small and full passes walk only what was promoted since; every
    ``refresh`` seconds everything is thawed instead and the next full pass walks it all.

    Why: a full pass walks every object, and 20,000 IKE SAs are well over a million --
    ~150 ms in-process here, up to half a second in the daemon on a busy core: the 0.4-0.5 s
    p99 of an open-loop stage at 20,000 SAs (docs/performance.md). Freezing makes those
    passes short. The price: a closed IKE SA is a reference cycle (its exchanges point back
    at it), and a frozen cycle is only freed by the full pass after the next thaw -- at most
    ``refresh`` seconds of closed SAs wait, and one pass per ``refresh`` is long.
    """

    def __init__(self, refresh: float = 300.0) -> None:
        self.refresh = refresh
        self.thawed_at = time.monotonic()
        self.thawing = False  # thawed, and the full pass that walks everything has not run yet

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        generation = info.get("generation")
        if phase != "stop" or generation not in (1, 2):
            return
        if self.thawing:
            if generation == 2:
                self.thawing = False  # that pass saw everything: cycles of closed SAs are freed
                gc.freeze()
            return
        if generation == 2 and time.monotonic() - self.thawed_at >= self.refresh:
            gc.unfreeze()
            self.thawed_at, self.thawing = time.monotonic(), True
        else:
            gc.freeze()


def tune_gc() -> None:
    """Once started: what exists now (modules, configuration, credentials) lives as long as
    the process, so the collector stops walking it (gc.freeze); then GC_THRESHOLDS and
    GcPolicy."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if not any(isinstance(cb, GcPolicy) for cb in gc.callbacks):
        gc.callbacks.append(GcPolicy())
