"""The data-plane worker process: one thread, one epoll, drain loops over TUN and ESP sockets.

Why it looks like this (measurements in docs/dataplane.md and the shared notes): in Python
the per-packet budget goes to syscalls and wake-ups, not to crypto, and the GIL serialises
threads. So the worker

* runs in its own process (IKE handshakes in the control process never stall packets),
* waits in ``epoll`` and, for every readiness event, drains the fd until EAGAIN or a
  bounded batch (``WorkerConfig.batch``) -- never one packet per wake-up,
* batches outbound ESP-in-UDP to one peer with UDP GSO (one ``sendmsg`` per run of
  equal-size datagrams) and takes inbound datagrams coalesced by UDP GRO, and
* counts every dropped packet by reason; no input makes it raise, and
* holds packets that hit a trap (PROTECT policy installed before its SA) in a small bounded
  queue while IKE negotiates, announcing them with Acquire and sending them once the SA
  is installed -- all off the hot path, which only sees packets whose SA exists.

Run as ``python -m ipsecd.dataplane.worker --control FD --tun FD [--udp FD ...] [--raw FD ...]``
by :class:`ipsecd.dataplane.client.DataPlane`, which opens every fd (so the UDP socket joins
port 4500's reuseport group in a known order, see udp.py) and passes them on.

The class is also usable in-process (tests): give it any fds that behave like the real ones,
e.g. a datagram socketpair standing in for the TUN device.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from ipaddress import ip_address

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.udp import (
    RECV_CMSG_SPACE,
    SOL_UDP,
    UDP_GRO,
    GsoBatch,
    local_address,
    pktinfo_cmsg,
    send_gso,
    send_keepalive,
)
from ipsecd.esp.packet import clamp_tcp_mss, icmp_frag_needed, icmpv6_packet_too_big, parse_ip
from ipsecd.esp.sa import DropReason, EspDrop, InboundSa, Mode, OutboundSa, SaParams
from ipsecd.esp.sad import Sad
from ipsecd.esp.spd import Action, Policy, Spd
from ipsecd.ratelimit import RateLimitedLogger

log = logging.getLogger("ipsecd.esp")

MAX_PACKET = 65536
_SPI = struct.Struct("!I")
_GRO_INT = struct.Struct("=i")
_IPV4_DF = 0x40  # flags byte: Don't Fragment (RFC 791)
_PROTO_TCP = 6
_SYN = 0x02
_SEQ_SOFT_MARGIN = 1 << 28  # soft "seq" lifetime this many packets before the counter would cycle
_MAX_PENDING_OUT = 4 * 1024 * 1024  # bytes of unsent control messages before events are dropped
_MAX_RATE_KEYS = 4096
_FLOW_CACHE_MAX = 65536


class Drop:
    """Worker-level drop reasons that are not ESP processing results (DropReason covers those)."""

    IKE_ON_WORKER = "ike_on_worker"  # non-ESP marker reached the worker: steering is off
    BYPASS_IN_TUN = "bypass_in_tun"  # a BYPASS policy matched a packet already routed into the TUN
    TUN_WRITE = "tun_write_error"
    SEND = "send_error"
    SEND_BUFFER = "send_buffer_full"
    RECV = "recv_error"
    RAW_SHORT = "raw_short"  # raw IPv4 datagram shorter than its own header
    INTERNAL = "internal_error"  # a bug: logged (rate-limited), counted, never fatal
    # Packets held by a trap while IKE negotiates its SA (see Trap):
    ACQUIRE_OVERFLOW = "acquire_queue_overflow"  # pushed out (oldest first) by the per-reqid bounds
    ACQUIRE_FULL = "acquire_queue_full"  # refused: all traps together hold acquire_queue_total bytes
    ACQUIRE_EXPIRED = "acquire_queue_expired"  # waited longer than acquire_queue_timeout
    ACQUIRE_REMOVED = "acquire_queue_removed"  # its trap was removed before an SA came


@dataclass(slots=True)
class OutPath:
    """Everything the outbound hot path needs for one reqid, resolved once at install."""

    reqid: int
    sa: OutboundSa
    sock: socket.socket | None
    dest: tuple[str, int]
    local: bytes | None  # source address for IP_PKTINFO, None = let routing choose
    encap: bool
    mtu: int
    mss: int
    lifetime: m.Lifetime
    soft_sent: set[str] = field(default_factory=set)


@dataclass(slots=True)
class InMeta:
    reqid: int
    lifetime: m.Lifetime
    soft_sent: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Trap:
    """A trap (RFC 4301 5.1, strongSwan's start_action=trap): PROTECT policies for a reqid
    installed before its SA, and the packets that hit them waiting for the SA.

    The queue holds (arrival time, packet) in arrival order so the first packets of a flow
    are sent in order once IKE has finished, instead of being lost to the application's
    retransmission timer. Bounds: WorkerConfig.acquire_queue_*.
    """

    policies: tuple[Policy, ...]
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    nbytes: int = 0


@dataclass(slots=True)
class Keepalive:
    dest: tuple[str, int]
    interval: float
    due: float


class Worker:
    """The drain loop and its state (SAD, SPD, per-reqid output paths, counters)."""

    def __init__(
        self,
        control: socket.socket,
        tun_fd: int,
        udp_socks: list[socket.socket],
        raw_socks: list[socket.socket],
        config: m.WorkerConfig | None = None,
    ) -> None:
        self.control = control
        self.tun_fd = tun_fd
        self.udp_socks = udp_socks
        self.raw_socks = raw_socks
        self.config = config or m.WorkerConfig(tun_name="tun")
        self.sad = Sad()
        self.spd = Spd()
        self.out: dict[int, OutPath] = {}
        self.in_meta: dict[int, InMeta] = {}
        self.drops: dict[str, int] = {}
        self.stats: dict[str, int] = {}
        self.keepalives: dict[tuple[str, int], Keepalive] = {}
        self.running = True
        self._decoder = m.FrameDecoder()
        self._pending_out = bytearray()
        self._epoll = select.epoll()
        self._handlers: dict[int, object] = {}
        self._acquire_sent: dict[int, float] = {}
        self.traps: dict[int, Trap] = {}
        self._waiting: dict[int, Trap] = {}  # traps with queued packets: the only ones timers visit
        self._queued_bytes = 0  # over every trap queue, bounded by acquire_queue_total
        self._queue_check = 0.0  # when the oldest queued packet expires: no scan before then
        self._sa_policies: dict[int, list[Policy]] = {}  # SPD entries InstallSa added, per reqid
        self._unknown_spi: dict[int, tuple[float, int]] = {}
        self._next_lifetime_check = 0.0
        self._rl = RateLimitedLogger(log)
        self._batch = GsoBatch()
        self._flow_cache: dict[bytes, Policy] = {}
        self._transport_spis: set[int] = set()
        self._cacheable = True
        self._batch_sock: socket.socket | None = None
        self._udp_by_family = {s.family: s for s in udp_socks}
        self._raw_by_family = {s.family: s for s in raw_socks}

    # ------------------------------------------------------------------ setup
    def _register(self) -> None:
        control, tun = self.control, self.tun_fd
        self._epoll.register(control.fileno(), select.EPOLLIN)
        self._handlers[control.fileno()] = self._on_control
        self._epoll.register(tun, select.EPOLLIN)
        self._handlers[tun] = self._drain_tun
        for sock in self.udp_socks:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._handlers[sock.fileno()] = self._make_udp_drain(sock)
        for sock in self.raw_socks:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._handlers[sock.fileno()] = self._make_raw_drain(sock)

    def run(self) -> None:
        """Serve until Shutdown or until the control socket closes."""
        self.start()
        while self.running:
            self.step()
        self._epoll.close()

    def start(self) -> None:
        """Register the fds and greet the control process (run() does this; tests call it)."""
        self._register()
        self._send(m.Hello(m.PROTOCOL_VERSION, os.getpid()))

    def step(self, max_wait: float | None = None) -> int:
        """Wait for readiness (at most until the next timer) and serve it; returns the event count."""
        timeout = self._timers(time.monotonic())
        if max_wait is not None:
            timeout = min(timeout, max_wait)
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            return 0
        handlers = self._handlers
        control_fd = self.control.fileno()
        for fd, ev in events:
            if fd == control_fd and ev & select.EPOLLOUT:
                self._flush_control()
                if not ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler()  # type: ignore[operator]
            except Exception:  # a bug must not take the tunnel down: count, log, carry on
                self._count_drop(Drop.INTERNAL)
                self._rl.log(logging.ERROR, "internal", "data-plane handler failed: %s", traceback.format_exc())
        return len(events)

    # ------------------------------------------------------------------ counters
    def _count_drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _stat(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    # ------------------------------------------------------------------ outbound: TUN -> ESP
    def _drain_tun(self) -> None:
        """Read up to ``batch`` packets from the TUN, protect them, send them (GSO-batched)."""
        fd = self.tun_fd
        read = os.read
        lookup = self.spd.lookup_outbound
        out = self.out
        drops = self.drops
        clamp = self.config.mss_clamp
        protect_action = Action.PROTECT
        cache = self._flow_cache
        cacheable = self._cacheable
        n = 0
        nbytes = 0
        for _ in range(self.config.batch):
            try:
                pkt = read(fd, MAX_PACKET)
            except BlockingIOError:
                break
            except OSError:
                self._count_drop(Drop.RECV)
                break
            n += 1
            nbytes += len(pkt)
            try:
                # Flow cache: while no policy looks at protocol or ports, the decision depends
                # on the address pair alone, and a dict probe beats the SPD walk 5-10x.
                key = None
                if cacheable and pkt:
                    v = pkt[0] >> 4
                    if v == 4 and len(pkt) >= 20:
                        key = pkt[12:20]
                    elif v == 6 and len(pkt) >= 40:
                        key = pkt[8:40]
                if key is None:
                    pol = lookup(pkt)
                else:
                    pol = cache.get(key)
                    if pol is None:
                        pol = lookup(pkt)
                        if pol is not None:  # never cache a miss: it may be a malformed packet
                            if len(cache) >= _FLOW_CACHE_MAX:
                                cache.clear()
                            cache[key] = pol
                if pol is None:
                    drops[DropReason.NO_POLICY] = drops.get(DropReason.NO_POLICY, 0) + 1
                    continue
                if pol.action is not protect_action:
                    reason = DropReason.DISCARD_POLICY if pol.action is Action.DISCARD else Drop.BYPASS_IN_TUN
                    drops[reason] = drops.get(reason, 0) + 1
                    continue
                path = out.get(pol.sa_ref)  # type: ignore[arg-type]
                if path is None:
                    self._no_sa(pol, pkt)  # slow path: queue behind a trap, ask IKE for the SA
                    continue
                if len(pkt) > path.mtu and self._too_big(pkt, path):
                    continue
                if clamp and path.mss and _is_tcp_syn(pkt):
                    pkt = clamp_tcp_mss(pkt, path.mss)
                esp = path.sa.protect(pkt)
            except EspDrop as e:
                drops[e.reason] = drops.get(e.reason, 0) + 1
                continue
            if path.encap:
                sock = path.sock
                if sock is not self._batch_sock or not self._batch.add(path.dest, path.local, esp):
                    self._flush_batch()
                    self._batch_sock = sock
                    self._batch.add(path.dest, path.local, esp)
            else:
                self._send_raw(path, esp)
        self._flush_batch()
        if n:
            self._stat("tun_rx_packets", n)
            self._stat("tun_rx_bytes", nbytes)
            self._stat("tun_rx_wakeups")

    def _flush_batch(self) -> None:
        run = self._batch.take()
        sock = self._batch_sock
        if run is None or sock is None:
            return
        dest, local, size, parts = run
        gso = self.config.gso and len(parts) > 1
        try:
            if gso:
                try:
                    send_gso(sock, dest, local, size, parts)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    # The kernel refuses GSO when a segment plus headers exceeds the path MTU
                    # (possible with a hand-set TUN MTU); one datagram each still works.
                    gso = False
                    self._stat("udp_gso_refused")
                    self._send_each(sock, dest, local, parts)
            else:
                self._send_each(sock, dest, local, parts)
        except BlockingIOError:
            self.drops[Drop.SEND_BUFFER] = self.drops.get(Drop.SEND_BUFFER, 0) + len(parts)
            return
        except OSError as e:
            self.drops[Drop.SEND] = self.drops.get(Drop.SEND, 0) + len(parts)
            self._rl.log(logging.WARNING, f"send:{e.errno}", "ESP send to %s failed: %s", dest[0], e.strerror)
            return
        self._stat("udp_tx_packets", len(parts))
        self._stat("udp_tx_sendmsg", 1 if gso else len(parts))

    @staticmethod
    def _send_each(sock: socket.socket, dest: tuple[str, int], local: bytes | None, parts: list[bytes]) -> None:
        cmsgs = [] if local is None else [pktinfo_cmsg(local)]
        for p in parts:
            sock.sendmsg([p], cmsgs, 0, dest)

    def _send_raw(self, path: OutPath, esp: bytes) -> None:
        sock = path.sock
        if sock is None:
            self._count_drop(Drop.SEND)
            return
        try:
            if path.local is None:
                sock.sendto(esp, path.dest)
            else:
                sock.sendmsg([esp], [pktinfo_cmsg(path.local)], 0, path.dest)
        except BlockingIOError:
            self._count_drop(Drop.SEND_BUFFER)
            return
        except OSError as e:
            self._count_drop(Drop.SEND)
            self._rl.log(logging.WARNING, f"send:{e.errno}", "raw ESP send to %s failed: %s", path.dest[0], e.strerror)
            return
        self._stat("raw_tx_packets")

    def _too_big(self, pkt: bytes, path: OutPath) -> bool:
        """Oversized inner packet: True when it was answered with ICMP and must not be sent.

        IPv4 with DF and every IPv6 packet get "fragmentation needed" (RFC 1191) / "packet
        too big" (RFC 8201, RFC 4443 3.2) back into the TUN. IPv4 without DF is sent anyway:
        the outer packet is then fragmented by the kernel (our sockets do not set DF).
        """
        version = pkt[0] >> 4
        if version == 4 and not pkt[6] & _IPV4_DF:
            return False
        self._count_drop(DropReason.TOO_BIG)
        # The ICMP error needs a source the host does not own (else it is a martian arriving
        # on the TUN): a configured one, or the unreachable destination itself.
        if version == 4:
            src4 = self.config.icmp_source4 or (pkt[16:20] if len(pkt) >= 20 else None)
            reply = icmp_frag_needed(pkt, path.mtu, src4) if src4 is not None else None
        else:
            src6 = self.config.icmp_source6 or (pkt[24:40] if len(pkt) >= 40 else None)
            reply = icmpv6_packet_too_big(pkt, path.mtu, src6) if src6 is not None else None
        if reply is not None:
            self._write_tun(reply)
            self._stat("icmp_too_big_sent")
        return True

    # ------------------------------------------------------------------ traps: acquire and queue
    def _no_sa(self, pol: Policy, pkt: bytes) -> None:
        """A PROTECT policy matched but its SA is missing: hold the packet if the reqid is
        trapped (else count it as NO_SA) and tell IKE (RFC 4301 5.1 / RFC 7296 1.3)."""
        reqid = pol.sa_ref
        trap = self.traps.get(reqid) if reqid is not None else None
        if trap is None or reqid is None:
            self._count_drop(DropReason.NO_SA)
        else:
            self._enqueue(reqid, trap, pkt)
        self._acquire(pol, pkt)

    def _enqueue(self, reqid: int, trap: Trap, pkt: bytes) -> None:
        """Queue one packet behind its trap, keeping every bound (oldest packets go first)."""
        cfg = self.config
        size = len(pkt)
        if size > cfg.acquire_queue_bytes or cfg.acquire_queue_packets <= 0:
            self._count_drop(Drop.ACQUIRE_OVERFLOW)
            return
        if self._queued_bytes + size > cfg.acquire_queue_total:
            self._count_drop(Drop.ACQUIRE_FULL)
            return
        q = trap.queue
        while q and (len(q) >= cfg.acquire_queue_packets or trap.nbytes + size > cfg.acquire_queue_bytes):
            _t, old = q.popleft()
            trap.nbytes -= len(old)
            self._queued_bytes -= len(old)
            self._count_drop(Drop.ACQUIRE_OVERFLOW)
        q.append((time.monotonic(), pkt))
        trap.nbytes += size
        self._queued_bytes += size
        self._waiting[reqid] = trap
        self._stat("acquire_queued")

    def _take_queue(self, reqid: int, trap: Trap) -> list[tuple[float, bytes]]:
        """Empty a trap's queue (bookkeeping included) and return what it held."""
        items = list(trap.queue)
        trap.queue.clear()
        self._queued_bytes -= trap.nbytes
        trap.nbytes = 0
        self._waiting.pop(reqid, None)
        return items

    def _expire_queued(self, now: float) -> float:
        """Drop queued packets older than acquire_queue_timeout; returns when the next one expires."""
        timeout = self.config.acquire_queue_timeout
        next_due = now + timeout
        for reqid, trap in list(self._waiting.items()):
            q = trap.queue
            while q and q[0][0] + timeout <= now:
                _t, old = q.popleft()
                trap.nbytes -= len(old)
                self._queued_bytes -= len(old)
                self._count_drop(Drop.ACQUIRE_EXPIRED)
            if q:
                next_due = min(next_due, q[0][0] + timeout)
            else:
                del self._waiting[reqid]
        return next_due

    def _send_queued(self, reqid: int, trap: Trap) -> None:
        """The SA of a trapped reqid arrived: protect and send what waited, in arrival order.

        Each packet goes through the SPD again (the negotiated, possibly narrowed, policies
        are in place now), exactly as if it had just been read from the TUN.
        """
        items = self._take_queue(reqid, trap)
        if not items:
            return
        now = time.monotonic()
        timeout = self.config.acquire_queue_timeout
        sent = 0
        for t, pkt in items:
            if t + timeout <= now:
                self._count_drop(Drop.ACQUIRE_EXPIRED)
                continue
            sent += self._protect_one(pkt)
        self._flush_batch()
        self._stat("acquire_queue_sent", sent)

    def _protect_one(self, pkt: bytes) -> int:
        """Outbound processing of one packet off the hot loop (_drain_tun inlines the same
        steps for speed); returns 1 when it was handed to a socket, else 0 (counted)."""
        pol = self.spd.lookup_outbound(pkt)
        if pol is None:
            self._count_drop(DropReason.NO_POLICY)
            return 0
        if pol.action is not Action.PROTECT:
            self._count_drop(DropReason.DISCARD_POLICY if pol.action is Action.DISCARD else Drop.BYPASS_IN_TUN)
            return 0
        path = self.out.get(pol.sa_ref)  # type: ignore[arg-type]
        if path is None:
            self._no_sa(pol, pkt)
            return 0
        try:
            if len(pkt) > path.mtu and self._too_big(pkt, path):
                return 0
            if self.config.mss_clamp and path.mss and _is_tcp_syn(pkt):
                pkt = clamp_tcp_mss(pkt, path.mss)
            esp = path.sa.protect(pkt)
        except EspDrop as e:
            self._count_drop(e.reason)
            return 0
        if path.encap:
            sock = path.sock
            if sock is not self._batch_sock or not self._batch.add(path.dest, path.local, esp):
                self._flush_batch()
                self._batch_sock = sock
                self._batch.add(path.dest, path.local, esp)
        else:
            self._send_raw(path, esp)
        return 1

    def _install_trap(self, msg: m.InstallTrap) -> None:
        for pol in msg.policies:
            if pol.action is not Action.PROTECT or pol.sa_ref != msg.reqid:
                raise ValueError(f"a trap for reqid {msg.reqid} takes only PROTECT policies with that sa_ref")
        trap = self.traps.get(msg.reqid)
        if trap is None:
            trap = self.traps[msg.reqid] = Trap(msg.policies)
        else:  # replaced: the new policies in, the old ones out (an SA's own entries stay)
            for pol in trap.policies:
                self.spd.remove(pol)
            trap.policies = msg.policies
        for pol in msg.policies:
            self.spd.add(pol)

    def _remove_trap(self, reqid: int) -> None:
        trap = self.traps.pop(reqid, None)
        if trap is None:
            return
        for _t, _pkt in self._take_queue(reqid, trap):
            self._count_drop(Drop.ACQUIRE_REMOVED)
        for pol in trap.policies:  # one entry each: equal entries an SA installed remain its own
            self.spd.remove(pol)

    def _acquire(self, pol: Policy, pkt: bytes) -> None:
        """Tell IKE a trap policy was hit, at most once per ``acquire_interval`` per reqid."""
        reqid = pol.sa_ref
        if reqid is None:
            return
        now = time.monotonic()
        last = self._acquire_sent.get(reqid)
        if last is not None and now - last < self.config.acquire_interval:
            return
        parsed = parse_ip(pkt)
        if parsed is None:
            return
        _version, src, dst, proto, sport, dport, _ = parsed
        if len(self._acquire_sent) > _MAX_RATE_KEYS:
            self._acquire_sent.clear()
        self._acquire_sent[reqid] = now
        self._send(m.Acquire(reqid, ip_address(src), ip_address(dst), proto, sport, dport))

    # ------------------------------------------------------------------ inbound: ESP -> TUN
    def _make_udp_drain(self, sock: socket.socket) -> object:
        recvmsg = sock.recvmsg
        family = sock.family
        inbound = self._inbound

        def drain() -> None:
            """Receive up to ``batch`` datagrams (each maybe GRO-coalesced) and decapsulate."""
            stats = self.stats
            got = 0
            for _ in range(self.config.batch):
                try:
                    data, anc, _flags, addr = recvmsg(MAX_PACKET, RECV_CMSG_SPACE)
                except BlockingIOError:
                    break
                except OSError:
                    self._count_drop(Drop.RECV)  # e.g. an ICMP error queued on the socket
                    continue
                got += 1
                size = 0
                dst: bytes | None = None
                for level, ctype, cdata in anc:
                    if level == SOL_UDP and ctype == UDP_GRO:
                        size = _GRO_INT.unpack_from(cdata)[0]
                    else:
                        dst = local_address([(level, ctype, cdata)])
                if 0 < size < len(data):
                    stats["udp_gro_batches"] = stats.get("udp_gro_batches", 0) + 1
                    for i in range(0, len(data), size):
                        inbound(data[i : i + size], addr, family, dst, True)  # bytes slice: one copy
                else:
                    inbound(data, addr, family, dst, True)
            if got:
                stats["udp_rx_recvmsg"] = stats.get("udp_rx_recvmsg", 0) + got

        return drain

    def _make_raw_drain(self, sock: socket.socket) -> object:
        recvmsg = sock.recvmsg
        family = sock.family
        inbound = self._inbound
        v4 = family == socket.AF_INET

        def drain() -> None:
            """Receive up to ``batch`` raw ESP packets; IPv4 ones still carry their IP header."""
            for _ in range(self.config.batch):
                try:
                    data, anc, _flags, addr = recvmsg(MAX_PACKET, RECV_CMSG_SPACE)
                except BlockingIOError:
                    break
                except OSError:
                    self._count_drop(Drop.RECV)
                    continue
                if v4:
                    ihl = (data[0] & 0x0F) * 4 if data else 0
                    if ihl < 20 or len(data) < ihl:
                        self._count_drop(Drop.RAW_SHORT)
                        continue
                    inbound(data[ihl:], addr, family, data[16:20], False)
                else:
                    inbound(data, addr, family, local_address(anc), False)

        return drain

    def _inbound(
        self, data: bytes, addr: tuple[str, int], family: int, dst: bytes | None, udp: bool
    ) -> None:
        """One ESP packet (SPI first) from ``addr``: demultiplex, unprotect, write to the TUN."""
        n = len(data)
        if udp and n == 1 and data[0] == 0xFF:
            self._stat("natt_keepalives_rx")  # RFC 3948 2.3: to be dropped by the receiver
            return
        if n < 8:
            self._count_drop(DropReason.SHORT)
            return
        spi = _SPI.unpack_from(data)[0]
        if spi == 0:
            # With UDP: the non-ESP marker, i.e. IKE, which steering should have sent to the
            # control process (RFC 3948 2.2). Raw: SPI 0 is reserved (RFC 4303 2.1).
            self._count_drop(Drop.IKE_ON_WORKER if udp else DropReason.UNKNOWN_SPI)
            return
        sa = self.sad.inbound.get(spi)
        if sa is None:
            self._count_drop(DropReason.UNKNOWN_SPI)
            self._unknown(spi, addr)
            return
        try:
            if spi in self._transport_spis:  # the rebuilt header needs the outer addresses
                pkt = sa.unprotect(data, socket.inet_pton(family, addr[0]), dst)
            else:
                pkt = sa.unprotect(data)
        except EspDrop as e:
            self.drops[e.reason] = self.drops.get(e.reason, 0) + 1
            return
        try:  # _write_tun inlined: this runs once per received packet
            os.write(self.tun_fd, pkt)
        except OSError:
            self._count_drop(Drop.TUN_WRITE)

    def _write_tun(self, pkt: bytes) -> None:
        try:
            os.write(self.tun_fd, pkt)
        except OSError:
            self._count_drop(Drop.TUN_WRITE)

    def _unknown(self, spi: int, addr: tuple[str, int]) -> None:
        """Report unknown SPIs to IKE, once per ``unknown_spi_interval`` per SPI with a count."""
        now = time.monotonic()
        last, count = self._unknown_spi.get(spi, (0.0, 0))
        count += 1
        if last and now - last < self.config.unknown_spi_interval:
            self._unknown_spi[spi] = (last, count)
            return
        if len(self._unknown_spi) > _MAX_RATE_KEYS:
            self._unknown_spi.clear()
        self._unknown_spi[spi] = (now, 0)
        self._send(m.UnknownSpi(spi, addr[0], addr[1] if len(addr) > 1 else 0, count))

    # ------------------------------------------------------------------ timers
    def _timers(self, now: float) -> float:
        """Run due timers; returns the epoll timeout (seconds) until the next one."""
        next_due = now + 1.0
        for ka in self.keepalives.values():
            if ka.due <= now:
                sock = self._udp_by_family.get(socket.AF_INET6 if ":" in ka.dest[0] else socket.AF_INET)
                if sock is not None:
                    try:
                        send_keepalive(sock, ka.dest)
                        self._stat("natt_keepalives_tx")
                    except OSError:
                        self._count_drop(Drop.SEND)
                ka.due = now + ka.interval
            next_due = min(next_due, ka.due)
        if self._waiting:
            if now >= self._queue_check:  # arrivals only ever expire later: scan when due
                self._queue_check = self._expire_queued(now)
            next_due = min(next_due, self._queue_check)
        if now >= self._next_lifetime_check:
            self._check_lifetimes()
            self._next_lifetime_check = now + self.config.lifetime_check_interval
        next_due = min(next_due, self._next_lifetime_check)
        return max(0.0, next_due - now)

    def _check_lifetimes(self) -> None:
        """Soft limits raise an event once; hard limits also remove the SA (RFC 4301 4.4.2.1).

        Checked on a timer, not per packet, to keep the hot path short: a limit may be
        overshot by what flows in ``lifetime_check_interval``.
        """
        for reqid, path in list(self.out.items()):
            sa = path.sa
            c = sa.counters
            hit = _lifetime_hits(path.lifetime, c.bytes, c.packets, path.soft_sent)
            if sa.seq >= sa.seq_limit:
                hit.append(("hard", "seq"))
            elif sa.seq >= sa.seq_limit - _SEQ_SOFT_MARGIN:
                hit.append(("soft", "seq"))
            for kind, what in hit:
                key = f"{kind}:{what}"
                if key in path.soft_sent:
                    continue
                path.soft_sent.add(key)
                self._send(m.LifetimeReached(reqid, sa.spi, "out", kind, what, c.bytes, c.packets))
                if kind == "hard":
                    self._remove_out(reqid)
                    break
        for spi, meta in list(self.in_meta.items()):
            sa_in = self.sad.inbound.get(spi)
            if sa_in is None:
                continue
            c = sa_in.counters
            for kind, what in _lifetime_hits(meta.lifetime, c.bytes, c.packets, meta.soft_sent):
                key = f"{kind}:{what}"
                if key in meta.soft_sent:
                    continue
                meta.soft_sent.add(key)
                self._send(m.LifetimeReached(meta.reqid, spi, "in", kind, what, c.bytes, c.packets))
                if kind == "hard":
                    self._remove_in(spi)
                    break

    # ------------------------------------------------------------------ control channel
    def _on_control(self) -> None:
        try:
            data = self.control.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log.info("control socket closed: worker exits")
            self.running = False
            return
        try:
            msgs = self._decoder.feed(data)
        except m.ProtocolError as e:
            log.error("bad control message: %s", e)
            self._send(m.WorkerError(f"bad control message: {e}", fatal=True))
            self.running = False
            return
        for msg in msgs:
            self.handle(msg)

    def handle(self, msg: m.Message) -> None:
        """Apply one control message; every request is answered (Ack/Counters) with its id."""
        ident = getattr(msg, "id", 0)
        if isinstance(msg, m.GetCounters):
            self._send(self.counters(ident))
            return
        try:
            if isinstance(msg, m.Configure):
                self.config = msg.config
            elif isinstance(msg, m.InstallSa):
                self._install(msg)
            elif isinstance(msg, m.UpdateSaPeer):
                self._update_peer(msg)
            elif isinstance(msg, m.DeleteSa):
                self._delete(msg)
            elif isinstance(msg, m.InstallPolicy):
                self.spd.add(msg.policy)
            elif isinstance(msg, m.RemovePolicy):
                self.spd.remove(msg.policy)
            elif isinstance(msg, m.InstallTrap):
                self._install_trap(msg)
            elif isinstance(msg, m.RemoveTrap):
                self._remove_trap(msg.reqid)
            elif isinstance(msg, m.SetKeepalive):
                self._set_keepalive(msg)
            elif isinstance(msg, m.Shutdown):
                self.running = False
            else:
                raise ValueError(f"unexpected message {type(msg).__name__}")
        except Exception as e:  # a bad request is refused, never fatal to the tunnel
            log.warning("control request %s failed: %s", type(msg).__name__, e)
            self._send(m.Ack(ident, False, f"{type(e).__name__}: {e}"))
            return
        finally:
            self._spd_changed()
        self._send(m.Ack(ident))

    def _spd_changed(self) -> None:
        """Drop the flow cache and decide whether the SPD allows caching by addresses only."""
        self._flow_cache.clear()
        self._cacheable = all(p.proto == 0 and p.local.any_port and p.remote.any_port for p in self.spd)

    def _make_path(self, reqid: int, params: SaParams, sa: OutboundSa, mtu: int, lifetime: m.Lifetime,
                   mss_clamp: int | None = 0) -> OutPath:
        fam = socket.AF_INET6 if params.remote_addr.version == 6 else socket.AF_INET
        remote = str(params.remote_addr)
        if params.encap:
            sock = self._udp_by_family.get(fam)
            dest: tuple[str, int] = (remote, params.remote_port)
        else:
            sock = self._raw_by_family.get(fam)
            dest = (remote, 0)
        if sock is None:
            kind = "UDP 4500" if params.encap else "raw ESP"
            raise ValueError(f"no {kind} socket for IPv{params.remote_addr.version}")
        local = None if params.local_addr.is_unspecified else params.local_addr.packed
        # TCP MSS = MTU - IP header - TCP header (RFC 9293 3.7.1), for the inner family we
        # cannot know per SA: use the IPv4 value; IPv6 SYNs get 20 bytes more room than ideal.
        mss = 0 if mss_clamp is None else (mss_clamp or max(536, mtu - 40))
        return OutPath(reqid, sa, sock, dest, local, params.encap, mtu, mss, lifetime)

    def _install(self, msg: m.InstallSa) -> None:
        """Install both halves; on a rekey the new outbound SA replaces the old one of the reqid."""
        new_in = InboundSa(msg.inbound) if msg.inbound is not None else None
        path = None
        if msg.outbound is not None:
            sa_out = OutboundSa(msg.outbound)
            path = self._make_path(msg.reqid, msg.outbound, sa_out, msg.mtu, msg.lifetime, msg.mss_clamp)
        if new_in is not None:
            self.sad.add_inbound(new_in)
            self.in_meta[new_in.spi] = InMeta(msg.reqid, msg.lifetime)
            if new_in.params.mode is Mode.TRANSPORT:
                self._transport_spis.add(new_in.spi)
        if path is not None:
            self.sad.add_outbound(msg.reqid, path.sa)
            self.out[msg.reqid] = path
        # The SA's own SPD entries, once per reqid (a rekey repeats them). They are kept apart
        # from a trap's entries, even when equal, so deleting the SA leaves the trap intact.
        owned = self._sa_policies.setdefault(msg.reqid, [])
        for pol in msg.policies:
            if pol not in owned:
                self.spd.add(pol)
                owned.append(pol)
        if not owned:
            del self._sa_policies[msg.reqid]
        trap = self._waiting.get(msg.reqid)
        if path is not None and trap is not None:
            self._send_queued(msg.reqid, trap)  # before any later TUN read: order is kept

    def _update_peer(self, msg: m.UpdateSaPeer) -> None:
        path = self.out.get(msg.reqid)
        if path is None:
            raise KeyError(f"no outbound SA for reqid {msg.reqid}")
        dest_port = msg.remote_port if path.encap else 0
        path.dest = (str(msg.remote_addr), dest_port)
        if msg.local_addr is not None:
            path.local = None if msg.local_addr.is_unspecified else msg.local_addr.packed

    def _remove_out(self, reqid: int) -> None:
        self.sad.remove(reqid=reqid)
        self.out.pop(reqid, None)

    def _delete(self, msg: m.DeleteSa) -> None:
        if msg.reqid is not None:
            self._remove_out(msg.reqid)
            if msg.policies:
                owned = self._sa_policies.pop(msg.reqid, [])
                if msg.reqid in self.traps:
                    # the trap stays armed: its entries remain, the next packet acquires again
                    for pol in owned:
                        self.spd.remove(pol)
                else:
                    self.spd.remove_where(sa_ref=msg.reqid)
            if not msg.inbound_spis:
                for spi, meta in list(self.in_meta.items()):
                    if meta.reqid == msg.reqid:
                        self._remove_in(spi)
        for spi in msg.inbound_spis:
            self._remove_in(spi)

    def _remove_in(self, spi: int) -> None:
        self.sad.remove(inbound_spi=spi)
        self.in_meta.pop(spi, None)
        self._transport_spis.discard(spi)

    def _set_keepalive(self, msg: m.SetKeepalive) -> None:
        dest = (str(msg.peer), msg.port)
        if msg.interval <= 0:
            self.keepalives.pop(dest, None)
        else:
            self.keepalives[dest] = Keepalive(dest, msg.interval, time.monotonic() + msg.interval)

    def counters(self, ident: int = 0) -> m.Counters:
        sas: list[m.SaCounterSnapshot] = []
        for spi, sa_in in self.sad.inbound.items():
            meta = self.in_meta.get(spi)
            c = sa_in.counters
            sas.append(
                m.SaCounterSnapshot(
                    spi, "in", meta.reqid if meta else 0, c.bytes, c.packets,
                    {str(k): v for k, v in c.drops.items()}, sa_in.highest_seq,
                )
            )
        for reqid, path in self.out.items():
            c = path.sa.counters
            sas.append(
                m.SaCounterSnapshot(
                    path.sa.spi, "out", reqid, c.bytes, c.packets, {str(k): v for k, v in c.drops.items()}, path.sa.seq
                )
            )
        return m.Counters(ident, tuple(sas), {str(k): v for k, v in self.drops.items()}, dict(self.stats))

    def _send(self, msg: m.Message) -> None:
        """Queue a message for the control process; never blocks the packet loop."""
        frame = m.encode(msg)
        if len(self._pending_out) + len(frame) > _MAX_PENDING_OUT:
            self._count_drop("control_overflow")
            return
        self._pending_out += frame
        self._flush_control()

    def _flush_control(self) -> None:
        buf = self._pending_out
        while buf:
            try:
                sent = self.control.send(buf)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.running = False
                    buf.clear()
                    return
                raise
            del buf[:sent]
        mask = select.EPOLLIN | (select.EPOLLOUT if buf else 0)
        with contextlib.suppress(OSError, ValueError, FileNotFoundError):
            self._epoll.modify(self.control.fileno(), mask)


def _is_tcp_syn(pkt: bytes) -> bool:
    """Cheap pre-filter before the MSS clamp: only TCP SYN (and SYN-ACK) segments qualify."""
    n = len(pkt)
    if n < 40:
        return False
    v = pkt[0] >> 4
    if v == 4:
        if pkt[9] != _PROTO_TCP:
            return False
        off = (pkt[0] & 0x0F) * 4 + 13
    elif v == 6:
        if pkt[6] != _PROTO_TCP:
            return False
        off = 53
    else:
        return False
    return off < n and bool(pkt[off] & _SYN)


def _lifetime_hits(lt: m.Lifetime, nbytes: int, packets: int, sent: set[str]) -> list[tuple[str, str]]:
    """Limits crossed since the last check. A hard limit counts only once its soft event went out
    at an earlier check: a flow fast enough to cross both between two checks still gets its rekey
    started before the SA is cut (the hard limit is then late by at most one check interval)."""
    hits: list[tuple[str, str]] = []
    for what, used, soft, hard in (("bytes", nbytes, lt.soft_bytes, lt.hard_bytes),
                                   ("packets", packets, lt.soft_packets, lt.hard_packets)):
        if hard and used >= hard and (not soft or f"soft:{what}" in sent):
            hits.append(("hard", what))
        elif soft and used >= soft:
            hits.append(("soft", what))
    return hits


def _sock_from_fd(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ipsecd-dataplane-worker", description="ipsecd data-plane worker (internal)")
    p.add_argument("--control", type=int, required=True, help="fd of the control socketpair end")
    p.add_argument("--tun", type=int, required=True, help="fd of the TUN device")
    p.add_argument("--udp", type=int, action="append", default=[], help="fd of an ESP-in-UDP socket (repeatable)")
    p.add_argument("--raw", type=int, action="append", default=[], help="fd of a raw ESP socket (repeatable)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s dataplane[%(process)d] %(message)s"
    )
    # The daemon decides when the worker ends (Shutdown, or closing the control socket, which
    # also happens if the daemon is killed): Ctrl-C or systemd's SIGTERM reaching the whole
    # process group must not stop packets before the daemon has sent its Deletes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = _sock_from_fd(args.control)
    os.set_blocking(args.tun, False)
    worker = Worker(control, args.tun, [_sock_from_fd(fd) for fd in args.udp], [_sock_from_fd(fd) for fd in args.raw])
    with contextlib.suppress(SystemExit):
        worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
