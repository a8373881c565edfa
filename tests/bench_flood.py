"""A legitimate strongSwan peer establishing while ipsecd is flooded: ``python -m tests.bench_flood``.

Layout (``pair``, IPv4): A holds charon (a.test, the legitimate initiator) and the flood
sender (tests/flood.py, raw socket, sources spoofed from 198.18.0.0/15, routed back
into A by B, where they die); B holds ipsecd, the responder under test (``%any``,
PSK). Per round and mode, with a fresh ipsecd each time:

1. start the flood (``--rate`` asked; the achieved rate is reported), wait 2 s;
2. ``swanctl --initiate`` from charon; the set-up time is taken from charon's own log
   (``initiating IKE_SA peer[N]`` -> ``IKE_SA peer[N] established``, ms timestamps),
   never by polling (see /work/shared/notes/measuring-under-load.md);
3. when the flood ends: ipsecd's RSS growth (VmRSS after - before, and VmHWM), its IKE
   counters (``ipsecctl stats``), and the machine's idle share during the flood.

Modes: ``none`` (baseline), ``spoofed`` (well-formed IKE_SA_INIT with valid ECP-256
values), ``big`` (60 KB requests: 255 proposals x 24 transforms, fragmented), ``vids``
(thousands of Vendor IDs), ``cookies`` (one real address answering COOKIE notifies and
replaying cookie-bearing requests). Rounds interleave the modes. The flood sender is
pinned to CPU 0 and ipsecd to CPU 1; charon is not pinned.

    python -m tests.bench_flood [--rate 20000] [--seconds 12] [--runs 3] [--modes none,spoofed,...] [--established]
                                [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Topology, ping_counts, why_no_netns
from tests.strongswan import Charon, ChildParams, ConnParams, why_no_strongswan

MODES = ("none", "spoofed", "big", "vids", "cookies")
FLOOD_ARGS = {"spoofed": ["--mode", "spoofed"], "big": ["--mode", "big", "--big", "proposals"],
              "vids": ["--mode", "big", "--big", "vendor-ids"], "cookies": ["--mode", "cookies"]}
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
PSK = "flood-bench-psk-0123456789"
SPOOF = "198.18.0.0/15"
COOKIE_SOURCE = "192.0.2.10"  # the one real address of the cookie-answering attacker (an alias in A)
# charon's log needs timestamps: strongswan.conf merges this into its filelog section
TIMESTAMPS = "  filelog {\n    main {\n      time_format = %T\n    }\n  }\n  retransmit_tries = 5\n"
_LINE_TIME = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) ")
_CHILD_REKEYED = re.compile(r"CHILD_SA \w+\{\d+\} state change: REKEYING => REKEYED")
_IKE_REKEYED = re.compile(r"IKE_SA \w+\[\d+\] state change: REKEYING => (?:REKEYED|DELETING)")


@dataclass
class Round:
    mode: str
    setup_s: float | None = None  # charon: initiating -> established; None = failed
    charon_retransmits: int = 0
    flood: dict[str, Any] = field(default_factory=dict)
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    hwm_kb: int = 0
    idle_share: float = 0.0
    ike_counters: dict[str, int] = field(default_factory=dict)
    # --established: a tunnel set up before the flood, pinged and its Child SA rekeyed during it
    pings: tuple[int, int] = (0, 0)  # (sent, answered)
    child_rekeyed: bool | None = None
    ike_rekeyed: bool | None = None
    error: str = ""

    @property
    def rss_growth_kb(self) -> int:
        return self.rss_after_kb - self.rss_before_kb


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return parts[3] + parts[4], sum(parts)


def charon_setup_times(log: str) -> list[tuple[int, float | None]]:
    """(unique id, seconds from 'initiating IKE_SA peer[N]' to 'IKE_SA peer[N] established') from charon's log."""
    started: dict[int, datetime] = {}
    out: dict[int, float | None] = {}
    for line in log.splitlines():
        m = _LINE_TIME.match(line)
        if m is None:
            continue
        t = datetime.strptime(m.group(1), "%H:%M:%S.%f")
        if (s := re.search(r"initiating IKE_SA \w+\[(\d+)\]", line)) is not None:
            # charon logs "initiating" again when it starts over after its retransmits ran out:
            # the set-up time counts from the first one
            started.setdefault(int(s.group(1)), t)
            out.setdefault(int(s.group(1)), None)
        elif (e := re.search(r"IKE_SA \w+\[(\d+)\] established", line)) is not None and int(e.group(1)) in started:
            out[int(e.group(1))] = (t - started[int(e.group(1))]).total_seconds()
    return sorted(out.items())


