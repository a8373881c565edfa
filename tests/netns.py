"""Network namespaces joined by veth pairs, for namespace, interop and benchmark runs.

Every test network lives in namespaces this module creates, named ``ipd-<pid>-<n>-<role>``
so concurrent runs (and other helpers working in the same machine) never collide, and
so a crashed run's leftovers are recognisable.  Nothing is configured in the host
namespace: veth pairs are created directly inside their namespaces.

Cleanup is layered because a failing test must not leak namespaces or daemons:
``Topology.__exit__`` tears down, an ``atexit`` hook catches what a crash skipped, and
every process started with :meth:`Netns.popen` runs in its own process group so the whole
group (e.g. ``ip netns exec`` -> ``bash`` -> ``charon``) is killed, never a broad name.

Layouts (addresses are documentation/private ranges that exist only in these namespaces):

``pair``::

    A eth0 192.0.2.1/24, 2001:db8::1/64  <-- veth -->  B eth0 192.0.2.2/24, 2001:db8::2/64
    A lo 10.1.0.1/32 ("LAN")                           B lo 10.2.0.1/32 ("LAN")

``nat``::

    A eth0 10.99.1.2/24 <-> NAT eth0 10.99.1.1/24 | NAT eth1 192.0.2.1/24 <-> B eth0 192.0.2.2/24
    A default route via NAT; NAT masquerades out of eth1; B sees A as 192.0.2.1.

``lossy``::

    A eth0 192.0.2.1/24 <-> MID eth0 | MID eth1 <-> B eth0 192.0.2.2/24   (IPv4 only)
    MID has no addresses: tests/lossy_relay.py copies frames between its two interfaces
    and drops, reorders and delays the IKE/ESP ones (``loss``, ``reorder``, ``delay``,
    ``jitter``, ``match``, ``seed``); A and B see each other as in ``pair``.

The LAN addresses are /32 aliases on ``lo`` because this kernel has no ``dummy`` links.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import pytest

from tests.lossy_relay import Impairment

Command = Sequence[str] | str
_counter = itertools.count(1)
_live: set[Topology] = set()


class NetnsUnavailable(RuntimeError):
    """Raised when namespaces cannot be used here (not root, no iproute2, no netns support)."""


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the output: a bare exit code tells the reader nothing."""

    def __str__(self) -> str:
        cmd = shlex.join(self.cmd) if isinstance(self.cmd, list) else str(self.cmd)
        return f"{cmd} -> exit {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def why_no_netns() -> str | None:
    """Why namespace tests cannot run on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.strip()}"
    return None


def unique_prefix() -> str:
    """A name prefix unique to this process and call, e.g. ``ipd-1234-3``."""
    return f"ipd-{os.getpid()}-{next(_counter)}"


def _argv(cmd: Command) -> list[str]:
    """A shell string runs under ``bash -c`` (pipes, redirections); a list runs as is."""
    return ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)


def kill_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 3.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL it if it lingers.

    Only the group we created (start_new_session) is signalled, so nothing else on
    the machine is touched even if a PID were reused after the leader exited.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Children of the leader (e.g. iperf3 under bash) may outlive it: sweep the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


@dataclass(eq=False)
class Netns:
    """One network namespace plus the processes this harness started in it."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def exec_argv(self, cmd: Command) -> list[str]:
        """The argv that runs ``cmd`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *_argv(cmd)]

    def run(self, cmd: Command, check: bool = True, timeout: float = 30.0,
            input: str | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the namespace and capture text output; ``check`` raises CommandFailed."""
        res = subprocess.run(self.exec_argv(cmd), capture_output=True, text=True, timeout=timeout,
                             input=input, env=None if env is None else {**os.environ, **env})
        if check and res.returncode != 0:
            raise CommandFailed(res.returncode, res.args, res.stdout, res.stderr)
        return res

    def popen(self, cmd: Command, log_path: str | os.PathLike[str] | None = None,
              env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
              ) -> subprocess.Popen[bytes]:
        """Start a long-running process in the namespace, in its own process group.

        stdout and stderr go to ``log_path`` (or /dev/null); the process is killed by
        :meth:`kill_all`, which every Topology exit path calls.
        """
        if log_path is not None:
            log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in kill_all
            self._logs.append(log)
            out: int | IO[bytes] = log
        else:
            out = subprocess.DEVNULL
        proc = subprocess.Popen(self.exec_argv(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd,
                                env=None if env is None else {**os.environ, **env})
        self.procs.append(proc)
        return proc

    def ping(self, dst: str, count: int = 3, src: str | None = None, interval: float = 0.2,
             deadline: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """ping from this namespace; ``src`` selects the source address (-I).

        ``deadline`` (-w) bounds the whole run so a black-holed tunnel fails fast.
        """
        cmd = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
               "-w", str(int(deadline if deadline is not None else count * interval + 3))]
        if src:
            cmd += ["-I", src]
        return self.run([*cmd, dst], check=check, timeout=(deadline or count * interval + 3) + 10)

    def kill_all(self) -> None:
        """Kill every process group this namespace object started and close their logs."""
        for proc in reversed(self.procs):
            kill_group(proc)
        self.procs.clear()
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()
        self._logs.clear()


# ------------------------------------------------------------ traffic helpers
def wait_listening(ns: Netns, port: int, timeout: float = 5.0, *, udp: bool = False) -> None:
    """Wait until a TCP (or UDP) socket listens on ``port`` in ``ns``: a client started earlier gets refused."""
    end = time.monotonic() + timeout
    while True:
        res = ns.run(["ss", "-Hlun" if udp else "-Hltn", f"sport = :{port}"], check=False)
        if res.stdout.strip():
            return
        if time.monotonic() > end:
            raise TimeoutError(f"nothing listens on {'UDP' if udp else 'TCP'} {port} in {ns.name}")
        time.sleep(0.05)


_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def ping_counts(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line: loss must be counted, not inferred from the exit code."""
    m = _PING_SUMMARY.search(output)
    if m is None:
        raise ValueError(f"no ping summary in: {output[-500:]!r}")
    return int(m.group(1)), int(m.group(2))


def iperf3_interval_bytes(result: IperfResult) -> list[int]:
    """Bytes moved in each reporting interval (-i, 1 s by default): a stall shows as a zero."""
    intervals = result.raw.get("intervals")
    assert isinstance(intervals, list), result.raw.keys()
    return [int(iv["sum"]["bytes"]) for iv in intervals]


@dataclass
class IperfResult:
    """What one iperf3 TCP run moved: the sender's and the receiver's byte counts."""

    sent: int
    received: int
    retransmits: int
    raw: dict[str, object]


def iperf3(server: Netns, server_addr: str, client: Netns, client_addr: str, seconds: int = 2,
           port: int = 5201, bitrate: str | None = None) -> IperfResult:
    """One iperf3 TCP run from ``client_addr`` (bound with -B) to ``server_addr``; raises on any error.

    The one-off server (-1) exits after the run, so nothing lingers; it is still
    started through :meth:`Netns.popen` so a hung run is killed with the namespace.
    ``bitrate`` (iperf3 -b, e.g. "50M") keeps the stream below what the tunnel
    carries, so other traffic measured alongside is not lost to plain congestion.
    """
    srv = server.popen(["iperf3", "-s", "-1", "-B", server_addr, "-p", str(port)])
    try:
        wait_listening(server, port)
        rate = ["-b", bitrate] if bitrate else []
        res = client.run(["iperf3", "-c", server_addr, "-B", client_addr, "-p", str(port), "-t", str(seconds),
                          "-J", "--connect-timeout", "3000", *rate], check=False, timeout=seconds + 20)
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise CommandFailed(res.returncode, res.args, res.stdout, res.stderr) from None
        if res.returncode != 0 or "error" in data:
            raise CommandFailed(res.returncode, res.args, str(data.get("error", res.stdout)), res.stderr)
        end = data["end"]
        return IperfResult(sent=int(end["sum_sent"]["bytes"]), received=int(end["sum_received"]["bytes"]),
                           retransmits=int(end["sum_sent"].get("retransmits", 0)), raw=data)
    finally:
        kill_group(srv, grace=1.0)


_TCP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.settimeout(20); n = 0
while (b := c.recv(1 << 16)):
    n += len(b)
print(n, flush=True)
"""

_TCP_SOURCE = """
import socket, sys, time
src, dst, port, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
c = socket.create_connection((dst, port), timeout=10, source_address=(src, 0))
block = bytes(range(256)) * 256; sent = 0; t0 = time.monotonic()
while sent < total:
    k = min(len(block), total - sent); c.sendall(block[:k]); sent += k
    if rate:
        time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(sent, flush=True)
"""


def tcp_transfer(server: Netns, server_addr: str, client: Netns, client_addr: str, nbytes: int,
                 port: int = 5001, timeout: float = 30.0, rate: float | None = None) -> int:
    """Send ``nbytes`` over one TCP connection from ``client_addr`` to ``server_addr``; return what arrived.

    Plain Python sockets, so it needs no iperf3 and the byte count is exact.  ``rate``
    (bytes/s) paces the sender, e.g. so a volume lifetime is crossed while the
    daemon is watching rather than within one of its check intervals.
    """
    py = sys.executable
    sink = subprocess.Popen(server.exec_argv([py, "-c", _TCP_SINK, server_addr, str(port)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_listening(server, port)
        pace = [str(rate)] if rate else []
        client.run([py, "-c", _TCP_SOURCE, client_addr, server_addr, str(port), str(nbytes), *pace], timeout=timeout)
        out, err = sink.communicate(timeout=timeout)
        if sink.returncode != 0:
            raise CommandFailed(sink.returncode, sink.args, out, err)
        return int(out.strip())
    finally:
        kill_group(sink, grace=1.0)


Layout = Literal["pair", "nat", "lossy"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Topology:
    """A set of namespaces joined by veth, built on enter and removed on exit.

    Attributes after ``__enter__``: ``a``, ``b`` (and ``nat`` in the NAT layout) as
    :class:`Netns`; ``a_addr``/``b_addr`` the outer addresses each side binds to;
    ``b_seen_from_a``/``a_seen_from_b`` the address each side should use to reach the
    other (differs from ``a_addr`` behind NAT); ``a_lan``/``b_lan`` and
    ``a_lan_net``/``b_lan_net`` the inner addresses/prefixes; ``a_addr6``/``b_addr6``
    the IPv6 outer addresses (pair layout only, else None).
    """

    A_LAN, B_LAN = "10.1.0.1", "10.2.0.1"
    A_LAN_NET, B_LAN_NET = "10.1.0.0/24", "10.2.0.0/24"

    def __init__(self, layout: Layout = "pair", *, ipv6: bool = True, nat_ports: str | None = None,
                 prefix: str | None = None, relay: Impairment | None = None, **impairment: Any) -> None:
        """``nat_ports`` (e.g. "40000-40999") makes the NAT remap source ports too.

        For ``lossy``: ``relay`` or the fields of tests.lossy_relay.Impairment as keywords,
        e.g. ``Topology("lossy", loss=0.2, reorder=0.1)``; without them the relay harms nothing.
        """
        if impairment and layout != "lossy":
            raise TypeError(f"{', '.join(impairment)}: only for the lossy layout")
        self.relay = (relay or Impairment(**impairment)) if layout == "lossy" else None
        self.mid: Netns | None = None
        self._relay_dir: str | None = None
        self._relay_proc: subprocess.Popen[bytes] | None = None
        self.layout = layout
        self.ipv6 = ipv6 and layout == "pair"
        self.nat_ports = nat_ports
        self.prefix = prefix or unique_prefix()
        self.a = Netns(f"{self.prefix}-a")
        self.b = Netns(f"{self.prefix}-b")
        self.nat: Netns | None = Netns(f"{self.prefix}-nat") if layout == "nat" else None
        if layout == "lossy":
            self.mid = Netns(f"{self.prefix}-mid")
        self.a_lan, self.b_lan = self.A_LAN, self.B_LAN
        self.a_lan_net, self.b_lan_net = self.A_LAN_NET, self.B_LAN_NET
        self.a_if = self.b_if = "eth0"
        if layout in ("pair", "lossy"):
            self.a_addr, self.b_addr = "192.0.2.1", "192.0.2.2"
            self.a_seen_from_b = self.a_addr
        else:
            self.a_addr, self.b_addr = "10.99.1.2", "192.0.2.2"
            self.a_seen_from_b = "192.0.2.1"  # the NAT's outside address
        self.b_seen_from_a = self.b_addr
        self.a_addr6: str | None = "2001:db8::1" if self.ipv6 else None
        self.b_addr6: str | None = "2001:db8::2" if self.ipv6 else None
        self._created: list[Netns] = []

    @property
    def namespaces(self) -> list[Netns]:
        return [n for n in (self.a, self.nat, self.mid, self.b) if n is not None]

    # ------------------------------------------------------------ build / tear down
    def __enter__(self) -> Topology:
        why = why_no_netns()
        if why:
            raise NetnsUnavailable(why)
        _live.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, ns: Netns) -> None:
        subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True, text=True)
        self._created.append(ns)
        ns.run("ip link set lo up")

    def _veth(self, left: Netns, lname: str, right: Netns, rname: str) -> None:
        """A veth pair created inside ``left`` with its peer placed straight into ``right``.

        Creating it in the namespace avoids ever naming an interface in the host, where
        15-character names from parallel runs could clash.
        """
        subprocess.run(["ip", "-n", left.name, "link", "add", lname, "type", "veth",
                        "peer", "name", rname, "netns", right.name], check=True, capture_output=True, text=True)
        left.run(["ip", "link", "set", lname, "up"])
        right.run(["ip", "link", "set", rname, "up"])

    def _build(self) -> None:
        for ns in self.namespaces:
            self._add_ns(ns)
        self.a.run(["ip", "addr", "add", f"{self.a_lan}/32", "dev", "lo"])
        self.b.run(["ip", "addr", "add", f"{self.b_lan}/32", "dev", "lo"])
        if self.layout == "pair":
            self._veth(self.a, "eth0", self.b, "eth0")
            self.a.run(["ip", "addr", "add", f"{self.a_addr}/24", "dev", "eth0"])
            self.b.run(["ip", "addr", "add", f"{self.b_addr}/24", "dev", "eth0"])
            if self.ipv6:
                # nodad: without it the addresses stay "tentative" for ~2 s and bind() fails.
                self.a.run(["ip", "addr", "add", f"{self.a_addr6}/64", "dev", "eth0", "nodad"])
                self.b.run(["ip", "addr", "add", f"{self.b_addr6}/64", "dev", "eth0", "nodad"])
        elif self.layout == "lossy":
            self._build_lossy()
        else:
            nat = self.nat
            assert nat is not None
            self._veth(self.a, "eth0", nat, "eth0")
            self._veth(nat, "eth1", self.b, "eth0")
            self.a.run(["ip", "addr", "add", f"{self.a_addr}/24", "dev", "eth0"])
            self.a.run(["ip", "route", "add", "default", "via", "10.99.1.1"])
            nat.run(["ip", "addr", "add", "10.99.1.1/24", "dev", "eth0"])
            nat.run(["ip", "addr", "add", f"{self.a_seen_from_b}/24", "dev", "eth1"])
            self.b.run(["ip", "addr", "add", f"{self.b_addr}/24", "dev", "eth0"])
            nat.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            rule = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth1", "-j", "MASQUERADE"]
            if self.nat_ports:
                rule += ["-p", "udp", "--to-ports", self.nat_ports]
                nat.run(rule)
                rule = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth1", "-j", "MASQUERADE"]
            nat.run(rule)
        self._wait_link()

    def _build_lossy(self) -> None:
        mid, relay = self.mid, self.relay
        assert mid is not None and relay is not None
        self._veth(self.a, "eth0", mid, "eth0")
        self._veth(mid, "eth1", self.b, "eth0")
        self.a.run(["ip", "addr", "add", f"{self.a_addr}/24", "dev", "eth0"])
        self.b.run(["ip", "addr", "add", f"{self.b_addr}/24", "dev", "eth0"])
        mid.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])  # no chatter of its own
        self._relay_dir = tempfile.mkdtemp(prefix=f"{self.prefix}-relay-")
        stats = Path(self._relay_dir, "stats.json")
        self._relay_proc = mid.popen([sys.executable, "-m", "tests.lossy_relay", "--left", "eth0", "--right", "eth1",
                                      "--stats", str(stats), *relay.argv()],
                                     Path(self._relay_dir, "relay.log"), cwd=PROJECT_ROOT)
        end = time.monotonic() + 10
        while not stats.exists():
            if self._relay_proc.poll() is not None or time.monotonic() > end:
                log = read_log(Path(self._relay_dir, "relay.log"))
                raise RuntimeError(f"topology {self.prefix}: the lossy relay did not start\n{log}")
            time.sleep(0.05)

    def relay_stats(self) -> dict[str, Any]:
        """The relay's counters (frames, selected, dropped, reordered, by_kind), at most 1 s old."""
        if self._relay_dir is None:
            raise RuntimeError("relay_stats() needs the lossy layout")
        data: dict[str, Any] = json.loads(Path(self._relay_dir, "stats.json").read_text())
        return data

    def stop_relay(self) -> dict[str, Any]:
        """Stop the relay (it writes its final counters) and return them; the path stays down."""
        if self._relay_proc is not None:
            kill_group(self._relay_proc, grace=3.0)
            self._relay_proc = None
        return self.relay_stats()

    def _wait_link(self, timeout: float = 5.0) -> None:
        """Wait until the outer path answers: veth carrier comes up asynchronously."""
        end = time.monotonic() + timeout
        while True:
            res = self.a.ping(self.b_seen_from_a, count=1, deadline=1, check=False)
            if res.returncode == 0:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"topology {self.prefix}: outer path never came up\n{res.stdout}{res.stderr}")
            time.sleep(0.1)

    def close(self) -> None:
        """Kill every process, then delete every namespace created; safe to call twice."""
        for ns in self.namespaces:
            ns.kill_all()
        self._relay_proc = None
        if self._relay_dir is not None:
            shutil.rmtree(self._relay_dir, ignore_errors=True)
            self._relay_dir = None
        for ns in reversed(self._created):
            for _ in range(20):
                res = subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, text=True)
                if res.returncode == 0 or not Path(f"/run/netns/{ns.name}").exists():
                    break
                time.sleep(0.1)  # a just-killed process may still pin it for a moment
        self._created.clear()
        _live.discard(self)


