"""One task per job of an exchange (strongSwan's libcharon model).

An exchange is a list of tasks. The initiator calls ``build_i`` on each to
assemble the request and ``process_i`` on each with the response; the
responder calls ``process_r`` then ``build_r``. A task that cannot go on
raises :class:`TaskFailed`; IKE_SA_INIT and CREATE_CHILD_SA may raise
:class:`Retry` to resend their request rebuilt (COOKIE, INVALID_KE_PAYLOAD).
A ``build_i`` that finds its job already done or moot (the Child SA it was to
rekey was deleted meanwhile) raises :class:`Skip` and nothing is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ipsecd.iana import ExchangeType
from ipsecd.ike.payloads import Payload

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


class TaskFailed(Exception):
    """The task failed; ``fatal`` tears the IKE SA down, otherwise only the task's job failed."""

    def __init__(self, reason: str, *, fatal: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal


class Retry(Exception):
    """Send the same request again, rebuilt (after COOKIE or INVALID_KE_PAYLOAD).

    IKE_SA_INIT keeps message ID 0; any other exchange has completed with the
    error response, so the rebuilt request takes the next message ID (RFC 7296 1.3).
    """


class Skip(Exception):
    """The exchange is no longer needed: drop it from the queue without sending."""


class Task(Protocol):
    exchange: ExchangeType

    def build_i(self, sa: IkeSa) -> list[Payload]: ...
    def process_i(self, sa: IkeSa, msg: Message) -> None: ...
    def process_r(self, sa: IkeSa, msg: Message) -> None: ...
    def build_r(self, sa: IkeSa) -> list[Payload]: ...
