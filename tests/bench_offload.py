"""CPU cost of the TUN offload helpers, in-process (not a test): µs per TCP segment.

    python -m tests.bench_offload [--pieces 46] [--mss 1336] [--repeat 7]

``segment``: cutting one TSO super-segment (NEEDS_CSUM, as the kernel hands it over) into
MSS pieces with complete checksums (offload.segment). ``coalesce``: merging those pieces
back into one GRO super-packet, checksum verified once per run (offload.TcpCoalescer).
``checksum``: the RFC 1071 sum of one MSS payload (offload._sum). Best of ``--repeat``
rounds of ``time.process_time``; compare trees with ``PYTHONPATH=/path/to/tree``.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Callable

from ipsecd.dataplane.offload import GSO_TCPV4, NEEDS_CSUM, TcpCoalescer, VnetHdr, _sum, checksum, segment


def _super_segment(payload: bytes) -> bytes:
    """IPv4 + TCP (timestamps) + payload, the TCP checksum field holding the pseudo-header sum."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 777, 8 << 4, 0x10, 500, 0, 0) + b"\x01\x01\x08\x0a" + bytes(8)
    l4 = tcp + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0x1234, 0x4000, 64, 6, 0,
                               bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1])))
    struct.pack_into("!H", ip, 10, checksum(ip))
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, len(l4))
    partial = 0xFFFF - checksum(pseudo)
    return bytes(ip) + l4[:16] + struct.pack("!H", partial) + l4[18:]


def _best(fn: Callable[[], object], rounds: int, inner: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(inner):
            fn()
        best = min(best, (time.process_time() - t) / inner)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_offload")
    p.add_argument("--pieces", type=int, default=46)
    p.add_argument("--mss", type=int, default=1336)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    payload = os.urandom(args.mss * args.pieces)
    sup = _super_segment(payload)
    hdr = VnetHdr(NEEDS_CSUM, GSO_TCPV4, 52, args.mss, 20, 16)
    pieces = segment(hdr, sup)
    n = len(pieces)

    def coalesce() -> None:
        co = TcpCoalescer()
        for piece in pieces:
            co.add(piece)
        assert len(co.flush()) == 1

    data = payload[: args.mss]
    seg = _best(lambda: segment(hdr, sup), args.repeat, 200) / n
    coa = _best(coalesce, args.repeat, 200) / n
    csum = _best(lambda: _sum(data), args.repeat, 20000)
    print(f"segment   {seg * 1e6:.3f} us/piece ({n} pieces of {args.mss} B)")
    print(f"coalesce  {coa * 1e6:.3f} us/segment (checksum verified once per run)")
    print(f"checksum  {csum * 1e6:.3f} us per {args.mss} B payload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
