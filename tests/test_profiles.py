"""Client profiles (ipsecd/profiles, ``ipsecctl client-profile``): each format validated.

The gateway is a real configuration file with a test PKI written in swanctl's layout;
the profiles must carry what that gateway accepts: plistlib round trip for Apple,
the .sswan keys for Android, the PowerShell cmdlets and parameter values for Windows,
swanctl.conf text (loaded into strongSwan by tests/interop/test_profiles_interop.py).
"""

from __future__ import annotations

import base64
import configparser
import io
import json
import plistlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from ipsecd.config import load_config
from ipsecd.control import cli
from ipsecd.credentials import load_store
from ipsecd.iana import ProtocolId
from ipsecd.ike.proposal import parse_proposals
from ipsecd.profiles import ClientAuth, GatewayView, Platform, ProfileError, gateway_view, generate, profile_request
from ipsecd.profiles.algorithms import APPLE, WINDOWS, pick_esp, pick_ike
from ipsecd.profiles.apple import PKCS12_PAYLOAD, ROOT_PAYLOAD, VPN_PAYLOAD
from ipsecd.profiles.linux import swan_value
from ipsecd.profiles.windows import ps_quote
from ipsecd.settings_from_config import validate_proposal
from tests.pki import TestPki, write_swanctl

GW = "vpn.example.com"
PASSWORD = "correct horse 'battery' \"staple\""


