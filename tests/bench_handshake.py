"""Handshake load benchmark: ``python -m tests.bench_handshake [--tunnels 1000,5000] [--runs 3] ...``.

Not a pytest test (its numbers are for people; ``tests/interop/test_bench_handshake.py``
keeps it from rotting).  strongSwan's own load generator -- the ``load-tester`` plugin,
built by ``tests/loadtester/build.sh`` and LD_PRELOADed into Debian's charon -- opens IKE
SAs, each with one Child SA in IKE_AUTH, against

- ``ipsecd``: our daemon as a responder (``remote_addrs: %any``, any peer identity, PSK;
  with ``--auth pubkey`` certificates both ways), its IKE process and data-plane worker
  both pinned to the responder core;
- ``strongswan``: charon 5.9.8 as a responder with kernel-libipsec, i.e. it installs
  every Child SA into a userspace data plane as ipsecd does (see RESPONDER_NOTES for
  every setting that differs from ipsecd's).

``--auth pubkey`` measures a certificate login: the plugin issues each client an RSA-3072
certificate on the fly (SHA-256, signed by a CA made for the benchmark, ``issuer_cert``/
``issuer_key``) and signs AUTH with RFC 7427; the responder checks the chain and the
signature, and signs with its own RSA-3072 certificate of the same CA.

Namespaces A (initiator, 192.0.2.1) and B (responder, 192.0.2.2).  ``--placement`` says where
the processes run: ``split`` (the default) pins the generator (charon + load-tester and this
harness's request threads) to CPU 0 and the responder to CPU 1 (ipsecd-2shards: shard 1 on
CPU 0, beside the generator); ``shared`` pins nothing, so every responder -- charon's thread
pool, or ipsecd's shards and worker -- and the generator share both cores as the scheduler
decides (the "same cores" comparison of issue 11: docs/performance.md says what it can show).  A run
takes one fresh responder and one fresh initiator charon through the checkpoints
(``--tunnels``, cumulative).  The initiator starts idle; for each stage the harness asks
the plugin's control socket for one SA per request, ``--in-flight`` requests at a time
(a closed loop, like the plugin's ``init_limit``), then lets both sides settle.
Responders alternate between runs (A B, B A, ...).  Per stage:

- SAs/s: established IKE SAs over the window from the initiator log's first
  "initiating IKE_SA" to its last "established" (charon's own millisecond timestamps);
- CPU ms per SA for each responder process: /proc/PID/stat utime+stime from just before
  the stage to after the settle, divided by the SAs established in it; the generator's
  (the initiator charon, and this harness's request threads) over the load; "machine":
  both added up, what one SA costs the whole machine;
- latency p50/p99: "initiating" -> "established" per IKE SA, as the initiator logged it;
- failed (initiated, never established), retransmissions (the initiator's log);
- KiB per tunnel: VmRSS growth of each responder process since it was started and
  settled, after this stage's settle, divided by the tunnels held;
- idle share of the machine and of each core over the stage (/proc/stat).
After the last stage the responder's own count of established IKE SAs and installed
Child SAs is compared with what the initiator saw.  ``--scrape SECONDS`` (ipsecd only): ipsecd
serves ``settings.metrics`` on 127.0.0.1:9810 in B and a scraper in B GETs ``/metrics`` every
SECONDS during each stage, as a Prometheus would (issue 11: a scrape must not bring the
handshake tail back); each stage then also reports the scrapes' count and duration.  Timings never fail anything; the
run's wall time is bounded by ``--max-seconds`` per responder run (a stage cut short is
reported as partial).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Netns, Topology, kill_group, why_no_netns
from tests.pki import KeyFile, TestPki, write_swanctl
from tests.strongswan import CHARON, Charon, ChildParams, ConnParams, sas_from_raw, why_no_strongswan

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "tests" / "loadtester" / "build.sh"
RESPONDERS = ("ipsecd", "strongswan")
# ipsecd with settings.ike_shards: 2 (only when asked for): shard 0 and the worker on the responder
# core, shard 1 on the initiator's core (the machine has two: "two shards on two cores")
SHARDED = "ipsecd-2shards"
KNOWN = (*RESPONDERS, SHARDED)
IKE_PROPOSAL, ESP_PROPOSAL = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
RESPONDER_ID = "srv.example"
# Every client proposes the same inner host (a stand-in for a virtual IP), the gateway a LAN.
CLIENT_TS, CLIENT_NET, GATEWAY_TS = "10.1.0.1/32", "10.1.0.0/16", "10.2.0.0/24"
INITIATOR_CPU, RESPONDER_CPU = 0, 1
PLACEMENTS = ("split", "shared")  # --placement: see the module docstring
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ipsecd's front door relaxed as strongSwan's dos_protection no: every client shares one address,
# and per-address limits and cookies would measure the generator's throttling, not the handshakes
NO_DOS_PROTECTION = {"cookie_threshold": 10_000_000, "cookie_threshold_ip": 10_000_000, "cookie_rate": 10_000_000,
                     "block_threshold": 10_000_000, "init_limit_half_open": 10_000_000, "init_rate_ip": 1e9,
                     "init_burst_ip": 10_000_000}
RESPONDER_NOTES = (
    "ipsecd: default settings (log.default 1 to a file, flushed per line), dataplane.workers 1, front door "
    "limits off (cookie and block thresholds, per-address bucket: NO_DOS_PROTECTION)",
    "strongswan: kernel-libipsec (userspace ESP), log default 1 to a file (flush_line no), "
    "ikesa_table_size 4096, dos_protection no (all clients share one address: the per-IP "
    "half-open block and cookies would throttle the generator; ipsecd's are off too), "
    "16 threads (default); it floats to UDP 4500 after IKE_SA_INIT (libipsec fakes NAT), ipsecd stays on 500",
    "initiator: charon + load-tester, fake_kernel, reuse_ikesa no, retransmit defaults (4 s, 5 tries), "
    "one SA per control-socket request",
)


# ---------------------------------------------------------------- the load-tester plugin
def build_plugin(timeout: float = 1800.0) -> Path:
    """Build (or find the cached) load-tester plugin; returns the .so path."""
    res = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    path = Path(res.stdout.strip().splitlines()[-1])
    if not path.is_file():
        raise RuntimeError(f"{BUILD_SCRIPT} printed {path}, which does not exist")
    return path


# ---------------------------------------------------------------- /proc readers
def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per /proc/stat cpu line: (idle + iowait, total) jiffies."""
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *vals = line.split()
            nums = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
            out[name] = (nums[3] + nums[4], sum(nums))
    return out


