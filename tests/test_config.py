"""The YAML config loader: examples load, every bad input names file:line key.path and what is wrong."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.config import (
    KEY_SECTIONS,
    NOT_IMPLEMENTED,
    ChildMode,
    CloseAction,
    Config,
    ConfigValidationError,
    ConnectionConfig,
    DataplaneSettings,
    DpdAction,
    Fragmentation,
    IkeSecret,
    RetransmitConfig,
    SendCert,
    Settings,
    StartAction,
    TsConfig,
    Unique,
    check_config_main,
    load_config,
    parse_duration,
    parse_volume,
)
from ipsecd.errors import ConfigError
from ipsecd.iana import IdType
from ipsecd.identity import _DN_ATTRS, ANY_IDENTITY, Identity
from ipsecd.settings_from_config import validate_proposal

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXAMPLES = sorted(CONFIGS.rglob("*.yaml"))  # configs/demo/ too

# A small valid file; tests append to or edit it. Line numbers below refer to it.
BASE = """\
connections:
  b:
    local_addrs: [192.0.2.1]
    remote_addrs: [192.0.2.2]
    local:
      auth: psk
      id: a.test
    remote:
      auth: psk
      id: b.test
    children:
      net:
        local_ts: [10.1.0.0/24]
        remote_ts: [10.2.0.0/24]
secrets:
  ike:
    - id: [a.test, b.test]
      secret: 0x00112233445566778899aabbccddeeff
"""


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)  # type: ignore[arg-type]
    return str(info.value).splitlines()


# --------------------------------------------------------------------------- examples


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "site-to-site-psk.yaml",
        "road-warrior-responder.yaml",
        "host-to-host-transport.yaml",
        "route-based.yaml",
        "ra-eap-mschapv2.yaml",
        "ra-certificates.yaml",
        "ra-eap-tls.yaml",
        "ra-eap-radius.yaml",
        "ra-client-eap.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    calls: list[tuple[str, str]] = []
    config = load_config(path, proposal_validator=lambda kind, text: calls.append((kind, text)))
    assert config.connections
    assert config.source == path
    assert {k for k, _ in calls} == {"ike", "esp"}
    for conn in config.connections.values():
        if "psk" in (conn.local.auth, conn.remote.auth):
            assert config.find_psk(conn.local.id, conn.remote.id) is not None or conn.remote.id == ANY_IDENTITY
        if conn.remote.auth in ("eap-mschapv2", "eap-dynamic"):
            assert config.eap_secrets
        if conn.local.auth == "eap-mschapv2":
            assert conn.local.eap_id is not None and config.find_eap_secret(conn.local.eap_id) is not None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_example_passes_check_config_without_warnings(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An example promises nothing ipsecd does not do: no 'accepted but not implemented yet', no weak key."""
    assert check_config_main(path, proposal_validator=validate_proposal) == 0
    out = capsys.readouterr()
    assert out.err == "" and out.out.startswith("configuration OK:")


def test_site_to_site_values() -> None:
    config = load_config(CONFIGS / "site-to-site-psk.yaml")
    conn = config.connections["hq-branch"]
    assert conn.local_addrs == (ip_address("192.0.2.1"),)
    assert conn.remote_addrs == (ip_address("198.51.100.1"),)
    assert not conn.remote_any
    assert conn.proposals == ("aes256gcm16-prfsha256-ecp256",)
    assert conn.dpd_delay == 30.0
    assert conn.local.id == Identity.parse("gw-a.example.net")
    child = conn.children["lan-lan"]
    assert child.local_ts == (TsConfig(ip_network("10.1.0.0/24")),)
    assert child.start_action is StartAction.START
    assert child.close_action is CloseAction.START
    assert child.dpd_action is DpdAction.RESTART
    assert child.mss_clamp == "auto"
    assert config.find_psk("gw-a.example.net", "gw-b.example.net") == bytes.fromhex(
        "6a0b8f2e3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"
    )


def test_road_warrior_values() -> None:
    config = load_config(CONFIGS / "road-warrior-responder.yaml")
    conn = config.connections["rw"]
    assert conn.remote_any and conn.remote_addrs == ()
    assert conn.remote.id is not None and conn.remote.id.is_any
    assert conn.local.id == Identity(IdType.ID_FQDN, b"vpn.example.com")
    assert conn.unique is Unique.REPLACE and conn.mobike
    assert config.warnings == ()
    assert conn.children["office"].remote_ts == (TsConfig(None),)
    assert config.find_psk("vpn.example.com", "alice@example.com") is not None
    assert config.find_psk("vpn.example.com", "carol@example.com") is not None
    assert config.find_psk("vpn.example.com", "mallory@example.com") is None


