"""ESP sockets of the data plane: ESP-in-UDP on port 4500 (RFC 3948) and raw ESP (IP protocol 50).

Why these choices (measured in docs/dataplane.md):

* Per-packet syscalls, not crypto, bound a Python data plane, so UDP sends are batched
  with UDP GSO (``UDP_SEGMENT``: one ``sendmsg`` carries up to 64 equal-size datagrams
  to one peer, the kernel cuts them) and receives use UDP GRO (``UDP_GRO``: the kernel
  hands over coalesced datagrams plus the segment size in a control message).
* The receive buffer is sized with ``SO_RCVBUFFORCE``: ``net.core.rmem_max`` cannot be
  raised inside a namespace here and a small buffer overflowing is what limits other
  userspace IPsec implementations (socket drops become TCP retransmits).
* Port 4500 carries IKE (behind the 4-byte non-ESP marker, RFC 3948 2.2) as well as ESP.
  The control process and the worker each bind it with ``SO_REUSEPORT``; a classic BPF
  program attached with ``SO_ATTACH_REUSEPORT_CBPF`` picks the socket per datagram:
  IKE (first four payload bytes zero) to the IKE socket, everything else (ESP, the
  one-byte NAT keepalive) to the worker. The kernel runs a reuseport program with the
  packet data starting at the UDP payload, so ``ld [0]`` reads the marker position.
* Every data-plane socket carries ``SO_MARK`` so that policy routing can let the ESP the
  worker emits bypass the routes that send protected traffic into the TUN (otherwise a
  0.0.0.0/0 tunnel or transport mode would loop our own ESP back into the TUN).

Nothing here knows about SAs: these are thin, typed wrappers around setsockopt/sendmsg.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

# Linux constants that Python 3.11's socket module does not name (include/uapi/linux/udp.h,
# asm-generic/socket.h, linux/in.h).
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_REUSEPORT = 15
SO_MARK = 36
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68
SO_RXQ_OVFL = 40
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DONT = 0
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
IPPROTO_ESP = 50
IPPROTO_AH = 51
UDP_MAX_SEGMENTS = 64  # the kernel accepts 64 (128 on recent kernels); 64 works everywhere
MAX_GSO_BYTES = 65507 - 8  # one UDP datagram carrying the whole super-segment
NATT_KEEPALIVE = b"\xff"  # RFC 3948 2.3
DEFAULT_SOCKET_BUFFER = 8 * 1024 * 1024

_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr (struct in_pktinfo)
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex (struct in6_pktinfo)
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_SOCK_FPROG = struct.Struct("@HP")  # struct sock_fprog: len, filter pointer (native alignment)

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_LD_W_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN
_BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_CMSG_SPACE = socket.CMSG_SPACE(8) * 2


class SteeringError(OSError):
    """The kernel refused the reuseport steering program (see attach_natt_steering)."""


def _set_buffers(sock: socket.socket, size: int) -> None:
    """Grow both socket buffers; the FORCE variants ignore rmem_max/wmem_max (CAP_NET_ADMIN).

    Without the capability they fail with EPERM; the plain options then give whatever the
    sysctl caps allow, which is still better than the default.
    """
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _family_of(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def port_in_use(addr: str, port: int) -> bool:
    """Whether some socket already holds UDP ``addr:port`` (a probe bind without SO_REUSEPORT).

    Used to learn the order in which the IKE and ESP sockets join the reuseport group:
    the socket index the steering program returns depends on it.
    """
    fam = _family_of(addr)
    with socket.socket(fam, socket.SOCK_DGRAM) as probe:
        if fam == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((addr, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def bind_udp(
    addr: str,
    port: int,
    *,
    reuseport: bool,
    mark: int = 0,
    gro: bool = False,
    buffer_size: int = 0,
    pktinfo: bool = False,
) -> socket.socket:
    """A non-blocking UDP socket bound to ``addr:port`` (IPv6 sockets are V6ONLY).

    ``reuseport`` lets the IKE socket of the control process and the worker's ESP socket
    share 4500 (see the module docstring); both must set it and bind the same address.
    ``mark`` sets SO_MARK (policy routing, see netconf), ``gro`` enables UDP GRO,
    ``buffer_size`` sizes both buffers, ``pktinfo`` asks for the local address per datagram.
    Outer packets are sent without DF so the kernel fragments an oversized outer packet
    rather than dropping it (RFC 4459 section 3: post-fragmentation as the fallback).
    """
    fam = _family_of(addr)
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _configure_esp_socket(sock, mark=mark, buffer_size=buffer_size, pktinfo=pktinfo)
        if gro:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        sock.bind((addr, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _configure_esp_socket(sock: socket.socket, *, mark: int, buffer_size: int, pktinfo: bool) -> None:
    fam = sock.family
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    if buffer_size:
        _set_buffers(sock, buffer_size)
    if fam == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
        if pktinfo:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        if pktinfo:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def open_raw_esp(family: socket.AddressFamily, *, mark: int = 0, buffer_size: int = 0) -> socket.socket:
    """A non-blocking raw socket for IP protocol 50 (ESP without UDP encapsulation).

    IPv4 raw sockets deliver the IP header in front of the ESP packet (skip IHL * 4 bytes);
    IPv6 raw sockets deliver the payload only (RFC 3542 section 3). Either way the kernel
    writes the outer header when sending. Because this kernel has no ESP protocol handler,
    a raw socket receiving the packet also keeps the kernel from answering "protocol
    unreachable".
    """
    sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_ESP)
    try:
        _configure_esp_socket(sock, mark=mark, buffer_size=buffer_size, pktinfo=family == socket.AF_INET6)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def open_raw_ah(family: socket.AddressFamily, *, mark: int = 0, buffer_size: int = 0) -> socket.socket:
    """A non-blocking raw socket for IP protocol 51 (AH, RFC 4302).

    AH's ICV covers the outer IP header, so the sender must know every field of it the ICV
    covers. IPv4: IP_HDRINCL, the SA writes the whole header (the kernel fills in only the
    checksum, and an ID of 0, which the SA never uses); received packets carry their header,
    as for any IPv4 raw socket. IPv6 raw sockets never take or give the IPv6 header (RFC 3542
    3), but every covered field of it is known (addresses via IPV6_PKTINFO, next header 51,
    the length), so the SA computes the ICV over the header the kernel will write and the
    receiver rebuilds it from the addresses (esp/ah.py). This kernel has no AH handler
    (CONFIG_INET_AH unset), so nothing else consumes or answers AH.
    """
    sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_AH)
    try:
        _configure_esp_socket(sock, mark=mark, buffer_size=buffer_size, pktinfo=family == socket.AF_INET6)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def natt_steering_program(ike_index: int = 0) -> list[tuple[int, int, int, int]]:
    """Classic BPF for SO_ATTACH_REUSEPORT_CBPF: the reuseport socket index per datagram.

    The data seen by the program starts at the UDP payload. Datagrams of four bytes or
    more whose first four bytes are zero carry the non-ESP marker, i.e. IKE (RFC 3948
    2.2; an ESP SPI of zero is reserved, RFC 4303 2.1, so ESP never starts that way) and
    go to ``ike_index``; everything else -- ESP and the one-byte NAT keepalive -- goes to
    the other socket of the pair. An index the group does not (yet) have makes the kernel
    fall back to its hash, so nothing is lost while one side is absent.
    """
    esp_index = 1 - ike_index
    return [
        (_BPF_LD_W_LEN, 0, 0, 0),  # A = payload length
        (_BPF_JGE_K, 1, 0, 4),  # A >= 4 ? skip next : fall through
        (_BPF_RET_K, 0, 0, esp_index),  # too short for a marker: keepalive/ESP side
        (_BPF_LD_W_ABS, 0, 0, 0),  # A = first 4 payload bytes
        (_BPF_JEQ_K, 0, 1, 0),  # A == 0 ? next : skip next
        (_BPF_RET_K, 0, 0, ike_index),
        (_BPF_RET_K, 0, 0, esp_index),
    ]


def attach_natt_steering(sock: socket.socket, *, ike_index: int = 0) -> None:
    """Attach :func:`natt_steering_program` to ``sock``'s reuseport group.

    The program belongs to the group, so attaching from either socket steers both. The
    indices are the order in which sockets joined the group (the IKE socket first by
    default); the kernel moves the last socket into a departing socket's slot, so after
    the IKE socket is rebound the caller must attach again with the new order.
    """
    insns = natt_steering_program(ike_index)
    raw = b"".join(_SOCK_FILTER.pack(*i) for i in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SOCK_FPROG.pack(len(insns), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as e:
        raise SteeringError(e.errno, f"SO_ATTACH_REUSEPORT_CBPF refused: {e.strerror}") from e


def gro_segments(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> Iterator[bytes]:
    """Split one received (possibly GRO-coalesced) datagram into the peer's datagrams.

    With UDP_GRO the kernel may hand over several datagrams of one flow glued together
    and reports their size in a ``(SOL_UDP, UDP_GRO)`` control message; the last one may
    be shorter. Without that message the buffer is a single datagram.
    """
    for level, ctype, cdata in ancdata:
        if level == SOL_UDP and ctype == UDP_GRO and len(cdata) >= _GRO_SIZE.size:
            size = _GRO_SIZE.unpack_from(cdata)[0]
            if 0 < size < len(data):
                view = memoryview(data)
                return (bytes(view[i : i + size]) for i in range(0, len(data), size))
            break
    return iter((data,))


def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The GRO segment size from a recvmsg control message list, or 0 when absent."""
    for level, ctype, cdata in ancdata:
        if level == SOL_UDP and ctype == UDP_GRO and len(cdata) >= _GRO_SIZE.size:
            return int(_GRO_SIZE.unpack_from(cdata)[0])
    return 0


