"""Data-plane units: the message set, GSO/GRO helpers, the steering program, and the worker
driven in-process (a datagram socketpair stands in for the TUN, UDP runs on loopback with
ephemeral ports, so nothing here needs root or collides with other tests)."""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address

import pytest

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.udp import (
    MAX_GSO_BYTES,
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_SEGMENTS,
    GsoBatch,
    bind_udp,
    gro_segments,
    natt_steering_program,
)
from ipsecd.dataplane.worker import Drop, Worker
from ipsecd.esp.packet import build_ipv4_header, inet_checksum, parse_ip
from ipsecd.esp.sa import DropReason, Mode, OutboundSa
from ipsecd.esp.spd import Action, Policy, Selector
from tests.dp_static_peer import static_params

# ---------------------------------------------------------------------------- messages


def _sample_messages() -> list[m.Message]:
    sa_in, sa_out, pols = static_params("a", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", encap=True)
    return [
        m.Configure(m.WorkerConfig(tun_name="t0", icmp_source4=ip_address("10.1.0.1")), id=1),  # type: ignore[arg-type]
        m.InstallSa(7, sa_in, sa_out, tuple(pols), 1400, m.Lifetime(soft_bytes=10), id=2),
        m.UpdateSaPeer(7, ip_address("198.51.100.7"), 40000, id=3),
        m.DeleteSa(7, (0x1234,), id=4),
        m.DeleteSa(None, (), policies=False, id=5),
        m.InstallSa(8, None, None, (), 1280, m.Lifetime(), None, id=6),
        m.InstallTrap(7, tuple(pols), id=10),
        m.RemoveTrap(7, id=12),
        m.GetCounters(id=7),
        m.GetHeard(id=18),
        m.GetSaCounters((0x1234, 5), (0x4321, 0), id=20),
        m.GetTotals(id=21),
        m.SetKeepalive(ip_address("192.0.2.2"), 4500, 20.0, id=8),
        m.SetOwner(7, 1, id=30),
        m.SetOwner(7, -1, id=31),
        m.Shutdown(id=9),
        m.Batch((m.InstallSa(9, sa_in, None, tuple(pols), id=13), m.DeleteSa(9, id=14), m.RemoveTrap(7, id=15),
                 m.UpdateSaPeer(9, ip_address("2001:db8::1"), 4500, ip_address("::"), id=16),
                 m.SetKeepalive(ip_address("192.0.2.2"), 4500, 0, id=17))),
        m.Hello(m.PROTOCOL_VERSION, 42),
        m.Ack(3, False, "nope"),
        m.BatchAck((m.Ack(13), m.Ack(14, False, "KeyError: 'x'"))),
        m.Counters(7, (m.SaCounterSnapshot(1, "in", 7, 10, 1, {"icv": 2}, 5),), {"short": 1}, {"tun_rx_packets": 3}),
        m.Heard(18, (0x1234, 0xFFFFFFFF)),
        m.Heard(19, ()),
        m.Totals(21, (m.TagTotal(3, 1, 2, 3, 4),), {"replay": 1}, {"tun_rx_packets": 2}),
        m.Acquire(7, ip_address("10.1.0.1"), ip_address("10.2.0.1"), 6, 1234, 80),
        m.UnknownSpiReport(5, (m.UnknownSpi(0xDEAD, "192.0.2.9", 4500, 3), m.UnknownSpi(1, "::1", 0, 2))),
        m.UnknownSpiReport(0, ()),
        m.LifetimeReached(7, 1, "out", "soft", "bytes", 100, 2),
        m.WorkerError("boom"),
    ]


def test_messages_round_trip_and_keys_not_in_repr() -> None:
    msgs = _sample_messages()
    stream = b"".join(m.encode(msg) for msg in msgs)
    dec = m.FrameDecoder()
    out: list[m.Message] = []
    for i in range(0, len(stream), 7):  # arbitrary fragmentation of the stream
        out += dec.feed(stream[i : i + 7])
    assert out == msgs
    install = msgs[1]
    assert isinstance(install, m.InstallSa) and install.inbound is not None
    assert install.inbound.encr_key.hex() not in repr(install)


def _frame(*items: object) -> bytes:
    return json.dumps([m.PROTOCOL_VERSION, *items]).encode()


def test_every_wire_message_round_trips() -> None:
    """Each message type of the wire set is in the sample (so each has been round-tripped)."""
    assert {type(x) for x in _sample_messages()} == set(m.WIRE_MESSAGES)
    assert m.WorkerExited not in m.WIRE_MESSAGES  # made by the client, never on the wire
    with pytest.raises(m.ProtocolError, match="not a wire message"):
        m.encode(m.WorkerExited(1))  # type: ignore[arg-type]


def test_decoder_refuses_frames_naming_other_classes() -> None:
    """Issue 13: nothing on the wire is resolved as a class or module name."""
    for name in ("Popen", "socket", "os.system", "subprocess.Popen", "Envelope", "WorkerExited", "SaParams",
                 "__class__", "InstallPolicy"):
        with pytest.raises(m.ProtocolError, match="not allowed"):
            m.decode_body(_frame(name))
    # inside a Batch only the batchable requests may be named
    for name in ("Shutdown", "Configure", "GetCounters", "Batch", "Popen"):
        with pytest.raises(m.ProtocolError, match="not allowed here"):
            m.decode_body(_frame("Batch", [[name, 1]]))
    # a pickle of an allowed message, or of anything else, is not a frame any more
    for obj in (m.Shutdown(), socket.socket, pickle.loads):
        with pytest.raises(m.ProtocolError):
            m.decode_body(pickle.dumps(obj))


def test_decoder_checks_every_value_against_its_type() -> None:
    good = m.encode(m.DeleteSa(7, (1, 2), id=3))[4:]
    assert m.decode_body(good) == m.DeleteSa(7, (1, 2), id=3)
    bad_values = [
        ("DeleteSa", "7", [1], True, 3),  # reqid: text for an int
        ("DeleteSa", 7, [1, "2"], True, 3),  # a text SPI in the tuple
        ("DeleteSa", 7, [1], 1, 3),  # int for a bool
        ("DeleteSa", True, [1], True, 3),  # bool for an int
        ("DeleteSa", 7, [1], True),  # a field missing
        ("DeleteSa", 7, [1], True, 3, 4),  # one too many
        ("SetKeepalive", "not an address", 4500, 20.0, 1),
        ("SetKeepalive", "192.0.2.1", 4500, "20", 1),
        ("UpdateSaPeer", 1, ["192.0.2.1"], 4500, None, 1),  # a list for an address
        ("Counters", 1, [], {"short": "1"}, {}),  # dict values must be integers
        ("Counters", 1, [[1, "in", 1, 0, 0, {}, "x"]], {}, {}),  # a snapshot's seq as text
        ("Acquire", 1, "10.0.0.1", "10.0.0.2", 6, None, 1.5),
        ("UnknownSpiReport", 1, [[1, "192.0.2.1", 4500]]),
        ("Hello", 3),
    ]
    for items in bad_values:
        with pytest.raises(m.ProtocolError):
            m.decode_body(_frame(*items))
    sa_in, _out, pols = static_params("a", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", encap=True)
    fields = json.loads(m.encode(m.InstallSa(1, sa_in, None, tuple(pols)))[4:])
    fields[3][1] = 99  # an EncrId that does not exist
    with pytest.raises(m.ProtocolError, match="EncrId"):
        m.decode_body(json.dumps(fields).encode())
    fields[3][1] = 20
    fields[3][2] = "00" * 5  # a key of the wrong length: SaParams refuses it
    with pytest.raises(m.ProtocolError, match="SaParams"):
        m.decode_body(json.dumps(fields).encode())


def test_decoder_refuses_versions_garbage_and_huge_frames() -> None:
    with pytest.raises(m.ProtocolError, match="version"):
        m.decode_body(json.dumps([m.PROTOCOL_VERSION - 1, "Shutdown", 0]).encode())
    for body in (b"\x80\x05garbage", b"", b"{}", b"[3]", b'"Shutdown"', b"[3, 1]", b"[NaN, \"Shutdown\", 0]",
                 b"[" * 100000, b"\xff\xfe", b'[3, "Hello", ' + b"9" * 5000 + b", 1]"):
        with pytest.raises(m.ProtocolError):
            m.decode_body(body)
    with pytest.raises(m.ProtocolError, match="exceeds"):
        m.FrameDecoder().feed(struct.pack("!I", m.MAX_FRAME + 1))


# ---------------------------------------------------------------------------- GSO / GRO / BPF


def test_gso_batch_rules() -> None:
    b = GsoBatch()
    dest = ("192.0.2.2", 4500)
    assert b.add(dest, None, b"x" * 100)
    assert b.add(dest, None, b"y" * 100)
    assert not b.add(dest, None, b"z" * 101)  # larger than the segment size
    assert not b.add(("192.0.2.3", 4500), None, b"z" * 100)  # other peer
    assert b.add(dest, None, b"s" * 50)  # a short one closes the run ...
    assert not b.add(dest, None, b"t" * 50)  # ... nothing may follow it
    run = b.take()
    assert run is not None and run[2] == 100 and len(run[3]) == 3
    assert b.take() is None
    for i in range(UDP_MAX_SEGMENTS):
        assert b.add(dest, None, bytes(64)), i
    assert not b.add(dest, None, bytes(64))
    b.take()
    big = bytes(1400)
    n = 0
    while b.add(dest, None, big):
        n += 1
    assert n * 1400 <= MAX_GSO_BYTES < (n + 1) * 1400


def test_gro_segments_split() -> None:
    data = b"a" * 10 + b"b" * 10 + b"c" * 4
    anc = [(SOL_UDP, UDP_GRO, struct.pack("=i", 10))]
    assert list(gro_segments(data, anc)) == [b"a" * 10, b"b" * 10, b"c" * 4]
    assert list(gro_segments(data, [])) == [data]


def test_steering_program_shape() -> None:
    prog = natt_steering_program(ike_index=0)
    rets = [k for code, _jt, _jf, k in prog if code == 0x06]
    assert sorted(set(rets)) == [0, 1]
    assert natt_steering_program(ike_index=1)[-2][3] == 1


# ---------------------------------------------------------------------------- worker in-process


@dataclass
class Side:
    worker: Worker
    tun: socket.socket  # our end of the fake TUN
    ctrl: socket.socket  # our end of the control channel
    udp: socket.socket
    decoder: m.FrameDecoder

    @property
    def port(self) -> int:
        return int(self.udp.getsockname()[1])

    def messages(self) -> list[m.Message]:
        out: list[m.Message] = []
        while True:
            try:
                data = self.ctrl.recv(1 << 20)
            except BlockingIOError:
                return out
            out += self.decoder.feed(data)

    def read_tun(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.tun.recv(65536))
            except BlockingIOError:
                return out


def _side(**cfg: object) -> Side:
    ctrl_w, ctrl_t = socket.socketpair()
    tun_w, tun_t = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (ctrl_w, ctrl_t, tun_w, tun_t):
        s.setblocking(False)
    udp = bind_udp("127.0.0.1", 0, reuseport=False, gro=True, buffer_size=1 << 20)
    w = Worker(ctrl_w, tun_w.fileno(), [udp], [], m.WorkerConfig(tun_name="fake", **cfg))  # type: ignore[arg-type]
    w.start()
    side = Side(w, tun_t, ctrl_t, udp, m.FrameDecoder())
    side._keep = (tun_w,)  # type: ignore[attr-defined]
    assert isinstance(side.messages()[0], m.Hello)
    return side


def close(*sides: Side) -> None:
    for s in sides:
        s.worker._epoll.close()
        for sock in (s.tun, s.ctrl, s.udp, s.worker.control, *s._keep):  # type: ignore[attr-defined]
            sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[Side, Side]]:
    a, b = _side(), _side()
    install(a, b)
    yield a, b
    close(a, b)


def install(a: Side, b: Side, mtu: int = 1400, lifetime: m.Lifetime | None = None) -> None:
    for side, peer, name in ((a, b, "a"), (b, a, "b")):
        nets = ("10.1.0.0/24", "10.2.0.0/24") if name == "a" else ("10.2.0.0/24", "10.1.0.0/24")
        sa_in, sa_out, pols = static_params(name, "127.0.0.1", "127.0.0.1", *nets, encap=True, remote_port=peer.port)
        side.worker.handle(m.InstallSa(1, sa_in, sa_out, tuple(pols), mtu, lifetime or m.Lifetime(), id=11))
        acks = side.messages()
        assert acks == [m.Ack(11)], acks


def pump(*sides: Side, rounds: int = 6) -> None:
    for _ in range(rounds):
        for s in sides:
            s.worker.step(0.01)


def udp4(src: str, dst: str, payload: bytes = b"hello", df: bool = False) -> bytes:
    seg = struct.pack("!HHHH", 1111, 2222, 8 + len(payload), 0) + payload
    hdr = bytearray(build_ipv4_header(ip_address(src).packed, ip_address(dst).packed, 17, len(seg)))
    if df:
        hdr[6] |= 0x40
        hdr[10:12] = b"\x00\x00"
        hdr[10:12] = struct.pack("!H", inet_checksum(bytes(hdr)))
    return bytes(hdr) + seg


def test_worker_tunnel_both_directions(pair: tuple[Side, Side]) -> None:
    a, b = pair
    p1 = udp4("10.1.0.5", "10.2.0.7", b"ping")
    p2 = udp4("10.2.0.7", "10.1.0.5", b"pong")
    a.tun.send(p1)
    pump(a, b)
    assert b.read_tun() == [p1]
    b.tun.send(p2)
    pump(a, b)
    assert a.read_tun() == [p2]
    c = a.worker.counters()
    by_dir = {s.direction: s for s in c.sas}
    assert by_dir["out"].packets == 1 and by_dir["in"].packets == 1 and by_dir["out"].bytes == len(p1)
    assert not c.drops


def test_worker_batches_with_gso_and_splits_gro(pair: tuple[Side, Side]) -> None:
    a, b = pair
    pkts = [udp4("10.1.0.5", "10.2.0.7", bytes([i]) * 1000) for i in range(20)]
    for p in pkts:
        a.tun.send(p)
    pump(a, b)
    assert b.read_tun() == pkts  # order kept
    assert a.worker.state.stats["udp_tx_sendmsg"] == 1  # one syscall for 20 datagrams
    assert b.worker.state.stats["udp_rx_recvmsg"] < 20
    assert b.worker.state.stats.get("udp_gro_batches", 0) >= 1


def test_worker_bad_packets_counted_and_tunnel_survives(pair: tuple[Side, Side]) -> None:
    a, b = pair
    p = udp4("10.1.0.5", "10.2.0.7", b"first")
    a.tun.send(p)
    pump(a, b)
    assert b.read_tun() == [p]
    # a forged copy of a's first packet (same keys): a replay at b
    _sa_in, sa_out, _ = static_params("a", "127.0.0.1", "127.0.0.1", "10.1.0.0/24", "10.2.0.0/24", encap=True)
    forger = OutboundSa(sa_out)
    replay = forger.protect(p)
    bad = bytearray(forger.protect(p))
    bad[-3] ^= 1
    junk = [b"\x01\x02", b"\xff", b"\x00\x00\x00\x00IKE-should-not-be-here", (0xBADBAD).to_bytes(4, "big") + bytes(40),
            replay, bytes(bad), sa_out.spi.to_bytes(4, "big") + bytes(6)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for j in junk:
            tx.sendto(j, ("127.0.0.1", b.port))
    pump(a, b)
    d = b.worker.state.drops
    assert d[DropReason.SHORT] == 2 and d[DropReason.UNKNOWN_SPI] == 1 and d[Drop.IKE_ON_WORKER] == 1
    assert d[DropReason.REPLAY] == 1 and d[DropReason.ICV] == 1
    assert b.worker.state.stats["natt_keepalives_rx"] == 1
    assert b.read_tun() == []
    events = b.messages()
    reports = [e for e in events if isinstance(e, m.UnknownSpiReport)]
    assert reports == [m.UnknownSpiReport(1, (m.UnknownSpi(0xBADBAD, "127.0.0.1", tx_port(reports), 1),))]
    p2 = udp4("10.1.0.5", "10.2.0.7", b"second")
    a.tun.send(p2)
    pump(a, b)
    assert b.read_tun() == [p2]


def tx_port(reports: list[m.UnknownSpiReport]) -> int:
    return reports[0].samples[0].port


def test_worker_no_policy_no_sa_acquire_rate_limited() -> None:
    a = _side()
    pol = Policy(Selector.from_prefix("10.1.0.0/24"), Selector.from_prefix("10.9.0.0/24"), Action.PROTECT, sa_ref=9)
    drop = Policy(Selector.any(), Selector.from_prefix("10.8.0.0/16"), Action.DISCARD)
    a.worker.handle(m.InstallSa(9, None, None, (pol, drop), id=1))  # policies before (without) any SA
    assert a.messages() == [m.Ack(1)]
    for _ in range(3):
        a.tun.send(udp4("10.1.0.5", "10.9.0.1"))
    a.tun.send(udp4("10.1.0.5", "10.7.0.1"))
    a.tun.send(udp4("10.1.0.5", "10.8.0.1"))
    a.tun.send(b"\x45garbage")
    pump(a)
    d = a.worker.state.drops
    assert d[DropReason.NO_SA] == 3 and d[DropReason.NO_POLICY] == 2 and d[DropReason.DISCARD_POLICY] == 1
    acq = [e for e in a.messages() if isinstance(e, m.Acquire)]
    assert acq == [m.Acquire(9, ip_address("10.1.0.5"), ip_address("10.9.0.1"), 17, 1111, 2222)]


def test_worker_too_big_sends_icmp_back_into_tun() -> None:
    a, b = _side(), _side()
    install(a, b, mtu=500)
    big_df = udp4("10.1.0.5", "10.2.0.7", bytes(600), df=True)
    a.tun.send(big_df)
    pump(a, b)
    back = a.read_tun()
    assert len(back) == 1
    parsed = parse_ip(back[0])
    assert parsed is not None and parsed[3] == 1 and back[0][20:22] == b"\x03\x04"  # ICMP type 3 code 4
    assert struct.unpack_from("!H", back[0], 26)[0] == 500  # Next-Hop MTU (RFC 1191)
    assert b.read_tun() == []
    big_nodf = udp4("10.1.0.5", "10.2.0.7", bytes(range(200)) * 3)
    a.tun.send(big_nodf)
    pump(a, b)
    # no DF: cut before encryption, each fragment within the SA's MTU in its own ESP packet
    frags = b.read_tun()
    assert len(frags) == 2 and all(len(f) <= 500 for f in frags)
    assert b"".join(f[20:] for f in frags) == big_nodf[20:]
    assert a.worker.counters().stats["inner_fragments"] == 2


def test_worker_clamps_mss_of_syn(pair: tuple[Side, Side]) -> None:
    a, b = pair
    tcp = bytearray(struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 6 << 4, 0x02, 65535, 0, 0) + b"\x02\x04\x05\xb4")
    src, dst = ip_address("10.1.0.5").packed, ip_address("10.2.0.7").packed
    pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 6 + len(tcp)
    tcp[16:18] = struct.pack("!H", inet_checksum(bytes(tcp), pseudo))
    syn = build_ipv4_header(src, dst, 6, len(tcp)) + bytes(tcp)
    a.tun.send(syn)
    pump(a, b)
    (got,) = b.read_tun()
    assert struct.unpack_from("!H", got, 20 + 22)[0] == 1400 - 40
    seg = got[20:]
    assert inet_checksum(seg, pseudo) == 0  # checksum still valid after the clamp
    # a SYN arriving through the tunnel is clamped to the tunnel's way back too: the host
    # behind us then never sends segments the tunnel cannot carry (no reliance on ICMP)
    b.worker.handle(m.InstallSa(1, None, static_params("b", "127.0.0.1", "127.0.0.1", "10.2.0.0/24", "10.1.0.0/24",
                                                      encap=True, remote_port=a.port)[1], (), 1000, m.Lifetime(),
                                id=12))
    assert b.messages() == [m.Ack(12)]
    a.tun.send(syn)
    pump(a, b)
    (got,) = b.read_tun()
    assert struct.unpack_from("!H", got, 20 + 22)[0] == 1000 - 40
    assert inet_checksum(got[20:], pseudo) == 0


def test_worker_lifetimes_soft_then_hard() -> None:
    a, b = _side(lifetime_check_interval=0.0), _side()
    install(a, b, lifetime=m.Lifetime(soft_packets=2, hard_packets=4))
    for i in range(5):
        a.tun.send(udp4("10.1.0.5", "10.2.0.7", bytes([i])))
        pump(a, b, rounds=2)
    events = [e for e in a.messages() if isinstance(e, m.LifetimeReached)]
    kinds = [(e.direction, e.kind, e.what) for e in events]
    assert ("out", "soft", "packets") in kinds and ("out", "hard", "packets") in kinds
    assert 1 not in a.worker.state.out  # hard limit: the outbound SA is gone
    assert len(b.read_tun()) == 4


def test_worker_update_peer_delete_and_bad_requests(pair: tuple[Side, Side]) -> None:
    a, b = pair
    a.worker.handle(m.UpdateSaPeer(99, ip_address("127.0.0.1"), 1, id=5))
    (ack,) = a.messages()
    assert isinstance(ack, m.Ack) and not ack.ok and "reqid 99" in ack.error
    a.worker.handle(m.UpdateSaPeer(1, ip_address("127.0.0.1"), b.port, id=6))
    assert a.messages() == [m.Ack(6)]
    a.worker.handle(m.DeleteSa(1, id=7))
    assert a.messages() == [m.Ack(7)]
    assert not a.worker.state.out and not a.worker.state.sad.inbound and len(a.worker.state.spd) == 0
    a.tun.send(udp4("10.1.0.5", "10.2.0.7"))
    pump(a, b)
    assert a.worker.state.drops[DropReason.NO_POLICY] == 1
    a.worker.handle(m.GetCounters(id=8))
    (c,) = a.messages()
    assert isinstance(c, m.Counters) and c.id == 8 and c.drops == {"no_policy": 1}


def test_worker_corrupt_control_stream_stops_worker() -> None:
    a = _side()
    a.ctrl.send(struct.pack("!I", 5) + b"\x80\x05xx!")
    pump(a, rounds=2)
    assert not a.worker.running
    assert any(isinstance(e, m.WorkerError) and e.fatal for e in a.messages())


def test_transport_mode_in_process() -> None:
    a, b = _side(), _side()
    for side, peer, name in ((a, b, "a"), (b, a, "b")):
        sa_in, sa_out, pols = static_params(name, "127.0.0.1", "127.0.0.1", "127.0.0.1/32", "127.0.0.1/32",
                                            encap=True, mode=Mode.TRANSPORT, remote_port=peer.port)
        side.worker.handle(m.InstallSa(1, sa_in, sa_out, tuple(pols), 1400, id=1))
        assert side.messages() == [m.Ack(1)]
    p = udp4("127.0.0.1", "127.0.0.1", b"transport")
    a.tun.send(p)
    pump(a, b)
    (got,) = b.read_tun()
    assert got[9] == 17 and got.endswith(b"transport") and got[12:20] == p[12:20]


# ---------------------------------------------------------------------------- the client's channel


def test_channel_batches_concurrent_requests_in_order() -> None:
    """A login storm's concurrent requests leave as a few Batch frames, applied in request
    order; each caller gets its own answer; a lone request is a frame of its own."""
    from ipsecd.dataplane.channel import MAX_BATCH, DataPlaneError, WorkerChannel
    from ipsecd.dataplane.state import DataplaneState, SendControl

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        events: list[m.Event] = []
        channel = WorkerChannel(ours, events.append)
        channel.start()
        state: DataplaneState[str] = DataplaneState(m.WorkerConfig(tun_name="t"), {(True, 4): "udp4"})
        frames: list[m.Message] = []

        async def worker() -> None:  # the worker's side: its real state behind a socket
            decoder = m.FrameDecoder()
            while data := await loop.sock_recv(theirs, 1 << 20):
                for msg in decoder.feed(data):
                    frames.append(msg)
                    state.handle(msg, 0.0)
                    for out in state.take_outputs():
                        assert isinstance(out, SendControl)
                        await loop.sock_sendall(theirs, m.encode(out.message))

        task = asyncio.create_task(worker())
        await loop.sock_sendall(theirs, m.encode(m.Hello(m.PROTOCOL_VERSION, 1)))
        assert (await channel.hello).pid == 1
        n = 300

        def keepalive(k: int) -> Callable[[int], m.Message]:
            return lambda i: m.SetKeepalive(ip_address(f"192.0.2.{k % 250 + 1}"), 4500 + k, 20.0, id=i)

        calls = [channel.request(keepalive(k)) for k in range(n)]
        calls.append(channel.request(lambda i: m.UpdateSaPeer(7, ip_address("192.0.2.1"), 4500, id=i)))
        calls.append(channel.request(lambda i: m.GetCounters(id=i)))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(r == m.Ack(i + 1) for i, r in enumerate(results[:n]))
        assert isinstance(results[n], DataPlaneError) and "reqid 7" in str(results[n])
        assert isinstance(results[n + 1], m.Counters)
        assert len(state.keepalives) == n
        batches = [f for f in frames if isinstance(f, m.Batch)]
        assert len(frames) <= n // MAX_BATCH + 3 and batches
        assert all(len(b.requests) <= MAX_BATCH for b in batches)
        sent = [r for f in frames for r in (f.requests if isinstance(f, m.Batch) else (f,))]
        assert [getattr(r, "id", 0) for r in sent] == list(range(1, n + 3))  # in request order
        assert isinstance(frames[-1], m.GetCounters)  # never inside a Batch
        assert channel.requests_sent == n + 2 and channel.frames_sent == len(frames)
        frames.clear()
        assert await channel.request(keepalive(1)) == m.Ack(n + 3)
        assert [type(f) for f in frames] == [m.SetKeepalive]  # alone: no Batch around it
        await loop.sock_sendall(theirs, m.encode(m.WorkerError("boom")))
        await asyncio.sleep(0.01)
        assert events == [m.WorkerError("boom")]
        await channel.close()  # the worker side sees EOF
        await task
        theirs.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_channel_splits_a_batch_too_large_and_fails_only_what_cannot_be_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipsecd.dataplane.channel import DataPlaneError, WorkerChannel

    monkeypatch.setattr(m, "MAX_FRAME", 1000)
    sa_in, sa_out, pols = static_params("a", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", encap=True)
    assert 500 < len(m.encode(m.InstallSa(1, sa_in, sa_out, tuple(pols)))) < 1000  # one fits a frame, two do not

    async def scenario() -> list[m.Message]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        channel = WorkerChannel(ours, lambda ev: None)
        channel.start()
        got: list[m.Message] = []

        async def worker() -> None:  # acknowledges everything
            decoder = m.FrameDecoder()
            while data := await loop.sock_recv(theirs, 1 << 20):
                for msg in decoder.feed(data):
                    got.append(msg)
                    reqs = msg.requests if isinstance(msg, m.Batch) else (msg,)
                    acks = tuple(m.Ack(r.id) for r in reqs)  # type: ignore[union-attr]
                    reply = m.BatchAck(acks) if isinstance(msg, m.Batch) else acks[0]
                    await loop.sock_sendall(theirs, m.encode(reply))

        task = asyncio.create_task(worker())
        huge = tuple(pols) * 40  # alone larger than a frame
        calls = [channel.request(lambda i: m.InstallSa(1, sa_in, sa_out, tuple(pols), id=i)) for _ in range(3)]
        calls.insert(1, channel.request(lambda i: m.InstallSa(2, None, None, huge, id=i)))
        calls += [channel.request(lambda i: m.DeleteSa(3, id=i)) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[1], DataPlaneError) and "exceeds" in str(results[1])
        assert [r for i, r in enumerate(results) if i != 1] == [m.Ack(i) for i in (1, 3, 4, 5, 6, 7)]
        await channel.close()
        await task
        theirs.close()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 20))
    sent = [r for f in got for r in (f.requests if isinstance(f, m.Batch) else (f,))]
    assert [r.id for r in sent] == [1, 3, 4, 5, 6, 7]  # type: ignore[union-attr]  # order kept


