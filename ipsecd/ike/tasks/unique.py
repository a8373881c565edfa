"""swanctl's ``unique``: what a second IKE SA with the identities of an existing one does.

* ``no`` (default): both stay; a peer's INITIAL_CONTACT still replaces the older ones
  (RFC 7296 2.4, the manager's ``_initial_contact``).
* ``never``: both stay, and INITIAL_CONTACT is ignored too.
* ``keep``: the new one is refused in its IKE_AUTH with AUTHENTICATION_FAILED
  (:class:`UniqueCheck`), before it is established -- the older IKE SA and its Child SAs
  are never disturbed, whatever the newcomer sends.
* ``replace``: once the new one is established the older ones are deleted (:func:`replaced`,
  acted on by the manager).

"The same identities" is our identity and the client's identity (the EAP identity when
there is one, :func:`client_identity`), as strongSwan compares them, never the peer's
address: many laptops share one NAT address, and one laptop changes address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.cp import client_identity
from ipsecd.ike.events import Cause
from ipsecd.ike.payloads import AuthPayload, Payload
from ipsecd.ike.tasks import Refuse, Status, TaskKind
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message


def duplicates(sa: IkeSa) -> list[int]:
    """Ids of the other established IKE SAs with ``sa``'s identities (the SA table's index)."""
    who = client_identity(sa)
    if who is None:
        return []
    return sorted(i for i in sa.ctx.session_ids(sa.local_identity, who) if i != sa.ike_sa_id)


def replaced(sa: IkeSa) -> list[int]:
    """``unique: replace``: the IKE SAs the newly established ``sa`` makes redundant. Not for an
    SA born from a rekey (the same session), nor the SA a reauthentication replaces anyway."""
    if sa.settings.unique != "replace" or sa.rekeyed_from is not None:
        return []
    return [i for i in duplicates(sa) if i != sa.reauth_of]


def replace_reason(newer: int) -> str:
    return f"replaced by IKE SA {newer} (unique: replace)"


def keep_reason(sa: IkeSa, older: int) -> str:
    """The line that says why ``sa`` is refused (here, or by another IKE shard: ike/xshard.py)."""
    return (f"cancelling the IKE SA: '{safe(client_identity(sa))}' already has IKE SA "
            f"{older} and connection {sa.settings.name} has unique: keep")


class UniqueCheck:
    """Responder side of IKE_AUTH: ``unique: keep`` refuses a second IKE SA of the same identities.

    It runs after IkeAuth, in the round whose request carries AUTH (the peer's identity, and
    with EAP its EAP identity, are then known and verified), as strongSwan cancels the
    setup ("due to uniqueness policy") before it sends its own AUTH.
    """

    exchange = ExchangeType.IKE_AUTH
    kind = TaskKind.UNIQUE

    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        if msg.get(AuthPayload) is None:
            return Status.NEED_MORE  # an EAP round: identities not final yet
        if sa.settings.unique != "keep":
            return Status.DONE
        older = duplicates(sa)
        if older:
            reason = keep_reason(sa, older[0])
            sa.log.info("%s", reason)
            raise Refuse(NotifyType.AUTHENTICATION_FAILED, reason, Cause.AUTH_FAILED, fatal=True)
        return Status.DONE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        return []
