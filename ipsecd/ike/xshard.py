"""INITIAL_CONTACT and ``unique`` across IKE shards (``settings.ike_shards``; docs/architecture.md).

Each shard sees only its own IKE SAs, and the kernel steers a client's new IKE SA by its SPI,
so it may land on another shard than the client's older one. When a shard establishes an IKE
SA whose INITIAL_CONTACT (RFC 7296 2.4) or ``unique: replace|keep`` rule concerns older SAs of
the same (local identity, client identity) pair, it sends a :class:`Claim` to the other shards
(shell/xshard.py carries it over the shard links); each applies the same rule to its own SAs
(:func:`apply`) and answers with a :class:`Reply`. The rule on the claiming shard's own SAs
stays where it was (the manager, tasks/unique.py): this module is only the other shards' half.

* ``INITIAL_CONTACT``: the other shards drop (no Delete: the peer lost them) the SAs that were
  up before the new one started, as relations.replaced_by_initial_contact does locally.
* ``replace``: they delete (with a Delete) the ones established before the new one. Two
  clients of one identity establishing at the same instant on two shards: the later
  ``established_at`` (then the higher shard) wins, so exactly one survives, never none.
* ``keep``: the newer is refused. Locally that happens in IKE_AUTH (UniqueCheck), before our
  AUTH goes out. Across shards the engine cannot wait for an answer in the middle of an
  exchange, so the newcomer completes IKE_AUTH and is deleted (with a Delete) as soon as
  another shard answers :attr:`Outcome.KEEP_OLDER`: for one round trip on the shard link
  the duplicate exists (its Child SAs may be installed). The same tie-break decides which of
  two simultaneous newcomers is the older.

Times are the shells' ``time.monotonic()``, one clock for every process of the machine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipsecd.identity import Identity
from ipsecd.ike.cp import client_identity
from ipsecd.ike.events import Cause
from ipsecd.ike.relations import IC_REASON
from ipsecd.ike.state import IkeState
from ipsecd.ike.tasks.unique import replace_reason

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.manager import IkeManager

MAX_ID_DATA = 2048  # an ID payload's data (a DN) fits easily; a claim is from a shard, still bounded


class Rule(enum.Enum):
    INITIAL_CONTACT = "initial_contact"
    REPLACE = "replace"
    KEEP = "keep"


class Outcome(enum.Enum):
    NONE = "none"  # nothing of these identities here (or nothing older)
    CLOSED = "closed"  # older SAs dropped silently (INITIAL_CONTACT)
    DELETED = "deleted"  # older SAs deleted (unique: replace)
    KEEP_OLDER = "keep_older"  # unique: keep and an older SA lives here: the claimant must go


@dataclass(frozen=True)
class Claim:
    """A newly established IKE SA's rule about the identity pair, as the other shards need it."""

    rule: Rule
    local: Identity
    remote: Identity  # the client identity (cp.client_identity: the EAP identity if any)
    ike_sa_id: int
    shard: int
    started_at: float  # its created_at: "older" for INITIAL_CONTACT means up before this
    established_at: float


@dataclass(frozen=True)
class Reply:
    outcome: Outcome
    ike_sa_ids: tuple[int, ...] = ()  # the SAs acted on, or the older one kept


def claim_of(sa: IkeSa, initial_contact: bool, shard: int) -> Claim | None:
    """What ``sa``, just established, asks of the other shards; None: nothing (same rules as
    the local ones: relations.replaced_by_initial_contact, tasks/unique.py)."""
    who = client_identity(sa)
    if who is None or sa.rekeyed_from is not None or sa.established_at is None:
        return None  # a rekey continues a session: it replaces nothing
    unique = sa.settings.unique
    if unique == "replace":
        rule = Rule.REPLACE
    elif unique == "keep" and not sa.initiator:  # UniqueCheck is the responder's
        rule = Rule.KEEP
    elif unique != "never" and initial_contact:
        rule = Rule.INITIAL_CONTACT
    else:
        return None
    return Claim(rule, sa.local_identity, who, sa.ike_sa_id, shard, sa.created_at, sa.established_at)


def _before(o: IkeSa, claim: Claim, shard: int) -> bool:
    """Was ``o`` (on ``shard``) established before the claimant? Ties: the lower shard."""
    at = o.established_at
    return at is not None and (at < claim.established_at or (at == claim.established_at and shard < claim.shard))


def apply(manager: IkeManager, claim: Claim, now: float, shard: int) -> Reply:
    """The other shard's half: ``claim``'s rule on this shard's (``shard``) SAs."""
    mine = [o for o in manager.table.with_identities(claim.local, claim.remote) if o.ike_sa_id != claim.ike_sa_id]
    if claim.rule is Rule.INITIAL_CONTACT:
        hits = [o.ike_sa_id for o in mine if o.state in (IkeState.ESTABLISHED, IkeState.REKEYED)
                and o.established_at is not None and o.established_at < claim.started_at]
        for i in hits:
            manager.delete_ike(i, now, Cause.REPLACED, IC_REASON, silent=True)
        return Reply(Outcome.CLOSED if hits else Outcome.NONE, tuple(hits))
    older = [o.ike_sa_id for o in mine if o.state == IkeState.ESTABLISHED and _before(o, claim, shard)]
    if not older:
        return Reply(Outcome.NONE)
    if claim.rule is Rule.KEEP:
        return Reply(Outcome.KEEP_OLDER, (older[0],))
    for i in older:
        manager.delete_ike(i, now, Cause.REPLACED, replace_reason(claim.ike_sa_id))
    return Reply(Outcome.DELETED, tuple(older))


# ------------------------------------------------------------------ on the shard link (JSON)
def _identity(obj: Any) -> Identity:
    if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[1], str) or len(obj[1]) > 2 * MAX_ID_DATA:
        raise ValueError("malformed identity in a shard claim")
    t = obj[0]
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= 255):
        raise ValueError("malformed identity type in a shard claim")
    return Identity(None) if t is None else Identity.from_wire(t, bytes.fromhex(obj[1]))


def encode_claim(c: Claim) -> dict[str, Any]:
    return {"rule": c.rule.value, "ike_sa_id": c.ike_sa_id, "shard": c.shard, "started_at": c.started_at,
            "established_at": c.established_at,
            "local": [None if c.local.id_type is None else int(c.local.id_type), c.local.data.hex()],
            "remote": [None if c.remote.id_type is None else int(c.remote.id_type), c.remote.data.hex()]}


def decode_claim(obj: Any) -> Claim:
    """ValueError for anything but what :func:`encode_claim` makes."""
    if not isinstance(obj, dict):
        raise ValueError("a shard claim is an object")
    try:
        rule = Rule(obj["rule"])
        ike_sa_id, shard = int(obj["ike_sa_id"]), int(obj["shard"])
        started, established = float(obj["started_at"]), float(obj["established_at"])
        return Claim(rule, _identity(obj["local"]), _identity(obj["remote"]), ike_sa_id, shard, started, established)
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed shard claim: {e}") from e


def encode_reply(r: Reply) -> dict[str, Any]:
    return {"outcome": r.outcome.value, "ike_sa_ids": list(r.ike_sa_ids)}


def decode_reply(obj: Any) -> Reply:
    if not isinstance(obj, dict):
        raise ValueError("a shard reply is an object")
    try:
        return Reply(Outcome(obj["outcome"]), tuple(int(i) for i in obj.get("ike_sa_ids", ())))
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed shard reply: {e}") from e
