"""What connections do on their own, as swanctl defines it: start_action, close_action,
dpd_action, traps and restarts. Decided from the causes the engine reports, never from
reason text.

- start_action=start: initiated at start and reload; re-initiated RESTART_DELAY after
  an established IKE SA was lost (not after `down`).
- An initiation that fails before its IKE SA is up is not restarted here: the engine
  tries again while the connection's keyingtries allows (ipsecd/ike/keying.py) and then
  reports InitiationFailed.
- start_action=trap: policies in the data plane now, the SA on the first packet
  (RFC 4301 5.1); the worker's Acquire starts the negotiation.
- close_action (the peer deleted the IKE SA): start re-initiates, trap re-arms.
- dpd_action (the peer died, Cause.PEER_DEAD): clear, trap or restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ipsecd.dataplane import messages as dp
from ipsecd.dataplane.ike_socket import source_address_for
from ipsecd.ike.events import Cause, Event, IkeSaClosed
from ipsecd.ike.ike_sa import IkeSa
from ipsecd.ike.ts import TriggerPacket
from ipsecd.settings_from_config import trap_policies_for

if TYPE_CHECKING:
    from ipsecd.config import Config
    from ipsecd.shell.ike_shell import IkeShell

log = logging.getLogger("ipsecd.cfg")
RESTART_DELAY = 5.0  # seconds before a connection is restarted after its established IKE SA was lost

# Causes after which nothing is restarted: asked for, or the SA lives on in another one.
_QUIET = frozenset({Cause.DELETED_LOCALLY, Cause.REKEYED, Cause.REAUTHENTICATED, Cause.REPLACED, Cause.DUPLICATE,
                    Cause.REDIRECTED})


class ConnectionPolicy:
    def __init__(self, shell: IkeShell, dataplane: Any, config: Callable[[], Config]) -> None:
        self.shell = shell
        self.dataplane = dataplane
        self.config = config
        self.stopping = False
        self.traps: dict[int, tuple[str, str]] = {}  # armed trap reqid -> (connection, child)

    # ------------------------------------------------------------------ starting
    def start(self, names: list[str] | None = None, *, delay: float = 0.0) -> None:
        for name, conn in self.config().connections.items():
            if names is not None and name not in names:
                continue
            self.arm_traps(name)
            if any(ch.start_action == "start" for ch in conn.children.values()):
                if delay:
                    asyncio.get_running_loop().call_later(delay, self.initiate, name)
                else:
                    self.initiate(name)

    def initiate(self, name: str) -> IkeSa | None:
        if self.stopping:
            return None
        try:
            return self.shell.act(lambda m, now: m.initiate(name, now))
        except (KeyError, ValueError) as e:
            log.error("cannot initiate %s: %s", name, e)
            return None

    # ------------------------------------------------------------------ traps
    def arm_traps(self, name: str, *, every_child: bool = False) -> None:
        """start_action=trap: policies now, the SA on the first packet (RFC 4301 5.1).

        The reqid is fixed first (synchronously), so any Child SA of the child negotiated
        from now on -- by us or by the peer -- carries it and meets the trap's queue.
        """
        conn = self.config().connections[name]
        manager = self.shell.manager
        for cname, ch in conn.children.items():
            if ch.start_action != "trap" and not every_child:
                continue
            if manager.reqid_for(name, cname) in self.traps:
                continue  # already armed
            if not conn.remote_addrs:
                log.warning("%s/%s: start_action trap needs a remote address: ignored", name, cname)
                continue
            reqid = manager.assign_reqid(name, cname)
            if self.dataplane is None:
                self.initiate(name)  # no data plane, no trap: behave like start
                continue
            local = str(conn.local_addrs[0]) if conn.local_addrs else source_address_for(str(conn.remote_addrs[0]))
            self.traps[reqid] = (name, cname)
            self.shell.tasks.spawn(
                self.dataplane.install_trap(reqid, trap_policies_for(conn, cname, reqid, local),
                                            route_via_tun=ch.interface is None),
                f"trap {name}/{cname}")

    async def disarm(self, reqid: int) -> None:
        self.traps.pop(reqid, None)
        if self.dataplane is not None:
            try:
                await self.dataplane.remove_trap(reqid)
            except Exception as e:
                log.warning("cannot remove trap %d: %s", reqid, e)

    async def release(self, name: str) -> None:
        """A connection is removed or changed: forget its fixed reqids and disarm its traps."""
        for reqid in self.shell.manager.release_reqid(name):
            await self.disarm(reqid)

    def on_acquire(self, ev: dp.Acquire) -> None:
        if self.stopping or ev.reqid not in self.traps:
            return
        trigger = TriggerPacket(ev.src, ev.dst, ev.proto, ev.sport, ev.dport)
        self.shell.act(lambda m, now: m.acquire(ev.reqid, now, trigger))

    # ------------------------------------------------------------------ after an IKE SA is gone
    def on_event(self, ev: Event) -> None:
        if isinstance(ev, IkeSaClosed) and ev.replaced_by is None:
            self._after_close(ev)

    def _after_close(self, ev: IkeSaClosed) -> None:
        conn = self.config().connections.get(ev.name)
        if conn is None or self.stopping or ev.cause in _QUIET or not ev.established:
            return  # a failed setup is the engine's to retry (keyingtries, ipsecd/ike/keying.py)
        if ev.cause is Cause.PEER_DEAD:
            settings = self.shell.manager.connection(ev.name)
            action = settings.dpd_action if settings is not None else "clear"
            log.warning("%s: peer is dead, dpd_action %s", ev.name, action)
        elif ev.cause is Cause.DELETED_BY_PEER:
            actions = {str(ch.close_action) for ch in conn.children.values()} - {"none"}
            action = "start" if "start" in actions else "trap" if "trap" in actions else "none"
        else:
            action = "start" if any(ch.start_action == "start" for ch in conn.children.values()) else "none"
        if action in ("none", "clear") or not conn.remote_addrs:
            return
        if self.shell.manager.table.of_connection(ev.name):
            return  # another IKE SA of the connection is up or coming
        if action == "trap" and self.dataplane is not None:
            self.arm_traps(ev.name, every_child=True)  # the next packet brings it back
            return
        asyncio.get_running_loop().call_later(RESTART_DELAY, self._restart, ev.name)

    def _restart(self, name: str) -> None:
        if self.stopping or self.shell.manager.table.of_connection(name):
            return
        if name in self.config().connections:
            log.info("restarting connection %s", name)
            self.initiate(name)

    async def stop(self) -> None:
        """No new acquires or restarts while the SAs go."""
        self.stopping = True
        self.shell.manager.keying.cancel()  # no attempt starts while the SAs go
        for reqid in list(self.traps):
            await self.disarm(reqid)
