"""INFORMATIONAL exchanges: Delete of IKE and Child SAs, liveness checks (RFC 7296 1.4, 2.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.iana import ExchangeType, ProtocolId
from ipsecd.ike.child_sa import ChildEvent, ChildSaState
from ipsecd.ike.events import Cause
from ipsecd.ike.payloads import DeletePayload, Payload
from ipsecd.ike.state import IkeState
from ipsecd.ike.tasks import Hooks, Skip, Status, TaskKind

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


class DeleteIkeSa(Hooks):
    """We close the IKE SA (and with it every Child SA, RFC 7296 1.4.1); why is in ``sa.closing``."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.IKE_DELETE
    target = None

    def build_i(self, sa: IkeSa) -> list[Payload]:
        sa.set_state(IkeState.DELETING)
        return [DeletePayload(ProtocolId.IKE)]

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        sa.close(*sa.closing)
        return Status.DONE


class DeleteChildSa(Hooks):
    """We delete one Child SA; the peer answers with the SPI of its own half."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.CHILD_DELETE

    def __init__(self, spi_in: bytes, cause: Cause = Cause.DELETED_LOCALLY, reason: str = "deleted locally") -> None:
        self.spi_in = spi_in
        self.cause = cause
        self.reason = reason

    @property
    def target(self) -> bytes:
        return self.spi_in

    def build_i(self, sa: IkeSa) -> list[Payload]:
        child = sa.children.by_spi_in(self.spi_in)
        if child is None or child.state == ChildSaState.DELETING:
            raise Skip  # the peer deleted it first (crossing deletes), or we already are
        child.apply(ChildEvent.DELETE_SENT)
        return [DeletePayload(child.event.proposal.protocol, (self.spi_in,))]

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        sa.remove_child(self.spi_in, self.cause, self.reason)
        return Status.DONE


class Liveness(Hooks):
    """An empty INFORMATIONAL request: proof the peer is alive (RFC 7296 2.4)."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.LIVENESS
    target = None

    def build_i(self, sa: IkeSa) -> list[Payload]:
        return []

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        return Status.DONE


class InformationalResponder:
    """Answers any INFORMATIONAL request: deletes, notifies, or an empty liveness check."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.INFORMATIONAL

    def __init__(self) -> None:
        self.delete_ike = False
        self.deleted_in: list[bytes] = []
        self.protocols: dict[bytes, ProtocolId] = {}  # deleted inbound SPI -> ESP or AH

    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        for d in msg.get_all(DeletePayload):
            if d.protocol == ProtocolId.IKE:
                self.delete_ike = True
            elif d.protocol in (ProtocolId.ESP, ProtocolId.AH):
                for spi_out in d.spis:
                    child = sa.children.by_spi_out(spi_out)
                    # RFC 7296 1.4.1: deletes that cross: the SA goes when our own Delete is
                    # answered, and this response must not name it again
                    if (child is not None and child.state != ChildSaState.DELETING
                            and child.event.proposal.protocol == d.protocol):
                        self.deleted_in.append(child.spi_in)
                        self.protocols[child.spi_in] = d.protocol
        return Status.DONE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        if self.delete_ike:
            sa.close_after_response(Cause.DELETED_BY_PEER, "deleted by peer")
            return []
        for spi_in in self.deleted_in:
            sa.remove_child(spi_in, Cause.DELETED_BY_PEER, "deleted by peer")
        # RFC 7296 1.4.1: answer with the SPIs of our halves of the deleted pairs, one Delete
        # payload per protocol (3.11: all SPIs of one payload share its Protocol ID)
        return [DeletePayload(proto, spis) for proto in (ProtocolId.ESP, ProtocolId.AH)
                if (spis := tuple(s for s in self.deleted_in if self.protocols[s] == proto))]
