"""tests/ra_site.py itself, without daemons: the router passes what fits its 1280-byte MTU and
drops every IPv4 and IPv6 fragment; a second uplink leaves through the NAT's second address."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.netns import Netns, kill_group, wait_for
from tests.ra_site import (  # noqa: F401  (ra_site is a fixture)
    GW_OUT,
    GW_OUT6,
    NAT_OUT2,
    RemoteAccessSite,
    ra_site,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]


def _ping(ns: Netns, dst: str, size: int) -> int:
    # -M dont: let the sender (or the NAT, whose conntrack reassembles first) fragment what does not fit
    argv = ["ping", *(["-6"] if ":" in dst else []), "-n", "-c", "1", "-W", "2", "-s", str(size), "-M", "dont", dst]
    return int(ns.run(argv, check=False).returncode)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_small_packets_pass_fragments_do_not(ra_site: Callable[..., RemoteAccessSite]) -> None:  # noqa: F811
    site = ra_site(2, mtu=1280, drop_fragments=True, ipv6_outside=True)
    for c in site.clients:
        assert _ping(c, GW_OUT, 1200) == 0
        assert _ping(c, GW_OUT, 1300) != 0  # fragmented after the NAT, the router drops the pieces
        assert _ping(c, GW_OUT6, 1200) == 0
        assert _ping(c, GW_OUT6, 1300) != 0  # the NAT, a router for IPv6, answers too big
    assert site.fragments_dropped() >= 2
    for i in range(2):  # the gateway's own link is 1280: it fragments at the source, the router drops
        dropped = site.fragments_dropped()
        assert _ping(site.gw, site.client_addr6(i), 1200) == 0
        assert _ping(site.gw, site.client_addr6(i), 1300) != 0
        assert site.fragments_dropped() > dropped
    assert _ping(site.lan, GW_OUT, 1400) == 0  # the LAN side keeps 1500
    v = site.view(1)
    assert (v.a, v.b, v.b_addr, v.b_seen_from_a, v.b_lan_net) == (site.gw, site.clients[1], "10.99.1.2",
                                                                   "192.0.2.1", "10.2.1.0/24")
    r = site.view(1, v6=True, ipsecd_on_client=True)
    assert (r.a, r.b, r.a_addr, r.b_seen_from_a, r.b_lan) == (site.clients[1], site.gw, "2001:db8:99:1::2",
                                                               GW_OUT6, "10.10.0.1")


def test_a_second_uplink_leaves_through_the_second_public_address(
        ra_site: Callable[..., RemoteAccessSite], tmp_path: Path) -> None:  # noqa: F811
    """What the MOBIKE step builds on: use_uplink moves the default route, uplink_down pulls a cable."""
    site = ra_site(1, mtu=1280, drop_fragments=True, uplinks=2)
    c0 = site.clients[0]
    site.use_uplink(0, 1)
    log = tmp_path / "tcpdump.txt"
    capture = site.gw.popen(["tcpdump", "-n", "-l", "-i", "eth0", "icmp"], log)
    try:
        wait_for("tcpdump", lambda: "listening" in _read(log), timeout=10)
        assert _ping(c0, GW_OUT, 100) == 0
        wait_for("the ping from the second public address", lambda: f"{NAT_OUT2} >" in _read(log), timeout=10)
    finally:
        kill_group(capture)
    site.uplink_down(0, 0)
    assert _ping(c0, GW_OUT, 100) == 0
