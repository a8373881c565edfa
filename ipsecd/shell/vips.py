"""ipsecd as a road-warrior client: the virtual IPs and DNS servers a gateway assigned us.

On :class:`VirtualIpsAssigned` (RFC 7296 2.19) the addresses go on the TUN -- before the
Child SA of the same IKE_AUTH is installed, whose routes use them as source (the
installer waits for :meth:`VirtualIpShell.ready`) -- and a ``throw`` route keeps the
gateway's own address out of the tunnel table, so even a 0.0.0.0/0 tunnel never carries
the packets that reach the gateway (IKE itself bypasses by port anyway, ESP by fwmark:
ipsecd/dataplane/netconf.py). The DNS servers and domains (RFC 8598) go to
systemd-resolved (``resolvectl``, per link: split DNS when domains came) or to
``resolvconf`` (an ``ipsec0.ipsecd`` record), whichever the host has; with neither, a log
line says the DNS settings are not applied. Everything is undone when the last IKE SA
holding it goes; an IKE rekey hands it over to the new SA (nothing changes on the host).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipsecd.ike.events import Event, IkeSaClosed, IkeSaRekeyed, VirtualIpsAssigned
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.shell.ike_shell import IkeShell

log = logging.getLogger("ipsecd.net")
DNS_COMMAND_TIMEOUT = 10.0
RESOLVED_RUN_DIR = Path("/run/systemd/resolve")  # present while systemd-resolved runs


@dataclass
class _Held:
    event: VirtualIpsAssigned
    gateway: str
    ready: asyncio.Future[None] | None = None


@dataclass
class DnsConfigurator:
    """Hands DNS servers and domains to the host's resolver manager for one interface."""

    interface: str
    backend: str = field(default="")  # "resolvectl" | "resolvconf" | "" (none: say so)
    applied: bool = False

    def __post_init__(self) -> None:
        if not self.backend:
            self.backend = detect_dns_backend()

    async def apply(self, servers: Sequence[IPv4Address | IPv6Address], domains: Sequence[str]) -> None:
        if not servers and not domains:
            await self.revert()
            return
        text = ", ".join(map(str, servers)) + (f" for {safe(', '.join(domains), 256)}" if domains else "")
        if self.backend == "resolvectl":
            ok = await _run(["resolvectl", "dns", self.interface, *map(str, servers)])
            # routing domains: split DNS for the gateway's domains, else every query (RFC 8598 5)
            ok = ok and await _run(["resolvectl", "domain", self.interface,
                                    *([f"~{d}" for d in domains] or ["~."])])
        elif self.backend == "resolvconf":
            record = "".join(f"nameserver {s}\n" for s in servers)
            if domains:
                record += "search " + " ".join(domains) + "\n"
            ok = await _run(["resolvconf", "-a", f"{self.interface}.ipsecd"], record)
        else:
            log.warning("the gateway assigned DNS servers %s, but neither systemd-resolved (resolvectl) nor "
                        "resolvconf is available: DNS is not changed", text)
            return
        if ok:
            self.applied = True
            log.info("DNS servers %s applied through %s", text, self.backend)

    async def revert(self) -> None:
        if not self.applied:
            return
        self.applied = False
        if self.backend == "resolvectl":
            await _run(["resolvectl", "revert", self.interface])
        elif self.backend == "resolvconf":
            await _run(["resolvconf", "-d", f"{self.interface}.ipsecd"])
        log.info("DNS settings of %s removed from %s", self.interface, self.backend)


def detect_dns_backend() -> str:
    """systemd-resolved when it runs, else resolvconf (Debian's or openresolv), else none."""
    if shutil.which("resolvectl") and RESOLVED_RUN_DIR.is_dir():
        return "resolvectl"
    if shutil.which("resolvconf"):
        return "resolvconf"
    return ""


