"""Tunnel benchmark: ``python -m tests.bench [--runs N] [--seconds S] [--setups a,b,...]``.

Not a pytest test (the name does not match test_*.py): it takes minutes and its
numbers are for people.  It builds one two-namespace topology per setup, keeps them
all up, and interleaves the measurements (run 1 of every setup, then run 2, ...) so a
noisy neighbour or CPU throttling on this shared 2-vCPU machine smears over all
setups instead of biasing one.  Setups:

- ``bare``: the veth itself, outer addresses (the ceiling);
- ``strongswan``: charon libipsec <-> charon libipsec, AES-GCM-256, ESP-in-UDP;
- ``ipsecd``: ipsecd <-> ipsecd, AES-GCM-256, ESP-in-UDP (``encap: yes``, like the anchors'
  UDP; skipped with a note if not runnable);
- ``ipsecd-offload``, ``ipsecd-2workers``: the same with ``offload: yes`` / ``workers: 2``;
- ``wireguard``: wireguard-go <-> wireguard-go (skipped if not installed).

Per run and setup: iperf3 TCP for ``--seconds`` with one flow and with four parallel
flows (Gbit/s received, retransmits), iperf3 UDP with 64-byte payloads and no rate limit
(packets/s the receiver got), and ping RTT from LAN to LAN; tunnels report the RTT they
add over the bare veth.

Honesty rules (issue 12): every tunnel runs with TUN MTU 1400 (libipsec's default;
ipsecd's ``settings.dataplane.mtu`` and wireguard's link MTU are set to it), no daemon logs
per packet, the runs are interleaved (default 5), every figure is min / median / max, and
each run records the machine's idle share from /proc/stat twice: in a short quiet probe
before the setup's measurements (how busy the *other* users of the machine are) and during
them.  Ratios are taken per run (ipsecd and the anchor of the same round) and a warning is
printed when their min..max spread crosses 1.0: then the lead is not established.
What still differs between the setups is printed with the report (``DIFFERENCES``).
Keys and logs live in a temporary directory removed at exit (``--keep`` keeps it).

``--rekey`` measures something else instead: packets lost while Child SAs are
rekeyed.  Both ends of ipsecd <-> ipsecd, ipsecd <-> strongSwan and strongSwan <->
strongSwan rekey their Child SA every ~3 s (so both roles and the odd collision
occur) while ``ping -i 0.01`` runs for ``--rekey-seconds`` (default 60, about 20
rekeys); it prints lost pings and rekeys per setup.  ping cannot keep a 10 ms pace
on a busy 2-core machine, so the default takes about 5 minutes: not part of the
default run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Netns, Topology, ping_counts, why_no_netns
from tests.strongswan import Charon, ChildParams, ConnParams, why_no_strongswan

SETUPS = ("bare", "strongswan", "ipsecd", "ipsecd-offload", "ipsecd-2workers", "wireguard")
TUN_MTU = 1400  # kernel-libipsec's default TUN MTU; the other tunnels are set to it
# What a reader must know when comparing the rows (printed with every report).
DIFFERENCES = (
    "TUN MTU 1400 everywhere (libipsec default; ipsecd settings.dataplane.mtu; wg0 link MTU, "
    "wireguard-go's own default is 1420)",
    "logging: charon file log at its default level 1 (ike/chd 2: control events only, nothing per packet); "
    "ipsecd at INFO (nothing per packet); wireguard-go without -v",
    "socket buffers: ipsecd sizes its ESP socket with SO_RCVBUFFORCE/SO_SNDBUFFORCE (4 MiB); strongSwan 5.9.8's "
    "socket-default and wireguard-go have no setting for it and keep the namespace defaults",
    "ciphers: AES-GCM-256 for strongSwan and ipsecd, ChaCha20-Poly1305 for wireguard (its only one)",
    "encapsulation: every tunnel sends UDP (strongSwan and ipsecd ESP-in-UDP on 4500 -- ipsecd with encap: yes, "
    "strongSwan libipsec always, it fakes NAT detection; wireguard its own UDP), so all can use UDP GSO/GRO "
    "where they implement it",
    "threads: charon/libipsec and wireguard-go are multi-threaded C/Go; ipsecd uses settings.dataplane.workers "
    "worker process(es) (see the ipsecd row's name)",
)
REKEY_SETUPS = ("ipsecd", "ipsecd-strongswan", "strongswan")
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"


@dataclass
class Setup:
    """A ready topology plus where to send traffic (source/destination in the namespaces)."""

    name: str
    topo: Topology
    src: str
    dst: str
    results: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metric: str, value: float) -> None:
        self.results.setdefault(metric, []).append(value)


# ---------------------------------------------------------------- setups
def _topology(stack: contextlib.ExitStack) -> Topology:
    return stack.enter_context(Topology("pair", ipv6=False))


def _iperf_server(topo: Topology, workdir: Path) -> None:
    topo.b.popen(["iperf3", "-s"], workdir / "iperf3-server.log")


def setup_bare(stack: contextlib.ExitStack, workdir: Path) -> Setup:
    topo = _topology(stack)
    _iperf_server(topo, workdir)
    return Setup("bare", topo, topo.a_addr, topo.b_addr)


def setup_strongswan(stack: contextlib.ExitStack, workdir: Path) -> Setup:
    why = why_no_strongswan()
    if why:
        raise RuntimeError(why)
    topo = _topology(stack)
    a = Charon(topo.a, workdir / "a", ConnParams(
        local_addrs=[topo.a_addr], remote_addrs=[topo.b_addr], local_id="a.test", remote_id="b.test",
        proposals=[IKE], children=[ChildParams(local_ts=[topo.a_lan_net], remote_ts=[topo.b_lan_net],
                                               esp_proposals=[ESP])]))
    b = Charon(topo.b, workdir / "b", ConnParams(
        local_addrs=[topo.b_addr], local_id="b.test", remote_id="a.test",
        proposals=[IKE], children=[ChildParams(local_ts=[topo.b_lan_net], remote_ts=[topo.a_lan_net],
                                               esp_proposals=[ESP])]))
    for ch in (a, b):
        stack.callback(ch.stop)
        ch.start()
    a.initiate("net")
    b.wait_established(10, child="net")
    _iperf_server(topo, workdir)
    return Setup("strongswan", topo, topo.a_lan, topo.b_lan)


def setup_ipsecd(stack: contextlib.ExitStack, workdir: Path) -> Setup:
    why = why_no_ipsecd()
    if why:
        raise RuntimeError(why)
    topo = _topology(stack)
    # encap: yes -- ESP-in-UDP on 4500 as the anchors use UDP (raw ESP has no UDP GSO/GRO)
    a = Ipsecd(topo.a, workdir / "a", ipsecd_config(
        local_addrs=[topo.a_addr], remote_addrs=[topo.b_addr], local_id="a.test", remote_id="b.test",
        proposals=[IKE], encap=True, children={"net": child_config(local_ts=[topo.a_lan_net],
                                                                   remote_ts=[topo.b_lan_net], esp_proposals=[ESP])}))
    b = Ipsecd(topo.b, workdir / "b", ipsecd_config(
        local_addrs=[topo.b_addr], remote_addrs="%any", local_id="b.test", remote_id="a.test",
        proposals=[IKE], encap=True, children={"net": child_config(local_ts=[topo.b_lan_net],
                                                                   remote_ts=[topo.a_lan_net], esp_proposals=[ESP])}))
    for d in (a, b):
        d.config["settings"] = {"dataplane": {"mtu": TUN_MTU, **IPSECD_DATAPLANE}}
    for d in (a, b):
        stack.callback(d.stop)
        d.start()
    a.up("peer")
    b.wait_established(10, child="net")
    _iperf_server(topo, workdir)
    return Setup("ipsecd", topo, topo.a_lan, topo.b_lan)


def _ipsecd_with(stack: contextlib.ExitStack, workdir: Path, name: str, **dataplane: object) -> Setup:
    """The ipsecd setup with extra settings.dataplane keys, under its own row name."""
    saved = dict(IPSECD_DATAPLANE)
    IPSECD_DATAPLANE.update(dataplane)
    try:
        setup = setup_ipsecd(stack, workdir)
    finally:
        IPSECD_DATAPLANE.clear()
        IPSECD_DATAPLANE.update(saved)
    setup.name = name
    return setup


def setup_ipsecd_offload(stack: contextlib.ExitStack, workdir: Path) -> Setup:
    """ipsecd with settings.dataplane.offload: yes (TSO reads, GRO writes; offload.py)."""
    return _ipsecd_with(stack, workdir, "ipsecd-offload", offload=True)


def setup_ipsecd_2workers(stack: contextlib.ExitStack, workdir: Path) -> Setup:
    """ipsecd with settings.dataplane.workers: 2 (a multi-queue TUN, one worker per queue;
    dataplane/handoff.py). One Child SA has one owner worker, so its flows share one core:
    this row shows the cost of the second worker, not a gain (docs/performance.md)."""
    return _ipsecd_with(stack, workdir, "ipsecd-2workers", workers=2)


def setup_wireguard(stack: contextlib.ExitStack, workdir: Path) -> Setup:
    """wireguard-go in each namespace; keys generated now into ``workdir`` (0600), never kept.

    wireguard-go puts its control socket in /var/run/wireguard, shared by all
    namespaces, so (like charon) each instance and every ``wg`` call gets a private
    /run via a bind mount inside ``ip netns exec``'s own mount namespace.
    """
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not installed (apt-get install wireguard-go wireguard-tools)")
    topo = _topology(stack)
    ends = {"a": (topo.a, topo.a_addr, topo.a_lan, topo.b_lan_net),
            "b": (topo.b, topo.b_addr, topo.b_lan, topo.a_lan_net)}
    keys: dict[str, tuple[Path, str]] = {}
    old_umask = os.umask(0o077)
    try:
        for side in ends:
            priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
            pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                                 check=True).stdout.strip()
            path = workdir / f"wg-{side}.key"
            path.write_text(priv + "\n")
            keys[side] = (path, pub)
    finally:
        os.umask(old_umask)

    def in_private_run(ns: Netns, side: str, cmd: str) -> str:
        run = workdir / f"run-{side}"
        run.mkdir(exist_ok=True)
        return f"mount --bind {shlex.quote(str(run))} /run && mkdir -p /run/wireguard && {cmd}"

    for side, (ns, _addr, _lan, _net) in ends.items():
        ns.popen(["bash", "-c", in_private_run(ns, side, "exec wireguard-go -f wg0")], workdir / f"wg-{side}.log")
    for side, (ns, _addr, lan, net) in ends.items():
        other = "b" if side == "a" else "a"
        peer_addr = ends[other][1]
        wg_set = (f"wg set wg0 private-key {shlex.quote(str(keys[side][0]))} listen-port 51820 "
                  f"peer {keys[other][1]} allowed-ips {net} endpoint {peer_addr}:51820")
        link = ["ip", "link", "show", "wg0"]
        configure = ["bash", "-c", in_private_run(ns, side, wg_set)]
        _wait(_succeeds(ns, link), 5, "wg0 link")
        _wait(_succeeds(ns, configure), 5, "wg set")
        ns.run(["ip", "link", "set", "wg0", "mtu", str(TUN_MTU), "up"])
        ns.run(["ip", "route", "add", net, "dev", "wg0", "src", lan])
    _iperf_server(topo, workdir)
    setup = Setup("wireguard", topo, topo.a_lan, topo.b_lan)
    _wait(lambda: topo.a.ping(topo.b_lan, count=1, src=topo.a_lan, deadline=1, check=False).returncode == 0,
          10, "ping through wireguard")
    return setup


# extra settings.dataplane keys for the ipsecd setup (--ipsecd-workers)
IPSECD_DATAPLANE: dict[str, object] = {}

SETUP_FUNCS: dict[str, Callable[[contextlib.ExitStack, Path], Setup]] = {
    "bare": setup_bare, "strongswan": setup_strongswan, "ipsecd": setup_ipsecd,
    "ipsecd-offload": setup_ipsecd_offload, "ipsecd-2workers": setup_ipsecd_2workers, "wireguard": setup_wireguard}


def _succeeds(ns: Netns, cmd: list[str]) -> Callable[[], bool]:
    """A predicate: does ``cmd`` exit 0 in ``ns`` right now (for polling with :func:`_wait`)."""
    return lambda: ns.run(cmd, check=False).returncode == 0


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ---------------------------------------------------------------- measurements
def _iperf(setup: Setup, args: list[str], seconds: int) -> dict[str, object]:
    cmd = ["iperf3", "-c", setup.dst, "-B", setup.src, "-t", str(seconds), "-J", *args]
    for attempt in range(3):  # the server may still be starting, or busy finishing the previous test
        res = setup.topo.a.run(cmd, check=False, timeout=seconds + 60)
        if res.returncode == 0:
            data: dict[str, object] = json.loads(res.stdout)
            end = data.get("end")
            # on a saturated machine iperf3 has exited 0 with an "error" and no result: retry
            if isinstance(end, dict) and "sum_received" in end and "error" not in data:
                return data
        time.sleep(1 + attempt)
    raise RuntimeError(f"iperf3 failed in {setup.name}: {res.stdout[-500:]}{res.stderr[-500:]}")


def measure_tcp(setup: Setup, seconds: int, flows: int = 1) -> None:
    end = _iperf(setup, ["-P", str(flows)] if flows > 1 else [], seconds)["end"]
    assert isinstance(end, dict)
    suffix = "" if flows == 1 else f"{flows}"
    setup.add(f"tcp{suffix}_gbps", end["sum_received"]["bits_per_second"] / 1e9)
    setup.add(f"tcp{suffix}_retransmits", float(end["sum_sent"].get("retransmits", 0)))


def cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine from /proc/stat (idle includes iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # guest time is already in user time


def idle_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def quiet_probe(seconds: float = 2.0) -> float:
    """The machine's idle share while none of our traffic runs: how busy everyone else is."""
    before = cpu_times()
    time.sleep(seconds)
    return idle_share(before, cpu_times())


