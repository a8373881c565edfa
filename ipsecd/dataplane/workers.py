"""The worker processes of one ``DataPlane``: their fds, start, channels, exit and stop.

One worker (``settings.dataplane.workers: 1``, the default) is what the data plane always
was. With N > 1 every worker gets its own TUN queue (``IFF_MULTI_QUEUE``), its own UDP 4500
socket in the reuseport group and its own raw ESP/AH sockets (filtered by SPI), plus the
hand-over inboxes (handoff.py); esp_steering.py sends each SPI's packets to its owner. This
module only starts and watches the processes; which worker gets which request is
client.py's decision (``owner_of_spi``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.channel import REQUEST_TIMEOUT, DataPlaneError, WorkerChannel
from ipsecd.dataplane.handoff import owner_of_spi
from ipsecd.esp.sa import SaParams
from ipsecd.esp.spd import Policy

log = logging.getLogger("ipsecd.esp")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class WorkerFds:
    """What one worker is started with (the control process closes its copies afterwards)."""

    tun: int
    udp: list[socket.socket] = field(default_factory=list)
    raw: list[socket.socket] = field(default_factory=list)
    ah: list[socket.socket] = field(default_factory=list)
    inbox: socket.socket | None = None
    peers: dict[int, socket.socket] = field(default_factory=dict)  # other workers' inbox senders
    shard_controls: list[socket.socket] = field(default_factory=list)  # IKE shards' links (worker 0 only)

    def argv(self, index: int, control: socket.socket) -> list[str]:
        out = ["--control", str(control.fileno()), "--tun", str(self.tun)]
        out += [a for s in self.udp for a in ("--udp", str(s.fileno()))]
        out += [a for s in self.raw for a in ("--raw", str(s.fileno()))]
        out += [a for s in self.ah for a in ("--ah", str(s.fileno()))]
        if self.inbox is not None:
            out += ["--index", str(index), "--inbox", str(self.inbox.fileno())]
            out += [a for k, s in self.peers.items() for a in ("--peer", f"{k}:{s.fileno()}")]
        out += [a for s in self.shard_controls for a in ("--shard-control", str(s.fileno()))]
        return out

    def pass_fds(self) -> list[int]:
        socks = [*self.udp, *self.raw, *self.ah, *self.peers.values(), *self.shard_controls]
        if self.inbox is not None:
            socks.append(self.inbox)
        return [self.tun, *(s.fileno() for s in socks)]


@dataclass
class WorkerProc:
    index: int
    proc: asyncio.subprocess.Process
    channel: WorkerChannel
    watcher: asyncio.Task[None] | None = None


class WorkerSet:
    """N worker processes (N >= 1): start, request one or all, watch, stop."""

    def __init__(self, emit: Callable[[m.Event], None]) -> None:
        self._emit = emit
        self.procs: list[WorkerProc] = []
        self.stopping = False

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(w.proc.returncode is None for w in self.procs)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.procs]

    def __len__(self) -> int:
        return len(self.procs)

    async def spawn(self, python: str, log_level: str, fds: list[WorkerFds]) -> None:
        """Start one process per ``fds`` entry; the caller closes its copies of the fds."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        for index, f in enumerate(fds):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                ours.setblocking(False)
                argv = [python, "-m", "ipsecd.dataplane.worker", *f.argv(index, theirs), "--log-level", log_level]
                proc = await asyncio.create_subprocess_exec(
                    *argv, pass_fds=[theirs.fileno(), *f.pass_fds()], env=env, stdin=asyncio.subprocess.DEVNULL)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self.procs.append(WorkerProc(index, proc, WorkerChannel(ours, self._emit)))

    async def handshake(self, config: Callable[[int], m.WorkerConfig]) -> None:
        """Channels up, every worker's Hello checked and its Configure acknowledged."""
        for w in self.procs:
            w.channel.start()
            w.watcher = asyncio.create_task(self._watch(w), name=f"dataplane-watch-{w.index}")
        for w in self.procs:
            hello = await asyncio.wait_for(w.channel.hello, REQUEST_TIMEOUT)
            if hello.version != m.PROTOCOL_VERSION:
                raise DataPlaneError(f"worker speaks protocol {hello.version}, expected {m.PROTOCOL_VERSION}")
            cfg = config(w.index)
            await self.request(w.index, lambda i, cfg=cfg: m.Configure(cfg, id=i))  # type: ignore[misc]

    async def request(self, index: int, build: Callable[[int], m.Message]) -> m.Message:
        if not self.procs or index >= len(self.procs):
            raise DataPlaneError("data plane worker is not running")
        w = self.procs[index]
        if w.proc.returncode is not None or w.channel.closed:
            raise DataPlaneError("data plane worker is not running")
        return await w.channel.request(build)

    async def broadcast(self, build: Callable[[int], m.Message]) -> list[m.Message]:
        """The same request to every worker, concurrently; the first refusal raises."""
        return list(await asyncio.gather(*(self.request(w.index, build) for w in self.procs)))

    async def _watch(self, w: WorkerProc) -> None:
        rc = await w.proc.wait()
        w.channel.fail_pending(DataPlaneError(f"data plane worker exited ({rc})"))
        if not self.stopping:
            log.error("data plane worker %d (pid %s) exited unexpectedly with status %s", w.index, w.proc.pid, rc)
            self._emit(m.WorkerExited(rc, f"worker {w.index} exited unexpectedly"))

    async def stop(self) -> None:
        """Shutdown message to each, wait, kill after 3 s."""
        self.stopping = True
        for w in self.procs:
            if w.proc.returncode is None and not w.channel.closed:
                w.channel.send(m.Shutdown())
        for w in self.procs:
            if w.proc.returncode is None:
                try:
                    await asyncio.wait_for(w.proc.wait(), 3.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
                    await w.proc.wait()
        for w in self.procs:
            if w.watcher is not None:
                w.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w.watcher
            await w.channel.close()
            w.channel.fail_pending(DataPlaneError("data plane stopped"))
        self.procs.clear()


class Owners:
    """Which worker holds each reqid's SA pair, and the requests that keep that true.

    The owner is chosen by the inbound SPI (handoff.py ``owner_of_spi``), because the kernel
    steers received ESP by SPI (esp_steering.py). Every other worker gets the reqid's policies
    (its TUN queue reads packets of the reqid too) and a ``SetOwner`` telling it where to hand
    them. A rekey whose new inbound SPI belongs to another worker moves the pair: the new
    inbound SA goes to the new owner first (RFC 7296 2.8: receive on it before sending), the
    new outbound SA too, then ``SetOwner`` makes the old owner stop sending on its old SA; its
    old inbound SA stays until IKE deletes it. With one worker every method sends exactly the
    one request it always did.
    """

    def __init__(self, workers: WorkerSet, count: int) -> None:
        self._workers = workers
        self.count = count
        self.owner: dict[int, int] = {}  # reqid -> worker holding its outbound SA
        self._next: dict[int, int] = {}  # reqid -> worker of the rekey's new inbound SA (install_inbound)

    def of_spi(self, spi: int) -> int:
        return owner_of_spi(spi, self.count)

    def of_reqid(self, reqid: int) -> int:
        return self.owner.get(reqid, 0)

    async def install(self, reqid: int, inbound: SaParams | None, outbound: SaParams | None,
                      build: Callable[[int, tuple[Policy, ...]], m.Message], policies: tuple[Policy, ...]) -> None:
        """``build(id, policies)`` is the InstallSa; the other workers get the policies alone."""
        if self.count == 1:
            await self._workers.request(0, lambda i: build(i, policies))
            return
        k = self.of_spi(inbound.spi) if inbound is not None else self._next.get(reqid, self.of_reqid(reqid))
        if outbound is None and reqid in self.owner and self.owner[reqid] != k:
            # an inbound SA alone for a reqid another worker sends for: as install_inbound
            await self._workers.request(k, lambda i: build(i, policies))
            self._next[reqid] = k
            return
        self._next.pop(reqid, None)
        await self._workers.request(k, lambda i: build(i, policies))
        self.owner[reqid] = k
        await self._tell_others(reqid, k, policies, build)

    async def _tell_others(self, reqid: int, k: int, policies: tuple[Policy, ...],
                           build: Callable[[int, tuple[Policy, ...]], m.Message]) -> None:
        jobs = []
        for j in range(self.count):
            if j == k:
                jobs.append(self._workers.request(j, lambda i: m.SetOwner(reqid, -1, id=i)))
                continue
            if policies:  # an InstallSa without SAs: the policies only, for reading them off the TUN
                template = build(0, policies)
                assert isinstance(template, m.InstallSa)
                only = m.InstallSa(reqid, None, None, policies, template.mtu)
                jobs.append(self._workers.request(j, lambda i, o=only: dataclasses.replace(o, id=i)))  # type: ignore[misc]
            jobs.append(self._workers.request(j, lambda i: m.SetOwner(reqid, k, id=i)))
        await asyncio.gather(*jobs)

    async def install_inbound(self, reqid: int, inbound: SaParams, build: Callable[[int], m.Message]) -> None:
        k = self.of_spi(inbound.spi) if self.count > 1 else 0
        await self._workers.request(k, build)
        if self.count > 1:
            self._next[reqid] = k

    async def install_outbound(self, reqid: int, build: Callable[[int], m.Message]) -> None:
        if self.count == 1:
            await self._workers.request(0, build)
            return
        k = self._next.pop(reqid, self.of_reqid(reqid))
        await self._workers.request(k, build)
        if self.owner.get(reqid) != k:
            self.owner[reqid] = k
            await self._tell_others(reqid, k, (), lambda i, p: build(i))

    async def delete_inbound(self, spis: tuple[int, ...]) -> None:
        by_worker: dict[int, list[int]] = {}
        for spi in spis:
            by_worker.setdefault(self.of_spi(spi) if self.count > 1 else 0, []).append(spi)
        await asyncio.gather(*(self._workers.request(k, _delete_inbound(tuple(v))) for k, v in by_worker.items()))

    def forget(self, reqid: int) -> None:
        self.owner.pop(reqid, None)
        self._next.pop(reqid, None)

    def clear(self) -> None:
        self.owner.clear()
        self._next.clear()


def _delete_inbound(spis: tuple[int, ...]) -> Callable[[int], m.Message]:
    return lambda i: m.DeleteSa(None, spis, policies=False, id=i)


def merge_counters(replies: list[m.Message]) -> m.Counters:
    """Every worker's counters as one: SAs side by side (each lives in one worker), drops and
    statistics summed (``ipsecctl`` and the metrics show the whole data plane)."""
    counters = [r for r in replies if isinstance(r, m.Counters)]
    if len(counters) == 1:
        return counters[0]
    sas: list[m.SaCounterSnapshot] = []
    drops: dict[str, int] = {}
    stats: dict[str, int] = {}
    for c in counters:
        sas += c.sas
        for total, part in ((drops, c.drops), (stats, c.stats)):
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
    return m.Counters(0, tuple(sas), drops, stats)
