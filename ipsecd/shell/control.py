"""The handlers behind the control socket (ipsecctl), one method per command."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ipsecd import __version__, keyexport
from ipsecd.control.protocol import ControlError
from ipsecd.gcpolicy import gc_figures
from ipsecd.iana import ProtocolId
from ipsecd.ike.events import IkeSaEstablished
from ipsecd.logsafe import safe
from ipsecd.logsetup import LogHub
from ipsecd.metrics import MetricsSnapshot, state_counts
from ipsecd.shell.shards import merge_counts, merge_pools
from ipsecd.shell.views import sa_info

if TYPE_CHECKING:
    from ipsecd.daemon import Daemon

log = logging.getLogger("ipsecd.ctl")
UP_TIMEOUT = 10.0  # `up` waits this long for the outcome, like swanctl --initiate


class ControlHandlers:
    def __init__(self, daemon: Daemon, hub: LogHub) -> None:
        self.d = daemon
        self.hub = hub
        self._started = time.time()

    async def _dataplane_counters(self) -> dict[str, Any]:
        if self.d.dataplane is None:
            return {}
        try:
            counters: dict[str, Any] = await self.d.dataplane.counters()
            return counters
        except Exception as e:
            log.debug("cannot read data-plane counters: %s", e)
            return {}

    async def _shards(self, op: str, **args: Any) -> list[Any]:
        """The answers of the other IKE shards (none with one shard; shell/shards.py)."""
        hub = getattr(self.d, "shards", None)
        return await hub.gather(op, **args) if hub is not None else []

    async def list_sas(self) -> dict[str, Any]:
        counters = (await self._dataplane_counters()).get("sas", {})
        own = [sa_info(sa, counters) for sa in self.d.shell.manager.list_sas()]
        return {"ike_sas": own + [sa for part in await self._shards("list_sas") for sa in part["ike_sas"]]}

    async def list_conns(self) -> dict[str, Any]:
        conns = []
        for name, c in self.d.config.connections.items():
            conns.append({
                "name": name, "local_addrs": [str(a) for a in c.local_addrs],
                "remote_addrs": [str(a) for a in c.remote_addrs] or ["%any"],
                "proposals": list(c.proposals), "local_id": str(c.local.id or "(the IKE SA's address)"),
                "remote_id": str(c.remote.id),
                "children": {
                    cn: {"local_ts": [str(t) for t in ch.local_ts], "remote_ts": [str(t) for t in ch.remote_ts],
                         "esp_proposals": list(ch.esp_proposals), "ah_proposals": list(ch.ah_proposals),
                         "ipcomp": ch.ipcomp, "mode": ch.mode, "start_action": ch.start_action}
                    for cn, ch in c.children.items()
                },
            })
        return {"connections": conns}

    async def list_pools(self, leases: bool, name: str | None) -> dict[str, Any]:
        """swanctl --list-pools [--leases]: every pool's base, size, online and offline leases."""
        if name is not None and name not in self.d.config.pools:
            raise ControlError(f"no pool named '{name}'")
        own = self.d.pools.describe(leases=leases, name=name)
        return {"pools": merge_pools([own, *await self._shards("list_pools", leases=leases, name=name)])}
    async def list_certs(self) -> dict[str, Any]:
        """The loaded credential store: every certificate of x509/ and x509ca/, CRLs, and its problems."""
        store, report = self.d.credentials, self.d.credential_report
        return {
            "directory": str(store.directory),
            "certificates": [c.to_dict() for c in store.describe()],
            "crls": [{"file": str(e.file), "issuer": safe(e.crl.issuer.rfc4514_string()),
                      "this_update": e.crl.last_update_utc.isoformat(),
                      "next_update": e.crl.next_update_utc.isoformat() if e.crl.next_update_utc else None,
                      "revoked": len(e.crl)} for e in store.crls],
            "problems": [*report.errors, *report.warnings, *report.notes],
        }

    async def status(self) -> dict[str, Any]:
        sas = self.d.shell.manager.list_sas()
        return {
            "version": __version__, "pid": os.getpid(), "uptime": round(time.time() - self._started, 1),
            "config": str(self.d.config.source), "connections": len(self.d.config.connections),
            "ike_sas": len(sas), "child_sas": sum(len(sa.children) for sa in sas),
            "dataplane": self.d.dataplane is not None,
        } | await self._shard_status()

    async def _shard_status(self) -> dict[str, Any]:
        parts = await self._shards("status")
        if not parts:
            return {}
        sas = self.d.shell.manager.list_sas()
        return {"ike_sas": len(sas) + sum(p["ike_sas"] for p in parts),
                "child_sas": sum(len(sa.children) for sa in sas) + sum(p["child_sas"] for p in parts),
                "ike_shards": 1 + len(parts)}

    async def stats(self) -> dict[str, Any]:
        dp = await self._dataplane_counters()
        m = self.d.shell.manager
        own = {"ike": m.total_counters(), "events": dict(self.d.stats.events),
               "front_door": m.front.state(time.monotonic(), m.table.half_open_count),
               "logins": {f"{m}/{r}": n for (m, r), n in sorted(self.d.stats.logins.items())},
               "net": dict(self.d.transport.counters), "gc": self._gc()}
        # every shard's counters summed (each has its own front door: its state is summed too);
        # "gc" is keyed by process, so the shards' figures sit side by side
        out: dict[str, Any] = merge_counts([own, *await self._shards("stats")])
        out["dataplane"] = {k: v for k, v in dp.get("global", {}).items() if k != "gc"}
        if self.d.shard.index == 0:  # the workers once, by the primary (a shard's stats are merged into it)
            out["gc"] = {**out.get("gc", {}), **dp.get("global", {}).get("gc", {})}
        if "workers" in dp:  # settings.dataplane.workers > 1: the sums above, and each worker's own
            out["dataplane"] = {**out["dataplane"], "workers": dp["workers"]}
        return out

    async def metrics_snapshot(self) -> MetricsSnapshot:
        """One scrape: O(connections) answers from the worker(s) and the shards, no dict per SA
        (issue 11) unless ``settings.metrics.per_sa`` asks for the per-SPI series."""
        # every IKE shard's counters summed (shell/shards.py); logins travel as "method/result"
        parts = [self.counters(), *await self._shards("counters")]
        names: dict[int, tuple[str, str]] = {}
        for part in parts:  # each process labels the tags it handed out (installer.ChildTags)
            names.update((int(t), (conn, child)) for t, (conn, child) in part.pop("tags", {}).items())
        c: dict[str, Any] = merge_counts(parts)
        logins = {tuple(k.split("/", 1)): n for k, n in c["logins"].items()}
        sums, drops, dp_gc = await self._dataplane_totals()
        totals: dict[tuple[str, str, str], tuple[int, int]] = {}
        for tag, (b_in, p_in, b_out, p_out) in sums.items():
            conn, child = names.get(tag, ("", ""))  # "": SAs installed without a known tag
            if tag not in names and not (b_in or b_out or p_in or p_out):
                continue
            for key, value in (((conn, child, "in"), (b_in, p_in)), ((conn, child, "out"), (b_out, p_out))):
                old = totals.get(key, (0, 0))
                totals[key] = (old[0] + value[0], old[1] + value[1])
        per_sa = self.d.config.settings.metrics.per_sa
        return MetricsSnapshot(sas=await self.list_sas() if per_sa else {}, per_sa=per_sa,
                               ike_states=c["states"]["ike"], child_states=c["states"]["child"],
                               child_totals=totals, ike_counters=c["ike"],
                               dataplane_drops=drops, events=c["events"], handshake_failures=c["failures"],
                               rekeys=c["rekeys"], logins=logins, gc={**c.get("gc", {}), **dp_gc})

    async def _dataplane_totals(self) -> tuple[dict[int, list[int]], dict[str, int], dict[str, Any]]:
        """Per-tag sums, drops, and each worker's garbage-collector figures (keyed ``worker-N``)."""
        if self.d.dataplane is None:
            return {}, {}, {}
        try:
            totals: tuple[dict[int, list[int]], dict[str, int], dict[str, Any]] = await self.d.dataplane.totals()
            return totals
        except Exception as e:
            log.debug("cannot read data-plane totals: %s", e)
            return {}, {}, {}

    def counters(self) -> dict[str, Any]:
        """This IKE process's counters for a metrics scrape (a shard answers the primary with them):
        SA states counted off the engine's table, the installer's tags with their names."""
        st = self.d.stats
        return {"ike": self.d.shell.manager.total_counters(), "events": dict(st.events),
                "failures": dict(st.failures), "rekeys": dict(st.rekeys),
                "logins": {f"{m}/{r}": n for (m, r), n in st.logins.items()}, "gc": self._gc(),
                "states": state_counts(self.d.shell.manager.sas.values()), "tags": self.d.installer.tags.names()}

    def _gc(self) -> dict[str, Any]:
        """This IKE process's garbage-collector figures, keyed by process (``ike-0`` is the
        primary, ``ike-N`` shard N; gcpolicy.GcStats)."""
        return {f"ike-{self.d.shard.index}": gc_figures()}

    async def up(self, name: str) -> dict[str, Any]:
        if name not in self.d.config.connections:
            raise ControlError(f"no connection named '{name}'")
        sa = self.d.policy.initiate(name)
        if sa is None:
            raise ControlError(f"cannot initiate '{name}'")
        if sa.established_at is None:
            try:
                outcome = await asyncio.wait_for(self.d.shell.outcome(sa.ike_sa_id), UP_TIMEOUT)
            except TimeoutError:
                raise ControlError(f"'{name}' failed: no outcome within {UP_TIMEOUT:.0f}s") from None
            if not isinstance(outcome, IkeSaEstablished):
                raise ControlError(f"'{name}' failed: {sa.fail_reason or outcome}")
        return {"established": name, "ike_sa": sa.ike_sa_id}

    async def down(self, name: str) -> dict[str, Any]:
        if name not in self.d.config.connections:
            raise ControlError(f"no connection named '{name}'")
        deleted = self.d.shell.act(lambda m, now: m.terminate(name, now))
        return {"deleted": deleted + sum(await self._shards("down", name=name))}

    async def redirect(self, name: str | None, to: str | None, full_at: int = 0) -> dict[str, Any]:
        """RFC 5685: new clients of ``name`` (None: every connection) go to ``to``; established ones that
        support it are told to move. With ``full_at`` N only new clients, while N IKE SAs exist.
        ``to`` None stops redirecting."""
        if name is not None and name not in self.d.config.connections:
            raise ControlError(f"no connection named '{name}'")
        try:
            told = self.d.shell.act(lambda m, now: m.redirect(name, to, now, full_at=full_at))
        except ValueError as e:
            raise ControlError(str(e)) from None
        told += sum(int(r.get("redirected", 0)) for r in await self._shards("redirect", name=name, to=to,
                                                                           full_at=full_at))
        which = f"connection '{name}'" if name is not None else "every connection"
        if to is None:
            return {"message": f"no longer redirecting {which}"}
        if full_at:
            return {"redirected": 0, "to": to, "full_at": full_at,
                    "message": f"redirecting new clients of {which} to {to} while {full_at} or more IKE SAs exist"}
        return {"redirected": told, "to": to,
                "message": f"redirecting new clients of {which} to {to}; {told} established client(s) told to move"}

    async def reload(self) -> dict[str, Any]:
        return await self.d.reload()

    async def export_keys(self, fmt: str) -> dict[str, Any]:
        if not self.d.config.settings.debug.allow_key_export:
            raise ControlError("key export is disabled: set settings.debug.allow_key_export: true to enable it")
        if fmt != "wireshark":
            raise ControlError(f"unknown key export format '{fmt}' (supported: wireshark)")
        sas = self.d.shell.manager.list_sas()
        ike = [keyexport.ike_entry(sa.spi_i, sa.spi_r, sa.proposal, sa.keys)
               for sa in sas if sa.keys is not None and sa.proposal is not None]
        # AH SAs have no place in Wireshark's esp_sa table, and nothing to decrypt (AH is cleartext)
        esp = [e for sa in sas for c in sa.children if c.event.proposal.protocol == ProtocolId.ESP
               for e in keyexport.esp_entries(c.event)]
        log.warning("SA keys exported through the control socket: %d IKE, %d ESP", len(ike), len(esp))
        return {"files": keyexport.export(ike, esp)}

    def subscribe_logs(self) -> AsyncIterator[str]:
        return self.hub.subscribe()

