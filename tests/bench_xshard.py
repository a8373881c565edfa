"""CPU per cross-shard claim: ``python -m tests.bench_xshard [--claims 5000] [--rounds 3] [--holding 2000]``.

Not a pytest test (its numbers are for people). With ``settings.ike_shards`` > 1 every IKE SA
established with INITIAL_CONTACT (most remote-access clients send it on their first login)
or under ``unique: replace|keep`` sends a claim to the other shards (shell/xshard.py). This
times what one claim costs, both ends in this process (``time.process_time()``): the
claimant's encoding, a real ShardLink over a socketpair (JSON lines, asyncio), the other
shard's decoding and ``apply`` on a manager holding ``--holding`` SAs of other identities
(nothing to replace: the common case, a fresh login), the reply back. Claims are sent 64 at
a time, as a login storm would. Compare with the CPU of a handshake (tests/bench_engine.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from ipsecd.identity import Identity
from ipsecd.ike.frontdoor import FrontDoorSettings
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.shard import Shard
from ipsecd.ike.xshard import Claim, Rule, encode_claim
from ipsecd.shell.shards import ShardLink
from ipsecd.shell.xshard import ClaimRelay
from tests.bench_handshake import NO_DOS_PROTECTION
from tests.test_ike_cp import client_settings, gateway_settings
from tests.test_xshard import ShardedOffice

BATCH = 64


class _Shell:
    def __init__(self, manager: IkeManager) -> None:
        self.manager = manager

    def act(self, job: Callable[[IkeManager, float], Any]) -> Any:
        return job(self.manager, time.monotonic())


def holding(n: int) -> IkeManager:
    """A gateway shard with ``n`` established IKE SAs of distinct client identities."""
    gw = IkeManager([gateway_settings(pools=())], now=1000.0, shard=Shard(1, 2),
                      front_door=FrontDoorSettings(**NO_DOS_PROTECTION))  # type: ignore[arg-type]
    o = ShardedOffice([gw], relay=False, home=[0])
    for i in range(n):  # one client slot (one NAT port), a new client with its own identity each time
        o.clients = [IkeManager([client_settings(0, vips=(), name=f"h{i}.test")], now=o.now)]
        o.clients[0].initiate("rw", o.now)
        o.pump()
    return gw


async def one_round(gw: IkeManager, claims: int) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = ClaimRelay(_Shell(gw), 1)  # type: ignore[arg-type]
    primary, shard = ShardLink(a, {}, "shard 1"), ShardLink(b, {"claim": relay.on_claim}, "the primary")
    await primary.start()
    await shard.start()
    gw_id = Identity.parse("gw.test")
    wire = [encode_claim(Claim(Rule.INITIAL_CONTACT, gw_id, Identity.parse(f"new{i}.test"), 2 * i + 1, 0,
                               time.monotonic(), time.monotonic())) for i in range(claims)]
    t0 = time.process_time()
    for i in range(0, claims, BATCH):
        await asyncio.gather(*(primary.call("claim", claim=c) for c in wire[i:i + BATCH]))
    spent = time.process_time() - t0
    primary.close()
    shard.close()
    return spent / claims


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--claims", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--holding", type=int, default=2000, help="IKE SAs the answering shard holds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # building the SAs held logs one line each
    gw = holding(args.holding)
    per = [asyncio.run(one_round(gw, args.claims)) for _ in range(args.rounds)]
    print(f"{len(gw.list_sas())} SAs held; CPU per claim (both ends), {args.rounds} rounds of {args.claims}: "
          f"median {statistics.median(per) * 1e6:.0f} µs, min {min(per) * 1e6:.0f}, max {max(per) * 1e6:.0f}")


if __name__ == "__main__":
    main()
