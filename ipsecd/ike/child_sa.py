"""Child SAs as an IKE SA knows them: one state machine, written as a table.

As h11's ``_state.py``: every state change of a Child SA goes through
:meth:`ChildSa.apply` with an event, and :data:`TRANSITIONS` is the only place
that says which change is allowed. An event that the table does not allow is a
bug in the engine and raises LocalProtocolError (caught per datagram by the manager).

States:
- INSTALLED: in use.
- REKEYING: our CREATE_CHILD_SA rekeying it is in flight (RFC 7296 1.3.3).
- REKEYED: a successor exists (ours or the peer's); this one waits for its Delete.
- DELETING: our Delete of it is in flight (RFC 7296 1.4.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from ipsecd.errors import LocalProtocolError
from ipsecd.iana import ProtocolId
from ipsecd.ike.events import ChildSaEstablished
from ipsecd.ike.proposal import proposal_to_swanctl
from ipsecd.ike.settings import ChildSettings


class ChildSaState(StrEnum):
    INSTALLED = "INSTALLED"
    REKEYING = "REKEYING"
    REKEYED = "REKEYED"
    DELETING = "DELETING"


class ChildEvent(Enum):
    REKEY_SENT = "rekey_sent"  # our rekey request goes out (again, after INVALID_KE)
    REKEY_FAILED = "rekey_failed"  # our rekey was refused or failed: the SA stays as it was
    REPLACED = "replaced"  # a successor is installed (by our rekey, the peer's, or a collision winner)
    DELETE_SENT = "delete_sent"  # our Delete of it goes out


_S, _E = ChildSaState, ChildEvent

TRANSITIONS: dict[tuple[ChildSaState, ChildEvent], ChildSaState] = {
    (_S.INSTALLED, _E.REKEY_SENT): _S.REKEYING,
    (_S.REKEYING, _E.REKEY_SENT): _S.REKEYING,  # the same rekey, rebuilt (RFC 7296 1.3)
    (_S.REKEYING, _E.REKEY_FAILED): _S.INSTALLED,  # its hard lifetime still applies
    (_S.REKEYED, _E.REKEY_FAILED): _S.REKEYED,  # the peer's rekey won meanwhile
    (_S.DELETING, _E.REKEY_FAILED): _S.DELETING,
    (_S.INSTALLED, _E.REPLACED): _S.REKEYED,
    (_S.REKEYING, _E.REPLACED): _S.REKEYED,
    (_S.REKEYED, _E.REPLACED): _S.REKEYED,
    (_S.DELETING, _E.REPLACED): _S.DELETING,  # a Delete already on its way wins
    (_S.INSTALLED, _E.DELETE_SENT): _S.DELETING,
    (_S.REKEYING, _E.DELETE_SENT): _S.DELETING,  # hard lifetime hit while the rekey was in flight
    (_S.REKEYED, _E.DELETE_SENT): _S.DELETING,
}


@dataclass(slots=True)
class ChildSa:
    """One Child SA of an IKE SA (the data plane holds the packet state).

    ``rekey_at``/``expire_at`` are the soft and hard lifetimes by time; byte and
    packet limits are watched by the data plane, which tells the owner.
    """

    event: ChildSaEstablished
    settings: ChildSettings | None = None
    established_at: float = 0.0
    rekey_at: float | None = None
    expire_at: float | None = None
    state: ChildSaState = ChildSaState.INSTALLED

    def apply(self, ev: ChildEvent) -> ChildSaState:
        new = TRANSITIONS.get((self.state, ev))
        if new is None:
            raise LocalProtocolError(f"Child SA {self.event.child} {self.spi_in.hex()}_i: "
                                     f"{ev.value} is not allowed in state {self.state}")
        self.state = new
        return new

    @property
    def spi_in(self) -> bytes:
        return self.event.spi_in

    @property
    def spi_out(self) -> bytes:
        return self.event.spi_out

    @property
    def name(self) -> str:
        return self.event.child


class ChildTable:
    """The Child SAs of one IKE SA, by inbound SPI.

    An IKE SA has one or two Child SAs (a few during a rekey), so the outbound SPI is found
    by looking at them rather than through a second dict (224 bytes per IKE SA, issue 11);
    the manager's table finds the IKE SA itself by SPI without a scan. The latest SA added
    with an outbound SPI wins, as a dict would have it.
    """

    __slots__ = ("_by_in",)

    def __init__(self) -> None:
        self._by_in: dict[bytes, ChildSa] = {}

    def add(self, c: ChildSa) -> None:
        self._by_in[c.spi_in] = c

    def remove(self, c: ChildSa) -> None:
        self._by_in.pop(c.spi_in, None)

    def by_spi_in(self, spi: bytes) -> ChildSa | None:
        return self._by_in.get(spi)

    def by_spi_out(self, spi: bytes) -> ChildSa | None:
        found = None
        for c in self._by_in.values():
            if c.spi_out == spi:
                found = c
        return found

    def reqid_in_use(self, reqid: int) -> bool:
        return any(c.event.reqid == reqid for c in self._by_in.values())

    def take_all(self) -> list[ChildSa]:
        out = list(self._by_in.values())
        self._by_in.clear()
        return out

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_in.values()))

    def __len__(self) -> int:
        return len(self._by_in)

    def __getitem__(self, i: int) -> ChildSa:
        return list(self._by_in.values())[i]

    def __bool__(self) -> bool:
        return bool(self._by_in)


def describe_child(event: ChildSaEstablished) -> str:
    """What a log line says about a Child SA: ``[AH ]algorithms, mode[, UDP-encapsulated][, IPComp CPIs]``."""
    parts = [("AH " if event.proposal.protocol == ProtocolId.AH else "") + proposal_to_swanctl(event.proposal),
             f"{event.mode} mode"]
    if event.encap:
        parts.append("UDP-encapsulated")
    if event.ipcomp_cpi_in:
        parts.append(f"IPComp CPIs {event.ipcomp_cpi_in:04x}_i {event.ipcomp_cpi_out:04x}_o")
    return ", ".join(parts)
