"""Issue 10's combined remote-access scenario on one site (tests/ra_site.py): strongSwan 5.9.8
laptops, configured only by ipsecd's Linux client profile, behind one NAT, through a router
whose links have a 1280-byte MTU and which drops every IP fragment, to the ipsecd gateway with
a LAN host behind it. The gateway authenticates with the site's ~5 KB chain (RSA-4096 root,
two intermediates, gateway: ``site_pki``), which can only arrive by IKE fragmentation
(RFC 7383); the negative control (the same chain without fragmentation fails) is in
tests/interop/test_fragmentation_interop.py.

Each step is its own test on the same ``ra_site`` fixture, every one through the 1280-byte
router: four clients (virtual IPs, DNS, TS, pings both ways, 1300-byte packets), pool
exhaustion and a restart, ten clients at once, IKE redirect (``gateways=2``), and MOBIKE
(``uplinks=2``, ``use_uplink``/``uplink_down``).
"""

from __future__ import annotations

import base64
import json
import plistlib
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.ipsecd_proc import Ipsecd, why_no_ipsecd
from tests.netns import Netns, wait_for
from tests.pki import KeyPool, TestPki
from tests.profile_clients import generate_profile
from tests.ra_site import (  # noqa: F401  (ra_site is a fixture)
    CONN,
    DNS4,
    DNS6,
    DOMAIN,
    GW2_OUT,
    GW_ID,
    GW_OUT,
    LAN4,
    LAN6,
    LAN_TS,
    NAT_OUT,
    NAT_OUT2,
    RemoteAccessSite,
    SiteGateway,
    ra_site,
    resolv_path,
    site_client,
    site_gateway_doc,
    site_pki,
)
from tests.strongswan import Charon

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.timeout(300),
    pytest.mark.skipif(why_no_ipsecd() is not None, reason=why_no_ipsecd() or ""),
]
MakeSite = Callable[..., RemoteAccessSite]
MakeCharon = Callable[..., Charon]
MakeIpsecd = Callable[..., Ipsecd]


@pytest.fixture(scope="module")
def chain(key_pool: KeyPool) -> SiteGateway:
    """The gateway's ~5 KB chain, made once per module (keys from the session's pool)."""
    return site_pki(TestPki(keys=key_pool))


def _site(make: MakeSite, clients: int, **kw: Any) -> RemoteAccessSite:
    """The issue's site: the router's links at 1280 bytes, IP fragments dropped."""
    return make(clients, mtu=1280, drop_fragments=True, **kw)


def _vips(ch: Charon) -> list[str]:
    return sorted(ch.wait_established(30, child=CONN).get("local-vips", []))


def _v4(vips: list[str]) -> str:
    return next(a for a in vips if ":" not in a)


def _v6(vips: list[str]) -> str:
    return next(a for a in vips if ":" in a)


