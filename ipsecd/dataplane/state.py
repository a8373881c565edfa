"""The data-plane worker's state and decisions, sans-I/O.

``DataplaneState`` holds what the worker knows -- SAD and SPD, the per-reqid output paths,
which reqid each inbound SPI serves, traps and their packet queues, the acquire and
unknown-SPI rate limits, volume/sequence lifetimes, the NAT keepalive schedule, the flow
cache, the counters -- and makes every decision that is not per-packet arithmetic. It reads
no clock and touches no socket: time comes in as ``now``, control messages and slow-path
packets come in as calls, and what must happen goes out as ``outputs`` (ESP datagrams to
send on a path, packets to write to the TUN, keepalives, control messages), drained by the
shell with ``take_outputs()``; ``get_timer()`` says when ``handle_timer(now)`` is due. This
is aioquic's shape (``handle_timer``/``get_timer``/``datagrams_to_send``) and the one the
IKE engine has.

The shell (worker.py) owns the fds and keeps the per-packet loops inline for speed: it reads
``out``, ``spd``, ``flow_cache``/``cacheable``, ``sad``, ``transport_spis``, ``drops`` and
``stats`` directly and calls in only for the slow cases (``no_sa``, ``too_big``,
``unknown_spi``). ``outbound(pkt, now)`` is the same outbound processing as a method (used
for packets leaving a trap's queue, and by tests).

Nothing here scans all SAs or all policies per control message or per tick (issue 11):
policies that defeat the flow cache are counted as they come and go, inbound SPIs are
indexed by reqid, and lifetimes, keepalives, trap-queue expiry and unknown-SPI reports are
on heaps or due times; tests/test_dataplane_state.py counts the work at 10 and 20,000 SAs.
Only two requests walk the SAs, on demand: ``GetCounters`` (every SA's counters, for
``ipsecctl``) and ``GetTotals`` (one sum per tag, for a metrics scrape; readouts.py).
"""

from __future__ import annotations

import heapq
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Generic, TypeVar

from ipsecd.dataplane import messages as m
from ipsecd.dataplane import readouts, traps
from ipsecd.dataplane.idle import IdleSweep
from ipsecd.dataplane.lifetimes import LifetimeWatch, Watched
from ipsecd.dataplane.traps import Trap, TrapQueues
from ipsecd.esp.ah import AhInboundSa, AhOutboundSa, AnyOutboundSa
from ipsecd.esp.packet import (
    IPV6_MIN_MTU,
    clamp_tcp_mss,
    fragment_ipv4,
    icmp_frag_needed,
    icmpv6_packet_too_big,
    parse_ip,
)
from ipsecd.esp.sa import DropReason, EspDrop, InboundSa, IpsecProto, Mode, OutboundSa
from ipsecd.esp.sad import Sad
from ipsecd.esp.spd import Action, Policy, Spd
from ipsecd.iana import IpProto

log = logging.getLogger("ipsecd.esp")

S = TypeVar("S")  # the shell's handle of an ESP socket (a socket.socket in the worker)

_IPV4_DF = 0x40  # flags byte: Don't Fragment (RFC 791)
_PROTO_TCP = int(IpProto.TCP)
_SYN = 0x02
_MAX_RATE_KEYS = 4096
_UNKNOWN_SAMPLES = 8  # distinct SPIs named per UnknownSpiReport
_NO_LIMITS = m.Lifetime()
FLOW_CACHE_MAX = 65536


