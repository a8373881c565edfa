"""The ``pools`` section, ``pools``/``vips``/``unique`` on connections and ``settings.lease_db``."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from ipsecd.config import ConfigError, Unique, load_config
from ipsecd.iana import ConfigAttribute
from ipsecd.settings_from_config import ike_settings, pool_specs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

GATEWAY = """\
pools:
  rw4:
    addrs: 10.3.0.0/24
    dns: [10.2.0.53, 10.2.0.54]
    nbns: 10.2.0.55
    subnet: "10.2.0.0/16, 10.4.0.0/16"
    "25": corp.example
    "28": 10.9.9.9
  rw6:
    addrs: fd00:3::100-fd00:3::1ff
    dns: fd00:2::53
connections:
  rw:
    remote_addrs: ["%any"]
    unique: keep
    pools: [rw4, rw6]
    local: {auth: psk, id: gw.test}
    remote: {auth: psk, id: "%any"}
    children:
      net: {local_ts: [10.2.0.0/24], remote_ts: [dynamic]}
secrets:
  ike:
    - id: [gw.test]
      secret: 0x00112233445566778899aabbccddeeff
"""

CLIENT = """\
connections:
  home:
    remote_addrs: [192.0.2.10]
    vips: [0.0.0.0, "::"]
    local: {auth: psk, id: c.test}
    remote: {auth: psk, id: gw.test}
    children:
      net: {local_ts: [dynamic], remote_ts: [0.0.0.0/0], start_action: start}
secrets:
  ike:
    - id: [c.test, gw.test]
      secret: 0x00112233445566778899aabbccddeeff
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [line.replace(f"{path}:", "L") for line in str(info.value).splitlines()]


def test_a_gateway_with_pools(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GATEWAY))
    rw4, rw6 = cfg.pools["rw4"], cfg.pools["rw6"]
    assert rw4.addrs == (IPv4Address("10.3.0.1"), IPv4Address("10.3.0.254"))
    assert rw6.addrs == (ip_address("fd00:3::100"), ip_address("fd00:3::1ff"))
    assert [t for t, _ in rw4.dns] == [ConfigAttribute.INTERNAL_IP4_DNS] * 2
    assert len(rw4.subnet) == 2 and rw4.numbered == ((25, b"corp.example"), (28, bytes([10, 9, 9, 9])))
    conn = cfg.connections["rw"]
    assert conn.pools == ("rw4", "rw6") and conn.unique is Unique.KEEP and cfg.warnings == ()
    s = ike_settings(conn, cfg)
    assert (s.pools, s.unique, s.vips) == (("rw4", "rw6"), "keep", ())
    specs = {p.name: p for p in pool_specs(cfg)}
    assert specs["rw4"].size == 254 and specs["rw6"].size == 256
    assert specs["rw4"].attributes[-1] == (28, bytes([10, 9, 9, 9]))
    assert str(cfg.settings.lease_db) == "/var/lib/ipsecd/leases.db"


def test_a_client_with_vips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, CLIENT + "settings:\n  lease_db: /tmp/l.db\n"))
    assert [str(v) for v in cfg.connections["home"].vips] == ["0.0.0.0", "::"]
    assert ike_settings(cfg.connections["home"], cfg).vips == ("0.0.0.0", "::")
    assert str(cfg.settings.lease_db) == "/tmp/l.db" and cfg.pools == {}


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("    addrs: 10.3.0.0/24\n", "", ["L2 pools.rw4: missing 'addrs': the addresses the pool hands out "
                                      "(a subnet like 10.3.0.0/24 or a range like 10.3.0.10-10.3.0.99)"]),
    ("10.3.0.0/24", "10.3.0.1/24", ["L3 pools.rw4.addrs: '10.3.0.1/24' has host bits set (did you mean "
                                    "'10.3.0.0/24'?)"]),
    ("fd00:3::100-fd00:3::1ff", "10.3.0.200-10.3.1.10",
     ["L10 pools.rw6.addrs: overlaps pool rw4 (10.3.0.1 - 10.3.0.254): two users would get the same address"]),
    ("dns: [10.2.0.53, 10.2.0.54]", "dns: [10.2.0.53, dns.corp]", ["L4 pools.rw4.dns[1]: 'dns.corp' is not an "
                                                                     "IP address"]),
    ("nbns: 10.2.0.55", "nbns: fd00::55", ["L5 pools.rw4.nbns: 'fd00::55': IKEv2 has no IPv6 nbns attribute "
                                           "(RFC 7296 3.15.1)"]),
    ('    "28": 10.9.9.9\n', '    "40000": x\n', ["L8 pools.rw4.40000: unknown attribute '40000' (expected a "
                                                   "name or an attribute number 1-32767)"]),
    ("    dns: fd00:2::53\n", "    wins: fd00:2::53\n", ["L11 pools.rw6.wins: unknown key (expected one of: addrs, "
                                                        "dns, nbns, dhcp, netmask, server, subnet, split_include, "
                                                        "split_exclude)"]),
    ("pools: [rw4, rw6]", "pools: [rw4, rw7]", ["L16 connections.rw.pools: no pool named 'rw7' (did you mean "
                                                "'rw6'?)"]),
    ("pools: [rw4, rw6]", "pools: [rw4, rw4]", ["L16 connections.rw.pools[1]: 'rw4' is listed twice"]),
])
def test_pool_errors_name_file_line_and_key(tmp_path: Path, old: str, new: str, expected: list[str]) -> None:
    assert old in GATEWAY
    assert errors(tmp_path, GATEWAY.replace(old, new)) == expected


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('vips: [0.0.0.0, "::"]', "vips: [0.0.0.0, 10.3.0.9]", ["L4 connections.home.vips[1]: a second IPv4 virtual "
                                                            "IP: one address of each family can be asked for"]),
    ('vips: [0.0.0.0, "::"]', "vips: [any]", ["L4 connections.home.vips[0]: 'any' is not an IP address (0.0.0.0 or "
                                              ":: ask for any address of that family)"]),
    ("remote_addrs: [192.0.2.10]", 'remote_addrs: ["%any"]',
     ["L4 connections.home.vips: a client asks for virtual IPs when it initiates: this connection has no "
      "remote_addrs to initiate to", "L8 connections.home.children.net.start_action: 'start' needs a concrete "
      "remote_addrs to initiate to (remote_addrs is %any)"]),
    ("start_action: start", "start_action: trap", ["L4 connections.home.vips: not supported together with trap "
                                                   "(net.start_action): a trap's policies would need the virtual "
                                                   "IP before it is assigned"]),
])
def test_vips_errors(tmp_path: Path, old: str, new: str, expected: list[str]) -> None:
    assert old in CLIENT
    assert sorted(errors(tmp_path, CLIENT.replace(old, new))) == sorted(expected)


def test_pools_without_a_pools_section_and_relative_lease_db(tmp_path: Path) -> None:
    text = CLIENT.replace('vips: [0.0.0.0, "::"]', "pools: [rw]") + "settings:\n  lease_db: leases.db\n"
    assert errors(tmp_path, text) == [
        "L4 connections.home.pools: no pool named 'rw' (there is no 'pools' section)",
        "L14 settings.lease_db: 'leases.db' must be an absolute path",
    ]


def test_the_examples_use_pools_and_vips() -> None:
    gw = load_config(CONFIGS / "road-warrior-pools.yaml")
    assert gw.connections["rw"].pools == ("rw4", "rw6") and set(gw.pools) == {"rw4", "rw6"}
    client = load_config(CONFIGS / "road-warrior-client.yaml")
    assert len(client.connections["office"].vips) == 2