def test_four_profile_clients_through_the_site(ra_site: MakeSite, charon_factory: MakeCharon,  # noqa: F811
                                               ipsecd_factory: MakeIpsecd, tmp_path: Path, chain: SiteGateway) -> None:
    site = _site(ra_site, 4)
    assert chain.chain_octets() > 4000
    gw = ipsecd_factory(site.gw, site_gateway_doc(tmp_path, chain, n_users=4), name="gw")
    clients = [site_client(charon_factory, site, gw, i, tmp_path) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda ch: ch.initiate(CONN, ike=CONN, timeout=60), clients))
    vips = [_vips(ch) for ch in clients]
    # the chain crossed the 1280-byte router as RFC 7383 fragments, never as IP fragments
    split = re.findall(r"splitting IKE_AUTH response 1 \((\d+) octets\) into (\d+) fragments", gw.log_text())
    assert len(split) >= 4 and all(int(n) > chain.chain_octets() and int(k) >= 4 for n, k in split), split
    assert all(re.search(r"received fragment #\d+ of \d+", ch.log_text()) for ch in clients)
    assert site.fragments_dropped() == 0
    assert len({_v4(v) for v in vips}) == 4 and all(_v4(v).startswith("10.3.0.") for v in vips), vips
    assert len({_v6(v) for v in vips}) == 4 and all(_v6(v).startswith("fd00:3::") for v in vips), vips

    sas = {s["remote_eap_id"]: s for s in gw.list_sas()}
    assert set(sas) == {f"user{i}" for i in range(4)}
    assert {s["remote"].split("[")[0] for s in sas.values()} == {NAT_OUT} and len({s["remote"] for s in
                                                                                   sas.values()}) == 4
    text = gw.ctl("list-sas").stdout
    for i, ch in enumerate(clients):
        sa = sas[f"user{i}"]
        swan = ch.list_sas()[0]
        # identity (Windows-like: the client's own address as IKE identity), EAP identity, virtual IPs, address
        assert sa["remote_id"] == swan["local-id"] and sa["remote_auth"] == "eap-mschapv2"
        assert sorted(sa["remote_vips"]) == vips[i]
        assert sa["remote"].startswith(f"{NAT_OUT}[")  # its current address: the NAT's, with its own port
        assert re.search(rf"remote '{re.escape(sa['remote_id'])}' @ {re.escape(sa['remote'])} "
                         rf"\[{re.escape(' '.join(sa['remote_vips']))}\]", text), text
        assert f"remote authenticated with eap-mschapv2, EAP identity 'user{i}'" in text
        (swan_child,) = swan["child-sas"]
        assert sorted(swan_child["remote-ts"]) == sorted(LAN_TS)  # narrowed to the LAN
        assert sorted(swan_child["local-ts"]) == sorted(f"{a}/{128 if ':' in a else 32}" for a in vips[i])
        # DNS servers through the resolve plugin, the DNS domain (RFC 8598) received
        wait_for(f"c{i}'s resolv.conf", lambda i=i: DNS4 in _read(resolv_path(tmp_path, i)))  # type: ignore[misc]
        assert DNS6 in _read(resolv_path(tmp_path, i))
        assert "INTERNAL_DNS_DOMAIN" in ch.log_text()

    for i, v in enumerate(vips):  # both ways, both families, LAN host <-> laptop
        site.clients[i].ping(LAN4, count=2, deadline=8)
        site.clients[i].ping(LAN6, count=2, deadline=8)
        site.lan.ping(_v4(v), count=2, deadline=8)
        site.lan.ping(_v6(v), count=2, deadline=8)
    pools = {p["name"]: p for p in json.loads(gw.ctl("list-pools", "--json").stdout)["pools"]}
    assert (pools["rw4"]["online"], pools["rw6"]["online"]) == (4, 4)

    # 1300-byte packets (DF clear) end to end, both ways: the gateway's TUN takes its MTU from the
    # 1280 path and fragments the inner packet before encrypting; libipsec's fixed 1400-byte TUN
    # does not fit that path (nor does libipsec fragment inside the tunnel), so each laptop's
    # routes into it get an MTU that fits, as ipsecd's own routes carry one
    for i, v in enumerate(vips):
        _fit_libipsec_to_the_path(site.clients[i])
        _big_ping(site.clients[i], _v4(v), LAN4)
        _big_ping(site.lan, LAN4, _v4(v))
    assert site.fragments_dropped() == 0

    # every other platform's profile for the same gateway validates
    out = generate_profile(gw, CONN, "user0", "apple", tmp_path / "apple", server=GW_ID, extra=())
    vpn = next(p for p in plistlib.loads(out[f"{CONN}.mobileconfig"].encode())["PayloadContent"]
               if p["PayloadType"] == "com.apple.vpn.managed")
    assert vpn["IKEv2"]["RemoteIdentifier"] == GW_ID and vpn["DNS"]["SupplementalMatchDomains"] == [DOMAIN]
    sswan = json.loads(generate_profile(gw, CONN, "user0", "android", tmp_path / "android", server=GW_ID,
                                        extra=())[f"{CONN}.sswan"])
    assert x509.load_der_x509_certificate(base64.b64decode(sswan["remote"]["cert"])).subject == chain.root.cert.subject
    ps1 = generate_profile(gw, CONN, "user0", "windows", tmp_path / "windows", server=GW_ID, extra=())[f"{CONN}.ps1"]
    assert "-DnsSuffix 'corp.example'" in ps1 and "-DestinationPrefix '10.10.0.0/24'" in ps1


def _fit_libipsec_to_the_path(ns: Netns, mtu: int = 1200) -> None:
    """libipsec's ipsec0 is 1400 bytes whatever the path; its IPv4 routes (table 220) get ``mtu``.
    The link itself keeps its MTU: below 1280 the kernel would take IPv6 off it."""
    for route in ns.run(["ip", "-4", "route", "show", "table", "220"]).stdout.splitlines():
        ns.run(["ip", "route", "replace", *route.split(), "table", "220", "mtu", "lock", str(mtu)])


