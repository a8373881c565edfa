"""Several data-plane workers for real (``settings.dataplane.workers: 2``): static-key data
planes in two namespaces, each with two workers on one multi-queue TUN, two Child SAs whose
inbound SPIs belong to different workers, and eight TCP flows crossing at once.

What must hold (ipsecd/dataplane/handoff.py, esp_steering.py): every byte arrives; both
workers of each side carry traffic (their own counters); packets a worker read for the other
worker's SA were handed over; no replay or unknown-SPI drops (received ESP reached the owner
of its SPI: the reuseport program on UDP 4500, the socket filters on raw ESP); and on the
wire, decrypted by scapy with the test keys, each SPI's sequence numbers rise strictly in
the order the packets were captured -- one sender per SA (RFC 4303 3.3.3). After a
make-before-break rekey that moves each pair to the other worker, traffic still flows on
the new SPIs only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.utils import rdpcap

from tests.dp_static_peer import REKEY_SPI_STEP, SPI_TO_B, static_key
from tests.netns import Topology, kill_group, topology_or_skip, wait_listening
from tests.netns_dp import PYTHON, StaticPeer, dp_prefix
from tests.test_offload_netns import capture

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

FLOWS_PER_HOST = 4
NBYTES = 1 << 18  # per flow

_SINK = """
import socket, sys, threading
addrs, port, count = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
total = [0]; lock = threading.Lock(); threads = []
def serve(c):
    n = 0
    while (b := c.recv(1 << 16)):
        n += len(b)
    c.sendall(b"k"); c.close()
    with lock:
        total[0] += n
socks = []
for a in addrs:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((a, port)); s.listen(64); s.settimeout(60)
    socks.append(s)
print("ready", flush=True)
for s in socks:
    for _ in range(count):
        c, _ = s.accept(); c.settimeout(60)
        t = threading.Thread(target=serve, args=(c,)); t.start(); threads.append(t)
for t in threads:
    t.join()
print(total[0], flush=True)
"""

_SOURCE = """
import socket, sys, threading
src, dsts = sys.argv[1], sys.argv[2].split(",")
port, count, nbytes = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sent = [0]; lock = threading.Lock()
def flow(dst):
    c = socket.create_connection((dst, port), timeout=30, source_address=(src, 0))
    block = bytes(range(256)) * 64; n = 0
    while n < nbytes:
        k = min(len(block), nbytes - n); c.sendall(block[:k]); n += k
    c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
    with lock:
        sent[0] += n
