"""The exchanges of one IKE SA: message IDs, our request queue and window, retransmission,
the cached response, and which responder tasks a request creates (strongSwan's
task_manager_v2.c to our ike_sa.py's ike_sa.c).

Window size 1 both ways (RFC 7296 2.3): one request of ours in flight; the peer's
requests are taken in message-ID order and the last response is kept to answer a
retransmitted request again (RFC 7296 2.1). A task that answers NEED_MORE stays for
another round of the same exchange: ours as the next request, the peer's for its next
request (IKE_AUTH with EAP, RFC 7296 2.16). A task that answers WAIT (EAP relayed to
RADIUS) holds the whole response until ``resume`` brings the outside answer; the peer's
retransmissions meanwhile are dropped, as is a retransmission while a response is held
back on purpose (``respond_after``: the pause after a wrong EAP password).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import NATT_PORT, ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.backref import BackRef
from ipsecd.ike.events import Cause, Endpoint
from ipsecd.ike.fifo import Fifo
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import NotifyPayload, Payload, SaPayload
from ipsecd.ike.state import LIVE, IkeState
from ipsecd.ike.tasks import (
    CHILD_KINDS,
    InitiatorTask,
    Refuse,
    ResponderTask,
    Resumable,
    Retry,
    Skip,
    Status,
    TaskFailed,
    TaskKind,
    cause_of_notify,
)
from ipsecd.ike.tasks.child_create import ChildCreate
from ipsecd.ike.tasks.child_rekey import ChildRekey
from ipsecd.ike.tasks.ike_auth import IkeAuth
from ipsecd.ike.tasks.ike_config import IkeConfig
from ipsecd.ike.tasks.ike_init import IkeInit
from ipsecd.ike.tasks.ike_rekey import IkeRekey
from ipsecd.ike.tasks.informational import InformationalResponder
from ipsecd.ike.tasks.mobike import MobikeResponder, MobikeSupport, carries_mobike, implicit_updates
from ipsecd.ike.tasks.unique import UniqueCheck

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa

log = logging.getLogger("ipsecd.ike")

DELETE_TIMEOUT = 10.0  # how long we wait for the answer to our Delete before closing anyway

@dataclass(slots=True)
class _Active:
    """Our request in flight: kept for retransmission until its response arrives (RFC 7296 2.1)."""

    message_id: int
    exchange: ExchangeType
    tasks: list[InitiatorTask]
    data: tuple[bytes, ...]  # the datagram, or its fragments (RFC 7383: all are resent)
    sent_at: float
    deadline: float
    tries: int = 0
    fanout: list[tuple[Endpoint, Endpoint]] = field(default_factory=list)  # MOBIKE probe: sent on each path
    abandoned_at: float | None = None  # a Delete waits behind it (``abandon``)


@dataclass(slots=True)
class _Cached:
    message_id: int
    data: tuple[bytes, ...]


@dataclass(slots=True)
class _Run:
    """One peer request being answered: how far its tasks got, kept while one of them waits."""

    msg: Message
    data: bytes
    tasks: list[ResponderTask]
    local: Endpoint
    remote: Endpoint
    index: int = 0  # the task processing now (or waiting)
    more: list[ResponderTask] = field(default_factory=list)
    refusals: dict[int, Refuse] = field(default_factory=dict)


def _create_child_sa(sa: IkeSa, msg: Message) -> list[ResponderTask]:
    """Which job a CREATE_CHILD_SA request is (RFC 7296 1.3), or TEMPORARY_FAILURE when we
    cannot take it now (RFC 7296 2.25)."""
    ex = sa.exchanges
    if sa.state != IkeState.ESTABLISHED:
        raise Refuse(NotifyType.TEMPORARY_FAILURE, "IKE SA is going away", Cause.PEER_REFUSED)
    sa_payload = msg.get(SaPayload)
    if sa_payload is not None and any(p.protocol == ProtocolId.IKE for p in sa_payload.proposals):
        if ex.in_flight(CHILD_KINDS):  # RFC 7296 2.25.2
            sa.log.info("peer wants to rekey the IKE SA while we change a Child SA: TEMPORARY_FAILURE")
            raise Refuse(NotifyType.TEMPORARY_FAILURE, "busy with a Child SA", Cause.PEER_REFUSED)
        return [IkeRekey()]
    if msg.notify(NotifyType.REKEY_SA) is not None:
        return [ChildRekey()]
    if ex.in_flight({TaskKind.IKE_REKEY}):
        sa.log.info("peer wants a new Child SA while we rekey the IKE SA: TEMPORARY_FAILURE")
        raise Refuse(NotifyType.TEMPORARY_FAILURE, "rekeying the IKE SA", Cause.PEER_REFUSED)
    return [ChildCreate(exchange=ExchangeType.CREATE_CHILD_SA)]


# Request -> responder tasks (strongSwan's process_request switch), with the IKE SA
# states in which each exchange is accepted at all. In IKE_AUTH the CP task comes before
# ChildCreate: the virtual IP it leases is what "dynamic" narrows to (RFC 7296 2.9, 2.19).
RESPONDERS: dict[ExchangeType, tuple[frozenset[IkeState], Callable[[IkeSa, Message], list[ResponderTask]]]] = {
    ExchangeType.IKE_SA_INIT: (frozenset({IkeState.CREATED}), lambda sa, msg: [IkeInit()]),
    ExchangeType.IKE_AUTH: (frozenset({IkeState.CONNECTING}),
                            lambda sa, msg: [IkeAuth(), UniqueCheck(), IkeConfig(), MobikeSupport(), ChildCreate()]),
    ExchangeType.INFORMATIONAL: (LIVE, lambda sa, msg: [InformationalResponder(), MobikeResponder()]
                                 if carries_mobike(msg) else [InformationalResponder()]),
    ExchangeType.CREATE_CHILD_SA: (LIVE, _create_child_sa),
}


class Exchanges:
    """See the module docstring. Owned by one IkeSa; sends through its endpoints."""

    __slots__ = ("_delay_seq", "_sa", "active", "cached", "delayed", "expected_id", "held", "held_response", "next_id",
                 "out", "passive", "path", "queue", "respond_after", "stale")
    sa: BackRef[IkeSa] = BackRef("_sa")  # weak: a closed IKE SA is freed without the cyclic GC

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa
        self.next_id = 0  # message ID of our next request
        self.expected_id = 0  # message ID of the peer's next request
        self.active: _Active | None = None
        self.queue: Fifo[list[InitiatorTask]] = Fifo()
        self.delayed: list[tuple[float, int, list[InitiatorTask]]] = []  # heap: (due, seq, tasks)
        self._delay_seq = 0
        self.passive: list[ResponderTask] = []  # the peer's tasks waiting for its next round
        self.cached: _Cached | None = None
        self.stale: list[InitiatorTask] = []  # abandoned in flight, told when the SA closes
        self.out: list[tuple[bytes, Endpoint, Endpoint]] = []
        self.held: _Run | None = None  # a peer request whose answer waits for the outside (RADIUS)
        self.held_response: tuple[float, tuple[bytes, ...], Endpoint, Endpoint] | None = None  # (due, data, l, r)
        self.respond_after = 0.0  # a task asks to hold our next response this long (the EAP retry pause)
        self.path: tuple[Endpoint, Endpoint] | None = None  # (local, remote) of the message being processed

    # ------------------------------------------------------------------ queue
    @property
    def idle(self) -> bool:
        return self.active is None and not self.queue and not self.delayed

    def add(self, tasks: list[InitiatorTask], *, first: bool = False) -> None:
        if first:
            self.queue.appendleft(tasks)
        else:
            self.queue.append(tasks)
        if self.active is None:
            self.send_next()

    def later(self, due: float, tasks: list[InitiatorTask]) -> None:
        self._delay_seq += 1
        heapq.heappush(self.delayed, (due, self._delay_seq, tasks))

    def release_due(self, now: float) -> list[list[InitiatorTask]]:
        out = []
        while self.delayed and self.delayed[0][0] <= now:
            out.append(heapq.heappop(self.delayed)[2])
        return out

    def in_flight(self, kinds: frozenset[TaskKind] | set[TaskKind]) -> bool:
        return self.active is not None and any(t.kind in kinds for t in self.active.tasks)

    def pending(self, pred: Callable[[InitiatorTask], bool]) -> bool:
        """Is a task matching ``pred`` in flight, queued or waiting for a retry?"""
        groups = [self.active.tasks] if self.active is not None else []
        groups += list(self.queue) + [d[2] for d in self.delayed]
        return any(pred(t) for ts in groups for t in ts)

    def abandon(self) -> None:
        """Drop everything of ours (a Delete replaces it); in-flight tasks hear about it at close.

        A request in flight keeps its message ID, retransmitted and without tasks: with a
        window of 1 (RFC 7296 2.3) the peer ignores our next request until it has answered
        that one, so the Delete waits for its answer (or for the peer to be declared dead).
        """
        if self.active is not None:
            self.stale += self.active.tasks
            self.active.tasks = []
            self.active.abandoned_at = self.sa.now
        self.queue.clear()
        self.delayed.clear()

    def abort_all(self) -> None:
        tasks = self.stale + (self.active.tasks if self.active is not None else [])
        self.stale = []
        self.active = None
        self.queue.clear()
        self.delayed.clear()
        for t in tasks:
            t.abort(self.sa)

    def hand_over(self, new: Exchanges, keep: Callable[[InitiatorTask], bool]) -> None:
        """Move our queued and delayed work whose every task ``keep`` accepts to ``new`` (IKE rekey)."""
        for tasks in self.queue:
            if all(keep(t) for t in tasks):
                new.queue.append(tasks)
        for due, _seq, tasks in self.delayed:
            if all(keep(t) for t in tasks):
                new.later(due, tasks)
        self.queue.clear()
        self.delayed.clear()

    def next_deadline(self) -> float | None:
        times = []
        a = self.active
        if a is not None:
            times.append(a.deadline if a.abandoned_at is None else min(a.deadline, a.abandoned_at + DELETE_TIMEOUT))
            dpd_timeout = self.sa.settings.dpd_timeout
            if dpd_timeout > 0 and self.sa.state == IkeState.ESTABLISHED:
                times.append(a.sent_at + dpd_timeout)
        if self.delayed:
            times.append(self.delayed[0][0])
        if self.held_response is not None:
            times.append(self.held_response[0])
        return min(times) if times else None

    # ------------------------------------------------------------------ our requests
    def send_next(self, reuse_id: int | None = None) -> None:
        sa = self.sa
        while self.queue and self.active is None and sa.state != IkeState.CLOSED:
            tasks = self.queue[0]
            exchange = tasks[0].exchange
            payloads: list[Payload] = []
            try:
                for t in tasks:
                    payloads += t.build_i(sa)
            except Skip:
                self.queue.popleft()
                continue
            except TaskFailed as e:
                self.queue.popleft()
                if e.fatal:
                    sa.close(e.cause, e.reason)
                    return
                sa.log.warning("%s", e.reason)
                continue
            self.queue.popleft()
            message_id = self.next_id if reuse_id is None else reuse_id
            if reuse_id is None:
                self.next_id += 1
            reuse_id = None
            if exchange != ExchangeType.IKE_SA_INIT and (sa.encap or sa.settings.mobike) and sa.initiator \
                    and sa.remote[1] == 500 and sa.local[1] != NATT_PORT:
                # RFC 7296 2.23: after NAT detection the initiator moves to port 4500; RFC 4555 3.3:
                # so does one offering MOBIKE (a NAT may appear on a later path)
                sa.local = (sa.local[0], NATT_PORT)
                sa.remote = (sa.remote[0], NATT_PORT)
            msg = Message(sa.spi_i, sa.spi_r, exchange, message_id, is_initiator=sa.initiator, is_response=False,
                          payloads=payloads, encrypted=exchange != ExchangeType.IKE_SA_INIT)
            data = sa.frag.encode(msg)
            if exchange == ExchangeType.IKE_SA_INIT:
                sa.init_request = data[0]
            fanout = list(getattr(tasks[0], "fanout", ()))
            self.active = _Active(message_id, exchange, tasks, data, sent_at=sa.now, deadline=sa.now + self.timeout(0),
                                  fanout=fanout)
            self._send_request(self.active)

    def _send_request(self, a: _Active) -> None:
        for local, remote in a.fanout or [(self.sa.local, self.sa.remote)]:
            self._send(a.data, local, remote)

    def retransmit_soon(self) -> None:
        """Our addresses changed (MOBIKE): the request in flight goes out again now, on the new path."""
        a = self.active
        if a is not None and not a.fanout:
            a.deadline = self.sa.now + self.timeout(a.tries)
            self._send(a.data, self.sa.local, self.sa.remote)

    def on_response(self, msg: Message, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        sa = self.sa
        a = self.active
        if a is None or msg.message_id != a.message_id or msg.exchange != a.exchange:
            sa.count("unexpected_response")
            return
        self.path = (local, remote)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_response = data
        self.active = None
        more: list[InitiatorTask] = []
        try:
            for t in a.tasks:
                if t.process_i(sa, msg) is Status.NEED_MORE:
                    more.append(t)
        except Retry:
            self.queue.appendleft(a.tasks)
            if a.exchange == ExchangeType.IKE_SA_INIT:
                sa.spi_r = bytes(8)
                self.send_next(reuse_id=a.message_id)
            else:
                self.send_next()  # RFC 7296 1.3: the failed exchange is complete; the retry is a new request
            return
        except TaskFailed as e:
            sa.fail_reason = e.reason
            if e.fatal:
                sa.close(e.cause, e.reason)
                return
            sa.log.warning("%s", e.reason)
        except RemoteProtocolError as e:
            sa.close(Cause.PROTOCOL_ERROR, f"invalid {a.exchange.name} response: {e}")
            return
        if sa.state == IkeState.CLOSED:
            return
        if more:
            self.queue.appendleft(more)
        self.send_next()

    def timeout(self, tries: int) -> float:
        """RFC 7296 2.1: how long to wait for the answer to try ``tries`` (0: the first send)."""
        r = self.sa.settings.retransmit
        return float(r.timeout * (r.base ** tries))

    def retransmit(self, now: float) -> None:
        sa = self.sa
        a = self.active
        if a is None:
            return
        if a.exchange == ExchangeType.INFORMATIONAL and sa.state == IkeState.DELETING \
                and now - a.sent_at >= DELETE_TIMEOUT:
            sa.close(sa.closing[0], f"{sa.closing[1]} (peer did not confirm the Delete)")
            return
        if a.abandoned_at is not None and now - a.abandoned_at >= DELETE_TIMEOUT:
            sa.close(sa.closing[0], f"{sa.closing[1]} (peer did not answer the request before our Delete)")
            return
        established = sa.established_at is not None
        timeout = sa.settings.dpd_timeout
        if established and timeout > 0 and now >= a.sent_at + timeout:
            sa.close(Cause.PEER_DEAD, f"peer dead: no answer to our {a.exchange.name} request within "
                                      f"dpd_timeout {timeout:.0f}s")
            return
        if now < a.deadline:
            return
        if a.tries >= sa.settings.retransmit.tries:
            reason = f"peer did not answer our {a.exchange.name} request after {a.tries} retransmissions"
            if established:
                sa.close(Cause.PEER_DEAD, f"peer dead: {reason}")
            else:
                sa.close(Cause.TIMEOUT, f"{reason}: giving up")
            return
        a.tries += 1
        a.deadline = now + self.timeout(a.tries)
        sa.count("retransmits")
        sa.log.info("retransmit %d of request %d (%s)%s", a.tries, a.message_id, a.exchange.name,
                    f" in {len(a.data)} fragments" if len(a.data) > 1 else "")
        self._send_request(a)

    def check_sooner(self, message_id: int) -> bool:
        """RFC 7296 2.21.4: an unprotected INVALID_IKE_SPI answered request ``message_id``: make
        the next retransmission the last one, and send it now. Never closes on its own."""
        a = self.active
        if a is None or a.message_id != message_id:
            return False
        a.tries = max(a.tries, self.sa.settings.retransmit.tries - 1)
        a.deadline = min(a.deadline, self.sa.now)
        return True

    # ------------------------------------------------------------------ the peer's requests
    def on_request(self, msg: Message, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        sa = self.sa
        if self.held is not None and msg.message_id == self.held.msg.message_id:
            sa.count("requests_while_waiting")  # RFC 7296 2.1: its one answer is still being worked out
            return
        if self.answer_again(msg.message_id, local, remote):
            return
        if msg.message_id != self.expected_id:
            sa.count("bad_message_id")
            return
        refused: Refuse | None = None
        if self.passive and self.passive[0].exchange == msg.exchange:
            tasks = self.passive
        else:
            states, make = RESPONDERS.get(msg.exchange, (frozenset(), None))  # type: ignore[assignment]
            if sa.state not in states or make is None:
                sa.count("unexpected_exchange")
                return
            try:
                tasks = make(sa, msg)
            except Refuse as r:
                tasks, refused = [], r
        self.path = (local, remote)
        if msg.encrypted and implicit_updates(sa):
            sa.peer_seen(local, remote)  # an authenticated request (RFC 7296 2.23; with MOBIKE only its update)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            sa.begin_responder(msg.spi_i, local, remote)
        run = _Run(msg, data, tasks, local, remote)
        if refused is not None:
            self._complete(run, [_notify(refused)], [], refusal_close(refused) if refused.fatal else None)
            return
        self._proceed(run, None)

    def answer_again(self, message_id: int, local: Endpoint, remote: Endpoint) -> bool:
        """A retransmitted request: the same response again (RFC 7296 2.1), every fragment
        of it (RFC 7383 2.6.1); False when ``message_id`` is not the request last answered."""
        cached = self.cached
        if cached is None or message_id != cached.message_id:
            return False
        if self.held_response is not None:
            self.sa.count("requests_while_holding")  # the answer goes out when its pause is over
        else:
            self.sa.count("retransmitted_requests")
            self._send(cached.data, local, remote)
        return True

    def _send(self, data: tuple[bytes, ...], local: Endpoint, remote: Endpoint) -> None:
        self.out += [(d, local, remote) for d in data]

    def resume(self, token: int, answer: object) -> bool:
        """The outside answer the held request's waiting task asked for; False if none waits for ``token``."""
        run = self.held
        if run is None or run.msg.message_id != token:
            return False
        self.held = None
        task = cast(Resumable, run.tasks[run.index])
        self._proceed(run, lambda: task.resume(self.sa, answer))
        return True

    def _proceed(self, run: _Run, resumed: Callable[[], Status] | None) -> None:
        answer = self._answer(run, resumed)
        if answer is None:
            self.held = run  # a task waits for the outside: no response yet
            return
        self._complete(run, *answer)

    def _complete(self, run: _Run, payloads: list[Payload], more: list[ResponderTask],
                  fatal: tuple[Cause, str] | None) -> None:
        sa, msg = self.sa, run.msg
        spi_r = sa.spi_r
        if msg.exchange == ExchangeType.IKE_SA_INIT and fatal is not None:
            spi_r = bytes(8)  # a refused IKE_SA_INIT is answered statelessly (RFC 7296 1.2, 2.6)
        resp = Message(sa.spi_i, spi_r, msg.exchange, msg.message_id, is_initiator=sa.initiator,
                       is_response=True, payloads=payloads, encrypted=msg.exchange != ExchangeType.IKE_SA_INIT)
        out = sa.frag.encode(resp)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_request, sa.init_response = run.data, out[0]
        self.passive = more
        delay, self.respond_after = self.respond_after, 0.0
        self._respond(msg.message_id, out, run.local, run.remote, delay if fatal is None else 0.0)
        if fatal is not None:
            sa.close(*fatal)
            return
        if self.active is not None:
            for t in run.tasks:
                for mine in self.active.tasks:
                    mine.collide(sa, t)  # RFC 7296 2.8.1/2.8.2: both ends rekeyed at once
        sa.after_response()

    def _answer(self, run: _Run, resumed: Callable[[], Status] | None
                ) -> tuple[list[Payload], list[ResponderTask], tuple[Cause, str] | None] | None:
        """Run the responder tasks from ``run.index``: (payloads of the response, tasks that need
        more, fatal close), or None when a task waits (``resumed`` continues the waiting one)."""
        sa, msg = self.sa, run.msg
        try:
            while run.index < len(run.tasks):
                t = run.tasks[run.index]
                try:
                    status = resumed() if resumed is not None else t.process_r(sa, msg)
                    resumed = None
                    if status is Status.WAIT:
                        return None
                    if status is Status.NEED_MORE:
                        run.more.append(t)
                except Refuse as r:
                    resumed = None
                    if r.fatal:  # the whole exchange fails: answer with this notify alone
                        sa.fail_reason = r.reason
                        return [_notify(r)], [], refusal_close(r)
                    run.refusals[id(t)] = r
                run.index += 1
            payloads: list[Payload] = []
            for t in run.tasks:
                no = run.refusals.get(id(t))
                payloads += [_notify(no)] if no is not None else t.build_r(sa)
            return payloads, run.more, None
        except RemoteProtocolError as e:
            notify = e.notify or NotifyType.INVALID_SYNTAX
            fatal = None
            if msg.exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
                cause = cause_of_notify(notify)
                fatal = (Cause.PROTOCOL_ERROR if cause is Cause.PEER_REFUSED else cause, sa.fail_reason or str(e))
            return [NotifyPayload(notify, data=e.notify_data)], [], fatal

    def _respond(self, message_id: int, data: tuple[bytes, ...], local: Endpoint, remote: Endpoint,
                 delay: float = 0.0) -> None:
        self.expected_id += 1
        self.cached = _Cached(message_id, data)  # RFC 7383 2.6.1: a fragmented response is kept as fragments
        if delay > 0:
            self.held_response = (self.sa.now + delay, data, local, remote)
        else:
            self._send(data, local, remote)

    def release_response(self, now: float) -> None:
        """Send a response held back on purpose once its pause is over."""
        held = self.held_response
        if held is not None and now >= held[0]:
            self.held_response = None
            self._send(*held[1:])

    def answer_error(self, data: bytes, e: RemoteProtocolError, local: Endpoint, remote: Endpoint) -> None:
        """An authenticated but invalid request still gets its NOTIFY (RFC 7296 2.21.2)."""
        sa = self.sa
        if len(data) < 28 or e.notify is None:
            return
        message_id = int.from_bytes(data[20:24], "big")
        if message_id != self.expected_id:
            return
        try:
            ex = ExchangeType(data[18])
        except ValueError:
            return
        resp = Message(sa.spi_i, sa.spi_r, ex, message_id, is_initiator=sa.initiator, is_response=True,
                       payloads=[NotifyPayload(e.notify, data=e.notify_data)], encrypted=True)
        self._respond(message_id, sa.frag.encode(resp), local, remote)


def _notify(r: Refuse) -> NotifyPayload:
    return NotifyPayload(r.notify, r.protocol, r.spi, r.data)


def refusal_close(r: Refuse) -> tuple[Cause, str]:
    return r.cause, r.reason