@atexit.register
def _cleanup_live() -> None:
    """Last resort when a run dies without unwinding (e.g. KeyboardInterrupt in a fixture)."""
    for topo in list(_live):
        with contextlib.suppress(Exception):
            topo.close()


@contextlib.contextmanager
def topology_or_skip(layout: Layout = "pair", **kwargs: object) -> Iterator[Topology]:
    """A Topology, or pytest.skip when namespaces are not usable on this machine."""
    why = why_no_netns()
    if why:
        pytest.skip(why)
    with Topology(layout, **kwargs) as topo:  # type: ignore[arg-type]
        yield topo


@pytest.fixture
def topology() -> Iterator[Topology]:
    """Two hosts A <-> B on one veth (see module docstring); removed after the test."""
    with topology_or_skip("pair") as topo:
        yield topo


@pytest.fixture
def nat_topology() -> Iterator[Topology]:
    """A -- NAT -- B with masquerading in the middle namespace."""
    with topology_or_skip("nat") as topo:
        yield topo


def established_sa(sas: list[dict[str, Any]], child: str | None, children_key: str) -> dict[str, Any] | None:
    """The first ESTABLISHED IKE SA in a list-sas result, or None.

    ``child`` None: the IKE SA alone suffices; "" : any INSTALLED Child SA; a name: that child.
    ``children_key`` is "child_sas" for ipsecctl's JSON, "child-sas" for swanctl's.
    """
    for ike in sas:
        if ike.get("state") != "ESTABLISHED":
            continue
        if child is None:
            return ike
        for ch in ike.get(children_key, []):
            if ch.get("state") == "INSTALLED" and (not child or ch.get("name") == child):
                return ike
    return None


def read_log(path: Path) -> str:
    """A log file's text, or "" if the process has not written it yet."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.fixture
def lossy_topology() -> Iterator[Topology]:
    """A -- relay -- B: 20 % of IKE and ESP frames lost, 10 % reordered (see tests/lossy_relay.py)."""
    with topology_or_skip("lossy", loss=0.2, reorder=0.1) as topo:
        yield topo
