"""Rekeying a Child SA with CREATE_CHILD_SA (RFC 7296 1.3.3, 2.8, 2.8.1, 2.25.1).

The new SA is made before the old one is broken: both ends install the new SA
as soon as they know its keys, and the initiator of the rekey then deletes the
old SA with an INFORMATIONAL Delete. When both ends rekey the same SA at once,
both answer normally and the SA created with the lowest of the four nonces is
deleted by the end that initiated it (RFC 7296 2.8.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.iana import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.payloads import NotifyPayload, Payload
from ipsecd.ike.tasks import Skip, TaskFailed
from ipsecd.ike.tasks.child_create import ChildCreate
from ipsecd.ike.tasks.informational import DeleteChildSa

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


class ChildRekey:
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self, spi_in: bytes = b"") -> None:
        self.old_spi_in = spi_in  # initiator: our inbound SPI of the SA to rekey
        self.create: ChildCreate | None = None
        self.error: NotifyType | None = None
        self.notify_spi = b""

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        old = sa.find_child(self.old_spi_in)
        retrying = self.create is not None and old is not None and old.state == "REKEYING"
        if old is None or (old.state != "INSTALLED" and not retrying):
            raise Skip  # deleted or already replaced meanwhile (e.g. by the peer's rekey)
        old.state = "REKEYING"
        if self.create is None:
            settings = old.settings or sa.settings.child(old.event.child)
            if settings is None:
                old.state = "INSTALLED"
                raise Skip
            self.create = ChildCreate(settings, exchange=ExchangeType.CREATE_CHILD_SA, rekey_of=old.event)
        sa.log.info("rekeying Child SA %s (SPIs %s_i %s_o)", old.event.child, old.spi_in.hex(), old.spi_out.hex())
        return self.create.build_i(sa)

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        c = self.create
        assert c is not None
        try:
            c.process_i(sa, msg)  # may raise Retry (INVALID_KE_PAYLOAD)
        except TaskFailed:
            old = sa.find_child(self.old_spi_in)
            if old is not None and old.state == "REKEYING":
                old.state = "INSTALLED"  # the old SA stays; its hard lifetime still applies
            raise
        old = sa.find_child(self.old_spi_in)
        collision = sa.rekey_collisions.pop(self.old_spi_in, None)
        if c.result is None:
            if old is not None and old.state == "REKEYING":
                old.state = "INSTALLED"
            if collision is not None:
                # The peer's rekey of this SA went through (we answered it) and the peer
                # refused ours: its SA is the successor, and the peer deletes the old one.
                if old is not None:
                    old.state = "REKEYED"
                return
            if c.peer_error == NotifyType.CHILD_SA_NOT_FOUND:
                # RFC 7296 2.25: drop the SA silently and create it anew if it still existed
                if old is not None:
                    sa.log.info("peer does not know Child SA %s any more: creating it anew", old.event.child)
                    sa.remove_child(old.spi_in, reason="peer did not know it (CHILD_SA_NOT_FOUND)")
                    sa.enqueue([ChildCreate(c.child, exchange=ExchangeType.CREATE_CHILD_SA)])
                return
            if old is not None:
                # RFC 7296 2.25: after TEMPORARY_FAILURE wait before retrying; the same for a refusal
                sa.retry_later([ChildRekey(old.spi_in)], what=f"rekey of Child SA {old.event.child}")
            return
        new = c.result
        if old is None:
            return  # the old SA was deleted while we rekeyed it; the new one simply stays
        old.state = "REKEYED"
        if collision is None:
            sa.enqueue_first([DeleteChildSa(old.spi_in, reason="rekeyed")])
            return
        # RFC 7296 2.8.1: the SA created with the lowest of the four nonces is redundant
        # and is closed by the end that created (initiated) it; the other end deletes
        # the replaced SA. Both ends see the same four nonces, so both agree.
        ours = min(c.nonce_i, c.nonce_r)
        theirs = min(collision)
        if ours < theirs:
            sa.log.info("Child SA rekey collision for %s: ours has the lowest nonce, deleting our "
                        "redundant SA %s_i", old.event.child, new.spi_in.hex())
            redundant = sa.find_child(new.spi_in)
            if redundant is not None:
                redundant.state = "REKEYED"
            sa.enqueue_first([DeleteChildSa(new.spi_in, reason="redundant after a rekey collision")])
        else:
            sa.log.info("Child SA rekey collision for %s: the peer's SA is redundant, it deletes it",
                        old.event.child)
            sa.enqueue_first([DeleteChildSa(old.spi_in, reason="rekeyed")])

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> None:
        n = msg.notify(NotifyType.REKEY_SA)
        assert n is not None
        self.notify_spi = n.spi
        old = sa.child_by_spi_out(n.spi) if n.protocol == ProtocolId.ESP else None
        if old is None:
            # RFC 7296 2.25: the SPI is unknown to us
            self.error = NotifyType.CHILD_SA_NOT_FOUND
            sa.log.info("peer wants to rekey Child SA %s_o, which we do not have", n.spi.hex())
            return
        if old.state in ("DELETING", "REKEYED") or sa.ike_rekey_in_progress():
            # RFC 7296 2.25.1/2.25.2: we are closing or replacing it, or rekeying the IKE SA
            self.error = NotifyType.TEMPORARY_FAILURE
            sa.log.info("peer wants to rekey Child SA %s while it is %s: TEMPORARY_FAILURE", old.event.child,
                        "being rekeyed with the IKE SA" if old.state not in ("DELETING", "REKEYED")
                        else old.state.lower())
            return
        settings = old.settings or sa.settings.child(old.event.child)
        self.create = ChildCreate(exchange=ExchangeType.CREATE_CHILD_SA, reqid=old.event.reqid,
                                  rekeyed_spi_in=old.spi_in,
                                  candidates=[settings] if settings is not None else [])
        self.create.process_r(sa, msg)
        if self.create.result is None:
            return
        if old.state == "REKEYING":
            # RFC 7296 2.25.1: we are rekeying it too: answer as usual, decide when ours completes
            sa.rekey_collisions[old.spi_in] = (self.create.nonce_i, self.create.nonce_r)
        else:
            old.state = "REKEYED"  # the peer deletes it once it has our answer

    def build_r(self, sa: IkeSa) -> list[Payload]:
        if self.error is not None:
            return [NotifyPayload(self.error, ProtocolId.ESP, self.notify_spi)]
        assert self.create is not None
        return self.create.build_r(sa)
