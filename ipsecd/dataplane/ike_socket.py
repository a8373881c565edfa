"""IKE's UDP sockets on ports 500 and 4500, IPv4 and IPv6, for the control-plane process.

Sockets are bound to the wildcard address with IP_PKTINFO so one socket serves
every local address and replies leave from the address the request came to.
On 4500, IKE travels behind the 4-byte non-ESP marker (RFC 3948 2.2); the data
plane worker binds the same port with SO_REUSEPORT and a steering program so
ESP-in-UDP reaches the worker, not this process.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address

from ipsecd.iana import IKE_PORT, NATT_PORT, NON_ESP_MARKER
from ipsecd.ratelimit import RateLimitedLogger

log = logging.getLogger("ipsecd.net")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", 15)
MAX_DATAGRAM = 65535
RECEIVE_BUFFER = 4 << 20  # bytes; the kernel doubles it for bookkeeping
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
MAX_LOCAL_ADDRESSES = 256  # source addresses whose PKTINFO is kept ready
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex

Endpoint = tuple[str, int]
Received = tuple[bytes, Endpoint, Endpoint]  # (data, local, remote)
Receiver = Callable[[list[Received]], None]


def open_ike_socket(family: socket.AddressFamily, port: int, *, reuseport: bool = False) -> socket.socket:
    """A non-blocking wildcard UDP socket reporting each datagram's local address.

    4500 always joins a reuseport group (the worker's ESP socket shares it); ``reuseport``
    makes 500 one too, for IKE shards (shell/shards.py)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if port == NATT_PORT or reuseport:
            s.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            s.bind(("::", port))
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            s.bind(("0.0.0.0", port))
        _grow_receive_buffer(s)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def _grow_receive_buffer(s: socket.socket) -> None:
    """A receive buffer for a few thousand IKE datagrams instead of the default few hundred.

    Under a flood the daemon processes tens of thousands of IKE_SA_INIT requests per second
    (the front door), but a shared CPU may deschedule it for tens of milliseconds; with the
    default buffer (~200 KB, ~270 small datagrams) the kernel then drops what arrives
    meanwhile, a legitimate peer's request among them. A larger buffer rides that out; under
    overload it holds at most RECEIVE_BUFFER / (rate x ~700 bytes) of queueing delay.
    SO_RCVBUFFORCE passes net.core.rmem_max as root (we bind before dropping privileges).
    """
    for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, RECEIVE_BUFFER)
            return
        except OSError:
            continue


