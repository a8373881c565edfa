"""ipsecd against strongSwan: IKEv2 PSK in both roles, three proposal sets, and two failures.

ipsecd always sits in namespace A (a.test, 10.1.0.0/24), charon in B (b.test,
10.2.0.0/24); only who initiates changes.  Each side's own report is compared with
the other's: SPIs mirrored, the same algorithms (ipsecd's ``proposal`` string against
the one built from charon's vici fields), traffic selectors swapped.

charon's first Child SA rides in IKE_AUTH and so never uses a PFS group; the ESP
proposals therefore carry no group.  charon with kernel-libipsec always floats to UDP
4500 and encapsulates ESP (it fakes NAT detection), so ipsecd must do NAT-T here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Topology
from tests.strongswan import Charon, ChildParams, ConnParams, swan_proposal

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(90),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PSK = "interop-test-psk-0123456789"
CONN = "peer"
CHILD = "net"

PROPOSALS = [
    pytest.param("aes256gcm16-prfsha256-ecp256", "aes256gcm16",
                 "AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256", "AES_GCM_16-256", id="aesgcm-ecp256"),
    pytest.param("aes128-sha256-modp2048", "aes128-sha256",
                 "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048", "AES_CBC-128/HMAC_SHA2_256_128",
                 id="aescbc-modp2048"),
    pytest.param("chacha20poly1305-prfsha256-x25519", "chacha20poly1305",
                 "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519", "CHACHA20_POLY1305", id="chapoly-x25519"),
]
ROLES = ["ipsecd-initiates", "charon-initiates"]


def _ipsecd(topo: Topology, make: Callable[..., Ipsecd], *, initiator: bool, ike: str, esp: str,
            psk: str = PSK) -> Ipsecd:
    return make(topo.a, ipsecd_config(
        name=CONN, local_addrs=[topo.a_addr],
        remote_addrs=[topo.b_seen_from_a] if initiator else "%any",
        local_id="a.test", remote_id="b.test", psk=psk, proposals=[ike],
        children={CHILD: child_config(local_ts=[topo.a_lan_net], remote_ts=[topo.b_lan_net],
                                      esp_proposals=[esp], mode="tunnel", start_action="none")}),
        name="ipsecd")


def _charon(topo: Topology, make: Callable[..., Charon], *, initiator: bool, ike: str, esp: str,
            psk: str = PSK) -> Charon:
    return make(topo.b, ConnParams(
        name=CONN, local_addrs=[topo.b_addr],
        remote_addrs=[topo.a_seen_from_b] if initiator else ["%any"],
        local_id="b.test", remote_id="a.test", psk=psk, proposals=[ike],
        children=[ChildParams(name=CHILD, local_ts=[topo.b_lan_net], remote_ts=[topo.a_lan_net],
                              esp_proposals=[esp])]), name="charon")


def _installed(children: list[dict[str, Any]]) -> dict[str, Any]:
    kids = [c for c in children if c.get("state") == "INSTALLED"]
    assert len(kids) == 1, children
    return kids[0]


def _establish(role: str, ours: Ipsecd, theirs: Charon) -> tuple[dict[str, Any], dict[str, Any]]:
    if role == "ipsecd-initiates":
        ours.up(CONN)
    else:
        theirs.initiate(CHILD)
    return ours.wait_established(15, child=CHILD), theirs.wait_established(15, child=CHILD)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("ike", "esp", "ike_text", "esp_text"), PROPOSALS)
def test_psk_tunnel(topology: Topology, charon_factory: Callable[..., Charon],
                    ipsecd_factory: Callable[..., Ipsecd], role: str,
                    ike: str, esp: str, ike_text: str, esp_text: str) -> None:
    """Both sides agree on state, SPIs, algorithms, identities and traffic selectors."""
    we_init = role == "ipsecd-initiates"
    theirs = _charon(topology, charon_factory, initiator=not we_init, ike=ike, esp=esp)
    ours = _ipsecd(topology, ipsecd_factory, initiator=we_init, ike=ike, esp=esp)
    our_ike, their_ike = _establish(role, ours, theirs)
    our_child, their_child = _installed(our_ike["child_sas"]), _installed(their_ike["child-sas"])

    assert our_ike["state"] == their_ike["state"] == "ESTABLISHED"
    assert bool(our_ike["initiator"]) is we_init
    assert (their_ike.get("initiator") == "yes") is (not we_init)
    assert our_ike["local_id"] == their_ike["remote-id"] == "a.test"
    assert our_ike["remote_id"] == their_ike["local-id"] == "b.test"
    assert their_ike["remote-host"] in str(our_ike["local"])
    assert their_ike["local-host"] in str(our_ike["remote"])

    assert re.fullmatch(r"[0-9a-f]{8}", our_child["spi_in"]), our_child
    assert our_child["spi_in"] == their_child["spi-out"]
    assert our_child["spi_out"] == their_child["spi-in"]

    assert our_ike["proposal"] == swan_proposal(their_ike) == ike_text
    assert our_child["proposal"] == swan_proposal(their_child) == esp_text

    assert our_child["local_ts"] == their_child["remote-ts"] == [topology.a_lan_net]
    assert our_child["remote_ts"] == their_child["local-ts"] == [topology.b_lan_net]
    assert str(our_child["mode"]).upper() == their_child["mode"] == "TUNNEL"
    assert our_child["encap"] in (True, "yes") and their_child["encap"] == "yes"


@pytest.mark.parametrize("role", ROLES)
def test_ping_through_tunnel(topology: Topology, charon_factory: Callable[..., Charon],
                             ipsecd_factory: Callable[..., Ipsecd], role: str) -> None:
    """ICMP from A's LAN to B's LAN and back crosses ipsecd's ESP-in-UDP and charon's libipsec."""
    we_init = role == "ipsecd-initiates"
    ike, esp = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
    theirs = _charon(topology, charon_factory, initiator=not we_init, ike=ike, esp=esp)
    ours = _ipsecd(topology, ipsecd_factory, initiator=we_init, ike=ike, esp=esp)
    _establish(role, ours, theirs)
    res = topology.a.ping(topology.b_lan, count=3, src=topology.a_lan, deadline=6, check=False)
    assert res.returncode == 0, f"{res.stdout}{res.stderr}"
    their_child = _installed(theirs.list_sas()[0]["child-sas"])
    assert their_child["packets-in"] >= 3 and their_child["packets-out"] >= 3, their_child


def _never_established(ours: Ipsecd, theirs: Charon, seconds: float) -> None:
    """Poll both sides for ``seconds``; any ESTABLISHED IKE SA fails the test."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sa in ours.list_sas():
            assert sa.get("state") != "ESTABLISHED", sa
        for sa in theirs.list_sas():
            assert sa.get("state") != "ESTABLISHED", sa
        time.sleep(0.25)


