"""Virtual IPs in IKE_AUTH and swanctl's unique, engine against engine with a fake clock.

A gateway engine (pools, ``remote_ts: dynamic``) and several client engines (``vips``)
behind one simulated NAT: every client reaches the gateway from the same address, told
apart only by its NAT port, as laptops in one office are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from ipsecd.iana import CfgType, ConfigAttribute, NotifyType, PrivateConfigAttribute
from ipsecd.identity import Identity
from ipsecd.ike.events import (
    Cause,
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    Login,
    VirtualIpsAssigned,
)
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import CpPayload, NotifyPayload
from ipsecd.ike.settings import IkeSettings
from ipsecd.ike.tasks.ike_config import IkeConfig
from ipsecd.ike.ts import ts_to_str
from ipsecd.pools import MemoryLeaseStore, PoolManager, PoolSpec, attribute_value, parse_range
from tests.ike_pair import make_settings

GW = "198.51.100.1"
NAT = "192.0.2.1"  # every client's public address
LAN4, LAN6 = "10.2.0.0/24", "fd00:2::/64"
DNS4 = attribute_value("dns", "10.2.0.53")
DNS6 = attribute_value("dns", "fd00:2::53")
DOMAIN = attribute_value("25", "corp.example")


def pools(v4: str | None = "10.3.0.0/29", v6: str | None = None) -> PoolManager:
    specs = []
    if v4 is not None:
        specs.append(PoolSpec("rw4", *parse_range(v4), (DNS4, DOMAIN)))
    if v6 is not None:
        specs.append(PoolSpec("rw6", *parse_range(v6), (DNS6, DOMAIN)))
    return PoolManager(specs, MemoryLeaseStore())


def gateway_settings(*, pools: Sequence[str] = ("rw4", "rw6"), local_ts: Sequence[str] = (LAN4, LAN6),
                     unique: str = "no") -> IkeSettings:
    s = make_settings("rw", local_id="gw.test", remote_id="%any", local_ts=local_ts, remote_ts=("dynamic",),
                      local_addrs=(GW,), remote_addrs=())
    return dataclasses.replace(s, pools=tuple(pools), unique=unique)


def client_settings(i: int, *, vips: Sequence[str] = ("0.0.0.0",), remote_ts: Sequence[str] = (LAN4, LAN6),
                    name: str | None = None) -> IkeSettings:
    s = make_settings("rw", local_id=name or f"c{i}.test", remote_id="gw.test", local_ts=("dynamic",),
                      remote_ts=remote_ts, local_addrs=(f"10.99.0.{i + 10}",), remote_addrs=(GW,))
    return dataclasses.replace(s, vips=tuple(vips))


@dataclasses.dataclass
class Office:
    """A gateway and clients behind one NAT: client i's port p leaves as NAT:(40000 + 100 i + p % 100)."""

    gw: IkeManager
    clients: list[IkeManager]
    now: float = 1000.0
    gw_events: list[Event] = dataclasses.field(default_factory=list)
    client_events: dict[int, list[Event]] = dataclasses.field(default_factory=dict)

    def add(self, settings: IkeSettings) -> int:
        self.clients.append(IkeManager([settings], now=self.now))
        return len(self.clients) - 1

    def up(self, i: int) -> None:
        self.now += 1.0  # INITIAL_CONTACT only replaces SAs up before this one started
        self.clients[i].initiate("rw", self.now)
        self.pump()

    def pump(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            moved = False
            for i, c in enumerate(self.clients):
                for d in c.datagrams_to_send():
                    moved = True
                    src = (NAT, 40000 + 100 * i + d.local[1] % 100)
                    self.gw.receive_datagram(d.data, d.remote, src, self.now)
            for d in self.gw.datagrams_to_send():
                moved = True
                port = d.remote[1] - 40000
                i, local_port = port // 100, 500 if port % 100 == 0 else 4500
                c = self.clients[i]
                c.receive_datagram(d.data, (c.connections[0].local_addrs[0], local_port), d.local, self.now)
            for i, c in enumerate(self.clients):
                while (ev := c.next_event()) is not None:
                    self.client_events.setdefault(i, []).append(ev)
            while (ev := self.gw.next_event()) is not None:
                self.gw_events.append(ev)
            if not moved:
                return
        raise AssertionError("did not settle")

    def events(self, i: int, kind: type) -> list:
        return [e for e in self.client_events.get(i, []) if isinstance(e, kind)]

    def gw_sa_of(self, i: int) -> IkeSa:
        (sa,) = [s for s in self.gw.list_sas() if s.remote[1] // 100 == (40000 + 100 * i) // 100]
        return sa


def office(n: int, gw: IkeSettings | None = None, pm: PoolManager | None = None, **client_kw: object) -> Office:
    o = Office(IkeManager([gw or gateway_settings()], now=1000.0, attributes=pm or pools()), [])
    for i in range(n):
        o.add(client_settings(i, **client_kw))  # type: ignore[arg-type]
    return o


def _ts(ev: ChildSaEstablished) -> tuple[list[str], list[str]]:
    return [ts_to_str(t) for t in ev.local_ts], [ts_to_str(t) for t in ev.remote_ts]


# --------------------------------------------------------------------------- assignment


def test_a_client_gets_a_virtual_ip_dns_and_domain_and_the_ts_narrow_to_it() -> None:
    o = office(1)
    o.up(0)
    (vip,) = o.events(0, VirtualIpsAssigned)
    assert vip.addresses == (IPv4Address("10.3.0.1"),)
    assert vip.dns == (IPv4Address("10.2.0.53"),) and vip.domains == ("corp.example",)
    (client_child,) = o.events(0, ChildSaEstablished)
    # the client proposed 0.0.0.0/0, narrowed to its lease (the LANs stay as configured: the data
    # plane pairs policies by family, so the IPv6 LAN gets none without an IPv6 address)
    assert _ts(client_child) == (["10.3.0.1/32"], [LAN4, LAN6])
    (gw_child,) = [e for e in o.gw_events if isinstance(e, ChildSaEstablished)]
    assert _ts(gw_child) == ([LAN4, LAN6], ["10.3.0.1/32"])  # remote_ts: dynamic became the lease
    # VirtualIpsAssigned comes before the Child SA: the owner puts the address on the TUN first
    kinds = [type(e) for e in o.client_events[0]]
    assert kinds.index(VirtualIpsAssigned) < kinds.index(ChildSaEstablished)
    (csa,), gsa = o.clients[0].list_sas(), o.gw_sa_of(0)
    assert csa.vips.local == [IPv4Address("10.3.0.1")] and gsa.vips.remote == [IPv4Address("10.3.0.1")]
    assert gsa.vips.leases[0].identity == Identity.parse("c0.test")


def test_dual_stack_with_both_pools() -> None:
    o = office(1, pm=pools(v6="fd00:3::/120"), vips=("0.0.0.0", "::"))
    o.up(0)
    (vip,) = o.events(0, VirtualIpsAssigned)
    assert vip.addresses == (IPv4Address("10.3.0.1"), IPv6Address("fd00:3::1"))
    assert set(vip.dns) == {IPv4Address("10.2.0.53"), IPv6Address("fd00:2::53")}
    assert vip.domains == ("corp.example",)  # both pools name it: sent once
    (child,) = o.events(0, ChildSaEstablished)
    assert _ts(child) == (["10.3.0.1/32", "fd00:3::1/128"], [LAN4, LAN6])


def test_no_ipv6_pool_answers_the_ipv4_part_only() -> None:
    o = office(1, vips=("0.0.0.0", "::"))
    o.up(0)
    (vip,) = o.events(0, VirtualIpsAssigned)
    assert vip.addresses == (IPv4Address("10.3.0.1"),)
    (child,) = o.events(0, ChildSaEstablished)
    assert _ts(child) == (["10.3.0.1/32"], [LAN4, LAN6])


def test_pool_exhausted_is_internal_address_failure(caplog: pytest.LogCaptureFixture) -> None:
    o = office(3, pm=pools(v4="10.3.0.1-10.3.0.2"))
    o.up(0)
    o.up(1)
    with caplog.at_level("INFO"):
        o.up(2)
    assert not o.events(2, VirtualIpsAssigned) and not o.events(2, ChildSaEstablished)
    (failed,) = o.events(2, ChildSaFailed)
    assert "INTERNAL_ADDRESS_FAILURE" in failed.reason
    (closed,) = o.events(2, IkeSaClosed)
    assert closed.cause is Cause.PEER_REFUSED and "INTERNAL_ADDRESS_FAILURE" in closed.reason
    assert "no IPv4 address left for 'c2.test' in pools rw4, rw6: exhausted" in caplog.text
    assert "answering INTERNAL_ADDRESS_FAILURE, no Child SA" in caplog.text
    # the refused client deleted its IKE SA; the two others are untouched
    assert len(o.gw.list_sas()) == 2 and all(len(sa.children) == 1 for sa in o.gw.list_sas())


def test_a_client_that_asks_for_nothing_gets_failed_cp_required() -> None:
    o = office(0)
    o.add(client_settings(0, vips=()))
    o.up(0)
    (failed,) = o.events(0, ChildSaFailed)
    assert "FAILED_CP_REQUIRED" in failed.reason
    (gw_sa,) = o.gw.list_sas()
    assert gw_sa.state == IkeState.ESTABLISHED and not gw_sa.children and not gw_sa.vips.leases


def test_a_gateway_without_pools_ignores_the_request_and_the_client_gives_up() -> None:
    o = office(1, gw=gateway_settings(pools=()))
    o.up(0)
    (closed,) = o.events(0, IkeSaClosed)
    assert "assigned no virtual IP" in closed.reason
    assert o.gw.list_sas() == []  # the client's Delete removed the gateway's SA too


@pytest.mark.parametrize("attrs", [
    # Windows: ADDR, DNS, NBNS, its private SRV, ADDR6, DNS6, SRV6
    ((1, b""), (3, b""), (4, b""), (23456, b""), (8, b""), (10, b""), (23457, b"")),
    # macOS/iOS: ADDR, MASK, DHCP, DNS, ADDR6, DHCP6, DNS6, DOMAIN
    ((1, b""), (2, b""), (6, b""), (3, b""), (8, b""), (12, b""), (10, b""), (25, b"")),
    # garbage hints and an attribute nobody knows
    ((1, b"\x01\x02"), (8, b"\x00"), (31000, b"\xff" * 40), (14, b"\x00")),
], ids=["windows", "apple", "malformed"])
def test_requests_we_do_not_serve_do_not_fail_the_exchange(monkeypatch: pytest.MonkeyPatch,
                                                           attrs: tuple[tuple[int, bytes], ...]) -> None:
    monkeypatch.setattr(IkeConfig, "build_i", lambda self, sa: [CpPayload(CfgType.CFG_REQUEST, attrs)])
    o = office(1)
    o.up(0)
    (vip,) = o.events(0, VirtualIpsAssigned)
    assert vip.addresses == (IPv4Address("10.3.0.1"),)
    assert len(o.events(0, ChildSaEstablished)) == 1


def test_the_reply_carries_the_configured_attributes() -> None:
    sent: list[CpPayload] = []
    original = IkeConfig.process_i

    def spy(self: IkeConfig, sa: IkeSa, msg: Message) -> object:
        cp = msg.get(CpPayload)
        if cp is not None:
            sent.append(cp)
        return original(self, sa, msg)

    pm = PoolManager([PoolSpec("rw4", *parse_range("10.3.0.0/29"), (
        DNS4, attribute_value("nbns", "10.2.0.54"), attribute_value("subnet", "10.2.0.0/16"),
        attribute_value("split_exclude", "192.168.0.0/16"), DOMAIN, attribute_value("31000", "opaque")))],
        MemoryLeaseStore())
    o = office(1, pm=pm)
    pytest.MonkeyPatch().setattr(IkeConfig, "process_i", spy)
    try:
        o.up(0)
    finally:
        IkeConfig.process_i = original  # type: ignore[method-assign]
    (cp,) = sent
    assert cp.cfg_type == CfgType.CFG_REPLY
    types = [t for t, _ in cp.attributes]
    assert types == [ConfigAttribute.INTERNAL_IP4_ADDRESS, ConfigAttribute.INTERNAL_IP4_DNS,
                     ConfigAttribute.INTERNAL_IP4_NBNS, ConfigAttribute.INTERNAL_IP4_SUBNET,
                     PrivateConfigAttribute.UNITY_LOCAL_LAN, ConfigAttribute.INTERNAL_DNS_DOMAIN, 31000]
    assert cp.attributes[-1] == (31000, b"opaque")


# --------------------------------------------------------------------------- lease lifetime


def test_the_lease_goes_offline_with_the_ike_sa_and_comes_back_to_the_same_user() -> None:
    pm = pools()
    o = office(2, pm=pm)
    o.up(0)
    o.clients[0].terminate("rw", o.now)
    o.pump()
    assert o.gw.list_sas() == []
    assert pm.describe()[0]["offline"] == 1
    o.up(1)  # another user: a new address, not the offline one
    assert o.events(1, VirtualIpsAssigned)[0].addresses == (IPv4Address("10.3.0.2"),)
    o.up(0)
    assert [e.addresses for e in o.events(0, VirtualIpsAssigned)] == [(IPv4Address("10.3.0.1"),)] * 2


def test_an_ike_rekey_keeps_the_lease_online() -> None:
    pm = pools()
    o = office(1, pm=pm)
    o.up(0)
    (old,) = o.clients[0].list_sas()
    o.clients[0].rekey_ike(old.ike_sa_id, o.now)
    o.pump()
    (new,) = o.clients[0].list_sas()
    assert new.ike_sa_id != old.ike_sa_id and new.vips.local == [IPv4Address("10.3.0.1")]
    (gw_sa,) = o.gw.list_sas()
    assert gw_sa.vips.remote == [IPv4Address("10.3.0.1")] and gw_sa.rekeyed_from is not None
    assert pm.describe()[0]["online"] == 1
    o.clients[0].terminate("rw", o.now)
    o.pump()
    assert pm.describe()[0] == {"name": "rw4", "base": "10.3.0.1", "last": "10.3.0.6", "size": 6, "online": 0,
                                "offline": 1}


def test_a_reauthentication_keeps_its_address() -> None:
    pm = pools()
    o = office(1, pm=pm)
    o.up(0)
    (old,) = o.clients[0].list_sas()
    o.clients[0].reauthenticate(old.ike_sa_id, o.now)
    o.pump()
    (new,) = o.clients[0].list_sas()
    assert new.ike_sa_id != old.ike_sa_id
    assert [e.addresses for e in o.events(0, VirtualIpsAssigned)] == [(IPv4Address("10.3.0.1"),)] * 2
    assert pm.describe()[0]["online"] == 1


def test_a_crashed_client_with_initial_contact_gets_its_address_back() -> None:
    pm = pools()
    o = office(1, pm=pm)
    o.up(0)
    # the laptop reboots: a fresh engine (so INITIAL_CONTACT), through another NAT port
    i = o.add(client_settings(0))
    o.up(i)
    assert o.events(i, VirtualIpsAssigned)[0].addresses == (IPv4Address("10.3.0.1"),)
    (gw_sa,) = o.gw.list_sas()  # INITIAL_CONTACT replaced the stale SA
    assert gw_sa.remote[1] // 100 == 400 + i and pm.describe()[0]["online"] == 1


# --------------------------------------------------------------------------- many clients, one NAT address


def test_ten_clients_behind_one_nat_address_each_with_initial_contact() -> None:
    o = office(10, pm=pools(v4="10.3.0.0/27"))
    for i in range(10):
        o.clients[i].initiate("rw", o.now)
    o.pump()  # all at once
    sas = o.gw.list_sas()
    assert len(sas) == 10 and {sa.remote[0] for sa in sas} == {NAT}
    assert len({sa.remote for sa in sas}) == 10
    assert all(sa.state == IkeState.ESTABLISHED and len(sa.children) == 1 for sa in sas)
    vips = {o.events(i, VirtualIpsAssigned)[0].addresses[0] for i in range(10)}
    assert vips == {ip_address(f"10.3.0.{n}") for n in range(1, 11)}
    # each sent INITIAL_CONTACT; none replaced another: identities differ, the address does not count
    assert not [e for e in o.gw_events if isinstance(e, IkeSaClosed)]


# --------------------------------------------------------------------------- unique


def _second_laptop_same_user(unique: str, *, initial_contact: bool = True) -> Office:
    o = office(1, gw=gateway_settings(unique=unique))
    o.up(0)
    i = o.add(client_settings(0))
    if not initial_contact:
        o.clients[i].ctx.add_contact("rw", GW, 999)  # it believes it has another SA: no INITIAL_CONTACT
    o.up(i)
    return o


def test_unique_keep_refuses_the_newcomer_in_ike_auth() -> None:
    o = _second_laptop_same_user("keep")
    (closed,) = o.events(1, IkeSaClosed)
    assert closed.cause is Cause.AUTH_FAILED and "AUTHENTICATION_FAILED" in closed.reason
    (gw_sa,) = o.gw.list_sas()
    assert gw_sa.remote[1] // 100 == 400 and len(gw_sa.children) == 1  # the first one, untouched
    refused = [e for e in o.gw_events if isinstance(e, IkeSaClosed)]
    assert refused and "unique: keep" in refused[0].reason and not refused[0].established


@pytest.mark.parametrize("initial_contact", [True, False])
def test_unique_replace_deletes_the_older_sa(initial_contact: bool) -> None:
    o = _second_laptop_same_user("replace", initial_contact=initial_contact)
    (gw_sa,) = o.gw.list_sas()
    assert gw_sa.remote[1] // 100 == 401 and len(gw_sa.children) == 1
    if not initial_contact:  # replaced with a Delete: the first laptop hears of it
        assert o.events(0, IkeSaClosed)[0].cause is Cause.DELETED_BY_PEER


def test_unique_no_keeps_both_unless_initial_contact() -> None:
    o = _second_laptop_same_user("no", initial_contact=False)
    assert len(o.gw.list_sas()) == 2
    o = _second_laptop_same_user("no", initial_contact=True)
    (gw_sa,) = o.gw.list_sas()
    assert gw_sa.remote[1] // 100 == 401


def test_unique_never_ignores_initial_contact() -> None:
    o = _second_laptop_same_user("never", initial_contact=True)
    assert len(o.gw.list_sas()) == 2
    assert {sa.vips.remote[0] for sa in o.gw.list_sas()} == {IPv4Address("10.3.0.1"), IPv4Address("10.3.0.2")}


def test_unique_only_counts_established_sas_of_the_same_identities() -> None:
    o = office(2, gw=gateway_settings(unique="keep"))  # c0.test and c1.test: different users
    o.up(0)
    o.up(1)
    assert len(o.gw.list_sas()) == 2
    assert not [e for e in o.gw_events if isinstance(e, IkeSaClosed)]


def test_established_events_and_notify_sanity() -> None:
    o = office(1)
    o.up(0)
    assert [type(e) for e in o.gw_events if not isinstance(e, Login)][:1] == [IkeSaEstablished]
    assert NotifyPayload(NotifyType.INTERNAL_ADDRESS_FAILURE).notify_type == 36


def test_no_later_child_sa_for_a_client_without_its_virtual_ip() -> None:
    o = office(0)
    o.add(client_settings(0, vips=()))
    o.up(0)
    reqid = o.clients[0].assign_reqid("rw", "net")
    assert o.clients[0].acquire(reqid, o.now) is not None  # a CREATE_CHILD_SA on the IKE SA we have
    o.pump()
    failed = o.events(0, ChildSaFailed)
    assert len(failed) == 2 and "TS_UNACCEPTABLE" in failed[1].reason
    assert not o.gw.list_sas()[0].children
