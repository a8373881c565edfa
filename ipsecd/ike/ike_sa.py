"""The sans-I/O IKE SA: SPIs, keys, identities, lifetimes and its Child SAs.

Modelled on aioquic's connection object: the owner feeds datagrams and time in
(``receive``, ``handle_timer``) and takes datagrams, a timer and events out
(``datagrams_to_send``, ``get_timer``, ``next_event``). Nothing here touches a
socket or reads the clock. Message IDs, the request queue, retransmission and
the cached response live in exchanges.py (strongSwan: ike_sa.c vs task_manager_v2.c);
each job is a task in tasks/. What the SA tells its manager (not the owner) leaves
through ``next_signal()`` (events.Signal).

Ordering contract for the owner: everything an exchange produces is queued while
``receive``/``handle_timer`` runs. A responder that installs a Child SA (new or
rekeyed) emits its ChildSaEstablished in the same call that queues the response;
the owner must drain ``next_event()`` and install the inbound SA before it sends
the datagrams of that call, so the peer's first ESP packet on the new SA never
beats the SA into the data plane (RFC 7296 2.8).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ipsecd.errors import IntegrityError, RemoteProtocolError
from ipsecd.iana import ExchangeType, NotifyType, PayloadType, PrfId, TransformType
from ipsecd.identity import Identity
from ipsecd.ike import lifetimes
from ipsecd.ike.authenticators import AuthExtensions, PeerLogin, PendingLogin, report_login
from ipsecd.ike.child_sa import ChildEvent, ChildSa, ChildSaState, ChildTable, describe_child
from ipsecd.ike.context import EngineContext
from ipsecd.ike.cp import VirtualIps
from ipsecd.ike.crypto import Prf, shared_prf
from ipsecd.ike.events import (
    Cause,
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    Endpoint,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaMoved,
    LoginResult,
    Settled,
    Signal,
    SpiAssigned,
)
from ipsecd.ike.exchanges import Exchanges
from ipsecd.ike.fifo import Fifo
from ipsecd.ike.fragments import Fragments
from ipsecd.ike.keymat import IkeKeys
from ipsecd.ike.message import Message, SkCipher, check_message, decode_message
from ipsecd.ike.payloads import Proposal
from ipsecd.ike.proposal import proposal_to_swanctl
from ipsecd.ike.salog import SaLog
from ipsecd.ike.settings import ChildSettings, IkeSettings
from ipsecd.ike.state import IkeState, check_transition
from ipsecd.ike.tasks import InitiatorTask, TaskKind
from ipsecd.ike.tasks.child_create import ChildCreate
from ipsecd.ike.tasks.child_rekey import ChildRekey
from ipsecd.ike.tasks.ike_auth import IkeAuth
from ipsecd.ike.tasks.ike_config import IkeConfig
from ipsecd.ike.tasks.ike_init import IkeInit
from ipsecd.ike.tasks.ike_rekey import IkeRekey
from ipsecd.ike.tasks.informational import DeleteChildSa, DeleteIkeSa, Liveness
from ipsecd.ike.tasks.mobike import MobikeState, MobikeSupport
from ipsecd.ike.ts import TriggerPacket
from ipsecd.logsafe import safe

log = logging.getLogger("ipsecd.ike")
child_log = logging.getLogger("ipsecd.child")

HALF_OPEN_TIMEOUT = 30.0  # responder: drop an SA whose IKE_AUTH never came
# RFC 7296 2.25: after TEMPORARY_FAILURE (or a refused rekey) wait before retrying:
# RETRY_DELAY plus a random part up to RETRY_JITTER, so two peers do not collide again.
RETRY_DELAY = 10.0
RETRY_JITTER = 5.0
# The responder of an IKE SA rekey waits this long for the initiator to delete the
# old IKE SA before dropping it on its own (its Child SAs have already moved).
REKEYED_TIMEOUT = 60.0


# slots: thousands are held (issue 11, memory per tunnel); weakref: its parts point back weakly (backref.py)
@dataclass(eq=False, slots=True, weakref_slot=True)
class IkeSa:
    """One IKE SA, both roles; see the module docstring for the sans-I/O contract."""

    settings: IkeSettings
    ike_sa_id: int
    initiator: bool
    local: Endpoint
    remote: Endpoint
    now: float
    ctx: EngineContext = field(default_factory=EngineContext, repr=False)
    candidates: Sequence[IkeSettings] = ()  # responder: connections this peer may turn out to be

    state: IkeState = IkeState.CREATED
    spi_i: bytes = b""
    spi_r: bytes = bytes(8)
    nonce_i: bytes = b""
    nonce_r: bytes = b""
    keys: IkeKeys | None = field(default=None, repr=False)
    proposal: Proposal | None = None
    sk_out: SkCipher | None = field(default=None, repr=False)
    sk_in: SkCipher | None = field(default=None, repr=False)
    init_request: bytes = field(default=b"", repr=False)
    init_response: bytes = field(default=b"", repr=False)
    local_behind_nat: bool = False
    remote_behind_nat: bool = False
    remote_identity: Identity | None = None
    vips: VirtualIps = field(default_factory=VirtualIps)  # virtual IPs leased to the peer / assigned to us
    my_identity: Identity | None = None  # the identity IKE_AUTH sent (set there: may come from our certificate)
    auth_ext: AuthExtensions = field(default_factory=AuthExtensions, repr=False)  # what the peer announced
    mobike: MobikeState = field(default_factory=MobikeState, repr=False)  # RFC 4555 (tasks/mobike.py)
    authenticating: bool = False  # IKE_AUTH is in its EAP rounds: the Child SA of IKE_AUTH waits
    login: PeerLogin | None = None  # how the peer authenticated (method, EAP identity, certificate)
    login_pending: PendingLogin | None = None  # responder: the peer's login is under way, not yet reported
    fail_reason: str = ""
    children: ChildTable = field(default_factory=ChildTable, repr=False)
    created_at: float = 0.0
    established_at: float | None = None
    last_received: float = 0.0
    last_traffic_in: float = 0.0  # latest inbound ESP (note_inbound_traffic): DPD spares a peer visibly sending
    counters: dict[str, int] = field(default_factory=dict)
    rekey_at: float | None = None  # IKE SA soft lifetime: start a rekey
    hard_at: float | None = None  # IKE SA hard lifetime (rekey_time + over_time): delete
    reauth_at: float | None = None  # reauth_time reached: the manager builds a replacement IKE SA
    rekeyed_close_at: float | None = None  # REKEYED responder: close if the peer never deletes us
    rekeyed_from: int | None = None  # the IKE SA this one replaced
    reauth_of: int | None = None  # this IKE SA reauthenticates that one, deleted once we are complete
    replaced_by: int | None = None  # the IKE SA that took our Child SAs after a rekey
    closing: tuple[Cause, str] = (Cause.DELETED_LOCALLY, "deleted locally")  # why our Delete went out

    exchanges: Exchanges = field(init=False, repr=False)
    frag: Fragments = field(init=False, repr=False)  # RFC 7383: negotiated?, our fragments, reassembly
    _events: Fifo[Event] = field(default_factory=Fifo, repr=False)
    _signals: Fifo[Signal] = field(default_factory=Fifo, repr=False)
    _close_after_response: tuple[Cause, str] | None = field(default=None, repr=False)
    _prf: Prf | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.exchanges, self.frag = Exchanges(self), Fragments(self)
        if not self.candidates:
            self.candidates = (self.settings,)
        if self.initiator and not self.spi_i:
            self.spi_i = self.ctx.alloc_ike_spi()
            self._signals.append(SpiAssigned(self.spi_i))
        self.last_received = self.last_traffic_in = self.created_at = self.now

    # ------------------------------------------------------------------ properties
    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        return SaLog(log, self, self.ctx.log_limiters)

    @property
    def child_log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]  # strongSwan's chd (log.child)
        return SaLog(child_log, self, self.ctx.log_limiters)

    @property
    def local_identity(self) -> Identity:
        """The identity we authenticate as: what IKE_AUTH sent, else the configured one, else our address."""
        if self.my_identity is not None:
            return self.my_identity
        return self.settings.local_identity(self.local[0])

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def encap(self) -> bool:
        """UDP encapsulation for ESP: a NAT on either side, or forced by config (RFC 3948)."""
        return self.local_behind_nat or self.remote_behind_nat or self.settings.force_encap

    @property
    def prf(self) -> Prf:
        if self._prf is None:
            assert self.proposal is not None
            (t,) = self.proposal.of_type(TransformType.PRF)
            self._prf = shared_prf(PrfId(t.id))
        return self._prf

    @property
    def keys_required(self) -> IkeKeys:
        assert self.keys is not None
        return self.keys

    @property
    def idle(self) -> bool:
        """No exchange of ours in flight or queued: every Child SA asked for has its answer."""
        return self.exchanges.idle

    def set_state(self, new: IkeState) -> None:
        self.state = check_transition(self.state, new)

    # ------------------------------------------------------------------ jobs the owner asks for
    def initiate(self, children: Sequence[ChildSettings] | None = None, *,
                 trigger: TriggerPacket | None = None) -> None:
        """Start IKE_SA_INIT, then IKE_AUTH with the first child; each further child
        follows in its own CREATE_CHILD_SA exchange (RFC 7296 1.3.1) once the IKE SA is up.
        ``trigger`` (an acquire's packet) goes first in the first child's selectors (RFC 7296 2.9)."""
        assert self.initiator and self.state == IkeState.CREATED
        self.set_state(IkeState.CONNECTING)
        kids = list(self.settings.children if children is None else children)
        q = self.exchanges.queue
        q.append([IkeInit()])
        auth: list[InitiatorTask] = [IkeAuth(), *([IkeConfig()] if self.settings.vips else []), MobikeSupport()]
        q.append([*auth, ChildCreate(kids[0], trigger=trigger)] if kids else auth)
        for kid in kids[1:]:
            q.append([ChildCreate(kid, exchange=ExchangeType.CREATE_CHILD_SA)])
        self.exchanges.send_next()

    def create_child(self, child: ChildSettings, *, trigger: TriggerPacket | None = None) -> None:
        """Negotiate one more Child SA (CREATE_CHILD_SA, RFC 7296 1.3.1); while our own
        IKE_SA_INIT/IKE_AUTH is still in flight it follows IKE_AUTH."""
        task = ChildCreate(child, exchange=ExchangeType.CREATE_CHILD_SA, trigger=trigger)
        if self.state == IkeState.CONNECTING and self.initiator:
            self.exchanges.queue.append([task])
        else:
            self.enqueue([task])

    def pending_child(self, child: str) -> bool:
        """Is a CREATE of Child SA ``child`` queued, in flight or waiting for a retry here?"""
        return self.exchanges.pending(lambda t: t.kind is TaskKind.CHILD_CREATE and t.target == child)

    def delete(self, cause: Cause = Cause.DELETED_LOCALLY, reason: str = "deleted locally") -> None:
        """Close the IKE SA with a Delete; Child SAs go with it."""
        if self.state in (IkeState.CLOSED, IkeState.DELETING):
            return
        if self.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            self.close(cause, reason)
            return
        # a request still in flight is abandoned: the Delete replaces it (its answer no longer matters)
        self.exchanges.abandon()
        self.closing = (cause, reason)
        self.exchanges.add([DeleteIkeSa()])

    def delete_child(self, spi_in: bytes, cause: Cause = Cause.DELETED_LOCALLY, reason: str = "deleted locally"
                     ) -> None:
        self.enqueue([DeleteChildSa(spi_in, cause, reason)])

    def rekey_child(self, spi_in: bytes) -> None:
        """Rekey one Child SA now (soft lifetime reached: by time here, by bytes/packets via the owner)."""
        c = self.children.by_spi_in(spi_in)
        if c is not None and c.state == ChildSaState.INSTALLED:
            c.rekey_at = None
            self.enqueue([ChildRekey(spi_in)])

    def expire_child(self, spi_in: bytes, hard: bool) -> None:
        """A lifetime of the Child SA ran out: soft starts a rekey, hard deletes the SA."""
        if not hard:
            self.rekey_child(spi_in)
            return
        c = self.children.by_spi_in(spi_in)
        if c is not None and c.state != ChildSaState.DELETING:
            c.expire_at = None
            self.child_log.info("Child SA %s reached its hard lifetime: deleting it", c.name)
            self.enqueue([DeleteChildSa(spi_in, Cause.EXPIRED, "hard lifetime expired")], first=True)

    def rekey(self) -> None:
        """Rekey the IKE SA now (RFC 7296 1.3.2)."""
        if self.state == IkeState.ESTABLISHED and not self.exchanges.pending(lambda t: t.kind is TaskKind.IKE_REKEY):
            self.rekey_at = None
            self.enqueue([IkeRekey()])

    def send_liveness(self) -> None:
        self.enqueue([Liveness()])

    def note_inbound_traffic(self, now: float) -> None:
        """The data plane saw ESP from the peer: it is alive, DPD can wait (RFC 7296 2.4)."""
        self.last_traffic_in = max(self.last_traffic_in, now)

    # ------------------------------------------------------------------ the sans-I/O verbs
    def receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float, parsed: Message | None = None
                ) -> None:
        """Feed one datagram (without the non-ESP marker) addressed to this SA (``parsed``: already decoded)."""
        self.now = now
        if self.state == IkeState.CLOSED:
            return
        if _is_plain_informational_response(data):
            self._on_unprotected_notify(data)
            return
        try:
            msg = parsed if parsed is not None else self.frag.decode(data, local, remote, now)
            if msg is None:
                return  # a fragment, kept until the message is complete (RFC 7383 2.6)
            check_message(msg)
        except IntegrityError:
            self.count("integrity")
            self.log.debug("dropped a message whose integrity check failed")
            return
        except RemoteProtocolError as e:
            self.count("malformed")
            self.log.debug("dropped a malformed message: %s", safe(e))
            if e.notify is not None and self.sk_in is not None and _is_request(data):
                self.exchanges.answer_error(data, e, local, remote)
            return
        if msg.is_initiator == self.initiator:
            self.count("malformed")  # our own role's flag: a reflected or forged message
            return
        if msg.exchange != ExchangeType.IKE_SA_INIT:  # a resent IKE_SA_INIT must not keep a half-open SA alive
            self.last_received = now
        if msg.is_response:
            self.exchanges.on_response(msg, data, local, remote)
        else:
            self.exchanges.on_request(msg, data, local, remote)
        self._settled()

    def datagrams_to_send(self) -> list[Datagram]:
        """(data, local endpoint, remote endpoint, id); the transport adds the non-ESP marker on 4500."""
        out, self.exchanges.out = self.exchanges.out, []
        return [Datagram(d, lo, re, self.ike_sa_id) for d, lo, re in out]

    def get_timer(self) -> float | None:
        st = self.state
        if st == IkeState.CLOSED:
            return None
        t = self.exchanges.next_deadline()
        times = [] if t is None else [t]
        if st in (IkeState.CREATED, IkeState.CONNECTING) and not self.initiator:
            times.append(self.last_received + HALF_OPEN_TIMEOUT)
        elif st == IkeState.ESTABLISHED:
            times += lifetimes.deadlines(self)
        elif st == IkeState.REKEYED and self.rekeyed_close_at is not None:
            times.append(self.rekeyed_close_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        st = self.state
        if st == IkeState.CLOSED:
            return
        if st in (IkeState.CREATED, IkeState.CONNECTING) and not self.initiator \
                and now >= self.last_received + HALF_OPEN_TIMEOUT:
            self.close(Cause.TIMEOUT, "half-open IKE SA timed out waiting for IKE_AUTH")
            return
        if st == IkeState.REKEYED and self.rekeyed_close_at is not None and now >= self.rekeyed_close_at:
            self.close(Cause.REKEYED, "rekeyed (the peer never deleted the old IKE SA)")
            return
        self.exchanges.release_response(now)
        self.exchanges.retransmit(now)
        if self.state == IkeState.ESTABLISHED:
            lifetimes.on_timer(self, now)
        self._settled()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_signal(self) -> Signal | None:
        return self._signals.popleft() if self._signals else None

    # ------------------------------------------------------------------ used by tasks
    def emit(self, event: Event) -> None:
        self._events.append(event)

    def signal(self, sig: Signal) -> None:
        self._signals.append(sig)

    def enqueue(self, tasks: list[InitiatorTask], *, first: bool = False) -> None:
        """Queue an exchange; it is sent when no request of ours is in flight (window size 1).
        ``first`` puts it ahead of the others (deleting a replaced SA should not wait)."""
        if self.state == IkeState.ESTABLISHED:
            self.exchanges.add(tasks, first=first)

    def retry_later(self, tasks: list[InitiatorTask], what: str) -> None:
        """RFC 7296 2.25: do not retry at once; wait a randomised delay."""
        delay = RETRY_DELAY + self.jitter(RETRY_JITTER)
        self.log.info("%s: retrying in %.1fs", what, delay)
        self.exchanges.later(self.now + delay, tasks)

    def jitter(self, span: float) -> float:
        """A random share of ``span`` from the context's rng (tests control it)."""
        return 0.0 if span <= 0 else span * int.from_bytes(self.ctx.rng(4), "big") / 2**32

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def begin_responder(self, spi_i: bytes, local: Endpoint, remote: Endpoint) -> None:
        """The peer's IKE_SA_INIT: take its SPI, choose ours (RFC 7296 2.6)."""
        self.spi_i = spi_i
        self.spi_r = self.ctx.alloc_ike_spi()
        self.local, self.remote = local, remote
        self.set_state(IkeState.CONNECTING)
        self.signal(SpiAssigned(self.spi_r))

    def peer_seen(self, local: Endpoint, remote: Endpoint) -> None:
        """An authenticated request arrived from ``remote`` to ``local`` (RFC 7296 2.23; not with
        MOBIKE).

        Our own address always follows; the peer's only when the peer is behind a NAT (whose
        mapping may change) and we are not (a host behind a NAT SHOULD NOT update: a DoS), as
        strongSwan; and always for the expected move from port 500 to 4500 of the same address.
        """
        before = (self.local, self.remote)
        nat_switch = remote[0] == self.remote[0] and self.remote[1] != remote[1] and remote[1] == 4500
        if (self.remote_behind_nat and not self.local_behind_nat) or nat_switch or self.established_at is None:
            self.remote = remote
        self.local = local
        if self.established_at is not None and (self.local, self.remote) != before:
            self.log.info("peer moved to %s[%d]", safe(remote[0]), remote[1])
            self.emit(IkeSaMoved(self.ike_sa_id, self.settings.name, self.local, self.remote,
                                 tuple(sorted({c.event.reqid for c in self.children}))))

    def after_response(self) -> None:
        if self._close_after_response is not None:
            self.close(*self._close_after_response)

    def close_after_response(self, cause: Cause, reason: str) -> None:
        self._close_after_response = (cause, reason)

    def alloc_reqid(self, child: str | None = None) -> int:
        return self.ctx.alloc_reqid(self.settings.name, child)

    def add_child(self, event: ChildSaEstablished, settings: ChildSettings | None = None) -> ChildSa:
        c = ChildSa(event, settings=settings or self.settings.child(event.child), established_at=self.now)
        lifetimes.arm_child(self, c)
        self.children.add(c)
        self.child_log.info("Child SA %s %s: SPIs %s_i %s_o, %s", event.child,
                            "rekeyed" if event.rekeyed_spi_in else "established", event.spi_in.hex(),
                            event.spi_out.hex(), describe_child(event))
        self.emit(event)
        return c

    def remove_child(self, spi_in: bytes, cause: Cause, reason: str = "") -> None:
        c = self.children.by_spi_in(spi_in)
        if c is None:
            return
        self.children.remove(c)
        e = c.event
        self.child_log.info("Child SA %s deleted%s: SPIs %s_i %s_o", e.child, f" ({reason})" if reason else "",
                            e.spi_in.hex(), e.spi_out.hex())
        self.emit(ChildSaDeleted(self.ike_sa_id, self.settings.name, e.child, e.reqid, e.spi_in, e.spi_out,
                                 cause, reason, reqid_in_use=self.children.reqid_in_use(e.reqid)))

    def establish(self, initial_contact: bool = False) -> None:
        """IKE_AUTH completed (RFC 7296 1.2): the IKE SA is up before any of its Child SAs."""
        self.set_state(IkeState.ESTABLISHED)
        self.established_at = self.now
        lifetimes.arm_ike(self)
        assert self.proposal is not None
        self.log.info("IKE SA established: %s, %s === %s%s", proposal_to_swanctl(self.proposal),
                      self.local_identity, safe(self.remote_identity), ", UDP-encapsulated" if self.encap else "")
        self.emit(IkeSaEstablished(self.ike_sa_id, self.settings.name, initial_contact))

    def close(self, cause: Cause, reason: str) -> None:
        if self.state == IkeState.CLOSED:
            return
        self.exchanges.abort_all()  # e.g. a rekey collision the peer won hands the Child SAs over
        for c in list(self.children):
            self.remove_child(c.spi_in, cause, reason)
        was_established = self.established_at is not None
        report_login(self, LoginResult.ABANDONED, reason)  # a login under way that never concluded
        self.state = IkeState.CLOSED
        self.fail_reason = self.fail_reason or reason
        quiet = was_established or cause in (Cause.DELETED_LOCALLY, Cause.DELETED_BY_PEER, Cause.REDIRECTED)
        (self.log.info if quiet else self.log.warning)("IKE SA closed: %s", reason)
        self.emit(IkeSaClosed(self.ike_sa_id, self.settings.name, cause, reason, established=was_established,
                              replaced_by=self.replaced_by))

    # ------------------------------------------------------------------ internals
    def _settled(self) -> None:
        if self.reauth_of is not None and self.state == IkeState.ESTABLISHED and self.exchanges.idle:
            self.signal(Settled())

    def _on_unprotected_notify(self, data: bytes) -> None:
        """RFC 7296 2.21.4: an unprotected INVALID_IKE_SPI answer to our request.

        Anyone can forge it, so it never closes the SA; it only makes us check
        liveness sooner: the next retransmission goes out now and is the last one.
        """
        try:
            msg = decode_message(data)
        except RemoteProtocolError:
            self.count("malformed")
            return
        if msg.notify(NotifyType.INVALID_IKE_SPI) is None or self.state != IkeState.ESTABLISHED:
            self.count("malformed")
            return
        self.count("invalid_ike_spi")
        if self.exchanges.check_sooner(msg.message_id):
            self.log.info("peer answered request %d with an unprotected INVALID_IKE_SPI: it may have lost "
                          "the IKE SA, checking sooner", msg.message_id)


def _is_request(data: bytes) -> bool:
    return len(data) >= 20 and not (data[19] & 0x20)


def _is_plain_informational_response(data: bytes) -> bool:
    """An INFORMATIONAL response whose first payload is not SK: only INVALID_IKE_SPI is sent so."""
    return len(data) >= 28 and data[18] == ExchangeType.INFORMATIONAL and bool(data[19] & 0x20) \
        and data[16] not in (PayloadType.SK, PayloadType.SKF)


__all__ = ["HALF_OPEN_TIMEOUT", "REKEYED_TIMEOUT", "ChildEvent", "ChildSa", "ChildSaState", "IkeSa", "IkeState"]