def test_transport_and_route_based_values() -> None:
    host = load_config(CONFIGS / "host-to-host-transport.yaml").connections["db-replication"]
    assert host.local.id is None  # the engine uses the address the IKE SA runs on (192.0.2.20)
    assert host.children["host"].mode is ChildMode.TRANSPORT
    assert host.children["host"].replay_window == 128
    cfg = load_config(CONFIGS / "route-based.yaml")
    cloud = cfg.connections["cloud"]
    assert cloud.encap and cloud.remote_port == 4500
    assert cloud.remote.id == Identity(IdType.ID_KEY_ID, bytes.fromhex("0a1b2c3d"))
    child = cloud.children["any"]
    assert child.interface == "ipsec0"
    assert child.rekey_bytes == 2 << 30 and child.life_bytes == int((2 << 30) * 1.1)
    assert child.mss_clamp == 1360
    assert cfg.settings.metrics.address() == ("127.0.0.1", 9810)


def test_defaults_match_swanctl(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    conn = config.connections["b"]
    assert (conn.local_port, conn.remote_port, conn.version) == (500, 500, 2)
    assert conn.proposals == ("default",)
    assert conn.rekey_time == 4 * 3600 and conn.over_time == pytest.approx(1440) and conn.rand_time == conn.over_time
    assert conn.reauth_time == 0 and conn.keyingtries == 1 and conn.unique is Unique.NO
    assert not conn.encap
    # swanctl's defaults ask for MOBIKE and fragmentation, both implemented
    assert conn.mobike and conn.fragmentation is Fragmentation.YES
    assert conn.send_certreq and conn.send_cert is SendCert.IFASKED
    assert config.warnings == ()
    swanctl = ConnectionConfig("x", conn.local, conn.remote)
    assert swanctl.mobike and swanctl.send_certreq and swanctl.fragmentation is Fragmentation.YES
    assert conn.retransmit == RetransmitConfig(5, 4.0, 1.8)
    assert conn.retransmit.timeout_for(2) == pytest.approx(4.0 * 1.8**2)
    child = conn.children["net"]
    assert child.esp_proposals == ("default",)
    assert child.mode is ChildMode.TUNNEL and child.start_action is StartAction.NONE
    assert child.rekey_time == 3600 and child.life_time == pytest.approx(3960)
    assert child.rand_time == pytest.approx(360)
    assert child.replay_window == 1024 and child.mss_clamp is None and child.interface is None
    s = config.settings
    assert str(s.control_socket) == "/run/ipsecd/ipsecd.sock" and s.log_level == "info"
    assert s.log == {"ike": 1, "child": 1, "esp": 1, "net": 1, "cfg": 1, "ctl": 1}
    assert (s.dataplane.tun_name, s.dataplane.mtu, s.dataplane.workers) == ("ipsec0", None, 1)
    assert s.metrics.listen is None and not s.debug.allow_key_export
    assert s.fragment_size == 1280


def test_yaml_11_words_keep_their_text(tmp_path: Path) -> None:
    """``unique: no``, ``mss_clamp: off`` and ``secret: 0x..`` must not become booleans or ints."""
    text = BASE.replace("    local_addrs:", "    unique: no\n    fragmentation: no\n    local_addrs:")
    text = text.replace("        local_ts:", "        mss_clamp: off\n        local_ts:")
    cfg = load_config(write(tmp_path, text))
    assert cfg.connections["b"].unique is Unique.NO
    assert cfg.connections["b"].fragmentation is Fragmentation.NO
    assert cfg.connections["b"].children["net"].mss_clamp is None
    assert cfg.secrets[0].secret == bytes.fromhex("00112233445566778899aabbccddeeff")


def test_yaml_merge_keys_work(tmp_path: Path) -> None:
    # An anchor on one connection, merged into another ("<<"), overriding one key.
    text = """\
    connections:
      one: &base
        remote_addrs: [192.0.2.2]
        local: {auth: psk, id: a.test}
        remote: {auth: psk, id: b.test}
      two:
        <<: *base
        remote_port: 4500
    secrets:
      ike:
        - {id: [a.test, b.test], secret: "0x00112233445566778899aabbccddeeff"}
    """
    cfg = load_config(write(tmp_path, text))
    assert cfg.connections["two"].remote_port == 4500
    assert cfg.connections["two"].local.id == Identity.parse("a.test")


def test_secret_not_in_repr(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert "00112233" not in repr(cfg) and "\\x00\\x11" not in repr(cfg)


def test_swanctl_style_comma_lists_and_named_secrets(tmp_path: Path) -> None:
    text = BASE.replace("[192.0.2.2]", '"192.0.2.2, 192.0.2.3"').replace(
        "    - id: [a.test, b.test]\n      secret:", "    peer-b:\n      id: a.test, b.test\n      secret:"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.connections["b"].remote_addrs == (ip_address("192.0.2.2"), ip_address("192.0.2.3"))
    assert cfg.secrets[0].name == "peer-b"
    assert len(cfg.secrets[0].ids) == 2


# --------------------------------------------------------------------------- bad configs


def edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


BAD = [
    # (name, file text, expected lines with {f} for the file name)
    (
        "bad prefix",
        edit("[10.1.0.0/24]", "[10.1.0.0/33]"),
        ["{f}:13 connections.b.children.net.local_ts[0]: '10.1.0.0/33' is not a valid prefix"],
    ),
    (
        "host bits",
        edit("[10.1.0.0/24]", "[10.1.0.1/24]"),
        [
            "{f}:13 connections.b.children.net.local_ts[0]: '10.1.0.1/24' is not a valid prefix: "
            "host bits set (did you mean '10.1.0.0/24'?)"
        ],
    ),
    (
        "ts port without proto",
        edit("[10.2.0.0/24]", '["10.2.0.0/24[/80]"]'),
        [
            "{f}:14 connections.b.children.net.remote_ts[0]: '10.2.0.0/24[/80]': "
            "a port needs a protocol, e.g. '[tcp/80]'"
        ],
    ),
    (
        "unknown key did-you-mean",
        edit("      auth: psk\n      id: b.test", "      auth_mode: psk\n      auth: psk\n      id: b.test"),
        ["{f}:9 connections.b.remote.auth_mode: unknown key (did you mean 'auth'?)"],
    ),
    (
        "unknown key no suggestion",
        edit("    local_addrs:", "    zzz: 1\n    local_addrs:"),
        [
            "{f}:3 connections.b.zzz: unknown key (expected one of: "
            + "local_addrs, remote_addrs, local_port, remote_port, proposals, version, encap, dpd_delay, "
            "dpd_timeout, dpd_action, rekey_time, over_time, reauth_time, rand_time, keyingtries, unique, mobike, "
            "fragmentation, send_certreq, send_cert, retransmit, local, remote, children, pools, vips" + ")"
        ],
    ),
    (
        "child key at connection level",
        edit("    local_addrs:", "    esp_proposals: [aes128gcm16]\n    local_addrs:"),
        [
            "{f}:3 connections.b.esp_proposals: not a connection option: it belongs in a child "
            "(connections.b.children.NAME.esp_proposals)"
        ],
    ),
    (
        "connection key in child",
        edit("        local_ts:", "        remote_addrs: [192.0.2.9]\n        local_ts:"),
        [
            "{f}:13 connections.b.children.net.remote_addrs: not a child option: it belongs in the connection "
            "(connections.b.remote_addrs)"
        ],
    ),
    (
        "unsupported swanctl option",
        edit("    local_addrs:", "    aggressive: no\n    local_addrs:"),
        ["{f}:3 connections.b.aggressive: swanctl option not supported by ipsecd yet"],
    ),
    (
        "wrong type: mapping for list",
        edit("[192.0.2.1]", "{a: 1}"),
        ["{f}:3 connections.b.local_addrs: expected a list of IP addresses, got a mapping"],
    ),
    (
        "wrong type: list for int",
        edit("    local_addrs:", "    local_port: [500]\n    local_addrs:"),
        ["{f}:3 connections.b.local_port: expected an integer, got a list"],
    ),
    (
        "port out of range",
        edit("    local_addrs:", "    remote_port: 70000\n    local_addrs:"),
        ["{f}:3 connections.b.remote_port: 70000 is out of range (1..65535)"],
    ),
    (
        "bad address",
        edit("[192.0.2.2]", "[192.0.2.300]"),
        ["{f}:4 connections.b.remote_addrs[0]: '192.0.2.300' is not a valid IP address"],
    ),
    (
        "dns name",
        edit("[192.0.2.2]", "[vpn.example.com]"),
        [
            "{f}:4 connections.b.remote_addrs[0]: 'vpn.example.com' is not an IP address "
            "(DNS names are not supported here yet)"
        ],
    ),
    (
        "ikev1",
        edit("    local_addrs:", "    version: 1\n    local_addrs:"),
        ["{f}:3 connections.b.version: only IKEv2 is supported (version: 2)"],
    ),
    (
        "bad duration",
        edit("    local_addrs:", "    rekey_time: 4x\n    local_addrs:"),
        ["{f}:3 connections.b.rekey_time: '4x' is not a duration (expected e.g. '90s', '10m', '1h', '1d' or seconds)"],
    ),
    (
        "bad volume",
        edit("        local_ts:", "        rekey_bytes: lots\n        local_ts:"),
        [
            "{f}:13 connections.b.children.net.rekey_bytes: 'lots' is not a volume "
            "(expected e.g. '500M', '2G', '64k' or a number of bytes)"
        ],
    ),
    (
        "life not above rekey",
        edit("        local_ts:", "        rekey_time: 1h\n        life_time: 30m\n        local_ts:"),
        ["{f}:14 connections.b.children.net.life_time: must be greater than rekey_time (3600)"],
    ),
    (
        "bad enum",
        edit("        local_ts:", "        mode: beet\n        local_ts:"),
        ["{f}:13 connections.b.children.net.mode: 'beet' is not one of: tunnel, transport"],
    ),
    (
        "bad bool",
        edit("    local_addrs:", "    mobike: maybe\n    local_addrs:"),
        ["{f}:3 connections.b.mobike: expected yes or no, got 'maybe'"],
    ),
    (
        "replay window",
        edit("        local_ts:", "        replay_window: 100000\n        local_ts:"),
        ["{f}:13 connections.b.children.net.replay_window: 100000 is out of range (0..65536)"],
    ),
    (
        "bad interface",
        edit("        local_ts:", "        interface: this-name-is-too-long\n        local_ts:"),
        [
            "{f}:13 connections.b.children.net.interface: 'this-name-is-too-long' is not a valid interface name "
            "(1-15 characters, no spaces, '/' or ':')"
        ],
    ),
    (
        "unsupported auth",
        edit("      auth: psk\n      id: a.test", "      auth: eap-md5\n      id: a.test"),
        ["{f}:6 connections.b.local.auth: 'eap-md5' is not supported (expected one of: pubkey, psk, eap-mschapv2, "
         "eap-tls, eap)"],
    ),
    (
        "key type as auth",
        edit("      auth: psk\n      id: b.test", "      auth: rsa\n      id: b.test"),
        ["{f}:9 connections.b.remote.auth: use 'pubkey' (the key type comes from the certificate) (expected one of: "
         "pubkey, psk, eap-mschapv2, eap-tls, eap-radius, eap-dynamic)"],
    ),
    (
        "server method on the client side",
        edit("      auth: psk\n      id: a.test", "      auth: eap-radius\n      id: a.test"),
        ["{f}:6 connections.b.local.auth: 'eap-radius' is for the remote side (we ask the peer); as a client use "
         "'eap' or name a method (expected one of: pubkey, psk, eap-mschapv2, eap-tls, eap)"],
    ),
    (
        "eap-radius without a server",
        edit("      auth: psk\n      id: b.test", "      auth: eap-radius\n      id: b.test"),
        ["{f}:9 connections.b.remote.auth: eap-radius needs a RADIUS server in settings.eap-radius.servers"],
    ),
    (
        "certs on the remote side",
        edit("      auth: psk\n      id: b.test", "      auth: pubkey\n      certs: [b.pem]\n      id: b.test"),
        ["{f}:10 connections.b.remote.certs: only for local: ipsecd does not pin peer certificates (use "
         "remote.cacerts and remote.id)"],
    ),
    (
        "certs nobody reads",
        edit("      auth: psk\n      id: a.test", "      auth: psk\n      certs: [a.pem]\n      id: a.test"),
        ["{f}:7 connections.b.local.certs: unused with local.auth psk: certificates are for pubkey or EAP-TLS"],
    ),
    (
        "cacerts nobody reads",
        edit("      auth: psk\n      id: b.test", "      auth: psk\n      cacerts: [ca.pem]\n      id: b.test"),
        ["{f}:10 connections.b.remote.cacerts: unused with remote.auth psk: the peer presents no certificate to "
         "us"],
    ),
    (
        "eap_id without eap",
        edit("      auth: psk\n      id: b.test", "      auth: pubkey\n      eap_id: '%any'\n      id: b.test"),
        ["{f}:10 connections.b.remote.eap_id: needs an EAP method in connections.b.remote.auth, not 'pubkey'"],
    ),
    (
        "eap on both sides",
        edit("      auth: psk\n      id: a.test", "      auth: eap\n      id: a.test")
        .replace("      auth: psk\n      id: b.test", "      auth: eap-tls\n      id: b.test"),
        ["{f}:9 connections.b.remote.auth: EAP on both sides is EAP-only authentication (RFC 5998), which needs a "
         "mutual method: eap-tls on both sides; otherwise one side authenticates with pubkey or psk"],
    ),
    (
        "radius server without address",
        BASE + "settings:\n  eap-radius:\n    secret: s\n    servers:\n      r1: {auth_port: 1812}\n",
        ["{f}:23 settings.eap-radius.servers.r1: missing 'address' (the RADIUS server's IP address)"],
    ),
    (
        "radius server without secret",
        BASE + "settings:\n  eap-radius:\n    servers:\n      r1: {address: 192.0.2.9}\n",
        ["{f}:22 settings.eap-radius.servers.r1: no 'secret' for this server and no settings.eap-radius.secret"],
    ),
    (
        "ntlm secret of the wrong size",
        BASE + "  ntlm:\n    - id: alice\n      secret: 0x0011\n",
        ["{f}:21 secrets.ntlm[0].secret: an NT hash is 16 bytes (0x followed by 32 hex digits), not 2"],
    ),
    (
        "key passphrase without a file",
        BASE + "  private:\n    gw: {secret: pass}\n",
        ["{f}:20 secrets.private.gw: needs 'file' (a key file in private/) and 'secret' (its passphrase)"],
    ),
    (
        "missing remote section",
        edit("    remote:\n      auth: psk\n      id: b.test\n", ""),
        ["{f}:2 connections.b.remote: missing section 'remote:' (e.g. 'auth: pubkey' or 'auth: psk')"],
    ),
    (
        "bad identity",
        edit("id: a.test\n    remote", "id: 'C=CH, Cn=a, XN=b'\n    remote"),
        [
            "{f}:7 connections.b.local.id: 'C=CH, Cn=a, XN=b': unknown DN attribute 'XN' (did you mean 'N'?) "
            "(known: " + ", ".join(a[2][0] for a in _DN_ATTRS) + ", or a dotted OID)"
        ],
    ),
    (
        "bad identity prefix",
        edit("[a.test, b.test]", "[a.test, 'fdqn:b.test']"),
        [
            "{f}:17 secrets.ike[0].id[1]: 'fdqn:b.test' is not an IPv6 address, and 'fdqn:' is not an identity type "
            "(did you mean 'fqdn:'?) (known: ipv4:, ipv6:, ipv4net:, ipv6net:, ipv4range:, ipv6range:, rfc822:, "
            "email:, userfqdn:, fqdn:, dns:, asn1dn:, asn1gn:, keyid:; 'keyid:TEXT' makes a key id of any text)"
        ],
    ),
    (
        "local id %any",
        edit("id: a.test\n    remote", "id: '%any'\n    remote"),
        ["{f}:7 connections.b.local.id: our own identity cannot be %any"],
    ),
    (
        "local id pattern",
        edit("id: a.test\n    remote", "id: '*.test'\n    remote"),
        [
            "{f}:7 connections.b.local.id: our own identity cannot be a pattern "
            "(wildcards, subnets and ranges are for the remote side)"
        ],
    ),
    (
        "no matching secret",
        edit("[a.test, b.test]", "[c.test, d.test]"),
        [
            "{f}:6 connections.b.local.auth: psk authentication but no secret in secrets.ike matches "
            "local id 'a.test' or remote id 'b.test'"
        ],
    ),
    (
        "start needs concrete remote",
        edit("[192.0.2.2]", "['%any']").replace("        local_ts:", "        start_action: start\n        local_ts:"),
        [
            "{f}:13 connections.b.children.net.start_action: 'start' needs a concrete remote_addrs to initiate to "
            "(remote_addrs is %any)"
        ],
    ),
    (
        "address families",
        edit("[192.0.2.2]", "['2001:db8::2']"),
        ["{f}:4 connections.b.remote_addrs: no address family in common with local_addrs (IPv4 vs IPv6)"],
    ),
    (
        "ts families",
        edit("[10.2.0.0/24]", "['fd00::/64']"),
        ["{f}:14 connections.b.children.net.remote_ts: no address family in common with local_ts (IPv4 vs IPv6)"],
    ),
    (
        "duplicate key",
        edit("    local_addrs: [192.0.2.1]\n", "    local_addrs: [192.0.2.1]\n    local_addrs: [192.0.2.5]\n"),
        ["{f}:4 connections.b.local_addrs: duplicate key (first defined on line 3)"],
    ),
    (
        "bad connection name",
        edit("  b:\n", "  'b c':\n"),
        ["{f}:2 connections.b c: connection name 'b c' must be letters, digits, '.', '_' or '-'"],
    ),
    (
        "secret both",
        BASE + "      secret_file: x.psk\n",
        ["{f}:19 secrets.ike[0].secret_file: give either 'secret' or 'secret_file', not both"],
    ),
    (
        "secret missing",
        BASE + "    - id: c.test\n",
        ["{f}:19 secrets.ike[1]: missing 'secret' or 'secret_file'"],
    ),
    (
        "bad hex secret",
        edit("0x00112233445566778899aabbccddeeff", "0xZZ"),
        ["{f}:18 secrets.ike[0].secret: secret starting with '0x' is not valid hexadecimal"],
    ),
    (
        "top-level unknown",
        BASE + "conections: {}\n",
        ["{f}:19 conections: unknown key (did you mean 'connections'?)"],
    ),
    (
        "top-level not a mapping",
        "- a\n- b\n",
        ["{f}:1: expected a mapping (key: value), got a list"],
    ),
    (
        "settings",
        BASE + "settings:\n  control_socket: run/x.sock\n  log_level: loud\n  log: {ike: 9}\n"
        "  dataplane: {mtu: 100, workers: 0}\n  metrics: {listen: localhost}\n",
        [
            "{f}:20 settings.control_socket: 'run/x.sock' must be an absolute path",
            "{f}:21 settings.log_level: 'loud' is not one of: debug, info, warning, error, critical",
            "{f}:22 settings.log.ike: 9 is out of range (-1..4)",
            "{f}:23 settings.dataplane.mtu: 100 is out of range (576..65535)",
            "{f}:23 settings.dataplane.workers: 0 is out of range (1..64)",
            "{f}:24 settings.metrics.listen: 'localhost' is not HOST:PORT (e.g. '127.0.0.1:9810' or '[::1]:9810')",
        ],
    ),
    (
        "yaml syntax",
        "connections:\n  b: [\n",
        ["{f}:3: invalid YAML: expected the node content, but found '<stream end>'"],
    ),
    (
        "unquoted %any",
        "connections:\n  b:\n    remote_addrs: [%any]\n",
        [
            "{f}:3: invalid YAML: found character '%' that cannot start any token "
            "(quote values that start with '%', e.g. \"%any\")"
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in BAD], ids=[n for n, _, _ in BAD])
def test_bad_config(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    assert errors_of(path) == [e.format(f=path) for e in expected]


def test_every_error_is_reported(tmp_path: Path) -> None:
    text = edit("[10.1.0.0/24]", "[10.1.0.0/33]").replace("[192.0.2.2]", "[192.0.2.300]")
    text = text.replace("      auth: psk\n      id: b.test", "      auth_mode: psk\n      auth: psk\n      id: b.test")
    path = write(tmp_path, text)
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    assert [(i.line, i.path) for i in info.value.issues] == [
        (4, "connections.b.remote_addrs[0]"),
        (9, "connections.b.remote.auth_mode"),
        (14, "connections.b.children.net.local_ts[0]"),
    ]


def test_proposal_validator_errors_become_config_errors(tmp_path: Path) -> None:
    def validator(kind: str, text: str) -> None:
        if "ecp999" in text:
            raise ValueError("unknown transform 'ecp999'")

    text = edit(
        "    local_addrs:",
        "    proposals: [aes256gcm16-prfsha256-ecp256, aes256gcm16-prfsha256-ecp999]\n    local_addrs:",
    )
    path = write(tmp_path, text)
    assert errors_of(path, proposal_validator=validator) == [
        f"{path}:3 connections.b.proposals[1]: invalid IKE proposal 'aes256gcm16-prfsha256-ecp999': "
        "unknown transform 'ecp999'"
    ]
    seen: list[tuple[str, str]] = []
    text = edit("        local_ts:", "        esp_proposals: [aes128gcm16]\n        local_ts:")
    load_config(write(tmp_path, text, "y.yaml"), proposal_validator=lambda k, t: seen.append((k, t)))
    assert seen == [("esp", "aes128gcm16")]  # defaults ("default") are not validated


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read configuration: No such file or directory"):
        load_config(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"connections: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin\.yaml: invalid YAML"):
        load_config(path)


def test_empty_file_is_valid_with_warning(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.connections == {} and cfg.warnings


# --------------------------------------------------------------------------- secret files


def _with_secret_file(tmp_path: Path, name: str) -> str:
    return BASE.replace("      secret: 0x00112233445566778899aabbccddeeff", f"      secret_file: {name}")


def test_secret_file_ok_relative_to_config(tmp_path: Path) -> None:
    key = tmp_path / "peer.psk"
    key.write_bytes(b"a long enough shared secret\n")
    key.chmod(0o600)
    cfg = load_config(write(tmp_path, _with_secret_file(tmp_path, "peer.psk")))
    assert cfg.find_psk("a.test", "b.test") == b"a long enough shared secret"


def test_secret_file_hex_content(tmp_path: Path) -> None:
    key = tmp_path / "peer.psk"
    key.write_bytes(b"0x00112233445566778899aabbccddeeff\n")
    key.chmod(0o400)
    cfg = load_config(write(tmp_path, _with_secret_file(tmp_path, str(key))))
    assert cfg.secrets[0].secret == bytes(range(0, 256, 17))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_secret_file_group_or_world_readable_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "peer.psk"
    key.write_bytes(b"a long enough shared secret\n")
    key.chmod(mode)
    path = write(tmp_path, _with_secret_file(tmp_path, "peer.psk"))
    assert errors_of(path) == [
        f"{path}:18 secrets.ike[0].secret_file: '{key}' has mode {mode:04o}: a key file must not be accessible "
        f"by group or others (chmod 600 {key})"
    ]


def test_secret_file_missing(tmp_path: Path) -> None:
    path = write(tmp_path, _with_secret_file(tmp_path, "/nonexistent/peer.psk"))
    assert errors_of(path) == [
        f"{path}:18 secrets.ike[0].secret_file: cannot read '/nonexistent/peer.psk': No such file or directory"
    ]


# --------------------------------------------------------------------------- find_psk


def _secrets(*entries: tuple[list[str], bytes]) -> Config:
    secrets = tuple(IkeSecret(tuple(Identity.parse(i) for i in ids), key) for ids, key in entries)
    return Config({}, secrets, Settings(), Path("x"))


def test_find_psk_prefers_both_then_remote_then_local() -> None:
    cfg = _secrets(([" a.test"], b"local-only"), (["b.test"], b"remote-only"), (["a.test", "b.test"], b"both"))
    assert cfg.find_psk("a.test", "b.test") == b"both"
    assert cfg.find_psk("x.test", "b.test") == b"remote-only"
    assert cfg.find_psk("a.test", "x.test") == b"local-only"  # strongSwan accepts a local-only match
    assert cfg.find_psk("x.test", "y.test") is None


def test_find_psk_wildcards_and_case() -> None:
    cfg = _secrets((["%any"], b"any"), (["B.TEST"], b"exact"))
    assert cfg.find_psk("a.test", "b.test") == b"exact"
    assert cfg.find_psk("a.test", "c.test") == b"any"
    assert _secrets(([], b"anyone")).find_psk(None, "z.test") == b"anyone"
    assert cfg.find_psk(Identity.parse("a.test"), Identity.parse("b.test")) == b"exact"


# --------------------------------------------------------------------------- durations, volumes, selectors


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        ("1d", 86400),
        ("3600", 3600),
        (" 2h ", 7200),
        ("1.5h", 5400),
        ("0s", 0),
        (45, 45),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "h", "-5", "1h30m", "abc", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500M", 500 << 20),
        ("2G", 2 << 30),
        ("64k", 64 << 10),
        ("64K", 64 << 10),
        ("1000", 1000),
        (123, 123),
        ("1T", 1 << 40),
    ],
)
def test_parse_volume(text: str | int, value: int) -> None:
    assert parse_volume(text) == value


@pytest.mark.parametrize("text", ["", "2X", "-1", "G", "1 GB"])
def test_parse_volume_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_volume(text)


@pytest.mark.parametrize(
    ("text", "ts", "canonical"),
    [
        ("dynamic", TsConfig(None), "dynamic"),
        ("10.1.0.0/24", TsConfig(ip_network("10.1.0.0/24")), "10.1.0.0/24"),
        ("10.1.0.7", TsConfig(ip_network("10.1.0.7/32")), "10.1.0.7/32"),
        ("fd00::/64", TsConfig(ip_network("fd00::/64")), "fd00::/64"),
        ("10.1.0.0/24[tcp/80]", TsConfig(ip_network("10.1.0.0/24"), 6, 80, 80), "10.1.0.0/24[tcp/80]"),
        (
            "10.1.0.0/24[udp/1024-65535]",
            TsConfig(ip_network("10.1.0.0/24"), 17, 1024, 65535),
            "10.1.0.0/24[udp/1024-65535]",
        ),
        ("dynamic[udp/1701]", TsConfig(None, 17, 1701, 1701), "dynamic[udp/1701]"),
        ("0.0.0.0/0[icmp]", TsConfig(ip_network("0.0.0.0/0"), 1), "0.0.0.0/0[icmp]"),
        ("::/0[132/%any]", TsConfig(ip_network("::/0"), 132), "::/0[132]"),
    ],
)
def test_ts_parse(text: str, ts: TsConfig, canonical: str) -> None:
    assert TsConfig.parse(text) == ts
    assert str(ts) == canonical
    assert TsConfig.parse(canonical) == ts


@pytest.mark.parametrize("text", ["10.1.0.0/33", "10.1.0.0/24[tcp/99999]", "10.0.0.0/8[bogus]", "x", "[tcp]"])
def test_ts_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        TsConfig.parse(text)


# --------------------------------------------------------------------------- --check-config


def test_check_config_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(write(tmp_path, BASE)) == 0
    assert capsys.readouterr().out == "configuration OK: 1 connection\n"
    bad = write(tmp_path, edit("[10.1.0.0/24]", "[10.1.0.0/33]"), "bad.yaml")
    assert check_config_main(bad) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{bad}:13 connections.b.children.net.local_ts[0]: '10.1.0.0/33' is not a valid prefix\n"


def test_check_config_warns_about_short_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, edit("0x00112233445566778899aabbccddeeff", "s3cr3"))
    assert check_config_main(path) == 0
    err = capsys.readouterr().err
    assert (
        err == f"warning: {path}:18 secrets.ike[0].secret: pre-shared key of 5 bytes is weak; "
        "use at least 16 random bytes\n"
    )
    assert "s3cr3" not in err


# --------------------------------------------------------------------------- accepted but not implemented yet


def test_unimplemented_keys_warn_and_hold_what_really_happens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = edit(
        "    local_addrs:",
        "    local_port: 4500\n    keyingtries: '%forever'\n    mobike: yes\n"
        "    fragmentation: accept\n    local_addrs:",
    )
    path = write(tmp_path, text)
    cfg = load_config(path)
    conn = cfg.connections["b"]
    assert (conn.local_port, conn.keyingtries, conn.mobike) == (500, 0, True)  # keyingtries: implemented
    assert conn.fragmentation is Fragmentation.ACCEPT  # implemented: no warning
    prefix = "accepted but not implemented yet: "
    assert list(cfg.warnings) == [
        f"{path}:3 connections.b.local_port: {prefix}IKE is always sent from port 500 (4500 after NAT detection) "
        "(in effect: 500)",
    ]
    assert check_config_main(path) == 0
    out = capsys.readouterr()
    assert out.out == "configuration OK: 1 connection\n"
    assert out.err.splitlines() == [f"warning: {w}" for w in cfg.warnings]


def test_unimplemented_keys_are_quiet_when_asking_for_what_happens(tmp_path: Path) -> None:
    text = edit(
        "    local_addrs:",
        "    local_port: 500\n    keyingtries: 1\n    unique: no\n"
        "    fragmentation: yes\n    local_addrs:",
    ) + "settings:\n  dataplane: {workers: 1}\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.warnings == ()
    assert cfg.connections["b"] == load_config(write(tmp_path, BASE, "plain.yaml")).connections["b"]


def test_unimplemented_table_names_real_fields_and_possible_values() -> None:
    sections = {"conn": ConnectionConfig, "dataplane": DataplaneSettings}
    for row in NOT_IMPLEMENTED:
        assert row.key in KEY_SECTIONS[row.section].keys
        field = {f.name: f for f in dataclasses.fields(sections[row.section])}[row.key]
        assert row.effective in row.honoured, row  # what happens instead is itself honoured
        assert type(row.effective) is type(field.default), row
        assert row.missing and not row.missing.endswith(".")


# --------------------------------------------------------------------------- robustness

_KEYS = st.sampled_from(
    [
        "connections", "secrets", "settings", "b", "local", "remote", "auth", "id", "children", "net", "local_ts",
        "remote_ts", "ike", "secret", "local_addrs", "remote_addrs", "mode", "rekey_time", "log", "dataplane", "<<",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=12),
    st.sampled_from(["psk", "%any", "10.0.0.0/8", "192.0.2.1", "1h", "0x00", "dynamic"]),
)  # fmt: skip
_TREES = st.recursive(
    _SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_KEYS, kids, max_size=4), max_leaves=25
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # generation slows on a busy machine
@given(st.dictionaries(_KEYS, _TREES, max_size=4))
def test_arbitrary_documents_only_raise_config_error(tmp_path_factory: pytest.TempPathFactory, doc: object) -> None:
    import yaml

    path = tmp_path_factory.mktemp("fuzz") / "f.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            assert line.startswith(f"{path}:")


def test_route_based_interface_must_be_the_tun(tmp_path: Path) -> None:
    ts = "        remote_ts: [10.2.0.0/24]\n"
    text = BASE.replace(ts, ts + "        interface: tun7\n")
    path = write(tmp_path, text)
    assert errors_of(path) == [
        f"{path}:15 connections.b.children.net.interface: 'tun7' is not the data plane's TUN device 'ipsec0' "
        "(one TUN per daemon: set settings.dataplane.tun_name to it)"
    ]
    ok = text + "settings:\n  dataplane: {tun_name: tun7}\n"
    assert load_config(write(tmp_path, ok, "ok.yaml")).connections["b"].children["net"].interface == "tun7"


def test_keep_alive_setting(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).settings.keep_alive == 20.0
    cfg = load_config(write(tmp_path, BASE + "settings:\n  keep_alive: 30s\n", "k.yaml"))
    assert cfg.settings.keep_alive == 30.0


# --------------------------------------------------------------------------- the front door (issue 13)
def test_front_door_settings(tmp_path: Path) -> None:
    from ipsecd.ike.frontdoor import FrontDoorSettings

    assert load_config(write(tmp_path, BASE)).settings.front_door == FrontDoorSettings()
    text = BASE + "settings:\n  cookie_threshold: 50\n  block_threshold: 200\n  init_rate_ip: 2.5\n" \
                  "  cookie_lifetime: 20s\n  cookie_secret_lifetime: 1h\n"
    fd = load_config(write(tmp_path, text)).settings.front_door
    assert (fd.cookie_threshold, fd.block_threshold, fd.init_rate_ip, fd.cookie_lifetime,
            fd.cookie_secret_lifetime) == (50, 200, 2.5, 20.0, 3600.0)
    assert fd.init_max_size == 10_000  # the rest keep their defaults


def test_front_door_errors_name_file_line_and_key(tmp_path: Path) -> None:
    text = BASE + "settings:\n  init_max_size: 100\n  block_threshold: none\n  cookie_lifetime: 2h\n"
    path = write(tmp_path, text)
    assert errors_of(path) == [
        f"{path}:20 settings.init_max_size: 100 is out of range (1280..65535)",
        f"{path}:21 settings.block_threshold: expected an integer, got 'none'",
        f"{path}:22 settings.cookie_lifetime: 7200 is out of range (1..3600)",
    ]


def test_dataplane_workers_are_refused_beyond_cpus_and_with_offload_or_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    ok = load_config(write(tmp_path, BASE + "settings:\n  dataplane: {workers: 2}\n"))
    assert ok.settings.dataplane.workers == 2 and ok.warnings == ()
    f = write(tmp_path, BASE + "settings:\n  ike_shards: 2\n  dataplane: {workers: 3, offload: yes}\n", "bad.yaml")
    with pytest.raises(ConfigValidationError) as e:
        load_config(f)
    text = str(e.value)
    assert "settings.dataplane.workers: 3 workers but this host gives ipsecd 2 CPUs (expected 1..2" in text
    assert "settings.dataplane.workers: several workers are not implemented with offload: yes" in text
    assert "settings.dataplane.workers: several workers are not implemented with settings.ike_shards above 1" in text
    assert f"{f}:" in text
