"""The sans-I/O IKE SA: message IDs, retransmission, the exchange queue and state.

Modelled on aioquic's connection object: the owner feeds datagrams and time in
(``receive``, ``handle_timer``) and takes datagrams, a timer and events out
(``datagrams_to_send``, ``get_timer``, ``next_event``). Nothing here touches a
socket or reads the clock.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ipsecd.errors import IntegrityError, RemoteProtocolError
from ipsecd.ike.constants import NATT_PORT, ExchangeType, NotifyType, PrfId, TransformType
from ipsecd.ike.crypto import KeyExchange, Prf
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    Endpoint,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
)
from ipsecd.ike.keymat import IkeKeys
from ipsecd.ike.message import Message, SkCipher, check_message, decode_message, encode_message
from ipsecd.ike.payloads import NotifyPayload, Payload, Proposal
from ipsecd.ike.proposal import proposal_to_swanctl
from ipsecd.ike.settings import ChildSettings, IkeIdentity, IkeSettings
from ipsecd.ike.tasks import Retry, Task, TaskFailed
from ipsecd.ike.tasks.child_create import ChildCreate
from ipsecd.ike.tasks.ike_auth import IkeAuth
from ipsecd.ike.tasks.ike_init import IkeInit
from ipsecd.ike.tasks.informational import DeleteChildSa, DeleteIkeSa, InformationalResponder, Liveness

log = logging.getLogger("ipsecd.ike")

HALF_OPEN_TIMEOUT = 30.0  # responder: drop an SA whose IKE_AUTH never came
DELETE_TIMEOUT = 10.0  # how long we wait for the answer to our Delete before closing anyway


class IkeState(StrEnum):
    CREATED = "CREATED"
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    DELETING = "DELETING"
    CLOSED = "CLOSED"


@dataclass
class ChildSa:
    """A Child SA as the IKE SA knows it (the data plane holds the packet state)."""

    event: ChildSaEstablished
    state: str = "INSTALLED"

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
    remote_identity: IkeIdentity | None = None
    initial_contact: bool = False
    fail_reason: str = ""
    children: list[ChildSa] = field(default_factory=list)
    established_at: float | None = None
    last_received: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)

    _next_request_id: int = 0
    _expected_request_id: int = 0
    _outstanding: _Outstanding | None = None
    _queue: deque[list[Task]] = field(default_factory=deque)
    _cached_response: _Cached | None = None
    _out: list[tuple[bytes, Endpoint, Endpoint]] = field(default_factory=list)
    _events: deque[Event] = field(default_factory=deque)
    _close_after_response: str | None = None
    _reqid_counter: int = 0
    _prf: Prf | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.spi_i:
            self.spi_i = self.rng(8) if self.initiator else b""
        if not self.candidates:
            self.candidates = (self.settings,)
        self.last_received = self.now
        self.log = _SaLog(log, {"sa": self})

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

    def initiate(self, children: Sequence[ChildSettings] | None = None) -> None:
        """Start IKE_SA_INIT, then IKE_AUTH with the first child; further children follow later."""
        assert self.initiator and self.state == IkeState.CREATED
        self.state = IkeState.CONNECTING
        kids = list(self.settings.children if children is None else children)
        self._queue.append([IkeInit()])
        self._queue.append([IkeAuth(), ChildCreate(kids[0])] if kids else [IkeAuth()])
        if len(kids) > 1:
            self.log.warning("only the first child (%s) is created with the IKE SA; CREATE_CHILD_SA for "
                             "additional children is not implemented yet", kids[0].name)
        self._send_next()

    def delete(self, reason: str = "deleted locally") -> None:
        """Close the IKE SA with a Delete; Child SAs go with it."""
        if self.state in (IkeState.CLOSED, IkeState.DELETING):
            return
        if self.state != IkeState.ESTABLISHED:
            self.close(reason)
            return
        self._queue.clear()
        self._queue.append([DeleteIkeSa(reason)])
        if self._outstanding is None:
            self._send_next()
        else:
            # a request is still in flight: the Delete replaces it (its answer no longer matters)
            self._outstanding = None
            self._send_next()

    def delete_child(self, spi_in: bytes) -> None:
        self._enqueue([DeleteChildSa(spi_in)])

    def send_liveness(self) -> None:
        self._enqueue([Liveness()])

    def receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        """Feed one datagram (without the non-ESP marker) addressed to this SA."""
        self.now = now
        if self.state == IkeState.CLOSED:
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
        timers = []
        if self._outstanding is not None:
            timers.append(self._outstanding.deadline)
        if self.state in (IkeState.CREATED, IkeState.CONNECTING) and not self.initiator:
            timers.append(self.last_received + HALF_OPEN_TIMEOUT)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        if self.state == IkeState.CLOSED:
            return
        if self.state in (IkeState.CREATED, IkeState.CONNECTING) and not self.initiator \
                and now >= self.last_received + HALF_OPEN_TIMEOUT:
            self.close("half-open IKE SA timed out waiting for IKE_AUTH")
            return
        out = self._outstanding
        if out is None or now < out.deadline:
            return
        if out.exchange == ExchangeType.INFORMATIONAL and self.state == IkeState.DELETING \
                and now - out.sent_at >= DELETE_TIMEOUT:
            self.close("deleted locally (peer did not confirm)")
            return
        if out.tries >= self.settings.retransmit.tries:
            self.close(f"peer did not answer our {out.exchange.name} request after "
                       f"{out.tries} retransmissions: giving up")
            return
        out.tries += 1
        out.deadline = now + self._timeout(out.tries)
        self._count("retransmits")
        self.log.info("retransmit %d of request %d (%s)", out.tries, out.message_id, out.exchange.name)
        self._out.append((out.data, self.local, self.remote))

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------- helpers used by tasks
    def emit(self, event: Event) -> None:
        self._events.append(event)

    def alloc_spi(self) -> bytes:
        if self.spi_allocator is not None:
            return self.spi_allocator()
        while True:
            spi = self.rng(4)
            if int.from_bytes(spi, "big") >= 256:  # SPIs 1..255 are reserved by IANA (RFC 4303 2.1)
                return spi

    def alloc_reqid(self) -> int:
        if self.reqid_allocator is not None:
            return self.reqid_allocator()
        self._reqid_counter += 1
        return self._reqid_counter

    def add_child(self, event: ChildSaEstablished) -> None:
        self.children.append(ChildSa(event))
        self.log.info("Child SA %s established: SPIs %s_i %s_o, %s, %s mode%s", event.child, event.spi_in.hex(),
                      event.spi_out.hex(), proposal_to_swanctl(event.proposal), event.mode,
                      ", UDP-encapsulated" if event.encap else "")
        self.emit(event)

    def child_in_spi_for_out(self, spi_out: bytes) -> bytes | None:
        for c in self.children:
            if c.spi_out == spi_out:
                return c.spi_in
        return None

    def remove_child(self, spi_in: bytes) -> None:
        for c in list(self.children):
            if c.spi_in == spi_in:
                self.children.remove(c)
                e = c.event
                self.log.info("Child SA %s deleted: SPIs %s_i %s_o", e.child, e.spi_in.hex(), e.spi_out.hex())
                self.emit(ChildSaDeleted(self.ike_sa_id, self.settings.name, e.child, e.reqid, e.spi_in, e.spi_out))

    def begin_delete(self) -> None:
        self.state = IkeState.DELETING

    def close_after_response(self, reason: str) -> None:
        self._close_after_response = reason

    def close(self, reason: str) -> None:
        if self.state == IkeState.CLOSED:
            return
        for c in list(self.children):
            self.remove_child(c.spi_in)
        was_established = self.established_at is not None
        self.state = IkeState.CLOSED
        self._outstanding = None
        self._queue.clear()
        (self.log.info if was_established or "deleted" in reason else self.log.warning)("IKE SA closed: %s", reason)
        self.emit(IkeSaClosed(self.ike_sa_id, self.settings.name, reason))

    def status(self) -> dict[str, object]:
        """The list-sas view of this IKE SA (schema in the README)."""
        def ep(e: Endpoint) -> str:
            return f"{e[0]}[{e[1]}]"
        return {
            "name": self.settings.name,
            "id": self.ike_sa_id,
            "state": self.state.value,
            "local": ep(self.local),
            "remote": ep(self.remote),
            "local_id": str(self.settings.local_id),
            "remote_id": str(self.remote_identity or self.settings.remote_id),
            "initiator": self.initiator,
            "spi_i": self.spi_i.hex(),
            "spi_r": self.spi_r.hex(),
            "proposal": proposal_to_swanctl(self.proposal) if self.proposal else "",
            "nat_local": self.local_behind_nat,
            "nat_remote": self.remote_behind_nat,
            "encap": self.encap,
            "child_sas": [],
        }

    # ------------------------------------------------------------ internals
    def _timeout(self, tries: int) -> float:
        r = self.settings.retransmit
        return float(r.timeout * (r.base ** tries))

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
            except TaskFailed as e:
                self._queue.popleft()
                self.close(e.reason)
                return
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
            return
        except TaskFailed as e:
            self.fail_reason = e.reason
            if e.fatal:
                self.close(e.reason)
                return
        except RemoteProtocolError as e:
            self.close(f"invalid {out.exchange.name} response: {e}")
            return
        if out.exchange == ExchangeType.IKE_AUTH and self.state == IkeState.CONNECTING:
            self._established()
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
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            tasks: list[Task] = [IkeInit()]
            self.state = IkeState.CONNECTING
        elif self.state == IkeState.CONNECTING and msg.exchange == ExchangeType.IKE_AUTH:
            tasks = [IkeAuth(), ChildCreate()]
        elif self.state in (IkeState.ESTABLISHED, IkeState.DELETING) and \
                msg.exchange == ExchangeType.INFORMATIONAL:
            tasks = [InformationalResponder()]
        elif self.state == IkeState.ESTABLISHED and msg.exchange == ExchangeType.CREATE_CHILD_SA:
            tasks = []
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
            if not tasks:
                # RFC 7296 1.3: additional Child SAs and rekeying come with the lifecycle work
                payloads = [NotifyPayload(NotifyType.NO_ADDITIONAL_SAS)]
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
        assert self.proposal is not None
        self.log.info("IKE SA established: %s, %s === %s, %s", proposal_to_swanctl(self.proposal),
                      self.settings.local_id, self.remote_identity, "UDP-encapsulated" if self.encap else "")
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

