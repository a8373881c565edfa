"""Creating a Child SA: ESP/AH proposals, traffic selectors, mode, IPComp, KEYMAT (RFC 7296 1.2, 1.3.1,
2.9, 2.17, 2.22).

One task serves both places a Child SA is born: piggybacked on IKE_AUTH (keys
from the IKE SA's nonces, never a KE payload) and a CREATE_CHILD_SA exchange
(fresh nonces, an optional KE payload for PFS). Child rekeying (child_rekey.py)
wraps it, so selection, narrowing and key derivation live in one place.

AH or ESP: a child's AH proposals (swanctl's ah_proposals) are offered before its ESP ones
in one SA payload; the responder picks one proposal, so a Child SA is AH or ESP. RFC 7296
dropped RFC 4306's AH+ESP bundles (proposals sharing a number), as strongSwan did.

IPComp (RFC 7296 2.22, 3.10.1): with ``ipcomp`` the initiator sends IPCOMP_SUPPORTED with
its CPI and deflate; a responder configured for it answers with one IPCOMP_SUPPORTED of its
own; each side's CPI is what the other puts in its IPComp headers. A responder not
configured for it (or a peer offering only other algorithms) leaves it out, and the Child
SA runs without compression.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import ip_address
from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import ExchangeType, IpcompId, NotifyType, PayloadType, ProtocolId
from ipsecd.ike.crypto import KeyExchange
from ipsecd.ike.events import Cause, ChildSaEstablished, ChildSaFailed
from ipsecd.ike.keyexchange import InvalidKe, KeOffer, accept, group_name
from ipsecd.ike.keymat import derive_child_keys
from ipsecd.ike.payloads import (
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    TsPayload,
)
from ipsecd.ike.proposal import proposal_matches_chosen, proposal_to_str, select_proposal, with_spi
from ipsecd.ike.proposal import without_ke as proposal_without_ke
from ipsecd.ike.settings import ChildSettings
from ipsecd.ike.tasks import Hooks, Refuse, Retry, Skip, Status, TaskFailed, TaskKind, cause_of_notify, notify_name
from ipsecd.ike.ts import TriggerPacket, all_within, narrow, ts_from_specs, ts_to_str, with_trigger
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

NONCE_LEN = 32

CHILD_ERRORS = frozenset({
    NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.TS_UNACCEPTABLE, NotifyType.SINGLE_PAIR_REQUIRED,
    NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED, NotifyType.INVALID_SELECTORS,
    NotifyType.NO_ADDITIONAL_SAS,
})

# Answers that do not mean "refused for good": the caller decides what to do next.
TRANSIENT_ERRORS = frozenset({NotifyType.TEMPORARY_FAILURE, NotifyType.CHILD_SA_NOT_FOUND})


_IPCOMP_DATA = struct.Struct("!HB")  # CPI, Transform ID (RFC 7296 3.10.1)
_CHILD_PROTOCOLS = (ProtocolId.ESP, ProtocolId.AH)


def ipcomp_notify(cpi: int) -> NotifyPayload:
    """IPCOMP_SUPPORTED with our CPI and deflate (RFC 7296 3.10.1; Protocol ID and SPI empty)."""
    return NotifyPayload(NotifyType.IPCOMP_SUPPORTED, data=_IPCOMP_DATA.pack(cpi, IpcompId.IPCOMP_DEFLATE))


def peer_deflate_cpi(msg: Message) -> int:
    """The peer's CPI from an IPCOMP_SUPPORTED naming deflate, or 0 (none, or other algorithms only).

    The initiator may send several (one per algorithm); the responder answers with one
    (RFC 7296 2.22). Trailing transform-specific data is allowed and ignored.
    """
    for n in msg.notifies():
        if n.notify_type == NotifyType.IPCOMP_SUPPORTED and len(n.data) >= _IPCOMP_DATA.size:
            cpi, transform = _IPCOMP_DATA.unpack_from(n.data)
            if transform == IpcompId.IPCOMP_DEFLATE and cpi:
                return int(cpi)
    return 0


def _proposals(sa: IkeSa, child: ChildSettings) -> tuple[Proposal, ...]:
    """What a child offers and accepts on this IKE SA: no AH across a NAT (or forced UDP
    encapsulation), whose address rewriting breaks AH's ICV and which RFC 3948 does not
    define for AH; only the ESP proposals remain then."""
    return child.esp_proposals if sa.encap and child.ah_proposals else child.proposals


def _nat_note(sa: IkeSa, child: ChildSettings) -> str:
    return " (AH is never used across a NAT or with UDP encapsulation)" if sa.encap and child.ah_proposals else ""


def _kind(child: ChildSettings) -> str:
    """The protocols a child negotiates, for log lines: ESP, AH, or AH/ESP."""
    return "AH/ESP" if child.ah_proposals and child.esp_proposals else "AH" if child.ah_proposals else "ESP"


def without_ke(p: Proposal, spi: bytes = b"") -> Proposal:
    """RFC 7296 1.2: the Child SA of IKE_AUTH uses the IKE SA's keys, so no KE transform is offered."""
    return with_spi(proposal_without_ke(p), spi)


