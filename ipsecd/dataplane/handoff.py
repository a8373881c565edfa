"""Several workers (``settings.dataplane.workers: N``): who owns an SA pair, and the hand-over.

The TUN is opened with ``IFF_MULTI_QUEUE``, one queue per worker, and the kernel picks the
queue by flow hash, so a TCP flow stays on one worker -- but not on the worker that owns its
SA. An outbound SA must have exactly one sender: its sequence numbers must rise in the order
the packets leave (RFC 4303 3.3.3), and the peer's replay window would drop a second
sender's packets. So each SA pair has one **owner**, chosen by its inbound SPI
(:func:`owner_of_spi`), because that is what the receive side can steer on: the reuseport
program of UDP 4500 and the socket filter of each worker's raw ESP/AH sockets send ESP for an
SPI to the worker owning it (esp_steering.py). A packet read from the TUN by another worker
is handed to the owner over a local datagram socket (one ``send`` more; none for flows whose
queue happens to be the owner's), and the owner encrypts it as if it had read it itself.

Every worker has one inbox (the receiving end of an ``AF_UNIX`` datagram socketpair) and the
sending ends of the others' inboxes. A connected socketpair is limited by its send buffer
only (not by ``net.unix.max_dgram_qlen``), which the control process sets large; a full
inbox drops the packet (``handoff_error``), as a full TUN queue would.
"""

from __future__ import annotations

import contextlib
import socket

from ipsecd.dataplane.state import Drop

__all__ = ["Handoff", "handoff_pairs", "owner_of_spi"]


def owner_of_spi(spi: int, workers: int) -> int:
    """The worker owning the SA pair whose inbound SPI is ``spi`` (what the BPF programs compute).

    The SPI's low bits: IKE allocates inbound SPIs at random (ike/context.py; the IKE shard
    stamp uses the first octet, not these bits), so SA pairs spread evenly over the workers.
    """
    return spi % workers


def handoff_pairs(workers: int, buffer_size: int) -> list[tuple[socket.socket, socket.socket]]:
    """One (inbox, sender) socketpair per worker; the caller passes them on and closes its copies."""
    pairs = []
    try:
        for _ in range(workers):
            rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            pairs.append((rx, tx))
            for s in (rx, tx):
                s.setblocking(False)
            for opt, s in ((socket.SO_RCVBUF, rx), (socket.SO_SNDBUF, tx)):
                # refused: the kernel's default applies; a smaller buffer still works
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, opt, buffer_size)
    except BaseException:
        for rx, tx in pairs:
            rx.close()
            tx.close()
        raise
    return pairs


class Handoff:
    """A worker's inbox and the other workers' inboxes (module docstring)."""

    def __init__(self, index: int, inbox: socket.socket | None, peers: dict[int, socket.socket],
                 stats: dict[str, int], drops: dict[str, int]) -> None:
        self.index = index
        self.inbox = inbox
        self.peers = peers
        self._stats = stats
        self._drops = drops

    def send(self, owner: int, pkt: bytes) -> None:
        sock = self.peers.get(owner)
        if sock is None:
            self._drops[Drop.HANDOFF] = self._drops.get(Drop.HANDOFF, 0) + 1
            return
        try:
            sock.send(pkt)
        except OSError:  # full (EAGAIN) or gone: dropped, as a full TUN queue drops
            self._drops[Drop.HANDOFF] = self._drops.get(Drop.HANDOFF, 0) + 1
            return
        self._stats["handoff_tx"] = self._stats.get("handoff_tx", 0) + 1