def idle_shares(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    shares = {}
    for name, (idle, total) in after.items():
        d_total = total - before[name][1]
        shares[name] = (idle - before[name][0]) / d_total if d_total > 0 else 0.0
    return shares


def pin(pid: int, cpu: int | set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpu`` (or a set of CPUs); threads started later inherit it."""
    cpus = {cpu} if isinstance(cpu, int) else cpu
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def all_cpus() -> set[int]:
    return set(range(os.cpu_count() or 1))


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


# ---------------------------------------------------------------- certificates (--auth pubkey)
@dataclass(frozen=True)
class BenchPki:
    """Made for one benchmark in its work directory (never kept): the load-tester's issuer
    (it signs the clients' certificates on the fly) and the responder's credential tree."""

    issuer_cert: Path
    issuer_key: Path
    creds: Path  # swanctl layout: x509/srv.example.pem, private/, x509ca/ (the issuer)

    @classmethod
    def make(cls, directory: Path) -> BenchPki:
        pki = TestPki()
        ca = pki.root("load-test CA", "rsa3072")
        server = pki.end_entity(ca, RESPONDER_ID, "rsa3072")
        directory.mkdir(parents=True, exist_ok=True)
        issuer_cert, issuer_key = directory / "issuer.pem", directory / "issuer.key"
        issuer_cert.write_bytes(ca.cert_bytes())
        issuer_key.write_bytes(ca.key_bytes(form="traditional"))  # the plugin reads an RSA key (PKCS#1)
        issuer_key.chmod(0o600)
        creds = write_swanctl(directory / "creds", own=[KeyFile(server, form="traditional")], cas=[ca])
        return cls(issuer_cert, issuer_key, creds)


# ---------------------------------------------------------------- responders
METRICS_PORT = 9810
# The scraper in B (``--scrape``): GET /metrics every argv[2] seconds, one line per scrape
# "ms bytes" (or "error ..."), until killed.
SCRAPER = """
import sys, time, urllib.request
port, every = int(sys.argv[1]), float(sys.argv[2])
while True:
    t0 = time.monotonic()
    try:
        n = len(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read())
        print(f"{(time.monotonic() - t0) * 1000:.1f} {n}", flush=True)
    except Exception as e:
        print(f"error {type(e).__name__}", flush=True)
    time.sleep(max(0.0, every - (time.monotonic() - t0)))
"""


class Scraper:
    """``--scrape``: the periodic GET of /metrics in the responder's namespace, for one stage."""

    def __init__(self, ns: Netns, log_path: Path, every: float) -> None:
        self.ns, self.log_path, self.every = ns, log_path, every
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.unlink(missing_ok=True)
        self.proc = self.ns.popen([sys.executable, "-c", SCRAPER, str(METRICS_PORT), str(self.every)],
                                  log_path=self.log_path)

    def stop(self) -> tuple[list[float], int]:
        """(each scrape's duration in ms, failed scrapes)."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None
        ms, errors = [], 0
        for line in self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else ():
            parts = line.split()
            if len(parts) == 2 and parts[0] != "error":
                ms.append(float(parts[0]))
            elif parts and parts[0] == "error":
                errors += 1
        return ms, errors


class IpsecdResponder:
    """ipsecd in B for any client: one connection, remote id %any, one PSK (or certificates)."""

    name = "ipsecd"

    def __init__(self, topo: Topology, workdir: Path, psk: str, pki: BenchPki | None = None, shards: int = 1,
                 metrics: bool = False) -> None:
        self.shards = shards
        if shards > 1:
            self.name = SHARDED
        config = ipsecd_config(
            local_addrs=[topo.b_addr], remote_addrs="%any", local_id=RESPONDER_ID, remote_id="%any", psk=psk,
            proposals=[IKE_PROPOSAL], children={"net": child_config(
                local_ts=[GATEWAY_TS], remote_ts=[CLIENT_NET], esp_proposals=[ESP_PROPOSAL])})
        if pki is not None:
            conn = config["connections"]["peer"]
            conn["local"] = {"auth": "pubkey", "id": RESPONDER_ID, "certs": [f"{RESPONDER_ID}.pem"]}
            conn["remote"] = {"auth": "pubkey", "id": "%any"}
            config["secrets"] = {}
            config["settings"] = {"credentials": str(pki.creds)}
        config.setdefault("settings", {}).update(NO_DOS_PROTECTION)
        if shards > 1:
            config["settings"]["ike_shards"] = shards
        if metrics:  # --scrape: the endpoint a Prometheus would scrape
            config["settings"]["metrics"] = {"listen": f"127.0.0.1:{METRICS_PORT}"}
        self.daemon = Ipsecd(topo.b, workdir, config)
        self.log_path = self.daemon.log_path
        self.ns = topo.b

    def start(self) -> None:
        why = why_no_ipsecd()
        if why:
            raise RuntimeError(why)
        self.daemon.start()

    def pids(self) -> dict[str, int]:
        assert self.daemon.proc is not None
        ike = self.daemon.proc.pid
        out = {"ike": ike}
        workers = []
        for pid in child_pids(ike):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"--shard" in argv:  # an IKE shard: "--shard k/N"
                out[f"shard{argv[argv.index(b'--shard') + 1].split(b'/')[0].decode()}"] = pid
            else:
                workers.append(pid)
        if len(workers) != 1 or len(out) != self.shards:
            raise RuntimeError(f"expected one data-plane worker and {self.shards - 1} shard(s) under ipsecd {ike}, "
                               f"found {out} and workers {workers}")
        out["worker"] = workers[0]
        return out

    def held(self) -> tuple[int, int]:
        """(established IKE SAs, installed Child SAs) as ipsecd reports them."""
        data = json.loads(self.daemon.ctl("list-sas", "--json", timeout=300).stdout)
        ikes = [s for s in data["ike_sas"] if s.get("state") == "ESTABLISHED"]
        kids = sum(1 for s in ikes for c in s.get("child_sas", []) if c.get("state") == "INSTALLED")
        return len(ikes), kids

    def stop(self) -> None:
        self.daemon.stop()


class _TunedCharon(Charon):
    """charon as a gateway operator would run it: stock log level, a big IKE SA table."""

    pki: BenchPki | None = None

    def write_config(self) -> None:
        super().write_config()
        certs = "pem pkcs1 x509 pubkey constraints " if self.pki is not None else ""
        plugins = f"random nonce openssl gcm aes sha1 sha2 hmac kdf curve25519 {certs}kernel-libipsec kernel-netlink " \
                  "socket-default vici"
        self.conf_path.write_text(f"""charon {{
  load_modular = no
  load = {plugins}
  ikesa_table_size = 4096
  dos_protection = no
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  filelog {{
    main {{
      path = {self.log_path}
      append = no
      default = 1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{self.vici_socket}
    }}
  }}
}}
""")


class CharonResponder:
    name = "strongswan"

    def __init__(self, topo: Topology, workdir: Path, psk: str, pki: BenchPki | None = None) -> None:
        self.pki = pki
        self.charon = _TunedCharon(topo.b, workdir, ConnParams(
            local_addrs=[topo.b_addr], remote_addrs=["%any"], local_id=RESPONDER_ID, remote_id="%any", psk=psk,
            proposals=[IKE_PROPOSAL], children=[ChildParams(
                local_ts=[GATEWAY_TS], remote_ts=[CLIENT_NET], esp_proposals=[ESP_PROPOSAL])]))
        self.charon.pki = pki
        self.log_path = self.charon.log_path
        self.ns = topo.b

    def start(self) -> None:
        why = why_no_strongswan()
        if why:
            raise RuntimeError(why)
        if self.pki is None:
            self.charon.start()
            return
        # certificates: the same connection with pubkey both ways, loaded with the credential tree
        self.charon.start(load=False)
        conf = self.pki.creds / "bench.conf"
        text = (self.charon.swanctl_path.read_text() if self.charon.swanctl_path.exists() else "")
        text = re.sub(r"local \{\n\s*auth = psk\n", "local {\n      auth = pubkey\n      certs = "
                      f"{RESPONDER_ID}.pem\n", text)
        text = re.sub(r"remote \{\n\s*auth = psk\n", "remote {\n      auth = pubkey\n", text)
        conf.write_text(text.split("secrets {")[0])
        self.charon.swanctl("--load-all", "--file", str(conf))

    def pids(self) -> dict[str, int]:
        assert self.charon.proc is not None
        return {"charon": self.charon.proc.pid}

    def held(self) -> tuple[int, int]:
        # vici lists 20,000 IKE SAs in more than swanctl's usual 30 s here
        sas = sas_from_raw(self.charon.swanctl("--list-sas", "--raw", timeout=300).stdout)
        ikes = [s for s in sas if s.get("state") == "ESTABLISHED"]
        kids = sum(1 for s in ikes for c in s.get("child-sas", []) if c.get("state") == "INSTALLED")
        return len(ikes), kids

    def stop(self) -> None:
        self.charon.stop()


Responder = IpsecdResponder | CharonResponder


# ---------------------------------------------------------------- the initiator
def initiator_conf(log_path: Path, *, responder: str, initiator: str, psk: str, tag: str, in_flight: int,
                   pki: BenchPki | None = None) -> str:
    """strongswan.conf for a run's load generator.

    ``initiators = 0``: no load at start; :meth:`LoadInitiator.drive` asks for SAs on
    the plugin's control socket, each request holding a charon thread until its SA is
    up (hence ``in_flight + 16`` threads).  ``initiator_id`` is unique per run (``tag``)
    and per SA (``c%d``), so no SA can replace another; ``responder_id`` has a
    wildcard, so charon sends no INITIAL_CONTACT either (a bare ``%any`` would reach
    snprintf as a format string).  ``child_rekey = 0``: no Child SA rekeys in a run.
    With ``pki`` the plugin authenticates with certificates it issues itself (``issuer_*``).
    """
    if pki is None:
        auth = f"initiator_auth = psk\n      responder_auth = psk\n      preshared_key = {psk}"
    else:
        auth = (f"initiator_auth = pubkey\n      responder_auth = pubkey\n      issuer_cert = {pki.issuer_cert}\n"
                f"      issuer_key = {pki.issuer_key}\n      digest = sha256")
    plugins = "load-tester random nonce openssl gcm aes sha1 sha2 hmac kdf curve25519 pem pkcs1 x509 pubkey " \
              "kernel-netlink socket-default"
    return f"""charon {{
  load_modular = no
  load = {plugins}
  reuse_ikesa = no
  ikesa_table_size = 4096
  threads = {in_flight + 16}
  install_routes = no
  install_virtual_ip = no
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  filelog {{
    main {{
      path = {log_path}
      append = no
      flush_line = yes
      time_format = %s
      time_add_ms = yes
      ike_name = yes
      default = 0
      ike = 1
    }}
  }}
  plugins {{
    load-tester {{
      enable = yes
      initiators = 0
      fake_kernel = yes
      initiator = {initiator}
      responder = {responder}
      proposal = {IKE_PROPOSAL}
      esp = {ESP_PROPOSAL}
      {auth}
      initiator_id = {tag}-c%d-r%d.example
      responder_id = *.example
      initiator_tsi = {CLIENT_TS}
      initiator_tsr = {GATEWAY_TS}
      child_rekey = 0
      socket = unix://{log_path.parent / "charon.ldt"}
      shutdown_when_complete = no
    }}
  }}
}}
"""


_LINE = re.compile(r"^(\d+\.\d{3}) \d+\[\w+\] <[^|>]*\|?(\d+)> (.*)$")
_INIT = re.compile(r"^initiating IKE_SA ")
_EST = re.compile(r"^IKE_SA \S+ established between")
_CHILD = re.compile(r"^CHILD_SA \S+ established with SPIs")
_RETX = re.compile(r"^retransmit \d+ of request")
_FAIL = re.compile(r"establishing IKE_SA failed|giving up after|notify error|failed to establish CHILD_SA|"
                   r"authentication of .* failed|no acceptable|MAC verification failed")


@dataclass
class LogWatch:
    """Reads the initiator's log incrementally: per IKE SA unique id, when it was initiated
    and established, whether its Child SA came up, retransmissions and failures."""

    path: Path
    initiated: dict[int, float] = field(default_factory=dict)
    established: dict[int, float] = field(default_factory=dict)
    children: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    retransmits: int = 0
    errors: list[str] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def update(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            m = _LINE.match(raw.decode(errors="replace"))
            if m is None:
                continue
            t, uid, msg = float(m.group(1)), int(m.group(2)), m.group(3)
            if _INIT.match(msg):
                self.initiated.setdefault(uid, t)
            elif _EST.match(msg):
                self.established.setdefault(uid, t)
            elif _CHILD.match(msg):
                self.children.add(uid)
            elif _RETX.match(msg):
                self.retransmits += 1
            elif _FAIL.search(msg):
                self.failed.add(uid)
                if len(self.errors) < 5:
                    self.errors.append(msg)

    @property
    def done(self) -> int:
        return len(self.established.keys() | self.failed)

    def latencies_ms(self) -> list[float]:
        return sorted((t - self.initiated[u]) * 1000 for u, t in self.established.items() if u in self.initiated)

    def window(self) -> tuple[float, float] | None:
        if not self.initiated or not self.established:
            return None
        return min(self.initiated.values()), max(self.established.values())


class LoadInitiator:
    """The run's charon + load-tester in A, pinned to the initiator core, driven through
    the plugin's control socket; SIGKILLed at the end of the run.

    One process serves every stage of a run: its fake kernel numbers SPIs 1, 2, 3 ...
    from each start, so a fresh initiator per stage would hand the responder outbound
    SPIs it already has (charon's libipsec refuses those Child SAs), and pausing between
    stages (to read memory after a settle) needs the generator to be idle, not gone.
    """

    def __init__(self, ns: Netns, workdir: Path, plugin: Path, conf: str, cpus: str = str(INITIATOR_CPU)) -> None:
        self.ns, self.workdir, self.plugin, self.cpus = ns, workdir, plugin, cpus
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = workdir / "strongswan.conf"
        self.log_path = workdir / "charon.log"
        self.socket = workdir / "charon.ldt"
        self.conf_path.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        # charon always writes /run/charon.pid: a private /run in ip netns exec's mount namespace.
        cmd = (f"mount --bind {shlex.quote(str(run))} /run && exec taskset -c {self.cpus} env "
               f"STRONGSWAN_CONF={shlex.quote(str(self.conf_path))} LD_PRELOAD={shlex.quote(str(self.plugin))} "
               f"{CHARON}")
        self.proc = self.ns.popen(["bash", "-c", cmd], self.workdir / "charon.stdout")
        end = time.monotonic() + timeout
        while not self.socket.exists():
            if not self.alive() or time.monotonic() > end:
                raise RuntimeError(f"initiator charon: no control socket {self.socket}\n"
                                   f"{read_tail(self.log_path)}{read_tail(self.workdir / 'charon.stdout')}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def drive(self, count: int, in_flight: int, deadline: float) -> dict[str, int]:
        """Open ``count`` IKE SAs with at most ``in_flight`` outstanding (a closed loop).

        Each request on the control socket is ``"1 0"``: the plugin initiates one IKE SA
        and answers ``.`` then ``+`` (established), ``-`` (failed), ``*`` per
        retransmission, ``!`` if it could not even start.  No new request after
        ``deadline``; outstanding ones are abandoned 30 s after it.
        """
        lock = threading.Lock()
        left = [count]
        tally = {"+": 0, "-": 0, "*": 0, "!": 0, "lost": 0}

        def worker() -> None:
            while True:
                with lock:
                    if left[0] <= 0 or time.monotonic() > deadline:
                        return
                    left[0] -= 1
                if not self._request(deadline, tally, lock):
                    with lock:
                        left[0] += 1
                    return

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(in_flight, count))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return tally

    def drive_open(self, count: int, rate: float, cap: int, deadline: float) -> dict[str, int]:
        """Open ``count`` IKE SAs at ``rate`` per second whatever the answers (an open loop).

        Request k starts at t0 + k / rate, each on its own connection (see :meth:`drive`),
        however many are outstanding -- up to ``cap`` (the initiator's threads), beyond which
        a start waits and is counted in ``late`` (as are starts this harness was late for by
        more than 10 ms on its busy core). ``offered_per_s`` is the rate actually offered.
        """
        lock = threading.Lock()
        tally = {"+": 0, "-": 0, "*": 0, "!": 0, "lost": 0, "late": 0, "offered_per_s": 0}
        slots = threading.Semaphore(cap)
        threads: list[threading.Thread] = []

        def one() -> None:
            try:
                self._request(deadline, tally, lock)
            finally:
                slots.release()

        t0 = time.monotonic()
        started = t0
        for k in range(count):
            due = t0 + k / rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            started = time.monotonic()
            if started - due > 0.010:
                tally["late"] += 1
            t = threading.Thread(target=one, daemon=True)
            t.start()
            threads.append(t)
        if len(threads) > 1:
            tally["offered_per_s"] = round((len(threads) - 1) / max(started - t0, 1e-9))
        for t in threads:
            t.join()
        return tally

    def _request(self, deadline: float, tally: dict[str, int], lock: threading.Lock) -> bool:
        """One ``"1 0"`` request, its answer added to ``tally``; False if none could be made."""
        answer = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            # The plugin's listen backlog is 10: a full one refuses (EAGAIN), so retry.
            while not self._connect(s, deadline):
                if time.monotonic() > deadline:
                    return False
            s.settimeout(max(1.0, deadline + 30 - time.monotonic()))
            with contextlib.suppress(OSError):
                s.sendall(b"1 0\n")
                while chunk := s.recv(64):
                    answer += chunk
        with lock:
            for ch in "+-*!":
                tally[ch] += answer.count(ch.encode())
            if not answer.endswith(b"\n"):
                tally["lost"] += 1
        return True

    def _connect(self, s: socket.socket, deadline: float) -> bool:
        try:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.connect(str(self.socket))
            return True
        except (BlockingIOError, ConnectionRefusedError, TimeoutError):
            time.sleep(0.005)
            return False

    def kill(self) -> None:
        """SIGKILL: a SIGTERMed charon deletes its IKE SAs, and the responder must keep them."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


def read_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------- responder-side capture
class ResponderCapture:
    """tcpdump on the responder's interface for a stage (``--capture``): the responder's own
    time from each IKE request to its answer, per exchange.

    The initiator's latency ("initiating" -> "established" in its log) also holds whatever
    delays the generator itself: its own core, its threads, the harness's late starts.
    This one is the responder's alone (the kernel's timestamps at B's interface), so a tail
    can be placed on one side or the other. IKE on 500, and on 4500 after the non-ESP marker
    (charon floats there); only the first 96 bytes of each datagram are kept."""

    SNAPLEN = 96

    def __init__(self, ns: Netns, path: Path) -> None:
        self.path = path
        log = path.with_suffix(".log")
        # --immediate-mode: each packet is handed over as it comes; libpcap's default holds them up to
        # a second in the ring, and a tcpdump stopped meanwhile never writes them
        self.proc = ns.popen(["tcpdump", "-i", "eth0", "--immediate-mode", "-s", str(self.SNAPLEN), "-U",
                              "-w", str(path), "udp port 500 or udp port 4500"], log_path=log)
        # the stage must not start before tcpdump captures ("listening on" once its socket is bound)
        deadline = time.monotonic() + 15.0
        while b"listening on" not in (log.read_bytes() if log.exists() else b""):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump did not start: {read_tail(log)}")
            time.sleep(0.05)

    def stop(self) -> list[float]:
        """Stop the capture; the responder's delays in ms, sorted."""
        time.sleep(0.5)  # the stage's last answers reach the file
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return exchange_delays_ms(self.path.read_bytes()) if self.path.exists() else []


def exchange_delays_ms(pcap: bytes) -> list[float]:
    """Request -> answer times (ms, sorted) of the IKE exchanges in a classic pcap of Ethernet
    frames with IPv4/UDP; a request's first copy counts (a retransmission does not reset it)."""
    if len(pcap) < 24:
        return []
    endian = "<" if pcap[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    nano = pcap[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    if nano:
        endian = "<" if pcap[:4] == b"\x4d\x3c\xb2\xa1" else ">"
    rec = struct.Struct(endian + "IIII")
    asked: dict[tuple[bytes, int, int], float] = {}
    out: list[float] = []
    off = 24
    while off + 16 <= len(pcap):
        sec, frac, incl, _orig = rec.unpack_from(pcap, off)
        frame = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        t = sec + frac / (1e9 if nano else 1e6)
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        ports = struct.unpack_from("!HH", frame, udp) if len(frame) >= udp + 8 else (0, 0)
        ike = frame[udp + 8:]
        if 4500 in ports:
            if ike[:4] != b"\0\0\0\0":
                continue  # ESP, or a keepalive
            ike = ike[4:]
        if len(ike) < 28:
            continue
        spi_i, exchange, flags, mid = ike[:8], ike[18], ike[19], int.from_bytes(ike[20:24], "big")
        key = (spi_i, exchange, mid)
        if not flags & 0x20:  # a request
            asked.setdefault(key, t)
        elif key in asked:
            out.append(1000 * (t - asked.pop(key)))
    return sorted(out)


# ---------------------------------------------------------------- profiling (py-spy)
_FRAME_LINE = re.compile(r":\d+\)$")


class Profiler:
    """py-spy on each ipsecd process for the length of a stage (``--profile DIR``).

    Sampling is non-blocking (the daemon is never paused) at 100 Hz; py-spy itself is
    not pinned, so a profiled run's figures are not for comparison.
    """

    def __init__(self, outdir: Path, tag: str) -> None:
        self.outdir, self.tag = outdir, tag
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, pids: dict[str, int]) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            out = self.outdir / f"{self.tag}-{name}.txt"
            self.procs[name] = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                 "--rate", "100", "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> dict[str, Path]:
        """SIGINT makes py-spy write its file; returns name -> collapsed-stack file."""
        out = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            out[name] = self.outdir / f"{self.tag}-{name}.txt"
        return out


def summarize_profile(path: Path, top: int = 15) -> str:
    """Top functions of a py-spy raw (collapsed) profile: self and inclusive shares of samples."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, num = line.rpartition(" ")
        if not stack or not num.isdigit():
            continue
        count = int(num)
        total += count
        frames = [_FRAME_LINE.sub(")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples; self % | inclusive % | function (file)"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f} | {100 * incl[f] / total:5.1f} | {f}")
    lines.append("  top inclusive:")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * own.get(f, 0) / total:5.1f} | {100 * n / total:5.1f} | {f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- one stage
@dataclass
class Stage:
    """What one stage measured (one responder, one run, one checkpoint)."""

    responder: str
    run: int
    checkpoint: int
    asked: int
    established: int = 0
    children: int = 0
    failed: int = 0
    retransmits: int = 0
    window_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_growth_kib: dict[str, int] = field(default_factory=dict)
    held_after: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    idle: dict[str, float] = field(default_factory=dict)
    initiator_cpu_s: float = 0.0
    harness_cpu_s: float = 0.0  # this process's request threads: part of the generator
    partial: bool = False
    errors: list[str] = field(default_factory=list)
    scrapes_ms: list[float] = field(default_factory=list)  # --scrape: each scrape's duration
    scrape_errors: int = 0
    open_rate: float = 0.0  # the rate asked for in an open-loop stage (0: closed loop)
    offered_per_s: float = 0.0  # ... and the rate the harness managed to offer
    late_starts: int = 0
    responder_ms: list[float] = field(default_factory=list)  # --capture: request -> answer at the responder

    @property
    def rate(self) -> float:
        return self.established / self.window_s if self.window_s > 0 else 0.0

    def cpu_ms_per_sa(self, proc: str | None = None) -> float:
        total = self.cpu_s.get(proc, 0.0) if proc else sum(self.cpu_s.values())
        return 1000 * total / self.established if self.established else float("nan")

    def initiator_ms_per_sa(self) -> float:
        return 1000 * self.initiator_cpu_s / self.established if self.established else float("nan")

    def generator_ms_per_sa(self) -> float:
        """The whole load generator: the initiator charon and the harness's request threads."""
        if not self.established:
            return float("nan")
        return 1000 * (self.initiator_cpu_s + self.harness_cpu_s) / self.established

    def kib_per_tunnel(self, proc: str | None = None) -> float:
        total = self.rss_growth_kib.get(proc, 0) if proc else sum(self.rss_growth_kib.values())
        return total / self.held_after if self.held_after else float("nan")

    def pct(self, q: float, values: list[float] | None = None) -> float:
        vals = self.latencies_ms if values is None else values
        if not vals:
            return float("nan")
        return vals[min(len(vals) - 1, max(0, round(q * len(vals)) - 1))]

    def responder_pct(self, q: float) -> float:
        """--capture: a percentile of the responder's own request -> answer times (ms)."""
        return self.pct(q, self.responder_ms)

    def line(self) -> str:
        cpu = " ".join(f"{k} {self.cpu_ms_per_sa(k):.2f}" for k in self.cpu_s)
        kib = " ".join(f"{k} {self.kib_per_tunnel(k):.1f}" for k in self.rss_growth_kib)
        part = f" PARTIAL ({self.established} of {self.asked} in the time cap)" if self.partial else ""
        if self.scrapes_ms or self.scrape_errors:
            part += (f", scrapes {len(self.scrapes_ms)} (median {statistics.median(self.scrapes_ms or [0]):.0f} ms, "
                     f"max {max(self.scrapes_ms or [0]):.0f} ms, {self.scrape_errors} failed)")
        mode = (f" open loop {self.open_rate:g}/s (offered {self.offered_per_s:.0f}/s, {self.late_starts} late)"
                if self.open_rate else "")
        return (f"{self.responder} run {self.run} -> {self.checkpoint}{mode}: {self.established}/{self.asked} up "
                f"({self.children} Child SAs), {self.rate:.1f} SAs/s, CPU ms/SA {cpu} (total "
                f"{self.cpu_ms_per_sa():.2f}), p50 {self.pct(0.5):.0f} ms p99 {self.pct(0.99):.0f} ms, "
                f"failed {self.failed}, retransmits {self.retransmits}, KiB/tunnel {kib}, "
                f"initiator {self.initiator_ms_per_sa():.2f} ms/SA (+ harness "
                f"{self.generator_ms_per_sa() - self.initiator_ms_per_sa():.2f}), "
                f"idle {100 * self.idle.get('cpu', 0):.0f}% (cpu{INITIATOR_CPU} "
                f"{100 * self.idle.get(f'cpu{INITIATOR_CPU}', 0):.0f}%, cpu{RESPONDER_CPU} "
                f"{100 * self.idle.get(f'cpu{RESPONDER_CPU}', 0):.0f}%){part}"
                + (f", responder's own p50 {self.responder_pct(0.5):.1f} ms p99 {self.responder_pct(0.99):.1f} ms "
                   f"over {len(self.responder_ms)} exchanges" if self.responder_ms else ""))


@dataclass
class Bench:
    """Options shared by every stage of a benchmark."""

    plugin: Path
    workdir: Path
    psk: str
    in_flight: int = 64
    pki: BenchPki | None = None  # --auth pubkey
    settle: float = 3.0
    profile_dir: Path | None = None
    profiles: list[str] = field(default_factory=list)
    placement: str = "split"  # PLACEMENTS
    rates: list[float] = field(default_factory=list)  # --rate: open-loop stages after the checkpoints
    rate_sas: int = 1000  # SAs per open-loop stage
    open_cap: int = 256  # outstanding requests at most in an open loop (initiator threads)
    capture: bool = False  # --capture: the responder's own request -> answer times (tcpdump in B)
    scrape: float = 0.0  # --scrape: seconds between GETs of ipsecd's /metrics during each stage (0: none)


def run_stage(b: Bench, resp: Responder, init: LoadInitiator, watch: LogWatch, run: int, index: int,
              checkpoint: int, count: int, base_rss: dict[str, int], held_before: int, deadline: float,
              rate: float = 0.0, scraper: Scraper | None = None) -> Stage:
    """Open ``count`` more SAs (closed loop, or at ``rate`` per second), then settle; the
    figures of :class:`Stage` for them."""
    st = Stage(resp.name, run, checkpoint, count, open_rate=rate)
    pids = resp.pids()
    watch.update()
    seen, retx0 = set(watch.initiated), watch.retransmits
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    init_cpu0, harness0, sys0 = cpu_seconds(init.pid), cpu_seconds(os.getpid()), cpu_times()
    ours = resp.name in ("ipsecd", SHARDED)
    prof = Profiler(b.profile_dir, f"{resp.name}-r{run}-s{index}") if b.profile_dir and ours else None
    if prof:
        prof.start(pids)
    cap = ResponderCapture(resp.ns, b.workdir / f"{resp.name}-r{run}-s{index}.pcap") if b.capture else None
    if scraper:
        scraper.start()
    try:
        if rate:
            tally = init.drive_open(count, rate, b.open_cap, deadline)
            st.offered_per_s, st.late_starts = tally["offered_per_s"], tally["late"]
        else:
            tally = init.drive(count, b.in_flight, deadline)
        # Idle shares over the load itself, not the settle: they say who was the bottleneck.
        st.idle = idle_shares(sys0, cpu_times())
        st.initiator_cpu_s = cpu_seconds(init.pid) - init_cpu0
        st.harness_cpu_s = cpu_seconds(os.getpid()) - harness0
    finally:
        if prof:
            b.profiles += [summarize_profile(f) for f in prof.stop().values() if f.exists()]
        if cap:
            st.responder_ms = cap.stop()
    if not init.alive():
        raise RuntimeError(f"initiator charon died\n{read_tail(init.log_path)}")
    time.sleep(b.settle)
    if scraper:
        st.scrapes_ms, st.scrape_errors = scraper.stop()
    watch.update()
    st.cpu_s = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    mine = set(watch.initiated) - seen
    up = {u: t for u, t in watch.established.items() if u in mine}
    st.established, st.children = len(up), len(watch.children & up.keys())
    st.partial = tally["+"] + tally["-"] + tally["!"] < count
    st.failed = len(mine) - len(up) + tally["!"] + (st.established - st.children)
    st.retransmits = watch.retransmits - retx0
    st.errors = list(watch.errors)
    st.latencies_ms = sorted((t - watch.initiated[u]) * 1000 for u, t in up.items())
    st.window_s = (max(up.values()) - min(watch.initiated[u] for u in mine)) if up else 0.0
    st.held_after = held_before + st.established
    st.rss_growth_kib = {k: rss_kib(p) - base_rss[k] for k, p in pids.items()}
    return st


def run_responder(b: Bench, name: str, run: int, checkpoints: list[int], max_seconds: float,
                  log: list[str]) -> list[Stage]:
    """One fresh responder and initiator taken through every checkpoint (bounded by ``max_seconds``)."""
    stages: list[Stage] = []
    with Topology("pair", ipv6=False) as topo:
        workdir = b.workdir / f"{name}-r{run}"
        resp: Responder = (CharonResponder(topo, workdir / "resp", b.psk, b.pki) if name == "strongswan" else
                           IpsecdResponder(topo, workdir / "resp", b.psk, b.pki, shards=2 if name == SHARDED else 1,
                                           metrics=b.scrape > 0))
        scraper = Scraper(topo.b, workdir / "scrape.log", b.scrape) if b.scrape > 0 and name != "strongswan" else None
        conf = initiator_conf(workdir / "init" / "charon.log", responder=topo.b_addr, initiator=topo.a_addr,
                              psk=b.psk, tag=f"r{run}", in_flight=max(b.in_flight, b.open_cap if b.rates else 0),
                              pki=b.pki)
        shared = b.placement == "shared"
        init = LoadInitiator(topo.a, workdir / "init", b.plugin, conf,
                             ",".join(map(str, sorted(all_cpus()))) if shared else str(INITIATOR_CPU))
        watch = LogWatch(init.log_path)
        try:
            resp.start()
            for proc, pid in resp.pids().items():  # shared: undo the CPU 0 they inherit from us
                pin(pid, all_cpus() if shared else INITIATOR_CPU if proc.startswith("shard") else RESPONDER_CPU)
            init.start()
            time.sleep(b.settle)
            base = {k: rss_kib(p) for k, p in resp.pids().items()}
            deadline = time.monotonic() + max_seconds
            held, prev = 0, 0
            for i, cp in enumerate(checkpoints):
                if time.monotonic() > deadline:
                    log.append(f"{name} run {run}: time cap reached before {cp} tunnels")
                    break
                st = run_stage(b, resp, init, watch, run, i, cp, cp - prev, base, held, deadline, scraper=scraper)
                print(f"[bench] {st.line()}", file=sys.stderr)
                stages.append(st)
                held, prev = st.held_after, cp
                if st.partial:
                    break
            for j, rate in enumerate(b.rates):  # open loop, on top of what the checkpoints left held
                if time.monotonic() > deadline or (stages and stages[-1].partial):
                    log.append(f"{name} run {run}: time cap reached before the open loop at {rate:g}/s")
                    break
                st = run_stage(b, resp, init, watch, run, len(checkpoints) + j, held + b.rate_sas, b.rate_sas,
                               base, held, deadline, rate=rate, scraper=scraper)
                print(f"[bench] {st.line()}", file=sys.stderr)
                stages.append(st)
                held = st.held_after
            if stages:
                try:
                    ike, kids = resp.held()
                except Exception as e:  # the stages stand; only the final count is missing
                    log.append(f"{name} run {run}: could not count the responder's SAs: {e!s:.200}")
                    ike, kids = held, sum(st.children for st in stages)
                want = sum(st.children for st in stages)
                if ike != held or kids != want:
                    log.append(f"{name} run {run}: responder holds {ike} IKE SAs / {kids} Child SAs, "
                               f"initiator saw {held} / {want} established")
                for e in {e for st in stages for e in st.errors}:
                    log.append(f"{name} run {run}: initiator logged: {e}")
        finally:
            init.kill()
            resp.stop()
    return stages



# ---------------------------------------------------------------- report
def _mmm(values: list[float], fmt: str) -> str:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return "-"
    return " / ".join(format(v, fmt) for v in (min(vals), statistics.median(vals), max(vals)))


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if v == v]
    return statistics.median(vals) if vals else None


def report(stages: list[Stage], checkpoints: list[int], runs: int, notes: list[str], in_flight: int,
           auth: str = "psk", placement: str = "split") -> str:
    how = "certificates (RSA-3072, RFC 7427) both ways" if auth == "pubkey" else "PSK"
    where = (f"initiator on CPU {INITIATOR_CPU}, responder on CPU {RESPONDER_CPU} (ipsecd-2shards: shard 1 on CPU "
             f"{INITIATOR_CPU})" if placement == "split" else
             "nothing pinned: generator and responder share every core")
    lines = [f"handshake load ({how}): strongSwan load-tester -> responder, {runs} run(s) per responder, alternating; "
             f"{in_flight} handshakes in flight; {where}; values min / median / max over runs", ""]
    names = [n for n in KNOWN if any(s.responder == n for s in stages)]
    prev = 0
    for cp in checkpoints:
        at = [s for s in stages if s.checkpoint == cp and not s.open_rate]
        if not at:
            continue
        lines.append(f"checkpoint {cp} tunnels (stage {prev} -> {cp})")
        prev = cp
        med: dict[str, dict[str, float | None]] = {}
        for n in names:
            ss = [s for s in at if s.responder == n]
            if not ss:
                continue
            procs = list(ss[0].cpu_s)
            part = sum(s.partial for s in ss)
            tag = f"  [{part} partial]" if part else ""
            lines.append(f"  {n}{tag}")
            lines.append(f"    SAs/s                {_mmm([s.rate for s in ss], '.1f')}")
            for p in procs:
                lines.append(f"    CPU ms/SA {p:<10} {_mmm([s.cpu_ms_per_sa(p) for s in ss], '.3f')}")
            if len(procs) > 1:
                lines.append(f"    CPU ms/SA total      {_mmm([s.cpu_ms_per_sa() for s in ss], '.3f')}")
            lines.append(f"    latency p50 ms       {_mmm([s.pct(0.5) for s in ss], '.0f')}")
            lines.append(f"    latency p99 ms       {_mmm([s.pct(0.99) for s in ss], '.0f')}")
            lines.append(f"    failed               {_mmm([float(s.failed) for s in ss], '.0f')}")
            lines.append(f"    retransmits          {_mmm([float(s.retransmits) for s in ss], '.0f')}")
            for p in procs:
                lines.append(f"    KiB/tunnel {p:<9} {_mmm([s.kib_per_tunnel(p) for s in ss], '.1f')}")
            if len(procs) > 1:
                lines.append(f"    KiB/tunnel total     {_mmm([s.kib_per_tunnel() for s in ss], '.1f')}")
            lines.append(f"    initiator CPU ms/SA  {_mmm([s.initiator_ms_per_sa() for s in ss], '.3f')}")
            lines.append(f"    generator CPU ms/SA  {_mmm([s.generator_ms_per_sa() for s in ss], '.3f')}")
            # what one SA costs the machine: every responder process and the whole generator
            lines.append(f"    machine CPU ms/SA    "
                         f"{_mmm([s.cpu_ms_per_sa() + s.generator_ms_per_sa() for s in ss], '.3f')}")
            tags = (" (init.)", " (resp.)") if placement == "split" else ("", "")
            for title, key in (("machine", "cpu"), (f"cpu{INITIATOR_CPU}{tags[0]}", f"cpu{INITIATOR_CPU}"),
                               (f"cpu{RESPONDER_CPU}{tags[1]}", f"cpu{RESPONDER_CPU}")):
                lines.append(f"    idle % {title:<13} {_mmm([100 * s.idle.get(key, 0) for s in ss], '.0f')}")
            med[n] = {"rate": _median([s.rate for s in ss]), "cpu": _median([s.cpu_ms_per_sa() for s in ss]),
                      "p99": _median([s.pct(0.99) for s in ss]), "kib": _median([s.kib_per_tunnel() for s in ss])}
        if "ipsecd" in med and "strongswan" in med:
            ratios = []
            for key, title in (("rate", "SAs/s"), ("cpu", "CPU/SA"), ("p99", "p99"), ("kib", "KiB/tunnel")):
                ours, theirs = med["ipsecd"][key], med["strongswan"][key]
                if ours is not None and theirs:
                    ratios.append(f"{title} {ours / theirs:.2f}x")
            lines.append(f"  ipsecd / strongSwan (medians): {', '.join(ratios)}")
        if "ipsecd" in med and SHARDED in med:
            one, two = med["ipsecd"]["rate"], med[SHARDED]["rate"]
            if one and two:
                lines.append(f"  two shards / one (medians): SAs/s {two / one:.2f}x")
        if SHARDED in med and "strongswan" in med:
            two, theirs = med[SHARDED]["rate"], med["strongswan"]["rate"]
            if two and theirs:
                lines.append(f"  two shards / strongSwan (medians): SAs/s {two / theirs:.2f}x")
        lines.append("")
    lines.extend(open_loop_report(stages, names))
    lines.extend(f"setting: {n}" for n in RESPONDER_NOTES)
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def open_loop_report(stages: list[Stage], names: list[str]) -> list[str]:
    """The open-loop stages (``--rate``): latency at a fixed offered rate, per responder.

    Unlike the closed loop's (where p50 ~ in-flight / rate by Little's law, whatever the
    responder), this latency is what a client meets when logins arrive at that rate: the
    queueing the responder adds at that load, the same offered load for every responder."""
    rates = sorted({s.open_rate for s in stages if s.open_rate})
    lines = []
    for rate in rates:
        at = [s for s in stages if s.open_rate == rate]
        lines.append(f"open loop: {rate:g} SAs/s offered, {at[0].asked} SAs per stage, after the checkpoints "
                     f"(~{min(s.held_after for s in at) - at[0].asked} tunnels held before)")
        p99: dict[str, float | None] = {}
        for n in names:
            ss = [s for s in at if s.responder == n]
            if not ss:
                continue
            lines.append(f"  {n}")
            lines.append(f"    offered SAs/s        {_mmm([s.offered_per_s for s in ss], '.0f')}"
                         f"   (late starts {_mmm([float(s.late_starts) for s in ss], '.0f')})")
            lines.append(f"    SAs/s                {_mmm([s.rate for s in ss], '.1f')}")
            lines.append(f"    CPU ms/SA total      {_mmm([s.cpu_ms_per_sa() for s in ss], '.3f')}")
            lines.append(f"    latency p50 ms       {_mmm([s.pct(0.5) for s in ss], '.0f')}")
            lines.append(f"    latency p99 ms       {_mmm([s.pct(0.99) for s in ss], '.0f')}")
            if any(s.responder_ms for s in ss):
                own = _mmm([s.responder_pct(0.99) for s in ss], ".1f")
                lines.append(f"    responder's own p99  {own} ms per exchange"
                             f" (p50 {_mmm([s.responder_pct(0.5) for s in ss], '.1f')})")
            lines.append(f"    failed / retransmits {_mmm([float(s.failed) for s in ss], '.0f')}  /  "
                         f"{_mmm([float(s.retransmits) for s in ss], '.0f')}")
            idle = [100 * s.idle.get(f"cpu{RESPONDER_CPU}", 0) for s in ss]
            lines.append(f"    idle % responder cpu {_mmm(idle, '.0f')}")
            p99[n] = _median([s.pct(0.99) for s in ss])
        ours, theirs = p99.get("ipsecd"), p99.get("strongswan")
        if ours is not None and theirs:
            lines.append(f"  ipsecd / strongSwan p99 (medians): {ours / theirs:.2f}x")
        lines.append("")
    return lines


# ---------------------------------------------------------------- main
def parse_tunnels(text: str) -> list[int]:
    try:
        cps = [int(x.replace("k", "000")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tunnels wants increasing counts like 1000,5000 (got {text!r})") from None
    if not cps or any(c <= 0 for c in cps) or cps != sorted(set(cps)):
        raise argparse.ArgumentTypeError(f"--tunnels wants increasing positive counts (got {text!r})")
    return cps


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate wants SAs per second like 300 or 200,400 (got {text!r})") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--rate wants positive rates (got {text!r})")
    return rates


def order(runs: int, names: list[str]) -> Iterator[tuple[int, str]]:
    """A B, B A, A B ...: neither responder always runs first on a machine that drifts."""
    for run in range(1, runs + 1):
        for name in (names if run % 2 else list(reversed(names))):
            yield run, name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench_handshake", description=__doc__.split("\n\n")[0])
    p.add_argument("--tunnels", type=parse_tunnels, default=parse_tunnels("1000,5000,10000,20000"),
                   help="cumulative checkpoints (default 1000,5000,10000,20000; 5k = 5000)")
    p.add_argument("--runs", type=int, default=3, help="runs per responder, alternating (default 3)")
    p.add_argument("--responders", default=",".join(RESPONDERS), help=f"comma list from {','.join(KNOWN)}")
    p.add_argument("--in-flight", type=int, default=64, help="handshakes outstanding at any time (64)")
    p.add_argument("--rate", type=parse_rates, default=[],
                   help="open loop: after the checkpoints, open --rate-sas SAs at each of these rates per second "
                        "(e.g. 300 or 200,400), whatever the answers; p50/p99 at that offered load")
    p.add_argument("--rate-sas", type=int, default=1000, help="SAs per open-loop stage (1000)")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="wall-time cap per responder run; a stage cut short is reported as partial (600)")
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading VmRSS (3)")
    p.add_argument("--auth", choices=("psk", "pubkey"), default="psk",
                   help="psk, or pubkey: a certificate login (the client's chain checked, RSA-3072 both ways)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    p.add_argument("--json", type=Path, help="also write every stage's figures to this file")
    p.add_argument("--placement", choices=PLACEMENTS, default="split",
                   help="split: generator on CPU 0, responder on CPU 1 (default); shared: nothing pinned")
    p.add_argument("--scrape", type=float, default=0.0, metavar="SECONDS",
                   help="ipsecd serves /metrics and is scraped every SECONDS during each stage (default: off)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy each ipsecd process during every stage; raw stacks and a summary into DIR")
    p.add_argument("--capture", action="store_true",
                   help="tcpdump on the responder's side during every stage: its own request -> answer time per "
                        "exchange (p50/p99), which excludes the generator's delays")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.responders.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        p.error(f"unknown responder(s): {', '.join(unknown)} (from {','.join(KNOWN)})")
    why = why_no_netns() or why_no_strongswan()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("cannot run: needs two CPUs (initiator and responder are pinned apart)", file=sys.stderr)
        return 2
    # Started in the background by a non-interactive shell, SIGINT is ignored; SIGTERM would
    # skip every cleanup.  Both unwind through the finally blocks (namespaces, daemons) instead.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The harness's request threads are part of the generator: keep them off the responder core
    # (split), or let them float with everything else (shared).
    os.sched_setaffinity(0, all_cpus() if args.placement == "shared" else {INITIATOR_CPU})
    plugin = build_plugin()
    workdir = Path(tempfile.mkdtemp(prefix="ipd-hsbench-"))
    # A fresh random PSK per benchmark: nothing secret is ever written into the repository.
    b = Bench(plugin, workdir, secrets.token_hex(16), in_flight=args.in_flight, settle=args.settle,
              rates=args.rate, rate_sas=args.rate_sas, scrape=args.scrape,
              profile_dir=args.profile, capture=args.capture,
              pki=BenchPki.make(workdir / "pki") if args.auth == "pubkey" else None,
              placement=args.placement)
    stages: list[Stage] = []
    notes: list[str] = []
    try:
        for run, name in order(args.runs, names):
            print(f"[bench] run {run}/{args.runs}: {name}", file=sys.stderr)
            try:
                stages += run_responder(b, name, run, args.tunnels, args.max_seconds, notes)
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                notes.append(f"{name} run {run} failed: {first}")
                print(f"[bench] {name} run {run} failed: {e}", file=sys.stderr)
        print(report(stages, args.tunnels, args.runs, notes, args.in_flight, args.auth, args.placement))
        if b.profiles:
            text = "\n\n".join(b.profiles)
            print("\n" + text)
            assert args.profile is not None
            (args.profile / "summary.txt").write_text(text + "\n")
        if args.json:
            args.json.write_text(json.dumps([{**s.__dict__, "rate": s.rate} for s in stages], indent=1))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
