"""The IKE_SA_INIT flood generator (tests/flood.py) and the flood scenario (tests/bench_flood.py).

The generator is checked against ipsecd's own decoder and the ``cryptography`` point
decoder: a flood of malformed packets would test the parser's error path, not the
cost a real attacker imposes. The scenarios - a legitimate strongSwan peer setting up
while ipsecd is flooded (spoofed, 60 KB, one address replaying cookies), and a tunnel
carrying traffic and rekeying during a flood - run here as short smokes at a moderate
rate; ``make bench`` runs them at 20,000/s and prints the numbers (docs/security.md).
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
from tests.bench_flood import SPOOF, Round, Scenario
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


# make test runs short smokes at a rate a shared 2-core machine sustains next to its other work;
# make bench (tests/bench_flood.py) runs the full 20,000/s for longer and reports the numbers
# (docs/security.md). Bounds are generous: the machine is shared, and a charon retransmission
# (after 1 s, then 1.8 s) when ipsecd was descheduled is load, not a front-door failure; before
# the front door, set-up under such floods took 2-12 s.
SMOKE_RATE, SMOKE_SECONDS = 5_000, 5
BIG_RATE = 500
MAX_SETUP = 3.0  # seconds, from charon's log: at most two retransmissions
MAX_RSS_GROWTH_MB = 32
MIN_ACHIEVED = 0.5  # of the rate asked: below it the sender, not ipsecd, was the limit


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    with contextlib.ExitStack() as stack:
        yield Scenario(tmp_path_factory.mktemp("flood"), stack)


def _flooded(sc: Scenario, mode: str, rate: float, *, established: bool = False) -> Round:
    r = sc.run(mode, rate, SMOKE_SECONDS, established=established)
    print(r)
    assert not r.error, r
    achieved = int(r.flood.get("achieved_rate", 0))
    # not a skip (make test refuses those): a sender this far below the rate means a machine too
    # loaded to say anything about ipsecd, and that is worth a failure with this message
    assert achieved >= rate * MIN_ACHIEVED, f"the flood sender reached only {achieved}/s of {rate:.0f}/s"
    assert r.rss_growth_kb < MAX_RSS_GROWTH_MB * 1024, r
    return r


NEEDS_PEERS = pytest.mark.skipif(why_no_ipsecd() is not None or why_no_strongswan() is not None,
                                 reason=why_no_ipsecd() or why_no_strongswan() or "")


@pytest.mark.interop
@pytest.mark.timeout(240)
@NEEDS_PEERS
@pytest.mark.parametrize("mode", ["spoofed", "cookies"])
def test_legitimate_peer_establishes_during_a_flood(scenario: Scenario, mode: str) -> None:
    """Spoofed well-formed IKE_SA_INIT from random sources, or one real address answering cookies
    and replaying them: the legitimate peer needs no retransmission, memory stays bounded."""
    r = _flooded(scenario, mode, SMOKE_RATE)
    assert r.setup_s is not None and r.setup_s <= MAX_SETUP, r
    c = r.ike_counters
    if mode == "spoofed":
        assert c.get("cookies_sent", 0) > SMOKE_RATE, c  # the front door answered, stateless
    else:
        assert c.get("init_rate_limited", 0) + c.get("init_blocked", 0) > SMOKE_RATE, c


@pytest.mark.interop
@pytest.mark.timeout(240)
@NEEDS_PEERS
def test_legitimate_peer_establishes_during_big_requests(scenario: Scenario) -> None:
    """60 KB requests (255 proposals x 24 transforms) are dropped by size before they are read."""
    r = _flooded(scenario, "big", BIG_RATE)
    assert r.setup_s is not None and r.setup_s <= MAX_SETUP, r
    assert r.ike_counters.get("init_too_big", 0) > BIG_RATE, r.ike_counters


@pytest.mark.interop
@pytest.mark.timeout(240)
@NEEDS_PEERS
def test_established_tunnel_carries_traffic_and_rekeys_during_a_flood(scenario: Scenario) -> None:
    r = _flooded(scenario, "spoofed", SMOKE_RATE, established=True)
    sent, answered = r.pings
    assert sent and answered >= sent * 0.9, r
    assert r.child_rekeyed and r.ike_rekeyed, r

