"""AH and IPComp against strongSwan 5.9.8 with kernel-libipsec: what can be checked there.

libipsec implements neither AH nor IPComp (docs/interop.md), and charon with libipsec fakes
NAT detection so it always encapsulates. So against it: ipsecd's IPCOMP_SUPPORTED is
accepted by charon and, charon having no CPI to give (libipsec allocates none), the Child
SA comes up without compression in both roles, with traffic; and a charon asking for AH
is refused cleanly (AH is never negotiated across NAT/UDP encapsulation), while an ESP
alternative in the same SA payload is taken. AH and IPComp themselves are tested
ipsecd<->ipsecd (tests/netns_tests/test_ahcomp_two_ipsecd.py) and against scapy/zlib.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.ipsecd_proc import Ipsecd, ipsecd_config, why_no_ipsecd
from tests.netns import Topology, wait_for
from tests.strongswan import Charon, ChildParams, ConnParams

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(90),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PSK = "interop-test-psk-0123456789"
CONN, CHILD = "peer", "net"
IKE = "aes256gcm16-prfsha256-ecp256"


def _ipsecd(t: Topology, make: Callable[..., Ipsecd], *, initiator: bool, child: dict[str, object]) -> Ipsecd:
    return make(t.a, ipsecd_config(
        name=CONN, local_addrs=[t.a_addr], remote_addrs=[t.b_seen_from_a] if initiator else "%any",
        local_id="a.test", remote_id="b.test", psk=PSK, proposals=[IKE],
        children={CHILD: {"local_ts": [t.a_lan_net], "remote_ts": [t.b_lan_net], "mode": "tunnel",
                          "start_action": "none", **child}}), name="ipsecd")


def _charon(t: Topology, make: Callable[..., Charon], *, initiator: bool, esp: list[str],
            extra: dict[str, str]) -> Charon:
    return make(t.b, ConnParams(
        name=CONN, local_addrs=[t.b_addr], remote_addrs=[t.a_seen_from_b] if initiator else ["%any"],
        local_id="b.test", remote_id="a.test", psk=PSK, proposals=[IKE],
        children=[ChildParams(name=CHILD, local_ts=[t.b_lan_net], remote_ts=[t.a_lan_net], esp_proposals=esp,
                              extra=extra)]), name="charon")


@pytest.mark.parametrize("role", ["ipsecd-initiates", "charon-initiates"])
def test_ipcomp_offered_libipsec_declines(topology: Topology, charon_factory: Callable[..., Charon],
                                          ipsecd_factory: Callable[..., Ipsecd], role: str) -> None:
    t = topology
    we_init = role == "ipsecd-initiates"
    theirs = _charon(t, charon_factory, initiator=not we_init, esp=["aes256gcm16"], extra={"ipcomp": "yes"})
    ours = _ipsecd(t, ipsecd_factory, initiator=we_init, child={"esp_proposals": ["aes256gcm16"], "ipcomp": True})
    if we_init:
        ours.up(CONN)
    else:
        theirs.initiate(CHILD)
    our_ike = ours.wait_established(15, child=CHILD)
    theirs.wait_established(15, child=CHILD)
    (child,) = [c for c in our_ike["child_sas"] if c["state"] == "INSTALLED"]
    assert child["protocol"] == "esp" and child["ipcomp"] == [], child
    res = t.a.ping(t.b_lan, count=3, src=t.a_lan, deadline=6, check=False)
    assert res.returncode == 0, f"{res.stdout}{res.stderr}"
    if we_init:
        assert "peer declined IPComp" in ours.log_text()


def test_charon_asking_for_ah_is_refused_across_its_nat(topology: Topology, charon_factory: Callable[..., Charon],
                                                        ipsecd_factory: Callable[..., Ipsecd]) -> None:
    t = topology
    theirs = _charon(t, charon_factory, initiator=True, esp=["aes256gcm16"], extra={"ah_proposals": "sha256"})
    ours = _ipsecd(t, ipsecd_factory, initiator=False, child={"ah_proposals": ["sha256"],
                                                                "esp_proposals": ["aes256gcm16"]})
    theirs.initiate(CHILD)
    our_ike = ours.wait_established(15, child=CHILD)
    (child,) = [c for c in our_ike["child_sas"] if c["state"] == "INSTALLED"]
    assert child["protocol"] == "esp" and child["encap"] is True, child  # the ESP alternative, never AH
    res = t.a.ping(t.b_lan, count=3, src=t.a_lan, deadline=6, check=False)
    assert res.returncode == 0, f"{res.stdout}{res.stderr}"


def test_ah_only_refused_with_a_reason(topology: Topology, charon_factory: Callable[..., Charon],
                                       ipsecd_factory: Callable[..., Ipsecd]) -> None:
    t = topology
    theirs = _charon(t, charon_factory, initiator=True, esp=[], extra={"ah_proposals": "sha256"})
    ours = _ipsecd(t, ipsecd_factory, initiator=False, child={"ah_proposals": ["sha256"]})
    theirs.initiate(CHILD, check=False)
    wait_for("ipsecd refuses the AH Child SA", lambda: "AH is never used across a NAT" in ours.log_text(), 15)
    assert not [c for ike in ours.list_sas() for c in ike["child_sas"] if c["state"] == "INSTALLED"]
