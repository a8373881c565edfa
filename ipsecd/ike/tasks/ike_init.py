"""IKE_SA_INIT: proposals, key exchange, nonces, NAT detection, cookies (RFC 7296 1.2, 2.6, 2.23)."""

from __future__ import annotations

import hashlib
import struct
from ipaddress import ip_address
from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import ExchangeType, HashAlgorithm, KeId, NotifyType
from ipsecd.ike.crypto import accept_key_exchange, create_key_exchange, supported_groups
from ipsecd.ike.keymat import derive_ike_keys
from ipsecd.ike.payloads import KePayload, NoncePayload, NotifyPayload, Payload, Proposal, SaPayload
from ipsecd.ike.proposal import groups_in, ke_group_of, proposal_matches_chosen, proposal_to_str, select_proposal
from ipsecd.ike.sk import make_sk_ciphers
from ipsecd.ike.tasks import Retry, TaskFailed

if TYPE_CHECKING:
    from ipsecd.ike.events import Endpoint
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

NONCE_LEN = 32
ZERO_SPI = bytes(8)


def natd_hash(spi_i: bytes, spi_r: bytes, ep: Endpoint) -> bytes:
    # RFC 7296 2.23: SHA-1(SPIi | SPIr | IP | Port); SHA-1 is what the RFC fixes here, not a choice
    return hashlib.sha1(spi_i + spi_r + ip_address(ep[0]).packed + struct.pack("!H", ep[1])).digest()


def _sig_hash_algorithms() -> bytes:
    return b"".join(struct.pack("!H", h) for h in (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                                                    HashAlgorithm.SHA2_512))


def _strip_spi(p: Proposal) -> Proposal:
    return Proposal(p.num, p.protocol, b"", p.transforms)


