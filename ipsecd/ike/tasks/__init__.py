"""One task per job of an exchange (strongSwan's libcharon model).

An exchange is a list of tasks. The initiator calls ``build_i`` on each to
assemble the request and ``process_i`` on each with the response; the
responder calls ``process_r`` on each, then ``build_r``. ``process_i`` and
``process_r`` return a :class:`Status`: DONE, or NEED_MORE when the task needs
another round of the same exchange (EAP inside IKE_AUTH, RFC 7296 2.16). A responder
task may also answer WAIT: its part of the response needs an answer from outside the
engine (RADIUS); it implements :class:`Resumable`, and the exchange sends nothing until
``resume(sa, answer)`` has run (exchanges.py).

A task serves the role(s) it implements: :class:`InitiatorTask` (queued by us)
and/or :class:`ResponderTask` (created for a peer's request by the exchange
dispatcher in exchanges.py). No task carries stubs for a role it cannot play.

How a task says no:
- initiator: raise :class:`TaskFailed` (``fatal`` tears the IKE SA down);
  :class:`Retry` to resend the request rebuilt (COOKIE, INVALID_KE_PAYLOAD);
  :class:`Skip` from ``build_i`` when the job became moot (nothing is sent).
- responder: raise :class:`Refuse` from ``process_r`` to decline the task's job
  with its NOTIFY (the other tasks of the exchange go on; ``fatal`` closes the IKE
  SA after the answer, as a refused IKE_SA_INIT or IKE_AUTH must). A request that
  is malformed as a whole raises RemoteProtocolError instead: the answer is then
  only that error notify.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

from ipsecd.iana import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.events import Cause
from ipsecd.ike.payloads import Payload

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


class Status(Enum):
    DONE = "done"
    NEED_MORE = "need_more"  # keep the task for another round of the same exchange
    # responder only: the answer needs something from outside the engine (a RADIUS round
    # trip); the exchange holds its response until the task's ``resume`` is called
    WAIT = "wait"


class TaskKind(Enum):
    """What a task does, so the exchange layer can reason about tasks without their classes."""

    IKE_INIT = "ike_init"
    IKE_AUTH = "ike_auth"
    IKE_CONFIG = "ike_config"  # the CP payload in IKE_AUTH: virtual IPs (RFC 7296 2.19)
    UNIQUE = "unique"  # swanctl's unique: keep refuses a second IKE SA of the same identities
    CHILD_CREATE = "child_create"
    CHILD_REKEY = "child_rekey"
    CHILD_DELETE = "child_delete"
    IKE_REKEY = "ike_rekey"
    IKE_DELETE = "ike_delete"
    LIVENESS = "liveness"
    REDIRECT = "redirect"  # RFC 5685 6: send an established client to another gateway
    INFORMATIONAL = "informational"  # the responder side of any INFORMATIONAL request


# Error notifies, as the cause reported for the SA they refused.
_NOTIFY_CAUSES = {
    NotifyType.NO_PROPOSAL_CHOSEN: Cause.NO_PROPOSAL,
    NotifyType.INVALID_KE_PAYLOAD: Cause.INVALID_KE,
    NotifyType.AUTHENTICATION_FAILED: Cause.AUTH_FAILED,
    NotifyType.TS_UNACCEPTABLE: Cause.TS_UNACCEPTABLE,
}


def cause_of_notify(notify: int) -> Cause:
    """The cause for an SA the peer refused with this error notify."""
    for n, cause in _NOTIFY_CAUSES.items():
        if n == notify:
            return cause
    return Cause.PEER_REFUSED


def notify_name(t: int) -> str:
    try:
        return NotifyType(t).name
    except ValueError:
        return f"notify {t}"


CHILD_KINDS = frozenset({TaskKind.CHILD_CREATE, TaskKind.CHILD_REKEY, TaskKind.CHILD_DELETE})


class TaskFailed(Exception):
    """The task failed; ``fatal`` tears the IKE SA down, otherwise only the task's job failed."""

    def __init__(self, reason: str, cause: Cause = Cause.PROTOCOL_ERROR, *, fatal: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause
        self.fatal = fatal


class Retry(Exception):
    """Send the same request again, rebuilt (after COOKIE or INVALID_KE_PAYLOAD).

    IKE_SA_INIT keeps message ID 0; any other exchange has completed with the
    error response, so the rebuilt request takes the next message ID (RFC 7296 1.3).
    """


class Skip(Exception):
    """The exchange is no longer needed: drop it from the queue without sending."""


class Refuse(Exception):
    """A responder task declines its job; its part of the answer is this NOTIFY."""

    def __init__(self, notify: NotifyType, reason: str, cause: Cause, *, data: bytes = b"",
                 protocol: ProtocolId = ProtocolId.NONE, spi: bytes = b"", fatal: bool = False) -> None:
        super().__init__(reason)
        self.notify = notify
        self.reason = reason
        self.cause = cause
        self.data = data
        self.protocol = protocol
        self.spi = spi
        self.fatal = fatal


class InitiatorTask(Protocol):
    exchange: ExchangeType
    kind: TaskKind

    @property
    def target(self) -> object:
        """What it acts on (a child's name, an SPI), so queues can be searched without its class."""

    def build_i(self, sa: IkeSa) -> list[Payload]: ...
    def process_i(self, sa: IkeSa, msg: Message) -> Status: ...

    def collide(self, sa: IkeSa, passive: ResponderTask) -> None:
        """The peer's request ``passive`` was answered while this task's request is in flight."""

    def abort(self, sa: IkeSa) -> None:
        """The IKE SA closes (or hands its work over) before this task's response came."""


class ResponderTask(Protocol):
    exchange: ExchangeType
    kind: TaskKind

    def process_r(self, sa: IkeSa, msg: Message) -> Status: ...
    def build_r(self, sa: IkeSa) -> list[Payload]: ...


class Resumable(Protocol):
    """A responder task that can answer WAIT."""

    def resume(self, sa: IkeSa, answer: object) -> Status: ...


class Hooks:
    """Default no-op ``collide``/``abort`` for initiator tasks that need neither."""

    def collide(self, sa: IkeSa, passive: ResponderTask) -> None:
        return None

    def abort(self, sa: IkeSa) -> None:
        return None