def _ts_payloads(ts_i: list[TrafficSelector], ts_r: list[TrafficSelector]) -> list[Payload]:
    return [TsPayload(PayloadType.TSi, tuple(ts_i)), TsPayload(PayloadType.TSr, tuple(ts_r))]


def _ts_of(msg: Message, kind: PayloadType) -> list[TrafficSelector] | None:
    for p in msg.get_all(TsPayload):
        if p.kind == kind:
            return list(p.selectors)
    return None


class ChildCreate(Hooks):
    """Negotiate one Child SA, in IKE_AUTH or in CREATE_CHILD_SA.

    ``rekey_of`` (initiator) and ``rekeyed_spi_in``/``reqid`` (responder) are set
    by ChildRekey: the new SA then keeps the old SA's reqid (so the daemon's
    policies stay) and names the SA it replaces. ``candidates`` restricts the
    responder's choice of configured children (a rekey must stay the same child).
    ``trigger`` (initiator) is the packet that made the data plane acquire this Child SA:
    its host pair goes first in TSi/TSr (RFC 7296 2.9).
    The responder chooses in ``process_r`` and installs in ``build_r``, after the IKE SA
    of an IKE_AUTH is established. With EAP, IKE_AUTH takes several rounds: SA, TSi and
    TSr come in the first request and the first response goes without them; the Child
    SA is chosen and installed in the last round, once the peer is authenticated, and
    answered in the last response (RFC 7296 2.16).
    """

    kind = TaskKind.CHILD_CREATE

    def __init__(self, child: ChildSettings | None = None, *, exchange: ExchangeType = ExchangeType.IKE_AUTH,
                 rekey_of: ChildSaEstablished | None = None, reqid: int | None = None,
                 rekeyed_spi_in: bytes | None = None, candidates: Sequence[ChildSettings] | None = None,
                 trigger: TriggerPacket | None = None) -> None:
        self.exchange = exchange
        self.child = child
        self.trigger = trigger
        self.rekey_of = rekey_of
        self.reqid = reqid if reqid is not None else (rekey_of.reqid if rekey_of is not None else None)
        self.rekeyed_spi_in = rekeyed_spi_in if rekeyed_spi_in is not None else (
            rekey_of.spi_in if rekey_of is not None else None)
        self.candidates = candidates
        self.spi_in = b""
        self.ts_i: list[TrafficSelector] = []
        self.ts_r: list[TrafficSelector] = []
        self.chosen: Proposal | None = None
        self.transport = False
        self.peer_error: NotifyType | None = None  # TEMPORARY_FAILURE / CHILD_SA_NOT_FOUND from the responder
        self.nonce_i = b""
        self.nonce_r = b""
        self.offer: KeOffer | None = None  # initiator, PFS
        self.ke: KeyExchange | None = None  # responder, PFS
        self.shared: bytes | None = None
        self.result: ChildSaEstablished | None = None
        self.offered = False  # initiator: SA/TS went out (only in the first IKE_AUTH request)
        self.request: Message | None = None  # responder: the IKE_AUTH request with SA/TS, while EAP runs
        self.cpi_in = 0  # IPComp: our CPI (announced), 0 without IPComp
        self.cpi_out = 0  # IPComp: the peer's CPI
        self.blocked = False  # initiator: nothing to offer on this IKE SA (AH only, across a NAT)

    @property
    def target(self) -> str | None:
        """The configured child a fresh CREATE negotiates (None for a rekey)."""
        return self.child.name if self.child is not None and self.rekey_of is None else None

    @property
    def pfs(self) -> bool:
        return self.exchange == ExchangeType.CREATE_CHILD_SA

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        assert self.child is not None
        if self.offered and self.exchange == ExchangeType.IKE_AUTH:
            return []  # a later round of IKE_AUTH (EAP): SA and TS went in the first request
        self.offered = True
        if not self.spi_in:  # a Retry reuses the SPI we already reserved
            self.spi_in = sa.ctx.alloc_child_spi()
        if self.rekey_of is not None:
            # RFC 7296 1.3.3: the rekeyed SA keeps its traffic selectors
            self.ts_i, self.ts_r = list(self.rekey_of.local_ts), list(self.rekey_of.remote_ts)
        else:
            self.ts_i, self.ts_r = with_trigger(
                self.trigger, ts_from_specs(self.child.local_ts, dynamic(sa, local=True)),
                ts_from_specs(self.child.remote_ts, dynamic(sa, local=False)))
        payloads: list[Payload] = []
        if self.rekey_of is not None:
            # RFC 7296 1.3.3: REKEY_SA names the SA by the SPI we receive on
            payloads.append(NotifyPayload(NotifyType.REKEY_SA, self.rekey_of.proposal.protocol,
                                          self.rekey_of.spi_in))
        if self.child.mode == "transport":
            payloads.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        if not _proposals(sa, self.child):
            self.blocked = True
            self._failed(sa, f"no Child SA {self.child.name}: it has only AH proposals, and AH cannot cross the "
                         "NAT (or forced UDP encapsulation) of this IKE SA", Cause.NO_PROPOSAL)
            if self.exchange == ExchangeType.IKE_AUTH:
                return []  # the IKE SA still comes up, without this Child SA
            raise Skip
        if self.child.ipcomp:  # RFC 7296 2.22: our CPI, reserved with (and freed with) our SPI
            self.cpi_in = sa.ctx.alloc_cpi(self.spi_in)
            payloads.append(ipcomp_notify(self.cpi_in))
        if not self.pfs:
            proposals = tuple(without_ke(p, self.spi_in) for p in _proposals(sa, self.child))
            return [*payloads, SaPayload(proposals), *_ts_payloads(self.ts_i, self.ts_r)]
        if self.offer is None:
            self.offer = KeOffer(_proposals(sa, self.child))
        offered = self.offer.order(_proposals(sa, self.child))
        self.nonce_i = sa.ctx.rng(NONCE_LEN)
        payloads += [SaPayload(tuple(with_spi(p, self.spi_in) for p in offered)), NoncePayload(self.nonce_i)]
        ke = self.offer.payload()
        if ke is not None:
            payloads.append(ke)
        return payloads + _ts_payloads(self.ts_i, self.ts_r)

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        assert self.child is not None
        if self.blocked:
            return Status.DONE  # failed in build_i already
        if self.exchange == ExchangeType.IKE_AUTH and sa.authenticating:
            return Status.NEED_MORE  # the answer comes with the last IKE_AUTH response
        name = self.child.name
        for n in msg.error_notifies():
            t = n.notify_type
            if self.pfs and t == NotifyType.INVALID_KE_PAYLOAD and self.offer is not None:
                was = self.offer.group
                why = self.offer.retry_with(n)
                if why is None:  # RFC 7296 1.3: retry with the group the peer named
                    sa.log.info("peer asked for %s instead of %s for Child SA %s: retrying",
                                group_name(self.offer.group or 0), group_name(was or 0), name)
                    raise Retry
                self._failed(sa, f"{why} for Child SA {name}", Cause.INVALID_KE)
                return Status.DONE
            if t in TRANSIENT_ERRORS:
                self.peer_error = NotifyType(t)
                return Status.DONE
            if t in CHILD_ERRORS or self.pfs:
                reason = f"peer refused Child SA {name} with {notify_name(t)}"
                if t == NotifyType.NO_PROPOSAL_CHOSEN:
                    reason += f" (no {_kind(self.child)} proposal matched: we offered " + ", ".join(
                        proposal_to_str(p) for p in _proposals(sa, self.child)) + ")"
                elif t == NotifyType.TS_UNACCEPTABLE:
                    reason += (" (traffic selectors not acceptable: we proposed "
                               f"{', '.join(map(ts_to_str, self.ts_i))} === {', '.join(map(ts_to_str, self.ts_r))})")
                self._failed(sa, reason, cause_of_notify(t))
                return Status.DONE
        sa_payload = msg.get(SaPayload)
        ts_i, ts_r = _ts_of(msg, PayloadType.TSi), _ts_of(msg, PayloadType.TSr)
        if sa_payload is None or ts_i is None or ts_r is None:
            self._failed(sa, f"peer created no Child SA {name} (no SA/TS in its {self.exchange.name} response)",
                         Cause.PEER_REFUSED)
            return Status.DONE
        if self.pfs:
            offered = [with_spi(p, self.spi_in) for p in _proposals(sa, self.child)]
        else:
            offered = [without_ke(p, self.spi_in) for p in _proposals(sa, self.child)]
        if len(sa_payload.proposals) != 1 or not proposal_matches_chosen(offered, sa_payload.proposals[0]):
            raise TaskFailed(f"peer chose an ESP/AH proposal for {name} we did not offer")
        chosen = sa_payload.proposals[0]
        if not _valid_spi(chosen.spi):
            raise TaskFailed(f"peer's {chosen.protocol.name} SPI for {name} is not a valid SPI "
                             f"(RFC 4303 2.1, RFC 4302 2.4): {chosen.spi.hex()}")
        if not all_within(ts_i, self.ts_i) or not all_within(ts_r, self.ts_r):
            raise TaskFailed(f"peer widened the traffic selectors of {name}: "
                             f"{', '.join(map(ts_to_str, ts_i))} === {', '.join(map(ts_to_str, ts_r))}")
        if self.pfs:
            nonce = msg.get(NoncePayload)
            if nonce is None:
                raise TaskFailed("CREATE_CHILD_SA response without a nonce")
            self.nonce_r = nonce.data
            assert self.offer is not None
            try:
                self.shared = self.offer.shared(chosen, msg.get(KePayload))
            except ValueError as e:
                raise TaskFailed(f"{e} (Child SA {name})", fatal=False) from e
        self.transport = self.child.mode == "transport" and msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        if self.child.mode == "transport" and not self.transport:
            sa.log.warning("peer declined transport mode for %s: using tunnel mode", name)
        if self.cpi_in:
            self.cpi_out = peer_deflate_cpi(msg)
            if not self.cpi_out:  # RFC 7296 2.22: no IPCOMP_SUPPORTED back means no compression
                sa.log.info("peer declined IPComp for %s: running without compression", name)
                sa.ctx.release_cpi(self.spi_in)
                self.cpi_in = 0
        self.ts_i, self.ts_r = ts_i, ts_r
        self._install(sa, chosen, initiator=True)
        return Status.DONE

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        if self.exchange == ExchangeType.IKE_AUTH:
            if self.request is None:
                self.request = msg
            if sa.authenticating:
                return Status.NEED_MORE  # chosen once the peer is authenticated (RFC 7296 2.16)
            msg = self.request
        sa_payload = msg.get(SaPayload)
        ts_i, ts_r = _ts_of(msg, PayloadType.TSi), _ts_of(msg, PayloadType.TSr)
        if not self.pfs and sa_payload is None and ts_i is None and ts_r is None:
            return Status.DONE  # childless IKE SA (RFC 6023)
        if sa_payload is None or ts_i is None or ts_r is None:
            raise RemoteProtocolError("SA, TSi and TSr must come together", NotifyType.INVALID_SYNTAX)
        if sa.vips.failed:
            if self.pfs:  # a later CREATE_CHILD_SA: a peer without its virtual IP gets no Child SA either
                raise self._refuse(sa, NotifyType.TS_UNACCEPTABLE, Cause.TS_UNACCEPTABLE, None,
                                   "no Child SA: the peer has no virtual IP")
            # RFC 7296 3.10.1: INTERNAL_ADDRESS_FAILURE (or FAILED_CP_REQUIRED) in IKE_AUTH: no Child SA
            self._failed(sa, "no Child SA: the peer got no virtual IP", Cause.PEER_REFUSED)
            return Status.DONE
        nonce = msg.get(NoncePayload)
        ke = msg.get(KePayload)
        if self.pfs and nonce is None:
            raise RemoteProtocolError("CREATE_CHILD_SA request without a nonce", NotifyType.INVALID_SYNTAX)
        wants_transport = msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        ts_reason = []
        candidates = self.candidates if self.candidates is not None else sa.settings.children
        mine, theirs = dynamic(sa, local=True), dynamic(sa, local=False)
        for child in candidates:
            # TSi describes the initiator's side: our remote side
            local = ts_from_specs(child.local_ts, mine)
            remote = ts_from_specs(child.remote_ts, theirs)
            ni, nr = narrow(ts_i, remote), narrow(ts_r, local)
            if not ni or not nr:
                ts_reason.append(f"{child.name}: configured {', '.join(map(ts_to_str, remote))} === "
                                 f"{', '.join(map(ts_to_str, local))}")
                continue
            spi_candidates = [p for p in sa_payload.proposals if p.protocol in _CHILD_PROTOCOLS and _valid_spi(p.spi)]
            if self.pfs:
                chosen = select_proposal(list(_proposals(sa, child)), spi_candidates,
                                         ke_hint=ke.group if ke is not None else None)
            else:
                chosen = select_proposal([without_ke(p) for p in _proposals(sa, child)],
                                         [without_ke(p, p.spi) for p in spi_candidates])
            if chosen is None:
                raise self._refuse(sa, NotifyType.NO_PROPOSAL_CHOSEN, Cause.NO_PROPOSAL, child,
                                   f"no {_kind(child)} proposal matched for {child.name}: peer offered "
                                   + safe(", ".join(proposal_to_str(p) for p in sa_payload.proposals), 1024)
                                   + ", we accept " + (", ".join(proposal_to_str(p) for p in _proposals(sa, child))
                                                       or "nothing here") + _nat_note(sa, child))
            if child.mode == "transport" and not wants_transport:
                raise self._refuse(sa, NotifyType.NO_PROPOSAL_CHOSEN, Cause.NO_PROPOSAL, child,
                                   f"{child.name} is configured for transport mode, peer asked for tunnel mode")
            if self.pfs:
                try:
                    self.ke, self.shared = accept(chosen, ke, required=False)
                except InvalidKe as e:
                    # RFC 7296 1.3: name the group we want; the initiator retries
                    sa.log.info("%s for Child SA %s", e.reason, child.name)
                    raise Refuse(NotifyType.INVALID_KE_PAYLOAD, e.reason, Cause.INVALID_KE,
                                 data=e.notify_data) from None
                assert nonce is not None
                self.nonce_i = nonce.data
                self.nonce_r = sa.ctx.rng(NONCE_LEN)
            self.child = child
            self.cpi_out = peer_deflate_cpi(msg) if child.ipcomp else 0
            self.transport = wants_transport and child.mode == "transport"
            self.ts_i, self.ts_r = ni, nr
            self.chosen = chosen
            return Status.DONE
        raise self._refuse(sa, NotifyType.TS_UNACCEPTABLE, Cause.TS_UNACCEPTABLE, None,
                           "traffic selectors not acceptable: peer proposed "
                           f"{safe(', '.join(map(ts_to_str, ts_i)), 512)} === "
                           f"{safe(', '.join(map(ts_to_str, ts_r)), 512)}, "
                           f"configured {'; '.join(ts_reason) or 'no children'}")

    def build_r(self, sa: IkeSa) -> list[Payload]:
        if self.chosen is None:
            return []
        self.spi_in = sa.ctx.alloc_child_spi()
        if self.cpi_out:
            self.cpi_in = sa.ctx.alloc_cpi(self.spi_in)
        self._install(sa, self.chosen, initiator=False)
        payloads: list[Payload] = []
        if self.transport:
            payloads.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        if self.cpi_in:  # RFC 7296 2.22: one IPCOMP_SUPPORTED back, naming the algorithm we took
            payloads.append(ipcomp_notify(self.cpi_in))
        chosen = self.chosen
        payloads.append(SaPayload((Proposal(chosen.num, chosen.protocol, self.spi_in, chosen.transforms),)))
        if self.pfs:
            payloads.append(NoncePayload(self.nonce_r))
            if self.ke is not None:
                payloads.append(KePayload(self.ke.group, self.ke.public_key))
        return payloads + _ts_payloads(self.ts_i, self.ts_r)

    # -- shared ------------------------------------------------------------
    def _install(self, sa: IkeSa, chosen: Proposal, *, initiator: bool) -> None:
        assert self.child is not None
        if self.pfs:
            ni, nr = self.nonce_i, self.nonce_r  # RFC 7296 2.17: the nonces of this exchange
        else:
            ni, nr = sa.nonce_i, sa.nonce_r
        # RFC 7296 2.17: KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr) when the exchange carried KE
        keys = derive_child_keys(sa.prf, sa.keys_required.sk_d, chosen, ni, nr, self.shared)
        local_ts, remote_ts = (self.ts_i, self.ts_r) if initiator else (self.ts_r, self.ts_i)
        event = ChildSaEstablished(
            ike_sa_id=sa.ike_sa_id, name=sa.settings.name, child=self.child.name,
            reqid=self.reqid if self.reqid is not None else sa.alloc_reqid(self.child.name),
            spi_in=self.spi_in, spi_out=chosen.spi,
            proposal=Proposal(chosen.num, chosen.protocol, b"", chosen.transforms), keys=keys,
            initiator=initiator, mode="transport" if self.transport else "tunnel", encap=sa.encap,
            local=sa.local, remote=sa.remote, local_ts=tuple(local_ts), remote_ts=tuple(remote_ts),
            replay_window=self.child.replay_window, rekeyed_spi_in=self.rekeyed_spi_in,
            ipcomp_cpi_in=self.cpi_in, ipcomp_cpi_out=self.cpi_out,
        )
        self.result = event
        sa.add_child(event, self.child)

    def abort(self, sa: IkeSa) -> None:
        """The IKE SA closes before our request was answered: the SPI we reserved is free again."""
        self._release_spi(sa)

    def _release_spi(self, sa: IkeSa) -> None:
        # an SA that came up owns its SPI until the data plane removed it (the shell releases it)
        if self.spi_in and self.result is None:
            sa.ctx.release_child_spi(self.spi_in)
            self.spi_in = b""

    def _failed(self, sa: IkeSa, reason: str, cause: Cause) -> None:
        self._release_spi(sa)
        name = self.child.name if self.child is not None else "?"
        sa.child_log.warning("%s", reason)
        sa.emit(ChildSaFailed(sa.ike_sa_id, sa.settings.name, name, cause, reason))

    def _refuse(self, sa: IkeSa, notify: NotifyType, cause: Cause, child: ChildSettings | None,
                reason: str) -> Refuse:
        sa.child_log.warning("%s", reason)
        name = (child or self.child).name if (child or self.child) is not None else "?"  # type: ignore[union-attr]
        sa.emit(ChildSaFailed(sa.ike_sa_id, sa.settings.name, name, cause, reason))
        return Refuse(notify, reason, cause)


def dynamic(sa: IkeSa, *, local: bool) -> list[str]:
    """What a side's "dynamic" selector stands for: its virtual IPs when it has them (RFC 7296
    2.19; a gateway narrows the client's side to its lease), else its outer address. A client
    that is still asking for virtual IPs proposes any address of each family it asked for,
    which the gateway narrows to the lease (strongSwan's clients propose the same)."""
    if local:
        if sa.vips.local:
            return [str(a) for a in sa.vips.local]
        if sa.settings.vips:
            return sorted({"0.0.0.0/0" if ip_address(v).version == 4 else "::/0" for v in sa.settings.vips})
        return [sa.local[0]]
    return [str(a) for a in sa.vips.remote] or [sa.remote[0]]


def _valid_spi(spi: bytes) -> bool:
    """A 4-octet ESP SPI outside the reserved 0..255 (RFC 4303 2.1)."""
    return len(spi) == 4 and int.from_bytes(spi, "big") > 255
