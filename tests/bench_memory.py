"""Where the bytes per tunnel go, in-process: ``python -m tests.bench_memory [--tunnels 2000] [--top 25]``.

Not a pytest test (tests/test_memory_per_tunnel.py keeps a bound). Two parts, each on the
same machinery the daemon runs:

- the IKE engine of a responder: ``--tunnels`` real handshakes (PSK,
  aes128gcm16-prfsha256-x25519, one Child SA each, every client with its own identity, as
  strongSwan's load-tester makes them);
- the data-plane worker's state: as many Child SAs installed through the wire codec
  (InstallSa of a road warrior: host /32 to the site's /24, AES-GCM-128).

For each it prints the VmRSS growth per tunnel (everything: OpenSSL contexts, the
allocator's slack) and tracemalloc's per-line breakdown (Python objects only), in bytes per
tunnel. Each part runs in a process of its own, the RSS run before the tracemalloc run
(tracemalloc's own bookkeeping, or memory another part freed, would distort the RSS). The
daemon's figures (tests/bench_handshake.py) add what the shell keeps per SA and the
process's fixed costs.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tracemalloc
from collections.abc import Callable

from tests.test_memory_per_tunnel import _Gateway, _Worker


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure(name: str, make: Callable[[], Callable[[int], None]], n: int, warm: int, top: int) -> None:
    add = make()
    for i in range(warm):
        add(i)
    gc.collect()
    before = _rss_kib()
    for i in range(warm, warm + n):
        add(i)
    gc.collect()
    rss = (_rss_kib() - before) * 1024 / n
    add = make()  # a fresh one for the traced run
    for i in range(warm):
        add(i)
    gc.collect()
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    for i in range(warm, warm + n):
        add(i)
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(first, "lineno")
    tracemalloc.stop()
    traced = sum(s.size_diff for s in stats) / n
    print(f"{name}: {n} tunnels: RSS {rss:.0f} B/tunnel, traced (Python objects) {traced:.0f} B/tunnel")
    for s in stats[:top]:
        frame = s.traceback[0]
        print(f"  {s.size_diff / n:7.0f} B {s.count_diff / n:5.2f} objects  {frame.filename.split('/ipsecd/')[-1]}:"
              f"{frame.lineno}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tunnels", type=int, default=2000)
    p.add_argument("--top", type=int, default=25, help="lines of the tracemalloc breakdown (25)")
    p.add_argument("--part", choices=("ike", "worker"), help="only this part, in this process")
    a = p.parse_args(argv)
    if a.part == "ike":
        measure("IKE engine (responder)", lambda: _Gateway().handshake, a.tunnels, 20, a.top)
    elif a.part == "worker":
        measure("worker state", lambda: _Worker().install, a.tunnels, 50, a.top)
    else:
        for part in ("ike", "worker"):
            subprocess.run([sys.executable, "-m", "tests.bench_memory", "--tunnels", str(a.tunnels),
                            "--top", str(a.top), "--part", part], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
