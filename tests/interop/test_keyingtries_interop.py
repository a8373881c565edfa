"""keyingtries against strongSwan: ipsecd initiates to a charon that is not there yet.

ipsecd (A, ``start_action: start``) starts first; charon (B) is started only once ipsecd
has given up its first attempt. With ``keyingtries: 3`` a later attempt (a new IKE SA)
reaches charon and the tunnel carries pings both ways; with ``keyingtries: 1`` nothing
happens after the first attempt until ``ipsecctl up``. Retransmissions are short (1 s,
1.5 s, 2.25 s: an attempt gives up after ~4.75 s) so the test takes seconds, not minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Topology, ping_counts
from tests.strongswan import Charon, ChildParams, ConnParams

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(90),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PSK = "interop-keyingtries-psk-0123456789"
CONN, CHILD = "peer", "net"
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
QUICK = {"tries": 2, "timeout": 1.0, "base": 1.5}
RETRYING = r"peer not responding, trying again \(attempt 2 of 3\)"
GAVE_UP = r"initiating peer failed after 1 attempt\(s\) \(keyingtries 1\)"

MakeIpsecd = Callable[..., Ipsecd]
MakeCharon = Callable[..., Charon]


def _sides(t: Topology, make_ipsecd: MakeIpsecd, make_charon: MakeCharon, keyingtries: int) -> tuple[Ipsecd, Charon]:
    theirs = make_charon(t.b, ConnParams(
        name=CONN, local_addrs=[t.b_addr], remote_addrs=["%any"], local_id="b.test", remote_id="a.test", psk=PSK,
        proposals=[IKE],
        children=[ChildParams(name=CHILD, local_ts=[t.b_lan_net], remote_ts=[t.a_lan_net], esp_proposals=[ESP])]),
        name="charon", start=False)
    ours = make_ipsecd(t.a, ipsecd_config(
        name=CONN, local_addrs=[t.a_addr], remote_addrs=[t.b_seen_from_a], local_id="a.test", remote_id="b.test",
        psk=PSK, proposals=[IKE], keyingtries=keyingtries, retransmit=QUICK,
        children={CHILD: child_config(local_ts=[t.a_lan_net], remote_ts=[t.b_lan_net], esp_proposals=[ESP],
                                      start_action="start")}), name="ipsecd")
    return ours, theirs


def _wait_for(pred: Callable[[], bool], timeout: float, what: str, *logs: Ipsecd | Charon) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s\n" + "\n".join(x.log_tail(30) for x in logs))
        time.sleep(0.1)
    return time.monotonic() - start


def _mirrored(ours: Ipsecd, theirs: Charon) -> bool:
    o = [s for s in ours.list_sas() if s["state"] == "ESTABLISHED"]
    th = [s for s in theirs.list_sas() if s["state"] == "ESTABLISHED"]
    if len(o) != 1 or len(th) != 1 or (o[0]["spi_i"], o[0]["spi_r"]) != (th[0]["initiator-spi"],
                                                                          th[0]["responder-spi"]):
        return False
    ok = [c for c in o[0]["child_sas"] if c["state"] == "INSTALLED"]
    tk = [c for c in th[0]["child-sas"] if c["state"] == "INSTALLED"]
    return any((c["spi_in"], c["spi_out"]) == (k["spi-out"], k["spi-in"]) for c in ok for k in tk)


def _ping(t: Topology, count: int = 3) -> list[tuple[int, int]]:
    out = []
    for ns, src, dst in ((t.a, t.a_lan, t.b_lan), (t.b, t.b_lan, t.a_lan)):
        res = ns.ping(dst, count=count, src=src, interval=0.1, deadline=6, check=False)
        out.append(ping_counts(res.stdout))
    return out


def test_keyingtries_3_brings_the_tunnel_up_once_charon_is_there(
        topology: Topology, ipsecd_factory: MakeIpsecd, charon_factory: MakeCharon) -> None:
    t = topology
    ours, theirs = _sides(t, ipsecd_factory, charon_factory, keyingtries=3)
    took = _wait_for(lambda: ours.log_count(RETRYING) >= 1, 30, "ipsecd gives up its first attempt", ours)
    print(f"first attempt given up {took:.1f}s after start; starting charon")
    theirs.start()
    took = _wait_for(lambda: _mirrored(ours, theirs), 40, "one mirrored IKE SA and Child SA", ours, theirs)
    print(f"tunnel up {took:.1f}s after charon started")
    assert _ping(t) == [(3, 3), (3, 3)]
    assert ours.log_count(r"failed after \d+ attempt") == 0, ours.log_tail()
    sa: dict[str, Any] = ours.list_sas()[0]
    assert sa["state"] == "ESTABLISHED"


def test_keyingtries_1_stays_down_until_up(
        topology: Topology, ipsecd_factory: MakeIpsecd, charon_factory: MakeCharon) -> None:
    t = topology
    ours, theirs = _sides(t, ipsecd_factory, charon_factory, keyingtries=1)
    _wait_for(lambda: ours.log_count(GAVE_UP) >= 1, 30, "ipsecd gives up its only attempt", ours)
    theirs.start()
    # Before keyingtries, start_action start tried again every 5 s; the longest wait keyingtries
    # 3 would take before its next attempt is 3 s. Nothing may reach charon in 10 s.
    time.sleep(10)
    assert ours.log_count(r"trying again") == 0, ours.log_tail()
    assert "IKE_SA_INIT request" not in theirs.log_text(), theirs.log_tail()
    assert ours.list_sas() == [] and theirs.list_sas() == []
    assert _ping(t, count=1)[0][1] == 0  # no tunnel, no answer

    ours.up(CONN)  # the operator's `up` is a new initiation
    _wait_for(lambda: _mirrored(ours, theirs), 20, "one mirrored IKE SA and Child SA after up", ours, theirs)
    assert _ping(t) == [(3, 3), (3, 3)]
