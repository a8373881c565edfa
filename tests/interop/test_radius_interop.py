"""The ipsecd gateway with its users in FreeRADIUS: strongSwan 5.9.8 road warriors log in with
EAP-MSCHAPv2 and EAP-TLS relayed to RADIUS, accounting reaches the server, a second server
takes over when the first is gone.

ipsecd runs in namespace A; charon (the client) and two FreeRADIUS instances (192.0.2.3
and 192.0.2.4, each its own process and configuration) in B. The RADIUS round trips run
while the client waits for ipsecd's IKE_AUTH answers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.eap_pki import Issued as RadiusIssued
from tests.eap_pki import issue, make_ca
from tests.freeradius import FreeRadius, why_no_freeradius
from tests.ipsecd_proc import Ipsecd, why_no_ipsecd
from tests.netns import Topology
from tests.pki import CLIENT_AUTH, TestPki
from tests.pki import Issued as PkiIssued
from tests.ra_interop import (
    CHILD,
    CONN,
    GW_ID,
    CharonSide,
    compare,
    ipsecd_ra_config,
    start_charon,
    write_ipsecd_creds,
)
from tests.strongswan import Charon

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(150),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

SECRET = "radius-interop-secret"
USERS = {"alice": "alice-Passw0rd"}
PRIMARY, SECONDARY = "192.0.2.3", "192.0.2.4"


@dataclass
class Lab:
    topo: Topology
    primary: FreeRadius
    secondary: FreeRadius
    ca: RadiusIssued  # the RADIUS server's TLS CA (and the EAP-TLS users')
    gw: SimpleNamespace  # the gateway's IKE certificate


@pytest.fixture
def lab(topology: Topology, tmp_path: Path, pki: TestPki) -> Iterator[Lab]:
    why = why_no_freeradius()
    if why:
        pytest.skip(why)
    ca = make_ca("radius test CA")
    server = issue(ca, "radius.example", server=True)
    for ip in (PRIMARY, SECONDARY):
        topology.b.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
    common = {"secret": SECRET, "nas": "192.0.2.0/24", "users": USERS, "ca": ca, "server": server}
    primary = FreeRadius(topology.b, tmp_path / "r1", PRIMARY, **common)  # type: ignore[arg-type]
    secondary = FreeRadius(topology.b, tmp_path / "r2", SECONDARY, **common)  # type: ignore[arg-type]
    root = pki.root("gateway root", "p256")
    gw = SimpleNamespace(root=root, cert=pki.end_entity(root, GW_ID, "p256"))
    try:
        primary.start()
        yield Lab(topology, primary, secondary, ca, gw)
    finally:
        primary.stop()
        secondary.stop()


def _gateway(lab: Lab, make: Callable[..., Ipsecd], tmp: Path, **radius: object) -> Ipsecd:
    creds = write_ipsecd_creds(tmp / "ipsecd-creds", own=[lab.gw.cert], cas=[lab.gw.root])
    settings = {"eap-radius": {
        "secret": SECRET, "accounting": True, "nas_identifier": "ipsecd-interop",
        "servers": {"primary": {"address": PRIMARY}, "secondary": {"address": SECONDARY}}, **radius}}
    config = ipsecd_ra_config(lab.topo, creds, local={"auth": "pubkey", "id": GW_ID, "certs": [f"{GW_ID}.pem"]},
                              remote={"auth": "eap-radius", "eap_id": "%any"}, settings=settings)
    return make(lab.topo.a, config, name="ipsecd")


def _mschapv2_client(lab: Lab, make: Callable[..., Charon], tmp: Path) -> Charon:
    return start_charon(make, lab.topo, tmp, CharonSide(
        local={"auth": "eap-mschapv2", "eap_id": "alice"}, remote={"auth": "pubkey", "id": GW_ID},
        cas=[lab.gw.root], eap_secrets={"alice": USERS["alice"]}), initiator=True)


def _wait_detail(server: FreeRadius, pattern: str, timeout: float = 15.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = server.accounting_details()
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"no accounting record matching {pattern!r}:\n{server.accounting_details()[-3000:]}")


def test_eap_mschapv2_via_radius_with_accounting(lab: Lab, charon_factory: Callable[..., Charon],
                                                  ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path) -> None:
    ours = _gateway(lab, ipsecd_factory, tmp_path)
    theirs = _mschapv2_client(lab, charon_factory, tmp_path)
    theirs.initiate(CHILD, ike=CONN)
    ike = compare(ours, theirs, lab.topo)
    assert ike["remote_auth"] == "eap-radius" and ike["remote_eap_id"] == "alice"
    detail = _wait_detail(lab.primary, r"Acct-Status-Type = Start")
    assert 'User-Name = "alice"' in detail and 'NAS-Identifier = "ipsecd-interop"' in detail
    assert 'Calling-Station-Id = "192.0.2.2[4500]"' in detail
    theirs.terminate(ike=CONN)  # the client logs off: Stop with the bytes of the pings
    detail = _wait_detail(lab.primary, r"Acct-Status-Type = Stop")
    stop = detail[detail.index("Acct-Status-Type = Stop"):]
    octets = int(re.search(r"Acct-Input-Octets = (\d+)", stop).group(1))  # type: ignore[union-attr]
    packets = int(re.search(r"Acct-Input-Packets = (\d+)", stop).group(1))  # type: ignore[union-attr]
    assert packets >= 6 and octets >= 6 * 84, stop  # at least the 6 pings (84-octet ICMP in IPv4) went in
    assert "Acct-Terminate-Cause = User-Request" in stop and "Acct-Session-Time" in stop


def test_eap_tls_via_radius(lab: Lab, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
                            tmp_path: Path, pki: TestPki) -> None:
    """The TLS server is FreeRADIUS: the client checks its certificate (aaa_id), ipsecd only relays."""
    radius_ca = PkiIssued(lab.ca.cert, lab.ca.key)
    user = pki.issue("dave", radius_ca, "p256", sans=["email:dave@example.com"], ekus=[CLIENT_AUTH])
    ours = _gateway(lab, ipsecd_factory, tmp_path)
    theirs = start_charon(charon_factory, lab.topo, tmp_path, CharonSide(
        local={"auth": "eap-tls", "eap_id": "dave@example.com", "aaa_id": "radius.example", "certs": "dave.pem"},
        remote={"auth": "pubkey", "id": GW_ID}, own=[user], cas=[lab.gw.root, radius_ca]), initiator=True)
    theirs.initiate(CHILD, ike=CONN)
    ike = compare(ours, theirs, lab.topo)
    assert ike["remote_auth"] == "eap-radius" and ike["remote_eap_id"] == "dave@example.com"
    assert "EAP method EAP_TLS succeeded, MSK established" in theirs.log_text()


def test_a_second_server_takes_over(lab: Lab, charon_factory: Callable[..., Charon],
                                    ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path) -> None:
    lab.secondary.start()
    ours = _gateway(lab, ipsecd_factory, tmp_path, retransmit_timeout=0.5, retransmit_tries=2)
    lab.primary.stop()
    theirs = _mschapv2_client(lab, charon_factory, tmp_path)
    theirs.initiate(CHILD, ike=CONN)
    ike = compare(ours, theirs, lab.topo)
    assert ike["remote_eap_id"] == "alice"
    _wait_detail(lab.secondary, r"Acct-Status-Type = Start")  # accounting went to the live server too


def test_a_radius_reject_is_logged(lab: Lab, charon_factory: Callable[..., Charon],
                                   ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path) -> None:
    ours = _gateway(lab, ipsecd_factory, tmp_path)
    theirs = start_charon(charon_factory, lab.topo, tmp_path, CharonSide(
        local={"auth": "eap-mschapv2", "eap_id": "alice"}, remote={"auth": "pubkey", "id": GW_ID},
        cas=[lab.gw.root], eap_secrets={"alice": "not her password"}), initiator=True)
    theirs.initiate(CHILD, ike=CONN, check=False)
    end = time.monotonic() + 20
    while "rejected user alice" not in ours.log_text():
        assert time.monotonic() < end, ours.log_tail()
        time.sleep(0.2)
    assert not [s for s in ours.list_sas() if s["state"] == "ESTABLISHED"]
