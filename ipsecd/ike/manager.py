"""All IKE SAs of the daemon: dispatch by SPI, admission of new SAs, initiation, timers.

Still sans-I/O: datagrams and time in, datagrams, timers and events out. One
bad datagram never stops the others: every exception is caught per packet,
counted and logged at a rate-limited level. The work per datagram and per timer
does not grow with the number of SAs: SAs are found by SPI (and by connection,
Child SA SPI or identity through indexes kept up to date by the SAs' signals and
events), and timers sit in a heap.

Ordering contract for the owner (the daemon): after each ``receive_datagram``
or ``handle_timer`` call, drain ``next_event()`` FIRST and install the inbound
half of every ChildSaEstablished before sending what ``datagrams_to_send()``
returns for that call. The responder of a CREATE_CHILD_SA emits the new SA in
the same call that queues its response; the peer may send ESP on the new SA
as soon as that response arrives (RFC 7296 2.8 make-before-break). Each
datagram carries the id of its IKE SA, so the owner may hold back only the
datagrams of the SAs whose installs are still under way.

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

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from ipsecd.credentials import CredentialStore
from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike import relations
from ipsecd.ike.context import EngineContext
from ipsecd.ike.cp import AttributeProvider, release_leases
from ipsecd.ike.events import (
    Cause,
    Datagram,
    Endpoint,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    InitialContact,
    ReauthDue,
    Settled,
    Spawned,
    SpiAssigned,
)
from ipsecd.ike.frontdoor import Admission, FrontDoor, FrontDoorSettings
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.keying import Attempt, Keying
from ipsecd.ike.message import IkeHeader, Message, check_message, decode_header, decode_message, encode_message
from ipsecd.ike.payloads import NotifyPayload
from ipsecd.ike.redirect import Redirect, set_redirect
from ipsecd.ike.sa_table import SaTable
from ipsecd.ike.settings import IkeSettings
from ipsecd.ike.shard import Shard
from ipsecd.ike.tasks import mobike
from ipsecd.ike.tasks.unique import replace_reason, replaced
from ipsecd.ike.ts import TriggerPacket
from ipsecd.logsafe import safe
from ipsecd.ratelimit import RateLimitedLogger

log = logging.getLogger("ipsecd.ike")

# An acquire waits this long for a peer that has sent IKE_SA_INIT to follow with its IKE_AUTH
# (which may bring the Child SA) before we initiate ourselves
PEER_SETUP_GRACE = 2.0


@dataclass
class IkeManager:
    connections: Sequence[IkeSettings]
    now: float
    rng: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    # remote address -> our source address, for connections without local_addrs
    source_for: Callable[[str], str] = field(default=lambda remote: "0.0.0.0", repr=False)
    front_door: FrontDoorSettings = field(default_factory=FrontDoorSettings)  # admission of new IKE SAs
    attributes: AttributeProvider | None = field(default=None, repr=False)  # address pools (RFC 7296 2.19)
    shard: Shard = field(default_factory=Shard)  # which IKE process this is (ike/shard.py)

    counters: dict[str, int] = field(default_factory=dict)
    ctx: EngineContext = field(init=False, repr=False)
    table: SaTable = field(init=False, repr=False)
    _conns: dict[str, IkeSettings] = field(default_factory=dict, repr=False)
    _out: list[Datagram] = field(default_factory=list, repr=False)
    _events: deque[Event] = field(default_factory=deque, repr=False)
    keying: Keying = field(default_factory=Keying, repr=False)  # keyingtries: attempts and retries (keying.py)

    def __post_init__(self) -> None:
        self.ctx = EngineContext(rng=self.rng, attributes=self.attributes, shard=self.shard)
        self.table = SaTable(self.ctx)
        self.front = FrontDoor(self.rng, self.counters, self.front_door)
        self._rl = RateLimitedLogger(log)
        self.update_connections(self.connections)

    # ------------------------------------------------------------------ configuration
    def connection(self, name: str) -> IkeSettings | None:
        return self._conns.get(name)

    def update_connections(self, connections: Sequence[IkeSettings]) -> None:
        self.connections = connections
        self._conns = {c.name: c for c in connections}
        self._candidates = Candidates(connections)

    def set_credentials(self, store: CredentialStore, wall_offset: float) -> None:
        """Swap in a credential store (reload keeps SAs); ``wall_offset``: real time minus ``now``."""
        self.ctx.credentials, self.ctx.wall_offset = store, wall_offset

    def auth_answer(self, ike_sa_id: int, token: int, answer: object, now: float) -> bool:
        """An AuthRequest's answer (a RADIUS reply): IKE_AUTH goes on; False if none waits for it."""
        ok: list[bool] = []
        return self._act(self.sas.get(ike_sa_id), now, lambda s: ok.append(s.exchanges.resume(token, answer))) and ok[0]

    # -- traps (on-demand Child SAs, RFC 4301 5.1 / RFC 7296 1.3)
    def assign_reqid(self, name: str, child: str, reqid: int | None = None) -> int:
        """The stable reqid of (connection, child), reserved on first use (see
        EngineContext.assign_reqid)."""
        return self.ctx.assign_reqid(name, child, reqid)

    def release_reqid(self, name: str, child: str | None = None) -> list[int]:
        """Forget the fixed reqids of a connection (one child, or all): reload or removal.
        Returns the reqids released; live Child SAs keep theirs, new ones get fresh reqids."""
        return self.ctx.release_reqids(name, child)

    def reqid_for(self, name: str, child: str) -> int | None:
        return self.ctx.fixed_reqids.get((name, child))

    # ------------------------------------------------------------------ jobs
    def initiate(self, name: str, now: float, *, trigger: TriggerPacket | None = None,
                 child: str | None = None, attempt: Attempt | None = None) -> IkeSa:
        """Start a new IKE SA of connection ``name``: every configured child (the first in
        IKE_AUTH, the others by CREATE_CHILD_SA), or only ``child``. ``trigger`` is the packet
        of an acquire (RFC 7296 2.9). The daemon normally calls ``acquire``, which also
        suppresses duplicates. A new initiation is attempt 1 of ``keyingtries`` (keying.py)."""
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
        self.now = now
        sa = IkeSa(conn, self.ctx.alloc_ike_id(), True, (local_ip, 500), remote, now, ctx=self.ctx)
        self.table.add(sa)
        self.keying.track(sa, attempt or Attempt(name, child, trigger))
        sa.initiate(kids, trigger=trigger)
        self._collect(sa)
        return sa

    def acquire(self, reqid: int, now: float, trigger: TriggerPacket | None = None) -> IkeSa | None:
        """The data plane held a packet for trapped ``reqid``: get its Child SA negotiated.

        At most one negotiation per trapped child: the acquire is ignored (counted as
        ``acquires_ignored``) while a Child SA of it exists, while one of our IKE SAs is
        creating it, or while the peer is still setting up an IKE SA of the connection.
        An established IKE SA of the connection (or one we are still initiating) gets a
        CREATE_CHILD_SA; otherwise a new IKE SA starts with just this child. Returns the
        IKE SA that negotiates, or None when nothing was started.
        """
        self.now = now
        key = self.ctx.fixed_owner.get(reqid)
        conn = self.connection(key[0]) if key is not None else None
        child = conn.child(key[1]) if conn is not None and key is not None else None
        if conn is None or child is None:
            self._count("acquires_unknown")
            self._rl.log(logging.INFO, "acquire_unknown", "acquire for reqid %d, which no trapped child has", reqid,
                         now=now)
            return None
        live = self.table.of_connection(conn.name)
        if self.keying.retry_waiting(conn.name, child.name):  # its next attempt is already due (keying.py)
            self._count("acquires_ignored")
            return None
        for sa in live:
            busy = sa.pending_child(child.name) or sa.children.reqid_in_use(reqid)
            # The peer's IKE_AUTH may well carry this child; but a spoofed half-open SA (a resent
            # IKE_SA_INIT keeps it alive) must not block us for long: only a fresh one counts
            peer_setting_up = not sa.initiator and sa.state == IkeState.CONNECTING \
                and now - sa.created_at < PEER_SETUP_GRACE
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
                         conn.name, e, now=now)
            return None

    def terminate(self, name: str, now: float) -> int:
        """Delete every IKE SA of a connection (and drop its retries waiting); returns how many."""
        self.keying.cancel(name)
        n = 0
        for sa in self.table.of_connection(name):
            self._act(sa, now, lambda s: s.delete(Cause.DELETED_LOCALLY, "deleted by request"))
            n += 1
        return n

    def redirect(self, name: str | None, gateway: str | None, now: float, *, full_at: int = 0) -> int:
        """RFC 5685: from now on answer new clients of connection ``name`` (None: all) with a
        redirect to ``gateway`` and tell the established ones that announced support to move
        (draining); with ``full_at`` N only new clients, while N or more other IKE SAs exist (full).
        ``gateway`` None stops redirecting. Returns how many established clients were told."""
        sas = self.table.of_connection(name) if name is not None else list(self.sas.values())
        told = set_redirect(self.ctx, sas, name, gateway, full_at)  # empty when gateway is None
        for sa in told:
            self._act(sa, now, lambda s: s.enqueue([Redirect(gateway or "")]))
        return len(told)

    def reauthenticate(self, ike_sa_id: int, now: float) -> IkeSa | None:
        """Make-before-break reauthentication (RFC 7296 2.8): a new IKE SA with full IKE_AUTH
        and every Child SA again, under the same reqids; the old IKE SA is deleted once the
        new one has all of them (its Settled signal), so traffic never lacks an SA."""
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
            cfg = conn.child(c.name)
            if cfg is not None and cfg not in kids:
                self.assign_reqid(conn.name, cfg.name, c.event.reqid)  # the new Child SAs keep the reqids
                kids.append(cfg)
        remote = (conn.remote_addrs[0], conn.remote_port) if conn.remote_addrs else (old.remote[0], 500)
        new = IkeSa(conn, self.ctx.alloc_ike_id(), True, (old.local[0], 500), remote, now, ctx=self.ctx,
                    reauth_of=old.ike_sa_id)
        new.vips.local = list(old.vips.local)  # ask for the virtual IPs we have (RFC 7296 3.15.3)
        old.log.info("reauthenticating: IKE SA %d will replace this one", new.ike_sa_id)
        self.table.add(new)
        new.initiate(kids)
        self._collect(new)
        return new

    # -- lifecycle hooks for the owner: each acts on one SA and collects its output
    def owner_of(self, spi_in: bytes) -> IkeSa | None:
        """The IKE SA that currently manages the Child SA with this inbound SPI."""
        return self.table.child_owner(spi_in)

    def rekey_child(self, spi_in: bytes, now: float) -> bool:
        """Soft limit reached (the daemon checks rekey_bytes/rekey_packets): rekey it."""
        return self._act(self.owner_of(spi_in), now, lambda sa: sa.rekey_child(spi_in))

    def expire_child(self, spi_in: bytes, hard: bool, now: float) -> bool:
        """A lifetime ran out (life_bytes/life_packets for hard): rekey (soft) or delete (hard)."""
        return self._act(self.owner_of(spi_in), now, lambda sa: sa.expire_child(spi_in, hard))

    def delete_child(self, spi_in: bytes, now: float, cause: Cause = Cause.DELETED_LOCALLY,
                     reason: str = "deleted locally") -> bool:
        return self._act(self.owner_of(spi_in), now, lambda sa: sa.delete_child(spi_in, cause, reason))

    def rekey_ike(self, ike_sa_id: int, now: float) -> bool:
        return self._act(self.sas.get(ike_sa_id), now, lambda sa: sa.rekey())

    def delete_ike(self, ike_sa_id: int, now: float, cause: Cause = Cause.DELETED_LOCALLY,
                   reason: str = "deleted by request", *, silent: bool = False) -> bool:
        return self._act(self.sas.get(ike_sa_id), now, lambda sa: sa.close(cause, reason) if silent
                         else sa.delete(cause, reason))

    def check_liveness(self, ike_sa_id: int, now: float) -> bool:
        """Send an empty INFORMATIONAL now (RFC 7296 2.4), as DPD would."""
        return self._act(self.sas.get(ike_sa_id), now, lambda sa: sa.send_liveness())

    def roam(self, ike_sa_id: int, paths: Sequence[tuple[str, str]], now: float) -> bool:
        """Our addresses changed: move this MOBIKE IKE SA to ``paths`` (ours, the peer's; tasks/mobike.py)."""
        moved: list[bool] = []
        return self._act(self.sas.get(ike_sa_id), now, lambda sa: moved.append(mobike.roam(sa, paths))) and moved[0]

    def set_local_addresses(self, addresses: Sequence[str]) -> None:
        """The addresses configured on this host now, which MOBIKE may advertise (RFC 4555 3.6)."""
        self.ctx.local_addresses = tuple(addresses)

    def note_inbound_traffic(self, spi_in: bytes, now: float) -> None:
        """ESP arrived on this Child SA: postpones DPD of its IKE SA (RFC 7296 2.4)."""
        self._act(self.owner_of(spi_in), now, lambda sa: sa.note_inbound_traffic(now))

    @property
    def sas(self) -> dict[int, IkeSa]:
        return self.table.by_id

    def find(self, ike_sa_id: int) -> IkeSa | None:
        return self.table.by_id.get(ike_sa_id)

    def list_sas(self) -> list[IkeSa]:
        return [sa for sa in self.sas.values() if sa.state != IkeState.CLOSED]

    def total_counters(self) -> dict[str, int]:
        """The engine's counters plus those of every live IKE SA (closed SAs' are already in)."""
        out = dict(self.counters)
        for sa in self.sas.values():
            for k, v in sa.counters.items():
                out[k] = out.get(k, 0) + v
        return out

    # ------------------------------------------------------------------ the sans-I/O verbs
    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        self.now = now
        try:
            self._receive(data, local, remote, now)
        except RemoteProtocolError as e:
            self._drop("malformed", remote, str(e))
        except Exception as e:  # a bug must not take the daemon down: count it and go on
            self._drop("internal_error", remote, f"{type(e).__name__}: {e}")
            log.debug("internal error on a datagram from %s", safe(remote[0]), exc_info=True)

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return self.keying.earliest(self.table.timers.earliest())

    def handle_timer(self, now: float) -> None:
        self.now = now
        for ike_sa_id in self.table.timers.due(now):
            sa = self.sas.get(ike_sa_id)
            if sa is not None:
                self._act(sa, now, lambda s: s.handle_timer(now))
        self.keying.retry_due(self, now)

    # ------------------------------------------------------------------ internals
    def _act(self, sa: IkeSa | None, now: float, action: Callable[[IkeSa], None]) -> bool:
        if sa is None:
            return False
        sa.now = now
        try:
            action(sa)
        finally:
            self._collect(sa)
        return True

    def _receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        hdr = decode_header(data)
        if hdr.exchange == ExchangeType.IKE_SA_INIT and not hdr.is_response and hdr.spi_r == bytes(8):
            self._on_init_request(data, hdr, local, remote, now)
            return
        our_spi = hdr.spi_r if hdr.is_initiator else hdr.spi_i
        sa = self.table.by_spi(our_spi)
        if sa is None:
            self._drop("unknown_spi", remote, f"message for unknown IKE SPI {our_spi.hex()}")
            answer = self.front.invalid_ike_spi(hdr, now)
            if answer is not None:
                self._out.append(Datagram(answer, local, remote))
            return
        self._act(sa, now, lambda s: s.receive(data, local, remote, now))

    def _on_init_request(self, data: bytes, hdr: IkeHeader, local: Endpoint, remote: Endpoint, now: float) -> None:
        """A peer's IKE_SA_INIT: the front door (ipsecd/ike/frontdoor.py) before any decode or D-H."""
        front, peer = self.front, remote[0]
        seen = front.screen(data, hdr, peer, now)
        if seen != Admission.ADMIT:
            self._drop(seen.value, remote, f"IKE_SA_INIT request: {seen.name}", counted=True)
            return
        existing = self.table.half_open(hdr.spi_i, peer)
        if existing is not None:  # a retransmission: answered from the cache
            self._act(existing, now, lambda s: s.receive(data, local, remote, now))
            return
        candidates = self._candidates(local[0], peer)
        if not candidates:
            self._drop("no_connection", remote, f"no connection configured for peer {peer}")
            return
        verdict, answer = front.admit(data, hdr, peer, now, self.table.half_open_count, self.table.half_open_of(peer))
        if answer is not None:
            self._out.append(Datagram(answer, local, remote))
        elif verdict != Admission.ADMIT:
            self._drop(verdict.value, remote, verdict.name, counted=True)
        if verdict != Admission.ADMIT:
            return
        try:
            msg = decode_message(data)
            check_message(msg)  # RFC 7296 3: IKE_SA_INIT without SA, KE or Nonce leaves no SA behind
        except RemoteProtocolError as e:
            # RFC 7296 2.5: an unknown critical payload is refused with a notify; other garbage is dropped
            if e.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
                resp = Message(hdr.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, is_initiator=False,
                               is_response=True, payloads=[NotifyPayload(e.notify, data=e.notify_data)])
                self._out.append(Datagram(encode_message(resp), local, remote))
            front.note_failure(now)
            raise
        sa = IkeSa(candidates[0], self.ctx.alloc_ike_id(), False, local, remote, now, ctx=self.ctx,
                   candidates=candidates)
        self.table.add(sa, half_open=(hdr.spi_i, peer))
        self._act(sa, now, lambda s: s.receive(data, local, remote, now, msg))
        if sa.state == IkeState.CLOSED:  # refused at once (NO_PROPOSAL_CHOSEN, INVALID_KE, INVALID_SYNTAX)
            front.note_failure(now)

    def _collect(self, sa: IkeSa) -> None:
        """Take what ``sa`` produced: its datagrams, its signals (acted on here) and its events."""
        self._out += sa.datagrams_to_send()
        spawned: list[IkeSa] = []
        while (sig := sa.next_signal()) is not None:
            if isinstance(sig, SpiAssigned):
                self.table.route(sig.spi, sa)
            elif isinstance(sig, Spawned):  # an IKE SA born from a rekey (RFC 7296 1.3.2)
                self.table.add(sig.sa)
                spawned.append(sig.sa)
            elif isinstance(sig, ReauthDue):
                self.reauthenticate(sa.ike_sa_id, sa.now)
            elif isinstance(sig, InitialContact):
                for old in relations.replaced_by_initial_contact(self.table, sa):
                    self.delete_ike(old.ike_sa_id, sa.now, Cause.REPLACED, relations.IC_REASON, silent=True)
            elif isinstance(sig, Settled):
                self._finish_reauth(sa)
        while (ev := sa.next_event()) is not None:
            ev = self.table.index(sa, ev)
            if isinstance(ev, IkeSaEstablished):
                for o in relations.redundant_duplicates(self.table, sa):
                    log.info("IKE SA %d duplicates one the peer initiated at the same time (%s): deleting ours",
                             o.ike_sa_id, o.settings.name)
                    self._act(o, sa.now, lambda x: x.delete(Cause.DUPLICATE,
                                                            "duplicate of a simultaneously initiated IKE SA"))
                for other in replaced(sa):  # unique: replace (tasks/unique.py)
                    self.delete_ike(other, sa.now, Cause.REPLACED, replace_reason(sa.ike_sa_id))
            elif isinstance(ev, IkeSaClosed):
                self._count_sa(sa)
                release_leases(sa)
            self._events.append(ev)
            self._events.extend(self.keying.after(sa, ev, self.counters))
        if sa.state != IkeState.CLOSED:
            self.table.timers.set(sa.ike_sa_id, sa.get_timer())
        for new in spawned:
            self._collect(new)

    def _count_sa(self, sa: IkeSa) -> None:
        """Per-SA counters outlive the SA (stats and metrics sum over every SA ever)."""
        for k, v in sa.counters.items():
            self.counters[k] = self.counters.get(k, 0) + v

    def _finish_reauth(self, sa: IkeSa) -> None:
        """The replacement is up with all its Child SAs: now the old IKE SA may go."""
        if sa.reauth_of is None:
            return
        old = self.sas.get(sa.reauth_of)
        sa.reauth_of = None
        if old is not None and old.state == IkeState.ESTABLISHED:
            self._act(old, sa.now, lambda o: o.delete(Cause.REAUTHENTICATED, "reauthenticated"))

    def release_spi(self, spi: bytes) -> None:
        """A Child SA's inbound SPI is free again (the owner removed the SA)."""
        self.ctx.release_child_spi(spi)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _drop(self, reason: str, remote: Endpoint, detail: str, *, counted: bool = False) -> None:
        if not counted:  # the front door counts its own outcomes
            self._count(reason)
        self._rl.log(logging.INFO, reason, "dropped datagram from %s[%d]: %s", safe(remote[0]), remote[1],
                     safe(detail), now=self.now)


