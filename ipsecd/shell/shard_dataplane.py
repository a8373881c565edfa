"""An IKE shard's data plane: its own control channel to the one worker (``settings.ike_shards``).

A shard k >= 1 installs its Child SAs by talking to the worker directly, on a socketpair the
primary created when it started the worker (``DataPlane.shard_sockets``; the worker answers
each link's requests on that link, dataplane/worker.py ``ControlLinks``). Nothing of an
install passes through the primary: the SA is encoded once, as the worker protocol encodes
it (dataplane/messages.py), and concurrent installs leave in one ``Batch`` (channel.py).
The jobs themselves are the daemon's (``SaJobs``, dataplane/client.py).

What has one owner stays with the primary, asked over the shard link (shell/shards.py):

* **routes**: the shard counts its Child SAs per prefix itself (a ``NetConf`` in memory,
  the same ``claim_routes`` as the primary's) and asks the primary only when a route must
  be written or is no longer needed by any of its SAs; the primary holds those routes for
  the shard beside its own (``NetConf.hold_routes``), so neither deletes a prefix the other
  still routes. A login storm whose clients share a prefix (a pool's, or one inner host)
  costs one such call, not one per SA;
* **the TUN's MTU** (rarely changes: when a peer's path MTU differs);
* **events**: the worker sends them to the primary, which forwards a shard's by its reqid.

Netlink lookups that only read (a peer's path MTU with the worker's mark, a route source)
run in the shard's own netlink thread, cached as the primary caches them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.channel import REQUEST_TIMEOUT, DataPlaneError, WorkerChannel
from ipsecd.dataplane.client import DataPlaneOptions, SaJobs
from ipsecd.dataplane.netconf import NetConf

log = logging.getLogger("ipsecd.esp")


class ShardDataPlane(SaJobs):
    """What a shard's installer calls a DataPlane (module docstring)."""

    def __init__(self, link: Any, sock: socket.socket, options: DataPlaneOptions, shard: int) -> None:
        self.link = link  # shell.shards.ShardLink to the primary
        self.sock = sock  # this shard's control socket to the worker
        self.options = options
        self.shard = shard
        self._channel: WorkerChannel | None = None
        self._mtus = {}
        self._link_mtu = 0
        self._pmtu = {}
        self._srcs = {}

    async def start(self) -> None:
        """Learn the TUN from the primary, then greet the worker on our own channel."""
        info = await self.link.call("dataplane_info")
        o = self.options
        self.netconf = NetConf(str(info["tun_name"]), o.route_table, o.rule_priority, o.mark,
                               ifindex=int(info["ifindex"]))
        self._link_mtu = int(info["link_mtu"])
        self.sock.setblocking(False)
        self._channel = WorkerChannel(self.sock, self._on_event)
        self._channel.start()
        hello = await asyncio.wait_for(self._channel.hello, REQUEST_TIMEOUT)
        if hello.version != m.PROTOCOL_VERSION:
            raise DataPlaneError(f"worker speaks protocol {hello.version}, expected {m.PROTOCOL_VERSION}")

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel.fail_pending(DataPlaneError("data plane stopped"))
            self._channel = None
        if hasattr(self, "netconf"):
            await self.netconf.close()

    def _on_event(self, ev: m.Event) -> None:
        # the worker sends every event to the primary (it forwards ours by reqid): never here
        log.debug("unexpected data-plane event on shard %d's channel: %s", self.shard, type(ev).__name__)

    # ------------------------------------------------------------------ SaJobs: the link and the primary
    async def _request(self, build: Callable[[int], m.Message], worker: int = 0) -> m.Message:
        channel = self._channel
        if channel is None or channel.closed:
            raise DataPlaneError("data plane worker is not running")
        return await channel.request(build)

    async def set_link_mtu(self, link: int) -> None:
        self._link_mtu = link
        await self.link.call("set_link_mtu", mtu=link)

    async def _put_routes(self, writes: list[dict[str, Any]]) -> None:
        await self.link.call("hold_routes", shard=self.shard, routes=writes)

    async def _delete_routes(self, gone: list[dict[str, Any]]) -> None:
        # our last SA on these prefixes went: the primary deletes them unless it still routes them
        await self.link.call("drop_routes", shard=self.shard, routes=gone)

    async def install_trap(self, *_args: Any, **_kw: Any) -> None:
        raise DataPlaneError("traps live on shard 0")

    async def remove_trap(self, *_args: Any, **_kw: Any) -> None:
        raise DataPlaneError("traps live on shard 0")
