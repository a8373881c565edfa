"""Rekeying the IKE SA with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.8, 2.8.2, 2.18, 2.25.2).

The rekey creates a complete new IKE SA (new SPIs, keys from the old SA's SK_d
and a fresh key exchange); the Child SAs move over to it unchanged and the
initiator of the rekey deletes the old IKE SA. When both ends rekey at once,
both answer normally and the new IKE SA created with the lowest of the four
nonces is deleted by the end that initiated it (RFC 7296 2.8.2).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import ExchangeType, KeId, NotifyType, ProtocolId
from ipsecd.ike.crypto import KeyExchange, accept_key_exchange, create_key_exchange, supported_groups
from ipsecd.ike.keymat import derive_ike_rekey_keys
from ipsecd.ike.payloads import KePayload, NoncePayload, NotifyPayload, Payload, Proposal, SaPayload
from ipsecd.ike.proposal import (
    groups_in,
    ke_group_of,
    prefer_group,
    proposal_matches_chosen,
    proposal_to_str,
    select_proposal,
    with_spi,
)
from ipsecd.ike.tasks import Retry, Skip, TaskFailed

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

NONCE_LEN = 32


def _new_ike_spi(sa: IkeSa) -> bytes:
    while True:
        spi = sa.rng(8)
        if spi != bytes(8):
            return spi


class IkeRekey:
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self) -> None:
        self.spi = b""
        self.nonce_i = b""
        self.nonce_r = b""
        self.group: KeId | None = None
        self.ke: KeyExchange | None = None
        self.ke_retries = 0
        self.chosen: Proposal | None = None
        self.error: NotifyType | None = None
        self.error_data = b""

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        if sa.state.value != "ESTABLISHED" or sa.successor is not None:
            raise Skip
        proposals = list(sa.settings.ike_proposals)
        if self.group is None:
            # prefer the group the IKE SA already uses: the peer accepted it once
            current = ke_group_of(sa.proposal) if sa.proposal is not None else None
            ours = groups_in(proposals)
            if not ours:
                raise TaskFailed("IKE proposal without a key exchange method", fatal=False)
            self.group = current if current in ours else ours[0]
        proposals = prefer_group(proposals, self.group)
        if not self.spi:
            self.spi = _new_ike_spi(sa)
        self.ke = create_key_exchange(self.group)
        self.nonce_i = sa.rng(NONCE_LEN)
        sa.rekeying_ike = self
        sa.log.info("rekeying the IKE SA")
        return [SaPayload(tuple(with_spi(p, self.spi) for p in proposals)), NoncePayload(self.nonce_i),
                KePayload(self.group, self.ke.public_key)]

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        sa.rekeying_ike = None
        pending = sa.pending_successor
        for n in msg.error_notifies():
            if n.notify_type == NotifyType.INVALID_KE_PAYLOAD and pending is None:
                wanted = struct.unpack("!H", n.data[:2])[0] if len(n.data) >= 2 else 0
                if wanted != self.group and wanted in groups_in(sa.settings.ike_proposals) and self.ke_retries < 2:
                    self.group = KeId(wanted)
                    self.ke_retries += 1
                    raise Retry
            if pending is not None:
                # RFC 7296 2.8.2: the peer already rekeyed (we answered it) and refused ours:
                # its new IKE SA is the successor and the peer deletes this one
                sa.adopt_successor(pending, delete_old=False)
                return
            sa.log.info("peer refused to rekey the IKE SA with %s: retrying later", _notify_name(n.notify_type))
            sa.retry_later([IkeRekey()], what="IKE SA rekey")
            return
        sa_payload = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa_payload is None or ke is None or nonce is None or len(sa_payload.proposals) != 1:
            raise TaskFailed("IKE rekey response lacks SA, KE or Nonce", fatal=False)
        offered = [with_spi(p, self.spi) for p in sa.settings.ike_proposals]
        chosen = sa_payload.proposals[0]
        if not proposal_matches_chosen(offered, chosen) or len(chosen.spi) != 8 or chosen.spi == bytes(8):
            raise TaskFailed("peer chose an IKE proposal we did not offer for the rekey", fatal=False)
        if ke.group != ke_group_of(chosen) or ke.group != self.group or self.ke is None:
            raise TaskFailed("peer's KE payload does not match the chosen key exchange method", fatal=False)
        try:
            shared = self.ke.compute_shared(ke.data)
        except RemoteProtocolError as e:
            raise TaskFailed(f"peer's KE payload is invalid: {e}", fatal=False) from e
        self.nonce_r = nonce.data
        proposal = Proposal(chosen.num, ProtocolId.IKE, b"", chosen.transforms)
        # RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr); SPIi is the rekey initiator's
        keys = derive_ike_rekey_keys(sa.prf, sa.keys_required.sk_d, proposal, self.nonce_i, self.nonce_r,
                                     shared, self.spi, chosen.spi)
        new = sa.spawn_rekeyed(proposal, keys, initiator=True, spi_i=self.spi, spi_r=chosen.spi,
                               nonce_i=self.nonce_i, nonce_r=self.nonce_r)
        if pending is None:
            sa.adopt_successor(new, delete_old=True)
            return
        # RFC 7296 2.8.2: both ends rekeyed; the SA from the exchange with the lowest nonce goes
        theirs = min(pending.nonce_i, pending.nonce_r)
        if min(self.nonce_i, self.nonce_r) < theirs:
            sa.log.info("IKE SA rekey collision: ours has the lowest nonce, deleting our redundant IKE SA")
            sa.adopt_successor(pending, delete_old=False)
            new.delete("redundant after an IKE SA rekey collision")
        else:
            sa.log.info("IKE SA rekey collision: the peer's new IKE SA is redundant, it deletes it")
            sa.adopt_successor(new, delete_old=True)

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> None:
        sa_payload = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa_payload is None or ke is None or nonce is None:
            raise RemoteProtocolError("IKE rekey request lacks SA, KE or Nonce", NotifyType.INVALID_SYNTAX)
        theirs = [p for p in sa_payload.proposals if p.protocol == ProtocolId.IKE and len(p.spi) == 8]
        chosen = select_proposal(list(sa.settings.ike_proposals), theirs, ke_hint=ke.group)
        if chosen is None:
            sa.log.warning("no IKE proposal matched for the rekey: peer offered %s",
                           ", ".join(proposal_to_str(p) for p in sa_payload.proposals))
            self.error = NotifyType.NO_PROPOSAL_CHOSEN
            return
        group = ke_group_of(chosen)
        if group is None or group not in supported_groups() or ke.group != group:
            self.error = NotifyType.INVALID_KE_PAYLOAD
            self.error_data = struct.pack("!H", group or 0)
            return
        self.ke, shared = accept_key_exchange(group, ke.data)
        self.group = group
        self.nonce_i = nonce.data
        self.nonce_r = sa.rng(NONCE_LEN)
        self.spi = _new_ike_spi(sa)
        proposal = Proposal(chosen.num, ProtocolId.IKE, b"", chosen.transforms)
        self.chosen = with_spi(proposal, self.spi)
        keys = derive_ike_rekey_keys(sa.prf, sa.keys_required.sk_d, proposal, self.nonce_i, self.nonce_r,
                                     shared, chosen.spi, self.spi)
        new = sa.spawn_rekeyed(proposal, keys, initiator=False, spi_i=chosen.spi, spi_r=self.spi,
                               nonce_i=self.nonce_i, nonce_r=self.nonce_r)
        if sa.rekeying_ike is not None:
            # RFC 7296 2.25.2/2.8.2: we are rekeying too: answer, decide when our own completes
            sa.pending_successor = new
        else:
            sa.adopt_successor(new, delete_old=False)  # the initiator deletes the old SA

    def build_r(self, sa: IkeSa) -> list[Payload]:
        if self.error is not None:
            return [NotifyPayload(self.error, data=self.error_data)]
        assert self.chosen is not None and self.ke is not None and self.group is not None
        return [SaPayload((self.chosen,)), NoncePayload(self.nonce_r), KePayload(self.group, self.ke.public_key)]


def _notify_name(t: int) -> str:
    try:
        return NotifyType(t).name
    except ValueError:
        return f"notify {t}"