@dataclass
class IkeTransport:
    """Receives IKE datagrams into ``on_datagrams([(data, local, remote), ...])`` and sends them back out.

    Each wake-up hands over what the socket holds (up to 64 datagrams) as one batch, so the
    owner's per-call work (flushing, re-arming its timer) is paid once per batch, not once
    per datagram of a flood."""

    on_datagrams: Receiver
    ports: tuple[int, ...] = (IKE_PORT, NATT_PORT)
    ipv6: bool = True
    counters: dict[str, int] = field(default_factory=dict)
    # sockets opened by someone else, (family, port) -> socket: an IKE shard's (shell/shards.py)
    given: dict[tuple[int, int], socket.socket] = field(default_factory=dict)
    _socks: dict[tuple[int, int], socket.socket] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _pktinfo: dict[str, list[tuple[int, int, bytes]]] = field(default_factory=dict)
    _rl: RateLimitedLogger = field(default_factory=lambda: RateLimitedLogger(log))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.given:
            for (_fam, port), s in self.given.items():
                self._socks[(_fam, port)] = s
                self._loop.add_reader(s.fileno(), self._readable, s, port)
            return
        families = [socket.AF_INET] + ([socket.AF_INET6] if self.ipv6 and socket.has_ipv6 else [])
        for fam in families:
            for port in self.ports:
                try:
                    s = open_ike_socket(fam, port)
                except OSError as e:
                    if fam == socket.AF_INET6 and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        log.info("IPv6 unavailable, IKE listens on IPv4 only")
                        break
                    raise OSError(e.errno, f"cannot bind UDP port {port}: {e.strerror}") from e
                self._socks[(fam, port)] = s
                self._loop.add_reader(s.fileno(), self._readable, s, port)
        log.info("listening for IKE on UDP %s", ", ".join(str(p) for p in self.ports))

    def close(self) -> None:
        for s in self._socks.values():
            if self._loop is not None:
                self._loop.remove_reader(s.fileno())
            s.close()
        self._socks.clear()

    def send(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        fam = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        port = local[1] if local[1] in self.ports else IKE_PORT
        s = self._socks.get((fam, port))
        if s is None:
            self._count("send_no_socket")
            return
        if port == NATT_PORT:
            data = NON_ESP_MARKER + data
        cmsg = self._pktinfo.get(local[0])
        if cmsg is None:
            cmsg = _pktinfo(local[0])
            if len(self._pktinfo) < MAX_LOCAL_ADDRESSES:  # our own addresses: a few
                self._pktinfo[local[0]] = cmsg
        try:
            s.sendmsg([data], cmsg, 0, remote)
        except OSError as e:
            # e.g. answers to spoofed, unroutable sources or a full send buffer under a flood
            self._count("send_errors")
            self._rl.log(logging.WARNING, f"send:{e.errno}", "cannot send IKE to %s[%d]: %s", remote[0], remote[1],
                         e.strerror)

    def _readable(self, s: socket.socket, port: int) -> None:
        batch: list[Received] = []
        try:
            self._drain(s, port, batch)
        finally:
            if batch:
                self.on_datagrams(batch)

    def _drain(self, s: socket.socket, port: int, batch: list[Received]) -> None:
        for _ in range(64):  # drain, bounded so other work keeps its turn
            try:
                data, anc, _flags, addr = s.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP port unreachable reported on the socket
                self._count("recv_errors")
                log.debug("receive error on port %d: %s", port, e)
                continue
            local_ip = _local_address(anc, s.family)
            if port == NATT_PORT:
                if len(data) == 1 and data == b"\xff":
                    self._count("keepalives")  # RFC 3948 2.3 NAT-keepalive
                    continue
                if not data.startswith(NON_ESP_MARKER):
                    self._count("esp_on_ike_socket")
                    continue
                data = data[len(NON_ESP_MARKER):]
            # interned: every IKE SA keeps its endpoints, and its peers share a few addresses
            # (a NAT, a load generator) -- one string each, not one per SA (issue 11)
            batch.append((data, (sys.intern(local_ip), port), (sys.intern(addr[0]), addr[1])))

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1


def _pktinfo(local_ip: str) -> list[tuple[int, int, bytes]]:
    """The ancillary data that makes a datagram leave from ``local_ip`` (none for a wildcard)."""
    if not local_ip or local_ip in ("0.0.0.0", "::"):
        return []
    src = ip_address(local_ip)
    if isinstance(src, IPv6Address):
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(src.packed, 0))]
    return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, src.packed, bytes(4)))]


def _local_address(ancdata: list[tuple[int, int, bytes]], family: int) -> str:
    for level, ctype, cdata in ancdata:
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= _IN_PKTINFO.size:
            _ifindex, _spec, addr = _IN_PKTINFO.unpack_from(cdata)
            return socket.inet_ntop(socket.AF_INET, addr)
        if level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= _IN6_PKTINFO.size:
            addr6, _ifindex = _IN6_PKTINFO.unpack_from(cdata)
            return socket.inet_ntop(socket.AF_INET6, addr6)
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def source_address_for(remote: str) -> str:
    """The address the kernel would use to reach ``remote`` (a connected UDP socket sends nothing)."""
    fam = socket.AF_INET6 if ":" in remote else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((remote, IKE_PORT))
            return str(s.getsockname()[0])
        except OSError:
            return "::" if fam == socket.AF_INET6 else "0.0.0.0"
