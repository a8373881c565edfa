"""All IKE SAs of the daemon: dispatch by SPI, responder admission and cookies, initiation.

Still sans-I/O: datagrams and time in, datagrams, timers and events out. One
bad datagram never stops the others: every exception is caught per packet,
counted and logged at a rate-limited level.

Ordering contract for the owner (the daemon): after each ``receive_datagram``
or ``handle_timer`` call, drain ``next_event()`` FIRST and install the inbound
half of every ChildSaEstablished before sending what ``datagrams_to_send()``
returns for that call. The responder of a CREATE_CHILD_SA emits the new SA in
the same call that queues its response; the peer may send ESP on the new SA
as soon as that response arrives (RFC 7296 2.8 make-before-break).

IKE SA rekeying (RFC 7296 1.3.2) creates a new IkeSa with a NEW ike_sa_id;
IkeSaRekeyed(old id -> new id) says the Child SAs moved, the old SA then
closes with IkeSaClosed(replaced_by=new id). Connection names stay, so
``terminate(name)`` and ``list_sas()`` keep working across rekeys.

On-demand SAs (traps, RFC 4301 5.1 / RFC 7296 1.3): the owner reserves a stable
reqid per (connection, child) with ``assign_reqid`` and arms the data-plane trap
with it; every Child SA of that child then carries this reqid, whoever
initiates it, so the trap's policies and queued packets meet the SA. The data
plane's Acquire becomes ``acquire(reqid, now, trigger)``, which starts at most
one negotiation per trapped child at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.events import ChildSaDeleted, ChildSaEstablished, Endpoint, Event, IkeSaClosed, IkeSaEstablished
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.message import Message, decode_header, decode_message, encode_message
from ipsecd.ike.payloads import NoncePayload, NotifyPayload
from ipsecd.ike.settings import IkeSettings
from ipsecd.ike.ts import TriggerPacket
from ipsecd.ratelimit import RateLimitedLogger

log = logging.getLogger("ipsecd.ike")

COOKIE_VERSION = b"\x01"
# RFC 7296 2.21.4: unprotected INVALID_IKE_SPI answers, at most this many per second
INVALID_SPI_RATE = 10


@dataclass
class IkeManager:
    connections: Sequence[IkeSettings]
    now: float
    rng: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    # remote address -> our source address, for connections without local_addrs
    source_for: Callable[[str], str] = field(default=lambda remote: "0.0.0.0", repr=False)
    cookie_threshold: int = 100  # half-open SAs before we demand cookies (RFC 7296 2.6)
    max_half_open: int = 5000

    sas: dict[int, IkeSa] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    _by_spi: dict[bytes, IkeSa] = field(default_factory=dict)
    _half_open: dict[tuple[bytes, str], IkeSa] = field(default_factory=dict)
    _spis_in: set[bytes] = field(default_factory=set)
    _next_id: int = 1
    _next_reqid: int = 1
    _out: list[tuple[bytes, Endpoint, Endpoint]] = field(default_factory=list)
    _events: deque[Event] = field(default_factory=deque)
    _cookie_secret: bytes = b""
    _invalid_spi_window: tuple[int, int] = (0, 0)  # (second, answers sent in it)
    _fixed_reqids: dict[tuple[str, str], int] = field(default_factory=dict)  # (connection, child) -> reqid
    _fixed_owner: dict[int, tuple[str, str]] = field(default_factory=dict)  # reqid -> (connection, child)

    def __post_init__(self) -> None:
        self._cookie_secret = self.rng(32)
        self._rl = RateLimitedLogger(log)

    # ------------------------------------------------------------------ API
    def connection(self, name: str) -> IkeSettings | None:
        for c in self.connections:
            if c.name == name:
                return c
        return None

    def initiate(self, name: str, now: float, *, trigger: TriggerPacket | None = None,
                 child: str | None = None) -> IkeSa:
        """Start a new IKE SA of connection ``name``.

        Without ``child`` every configured child is negotiated (the first in IKE_AUTH, the
        others by CREATE_CHILD_SA); with it only that one. ``trigger`` is the packet of an
        acquire: its host pair goes first in the (first) child's TSi/TSr (RFC 7296 2.9).
        The daemon normally calls ``acquire`` instead, which also suppresses duplicates.
        """
        conn = self.connection(name)
        if conn is None:
            raise KeyError(name)
        if not conn.remote_addrs:
            raise ValueError(f"connection {name} has no concrete remote address to initiate to")
        kids = None
        if child is not None:
            wanted = conn.child(child)
            if wanted is None:
                raise KeyError(f"{name}/{child}")
            kids = [wanted]
        remote = (conn.remote_addrs[0], conn.remote_port)
        local_ip = conn.local_addrs[0] if conn.local_addrs else self.source_for(remote[0])
        sa = IkeSa(conn, self._alloc_id(), True, (local_ip, 500), remote, now, rng=self.rng,
                   spi_allocator=self._alloc_spi, reqid_allocator=self._alloc_reqid, id_allocator=self._alloc_id,
                   has_contact=self._has_contact, fixed_reqid=self.reqid_for)
        self._register(sa)
        sa.initiate(kids, trigger=trigger)
        self._collect(sa)
        return sa

    # -- traps (on-demand Child SAs, RFC 4301 5.1 / RFC 7296 1.3)
    def assign_reqid(self, name: str, child: str, reqid: int | None = None) -> int:
        """The stable reqid of (connection, child), reserved on first use.

        Every Child SA of that child, initiated by us or by the peer, in IKE_AUTH or
        CREATE_CHILD_SA, then carries it (rekeys keep it anyway), so a data-plane trap
        armed with it sees its queued packets sent when the SA is installed. ``reqid``
        adopts a number already in use (e.g. the reqid of a live Child SA that is to be
        trapped when it closes); by default a fresh one comes from the same counter as
        the dynamic reqids, so the two never clash. Idempotent.
        """
        key = (name, child)
        have = self._fixed_reqids.get(key)
        if have is not None and (reqid is None or reqid == have):
            return have
        if have is not None:
            del self._fixed_owner[have]
        if reqid is None:
            reqid = self._alloc_reqid()
        elif reqid in self._fixed_owner:
            raise ValueError(f"reqid {reqid} is already fixed for {'/'.join(self._fixed_owner[reqid])}")
        self._fixed_reqids[key] = reqid
        self._fixed_owner[reqid] = key
        return reqid

    def release_reqid(self, name: str, child: str | None = None) -> list[int]:
        """Forget the fixed reqids of a connection (one child, or all): reload or removal.

        Returns the reqids released (the daemon removes their traps). Live Child SAs keep
        their reqid; new ones get fresh reqids.
        """
        gone = [key for key in self._fixed_reqids if key[0] == name and (child is None or key[1] == child)]
        out = []
        for key in gone:
            reqid = self._fixed_reqids.pop(key)
            self._fixed_owner.pop(reqid, None)
            out.append(reqid)
        return out

    def reqid_for(self, name: str, child: str) -> int | None:
        """The fixed reqid of (connection, child), None when it has none."""
        return self._fixed_reqids.get((name, child))

    def acquire(self, reqid: int, now: float, trigger: TriggerPacket | None = None) -> IkeSa | None:
        """The data plane held a packet for trapped ``reqid``: get its Child SA negotiated.

        At most one negotiation per trapped child: the acquire is ignored (counted as
        ``acquires_ignored``) while a Child SA of it exists, while one of our IKE SAs is
        creating it, or while the peer is still setting up an IKE SA of the connection
        (its IKE_AUTH may well carry this child). The worker repeats acquires every
        ``acquire_interval`` while packets keep coming, so a failed or refused negotiation
        is retried on the next one. An established IKE SA of the connection (or one we are
        still initiating) gets a CREATE_CHILD_SA; otherwise a new IKE SA starts with just
        this child. Returns the IKE SA that negotiates, or None when nothing was started.
        """
        self.now = now
        key = self._fixed_owner.get(reqid)
        conn = self.connection(key[0]) if key is not None else None
        child = conn.child(key[1]) if conn is not None and key is not None else None
        if conn is None or child is None:
            self._count("acquires_unknown")
            self._rl.log(logging.INFO, "acquire_unknown", "acquire for reqid %d, which no trapped child has", reqid)
            return None
        live = [sa for sa in self.sas.values() if sa.settings.name == conn.name and sa.state != IkeState.CLOSED]
        for sa in live:
            busy = sa.pending_child(child.name) or any(c.event.reqid == reqid for c in sa.children)
            peer_setting_up = not sa.initiator and sa.state in (IkeState.CREATED, IkeState.CONNECTING)
            if busy or peer_setting_up:
                self._count("acquires_ignored")
                return None
        self._count("acquires")
        for sa in live:
            if sa.state == IkeState.ESTABLISHED or (sa.state == IkeState.CONNECTING and sa.initiator):
                sa.now = now
                sa.create_child(child, trigger=trigger)
                self._collect(sa)
                return sa
        try:
            return self.initiate(conn.name, now, trigger=trigger, child=child.name)
        except ValueError as e:  # e.g. a responder-only connection (remote %any)
            self._rl.log(logging.WARNING, f"acquire:{conn.name}", "cannot act on an acquire for %s: %s",
                         conn.name, e)
            return None

    def terminate(self, name: str, now: float) -> int:
        """Delete every IKE SA of a connection; returns how many."""
        n = 0
        for sa in list(self.sas.values()):
            if sa.settings.name == name and sa.state != IkeState.CLOSED:
                sa.now = now
                sa.delete("deleted by request")
                self._collect(sa)
                n += 1
        return n

    def update_connections(self, connections: Sequence[IkeSettings]) -> None:
        self.connections = connections

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        self.now = now
        try:
            self._receive(data, local, remote, now)
        except RemoteProtocolError as e:
            self._drop("malformed", remote, str(e))
        except Exception as e:  # a bug must not take the daemon down: count it and go on
            self._drop("internal_error", remote, f"{type(e).__name__}: {e}")
            log.debug("internal error on a datagram from %s", remote[0], exc_info=True)

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint, Endpoint]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        timers = [t for sa in self.sas.values() if (t := sa.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        for sa in list(self.sas.values()):
            t = sa.get_timer()
            if t is not None and t <= now:
                sa.handle_timer(now)
                self._collect(sa)
            if sa.reauth_due:
                sa.reauth_due = False
                self.reauthenticate(sa.ike_sa_id, now)

    def reauthenticate(self, ike_sa_id: int, now: float) -> IkeSa | None:
        """Make-before-break reauthentication (RFC 7296 2.8): a new IKE SA with full IKE_AUTH
        and every Child SA again, under the same reqids; the old IKE SA is deleted once the
        new one has all of them (see _finish_reauth), so traffic never lacks an SA."""
        old = self.sas.get(ike_sa_id)
        if old is None or old.state != IkeState.ESTABLISHED:
            return None
        conn = self.connection(old.settings.name) or old.settings
        if not conn.remote_addrs and not old.initiator:
            log.info("IKE SA %d (%s): reauth_time reached, but we cannot initiate to a %%any peer: "
                     "the peer has to reauthenticate", old.ike_sa_id, conn.name)
            return None
        kids = []
        for c in old.children:
            cfg = conn.child(c.event.child)
            if cfg is not None and cfg not in kids:
                self.assign_reqid(conn.name, cfg.name, c.event.reqid)  # the new Child SAs keep the reqids
                kids.append(cfg)
        remote = (conn.remote_addrs[0], conn.remote_port) if conn.remote_addrs else (old.remote[0], 500)
        new = IkeSa(conn, self._alloc_id(), True, (old.local[0], 500), remote, now, rng=self.rng,
                    spi_allocator=self._alloc_spi, reqid_allocator=self._alloc_reqid, id_allocator=self._alloc_id,
                    has_contact=self._has_contact, fixed_reqid=self.reqid_for, reauth_of=old.ike_sa_id)
        old.log.info("reauthenticating: IKE SA %d will replace this one", new.ike_sa_id)
        self._register(new)
        new.initiate(kids)
        self._collect(new)
        return new

    def _finish_reauth(self, sa: IkeSa) -> None:
        """The replacement is up with all its Child SAs: now the old IKE SA may go."""
        if sa.reauth_of is None or sa.state != IkeState.ESTABLISHED or not sa.idle:
            return
        old = self.sas.get(sa.reauth_of)
        sa.reauth_of = None
        if old is not None and old.state == IkeState.ESTABLISHED:
            old.delete("reauthenticated")
            self._collect(old)

    # -- lifecycle hooks for the owner: each acts on the SA and collects its output
    def owner_of(self, spi_in: bytes) -> IkeSa | None:
        """The IKE SA that currently manages the Child SA with this inbound SPI."""
        for sa in self.sas.values():
            if sa.find_child(spi_in) is not None:
                return sa
        return None

    def rekey_child(self, spi_in: bytes, now: float) -> bool:
        """Soft limit reached (the daemon checks rekey_bytes/rekey_packets): rekey it."""
        return self._act(spi_in, now, lambda sa: sa.rekey_child(spi_in))

    def expire_child(self, spi_in: bytes, hard: bool, now: float) -> bool:
        """A lifetime ran out (life_bytes/life_packets for hard): rekey (soft) or delete (hard)."""
        return self._act(spi_in, now, lambda sa: sa.expire_child(spi_in, hard))

    def delete_child(self, spi_in: bytes, now: float) -> bool:
        return self._act(spi_in, now, lambda sa: sa.delete_child(spi_in))

    def note_inbound_traffic(self, spi_in: bytes, now: float) -> None:
        """ESP arrived on this Child SA: postpones DPD of its IKE SA (RFC 7296 2.4)."""
        sa = self.owner_of(spi_in)
        if sa is not None:
            sa.note_inbound_traffic(now)

    def rekey_ike(self, ike_sa_id: int, now: float) -> bool:
        sa = self.sas.get(ike_sa_id)
        if sa is None:
            return False
        sa.now = now
        sa.rekey()
        self.collect(sa)
        return True

    def collect(self, sa: IkeSa) -> None:
        """Take the datagrams and events of ``sa`` after calling one of its methods directly."""
        self._collect(sa)

    def _act(self, spi_in: bytes, now: float, action: Callable[[IkeSa], None]) -> bool:
        sa = self.owner_of(spi_in)
        if sa is None:
            return False
        sa.now = now
        action(sa)
        self._collect(sa)
        return True

    def find(self, ike_sa_id: int) -> IkeSa | None:
        return self.sas.get(ike_sa_id)

    def list_sas(self) -> list[IkeSa]:
        return [sa for sa in self.sas.values() if sa.state != IkeState.CLOSED]

    # ------------------------------------------------------------ internals
    def _receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        hdr = decode_header(data)
        if hdr.exchange == ExchangeType.IKE_SA_INIT and not hdr.is_response and hdr.spi_r == bytes(8):
            self._on_init_request(data, local, remote, now, hdr.spi_i)
            return
        our_spi = hdr.spi_r if hdr.is_initiator else hdr.spi_i
        sa = self._by_spi.get(our_spi)
        if sa is None:
            self._drop("unknown_spi", remote, f"message for unknown IKE SPI {our_spi.hex()}")
            if not hdr.is_response and hdr.exchange in (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA):
                self._invalid_ike_spi(hdr.spi_i, hdr.spi_r, hdr.message_id, hdr.is_initiator, local, remote, now)
            return
        sa.receive(data, local, remote, now)
        self._collect(sa)

    def _on_init_request(self, data: bytes, local: Endpoint, remote: Endpoint, now: float, spi_i: bytes) -> None:
        key = (spi_i, remote[0])
        existing = self._half_open.get(key)
        if existing is not None:
            existing.receive(data, local, remote, now)  # a retransmission: answered from the cache
            self._collect(existing)
            return
        try:
            msg = decode_message(data)
        except RemoteProtocolError as e:
            # RFC 7296 2.5: an unknown critical payload is refused with a notify; other garbage is dropped
            if e.notify in (NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, NotifyType.INVALID_MAJOR_VERSION):
                resp = Message(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, is_initiator=False, is_response=True,
                               payloads=[NotifyPayload(e.notify, data=e.notify_data)])
                self._out.append((encode_message(resp), local, remote))
            raise
        if msg.message_id != 0:
            self._drop("malformed", remote, "IKE_SA_INIT request with a non-zero message ID")
            return
        candidates = self._candidates(local[0], remote[0])
        if not candidates:
            self._drop("no_connection", remote, f"no connection configured for peer {remote[0]}")
            return
        if len(self._half_open) >= self.max_half_open:
            self._drop("half_open_limit", remote, "too many half-open IKE SAs")
            return
        if len(self._half_open) >= self.cookie_threshold and not self._cookie_ok(msg, local, remote, spi_i):
            return
        sa = IkeSa(candidates[0], self._alloc_id(), False, local, remote, now, rng=self.rng,
                   spi_allocator=self._alloc_spi, reqid_allocator=self._alloc_reqid, candidates=candidates,
                   id_allocator=self._alloc_id, has_contact=self._has_contact, fixed_reqid=self.reqid_for)
        self.sas[sa.ike_sa_id] = sa
        self._half_open[key] = sa
        sa.receive(data, local, remote, now)
        if sa.state != IkeState.CLOSED:
            self._by_spi[sa.spi_r] = sa
        self._collect(sa)

    def _cookie_ok(self, msg: Message, local: Endpoint, remote: Endpoint, spi_i: bytes) -> bool:
        """RFC 7296 2.6: demand a stateless cookie once too many SAs are half-open."""
        nonce = msg.get(NoncePayload)
        if nonce is None:
            raise RemoteProtocolError("IKE_SA_INIT without Nonce", NotifyType.INVALID_SYNTAX)
        expected = COOKIE_VERSION + hashlib.sha256(
            nonce.data + ip_address(remote[0]).packed + spi_i + self._cookie_secret).digest()
        got = msg.notify(NotifyType.COOKIE)
        if got is not None and hmac.compare_digest(got.data, expected):
            return True
        self.counters["cookies_sent"] = self.counters.get("cookies_sent", 0) + 1
        resp = Message(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, msg.message_id, is_initiator=False,
                       is_response=True, payloads=[NotifyPayload(NotifyType.COOKIE, data=expected)])
        self._out.append((encode_message(resp), local, remote))
        return False

    def _candidates(self, local_ip: str, remote_ip: str) -> list[IkeSettings]:
        exact, wildcard = [], []
        for c in self.connections:
            if c.local_addrs and not _addr_in(local_ip, c.local_addrs):
                continue
            if not c.remote_addrs:
                wildcard.append(c)
            elif _addr_in(remote_ip, c.remote_addrs):
                exact.append(c)
        return exact + wildcard

    def _collect(self, sa: IkeSa) -> None:
        for item in sa.datagrams_to_send():
            self._out.append(item)
        if sa.spi_r != bytes(8) and sa.state != IkeState.CLOSED:
            self._by_spi.setdefault(sa.our_spi, sa)
        spawned, sa.spawned = sa.spawned, []
        for new in spawned:  # IKE SAs born from a rekey (RFC 7296 1.3.2)
            self._register(new)
        while (ev := sa.next_event()) is not None:
            if isinstance(ev, IkeSaEstablished):
                self._half_open.pop((sa.spi_i, sa.remote[0]), None)
                self._half_open = {k: v for k, v in self._half_open.items() if v is not sa}
                if sa.initial_contact:
                    self._initial_contact(sa)
                self._events.append(ev)
                self._resolve_duplicates(sa)
                continue
            elif isinstance(ev, ChildSaEstablished):
                self._spis_in.add(ev.spi_in)
            elif isinstance(ev, ChildSaDeleted) and not ev.reqid_in_use and self._reqid_elsewhere(ev.reqid, sa):
                # A fixed reqid may be carried by Child SAs of two IKE SAs at once (both ends
                # acquired together): the data plane must keep the survivor's policies.
                ev = dataclasses.replace(ev, reqid_in_use=True)
            elif isinstance(ev, IkeSaClosed):
                self._forget(sa)
            self._events.append(ev)
        for new in spawned:
            self._collect(new)
        self._finish_reauth(sa)

    def _initial_contact(self, sa: IkeSa) -> None:
        """RFC 7296 2.4: INITIAL_CONTACT means the peer lost every older SA with us: drop ours silently.

        Only SAs that were up before this one started count as "older": an SA that
        completed meanwhile comes from a simultaneous initiation, which the
        duplicate rule (_resolve_duplicates) settles with the peer's agreement.
        """
        for other in list(self.sas.values()):
            if other is sa or other.settings.name != sa.settings.name or other.established_at is None \
                    or other.state not in (IkeState.ESTABLISHED, IkeState.REKEYED) \
                    or other.established_at >= sa.created_at:
                continue
            if other.remote[0] == sa.remote[0] or other.remote_identity == sa.remote_identity:
                other.close("replaced: peer sent INITIAL_CONTACT")
                self._collect(other)

    def _reqid_elsewhere(self, reqid: int, sa: IkeSa) -> bool:
        """Does a Child SA of another live IKE SA carry this fixed reqid?"""
        if reqid not in self._fixed_owner:
            return False
        return any(o is not sa and o.state != IkeState.CLOSED and any(c.event.reqid == reqid for c in o.children)
                   for o in self.sas.values())

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _has_contact(self, sa: IkeSa) -> bool:
        """Another live IKE SA of this connection with the same peer address?"""
        return any(o is not sa and o.state != IkeState.CLOSED and o.settings.name == sa.settings.name
                   and o.remote[0] == sa.remote[0] for o in self.sas.values())

    def _resolve_duplicates(self, sa: IkeSa) -> None:
        """Simultaneous initiation: both ends started the same connection at once.

        Rule (both ends reach it on their own, as both know every SA's IKE_SA_INIT
        nonces): when one established IKE SA of a connection was initiated by us
        and another, to the same peer, by the peer, the one whose IKE_SA_INIT
        initiator nonce (Ni) is higher is redundant. The end that initiated it
        deletes it with an ordinary Delete (its Child SAs go on both ends); the
        other end just waits for that Delete. SAs born from a rekey do not count,
        nor do two SAs we initiated ourselves (``up`` twice is the user's choice).
        """
        same = [o for o in self.sas.values()
                if o.state == IkeState.ESTABLISHED and o.rekeyed_from is None and o.reauth_of is None
                and o.settings.name == sa.settings.name
                and o.remote[0] == sa.remote[0]]
        theirs = [o for o in same if not o.initiator]
        for o in same:
            if o.initiator and any(t.nonce_i < o.nonce_i for t in theirs):
                log.info("IKE SA %d duplicates one the peer initiated at the same time (%s): deleting ours",
                         o.ike_sa_id, o.settings.name)
                o.delete("duplicate of a simultaneously initiated IKE SA")
                self._collect(o)

    def _invalid_ike_spi(self, spi_i: bytes, spi_r: bytes, message_id: int, from_initiator: bool,
                         local: Endpoint, remote: Endpoint, now: float) -> None:
        """RFC 7296 2.21.4: answer a request for an unknown IKE SA, unprotected, rate-limited."""
        second = int(now)
        sec, n = self._invalid_spi_window
        if sec != second:
            sec, n = second, 0
        if n >= INVALID_SPI_RATE:
            return
        self._invalid_spi_window = (sec, n + 1)
        resp = Message(spi_i, spi_r, ExchangeType.INFORMATIONAL, message_id, is_initiator=not from_initiator,
                       is_response=True, payloads=[NotifyPayload(NotifyType.INVALID_IKE_SPI)])
        self.counters["invalid_ike_spi_sent"] = self.counters.get("invalid_ike_spi_sent", 0) + 1
        self._out.append((encode_message(resp), local, remote))

    def _forget(self, sa: IkeSa) -> None:
        self.sas.pop(sa.ike_sa_id, None)
        if self._by_spi.get(sa.our_spi) is sa:
            del self._by_spi[sa.our_spi]
        self._half_open = {k: v for k, v in self._half_open.items() if v is not sa}

    def _register(self, sa: IkeSa) -> None:
        self.sas[sa.ike_sa_id] = sa
        self._by_spi[sa.our_spi] = sa

    def _alloc_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def _alloc_reqid(self) -> int:
        r = self._next_reqid
        self._next_reqid += 1
        return r

    def _alloc_spi(self) -> bytes:
        while True:
            spi = self.rng(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self._spis_in:
                self._spis_in.add(spi)
                return spi

    def release_spi(self, spi: bytes) -> None:
        self._spis_in.discard(spi)

    def _drop(self, reason: str, remote: Endpoint, detail: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        self._rl.log(logging.INFO, reason, "dropped datagram from %s[%d]: %s", remote[0], remote[1], detail)


def _addr_in(addr: str, addrs: Sequence[str]) -> bool:
    try:
        a = ip_address(addr)
    except ValueError:
        return False
    for x in addrs:
        if x in ("%any", "0.0.0.0", "::"):
            return True
        try:
            if ip_address(x) == a:
                return True
        except ValueError:
            continue
    return False

