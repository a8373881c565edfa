"""A lossy, reordering, delaying Ethernet relay for namespace tests (this kernel has no netem).

Runs in the middle namespace of ``Topology(layout="lossy")`` (tests/netns.py): two
interfaces with no addresses, and this process copying every frame from one to the
other through AF_PACKET sockets, so A and B share one subnet and see each other's real
addresses, exactly as in the ``pair`` layout. Only the selected traffic is harmed
(``--match``: IKE on UDP 500/4500, ESP as IP protocol 50 or in UDP 4500, or all IPv4);
ARP and ping on the outer path pass untouched, so the topology comes up reliably.

Per selected frame, in arrival order, a ``random.Random(seed)`` decides: drop it (with
probability ``loss``), hold it back by ``reorder_delay`` so later frames overtake it
(``reorder``), and delay it by ``delay`` +/- ``jitter``. The decisions are a fixed
sequence for a given seed; which frame meets which decision depends on the order the
daemons send in. ``drop`` names frames by index (the n-th selected frame, from 0) that
are always dropped: with ``match=ike`` and one exchange at a time, the IKE frames come
in a fixed order, so a test can lose exactly "the first Child SA rekey request".
Counters go to ``--stats FILE`` (JSON, rewritten every second and on exit), so a test
can check the relay really dropped what it was asked to.

IPv4 UDP checksums are set to 0 ("none", RFC 768) on the way through: veth leaves them
to checksum offload, and a frame re-sent through AF_PACKET would arrive with a partial
checksum the receiver rejects.

    python -m tests.lossy_relay --left eth0 --right eth1 --loss 0.2 --reorder 0.1 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ipsecd.iana import IKE_PORT, NATT_PORT, NON_ESP_MARKER, IpProto

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_HLEN = 14
IKE_PORTS = (IKE_PORT, NATT_PORT)
PROTO_UDP, PROTO_ESP = IpProto.UDP, IpProto.ESP
MATCHES = ("ike", "esp", "ike+esp", "all")


@dataclass(frozen=True)
class Impairment:
    """What the relay does to the selected frames; also the ``lossy`` layout's settings (tests/netns.py)."""

    loss: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.05
    delay: float = 0.0
    jitter: float = 0.0
    match: str = "ike+esp"
    seed: int = 1
    drop: tuple[int, ...] = ()  # indexes (0-based, among selected frames) always dropped

    def __post_init__(self) -> None:
        for name in ("loss", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.match not in MATCHES:
            raise ValueError(f"match must be one of {', '.join(MATCHES)}")

    def argv(self) -> list[str]:
        """The command-line options that make ``main`` build this Impairment again."""
        return ["--loss", str(self.loss), "--reorder", str(self.reorder), "--reorder-delay", str(self.reorder_delay),
                "--delay", str(self.delay), "--jitter", str(self.jitter), "--match", self.match,
                "--seed", str(self.seed), "--drop", ",".join(str(i) for i in self.drop)]


@dataclass
class Stats:
    frames: int = 0  # every frame copied or dropped
    selected: int = 0  # frames the impairment applied to
    dropped: int = 0
    reordered: int = 0
    delayed: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [selected, dropped]


def classify(frame: bytes) -> str | None:
    """"ike", "esp" or "ip" for IPv4 frames (others: None, never harmed)."""
    if len(frame) < ETH_HLEN + 20 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = ETH_HLEN
    ihl = (frame[ip] & 0x0F) * 4
    proto = frame[ip + 9]
    if proto == PROTO_ESP:
        return "esp"
    if proto == PROTO_UDP and len(frame) >= ip + ihl + 8:
        sport, dport = struct.unpack_from("!HH", frame, ip + ihl)
        if sport in IKE_PORTS or dport in IKE_PORTS:
            body = frame[ip + ihl + 8: ip + ihl + 12]
            # RFC 3948 2.2: IKE on 4500 starts with the non-ESP marker, ESP with its SPI
            if NATT_PORT in (sport, dport) and len(body) == 4 and body != NON_ESP_MARKER:
                return "esp"  # RFC 3948 ESP in UDP
            if len(body) == 1 and body == b"\xff":
                return "ip"  # NAT-T keepalive
            return "ike"
    return "ip"


def zero_udp_checksum(frame: bytes) -> bytes:
    """IPv4 UDP with checksum 0 (none): the offloaded partial checksum is not valid on the wire."""
    if len(frame) < ETH_HLEN + 28 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return frame
    ip = ETH_HLEN
    if frame[ip + 9] != PROTO_UDP:
        return frame
    off = ip + (frame[ip] & 0x0F) * 4 + 6
    if len(frame) < off + 2 or frame[off:off + 2] == b"\x00\x00":
        return frame
    return frame[:off] + b"\x00\x00" + frame[off + 2:]


@dataclass
class Impairer:
    """The decisions, without sockets: per frame, drop it (None) or send it after so many seconds."""

    imp: Impairment
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.imp.seed)

    def _selected(self, kind: str | None) -> bool:
        m = self.imp.match
        return kind is not None and (m == "all" or kind in m.split("+"))

    def decide(self, frame: bytes) -> float | None:
        st = self.stats
        st.frames += 1
        kind = classify(frame)
        if not self._selected(kind):
            return 0.0
        assert kind is not None
        st.selected += 1
        counts = st.by_kind.setdefault(kind, [0, 0])
        counts[0] += 1
        # draw every number for every selected frame, so one decision never shifts the others
        drop, reorder, jitter = self.rng.random(), self.rng.random(), self.rng.uniform(-1.0, 1.0)
        if drop < self.imp.loss or st.selected - 1 in self.imp.drop:
            st.dropped += 1
            counts[1] += 1
            return None
        wait = max(0.0, self.imp.delay + jitter * self.imp.jitter)
        if reorder < self.imp.reorder:
            st.reordered += 1
            wait += self.imp.reorder_delay
        if wait > 0.0:
            st.delayed += 1
        return wait