class IkeInit:
    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self) -> None:
        self.group: KeId | None = None
        self.chosen: Proposal | None = None

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        proposals = sa.settings.ike_proposals
        if self.group is None:
            self.group = ke_group_of(proposals[0])
            if self.group is None:
                raise TaskFailed("IKE proposal without a key exchange method")
        if sa.ke is None or sa.ke.group != self.group:
            sa.ke = create_key_exchange(self.group)
        if not sa.nonce_i:
            sa.nonce_i = sa.rng(NONCE_LEN)
        payloads: list[Payload] = []
        if sa.cookie:
            payloads.append(NotifyPayload(NotifyType.COOKIE, data=sa.cookie))  # RFC 7296 2.6: first payload
        payloads += [
            SaPayload(tuple(_strip_spi(p) for p in proposals)),
            KePayload(self.group, sa.ke.public_key),
            NoncePayload(sa.nonce_i),
            *self._natd_payloads(sa, ZERO_SPI),
            NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=_sig_hash_algorithms()),
        ]
        return payloads

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie.data) <= 64:
                raise TaskFailed("peer sent a malformed COOKIE")
            if sa.cookie_retries >= 2:
                raise TaskFailed("peer keeps asking for a cookie")
            sa.cookie = cookie.data
            sa.cookie_retries += 1
            raise Retry
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            if len(invalid_ke.data) < 2:
                raise TaskFailed("peer sent INVALID_KE_PAYLOAD without a group")
            wanted = struct.unpack("!H", invalid_ke.data[:2])[0]
            ours = groups_in(sa.settings.ike_proposals)
            if wanted == self.group or wanted not in ours or sa.ke_retries >= 2:
                raise TaskFailed(f"peer wants key exchange method {_group_name(wanted)}, which we do not offer "
                                 f"(we offer {', '.join(_group_name(g) for g in ours)})")
            sa.log.info("peer asked for %s instead of %s: retrying", _group_name(wanted), _group_name(self.group or 0))
            self.group = KeId(wanted)
            sa.ke_retries += 1
            raise Retry
        errors = msg.error_notifies()
        if errors:
            raise TaskFailed(f"peer refused IKE_SA_INIT with {_notify_name(errors[0].notify_type)}"
                             + (" (no IKE proposal matched: we offered "
                                + ", ".join(proposal_to_str(p) for p in sa.settings.ike_proposals) + ")"
                                if errors[0].notify_type == NotifyType.NO_PROPOSAL_CHOSEN else ""))
        sa_payload = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa_payload is None or ke is None or nonce is None:
            raise TaskFailed("IKE_SA_INIT response lacks SA, KE or Nonce")
        if len(sa_payload.proposals) != 1 or not proposal_matches_chosen(sa.settings.ike_proposals,
                                                                         sa_payload.proposals[0]):
            raise TaskFailed("peer chose an IKE proposal we did not offer")
        chosen = sa_payload.proposals[0]
        if ke.group != ke_group_of(chosen) or ke.group != self.group:
            raise TaskFailed("peer's KE payload does not match the chosen key exchange method")
        if msg.spi_r == ZERO_SPI:
            raise TaskFailed("IKE_SA_INIT response with a zero responder SPI")
        sa.spi_r = msg.spi_r
        sa.nonce_r = nonce.data
        assert sa.ke is not None
        try:
            shared = sa.ke.compute_shared(ke.data)
        except RemoteProtocolError as e:
            raise TaskFailed(f"peer's KE payload is invalid: {e}") from e
        self._derive(sa, chosen, shared)
        self._process_natd(sa, msg)

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> None:
        sa_payload = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa_payload is None or ke is None or nonce is None:
            raise RemoteProtocolError("IKE_SA_INIT request lacks SA, KE or Nonce", NotifyType.INVALID_SYNTAX)
        chosen = None
        for candidate in sa.candidates:
            chosen = select_proposal(candidate.ike_proposals, sa_payload.proposals, ke_hint=ke.group)
            if chosen is not None:
                sa.settings = candidate
                break
        if chosen is None:
            offered = ", ".join(proposal_to_str(p) for p in sa_payload.proposals)
            configured = ", ".join(proposal_to_str(p) for p in sa.settings.ike_proposals)
            sa.fail_reason = f"no IKE proposal matched: peer offered {offered}, we accept {configured}"
            raise RemoteProtocolError(sa.fail_reason, NotifyType.NO_PROPOSAL_CHOSEN)
        group = ke_group_of(chosen)
        if group is None or group not in supported_groups() or ke.group != group:
            # RFC 7296 1.2: tell the initiator which group we selected; keep no state
            sa.fail_reason = f"peer sent KE for {_group_name(ke.group)}, we want {_group_name(group or 0)}"
            raise RemoteProtocolError(sa.fail_reason, NotifyType.INVALID_KE_PAYLOAD,
                                      struct.pack("!H", group or 0))
        sa.nonce_i = nonce.data
        sa.nonce_r = sa.rng(NONCE_LEN)
        # the responder's half is computed from the initiator's (required for KEMs like ML-KEM)
        sa.ke, shared = accept_key_exchange(group, ke.data)
        self.group = group
        self._derive(sa, chosen, shared)
        self._process_natd(sa, msg)

    def build_r(self, sa: IkeSa) -> list[Payload]:
        assert self.chosen is not None and sa.ke is not None and self.group is not None
        return [
            SaPayload((self.chosen,)),
            KePayload(self.group, sa.ke.public_key),
            NoncePayload(sa.nonce_r),
            *self._natd_payloads(sa, sa.spi_r),
            NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=_sig_hash_algorithms()),
        ]

    # -- shared ------------------------------------------------------------
    def _derive(self, sa: IkeSa, chosen: Proposal, shared: bytes) -> None:
        self.chosen = _strip_spi(chosen)
        sa.proposal = self.chosen
        sa.keys = derive_ike_keys(self.chosen, sa.nonce_i, sa.nonce_r, shared, sa.spi_i, sa.spi_r)
        sa.sk_out, sa.sk_in = make_sk_ciphers(self.chosen, sa.keys, sa.initiator)

    def _natd_payloads(self, sa: IkeSa, spi_r: bytes) -> list[Payload]:
        src = natd_hash(sa.spi_i, spi_r, sa.local)
        if sa.settings.force_encap:
            src = sa.rng(20)  # pretend to be behind a NAT so the peer encapsulates (as strongSwan's encap=yes)
        return [
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=src),
            NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, data=natd_hash(sa.spi_i, spi_r, sa.remote)),
        ]

    def _process_natd(self, sa: IkeSa, msg: Message) -> None:
        spi_r = msg.spi_r
        sources = [n.data for n in msg.notifies() if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
        dests = [n.data for n in msg.notifies() if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
        if not sources or not dests:
            return  # peer does not support NAT-T detection
        sa.remote_behind_nat = natd_hash(sa.spi_i, spi_r, sa.remote) not in sources
        sa.local_behind_nat = natd_hash(sa.spi_i, spi_r, sa.local) not in dests
        if sa.remote_behind_nat or sa.local_behind_nat:
            sa.log.info("NAT detected (%s), using UDP encapsulation",
                        "local" if sa.local_behind_nat and not sa.remote_behind_nat
                        else "remote" if not sa.local_behind_nat else "both sides")


def _group_name(group: int) -> str:
    try:
        return KeId(group).name
    except ValueError:
        return f"group {group}"


def _notify_name(t: int) -> str:
    try:
        return NotifyType(t).name
    except ValueError:
        return f"notify {t}"