@pytest.mark.parametrize("role", ROLES)
def test_wrong_psk(topology: Topology, charon_factory: Callable[..., Charon],
                   ipsecd_factory: Callable[..., Ipsecd], role: str) -> None:
    """Different PSKs: no SA on either side, and ipsecd's log says authentication failed."""
    we_init = role == "ipsecd-initiates"
    ike, esp = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
    theirs = _charon(topology, charon_factory, initiator=not we_init, ike=ike, esp=esp, psk="charon-psk-1111")
    ours = _ipsecd(topology, ipsecd_factory, initiator=we_init, ike=ike, esp=esp, psk="ipsecd-psk-2222")
    if we_init:
        ours.up(CONN, check=False)
    else:
        theirs.initiate(CHILD, check=False, timeout=8)
    _never_established(ours, theirs, 4.0)
    assert re.search(r"authentication\b.{0,60}\bfail|AUTHENTICATION_FAILED", ours.log_text(), re.IGNORECASE), \
        ours.log_tail()


@pytest.mark.parametrize("role", ROLES)
def test_no_common_proposal(topology: Topology, charon_factory: Callable[..., Charon],
                            ipsecd_factory: Callable[..., Ipsecd], role: str) -> None:
    """Disjoint IKE proposals: no SA, and charon's log shows NO_PROPOSAL_CHOSEN.

    charon as initiator logs ``received NO_PROPOSAL_CHOSEN notify error``; as responder
    it logs ``no acceptable proposal found`` and sends ``N(NO_PROP)`` (enc=1 short form).
    """
    we_init = role == "ipsecd-initiates"
    theirs = _charon(topology, charon_factory, initiator=not we_init,
                     ike="aes256gcm16-prfsha256-ecp256", esp="aes256gcm16")
    ours = _ipsecd(topology, ipsecd_factory, initiator=we_init,
                   ike="aes128-sha256-modp2048", esp="aes128-sha256")
    if we_init:
        ours.up(CONN, check=False)
    else:
        theirs.initiate(CHILD, check=False, timeout=8)
    _never_established(ours, theirs, 3.0)
    assert re.search(r"NO_PROPOSAL_CHOSEN|N\(NO_PROP\)", theirs.log_text()), theirs.log_tail()
