"""IKE_SA_INIT: proposals, key exchange, nonces, NAT detection, cookies (RFC 7296 1.2, 2.6, 2.23)."""

from __future__ import annotations

import hashlib
import struct
from ipaddress import ip_address
from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import CertEncoding, ExchangeType, NotifyType
from ipsecd.ike.authenticators import certreq_data
from ipsecd.ike.crypto import KeyExchange
from ipsecd.ike.events import Cause
from ipsecd.ike.keyexchange import InvalidKe, KeOffer, accept, group_name
from ipsecd.ike.keymat import derive_ike_keys
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import CertReqPayload, KePayload, NoncePayload, NotifyPayload, Payload, Proposal, SaPayload
from ipsecd.ike.proposal import proposal_matches_chosen, proposal_to_str, select_proposal
from ipsecd.ike.redirect import check_init
from ipsecd.ike.signature import announced_hash_algorithms, parse_hash_algorithms
from ipsecd.ike.sk import make_sk_ciphers
from ipsecd.ike.tasks import Hooks, Refuse, Retry, Status, TaskFailed, TaskKind, cause_of_notify, notify_name
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.events import Endpoint
    from ipsecd.ike.ike_sa import IkeSa

NONCE_LEN = 32
ZERO_SPI = bytes(8)


def natd_hash(spi_i: bytes, spi_r: bytes, ep: Endpoint) -> bytes:
    # RFC 7296 2.23: SHA-1(SPIi | SPIr | IP | Port); SHA-1 is what the RFC fixes here, not a choice
    return hashlib.sha1(spi_i + spi_r + ip_address(ep[0]).packed + struct.pack("!H", ep[1])).digest()


def _hash_notify(sa: IkeSa) -> list[Payload]:
    # RFC 7427 4 and RFC 8420 2: the hashes we verify, Identity (5) included for EdDSA
    return [NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS,
                          data=announced_hash_algorithms(sa.settings.signature))]


def _peer_extensions(sa: IkeSa, msg: Message) -> None:
    """What the peer's IKE_SA_INIT tells the authenticators: RFC 7427 hashes, CERTREQs."""
    notify = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    sa.auth_ext.hashes = parse_hash_algorithms(notify.data) if notify is not None else None
    certreqs = msg.get_all(CertReqPayload)
    sa.auth_ext.certreq_seen = bool(certreqs)
    sa.auth_ext.certreqs = [p.data for p in certreqs if p.encoding == CertEncoding.X509_CERTIFICATE_SIGNATURE]


def _fragmentation(sa: IkeSa, msg: Message | None = None) -> list[Payload]:
    """RFC 7383 2.3: note whether the peer supports fragmentation; announce our support (a
    responder only when the initiator announced it)."""
    if msg is not None:
        sa.frag.peer_supported = msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    if not sa.frag.announce or (not sa.initiator and not sa.frag.peer_supported):
        return []
    return [NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)]


def _strip_spi(p: Proposal) -> Proposal:
    return Proposal(p.num, p.protocol, b"", p.transforms)


