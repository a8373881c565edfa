"""ipsecd as the remote-access gateway for strongSwan 5.9.8 road warriors (kernel-libipsec), and
ipsecd as a road warrior of a strongSwan gateway: certificates, RFC 7427, EAP-MSCHAPv2, EAP-TLS.

ipsecd runs in namespace A (gw.example.com, LAN 10.1.0.0/24), charon in B (LAN 10.2.0.0/24).
Every tunnel is checked from both sides (SPIs, algorithms) and carries pings both ways;
the refusals leave no SA and a log line that says why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.ipsecd_proc import Ipsecd, why_no_ipsecd
from tests.netns import Topology
from tests.pki import CLIENT_AUTH, TestPki, crl_bytes
from tests.ra_interop import (
    CHILD,
    CONN,
    GW_ID,
    CharonSide,
    compare,
    ipsecd_ra_config,
    never_up,
    start_charon,
    wait_log,
    write_ipsecd_creds,
)
from tests.strongswan import Charon

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

USERS = {"alice": "alice-Passw0rd", "bob": "bob-Passw0rd"}
# Windows 10/11 native defaults (the notes): no PFS, SHA-1, MODP-1024
WINDOWS_IKE = "aes256-sha1-modp1024"
WINDOWS_ESP = "aes256-sha1"


@pytest.fixture
def ra_pki(pki: TestPki) -> SimpleNamespace:
    root = pki.root("ipsecd RA root", "rsa3072")
    inter = pki.intermediate(root, "ipsecd RA intermediate", "rsa3072")
    return SimpleNamespace(root=root, inter=inter,
                           gw_rsa=pki.end_entity(inter, GW_ID, "rsa2048"),
                           gw_ecdsa=pki.end_entity(inter, GW_ID, "p256"))


def _gateway(make: Callable[..., Ipsecd], topo: Topology, tmp: Path, ra_pki: SimpleNamespace, *,
             remote: dict[str, object], gw: object = None, crls: list[object] | None = None,
             proposals: tuple[str, ...] = ("aes256gcm16-prfsha256-ecp256",), esp: tuple[str, ...] = ("aes256gcm16",),
             **kw: object) -> Ipsecd:
    creds = write_ipsecd_creds(tmp / "ipsecd-creds", own=[gw or ra_pki.gw_ecdsa], certs=[ra_pki.inter],
                               cas=[ra_pki.root], crls=crls or [])
    config = ipsecd_ra_config(topo, creds, local={"auth": "pubkey", "id": GW_ID, "certs": [f"{GW_ID}.pem"]},
                              remote=remote, proposals=proposals, esp=esp,
                              secrets={"eap": [{"id": u, "secret": p} for u, p in USERS.items()]}, **kw)
    return make(topo.a, config, name="ipsecd")


def _client_side(ra_pki: SimpleNamespace, **kw: object) -> CharonSide:
    kw.setdefault("remote", {"auth": "pubkey", "id": GW_ID})
    kw.setdefault("cas", [ra_pki.root])
    return CharonSide(**kw)  # type: ignore[arg-type]


def test_eap_mschapv2_windows_like(topology: Topology, charon_factory: Callable[..., Charon],
                                   ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                                   ra_pki: SimpleNamespace) -> None:
    """Windows' proposals, no RFC 7427 (classic RSA AUTH, method 1), IDi = its address, EAP-Identity."""
    ours = _gateway(ipsecd_factory, topology, tmp_path, ra_pki, gw=ra_pki.gw_rsa,
                    remote={"auth": "eap-mschapv2", "eap_id": "%any"},
                    proposals=(WINDOWS_IKE, "aes256gcm16-prfsha256-ecp256"), esp=(WINDOWS_ESP, "aes256gcm16"))
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "eap-mschapv2", "eap_id": "alice"}, eap_secrets={"alice": USERS["alice"]},
        proposals=WINDOWS_IKE, esp=WINDOWS_ESP, settings="  signature_authentication = no\n"), initiator=True)
    theirs.initiate(CHILD, ike=CONN)
    ike = compare(ours, theirs, topology, ike_text="AES_CBC-256/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024")
    assert ike["remote_id"] == topology.b_addr and ike["remote_auth"] == "eap-mschapv2"
    assert ike["remote_eap_id"] == "alice"
    assert "RSA PKCS#1 v1.5 SHA-1, AUTH method 1" in wait_log(ours, "authentication of .* \\(myself\\)")
    assert "authentication of 'gw.example.com' with RSA signature successful" in theirs.log_text()  # method 1


