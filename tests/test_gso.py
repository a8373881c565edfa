"""UDP GSO send (and its fallback) and the offload checksum helpers, in-process.

The checksum helpers (offload.py) are checked against a plain RFC 1071 loop over 16-bit
words on random data of every length class, odd lengths included. The GSO fallback uses
the kernel's own refusal: a socket with SO_NO_CHECK (UDP without checksums) makes every
``UDP_SEGMENT`` send fail with EINVAL (net/ipv4/udp.c udp_send_skb), so nothing is faked.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
from collections.abc import Iterator

import pytest

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.offload import _sum, checksum, tcp_checksum_ok
from ipsecd.dataplane.state import DataplaneState
from ipsecd.dataplane.udp import GSO_MEMORY_MAX, GsoRefusals, bind_udp, send_gso
from ipsecd.dataplane.worker import EspSender
from ipsecd.ratelimit import RateLimitedLogger

SO_NO_CHECK = 11  # asm-generic/socket.h


def rfc1071(data: bytes) -> int:
    """RFC 1071 4.1, word by word: the ones' complement of the ones' complement sum."""
    if len(data) & 1:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def same(a: int, b: int) -> bool:
    """Equal as ones' complement numbers: 0x0000 and 0xFFFF are both zero (RFC 1071 2.(A))."""
    return a == b or {a, b} == {0, 0xFFFF}


LENGTHS = [0, 1, 2, 3, 19, 20, 255, 256, 257, 511, 512, 513, 1023, 1335, 1336, 1401, 2047, 4097, 9001, 65535]


@pytest.mark.parametrize("n", LENGTHS)
def test_checksum_matches_rfc1071(n: int) -> None:
    rng = random.Random(n)
    for _ in range(5):
        data = rng.randbytes(n)
        assert same(checksum(data), rfc1071(data)), n
        assert checksum(memoryview(data)) == checksum(bytearray(data)) == checksum(data)


@pytest.mark.parametrize("n", [0, 2, 300, 1336, 65534])
def test_checksum_of_edge_patterns(n: int) -> None:
    for data in (bytes(n), b"\xff" * n, b"\x00\x01" * (n // 2), b"\xff\xfe" * (n // 2)):
        assert same(checksum(data), rfc1071(data)), (n, data[:4])


def test_checksum_of_parts_is_the_checksum_of_the_whole() -> None:
    rng = random.Random(7)
    for _ in range(50):
        parts = [rng.randbytes(2 * rng.randrange(0, 800)) for _ in range(rng.randrange(1, 5))]
        parts.append(rng.randbytes(rng.randrange(0, 900)))  # only the last may be odd
        assert same(checksum(*parts), rfc1071(b"".join(parts)))


def test_sum_folds_any_length_like_one_division() -> None:
    rng = random.Random(3)
    for n in [*range(250, 270), *rng.sample(range(270, 70000), 60)]:
        data = rng.randbytes(n)
        v = int.from_bytes(data, "little") % 0xFFFF
        assert _sum(data) == ((v & 0xFF) << 8) | (v >> 8), n


def test_tcp_checksum_ok_against_scapy() -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    for ip, l4 in ((IP(src="10.1.0.1", dst="10.2.0.1"), 20), (IPv6(src="fd00::1", dst="fd00::2"), 40)):
        for n in (0, 1, 1335, 1336):
            pkt = bytearray(bytes(ip / TCP(sport=1, dport=2, seq=5, flags="A") / Raw(os.urandom(n))))
            assert tcp_checksum_ok(pkt, 4 if l4 == 20 else 6, l4)
            pkt[-1 if n else l4 + 17] ^= 0x10
            assert not tcp_checksum_ok(pkt, 4 if l4 == 20 else 6, l4)


# ---------------------------------------------------------------------------- GSO send


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    s = bind_udp("127.0.0.1", 0, reuseport=False, gro=False)
    yield s
    s.close()


def _received(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(70000))
        except BlockingIOError:
            return got


def _sender(gso_ok: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    if not gso_ok:
        s.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)  # the kernel then refuses UDP_SEGMENT
    return s


def test_send_gso_scatter_gather_arrives_as_separate_datagrams(receiver: socket.socket) -> None:
    s = _sender(True)
    parts = [bytes([i]) * 1000 for i in range(10)] + [b"z" * 37]
    assert send_gso(s, receiver.getsockname(), None, 1000, parts) == 10037
    assert _received(receiver) == parts
    s.close()


def test_kernel_refuses_gso_on_a_socket_without_udp_checksums(receiver: socket.socket) -> None:
    s = _sender(False)
    with pytest.raises(OSError) as e:
        send_gso(s, receiver.getsockname(), None, 100, [b"a" * 100, b"b" * 100])
    assert e.value.errno == errno.EINVAL
    s.close()


def _esp_sender() -> EspSender:
    state: DataplaneState[socket.socket] = DataplaneState(m.WorkerConfig(tun_name="t"), {})
    return EspSender(state, RateLimitedLogger(logging.getLogger("test")))


def _run(sender: EspSender, sock: socket.socket, dest: tuple[str, int], parts: list[bytes]) -> None:
    sender.sock = sock
    for p in parts:
        assert sender.batch.add(dest, None, p)
    sender.flush()


def test_esp_sender_uses_one_sendmsg_per_run(receiver: socket.socket) -> None:
    sender, s = _esp_sender(), _sender(True)
    parts = [os.urandom(1400) for _ in range(20)] + [os.urandom(600)]
    _run(sender, s, receiver.getsockname(), parts)
    assert _received(receiver) == parts
    stats = sender.state.stats
    assert stats["udp_tx_packets"] == 21 and stats["udp_tx_sendmsg"] == 1
    s.close()


def test_esp_sender_falls_back_when_gso_is_refused_and_remembers(receiver: socket.socket) -> None:
    sender, s = _esp_sender(), _sender(False)
    dest = receiver.getsockname()
    first = [os.urandom(1400) for _ in range(5)]
    _run(sender, s, dest, first)
    assert _received(receiver) == first  # nothing lost: sent one by one
    stats = sender.state.stats
    assert stats["udp_gso_refused"] == 1 and stats["udp_tx_sendmsg"] == 5
    second = [os.urandom(1400) for _ in range(5)]
    _run(sender, s, dest, second)
    assert _received(receiver) == second
    assert stats["udp_gso_refused"] == 1, "the refusal was not remembered"
    assert stats["udp_tx_sendmsg"] == 10 and not sender.state.drops
    s.close()


def test_gso_refusals_memory_is_per_destination_size_and_bounded() -> None:
    r = GsoRefusals()
    a, b = ("192.0.2.1", 4500), ("192.0.2.2", 4500)
    assert r.allows(a, 1400)
    r.refused(a, 1400, errno.EINVAL)  # e.g. the route's MTU is below 1400 + headers
    assert not r.allows(a, 1400) and not r.allows(a, 1500) and r.allows(a, 1200) and r.allows(b, 1400)
    r.refused(a, 1200, errno.EINVAL)
    assert not r.allows(a, 1200) and r.allows(a, 1000)
    r.refused(b, 1400, errno.EIO)  # no checksum offload on that route: no size works
    assert not r.allows(b, 64)
    for i in range(GSO_MEMORY_MAX + 10):
        r.refused((f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4500), 1400, errno.EINVAL)
    assert len(r.limit) <= GSO_MEMORY_MAX
