"""The sans-I/O IKE SA: message IDs, retransmission, the exchange queue and state.

Modelled on aioquic's connection object: the owner feeds datagrams and time in
(``receive``, ``handle_timer``) and takes datagrams, a timer and events out
(``datagrams_to_send``, ``get_timer``, ``next_event``). Nothing here touches a
socket or reads the clock.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ipsecd.errors import IntegrityError, RemoteProtocolError
from ipsecd.iana import NATT_PORT, ExchangeType, NotifyType, PayloadType, PrfId, ProtocolId, TransformType
from ipsecd.identity import Identity
from ipsecd.ike.crypto import KeyExchange, Prf
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    Endpoint,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from ipsecd.ike.keymat import IkeKeys
from ipsecd.ike.message import Message, SkCipher, check_message, decode_message, encode_message
from ipsecd.ike.payloads import NotifyPayload, Payload, Proposal, SaPayload
from ipsecd.ike.proposal import proposal_to_swanctl
from ipsecd.ike.settings import ChildSettings, IkeSettings
from ipsecd.ike.sk import make_sk_ciphers
from ipsecd.ike.tasks import Retry, Skip, Task, TaskFailed
from ipsecd.ike.tasks.child_create import ChildCreate
from ipsecd.ike.tasks.child_rekey import ChildRekey
from ipsecd.ike.tasks.ike_auth import IkeAuth
from ipsecd.ike.tasks.ike_init import IkeInit
from ipsecd.ike.tasks.ike_rekey import IkeRekey
from ipsecd.ike.tasks.informational import (
    DeleteChildSa,
    DeleteIkeSa,
    InformationalResponder,
    Liveness,
    TemporaryFailure,
)
from ipsecd.ike.ts import TriggerPacket

log = logging.getLogger("ipsecd.ike")

HALF_OPEN_TIMEOUT = 30.0  # responder: drop an SA whose IKE_AUTH never came
DELETE_TIMEOUT = 10.0  # how long we wait for the answer to our Delete before closing anyway
# RFC 7296 2.25: after TEMPORARY_FAILURE (or a refused rekey) wait before retrying:
# RETRY_DELAY plus a random part up to RETRY_JITTER, so two peers do not collide again.
RETRY_DELAY = 10.0
RETRY_JITTER = 5.0
# The responder of an IKE SA rekey waits this long for the initiator to delete the
# old IKE SA before dropping it on its own (its Child SAs have already moved).
REKEYED_TIMEOUT = 60.0


class IkeState(StrEnum):
    CREATED = "CREATED"
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    REKEYED = "REKEYED"  # replaced by a rekey: no Child SAs left, waiting for the Delete
    DELETING = "DELETING"
    CLOSED = "CLOSED"


@dataclass
class ChildSa:
    """A Child SA as the IKE SA knows it (the data plane holds the packet state).

    ``state``: INSTALLED; REKEYING (our rekey request is in flight); REKEYED
    (a successor exists, this one waits for its Delete); DELETING (our Delete
    is in flight). ``rekey_at``/``expire_at`` are the soft and hard lifetimes.
    """

    event: ChildSaEstablished
    state: str = "INSTALLED"
    settings: ChildSettings | None = None
    established_at: float = 0.0
    rekey_at: float | None = None
    expire_at: float | None = None

    @property
    def spi_in(self) -> bytes:
        return self.event.spi_in

    @property
    def spi_out(self) -> bytes:
        return self.event.spi_out


@dataclass
class _Outstanding:
    """Our request in flight: kept for retransmission until its response arrives (RFC 7296 2.1)."""

    message_id: int
    exchange: ExchangeType
    tasks: list[Task]
    data: bytes
    sent_at: float
    tries: int = 0
    deadline: float = 0.0


@dataclass
class _Cached:
    message_id: int
    data: bytes
    remote: Endpoint
    local: Endpoint


class _SaLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the connection name, IKE SA number and peer address."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        sa: Any = (self.extra or {})["sa"]
        return f"[{sa.settings.name}|{sa.ike_sa_id}] {sa.remote[0]}: {msg}", kwargs


@dataclass
class IkeSa:
    """One IKE SA, both roles; see the module docstring for the sans-I/O contract.

    Ordering contract for the owner: everything an exchange produces is queued
    while ``receive``/``handle_timer`` runs. A responder that installs a Child SA
    (new or rekeyed) emits its ChildSaEstablished in the same call that queues
    the response; the owner must drain ``next_event()`` and install the inbound
    SA before it sends the datagrams of that call (``datagrams_to_send()``), so
    the peer's first ESP packet on the new SA never beats the SA into the kernel
    or data plane (RFC 7296 2.8).
    """

    settings: IkeSettings
    ike_sa_id: int
    initiator: bool
    local: Endpoint
    remote: Endpoint
    now: float
    rng: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    spi_allocator: Callable[[], bytes] | None = field(default=None, repr=False)
    reqid_allocator: Callable[[], int] | None = field(default=None, repr=False)
    candidates: Sequence[IkeSettings] = ()  # responder: connections this peer may turn out to be
    id_allocator: Callable[[], int] | None = field(default=None, repr=False)  # ids of rekeyed IKE SAs
    # does another IKE SA with this peer exist? (decides INITIAL_CONTACT; the manager knows)
    has_contact: Callable[[IkeSa], bool] | None = field(default=None, repr=False)
    # (connection, child) -> the reqid every Child SA of that child must carry, or None for a
    # fresh one: a trap's queued packets and policies are keyed by it (the manager knows)
    fixed_reqid: Callable[[str, str], int | None] | None = field(default=None, repr=False)

    state: IkeState = IkeState.CREATED
    spi_i: bytes = b""
    spi_r: bytes = bytes(8)
    nonce_i: bytes = b""
    nonce_r: bytes = b""
    ke: KeyExchange | None = field(default=None, repr=False)
    keys: IkeKeys | None = field(default=None, repr=False)
    proposal: Proposal | None = None
    sk_out: SkCipher | None = field(default=None, repr=False)
    sk_in: SkCipher | None = field(default=None, repr=False)
    init_request: bytes = field(default=b"", repr=False)
    init_response: bytes = field(default=b"", repr=False)
    cookie: bytes = b""
    cookie_retries: int = 0
    ke_retries: int = 0
    local_behind_nat: bool = False
    remote_behind_nat: bool = False
    remote_identity: Identity | None = None
    initial_contact: bool = False
    fail_reason: str = ""
    children: list[ChildSa] = field(default_factory=list)
    created_at: float = 0.0
    established_at: float | None = None
    last_received: float = 0.0
    # Latest inbound ESP seen by the data plane; the owner updates it (note_inbound_traffic)
    # so DPD does not probe a peer that is visibly sending.
    last_traffic_in: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    rekey_at: float | None = None  # IKE SA soft lifetime: start a rekey
    hard_at: float | None = None  # IKE SA hard lifetime (rekey_time + over_time): delete
    rekeyed_from: int | None = None  # the IKE SA this one replaced
    reauth_at: float | None = None  # reauth_time reached: the manager builds a replacement IKE SA
    reauth_due: bool = False  # set by the timer, consumed by the manager
    reauth_of: int | None = None  # this IKE SA reauthenticates that one, deleted once we are complete
    successor: IkeSa | None = field(default=None, repr=False)  # the IKE SA that replaced this one
    # RFC 7296 2.8.1: old inbound SPI -> (Ni, Nr) of the peer's rekey we answered while ours was in flight
    rekey_collisions: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    rekeying_ike: IkeRekey | None = field(default=None, repr=False)  # our IKE rekey in flight
    # RFC 7296 2.8.2: the peer's new IKE SA we answered while our own IKE rekey was in flight
    pending_successor: IkeSa | None = field(default=None, repr=False)
    spawned: list[IkeSa] = field(default_factory=list, repr=False)  # new IKE SAs for the manager to adopt

    _next_request_id: int = 0
    _expected_request_id: int = 0
    _outstanding: _Outstanding | None = None
    _queue: deque[list[Task]] = field(default_factory=deque)
    _delayed: list[tuple[float, list[Task]]] = field(default_factory=list, repr=False)
    _cached_response: _Cached | None = None
    _out: list[tuple[bytes, Endpoint, Endpoint]] = field(default_factory=list)
    _events: deque[Event] = field(default_factory=deque)
    _close_after_response: str | None = None
    _reqid_counter: int = 0
    _prf: Prf | None = field(default=None, repr=False)
    _rekeyed_close_at: float | None = None

    def __post_init__(self) -> None:
        if not self.spi_i:
            self.spi_i = self.rng(8) if self.initiator else b""
        if not self.candidates:
            self.candidates = (self.settings,)
        self.last_received = self.now
        self.last_traffic_in = self.now
        self.created_at = self.now
        self.log = _SaLog(log, {"sa": self})
        # Child SA events go to the "child" subsystem, as strongSwan's chd (log.child in the config)
        self.child_log = _SaLog(logging.getLogger("ipsecd.child"), {"sa": self})

    # ------------------------------------------------------------------ API
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
            self._prf = Prf(PrfId(t.id))
        return self._prf

    @property
    def keys_required(self) -> IkeKeys:
        assert self.keys is not None
        return self.keys

    def initiate(self, children: Sequence[ChildSettings] | None = None, *,
                 trigger: TriggerPacket | None = None) -> None:
        """Start IKE_SA_INIT, then IKE_AUTH with the first child; each further child
        follows in its own CREATE_CHILD_SA exchange (RFC 7296 1.3.1) once the IKE SA is up.
        ``trigger`` (an acquire's packet) goes first in the first child's selectors (RFC 7296 2.9)."""
        assert self.initiator and self.state == IkeState.CREATED
        self.state = IkeState.CONNECTING
        kids = list(self.settings.children if children is None else children)
        self._queue.append([IkeInit()])
        self._queue.append([IkeAuth(), ChildCreate(kids[0], trigger=trigger)] if kids else [IkeAuth()])
        for kid in kids[1:]:
            self._queue.append([ChildCreate(kid, exchange=ExchangeType.CREATE_CHILD_SA)])
        self._send_next()

    def create_child(self, child: ChildSettings, *, trigger: TriggerPacket | None = None) -> None:
        """Negotiate one more Child SA on this IKE SA (CREATE_CHILD_SA, RFC 7296 1.3.1).

        Also accepted while our own IKE_SA_INIT/IKE_AUTH is still in flight: the exchange
        then follows IKE_AUTH, as the extra children of ``initiate`` do.
        """
        task = ChildCreate(child, exchange=ExchangeType.CREATE_CHILD_SA, trigger=trigger)
        if self.state == IkeState.CONNECTING and self.initiator:
            self._queue.append([task])
            return
        self.enqueue([task])

    def pending_child(self, child: str) -> bool:
        """Is a CREATE of Child SA ``child`` queued, in flight or waiting for a retry here?

        The manager asks before acting on an acquire: one negotiation per trap at a time.
        """
        def creates(tasks: list[Task]) -> bool:
            return any(isinstance(t, ChildCreate) and t.rekey_of is None and t.child is not None
                       and t.child.name == child for t in tasks)

        out = self._outstanding
        return (out is not None and creates(out.tasks)) or any(creates(ts) for ts in self._queue) \
            or any(creates(ts) for _at, ts in self._delayed)

    def delete(self, reason: str = "deleted locally") -> None:
        """Close the IKE SA with a Delete; Child SAs go with it."""
        if self.state in (IkeState.CLOSED, IkeState.DELETING):
            return
        if self.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            self.close(reason)
            return
        self._queue.clear()
        self._delayed.clear()
        self._queue.append([DeleteIkeSa(reason)])
        # a request still in flight is abandoned: the Delete replaces it (its answer no longer matters)
        self._outstanding = None
        self.rekeying_ike = None
        self._send_next()

    def delete_child(self, spi_in: bytes) -> None:
        self.enqueue([DeleteChildSa(spi_in)])

    def rekey_child(self, spi_in: bytes) -> None:
        """Rekey one Child SA now (soft lifetime reached: by time here, by bytes/packets via the owner)."""
        c = self.find_child(spi_in)
        if c is not None and c.state == "INSTALLED":
            c.rekey_at = None
            self.enqueue([ChildRekey(spi_in)])

    def expire_child(self, spi_in: bytes, hard: bool) -> None:
        """A lifetime of the Child SA ran out: soft starts a rekey, hard deletes the SA."""
        if not hard:
            self.rekey_child(spi_in)
            return
        c = self.find_child(spi_in)
        if c is not None and c.state != "DELETING":
            c.expire_at = None
            self.child_log.info("Child SA %s reached its hard lifetime: deleting it", c.event.child)
            self.enqueue_first([DeleteChildSa(spi_in, reason="hard lifetime expired")])

    def rekey(self) -> None:
        """Rekey the IKE SA now (RFC 7296 1.3.2)."""
        if self.state == IkeState.ESTABLISHED and self.rekeying_ike is None \
                and not any(isinstance(t, IkeRekey) for ts in self._queue for t in ts):
            self.rekey_at = None
            self.enqueue([IkeRekey()])

    @property
    def idle(self) -> bool:
        """No exchange in flight or queued: every Child SA asked for has its answer."""
        return self._outstanding is None and not self._queue and not self._delayed

    def send_liveness(self) -> None:
        self.enqueue([Liveness()])

    def note_inbound_traffic(self, now: float) -> None:
        """The data plane saw ESP from the peer: it is alive, DPD can wait (RFC 7296 2.4)."""
        self.last_traffic_in = max(self.last_traffic_in, now)

    def receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        """Feed one datagram (without the non-ESP marker) addressed to this SA."""
        self.now = now
        if self.state == IkeState.CLOSED:
            return
        if _is_plain_informational_response(data):
            self._on_unprotected_notify(data)
            return
        try:
            msg = decode_message(data, self.sk_in if _is_encrypted_exchange(data) else None)
            check_message(msg)
        except IntegrityError:
            self._count("integrity")
            self.log.debug("dropped a message whose integrity check failed")
            return
        except RemoteProtocolError as e:
            self._count("malformed")
            self.log.debug("dropped a malformed message: %s", e)
            if e.notify is not None and self.sk_in is not None and _is_request(data):
                self._answer_error(data, e, local, remote)
            return
        self.last_received = now
        if msg.is_response:
            self._on_response(msg, data, local, remote)
        else:
            self._on_request(msg, data, local, remote)

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint, Endpoint]]:
        """(data, local endpoint, remote endpoint); the transport adds the non-ESP marker on 4500."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        if self.state == IkeState.CLOSED:
            return None
        timers: list[float] = []
        out = self._outstanding
        if out is not None:
            timers.append(out.deadline)
            if self.settings.dpd_timeout > 0 and self.state == IkeState.ESTABLISHED:
                timers.append(out.sent_at + self.settings.dpd_timeout)
        if self.state in (IkeState.CREATED, IkeState.CONNECTING) and not self.initiator:
            timers.append(self.last_received + HALF_OPEN_TIMEOUT)
        if self.state == IkeState.ESTABLISHED:
            timers += [t for t in (self.rekey_at, self.hard_at, self.reauth_at, self._dpd_at()) if t is not None]
            for c in self.children:
                timers += [t for t in (c.rekey_at, c.expire_at) if t is not None]
            timers += [at for at, _ in self._delayed]
        if self.state == IkeState.REKEYED and self._rekeyed_close_at is not None:
            timers.append(self._rekeyed_close_at)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        if self.state == IkeState.CLOSED:
            return
        if self.state in (IkeState.CREATED, IkeState.CONNECTING) and not self.initiator \
                and now >= self.last_received + HALF_OPEN_TIMEOUT:
            self.close("half-open IKE SA timed out waiting for IKE_AUTH")
            return
        if self.state == IkeState.REKEYED and self._rekeyed_close_at is not None and now >= self._rekeyed_close_at:
            self.close("rekeyed (the peer never deleted the old IKE SA)")
            return
        self._retransmit(now)
        if self.state != IkeState.ESTABLISHED:
            return
        if self.hard_at is not None and now >= self.hard_at:
            self.hard_at = None
            self.log.info("IKE SA reached its hard lifetime (rekey_time + over_time): deleting it")
            self.delete("IKE SA lifetime expired")
            return
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey()
        if self.reauth_at is not None and now >= self.reauth_at:
            self.reauth_at = None
            self.reauth_due = True
        for c in list(self.children):
            if c.expire_at is not None and now >= c.expire_at:
                self.expire_child(c.spi_in, hard=True)
            elif c.rekey_at is not None and now >= c.rekey_at:
                c.rekey_at = None
                if c.state == "INSTALLED":
                    self.child_log.info("Child SA %s reached its soft lifetime", c.event.child)
                    self.rekey_child(c.spi_in)
        due = [d for d in self._delayed if d[0] <= now]
        for d in due:
            self._delayed.remove(d)
            self.enqueue(d[1])
        dpd = self._dpd_at()
        if dpd is not None and now >= dpd:
            self.log.debug("no traffic from the peer for %.0fs: checking liveness", self.settings.dpd_delay)
            self.send_liveness()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------- helpers used by tasks
    def emit(self, event: Event) -> None:
        self._events.append(event)

    def enqueue(self, tasks: list[Task]) -> None:
        """Queue an exchange; it is sent when no request of ours is in flight (window size 1)."""
        self._enqueue(tasks)

    def enqueue_first(self, tasks: list[Task]) -> None:
        """Queue an exchange ahead of the others (deleting a replaced SA should not wait)."""
        if self.state != IkeState.ESTABLISHED:
            return
        self._queue.appendleft(tasks)
        if self._outstanding is None:
            self._send_next()

    def retry_later(self, tasks: list[Task], what: str) -> None:
        """RFC 7296 2.25: do not retry at once; wait a randomised delay."""
        delay = RETRY_DELAY + self._jitter(RETRY_JITTER)
        self.log.info("%s: retrying in %.1fs", what, delay)
        self._delayed.append((self.now + delay, tasks))

    def alloc_spi(self) -> bytes:
        if self.spi_allocator is not None:
            return self.spi_allocator()
        while True:
            spi = self.rng(4)
            if int.from_bytes(spi, "big") >= 256:  # SPIs 1..255 are reserved by IANA (RFC 4303 2.1)
                return spi

    def alloc_reqid(self, child: str | None = None) -> int:
        """The reqid of a new Child SA: the fixed one of ``child`` if the owner set one."""
        if child is not None and self.fixed_reqid is not None:
            fixed = self.fixed_reqid(self.settings.name, child)
            if fixed is not None:
                return fixed
        if self.reqid_allocator is not None:
            return self.reqid_allocator()
        self._reqid_counter += 1
        return self._reqid_counter

    def find_child(self, spi_in: bytes) -> ChildSa | None:
        for c in self.children:
            if c.spi_in == spi_in:
                return c
        return None

    def child_by_spi_out(self, spi_out: bytes) -> ChildSa | None:
        for c in self.children:
            if c.spi_out == spi_out:
                return c
        return None

    def ike_rekey_in_progress(self) -> bool:
        return self.rekeying_ike is not None or self.state != IkeState.ESTABLISHED

    def add_child(self, event: ChildSaEstablished, settings: ChildSettings | None = None) -> None:
        c = ChildSa(event, settings=settings or self.settings.child(event.child), established_at=self.now)
        self._arm_child(c)
        self.children.append(c)
        self.child_log.info("Child SA %s %s: SPIs %s_i %s_o, %s, %s mode%s", event.child,
                      "rekeyed" if event.rekeyed_spi_in else "established", event.spi_in.hex(),
                      event.spi_out.hex(), proposal_to_swanctl(event.proposal), event.mode,
                      ", UDP-encapsulated" if event.encap else "")
        self.emit(event)

    def child_in_spi_for_out(self, spi_out: bytes) -> bytes | None:
        c = self.child_by_spi_out(spi_out)
        return c.spi_in if c is not None else None

    def remove_child(self, spi_in: bytes, reason: str = "") -> None:
        c = self.find_child(spi_in)
        if c is None:
            return
        self.children.remove(c)
        e = c.event
        in_use = any(o.event.reqid == e.reqid for o in self.children)
        self.child_log.info("Child SA %s deleted%s: SPIs %s_i %s_o", e.child, f" ({reason})" if reason else "",
                      e.spi_in.hex(), e.spi_out.hex())
        self.emit(ChildSaDeleted(self.ike_sa_id, self.settings.name, e.child, e.reqid, e.spi_in, e.spi_out,
                                 reqid_in_use=in_use, reason=reason))

    def begin_delete(self) -> None:
        self.state = IkeState.DELETING

    def close_after_response(self, reason: str) -> None:
        self._close_after_response = reason

    def close(self, reason: str, *, peer_dead: bool = False) -> None:
        if self.state == IkeState.CLOSED:
            return
        pending = self.pending_successor
        if pending is not None and pending.state == IkeState.ESTABLISHED and self.children:
            # RFC 7296 2.8.2: the peer won a rekey collision and deleted this SA before our
            # own rekey was answered: its new IKE SA takes the Child SAs
            self.adopt_successor(pending, delete_old=False)
        for c in list(self.children):
            self.remove_child(c.spi_in, reason=reason)
        was_established = self.established_at is not None
        self.state = IkeState.CLOSED
        self._outstanding = None
        self._queue.clear()
        self._delayed.clear()
        successor = self.successor.ike_sa_id if self.successor is not None else None
        (self.log.info if was_established or "deleted" in reason else self.log.warning)("IKE SA closed: %s", reason)
        self.emit(IkeSaClosed(self.ike_sa_id, self.settings.name, reason, peer_dead=peer_dead,
                              dpd_action=self.settings.dpd_action if peer_dead else "", replaced_by=successor))

    def spawn_rekeyed(self, proposal: Proposal, keys: IkeKeys, *, initiator: bool, spi_i: bytes, spi_r: bytes,
                      nonce_i: bytes, nonce_r: bytes) -> IkeSa:
        """The new IKE SA of a rekey (RFC 7296 2.18): established at once, message IDs from 0,
        the initiator of the rekey becoming its original initiator."""
        new = IkeSa(self.settings, self.id_allocator() if self.id_allocator else self.ike_sa_id, initiator,
                    self.local, self.remote, self.now, rng=self.rng, spi_allocator=self.spi_allocator,
                    reqid_allocator=self.reqid_allocator, candidates=self.candidates, id_allocator=self.id_allocator,
                    has_contact=self.has_contact, fixed_reqid=self.fixed_reqid,
                    spi_i=spi_i, spi_r=spi_r, nonce_i=nonce_i, nonce_r=nonce_r, keys=keys, proposal=proposal,
                    local_behind_nat=self.local_behind_nat, remote_behind_nat=self.remote_behind_nat,
                    remote_identity=self.remote_identity, rekeyed_from=self.ike_sa_id)
        new.sk_out, new.sk_in = make_sk_ciphers(proposal, keys, initiator)
        new.state = IkeState.ESTABLISHED
        new.established_at = self.now
        new.last_traffic_in = self.last_traffic_in
        new.reauth_at = self.reauth_at
        new._arm_ike()
        new.log.info("IKE SA established by rekeying IKE SA %d: %s", self.ike_sa_id, proposal_to_swanctl(proposal))
        self.spawned.append(new)
        return new

    def adopt_successor(self, new: IkeSa, *, delete_old: bool) -> None:
        """Hand the Child SAs and their pending work to ``new``; this SA is then only
        waiting to be deleted (by us when ``delete_old``, otherwise by the peer)."""
        self.pending_successor = None
        self.successor = new
        moved = [c for c in self.children]
        self.children = []
        for c in moved:
            c.event = dataclasses.replace(c.event, ike_sa_id=new.ike_sa_id)
            new.children.append(c)
        for tasks in self._queue:
            if not any(isinstance(t, (IkeRekey, Liveness, DeleteIkeSa)) for t in tasks):
                new._queue.append(tasks)
        self._queue.clear()
        new._delayed += [d for d in self._delayed if not any(isinstance(t, IkeRekey) for t in d[1])]
        self._delayed.clear()
        new.rekey_collisions.update(self.rekey_collisions)
        self.rekey_collisions.clear()
        self.rekey_at = self.hard_at = None
        self.state = IkeState.REKEYED
        self.log.info("IKE SA rekeyed: %d Child SA(s) moved to IKE SA %d", len(moved), new.ike_sa_id)
        self.emit(IkeSaRekeyed(self.ike_sa_id, self.settings.name, new.ike_sa_id,
                               tuple(c.spi_in for c in moved)))
        if delete_old:
            self.delete("rekeyed")
        else:
            self._rekeyed_close_at = self.now + REKEYED_TIMEOUT
        if new._outstanding is None:
            new._send_next()

    def status(self) -> dict[str, object]:
        """The list-sas view of this IKE SA (schema in the README)."""
        def ep(e: Endpoint) -> str:
            return f"{e[0]}[{e[1]}]"

        def left(t: float | None) -> int | None:
            return None if t is None else max(int(t - self.now), 0)
        return {
            "name": self.settings.name,
            "id": self.ike_sa_id,
            "state": self.state.value,
            "local": ep(self.local),
            "remote": ep(self.remote),
            "local_id": str(self.settings.local_identity(self.local[0])),
            "remote_id": str(self.remote_identity or self.settings.remote_id),
            "initiator": self.initiator,
            "spi_i": self.spi_i.hex(),
            "spi_r": self.spi_r.hex(),
            "proposal": proposal_to_swanctl(self.proposal) if self.proposal else "",
            "nat_local": self.local_behind_nat,
            "nat_remote": self.remote_behind_nat,
            "encap": self.encap,
            "rekey_in": left(self.rekey_at),
            "expires_in": left(self.hard_at),
            "child_sas": [
                {"name": c.event.child, "state": c.state, "reqid": c.event.reqid, "spi_in": c.spi_in.hex(),
                 "spi_out": c.spi_out.hex(), "rekey_in": left(c.rekey_at), "expires_in": left(c.expire_at)}
                for c in self.children
            ],
        }

    # ------------------------------------------------------------ internals
    def _timeout(self, tries: int) -> float:
        r = self.settings.retransmit
        return float(r.timeout * (r.base ** tries))

    def _jitter(self, span: float) -> float:
        """A random share of ``span`` from the injected rng (tests control it)."""
        if span <= 0:
            return 0.0
        return span * int.from_bytes(self.rng(4), "big") / 2**32

    def _arm_ike(self) -> None:
        s = self.settings
        if s.rekey_time > 0:
            self.rekey_at = self.now + max(s.rekey_time - self._jitter(s.rand_time), 0.0)
            if s.over_time > 0:
                self.hard_at = self.now + s.rekey_time + s.over_time
        if s.reauth_time > 0 and self.reauth_at is None:
            # RFC 7296 2.8 reauthentication: a fresh IKE_SA_INIT/IKE_AUTH, not a rekey; a rekeyed
            # IKE SA inherits its predecessor's deadline, or rekeys would postpone it forever
            self.reauth_at = self.now + max(s.reauth_time - self._jitter(s.rand_time), 0.0)

    def _arm_child(self, c: ChildSa) -> None:
        s = c.settings
        if s is None:
            return
        if s.rekey_time > 0:
            c.rekey_at = self.now + max(s.rekey_time - self._jitter(s.rand_time), 0.0)
        if s.life_time > 0:
            c.expire_at = self.now + s.life_time

    def _dpd_at(self) -> float | None:
        d = self.settings.dpd_delay
        if d <= 0 or self.state != IkeState.ESTABLISHED or self._outstanding is not None or self._queue:
            return None
        return max(self.last_received, self.last_traffic_in) + d

    def _retransmit(self, now: float) -> None:
        out = self._outstanding
        if out is None:
            return
        if out.exchange == ExchangeType.INFORMATIONAL and self.state == IkeState.DELETING \
                and now - out.sent_at >= DELETE_TIMEOUT:
            self.close("deleted locally (peer did not confirm)")
            return
        established = self.established_at is not None
        if established and self.settings.dpd_timeout > 0 and now >= out.sent_at + self.settings.dpd_timeout:
            self.close(f"peer dead: no answer to our {out.exchange.name} request within "
                       f"dpd_timeout {self.settings.dpd_timeout:.0f}s", peer_dead=True)
            return
        if now < out.deadline:
            return
        if out.tries >= self.settings.retransmit.tries:
            reason = (f"peer did not answer our {out.exchange.name} request after "
                      f"{out.tries} retransmissions: giving up")
            self.close(f"peer dead: {reason}" if established else reason, peer_dead=established)
            return
        out.tries += 1
        out.deadline = now + self._timeout(out.tries)
        self._count("retransmits")
        self.log.info("retransmit %d of request %d (%s)", out.tries, out.message_id, out.exchange.name)
        self._out.append((out.data, self.local, self.remote))

    def _on_unprotected_notify(self, data: bytes) -> None:
        """RFC 7296 2.21.4: an unprotected INVALID_IKE_SPI answer to our request.

        Anyone can forge it, so it never closes the SA; it only makes us check
        liveness sooner: the next retransmission goes out now and is the last one.
        """
        try:
            msg = decode_message(data)
        except RemoteProtocolError:
            self._count("malformed")
            return
        out = self._outstanding
        if msg.notify(NotifyType.INVALID_IKE_SPI) is None or self.state != IkeState.ESTABLISHED:
            self._count("malformed")
            return
        self._count("invalid_ike_spi")
        if out is None or msg.message_id != out.message_id:
            return
        self.log.info("peer answered request %d with an unprotected INVALID_IKE_SPI: it may have lost "
                      "the IKE SA, checking sooner", out.message_id)
        out.tries = max(out.tries, self.settings.retransmit.tries - 1)
        out.deadline = min(out.deadline, self.now)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _enqueue(self, tasks: list[Task]) -> None:
        if self.state != IkeState.ESTABLISHED:
            return
        self._queue.append(tasks)
        if self._outstanding is None:
            self._send_next()

    def _send_next(self, reuse_id: int | None = None) -> None:
        while self._queue and self._outstanding is None and self.state != IkeState.CLOSED:
            tasks = self._queue[0]
            exchange = tasks[0].exchange
            payloads: list[Payload] = []
            try:
                for t in tasks:
                    payloads += t.build_i(self)
            except Skip:
                self._queue.popleft()
                continue
            except TaskFailed as e:
                self._queue.popleft()
                if e.fatal:
                    self.close(e.reason)
                    return
                self.log.warning("%s", e.reason)
                continue
            self._queue.popleft()
            message_id = self._next_request_id if reuse_id is None else reuse_id
            if reuse_id is None:
                self._next_request_id += 1
            msg = Message(self.spi_i, self.spi_r, exchange, message_id, is_initiator=self.initiator,
                          is_response=False, payloads=payloads, encrypted=exchange != ExchangeType.IKE_SA_INIT)
            if exchange != ExchangeType.IKE_SA_INIT and self.encap and self.local[1] != NATT_PORT \
                    and self.initiator and self.remote[1] == 500:
                # RFC 7296 2.23: after NAT detection the initiator moves to port 4500
                self.local = (self.local[0], NATT_PORT)
                self.remote = (self.remote[0], NATT_PORT)
            data = encode_message(msg, self.sk_out if msg.encrypted else None)
            if exchange == ExchangeType.IKE_SA_INIT:
                self.init_request = data
            self._outstanding = _Outstanding(message_id, exchange, tasks, data, sent_at=self.now,
                                             deadline=self.now + self._timeout(0))
            self._out.append((data, self.local, self.remote))
            reuse_id = None

    def _on_response(self, msg: Message, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        out = self._outstanding
        if out is None or msg.message_id != out.message_id or msg.exchange != out.exchange:
            self._count("unexpected_response")
            return
        if msg.is_initiator == self.initiator:
            self._count("malformed")
            return
        if out.exchange == ExchangeType.IKE_SA_INIT:
            self.init_response = data
        self._outstanding = None
        try:
            for t in out.tasks:
                t.process_i(self, msg)
        except Retry:
            self._queue.appendleft(out.tasks)
            if out.exchange == ExchangeType.IKE_SA_INIT:
                self.spi_r = bytes(8)
                self._send_next(reuse_id=out.message_id)
            else:
                # RFC 7296 1.3: the failed exchange is complete; the retry is a new request
                self._send_next()
            return
        except TaskFailed as e:
            self.fail_reason = e.reason
            if e.fatal:
                self.close(e.reason)
                return
            self.log.warning("%s", e.reason)
        except RemoteProtocolError as e:
            self.close(f"invalid {out.exchange.name} response: {e}")
            return
        if out.exchange == ExchangeType.IKE_AUTH and self.state == IkeState.CONNECTING:
            self._established()
        if self.state == IkeState.CLOSED:
            return
        self._send_next()

    def _on_request(self, msg: Message, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        if msg.is_initiator == self.initiator:
            self._count("malformed")
            return
        cached = self._cached_response
        if cached is not None and msg.message_id == cached.message_id:
            # RFC 7296 2.1: a retransmitted request gets the same response again
            self._count("retransmitted_requests")
            self._out.append((cached.data, local, remote))
            return
        if msg.message_id != self._expected_request_id:
            self._count("bad_message_id")
            return
        live = (IkeState.ESTABLISHED, IkeState.REKEYED, IkeState.DELETING)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            tasks: list[Task] = [IkeInit()]
            self.state = IkeState.CONNECTING
        elif self.state == IkeState.CONNECTING and msg.exchange == ExchangeType.IKE_AUTH:
            tasks = [IkeAuth(), ChildCreate()]
        elif self.state in live and msg.exchange == ExchangeType.INFORMATIONAL:
            tasks = [InformationalResponder()]
        elif self.state in live and msg.exchange == ExchangeType.CREATE_CHILD_SA:
            tasks = [self._create_child_sa_responder(msg)]
        else:
            self._count("unexpected_exchange")
            return
        if msg.encrypted:
            # an authenticated request: the peer may have moved (NAT rebinding, switch to 4500)
            self.local, self.remote = local, remote
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            self.spi_i = msg.spi_i
            self.spi_r = self.rng(8)
            self.local, self.remote = local, remote
        payloads: list[Payload] = []
        close_reason: str | None = None
        try:
            for t in tasks:
                t.process_r(self, msg)
            for t in tasks:
                payloads += t.build_r(self)
        except RemoteProtocolError as e:
            notify = e.notify or NotifyType.INVALID_SYNTAX
            payloads = [NotifyPayload(notify, data=e.notify_data)]
            if msg.exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
                close_reason = self.fail_reason or str(e)
        if msg.exchange == ExchangeType.IKE_SA_INIT and close_reason is not None:
            self.spi_r = bytes(8)  # stateless error answer (RFC 7296 1.2, 2.6)
        resp = Message(self.spi_i, self.spi_r, msg.exchange, msg.message_id, is_initiator=self.initiator,
                       is_response=True, payloads=payloads, encrypted=msg.exchange != ExchangeType.IKE_SA_INIT)
        out = encode_message(resp, self.sk_out if resp.encrypted else None)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            self.init_request = data
            self.init_response = out
        self._expected_request_id += 1
        self._cached_response = _Cached(msg.message_id, out, remote, local)
        self._out.append((out, local, remote))
        if close_reason is not None:
            self.close(close_reason)
            return
        if msg.exchange == ExchangeType.IKE_AUTH:
            self._established()
        if self._close_after_response is not None:
            self.close(self._close_after_response)

    def _create_child_sa_responder(self, msg: Message) -> Task:
        """Which job a CREATE_CHILD_SA request is (RFC 7296 1.3), or TEMPORARY_FAILURE when we
        cannot take it now (RFC 7296 2.25.2)."""
        sa_payload = msg.get(SaPayload)
        ike_rekey = sa_payload is not None and any(p.protocol == ProtocolId.IKE for p in sa_payload.proposals)
        child_rekey = msg.notify(NotifyType.REKEY_SA) is not None
        if self.state != IkeState.ESTABLISHED:
            return TemporaryFailure(ExchangeType.CREATE_CHILD_SA)
        if ike_rekey:
            out = self._outstanding
            busy_with_child = out is not None and any(
                isinstance(t, (ChildCreate, ChildRekey, DeleteChildSa)) for t in out.tasks)
            if busy_with_child:
                self.log.info("peer wants to rekey the IKE SA while we change a Child SA: TEMPORARY_FAILURE")
                return TemporaryFailure(ExchangeType.CREATE_CHILD_SA)
            return IkeRekey()
        if child_rekey:
            return ChildRekey()
        if self.rekeying_ike is not None:
            self.log.info("peer wants a new Child SA while we rekey the IKE SA: TEMPORARY_FAILURE")
            return TemporaryFailure(ExchangeType.CREATE_CHILD_SA)
        return ChildCreate(exchange=ExchangeType.CREATE_CHILD_SA)

    def _answer_error(self, data: bytes, e: RemoteProtocolError, local: Endpoint, remote: Endpoint) -> None:
        """An authenticated but invalid request still gets its NOTIFY (RFC 7296 2.21.2)."""
        if len(data) < 28:
            return
        message_id = int.from_bytes(data[20:24], "big")
        exchange = data[18]
        if message_id != self._expected_request_id:
            return
        try:
            ex = ExchangeType(exchange)
        except ValueError:
            return
        assert e.notify is not None
        resp = Message(self.spi_i, self.spi_r, ex, message_id, is_initiator=self.initiator, is_response=True,
                       payloads=[NotifyPayload(e.notify, data=e.notify_data)], encrypted=True)
        out = encode_message(resp, self.sk_out)
        self._expected_request_id += 1
        self._cached_response = _Cached(message_id, out, remote, local)
        self._out.append((out, local, remote))

    def _established(self) -> None:
        self.state = IkeState.ESTABLISHED
        self.established_at = self.now
        self._arm_ike()
        assert self.proposal is not None
        self.log.info("IKE SA established: %s, %s === %s%s", proposal_to_swanctl(self.proposal),
                      self.settings.local_identity(self.local[0]), self.remote_identity,
                      ", UDP-encapsulated" if self.encap else "")
        self.emit(IkeSaEstablished(self.ike_sa_id, self.settings.name))
        # deliver the Child SA events after the IKE SA event, in creation order
        kids = [e for e in self._events if isinstance(e, ChildSaEstablished)]
        for k in kids:
            self._events.remove(k)
            self._events.append(k)


def _is_request(data: bytes) -> bool:
    return len(data) >= 20 and not (data[19] & 0x20)


def _is_encrypted_exchange(data: bytes) -> bool:
    return len(data) >= 19 and data[18] != ExchangeType.IKE_SA_INIT


def _is_plain_informational_response(data: bytes) -> bool:
    """An INFORMATIONAL response whose first payload is not SK: only INVALID_IKE_SPI is sent so."""
    return len(data) >= 28 and data[18] == ExchangeType.INFORMATIONAL and bool(data[19] & 0x20) \
        and data[16] != PayloadType.SK