def measure_udp64(setup: Setup, seconds: int) -> None:
    end = _iperf(setup, ["-u", "-l", "64", "-b", "0"], seconds)["end"]
    assert isinstance(end, dict)
    rx = end["sum_received"]
    setup.add("udp64_rx_pps", (rx["packets"] - rx["lost_packets"]) / rx["seconds"])


_RTT = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms")


def measure_rtt(setup: Setup, count: int = 20) -> None:
    res = setup.topo.a.ping(setup.dst, count=count, src=setup.src, interval=0.05, deadline=10, check=False)
    m = _RTT.search(res.stdout)
    if m:
        setup.add("rtt_ms", float(m.group(1)))


# ---------------------------------------------------------------- rekey loss
# Child SA lifetimes for --rekey: rekey after 2-3 s on both ends, hard expiry far enough not to race it.
REKEY_IPSECD = {"rekey_time": "3s", "rand_time": "1s", "life_time": "10s"}


@dataclass
class RekeySetup:
    """A tunnel whose Child SA rekeys every few seconds, and how to count those rekeys."""

    name: str
    topo: Topology
    rekeys: Callable[[], int]


def _ipsecd_end(topo: Topology, side: str, workdir: Path, initiator: bool) -> Ipsecd:
    ns, addr, peer = (topo.a, topo.a_addr, topo.b_addr) if side == "a" else (topo.b, topo.b_addr, topo.a_addr)
    nets = [topo.a_lan_net, topo.b_lan_net] if side == "a" else [topo.b_lan_net, topo.a_lan_net]
    other = "b" if side == "a" else "a"
    return Ipsecd(ns, workdir / side, ipsecd_config(
        local_addrs=[addr], remote_addrs=[peer] if initiator else "%any", local_id=f"{side}.test",
        remote_id=f"{other}.test", proposals=[IKE],
        children={"net": child_config(local_ts=[nets[0]], remote_ts=[nets[1]], esp_proposals=[ESP],
                                      **REKEY_IPSECD)}))