def test_eap_mschapv2_unknown_user_is_refused(topology: Topology, charon_factory: Callable[..., Charon],
                                              ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                                              ra_pki: SimpleNamespace) -> None:
    ours = _gateway(ipsecd_factory, topology, tmp_path, ra_pki, remote={"auth": "eap-mschapv2", "eap_id": "%any"})
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "eap-mschapv2", "eap_id": "mallory"}, eap_secrets={"mallory": "guess"}),
        initiator=True)
    theirs.initiate(CHILD, ike=CONN, check=False)
    never_up(ours, theirs, 2.0)
    # strongSwan does not retry after E=691 (nor does Windows without asking the user): it gives up
    wait_log(ours, "EAP login of 192.0.2.2 refused: no EAP secret for user mallory")
    assert "EAP-MS-CHAPv2 failed with error ERROR_AUTHENTICATION_FAILURE" in theirs.log_text()


def test_certificates_rsa3072_pss_with_a_chain(topology: Topology, charon_factory: Callable[..., Charon],
                                               ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                                               ra_pki: SimpleNamespace, pki: TestPki) -> None:
    """The client signs with RSASSA-PSS (charon.rsa_pss) under RFC 7427, and sends its intermediate."""
    client_ca = pki.intermediate(ra_pki.root, "ipsecd users CA", "rsa3072")
    client = pki.end_entity(client_ca, "alice@example.com", "rsa3072", sans=["email:alice@example.com"],
                            ekus=[CLIENT_AUTH])
    ours = _gateway(ipsecd_factory, topology, tmp_path, ra_pki, remote={"auth": "pubkey", "id": "*@example.com"})
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "pubkey", "id": "alice@example.com", "certs": "alice@example.com.pem"},
        own=[client], certs=[client_ca], settings="  rsa_pss = yes\n"), initiator=True)
    theirs.initiate(CHILD, ike=CONN)
    ike = compare(ours, theirs, topology)
    assert ike["remote_id"] == "alice@example.com" and ike["remote_auth"] == "pubkey"
    assert ike["remote_cert"] == "CN=alice@example.com"
    line = wait_log(ours, "authentication of 'alice@example.com' with")
    assert "RSASSA-PSS SHA-256" in line and "RFC 7427" in line and "ipsecd users CA" in line


def test_certificates_ed25519(topology: Topology, charon_factory: Callable[..., Charon],
                              ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                              ra_pki: SimpleNamespace, pki: TestPki) -> None:
    """RFC 8420: the client signs with Ed25519 (hash algorithm Identity, which the gateway announced)."""
    client = pki.end_entity(ra_pki.root, "laptop.example.com", "ed25519", ekus=[CLIENT_AUTH])
    ours = _gateway(ipsecd_factory, topology, tmp_path, ra_pki, remote={"auth": "pubkey", "id": "*.example.com"})
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "pubkey", "id": "laptop.example.com", "certs": "laptop.example.com.pem"},
        own=[client]), initiator=True)
    theirs.initiate(CHILD, ike=CONN)
    compare(ours, theirs, topology)
    assert "with Ed25519 (RFC 7427 signature) successful" in wait_log(ours, "authentication of 'laptop")


def test_eap_tls_ecdsa_p256(topology: Topology, charon_factory: Callable[..., Charon],
                            ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                            ra_pki: SimpleNamespace, pki: TestPki) -> None:
    client = pki.end_entity(ra_pki.root, "bob", "p256", sans=["email:bob@example.com"], ekus=[CLIENT_AUTH])
    ours = _gateway(ipsecd_factory, topology, tmp_path, ra_pki, remote={"auth": "eap-tls", "eap_id": "%any"})
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "eap-tls", "eap_id": "bob@example.com", "certs": "bob.pem"}, own=[client]),
        initiator=True)
    theirs.initiate(CHILD, ike=CONN)
    ike = compare(ours, theirs, topology)
    assert ike["remote_auth"] == "eap-tls" and ike["remote_eap_id"] == "bob@example.com"


def test_a_revoked_certificate_is_refused(topology: Topology, charon_factory: Callable[..., Charon],
                                          ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                                          ra_pki: SimpleNamespace, pki: TestPki) -> None:
    client = pki.end_entity(ra_pki.root, "eve.example.com", "p256", ekus=[CLIENT_AUTH])
    crl = pki.crl(ra_pki.root, [client.cert.serial_number])
    ours = _gateway(ipsecd_factory, topology, tmp_path, ra_pki, crls=[crl],
                    remote={"auth": "pubkey", "id": "*.example.com"})
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "pubkey", "id": "eve.example.com", "certs": "eve.example.com.pem"}, own=[client]),
        initiator=True)
    theirs.initiate(CHILD, ike=CONN, check=False)
    never_up(ours, theirs, 2.0)
    line = wait_log(ours, "IKE SA closed: certificate of eve.example.com refused")
    assert "(REVOKED)" in line and "keyCompromise" in line
    assert "received AUTHENTICATION_FAILED notify error" in theirs.log_text()