class Drop:
    """Worker-level drop reasons that are not ESP processing results (DropReason covers those)."""

    IKE_ON_WORKER = "ike_on_worker"  # non-ESP marker reached the worker: steering is off
    BYPASS_IN_TUN = "bypass_in_tun"  # a BYPASS policy matched a packet already routed into the TUN
    TUN_WRITE = "tun_write_error"
    SEND = "send_error"
    SEND_BUFFER = "send_buffer_full"
    RECV = "recv_error"
    RAW_SHORT = "raw_short"  # raw IPv4 datagram shorter than its own header
    OFFLOAD = "offload_malformed"  # a TUN read whose virtio-net header or super-segment is unusable
    INNER_CHECKSUM = "inner_tcp_checksum"  # a decrypted TCP segment with a wrong checksum (offload.py coalescer)
    INTERNAL = "internal_error"  # a bug: logged (rate-limited), counted, never fatal
    HANDOFF = "handoff_error"  # several workers: the owner's inbox was full or gone (handoff.py)
    CONTROL_OVERFLOW = "control_overflow"  # a message did not fit the unsent control buffer
    # Packets held by a trap while IKE negotiates its SA (traps.py):
    ACQUIRE_OVERFLOW = traps.ACQUIRE_OVERFLOW
    ACQUIRE_FULL = traps.ACQUIRE_FULL
    ACQUIRE_EXPIRED = traps.ACQUIRE_EXPIRED
    ACQUIRE_REMOVED = traps.ACQUIRE_REMOVED


@dataclass(slots=True)
class OutPath(Generic[S]):
    """Everything the outbound hot path needs for one reqid, resolved once at install."""

    reqid: int
    sa: AnyOutboundSa  # AH: protect() gives what the raw AH socket sends (esp/ah.py)
    sock: S
    dest: tuple[str, int]
    local: bytes | None  # source address for IP_PKTINFO, None = let routing choose
    encap: bool
    mtu: int
    mss: int


# ------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class SendEsp(Generic[S]):
    """Send ``esp`` (SPI first) on ``path``: to ``path.dest`` from ``path.local`` over ``path.sock``."""

    path: OutPath[S]
    esp: bytes


@dataclass(frozen=True, slots=True)
class WriteTun:
    packet: bytes


@dataclass(frozen=True, slots=True)
class SendKeepalive:
    """One NAT keepalive byte to ``dest`` from the UDP 4500 socket of IP ``version`` (RFC 3948 2.3)."""

    dest: tuple[str, int]
    version: int


@dataclass(frozen=True, slots=True)
class SendControl:
    message: m.Message


@dataclass(frozen=True, slots=True)
class HandOff:
    """Several workers: a packet read from our TUN queue for a reqid another worker owns."""

    owner: int
    packet: bytes


Output = SendEsp[S] | WriteTun | SendKeepalive | SendControl | HandOff


# ------------------------------------------------------------------ small schedules


class Keepalives:
    """The NAT keepalive schedule: a heap of due times, one current entry per peer."""

    def __init__(self) -> None:
        self._peers: dict[tuple[str, int], tuple[float, int]] = {}  # dest -> (interval, generation)
        self._heap: list[tuple[float, int, tuple[str, int]]] = []
        self._gen = 0

    def __len__(self) -> int:
        return len(self._peers)

    def set(self, dest: tuple[str, int], interval: float, now: float) -> None:
        if interval <= 0:
            self._peers.pop(dest, None)
            return
        self._gen += 1
        self._peers[dest] = (interval, self._gen)
        heapq.heappush(self._heap, (now + interval, self._gen, dest))

    def _current(self, gen: int, dest: tuple[str, int]) -> bool:
        cur = self._peers.get(dest)
        return cur is not None and cur[1] == gen

    def next_due(self) -> float | None:
        heap = self._heap
        while heap and not self._current(heap[0][1], heap[0][2]):
            heapq.heappop(heap)  # stopped or rescheduled peers
        return heap[0][0] if heap else None

    def due(self, now: float) -> list[tuple[str, int]]:
        """Peers due a keepalive now; each is rescheduled one interval later."""
        heap = self._heap
        out: list[tuple[str, int]] = []
        while heap and heap[0][0] <= now:
            _t, gen, dest = heapq.heappop(heap)
            if self._current(gen, dest):
                out.append(dest)
        for dest in out:
            interval, gen = self._peers[dest]
            heapq.heappush(heap, (now + interval, gen, dest))
        return out


