"""ipsecd against strongSwan with identities beyond FQDNs: DNs, wildcard patterns, key ids and
the default identity (the IKE SA's address), in both roles.

What strongSwan checks for us: that our DER DN and key-id bytes are the ones its own
parser makes from the same text (charon compares the IDi/IDr we send with its config),
that its display of our identity equals ours, and that our patterns accept what it sends.
ipsecd sits in namespace A, charon in B, as in test_ike_interop.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.ipsecd_proc import Ipsecd, child_config, ipsecd_config, why_no_ipsecd
from tests.netns import Topology
from tests.strongswan import Charon, ChildParams, ConnParams

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(90),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PSK = "interop-identity-psk-0123456789"
CONN = "peer"
CHILD = "net"
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
ROLES = ["ipsecd-initiates", "charon-initiates"]
ADDRESS = "(address)"  # stands for topology.a_addr: ipsecd's default identity


@dataclass(frozen=True)
class Case:
    ours_local: str | None  # None: no local id (the IKE SA's address)
    ours_remote: str
    swan_local: str
    swan_remote: str
    shown_ours: str  # how both sides display ipsecd's identity
    shown_theirs: str  # ... and charon's


CASES = {
    "dn": Case("C=CH, O=ipsecd test, CN=a.test", "C=CH, O=ipsecd test, CN=*",
               "C=CH, O=ipsecd test, CN=b.test", "C=CH, O=ipsecd test, CN=a.test",
               "C=CH, O=ipsecd test, CN=a.test", "C=CH, O=ipsecd test, CN=b.test"),
    "dn-slashes-and-email": Case("/C=CH/O=ipsecd, test/E=alice@a.test", "/C=CH/O=ipsecd, test/CN=*",
                                 "/C=CH/O=ipsecd, test/CN=b.test", "/C=CH/O=ipsecd, test/E=alice@a.test",
                                 "C=CH, O=ipsecd, test, E=alice@a.test", "C=CH, O=ipsecd, test, CN=b.test"),
    "fqdn-wildcard": Case("a.test", "*.test", "b.test", "a.test", "a.test", "b.test"),
    "email-wildcard": Case("alice@a.test", "*@b.test", "bob@b.test", "alice@a.test", "alice@a.test", "bob@b.test"),
    "keyid": Case("@#0a0b0c", "keyid:#0d0e0f", "@#0d0e0f", "@#0a0b0c", "0a:0b:0c", "0d:0e:0f"),
    "default-address": Case(None, "b.test", "b.test", ADDRESS, ADDRESS, "b.test"),
}


def _q(text: str) -> str:
    """swanctl.conf value: quoted, so commas, spaces and '#' (a comment otherwise) survive."""
    return f'"{text}"'


def _start(topo: Topology, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
           case: Case, we_init: bool) -> tuple[Ipsecd, Charon]:
    def addr(text: str) -> str:
        return topo.a_addr if text == ADDRESS else text

    theirs = charon_factory(topo.b, ConnParams(
        name=CONN, local_addrs=[topo.b_addr], remote_addrs=[topo.a_seen_from_b] if not we_init else ["%any"],
        local_id=_q(case.swan_local), remote_id=_q(addr(case.swan_remote)), psk=PSK, proposals=[IKE],
        children=[ChildParams(name=CHILD, local_ts=[topo.b_lan_net], remote_ts=[topo.a_lan_net],
                              esp_proposals=[ESP])]), name="charon")
    local = case.ours_local if case.ours_local is not None else topo.a_addr
    config = ipsecd_config(
        name=CONN, local_addrs=[topo.a_addr], remote_addrs=[topo.b_seen_from_a] if we_init else "%any",
        local_id=local, remote_id=case.ours_remote, psk=PSK, proposals=[IKE],
        children={CHILD: child_config(local_ts=[topo.a_lan_net], remote_ts=[topo.b_lan_net], esp_proposals=[ESP])})
    if case.ours_local is None:
        del config["connections"][CONN]["local"]["id"]  # the secret still names our address
    ours = ipsecd_factory(topo.a, config, name="ipsecd")
    return ours, theirs


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_identities(topology: Topology, charon_factory: Callable[..., Charon],
                    ipsecd_factory: Callable[..., Ipsecd], case: Case, role: str) -> None:
    we_init = role == "ipsecd-initiates"
    ours, theirs = _start(topology, charon_factory, ipsecd_factory, case, we_init)
    if we_init:
        ours.up(CONN)
    else:
        theirs.initiate(CHILD)
    our_ike, their_ike = ours.wait_established(15, child=CHILD), theirs.wait_established(15, child=CHILD)
    shown_ours = topology.a_addr if case.shown_ours == ADDRESS else case.shown_ours
    assert our_ike["local_id"] == their_ike["remote-id"] == shown_ours
    assert our_ike["remote_id"] == their_ike["local-id"] == case.shown_theirs


def test_pattern_refuses_other_identities(topology: Topology, charon_factory: Callable[..., Charon],
                                          ipsecd_factory: Callable[..., Ipsecd]) -> None:
    """charon's DN is outside our pattern (other O=): no SA, and our log says why."""
    case = Case("C=CH, O=ipsecd test, CN=a.test", "C=CH, O=ipsecd test, CN=*",
                "C=CH, O=elsewhere, CN=b.test", "C=CH, O=ipsecd test, CN=a.test", "", "")
    ours, theirs = _start(topology, charon_factory, ipsecd_factory, case, we_init=False)
    theirs.initiate(CHILD, check=False, timeout=8)
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        assert not any(sa.get("state") == "ESTABLISHED" for sa in ours.list_sas())
        time.sleep(0.25)
    assert re.search(r"no connection accepts peer identity C=CH, O=elsewhere, CN=b\.test", ours.log_text()), \
        ours.log_tail()
