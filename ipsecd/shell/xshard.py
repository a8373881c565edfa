"""INITIAL_CONTACT and ``unique`` across IKE shards: the shell's half (the rules: ike/xshard.py).

A shard that establishes an IKE SA with a claim on its identity pair sends the claim to the
other shards over the links that exist already (shell/shards.py): shard 0 asks every other
shard (``claim``); shard k >= 1 asks the primary (``relay_claim``), which applies it to its
own SAs and asks the shards other than k. Each answers what it did (ike/xshard.Reply); an
answer ``KEEP_OLDER`` (``unique: keep``, an older SA lives there) makes the claimant delete
its new SA. No claim travels with one shard.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ipsecd.dataplane.channel import DataPlaneError
from ipsecd.ike.events import Cause, Event, IkeSaEstablished
from ipsecd.ike.state import IkeState
from ipsecd.ike.tasks.unique import keep_reason
from ipsecd.ike.xshard import Claim, Outcome, apply, claim_of, decode_claim, decode_reply, encode_claim, encode_reply

if TYPE_CHECKING:
    from ipsecd.shell.ike_shell import IkeShell

log = logging.getLogger("ipsecd.ike")

# (the claim as JSON, the shard it came from) -> every other shard's reply
Peers = Callable[[dict[str, Any], int], Awaitable[list[Any]]]


class ClaimRelay:
    def __init__(self, shell: IkeShell, shard: int) -> None:
        self.shell = shell
        self.shard = shard
        self.peers: Peers | None = None  # set once the links are up (daemon.py)

    def on_event(self, ev: Event) -> None:
        if not isinstance(ev, IkeSaEstablished) or self.peers is None:
            return
        sa = self.shell.manager.find(ev.ike_sa_id)
        claim = claim_of(sa, ev.initial_contact, self.shard) if sa is not None else None
        if claim is not None:
            self.shell.tasks.spawn(self._claim(claim, self.peers), "a claim to the other IKE shards")

    async def _claim(self, claim: Claim, peers: Peers) -> None:
        try:
            replies = [decode_reply(r) for r in await peers(encode_claim(claim), self.shard)]
        except (DataPlaneError, ValueError, TimeoutError) as e:
            log.warning("IKE SA %d: the other shards did not answer its %s claim: %s",
                        claim.ike_sa_id, claim.rule.value, e)
            return
        older = [r.ike_sa_ids[0] for r in replies if r.outcome is Outcome.KEEP_OLDER and r.ike_sa_ids]
        if older:
            self._refuse(claim, older[0])

    def _refuse(self, claim: Claim, older: int) -> None:
        """``unique: keep`` and an older SA on another shard: the newer goes, with a Delete
        (it is established already: ike/xshard.py says why)."""
        sa = self.shell.manager.find(claim.ike_sa_id)
        if sa is None or sa.state != IkeState.ESTABLISHED:
            return
        reason = keep_reason(sa, older)
        sa.log.info("%s", reason)
        self.shell.act(lambda m, now: m.delete_ike(claim.ike_sa_id, now, Cause.DUPLICATE, reason))

    # ------------------------------------------------------------------ link handlers
    async def on_claim(self, claim: Any) -> dict[str, Any]:
        """``claim``: another shard's claim, applied to our SAs."""
        c = decode_claim(claim)
        return encode_reply(self.shell.act(lambda m, now: apply(m, c, now, self.shard)))

    async def on_relay(self, claim: Any) -> list[Any]:
        """``relay_claim`` (the primary): a shard's claim, for us and every other shard."""
        c = decode_claim(claim)
        own = await self.on_claim(claim)
        return [own, *(await self.peers(claim, c.shard) if self.peers is not None else [])]
