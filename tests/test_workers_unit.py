"""Several data-plane workers, without root: the owner rule, the BPF programs that carry it into
the kernel (checked with ike_steering's interpreter and on a real loopback reuseport group),
the state's SetOwner, the in-process hand-over between two workers, the control side's
routing of requests (Owners) and the counters' merge."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import struct
import time
from typing import Any

import pytest

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.esp_steering import (
    ACCEPT,
    AH_SPI_OFFSET,
    attach_filter,
    natt_workers_program,
    raw_spi_filter,
)
from ipsecd.dataplane.handoff import Handoff, handoff_pairs, owner_of_spi
from ipsecd.dataplane.ike_steering import attach_reuseport_program, run_program
from ipsecd.dataplane.state import HandOff
from ipsecd.dataplane.worker import Worker
from ipsecd.dataplane.workers import Owners, merge_counters
from tests.dp_static_peer import static_params
from tests.test_dataplane_state import REQID, arm_trap, install, make_state, messages
from tests.test_dataplane_unit import udp4


# ---------------------------------------------------------------- the owner rule and the programs
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_natt_program_sends_each_spi_to_its_owner_and_ike_to_ike(workers: int) -> None:
    rng = random.Random(workers)
    for ike_first in (True, False):
        slots = [k + 1 if ike_first else k for k in range(workers)]
        ike = 0 if ike_first else workers
        prog = natt_workers_program(slots, ike)
        assert run_program(prog, b"\xff") == slots[0]  # NAT keepalive (RFC 3948 2.3)
        assert run_program(prog, bytes(4) + b"ike") == ike  # the non-ESP marker
        for _ in range(500):
            spi = rng.randrange(256, 1 << 32)
            esp = spi.to_bytes(4, "big") + rng.randbytes(rng.randrange(4, 80))
            assert run_program(prog, esp) == slots[owner_of_spi(spi, workers)]


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_raw_filters_keep_exactly_the_owned_spis(workers: int) -> None:
    """Every SPI passes exactly one worker's filter: IPv4 (header with options, the SPI after
    IHL*4 bytes), IPv6 (the raw socket starts at ESP/AH), ESP (SPI at 0) and AH (at 4)."""
    rng = random.Random(workers)
    for _ in range(300):
        spi = rng.randrange(256, 1 << 32)
        ihl = rng.choice((5, 6, 15))
        v4_head = bytes([0x40 | ihl]) + bytes(ihl * 4 - 1)
        for offset in (0, AH_SPI_OFFSET):
            ipsec = bytes(offset) + spi.to_bytes(4, "big") + bytes(20)
            for ipv4, data in ((True, v4_head + ipsec), (False, ipsec)):
                passed = [k for k in range(workers)
                          if run_program(raw_spi_filter(k, workers, ipv4=ipv4, spi_offset=offset), data) == ACCEPT]
                assert passed == [owner_of_spi(spi, workers)]
    # too short to hold an SPI: nobody takes it (the kernel aborts the program: 0)
    assert run_program(raw_spi_filter(0, 2, ipv4=True), b"\x45" + bytes(20)) == 0
    with pytest.raises(ValueError):
        raw_spi_filter(2, 2, ipv4=True)
    with pytest.raises(ValueError):
        natt_workers_program([], 0)


def _group(n: int) -> tuple[list[socket.socket], int]:
    socks: list[socket.socket] = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.setblocking(False)
        socks.append(s)
    return socks, port


def _which(socks: list[socket.socket]) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for i, s in enumerate(socks):
            try:
                s.recv(65535)
                return i
            except BlockingIOError:
                continue
        time.sleep(0.001)
    raise AssertionError("datagram not delivered")


def test_kernel_steers_esp_by_spi_on_a_loopback_group() -> None:
    """IKE's socket first (slot 0), then three workers: the kernel runs the program."""
    socks, port = _group(4)
    try:
        attach_reuseport_program(socks[0], natt_workers_program([1, 2, 3], 0))
        rng = random.Random(3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(150):
                spi = rng.randrange(256, 1 << 32)
                tx.sendto(spi.to_bytes(4, "big") + bytes(40), ("127.0.0.1", port))
                assert _which(socks) == 1 + owner_of_spi(spi, 3)
            tx.sendto(bytes(4) + b"ike", ("127.0.0.1", port))
            assert _which(socks) == 0
    finally:
        for s in socks:
            s.close()


def test_kernel_applies_the_raw_filter() -> None:
    """SO_ATTACH_FILTER on a UDP socket (no root): the program sees the datagram from its UDP
    header on, so the SPI is at 8, as an IPv6 raw socket's is at 0 (AH: 4); datagrams of SPIs
    another worker owns never arrive. (The namespace tests run the real raw sockets.)"""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    try:
        attach_filter(rx, raw_spi_filter(1, 2, ipv4=False, spi_offset=8))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for spi in (0x1000, 0x1001, 0x2002, 0x2003):
                tx.sendto(spi.to_bytes(4, "big") + bytes(8), rx.getsockname())
        got = []
        rx.settimeout(0.5)
        try:
            while True:
                got.append(int.from_bytes(rx.recv(100)[:4], "big"))
        except TimeoutError:
            pass
        assert got == [0x1001, 0x2003]
    finally:
        rx.close()


# ---------------------------------------------------------------- the state's SetOwner
def test_set_owner_moves_sending_and_hands_over_a_trap_queue() -> None:
    st = make_state()
    install(st)
    assert REQID in st.out
    st.handle(m.SetOwner(REQID, 1, id=5), 0.0)  # a rekey moved the pair to worker 1
    assert messages(st) == [m.Ack(5)]
    assert REQID not in st.out and st.owners == {REQID: 1}
    assert REQID in st.in_reqid.values()  # the old inbound SA stays until IKE deletes it
    # a trap's queue goes to the owner, in order
    st2 = make_state()
    arm_trap(st2)
    pkts = [udp4("10.1.0.5", "10.2.0.7", bytes([i]) * 20) for i in range(3)]
    for p in pkts:
        st2.outbound(p, 1.0)
    st2.take_outputs()
    st2.handle(m.SetOwner(REQID, 1, id=6), 2.0)
    outs = st2.take_outputs()
    assert [o.packet for o in outs if isinstance(o, HandOff)] == pkts
    st2.handle(m.SetOwner(REQID, -1, id=7), 2.0)
    assert st2.owners == {}
    st2.handle(m.SetOwner(REQID, 1, id=8), 2.0)
    st2.handle(m.DeleteSa(REQID, id=9), 2.0)  # the reqid is gone: its hand-over too
    assert st2.owners == {}


# ---------------------------------------------------------------- two workers in-process
def _worker(index: int, pairs: list[tuple[socket.socket, socket.socket]], udp: socket.socket,
            keep: list[socket.socket]) -> tuple[Worker, socket.socket, socket.socket]:
    ctrl_w, ctrl_t = socket.socketpair()
    tun_w, tun_t = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (ctrl_w, ctrl_t, tun_w, tun_t):
        s.setblocking(False)
    keep += [ctrl_w, ctrl_t, tun_w, tun_t]
    w = Worker(ctrl_w, tun_w.fileno(), [udp], [], m.WorkerConfig(tun_name="fake"))
    w.handoff = Handoff(index, pairs[index][0], {j: pairs[j][1] for j in range(len(pairs)) if j != index},
                        w.state.stats, w.state.drops)
    w.start()
    return w, tun_t, ctrl_t


def test_a_packet_read_by_the_other_worker_is_encrypted_by_the_owner() -> None:
    keep: list[socket.socket] = []
    pairs = handoff_pairs(2, 1 << 20)
    keep += [s for p in pairs for s in p]
    udp0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (udp0, udp1, peer):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        keep.append(s)
    try:
        w0, tun0, _c0 = _worker(0, pairs, udp0, keep)
        w1, tun1, _c1 = _worker(1, pairs, udp1, keep)
        sa_in, sa_out, pols = static_params("a", "127.0.0.1", "127.0.0.1", "10.1.0.0/24", "10.2.0.0/24", encap=True,
                                            remote_port=peer.getsockname()[1])
        # the pair lives in worker 1; worker 0 has the policy and the hand-over
        w1.handle(m.InstallSa(REQID, sa_in, sa_out, tuple(pols), 1400))
        w0.handle(m.InstallSa(REQID, None, None, tuple(pols), 1400))
        w0.handle(m.SetOwner(REQID, 1))
        pkts = [udp4("10.1.0.5", "10.2.0.7", bytes([i]) * 30) for i in range(5)]
        for p in pkts:  # the kernel put this flow on worker 0's queue
            tun0.send(p)
        w0.step(0.2)
        w1.step(0.2)
        esp = []
        deadline = time.monotonic() + 3
        while len(esp) < len(pkts) and time.monotonic() < deadline:
            try:
                esp.append(peer.recv(65535))
            except BlockingIOError:
                w1.step(0.05)
        seqs = [struct.unpack_from("!I", e, 4)[0] for e in esp]
        assert [int.from_bytes(e[:4], "big") for e in esp] == [sa_out.spi] * 5 and seqs == [1, 2, 3, 4, 5]
        assert w0.state.stats["handoff_tx"] == 5 and w1.state.stats["handoff_rx_packets"] == 5
        assert "udp_tx_packets" not in w0.state.stats and w0.state.drops == {}
        tun1.close()
    finally:
        for s in keep:
            s.close()


# ---------------------------------------------------------------- the control side
class FakeWorkers:
    def __init__(self) -> None:
        self.sent: list[tuple[int, m.Message]] = []

    async def request(self, index: int, build: Any) -> m.Message:
        msg = build(0)
        self.sent.append((index, msg))
        return m.Ack(0)


def test_owners_route_installs_rekeys_and_deletes() -> None:
    async def run() -> None:
        fake = FakeWorkers()
        own = Owners(fake, 2)  # type: ignore[arg-type]
        sa_in, sa_out, pols = static_params("a", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", encap=True)
        k = owner_of_spi(sa_in.spi, 2)

        def build(i: int, p: tuple[Any, ...]) -> m.Message:
            return m.InstallSa(REQID, sa_in, sa_out, p, 1400, id=i)

        await own.install(REQID, sa_in, sa_out, build, tuple(pols))
        assert own.of_reqid(REQID) == k
        full = [(i, x) for i, x in fake.sent if isinstance(x, m.InstallSa) and x.outbound is not None]
        only = [(i, x) for i, x in fake.sent if isinstance(x, m.InstallSa) and x.outbound is None]
        assert [i for i, _ in full] == [k] and [i for i, _ in only] == [1 - k] and only[0][1].policies == tuple(pols)
        assert sorted((i, x.owner) for i, x in fake.sent if isinstance(x, m.SetOwner)) == sorted([(k, -1), (1 - k, k)])
        # a rekey whose new inbound SPI belongs to the other worker moves the pair
        fake.sent.clear()
        new_in = dataclasses.replace(sa_in, spi=sa_in.spi + 1)
        await own.install_inbound(REQID, new_in, lambda i: m.InstallSa(REQID, new_in, None, id=i))
        assert fake.sent[0][0] == 1 - k and own.of_reqid(REQID) == k  # still sending from the old owner
        await own.install_outbound(REQID, lambda i: m.InstallSa(REQID, None, sa_out, id=i))
        assert own.of_reqid(REQID) == 1 - k
        moved = sorted((i, x.owner) for i, x in fake.sent if isinstance(x, m.SetOwner))
        assert moved == sorted([(1 - k, -1), (k, 1 - k)])
        fake.sent.clear()
        await own.delete_inbound((sa_in.spi,))
        assert fake.sent == [(k, m.DeleteSa(None, (sa_in.spi,), policies=False))]
        # one worker: exactly the one request of old
        one, single = FakeWorkers(), Owners(FakeWorkers(), 1)  # type: ignore[arg-type]
        single._workers = one  # type: ignore[assignment]
        await single.install(REQID, sa_in, sa_out, build, tuple(pols))
        assert len(one.sent) == 1 and one.sent[0][0] == 0

    asyncio.run(run())


def test_counters_of_all_workers_add_up() -> None:
    a = m.Counters(1, (m.SaCounterSnapshot(1, "in", 1, 10, 1, {}, 1),), {"replay": 1}, {"tun_rx_packets": 5})
    b = m.Counters(2, (m.SaCounterSnapshot(2, "out", 1, 20, 2, {}, 2),), {"replay": 2, "short": 1},
                   {"tun_rx_packets": 7, "handoff_tx": 3})
    merged = merge_counters([a, b])
    assert [s.spi for s in merged.sas] == [1, 2]
    assert merged.drops == {"replay": 3, "short": 1} and merged.stats == {"tun_rx_packets": 12, "handoff_tx": 3}
    assert merge_counters([a]) is a
