"""ipsecd: wires the config, the IKE manager, the IKE sockets, the data plane and the control socket.

This is the only place that owns the event loop and the wall clock; the IKE
engine sees datagrams and monotonic time, the data plane sees SA installs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import suppress
from pathlib import Path
from typing import Any

from ipsecd import __version__, keyexport
from ipsecd.config import Config, load_config
from ipsecd.control.protocol import ControlError
from ipsecd.control.server import ControlServer
from ipsecd.dataplane import messages as dp_messages
from ipsecd.dataplane.ike_socket import IkeTransport, source_address_for
from ipsecd.errors import ConfigError
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from ipsecd.ike.ike_sa import IkeSa
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.proposal import is_legacy, proposal_to_str, proposal_to_swanctl
from ipsecd.ike.ts import TriggerPacket, ts_to_str
from ipsecd.logsetup import LogHub, setup_logging
from ipsecd.metrics import MetricsServer, MetricsSnapshot, classify_failure
from ipsecd.sdnotify import sd_notify, watchdog_interval
from ipsecd.settings_from_config import child_sa_params, ike_settings, trap_policies_for, validate_proposal

log = logging.getLogger("ipsecd.cfg")
DEFAULT_SOCKET = "/run/ipsecd/ipsecd.sock"
RESTART_DELAY = 5.0  # seconds before a start_action=start connection is retried after it failed
RETIRE_GRACE = 2.0  # seconds an old inbound SA still decrypts after its rekey completed


class Daemon:
    """One running ipsecd: the asyncio shell around the sans-I/O engines."""

    def __init__(self, config: Config, control_socket: str, hub: LogHub, *, dataplane: bool = True) -> None:
        self.config = config
        self.control_socket = control_socket
        self.hub = hub
        self.want_dataplane = dataplane
        self.manager = IkeManager([ike_settings(c, config) for c in config.connections.values()],
                                  now=time.monotonic(), source_for=source_address_for)
        self.transport = IkeTransport(self._on_datagram)
        self.control = ControlServer(control_socket, self)
        self.dataplane: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self._children: dict[tuple[int, bytes], ChildSaEstablished] = {}
        self._peers: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {}
        self.metrics: MetricsServer | None = None
        self.failure_counts: dict[str, int] = {}
        self.rekey_counts: dict[str, int] = {}
        self._up_ids: set[int] = set()
        self._pending_out: dict[int, tuple[bytes, Any, Any, int | None]] = {}  # reqid -> (spi_in, out, life, mss)
        self._exit_code = 0
        self._dataplane_ready = asyncio.Event()  # IKE may finish a Child SA while the worker still starts
        self._started = time.time()
        self.event_counts: dict[str, int] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._traps: dict[int, tuple[str, str]] = {}  # armed trap reqid -> (connection, child)

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.transport.start()
        if self.want_dataplane:
            await self._start_dataplane()
        await self.control.start()
        listen = self.config.settings.metrics.address()
        if listen is not None:
            self.metrics = MetricsServer(listen, self._metrics_snapshot)
            await self.metrics.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload_quietly()))
        sd_notify("READY=1\nSTATUS=listening for IKE")
        wd = watchdog_interval()
        if wd:
            self._spawn(self._watchdog(wd))
        log.info("ipsecd %s started: %d connection(s) from %s", __version__, len(self.config.connections),
                 self.config.source)
        self._warn_config()
        self._warn_legacy()
        self._start_connections()
        await self._stopping.wait()
        await self._shutdown()
        return self._exit_code

    async def _start_dataplane(self) -> None:
        try:
            from ipsecd.dataplane.client import DataPlane
        except ImportError as e:  # pragma: no cover - dataplane module optional while it is built
            log.warning("data plane unavailable (%s): negotiating SAs without installing them", e)
            return
        self.dataplane = DataPlane(self.config.settings.dataplane)
        self.dataplane.on_event(self._on_dataplane_event)
        await self.dataplane.start()
        self._dataplane_ready.set()
        if any(c.dpd_delay > 0 for c in self.config.connections.values()):
            self._spawn(self._watch_inbound_traffic())

    async def _shutdown(self) -> None:
        sd_notify("STOPPING=1")
        for reqid in list(self._traps):  # no new acquires while the SAs go
            await self._disarm(reqid)
        log.info("shutting down: deleting IKE SAs")
        for sa in self.manager.list_sas():
            self.manager.terminate(sa.settings.name, time.monotonic())
        self._flush()
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._until_no_sas(), 2.0)
        if self.metrics is not None:
            await self.metrics.close()
        await self.control.close()
        self.transport.close()
        if self.dataplane is not None:
            await self.dataplane.stop()

    async def _until_no_sas(self) -> None:
        while self.manager.list_sas():
            await asyncio.sleep(0.05)

    async def _watchdog(self, interval: float) -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _warn_config(self) -> None:
        """The loader's warnings (keys accepted but not implemented, weak keys), as --check-config prints them."""
        for warning in self.config.warnings:
            log.warning("%s", warning)

    def _warn_legacy(self) -> None:
        """Legacy algorithms run only because the config names them: say so once at start."""
        for conn in self.manager.connections:
            legacy = [proposal_to_str(p) for p in conn.ike_proposals if is_legacy(p)]
            legacy += [proposal_to_str(p) for ch in conn.children for p in ch.esp_proposals if is_legacy(p)]
            if legacy:
                log.warning("connection %s allows legacy algorithms (RFC 8247/8221 deprecate them): %s",
                            conn.name, ", ".join(legacy))

    def _start_connections(self, names: list[str] | None = None) -> None:
        for name, conn in self.config.connections.items():
            if names is not None and name not in names:
                continue
            self._arm_traps(name)
            if any(ch.start_action == "start" for ch in conn.children.values()):
                self._initiate(name)

    def _arm_traps(self, name: str, *, every_child: bool = False) -> None:
        """start_action=trap: policies now, the SA on the first packet (RFC 4301 5.1).

        The reqid is fixed first (synchronously), so any Child SA of the child negotiated
        from now on -- by us or by the peer -- carries it and meets the trap's queue.
        """
        conn = self.config.connections[name]
        for cname, ch in conn.children.items():
            if ch.start_action != "trap" and not every_child:
                continue
            if self.manager.reqid_for(name, cname) in self._traps:
                continue  # already armed
            if not conn.remote_addrs:
                log.warning("%s/%s: start_action trap needs a remote address: ignored", name, cname)
                continue
            reqid = self.manager.assign_reqid(name, cname)
            if self.dataplane is None:
                self._initiate(name)  # no data plane, no trap: behave like start
                continue
            local = str(conn.local_addrs[0]) if conn.local_addrs else source_address_for(str(conn.remote_addrs[0]))
            self._traps[reqid] = (name, cname)
            self._spawn(self._arm(reqid, trap_policies_for(conn, cname, reqid, local), ch.interface is None))

    async def _arm(self, reqid: int, policies: list[Any], route: bool) -> None:
        try:
            await self.dataplane.install_trap(reqid, policies, route_via_tun=route)
        except Exception as e:
            log.error("cannot install trap %s: %s", "/".join(self._traps.get(reqid, ("?", "?"))), e)

    async def _disarm(self, reqid: int) -> None:
        self._traps.pop(reqid, None)
        if self.dataplane is not None:
            with suppress(Exception):
                await self.dataplane.remove_trap(reqid)

    def _initiate(self, name: str) -> IkeSa | None:
        try:
            sa = self.manager.initiate(name, time.monotonic())
        except (KeyError, ValueError) as e:
            log.error("cannot initiate %s: %s", name, e)
            return None
        self._flush()
        return sa

    # ------------------------------------------------------------ I/O glue
    def _on_datagram(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self.manager.receive_datagram(data, local, remote, time.monotonic())
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self.manager.handle_timer(time.monotonic())
        self._flush()

    def _flush(self) -> None:
        datagrams = self.manager.datagrams_to_send()
        installs: list[Coroutine[Any, Any, None]] = []
        while (ev := self.manager.next_event()) is not None:
            install = self._on_event(ev)
            if install is not None:
                installs.append(install)
        self._sync_peers()
        if installs:
            # the inbound SA must be in place before our response lets the peer send ESP
            self._spawn(self._install_then_send(installs, datagrams))
        else:
            self._send(datagrams)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self.manager.get_timer()
        if t is not None:
            self._timer = asyncio.get_running_loop().call_at(t, self._on_timer)

    def _send(self, datagrams: list[tuple[bytes, tuple[str, int], tuple[str, int]]]) -> None:
        for data, local, remote in datagrams:
            self.transport.send(data, local, remote)

    async def _install_then_send(self, installs: list[Coroutine[Any, Any, None]],
                                 datagrams: list[tuple[bytes, tuple[str, int], tuple[str, int]]]) -> None:
        try:
            for install in installs:
                await install
        finally:
            self._send(datagrams)

    def _on_event(self, ev: object) -> Coroutine[Any, Any, None] | None:
        if isinstance(ev, ChildSaEstablished):
            self._children[(ev.ike_sa_id, ev.spi_in)] = ev
            self._count("child_sas_established")
            if ev.rekeyed_spi_in is not None:
                self.rekey_counts["child"] = self.rekey_counts.get("child", 0) + 1
            if self.dataplane is not None:
                return self._install(ev)
        elif isinstance(ev, ChildSaDeleted):
            gone = self._children.pop((ev.ike_sa_id, ev.spi_in), None)
            self.manager.release_spi(ev.spi_in)
            if self.dataplane is not None:
                if ev.reqid_in_use:
                    # switch to the successor before our answer leaves, so nothing is sent on a dead SA
                    return self._retire(ev)
                self._spawn(self._uninstall(ev, gone))
        elif isinstance(ev, ChildSaFailed):
            self._count("child_sa_failures")
            self._fail(ev.reason)
        elif isinstance(ev, IkeSaEstablished):
            self._count("ike_sas_established")
            self._up_ids.add(ev.ike_sa_id)
        elif isinstance(ev, IkeSaRekeyed):
            # the Child SAs move to the new IKE SA unchanged: only our bookkeeping follows them
            self.rekey_counts["ike"] = self.rekey_counts.get("ike", 0) + 1
            for key in [k for k in self._children if k[0] == ev.ike_sa_id]:
                self._children[(ev.new_ike_sa_id, key[1])] = self._children.pop(key)
            self._up_ids.add(ev.new_ike_sa_id)
        elif isinstance(ev, IkeSaClosed):
            self._count("ike_sas_closed")
            if ev.replaced_by is None and ev.ike_sa_id not in self._up_ids and "by request" not in ev.reason:
                self._fail(ev.reason)
            self._up_ids.discard(ev.ike_sa_id)
            self._peers.pop(ev.ike_sa_id, None)
            if ev.replaced_by is None:
                self._maybe_restart(ev)
        return None

    def _sync_peers(self) -> None:
        """RFC 7296 2.23: when IKE sees the peer behind a new address or port, ESP follows it."""
        if self.dataplane is None:
            return
        for sa in self.manager.list_sas():
            seen = self._peers.get(sa.ike_sa_id)
            now = (sa.local, sa.remote)
            if seen is None or seen == now:
                self._peers[sa.ike_sa_id] = now
                continue
            self._peers[sa.ike_sa_id] = now
            log.info("peer of %s moved to %s[%d]", sa.settings.name, sa.remote[0], sa.remote[1])
            for child in sa.children:
                self._spawn(self.dataplane.update_sa_peer(child.event.reqid, sa.remote[0], sa.remote[1], sa.local[0]))

    def _maybe_restart(self, ev: IkeSaClosed) -> None:
        """What happens after an IKE SA is gone, as swanctl: start_action=start keeps retrying,
        close_action applies when the peer deleted it, dpd_action when the peer died."""
        conn = self.config.connections.get(ev.name)
        if conn is None or self._stopping.is_set() or "by request" in ev.reason:
            return
        if ev.peer_dead:
            log.warning("%s: peer is dead, dpd_action %s", ev.name, ev.dpd_action or "clear")
            action = ev.dpd_action or "clear"
        elif "deleted by peer" in ev.reason:
            actions = {str(ch.close_action) for ch in conn.children.values()} - {"none"}
            action = "start" if "start" in actions else "trap" if "trap" in actions else "none"
        else:
            action = "start" if any(ch.start_action == "start" for ch in conn.children.values()) else "none"
        if action in ("none", "clear") or not conn.remote_addrs:
            return
        if any(sa.settings.name == ev.name for sa in self.manager.list_sas()):
            return
        if action == "trap" and self.dataplane is not None:
            self._arm_traps(ev.name, every_child=True)  # the next packet brings it back
            return
        asyncio.get_running_loop().call_later(RESTART_DELAY, self._restart, ev.name)

    def _restart(self, name: str) -> None:
        if self._stopping.is_set() or any(sa.settings.name == name for sa in self.manager.list_sas()):
            return
        if name in self.config.connections:
            log.info("restarting connection %s", name)
            self._initiate(name)

    async def _install(self, ev: ChildSaEstablished) -> None:
        inbound, outbound, policies = child_sa_params(ev)
        conn = self.config.connections.get(ev.name)
        child = conn.children.get(ev.child) if conn is not None else None
        clamp = None if child is None or child.mss_clamp is None else (
            0 if child.mss_clamp == "auto" else int(child.mss_clamp))
        lifetime = _volume_lifetime(child)
        try:
            await asyncio.wait_for(self._dataplane_ready.wait(), 30)
            if ev.rekeyed_spi_in is not None and not ev.initiator:
                # RFC 7296 2.8 make-before-break, rekey responder: receive on the new SA at once, but keep
                # sending on the old one until the initiator (who installs both on our answer) deletes it
                await self.dataplane.install_inbound(ev.reqid, inbound, lifetime)
                self._pending_out[ev.reqid] = (ev.spi_in, outbound, lifetime, clamp)
            else:
                # route-based children (interface set): the user routes into the TUN, we add no routes
                await self.dataplane.install_child_sa(inbound, outbound, ev.reqid, policies, mss_clamp=clamp,
                                                      route_via_tun=child is None or child.interface is None,
                                                      lifetime=lifetime)
                self._pending_out.pop(ev.reqid, None)
        except Exception as e:
            log.error("cannot install Child SA %s in the data plane: %s", ev.child, e)
            return
        sa = self.manager.find(ev.ike_sa_id)
        keep_alive = self.config.settings.keep_alive
        if sa is not None and sa.local_behind_nat and ev.encap and keep_alive > 0:
            # RFC 3948 2.3: keep our NAT mapping open from the port ESP uses
            try:
                await self.dataplane.set_keepalive(ev.remote[0], ev.remote[1], keep_alive)
            except Exception as e:
                log.warning("cannot start NAT keepalives to %s: %s", ev.remote[0], e)

    async def _retire(self, ev: ChildSaDeleted) -> None:
        """A rekeyed predecessor (or a losing collision twin) goes; its successor keeps the reqid."""
        try:
            pending = self._pending_out.get(ev.reqid)
            if pending is not None and pending[0] == ev.spi_in:
                self._pending_out.pop(ev.reqid, None)  # the twin that lost: never send on it
            pending = self._pending_out.pop(ev.reqid, None)
            if pending is not None:
                _spi, outbound, lifetime, clamp = pending
                await self.dataplane.install_outbound(ev.reqid, outbound, lifetime, clamp)
        except Exception as e:
            log.warning("cannot switch Child SA %s to its new outbound SA: %s", ev.child, e)
        # packets the peer sent on the old SA may still be in flight: accept them a moment longer
        self._spawn(self._remove_inbound_later(ev, RETIRE_GRACE))

    async def _remove_inbound_later(self, ev: ChildSaDeleted, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.dataplane.delete_inbound((int.from_bytes(ev.spi_in, "big"),))
        except Exception as e:
            log.warning("cannot remove old inbound SA %s: %s", ev.spi_in.hex(), e)

    async def _uninstall(self, ev: ChildSaDeleted, gone: ChildSaEstablished | None) -> None:
        try:
            self._pending_out.pop(ev.reqid, None)
            await self.dataplane.delete_child_sa(ev.reqid)
            if gone is not None and gone.encap and not any(c.remote == gone.remote for c in self._children.values()):
                await self.dataplane.set_keepalive(gone.remote[0], gone.remote[1], 0)
        except Exception as e:
            log.warning("cannot remove Child SA %s from the data plane: %s", ev.child, e)

    def _on_dataplane_event(self, ev: object) -> None:
        """Volume lifetimes reached in the worker become rekeys or deletes in IKE (RFC 4301 4.4.2.1)."""
        now = time.monotonic()
        if isinstance(ev, dp_messages.Acquire):
            if self._stopping.is_set() or ev.reqid not in self._traps:
                return
            self.manager.acquire(ev.reqid, now, TriggerPacket(ev.src, ev.dst, ev.proto, ev.sport, ev.dport))
            self._flush()
        elif isinstance(ev, dp_messages.LifetimeReached):
            spi = ev.spi.to_bytes(4, "big")
            spi_in = spi if ev.direction == "in" else next(
                (c.spi_in for c in self._children.values() if c.spi_out == spi), None)
            if spi_in is None:
                return
            if ev.kind == "soft":
                log.info("Child SA %s reached its %s soft limit: rekeying", spi_in.hex(), ev.what)
                self.manager.rekey_child(spi_in, now)
            else:
                log.info("Child SA %s reached its %s hard limit: deleting", spi_in.hex(), ev.what)
                self.manager.expire_child(spi_in, True, now)
            self._flush()
        elif isinstance(ev, dp_messages.WorkerExited) and not self._stopping.is_set():
            log.critical("the data plane worker exited (%s): stopping so the service manager restarts us",
                         ev.message or ev.returncode)
            self._exit_code = 1
            self._stopping.set()

    async def _watch_inbound_traffic(self) -> None:
        """DPD only probes a peer that is silent: ESP arriving counts as a sign of life (RFC 7296 2.4)."""
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(5)
            if self.dataplane is None:
                continue
            with suppress(Exception):
                counters = await self.dataplane.counters()
                now = time.monotonic()
                for key, c in counters.get("sas", {}).items():
                    if c.get("direction") != "in":
                        continue
                    packets = int(c.get("packets", 0))
                    if packets != seen.get(key):
                        seen[key] = packets
                        self.manager.note_inbound_traffic(bytes.fromhex(key[:8]), now)
                self._flush()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_quietly(self) -> None:
        with suppress(ControlError):
            await self.reload()

    def _fail(self, reason: str) -> None:
        kind = classify_failure(reason)
        self.failure_counts[kind] = self.failure_counts.get(kind, 0) + 1

    async def _metrics_snapshot(self) -> MetricsSnapshot:
        dp: dict[str, Any] = {}
        if self.dataplane is not None:
            with suppress(Exception):
                dp = await self.dataplane.counters()
        return MetricsSnapshot(sas=await self.list_sas(), ike_counters=dict(self.manager.counters),
                               dataplane_drops=dict(dp.get("global", {}).get("drops", {})),
                               events=dict(self.event_counts), handshake_failures=dict(self.failure_counts),
                               rekeys=dict(self.rekey_counts))

    def _count(self, what: str) -> None:
        self.event_counts[what] = self.event_counts.get(what, 0) + 1

    # ---------------------------------------------------- control handlers
    async def list_sas(self) -> dict[str, Any]:
        counters: dict[str, Any] = {}
        if self.dataplane is not None:
            with suppress(Exception):
                counters = await self.dataplane.counters()
        out = []
        for sa in self.manager.list_sas():
            st = sa.status()
            kids = []
            for c in sa.children:
                e = c.event
                cin = _sa_counters(counters, e.spi_in)
                cout = _sa_counters(counters, e.spi_out)
                kids.append({
                    "name": e.child, "state": c.state, "reqid": e.reqid,
                    "spi_in": e.spi_in.hex(), "spi_out": e.spi_out.hex(),
                    "mode": e.mode, "encap": e.encap, "proposal": proposal_to_swanctl(e.proposal),
                    "local_ts": [ts_to_str(t) for t in e.local_ts], "remote_ts": [ts_to_str(t) for t in e.remote_ts],
                    "bytes_in": cin.get("bytes", 0), "bytes_out": cout.get("bytes", 0),
                    "packets_in": cin.get("packets", 0), "packets_out": cout.get("packets", 0),
                    "drops_in": cin.get("drops", {}),
                })
            st["child_sas"] = kids
            out.append(st)
        return {"ike_sas": out}

    async def list_conns(self) -> dict[str, Any]:
        conns = []
        for name, c in self.config.connections.items():
            conns.append({
                "name": name, "local_addrs": [str(a) for a in c.local_addrs],
                "remote_addrs": [str(a) for a in c.remote_addrs] or ["%any"],
                "proposals": list(c.proposals), "local_id": str(c.local.id), "remote_id": str(c.remote.id),
                "children": {
                    cn: {"local_ts": [str(t) for t in ch.local_ts], "remote_ts": [str(t) for t in ch.remote_ts],
                         "esp_proposals": list(ch.esp_proposals), "mode": ch.mode, "start_action": ch.start_action}
                    for cn, ch in c.children.items()
                },
            })
        return {"connections": conns}

    async def status(self) -> dict[str, Any]:
        sas = self.manager.list_sas()
        return {
            "version": __version__, "pid": os.getpid(), "uptime": round(time.time() - self._started, 1),
            "config": str(self.config.source), "connections": len(self.config.connections),
            "ike_sas": len(sas), "child_sas": sum(len(sa.children) for sa in sas),
            "dataplane": self.dataplane is not None,
        }

    async def stats(self) -> dict[str, Any]:
        dp: dict[str, Any] = {}
        if self.dataplane is not None:
            with suppress(Exception):
                dp = await self.dataplane.counters()
        return {"ike": dict(self.manager.counters), "events": dict(self.event_counts),
                "net": dict(self.transport.counters), "dataplane": dp.get("global", {})}

    async def up(self, name: str) -> dict[str, Any]:
        if name not in self.config.connections:
            raise ControlError(f"no connection named '{name}'")
        sa = self._initiate(name)
        if sa is None:
            raise ControlError(f"cannot initiate '{name}'")
        for _ in range(200):  # wait up to 10 s for the outcome, like swanctl --initiate
            if sa.state.value in ("ESTABLISHED", "CLOSED"):
                break
            await asyncio.sleep(0.05)
        if sa.state.value != "ESTABLISHED":
            raise ControlError(f"'{name}' failed: {sa.fail_reason or sa.state.value}")
        return {"established": name, "ike_sa": sa.ike_sa_id}

    async def down(self, name: str) -> dict[str, Any]:
        if name not in self.config.connections:
            raise ControlError(f"no connection named '{name}'")
        n = self.manager.terminate(name, time.monotonic())
        self._flush()
        return {"deleted": n}

    async def reload(self) -> dict[str, Any]:
        try:
            new = load_config(self.config.source, proposal_validator=validate_proposal)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration:\n%s", e)
            raise ControlError(f"reload failed: {e}") from e
        old = self.config
        self.config = new
        self._warn_config()
        self.manager.update_connections([ike_settings(c, new) for c in new.connections.values()])
        removed = [n for n in old.connections if n not in new.connections]
        added = [n for n in new.connections if n not in old.connections]
        changed = [n for n in new.connections if n in old.connections and new.connections[n] != old.connections[n]]
        for name in removed + changed:
            for reqid in self.manager.release_reqid(name):
                await self._disarm(reqid)
            self.manager.terminate(name, time.monotonic())
        self._flush()
        for name in added + changed:
            self._arm_traps(name)
            conn = new.connections[name]
            if any(ch.start_action == "start" for ch in conn.children.values()):
                asyncio.get_running_loop().call_later(0.5 if name in changed else 0, self._initiate, name)
        log.info("configuration reloaded: %d added, %d removed, %d changed", len(added), len(removed), len(changed))
        return {"added": added, "removed": removed, "changed": changed}

    async def export_keys(self, fmt: str) -> dict[str, Any]:
        if not self.config.settings.debug.allow_key_export:
            raise ControlError("key export is disabled: set settings.debug.allow_key_export: true to enable it")
        if fmt != "wireshark":
            raise ControlError(f"unknown key export format '{fmt}' (supported: wireshark)")
        sas = self.manager.list_sas()
        ike = [keyexport.ike_entry(sa.spi_i, sa.spi_r, sa.proposal, sa.keys)
               for sa in sas if sa.keys is not None and sa.proposal is not None]
        esp = [e for sa in sas for c in sa.children for e in keyexport.esp_entries(c.event)]
        log.warning("SA keys exported through the control socket: %d IKE, %d ESP", len(ike), len(esp))
        return {"files": keyexport.export(ike, esp)}

    def subscribe_logs(self) -> AsyncIterator[str]:
        return self.hub.subscribe()


def _volume_lifetime(child: Any) -> dp_messages.Lifetime:
    """Byte/packet limits for the worker, the soft ones pulled earlier by a random part of rand_*."""
    if child is None:
        return dp_messages.Lifetime()

    def soft(limit: int, rand: int) -> int:
        return max(1, limit - random.randint(0, min(rand, limit // 2))) if limit else 0

    return dp_messages.Lifetime(soft_bytes=soft(child.rekey_bytes, child.rand_bytes), hard_bytes=child.life_bytes,
                                soft_packets=soft(child.rekey_packets, child.rand_packets),
                                hard_packets=child.life_packets)


def _sa_counters(counters: dict[str, Any], spi: bytes) -> dict[str, Any]:
    sas = counters.get("sas", {}) if counters else {}
    v = sas.get(spi.hex()) or sas.get(int.from_bytes(spi, "big")) or {}
    return v if isinstance(v, dict) else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ipsecd", description="IKEv2/IPsec VPN daemon")
    p.add_argument("--config", "-c", default="/etc/ipsecd/ipsecd.yaml", help="YAML configuration file")
    p.add_argument("--control-socket", default=None, help=f"control socket path (default {DEFAULT_SOCKET})")
    p.add_argument("--check-config", nargs="?", const=True, default=None, metavar="FILE",
                   help="validate the configuration (FILE, or --config) and exit")
    p.add_argument("--log-level", default=None, help="debug, info, warning, error (overrides the config)")
    p.add_argument("--no-dataplane", action="store_true", help="negotiate SAs without installing them")
    p.add_argument("--user", default=None, help="drop root to this user, keeping only the network capabilities")
    p.add_argument("--group", default=None, help="group for --user (default: the user's primary group)")
    p.add_argument("--version", action="version", version=f"ipsecd {__version__}")
    args = p.parse_args(argv)

    if args.check_config is not None:
        from ipsecd.config import check_config_main

        path = args.config if args.check_config is True else args.check_config
        return check_config_main(path, proposal_validator=validate_proposal)
    try:
        config = load_config(args.config, proposal_validator=validate_proposal)
    except ConfigError as e:
        print(f"ipsecd: invalid configuration:\n{e}", file=sys.stderr)
        return 2
    # --log-level overrides the file, per-subsystem levels included
    hub = setup_logging(args.log_level or config.settings.log_level,
                        None if args.log_level else config.settings.log)
    sock = str(args.control_socket or config.settings.control_socket or DEFAULT_SOCKET)
    if args.user:
        from ipsecd.privdrop import PrivilegeDropError, drop_privileges, prepare_runtime_dir

        if not args.no_dataplane:
            import ipsecd.dataplane.client  # noqa: F401  (import while the code is still readable as root)

        try:
            prepare_runtime_dir(Path(sock).parent, args.user, args.group)
            drop_privileges(args.user, args.group)
        except (PrivilegeDropError, OSError) as e:
            print(f"ipsecd: cannot drop privileges to {args.user}: {e}", file=sys.stderr)
            return 1
        log.info("running as %s with CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_NET_RAW", args.user)
    loop_factory = None
    try:
        import uvloop

        # only our own loop: pyroute2 runs asyncio loops of its own for netlink, which uvloop cannot host
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional
        pass

    async def run() -> int:
        daemon = Daemon(config, sock, hub, dataplane=not args.no_dataplane)
        return await daemon.run()

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run())
    except OSError as e:
        print(f"ipsecd: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())



