"""Events an IKE SA hands to its owner (the manager, then the daemon or a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecd.ike.keymat import ChildKeys
from ipsecd.ike.payloads import Proposal, TrafficSelector

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class IkeSaEstablished:
    ike_sa_id: int
    name: str


@dataclass(frozen=True)
class IkeSaClosed:
    """The IKE SA is gone; ``reason`` is a sentence a user can act on.

    ``peer_dead`` is set when the peer stopped answering (DPD or retransmission
    exhaustion on an established SA); ``dpd_action`` then carries the connection's
    configured reaction (clear | trap | restart) for the daemon to apply.
    ``replaced_by`` names the IKE SA that took over after a rekey: nothing was lost.
    """

    ike_sa_id: int
    name: str
    reason: str
    peer_dead: bool = False
    dpd_action: str = ""
    replaced_by: int | None = None


@dataclass(frozen=True)
class IkeSaRekeyed:
    """RFC 7296 1.3.2: the IKE SA was rekeyed; its Child SAs now belong to ``new_ike_sa_id``.

    The Child SAs themselves are untouched (same SPIs, keys, reqids); only the
    IKE SA that manages them changed. Later events for them carry the new id.
    """

    ike_sa_id: int
    name: str
    new_ike_sa_id: int
    child_spis_in: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ChildSaEstablished:
    """Everything the data plane needs to install both directions of a Child SA."""

    ike_sa_id: int
    name: str  # connection name
    child: str
    reqid: int
    spi_in: bytes
    spi_out: bytes
    proposal: Proposal
    keys: ChildKeys = field(repr=False)
    initiator: bool  # we initiated the exchange that created it (selects the KEYMAT halves)
    mode: str
    encap: bool
    local: Endpoint
    remote: Endpoint
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    replay_window: int = 1024
    # Set when this SA replaces another one in a rekey (RFC 7296 1.3.3): the inbound
    # SPI of the old SA. Install the new SA (both directions, outbound switches to it)
    # and keep the old inbound SA until its ChildSaDeleted arrives (make-before-break).
    rekeyed_spi_in: bytes | None = None

    @property
    def keys_in(self) -> tuple[bytes, bytes]:
        """(encryption key, integrity key) protecting traffic we receive."""
        k = self.keys
        return (k.encr_r, k.integ_r) if self.initiator else (k.encr_i, k.integ_i)

    @property
    def keys_out(self) -> tuple[bytes, bytes]:
        k = self.keys
        return (k.encr_i, k.integ_i) if self.initiator else (k.encr_r, k.integ_r)


@dataclass(frozen=True)
class ChildSaFailed:
    ike_sa_id: int
    name: str
    child: str
    reason: str


@dataclass(frozen=True)
class ChildSaDeleted:
    """A Child SA is gone. ``reqid_in_use``: another Child SA with the same reqid
    (its rekeyed successor) is still installed, so the daemon must remove only this
    SA pair by SPI and keep the policies (pointing them at the survivor)."""

    ike_sa_id: int
    name: str
    child: str
    reqid: int
    spi_in: bytes
    spi_out: bytes
    reqid_in_use: bool = False
    reason: str = ""


Event = IkeSaEstablished | IkeSaClosed | IkeSaRekeyed | ChildSaEstablished | ChildSaFailed | ChildSaDeleted
