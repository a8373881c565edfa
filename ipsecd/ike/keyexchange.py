"""The key exchange of an exchange, for both roles: shared by IKE_SA_INIT, CREATE_CHILD_SA
with PFS and the IKE SA rekey, so INVALID_KE_PAYLOAD is handled in one place.

Initiator (:class:`KeOffer`): offer the first group of our proposals (or a preferred one),
keep the key pair across a rebuilt request (COOKIE), and on INVALID_KE_PAYLOAD switch to
the group the responder named if we offer it, at most twice (RFC 7296 1.2, 1.3).

Responder (:func:`accept`): the chosen proposal decides the group; a KE payload of
another group is answered with INVALID_KE_PAYLOAD naming ours (RFC 7296 1.2/1.3), and
the peer's value is checked before we generate a key pair (a bad request costs nothing).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import KeId, NotifyType
from ipsecd.ike.crypto import KeyExchange, accept_key_exchange, create_key_exchange, supported_groups
from ipsecd.ike.payloads import KePayload, NotifyPayload, Proposal
from ipsecd.ike.proposal import groups_in, ke_group_of, prefer_group

MAX_KE_RETRIES = 2


def group_name(group: int) -> str:
    try:
        return KeId(group).name
    except ValueError:
        return f"group {group}"


class InvalidKe(Exception):
    """Responder: the peer's KE payload is not of the chosen group; answer naming ``group``."""

    def __init__(self, group: KeId, reason: str) -> None:
        super().__init__(reason)
        self.group = group
        self.reason = reason

    @property
    def notify_data(self) -> bytes:
        return struct.pack("!H", self.group)


class KeOffer:
    """Initiator side of one exchange's key exchange (see the module docstring)."""

    __slots__ = ("group", "ke", "offered", "retries")

    def __init__(self, proposals: Sequence[Proposal], prefer: KeId | None = None) -> None:
        self.offered = groups_in(proposals)
        self.group: KeId | None = prefer if prefer in self.offered else (self.offered[0] if self.offered else None)
        self.ke: KeyExchange | None = None
        self.retries = 0

    def order(self, proposals: Sequence[Proposal]) -> list[Proposal]:
        """Our proposals with the group we send a KE payload for first in each."""
        return prefer_group(proposals, self.group) if self.group is not None else list(proposals)

    def payload(self) -> KePayload | None:
        if self.group is None:
            return None
        if self.ke is None or self.ke.group != self.group:
            self.ke = create_key_exchange(self.group)
        return KePayload(self.group, self.ke.public_key)

    def retry_with(self, n: NotifyPayload) -> str | None:
        """INVALID_KE_PAYLOAD received: None when we switch groups (the caller raises Retry),
        otherwise the sentence why we cannot."""
        wanted = struct.unpack("!H", n.data[:2])[0] if len(n.data) >= 2 else 0
        if wanted and wanted != self.group and wanted in self.offered and self.retries < MAX_KE_RETRIES:
            self.group = KeId(wanted)
            self.ke = None
            self.retries += 1
            return None
        return (f"peer wants key exchange method {group_name(wanted)}, which we do not offer "
                f"(we offer {', '.join(group_name(g) for g in self.offered) or 'none'})")

    def shared(self, chosen: Proposal, ke: KePayload | None) -> bytes | None:
        """The shared secret from the responder's KE payload, or None when the chosen proposal
        has no KE method. Raises ValueError with a sentence when the answer does not fit."""
        group = ke_group_of(chosen)
        if group is None:
            return None
        # RFC 7296 1.3.1: with a KE method chosen, KEr carries the same group as our KEi
        if ke is None or ke.group != group or self.ke is None or self.ke.group != group:
            raise ValueError("peer's KE payload does not match the chosen key exchange method")
        try:
            return self.ke.compute_shared(ke.data)
        except RemoteProtocolError as e:
            raise ValueError(f"peer's KE payload is invalid: {e}") from e


def accept(chosen: Proposal, ke: KePayload | None, *, required: bool) -> tuple[KeyExchange | None, bytes | None]:
    """Responder side: (our key exchange, shared secret) for the chosen proposal.

    ``required`` (IKE_SA_INIT, IKE rekey): a proposal without a KE method is refused
    (NO_PROPOSAL_CHOSEN). Raises InvalidKe to make the initiator retry with our group, RemoteProtocolError
    (INVALID_SYNTAX) for a malformed or degenerate public value.
    """
    group = ke_group_of(chosen)
    if group is None:
        if required:  # RFC 7296 3.3.3: an IKE proposal must carry a KE method
            raise RemoteProtocolError("the chosen IKE proposal has no key exchange method",
                                      NotifyType.NO_PROPOSAL_CHOSEN)
        return None, None
    if group not in supported_groups() or ke is None or ke.group != group:
        sent = group_name(ke.group) if ke is not None else "no KE payload"
        raise InvalidKe(group, f"peer sent {sent}, we want {group_name(group)}")
    return accept_key_exchange(group, ke.data)