class IkeInit(Hooks):
    exchange = ExchangeType.IKE_SA_INIT
    kind = TaskKind.IKE_INIT
    target = None

    def __init__(self) -> None:
        self.offer: KeOffer | None = None  # initiator: our group and key pair, across rebuilt requests
        self.cookie = b""
        self.cookie_retries = 0
        self.chosen: Proposal | None = None
        self.ke: KeyExchange | None = None  # responder: our half

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        proposals = sa.settings.ike_proposals
        if self.offer is None:
            self.offer = KeOffer(proposals)
        ke = self.offer.payload()
        if ke is None:
            raise TaskFailed("IKE proposal without a key exchange method", Cause.CONFIG)
        if not sa.nonce_i:
            sa.nonce_i = sa.ctx.rng(NONCE_LEN)
        payloads: list[Payload] = []
        if self.cookie:
            payloads.append(NotifyPayload(NotifyType.COOKIE, data=self.cookie))  # RFC 7296 2.6: first payload
        payloads += [
            SaPayload(tuple(_strip_spi(p) for p in self.offer.order(proposals))),
            ke,
            NoncePayload(sa.nonce_i),
            *self._natd_payloads(sa, ZERO_SPI),
            *_fragmentation(sa),
            *_hash_notify(sa),
        ]
        return payloads

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        assert self.offer is not None
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie.data) <= 64:
                raise TaskFailed("peer sent a malformed COOKIE")
            if self.cookie_retries >= 2:
                raise TaskFailed("peer keeps asking for a cookie", Cause.PEER_REFUSED)
            self.cookie = cookie.data
            self.cookie_retries += 1
            raise Retry
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            was = self.offer.group
            why = self.offer.retry_with(invalid_ke)
            if why is not None:
                raise TaskFailed(why, Cause.INVALID_KE)
            sa.log.info("peer asked for %s instead of %s: retrying", group_name(self.offer.group or 0),
                        group_name(was or 0))
            raise Retry
        errors = msg.error_notifies()
        if errors:
            n = errors[0].notify_type
            raise TaskFailed(f"peer refused IKE_SA_INIT with {notify_name(n)}"
                             + (" (no IKE proposal matched: we offered "
                                + ", ".join(proposal_to_str(p) for p in sa.settings.ike_proposals) + ")"
                                if n == NotifyType.NO_PROPOSAL_CHOSEN else ""), cause_of_notify(n))
        sa_payload = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa_payload is None or ke is None or nonce is None:
            raise TaskFailed("IKE_SA_INIT response lacks SA, KE or Nonce")
        if len(sa_payload.proposals) != 1 or not proposal_matches_chosen(sa.settings.ike_proposals,
                                                                         sa_payload.proposals[0]):
            raise TaskFailed("peer chose an IKE proposal we did not offer")
        chosen = sa_payload.proposals[0]
        if msg.spi_r == ZERO_SPI:
            raise TaskFailed("IKE_SA_INIT response with a zero responder SPI")
        try:
            shared = self.offer.shared(chosen, ke)
        except ValueError as e:
            raise TaskFailed(str(e)) from e
        if shared is None:
            raise TaskFailed("peer chose an IKE proposal without a key exchange method")
        sa.spi_r = msg.spi_r
        sa.nonce_r = nonce.data
        self._derive(sa, chosen, shared)
        self._process_natd(sa, msg)
        _fragmentation(sa, msg)
        _peer_extensions(sa, msg)
        return Status.DONE

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> Status:
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
        if chosen is not None:
            check_init(sa, msg, nonce.data)  # RFC 5685 4.2: before any D-H work
        if chosen is None:
            offered = ", ".join(proposal_to_str(p) for p in sa_payload.proposals)
            configured = ", ".join(proposal_to_str(p) for p in sa.settings.ike_proposals)
            raise Refuse(NotifyType.NO_PROPOSAL_CHOSEN,
                         f"no IKE proposal matched: peer offered {safe(offered, 1024)}, we accept {configured}",
                         Cause.NO_PROPOSAL, fatal=True)
        try:
            # RFC 7296 1.2: a KE of another group gets INVALID_KE_PAYLOAD naming ours; no state kept
            self.ke, shared = accept(chosen, ke, required=True)
        except InvalidKe as e:
            raise Refuse(NotifyType.INVALID_KE_PAYLOAD, e.reason, Cause.INVALID_KE, data=e.notify_data,
                         fatal=True) from None
        assert shared is not None
        sa.nonce_i = nonce.data
        sa.nonce_r = sa.ctx.rng(NONCE_LEN)
        self._derive(sa, chosen, shared)
        self._process_natd(sa, msg)
        _fragmentation(sa, msg)
        try:
            _peer_extensions(sa, msg)
        except RemoteProtocolError as e:
            raise Refuse(NotifyType.INVALID_SYNTAX, str(e), Cause.PROTOCOL_ERROR, fatal=True) from None
        return Status.DONE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        assert self.chosen is not None and self.ke is not None
        payloads: list[Payload] = [
            SaPayload((self.chosen,)),
            KePayload(self.ke.group, self.ke.public_key),
            NoncePayload(sa.nonce_r),
            *self._natd_payloads(sa, sa.spi_r),
            *_fragmentation(sa),
            *_hash_notify(sa),
        ]
        if sa.settings.send_certreq and sa.settings.remote_auth.method == "pubkey":
            data = certreq_data(sa)  # RFC 7296 3.7: the trust anchors we would accept the peer's chain from
            if data:
                payloads.append(CertReqPayload(CertEncoding.X509_CERTIFICATE_SIGNATURE, data))
        return payloads

    # -- shared ------------------------------------------------------------
    def _derive(self, sa: IkeSa, chosen: Proposal, shared: bytes) -> None:
        self.chosen = _strip_spi(chosen)
        sa.proposal = self.chosen
        sa.keys = derive_ike_keys(self.chosen, sa.nonce_i, sa.nonce_r, shared, sa.spi_i, sa.spi_r)
        sa.sk_out, sa.sk_in = make_sk_ciphers(self.chosen, sa.keys, sa.initiator)

    def _natd_payloads(self, sa: IkeSa, spi_r: bytes) -> list[Payload]:
        src = natd_hash(sa.spi_i, spi_r, sa.local)
        if sa.settings.force_encap:
            src = sa.ctx.rng(20)  # pretend to be behind a NAT so the peer encapsulates (as strongSwan's encap=yes)
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
