"""The data-plane worker process: one thread, one epoll, drain loops over TUN and ESP sockets.

Why it looks like this (measurements in docs/dataplane.md and the shared notes): in Python
the per-packet budget goes to syscalls and wake-ups, not to crypto, and the GIL serialises
threads. So the worker

* runs in its own process (IKE handshakes in the control process never stall packets),
* waits in ``epoll`` and, for every readiness event, drains the fd until EAGAIN or a
  bounded batch (``WorkerConfig.batch``) -- never one packet per wake-up,
* batches outbound ESP-in-UDP to one peer with UDP GSO (one ``sendmsg`` per run of
  equal-size datagrams) and takes inbound datagrams coalesced by UDP GRO, and
* counts every dropped packet by reason; no input makes it raise.

Everything the worker knows and decides lives in the sans-I/O ``DataplaneState``
(state.py): control messages, traps and their queues, lifetimes, keepalives, rate limits.
This module is the shell around it: it owns the fds, reads the clock (once per loop turn,
handing ``now`` to the state), runs the per-packet loops inline -- they read the state's
tables directly and call into it only for the slow cases -- and carries out the state's
outputs (ESP to send, packets for the TUN, keepalives, control messages).

Run as ``python -m ipsecd.dataplane.worker --control FD --tun FD [--udp FD ...] [--raw FD ...] [--ah FD ...]``
by :class:`ipsecd.dataplane.client.DataPlane`, which opens every fd (so the UDP socket joins
port 4500's reuseport group in a known order, see udp.py) and passes them on.

The class is also usable in-process (tests): give it any fds that behave like the real ones,
e.g. a datagram socketpair standing in for the TUN device.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.handoff import Handoff
from ipsecd.dataplane.offload import (
    GSO_NONE,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadError,
    TcpCoalescer,
    parse_vnet_hdr,
    segment,
)
from ipsecd.dataplane.state import (
    FLOW_CACHE_MAX,
    DataplaneState,
    Drop,
    HandOff,
    OutPath,
    SendControl,
    SendEsp,
    SendKeepalive,
    WriteTun,
    is_tcp_syn,
)
from ipsecd.dataplane.udp import (
    GSO_REFUSED_ERRNOS,
    RECV_CMSG_SPACE,
    SOL_UDP,
    UDP_GRO,
    GsoBatch,
    GsoRefusals,
    local_address,
    pktinfo_cmsg,
    send_gso,
    send_keepalive,
)
from ipsecd.esp.packet import clamp_tcp_mss
from ipsecd.esp.sa import DropReason, EspDrop
from ipsecd.esp.spd import Action
from ipsecd.gcpolicy import tune_gc
from ipsecd.ratelimit import RateLimitedLogger

__all__ = ["ControlLink", "ControlLinks", "Drop", "EspSender", "Worker", "main"]

log = logging.getLogger("ipsecd.esp")

MAX_PACKET = 65536
MAX_TUN_READ = MAX_PACKET + VNET_HDR_LEN  # a 64 KiB super-segment behind its virtio-net header
_SPI = struct.Struct("!I")
_GRO_INT = struct.Struct("=i")
_MAX_PENDING_OUT = 4 * 1024 * 1024  # bytes of unsent control messages before messages are dropped


class Worker:
    """The drain loop around a ``DataplaneState`` (module docstring)."""

    def __init__(
        self,
        control: socket.socket,
        tun_fd: int,
        udp_socks: list[socket.socket],
        raw_socks: list[socket.socket],
        config: m.WorkerConfig | None = None,
        ah_socks: list[socket.socket] | None = None,
        handoff: Handoff | None = None,
        shard_controls: list[socket.socket] | None = None,  # one per IKE shard past the first (ControlLinks)
    ) -> None:
        self.control = control
        self.tun_fd = tun_fd
        self.udp_socks = udp_socks
        self.raw_socks = raw_socks
        self.ah_socks = ah_socks or []
        sockets = {(True, _version(s)): s for s in udp_socks} | {(False, _version(s)): s for s in raw_socks}
        self.state: DataplaneState[socket.socket] = DataplaneState(
            config or m.WorkerConfig(tun_name="tun"), sockets, {_version(s): s for s in self.ah_socks})
        self.running = True
        self.now = time.monotonic()  # the clock as of this loop turn: the state's ``now``
        self._udp_by_version = {_version(s): s for s in udp_socks}
        # the state's tables the receive path reads per packet (never replaced, only changed)
        self._sad_in = self.state.sad.inbound
        self._transport_spis = self.state.transport_spis
        self._heard = self.state.heard.fresh.add  # an inbound SA that received a packet (DPD's poll)
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._link = ControlLinks(control, shard_controls or [], self._epoll, self.state.drops, self._handlers)
        self._rl = RateLimitedLogger(log)
        self._sender = EspSender(self.state, self._rl)
        self._vnet: VnetTun | None = None  # the TUN's virtio-net side, once a Configure switches it on
        self.handoff = handoff  # several workers: the inbox and the other workers' (handoff.py)

    # ------------------------------------------------------------------ setup and loop
    def _register(self) -> None:
        tun = self.tun_fd
        self._link.register(self._on_control)  # the daemon's control link and the shards'
        self._epoll.register(tun, select.EPOLLIN)
        self._handlers[tun] = self._drain_tun
        self._register_inbox()
        for sock in self.udp_socks:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._handlers[sock.fileno()] = self._make_udp_drain(sock)
        for sock in self.raw_socks:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._handlers[sock.fileno()] = make_raw_drain(self, sock)
        for sock in self.ah_socks:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._handlers[sock.fileno()] = make_ah_drain(self, sock)

    def _register_inbox(self) -> None:
        """Several workers: packets other workers read for our SAs arrive here (handoff.py)."""
        if self.handoff is not None and self.handoff.inbox is not None:
            inbox = self.handoff.inbox.fileno()
            self._epoll.register(inbox, select.EPOLLIN)
            self._handlers[inbox] = lambda: self._drain_tun(inbox)

    def run(self) -> None:
        """Serve until Shutdown or until the control socket closes."""
        self.start()
        while self.running:
            self.step()
        self._epoll.close()

    def start(self) -> None:
        """Register the fds and greet the control process (run() does this; tests call it)."""
        self._register()
        self._link.hello(m.Hello(m.PROTOCOL_VERSION, os.getpid()))

    def step(self, max_wait: float | None = None) -> int:
        """Run due timers, wait for readiness (at most until the next timer) and serve it;
        returns the event count."""
        state = self.state
        now = time.monotonic()
        due = state.get_timer()
        if due is not None and due <= now:
            state.handle_timer(now)
            if state.outputs:
                self._run_outputs()
            due = state.get_timer()
        timeout = -1.0 if due is None else max(0.0, due - now)
        if max_wait is not None:
            timeout = max_wait if timeout < 0 else min(timeout, max_wait)
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            return 0
        self.now = time.monotonic()
        handlers = self._handlers
        control_fd = self.control.fileno()
        for fd, ev in events:
            if fd == control_fd and ev & select.EPOLLOUT:
                self._link.flush()
                if not ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler()
            except Exception:  # a bug must not take the tunnel down: count, log, carry on
                state.drops[Drop.INTERNAL] = state.drops.get(Drop.INTERNAL, 0) + 1
                self._rl.log(logging.ERROR, "internal", "data-plane handler failed: %s", traceback.format_exc())
        if state.outputs:
            self._run_outputs()
        return len(events)

    def handle(self, msg: m.Message) -> None:
        """Apply one control message now and send what it produced (tests call this directly)."""
        self.state.handle(msg, time.monotonic())
        self._follow_config()
        self._run_outputs()

    def counters(self, ident: int = 0) -> m.Counters:
        return self.state.counters(ident)

    def _count_drop(self, reason: str) -> None:
        drops = self.state.drops
        drops[reason] = drops.get(reason, 0) + 1

    def _stat(self, name: str, n: int = 1) -> None:
        stats = self.state.stats
        stats[name] = stats.get(name, 0) + n

    # ------------------------------------------------------------------ the state's outputs
    def _run_outputs(self) -> None:
        """Carry out what the state asked for, in its order (queued ESP before the Ack)."""
        sender = self._sender
        for out in self.state.take_outputs():
            if isinstance(out, SendEsp):
                sender.add(out.path, out.esp)
            elif isinstance(out, SendControl):
                sender.flush()
                self._link.send(out.message)
            elif isinstance(out, WriteTun):
                self._write_tun(out.packet)
            elif isinstance(out, SendKeepalive):
                self._send_keepalive(out)
            elif isinstance(out, HandOff) and self.handoff is not None:
                self.handoff.send(out.owner, out.packet)
        sender.flush()
        if self.state.stopping or not self._link.open:
            self.running = False

    def _send_keepalive(self, out: SendKeepalive) -> None:
        sock = self._udp_by_version.get(out.version)
        if sock is None:
            return
        try:
            send_keepalive(sock, out.dest)
            self._stat("natt_keepalives_tx")
        except OSError:
            self._count_drop(Drop.SEND)

    # ------------------------------------------------------------------ outbound: TUN -> ESP
    def _drain_tun(self, inbox: int = -1) -> None:
        """Read up to ``batch`` packets from the TUN (or, several workers, from the ``inbox``
        of packets other workers read for SAs we own), protect them, send them (GSO-batched).

        ``DataplaneState.outbound`` does the same per packet; this is that, inlined.
        """
        state = self.state
        fd = self.tun_fd if inbox < 0 else inbox
        read = os.read
        lookup = state.spd.lookup_outbound
        out = state.out
        drops = state.drops
        clamp = state.config.mss_clamp
        protect_action = Action.PROTECT
        cache = state.flow_cache
        cacheable = state.cacheable
        sender = self._sender
        batch_add = sender.batch.add
        flush = sender.flush
        vnet = state.config.vnet_hdr and inbox < 0  # handed-over packets are plain IP
        owners = state.owners
        n = 0
        nbytes = 0
        reads = 0
        for _ in range(state.config.batch):
            try:
                raw = read(fd, MAX_TUN_READ)
            except BlockingIOError:
                break
            except OSError:
                self._count_drop(Drop.RECV)
                break
            reads += 1
            # with offloads, a super-segment becomes its wire packets (VnetTun.read)
            pkts = (self._vnet.read(raw) if self._vnet else ()) if vnet else (raw,)
            for pkt in pkts:
                n += 1
                nbytes += len(pkt)
                try:
                    # Flow cache (state.py): keyed by the address pair while no policy looks further.
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
                                if len(cache) >= FLOW_CACHE_MAX:
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
                        owner = owners.get(pol.sa_ref)  # type: ignore[arg-type]
                        if owner is not None:  # another worker's SA: hand over (handoff.py)
                            state.outputs.append(HandOff(owner, pkt))
                            continue
                        state.no_sa(pol, pkt, self.now)  # slow path: queue behind a trap, ask IKE for the SA
                        continue
                    if len(pkt) > path.mtu and state.too_big(pkt, path):
                        continue
                    if clamp and path.mss and is_tcp_syn(pkt):
                        pkt = clamp_tcp_mss(pkt, path.mss)
                    esp = path.sa.protect(pkt)
                except EspDrop as e:
                    drops[e.reason] = drops.get(e.reason, 0) + 1
                    continue
                if path.encap:  # EspSender.add, inlined
                    sock = path.sock
                    if sock is not sender.sock or not batch_add(path.dest, path.local, esp):
                        flush()
                        sender.sock = sock
                        batch_add(path.dest, path.local, esp)
                else:
                    sender.send_raw(path, esp)
        flush()
        if n:
            _account_tun_reads(state, n, nbytes, reads, "tun_rx" if inbox < 0 else "handoff_rx")

    # ------------------------------------------------------------------ inbound: ESP -> TUN
    def _make_udp_drain(self, sock: socket.socket) -> Callable[[], None]:
        recvmsg = sock.recvmsg
        family = sock.family
        inbound = self._inbound

        def drain() -> None:
            """Receive up to ``batch`` datagrams (each maybe GRO-coalesced) and decapsulate."""
            state = self.state
            stats = state.stats
            got = 0
            segments = 0
            nbytes = 0
            for _ in range(state.config.batch):
                try:
                    data, anc, _flags, addr = recvmsg(MAX_PACKET, RECV_CMSG_SPACE)
                except BlockingIOError:
                    break
                except OSError:
                    self._count_drop(Drop.RECV)  # e.g. an ICMP error queued on the socket
                    continue
                got += 1
                nbytes += len(data)
                size = 0
                dst: bytes | None = None
                for level, ctype, cdata in anc:
                    if level == SOL_UDP and ctype == UDP_GRO:
                        size = _GRO_INT.unpack_from(cdata)[0]
                    else:
                        dst = local_address([(level, ctype, cdata)])
                if 0 < size < len(data):
                    stats["udp_gro_batches"] = stats.get("udp_gro_batches", 0) + 1
                    cuts = range(0, len(data), size)
                    segments += len(cuts)
                    for i in cuts:
                        inbound(data[i : i + size], addr, family, dst, True)  # bytes slice: one copy
                else:
                    segments += 1
                    inbound(data, addr, family, dst, True)
            if self._vnet is not None:
                self._vnet.flush()
            if got:
                stats["udp_rx_recvmsg"] = stats.get("udp_rx_recvmsg", 0) + got
                traffic = state.lifetimes.traffic  # ESP bytes bound the inner bytes (lifetimes.py)
                traffic.in_bytes += nbytes
                traffic.in_packets += segments

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
        sa = self._sad_in.get(spi)
        if sa is None:
            self.state.unknown_spi(spi, addr, self.now)
            return
        try:
            if spi in self._transport_spis:  # the rebuilt header needs the outer addresses
                pkt = sa.unprotect(data, socket.inet_pton(family, addr[0]), dst)
            else:
                pkt = sa.unprotect(data)
        except EspDrop as e:
            self._count_drop(e.reason)
            return
        self._heard(spi)  # authenticated: a sign of life of the peer (RFC 7296 2.4)
        # a TCP SYN (IPv4 without options, or IPv6 with TCP next): a few byte compares per
        # packet, the clamp itself only for SYNs (unprotect returns at least a whole IP header)
        if ((pkt[9] == 6 and pkt[0] == 0x45 and len(pkt) >= 40 and pkt[33] & 0x02)
                or (pkt[6] == 6 and pkt[0] >> 4 == 6 and len(pkt) >= 60 and pkt[53] & 0x02)):
            pkt = self._clamp_inbound(spi, pkt)
        if self._vnet is not None:  # offloads: merged into GRO super-packets, written at the drain's end
            self._vnet.write(pkt)
            return
        try:  # _write_tun inlined: this runs once per received packet
            os.write(self.tun_fd, pkt)
        except OSError:
            self._count_drop(Drop.TUN_WRITE)

    def _follow_config(self) -> None:  # a Configure may have switched the TUN's virtio-net headers on
        if self.state.config.vnet_hdr and self._vnet is None:
            self._vnet = VnetTun(self.tun_fd, self.state.stats, self.state.drops)

    def _clamp_inbound(self, spi: int, pkt: bytes) -> bytes:
        """The MSS a host behind the peer offers is what hosts behind us will send it: fit it to
        the tunnel's way back, so they never send segments it cannot carry (no reliance on ICMP)."""
        state = self.state
        path = state.out.get(state.in_reqid.get(spi, 0))
        if not state.config.mss_clamp or path is None or not path.mss or not is_tcp_syn(pkt):
            return pkt
        return clamp_tcp_mss(pkt, path.mss)

    def _write_tun(self, pkt: bytes) -> None:
        if self._vnet is not None:
            return self._vnet.write_alone(pkt)
        try:
            os.write(self.tun_fd, pkt)
        except OSError:
            self._count_drop(Drop.TUN_WRITE)

    # ------------------------------------------------------------------ control channel
    def _on_control(self, link: ControlLink | None = None) -> None:
        """The daemon's link (``link`` None) or a shard's: its messages, in order, answered on it."""
        links = self._link
        msgs = links.read(link)
        if msgs is None:  # the daemon's link closed or broke: exit (a shard's is just forgotten)
            self.running = self.running and link is not None
            self.state.heard.forget(link)
            return
        links.current = link or links.primary
        self.state.heard.reader = link  # GetHeard answers per link (state.HeardSpis)
        try:
            for msg in msgs:
                self.state.handle(msg, self.now)
                self._follow_config()
                self._run_outputs()  # a trap's queue leaves before any later TUN read
        finally:
            links.current = links.primary


