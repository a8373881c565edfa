"""INFORMATIONAL exchanges: Delete of IKE and Child SAs, liveness checks (RFC 7296 1.4, 2.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.iana import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.payloads import DeletePayload, NotifyPayload, Payload
from ipsecd.ike.tasks import Skip

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


class DeleteIkeSa:
    """We close the IKE SA (and with it every Child SA, RFC 7296 1.4.1)."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, reason: str = "deleted locally") -> None:
        self.reason = reason

    def build_i(self, sa: IkeSa) -> list[Payload]:
        sa.begin_delete()
        return [DeletePayload(ProtocolId.IKE)]

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        sa.close(self.reason)

    def process_r(self, sa: IkeSa, msg: Message) -> None:  # pragma: no cover - initiator-only task
        raise NotImplementedError

    def build_r(self, sa: IkeSa) -> list[Payload]:  # pragma: no cover
        raise NotImplementedError


class DeleteChildSa:
    """We delete one Child SA; the peer answers with the SPI of its own half."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, spi_in: bytes, reason: str = "deleted locally") -> None:
        self.spi_in = spi_in
        self.reason = reason

    def build_i(self, sa: IkeSa) -> list[Payload]:
        child = sa.find_child(self.spi_in)
        if child is None or child.state == "DELETING":
            raise Skip  # the peer deleted it first (crossing deletes), or we already are
        child.state = "DELETING"
        return [DeletePayload(ProtocolId.ESP, (self.spi_in,))]

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        sa.remove_child(self.spi_in, reason=self.reason)

    def process_r(self, sa: IkeSa, msg: Message) -> None:  # pragma: no cover
        raise NotImplementedError

    def build_r(self, sa: IkeSa) -> list[Payload]:  # pragma: no cover
        raise NotImplementedError


class Liveness:
    """An empty INFORMATIONAL request: proof the peer is alive (RFC 7296 2.4)."""

    exchange = ExchangeType.INFORMATIONAL

    def build_i(self, sa: IkeSa) -> list[Payload]:
        return []

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        return None

    def process_r(self, sa: IkeSa, msg: Message) -> None:  # pragma: no cover
        raise NotImplementedError

    def build_r(self, sa: IkeSa) -> list[Payload]:  # pragma: no cover
        raise NotImplementedError


class InformationalResponder:
    """Answers any INFORMATIONAL request: deletes, notifies, or an empty liveness check."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self) -> None:
        self.delete_ike = False
        self.deleted_in: list[bytes] = []

    def build_i(self, sa: IkeSa) -> list[Payload]:  # pragma: no cover - responder-only task
        raise NotImplementedError

    def process_i(self, sa: IkeSa, msg: Message) -> None:  # pragma: no cover
        raise NotImplementedError

    def process_r(self, sa: IkeSa, msg: Message) -> None:
        for d in msg.get_all(DeletePayload):
            if d.protocol == ProtocolId.IKE:
                self.delete_ike = True
            elif d.protocol == ProtocolId.ESP:
                for spi_out in d.spis:
                    child = sa.child_by_spi_out(spi_out)
                    # RFC 7296 1.4.1: deletes that cross: the SA goes when our own Delete is
                    # answered, and this response must not name it again
                    if child is not None and child.state != "DELETING":
                        self.deleted_in.append(child.spi_in)

    def build_r(self, sa: IkeSa) -> list[Payload]:
        if self.delete_ike:
            sa.close_after_response("deleted by peer")
            return []
        for spi_in in self.deleted_in:
            sa.remove_child(spi_in, reason="deleted by peer")
        # RFC 7296 1.4.1: answer with the SPIs of our halves of the deleted pairs
        return [DeletePayload(ProtocolId.ESP, tuple(self.deleted_in))] if self.deleted_in else []


class TemporaryFailure:
    """Answers a request we cannot take now (RFC 7296 2.25): the peer retries later."""

    def __init__(self, exchange: ExchangeType) -> None:
        self.exchange = exchange

    def build_i(self, sa: IkeSa) -> list[Payload]:  # pragma: no cover - responder-only task
        raise NotImplementedError

    def process_i(self, sa: IkeSa, msg: Message) -> None:  # pragma: no cover
        raise NotImplementedError

    def process_r(self, sa: IkeSa, msg: Message) -> None:
        return None

    def build_r(self, sa: IkeSa) -> list[Payload]:
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
