"""Address pools: ranges, leases by identity, exhaustion, reassignment and persistence in SQLite."""

from __future__ import annotations

import os
import sqlite3
import stat
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from ipsecd.iana import ConfigAttribute, PrivateConfigAttribute
from ipsecd.identity import Identity
from ipsecd.ike.cp import Lease
from ipsecd.pools import (
    MemoryLeaseStore,
    PoolError,
    PoolManager,
    PoolSpec,
    SqliteLeaseStore,
    attribute_value,
    parse_range,
)

ALICE, BOB, CAROL, DAVE = (Identity.parse(f"{n}@corp.example") for n in ("alice", "bob", "carol", "dave"))
P1, P2 = ("192.0.2.1", 4500), ("192.0.2.1", 40001)  # two laptops behind one NAT address


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def spec(name: str, addrs: str, attrs: tuple[tuple[int, bytes], ...] = ()) -> PoolSpec:
    first, last = parse_range(addrs)
    return PoolSpec(name, first, last, attrs)


def manager(*specs: PoolSpec, store: object = None) -> PoolManager:
    return PoolManager(specs, store or MemoryLeaseStore(), clock=Clock())  # type: ignore[arg-type]


def addr(lease: Lease | None) -> str:
    assert lease is not None
    return str(lease.address)


# --------------------------------------------------------------------------- configuration values


@pytest.mark.parametrize(("text", "first", "last"), [
    ("10.3.0.0/24", "10.3.0.1", "10.3.0.254"),  # no network or broadcast address, as strongSwan
    ("10.3.0.0/30", "10.3.0.1", "10.3.0.2"),
    ("10.3.0.0/31", "10.3.0.0", "10.3.0.1"),
    ("10.3.0.7/32", "10.3.0.7", "10.3.0.7"),
    ("10.3.0.10-10.3.0.20", "10.3.0.10", "10.3.0.20"),
    (" 10.3.0.10 - 10.3.0.10 ", "10.3.0.10", "10.3.0.10"),
    ("fd00:3::/120", "fd00:3::1", "fd00:3::fe"),
    ("fd00:3::/64", "fd00:3::1", "fd00:3::ffff:ffff:ffff:fffe"),
])
def test_ranges(text: str, first: str, last: str) -> None:
    assert parse_range(text) == (ip_address(first), ip_address(last))


