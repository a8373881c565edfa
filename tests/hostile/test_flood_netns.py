"""The IKE_SA_INIT flood generator (tests/flood.py) and the flood scenario (tests/bench_flood.py).

The generator is checked against ipsecd's own decoder and the ``cryptography`` point
decoder: a flood of malformed packets would test the parser's error path, not the
cost a real attacker imposes. The scenario - a legitimate strongSwan peer setting up
while ipsecd is flooded - is xfail until the engine's front door (size cap, token
bucket, stateless cookies on raw bytes, per-source half-open limit) lands; ``make
bench`` runs the full version and prints the numbers.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ipsecd.iana import KeId
from ipsecd.ike.message import check_message, decode_message
from ipsecd.ike.payloads import KePayload, SaPayload, VendorIdPayload
from tests.bench_flood import SPOOF, Scenario
from tests.flood import MAX_PROPOSALS, MAX_TRANSFORMS, VENDOR_IDS
from tests.ipsecd_proc import PROJECT_ROOT, why_no_ipsecd
from tests.netns import Topology, topology_or_skip, wait_listening
from tests.strongswan import why_no_strongswan

pytestmark = [pytest.mark.netns]

_SINK = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], 500)); s.settimeout(float(sys.argv[3]))
out = open(sys.argv[2], "w")
try:
    while True:
        data, addr = s.recvfrom(65535)
        out.write(json.dumps([addr[0], data.hex()]) + "\\n"); out.flush()
except TimeoutError:
    pass
"""


@pytest.fixture
def sink_pair(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    with topology_or_skip("pair", ipv6=False) as t:
        t.b.run(["ip", "route", "add", SPOOF, "via", t.a_addr])
        out = tmp_path / "received.jsonl"
        t.b.popen([sys.executable, "-c", _SINK, t.b_addr, str(out), "3"])
        wait_listening(t.b, 500, udp=True)
        yield t, out


def _flood(t: Topology, tmp_path: Path, *args: str) -> dict[str, object]:
    res = t.a.run([sys.executable, "-m", "tests.flood", "--target", t.b_addr, "--json", str(tmp_path / "f.json"),
                   *args], timeout=60, env={"PYTHONPATH": str(PROJECT_ROOT)})
    assert res.returncode == 0, res.stderr
    result: dict[str, object] = json.loads((tmp_path / "f.json").read_text())
    return result


def _received(path: Path, wait_for: int) -> list[tuple[str, bytes]]:
    end = time.monotonic() + 10
    rows: list[tuple[str, bytes]] = []
    while time.monotonic() < end:
        rows = [(a, bytes.fromhex(h)) for a, h in (json.loads(line) for line in path.read_text().splitlines())] \
            if path.exists() else []
        if len(rows) >= wait_for:
            break
        time.sleep(0.2)
    return rows


def _valid_ecp256(msg_payloads: list[object]) -> bool:
    (ke,) = [p for p in msg_payloads if isinstance(p, KePayload)]
    assert ke.group == KeId.ECP_256 and len(ke.data) == 64
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + ke.data)  # raises if not on the curve
    return True


def test_spoofed_requests_are_well_formed_and_spoofed(sink_pair: tuple[Topology, Path], tmp_path: Path) -> None:
    t, out = sink_pair
    result = _flood(t, tmp_path, "--rate", "400", "--seconds", "0.5", "--keys", "8")
    rows = _received(out, int(result["requests"]))  # type: ignore[call-overload]
    assert len(rows) == result["requests"] and len(rows) >= 150, (len(rows), result)
    sources = {src for src, _ in rows}
    assert len(sources) > len(rows) * 0.9, "sources should be random"
    assert all(ip_address(s) in ip_network(SPOOF) for s in sources)
    spis = set()
    for _, data in rows:
        msg = decode_message(data)
        check_message(msg)
        assert _valid_ecp256(msg.payloads)
        spis.add(msg.spi_i)
    assert len(spis) == len(rows)


@pytest.mark.parametrize("kind", ["proposals", "vendor-ids"])
def test_big_requests_arrive_reassembled(sink_pair: tuple[Topology, Path], tmp_path: Path, kind: str) -> None:
    t, out = sink_pair
    result = _flood(t, tmp_path, "--mode", "big", "--big", kind, "--rate", "20", "--seconds", "0.3", "--keys", "2")
    rows = _received(out, 3)
    assert rows and int(result["packets"]) >= 35 * len(rows), result  # type: ignore[call-overload]
    for _, data in rows:
        assert len(data) > 50_000
        msg = decode_message(data)
        assert _valid_ecp256(msg.payloads)
        if kind == "proposals":
            (sa,) = [p for p in msg.payloads if isinstance(p, SaPayload)]
            assert len(sa.proposals) == MAX_PROPOSALS
            assert max(len(p.transforms) for p in sa.proposals) == MAX_TRANSFORMS
            check_message(msg)
        else:
            assert len([p for p in msg.payloads if isinstance(p, VendorIdPayload)]) == VENDOR_IDS


FLOOD_RATE, FLOOD_SECONDS = 20_000, 10
MIN_ACHIEVED = 15_000  # below this the sender, not ipsecd, was the limit: the scenario did not happen
MAX_SETUP = 1.0  # seconds, from charon's log: no retransmission needed (charon retries after 1 s here)
MAX_RSS_GROWTH_MB = 64


@pytest.mark.interop
@pytest.mark.timeout(240)
@pytest.mark.skipif(why_no_ipsecd() is not None or why_no_strongswan() is not None,
                    reason=why_no_ipsecd() or why_no_strongswan() or "")
@pytest.mark.xfail(strict=False, reason="front door not in the engine yet: ipsecd decodes every IKE_SA_INIT in "
                   "Python (2,000-6,000/s on this 2-core machine), its socket buffer overflows at 20,000/s and "
                   "most of the legitimate peer's requests are lost with the flood: it needs retransmissions "
                   "(set-up 0.5-12 s, median 1.8 s in make bench), now and then it gets through at once")
def test_legitimate_peer_establishes_during_a_spoofed_flood(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        sc = Scenario(tmp_path, stack)
        base = sc.run("none", 0, FLOOD_SECONDS)
        flood = sc.run("spoofed", FLOOD_RATE, FLOOD_SECONDS)
    print(f"baseline {base}\nflood {flood}")
    assert base.setup_s is not None, base
    achieved = int(flood.flood.get("achieved_rate", 0))
    if achieved < MIN_ACHIEVED:
        pytest.skip(f"the flood sender reached only {achieved}/s on this machine")
    assert flood.rss_growth_kb < MAX_RSS_GROWTH_MB * 1024, flood
    assert flood.setup_s is not None and flood.setup_s <= MAX_SETUP, (
        f"set-up took {flood.setup_s} s (baseline {base.setup_s} s) during {achieved}/s")