class Relay:
    """Copies frames between two interfaces, impairing the selected ones."""

    def __init__(self, left: str, right: str, imp: Impairment, stats_path: Path | None = None) -> None:
        self.imp = imp
        self.impairer = Impairer(imp)
        self.stats = self.impairer.stats
        self.stats_path = stats_path
        self.socks: dict[str, socket.socket] = {}
        for name in (left, right):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((name, 0))
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.socks[name] = s
        self.peer = {left: self.socks[right], right: self.socks[left]}
        self._queue: list[tuple[float, int, socket.socket, bytes]] = []
        self._n = 0
        self._running = True

    def handle(self, frame: bytes, out: socket.socket, now: float) -> None:
        wait = self.impairer.decide(frame)
        if wait is None:
            return
        frame = zero_udp_checksum(frame)
        if wait <= 0.0:
            self._send(out, frame)
            return
        self._n += 1
        heapq.heappush(self._queue, (now + wait, self._n, out, frame))

    @staticmethod
    def _send(out: socket.socket, frame: bytes) -> None:
        with contextlib.suppress(OSError):  # a full queue or a vanished peer: that is loss too
            out.send(frame)

    def run(self) -> None:
        by_fd = {s.fileno(): name for name, s in self.socks.items()}
        poll = select.poll()
        for fd in by_fd:
            poll.register(fd, select.POLLIN)
        next_stats = time.monotonic()
        while self._running:
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, out, frame = heapq.heappop(self._queue)
                self._send(out, frame)
            timeout = 200.0 if not self._queue else max(0.0, (self._queue[0][0] - now) * 1000)
            for fd, _ in poll.poll(timeout):
                name = by_fd[fd]
                s = self.socks[name]
                for _ in range(64):
                    try:
                        frame, addr = s.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if addr[2] == socket.PACKET_OUTGOING:  # our own sends, seen again
                        continue
                    self.handle(frame, self.peer[name], time.monotonic())
            if now >= next_stats:
                self.write_stats()
                next_stats = now + 1.0
        self.write_stats()

    def stop(self, *_: object) -> None:
        self._running = False

    def write_stats(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**asdict(self.stats), "impairment": asdict(self.imp)}))
        os.replace(tmp, self.stats_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lossy_relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--left", required=True)
    p.add_argument("--right", required=True)
    p.add_argument("--loss", type=float, default=0.0, help="drop probability per selected frame (0..1)")
    p.add_argument("--reorder", type=float, default=0.0, help="probability a frame is held back so others pass it")
    p.add_argument("--reorder-delay", type=float, default=0.05, help="seconds a reordered frame is held back")
    p.add_argument("--delay", type=float, default=0.0, help="seconds every selected frame is delayed")
    p.add_argument("--jitter", type=float, default=0.0, help="+/- seconds added to --delay, uniformly")
    p.add_argument("--match", choices=MATCHES, default="ike+esp")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drop", default="", help="comma-separated indexes of selected frames to drop (from 0)")
    p.add_argument("--stats", type=Path, default=None)
    a = p.parse_args(argv)
    drop = tuple(int(x) for x in a.drop.split(",") if x.strip())
    imp = Impairment(a.loss, a.reorder, a.reorder_delay, a.delay, a.jitter, a.match, a.seed, drop)
    relay = Relay(a.left, a.right, imp, a.stats)
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    print(f"relaying {a.left} <-> {a.right}: {imp}", flush=True)
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