def _charon_end(topo: Topology, side: str, workdir: Path, initiator: bool) -> Charon:
    ns, addr, peer = (topo.a, topo.a_addr, topo.b_addr) if side == "a" else (topo.b, topo.b_addr, topo.a_addr)
    nets = [topo.a_lan_net, topo.b_lan_net] if side == "a" else [topo.b_lan_net, topo.a_lan_net]
    other = "b" if side == "a" else "a"
    return Charon(ns, workdir / side, ConnParams(
        local_addrs=[addr], remote_addrs=[peer] if initiator else ["%any"], local_id=f"{side}.test",
        remote_id=f"{other}.test", proposals=[IKE],
        children=[ChildParams(local_ts=[nets[0]], remote_ts=[nets[1]], esp_proposals=[ESP],
                              rekey_time="3s", life_time="10s", extra={"rand_time": "1s"})]))


def _charon_rekeys(ch: Charon) -> Callable[[], int]:
    """Distinct Child SAs charon logged minus the first; a rekeyed one is logged twice (inbound, outbound)."""
    def count() -> int:
        return max(0, len(set(re.findall(r"CHILD_SA net\{(\d+)\} established with SPIs", ch.log_text()))) - 1)
    return count


def _ipsecd_rekeys(d: Ipsecd) -> Callable[[], int]:
    return lambda: d.log_count(r"Child SA net rekeyed")


