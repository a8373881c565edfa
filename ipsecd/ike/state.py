"""The states of an IKE SA and the only allowed changes between them (as h11's _state.py)."""

from __future__ import annotations

from enum import StrEnum

from ipsecd.errors import LocalProtocolError


class IkeState(StrEnum):
    CREATED = "CREATED"
    CONNECTING = "CONNECTING"  # IKE_SA_INIT/IKE_AUTH under way
    ESTABLISHED = "ESTABLISHED"
    REKEYED = "REKEYED"  # replaced by a rekey: no Child SAs left, waiting for the Delete
    DELETING = "DELETING"  # our Delete is in flight
    CLOSED = "CLOSED"


_S = IkeState

# state -> states it may move to; CLOSED is reachable from everywhere and final.
TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    _S.CREATED: frozenset({_S.CONNECTING, _S.ESTABLISHED, _S.CLOSED}),  # ESTABLISHED: born from a rekey
    _S.CONNECTING: frozenset({_S.ESTABLISHED, _S.CLOSED}),
    _S.ESTABLISHED: frozenset({_S.REKEYED, _S.DELETING, _S.CLOSED}),
    _S.REKEYED: frozenset({_S.DELETING, _S.CLOSED}),
    _S.DELETING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}

# States in which the peer's INFORMATIONAL and CREATE_CHILD_SA requests are taken.
LIVE = frozenset({_S.ESTABLISHED, _S.REKEYED, _S.DELETING})


def check_transition(old: IkeState, new: IkeState) -> IkeState:
    if new not in TRANSITIONS[old]:
        raise LocalProtocolError(f"IKE SA cannot go from {old} to {new}")
    return new