def test_channel_times_out_unanswered_requests_with_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that never answers: every request fails after REQUEST_TIMEOUT, each at its own
    deadline (one timer walks them in order), and a later answered request is unaffected."""
    from ipsecd.dataplane import channel as ch

    monkeypatch.setattr(ch, "REQUEST_TIMEOUT", 0.2)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        channel = ch.WorkerChannel(ours, lambda ev: None)
        channel.start()
        t0 = loop.time()
        first = asyncio.ensure_future(channel.request(lambda i: m.DeleteSa(1, id=i)))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(channel.request(lambda i: m.DeleteSa(2, id=i)))
        with pytest.raises(ch.DataPlaneError, match="did not answer"):
            await first
        assert loop.time() - t0 >= 0.19 and not second.done()  # the second has its own deadline
        with pytest.raises(ch.DataPlaneError, match="did not answer"):
            await second
        assert loop.time() - t0 >= 0.29
        third = asyncio.ensure_future(channel.request(lambda i: m.DeleteSa(3, id=i)))
        decoder, got = m.FrameDecoder(), []
        while not any(x.id == 3 for x in got):  # type: ignore[union-attr]  # the two unanswered come first
            got += decoder.feed(await loop.sock_recv(theirs, 1 << 20))
        await loop.sock_sendall(theirs, m.encode(m.Ack(3)))
        assert await third == m.Ack(3)
        await channel.close()
        theirs.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_worker_answers_a_request_whose_reply_does_not_fit_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _side(), _side()
    try:
        install(a, b)
        body = len(m.encode(a.worker.counters(9))) - 4
        monkeypatch.setattr(m, "MAX_FRAME", body - 1)  # the Counters no longer fits, an Ack still does
        a.worker.handle(m.GetCounters(id=9))
        (ack,) = a.messages()
        assert isinstance(ack, m.Ack) and ack.id == 9 and not ack.ok and "exceeds" in ack.error
    finally:
        close(a, b)


def test_worker_get_heard_names_the_inbound_spis_that_received_packets(pair: tuple[Side, Side]) -> None:
    """DPD's poll (RFC 7296 2.4): only SPIs that authenticated a packet since the previous poll."""
    a, b = pair
    b.worker.handle(m.GetHeard(id=1))
    assert b.messages() == [m.Heard(1, ())]
    for i in range(3):
        a.tun.send(udp4("10.1.0.5", "10.2.0.7", bytes([i])))
    pump(a, b)
    assert len(b.read_tun()) == 3
    (spi_in,) = b.worker.state.sad.inbound
    b.worker.handle(m.GetHeard(id=2))
    assert b.messages() == [m.Heard(2, (spi_in,))]
    b.worker.handle(m.GetHeard(id=3))
    assert b.messages() == [m.Heard(3, ())]  # swapped out: nothing new since
    a.worker.handle(m.GetHeard(id=4))
    assert a.messages() == [m.Heard(4, ())]  # a only sent
    # a forged packet (bad ICV) is no sign of life
    esp = bytearray(a.worker.state.out[1].sa.protect(udp4("10.1.0.5", "10.2.0.7")))
    esp[-1] ^= 1
    a.udp.sendto(bytes(esp), ("127.0.0.1", b.port))
    pump(b)
    assert sum(b.worker.state.drops.values()) == 1
    b.worker.handle(m.GetHeard(id=5))
    assert b.messages() == [m.Heard(5, ())]