class UnknownSpiReports:
    """ESP for SPIs we do not have, summed over an interval: one report per interval at most,
    whatever the number of packets or SPIs (issue 13: no message per spoofed packet)."""

    def __init__(self) -> None:
        self.packets = 0
        self._samples: dict[int, list[Any]] = {}  # spi -> [source address, port, count]
        self._last: float | None = None
        self.due: float | None = None  # when the next report goes out (None: nothing to report)

    def note(self, spi: int, src: str, port: int, now: float, interval: float) -> None:
        self.packets += 1
        sample = self._samples.get(spi)
        if sample is not None:
            sample[2] += 1
        elif len(self._samples) < _UNKNOWN_SAMPLES:
            self._samples[spi] = [src, port, 1]
        if self.due is None:
            self.due = now if self._last is None else max(now, self._last + interval)

    def report(self, now: float) -> m.UnknownSpiReport | None:
        if self.due is None or now < self.due:
            return None
        rep = m.UnknownSpiReport(self.packets, tuple(m.UnknownSpi(spi, s[0], s[1], s[2])
                                                     for spi, s in self._samples.items()))
        self.packets, self._samples, self.due, self._last = 0, {}, None, now
        return rep


class HeardSpis:
    """Inbound SPIs that authenticated a packet, for DPD's poll (GetHeard, RFC 7296 2.4).

    The receive path adds the SPI to ``fresh`` (one set.add per packet; the set is never
    replaced, so the worker binds its ``add`` once). A GetHeard takes what its reader (the
    control link it came on: the daemon's or an IKE shard's) has not seen yet: ``fresh`` is
    first added to every reader's pending set, then the asker's goes out and is emptied. So
    each link sees every SPI once per its own poll and one shard's poll never hides an SPI
    from another (a shard ignores the SPIs it does not own, ike/manager.py ``owner_of``).
    Nothing scans the SAD: a poll costs what was heard. Bounded by the live inbound SPIs
    (``discard`` on removal; a closed link is forgotten)."""

    __slots__ = ("_readers", "fresh", "reader")

    def __init__(self) -> None:
        self.fresh: set[int] = set()
        self._readers: dict[object, set[int]] = {}  # reader -> heard since its last take
        self.reader: object = None  # whose request is being handled (the worker sets it; None: the daemon)

    def take(self) -> tuple[int, ...]:
        fresh = self.fresh
        if fresh:
            for pending in self._readers.values():
                pending |= fresh
        mine = self._readers.get(self.reader)
        out = tuple(fresh if mine is None else mine)
        self._readers[self.reader] = set()
        fresh.clear()
        return out

    def discard(self, spi: int) -> None:
        self.fresh.discard(spi)
        for pending in self._readers.values():
            pending.discard(spi)

    def forget(self, reader: object) -> None:
        self._readers.pop(reader, None)


# ------------------------------------------------------------------ the state


