"""Rekeying a Child SA with CREATE_CHILD_SA (RFC 7296 1.3.3, 2.8, 2.8.1, 2.25.1).

The new SA is made before the old one is broken: both ends install the new SA
as soon as they know its keys, and the initiator of the rekey then deletes the
old SA with an INFORMATIONAL Delete. When both ends rekey the same SA at once,
both answer normally and the SA created with the lowest of the four nonces is
deleted by the end that initiated it (RFC 7296 2.8.1). The exchange layer tells
our rekey in flight about the peer's with ``collide`` (strongSwan's model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.iana import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.child_sa import ChildEvent, ChildSaState
from ipsecd.ike.events import Cause
from ipsecd.ike.payloads import Payload
from ipsecd.ike.tasks import Hooks, Refuse, ResponderTask, Skip, Status, TaskFailed, TaskKind
from ipsecd.ike.tasks.child_create import ChildCreate
from ipsecd.ike.tasks.informational import DeleteChildSa

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


class ChildRekey(Hooks):
    exchange = ExchangeType.CREATE_CHILD_SA
    kind = TaskKind.CHILD_REKEY

    def __init__(self, spi_in: bytes = b"") -> None:
        self.old_spi_in = spi_in  # initiator: our inbound SPI of the SA to rekey; responder: found in process_r
        self.create: ChildCreate | None = None
        self.collision: tuple[bytes, bytes] | None = None  # (Ni, Nr) of the peer's rekey of the same SA

    @property
    def target(self) -> bytes:
        return self.old_spi_in

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        old = sa.children.by_spi_in(self.old_spi_in)
        retrying = self.create is not None and old is not None and old.state == ChildSaState.REKEYING
        if old is None or (old.state != ChildSaState.INSTALLED and not retrying):
            raise Skip  # deleted or already replaced meanwhile (e.g. by the peer's rekey)
        if self.create is None:
            settings = old.settings or sa.settings.child(old.name)
            if settings is None:
                raise Skip
            self.create = ChildCreate(settings, exchange=ExchangeType.CREATE_CHILD_SA, rekey_of=old.event)
        old.apply(ChildEvent.REKEY_SENT)
        sa.log.info("rekeying Child SA %s (SPIs %s_i %s_o)", old.name, old.spi_in.hex(), old.spi_out.hex())
        return self.create.build_i(sa)

    def collide(self, sa: IkeSa, passive: ResponderTask) -> None:
        """RFC 7296 2.8.1: the peer rekeyed this same SA while our rekey is in flight."""
        if isinstance(passive, ChildRekey) and passive.old_spi_in == self.old_spi_in \
                and passive.create is not None and passive.create.result is not None:
            self.collision = (passive.create.nonce_i, passive.create.nonce_r)

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        c = self.create
        assert c is not None
        try:
            c.process_i(sa, msg)  # may raise Retry (INVALID_KE_PAYLOAD)
        except TaskFailed:
            self._rekey_failed(sa)
            raise
        old = sa.children.by_spi_in(self.old_spi_in)
        if c.result is None:
            self._rekey_failed(sa)
            if self.collision is not None:
                # The peer's rekey of this SA went through (we answered it) and the peer
                # refused ours: its SA is the successor, and the peer deletes the old one.
                if old is not None:
                    old.apply(ChildEvent.REPLACED)
            elif c.peer_error == NotifyType.CHILD_SA_NOT_FOUND:
                # RFC 7296 2.25: drop the SA silently and create it anew if it still existed
                if old is not None:
                    sa.log.info("peer does not know Child SA %s any more: creating it anew", old.name)
                    sa.remove_child(old.spi_in, Cause.DELETED_BY_PEER,
                                    "peer did not know it (CHILD_SA_NOT_FOUND)")
                    sa.enqueue([ChildCreate(c.child, exchange=ExchangeType.CREATE_CHILD_SA)])
            elif old is not None:
                # RFC 7296 2.25: after TEMPORARY_FAILURE wait before retrying; the same for a refusal
                sa.retry_later([ChildRekey(old.spi_in)], what=f"rekey of Child SA {old.name}")
            return Status.DONE
        new = c.result
        if old is None:
            return Status.DONE  # the old SA was deleted while we rekeyed it; the new one simply stays
        old.apply(ChildEvent.REPLACED)
        if self.collision is None:
            sa.enqueue([DeleteChildSa(old.spi_in, Cause.REKEYED, "rekeyed")], first=True)
            return Status.DONE
        # RFC 7296 2.8.1: the SA created with the lowest of the four nonces is redundant
        # and is closed by the end that created (initiated) it; the other end deletes
        # the replaced SA. Both ends see the same four nonces, so both agree.
        if min(c.nonce_i, c.nonce_r) < min(self.collision):
            sa.log.info("Child SA rekey collision for %s: ours has the lowest nonce, deleting our "
                        "redundant SA %s_i", old.name, new.spi_in.hex())
            redundant = sa.children.by_spi_in(new.spi_in)
            if redundant is not None:
                redundant.apply(ChildEvent.REPLACED)
            sa.enqueue([DeleteChildSa(new.spi_in, Cause.REKEYED, "redundant after a rekey collision")], first=True)
        else:
            sa.log.info("Child SA rekey collision for %s: the peer's SA is redundant, it deletes it", old.name)
            sa.enqueue([DeleteChildSa(old.spi_in, Cause.REKEYED, "rekeyed")], first=True)
        return Status.DONE

    def _rekey_failed(self, sa: IkeSa) -> None:
        old = sa.children.by_spi_in(self.old_spi_in)
        if old is not None:
            old.apply(ChildEvent.REKEY_FAILED)  # the old SA stays; its hard lifetime still applies

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        n = msg.notify(NotifyType.REKEY_SA)
        assert n is not None
        old = sa.children.by_spi_out(n.spi) if n.protocol in (ProtocolId.ESP, ProtocolId.AH) else None
        if old is not None and old.event.proposal.protocol != n.protocol:
            old = None  # RFC 7296 3.10: the SPI names an SA of the protocol in the notify
        if old is None:
            # RFC 7296 2.25: the SPI is unknown to us
            sa.log.info("peer wants to rekey Child SA %s_o, which we do not have", n.spi.hex())
            raise Refuse(NotifyType.CHILD_SA_NOT_FOUND, "unknown Child SA", Cause.PEER_REFUSED,
                         protocol=n.protocol, spi=n.spi)
        busy_ike = sa.exchanges.in_flight({TaskKind.IKE_REKEY})
        if old.state in (ChildSaState.DELETING, ChildSaState.REKEYED) or busy_ike:
            # RFC 7296 2.25.1/2.25.2: we are closing or replacing it, or rekeying the IKE SA
            sa.log.info("peer wants to rekey Child SA %s while it is %s: TEMPORARY_FAILURE", old.name,
                        "being rekeyed with the IKE SA" if busy_ike else old.state.lower())
            raise Refuse(NotifyType.TEMPORARY_FAILURE, "Child SA busy", Cause.PEER_REFUSED,
                         protocol=n.protocol, spi=n.spi)
        self.old_spi_in = old.spi_in
        settings = old.settings or sa.settings.child(old.name)
        self.create = ChildCreate(exchange=ExchangeType.CREATE_CHILD_SA, reqid=old.event.reqid,
                                  rekeyed_spi_in=old.spi_in, candidates=[settings] if settings is not None else [])
        return self.create.process_r(sa, msg)

    def build_r(self, sa: IkeSa) -> list[Payload]:
        assert self.create is not None
        payloads = self.create.build_r(sa)
        old = sa.children.by_spi_in(self.old_spi_in)
        if self.create.result is not None and old is not None and old.state != ChildSaState.REKEYING:
            # the peer deletes it once it has our answer; while ours is in flight (REKEYING) the
            # collision decides, when our response arrives (collide/process_i)
            old.apply(ChildEvent.REPLACED)
        return payloads