def setup_rekey(name: str, stack: contextlib.ExitStack, workdir: Path) -> RekeySetup:
    """A (initiator) and B (responder) for one of REKEY_SETUPS, started and waited for."""
    topo = _topology(stack)
    a_is_ipsecd = name in ("ipsecd", "ipsecd-strongswan")
    b_is_ipsecd = name == "ipsecd"
    if (a_is_ipsecd or b_is_ipsecd) and why_no_ipsecd():
        raise RuntimeError(why_no_ipsecd())
    if not (a_is_ipsecd and b_is_ipsecd) and why_no_strongswan():
        raise RuntimeError(why_no_strongswan())
    b: Ipsecd | Charon = _ipsecd_end(topo, "b", workdir, False) if b_is_ipsecd else _charon_end(
        topo, "b", workdir, False)
    a: Ipsecd | Charon = _ipsecd_end(topo, "a", workdir, True) if a_is_ipsecd else _charon_end(
        topo, "a", workdir, True)
    for end in (b, a):
        stack.callback(end.stop)
        end.start()
    if isinstance(a, Ipsecd):
        a.up("peer")
    else:
        a.initiate("net")
    b.wait_established(15, child="net")
    counter = _ipsecd_rekeys(a) if isinstance(a, Ipsecd) else _charon_rekeys(a)
    return RekeySetup(name, topo, counter)