async def _run(argv: list[str], stdin: str | None = None) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None),
                                        DNS_COMMAND_TIMEOUT)
    except (OSError, TimeoutError) as e:
        log.error("%s failed: %s", argv[0], e)
        return False
    if proc.returncode != 0:
        log.error("%s failed (exit %s): %s", " ".join(argv[:2]), proc.returncode, safe(err.decode(errors="replace")))
        return False
    return True


class VirtualIpShell:
    """The client's virtual IPs and DNS in the host (see the module docstring)."""

    def __init__(self, shell: IkeShell, dataplane: Any, dns: DnsConfigurator | None = None) -> None:
        self.shell = shell
        self.dataplane = dataplane  # ipsecd.dataplane.client.DataPlane, or None (--no-dataplane)
        self.dns = dns
        self.held: dict[int, _Held] = {}  # IKE SA id -> what it was assigned
        self._lock = asyncio.Lock()  # host changes one at a time, in event order

    def on_event(self, ev: Event) -> None:
        if isinstance(ev, VirtualIpsAssigned):
            sa = self.shell.manager.find(ev.ike_sa_id)
            held = _Held(ev, sa.remote[0] if sa is not None else "")
            self.held[ev.ike_sa_id] = held
            held.ready = self.shell.tasks.spawn(self._apply(held), f"virtual IPs of {ev.name}")
        elif isinstance(ev, IkeSaRekeyed) and ev.ike_sa_id in self.held:
            moved = self.held.pop(ev.ike_sa_id)
            self.held[ev.new_ike_sa_id] = moved
        elif isinstance(ev, IkeSaClosed) and ev.ike_sa_id in self.held:
            gone = self.held.pop(ev.ike_sa_id)
            self.shell.tasks.spawn(self._remove(gone), f"removal of the virtual IPs of {ev.name}")

    async def ready(self, ike_sa_id: int) -> None:
        """Wait until the virtual IPs of this IKE SA (if any) are on the TUN."""
        held = self.held.get(ike_sa_id)
        if held is not None and held.ready is not None:
            await asyncio.gather(held.ready, return_exceptions=True)

    # ------------------------------------------------------------------ host changes
    def _in_use(self, addr: IPv4Address | IPv6Address | str) -> bool:
        return any(addr in h.event.addresses or addr == h.gateway for h in self.held.values())

    async def _apply(self, held: _Held) -> None:
        ev = held.event
        async with self._lock:
            if self.dataplane is not None:
                netconf = self.dataplane.netconf
                for addr in ev.addresses:
                    await asyncio.to_thread(netconf.add_address, f"{addr}/{addr.max_prefixlen}")
                    log.info("virtual IP %s on %s", addr, netconf.tun_name)
                if held.gateway and self.dataplane.options.policy_routing:
                    await asyncio.to_thread(netconf.add_bypass, held.gateway)
            else:
                log.info("virtual IPs %s assigned (no data plane: not configured on a TUN)",
                         ", ".join(map(str, ev.addresses)))
            await self._dns()

    async def _remove(self, held: _Held) -> None:
        async with self._lock:
            if self.dataplane is not None:
                netconf = self.dataplane.netconf
                for addr in held.event.addresses:
                    if not self._in_use(addr):
                        await asyncio.to_thread(netconf.remove_address, f"{addr}/{addr.max_prefixlen}")
                        log.info("virtual IP %s removed from %s", addr, netconf.tun_name)
                if held.gateway and not self._in_use(held.gateway) and self.dataplane.options.policy_routing:
                    await asyncio.to_thread(netconf.remove_bypass, held.gateway)
            await self._dns()

    async def _dns(self) -> None:
        if self.dns is None:
            return
        servers: list[IPv4Address | IPv6Address] = []
        domains: list[str] = []
        for h in self.held.values():
            servers += [s for s in h.event.dns if s not in servers]
            domains += [d for d in h.event.domains if d not in domains]
        await self.dns.apply(servers, domains)

    async def close(self) -> None:
        """Shutdown: undo the DNS change (the addresses vanish with the TUN)."""
        if self.dns is not None:
            await self.dns.revert()
