"""Which other IKE SAs a newly established one makes redundant (decisions only; the manager acts).

Both rules look only at SAs found through the SA table's indexes (by identity pair, by the
peer we initiated to), never at every SA of a connection: a gateway holds thousands of SAs
of one connection, many from one NAT address.
"""

from __future__ import annotations

from ipsecd.ike.cp import client_identity
from ipsecd.ike.ike_sa import IkeSa
from ipsecd.ike.sa_table import SaTable
from ipsecd.ike.state import IkeState

IC_REASON = "replaced: peer sent INITIAL_CONTACT"  # the same line whichever shard held the older SA


def replaced_by_initial_contact(table: SaTable, sa: IkeSa) -> list[IkeSa]:
    """RFC 7296 2.4: INITIAL_CONTACT means the peer lost every older SA it had with us under
    these identities: ours are dropped silently. Identities, not addresses, decide: many
    clients share one NAT address; with EAP the EAP identity counts (cp.client_identity).
    ``unique: never`` ignores the notify (as strongSwan); ``replace`` deletes them with a
    Delete once the new SA is up instead (a second device of the user hears of it).

    Only SAs that were up before this one started count as "older": an SA that completed
    meanwhile comes from a simultaneous initiation, which ``redundant_duplicates`` settles
    with the peer's agreement.
    """
    who = client_identity(sa)
    if sa.settings.unique in ("never", "replace") or who is None:
        return []
    return [o for o in table.with_identities(sa.local_identity, who)
            if o is not sa and o.established_at is not None and o.established_at < sa.created_at
            and o.state in (IkeState.ESTABLISHED, IkeState.REKEYED)]


def redundant_duplicates(table: SaTable, sa: IkeSa) -> list[IkeSa]:
    """Simultaneous initiation: both ends started the same connection at once.

    Rule (both ends reach it on their own, as both know every SA's IKE_SA_INIT nonces):
    when one established IKE SA of a connection was initiated by us and another, to the
    same peer, by the peer, the one whose IKE_SA_INIT initiator nonce (Ni) is higher is
    redundant. The end that initiated it deletes it with an ordinary Delete (its Child SAs
    go on both ends); the other end just waits for that Delete. SAs born from a rekey do
    not count, nor do two SAs we initiated ourselves (``up`` twice is the user's choice).
    Returns our SAs to delete.
    """
    if sa.rekeyed_from is not None or sa.reauth_of is not None:
        return []
    ours = [o for o in table.initiated(sa.settings.name, sa.remote[0]) if _plain_established(o)]
    if not ours:
        return []  # a gateway with many peer-initiated SAs from one address never gets here
    theirs = [o for o in table.with_peer(sa.settings.name, sa.remote[0])
              if not o.initiator and _plain_established(o)]
    # the same peer is the same identity too, not just the same address
    return [o for o in ours if any(t.nonce_i < o.nonce_i and t.remote_identity == o.remote_identity
                                   for t in theirs)]


def _plain_established(sa: IkeSa) -> bool:
    """Established, and neither born from a rekey nor a reauthentication (RFC 7296 2.8)."""
    return sa.state == IkeState.ESTABLISHED and sa.rekeyed_from is None and sa.reauth_of is None
