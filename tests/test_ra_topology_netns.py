"""tests/ra_topology.py itself: the router passes what fits its MTU and drops every IP fragment."""

from __future__ import annotations

import pytest

from tests.ra_topology import NAT_OUTSIDE, ra_topology_or_skip

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


def _ping(ns, dst: str, size: int, *, v6: bool = False) -> int:  # type: ignore[no-untyped-def]
    argv = ["ping", *(["-6"] if v6 else []), "-n", "-c", "1", "-W", "1", "-s", str(size), "-M", "dont", dst]
    return int(ns.run(argv, check=False).returncode)


@pytest.mark.parametrize("nat", [False, True])
def test_small_packets_pass_fragments_do_not(nat: bool) -> None:
    with ra_topology_or_skip(2, mtu=1280, nat=nat) as topo:
        assert [c.seen_from_gw for c in topo.clients] == ([NAT_OUTSIDE] * 2 if nat else ["100.64.0.2", "100.64.1.2"])
        assert len({c.lan for c in topo.clients}) == 2
        for c in topo.clients:
            assert _ping(c.ns, topo.a_addr, 1200) == 0
            assert _ping(c.ns, topo.a_addr, 1300) != 0  # the sender (or the NAT) fragments, the router drops
            if not nat:
                assert c.addr6 is not None and topo.a_addr6 is not None
                assert _ping(c.ns, topo.a_addr6, 1200, v6=True) == 0
                assert _ping(c.ns, topo.a_addr6, 1300, v6=True) != 0
        assert topo.fragments_dropped() >= (2 if nat else 4)
        v = topo.view(1)
        assert (v.a, v.b, v.b_addr, v.b_lan_net) == (topo.a, topo.clients[1].ns, topo.clients[1].addr, "10.2.1.0/24")