def gso_cmsg(segment_size: int) -> tuple[int, int, bytes]:
    """The control message asking the kernel to cut one sendmsg into ``segment_size`` datagrams."""
    return (SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(segment_size))


def pktinfo_cmsg(local: bytes) -> tuple[int, int, bytes]:
    """Control message choosing the source address (4 or 16 packed bytes) of a send."""
    if len(local) == 4:
        return (socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, local, bytes(4)))
    return (socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(local, 0))


def local_address(ancdata: list[tuple[int, int, bytes]]) -> bytes | None:
    """The packed destination address of a received datagram, from IP_PKTINFO/IPV6_PKTINFO."""
    for level, ctype, cdata in ancdata:
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= _IN_PKTINFO.size:
            return bytes(cdata[8:12])
        if level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= _IN6_PKTINFO.size:
            return bytes(cdata[:16])
    return None


@dataclass(slots=True)
class GsoBatch:
    """A run of equal-size datagrams to one destination, waiting to leave in one sendmsg.

    UDP GSO requires every segment but the last to have the same size; a shorter one
    may close the run. ``add`` returns False when the datagram cannot join (other peer,
    other size after a short one, full), and the caller flushes then starts anew.
    """

    dest: tuple[str, int] | None = None
    local: bytes | None = None
    size: int = 0
    parts: list[bytes] | None = None
    total: int = 0
    closed: bool = False

    def add(self, dest: tuple[str, int], local: bytes | None, datagram: bytes) -> bool:
        n = len(datagram)
        parts = self.parts
        if parts is None:
            self.dest, self.local, self.size, self.parts, self.total, self.closed = dest, local, n, [datagram], n, False
            return True
        if (
            self.closed
            or dest != self.dest
            or local != self.local
            or n > self.size
            or len(parts) >= UDP_MAX_SEGMENTS
            or self.total + n > MAX_GSO_BYTES
        ):
            return False
        if n < self.size:
            self.closed = True  # a short datagram may only end a run
        parts.append(datagram)
        self.total += n
        return True

    def take(self) -> tuple[tuple[str, int], bytes | None, int, list[bytes]] | None:
        """Hand over the pending run (destination, source, segment size, datagrams) and reset."""
        parts = self.parts
        if parts is None or self.dest is None:
            return None
        out = (self.dest, self.local, self.size, parts)
        self.parts = None
        self.dest = None
        self.total = 0
        return out


