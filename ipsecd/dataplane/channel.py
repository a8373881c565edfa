"""``WorkerChannel``: the control process's end of the worker socket (asyncio).

Framing and encoding are messages.py's; this object numbers requests, matches the worker's
``Ack``/``BatchAck``/``Counters``/``Heard``/``Totals`` to them, hands events to a callback, and coalesces requests:
everything queued while the previous frame was being written leaves as one ``Batch``
(at most ``MAX_BATCH`` requests). Under a login storm a thousand concurrent installs then
cost a few frames instead of a thousand, with no delay added when there is no storm (a lone
request leaves on the next loop iteration, as a frame of its own).

Ordering is kept: requests leave in the order they were made and the worker applies a
Batch in order, so ``await request(...)`` returning means that request, and everything
requested before it, is in effect in the worker -- what the daemon's ordering contract
needs (the inbound SA is installed before the IKE response leaves; ike/manager.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections import deque
from collections.abc import Callable

from ipsecd.dataplane import messages as m
from ipsecd.errors import IpsecdError

log = logging.getLogger("ipsecd.esp")

REQUEST_TIMEOUT = 10.0
MAX_BATCH = 128  # requests per Batch frame: a few hundred KiB, far below messages.MAX_FRAME
_BATCHABLE = frozenset(m.BATCH_REQUESTS)


class DataPlaneError(IpsecdError):
    """The worker refused a request, is not running, or did not answer in time."""


class WorkerChannel:
    """Requests to and replies, events from one worker over a connected stream socket."""

    def __init__(self, sock: socket.socket, on_event: Callable[[m.Event], None]) -> None:
        self._sock = sock
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[m.Message]] = {}
        self._queue: deque[m.Message] = deque()
        self._wakeup = asyncio.Event()
        # (deadline, id) of the requests in the order made: the timeout is the same for all,
        # so one timer at the head serves them (asyncio.wait_for per request cost ~5 us and a
        # timer handle each, for an answer that comes in a millisecond)
        self._deadlines: deque[tuple[float, int]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.hello: asyncio.Future[m.Hello] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.frames_sent = 0  # frames written (a Batch counts once): what coalescing saved
        self.requests_sent = 0

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._read_loop(), name="dataplane-reader"))
        self._tasks.append(asyncio.create_task(self._write_loop(), name="dataplane-writer"))

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.closed = True
        self._sock.close()

    async def request(self, build: Callable[[int], m.Message]) -> m.Message:
        """Send ``build(id)`` and wait for its answer; a refusal raises DataPlaneError."""
        if self.closed:
            raise DataPlaneError("data plane worker is not running")
        ident = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[m.Message] = loop.create_future()
        self._pending[ident] = fut
        self._deadlines.append((loop.time() + REQUEST_TIMEOUT, ident))
        if self._expiry is None:
            self._expiry = loop.call_at(self._deadlines[0][0], self._expire)
        try:
            self.send(build(ident))
            reply = await fut
        finally:
            self._pending.pop(ident, None)
            # a failed request (no answer in time, the worker gone): the exception's traceback
            # holds this frame, which would hold the future, which holds the exception -- a
            # reference cycle per failed request, left to the cyclic GC (issue 11)
            del fut
        if isinstance(reply, m.Ack) and not reply.ok:
            raise DataPlaneError(reply.error)
        return reply

    def _expire(self) -> None:
        """Requests unanswered for REQUEST_TIMEOUT fail; the timer moves to the next deadline."""
        loop = asyncio.get_running_loop()
        now, q = loop.time(), self._deadlines
        while q and q[0][0] <= now:
            fut = self._pending.get(q.popleft()[1])
            if fut is not None and not fut.done():
                fut.set_exception(DataPlaneError("data plane worker did not answer"))
        self._expiry = loop.call_at(q[0][0], self._expire) if q else None

    def send(self, msg: m.Message) -> None:
        """Queue a message for the worker without waiting for an answer."""
        self._queue.append(msg)
        self._wakeup.set()

    def fail_pending(self, exc: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        if not self.hello.done():
            self.hello.set_exception(exc)

    def _take(self) -> list[m.Message]:
        """The next frame's messages: a lone message, or the batchable requests queued in a row."""
        q = self._queue
        msgs = [q.popleft()]
        if type(msgs[0]) in _BATCHABLE:
            while q and len(msgs) < MAX_BATCH and type(q[0]) in _BATCHABLE:
                msgs.append(q.popleft())
        return msgs

    def _encode(self, msgs: list[m.Message]) -> bytes:
        """One frame for ``msgs``. A Batch too large for a frame keeps its first half (``msgs``
        is shortened in place) and puts the rest back at the head of the queue."""
        while len(msgs) > 1:
            try:
                return m.encode(m.Batch(tuple(msgs)))  # type: ignore[arg-type]
            except m.ProtocolError:
                half = len(msgs) // 2
                self._queue.extendleft(reversed(msgs[half:]))
                del msgs[half:]
        return m.encode(msgs[0])

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                msgs = self._take()
                try:
                    frame = self._encode(msgs)
                except Exception as e:  # ProtocolError, or a bug: these requests fail, the others go on
                    self._fail(msgs, DataPlaneError(f"cannot send to the data plane worker: {e}"))
                    continue
                try:
                    await loop.sock_sendall(self._sock, frame)
                except OSError as e:
                    self._fail(msgs, DataPlaneError(f"cannot reach the data plane worker: {e}"))
                    continue
                self.frames_sent += 1
                self.requests_sent += len(msgs)

    def _fail(self, msgs: list[m.Message], exc: Exception) -> None:
        for msg in msgs:
            fut = self._pending.get(getattr(msg, "id", 0))
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        decoder = m.FrameDecoder()
        while True:
            try:
                data = await loop.sock_recv(self._sock, 1 << 20)
            except OSError:
                data = b""
            if not data:
                return
            try:
                msgs = decoder.feed(data)
            except m.ProtocolError as e:
                log.error("undecodable message from the data plane: %s", e)
                return
            for msg in msgs:
                self._dispatch(msg)

    def _resolve(self, reply: m.Ack | m.Counters | m.Heard | m.Totals) -> None:
        fut = self._pending.get(reply.id)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def _dispatch(self, msg: m.Message) -> None:
        if isinstance(msg, m.Hello):
            if not self.hello.done():
                self.hello.set_result(msg)
        elif isinstance(msg, m.Ack | m.Counters | m.Heard | m.Totals):
            self._resolve(msg)
        elif isinstance(msg, m.BatchAck):
            for ack in msg.acks:
                self._resolve(ack)
        elif isinstance(msg, m.Acquire | m.UnknownSpiReport | m.LifetimeReached | m.WorkerError):
            if isinstance(msg, m.WorkerError):
                log.error("data plane: %s", msg.message)
            self._on_event(msg)
        else:
            log.warning("unexpected message from the data plane: %s", type(msg).__name__)
