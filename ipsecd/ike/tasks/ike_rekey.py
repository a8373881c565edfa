"""Rekeying the IKE SA with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.8, 2.8.2, 2.18, 2.25.2).

The rekey creates a complete new IKE SA (new SPIs, keys from the old SA's SK_d
and a fresh key exchange); the Child SAs move over to it unchanged and the
initiator of the rekey deletes the old IKE SA. When both ends rekey at once,
both answer normally and the new IKE SA created with the lowest of the four
nonces is deleted by the end that initiated it (RFC 7296 2.8.2): the exchange
layer hands the peer's answered rekey to ours in flight (``collide``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike import lifetimes
from ipsecd.ike.authenticators import release_auth_material
from ipsecd.ike.crypto import KeyExchange
from ipsecd.ike.events import Cause, IkeSaRekeyed, Spawned
from ipsecd.ike.keyexchange import InvalidKe, KeOffer, accept
from ipsecd.ike.keymat import IkeKeys, derive_ike_rekey_keys
from ipsecd.ike.payloads import KePayload, NoncePayload, Payload, Proposal, SaPayload
from ipsecd.ike.proposal import ke_group_of, proposal_matches_chosen, proposal_to_str, select_proposal, with_spi
from ipsecd.ike.sk import make_sk_ciphers
from ipsecd.ike.state import IkeState
from ipsecd.ike.tasks import (
    Hooks,
    InitiatorTask,
    Refuse,
    ResponderTask,
    Retry,
    Skip,
    Status,
    TaskFailed,
    TaskKind,
    mobike,
    notify_name,
)
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

NONCE_LEN = 32
REKEYED_TIMEOUT = 60.0  # the rekey responder drops the old IKE SA itself if never deleted
# Work that does not move to the new IKE SA: it concerned the old one only.
_STAYS_BEHIND = frozenset({TaskKind.IKE_REKEY, TaskKind.LIVENESS, TaskKind.IKE_DELETE})


class IkeRekey(Hooks):
    exchange = ExchangeType.CREATE_CHILD_SA
    kind = TaskKind.IKE_REKEY
    target = None

    def __init__(self) -> None:
        self.spi = b""  # our SPI of the new IKE SA
        self.nonce_i = b""
        self.nonce_r = b""
        self.offer: KeOffer | None = None
        self.ke: KeyExchange | None = None  # responder
        self.chosen: Proposal | None = None
        self.new: IkeSa | None = None  # responder: the IKE SA we created by answering
        self.pending: IkeSa | None = None  # initiator: the peer's new IKE SA from a colliding rekey

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        if sa.state != IkeState.ESTABLISHED or sa.replaced_by is not None:
            raise Skip
        proposals = list(sa.settings.ike_proposals)
        if self.offer is None:
            # prefer the group the IKE SA already uses: the peer accepted it once
            self.offer = KeOffer(proposals, prefer=ke_group_of(sa.proposal) if sa.proposal else None)
        ke = self.offer.payload()
        if ke is None:
            raise TaskFailed("IKE proposal without a key exchange method", Cause.CONFIG, fatal=False)
        if not self.spi:
            self.spi = sa.ctx.alloc_ike_spi()
        self.nonce_i = sa.ctx.rng(NONCE_LEN)
        sa.log.info("rekeying the IKE SA")
        return [SaPayload(tuple(with_spi(p, self.spi) for p in self.offer.order(proposals))),
                NoncePayload(self.nonce_i), ke]

    def collide(self, sa: IkeSa, passive: ResponderTask) -> None:
        if isinstance(passive, IkeRekey) and passive.new is not None:
            self.pending = passive.new  # RFC 7296 2.8.2: decided when our own answer arrives

    def abort(self, sa: IkeSa) -> None:
        """The old IKE SA closes before our rekey was answered: if the peer's colliding rekey
        created a new IKE SA, it takes the Child SAs (the peer won and deleted this one)."""
        pending, self.pending = self.pending, None
        if pending is not None and pending.state == IkeState.ESTABLISHED and sa.children:
            adopt_successor(sa, pending, delete_old=False)

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        assert self.offer is not None
        pending, self.pending = self.pending, None
        for n in msg.error_notifies():
            if n.notify_type == NotifyType.INVALID_KE_PAYLOAD and pending is None \
                    and self.offer.retry_with(n) is None:
                self.pending = pending
                raise Retry
            if pending is not None:
                # RFC 7296 2.8.2: the peer already rekeyed (we answered it) and refused ours:
                # its new IKE SA is the successor and the peer deletes this one
                adopt_successor(sa, pending, delete_old=False)
                return Status.DONE
            sa.log.info("peer refused to rekey the IKE SA with %s: retrying later", notify_name(n.notify_type))
            sa.retry_later([IkeRekey()], what="IKE SA rekey")
            return Status.DONE
        sa_payload = msg.get(SaPayload)
        nonce = msg.get(NoncePayload)
        if sa_payload is None or nonce is None or len(sa_payload.proposals) != 1:
            raise TaskFailed("IKE rekey response lacks SA, KE or Nonce", fatal=False)
        offered = [with_spi(p, self.spi) for p in sa.settings.ike_proposals]
        chosen = sa_payload.proposals[0]
        if not proposal_matches_chosen(offered, chosen) or len(chosen.spi) != 8 or chosen.spi == bytes(8):
            raise TaskFailed("peer chose an IKE proposal we did not offer for the rekey", fatal=False)
        try:
            shared = self.offer.shared(chosen, msg.get(KePayload))
        except ValueError as e:
            raise TaskFailed(str(e), fatal=False) from e
        if shared is None:
            raise TaskFailed("peer chose an IKE proposal without a key exchange method for the rekey", fatal=False)
        self.nonce_r = nonce.data
        proposal = Proposal(chosen.num, ProtocolId.IKE, b"", chosen.transforms)
        # RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr); SPIi is the rekey initiator's
        keys = derive_ike_rekey_keys(sa.prf, sa.keys_required.sk_d, proposal, self.nonce_i, self.nonce_r,
                                     shared, self.spi, chosen.spi)
        new = spawn_rekeyed(sa, proposal, keys, initiator=True, spi_i=self.spi, spi_r=chosen.spi,
                            nonce_i=self.nonce_i, nonce_r=self.nonce_r)
        if pending is None:
            adopt_successor(sa, new, delete_old=True)
        elif min(self.nonce_i, self.nonce_r) < min(pending.nonce_i, pending.nonce_r):
            # RFC 7296 2.8.2: both ends rekeyed; the SA from the exchange with the lowest nonce goes
            sa.log.info("IKE SA rekey collision: ours has the lowest nonce, deleting our redundant IKE SA")
            adopt_successor(sa, pending, delete_old=False)
            new.delete(Cause.DUPLICATE, "redundant after an IKE SA rekey collision")
        else:
            sa.log.info("IKE SA rekey collision: the peer's new IKE SA is redundant, it deletes it")
            adopt_successor(sa, new, delete_old=True)
        return Status.DONE

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        sa_payload = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa_payload is None or ke is None or nonce is None:
            raise RemoteProtocolError("IKE rekey request lacks SA, KE or Nonce", NotifyType.INVALID_SYNTAX)
        theirs = [p for p in sa_payload.proposals if p.protocol == ProtocolId.IKE and len(p.spi) == 8
                  and p.spi != bytes(8)]
        chosen = select_proposal(list(sa.settings.ike_proposals), theirs, ke_hint=ke.group)
        if chosen is None:
            reason = ("no IKE proposal matched for the rekey: peer offered "
                      + safe(", ".join(proposal_to_str(p) for p in sa_payload.proposals), 1024))
            sa.log.warning("%s", reason)
            raise Refuse(NotifyType.NO_PROPOSAL_CHOSEN, reason, Cause.NO_PROPOSAL)
        try:
            self.ke, shared = accept(chosen, ke, required=True)
        except InvalidKe as e:
            raise Refuse(NotifyType.INVALID_KE_PAYLOAD, e.reason, Cause.INVALID_KE, data=e.notify_data) from None
        assert shared is not None
        self.nonce_i = nonce.data
        self.nonce_r = sa.ctx.rng(NONCE_LEN)
        self.spi = sa.ctx.alloc_ike_spi()
        proposal = Proposal(chosen.num, ProtocolId.IKE, b"", chosen.transforms)
        self.chosen = with_spi(proposal, self.spi)
        keys = derive_ike_rekey_keys(sa.prf, sa.keys_required.sk_d, proposal, self.nonce_i, self.nonce_r,
                                     shared, chosen.spi, self.spi)
        self.new = spawn_rekeyed(sa, proposal, keys, initiator=False, spi_i=chosen.spi, spi_r=self.spi,
                                 nonce_i=self.nonce_i, nonce_r=self.nonce_r)
        if not sa.exchanges.in_flight({TaskKind.IKE_REKEY}):
            adopt_successor(sa, self.new, delete_old=False)  # the initiator deletes the old SA
        # else RFC 7296 2.25.2/2.8.2: we are rekeying too: answer; ours decides when it completes
        return Status.DONE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        assert self.chosen is not None and self.ke is not None
        return [SaPayload((self.chosen,)), NoncePayload(self.nonce_r), KePayload(self.ke.group, self.ke.public_key)]


def spawn_rekeyed(old: IkeSa, proposal: Proposal, keys: IkeKeys, *, initiator: bool, spi_i: bytes, spi_r: bytes,
                  nonce_i: bytes, nonce_r: bytes) -> IkeSa:
    """The new IKE SA of a rekey (RFC 7296 2.18): established at once, message IDs from 0,
    the initiator of the rekey becoming its original initiator."""
    new = type(old)(old.settings, old.ctx.alloc_ike_id(), initiator, old.local, old.remote, old.now, ctx=old.ctx,
                candidates=old.candidates, spi_i=spi_i, spi_r=spi_r, nonce_i=nonce_i, nonce_r=nonce_r, keys=keys,
                proposal=proposal, local_behind_nat=old.local_behind_nat, remote_behind_nat=old.remote_behind_nat,
                remote_identity=old.remote_identity, rekeyed_from=old.ike_sa_id,
                my_identity=old.my_identity, login=old.login)  # who authenticated, how (EAP identity)
    new.sk_out, new.sk_in = make_sk_ciphers(proposal, keys, initiator)
    release_auth_material(new)  # authenticated by the old SA: no AUTH is ever computed with these
    new.set_state(IkeState.ESTABLISHED)
    new.established_at = old.now
    new.last_traffic_in = old.last_traffic_in
    new.reauth_at = old.reauth_at
    new.frag.peer_supported = old.frag.peer_supported  # RFC 7383 2.3: negotiated once, in IKE_SA_INIT
    mobike.hand_over(old, new)
    lifetimes.arm_ike(new)
    new.log.info("IKE SA established by rekeying IKE SA %d: %s", old.ike_sa_id, proposal_to_str(proposal))
    old.signal(Spawned(new))
    return new


def adopt_successor(old: IkeSa, new: IkeSa, *, delete_old: bool) -> None:
    """Hand the Child SAs and their pending work to ``new``; ``old`` then only waits to be
    deleted (by us when ``delete_old``, otherwise by the peer)."""
    old.replaced_by = new.ike_sa_id
    new.vips, old.vips = old.vips, type(old.vips)()  # the leases stay with the session, not the SA
    moved = list(old.children)
    old.children.take_all()
    for c in moved:
        c.event = dataclasses.replace(c.event, ike_sa_id=new.ike_sa_id)
        new.children.add(c)

    def keep(t: InitiatorTask) -> bool:
        return t.kind not in _STAYS_BEHIND

    old.exchanges.hand_over(new.exchanges, keep)
    old.rekey_at = old.hard_at = None
    old.set_state(IkeState.REKEYED)
    old.log.info("IKE SA rekeyed: %d Child SA(s) moved to IKE SA %d", len(moved), new.ike_sa_id)
    old.emit(IkeSaRekeyed(old.ike_sa_id, old.settings.name, new.ike_sa_id, tuple(c.spi_in for c in moved)))
    if delete_old:
        old.delete(Cause.REKEYED, "rekeyed")
    else:
        old.rekeyed_close_at = old.now + REKEYED_TIMEOUT
    if new.exchanges.active is None:
        new.exchanges.send_next()
