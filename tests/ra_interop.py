"""Remote-access interop scenarios: strongSwan 5.9.8 road warriors and gateways with certificates and EAP.

Namespace A runs ipsecd (the gateway, unless a test turns the roles round), namespace B
runs charon. Each side gets its own credential tree in swanctl's layout (tests/pki.py
``write_swanctl``): charon loads it with ``swanctl --load-all --file`` from the directory of
its swanctl.conf, ipsecd reads it through ``settings.credentials``. :func:`compare` then
holds ipsecd's list-sas against swanctl's (state, SPIs, algorithms, identities, TS) and
pings LAN to LAN across the tunnel.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ipsecd_proc import Ipsecd, child_config
from tests.netns import Netns, Topology
from tests.pki import Issued, KeyFile, write_swanctl
from tests.strongswan import PLUGINS, Charon, ConnParams, swan_proposal

# eap-mschapv2 needs MD4 and DES, which this OpenSSL lacks: gcrypt has both
RA_PLUGINS = f"{PLUGINS} pkcs8 revocation constraints mgf1 gcrypt eap-identity eap-mschapv2 eap-tls"
GW_ID = "gw.example.com"
CONN = "ra"
CHILD = "net"


@dataclass
class CharonSide:
    """One charon's swanctl.conf connection (auth sections as swanctl keys) and credentials."""

    local: dict[str, str]
    remote: dict[str, str]
    proposals: str = "aes256gcm16-prfsha256-ecp256"
    esp: str = "aes256gcm16"
    own: list[Issued | KeyFile] = field(default_factory=list)
    certs: list[Issued] = field(default_factory=list)  # intermediates
    cas: list[Issued] = field(default_factory=list)
    crls: list[Any] = field(default_factory=list)
    eap_secrets: dict[str, str] = field(default_factory=dict)
    settings: str = ""  # strongswan.conf charon lines, e.g. "  signature_authentication = no"
    fragmentation: str = "no"  # swanctl's: yes | accept | force | no


def _section(name: str, values: Mapping[str, str], indent: str) -> str:
    body = "".join(f"{indent}  {k} = {v}\n" for k, v in values.items())
    return f"{indent}{name} {{\n{body}{indent}}}\n"


def charon_swanctl(side: CharonSide, *, local_addr: str, remote_addr: str, local_ts: str, remote_ts: str) -> str:
    conn = (f"connections {{\n  {CONN} {{\n    version = 2\n    local_addrs = {local_addr}\n"
            f"    remote_addrs = {remote_addr}\n    proposals = {side.proposals}\n"
            f"    fragmentation = {side.fragmentation}\n    mobike = no\n    send_cert = always\n")
    conn += _section("local", side.local, "    ") + _section("remote", side.remote, "    ")
    conn += f"    children {{\n      {CHILD} {{\n        local_ts = {local_ts}\n        remote_ts = {remote_ts}\n"
    conn += f"        esp_proposals = {side.esp}\n      }}\n    }}\n  }}\n}}\n"
    if side.eap_secrets:
        conn += "secrets {\n" + "".join(
            f'  eap-{i} {{\n    id = {user}\n    secret = "{pw}"\n  }}\n'
            for i, (user, pw) in enumerate(side.eap_secrets.items())) + "}\n"
    return conn


def start_charon(make: Callable[..., Charon], topo: Topology, tmp: Path, side: CharonSide, *,
                 initiator: bool) -> Charon:
    """charon in B: the client (initiator) of ipsecd's gateway, or the gateway for ipsecd's client."""
    directory = tmp / "charon-creds"
    write_swanctl(directory, own=side.own, certs=side.certs, cas=side.cas, crls=side.crls)
    extra = f"  load = {RA_PLUGINS}\n{side.settings}"
    ch = make(topo.b, ConnParams(local_addrs=[topo.b_addr]), name="charon", start=False, extra_charon=extra)
    conf = charon_swanctl(side, local_addr=topo.b_addr, remote_addr=topo.a_seen_from_b if initiator else "%any",
                          local_ts=topo.b_lan_net, remote_ts=topo.a_lan_net)
    (directory / "ra.conf").write_text(conf)
    ch.start(load=False)
    loaded = ch.swanctl("--load-all", "--file", str(directory / "ra.conf"))
    assert "failed" not in loaded.stdout, loaded.stdout
    return ch