def measure_rekey_loss(rs: RekeySetup, seconds: int, workdir: Path) -> str:
    """``ping -i 0.01`` through the tunnel for ``seconds``; one report line with loss and rekeys."""
    count = seconds * 100
    log = workdir / f"ping-{rs.name}.log"
    before = rs.rekeys()
    proc = rs.topo.a.popen(["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "2",
                            "-I", rs.topo.a_lan, rs.topo.b_lan], log)
    proc.wait(timeout=seconds * 2 + 30)
    sent, received = ping_counts(log.read_text())
    rekeys = rs.rekeys() - before
    return (f"  {rs.name:<18} lost {sent - received:>4} of {sent} pings "
            f"({100 * (sent - received) / max(sent, 1):.2f} %) over {rekeys} rekeys")


def run_rekey(wanted: list[str], seconds: int, workdir: Path) -> str:
    """One setup at a time (a 2-core machine would otherwise measure contention), torn down after."""
    lines = [f"rekey loss: Child SA rekey every 2-3 s at both ends, ping -i 0.01 for {seconds} s", ""]
    for name in wanted:
        sub = workdir / name
        sub.mkdir()
        print(f"[bench] rekey loss: {name}", file=sys.stderr)
        try:
            with contextlib.ExitStack() as stack:
                lines.append(measure_rekey_loss(setup_rekey(name, stack, sub), seconds, sub))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            lines.append(f"  {name:<18} skipped: {first}")
    return "\n".join(lines)


# ---------------------------------------------------------------- report
def _fmt(values: list[float], scale: str) -> str:
    if not values:
        return "-"
    if scale == "pps":
        return " / ".join(f"{v / 1000:.1f}k" for v in (min(values), statistics.median(values), max(values)))
    if scale == "ms":
        return " / ".join(f"{v:.3f}" for v in (min(values), statistics.median(values), max(values)))
    if scale == "pct":
        return " / ".join(f"{100 * v:.0f}%" for v in (min(values), statistics.median(values), max(values)))
    if scale == "count":
        return " / ".join(f"{v:.0f}" for v in (min(values), statistics.median(values), max(values)))
    return " / ".join(f"{v:.2f}" for v in (min(values), statistics.median(values), max(values)))


