"""The shell side of MOBIKE (RFC 4555): notice our own address and route changes and tell the engine.

A netlink socket subscribed to address, route and link changes wakes :class:`AddressWatch`;
after a short settling time (one unplugged uplink brings a burst of messages) it reads the
host's addresses, hands them to the engine (what MOBIKE may advertise, RFC 4555 3.6), and for
every MOBIKE IKE SA we initiated asks the kernel which of our addresses reaches each of the
peer's addresses now. When the best path differs from the one the SA uses, the engine moves
it (``IkeManager.roam``: probe, UPDATE_SA_ADDRESSES, Child SAs follow). The engine never reads
netlink; this module never builds an IKE message.

Addresses we must never announce or leave from: the virtual IPs the gateway gave us and
anything on our own TUN device (a path through the tunnel is no path to the gateway).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from ipaddress import ip_address
from typing import TYPE_CHECKING

from ipsecd.dataplane.ike_socket import source_address_for
from ipsecd.ike.state import IkeState

if TYPE_CHECKING:
    from ipsecd.shell.ike_shell import IkeShell

log = logging.getLogger("ipsecd.ike")

SETTLE = 0.1  # seconds: let a burst of netlink messages (link down: routes, addresses) finish first
# rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4/IPv6 addresses and routes
_GROUPS = 0x1 | 0x10 | 0x40 | 0x100 | 0x400


def host_addresses(skip_interface: str = "") -> list[str]:
    """The addresses configured on this host now, minus loopback, link-local and those on a loopback
    interface or on ``skip_interface`` (our TUN)."""
    from pyroute2 import IPRoute

    out: list[str] = []
    with IPRoute() as ipr:
        skip = set(ipr.link_lookup(ifname=skip_interface)) if skip_interface else set()
        skip |= {link["index"] for link in ipr.get_links() if link["flags"] & 0x8}  # IFF_LOOPBACK: lo's LAN addresses
        for msg in ipr.addr("dump"):
            text = msg.get_attr("IFA_ADDRESS")
            if not text or msg["index"] in skip:
                continue
            addr = ip_address(text)
            if addr.is_loopback or addr.is_link_local or str(addr) in out:
                continue
            out.append(str(addr))
    return out


class AddressWatch:
    """See the module docstring. ``addresses``/``source_for`` are the kernel lookups (tests replace them)."""

    def __init__(self, shell: IkeShell, tun_name: str = "", *,
                 addresses: Callable[[], list[str]] | None = None,
                 source_for: Callable[[str], str] = source_address_for) -> None:
        self.shell = shell
        self.addresses = addresses or (lambda: host_addresses(tun_name))
        self.source_for = source_for
        self._sock: socket.socket | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._running = False  # a stock-taking is under way
        self._again = False  # and another change came meanwhile

    def start(self) -> None:
        """Subscribe to netlink changes and take stock once."""
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.bind((0, _GROUPS))
            s.setblocking(False)
        except OSError as e:
            log.warning("cannot follow address changes (netlink: %s): MOBIKE clients will not roam", e)
            return
        self._sock = s
        asyncio.get_running_loop().add_reader(s.fileno(), self._readable)
        self._settled()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            while self._sock.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # ENOBUFS: we missed some; taking stock covers it
            log.debug("netlink: %s", e)
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(SETTLE, self._settled)

    def _settled(self) -> None:
        self._pending = None
        if self._running:
            self._again = True
            return
        self._running = True
        self.shell.tasks.spawn(self._take_stock(), "taking stock of our addresses (MOBIKE)")

    async def _take_stock(self) -> None:
        try:
            while True:
                self._again = False
                found = await asyncio.to_thread(self.addresses)  # pyroute2 blocks: not on the event loop
                self.check(found)
                if not self._again:
                    return
        finally:
            self._running = False

    def check(self, found: list[str]) -> None:
        """``found``, our addresses now, to the engine; a move for each SA whose best path changed."""
        manager = self.shell.manager
        sas = manager.list_sas()
        ours = {str(a) for sa in sas for a in sa.vips.local}  # virtual IPs: inside the tunnel
        addrs = [a for a in found if a not in ours]
        manager.set_local_addresses(addrs)
        for sa in sas:
            m = sa.mobike
            if not (m.enabled and m.original_initiator) or sa.state != IkeState.ESTABLISHED:
                continue
            paths = self.paths(sa.remote[0], m.peer_addrs, set(addrs))
            if not paths:
                log.info("[%s|%d] no route to %s or its other addresses now: waiting for one", sa.settings.name,
                         sa.ike_sa_id, sa.remote[0])
                continue
            if paths[0] == (sa.local[0], sa.remote[0]):
                continue
            if paths[0][1] == sa.remote[0]:
                # the peer's current address still has a route: update there (same family, as
                # strongSwan does); the peer's other addresses are probed only when it has none
                paths = paths[:1]
            ike_sa_id = sa.ike_sa_id
            self.shell.act(lambda mgr, now, i=ike_sa_id, p=paths: mgr.roam(i, p, now))  # type: ignore[misc]

    def paths(self, current: str, others: Iterable[str], usable: set[str]) -> list[tuple[str, str]]:
        """(our address, the peer's) for each peer address we have a route to, the current one first."""
        out: list[tuple[str, str]] = []
        for peer in [current, *others]:
            src = self.source_for(peer)
            if src in usable and (src, peer) not in out:
                out.append((src, peer))
        return out