class DataplaneState(Generic[S]):
    """What the worker knows and decides (module docstring); ``S`` is the shell's socket type."""

    def __init__(self, config: m.WorkerConfig, sockets: Mapping[tuple[bool, int], S],
                 ah_sockets: Mapping[int, S] | None = None) -> None:
        self.config = config
        self._sockets = dict(sockets)  # (UDP-encapsulated?, IP version) -> socket for ESP
        self._ah_sockets = dict(ah_sockets or {})  # IP version -> raw AH socket (IPv4: IP_HDRINCL)
        self.sad = Sad()
        self.spd = Spd()
        self.out: dict[int, OutPath[S]] = {}
        self.in_reqid: dict[int, int] = {}  # inbound SPI -> reqid
        self._in_by_reqid: dict[int, tuple[int, ...]] = {}  # reqid -> its inbound SPIs (one or two)
        self.transport_spis: set[int] = set()  # their rebuilt header needs the outer addresses
        # AH SAs by inbound SPI, apart from the SAD's ESP table so the ESP receive path never
        # meets one (the SPI spaces are one: IKE allocates them from one pool)
        self.ah_inbound: dict[int, AhInboundSa] = {}
        self.heard = HeardSpis()  # inbound SPIs that received packets, for DPD's poll
        self.tags = readouts.TagTotals()  # per (connection, child) totals for a metrics scrape
        self.drops: dict[str, int] = {}
        self.stats: dict[str, int] = {}
        # Flow cache: while no policy looks at protocol or ports, the decision depends on the
        # address pair alone, and a dict probe beats the SPD walk 5-10x (worker._drain_tun).
        self.flow_cache: dict[bytes, Policy] = {}
        self.cacheable = True
        self._port_policies = 0  # SPD entries that look at protocol or ports
        self._spd_changed = False
        self._sa_policies: dict[int, list[Policy]] = {}  # SPD entries InstallSa added, per reqid
        self.owners: dict[int, int] = {}  # reqid -> the worker owning its SAs, if not this one (SetOwner)
        self.traps = TrapQueues(self.drops, self.stats)
        self.lifetimes = LifetimeWatch()
        self.idle = IdleSweep()
        self.keepalives = Keepalives()
        self.unknown = UnknownSpiReports()
        self._acquire_sent: dict[int, float] = {}
        self._lifetime_checked = float("-inf")
        self.outputs: list[Output[S]] = []
        self.stopping = False  # Shutdown received

    def take_outputs(self) -> list[Output[S]]:
        out, self.outputs = self.outputs, []
        return out

    def _emit(self, msg: m.Message) -> None:
        self.outputs.append(SendControl(msg))

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _stat(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    # ------------------------------------------------------------------ control messages
    def handle(self, msg: m.Message, now: float) -> None:
        """Apply one control message; every request is answered (Ack, BatchAck, Counters or Heard)."""
        try:
            if isinstance(msg, m.Batch):
                self._emit(m.BatchAck(tuple(self._apply(r, now) for r in msg.requests)))
            elif isinstance(msg, m.GetCounters):
                self._emit(self.counters(msg.id))
            elif isinstance(msg, m.GetHeard):
                self._emit(m.Heard(msg.id, self.heard.take()))
            elif isinstance(msg, m.GetTotals):
                self._emit(readouts.totals(self, msg.id))
            elif isinstance(msg, m.GetSaCounters):
                self._emit(readouts.sa_counters(self, msg))
            else:
                self._emit(self._apply(msg, now))
        finally:
            if self._spd_changed:  # the cache goes only when a decision may have changed
                self._spd_changed = False
                self.flow_cache.clear()
                self.cacheable = self._port_policies == 0

    def _apply(self, msg: object, now: float) -> m.Ack:
        ident = getattr(msg, "id", 0)
        handler = _HANDLERS.get(type(msg))
        try:
            if handler is None:
                raise ValueError(f"unexpected message {type(msg).__name__}")
            handler(self, msg, now)
        except Exception as e:  # a bad request is refused, never fatal to the tunnel
            log.warning("control request %s failed: %s", type(msg).__name__, e)
            return m.Ack(ident, False, f"{type(e).__name__}: {e}")
        return m.Ack(ident)

    def _configure(self, msg: m.Configure, now: float) -> None:
        self.config = msg.config

    def _shutdown(self, msg: m.Shutdown, now: float) -> None:
        self.stopping = True

    def _spd_add(self, pol: Policy) -> None:
        self.spd.add(pol)
        self._port_policies += _looks_at_ports(pol)
        self._spd_changed = True

    def _spd_remove(self, pol: Policy) -> None:
        if self.spd.remove(pol):
            self._port_policies -= _looks_at_ports(pol)
            self._spd_changed = True

    def _install(self, msg: m.InstallSa, now: float) -> None:
        """Install both halves; on a rekey the new outbound SA replaces the old one of the reqid."""
        reqid = msg.reqid
        self.tags.set(reqid, msg.tag)
        new_in: InboundSa | AhInboundSa | None = None
        if msg.inbound is not None:
            new_in = AhInboundSa(msg.inbound) if msg.inbound.protocol is IpsecProto.AH else InboundSa(msg.inbound)
        path = self._make_path(msg) if msg.outbound is not None else None
        if new_in is not None:
            spi = new_in.spi
            if spi in self.ah_inbound or (isinstance(new_in, AhInboundSa) and spi in self.sad.inbound):
                raise ValueError(f"inbound SPI 0x{spi:08x} already installed")
            if isinstance(new_in, AhInboundSa):
                self.ah_inbound[spi] = new_in
            else:
                self.sad.add_inbound(new_in)  # refuses a duplicate SPI before anything else changed
            self.in_reqid[spi] = reqid
            self._in_by_reqid[reqid] = (*self._in_by_reqid.get(reqid, ()), spi)
            if new_in.params.mode is Mode.TRANSPORT:
                self.transport_spis.add(spi)
            if msg.lifetime != _NO_LIMITS:
                self.lifetimes.watch(Watched("in", reqid, spi, new_in.counters, msg.lifetime))
        if path is not None:
            if (old := self.sad.add_outbound(reqid, path.sa)) is not None:  # a rekey replaced it
                self.tags.retire(reqid, True, old.counters)
            self.out[reqid] = path
            sa = path.sa
            self.lifetimes.watch(Watched("out", reqid, sa.spi, sa.counters, msg.lifetime, sa))  # seq at least
        # The SA's own SPD entries, once per reqid (a rekey repeats them). They are kept apart
        # from a trap's entries, even when equal, so deleting the SA leaves the trap intact.
        owned = self._sa_policies.setdefault(reqid, [])
        for pol in msg.policies:
            if pol not in owned:
                self._spd_add(pol)
                owned.append(pol)
        if not owned:
            del self._sa_policies[reqid]
        trap = self.traps.get(reqid)
        if path is not None and trap is not None and trap.queue:
            self._send_queued(trap, now)  # before any later TUN read: order is kept

    def _make_path(self, msg: m.InstallSa) -> OutPath[S]:
        params = msg.outbound
        assert params is not None
        if params.protocol is IpsecProto.AH:
            return self._make_ah_path(msg)
        sock = self._sockets.get((params.encap, params.remote_addr.version))
        if sock is None:
            kind = "UDP 4500" if params.encap else "raw ESP"
            raise ValueError(f"no {kind} socket for IPv{params.remote_addr.version}")
        dest = (sys.intern(str(params.remote_addr)), params.remote_port if params.encap else 0)  # shared by its SAs
        local = None if params.local_addr.is_unspecified else params.local_addr.packed
        # TCP MSS = MTU - IP header - TCP header (RFC 9293 3.7.1), for the inner family we
        # cannot know per SA: use the IPv4 value; IPv6 SYNs get 20 bytes more room than ideal.
        mss = 0 if msg.mss_clamp is None else (msg.mss_clamp or max(536, msg.mtu - 40))
        return OutPath(msg.reqid, OutboundSa(params), sock, dest, local, params.encap, msg.mtu, mss)

    def _make_ah_path(self, msg: m.InstallSa) -> OutPath[S]:
        """An AH SA's path: the raw AH socket. The SA writes the source address into the packet
        (its ICV covers it): IPv4 goes out with IP_HDRINCL, so no IP_PKTINFO; IPv6 takes it as
        IPV6_PKTINFO, so the kernel's header carries the address the ICV was computed over."""
        params = msg.outbound
        assert params is not None
        version = params.remote_addr.version
        sock = self._ah_sockets.get(version)
        if sock is None:
            raise ValueError(f"no raw AH socket for IPv{version}")
        sa = AhOutboundSa(params)
        local = params.local_addr.packed if version == 6 else None
        mss = 0 if msg.mss_clamp is None else (msg.mss_clamp or max(536, msg.mtu - 40))
        return OutPath(msg.reqid, sa, sock, (str(params.remote_addr), 0), local, False, msg.mtu, mss)

    def _update_peer(self, msg: m.UpdateSaPeer, now: float) -> None:
        path = self.out.get(msg.reqid)
        if path is None:
            raise KeyError(f"no outbound SA for reqid {msg.reqid}")
        if isinstance(path.sa, AhOutboundSa):  # its ICV covers the addresses: a new SA is needed
            raise ValueError(f"the AH SA of reqid {msg.reqid} cannot change its addresses")
        path.dest = (str(msg.remote_addr), msg.remote_port if path.encap else 0)
        if msg.local_addr is not None:
            path.local = None if msg.local_addr.is_unspecified else msg.local_addr.packed

    def _delete(self, msg: m.DeleteSa, now: float) -> None:
        if msg.reqid is not None:
            self._remove_out(msg.reqid)
            if msg.policies:
                # only the SA's own entries: a trap of the reqid stays armed with its own, and
                # the next packet acquires again
                for pol in self._sa_policies.pop(msg.reqid, ()):
                    self._spd_remove(pol)
            if not msg.inbound_spis:
                for spi in list(self._in_by_reqid.get(msg.reqid, ())):
                    self._remove_in(spi)
        for spi in msg.inbound_spis:
            self._remove_in(spi)

    def _remove_out(self, reqid: int) -> None:
        self.sad.remove(reqid=reqid)
        if (path := self.out.pop(reqid, None)) is not None:
            self.tags.retire(reqid, True, path.sa.counters)  # its bytes stay in the totals
        self.lifetimes.forget("out", reqid)

    def _remove_in(self, spi: int) -> None:
        sa: Any = self.sad.inbound.get(spi) or self.ah_inbound.get(spi)
        self.sad.remove(inbound_spi=spi)
        self.ah_inbound.pop(spi, None)
        reqid = self.in_reqid.pop(spi, None)
        if sa is not None:
            self.tags.retire(reqid, False, sa.counters)
        if reqid is not None and (rest := tuple(s for s in self._in_by_reqid.pop(reqid, ()) if s != spi)):
            self._in_by_reqid[reqid] = rest
        self.transport_spis.discard(spi)
        self.heard.discard(spi)
        self.lifetimes.forget("in", spi)

    def _install_trap(self, msg: m.InstallTrap, now: float) -> None:
        for pol in msg.policies:
            if pol.action is not Action.PROTECT or pol.sa_ref != msg.reqid:
                raise ValueError(f"a trap for reqid {msg.reqid} takes only PROTECT policies with that sa_ref")
        for pol in self.traps.arm(msg.reqid, msg.policies):  # replaced: an SA's own entries stay
            self._spd_remove(pol)
        for pol in msg.policies:
            self._spd_add(pol)

    def _remove_trap(self, msg: m.RemoveTrap, now: float) -> None:
        for pol in self.traps.disarm(msg.reqid):  # one entry each: equal entries of an SA remain its own
            self._spd_remove(pol)

    def _set_keepalive(self, msg: m.SetKeepalive, now: float) -> None:
        self.keepalives.set((str(msg.peer), msg.port), msg.interval, now)

    def counters(self, ident: int = 0) -> m.Counters:
        return readouts.counters(self, ident)

    # ------------------------------------------------------------------ outbound slow paths
    def outbound(self, pkt: bytes, now: float) -> int:
        """One packet from the TUN, as worker._drain_tun processes it inline; 1 if it was
        protected (a SendEsp output), else 0 (counted, or held by a trap)."""
        t = self.lifetimes.traffic
        t.out_bytes += len(pkt)
        t.out_packets += 1
        return self._protect_one(pkt, now)

    def _protect_one(self, pkt: bytes, now: float) -> int:
        pol = self.spd.lookup_outbound(pkt)
        if pol is None:
            self._drop(DropReason.NO_POLICY)
            return 0
        if pol.action is not Action.PROTECT:
            self._drop(DropReason.DISCARD_POLICY if pol.action is Action.DISCARD else Drop.BYPASS_IN_TUN)
            return 0
        path = self.out.get(pol.sa_ref)  # type: ignore[arg-type]
        if path is None:
            self.no_sa(pol, pkt, now)
            return 0
        try:
            if len(pkt) > path.mtu:
                before = len(self.outputs)
                if self.too_big(pkt, path):
                    return sum(isinstance(o, SendEsp) for o in self.outputs[before:])
            if self.config.mss_clamp and path.mss and is_tcp_syn(pkt):
                pkt = clamp_tcp_mss(pkt, path.mss)
            esp = path.sa.protect(pkt)
        except EspDrop as e:
            self._drop(e.reason)
            return 0
        self.outputs.append(SendEsp(path, esp))
        return 1

    def too_big(self, pkt: bytes, path: OutPath[S]) -> bool:
        """Oversized inner packet: True when it was dealt with here and must not be sent as is.

        IPv4 with DF and IPv6 packets over 1280 octets get "fragmentation needed" (RFC 1191) /
        "packet too big" (RFC 8201, RFC 4443 3.2) back into the TUN. IPv4 without DF is fragmented
        *before* encryption (RFC 4301 8.1 leaves the choice; strongSwan's libipsec sends it
        whole): each fragment goes in its own ESP packet that fits the path, so the tunnel
        works across paths that drop IP fragments, which outer fragmentation would rely on.
        Transport mode cannot carry fragments (esp/sa.py): there the packet goes out whole.
        """
        version = pkt[0] >> 4
        if version == 4 and not pkt[6] & _IPV4_DF:
            pieces = fragment_ipv4(pkt, path.mtu) if path.sa.params.mode is Mode.TUNNEL else None
            if pieces is None:
                return False
            for piece in pieces:
                self.outputs.append(SendEsp(path, path.sa.protect(piece)))
            self._stat("inner_fragmented")
            self._stat("inner_fragments", len(pieces))
            return True
        if version == 6 and len(pkt) <= IPV6_MIN_MTU:
            # RFC 8200 5, RFC 2473 7.2: an IPv6 tunnel carries 1280 octets whatever its path; below
            # that the outer packet is fragmented (the ESP socket allows it), a Packet Too Big
            # (never below 1280) would only make the sender resend the same size into a black hole
            return False
        self._drop(DropReason.TOO_BIG)
        # The ICMP error needs a source the host does not own (else it is a martian arriving
        # on the TUN): a configured one, or the unreachable destination itself.
        if version == 4:
            src4 = self.config.icmp_source4 or (pkt[16:20] if len(pkt) >= 20 else None)
            reply = icmp_frag_needed(pkt, path.mtu, src4) if src4 is not None else None
        else:
            src6 = self.config.icmp_source6 or (pkt[24:40] if len(pkt) >= 40 else None)
            reply = icmpv6_packet_too_big(pkt, path.mtu, src6) if src6 is not None else None
        if reply is not None:
            self.outputs.append(WriteTun(reply))
            self._stat("icmp_too_big_sent")
        return True

    def no_sa(self, pol: Policy, pkt: bytes, now: float) -> None:
        """A PROTECT policy matched but its SA is missing: hold the packet if the reqid is
        trapped (else count it as NO_SA) and tell IKE (RFC 4301 5.1 / RFC 7296 1.3)."""
        reqid = pol.sa_ref
        trap = self.traps.get(reqid) if reqid is not None else None
        if trap is None or reqid is None:
            self._drop(DropReason.NO_SA)
        else:
            self.traps.enqueue(trap, reqid, pkt, now, self.config)
        self._acquire(pol, pkt, now)

    def _acquire(self, pol: Policy, pkt: bytes, now: float) -> None:
        """Tell IKE a trap policy was hit, at most once per ``acquire_interval`` per reqid."""
        reqid = pol.sa_ref
        if reqid is None:
            return
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
        self._emit(m.Acquire(reqid, ip_address(src), ip_address(dst), proto, sport, dport))

    def _send_queued(self, trap: Trap, now: float) -> None:
        """The SA of a trapped reqid arrived: protect what waited, in arrival order.

        Each packet goes through the SPD again (the negotiated, possibly narrowed, policies
        are in place now), exactly as if it had just been read from the TUN.
        """
        timeout = self.config.acquire_queue_timeout
        traffic = self.lifetimes.traffic
        sent = 0
        for arrived, pkt in self.traps.take(trap):
            if arrived + timeout <= now:
                self._drop(Drop.ACQUIRE_EXPIRED)
                continue
            # counted into the traffic bound again: it was read before the SA's watch began
            traffic.out_bytes += len(pkt)
            traffic.out_packets += 1
            sent += self._protect_one(pkt, now)
        self._stat("acquire_queue_sent", sent)

    # ------------------------------------------------------------------ inbound slow path
    def unknown_spi(self, spi: int, addr: tuple[Any, ...], now: float) -> None:
        """ESP for an SPI we do not have: counted, and summed into the next UnknownSpiReport."""
        self._drop(DropReason.UNKNOWN_SPI)
        self.unknown.note(spi, str(addr[0]), addr[1] if len(addr) > 1 else 0, now, self.config.unknown_spi_interval)

    # ------------------------------------------------------------------ timers
    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due next; None when nothing is scheduled. Cheap: the shell
        asks once per turn of its loop."""
        lifetime = self._lifetime_checked + self.config.lifetime_check_interval if self.lifetimes.pending() else None
        times = [t for t in (self.keepalives.next_due(), self.traps.next_expiry(), self.unknown.due, lifetime,
                             self.idle.due(self.sad, self.lifetimes.traffic.packets)) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Run what is due: O(1) when nothing is, O(what is due) otherwise."""
        for dest in self.keepalives.due(now):
            self.outputs.append(SendKeepalive(dest, 6 if ":" in dest[0] else 4))
        self.traps.expire(now, self.config.acquire_queue_timeout)
        report = self.unknown.report(now)
        if report is not None:
            self._emit(report)
        if now >= self._lifetime_checked + self.config.lifetime_check_interval and self.lifetimes.pending():
            self._lifetime_checked = now
            self._check_lifetimes()
        self.idle.run(self.sad, now, self.lifetimes.traffic.packets)  # idle SAs' cipher contexts, a slice (idle.py)

    def _check_lifetimes(self) -> None:
        """Soft limits raise an event once; hard limits also remove the SA (RFC 4301 4.4.2.1)."""
        for w, kind, what in self.lifetimes.check():
            c = w.counters
            self._emit(m.LifetimeReached(w.reqid, w.spi, w.direction, kind, what, c.bytes, c.packets))
            if kind == "hard":
                if w.direction == "out":
                    self._remove_out(w.reqid)
                else:
                    self._remove_in(w.spi)


def _set_owner(state: DataplaneState[Any], msg: m.SetOwner, now: float) -> None:
    """Several workers (handoff.py): the reqid's SA pair lives in worker ``msg.owner``.

    A worker that owned it before (a rekey moved the pair: the new inbound SPI chose another
    worker) stops using its outbound SA at once -- the new owner's outbound SA has taken over,
    so sequence numbers stay one sender's (RFC 4303 3.3.3); its old inbound SA stays until
    IKE deletes it. Packets a trap held here go to the owner, in their order.
    """
    if msg.owner < 0:
        state.owners.pop(msg.reqid, None)
        return
    state.owners[msg.reqid] = msg.owner
    if msg.reqid in state.out:
        state._remove_out(msg.reqid)
    trap = state.traps.get(msg.reqid)
    if trap is not None and trap.queue:
        state.outputs.extend(HandOff(msg.owner, pkt) for _arrived, pkt in state.traps.take(trap))


def _delete(state: DataplaneState[Any], msg: m.DeleteSa, now: float) -> None:
    state._delete(msg, now)
    if msg.reqid is not None and msg.policies:
        state.owners.pop(msg.reqid, None)  # the reqid is gone: no hand-over left for it
        if msg.reqid not in state.out and msg.reqid not in state._in_by_reqid:
            state.tags.forget(msg.reqid)  # its SAs were retired under its tag just now


_HANDLERS: dict[type, Callable[[DataplaneState[Any], Any, float], None]] = {
    m.Configure: DataplaneState._configure,
    m.InstallSa: DataplaneState._install,
    m.UpdateSaPeer: DataplaneState._update_peer,
    m.DeleteSa: _delete,
    m.SetOwner: _set_owner,
    m.InstallTrap: DataplaneState._install_trap,
    m.RemoveTrap: DataplaneState._remove_trap,
    m.SetKeepalive: DataplaneState._set_keepalive,
    m.Shutdown: DataplaneState._shutdown,
}


def _looks_at_ports(pol: Policy) -> bool:
    """Whether a policy decides by more than the address pair (then the flow cache is off)."""
    return not (pol.proto == 0 and pol.local.any_port and pol.remote.any_port)


def is_tcp_syn(pkt: bytes) -> bool:
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