@pytest.mark.parametrize(("text", "why"), [
    ("10.3.0.1/24", "host bits set (did you mean '10.3.0.0/24'?)"),
    ("10.3.0.20-10.3.0.10", "first address is above the last"),
    ("10.3.0.1-fd00::1", "mixes IPv4 and IPv6"),
    ("10.3.0.1-x", "not an address range"),
    ("corp", "not a subnet or range"),
])
def test_bad_ranges(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_range(text)


def test_attribute_values() -> None:
    A = ConfigAttribute
    assert attribute_value("dns", "10.2.0.53") == (A.INTERNAL_IP4_DNS, IPv4Address("10.2.0.53").packed)
    assert attribute_value("dns", "fd00::53") == (A.INTERNAL_IP6_DNS, IPv6Address("fd00::53").packed)
    assert attribute_value("subnet", "10.2.0.0/16") == (A.INTERNAL_IP4_SUBNET, bytes([10, 2, 0, 0, 255, 255, 0, 0]))
    assert attribute_value("subnet", "fd00:2::/48") == (A.INTERNAL_IP6_SUBNET,
                                                        IPv6Address("fd00:2::").packed + b"\x30")
    assert attribute_value("split_exclude", "192.168.1.0/24") == (
        PrivateConfigAttribute.UNITY_LOCAL_LAN, bytes([192, 168, 1, 0, 255, 255, 255, 0]))
    assert attribute_value("server", "10.2.0.9")[0] == PrivateConfigAttribute.INTERNAL_IP4_SERVER
    # numbered attributes, as swanctl: an address or a subnet in binary, anything else as text
    assert attribute_value("25", "corp.example") == (25, b"corp.example")
    assert attribute_value("3", "10.2.0.53") == (3, IPv4Address("10.2.0.53").packed)
    assert attribute_value("13", "10.2.0.0/16") == (13, bytes([10, 2, 0, 0, 255, 255, 0, 0]))
    for key, value, why in (("nbns", "fd00::1", "no IPv6 nbns"), ("netmask", "ffff::", "no IPv6 netmask"),
                            ("dns", "corp.example", "not an IP address"), ("subnet", "10.2.0.1/16", "not a subnet"),
                            ("32768", "x", "unknown attribute"), ("0", "x", "unknown attribute"),
                            ("wins", "10.0.0.1", "unknown attribute")):
        with pytest.raises(ValueError, match=why):
            attribute_value(key, value)


# --------------------------------------------------------------------------- leases


def test_new_leases_in_order_and_the_same_user_gets_the_same_address_back() -> None:
    m = manager(spec("rw", "10.3.0.0/29"))
    a, b = m.acquire(["rw"], ALICE, 4, None, P1), m.acquire(["rw"], BOB, 4, None, P2)
    assert (addr(a), addr(b)) == ("10.3.0.1", "10.3.0.2")
    assert a is not None and a.identity == ALICE and a.pool == "rw" and a.peer == P1
    m.release(a)
    assert m.describe(leases=True)[0]["offline"] == 1
    # alice comes back from elsewhere: her offline lease, not a new one
    assert addr(m.acquire(["rw"], ALICE, 4, None, ("198.51.100.7", 4500))) == "10.3.0.1"
    assert addr(m.acquire(["rw"], CAROL, 4, None, P1)) == "10.3.0.3"


def test_one_user_on_two_laptops_gets_two_addresses_and_a_reauthentication_shares_its_own() -> None:
    m = manager(spec("rw", "10.3.0.0/29"))
    first = m.acquire(["rw"], ALICE, 4, None, P1)
    second = m.acquire(["rw"], ALICE, 4, None, P2)  # another device, same user name
    assert (addr(first), addr(second)) == ("10.3.0.1", "10.3.0.2")
    # make-before-break reauthentication: same endpoint asks for the address it has
    again = m.acquire(["rw"], ALICE, 4, IPv4Address("10.3.0.1"), P1)
    assert addr(again) == "10.3.0.1"
    assert first is not None and again is not None and second is not None
    m.release(first)  # the old IKE SA goes: the lease stays online for the new one
    info = {lease["address"]: lease["status"] for lease in m.describe(leases=True)[0]["leases"]}
    assert info == {"10.3.0.1": "online", "10.3.0.2": "online"}
    m.release(again)
    m.release(second)
    assert m.describe()[0]["online"] == 0 and m.describe()[0]["offline"] == 2
    # asking for someone else's address from another endpoint never gets it
    assert addr(m.acquire(["rw"], BOB, 4, IPv4Address("10.3.0.1"), P2)) == "10.3.0.3"


def test_take_over_reuses_an_online_lease_after_a_crash() -> None:
    m = manager(spec("rw", "10.3.0.0/29"))
    old = m.acquire(["rw"], ALICE, 4, None, P1)
    # the laptop crashed and comes back through a new NAT port with INITIAL_CONTACT
    assert addr(m.acquire(["rw"], ALICE, 4, None, P2, take_over=True)) == addr(old)
    assert addr(m.acquire(["rw"], ALICE, 4, None, P2)) == "10.3.0.2"  # without it: a second device


def test_a_free_requested_address_is_honoured() -> None:
    m = manager(spec("rw", "10.3.0.0/29"))
    assert addr(m.acquire(["rw"], ALICE, 4, IPv4Address("10.3.0.5"), P1)) == "10.3.0.5"
    assert addr(m.acquire(["rw"], BOB, 4, IPv4Address("10.9.9.9"), P2)) == "10.3.0.1"  # outside: ignored
    assert addr(m.acquire(["rw"], CAROL, 4, None, P1)) == "10.3.0.2"


def test_exhaustion_then_the_least_recently_used_offline_lease_is_reassigned() -> None:
    m = manager(spec("rw", "10.3.0.1-10.3.0.2"))
    a, b = m.acquire(["rw"], ALICE, 4, None, P1), m.acquire(["rw"], BOB, 4, None, P2)
    assert m.acquire(["rw"], CAROL, 4, None, P1) is None  # full, everyone online
    assert a is not None and b is not None
    m.release(b)
    m.release(a)  # bob went offline first: his lease is the one to go
    assert addr(m.acquire(["rw"], CAROL, 4, None, P1)) == "10.3.0.2"
    assert addr(m.acquire(["rw"], DAVE, 4, None, P1)) == "10.3.0.1"
    leases = {x["address"]: x["identity"] for x in m.describe(leases=True)[0]["leases"]}
    assert leases == {"10.3.0.1": str(DAVE), "10.3.0.2": str(CAROL)}
    assert m.acquire(["rw"], ALICE, 4, None, P1) is None


def test_pools_in_order_per_family_and_their_attributes() -> None:
    dns4 = (ConfigAttribute.INTERNAL_IP4_DNS, IPv4Address("10.2.0.53").packed)
    dns6 = (ConfigAttribute.INTERNAL_IP6_DNS, IPv6Address("fd00:2::53").packed)
    domain = (ConfigAttribute.INTERNAL_DNS_DOMAIN, b"corp.example")
    m = manager(spec("small", "10.3.0.1-10.3.0.1", (dns4, domain)), spec("big", "10.4.0.0/24", (dns4,)),
                spec("v6", "fd00:3::/120", (dns6, domain)))
    assert m.serves(["small", "big"], 4) and not m.serves(["small", "big"], 6) and m.serves(["v6"], 6)
    a = m.acquire(["small", "big", "v6"], ALICE, 4, None, P1)
    b = m.acquire(["small", "big", "v6"], BOB, 4, None, P2)
    c = m.acquire(["small", "big", "v6"], BOB, 6, None, P2)
    assert (addr(a), addr(b), addr(c)) == ("10.3.0.1", "10.4.0.1", "fd00:3::1")
    assert a is not None and b is not None and c is not None
    assert m.attributes(["small", "big", "v6"], [a]) == [dns4, domain]
    assert m.attributes(["small", "big", "v6"], [b, c]) == [dns4, dns6, domain]  # no duplicates
    assert m.acquire(["nope"], ALICE, 4, None, P1) is None and not m.serves(["nope"], 4)


def test_a_huge_ipv6_pool_costs_nothing() -> None:
    m = manager(spec("v6", "fd00:3::/64"))
    assert m.describe()[0]["size"] == 2**64 - 2
    assert [addr(m.acquire(["v6"], Identity.parse(f"u{i}@x"), 6, None, P1)) for i in range(3)] == [
        "fd00:3::1", "fd00:3::2", "fd00:3::3"]


def test_a_reload_keeps_leases_inside_the_new_range() -> None:
    store = MemoryLeaseStore()
    m = manager(spec("rw", "10.3.0.0/29"), store=store)
    leases = [m.acquire(["rw"], who, 4, None, P1) for who in (ALICE, BOB, CAROL)]
    assert all(lease is not None for lease in leases)
    m.release(leases[0])  # type: ignore[arg-type]
    m.release(leases[2])  # type: ignore[arg-type]
    m.update([spec("rw", "10.3.0.1-10.3.0.2")])  # carol's offline .3 falls out; bob's online .2 stays
    assert {x["address"] for x in m.describe(leases=True)[0]["leases"]} == {"10.3.0.1", "10.3.0.2"}
    assert ("rw", "10.3.0.3") not in store.rows
    m.update([spec("rw", "10.3.0.1-10.3.0.1")])  # bob's online .2 is outside now: kept until released
    assert m.describe()[0]["online"] == 1
    m.release(leases[1])  # type: ignore[arg-type]
    assert {x["address"] for x in m.describe(leases=True)[0]["leases"]} == {"10.3.0.1"}
    assert ("rw", "10.3.0.2") not in store.rows
    m.update([])
    assert m.describe() == [] and m.acquire(["rw"], ALICE, 4, None, P1) is None


# --------------------------------------------------------------------------- persistence


def test_leases_survive_a_restart_in_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "state" / "leases.db"
    m = PoolManager([spec("rw", "10.3.0.0/24"), spec("v6", "fd00:3::/120")], SqliteLeaseStore(db), clock=Clock())
    a = m.acquire(["rw"], ALICE, 4, None, P1)
    m.acquire(["rw"], BOB, 4, None, P2)  # still online when the daemon dies
    m.acquire(["v6"], BOB, 6, None, P2)
    assert a is not None
    m.release(a)
    m.close()
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db.parent).st_mode) & 0o027 == 0

    again = PoolManager([spec("rw", "10.3.0.0/24"), spec("v6", "fd00:3::/120")], SqliteLeaseStore(db),
                        clock=Clock())
    pools = {p["name"]: p for p in again.describe(leases=True)}
    assert pools["rw"]["online"] == 0 and pools["rw"]["offline"] == 2  # nothing survives a restart online
    assert addr(again.acquire(["rw"], BOB, 4, None, ("203.0.113.9", 4500))) == "10.3.0.2"
    assert addr(again.acquire(["rw"], ALICE, 4, None, P1)) == "10.3.0.1"
    assert addr(again.acquire(["v6"], BOB, 6, None, P2)) == "fd00:3::1"
    assert addr(again.acquire(["rw"], CAROL, 4, None, P1)) == "10.3.0.3"  # never-used addresses continue
    again.close()
    rows = sqlite3.connect(db).execute("SELECT pool, address, identity, online FROM leases ORDER BY address").fetchall()
    assert ("rw", "10.3.0.1", "alice@corp.example", 1) in rows and len(rows) == 4


