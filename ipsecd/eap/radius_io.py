"""The asyncio shell around :class:`~ipsecd.eap.radius.RadiusClient`: one UDP socket and one timer.

Usage (in the daemon, or a test)::

    io = RadiusIo(RadiusClient(servers, settings))
    await io.open()                       # or open(sock=...) with a socket made elsewhere
    answer = await io.access(request)     # AccessRequest -> RadiusAnswer (TIMEOUT if no server answered)
    acked = await io.account(record)      # AccountingRecord -> True when a server acknowledged it
    io.close()

All protocol decisions (retransmission, failover, verification) stay in the sans-I/O
client; this class only moves datagrams, arms ``loop.call_at`` for ``next_timer()``
and resolves one future per request handle.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ipsecd.eap.radius import AccessRequest, AccountingRecord, AnswerKind, RadiusAnswer, RadiusClient


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: RadiusIo) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._received(data, (addr[0], addr[1]))


class RadiusIo:
    def __init__(self, client: RadiusClient) -> None:
        self.client = client
        self._transport: asyncio.DatagramTransport | None = None
        self._futures: dict[int, asyncio.Future[RadiusAnswer]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, sock: socket.socket | None = None, local_addr: tuple[str, int] | None = None) -> None:
        """Bind the client socket: ``sock`` if given (e.g. created in another network namespace)."""
        self._loop = asyncio.get_running_loop()
        if sock is None:
            family = socket.AF_INET6 if ":" in self.client.servers[0].host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind(local_addr or (("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
        sock.setblocking(False)
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_result(RadiusAnswer(AnswerKind.TIMEOUT))
        self._futures.clear()

    async def access(self, request: AccessRequest) -> RadiusAnswer:
        return await self._submit(lambda now: self.client.access_request(request, now))

    async def account(self, record: AccountingRecord) -> bool:
        answer = await self._submit(lambda now: self.client.accounting_request(record, now))
        return answer.kind == AnswerKind.ACCEPT

    async def _submit(self, start: Any) -> RadiusAnswer:
        assert self._loop is not None, "RadiusIo.open() first"
        fut: asyncio.Future[RadiusAnswer] = self._loop.create_future()
        handle = start(self._loop.time())
        self._futures[handle] = fut
        self._flush()
        return await fut

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._loop is not None
        self.client.receive_datagram(data, addr, self._loop.time())
        self._flush()

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self.client.handle_timer(self._loop.time())
        self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        if self._transport is not None:
            for data, addr in self.client.datagrams_to_send():
                self._transport.sendto(data, addr)
        while (event := self.client.next_event()) is not None:
            fut = self._futures.pop(event.handle, None)
            if fut is not None and not fut.done():
                fut.set_result(event.answer)
        deadline = self.client.next_timer()
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