_WILDCARDS = frozenset({"%any", "0.0.0.0", "::"})


class Candidates:
    """The connections a new peer may turn out to be: exact remote address first, then %any.

    The configured addresses are parsed once (``update_connections``); per IKE_SA_INIT
    this is set lookups on the addresses as the socket reports them (canonical text), so a
    spoofed flood costs no address parsing here.
    """

    def __init__(self, connections: Sequence[IkeSettings]) -> None:
        # (connection, local addresses or None = any, remote addresses or None = any, remote configured)
        self.rows = [(c, _address_set(c.local_addrs), _address_set(c.remote_addrs), bool(c.remote_addrs))
                     for c in connections]

    def __call__(self, local_ip: str, remote_ip: str) -> list[IkeSettings]:
        exact, wildcard = [], []
        for c, local, remote, configured in self.rows:
            if local is not None and local_ip not in local:
                continue
            if not configured:
                wildcard.append(c)
            elif remote is None or remote_ip in remote:
                exact.append(c)
        return exact + wildcard


def _address_set(addrs: Sequence[str]) -> frozenset[str] | None:
    """Canonical text of each address (as inet_ntop writes it); None when any address matches."""
    out = set()
    for x in addrs:
        if x in _WILDCARDS:
            return None
        try:
            out.add(ip_address(x).compressed)
        except ValueError:
            continue
    return frozenset(out) if addrs else None
