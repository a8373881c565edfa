"""Micro-benchmark of the worker's per-packet loops, in-process (not a test): ns per packet.

    python tests/bench_worker.py [--packets N] [--size BYTES] [--repeat R]

Two ``Worker`` objects joined over loopback UDP, a datagram socketpair standing in for each
TUN (as in tests/test_dataplane_unit.py), one AES-256-GCM Child SA. A pushes packets into
its "TUN", its ``step()`` drains, protects and sends them (GSO-batched); B's ``step()``
receives (GRO), unprotects and writes them to its "TUN". The figure is the CPU time spent
in each worker's ``step()`` divided by the packets it moved: the whole per-packet path
(syscalls included) without the noise of namespaces, iperf3 and TCP.

It uses only what every version of the worker has (``Worker(...)``, ``handle``, ``step``),
so the same file measures another tree: ``PYTHONPATH=/path/to/tree python tests/bench_worker.py``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import time
from ipaddress import ip_address

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.udp import bind_udp
from ipsecd.dataplane.worker import Worker
from ipsecd.esp.packet import build_ipv4_header
from tests.dp_static_peer import static_params


def _worker(cfg: m.WorkerConfig) -> tuple[Worker, socket.socket, socket.socket, list[socket.socket]]:
    ctrl_w, ctrl_t = socket.socketpair()
    tun_w, tun_t = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (ctrl_w, ctrl_t, tun_w, tun_t):
        s.setblocking(False)
    for s in (tun_w, tun_t):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    udp = bind_udp("127.0.0.1", 0, reuseport=False, gro=True, buffer_size=8 << 20)
    w = Worker(ctrl_w, tun_w.fileno(), [udp], [], cfg)
    w.start()
    return w, tun_t, udp, [ctrl_t, ctrl_w, tun_w]


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(1 << 20)
        except BlockingIOError:
            return n
        n += 1


def _packet(size: int) -> bytes:
    payload = bytes(size - 28)
    seg = struct.pack("!HHHH", 1111, 2222, 8 + len(payload), 0) + payload
    return build_ipv4_header(ip_address("10.1.0.5").packed, ip_address("10.2.0.7").packed, 17, len(seg)) + seg


def run(packets: int, size: int, lifetime: m.Lifetime, handoff: bool = False) -> tuple[float, float]:
    cfg = m.WorkerConfig(tun_name="bench")
    a, a_tun, a_udp, a_keep = _worker(cfg)
    b, b_tun, b_udp, b_keep = _worker(cfg)
    owner = a
    if handoff:  # A's SA lives in a second worker: every packet A reads is handed over (handoff.py)
        from ipsecd.dataplane.handoff import Handoff, handoff_pairs

        owner, _t, owner_udp, owner_keep = _worker(cfg)
        pairs = handoff_pairs(2, 4 << 20)
        a.handoff = Handoff(0, pairs[0][0], {1: pairs[1][1]}, a.state.stats, a.state.drops)
        owner.handoff = Handoff(1, pairs[1][0], {0: pairs[0][1]}, owner.state.stats, owner.state.drops)
        owner._register_inbox()
        a_keep += [s for pair in pairs for s in pair] + owner_keep + [_t, owner_udp]
    for w, peer_udp, side in ((owner, b_udp, "a"), (b, a_udp, "b")):
        nets = ("10.1.0.0/24", "10.2.0.0/24") if side == "a" else ("10.2.0.0/24", "10.1.0.0/24")
        sa_in, sa_out, pols = static_params(side, "127.0.0.1", "127.0.0.1", *nets, encap=True,
                                            remote_port=peer_udp.getsockname()[1])
        w.handle(m.InstallSa(1, sa_in, sa_out, tuple(pols), 1500, lifetime, id=1))
        if handoff and w is owner:
            a.handle(m.InstallSa(1, None, None, tuple(pols), 1500, id=2))
            a.handle(m.SetOwner(1, 1, id=3))
    pkt = _packet(size)
    burst = cfg.batch
    t_out = t_in = 0.0
    moved_out = moved_in = 0
    perf = time.process_time  # CPU time: less disturbed than wall time by other load on a shared box
    while moved_out < packets:
        for _ in range(burst):
            a_tun.send(pkt)
        t0 = perf()
        while a.step(0.0):
            pass
        while owner is not a and owner.step(0.0):
            pass
        t_out += perf() - t0
        moved_out += burst
        t0 = perf()
        while b.step(0.0):
            pass
        t_in += perf() - t0
        moved_in += _drain(b_tun)
    for w, keep in ((a, a_keep), (b, b_keep)):
        w._epoll.close()
        for s in keep:
            s.close()
    for s in (a_tun, b_tun, a_udp, b_udp):
        s.close()
    if moved_in < moved_out * 0.99:
        print(f"warning: {moved_out - moved_in} of {moved_out} packets lost on loopback", file=sys.stderr)
    return t_out / moved_out * 1e9, t_in / max(1, moved_in) * 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_worker")
    p.add_argument("--packets", type=int, default=100_000)
    p.add_argument("--size", type=int, default=1400)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--lifetime", action="store_true", help="give the SA byte/packet limits (watched, never reached)")
    p.add_argument("--handoff", action="store_true",
                   help="A's SA owned by a second worker: the outbound figure includes the hand-over (workers > 1)")
    args = p.parse_args(argv)
    lifetime = m.Lifetime(soft_bytes=1 << 40, hard_bytes=1 << 41, soft_packets=1 << 36, hard_packets=1 << 37) \
        if args.lifetime else m.Lifetime()
    outs, ins = [], []
    for _ in range(args.repeat):
        o, i = run(args.packets, args.size, lifetime, args.handoff)
        outs.append(o)
        ins.append(i)
    for label, xs in (("outbound TUN->ESP", outs), ("inbound ESP->TUN", ins)):
        print(f"{label}: ns/packet min {min(xs):.0f} median {statistics.median(xs):.0f} max {max(xs):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
