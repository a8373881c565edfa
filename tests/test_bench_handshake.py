"""The handshake benchmark's own logic, without namespaces: log parsing, figures, options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.bench_handshake import LogWatch, Stage, initiator_conf, order, parse_rates, parse_tunnels, report

# What charon (filelog time_format %s, time_add_ms, ike_name) writes for two SAs, one of
# them retransmitted and finally given up.  (Long lines shortened.)
LOG = """\
1796189180.381 07[IKE] <load-test|1> initiating IKE_SA load-test[1] to 192.0.2.2
1796189180.382 08[IKE] <load-test|2> initiating IKE_SA load-test[2] to 192.0.2.2
1796189180.393 11[IKE] <load-test|1> authentication of 'r1s0-c1-r1.example' (myself) with pre-shared key
1796189180.431 12[IKE] <load-test|1> IKE_SA load-test[1] established between 192.0.2.1[c1]...192.0.2.2[srv]
1796189180.431 12[IKE] <load-test|1> CHILD_SA load-test{1} established with SPIs 01000000_i c1d2e3f4_o
1796189184.382 13[IKE] <load-test|2> retransmit 1 of request with message ID 0
1796189200.382 14[IKE] <load-test|2> giving up after 5 retransmits
1796189200.383 14[IKE] <load-test|2> establishing IKE_SA failed, peer not responding
"""


def test_log_watch_reads_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "charon.log"
    w = LogWatch(path)
    w.update()  # no file yet: nothing, no error
    assert w.done == 0
    half = LOG.index("1796189180.431") + 20  # cut mid-line: the partial line waits for the rest
    path.write_text(LOG[:half])
    w.update()
    assert w.initiated == {1: 1796189180.381, 2: 1796189180.382} and not w.established
    with path.open("a") as f:
        f.write(LOG[half:])
    w.update()
    assert w.established == {1: 1796189180.431}
    assert w.children == {1}
    assert w.failed == {2}
    assert w.retransmits == 1
    assert w.done == 2
    assert w.latencies_ms() == pytest.approx([50.0])
    assert w.window() == (1796189180.381, 1796189180.431)
    assert any("giving up" in e for e in w.errors)


def test_stage_figures() -> None:
    st = Stage("ipsecd", 1, 1000, 1000, established=1000, window_s=4.0, held_after=1000,
               cpu_s={"ike": 2.0, "worker": 0.5}, rss_growth_kib={"ike": 8000, "worker": 2000},
               latencies_ms=[float(i) for i in range(1, 101)], initiator_cpu_s=0.5)
    assert st.rate == 250.0
    assert st.cpu_ms_per_sa("ike") == 2.0 and st.cpu_ms_per_sa() == 2.5
    assert st.kib_per_tunnel() == 10.0
    assert st.pct(0.5) == 50.0 and st.pct(0.99) == 99.0
    assert st.initiator_ms_per_sa() == 0.5
    assert "250.0 SAs/s" in st.line()
    other = Stage("strongswan", 1, 1000, 1000, established=1000, window_s=1.0, held_after=1000,
                  cpu_s={"charon": 0.5}, rss_growth_kib={"charon": 10000}, latencies_ms=[10.0])
    text = report([st, other], [1000], 1, [], 64)
    assert "SAs/s 0.25x" in text and "CPU/SA 5.00x" in text


def test_open_loop_rows_are_reported_apart() -> None:
    """--rate stages: not mixed into the closed-loop checkpoint rows, reported per rate with
    the offered rate and latency for each responder, and the p99 ratio."""
    closed = Stage("ipsecd", 1, 1000, 1000, established=1000, window_s=2.0, held_after=1000,
                   cpu_s={"ike": 1.0}, latencies_ms=[100.0] * 10)
    opened = [Stage(n, 1, 2000, 1000, established=1000, window_s=3.4, held_after=2000, cpu_s={"x": 1.0},
                    latencies_ms=[float(v)] * 100, open_rate=300, offered_per_s=299, late_starts=2)
              for n, v in (("ipsecd", 40), ("strongswan", 20))]
    text = report([closed, *opened], [1000], 1, [], 64)
    head, _, tail = text.partition("open loop: 300 SAs/s offered")
    assert "latency p99 ms       100 / 100 / 100" in head and "40 / 40 / 40" not in head
    assert "offered SAs/s        299 / 299 / 299   (late starts 2 / 2 / 2)" in tail
    assert "ipsecd / strongSwan p99 (medians): 2.00x" in tail
    assert "open loop 300/s (offered 299/s, 2 late)" in opened[0].line()
    assert parse_rates("300") == [300.0] and parse_rates("200,400.5") == [200.0, 400.5]
    for bad in ("0", "x", "", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rates(bad)


def test_options_and_order() -> None:
    assert parse_tunnels("1000,5k") == [1000, 5000]
    for bad in ("5000,1000", "0", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_tunnels(bad)
    assert list(order(3, ["a", "b"])) == [(1, "a"), (1, "b"), (2, "b"), (2, "a"), (3, "a"), (3, "b")]


def test_initiator_conf(tmp_path: Path) -> None:
    conf = initiator_conf(tmp_path / "charon.log", responder="192.0.2.2", initiator="192.0.2.1", psk="k" * 32,
                          tag="r1", in_flight=64)
    for line in ("initiators = 0", "threads = 80", "fake_kernel = yes", f"socket = unix://{tmp_path}/charon.ldt",
                 "initiator_id = r1-c%d-r%d.example", "responder_id = *.example", "reuse_ikesa = no",
                 "proposal = aes128gcm16-prfsha256-x25519", "time_add_ms = yes"):
        assert line in conf


def test_shared_placement_reports_the_generator_and_the_machine() -> None:
    """--placement shared: the header says nothing is pinned; the generator (initiator charon and
    the harness's threads) and the machine (responder + generator) get a CPU row each."""
    two = Stage("ipsecd-2shards", 1, 1000, 1000, established=1000, children=1000, window_s=2.0,
                cpu_s={"ike": 0.5, "shard1": 0.5, "worker": 0.2}, initiator_cpu_s=1.0, harness_cpu_s=0.1)
    ss = Stage("strongswan", 1, 1000, 1000, established=1000, children=1000, window_s=4.0,
               cpu_s={"charon": 0.6}, initiator_cpu_s=1.4, harness_cpu_s=0.1)
    assert two.generator_ms_per_sa() == pytest.approx(1.1)
    text = report([two, ss], [1000], 1, [], 64, placement="shared")
    assert "nothing pinned" in text and "initiator on CPU" not in text
    assert "generator CPU ms/SA  1.100" in text and "machine CPU ms/SA    2.300" in text
    assert "machine CPU ms/SA    2.100" in text  # strongSwan: 0.6 + 1.5
    assert "two shards / strongSwan (medians): SAs/s 2.00x" in text
    assert "idle % cpu0 " in text and "(init.)" not in text
    split = report([two], [1000], 1, [], 64)
    assert "initiator on CPU 0, responder on CPU 1" in split and "cpu0 (init.)" in split


def test_responder_capture_times_each_exchange(tmp_path: Path) -> None:
    """--capture's pcap reading, against frames scapy writes: request -> answer per exchange, on
    500 and on 4500 (after the non-ESP marker); ESP, keepalives and retransmissions ignored."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    from tests.bench_handshake import exchange_delays_ms

    def ike(spi: bytes, exchange: int, response: bool, mid: int) -> bytes:
        flags = 0x20 if response else 0x08
        return spi + bytes(8) + bytes([33, 0x20, exchange, flags]) + mid.to_bytes(4, "big") + (28).to_bytes(4, "big")

    def frame(t: float, sport: int, dport: int, payload: bytes) -> Ether:
        # explicit MACs: scapy would otherwise ARP for the destination to fill them in
        p = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2")
             / UDP(sport=sport, dport=dport) / Raw(payload))
        p.time = t
        return p

    a, b = b"A" * 8, b"B" * 8
    frames = [
        frame(1.000, 500, 500, ike(a, 34, False, 0)),
        frame(1.002, 500, 500, ike(a, 34, True, 0)),  # 2 ms
        frame(1.010, 4500, 4500, bytes(4) + ike(a, 35, False, 1)),
        frame(1.500, 4500, 4500, bytes(4) + ike(a, 35, False, 1)),  # a retransmission: the first copy counts
        frame(1.600, 4500, 4500, bytes(4) + ike(a, 35, True, 1)),  # 590 ms
        frame(1.700, 4500, 4500, b"\x00\x00\x10\x01" + bytes(40)),  # ESP (SPI 0x1001)
        frame(1.701, 4500, 4500, b"\xff"),  # a NAT keepalive
        frame(2.000, 500, 500, ike(b, 34, False, 0)),
        frame(2.0005, 500, 500, ike(b, 34, True, 0)),  # 0.5 ms
        frame(2.100, 500, 500, ike(b, 35, True, 7)),  # an answer without its request: ignored
    ]
    path = tmp_path / "c.pcap"
    wrpcap(str(path), frames)
    got = exchange_delays_ms(path.read_bytes())
    assert got == pytest.approx([0.5, 2.0, 590.0], abs=0.01)
    assert exchange_delays_ms(b"") == []
    st = Stage("ipsecd", 1, 1000, 3, responder_ms=got)
    assert st.responder_pct(0.99) == pytest.approx(590.0, abs=0.01)
