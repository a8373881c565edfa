"""IKE shards: N IKE processes, one data-plane worker, one control socket (``settings.ike_shards``).

The processes (docs/architecture.md):

* the **primary** (shard 0) is the daemon as with one shard: it owns the data-plane worker,
  the control socket, metrics, traps and start actions (new SAs we initiate start here), the
  config reload; it opens every shard's IKE sockets itself, in a known order, so the
  reuseport slots the steering program returns are known (``ShardSockets``), and starts the
  other shards with their sockets and one link each;
* each **shard** k >= 1 runs an IkeManager of its own (its SAs, timers, cookies and front door)
  on its own sockets; the kernel hands it the datagrams of its SPIs (ike/shard.py,
  dataplane/ike_steering.py). It installs Child SAs on a control link of its own to the one
  worker (shell/shard_dataplane.py): the primary created that socketpair when it started the
  worker, so an install is encoded once and never passes through the primary.

What keeps one owner, the primary, and is asked for over the link below: routes (one netlink
owner, so two processes never race on a prefix; a shard asks only when a prefix is new to it
or none of its SAs needs it any more), the TUN's MTU, traps. The worker's events reach the
primary, which forwards a shard's by reqid (reqids carry their shard).

Pools: every shard leases its own share of each pool (pools.py: the addresses at offsets
k, k+N, ...), so each address has one writer and the engine still asks its pool
synchronously; the shards share one lease file, each writing only its own rows.

The link is symmetric: a shard asks the primary for routes; the primary asks the shards for
their SAs and counters (``ipsecctl list-sas``/``stats`` aggregate), to terminate, to reload.
Both ways it carries INITIAL_CONTACT and ``unique`` claims (shell/xshard.py, ike/xshard.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.channel import DataPlaneError
from ipsecd.dataplane.ike_socket import open_ike_socket
from ipsecd.dataplane.ike_steering import attach_reuseport_program, ike_steering_program
from ipsecd.dataplane.netconf import ShardRoutes
from ipsecd.iana import IKE_PORT, NATT_PORT
from ipsecd.ike.shard import Shard

log = logging.getLogger("ipsecd.cfg")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
LINK_LIMIT = 64 << 20  # one line: list-sas of a shard with tens of thousands of SAs
CALL_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0  # a shard deletes its SAs (bounded, shell/shutdown.py) before it exits

Handler = Callable[..., Awaitable[Any]]


# ------------------------------------------------------------------ the link
class ShardLink:
    """JSON lines both ways over one connected stream socket: ``call(op, **args)`` and the
    handlers the other side may call. EOF fails every pending call and runs ``on_closed``."""

    def __init__(self, sock: socket.socket, handlers: dict[str, Handler], name: str) -> None:
        self.sock = sock
        self.handlers = handlers
        self.name = name
        self.on_closed: Callable[[], None] = lambda: None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 1
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self.sock, limit=LINK_LIMIT)
        self._spawn(self._read(reader))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _send(self, obj: dict[str, Any]) -> None:
        if self._writer is None or self.closed:
            raise DataPlaneError(f"link to {self.name} closed")
        self._writer.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")

    async def call(self, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        i = self._next
        self._next += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        try:
            self._send({"id": i, "op": op, "args": args})
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(i, None)

    def notify(self, op: str, **args: Any) -> None:
        with contextlib.suppress(DataPlaneError):
            self._send({"op": op, "args": args})

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "op" in msg:
                    self._spawn(self._serve(msg))
                else:
                    fut = self._pending.get(msg.get("re", 0))
                    if fut is not None and not fut.done():
                        if "error" in msg:
                            fut.set_exception(DataPlaneError(str(msg["error"])))
                        else:
                            fut.set_result(msg.get("ok"))
        except (OSError, ValueError) as e:
            log.error("link to %s broken: %s", self.name, e)
        finally:
            self.closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(DataPlaneError(f"link to {self.name} closed"))
            self.on_closed()

    async def _serve(self, msg: dict[str, Any]) -> None:
        op, i = msg.get("op"), msg.get("id")
        handler = self.handlers.get(str(op))
        try:
            if handler is None:
                raise DataPlaneError(f"unknown operation {op!r}")
            result = await handler(**msg.get("args", {}))
            reply: dict[str, Any] = {"re": i, "ok": result}
        except Exception as e:  # the caller sees it as its own failure (an install fails the Child SA)
            reply = {"re": i, "error": f"{type(e).__name__}: {e}"}
        if i is not None:
            with contextlib.suppress(DataPlaneError):
                self._send(reply)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for t in self._tasks:
            t.cancel()


def _wire(msg: m.Message) -> Any:
    """A data-plane message as the worker protocol encodes it (messages.py), as JSON."""
    return json.loads(m.encode(msg)[4:])


def _unwire(obj: Any) -> m.Message:
    return m.decode_body(json.dumps(obj).encode())


# ------------------------------------------------------------------ the primary's side of a shard's data plane
def dataplane_handlers(dataplane: Callable[[], Any]) -> dict[str, Handler]:
    """What a shard's data plane (shell/shard_dataplane.py) asks the primary's (``dataplane()``):
    the TUN it talks about, and the jobs with one owner (the TUN's MTU, routes). Installs
    themselves go from the shard to the worker directly."""

    def dp() -> Any:
        d = dataplane()
        if d is None:
            raise DataPlaneError("no data plane (--no-dataplane)")
        return d

    async def dataplane_info() -> dict[str, Any]:
        d = dp()
        return {"tun_name": d.tun_name, "ifindex": d.netconf.ifindex, "link_mtu": d.link_mtu}

    async def set_link_mtu(mtu: int) -> None:
        await dp().set_link_mtu(int(mtu))

    async def hold_routes(shard: int, routes: list[dict[str, Any]]) -> None:
        nc = dp().netconf
        writes = nc.hold_routes(ShardRoutes(int(shard)), [_route_args(r) for r in routes])
        await nc.run(nc.write_routes, writes)

    async def drop_routes(shard: int, routes: list[dict[str, Any]]) -> None:
        nc = dp().netconf
        gone = nc.drop_routes(ShardRoutes(int(shard)), [_route_args(r) for r in routes])
        if gone:
            await nc.run(nc.delete_routes, gone)

    return {"dataplane_info": dataplane_info, "set_link_mtu": set_link_mtu, "hold_routes": hold_routes,
            "drop_routes": drop_routes}


_ROUTE_KEYS = {"dst": str, "oif": int, "table": int, "prefsrc": str}


def _route_args(raw: Any) -> dict[str, Any]:
    """A route a shard asks for, as NetConf.claim_routes made it there: only its known keys, typed."""
    if not isinstance(raw, dict) or not {"dst", "oif", "table", "metrics"} <= raw.keys():
        raise DataPlaneError("malformed route")
    args: dict[str, Any] = {k: conv(raw[k]) for k, conv in _ROUTE_KEYS.items() if k in raw}
    ip_network(args["dst"])  # ValueError for anything else
    args["metrics"] = {"mtu": int(raw["metrics"]["mtu"])}
    return args


def encode_event(ev: m.LifetimeReached) -> Any:
    return _wire(ev)


def decode_event(obj: Any) -> m.Message:
    return _unwire(obj)


# ------------------------------------------------------------------ sockets
@dataclass
class ShardSockets:
    """Every shard's IKE sockets, opened by the primary in the order the steering program assumes.

    Port 500: shard k's socket is reuseport slot k. Port 4500: shard 0's socket first (slot 0),
    then the worker's ESP socket (slot 1, it binds in DataPlane.start()), then shards 1.. (slots
    2..). ``attach`` installs both programs once everything is bound.
    """

    count: int
    ipv6: bool = True
    ports: tuple[int, int] = (IKE_PORT, NATT_PORT)  # other ports only in tests
    socks: dict[tuple[int, int, int], socket.socket] = field(default_factory=dict)  # (shard, family, port)
    families: list[socket.AddressFamily] = field(default_factory=list)

    def open_first(self) -> dict[tuple[int, int], socket.socket]:
        """Port 500 of every shard and 4500 of shard 0; returns shard 0's for its IkeTransport."""
        ike, natt = self.ports
        fams = [socket.AF_INET] + ([socket.AF_INET6] if self.ipv6 and socket.has_ipv6 else [])
        for fam in fams:
            try:
                self.socks[(0, fam, ike)] = open_ike_socket(fam, ike, reuseport=True)
            except OSError as e:
                if fam == socket.AF_INET6 and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    continue
                raise
            self.families.append(fam)
            for k in range(1, self.count):
                self.socks[(k, fam, ike)] = open_ike_socket(fam, ike, reuseport=True)
            self.socks[(0, fam, natt)] = open_ike_socket(fam, natt, reuseport=True)
        return self.of(0)

    def open_rest(self, esp_first: dict[int, bool]) -> None:
        """4500 of shards 1.. (after the worker's socket); then the programs.
        ``esp_first[family]``: the worker's socket joined 4500 before shard 0's (never, as we
        start it; kept so a different start order is still steered right)."""
        ike, natt_port = self.ports
        for fam in self.families:
            for k in range(1, self.count):
                self.socks[(k, fam, natt_port)] = open_ike_socket(fam, natt_port, reuseport=True)
        for fam in self.families:
            attach_reuseport_program(self.socks[(0, fam, ike)], ike_steering_program(list(range(self.count))))
            natt = self.socks[(0, fam, natt_port)]
            if fam in esp_first:  # a worker socket is in the group
                first, esp = (1, 0) if esp_first[fam] else (0, 1)
                slots = [first] + [k + 1 for k in range(1, self.count)]
            else:  # no worker (--no-dataplane): ESP to shard 0, which counts and drops it
                esp, slots = 0, list(range(self.count))
            attach_reuseport_program(natt, ike_steering_program(slots, esp_slot=esp))

    def of(self, shard: int) -> dict[tuple[int, int], socket.socket]:
        return {(fam, port): s for (k, fam, port), s in self.socks.items() if k == shard}

    def close_shard(self, shard: int) -> None:
        """The primary's copies of a started shard's sockets (the shard holds its own)."""
        for key in [key for key in self.socks if key[0] == shard]:
            self.socks.pop(key).close()