def _gateway(tmp_path: Path, pki: TestPki, *, remote: dict[str, Any] | None = None, key: str = "rsa2048",
             proposals: list[str] | None = None, esp: list[str] | None = None, local_ts: list[str] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
    root = pki.root("Example VPN Root CA", "p256")
    inter = pki.intermediate(root, "Example VPN Intermediate", "p256")
    gw = pki.end_entity(inter, GW, key)
    creds = write_swanctl(tmp_path / "creds", own=[gw], certs=[inter], cas=[root])
    doc: dict[str, Any] = {
        "connections": {"rw": {
            "local_addrs": ["192.0.2.10"], "remote_addrs": ["%any"],
            "proposals": proposals or ["aes256gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"],
            "send_cert": "always", "pools": ["rw4", "rw6"],
            "local": {"auth": "pubkey", "id": GW, "certs": [f"{GW}.pem"]},
            "remote": remote or {"auth": "eap-mschapv2", "eap_id": "%any"},
            "children": {"office": {"local_ts": local_ts or ["10.10.0.0/16", "fd00:10::/64"],
                                    "remote_ts": ["dynamic"],
                                    "esp_proposals": esp or ["aes256gcm16", "aes256-sha256"]}},
            **(extra or {}),
        }},
        "pools": {"rw4": {"addrs": "10.3.0.0/24", "dns": "10.10.0.53", "25": "corp.example"},
                  "rw6": {"addrs": "fd00:3::/112", "dns": "fd00:10::53"}},
        "secrets": {"eap": [{"id": "alice", "secret": PASSWORD}],
                    "ike": [{"id": [GW, "bob@example.com"], "secret": "a-psk-of-32-characters-0123456789"}]},
        "settings": {"credentials": str(creds), "lease_db": str(tmp_path / "leases.db")},
    }
    path = tmp_path / "ipsecd.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _view(path: Path, conn: str = "rw") -> tuple[Any, GatewayView]:
    config = load_config(path, proposal_validator=validate_proposal)
    store, _ = load_store(config.settings.credentials, config.key_passphrases())
    return config, gateway_view(config, conn, store)


def _generate(path: Path, platform: str, user: str = "alice", **kw: Any) -> Any:
    config, view = _view(path)
    return generate(view, profile_request(config, view, user, **kw), platform)


def test_view_reads_what_the_gateway_accepts(tmp_path: Path, pki: TestPki) -> None:
    _, view = _view(_gateway(tmp_path, pki))
    assert view.server == GW and view.gateway_id == GW and view.client_auth == ClientAuth.EAP_MSCHAPV2
    assert view.remote_ts == ("10.10.0.0/16", "fd00:10::/64") and view.vip4 and view.vip6
    assert view.dns == ("10.10.0.53", "fd00:10::53") and view.domains == ("corp.example",)
    (ca,) = view.cas  # the root above the intermediate, never the gateway's own certificate
    assert ca.name == "Example VPN Root CA"
    assert x509.load_pem_x509_certificate(ca.pem.encode()).subject.rfc4514_string() == "CN=Example VPN Root CA"
    assert view.gateway_key == "RSA" and view.eap_id_any


# ----------------------------------------------------------------------------- algorithm choice


@pytest.mark.parametrize(("ike", "esp", "windows", "apple"), [
    ("aes256gcm16-prfsha256-ecp256", "aes256gcm16",
     ("GCMAES256", "SHA256", "ECP256", "GCMAES256", None, "None"),  # the script repeats the cipher
     ("AES-256-GCM", "SHA2-256", 19, "AES-256-GCM", None, 0)),
    ("aes256-sha256-modp2048", "aes256-sha1",
     ("AES256", "SHA256", "Group14", "AES256", "SHA196", "None"),
     ("AES-256", "SHA2-256", 14, "AES-256", "SHA1-96", 0)),
    # x25519 first: Windows skips to ECP-384, Apple takes 31; PFS demanded with ecp384
    ("aes128-sha384-curve25519-ecp384", "aes128-sha256-ecp384",
     ("AES128", "SHA384", "ECP384", "AES128", "SHA256128", "ECP384"),
     ("AES-128", "SHA2-384", 31, "AES-128", "SHA2-256", 20)),
])
def test_one_suite_inside_the_gateways_proposals(ike: str, esp: str, windows: tuple[Any, ...],
                                                 apple: tuple[Any, ...]) -> None:
    ikes, esps = parse_proposals([ike], ProtocolId.IKE), parse_proposals([esp], ProtocolId.ESP)
    for alg, want in ((WINDOWS, windows), (APPLE, apple)):
        i, e = pick_ike(ikes, alg), pick_esp(esps, alg)
        assert i is not None and e is not None
        assert (i.encr, i.hash, i.group, e.encr, e.integ, e.pfs) == want


def test_nothing_windows_can_say_is_refused(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki, proposals=["chacha20poly1305-prfsha256-curve25519"])
    with pytest.raises(ProfileError, match="none of the gateway's IKE proposals can be expressed for Windows"):
        _generate(path, "windows")
    # Apple and strongSwan can
    assert "ChaCha20Poly1305" in _generate(path, "apple").files["rw.mobileconfig"]
    assert "proposals = chacha20poly1305-prfsha256-curve25519" in _generate(path, "linux").files["rw.swanctl.conf"]


# ----------------------------------------------------------------------------- the four formats


def test_windows_powershell(tmp_path: Path, pki: TestPki) -> None:
    prof = _generate(_gateway(tmp_path, pki), "windows")
    text = prof.files["rw.ps1"]
    assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
    assert "Import-Certificate -FilePath $caFile -CertStoreLocation Cert:\\LocalMachine\\Root" in text
    assert "-----BEGIN CERTIFICATE-----" in text and "PRIVATE KEY" not in text
    add = re.search(r"Add-VpnConnection .*?-Force", text, re.S)
    assert add is not None
    for arg in ("-ServerAddress 'vpn.example.com'", "-TunnelType Ikev2", "-AuthenticationMethod Eap",
                "-SplitTunneling", "-DnsSuffix 'corp.example'"):
        assert arg in add[0]
    assert re.search(r"Set-VpnConnectionIPsecConfiguration -ConnectionName \$Name `\r\n\s+-EncryptionMethod GCMAES256 "
                     r"-IntegrityCheckMethod SHA256 -DHGroup ECP256 `\r\n\s+-CipherTransformConstants GCMAES256 "
                     r"-AuthenticationTransformConstants GCMAES256 `\r\n\s+-PfsGroup None -Force", text), text
    assert "Add-VpnConnectionRoute -ConnectionName $Name -DestinationPrefix '10.10.0.0/16'" in text
    assert "Add-VpnConnectionRoute -ConnectionName $Name -DestinationPrefix 'fd00:10::/64'" in text
    assert PASSWORD not in text
    assert ps_quote("it's") == "'it''s'"


def test_windows_refuses_psk_and_eddsa(tmp_path: Path, pki: TestPki) -> None:
    with pytest.raises(ProfileError, match="pre-shared key"):
        _generate(_gateway(tmp_path / "1", pki, remote={"auth": "psk", "id": "%any"}), "windows", "bob@example.com")
    with pytest.raises(ProfileError, match="Ed25519 key: Windows cannot verify it"):
        _generate(_gateway(tmp_path / "2", pki, key="ed25519"), "windows")


def test_apple_mobileconfig_round_trips(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki)
    raw = _generate(path, "apple").files["rw.mobileconfig"]
    doc = plistlib.loads(raw.encode())
    assert doc["PayloadType"] == "Configuration" and doc["PayloadVersion"] == 1
    kinds = {p["PayloadType"]: p for p in doc["PayloadContent"]}
    assert set(kinds) == {ROOT_PAYLOAD, VPN_PAYLOAD}
    uuids = [doc["PayloadUUID"], *(p["PayloadUUID"] for p in doc["PayloadContent"])]
    assert len(set(uuids)) == len(uuids)
    root = x509.load_der_x509_certificate(kinds[ROOT_PAYLOAD]["PayloadContent"])
    assert root.subject.rfc4514_string() == "CN=Example VPN Root CA"
    vpn = kinds[VPN_PAYLOAD]
    ike = vpn["IKEv2"]
    assert vpn["VPNType"] == "IKEv2"
    assert (ike["RemoteAddress"], ike["RemoteIdentifier"], ike["AuthName"]) == (GW, GW, "alice")
    assert (ike["AuthenticationMethod"], ike["ExtendedAuthEnabled"]) == ("None", 1)
    assert "AuthPassword" not in ike
    assert ike["IKESecurityAssociationParameters"] == {"EncryptionAlgorithm": "AES-256-GCM",
                                                       "IntegrityAlgorithm": "SHA2-256", "DiffieHellmanGroup": 19,
                                                       "LifeTimeInMinutes": 1440}
    assert ike["ChildSecurityAssociationParameters"]["EncryptionAlgorithm"] == "AES-256-GCM"
    _, view = _view(path)
    assert ike["EnablePFS"] == 0 and ike["DisableMOBIKE"] == (0 if view.mobike else 1)  # what the gateway does
    assert vpn["DNS"] == {"ServerAddresses": ["10.10.0.53", "fd00:10::53"],
                          "SupplementalMatchDomains": ["corp.example"]}
    # regenerated: the same UUIDs, so importing it again replaces the profile
    again = plistlib.loads(_generate(path, "apple").files["rw.mobileconfig"].encode())
    assert again["PayloadUUID"] == doc["PayloadUUID"]
    with_pw = plistlib.loads(_generate(path, "apple", include_password=True).files["rw.mobileconfig"].encode())
    vpn_pw = next(p for p in with_pw["PayloadContent"] if p["PayloadType"] == VPN_PAYLOAD)
    assert vpn_pw["IKEv2"]["AuthPassword"] == PASSWORD


def test_apple_certificates_need_a_p12(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki, remote={"auth": "eap-tls", "id": "%any"})
    with pytest.raises(ProfileError, match="--p12"):
        _generate(path, "apple")
    doc = plistlib.loads(_generate(path, "apple", p12=b"PKCS12-BYTES").files["rw.mobileconfig"].encode())
    kinds = {p["PayloadType"]: p for p in doc["PayloadContent"]}
    ike = kinds[VPN_PAYLOAD]["IKEv2"]
    assert (ike["AuthenticationMethod"], ike["ExtendedAuthEnabled"]) == ("Certificate", 1)  # EAP-TLS
    assert ike["PayloadCertificateUUID"] == kinds[PKCS12_PAYLOAD]["PayloadUUID"]
    assert kinds[PKCS12_PAYLOAD]["PayloadContent"] == b"PKCS12-BYTES"


def test_android_sswan(tmp_path: Path, pki: TestPki) -> None:
    doc = json.loads(_generate(_gateway(tmp_path, pki), "android").files["rw.sswan"])
    assert {"uuid", "name", "type", "remote"} <= set(doc)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", doc["uuid"])
    assert doc["type"] == "ikev2-eap" and doc["local"] == {"eap_id": "alice"}
    assert doc["remote"]["addr"] == GW and doc["remote"]["id"] == GW
    ca = x509.load_der_x509_certificate(base64.b64decode(doc["remote"]["cert"]))
    assert ca.subject.rfc4514_string() == "CN=Example VPN Root CA"
    assert doc["ike-proposal"] == "aes256gcm16-prfsha256-ecp256" and doc["esp-proposal"] == "aes256gcm16"
    assert doc["split-tunneling"] == {"subnets": "10.10.0.0/16 fd00:10::/64"}
    assert PASSWORD not in json.dumps(doc)


def test_linux_swanctl_and_networkmanager(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki)
    files = _generate(path, "linux").files
    assert set(files) == {"rw.swanctl.conf", "rw.nmconnection", "rw-ca.pem"}
    conf = files["rw.swanctl.conf"]
    for line in ("remote_addrs = vpn.example.com", "vips = 0.0.0.0, ::",
                 "proposals = aes256gcm16-prfsha256-ecp256, aes256-sha256-modp2048", "auth = eap-mschapv2",
                 "eap_id = alice", "id = vpn.example.com", "cacerts = rw-ca.pem",
                 "remote_ts = 10.10.0.0/16, fd00:10::/64", "esp_proposals = aes256gcm16, aes256-sha256"):
        assert f"  {line}\n" in conf, line
    assert PASSWORD not in conf and "fill in" in conf
    with_pw = _generate(path, "linux", include_password=True).files
    assert f"secret = {swan_value(PASSWORD)}" in with_pw["rw.swanctl.conf"]
    assert swan_value(PASSWORD) == '"correct horse \'battery\' \\"staple\\""'
    nm = files["rw.nmconnection"]
    keyfile = configparser.ConfigParser(interpolation=None)
    keyfile.read_string(nm)  # GKeyFile is INI-shaped: sections, key=value
    assert keyfile["connection"]["type"] == "vpn" and keyfile["vpn"]["address"] == GW
    assert keyfile["vpn"]["certificate"] == "/etc/swanctl/x509ca/rw-ca.pem" and keyfile["ipv6"]["method"] == "auto"
    assert "service-type=org.freedesktop.NetworkManager.strongswan" in nm and "method=eap" in nm
    assert "password-flags=2" in nm and "[vpn-secrets]" not in nm
    assert "password-flags=0" in with_pw["rw.nmconnection"]
    assert files["rw-ca.pem"].startswith("-----BEGIN CERTIFICATE-----")


def test_certificate_login_profiles(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki, remote={"auth": "pubkey", "id": "*@example.com"})
    conf = _generate(path, "linux", "carol@example.com").files["rw.swanctl.conf"]
    assert "auth = pubkey" in conf and "id = carol@example.com" in conf and "certs = carol@example.com.pem" in conf
    assert "secrets {" not in conf
    assert json.loads(_generate(path, "android", "carol@example.com").files["rw.sswan"])["type"] == "ikev2-cert"
    assert "-AuthenticationMethod MachineCertificate" in _generate(path, "windows", "carol@example.com").files["rw.ps1"]


def test_gateway_that_does_not_ask_for_the_eap_identity(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki, remote={"auth": "eap-mschapv2", "id": "%any"})
    conf = _generate(path, "linux").files["rw.swanctl.conf"]
    assert "      id = alice\n      eap_id = alice\n" in conf  # IKE identity = EAP identity
    assert json.loads(_generate(path, "android").files["rw.sswan"])["local"] == {"eap_id": "alice", "id": "alice"}
    for platform in ("windows", "apple"):
        assert any("eap_id is not %any" in w for w in _generate(path, platform).warnings)


def test_passwords_only_when_asked_and_known(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki)
    with pytest.raises(ProfileError, match="no EAP secret for mallory"):
        _generate(path, "linux", "mallory", include_password=True)
    with pytest.raises(ProfileError, match="control characters"):
        _generate(path, "linux", "alice\n}")


def test_ipsecctl_client_profile(tmp_path: Path, pki: TestPki, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = _gateway(tmp_path, pki)
    assert cli.main(["client-profile", "rw", "--user", "alice", "--platform", "android", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["local"] == {"eap_id": "alice"}
    out = tmp_path / "out"
    assert cli.main(["client-profile", "rw", "--user", "alice", "--platform", "linux", "--config", str(path),
                     "--include-password", "--out", str(out)]) == 0
    assert (out / "rw.swanctl.conf").stat().st_mode & 0o077 == 0
    assert cli.main(["client-profile", "nope", "--user", "alice", "--platform", "linux", "--config", str(path)]) == 1
    assert "no connection 'nope'" in capsys.readouterr().err
    assert cli.main(["client-profile", "rw", "--user", "alice", "--platform", "beos", "--config", str(path)]) == 2
    # without --config: the file the running daemon loaded (its status), else the default path
    monkeypatch.setattr(cli, "_daemon_config", lambda socket_path: str(path))
    assert cli.main(["client-profile", "rw", "--user", "alice", "--platform", "android"]) == 0
    assert json.loads(capsys.readouterr().out)["remote"]["addr"] == GW
    monkeypatch.setattr(cli, "_daemon_config", lambda socket_path: None)
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(tmp_path / "missing.yaml"))
    assert cli.main(["client-profile", "rw", "--user", "alice", "--platform", "android"]) == 1
    assert "missing.yaml: cannot read configuration" in capsys.readouterr().err
    assert cli._daemon_config(str(tmp_path / "no-daemon.sock")) is None
    buf = io.StringIO()
    assert cli._client_profile(cli._parser().parse_args(
        ["client-profile", "rw", "--user", "alice", "--platform", "windows", "--config", str(path)]), buf) == 0
    assert "Add-VpnConnection" in buf.getvalue()


@pytest.mark.parametrize("platform", [p.value for p in Platform])
def test_every_platform_for_the_example_gateway(tmp_path: Path, pki: TestPki, platform: str) -> None:
    prof = _generate(_gateway(tmp_path, pki), platform)
    assert prof.files and all("PRIVATE KEY" not in text for text in prof.files.values())


def test_full_tunnel_and_psk(tmp_path: Path, pki: TestPki) -> None:
    path = _gateway(tmp_path, pki, remote={"auth": "psk", "id": "%any"}, local_ts=["0.0.0.0/0", "::/0"])
    apple = plistlib.loads(_generate(path, "apple", "bob@example.com", include_password=True)
                           .files["rw.mobileconfig"].encode())
    vpn = next(p for p in apple["PayloadContent"] if p["PayloadType"] == VPN_PAYLOAD)
    assert vpn["IPv4"] == {"OverridePrimary": 1}  # everything through the tunnel
    assert (vpn["IKEv2"]["AuthenticationMethod"], vpn["IKEv2"]["SharedSecret"]) == (
        "SharedSecret", "a-psk-of-32-characters-0123456789")
    conf = _generate(path, "linux", "bob@example.com", include_password=True).files["rw.swanctl.conf"]
    assert "remote_ts = 0.0.0.0/0, ::/0" in conf and "auth = psk" in conf
    assert "id-2 = vpn.example.com" in conf and "secret = a-psk-of-32-characters-0123456789" in conf
    assert "PRE-SHARED KEY" in _generate(path, "linux", "bob@example.com").files["rw.swanctl.conf"]
    with pytest.raises(ProfileError, match="no PSK profiles"):
        _generate(path, "android", "bob@example.com")
    path2 = _gateway(tmp_path / "2", pki, local_ts=["0.0.0.0/0"])
    ps1 = _generate(path2, "windows").files["rw.ps1"]
    assert "-SplitTunneling" not in ps1 and "Add-VpnConnectionRoute" not in ps1
    assert "split-tunneling" not in json.loads(_generate(path2, "android").files["rw.sswan"])