def ipsecd_ra_config(topo: Topology, creds: Path, *, local: dict[str, Any], remote: dict[str, Any],
                     initiator: bool = False, proposals: Sequence[str] = ("aes256gcm16-prfsha256-ecp256",),
                     esp: Sequence[str] = ("aes256gcm16",), secrets: dict[str, Any] | None = None,
                     settings: dict[str, Any] | None = None, **conn: Any) -> dict[str, Any]:
    return {
        "connections": {CONN: {
            "local_addrs": [topo.a_addr],
            "remote_addrs": [topo.b_seen_from_a] if initiator else "%any",
            "proposals": list(proposals),
            "send_cert": "always",
            "local": local,
            "remote": remote,
            "children": {CHILD: child_config(local_ts=[topo.a_lan_net], remote_ts=[topo.b_lan_net],
                                             esp_proposals=list(esp))},
            **conn,
        }},
        "secrets": secrets or {},
        "settings": {"credentials": str(creds), **(settings or {})},
    }


def write_ipsecd_creds(directory: Path, *, own: Sequence[Issued | KeyFile] = (), certs: Sequence[Issued] = (),
                       cas: Sequence[Issued] = (), crls: Sequence[Any] = ()) -> Path:
    return write_swanctl(directory, own=own, certs=certs, cas=cas, crls=crls)


def _installed(children: list[dict[str, Any]]) -> dict[str, Any]:
    kids = [c for c in children if c.get("state") == "INSTALLED"]
    assert len(kids) == 1, children
    return kids[0]


def compare(ours: Ipsecd, theirs: Charon, topo: Topology, *, ike_text: str | None = None) -> dict[str, Any]:
    """Both sides up with the same SPIs and algorithms, and traffic crosses: returns ipsecd's IKE SA."""
    our_ike, their_ike = ours.wait_established(20, child=CHILD), theirs.wait_established(20, child=CHILD)
    our_child, their_child = _installed(our_ike["child_sas"]), _installed(their_ike["child-sas"])
    assert our_ike["spi_i"] == their_ike["initiator-spi"] and our_ike["spi_r"] == their_ike["responder-spi"]
    assert our_child["spi_in"] == their_child["spi-out"] and our_child["spi_out"] == their_child["spi-in"]
    assert our_ike["proposal"] == swan_proposal(their_ike), (our_ike["proposal"], their_ike)
    assert our_child["proposal"] == swan_proposal(their_child)
    if ike_text is not None:
        assert our_ike["proposal"] == ike_text
    ping(topo.b, topo.b_lan, topo.a_lan)
    ping(topo.a, topo.a_lan, topo.b_lan)
    return our_ike


def ping(ns: Netns, src: str, dst: str) -> None:
    res = ns.ping(dst, count=3, src=src, interval=0.2, deadline=8, check=False)
    assert res.returncode == 0, f"{src} -> {dst}: {res.stdout}{res.stderr}"


def never_up(ours: Ipsecd, theirs: Charon, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert not [s for s in ours.list_sas() if s.get("state") == "ESTABLISHED"]
        assert not [s for s in theirs.list_sas() if s.get("state") == "ESTABLISHED"]
        time.sleep(0.25)


def wait_log(d: Ipsecd, pattern: str, timeout: float = 15.0) -> str:
    """The first line of ipsecd's log matching ``pattern``, waiting for it."""
    rx = re.compile(pattern)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in d.log_text().splitlines():
            if rx.search(line):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no log line matching {pattern!r}\n{d.log_tail()}")