class Scenario:
    """The topology, charon in A, and a way to run one flood round against a fresh ipsecd in B."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self.topo = stack.enter_context(Topology("pair", ipv6=False))
        t = self.topo
        t.b.run(["ip", "route", "add", SPOOF, "via", t.a_addr])  # answers to spoofed sources go back into A
        t.a.run(["ip", "addr", "add", f"{COOKIE_SOURCE}/24", "dev", "eth0"])
        self.charon = Charon(t.a, workdir / "charon", ConnParams(
            local_addrs=[t.a_addr], remote_addrs=[t.b_addr], local_id="a.test", remote_id="b.test", psk=PSK,
            proposals=[IKE], children=[ChildParams(local_ts=[t.a_lan_net], remote_ts=[t.b_lan_net],
                                                   esp_proposals=[ESP])]), extra_charon=TIMESTAMPS)
        stack.callback(self.charon.stop)
        self.charon.start()
        self.n = 0

    def _ipsecd(self) -> Ipsecd:
        t = self.topo
        self.n += 1
        d = Ipsecd(t.b, self.workdir / f"ipsecd-{self.n}", ipsecd_config(
            local_addrs=[t.b_addr], remote_addrs="%any", local_id="b.test", remote_id="a.test", psk=PSK,
            proposals=[IKE], children={"net": child_config(local_ts=[t.b_lan_net], remote_ts=[t.a_lan_net],
                                                           esp_proposals=[ESP])}),
            command_prefix=["taskset", "-c", "1"])
        return d

    def run(self, mode: str, rate: float, seconds: float, *, established: bool = False) -> Round:
        """One round; ``established``: instead of setting up during the flood, a tunnel set up
        before it carries pings and has its Child SA rekeyed during it."""
        r = Round(mode)
        d = self._ipsecd()
        d.start()
        flood_proc = None
        out = self.workdir / f"flood-{self.n}.json"
        try:
            pid = d.proc.pid if d.proc else 0
            if established:
                self.charon.initiate("net", timeout=20)
            r.rss_before_kb = _status_kb(pid, "VmRSS")
            idle0 = _cpu_times()
            if mode != "none":
                args = ["taskset", "-c", "0", sys.executable, "-m", "tests.flood", "--target", self.topo.b_addr,
                        "--rate", str(rate), "--seconds", str(seconds), "--json", str(out), *FLOOD_ARGS[mode]]
                if mode == "cookies":
                    args += ["--source", COOKIE_SOURCE]
                flood_proc = self.topo.a.popen(args, self.workdir / f"flood-{self.n}.log", cwd=Path.cwd())
                time.sleep(2.0)
            if established:
                self._tunnel_during_flood(r, seconds)
            else:
                before = len(charon_setup_times(self.charon.log_text()))
                self.charon.initiate("net", timeout=int(seconds + 20), check=False)
                times = charon_setup_times(self.charon.log_text())[before:]
                r.setup_s = times[0][1] if times else None
            r.charon_retransmits = self.charon.log_text().count("retransmit")
            if flood_proc is not None:
                flood_proc.wait(timeout=seconds + 60)
                r.flood = json.loads(out.read_text())
            idle1 = _cpu_times()
            r.idle_share = (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
            r.rss_after_kb = _status_kb(pid, "VmRSS")
            r.hwm_kb = _status_kb(pid, "VmHWM")
            stats = json.loads(d.ctl("stats", "--json", timeout=60).stdout)
            r.ike_counters = {k: v for k, v in stats.get("ike", {}).items() if isinstance(v, int)}
        except (subprocess.SubprocessError, OSError, ValueError, RuntimeError) as e:
            r.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        finally:
            self.charon.terminate(check=False, timeout=5)
            d.stop()
        return r


    def _tunnel_during_flood(self, r: Round, seconds: float) -> None:
        """Rekey the Child SA and then the IKE SA (charon queues both) and ping meanwhile."""
        t = self.topo
        log = self.charon.log_text
        before = len(_CHILD_REKEYED.findall(log())), len(_IKE_REKEYED.findall(log()))
        self.charon.swanctl("--rekey", "--child", "net", check=False)
        self.charon.swanctl("--rekey", "--ike", self.charon.conn.name, check=False)
        count = max(10, int((seconds - 4) / 0.1))
        res = t.a.ping(t.b_lan, count=count, src=t.a_lan, interval=0.1, check=False)
        r.pings = ping_counts(res.stdout)
        r.child_rekeyed = len(_CHILD_REKEYED.findall(log())) > before[0]
        r.ike_rekeyed = len(_IKE_REKEYED.findall(log())) > before[1]


def _fmt(values: list[float], unit: str, scale: float = 1.0) -> str:
    if not values:
        return "-"
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):.2f}{unit} (min {v[0]:.2f}, max {v[-1]:.2f})"


def report(rounds: list[Round], rate: float, seconds: float) -> str:
    lines = [f"flood: asked {rate:.0f} IKE_SA_INIT/s for {seconds:.0f} s per round; charon set-up from its own log", ""]
    for mode in MODES:
        rs = [r for r in rounds if r.mode == mode]
        if not rs:
            continue
        ok = [r.setup_s for r in rs if r.setup_s is not None]
        rates = [float(r.flood.get("achieved_rate", 0)) for r in rs if r.flood]
        growth = [r.rss_growth_kb / 1024 for r in rs]
        hwm = [r.hwm_kb / 1024 for r in rs]
        if any(r.pings[0] for r in rs):
            lines.append(f"  {mode:<8} (--established: no set-up during the flood)")
        else:
            lines.append(f"  {mode:<8} set-up {_fmt(ok, ' s')}, {len(ok)}/{len(rs)} established")
        if rates:
            lines.append(f"           achieved flood rate {_fmt(rates, '/s')}")
        lines.append(f"           ipsecd RSS growth {_fmt(growth, ' MB')}, peak RSS {_fmt(hwm, ' MB')}, "
                     f"idle {_fmt([r.idle_share for r in rs], ' %', 100)}")
        counters: dict[str, list[int]] = {}
        for r in rs:
            for k, v in r.ike_counters.items():
                counters.setdefault(k, []).append(v)
        if counters:
            lines.append("           ipsecd IKE counters (median): " + ", ".join(
                f"{k} {int(statistics.median(v))}" for k, v in sorted(counters.items())))
        pinged = [r for r in rs if r.pings[0]]
        if pinged:
            lines.append("           established tunnel: pings answered " + ", ".join(
                f"{r.pings[1]}/{r.pings[0]}" for r in pinged) + "; Child SA, IKE SA rekeyed: " + ", ".join(
                f"{r.child_rekeyed}/{r.ike_rekeyed}" for r in pinged))
        for r in rs:
            if r.error:
                lines.append(f"           error: {r.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench_flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20000)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--json", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--established", action="store_true",
                   help="set up a tunnel before each flood; ping through it and rekey its Child SA during the flood")
    a = p.parse_args(argv)
    why = why_no_netns() or why_no_strongswan() or why_no_ipsecd()
    if why:
        print(f"bench_flood: {why}", file=sys.stderr)
        return 2
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)}")
    workdir = Path(tempfile.mkdtemp(prefix="ipd-flood-"))
    rounds: list[Round] = []
    with contextlib.ExitStack() as stack:
        sc = Scenario(workdir, stack)
        for run in range(a.runs):
            order = modes if run % 2 == 0 else list(reversed(modes))  # A B B A: drift smears over all modes
            for mode in order:
                print(f"[bench_flood] round {run + 1}: {mode}", file=sys.stderr, flush=True)
                rounds.append(sc.run(mode, a.rate, a.seconds, established=a.established))
    text = report(rounds, a.rate, a.seconds)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps([{**asdict(r), "rss_growth_kb": r.rss_growth_kb} for r in rounds],
                                           indent=1))
    if not a.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs kept in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
