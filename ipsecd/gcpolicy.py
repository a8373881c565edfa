"""The cyclic garbage collector's settings for a process that holds tens of thousands of SAs:
the IKE process, its shards and the data-plane worker (each calls :func:`tune_gc` once started).

A full collection walks every tracked object. 20,000 IKE SAs are well over a million objects,
and 20,000 Child SAs in the worker ~400,000: left to the default policy, a full pass stops
the process for 100-500 ms, and every handshake (in the IKE process) or every install (in the
worker: IKE_AUTH waits for its answer) that arrives meanwhile waits behind it -- the
handshake p99 of docs/performance.md "Latency under load".

What dies is freed by reference counting alone: a closed IKE SA and everything it owns
(exchanges, tasks, fragments, EAP and MOBIKE state; ike/backref.py), a removed Child SA's
records in the worker (esp/transform.py) -- tests/test_sa_cycles.py checks every way an SA
ends with the collector disabled. So the collector only has to walk what is new, and the
survivors can be frozen (:class:`GcPolicy`). :class:`GcStats` records every pass, so the
pauses that remain are visible (``ipsecctl stats``, ``ipsecd_gc_*`` metrics).
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
REFRESH = 3600.0  # seconds between thaws (GcPolicy): a safety net, see there


class GcPolicy:
    """A gc callback: what survives a gen-1 or full collection is frozen (gc.freeze), so the
    old generation stays small and full passes walk only what was promoted since; every
    ``refresh`` seconds everything is thawed instead and the next full pass walks it all.

    Why: a full pass walks every object, and 20,000 IKE SAs are well over a million --
    ~150 ms in-process here, up to half a second in the daemon on a busy core: the 0.4-0.5 s
    p99 of an open-loop stage at 20,000 SAs (docs/performance.md). Freezing makes those
    passes short.

    The thaw is a safety net, hence once an hour (``REFRESH``): a frozen object is only freed
    by reference counting, and closed SAs are (see the module docstring), so nothing the
    daemon drops in normal operation waits for it. Should an unforeseen reference cycle
    appear (a new code path, a library's internal cycle, e.g. pyOpenSSL's for EAP-TLS), its
    memory still comes back, at most an hour later, at the price of one long pass an hour.
    """

    def __init__(self, refresh: float = REFRESH) -> None:
        self.refresh = refresh
        self.thawed_at = time.monotonic()
        self.thawing = False  # thawed, and the full pass that walks everything has not run yet

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        generation = info.get("generation")
        if phase != "stop" or generation not in (1, 2):
            return
        if self.thawing:
            if generation == 2:
                self.thawing = False  # that pass saw everything: unforeseen cycles are freed
                gc.freeze()
            return
        if generation == 2 and time.monotonic() - self.thawed_at >= self.refresh:
            gc.unfreeze()
            self.thawed_at, self.thawing = time.monotonic(), True
        else:
            gc.freeze()


class GcStats:
    """A gc callback that times every pass: per generation the number of passes, their
    total seconds and the longest one since the process started (two monotonic reads per
    pass). What ``ipsecctl stats`` shows under ``gc`` and the ``ipsecd_gc_*`` metrics
    export, per process (docs/metrics.md)."""

    __slots__ = ("_started", "longest", "passes", "seconds")

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
            return
        took = time.monotonic() - self._started
        g = info.get("generation", 2)
        self.passes[g] += 1
        self.seconds[g] += took
        if took > self.longest[g]:
            self.longest[g] = took

    def figures(self) -> dict[str, dict[str, float]]:
        """``{"0": {"passes": n, "seconds": s, "max_seconds": s}, "1": ..., "2": ...}`` (JSON-ready)."""
        return {str(g): {"passes": self.passes[g], "seconds": round(self.seconds[g], 6),
                         "max_seconds": round(self.longest[g], 6)} for g in range(3)}


def gc_stats() -> GcStats | None:
    """This process's GcStats (installed by :func:`tune_gc`), if any."""
    return next((cb for cb in gc.callbacks if isinstance(cb, GcStats)), None)


def gc_figures() -> dict[str, dict[str, float]]:
    """This process's :meth:`GcStats.figures`; empty before :func:`tune_gc` (tests, tools)."""
    st = gc_stats()
    return st.figures() if st is not None else {}


# The worker's figures travel in its Counters message, whose maps are str -> int: microseconds.
def figures_to_wire(figures: dict[str, dict[str, float]]) -> dict[str, int]:
    """``{"2.passes": n, "2.us": total, "2.max_us": longest, ...}``."""
    out: dict[str, int] = {}
    for g, f in figures.items():
        out[f"{g}.passes"] = int(f["passes"])
        out[f"{g}.us"] = round(f["seconds"] * 1e6)
        out[f"{g}.max_us"] = round(f["max_seconds"] * 1e6)
    return out


def gc_wire() -> dict[str, int]:
    """This process's figures in their wire form (the worker's Counters)."""
    return figures_to_wire(gc_figures())


def figures_from_wire(wire: dict[str, int]) -> dict[str, dict[str, float]]:
    """The inverse of :func:`figures_to_wire`; keys it does not know are ignored."""
    out: dict[str, dict[str, float]] = {}
    for g in ("0", "1", "2"):
        if f"{g}.passes" in wire:
            out[g] = {"passes": wire[f"{g}.passes"], "seconds": wire.get(f"{g}.us", 0) / 1e6,
                      "max_seconds": wire.get(f"{g}.max_us", 0) / 1e6}
    return out


def tune_gc() -> None:
    """Once started: what exists now (modules, configuration, credentials) lives as long as
    the process, so the collector stops walking it (gc.freeze); then GC_THRESHOLDS, GcPolicy
    and GcStats."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if not any(isinstance(cb, GcPolicy) for cb in gc.callbacks):
        gc.callbacks.append(GcPolicy())
    if gc_stats() is None:
        # first in the list: its "stop" runs before the policy's, so it times the collection
        # itself (the policy's freeze after it is O(1))
        gc.callbacks.insert(0, GcStats())