def test_a_pool_removed_and_added_back_finds_its_leases(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    m = PoolManager([spec("rw", "10.3.0.0/24")], SqliteLeaseStore(db), clock=Clock())
    lease = m.acquire(["rw"], ALICE, 4, None, P1)
    assert lease is not None
    m.release(lease)
    m.close()
    m = PoolManager([], SqliteLeaseStore(db), clock=Clock())
    m.update([spec("rw", "10.3.0.0/24")])
    assert addr(m.acquire(["rw"], ALICE, 4, None, P1)) == "10.3.0.1"
    m.close()


def test_an_unusable_lease_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PoolError, match="cannot open the lease database"):
        SqliteLeaseStore(tmp_path / "file" / "leases.db")
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute("PRAGMA user_version=99")
    with pytest.raises(PoolError, match="schema version 99"):
        SqliteLeaseStore(newer)


def test_a_failing_write_keeps_the_leases_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteLeaseStore(tmp_path / "leases.db")
    m = PoolManager([spec("rw", "10.3.0.0/24")], store, clock=Clock())
    store.db.close()  # every write fails from now on
    with caplog.at_level("ERROR"):
        assert addr(m.acquire(["rw"], ALICE, 4, None, P1)) == "10.3.0.1"
        assert addr(m.acquire(["rw"], BOB, 4, None, P1)) == "10.3.0.2"
    assert sum("cannot write the lease database" in r.message for r in caplog.records) == 1


