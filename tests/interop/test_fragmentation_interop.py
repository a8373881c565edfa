"""IKE fragmentation (RFC 7383) and path MTU against a strongSwan 5.9.8 road warrior
(kernel-libipsec) behind a NAT, across a router whose links have MTU 1280 and which drops
every IP fragment: the remote-access site of tests/ra_site.py, client 0 with a fixed LAN
(``site.view``, the face tests/ra_interop.py's helpers take).

The gateway (ipsecd) authenticates with the site's ~5 KB chain (``site_pki``: RSA-4096 root,
two RSA-4096 intermediates, an RSA-4096 gateway certificate); the client logs in with
EAP-MSCHAPv2, so its own messages stay small and the chain is what has to cross. With
fragmentation the IKE_AUTH response arrives as RFC 7383 fragments; without it (the negative
control, here and only here) the response is one UDP datagram the kernel fragments and the
router drops. IPv6 runs over the site's routed IPv6 outside; ipsecd as the client runs in the
laptop behind the NAT with charon as the gateway.
Once up: the TUN MTU comes from the 1280 path, pings cross, TCP crosses both ways with
libipsec's own 1400-byte TUN (MSS clamp), and 1300-byte DF-clear pings cross both ways.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, why_no_ipsecd
from tests.netns import tcp_transfer, wait_for, why_no_netns
from tests.pki import CLIENT_AUTH, KeyPool, TestPki
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
from tests.ra_site import RemoteAccessSite, SiteGateway, View, site_pki
from tests.strongswan import Charon

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(240),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]

USER, PASSWORD = "alice", "alice-Passw0rd"
# path 1280 - IPv4 20 - UDP 8 - ESP 8 - IV 8 - ICV 16 = 1220, aligned to 4, minus the trailer's 2
TUN_MTU_1280_GCM_NATT = 1218
TUN_MTU_1280_GCM_NATT_V6 = 1198  # the IPv6 header is 20 octets longer


@pytest.fixture
def site() -> Any:
    why = why_no_netns()
    if why:
        pytest.skip(why)
    with RemoteAccessSite(1, mtu=1280, drop_fragments=True, ipv6_outside=True) as s:
        yield s


@pytest.fixture(scope="module")
def big_chain(key_pool: KeyPool) -> SiteGateway:
    return site_pki(TestPki(keys=key_pool), gw_id=GW_ID)


def _up(ipsecd_factory: Callable[..., Ipsecd], charon_factory: Callable[..., Charon], topo: View,
        tmp: Path, chain: SiteGateway, fragmentation: str, charon_settings: str = "") -> tuple[Ipsecd, Charon]:
    creds = write_ipsecd_creds(tmp / "ipsecd-creds", own=[chain.cert], certs=chain.intermediates, cas=[chain.root])
    config = ipsecd_ra_config(topo, creds, local={"auth": "pubkey", "id": GW_ID, "certs": [f"{GW_ID}.pem"]},
                              remote={"auth": "eap-mschapv2", "eap_id": "%any"}, fragmentation=fragmentation,
                              secrets={"eap": [{"id": USER, "secret": PASSWORD}]})
    ours = ipsecd_factory(topo.a, config, name="ipsecd")
    side = CharonSide(local={"auth": "eap-mschapv2", "eap_id": USER}, remote={"auth": "pubkey", "id": GW_ID},
                      cas=[chain.root], eap_secrets={USER: PASSWORD}, fragmentation="yes", settings=charon_settings)
    theirs = start_charon(charon_factory, topo, tmp, side, initiator=True)  # type: ignore[arg-type]
    theirs.initiate(CHILD, ike=CONN, check=False, timeout=30)
    return ours, theirs


def _stats(d: Ipsecd) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(d.ctl("stats", "--json").stdout)
    return data


def test_a_5kb_chain_crosses_a_1280_path_only_with_fragmentation(
        site: RemoteAccessSite, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
        tmp_path: Path, big_chain: SiteGateway) -> None:
    assert big_chain.chain_octets() > 4000
    topo = site.view(0)
    ours, theirs = _up(ipsecd_factory, charon_factory, topo, tmp_path, big_chain, "yes")
    compare(ours, theirs, topo)  # type: ignore[arg-type]  # SPIs, algorithms, pings both ways
    line = wait_log(ours, r"splitting IKE_AUTH response 1 \(\d+ octets\) into \d+ fragments")
    size, count = (int(x) for x in re.findall(r"\((\d+) octets\) into (\d+)", line)[0])
    assert size > big_chain.chain_octets() > 4000 and size > 4500 and count >= 4
    assert re.search(r"received fragment #\d+ of \d+", theirs.log_text()), theirs.log_tail()
    ike = _stats(ours)["ike"]
    assert ike["fragments_sent"] >= count
    assert site.fragments_dropped() == 0  # nothing relied on IP fragments

    # the TUN MTU comes from the 1280 path (the route into the TUN carries it)
    routes = topo.a.run(["ip", "route", "show", "table", "220"]).stdout
    assert f"mtu {TUN_MTU_1280_GCM_NATT}" in routes, routes
    # TCP both ways while libipsec keeps its fixed 1400-byte TUN: the gateway's clamped MSS keeps
    # the client's segments within the path
    assert tcp_transfer(topo.a, topo.a_lan, topo.b, topo.b_lan, 300_000) == 300_000
    assert tcp_transfer(topo.b, topo.b_lan, topo.a, topo.a_lan, 300_000, port=5002) == 300_000
    # 1300-byte DF-clear pings both ways; libipsec's 1400 TUN does not fit a 1280 path, so the
    # client gets the MTU ipsecd computes for itself
    topo.b.run(["ip", "link", "set", "ipsec0", "mtu", "1200"])
    for ns, src, dst in ((topo.a, topo.a_lan, topo.b_lan), (topo.b, topo.b_lan, topo.a_lan)):
        res = ns.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "1272", "-I", src, dst],
                     check=False, timeout=20)
        assert res.returncode == 0, f"{src} -> {dst}: {res.stdout}{res.stderr}"
    assert site.fragments_dropped() == 0
    # a DF packet over the tunnel MTU is refused with the MTU that fits
    res = topo.a.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1272", "-I", topo.a_lan, topo.b_lan],
                     check=False)
    assert res.returncode != 0 and f"mtu={TUN_MTU_1280_GCM_NATT}" in res.stdout + res.stderr, res


def test_over_ipv6_the_fragments_leave_room_for_the_larger_header(
        site: RemoteAccessSite, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
        tmp_path: Path, big_chain: SiteGateway) -> None:
    """The same gateway reached over IPv6: fragments of at most 1280 - 40 - 8 - 4 octets (RFC 7383
    counts the IPv6 header, UDP and the non-ESP marker), the router drops IPv6 fragments too."""
    topo = v6 = site.view(0, v6=True)  # no NAT on the IPv6 outside
    ours, theirs = _up(ipsecd_factory, charon_factory, v6, tmp_path, big_chain, "yes")
    compare(ours, theirs, v6)  # type: ignore[arg-type]
    wait_log(ours, r"splitting IKE_AUTH response 1 \(\d+ octets\) into \d+ fragments of at most 1228 octets")
    assert f"mtu {TUN_MTU_1280_GCM_NATT_V6}" in topo.a.run(["ip", "route", "show", "table", "220"]).stdout
    topo.b.run(["ip", "link", "set", "ipsec0", "mtu", "1180"])
    for ns, src, dst in ((topo.a, topo.a_lan, topo.b_lan), (topo.b, topo.b_lan, topo.a_lan)):
        res = ns.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "1272", "-I", src, dst],
                     check=False, timeout=20)
        assert res.returncode == 0, f"{src} -> {dst}: {res.stdout}{res.stderr}"
    assert site.fragments_dropped() == 0


def test_without_fragmentation_the_same_connection_fails(
        site: RemoteAccessSite, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
        tmp_path: Path, big_chain: SiteGateway) -> None:
    topo = site.view(0)
    # charon waits 1 s before each of its three retransmissions and before giving up (not 1, 1.8,
    # 3.2 and 5.8 s): the failed initiate returns after ~4 s instead of ~12, the checks are the same
    ours, theirs = _up(ipsecd_factory, charon_factory, topo, tmp_path, big_chain, "no",
                       charon_settings="  retransmit_base = 1.0\n")
    # the response leaves as one datagram the kernel fragments; the router drops the pieces
    wait_for("fragments dropped by the router", lambda: site.fragments_dropped() > 0, timeout=15)
    wait_for("charon retransmitting IKE_AUTH", lambda: "retransmit 1 of request" in theirs.log_text(), 15)
    never_up(ours, theirs, 3.0)
    assert "splitting" not in ours.log_text()
    assert "IKEV2_FRAG" not in ours.log_text()
    ike = _stats(ours)["ike"]
    assert "fragments_sent" not in ike and "fragments_received" not in ike


def test_ipsecd_as_client_fragments_toward_a_strongswan_gateway(
        site: RemoteAccessSite, charon_factory: Callable[..., Charon], ipsecd_factory: Callable[..., Ipsecd],
        tmp_path: Path, big_chain: SiteGateway, pki: TestPki) -> None:
    """Both IKE_AUTH messages carry an RSA-4096 chain: ipsecd's request goes out in fragments
    charon reassembles, charon's response comes in fragments ipsecd reassembles. ipsecd is the
    laptop behind the NAT, charon the gateway."""
    topo = site.view(0, ipsecd_on_client=True)
    laptop = pki.end_entity(big_chain.intermediates[1], "laptop.example.com", "rsa4096",
                            sans=["DNS:laptop.example.com"], ekus=[CLIENT_AUTH])
    theirs = start_charon(charon_factory, topo, tmp_path, CharonSide(  # type: ignore[arg-type]
        local={"auth": "pubkey", "id": GW_ID, "certs": f"{GW_ID}.pem"},
        remote={"auth": "pubkey", "id": "laptop.example.com"},
        own=[big_chain.cert], certs=big_chain.intermediates, cas=[big_chain.root], fragmentation="yes"),
        initiator=False)
    creds = write_ipsecd_creds(tmp_path / "ipsecd-creds", own=[laptop], certs=big_chain.intermediates,
                               cas=[big_chain.root])
    ours = ipsecd_factory(topo.a, ipsecd_ra_config(
        topo, creds, initiator=True,  # type: ignore[arg-type]
        local={"auth": "pubkey", "id": "laptop.example.com", "certs": ["laptop.example.com.pem"]},
        remote={"auth": "pubkey", "id": GW_ID}))
    ours.up(CONN)
    ike = compare(ours, theirs, topo)  # type: ignore[arg-type]
    assert ike["initiator"] and ike["remote_cert"] == f"CN={GW_ID}"
    wait_log(ours, r"splitting IKE_AUTH request 1 \(\d+ octets\) into \d+ fragments")
    wait_log(ours, r"reassembled response 1 from \d+ fragments")
    assert re.search(r"received fragment #\d+ of \d+", theirs.log_text()), theirs.log_tail()
    assert site.fragments_dropped() == 0
