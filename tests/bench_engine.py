"""In-process handshake cost: ``python -m tests.bench_engine [--handshakes 2000] [--rounds 3] [--profile]``.

Not a pytest test (its numbers are for people).  The responder side of the load-tester
benchmark (tests/bench_handshake.py) without sockets, the worker or the clock: one
responder ``IkeManager`` configured as there (``aes128gcm16-prfsha256-x25519``, PSK,
remote id ``%any``, the gateway's selectors) answers IKE_SA_INIT + IKE_AUTH of
``--handshakes`` initiators, each a fresh ``IkeManager`` with its own identity (as the
load-tester's ``initiator_id`` is unique per SA).  Only the responder's calls are timed
(``time.process_time()``): ``receive_datagram``, draining ``next_event()``,
``datagrams_to_send()`` and ``get_timer()`` -- what the shell does per wake-up
(ipsecd/shell/ike_shell.py), minus the data-plane install.  Logging is set up as the
daemon sets it up (INFO, to a file under /tmp), so log lines cost what they cost.

Prints CPU µs per handshake (IKE_SA_INIT and IKE_AUTH separately) per round; compare two
trees by running this in each, interleaved (A B B A), as docs/performance.md says.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ipsecd.ike.events import ChildSaEstablished
from ipsecd.ike.frontdoor import FrontDoorSettings
from ipsecd.ike.manager import IkeManager
from ipsecd.logsetup import setup_logging
from tests.bench_handshake import NO_DOS_PROTECTION
from tests.ike_pair import A_ADDR, B_ADDR, make_settings

PROPOSAL, ESP = "aes128gcm16-prfsha256-x25519", "aes128gcm16"


def responder() -> IkeManager:
    settings = make_settings("gw", local_id="srv.example", remote_id="%any", ike=(PROPOSAL,), esp=(ESP,),
                             local_ts=("10.2.0.0/24",), remote_ts=("10.1.0.0/16",), local_addrs=(B_ADDR,),
                             remote_addrs=("%any",))
    # the front door relaxed as in the load benchmark (NO_DOS_PROTECTION): one source address
    door = FrontDoorSettings(**NO_DOS_PROTECTION)  # type: ignore[arg-type]
    return IkeManager([settings], now=1000.0, rng=random.Random(2).randbytes, front_door=door)


def client(i: int) -> IkeManager:
    settings = make_settings("c", local_id=f"c{i}.example", remote_id="srv.example", ike=(PROPOSAL,), esp=(ESP,),
                             local_ts=("10.1.0.1/32",), remote_ts=("10.2.0.0/24",))
    return IkeManager([settings], now=1000.0, rng=random.Random(1000 + i).randbytes)


def run(n: int, profile: cProfile.Profile | None = None) -> tuple[float, float, int]:
    """``n`` handshakes against one responder: (CPU s for IKE_SA_INIT, for IKE_AUTH, Child SAs).

    Inside an event loop, as in the daemon: what the responder defers to the end of a loop
    turn (the log's write) runs in the timed section too."""
    return asyncio.run(_run(n, profile))


async def _run(n: int, profile: cProfile.Profile | None) -> tuple[float, float, int]:
    gw = responder()
    spent = [0.0, 0.0]
    children = 0
    for i in range(n):
        c = client(i)
        c.initiate("c", 1000.0)
        for step in range(2):
            (req,) = c.datagrams_to_send()
            port = 500  # every load-tester client comes from one address and port 500
            t0 = time.process_time()
            if profile:
                profile.enable()
            gw.receive_datagram(req.data, (B_ADDR, 500), (A_ADDR, port), 1000.0)
            while (ev := gw.next_event()) is not None:
                children += isinstance(ev, ChildSaEstablished)
            out = gw.datagrams_to_send()
            gw.get_timer()
            await asyncio.sleep(0)  # the end of the loop turn
            if profile:
                profile.disable()
            spent[step] += time.process_time() - t0
            for d in out:
                c.receive_datagram(d.data, (A_ADDR, port), (B_ADDR, 500), 1000.0)
            while c.next_event() is not None:
                pass
    return spent[0], spent[1], children


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--handshakes", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="cProfile the responder's calls of one round")
    args = p.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ipd-bench-engine-"))
    # the daemon's stderr is a file (or journald's pipe): fd 2 goes to one, as set up by the daemon
    sys.stderr.flush()
    fd = os.open(log_dir / "ipsecd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    setup_logging("info")
    from ipsecd import daemon  # the daemon's GC settings, if this tree has them

    tune = getattr(daemon, "tune_gc", None)
    if tune is not None:
        tune()
    run(50)  # warm-up: imports, caches
    if args.profile:
        prof = cProfile.Profile()
        run(args.handshakes, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        return 0
    totals = []
    for r in range(args.rounds):
        init_s, auth_s, kids = run(args.handshakes)
        n = args.handshakes
        totals.append((init_s + auth_s) / n * 1e6)
        print(f"round {r + 1}: IKE_SA_INIT {init_s / n * 1e6:.0f} µs, IKE_AUTH {auth_s / n * 1e6:.0f} µs, "
              f"total {totals[-1]:.0f} µs per handshake ({kids}/{n} Child SAs)")
    print(f"total µs/handshake min / median / max: {min(totals):.0f} / {statistics.median(totals):.0f} / "
          f"{max(totals):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
