"""charon <-> charon in two namespaces: proves the harness before ipsecd is put in either seat.

If these fail, the problem is the environment or the harness (namespaces, plugin list,
/run bind mount, vici socket, the raw list-sas parser), not ipsecd.  The proposal
cases also pin down what strongSwan reports for each algorithm set, which the
ipsecd interop tests compare against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.netns import Topology
from tests.strongswan import Charon, ChildParams, ConnParams, swan_proposal

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.timeout(60)]


def _pair(topo: Topology, make: Callable[..., Charon], ike: str, esp: str) -> tuple[Charon, Charon]:
    """Charon A (initiator, a.test, 10.1.0.0/24) and charon B (responder for %any, b.test, 10.2.0.0/24)."""
    a = make(topo.a, ConnParams(
        local_addrs=[topo.a_addr], remote_addrs=[topo.b_seen_from_a], local_id="a.test", remote_id="b.test",
        proposals=[ike], children=[ChildParams(local_ts=[topo.a_lan_net], remote_ts=[topo.b_lan_net],
                                               esp_proposals=[esp])]), name="a")
    b = make(topo.b, ConnParams(
        local_addrs=[topo.b_addr], remote_addrs=["%any"], local_id="b.test", remote_id="a.test",
        proposals=[ike], children=[ChildParams(local_ts=[topo.b_lan_net], remote_ts=[topo.a_lan_net],
                                               esp_proposals=[esp])]), name="b")
    return a, b


def _only_child(ike: dict[str, Any]) -> dict[str, Any]:
    children = [c for c in ike["child-sas"] if c["state"] == "INSTALLED"]
    assert len(children) == 1, ike
    return children[0]


def test_charon_to_charon_psk_aes_gcm(topology: Topology, charon_factory: Callable[..., Charon]) -> None:
    """Both ends ESTABLISHED/INSTALLED with mirrored SPIs, then ICMP flows through libipsec."""
    a, b = _pair(topology, charon_factory, "aes256gcm16-prfsha256-ecp256", "aes256gcm16")
    a.initiate("net")
    ike_a = a.wait_established(10, child="net")
    ike_b = b.wait_established(10, child="net")
    child_a, child_b = _only_child(ike_a), _only_child(ike_b)

    assert ike_a["initiator"] == "yes" and ike_b.get("initiator") != "yes"
    assert (ike_a["local-id"], ike_a["remote-id"]) == ("a.test", "b.test")
    assert (ike_b["local-id"], ike_b["remote-id"]) == ("b.test", "a.test")
    assert child_a["spi-in"] == child_b["spi-out"]
    assert child_a["spi-out"] == child_b["spi-in"]
    assert child_a["local-ts"] == child_b["remote-ts"] == [topology.a_lan_net]
    assert child_a["remote-ts"] == child_b["local-ts"] == [topology.b_lan_net]
    assert swan_proposal(ike_a) == swan_proposal(ike_b) == "AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256"
    assert swan_proposal(child_a) == swan_proposal(child_b) == "AES_GCM_16-256"
    # kernel-libipsec fakes NAT detection: IKE floats to 4500 and ESP is UDP-encapsulated.
    assert ike_a["local-port"] == ike_a["remote-port"] == 4500
    assert child_a["mode"] == "TUNNEL" and child_a["encap"] == "yes"

    res = topology.a.ping(topology.b_lan, count=3, src=topology.a_lan, deadline=5, check=False)
    assert res.returncode == 0, f"{res.stdout}{res.stderr}\n{a.log_tail()}\n{b.log_tail()}"
    child_a = _only_child(a.list_sas()[0])
    assert child_a["packets-out"] >= 3 and child_a["packets-in"] >= 3, child_a


@pytest.mark.parametrize(("ike", "esp", "ike_text", "esp_text"), [
    ("aes128-sha256-modp2048", "aes128-sha256",
     "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048", "AES_CBC-128/HMAC_SHA2_256_128"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305",
     "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519", "CHACHA20_POLY1305"),
])
def test_charon_to_charon_proposals(topology: Topology, charon_factory: Callable[..., Charon],
                                    ike: str, esp: str, ike_text: str, esp_text: str) -> None:
    """The other interop proposal sets work charon-to-charon and print as the ipsecd tests expect."""
    a, b = _pair(topology, charon_factory, ike, esp)
    a.initiate("net")
    ike_a, ike_b = a.wait_established(10, child="net"), b.wait_established(10, child="net")
    assert swan_proposal(ike_a) == swan_proposal(ike_b) == ike_text
    assert swan_proposal(_only_child(ike_a)) == swan_proposal(_only_child(ike_b)) == esp_text
    res = topology.a.ping(topology.b_lan, count=2, src=topology.a_lan, deadline=5, check=False)
    assert res.returncode == 0, res.stdout


def test_charon_to_charon_through_nat(nat_topology: Topology, charon_factory: Callable[..., Charon]) -> None:
    """The NAT layout works: B sees A as the NAT's outside address and real NAT is detected."""
    topo = nat_topology
    a, b = _pair(topo, charon_factory, "aes256gcm16-prfsha256-ecp256", "aes256gcm16")
    a.initiate("net")
    ike_a, ike_b = a.wait_established(10, child="net"), b.wait_established(10, child="net")
    assert ike_b["remote-host"] == topo.a_seen_from_b != topo.a_addr
    assert ike_a["local-host"] == topo.a_addr
    assert ike_a.get("nat-local") == "yes", ike_a  # A's own address is translated: a real NAT, not the fake one
    res = topo.a.ping(topo.b_lan, count=2, src=topo.a_lan, deadline=5, check=False)
    assert res.returncode == 0, res.stdout