def report(setups: list[Setup], notes: list[str], runs: int, seconds: int) -> str:
    lines = [f"tunnel benchmark: {runs} interleaved run(s), iperf3 {seconds} s each, "
             f"{os.cpu_count()} CPU(s); values are min / median / max", ""]
    rows = [("TCP Gbit/s, 1 flow", "tcp_gbps", "gbps"), ("TCP retransmits, 1 flow", "tcp_retransmits", "count"),
            ("TCP Gbit/s, 4 flows", "tcp4_gbps", "gbps"), ("TCP retransmits, 4 flows", "tcp4_retransmits", "count"),
            ("UDP 64B rx pkt/s", "udp64_rx_pps", "pps"), ("ping RTT ms", "rtt_ms", "ms"),
            ("idle share before (quiet probe)", "idle_before", "pct"),
            ("idle share during the measurements", "idle_during", "pct")]
    width = max([len(s.name) for s in setups] + [10])
    for title, key, scale in rows:
        lines.append(title)
        for s in setups:
            lines.append(f"  {s.name:<{width}}  {_fmt(s.results.get(key, []), scale)}")
    bare = next((s for s in setups if s.name == "bare"), None)
    if bare and bare.results.get("rtt_ms"):
        base = statistics.median(bare.results["rtt_ms"])
        lines.append("RTT added over bare veth (median), ms")
        for s in setups:
            if s is not bare and s.results.get("rtt_ms"):
                lines.append(f"  {s.name:<{width}}  {statistics.median(s.results['rtt_ms']) - base:+.3f}")
    lines.append("per run: TCP 1 flow / TCP 4 flows Gbit/s, UDP 64B kpkt/s, idle before / during")
    for run in range(runs):
        cells = []
        for s in setups:
            def at(key: str, fmt: str, scale: float = 1.0, r: dict[str, list[float]] = s.results,
                   i: int = run) -> str:
                vals = r.get(key, [])
                return format(vals[i] * scale, fmt) if i < len(vals) else "-"
            cells.append(f"{s.name} {at('tcp_gbps', '.2f')}/{at('tcp4_gbps', '.2f')}/"
                         f"{at('udp64_rx_pps', '.1f', 1e-3)} idle {at('idle_before', '.0f', 100)}%/"
                         f"{at('idle_during', '.0f', 100)}%")
        lines.append(f"  run {run + 1}: " + "; ".join(cells))
    lines.extend(ratio_lines(setups))
    lines.append("")
    lines.extend(f"differs: {d}" for d in DIFFERENCES)
    if notes:
        lines.append("")
        lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


RATIO_METRICS = (("TCP 1 flow", "tcp_gbps"), ("TCP 4 flows", "tcp4_gbps"), ("UDP 64B pkt/s", "udp64_rx_pps"))