def send_gso(sock: socket.socket, dest: tuple[str, int], local: bytes | None, size: int, parts: list[bytes]) -> int:
    """Send a run of datagrams with one syscall (UDP GSO when more than one); returns bytes sent.

    The datagrams go as one scatter-gather list (no joined copy: a UDP sendmsg is one
    datagram whatever its iovec count, and with ``UDP_SEGMENT`` the kernel cuts that at
    ``size``). Raises OSError as ``sendmsg`` does; EAGAIN means the socket buffer is full
    and the caller counts the run as dropped (a data plane never blocks on output).
    """
    cmsgs = [] if local is None else [pktinfo_cmsg(local)]
    if len(parts) > 1:
        cmsgs.append(gso_cmsg(size))
    return sock.sendmsg(parts, cmsgs, 0, dest)


# Why the kernel refuses a UDP_SEGMENT send (net/ipv4/udp.c udp_send_skb, ip_output.c):
# EINVAL for more than UDP_MAX_SEGMENTS segments or a socket without UDP checksums
# (SO_NO_CHECK); EINVAL or EMSGSIZE (seen here) when a segment plus headers exceeds the
# route's MTU -- a single datagram is then fragmented instead, DF being off; EIO when the
# route cannot offload the checksum (an XFRM route, UDP-Lite). Each holds for the
# destination until routes change.
GSO_REFUSED_ERRNOS = (errno.EINVAL, errno.EMSGSIZE, errno.EIO)
GSO_MEMORY_MAX = 4096  # destinations remembered (bounded: forgotten all at once when full)


@dataclass(slots=True)
class GsoRefusals:
    """Where the kernel refused UDP GSO: destination -> the smallest refused segment size
    (0: every size). Runs there with a segment that large are sent one datagram per
    ``sendmsg`` without asking again, for the worker's lifetime (a route's MTU rarely grows
    back; the cost of being wrong is the pre-GSO speed, never a lost packet); smaller
    segments (e.g. a lower tunnel MTU) still try."""

    limit: dict[tuple[str, int], int] = field(default_factory=dict)

    def allows(self, dest: tuple[str, int], size: int) -> bool:
        lim = self.limit.get(dest)
        return lim is None or size < lim

    def refused(self, dest: tuple[str, int], size: int, err: int | None) -> None:
        if len(self.limit) >= GSO_MEMORY_MAX and dest not in self.limit:
            self.limit.clear()
        size = 0 if err == errno.EIO else size
        self.limit[dest] = min(size, self.limit.get(dest, size))


def send_keepalive(sock: socket.socket, dest: tuple[str, int]) -> None:
    """One NAT-keepalive datagram (a single 0xFF byte, RFC 3948 2.3) from the ESP socket."""
    sock.sendto(NATT_KEEPALIVE, dest)


RECV_CMSG_SPACE = _CMSG_SPACE