def test_a_pool_removed_by_a_reload_keeps_its_leases_for_its_return() -> None:
    m = manager(spec("rw", "10.3.0.0/29"), spec("other", "10.4.0.0/29"))
    lease = m.acquire(["rw"], ALICE, 4, None, P1)
    assert lease is not None
    m.release(lease)
    m.update([spec("other", "10.4.0.0/29")])
    m.update([spec("rw", "10.3.0.0/29"), spec("other", "10.4.0.0/29")])
    assert addr(m.acquire(["rw"], BOB, 4, None, P2)) == "10.3.0.2"
    assert addr(m.acquire(["rw"], ALICE, 4, None, P1)) == "10.3.0.1"


# --------------------------------------------------------------------------- IKE shards


def test_ike_shards_split_every_pool_and_share_one_lease_file(tmp_path: Path) -> None:
    """With settings.ike_shards each shard leases its own offsets of a pool (one writer per
    address), and the shards share the lease file, each taking back only its own rows."""
    db = tmp_path / "leases.db"
    specs = [spec("rw", "10.3.0.0/29"), spec("v6", "fd00:3::/125")]  # 10.3.0.1 - .6; fd00:3::1 - ::6
    s0 = PoolManager(specs, SqliteLeaseStore(db), clock=Clock(), share=(0, 2))
    s1 = PoolManager(specs, SqliteLeaseStore(db), clock=Clock(), share=(1, 2))
    got0 = [addr(s0.acquire(["rw"], who, 4, None, P1)) for who in (ALICE, BOB, CAROL)]
    got1 = [addr(s1.acquire(["rw"], who, 4, None, P2)) for who in (DAVE, ALICE, BOB)]
    assert got0 == ["10.3.0.1", "10.3.0.3", "10.3.0.5"] and got1 == ["10.3.0.2", "10.3.0.4", "10.3.0.6"]
    assert s0.acquire(["rw"], DAVE, 4, None, P1) is None  # shard 0's share is full (its own offline: none)
    assert addr(s1.acquire(["v6"], CAROL, 6, None, P2)) == "fd00:3::2"
    # a requested address of the other shard's share is not honoured: the next of our own
    assert addr(s0.acquire(["v6"], DAVE, 6, ip_address("fd00:3::4"), P1)) == "fd00:3::1"
    s0.close()
    s1.close()
    # a restart: every shard finds its own leases in the one file, and only those
    r0 = PoolManager(specs, SqliteLeaseStore(db), clock=Clock(), share=(0, 2))
    r1 = PoolManager(specs, SqliteLeaseStore(db), clock=Clock(), share=(1, 2))
    assert {p["name"]: p["offline"] for p in r0.describe()} == {"rw": 3, "v6": 1}
    assert {p["name"]: p["offline"] for p in r1.describe()} == {"rw": 3, "v6": 1}
    assert addr(r0.acquire(["rw"], BOB, 4, None, P1)) == "10.3.0.3"
    assert addr(r1.acquire(["rw"], BOB, 4, None, P1)) == "10.3.0.6"
    # one shard again (ike_shards back to 1): it owns every row
    r0.close()
    r1.close()
    one = PoolManager(specs, SqliteLeaseStore(db), clock=Clock())
    assert {p["name"]: p["offline"] for p in one.describe()} == {"rw": 6, "v6": 2}
    one.close()
