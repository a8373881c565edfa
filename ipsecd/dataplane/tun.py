"""TUN device: the clear-text side of the data plane.

A TUN device in ``IFF_TUN | IFF_NO_PI`` mode exchanges bare IP packets (no Ethernet header,
no 4-byte packet-information prefix), which is exactly what ESP tunnel mode carries, so
``os.read`` gives a packet ready for the SPD and ``os.write`` takes a decrypted inner packet.

The device is not persistent: it disappears (with every route through it) when the last fd
closes, so a crashed worker cannot leave a black hole behind.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUN_PATH = "/dev/net/tun"
# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
# TUNSETOFFLOAD flags (linux/if_tun.h): what the kernel may hand us unfinished / unsegmented
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
# Asked for in this order; each step the kernel refuses is dropped alone (USO needs Linux
# 6.2, and tun.c's set_offload takes USO4 only together with USO6).
OFFLOAD_FLAGS = (TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_USO4 | TUN_F_USO6)
OFFLOAD_NAMES = {TUN_F_CSUM: "csum", TUN_F_TSO4: "tso4", TUN_F_TSO6: "tso6", TUN_F_TSO_ECN: "tso_ecn",
                 TUN_F_USO4: "uso4", TUN_F_USO6: "uso6"}
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, padding to 40 bytes


class TunError(OSError):
    """The TUN device could not be created or configured."""


def open_tun(name: str, *, multi_queue: bool = False, vnet_hdr: bool = False) -> tuple[int, str]:
    """Create (or attach to) TUN device ``name``; returns a non-blocking fd and the kernel's name.

    ``name`` may contain ``%d`` to let the kernel pick a free number. ``multi_queue`` opens
    one queue of a multi-queue device (call again for more queues, one worker each);
    ``vnet_hdr`` prefixes every packet with a ``virtio_net_hdr`` (needed for offloads, see
    :func:`enable_offloads` and offload.py).
    """
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise TunError(f"invalid interface name {name!r} (1..{IFNAMSIZ - 1} bytes)")
    flags = IFF_TUN | IFF_NO_PI
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        res = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, flags))
    except OSError as e:
        os.close(fd)
        raise TunError(e.errno, f"TUNSETIFF {name}: {e.strerror}") from e
    actual = _IFREQ.unpack(res)[0].rstrip(b"\x00").decode()
    return fd, actual


def enable_offloads(fd: int, wanted: tuple[int, ...] = OFFLOAD_FLAGS) -> int:
    """Ask for TUN offloads one step (flag or flag group) at a time; returns what the kernel accepted.

    TSO needs checksum offload (the kernel refuses TSO without TUN_F_CSUM), and a kernel
    that does not know a flag (USO before 6.2) answers EINVAL for the whole mask: so each
    flag is added to the accepted set only if the set with it is still taken.
    """
    accepted = 0
    for flag in wanted:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, accepted | flag)
        except OSError:
            continue
        accepted |= flag
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, accepted)  # the last attempt may have been a refusal
    except OSError as e:
        raise TunError(e.errno, f"TUNSETOFFLOAD {accepted:#x}: {e.strerror}") from e
    return accepted


def offload_names(flags: int) -> str:
    return ",".join(name for flag, name in OFFLOAD_NAMES.items() if flags & flag) or "none"
