"""Throughput through the static-key tunnel: iperf3 TCP between two namespaces (not a test).

    .venv/bin/python -m tests.bench_dataplane [--time 5] [--repeat 3] [--raw] [--no-gso] [--no-gro]
                                              [--workers N] [--parallel K]

Builds the ipd-dp-* namespace pair, starts a DataPlane with static AES-256-GCM keys on each
side (tests/dp_static_peer.py), runs ``iperf3 -c 10.2.0.1 -t TIME`` from 10.1.0.1 and prints
Gbit/s (receiver side), TCP retransmits and the worker's batching figures. Results depend
heavily on what else the two vCPUs are doing; compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from tests.netns import Topology
from tests.netns_dp import dp_prefix, static_pair


def run_once(topo: Topology, seconds: float, extra: list[str], parallel: int = 1) -> dict[str, float]:
    with static_pair(topo, *extra) as (a, b):
        server = subprocess.Popen(topo.b.exec_argv(["iperf3", "-s", "-1", "-B", topo.b_lan]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(0.3)
            res = topo.a.run(["iperf3", "-c", topo.b_lan, "-B", topo.a_lan, "-t", str(seconds), "-J",
                              "-P", str(parallel)], timeout=seconds + 20)
        finally:
            server.kill()
            server.wait()
        out = json.loads(res.stdout)
        end = out["end"]
        ca, cb = a.counters(), b.counters()
        # every worker's CPU (settings.dataplane.workers > 1: several processes per side)
        pids_a, pids_b = a.ready.get("pids") or [a.ready["pid"]], b.ready.get("pids") or [b.ready["pid"]]
        cpu_a, cpu_b = sum(map(_cpu_seconds, pids_a)), sum(map(_cpu_seconds, pids_b))
        sys_share_b = sum(_cpu_split(p)[1] for p in pids_b) / max(cpu_b, 1e-9)
    sa = ca["global"]["stats"]
    sb = cb["global"]["stats"]
    return {
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": float(end["sum_sent"].get("retransmits", 0)),
        # datagrams per send/receive syscall: GSO/GRO batching (raw ESP has none: 1.0)
        "tx_per_sendmsg": sa.get("udp_tx_packets", 1) / max(1, sa.get("udp_tx_sendmsg", 1)),
        "rx_per_recvmsg": sum(v["packets"] for v in cb["sas"].values() if v["direction"] == "in")
        / max(1, sb.get("udp_rx_recvmsg", 0)) if sb.get("udp_rx_recvmsg") else 1.0,
        "tun_pkts_per_wakeup": sa.get("tun_rx_packets", 0) / max(1, sa.get("tun_rx_wakeups", 1)),
        "tun_pkts_per_read": sa.get("tun_rx_packets", 0) / max(1, sa.get("tun_rx_reads", sa.get("tun_rx_packets", 1))),
        "tun_tx_coalesced_share": sb.get("tun_tx_coalesced", 0) / max(1, sum(
            v["packets"] for v in cb["sas"].values() if v["direction"] == "in")),
        # CPU per packet of each worker: unlike Gbit/s, barely affected by other load on the box
        "us_per_pkt_a": 1e6 * cpu_a / max(1, sum(v["packets"] for v in ca["sas"].values())),
        "us_per_pkt_b": 1e6 * cpu_b / max(1, sum(v["packets"] for v in cb["sas"].values())),
        "kernel_share_b": sys_share_b,
        "drops_a": float(ca["global"]["drops_total"]),
        "drops_b": float(cb["global"]["drops_total"]),
        "handoff_share_a": sa.get("handoff_tx", 0) / max(1, sa.get("tun_rx_packets", 1)),
    }


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    user, system = _cpu_split(pid)
    return user + system


def _cpu_split(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_dataplane")
    p.add_argument("--time", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--raw", action="store_true")
    p.add_argument("--no-gso", action="store_true")
    p.add_argument("--no-gro", action="store_true")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--offload", choices=("yes", "no", "rx"), default="no",
                   help="TUN offloads: both directions, none, or receive-side GRO writes only (no TSO reads)")
    p.add_argument("--workers", type=int, default=1, help="settings.dataplane.workers of both data planes")
    p.add_argument("--parallel", type=int, default=1, help="iperf3 -P: parallel TCP flows")
    args = p.parse_args(argv)
    extra = ["--no-ipv6", "--batch", str(args.batch), "--workers", str(args.workers)]
    extra += ["--raw"] if args.raw else []
    extra += ["--no-gso"] if args.no_gso else []
    extra += ["--no-gro"] if args.no_gro else []
    extra += {"yes": ["--offload"], "no": [], "rx": ["--offload", "--no-tso"]}[args.offload]
    results = []
    with Topology("pair", prefix=dp_prefix(), ipv6=False) as topo:
        for i in range(args.repeat):
            r = run_once(topo, args.time, extra, args.parallel)
            results.append(r)
            print(f"run {i + 1}: " + "  ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
    med = statistics.median(r["gbps"] for r in results)
    label = "raw ESP" if args.raw else "ESP-in-UDP"
    print(f"{label} AES-256-GCM, gso={not args.no_gso} gro={not args.no_gro} offload={args.offload} "
          f"workers={args.workers} flows={args.parallel}: "
          f"median {med:.3f} Gbit/s over {len(results)} run(s) of {args.time:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
