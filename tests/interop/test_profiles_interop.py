"""The Linux client profile (``ipsecctl client-profile --platform linux``) as strongSwan 5.9.8's
whole configuration: it logs in to the ipsecd gateway it was generated from, with
EAP-MSCHAPv2 and with a certificate, gets a virtual IP, and pings cross both ways.

ipsecd is the gateway in namespace A (gw.example.com, LAN 10.1.0.0/24, pool 10.3.0.0/28),
charon the road warrior in B; nothing in the client's swanctl.conf is written by the test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, why_no_ipsecd
from tests.netns import Topology
from tests.pki import CLIENT_AUTH, Issued, TestPki
from tests.profile_clients import profile_client
from tests.ra_interop import CHILD, CONN, GW_ID, ipsecd_ra_config, write_ipsecd_creds
from tests.strongswan import Charon, swan_proposal

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

PASSWORD = "alice's Passw0rd"


def _gateway(make: Callable[..., Ipsecd], topo: Topology, tmp: Path, pki: TestPki,
             remote: dict[str, Any]) -> tuple[Ipsecd, Issued]:
    root = pki.root("Profiles Root CA", "p256")
    gw = pki.end_entity(root, GW_ID, "rsa2048")
    creds = write_ipsecd_creds(tmp / "gw-creds", own=[gw], cas=[root])
    doc = ipsecd_ra_config(topo, creds, local={"auth": "pubkey", "id": GW_ID, "certs": [f"{GW_ID}.pem"]},
                           remote=remote, proposals=("aes256gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"),
                           esp=("aes256gcm16", "aes256-sha256"), secrets={"eap": [{"id": "alice", "secret": PASSWORD}]},
                           settings={"lease_db": str(tmp / "gw-state" / "leases.db")}, pools=["rw4"])
    doc["connections"][CONN]["children"][CHILD]["remote_ts"] = ["dynamic"]
    doc["pools"] = {"rw4": {"addrs": "10.3.0.0/28", "dns": "10.1.0.53"}}
    return make(topo.a, doc, name="gw"), root


def _crosses(gw: Ipsecd, ch: Charon, topo: Topology) -> dict[str, Any]:
    """Both sides agree on SPIs and algorithms, the client has a pool address, pings cross both ways."""
    ours = gw.wait_established(20, child=CHILD)
    theirs = ch.wait_established(20, child=CONN)
    assert (ours["spi_i"], ours["spi_r"]) == (theirs["initiator-spi"], theirs["responder-spi"])
    assert ours["proposal"] == swan_proposal(theirs)
    (child,) = ours["child_sas"]
    (swan_child,) = theirs["child-sas"]
    assert (child["spi_in"], child["spi_out"]) == (swan_child["spi-out"], swan_child["spi-in"])
    assert child["proposal"] == swan_proposal(swan_child)
    (vip,) = theirs["local-vips"]
    assert vip.startswith("10.3.0.") and ours["remote_vips"] == [vip]
    assert swan_child["remote-ts"] == [topo.a_lan_net] and swan_child["local-ts"] == [f"{vip}/32"]
    topo.b.ping(topo.a_lan, count=3, deadline=8)
    topo.a.ping(vip, count=3, src=topo.a_lan, deadline=8)
    return ours


def test_linux_profile_eap_mschapv2(topology: Topology, charon_factory: Callable[..., Charon],
                                    ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path, pki: TestPki) -> None:
    gw, _ = _gateway(ipsecd_factory, topology, tmp_path, pki, {"auth": "eap-mschapv2", "eap_id": "%any"})
    ch = profile_client(charon_factory, topology.b, gw, CONN, "alice", tmp_path, server=topology.a_addr,
                        name="alice")
    ch.initiate(CONN, ike=CONN, timeout=20)
    ours = _crosses(gw, ch, topology)
    assert ours["remote_auth"] == "eap-mschapv2" and ours["remote_eap_id"] == "alice"


def test_linux_profile_certificate(topology: Topology, charon_factory: Callable[..., Charon],
                                   ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path, pki: TestPki) -> None:
    gw, root = _gateway(ipsecd_factory, topology, tmp_path, pki, {"auth": "pubkey", "id": "*@example.com"})
    carol = pki.end_entity(root, "carol@example.com", "p256", sans=["email:carol@example.com"], ekus=[CLIENT_AUTH])
    ch = profile_client(charon_factory, topology.b, gw, CONN, "carol@example.com", tmp_path,
                        server=topology.a_addr, name="carol", user_cert=carol)
    ch.initiate(CONN, ike=CONN, timeout=20)
    ours = _crosses(gw, ch, topology)
    assert ours["remote_auth"] == "pubkey" and ours["remote_id"] == "carol@example.com"