def _account_tun_reads(state: DataplaneState[socket.socket], n: int, nbytes: int, reads: int,
                       what: str = "tun_rx") -> None:
    """Once per TUN drain: the traffic lifetimes.py bounds, and the TUN counters."""
    traffic = state.lifetimes.traffic
    traffic.out_bytes += nbytes
    traffic.out_packets += n
    stats = state.stats
    stats[what + "_packets"] = stats.get(what + "_packets", 0) + n
    stats[what + "_bytes"] = stats.get(what + "_bytes", 0) + nbytes
    stats[what + "_wakeups"] = stats.get(what + "_wakeups", 0) + 1
    stats[what + "_reads"] = stats.get(what + "_reads", 0) + reads


def make_raw_drain(worker: Worker, sock: socket.socket) -> Callable[[], None]:
    """The receive handler of one raw ESP socket (out of Worker only for its size)."""
    recvmsg = sock.recvmsg
    family = sock.family
    inbound = worker._inbound
    v4 = family == socket.AF_INET

    def drain() -> None:
        """Receive up to ``batch`` raw ESP packets; IPv4 ones still carry their IP header."""
        state = worker.state
        got = 0
        nbytes = 0
        for _ in range(state.config.batch):
            try:
                data, anc, _flags, addr = recvmsg(MAX_PACKET, RECV_CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError:
                worker._count_drop(Drop.RECV)
                continue
            got += 1
            nbytes += len(data)
            if v4:
                ihl = (data[0] & 0x0F) * 4 if data else 0
                if ihl < 20 or len(data) < ihl:
                    worker._count_drop(Drop.RAW_SHORT)
                    continue
                inbound(data[ihl:], addr, family, data[16:20], False)
            else:
                inbound(data, addr, family, local_address(anc), False)
        if worker._vnet is not None:
            worker._vnet.flush()
        if got:
            traffic = state.lifetimes.traffic
            traffic.in_bytes += nbytes
            traffic.in_packets += got

    return drain


def make_ah_drain(worker: Worker, sock: socket.socket) -> Callable[[], None]:
    """The receive handler of one raw AH socket (kept out of Worker: AH is its own, small path)."""
    recvmsg = sock.recvmsg
    v4 = sock.family == socket.AF_INET

    def drain() -> None:
        """Receive up to ``batch`` AH packets (IPv4 with their header, IPv6 from AH on) and
        verify them; the AH SAs live in ``state.ah_inbound``, apart from ESP's."""
        state = worker.state
        ah_in = state.ah_inbound
        got = nbytes = 0
        for _ in range(state.config.batch):
            try:
                data, anc, _flags, addr = recvmsg(MAX_PACKET, RECV_CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError:
                worker._count_drop(Drop.RECV)
                continue
            got += 1
            nbytes += len(data)
            at = (data[0] & 0x0F) * 4 if v4 and data else 0
            if len(data) < at + 8:
                worker._count_drop(DropReason.SHORT)
                continue
            spi = _SPI.unpack_from(data, at + 4)[0]
            sa = ah_in.get(spi)
            if sa is None:
                state.unknown_spi(spi, addr, worker.now)
                continue
            try:
                if v4:
                    pkt = sa.unprotect(data)
                else:
                    dst = local_address(anc)
                    if dst is None:
                        worker._count_drop(Drop.RECV)
                        continue
                    pkt = sa.unprotect_v6(data, socket.inet_pton(socket.AF_INET6, addr[0]), dst)
            except EspDrop as e:
                worker._count_drop(e.reason)
                continue
            worker._heard(spi)
            worker._write_tun(pkt)
        if got:
            traffic = state.lifetimes.traffic
            traffic.in_bytes += nbytes
            traffic.in_packets += got

    return drain


class ControlLink:
    """The worker's end of the control socket: frames in, and frames out without ever
    blocking the packet loop (what the socket does not take now waits for EPOLLOUT)."""

    def __init__(self, sock: socket.socket, epoll: select.epoll, drops: dict[str, int]) -> None:
        self.sock = sock
        self.open = True  # False once the control process is gone (EOF, EPIPE)
        self._epoll = epoll
        self._drops = drops
        self._decoder = m.FrameDecoder()
        self._pending = bytearray()

    def receive(self) -> list[m.Message] | None:
        """The messages that arrived; None when the control process is gone. Raises ProtocolError."""
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.open = False
            return None
        return self._decoder.feed(data)

    def send(self, msg: m.Message) -> None:
        try:
            frame = m.encode(msg)
        except m.ProtocolError as e:  # e.g. Counters of more SAs than a frame holds: answer, never hang
            log.error("cannot send %s to the control process: %s", type(msg).__name__, e)
            ident = getattr(msg, "id", 0)
            if not ident:
                return
            frame = m.encode(m.Ack(ident, False, f"reply not sent: {e}"))
        if len(self._pending) + len(frame) > _MAX_PENDING_OUT:
            self._drops[Drop.CONTROL_OVERFLOW] = self._drops.get(Drop.CONTROL_OVERFLOW, 0) + 1
            return
        self._pending += frame
        self.flush()

    def flush(self) -> None:
        buf = self._pending
        while buf:
            try:
                sent = self.sock.send(buf)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.open = False
                    buf.clear()
                    return
                raise
            del buf[:sent]
        mask = select.EPOLLIN | (select.EPOLLOUT if buf else 0)
        with contextlib.suppress(OSError, ValueError, FileNotFoundError):
            self._epoll.modify(self.sock.fileno(), mask)


class ControlLinks:
    """Every control link of the worker: the daemon's (``primary``, the worker lives as long as
    it) and one per IKE shard past the first (``settings.ike_shards``), so a shard's installs
    reach the worker without a hop through the primary (shell/shard_dataplane.py).

    A reply (Ack, BatchAck, Counters, Heard, Totals) goes back on the link whose request is being handled
    (``current``); events go to the daemon, which routes a shard's by its reqid. Request ids
    are per link: two links may use the same id. A shard's link that closes is forgotten."""

    _REPLIES = (m.Ack, m.BatchAck, m.Counters, m.Heard, m.Totals)

    def __init__(self, control: socket.socket, shards: list[socket.socket], epoll: select.epoll,
                 drops: dict[str, int], handlers: dict[int, Callable[[], None]]) -> None:
        self.primary = ControlLink(control, epoll, drops)
        self.current = self.primary
        self.shards = [ControlLink(s, epoll, drops) for s in shards]
        self._epoll = epoll
        self._handlers = handlers

    @property
    def open(self) -> bool:
        return self.primary.open

    def register(self, on_control: Callable[..., None]) -> None:
        """``on_control()`` for the daemon's link, ``on_control(link)`` for a shard's."""
        self._epoll.register(self.primary.sock.fileno(), select.EPOLLIN)
        self._handlers[self.primary.sock.fileno()] = on_control
        for link in self.shards:
            self._epoll.register(link.sock.fileno(), select.EPOLLIN)
            self._handlers[link.sock.fileno()] = functools.partial(on_control, link)

    def hello(self, msg: m.Hello) -> None:
        for link in (self.primary, *self.shards):
            link.send(msg)

    def send(self, msg: m.Message) -> None:
        (self.current if isinstance(msg, self._REPLIES) else self.primary).send(msg)

    def flush(self) -> None:
        self.primary.flush()

    def read(self, link: ControlLink | None) -> list[m.Message] | None:
        """The messages that arrived on ``link`` (None: the daemon's); None when it is gone."""
        src = link or self.primary
        if link is not None:
            link.flush()  # a shard's EPOLLOUT lands here too: send what waits first
        try:
            msgs = src.receive()
        except m.ProtocolError as e:
            log.error("bad control message: %s", e)
            src.send(m.WorkerError(f"bad control message: {e}", fatal=True))
            msgs = None
        else:
            if msgs is None and link is None:
                log.info("control socket closed: worker exits")
        if msgs is None and link is not None:
            self._drop(link)
        return msgs

    def _drop(self, link: ControlLink) -> None:
        fd = link.sock.fileno()
        self._handlers.pop(fd, None)
        with contextlib.suppress(OSError, ValueError, FileNotFoundError):
            self._epoll.unregister(fd)
        link.open = False
        link.sock.close()
        if link in self.shards:
            self.shards.remove(link)
        log.info("an IKE shard's control link closed")


class VnetTun:
    """The TUN's side of the offloads (offload.py) while it carries virtio-net headers: reads
    become wire packets (a super-segment cut into MSS pieces), decrypted TCP is coalesced
    into GRO super-packets, everything else is written behind an all-zero header."""

    def __init__(self, fd: int, stats: dict[str, int], drops: dict[str, int]) -> None:
        self.fd = fd
        self.coalescer = TcpCoalescer()
        self._stats = stats
        self._drops = drops

    def read(self, raw: bytes) -> list[bytes] | tuple[bytes, ...]:
        """The wire packets behind one TUN read; a malformed super-segment is dropped."""
        if len(raw) < VNET_HDR_LEN:
            self._drops[Drop.OFFLOAD] = self._drops.get(Drop.OFFLOAD, 0) + 1
            return ()
        if raw[0] == 0 and raw[1] == GSO_NONE:  # the common small packet: no flags, no GSO
            return (raw[VNET_HDR_LEN:],)
        try:
            pkts = segment(parse_vnet_hdr(raw), memoryview(raw)[VNET_HDR_LEN:])
        except OffloadError:
            self._drops[Drop.OFFLOAD] = self._drops.get(Drop.OFFLOAD, 0) + 1
            return ()
        if len(pkts) > 1:
            self._stats["tun_rx_super"] = self._stats.get("tun_rx_super", 0) + 1
        return pkts

    def write(self, pkt: bytes) -> None:
        for hdr, out in self.coalescer.add(pkt):
            self.writev(hdr, out)

    def write_alone(self, pkt: bytes) -> None:
        """A packet of the state's (ICMP, a trap's queue): after what was decrypted before it."""
        self.flush()
        self.writev(ZERO_VNET_HDR, pkt)

    def flush(self) -> None:
        co = self.coalescer
        for hdr, out in co.flush():
            self.writev(hdr, out)
        self._stats["tun_tx_coalesced"] = co.coalesced
        if co.bad_segments:
            self._drops[Drop.INNER_CHECKSUM] = co.bad_segments

    def writev(self, hdr: bytes, pkt: bytes) -> None:
        try:
            os.writev(self.fd, (hdr, pkt))
        except OSError:
            self._drops[Drop.TUN_WRITE] = self._drops.get(Drop.TUN_WRITE, 0) + 1


class EspSender:
    """ESP leaving the worker: runs of equal-size datagrams to one peer go out in one
    ``sendmsg`` with UDP GSO; raw ESP is sent at once. Failures are counted, never raised."""

    def __init__(self, state: DataplaneState[socket.socket], rl: RateLimitedLogger) -> None:
        self.state = state
        self.batch = GsoBatch()
        self.sock: socket.socket | None = None  # the socket of the pending run
        self.refusals = GsoRefusals()  # destinations where the kernel said no to UDP GSO
        self._rl = rl

    def _count(self, name: str, n: int = 1, *, drop: bool = False) -> None:
        table = self.state.drops if drop else self.state.stats
        table[name] = table.get(name, 0) + n

    def add(self, path: OutPath[socket.socket], esp: bytes) -> None:
        if path.encap:
            sock = path.sock
            if sock is not self.sock or not self.batch.add(path.dest, path.local, esp):
                self.flush()
                self.sock = sock
                self.batch.add(path.dest, path.local, esp)
        else:
            self.send_raw(path, esp)

    def flush(self) -> None:
        run = self.batch.take()
        sock = self.sock
        if run is None or sock is None:
            return
        dest, local, size, parts = run
        gso = self.state.config.gso and len(parts) > 1 and self.refusals.allows(dest, size)
        try:
            if gso:
                try:
                    send_gso(sock, dest, local, size, parts)
                except OSError as e:
                    if e.errno not in GSO_REFUSED_ERRNOS:
                        raise
                    # The kernel refuses GSO for this destination (udp.py GsoRefusals): send
                    # this run one datagram each and remember, so later runs do not ask again.
                    gso = False
                    self.refusals.refused(dest, size, e.errno)
                    self._count("udp_gso_refused")
                    self._send_each(sock, dest, local, parts)
            else:
                self._send_each(sock, dest, local, parts)
        except BlockingIOError:
            self._count(Drop.SEND_BUFFER, len(parts), drop=True)
            return
        except OSError as e:
            self._count(Drop.SEND, len(parts), drop=True)
            self._rl.log(logging.WARNING, f"send:{e.errno}", "ESP send to %s failed: %s", dest[0], e.strerror)
            return
        self._count("udp_tx_packets", len(parts))
        self._count("udp_tx_sendmsg", 1 if gso else len(parts))

    @staticmethod
    def _send_each(sock: socket.socket, dest: tuple[str, int], local: bytes | None, parts: list[bytes]) -> None:
        cmsgs = [] if local is None else [pktinfo_cmsg(local)]
        for p in parts:
            sock.sendmsg([p], cmsgs, 0, dest)

    def send_raw(self, path: OutPath[socket.socket], esp: bytes) -> None:
        sock = path.sock
        try:
            if path.local is None:
                sock.sendto(esp, path.dest)
            else:
                sock.sendmsg([esp], [pktinfo_cmsg(path.local)], 0, path.dest)
        except BlockingIOError:
            self._count(Drop.SEND_BUFFER, drop=True)
            return
        except OSError as e:
            self._count(Drop.SEND, drop=True)
            self._rl.log(logging.WARNING, f"send:{e.errno}", "raw ESP send to %s failed: %s", path.dest[0], e.strerror)
            return
        self._count("raw_tx_packets")


def _version(sock: socket.socket) -> int:
    return 6 if sock.family == socket.AF_INET6 else 4


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
    p.add_argument("--ah", type=int, action="append", default=[], help="fd of a raw AH socket (repeatable)")
    p.add_argument("--index", type=int, default=0, help="this worker's index (several workers)")
    p.add_argument("--inbox", type=int, default=-1, help="fd of this worker's hand-over inbox (several workers)")
    p.add_argument("--peer", action="append", default=[], help="INDEX:FD of another worker's inbox (repeatable)")
    p.add_argument("--shard-control", type=int, action="append", default=[],
                   help="fd of an IKE shard's control socketpair end (repeatable)")
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
    handoff = None
    if args.inbox >= 0:
        peers = {int(i): _sock_from_fd(int(fd)) for i, fd in (p.split(":") for p in args.peer)}
        handoff = (args.index, _sock_from_fd(args.inbox), peers)
    worker = Worker(control, args.tun, [_sock_from_fd(fd) for fd in args.udp], [_sock_from_fd(fd) for fd in args.raw],
                    ah_socks=[_sock_from_fd(fd) for fd in args.ah],
                    shard_controls=[_sock_from_fd(fd) for fd in args.shard_control])
    if handoff is not None:
        worker.handoff = Handoff(*handoff, worker.state.stats, worker.state.drops)
    tune_gc()  # 20,000 Child SAs are ~400,000 objects: a full pass would hold installs 100-200 ms
    with contextlib.suppress(SystemExit):
        worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