def describe_fds(socks: dict[tuple[int, int], socket.socket]) -> str:
    """``family:port:fd,...`` for a shard's command line."""
    return ",".join(f"{int(fam)}:{port}:{s.fileno()}" for (fam, port), s in socks.items())


def parse_fds(text: str) -> dict[tuple[int, int], socket.socket]:
    out: dict[tuple[int, int], socket.socket] = {}
    for part in filter(None, text.split(",")):
        fam, port, fd = (int(x) for x in part.split(":"))
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        out[(socket.AddressFamily(fam), port)] = s
    return out


# ------------------------------------------------------------------ the primary's view of the shards
@dataclass
class ShardProcess:
    index: int
    proc: asyncio.subprocess.Process
    link: ShardLink


class ShardHub:
    """The primary's handle on shards 1..N-1: starts them, calls them, stops them."""

    def __init__(self, count: int, handlers: dict[str, Handler], on_lost: Callable[[int], None]) -> None:
        self.count = count
        self.handlers = handlers
        self.on_lost = on_lost
        self.shards: list[ShardProcess] = []
        self.stopping = False

    async def spawn(self, index: int, sockets: dict[tuple[int, int], socket.socket], argv: list[str],
                    worker: socket.socket | None = None) -> None:
        """Start shard ``index`` with its IKE sockets and ``worker``, its control socket to the
        data-plane worker (None: --no-dataplane); our copies of both are closed by the caller."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno()] + [s.fileno() for s in sockets.values()] + ([worker.fileno()] if worker else [])
        # systemd talks to the primary only; the shard imports the same tree as we do
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ipsecd", *argv, "--shard", f"{index}/{self.count}",
            "--shard-link", str(theirs.fileno()), "--shard-sockets", describe_fds(sockets),
            *(["--shard-worker", str(worker.fileno())] if worker else []),
            pass_fds=fds, env=env, stdin=asyncio.subprocess.DEVNULL,
        )
        theirs.close()
        link = ShardLink(mine, self.handlers, f"shard {index}")
        link.on_closed = lambda: self._lost(index)
        await link.start()
        self.shards.append(ShardProcess(index, proc, link))
        log.info("IKE shard %d of %d started: pid %d", index, self.count, proc.pid)

    def _lost(self, index: int) -> None:
        if not self.stopping:
            self.on_lost(index)

    async def gather(self, op: str, *, skip: int = 0, **args: Any) -> list[Any]:
        """``op`` on every shard (but ``skip``); a shard that fails to answer is logged and left out."""
        asked = [s for s in self.shards if s.index != skip]
        results = await asyncio.gather(*(s.link.call(op, **args) for s in asked), return_exceptions=True)
        out = []
        for s, r in zip(asked, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("shard %d did not answer %s: %s", s.index, op, r)
            else:
                out.append(r)
        return out

    def route_event(self, ev: m.LifetimeReached) -> bool:
        """A worker event about a shard's Child SA (its reqid says which): forwarded; False: ours."""
        owner = Shard(0, self.count).owner_of_number(ev.reqid)
        for s in self.shards:
            if s.index == owner:
                s.link.notify("dataplane_event", event=encode_event(ev))
                return True
        return False

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask every shard to stop (each deletes its SAs) and wait; SIGKILL what is left.

        Shards ignore SIGTERM (a service manager signals the whole group): the link says when."""
        self.stopping = True
        for s in self.shards:
            s.link.notify("stop")
        waits = [s.proc.wait() for s in self.shards]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            for s in self.shards:
                if s.proc.returncode is None:
                    log.error("shard %d did not stop in %.0f s: killed", s.index, timeout)
                    with contextlib.suppress(ProcessLookupError):
                        s.proc.kill()
        for s in self.shards:
            s.link.close()


def merge_pools(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``list-pools`` across shards: every shard leases its own share of each pool (pools.py),
    so a pool's online and offline counts add up and its leases are every shard's."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for entry in part:
            have = out.get(entry["name"])
            if have is None:
                out[entry["name"]] = dict(entry)
                continue
            have["online"] += entry["online"]
            have["offline"] += entry["offline"]
            if "leases" in have:
                have["leases"] = sorted(have["leases"] + entry.get("leases", []),
                                        key=lambda lease: ip_address(lease["address"]))
    return list(out.values())


def merge_counts(parts: list[Any]) -> Any:
    """Sum of counters shaped alike (dicts of numbers, nested): ``stats`` across shards."""
    dicts = [p for p in parts if isinstance(p, dict)]
    if dicts:
        out: dict[str, Any] = {}
        for d in dicts:
            for k in d:
                if k not in out:
                    out[k] = merge_counts([x.get(k) for x in dicts if k in x])
        return out
    nums = [p for p in parts if isinstance(p, int | float) and not isinstance(p, bool)]
    if nums and len(nums) == len(parts):
        return sum(nums)
    return parts[0] if parts else None