threads = [threading.Thread(target=flow, args=(d,)) for d in dsts for _ in range(count)]
for t in threads: t.start()
for t in threads: t.join()
print(sent[0], flush=True)
"""


@pytest.fixture
def topo() -> Iterator[Topology]:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("two workers need two CPUs (config refuses more workers than CPUs)")
    with topology_or_skip("pair", prefix=dp_prefix()) as t:
        yield t


@contextlib.contextmanager
def workers_pair(topo: Topology, case: str, pairs: int = 2) -> Iterator[tuple[StaticPeer, StaticPeer, list[str]]]:
    """Two-worker static peers; returns them and the B-side inner addresses to send to."""
    v6 = "6" in case
    mode = "transport" if case.startswith("transport") else "tunnel"
    extra = ["--workers", "2", "--no-gso", "--mode", mode, *(["--raw"] if case.endswith("raw") else [])]
    if mode == "transport":
        assert topo.a_addr6 and topo.b_addr6
        la, lb = (topo.a_addr6, topo.b_addr6) if v6 else (topo.a_addr, topo.b_addr)
        plen = 128 if v6 else 32
        nets_a, nets_b, dsts, pairs = (f"{la}/{plen}", f"{lb}/{plen}"), (f"{lb}/{plen}", f"{la}/{plen}"), [lb], 1
    else:
        la, lb = topo.a_addr, topo.b_addr
        nets_a, nets_b = (topo.a_lan_net, topo.b_lan_net), (topo.b_lan_net, topo.a_lan_net)
        base = ip_address(topo.b_lan)
        dsts = [str(base + p) for p in range(pairs)]
        for d in dsts[1:]:  # host p of B's LAN: Child SA p
            topo.b.run(["ip", "addr", "add", f"{d}/32", "dev", "lo"])
    common = [*extra, "--pairs", str(pairs)]
    a = StaticPeer(topo.a.name, ["--side", "a", "--local", la, "--remote", lb, "--local-net", nets_a[0],
                                 "--remote-net", nets_a[1], *common])
    b = StaticPeer(topo.b.name, ["--side", "b", "--local", lb, "--remote", la, "--local-net", nets_b[0],
                                 "--remote-net", nets_b[1], *common])
    try:
        a.start(timeout=30)
        b.start(timeout=30)
        yield a, b, dsts
    finally:
        a.stop()
        b.stop()


def flows(topo: Topology, src: str, dsts: list[str], per_host: int = FLOWS_PER_HOST, nbytes: int = NBYTES,
          port: int = 5301) -> int:
    """``per_host`` TCP flows from ``src`` (A) to each of ``dsts`` (B) at once; bytes received."""
    sink = subprocess.Popen(topo.b.exec_argv([PYTHON, "-u", "-c", _SINK, ",".join(dsts), str(port), str(per_host)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        wait_listening(topo.b, port)
        out = topo.a.run([PYTHON, "-c", _SOURCE, src, ",".join(dsts), str(port), str(per_host), str(nbytes)],
                         timeout=120)
        assert int(out.stdout.strip()) == per_host * nbytes * len(dsts)
        got, err = sink.communicate(timeout=60)
        assert sink.returncode == 0, err
        return int(got.strip())
    finally:
        kill_group(sink, grace=1.0)


def seq_by_spi(pcap: Path, src: str, dst: str, v6: bool, tunnel: bool, spis: set[int]) -> dict[int, list[int]]:
    """ESP from ``src`` in the capture, decrypted by scapy: each SPI's sequence numbers in capture order."""
    outer_cls = IPv6 if v6 else IP
    sas = {spi: SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=static_key(spi),
                                    **({"tunnel_header": outer_cls(src=src, dst=dst)} if tunnel else {}))
           for spi in spis}
    out: dict[int, list[int]] = {}
    for frame in rdpcap(str(pcap)):
        ip = frame[outer_cls] if frame.haslayer(outer_cls) else None
        if ip is None or ip.src != src:
            continue
        esp_bytes = bytes(ip[UDP].payload) if ip.haslayer(UDP) else bytes(ip[ESP])
        if len(esp_bytes) < 8 or esp_bytes[:4] == b"\x00\x00\x00\x00":
            continue
        spi = int.from_bytes(esp_bytes[:4], "big")
        assert spi in sas, f"ESP with SPI {spi:#x} on the wire"
        proto = {"nh": 50} if v6 else {"proto": 50}
        inner = sas[spi].decrypt(outer_cls(bytes(outer_cls(src=src, dst=dst, **proto) / ESP(esp_bytes))))
        assert inner is not None
        out.setdefault(spi, []).append(int.from_bytes(esp_bytes[4:8], "big"))
    return out


def _check_workers(a: StaticPeer, b: StaticPeer, both_receive: bool) -> tuple[dict, dict]:  # type: ignore[type-arg]
    ca, cb = a.counters(), b.counters()
    for side, c in (("A", ca), ("B", cb)):
        drops = c["global"]["drops"]
        for bad in ("replay", "unknown_spi", "handoff_error", "icv", "internal_error"):
            assert drops.get(bad, 0) == 0, (side, drops)
        assert len(c["workers"]) == 2, c.keys()
    # Which TUN queue the kernel gives a flow is its choice: tun's automatic queue selection
    # follows the queue that last wrote the flow's return traffic, i.e. the inbound SA's owner.
    # So with one SA it may give every flow to the owner (nothing to hand over: a CI run read
    # 793 packets on the owner's queue and 1 on the other), and with two SAs each flow tends
    # to its own owner. What holds whatever it chose: A's workers read what A sent, and every
    # packet a non-owner read reached its owner (a full inbox is a handoff_error drop, above).
    wa = [w["stats"] for w in ca["workers"]]
    assert sum(s.get("tun_rx_packets", 0) for s in wa) > 0, wa
    assert sum(s.get("handoff_tx", 0) for s in wa) == sum(s.get("handoff_rx_packets", 0) for s in wa), wa
    if both_receive:  # two SAs, one per worker: both of A's queues read, both workers sent
        assert all(s.get("tun_rx_packets", 0) > 0 for s in wa), wa
        assert all(s.get("udp_tx_packets", 0) + s.get("raw_tx_packets", 0) > 0 for s in wa), wa
        wb = [w["stats"] for w in cb["workers"]]
        assert all(s.get("udp_rx_recvmsg", 0) + s.get("tun_tx_packets", 0) > 0 or s.get("udp_tx_packets", 0) > 0
                   or s.get("raw_tx_packets", 0) > 0 for s in wb), wb
    return ca, cb


