"""The Child SA created inside IKE_AUTH: ESP proposals, traffic selectors, mode (RFC 7296 1.2, 2.9, 2.17)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.ike.constants import ExchangeType, NotifyType, PayloadType, ProtocolId
from ipsecd.ike.events import ChildSaEstablished, ChildSaFailed
from ipsecd.ike.keymat import derive_child_keys
from ipsecd.ike.payloads import NotifyPayload, Payload, Proposal, SaPayload, TrafficSelector, TsPayload
from ipsecd.ike.proposal import proposal_matches_chosen, proposal_to_str, select_proposal, with_spi
from ipsecd.ike.proposal import without_ke as proposal_without_ke
from ipsecd.ike.settings import ChildSettings
from ipsecd.ike.tasks import TaskFailed
from ipsecd.ike.ts import all_within, narrow, ts_from_spec, ts_to_str

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

CHILD_ERRORS = frozenset({
    NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.TS_UNACCEPTABLE, NotifyType.SINGLE_PAIR_REQUIRED,
    NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED, NotifyType.INVALID_SELECTORS,
    NotifyType.NO_ADDITIONAL_SAS,
})


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


class ChildCreate:
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child: ChildSettings | None = None) -> None:
        self.child = child
        self.spi_in = b""
        self.ts_i: list[TrafficSelector] = []
        self.ts_r: list[TrafficSelector] = []
        self.chosen: Proposal | None = None
        self.transport = False
        self.error: NotifyType | None = None

    # -- initiator ---------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        assert self.child is not None
        self.spi_in = sa.alloc_spi()
        self.ts_i = [ts_from_spec(s, sa.local[0]) for s in self.child.local_ts]
        self.ts_r = [ts_from_spec(s, sa.remote[0]) for s in self.child.remote_ts]
        proposals = tuple(without_ke(p, self.spi_in) for p in self.child.esp_proposals)
        payloads: list[Payload] = []
        if self.child.mode == "transport":
            payloads.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        payloads += [SaPayload(proposals), *_ts_payloads(self.ts_i, self.ts_r)]
        return payloads

    def process_i(self, sa: IkeSa, msg: Message) -> None:
        assert self.child is not None
        for n in msg.error_notifies():
            if n.notify_type in CHILD_ERRORS:
                reason = f"peer refused Child SA {self.child.name} with {NotifyType(n.notify_type).name}"
                if n.notify_type == NotifyType.NO_PROPOSAL_CHOSEN:
                    reason += " (no ESP proposal matched: we offered " + ", ".join(
                        proposal_to_str(p) for p in self.child.esp_proposals) + ")"
                elif n.notify_type == NotifyType.TS_UNACCEPTABLE:
                    reason += (" (traffic selectors not acceptable: we proposed "
                               f"{', '.join(map(ts_to_str, self.ts_i))} === {', '.join(map(ts_to_str, self.ts_r))})")
                self._failed(sa, reason)
                return
        sa_payload = msg.get(SaPayload)
        ts_i, ts_r = _ts_of(msg, PayloadType.TSi), _ts_of(msg, PayloadType.TSr)
        if sa_payload is None or ts_i is None or ts_r is None:
            self._failed(sa, f"peer created no Child SA {self.child.name} (no SA/TS in its IKE_AUTH response)")
            return
        offered = [without_ke(p, self.spi_in) for p in self.child.esp_proposals]
        if len(sa_payload.proposals) != 1 or not proposal_matches_chosen(offered, sa_payload.proposals[0]):
            raise TaskFailed(f"peer chose an ESP proposal for {self.child.name} we did not offer")
        chosen = sa_payload.proposals[0]
        if len(chosen.spi) != 4:
            raise TaskFailed("peer's ESP proposal has an SPI that is not 4 bytes")
        if not all_within(ts_i, self.ts_i) or not all_within(ts_r, self.ts_r):
            raise TaskFailed(f"peer widened the traffic selectors of {self.child.name}: "
                             f"{', '.join(map(ts_to_str, ts_i))} === {', '.join(map(ts_to_str, ts_r))}")
        self.transport = self.child.mode == "transport" and msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        if self.child.mode == "transport" and not self.transport:
            sa.log.warning("peer declined transport mode for %s: using tunnel mode", self.child.name)
        self._established(sa, chosen, chosen.spi, ts_i, ts_r, initiator=True)

    # -- responder ---------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> None:
        sa_payload = msg.get(SaPayload)
        ts_i, ts_r = _ts_of(msg, PayloadType.TSi), _ts_of(msg, PayloadType.TSr)
        if sa_payload is None and ts_i is None and ts_r is None:
            return  # childless IKE SA (RFC 6023)
        if sa_payload is None or ts_i is None or ts_r is None:
            raise RemoteProtocolError("SA, TSi and TSr must come together", NotifyType.INVALID_SYNTAX)
        wants_transport = msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        ts_reason = []
        for child in sa.settings.children:
            # TSi describes the initiator's side: our remote side
            local = [ts_from_spec(s, sa.local[0]) for s in child.local_ts]
            remote = [ts_from_spec(s, sa.remote[0]) for s in child.remote_ts]
            ni, nr = narrow(ts_i, remote), narrow(ts_r, local)
            if not ni or not nr:
                ts_reason.append(f"{child.name}: configured {', '.join(map(ts_to_str, remote))} === "
                                 f"{', '.join(map(ts_to_str, local))}")
                continue
            spi_candidates = [p for p in sa_payload.proposals if p.protocol == ProtocolId.ESP and len(p.spi) == 4]
            chosen = select_proposal([without_ke(p) for p in child.esp_proposals],
                                     [without_ke(p, p.spi) for p in spi_candidates])
            if chosen is None:
                self.error = NotifyType.NO_PROPOSAL_CHOSEN
                self._failed(sa, f"no ESP proposal matched for {child.name}: peer offered "
                             + ", ".join(proposal_to_str(p) for p in sa_payload.proposals)
                             + ", we accept " + ", ".join(proposal_to_str(p) for p in child.esp_proposals), child)
                return
            if child.mode == "transport" and not wants_transport:
                self.error = NotifyType.NO_PROPOSAL_CHOSEN
                self._failed(sa, f"{child.name} is configured for transport mode, peer asked for tunnel mode",
                             child)
                return
            self.child = child
            self.transport = wants_transport and child.mode == "transport"
            self.ts_i, self.ts_r = ni, nr
            self.spi_in = sa.alloc_spi()
            self.chosen = chosen
            self._established(sa, chosen, chosen.spi, ni, nr, initiator=False)
            return
        self.error = NotifyType.TS_UNACCEPTABLE
        self._failed(sa, "traffic selectors not acceptable: peer proposed "
                     f"{', '.join(map(ts_to_str, ts_i))} === {', '.join(map(ts_to_str, ts_r))}, "
                     f"configured {'; '.join(ts_reason) or 'no children'}")

    def build_r(self, sa: IkeSa) -> list[Payload]:
        if self.error is not None:
            return [NotifyPayload(self.error)]
        if self.chosen is None:
            return []
        payloads: list[Payload] = []
        if self.transport:
            payloads.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        chosen = Proposal(self.chosen.num, ProtocolId.ESP, self.spi_in, self.chosen.transforms)
        payloads += [SaPayload((chosen,)), *_ts_payloads(self.ts_i, self.ts_r)]
        return payloads

    # -- shared ------------------------------------------------------------
    def _established(self, sa: IkeSa, chosen: Proposal, spi_out: bytes, ts_i: list[TrafficSelector],
                     ts_r: list[TrafficSelector], *, initiator: bool) -> None:
        assert self.child is not None
        keys = derive_child_keys(sa.prf, sa.keys_required.sk_d, chosen, sa.nonce_i, sa.nonce_r)
        local_ts, remote_ts = (ts_i, ts_r) if initiator else (ts_r, ts_i)
        event = ChildSaEstablished(
            ike_sa_id=sa.ike_sa_id, name=sa.settings.name, child=self.child.name, reqid=sa.alloc_reqid(),
            spi_in=self.spi_in, spi_out=spi_out,
            proposal=Proposal(chosen.num, ProtocolId.ESP, b"", chosen.transforms), keys=keys,
            initiator=initiator, mode="transport" if self.transport else "tunnel", encap=sa.encap,
            local=sa.local, remote=sa.remote, local_ts=tuple(local_ts), remote_ts=tuple(remote_ts),
            replay_window=self.child.replay_window,
        )
        sa.add_child(event)

    def _failed(self, sa: IkeSa, reason: str, child: ChildSettings | None = None) -> None:
        which = child or self.child
        name = which.name if which is not None else "?"
        sa.log.warning("%s", reason)
        sa.emit(ChildSaFailed(sa.ike_sa_id, sa.settings.name, name, reason))
