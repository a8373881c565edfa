"""ipsecd: wires the config, the IKE engine, the IKE sockets, the data plane and the control socket.

The parts of the asyncio shell live in ipsecd/shell/ (IKE feed and flush, the Child SA
installer, the connection policy, the control handlers); this module starts and stops
them, reloads the config and holds ``main``. Only the shell reads the clock; the
engines see datagrams and monotonic time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ipsecd import __version__
from ipsecd.config import Config, load_config
from ipsecd.control.protocol import ControlError
from ipsecd.control.server import ControlServer
from ipsecd.dataplane import messages as dp_messages
from ipsecd.dataplane.ike_socket import IkeTransport, source_address_for
from ipsecd.errors import ConfigError
from ipsecd.gcpolicy import tune_gc
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.proposal import is_legacy, proposal_to_str
from ipsecd.ike.shard import Shard
from ipsecd.logsetup import LogHub, setup_logging
from ipsecd.metrics import MetricsServer
from ipsecd.pools import MemoryLeaseStore, PoolManager, SqliteLeaseStore
from ipsecd.sdnotify import sd_notify, watchdog_interval
from ipsecd.settings_from_config import ike_settings, pool_specs, validate_proposal
from ipsecd.shell.control import ControlHandlers
from ipsecd.shell.credentials import CredentialReport, load_credentials
from ipsecd.shell.ike_shell import IkeShell
from ipsecd.shell.installer import ChildSaInstaller
from ipsecd.shell.mobike import AddressWatch
from ipsecd.shell.policy import ConnectionPolicy
from ipsecd.shell.radius import RadiusService
from ipsecd.shell.shards import (
    ShardHub,
    ShardLink,
    ShardSockets,
    dataplane_handlers,
    decode_event,
    parse_fds,
)
from ipsecd.shell.shutdown import delete_all, wait_budget
from ipsecd.shell.stats import ShellStats
from ipsecd.shell.vips import DnsConfigurator, VirtualIpShell
from ipsecd.shell.xshard import ClaimRelay

log = logging.getLogger("ipsecd.cfg")
DEFAULT_SOCKET = "/run/ipsecd/ipsecd.sock"
# Shutdown: the Deletes go out in a window (shell/shutdown.py); we wait for their answers at
# most this long, plus a little per SA, so a gateway with thousands of SAs still stops well
# inside systemd's stop timeout (90 s by default).
SHUTDOWN_WAIT = 2.0
SHUTDOWN_WAIT_PER_SA = 0.002
SHUTDOWN_WAIT_MAX = 20.0


class Daemon:
    """One running ipsecd: wires the engine, the sockets, the data plane and the control socket."""

    def __init__(self, config: Config, control_socket: str, hub: LogHub, *, dataplane: bool = True,
                 shard: Shard | None = None, link: Any = None, sockets: Any = None, worker: Any = None) -> None:
        """``shard``/``link``/``sockets``/``worker``: an IKE shard k >= 1 started by the primary
        (shell/shards.py); ``worker``: its own control socket to the data-plane worker."""
        self.config = config
        self.want_dataplane = dataplane
        self.dataplane: Any = None
        self.shard = shard or Shard(0, config.settings.ike_shards)
        self.link: ShardLink | None = None
        self._link_sock = link
        self._worker_sock = worker
        self.shards: ShardHub | None = None  # the primary's handle on the other shards
        self._argv: list[str] = []
        self.pools = open_pools(config, self.shard)
        manager = IkeManager([ike_settings(c, config) for c in config.connections.values()],
                             now=time.monotonic(), source_for=source_address_for, attributes=self.pools,
                             front_door=config.settings.front_door, shard=self.shard)
        self.stats = ShellStats()
        self.transport = IkeTransport(self._on_datagrams, given=sockets or {})
        self.shell = IkeShell(manager, self.transport, self.stats)
        self.installer = ChildSaInstaller(self.shell, None, lambda: self.config)
        self.policy = ConnectionPolicy(self.shell, None, lambda: self.config)
        self.shell.installer, self.shell.policy = self.installer, self.policy
        self.shell.vips = VirtualIpShell(self.shell, None, DnsConfigurator(config.settings.dataplane.tun_name)
                                         if dataplane else None)
        self.radius = RadiusService(self.shell, lambda: self.dataplane)
        self.addresses = AddressWatch(self.shell, config.settings.dataplane.tun_name)  # MOBIKE (RFC 4555)
        self.shell.radius = self.radius
        self.xshard = self.shell.xshard = ClaimRelay(self.shell, self.shard.index) if self.shard.count > 1 else None
        self.credentials, self.credential_report = self._load_credentials(config)
        self.handlers = ControlHandlers(self, hub)
        self.control = ControlServer(control_socket, self.handlers)
        self.metrics: MetricsServer | None = None
        self._stopping = asyncio.Event()
        self._exit_code = 0

    def _on_datagrams(self, batch: list[tuple[bytes, tuple[str, int], tuple[str, int]]]) -> None:
        self.shell.on_datagrams(batch)

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        if self.shard.index > 0:
            return await self._run_shard()
        loop = asyncio.get_running_loop()
        sockets = ShardSockets(self.shard.count) if self.shard.count > 1 else None
        if sockets is not None:
            self.transport.given = sockets.open_first()
        self.transport.start()
        if self.want_dataplane:
            await self._start_dataplane()
        if sockets is not None:
            await self._start_shards(sockets)
        self.addresses.start()
        await self.control.start()
        listen = self.config.settings.metrics.address()
        if listen is not None:
            self.metrics = MetricsServer(listen, self.handlers.metrics_snapshot)
            await self.metrics.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.shell.tasks.spawn(self._reload_quietly(), "reload"))
        sd_notify("READY=1\nSTATUS=listening for IKE")
        wd = watchdog_interval()
        if wd:
            self.shell.tasks.spawn(self._watchdog(wd), "watchdog")
        log.info("ipsecd %s started: %d connection(s) from %s", __version__, len(self.config.connections),
                 self.config.source)
        self._warn_config()
        self._log_credentials()
        await self.radius.configure(self.config.settings.eap_radius)
        self._warn_legacy()
        self.policy.start()
        tune_gc()
        await self._stopping.wait()
        await self._shutdown()
        return self._exit_code

    async def _start_dataplane(self) -> None:
        from ipsecd.dataplane.client import DataPlane

        self.dataplane = DataPlane(self.config.settings.dataplane)
        self.dataplane.shard_links = self.shard.count - 1  # a control link to the worker for each other shard
        self.dataplane.on_event(self._on_dataplane_event)
        # IKE is already listening: a Child SA negotiated meanwhile waits for installer.ready
        self.installer.dataplane = self.policy.dataplane = self.dataplane
        if self.shell.vips is not None:
            self.shell.vips.dataplane = self.dataplane
        await self.dataplane.start()
        self.installer.ready.set()
        if any(c.dpd_delay > 0 for c in self.config.connections.values()):
            self.shell.tasks.spawn(self.installer.watch_inbound_traffic(), "DPD traffic watch")

    async def _start_shards(self, sockets: ShardSockets) -> None:
        """The other IKE processes, each with its sockets (in the group, the programs attached)."""
        steering = self.dataplane.steering if self.dataplane is not None else {}
        sockets.open_rest({fam: steering[a] == 1 for fam, a in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"))
                           if a in steering})
        hub = self.shards = ShardHub(self.shard.count, dataplane_handlers(lambda: self.dataplane), self._shard_lost)
        if self.xshard is not None:  # claims: ours to every shard, a shard's to us and the others
            hub.handlers["relay_claim"] = self.xshard.on_relay
            self.xshard.peers = lambda claim, origin: hub.gather("claim", skip=origin, claim=claim)
        workers = self.dataplane.shard_sockets if self.dataplane is not None else []
        for k in range(1, self.shard.count):
            worker = workers[k - 1] if len(workers) >= k else None
            await self.shards.spawn(k, sockets.of(k), self._argv, worker)
            sockets.close_shard(k)
            if worker is not None:
                worker.close()

    def _shard_lost(self, index: int) -> None:
        if not self._stopping.is_set():
            log.critical("IKE shard %d exited: stopping so the service manager restarts us", index)
            self._exit_code = 1
            self._stopping.set()

    async def _run_shard(self) -> int:
        """Shard k >= 1: IKE on the sockets the primary opened; installs on its own channel to the
        worker, routes and the TUN's MTU through the primary (shell/shard_dataplane.py)."""
        loop = asyncio.get_running_loop()
        self.link = ShardLink(self._link_sock, self._shard_ops(), "the primary")
        self.link.on_closed = self._stopping.set
        await self.link.start()
        if self.xshard is not None:
            link = self.link
            self.xshard.peers = lambda claim, _origin: link.call("relay_claim", claim=claim)
        self.transport.start()
        if self._worker_sock is not None:  # none: the primary runs --no-dataplane
            from ipsecd.dataplane.client import DataPlaneOptions
            from ipsecd.shell.shard_dataplane import ShardDataPlane

            self.dataplane = ShardDataPlane(self.link, self._worker_sock,
                                            DataPlaneOptions.from_settings(self.config.settings.dataplane),
                                            self.shard.index)
            await self.dataplane.start()
            self.installer.dataplane = self.dataplane
        self.installer.ready.set()
        if any(c.dpd_delay > 0 for c in self.config.connections.values()):
            self.shell.tasks.spawn(self.installer.watch_inbound_traffic(), "DPD traffic watch")
        # the primary stops and reloads us (a service manager signals the whole group: the primary
        # then asks us to stop, so a shard never stops first and looks like a crash to it)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, lambda: None)
        self.addresses.start()
        await self.radius.configure(self.config.settings.eap_radius)
        log.info("IKE shard %d of %d started", self.shard.index, self.shard.count)
        tune_gc()
        await self._stopping.wait()
        await self._shutdown()
        return self._exit_code

    def _shard_ops(self) -> dict[str, Any]:
        """What the primary may ask of a shard (ShardLink)."""
        h = self.handlers

        async def stats() -> dict[str, Any]:
            out = await h.stats()
            out.pop("dataplane", None)  # one worker: the primary reports it once
            return out

        async def down(name: str) -> int:
            return int(self.shell.act(lambda m, now: m.terminate(name, now)))

        async def dataplane_event(event: Any) -> None:
            self._on_dataplane_event(decode_event(event))

        async def stop() -> None:
            self._stopping.set()

        async def counters() -> dict[str, Any]:
            return h.counters()

        async def list_pools(leases: bool, name: str | None) -> list[dict[str, Any]]:
            return self.pools.describe(leases=leases, name=name)

        ops: dict[str, Any] = {
                "list_sas": h.list_sas, "stats": stats, "status": h.status, "down": down, "reload": self.reload,
                "redirect": h.redirect, "dataplane_event": dataplane_event, "stop": stop,
                "counters": counters, "list_pools": list_pools}
        if self.xshard is not None:
            ops["claim"] = self.xshard.on_claim
        return ops

    def _on_dataplane_event(self, ev: object) -> None:
        if (isinstance(ev, dp_messages.LifetimeReached) and self.shards is not None
                and self.shards.route_event(ev)):
            return
        if isinstance(ev, dp_messages.Acquire):
            self.policy.on_acquire(ev)
        elif isinstance(ev, dp_messages.LifetimeReached):
            self.installer.on_lifetime(ev)
        elif isinstance(ev, dp_messages.WorkerExited) and not self._stopping.is_set():
            log.critical("the data plane worker exited (%s): stopping so the service manager restarts us",
                         ev.message or ev.returncode)
            self._exit_code = 1
            self._stopping.set()

    async def _shutdown(self) -> None:
        if self.shard.index == 0:
            sd_notify("STOPPING=1")
        if self.shards is not None:
            await self.shards.stop()  # each shard deletes its own SAs, through the worker still here
        await self.policy.stop()
        n = len(self.shell.manager.sas)
        log.info("shutting down: deleting %d IKE SA(s)", n)
        # the worker and every route go in one step below: no data-plane job per deleted SA
        self.installer.stopping = True
        report = await delete_all(self.shell, wait_budget(n, SHUTDOWN_WAIT, SHUTDOWN_WAIT_PER_SA, SHUTDOWN_WAIT_MAX))
        log.info("shutdown: %d Delete(s) sent, %d IKE SA(s) left, %.1f s", report.deleted, report.left,
                 report.seconds)
        if self.metrics is not None:
            await self.metrics.close()
        if self.shell.vips is not None:
            await self.shell.vips.close()
        if self.shard.index == 0:
            await self.control.close()
        self.addresses.close()
        self.transport.close()
        self.radius.close()
        self.shell.close()
        if self.dataplane is not None:
            await self.dataplane.stop()
        if self.link is not None:
            self.link.close()
        self.pools.close()

    async def _watchdog(self, interval: float) -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _warn_config(self) -> None:
        """The loader's warnings (keys accepted but not implemented, weak keys), as --check-config prints them."""
        for warning in self.config.warnings:
            log.warning("%s", warning)

    def _load_credentials(self, config: Config) -> tuple[Any, CredentialReport]:
        """Read settings.credentials and hand the store to the engine (SAs that are up keep theirs)."""
        store, report = load_credentials(config, datetime.now(UTC))
        self.shell.manager.set_credentials(store, time.time() - time.monotonic())
        return store, report

    def _log_credentials(self) -> None:
        report = self.credential_report
        for text in report.errors:
            log.error("credentials: %s", text)
        for text in report.warnings:
            log.warning("credentials: %s", text)
        log.info("credentials from %s: %d certificate(s), %d trust anchor(s), %d CRL(s), %d key(s)",
                 self.credentials.directory, len(self.credentials.certs), len(self.credentials.cas),
                 len(self.credentials.crls), len(self.credentials.keys))

    def _warn_legacy(self) -> None:
        """Legacy algorithms run only because the config names them: say so once at start."""
        for conn in self.shell.manager.connections:
            legacy = [proposal_to_str(p) for p in conn.ike_proposals if is_legacy(p)]
            legacy += [proposal_to_str(p) for ch in conn.children for p in ch.proposals if is_legacy(p)]
            if legacy:
                log.warning("connection %s allows legacy algorithms (RFC 8247/8221 deprecate them): %s",
                            conn.name, ", ".join(legacy))

    # ------------------------------------------------------------ reload
    async def _reload_quietly(self) -> None:
        with suppress(ControlError):
            await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; only connections that were added, removed or changed are touched."""
        try:
            new = load_config(self.config.source, proposal_validator=validate_proposal)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration:\n%s", e)
            raise ControlError(f"reload failed: {e}") from e
        try:
            self._reload_pools(new)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            raise ControlError(f"reload failed: {e}") from e
        old, self.config = self.config, new
        self._warn_config()
        if new.settings.ike_shards != self.shard.count and self.shard.index == 0:
            log.warning("settings.ike_shards changed to %d: the running %d IKE process(es) stay until ipsecd restarts",
                        new.settings.ike_shards, self.shard.count)
        # a new credential store: the next logins use it, established SAs are not touched
        self.credentials, self.credential_report = self._load_credentials(new)
        self._log_credentials()
        await self.radius.configure(new.settings.eap_radius)
        self.shell.manager.update_connections([ike_settings(c, new) for c in new.connections.values()])
        if new.settings.front_door != old.settings.front_door:
            self.shell.manager.front.configure(new.settings.front_door)
        removed = [n for n in old.connections if n not in new.connections]
        added = [n for n in new.connections if n not in old.connections]
        changed = [n for n in new.connections if n in old.connections and new.connections[n] != old.connections[n]]
        primary = self.shard.index == 0  # traps and start actions live on shard 0
        for name in removed + changed:
            if primary:
                await self.policy.release(name)
            self.shell.act(lambda m, now, name=name: m.terminate(name, now))  # type: ignore[misc]
        if primary:
            self.policy.start(added, delay=0.0)
            self.policy.start(changed, delay=0.5)
        if self.shards is not None:
            await self.shards.gather("reload")
        log.info("configuration reloaded: %d added, %d removed, %d changed", len(added), len(removed), len(changed))
        return {"added": added, "removed": removed, "changed": changed}


    def _reload_pools(self, new: Config) -> None:
        """Pools take the new ranges and attributes; their leases carry over (ipsecd/pools.py)."""
        if new.pools and isinstance(self.pools.store, MemoryLeaseStore):  # the first pools: open the file now
            self.pools.use_store(SqliteLeaseStore(new.settings.lease_db))
        elif new.settings.lease_db != self.config.settings.lease_db and new.pools:
            log.warning("settings.lease_db changed to %s: the leases stay in %s until ipsecd restarts",
                        new.settings.lease_db, self.config.settings.lease_db)
        self.pools.update(pool_specs(new))


def open_pools(config: Config, shard: Shard) -> PoolManager:
    """The pool manager of the virtual IPs; the lease file is opened only when pools are configured
    (raises ConfigError when it cannot be: leases that would silently not persist are refused).
    An IKE shard leases its own share of every pool (pools.py), in the same file."""
    store = SqliteLeaseStore(config.settings.lease_db) if config.pools else MemoryLeaseStore()
    return PoolManager(pool_specs(config), store, share=(shard.index, shard.count))
def _check_credentials(config: Config) -> tuple[list[str], list[str], list[str]]:
    """--check-config: (errors, warnings, notes) about settings.credentials for this configuration."""
    _store, report = load_credentials(config, datetime.now(UTC), check_only=True)
    return report.errors, report.warnings, report.notes


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
    # an IKE shard started by the primary (shell/shards.py): "k/N", its link fd, its sockets
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shard-link", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--shard-sockets", default="", help=argparse.SUPPRESS)
    p.add_argument("--shard-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.check_config is not None:
        from ipsecd.config import check_config_main

        path = args.config if args.check_config is True else args.check_config
        return check_config_main(path, proposal_validator=validate_proposal, extra_check=_check_credentials)
    try:
        config = load_config(args.config, proposal_validator=validate_proposal)
    except ConfigError as e:
        print(f"ipsecd: invalid configuration:\n{e}", file=sys.stderr)
        return 2
    # --log-level overrides the file, per-subsystem levels included
    hub = setup_logging(args.log_level or config.settings.log_level,
                        None if args.log_level else config.settings.log,
                        tag=f"shard{args.shard.split('/')[0]} " if args.shard else "")
    sock = str(args.control_socket or config.settings.control_socket or DEFAULT_SOCKET)
    if args.user:
        from ipsecd.privdrop import PrivilegeDropError, drop_privileges, prepare_runtime_dir

        if not args.no_dataplane:
            import ipsecd.dataplane.client  # noqa: F401  (import while the code is still readable as root)

        try:
            prepare_runtime_dir(Path(sock).parent, args.user, args.group)
            if config.pools and not config.settings.lease_db.parent.exists():
                # the lease file's directory, as systemd's StateDirectory= would (an existing one is left alone)
                prepare_runtime_dir(config.settings.lease_db.parent, args.user, args.group)
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
        if args.shard is not None:
            index, count = (int(x) for x in args.shard.split("/"))
            daemon = Daemon(config, sock, hub, dataplane=False, shard=Shard(index, count),
                            link=socket.socket(fileno=args.shard_link), sockets=parse_fds(args.shard_sockets),
                            worker=None if args.shard_worker is None else socket.socket(fileno=args.shard_worker))
        else:
            daemon = Daemon(config, sock, hub, dataplane=not args.no_dataplane)
            # what a shard's command line repeats (shell/shards.py adds its own arguments)
            daemon._argv = ["--config", str(args.config), "--control-socket", sock] + (
                ["--log-level", args.log_level] if args.log_level else [])
        return await daemon.run()

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run())
    except (OSError, ConfigError) as e:
        print(f"ipsecd: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())