@pytest.mark.parametrize("case", ["tunnel4-udp", "tunnel4-raw", "transport6-udp", "transport6-raw"])
def test_two_workers_carry_many_flows_in_order(topo: Topology, tmp_path: Path, case: str) -> None:
    v6, tunnel = "6" in case, case.startswith("tunnel")
    pcap = tmp_path / "b.pcap"
    with workers_pair(topo, case) as (a, b, dsts):
        src = topo.a_addr6 if v6 else (topo.a_lan if tunnel else topo.a_addr)
        assert src is not None
        with capture(topo, pcap) as cap:
            got = flows(topo, src, dsts)
        assert got == FLOWS_PER_HOST * NBYTES * len(dsts)
        ca, _cb = _check_workers(a, b, both_receive=tunnel)
    outer_a = topo.a_addr6 if v6 else topo.a_addr
    outer_b = topo.b_addr6 if v6 else topo.b_addr
    assert outer_a and outer_b
    spis = {SPI_TO_B + p for p in range(len(dsts))}
    seqs = seq_by_spi(pcap, outer_a, outer_b, v6, tunnel, spis)
    assert set(seqs) == spis, seqs.keys()
    for spi, seq in seqs.items():
        assert all(x < y for x, y in itertools.pairwise(seq)), f"SPI {spi:#x}: sequence numbers not rising"
        if cap["dropped"] == 0:
            assert seq[0] == 1 and seq == list(range(1, len(seq) + 1)), f"SPI {spi:#x}: a gap on the wire"
    out_seq = {k: v["seq"] for k, v in ca["sas"].items() if v["direction"] == "out"}
    assert len(out_seq) == len(dsts), out_seq  # each outbound SA lives in exactly one worker


def _by_tag(peer: StaticPeer) -> dict[str, list[int]]:
    return dict(peer.command("totals")["tags"])


def _pairs_read(peer: StaticPeer) -> dict[tuple[int, str], int]:
    """(SPI, direction) -> octets, as GetSaCounters answers for the peer's pairs (asked of their owners)."""
    return {(spi, d): nbytes for spi, d, _reqid, nbytes, _packets in peer.command("sa_counters")["sas"]}


def test_traffic_flows_after_rekey_moves_each_pair_to_the_other_worker(topo: Topology) -> None:
    with workers_pair(topo, "tunnel4-udp") as (a, b, dsts):
        assert flows(topo, topo.a_lan, dsts, per_host=2, nbytes=1 << 16) == 2 * len(dsts) << 16
        before = {k for k, v in a.counters()["sas"].items() if v["direction"] == "out"}
        # issue 11: the per-tag totals of both workers, and each pair's counters from its owner, agree
        # with the full dump
        full = {(int(k[:8], 16), v["direction"]): v["bytes"] for k, v in a.counters()["sas"].items()}
        totals1, pairs1 = _by_tag(a), _pairs_read(a)
        assert pairs1 == full, (pairs1, full)
        assert sum(t[2] for t in totals1.values()) == sum(n for (_s, d), n in full.items() if d == "out") > 0
        for cmd in ("rekey_in", "rekey_out", "rekey_del"):  # B's inbound first, as a rekey responder does
            for peer in ((b, a) if cmd == "rekey_in" else (a, b)):
                assert peer.command(cmd)["ok"] == cmd
        assert flows(topo, topo.a_lan, dsts, per_host=4, nbytes=1 << 17, port=5302) == 4 * len(dsts) << 17
        ca, _cb = _check_workers(a, b, both_receive=True)
        # the old SAs are gone (moved to the other worker, then deleted): their bytes stay in the totals
        totals2, pairs2 = _by_tag(a), _pairs_read(a)
        assert set(totals2) == set(totals1)
        for tag, t1 in totals1.items():
            t2 = totals2[tag]
            assert all(y >= x for x, y in zip(t1, t2, strict=True)), (tag, t1, t2)
        new_out = sum(n for (_s, d), n in pairs2.items() if d == "out")
        assert sum(t[2] for t in totals2.values()) >= sum(t[2] for t in totals1.values()) + new_out > 0
    new = {f"{SPI_TO_B + p + REKEY_SPI_STEP:08x}" for p in range(len(dsts))}
    outs = {k: v for k, v in ca["sas"].items() if v["direction"] == "out"}
    assert set(outs) == new, (before, outs)  # the old outbound SAs are gone from every worker
    assert all(v["packets"] > 0 for v in outs.values()), outs