def ratio_lines(setups: list[Setup]) -> list[str]:
    """Each ipsecd row / each anchor per run (same round, so the same machine state), min /
    median / max; a WARNING when the spread crosses 1.0 (some runs say ahead, some behind)."""
    lines: list[str] = []
    by_name = {s.name: s for s in setups}
    for ours in (s for s in setups if s.name.startswith("ipsecd")):
        for anchor in ("strongswan", "wireguard"):
            theirs = by_name.get(anchor)
            if theirs is None:
                continue
            lines.append(f"{ours.name} / {anchor}, ratio per run: min / median / max (ratio of medians)")
            for title, key in RATIO_METRICS:
                a, b = ours.results.get(key, []), theirs.results.get(key, [])
                per_run = [x / y for x, y in zip(a, b, strict=False) if y > 0]
                if not per_run or not b or not statistics.median(b):
                    continue
                of_medians = statistics.median(a) / statistics.median(b)
                line = (f"  {title:<14} {min(per_run):.2f} / {statistics.median(per_run):.2f} / "
                        f"{max(per_run):.2f}x  ({of_medians:.2f}x)")
                if min(per_run) < 1.0 <= max(per_run):
                    line += "  WARNING: the spread crosses 1.0, no lead established"
                lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--flows", type=int, default=4, help="parallel TCP flows of the multi-flow row (default 4; 0 skips)")
    p.add_argument("--ipsecd-workers", type=int, default=None,
                   help="settings.dataplane.workers for the ipsecd setup (default: the daemon's default)")
    p.add_argument("--ipsecd-offload", choices=("yes", "no"), default=None,
                   help="settings.dataplane.offload for the ipsecd setup (default: the daemon's default)")
    p.add_argument("--seconds", type=int, default=10, help="seconds per iperf3 test (default 10)")
    p.add_argument("--setups", default=None,
                   help=f"comma list from {','.join(SETUPS)} (default all); with --rekey from "
                        f"{','.join(REKEY_SETUPS)}")
    p.add_argument("--no-udp", action="store_true", help="skip the 64-byte UDP packet-rate test")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    p.add_argument("--rekey", action="store_true",
                   help=f"measure ping loss during Child SA rekeys instead (setups {','.join(REKEY_SETUPS)})")
    p.add_argument("--rekey-seconds", type=int, default=60, help="ping duration per --rekey setup (default 60)")
    args = p.parse_args(argv)
    why = why_no_netns()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ping"):
        if shutil.which(tool) is None:
            print(f"cannot run: {tool} not installed", file=sys.stderr)
            return 2
    if args.rekey:
        wanted = [s.strip() for s in (args.setups or ",".join(REKEY_SETUPS)).split(",") if s.strip()]
        unknown = [s for s in wanted if s not in REKEY_SETUPS]
        if unknown:
            p.error(f"unknown --rekey setup(s): {', '.join(unknown)} (from {','.join(REKEY_SETUPS)})")
        workdir = Path(tempfile.mkdtemp(prefix="ipd-bench-"))
        try:
            print(run_rekey(wanted, args.rekey_seconds, workdir))
        finally:
            if args.keep:
                print(f"work directory kept: {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        return 0
    if args.ipsecd_workers is not None:
        IPSECD_DATAPLANE["workers"] = args.ipsecd_workers
    if args.ipsecd_offload is not None:
        IPSECD_DATAPLANE["offload"] = args.ipsecd_offload == "yes"
    wanted = [s.strip() for s in (args.setups or ",".join(SETUPS)).split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SETUP_FUNCS]
    if unknown:
        p.error(f"unknown setup(s): {', '.join(unknown)}")

    workdir = Path(tempfile.mkdtemp(prefix="ipd-bench-"))
    notes: list[str] = []
    setups: list[Setup] = []
    try:
        with contextlib.ExitStack() as stack:
            for name in wanted:
                sub = workdir / name
                sub.mkdir()
                inner = contextlib.ExitStack()
                try:
                    setups.append(SETUP_FUNCS[name](inner, sub))
                    stack.push(inner)  # unwinds with the rest at the end
                except Exception as e:
                    inner.close()
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    notes.append(f"{name} skipped: {first}")
                    print(f"[bench] {name} skipped: {first}", file=sys.stderr)
            time.sleep(1)  # let every iperf3 server bind
            for run in range(1, args.runs + 1):
                for s in setups:
                    print(f"[bench] run {run}/{args.runs}: {s.name}", file=sys.stderr)
                    try:
                        s.add("idle_before", quiet_probe())
                        before = cpu_times()
                        measure_rtt(s)
                        measure_tcp(s, args.seconds)
                        if args.flows > 1:
                            measure_tcp(s, args.seconds, args.flows)
                        if not args.no_udp:
                            measure_udp64(s, args.seconds)
                        s.add("idle_during", idle_share(before, cpu_times()))
                        got = {k: round(v[-1], 3) for k, v in s.results.items() if v}
                        print(f"[bench] run {run}/{args.runs}: {s.name} {got}", file=sys.stderr)
                    except Exception as e:
                        notes.append(f"{s.name} run {run} failed: {str(e).strip().splitlines()[0]}")
            print(report(setups, notes, args.runs, args.seconds))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