def _big_ping(ns: Netns, src: str, dst: str) -> None:
    # 1272 octets of ICMP payload: a 1300-byte IPv4 packet, DF clear
    res = ns.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "1272", "-I", src, dst],
                 check=False, timeout=20)
    assert res.returncode == 0, f"{ns.name}: {src} -> {dst}: {res.stdout}{res.stderr}"


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_pool_exhaustion_then_a_restart_keeps_the_leases(ra_site: MakeSite, charon_factory: MakeCharon,  # noqa: F811
                                                         ipsecd_factory: MakeIpsecd, tmp_path: Path,
                                                         chain: SiteGateway) -> None:
    site = _site(ra_site, 3)
    doc = site_gateway_doc(tmp_path, chain, n_users=3, pool4="10.3.0.1-10.3.0.2", pool6=None)
    gw = ipsecd_factory(site.gw, doc, name="gw")
    clients = [site_client(charon_factory, site, gw, i, tmp_path) for i in range(3)]
    clients[0].initiate(CONN, ike=CONN, timeout=30)
    clients[1].initiate(CONN, ike=CONN, timeout=30)
    assert (_vips(clients[0]), _vips(clients[1])) == (["10.3.0.1"], ["10.3.0.2"])

    assert clients[2].initiate(CONN, ike=CONN, timeout=30, check=False).returncode != 0
    wait_for("charon to hear INTERNAL_ADDRESS_FAILURE", lambda: "INTERNAL_ADDRESS_FAILURE" in clients[2].log_text())
    assert "no IPv4 address left for 'user2' in pool rw4: exhausted" in gw.log_text()  # its EAP identity
    assert {s["remote_eap_id"] for s in gw.list_sas() if s["child_sas"]} == {"user0", "user1"}

    gw.stop()  # graceful: the clients hear the Deletes
    wait_for("the clients to lose their SAs", lambda: not clients[0].list_sas() and not clients[1].list_sas())
    gw = ipsecd_factory(site.gw, doc, name="gw2")
    leases = gw.ctl("list-pools", "--leases").stdout
    assert re.search(r"10\.3\.0\.1\s+offline 'user0'", leases) and re.search(r"10\.3\.0\.2\s+offline 'user1'",
                                                                            leases), leases
    clients[1].initiate(CONN, ike=CONN, timeout=30)  # the other order: each gets its own address back
    clients[0].initiate(CONN, ike=CONN, timeout=30)
    assert (_vips(clients[0]), _vips(clients[1])) == (["10.3.0.1"], ["10.3.0.2"])
    site.clients[0].ping(LAN4, count=2, deadline=8)
    site.lan.ping("10.3.0.2", count=2, deadline=8)


def test_ten_clients_behind_one_nat_connect_together(ra_site: MakeSite, charon_factory: MakeCharon,  # noqa: F811
                                                     ipsecd_factory: MakeIpsecd, tmp_path: Path,
                                                     chain: SiteGateway) -> None:
    site = _site(ra_site, 10)
    doc = site_gateway_doc(tmp_path, chain, n_users=10, pool4="10.3.0.0/27", pool6=None)
    gw = ipsecd_factory(site.gw, doc, name="gw")
    clients = [site_client(charon_factory, site, gw, i, tmp_path) for i in range(10)]
    with ThreadPoolExecutor(10) as pool:  # all at once, as an office after a Wi-Fi outage
        results = list(pool.map(lambda ch: ch.initiate(CONN, ike=CONN, timeout=60, check=False), clients))
    assert [r.returncode for r in results] == [0] * 10, [r.stdout[-500:] for r in results if r.returncode]
    vips = [_v4(_vips(ch)) for ch in clients]
    assert len(set(vips)) == 10
    sas = gw.list_sas()
    assert len(sas) == 10 and {s["remote"].split("[")[0] for s in sas} == {NAT_OUT}
    assert {s["remote_eap_id"] for s in sas} == {f"user{i}" for i in range(10)}
    for i in range(10):
        site.clients[i].ping(LAN4, count=1, deadline=8)
    stats: dict[str, Any] = json.loads(gw.ctl("stats", "--json").stdout)["ike"]
    assert not stats.get("cookies_sent") and not stats.get("half_open_limit"), stats