def test_a_dead_worker_is_reported(topo: Topology) -> None:
    """One of two workers killed: the DataPlane reports WorkerExited and is no longer running
    (the daemon then stops, as for a dead IKE shard: daemon.py)."""
    with workers_pair(topo, "tunnel4-udp") as (a, _b, _dsts):
        assert len(a.ready["pids"]) == 2
        got = a.command("killworker")
        assert got == {"event": "WorkerExited", "running": False}, got


_UDP_SINK = """
import socket, sys
socks = []
for a in sys.argv[1].split(","):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22); s.bind((a, 6000)); s.settimeout(3); socks.append(s)
print("ready", flush=True)
n = 0
for s in socks:
    try:
        while True:
            s.recv(2048); n += 1
    except socket.timeout:
        pass
print(n, flush=True)
"""

_UDP_SOURCE = """
import socket, sys, time
src, dsts, flows, count = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
socks = []
for d in dsts:
    for _ in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0)); socks.append((s, d))
for i in range(count):
    for s, d in socks:
        s.sendto(bytes(500), (d, 6000))
    time.sleep(0.002)  # paced: no loss to plain congestion on a loaded machine
"""


def test_one_way_udp_flows_are_handed_over_in_order(topo: Topology, tmp_path: Path) -> None:
    """One-way UDP (no reply teaches the TUN which queue a flow belongs to): the kernel spreads
    the flows over both queues by hash, so many packets are read by the non-owner and handed
    over (measured: 450 of 1,200); all arrive, and each SPI's sequence numbers still rise one
    by one on the wire."""
    pcap = tmp_path / "b.pcap"
    per_flow = 150
    with workers_pair(topo, "tunnel4-udp") as (a, _b, dsts):
        sink = subprocess.Popen(topo.b.exec_argv([PYTHON, "-u", "-c", _UDP_SINK, ",".join(dsts)]),
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            with capture(topo, pcap) as cap:
                topo.a.run([PYTHON, "-c", _UDP_SOURCE, topo.a_lan, ",".join(dsts), "4", str(per_flow)], timeout=60)
                got = int(sink.stdout.readline())
        finally:
            kill_group(sink)
        stats = [w["stats"] for w in a.counters()["workers"]]
        drops = a.counters()["global"]["drops"]
    sent = per_flow * 4 * len(dsts)
    assert got >= sent * 0.98, (got, sent)
    handed = sum(s.get("handoff_tx", 0) for s in stats)
    assert handed >= sent // 10, (handed, stats)  # 8 flows hashed over 2 queues: a real share crosses
    assert drops.get("handoff_error", 0) == 0, drops
    spis = {SPI_TO_B + p for p in range(len(dsts))}
    for spi, seq in seq_by_spi(pcap, topo.a_addr, topo.b_addr, False, True, spis).items():
        assert all(x < y for x, y in itertools.pairwise(seq)), f"SPI {spi:#x}: sequence numbers not rising"
        if cap["dropped"] == 0:
            assert seq == list(range(1, len(seq) + 1)), f"SPI {spi:#x}: a gap on the wire"
