"""``make demo``: two branch offices in network namespaces, joined by an ipsecd tunnel.

branch-a (192.0.2.1, LAN 10.1.0.1) <== veth ==> branch-b (192.0.2.2, LAN 10.2.0.1).
Starts one ipsecd per namespace from configs/demo/, waits for the tunnel, sends
pings and a TCP transfer LAN to LAN through it, shows ``ipsecctl list-sas`` from
both sides, and always tears everything down again (also on Ctrl-C or failure).
Needs root, iproute2 and /dev/net/tun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

NS = ("branch-a", "branch-b")
OUTER = ("192.0.2.1", "192.0.2.2")
LAN = ("10.1.0.1", "10.2.0.1")
VETH = ("demo-a", "demo-b")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "demo"


def sh(*cmd: str, check: bool = True, capture: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)


def in_ns(ns: str, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *cmd, **kw)  # type: ignore[arg-type]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def teardown() -> None:
    for ns in NS:
        sh("ip", "netns", "del", ns, check=False, capture=True)


def build_network() -> None:
    teardown()
    for ns in NS:
        sh("ip", "netns", "add", ns)
        in_ns(ns, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", VETH[0], "netns", NS[0], "type", "veth", "peer", "name", VETH[1], "netns", NS[1])
    for ns, dev, outer, lan in zip(NS, VETH, OUTER, LAN, strict=True):
        in_ns(ns, "ip", "addr", "add", f"{outer}/24", "dev", dev)
        in_ns(ns, "ip", "link", "set", dev, "up")
        # the LAN: a host address on lo (this kernel has no dummy links)
        in_ns(ns, "ip", "addr", "add", f"{lan}/32", "dev", "lo")


def ipsecctl(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return sh(sys.executable, "-m", "ipsecd.control.cli", "--socket", sock, *args, check=False, capture=True)


def wait_for_tunnel(socks: list[str], timeout: float = 30) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        up = 0
        for sock in socks:
            r = ipsecctl(sock, "list-sas", "--json")
            if r.returncode == 0:
                sas = json.loads(r.stdout).get("ike_sas", [])
                if any(sa["state"] == "ESTABLISHED" and sa["child_sas"] for sa in sas):
                    up += 1
        if up == len(socks):
            return True
        time.sleep(0.3)
    return False


TCP_SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); n = 0
while (b := c.recv(65536)):
    n += len(b)
print(n)
"""

TCP_SOURCE = """
import socket, sys, time
total = int(sys.argv[3]); buf = bytes(65536); sent = 0
c = socket.create_connection((sys.argv[2], 5001), timeout=20, source_address=(sys.argv[1], 0))
t = time.monotonic()
while sent < total:
    sent += c.send(buf[: total - sent])
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(f"{sent} {time.monotonic() - t:.3f}")
"""


def tcp_transfer(nbytes: int = 20 * 1024 * 1024) -> bool:
    sink = subprocess.Popen(["ip", "netns", "exec", NS[1], sys.executable, "-c", TCP_SINK, LAN[1]],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        src = in_ns(NS[0], sys.executable, "-c", TCP_SOURCE, LAN[0], LAN[1], str(nbytes), capture=True, check=False,
                    timeout=60)
        received = int((sink.communicate(timeout=30)[0] or "0").strip() or 0)
    finally:
        if sink.poll() is None:
            sink.kill()
    if src.returncode != 0:
        print(src.stderr.strip())
        return False
    sent, secs = src.stdout.split()
    rate = int(sent) * 8 / float(secs) / 1e6
    print(f"TCP {LAN[0]} -> {LAN[1]}: sent {int(sent) >> 20} MiB, received {received >> 20} MiB "
          f"in {float(secs):.2f} s ({rate:.0f} Mbit/s)")
    return received == int(sent)


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    workdir = Path(tempfile.mkdtemp(prefix="ipsecd-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    socks = [str(workdir / f"{ns}.sock") for ns in NS]
    logs = [workdir / f"{ns}.log" for ns in NS]
    ok = False
    try:
        say("network: branch-a 192.0.2.1 (LAN 10.1.0.1) <== veth ==> branch-b 192.0.2.2 (LAN 10.2.0.1)")
        build_network()
        for ns, sock, log in zip(NS, socks, logs, strict=True):
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-m", "ipsecd", "--config",
                     str(CONFIG_DIR / f"{ns}.yaml"), "--control-socket", sock], stdout=f, stderr=subprocess.STDOUT))
        say("starting ipsecd in both namespaces; branch-a initiates")
        if not wait_for_tunnel(socks):
            print("the tunnel did not come up within 30 s")
            return 1
        print("tunnel established")
        say(f"ping {LAN[1]} from {LAN[0]} through the tunnel")
        ping = in_ns(NS[0], "ping", "-c", "5", "-i", "0.2", "-W", "2", "-I", LAN[0], LAN[1], check=False)
        say("TCP transfer through the tunnel")
        tcp_ok = tcp_transfer()
        for ns, sock in zip(NS, socks, strict=True):
            say(f"ipsecctl list-sas ({ns})")
            print(ipsecctl(sock, "list-sas").stdout, end="")
        ok = ping.returncode == 0 and tcp_ok
        say("demo " + ("succeeded" if ok else "FAILED"))
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        if not ok:
            for ns, log in zip(NS, logs, strict=True):
                if log.exists():
                    print(f"\n-- last lines of ipsecd log ({ns}) --")
                    print("\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        teardown()
        shutil.rmtree(workdir, ignore_errors=True)
        print("cleaned up: namespaces and daemons removed")


if __name__ == "__main__":
    sys.exit(main())
