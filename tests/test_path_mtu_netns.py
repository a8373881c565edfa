"""Path MTU toward the peer as the data plane asks for it (dataplane/netconf.py ``path_mtu``).

The bug this guards against: a Child SA whose remote selectors cover the peer's own address
put a route to the peer into the TUN table; asking the kernel for the path to the peer
without the worker's fwmark then answered with that TUN route's mtu metric (the previous
SA's inner MTU), so every new SA shrank the TUN MTU by another ESP overhead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.netns import PROJECT_ROOT, Topology, topology_or_skip

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

_PROBE = """
import json, sys
from ipaddress import ip_address
from ipsecd.dataplane.netconf import NetConf, path_mtu
from ipsecd.dataplane.tun import open_tun
from ipsecd.esp.packet import tun_mtu
from ipsecd.esp.sa import Mode, SaParams
from ipsecd.iana import EncrId, IntegId
from ipsecd.esp.spd import Action, Policy, Selector

peer, mark = ip_address(sys.argv[1]), 0x2E5C
fd, name = open_tun("ipsecdpm%d")
nc = NetConf(name, table=220, rule_priority=220, mark=mark)
nc.link_up(1400)
nc.install_rules()
everything = Selector(ip_address("0.0.0.0"), ip_address("255.255.255.255"))
params = SaParams(0x1000, EncrId.ENCR_AES_GCM_16, bytes(36), IntegId.NONE, b"", False, Mode.TUNNEL,
                  ip_address(sys.argv[2]), peer, encap=True)
out = {"before": path_mtu(peer, mark)}
for reqid in range(1, 26):  # 25 Child SAs of 0.0.0.0/0, each installed as the daemon does
    mtu = tun_mtu(params, path_mtu(peer, mark))
    nc.add_routes(reqid, [Policy(everything, everything, Action.PROTECT, reqid)], mtu)
    out.setdefault("mtus", []).append(mtu)
out["with_mark"] = path_mtu(peer, mark)
out["without_mark"] = path_mtu(peer)
nc.cleanup()
print(json.dumps(out))
"""


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology_or_skip("pair", ipv6=False) as t:
        yield t


def test_path_mtu_ignores_our_own_tunnel_routes(topo: Topology) -> None:
    topo.a.run(["ip", "link", "set", "eth0", "mtu", "1280"])
    res = topo.a.run([sys.executable, "-c", _PROBE, topo.b_addr, topo.a_addr],
                     env={"PYTHONPATH": str(PROJECT_ROOT)})
    got = json.loads(res.stdout)
    assert got["before"] == got["with_mark"] == 1280
    assert len(set(got["mtus"])) == 1 and got["mtus"][0] > 1200, got["mtus"]  # stable, from the 1280 link
    # the mechanism of the bug: unmarked, the lookup lands on our own TUN route
    assert got["without_mark"] == got["mtus"][-1]