def test_ipsecd_as_eap_mschapv2_client_of_a_strongswan_gateway(topology: Topology,
                                                                charon_factory: Callable[..., Charon],
                                                                ipsecd_factory: Callable[..., Ipsecd],
                                                                tmp_path: Path, ra_pki: SimpleNamespace) -> None:
    theirs = start_charon(charon_factory, topology, tmp_path, CharonSide(
        local={"auth": "pubkey", "id": GW_ID, "certs": f"{GW_ID}.pem"},
        remote={"auth": "eap-mschapv2", "eap_id": "%any"},
        own=[ra_pki.gw_ecdsa], certs=[ra_pki.inter], cas=[ra_pki.root], eap_secrets=USERS), initiator=False)
    creds = write_ipsecd_creds(tmp_path / "ipsecd-creds", cas=[ra_pki.root])
    ours = ipsecd_factory(topology.a, ipsecd_ra_config(
        topology, creds, initiator=True, local={"auth": "eap-mschapv2", "eap_id": "bob"},
        remote={"auth": "pubkey", "id": GW_ID}, secrets={"eap": [{"id": "bob", "secret": USERS["bob"]}]}))
    ours.up(CONN)
    ike = compare(ours, theirs, topology)
    assert ike["initiator"] and ike["remote_id"] == GW_ID and ike["remote_auth"] == "pubkey"
    their_ike = theirs.list_sas()[0]
    assert their_ike.get("remote-eap-id") == "bob", their_ike


def test_eap_tls_only_rfc5998(topology: Topology, charon_factory: Callable[..., Charon],
                              ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                              ra_pki: SimpleNamespace, pki: TestPki) -> None:
    """EAP-only, configured on both ends as strongSwan does (eap-tls both ways): no gateway AUTH."""
    client = pki.end_entity(ra_pki.root, "carol", "p256", sans=["email:carol@example.com"], ekus=[CLIENT_AUTH])
    creds = write_ipsecd_creds(tmp_path / "ipsecd-creds", own=[ra_pki.gw_ecdsa], certs=[ra_pki.inter],
                               cas=[ra_pki.root])
    ours = ipsecd_factory(topology.a, ipsecd_ra_config(
        topology, creds, local={"auth": "eap-tls", "id": GW_ID, "certs": [f"{GW_ID}.pem"]},
        remote={"auth": "eap-tls", "eap_id": "%any"}))
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "eap-tls", "eap_id": "carol@example.com", "certs": "carol.pem"}, own=[client],
        remote={"auth": "eap-tls", "id": GW_ID}), initiator=True)
    theirs.initiate(CHILD, ike=CONN)
    ike = compare(ours, theirs, topology)
    assert ike["remote_auth"] == "eap-tls"
    assert "parsed IKE_AUTH response 1 [ IDr EAP/REQ/ID ]" in theirs.log_text()  # no CERT, no AUTH
    assert "allow mutual EAP-only authentication" in theirs.log_text()


def test_reload_swaps_credentials_without_dropping_tunnels(topology: Topology,
                                                           charon_factory: Callable[..., Charon],
                                                           ipsecd_factory: Callable[..., Ipsecd], tmp_path: Path,
                                                           ra_pki: SimpleNamespace, pki: TestPki) -> None:
    """A CRL added and `ipsecctl reload`: the established tunnel stays, the next login meets the CRL."""
    client = pki.end_entity(ra_pki.root, "frank.example.com", "p256", ekus=[CLIENT_AUTH])
    ours = _gateway(ipsecd_factory, topology, tmp_path, ra_pki, remote={"auth": "pubkey", "id": "*.example.com"})
    theirs = start_charon(charon_factory, topology, tmp_path, _client_side(
        ra_pki, local={"auth": "pubkey", "id": "frank.example.com", "certs": "frank.example.com.pem"},
        own=[client]), initiator=True)
    theirs.initiate(CHILD, ike=CONN)
    before = compare(ours, theirs, topology)
    listed = ours.ctl("list-certs").stdout
    assert f"x509/{GW_ID}.pem: certificate, has private key" in listed and "x509ca/ipsecd_RA_root.pem" in listed
    crl_dir = tmp_path / "ipsecd-creds" / "x509crl"
    (crl_dir / "root.crl").write_bytes(crl_bytes(pki.crl(ra_pki.root, [client.cert.serial_number])))
    ours.ctl("reload")
    assert "CRL of" in ours.ctl("list-certs").stdout
    (after,) = [s for s in ours.list_sas() if s["state"] == "ESTABLISHED"]
    assert after["spi_i"] == before["spi_i"]  # the running SA was not touched
    theirs.terminate(ike=CONN)
    theirs.initiate(CHILD, ike=CONN, check=False)
    wait_log(ours, r"certificate of frank\.example\.com refused \(REVOKED\)")
