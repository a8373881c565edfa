"""Namespace helpers for the data-plane tests: static-key peers and the steering probe.

Topologies come from tests/netns.py with an ``ipd-dp-`` name prefix, so everything the
data-plane tests create is recognisably theirs and is deleted on every exit path.

``python -m tests.netns_dp steer ADDR`` (run inside a namespace) is the SO_REUSEPORT
steering experiment: an "IKE" socket binds ADDR:4500 first, a second process binds the
same with UDP GRO and attaches the steering program, then marker and ESP-like datagrams
are sent to the port; it prints which socket got what as JSON.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
_counter = itertools.count(1)


def dp_prefix() -> str:
    return f"ipd-dp-{os.getpid()}-{next(_counter)}"


@dataclass
class StaticPeer:
    """One ``tests.dp_static_peer`` process in a namespace, driven over its stdin/stdout."""

    ns: str
    args: list[str]
    proc: subprocess.Popen[str] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    _buf: bytes = b""

    def start(self, timeout: float = 15.0) -> StaticPeer:
        argv = ["ip", "netns", "exec", self.ns, PYTHON, "-m", "tests.dp_static_peer", *self.args]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        line = self._readline(timeout)
        while not line.startswith("READY "):
            self.log.append(line)
            if self.proc.poll() is not None and not line:
                raise RuntimeError(f"static peer in {self.ns} failed:\n" + "".join(self.log))
            line = self._readline(timeout)
        self.ready = json.loads(line[len("READY "):])
        return self

    def _readline(self, timeout: float) -> str:
        """One line of output ("" at EOF), buffered here: select() cannot see a TextIO buffer."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"static peer in {self.ns}: no output in {timeout}s\n" + "".join(self.log))
            chunk = os.read(fd, 65536)
            if not chunk:
                rest, self._buf = self._buf, b""
                return rest.decode()
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode() + "\n"

    def counters(self) -> dict[str, Any]:
        return self.command("counters")

    def command(self, cmd: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send one stdin command and return the JSON line it answers with."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        while True:
            line = self._readline(timeout)
            if line.startswith("{"):
                return dict(json.loads(line))
            if not line:
                raise RuntimeError("static peer exited:\n" + "".join(self.log))
            self.log.append(line)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


@contextlib.contextmanager
def static_pair(topo: Any, *extra: str, mode: str = "tunnel") -> Iterator[tuple[StaticPeer, StaticPeer]]:
    """Static-key data planes on both sides of a tests.netns Topology (pair layout)."""
    if mode == "transport":
        nets_a = (f"{topo.a_addr}/32", f"{topo.b_addr}/32")
        nets_b = (f"{topo.b_addr}/32", f"{topo.a_addr}/32")
    else:
        nets_a = (topo.a_lan_net, topo.b_lan_net)
        nets_b = (topo.b_lan_net, topo.a_lan_net)
    common = ["--mode", mode, *extra]
    a = StaticPeer(topo.a.name, ["--side", "a", "--local", topo.a_addr, "--remote", topo.b_addr,
                                 "--local-net", nets_a[0], "--remote-net", nets_a[1], *common])
    b = StaticPeer(topo.b.name, ["--side", "b", "--local", topo.b_addr, "--remote", topo.a_addr,
                                 "--local-net", nets_b[0], "--remote-net", nets_b[1], *common])
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------------- steering probe


def steer_probe(addr: str, count: int = 5) -> dict[str, list[str]]:
    """The experiment of the module docstring; returns first-4-byte hex per receiving socket."""
    sys.path.insert(0, str(ROOT))
    from ipsecd.dataplane.udp import RECV_CMSG_SPACE, attach_natt_steering, bind_udp, gro_segments, port_in_use

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ike = bind_udp(addr, 4500, reuseport=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "worker" process
        try:
            os.close(r)
            ike.close()
            ike_first = port_in_use(addr, 4500)
            wk = bind_udp(addr, 4500, reuseport=True, gro=True)
            attach_natt_steering(wk, ike_index=0 if ike_first else 1)
            os.write(w, b"r")
            got: list[str] = []
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                if select.select([wk], [], [], 0.1)[0]:
                    data, anc, _f, _a = wk.recvmsg(65535, RECV_CMSG_SPACE)
                    got += [seg[:4].hex() for seg in gro_segments(data, anc)]
                    if len(got) >= count + 1:
                        break
            os.write(w, json.dumps(got).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        os.read(r, 1)
        with socket.socket(family, socket.SOCK_DGRAM) as tx:
            for i in range(count):
                tx.sendto(b"\x00\x00\x00\x00ike" + bytes([i]), (addr, 4500))
                tx.sendto(b"\x12\x34\x56\x78esp" + bytes([i]), (addr, 4500))
            tx.sendto(b"\xff", (addr, 4500))
        got_ike: list[str] = []
        end = time.monotonic() + 2.0
        while len(got_ike) < count and time.monotonic() < end:
            if select.select([ike], [], [], 0.1)[0]:
                got_ike.append(ike.recv(100)[:4].hex())
        os.waitpid(pid, 0)
        got_worker = json.loads(os.read(r, 65536).decode() or "[]")
    finally:
        os.close(r)
        ike.close()
    return {"ike": got_ike, "worker": got_worker}


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "steer":
        print(json.dumps(steer_probe(sys.argv[2])))
        sys.exit(0)
    sys.exit("usage: python -m tests.netns_dp steer ADDR")