def test_redirect_to_a_second_gateway(ra_site: MakeSite, charon_factory: MakeCharon,  # noqa: F811
                                      ipsecd_factory: MakeIpsecd, tmp_path: Path, chain: SiteGateway) -> None:
    """RFC 5685: established clients are told to move (INFORMATIONAL), new ones are sent on in IKE_SA_INIT."""
    site = _site(ra_site, 2, gateways=2)
    assert site.gw2 is not None
    gw1 = ipsecd_factory(site.gw, site_gateway_doc(tmp_path / "gw1", chain, n_users=2, pool6=None), name="gw1")
    gw2 = ipsecd_factory(site.gw2, site_gateway_doc(tmp_path / "gw2", chain, n_users=2, pool4="10.4.0.0/28",
                                                    pool6=None, local_addrs=[GW2_OUT]), name="gw2")
    first = site_client(charon_factory, site, gw1, 0, tmp_path)
    first.initiate(CONN, ike=CONN, timeout=30)
    assert _vips(first)[0].startswith("10.3.0.")

    out = gw1.ctl("redirect", CONN, "--to", GW2_OUT).stdout
    assert "1 established client(s) told to move" in out, out
    wait_for("the client to move to gw2", lambda: [s.get("remote-host") for s in first.list_sas()] == [GW2_OUT],
             timeout=30)
    wait_for("gw1 to lose the client", lambda: not gw1.list_sas(), timeout=20)
    assert _vips(first)[0].startswith("10.4.0.")  # gw2's pool
    (sa2,) = gw2.list_sas()
    assert sa2["remote_eap_id"] == "user0"
    site.clients[0].ping(LAN4, count=2, deadline=8)  # through gw2 now
    assert "redirecting the client to 198.51.101.2 (RFC 5685)" in gw1.log_text()

    # gw1 is draining: a new client is sent on in its IKE_SA_INIT and ends up at gw2
    second = site_client(charon_factory, site, gw1, 1, tmp_path)
    second.initiate(CONN, ike=CONN, timeout=30, check=False)
    wait_for("the second client at gw2", lambda: [s.get("remote-host") for s in second.list_sas()
                                                  if s.get("state") == "ESTABLISHED"] == [GW2_OUT], timeout=30)
    assert "redirected" in second.log_text().lower()
    assert not gw1.list_sas() and len(gw2.list_sas()) == 2
    gw1.ctl("redirect", "--all", "--stop")


def test_a_laptop_moves_to_its_second_uplink_on_the_same_ike_sa(
        ra_site: MakeSite, charon_factory: MakeCharon, ipsecd_factory: MakeIpsecd,  # noqa: F811
        tmp_path: Path, chain: SiteGateway) -> None:
    """MOBIKE (RFC 4555) at the site: the laptop loses its Wi-Fi and its LTE uplink takes the default
    route, leaving through the NAT's second public address; the profile client moves the IKE SA
    (UPDATE_SA_ADDRESSES), the gateway checks the new address and moves the Child SAs. Pings
    resume within 2 s on the same IKE SA, with the same virtual IP, both ways."""
    from tests.interop.test_mobike_interop import MAX_OUTAGE, PINGS_BEFORE, _outage, _pinger

    site = _site(ra_site, 1, uplinks=2)
    gw = ipsecd_factory(site.gw, site_gateway_doc(tmp_path, chain, n_users=1), name="gw")
    client = site_client(charon_factory, site, gw, 0, tmp_path)
    client.initiate(CONN, ike=CONN, timeout=30)
    vip = _v4(_vips(client))
    (before,) = gw.list_sas()
    assert before["mobike"] and before["remote"].startswith(f"{NAT_OUT}["), before
    site.clients[0].ping(LAN4, count=2, src=vip, deadline=8)

    pinger = _pinger(site.clients[0], vip, LAN4)
    time.sleep(PINGS_BEFORE)  # pings flow on the first uplink for a while
    site.uplink_down(0, 0)  # Wi-Fi gone ...
    site.use_uplink(0, 1)  # ... LTE takes the default route
    wait_for("the gateway to see the laptop's new address", lambda: any(
        s["remote"].startswith(f"{NAT_OUT2}[") for s in gw.list_sas()), 10)
    gap, answered = _outage(pinger)
    print(f"MOBIKE outage at the site (behind the NAT): {gap:.2f} s ({answered} pings answered)")
    assert gap < MAX_OUTAGE, gap

    wait_for("libipsec's rekeys to settle", lambda: len(gw.list_sas()) == 1 and len(
        [c for c in gw.list_sas()[0]["child_sas"] if c["state"] == "INSTALLED"]) == 1, 15)
    (after,) = gw.list_sas()
    swan = client.list_sas()[0]
    assert (after["spi_i"], after["spi_r"]) == (before["spi_i"], before["spi_r"]) == (
        swan["initiator-spi"], swan["responder-spi"])
    assert after["remote_vips"] == before["remote_vips"] and after["remote_eap_id"] == "user0"
    (child,) = [c for c in after["child_sas"] if c["state"] == "INSTALLED"]
    (swan_child,) = [c for c in swan["child-sas"] if c["state"] == "INSTALLED"]
    assert (child["spi_in"], child["spi_out"]) == (swan_child["spi-out"], swan_child["spi-in"])
    site.clients[0].ping(LAN4, count=2, src=vip, deadline=8)
    site.lan.ping(vip, count=2, deadline=8)
