"""The control socket server: newline-delimited JSON over a Unix socket (see protocol.py).

Access control is the file system: the socket is mode 0660 in a 0750 directory,
so root and the daemon's group may talk to it and nobody else can even reach
it. An existing directory is checked before binding (see ``_prepare_dir``): one
that holds only the socket is the daemon's own and gets its owner and mode fixed;
a shared one must be safe as it is, or the daemon refuses to start.

No request can crash the server: a malformed line (too long, too deeply nested,
not JSON) gets an error answer and the connection stays usable; a failing
handler is logged and answered as an internal error. Local clients cannot pin
the daemon either: at most ``max_clients`` connections at once (log followers
included), and a connection that sends no complete request for ``idle_timeout``
seconds is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ipsecd.control.protocol import (
    EXPORT_FORMATS,
    MAX_REQUEST_BYTES,
    ControlError,
    ControlHandler,
    ProtocolError,
    Request,
    Response,
)
from ipsecd.logsafe import safe
from ipsecd.ratelimit import RateLimitedLogger

log = logging.getLogger("ipsecd.ctl")

SOCKET_MODE = 0o660
DIR_MODE = 0o750
MAX_CLIENTS = 32
"""Concurrent control connections. ipsecctl holds one for a single command; a monitoring
script or two and a few ``log --follow`` sessions stay far below it."""
IDLE_TIMEOUT = 60.0
"""Seconds a connection may wait between requests (``up`` may run longer: that is not idle)."""
_AUDITED = frozenset({"up", "down", "reload", "export-keys"})
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


async def stop_serving(server: asyncio.AbstractServer | None, clients: set[asyncio.Task[None]]) -> None:
    """Stop accepting, cancel every client task and wait for them, then for the server to close.

    Shared by the control socket and the metrics endpoint: a client blocked in a read must
    not keep the daemon from shutting down.
    """
    if server is not None:
        server.close()
    for task in list(clients):
        task.cancel()
    if clients:
        await asyncio.gather(*clients, return_exceptions=True)
    if server is not None:
        with contextlib.suppress(Exception):
            await server.wait_closed()


class ControlServer:
    """Serves one ControlHandler on a Unix socket at ``path``."""

    def __init__(self, path: str | os.PathLike[str], handler: ControlHandler, *, max_clients: int = MAX_CLIENTS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.path = Path(path)
        self.handler = handler
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None
        self._rl = RateLimitedLogger(log)

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and start accepting clients."""
        self._prepare_path()
        self._server = await asyncio.start_unix_server(self._serve_client, path=str(self.path), limit=MAX_REQUEST_BYTES)
        # chmod after bind rather than relying on the umask, which differs between
        # a systemd unit, a shell and a test run.
        os.chmod(self.path, SOCKET_MODE)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        log.info("control socket listening on %s", self.path)

    async def close(self) -> None:
        """Stop accepting, end every client (including log followers), remove the socket file."""
        await stop_serving(self._server, self._clients)
        self._server = None
        self._remove_own_socket()

    # ---- socket file handling

    def _prepare_path(self) -> None:
        self._prepare_dir(self.path.parent)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        if _socket_alive(self.path):
            raise ControlError(f"another process is already serving {self.path} (is ipsecd already running?)")
        log.info("removing stale control socket %s", self.path)
        self.path.unlink()

    def _prepare_dir(self, parent: Path) -> None:
        """Make sure nobody but us (and root) can replace the socket in ``parent``.

        A directory holding nothing but (a stale) socket is the daemon's own runtime
        directory, whatever a previous run or an admin left: it gets our owner (when we
        are root) and loses every mode bit beyond 0750 (a 0777 one would let any local
        user swap the socket for a fake daemon). A directory holding other files is shared
        (``/run``, ``/tmp``): it is left alone if it is safe as it is - owned by us or
        root, and not writable by others unless sticky - and refused otherwise.
        """
        if not parent.exists():
            parent.mkdir(parents=True, mode=DIR_MODE)
            os.chmod(parent, DIR_MODE)  # mkdir's mode is filtered by the umask
            return
        st = os.stat(parent)
        if not stat.S_ISDIR(st.st_mode):
            raise ControlError(f"{parent} is not a directory")
        euid, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
        dedicated = set(os.listdir(parent)) <= {self.path.name}
        if dedicated:
            if st.st_uid != euid:
                if euid != 0:
                    raise ControlError(f"control socket directory {parent} is owned by uid {st.st_uid}, not by us "
                                       f"(uid {euid}): remove it or chown it")
                os.chown(parent, euid, os.getegid())
                log.warning("control socket directory %s was owned by uid %d: now ours", parent, st.st_uid)
            if mode & ~DIR_MODE:
                os.chmod(parent, mode & DIR_MODE)
                log.warning("control socket directory %s had mode %04o: now %04o", parent, mode, mode & DIR_MODE)
            return
        if st.st_uid not in (euid, 0):
            raise ControlError(f"control socket directory {parent} is owned by uid {st.st_uid}: that user could "
                               "replace the socket; use a directory of root's or ipsecd's own")
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            raise ControlError(f"control socket directory {parent} is writable by others (mode {mode:04o}) and "
                               "not sticky: anyone could replace the socket; use a dedicated directory")

    def _remove_own_socket(self) -> None:
        # Only unlink the file we bound: a second daemon may have replaced it meanwhile.
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        self._inode = None

    # ---- clients

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.max_clients:
            self._rl.log(logging.WARNING, "ctl_clients", "control socket: %d clients connected, refusing another "
                         "(%s)", len(self._clients), _peer(writer))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_send(writer, Response(
                    False, error=f"too many control connections ({self.max_clients}); try again later")), 1.0)
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-answer: nothing to tell anyone
        except asyncio.CancelledError:
            pass  # server closing
        except Exception:
            log.exception("control connection failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    line = await reader.readline()
            except TimeoutError:
                await _send(writer, Response(False, error=f"no request for {self.idle_timeout:g} s: closing"))
                return
            except ValueError:  # longer than MAX_REQUEST_BYTES: the stream cannot be resynchronised
                await _send(writer, Response(False, error=f"request longer than {MAX_REQUEST_BYTES} bytes"))
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                request = Request.decode(line)
            except ProtocolError as exc:
                await _send(writer, Response(False, error=f"malformed request: {exc}"))
                continue
            if request.cmd in _AUDITED:
                log.info("control: %s %s by %s", request.cmd, safe(request.args, 80), _peer(writer))
            if request.cmd == "log":
                await self._follow_logs(request, reader, writer)
                return
            writer.write(await self._dispatch(request))
            await writer.drain()

    async def _dispatch(self, request: Request) -> bytes:
        """The encoded answer; encoding inside the try turns a non-JSON result into an error reply."""
        try:
            call = self._handler_call(request)
            return Response(True, await call()).encode()
        except ControlError as exc:
            return Response(False, error=str(exc)).encode()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("control command %s failed", safe(request.cmd, 64))
            return Response(False, error=f"internal error while handling '{safe(request.cmd, 64)}' "
                            "(see the ipsecd log)").encode()

    def _handler_call(self, request: Request) -> Callable[[], Awaitable[Any]]:
        h, args = self.handler, request.args
        simple: dict[str, Callable[[], Awaitable[Any]]] = {
            "status": h.status,
            "list-conns": h.list_conns,
            "list-sas": h.list_sas,
            "list-certs": h.list_certs,
            "stats": h.stats,
            "reload": h.reload,
        }
        if request.cmd in simple:
            return simple[request.cmd]
        if request.cmd in ("up", "down"):
            name = args.get("name")
            if not isinstance(name, str) or not name:
                raise ControlError(f"'{request.cmd}' needs a connection name")
            method = h.up if request.cmd == "up" else h.down
            return lambda: method(name)
        if request.cmd == "list-pools":
            leases, pool = args.get("leases", False), args.get("name")
            if not isinstance(leases, bool) or not (pool is None or isinstance(pool, str)):
                raise ControlError("'list-pools' takes {\"leases\": true|false, \"name\": \"POOL\"}")
            return lambda: h.list_pools(leases, pool)
        if request.cmd == "redirect":
            conn, to, full_at = args.get("name"), args.get("to"), args.get("full_at", 0)
            if (not (conn is None or (isinstance(conn, str) and conn)) or not (to is None or isinstance(to, str))
                    or not isinstance(full_at, int) or isinstance(full_at, bool) or full_at < 0):
                raise ControlError("'redirect' takes {\"name\": \"CONN\" or null for all, \"to\": \"GATEWAY\" or null "
                                   "to stop, \"full_at\": 0 (drain) or a number of IKE SAs}")
            return lambda: h.redirect(conn, to, full_at)
        if request.cmd == "export-keys":
            fmt = args.get("format", "wireshark")
            if fmt not in EXPORT_FORMATS:
                raise ControlError(f"unknown export format {fmt!r} (expected: {', '.join(EXPORT_FORMATS)})")
            return lambda: h.export_keys(fmt)
        raise ControlError(f"unknown command '{safe(request.cmd, 64)}'")

    async def _follow_logs(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if request.args.get("follow") is not True:
            await _send(writer, Response(False, error="'log' needs {\"follow\": true}; ipsecd keeps no log history"))
            return
        try:
            records = self.handler.subscribe_logs()
        except ControlError as exc:
            await _send(writer, Response(False, error=str(exc)))
            return
        await _send(writer, Response(True, {"follow": True}))
        pump = asyncio.create_task(_pump_logs(records, writer))
        # The client never writes again; its EOF (or the pump ending) ends the stream.
        # Waiting on both notices a closed client even while no log record arrives.
        eof = asyncio.create_task(_drain_until_eof(reader))
        try:
            await asyncio.wait({pump, eof}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, eof):
                task.cancel()
            await asyncio.gather(pump, eof, return_exceptions=True)
            aclose = getattr(records, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()  # lets the handler unsubscribe


async def _pump_logs(records: AsyncIterator[str], writer: asyncio.StreamWriter) -> None:
    async for record in records:
        await _send(writer, Response(True, log=record))


async def _drain_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def _send(writer: asyncio.StreamWriter, response: Response) -> None:
    writer.write(response.encode())
    await writer.drain()


def _peer(writer: asyncio.StreamWriter) -> str:
    """Who is on the other end (SO_PEERCRED), for the audit line of commands that change things."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (AttributeError, OSError, struct.error):
        return "an unknown client"
    return f"uid {uid} (pid {pid})"


def _socket_alive(path: Path) -> bool:
    """True if something accepts connections on ``path`` (a running daemon), False if stale."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise ControlError(f"cannot check existing socket {path}: {exc.strerror}") from None
        return True
