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
    """The IKE SA is gone; ``reason`` is a sentence a user can act on."""

    ike_sa_id: int
    name: str
    reason: str


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
    ike_sa_id: int
    name: str
    child: str
    reqid: int
    spi_in: bytes
    spi_out: bytes


Event = IkeSaEstablished | IkeSaClosed | ChildSaEstablished | ChildSaFailed | ChildSaDeleted
