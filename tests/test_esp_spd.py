"""SPD (RFC 4301 4.4.1): ordering, actions, IPv6, protocol/port selectors, fragments, scale."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.packet import Packet, Raw

from ipsecd.esp.packet import parse_ip_ints
from ipsecd.esp.spd import PORT_OPAQUE, Action, Policy, Selector, Spd, range_to_prefixes


def pol(
    local: str,
    remote: str,
    action: Action = Action.PROTECT,
    prio: int = 0,
    ref: int | None = 1,
    name: str = "",
    proto: int = 0,
    lports: tuple[int, int] = (0, 65535),
    rports: tuple[int, int] = (0, 65535),
) -> Policy:
    return Policy(
        Selector.from_prefix(local, proto=proto, ports=lports),
        Selector.from_prefix(remote, proto=proto, ports=rports),
        action,
        sa_ref=ref if action == Action.PROTECT else None,
        priority=prio,
        name=name,
    )


def udp(src: str, dst: str, sport: int = 1000, dport: int = 53) -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport))


def test_first_match_by_priority_then_insertion() -> None:
    spd = Spd()
    broad = pol("10.0.0.0/8", "0.0.0.0/0", Action.DISCARD, prio=100, name="broad")
    narrow = pol("10.1.0.0/16", "172.16.0.0/12", prio=50, name="narrow")
    same_prio_later = pol("10.1.0.0/16", "172.16.5.0/24", Action.BYPASS, prio=50, name="later")
    spd.add(broad)
    spd.add(narrow)
    spd.add(same_prio_later)
    assert spd.lookup_outbound(udp("10.1.2.3", "172.16.5.9")) is narrow  # equal priority: added first wins
    assert spd.lookup_outbound(udp("10.2.2.3", "172.16.5.9")) is broad
    assert spd.lookup_outbound(udp("11.0.0.1", "172.16.5.9")) is None
    high = pol("10.1.2.3/32", "172.16.5.9/32", Action.BYPASS, prio=1, name="host")
    spd.add(high)
    assert spd.lookup_outbound(udp("10.1.2.3", "172.16.5.9")) is high
    assert [p.name for p in spd] == ["host", "narrow", "later", "broad"]


def test_more_specific_but_lower_priority_loses() -> None:
    """Ordered semantics, not longest-prefix match."""
    spd = Spd()
    first = pol("0.0.0.0/0", "0.0.0.0/0", Action.BYPASS, prio=1)
    specific = pol("10.0.0.1/32", "10.0.0.2/32", prio=2)
    spd.add(specific)
    spd.add(first)
    assert spd.lookup_outbound(udp("10.0.0.1", "10.0.0.2")) is first


def test_actions_and_remove() -> None:
    spd = Spd()
    d = pol("0.0.0.0/0", "192.0.2.0/24", Action.DISCARD, prio=5, name="d")
    b = pol("0.0.0.0/0", "0.0.0.0/0", Action.BYPASS, prio=10, name="b")
    spd.add(d)
    spd.add(b)
    got = spd.lookup_outbound(udp("10.0.0.1", "192.0.2.7"))
    assert got is not None and got.action is Action.DISCARD
    assert spd.remove(d)
    assert not spd.remove(d)
    got = spd.lookup_outbound(udp("10.0.0.1", "192.0.2.7"))
    assert got is not None and got.action is Action.BYPASS
    assert spd.remove_where(name="b") == 1
    assert len(spd) == 0 and spd.lookup_outbound(udp("10.0.0.1", "192.0.2.7")) is None


def test_remove_by_sa_ref_and_clear() -> None:
    spd = Spd()
    for i in range(10):
        spd.add(pol(f"10.0.{i}.0/24", "0.0.0.0/0", ref=i % 3))
    assert spd.remove_where(sa_ref=1) == 3
    assert len(spd) == 7
    spd.clear()
    assert len(spd) == 0 and spd.lookup_outbound(udp("10.0.0.1", "1.1.1.1")) is None


def test_ipv6_policies() -> None:
    spd = Spd()
    v6 = pol("fd00:1::/64", "fd00:2::/48", name="v6")
    v4 = pol("0.0.0.0/0", "0.0.0.0/0", Action.BYPASS, prio=9, name="v4")
    spd.add(v4)
    spd.add(v6)
    pkt = bytes(IPv6(src="fd00:1::5", dst="fd00:2:0:7::1") / TCP(sport=1, dport=443))
    assert spd.lookup_outbound(pkt) is v6
    assert spd.lookup_outbound(bytes(IPv6(src="fd00:1::5", dst="fd00:3::1") / TCP())) is None
    assert spd.lookup_outbound(udp("1.2.3.4", "5.6.7.8")) is v4


def test_proto_and_ports() -> None:
    spd = Spd()
    https = pol("10.0.0.0/8", "0.0.0.0/0", prio=1, proto=6, rports=(443, 443), name="https")
    dns = pol("10.0.0.0/8", "0.0.0.0/0", prio=2, proto=17, lports=(1024, 65535), rports=(53, 53), name="dns")
    rest = pol("10.0.0.0/8", "0.0.0.0/0", Action.DISCARD, prio=3, name="rest")
    for p in (https, dns, rest):
        spd.add(p)
    assert spd.lookup_outbound(bytes(IP(src="10.0.0.1", dst="8.8.8.8") / TCP(sport=5555, dport=443))) is https
    assert spd.lookup_outbound(bytes(IP(src="10.0.0.1", dst="8.8.8.8") / TCP(sport=5555, dport=80))) is rest
    assert spd.lookup_outbound(udp("10.0.0.1", "8.8.8.8", sport=5555, dport=53)) is dns
    assert spd.lookup_outbound(udp("10.0.0.1", "8.8.8.8", sport=53, dport=53)) is rest  # local port < 1024
    # clear traffic arriving from 8.8.8.8:53 to us: roles swap (RFC 4301 5.2)
    assert spd.lookup_inbound(udp("8.8.8.8", "10.0.0.1", sport=53, dport=5555)) is dns


def test_non_first_fragment_is_opaque() -> None:
    spd = Spd()
    ported = pol("10.0.0.0/8", "0.0.0.0/0", prio=1, proto=17, rports=(53, 53), name="ported")
    opaque = Policy(
        Selector.from_prefix("10.0.0.0/8", proto=17, ports=PORT_OPAQUE),
        Selector.from_prefix("0.0.0.0/0", proto=17),
        Action.BYPASS,
        priority=2,
        name="opaque",
    )
    spd.add(ported)
    spd.add(opaque)
    first = bytes(IP(src="10.0.0.1", dst="8.8.8.8", flags="MF") / UDP(sport=9, dport=53) / Raw(b"x" * 16))
    later = bytes(IP(src="10.0.0.1", dst="8.8.8.8", frag=3, proto=17) / Raw(b"x" * 16))
    assert spd.lookup_outbound(first) is ported
    assert spd.lookup_outbound(later) is opaque
    v6_later = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=5, nh=17) / Raw(b"y" * 16))
    parsed = parse_ip_ints(v6_later)
    assert parsed is not None and parsed[3] == 17 and parsed[4] is None


def test_icmp_type_code_as_port() -> None:
    spd = Spd()
    echo = Policy(
        Selector.from_prefix("0.0.0.0/0", proto=1, ports=(0x0800, 0x0800)),
        Selector.from_prefix("0.0.0.0/0", proto=1),
        Action.BYPASS,
        priority=1,
    )
    spd.add(echo)
    assert spd.lookup_outbound(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=8, code=0))) is echo
    assert spd.lookup_outbound(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=0, code=0))) is None
    v6 = bytes(IPv6(src="::1", dst="::2") / ICMPv6EchoRequest())
    assert parse_ip_ints(v6) is not None and parse_ip_ints(v6)[4] == 128 << 8  # type: ignore[index]


def test_range_selectors_and_decomposition() -> None:
    lo, hi = int(IPv4Address("10.0.0.3")), int(IPv4Address("10.0.1.200"))
    prefixes = range_to_prefixes(lo, hi, 32)
    covered = sorted(a for net, plen in prefixes for a in range(net, net + (1 << (32 - plen))))
    assert covered == list(range(lo, hi + 1))
    assert range_to_prefixes(0, (1 << 32) - 1, 32) == [(0, 0)]
    assert len(range_to_prefixes(1, (1 << 128) - 2, 128)) <= 2 * 128

    spd = Spd()
    p = Policy(Selector.any(), Selector.from_range("10.0.0.3", "10.0.1.200"), Action.PROTECT, sa_ref=3)
    spd.add(p)
    assert spd.lookup_outbound(udp("1.1.1.1", "10.0.0.3")) is p
    assert spd.lookup_outbound(udp("1.1.1.1", "10.0.1.200")) is p
    assert spd.lookup_outbound(udp("1.1.1.1", "10.0.0.2")) is None
    assert spd.lookup_outbound(udp("1.1.1.1", "10.0.1.201")) is None
    assert spd.remove(p) and len(spd) == 0


def test_selector_validation() -> None:
    with pytest.raises(ValueError):
        Selector(ip_address("10.0.0.2"), ip_address("10.0.0.1"))
    with pytest.raises(ValueError):
        Selector(ip_address("10.0.0.1"), ip_address("::1"))
    with pytest.raises(ValueError):
        Selector.from_prefix("10.0.0.0/8", ports=(10, 5))
    with pytest.raises(ValueError):
        Policy(Selector.any(4), Selector.any(6), Action.BYPASS)
    with pytest.raises(ValueError):
        Policy(Selector.any(), Selector.any(), Action.PROTECT)  # no sa_ref


def test_selector_contains_packet() -> None:
    s = Selector.from_prefix("10.1.0.0/16", proto=6, ports=(80, 80))
    pkt = bytes(IP(src="10.1.2.3", dst="10.9.9.9") / TCP(sport=80, dport=1234))
    assert s.contains_packet(pkt, source=True)
    assert not s.contains_packet(pkt)
    assert not s.contains_packet(b"garbage")


def test_malformed_packets_match_nothing() -> None:
    spd = Spd()
    spd.add(pol("0.0.0.0/0", "0.0.0.0/0", Action.BYPASS))
    for junk in (b"", b"\x45", bytes(40), b"\x45" + bytes(19), b"\x46" + bytes(19)):
        assert spd.lookup_outbound(junk) is None


def _random_policy(rng: random.Random, i: int) -> Policy:
    def sel() -> Selector:
        plen = rng.choice((8, 16, 20, 24, 28, 32))
        addr = IPv4Address(rng.getrandbits(32) & 0x0AFFFFFF | 0x0A000000)  # within 10/8
        proto = rng.choice((0, 0, 6, 17))
        lo = rng.choice((0, 0, 53, 80, 443, 1024))
        ports = (0, 65535) if lo == 0 else (lo, rng.choice((lo, 65535)))
        return Selector.from_prefix(f"{addr}/{plen}", proto=proto, ports=ports)

    a, b = sel(), sel()
    proto = a.proto or b.proto
    a = Selector(a.net_lo, a.net_hi, proto, a.port_lo, a.port_hi)
    b = Selector(b.net_lo, b.net_hi, proto, b.port_lo, b.port_hi)
    action = rng.choice(list(Action))
    return Policy(a, b, action, sa_ref=i if action == Action.PROTECT else None, priority=rng.randrange(50), name=str(i))


def _ordered(policies: list[Policy]) -> list[Policy]:
    return [p for _, p in sorted(enumerate(policies), key=lambda ip: (ip[1].priority, ip[0]))]


def _reference(ordered: list[Policy], pkt: bytes) -> Policy | None:
    """The RFC 4301 definition: linear scan in (priority, insertion) order."""
    parsed = parse_ip_ints(pkt)
    assert parsed is not None
    version, src, dst, proto, sport, dport, _ = parsed
    for p in ordered:
        if p.matches(version, src, dst, proto, sport, dport):
            return p
    return None


def test_5000_policies_agree_with_linear_scan() -> None:
    rng = random.Random(4301)
    policies = [_random_policy(rng, i) for i in range(5000)]
    spd = Spd()
    for p in policies:
        spd.add(p)
    assert len(spd) == 5000
    ordered = _ordered(policies)
    # packets aimed at random policies' ranges, plus random ones
    for _ in range(500):
        target = rng.choice(policies)
        src = IPv4Address(rng.randint(int(target.local.net_lo), int(target.local.net_hi)))
        dst = IPv4Address(rng.randint(int(target.remote.net_lo), int(target.remote.net_hi)))
        if rng.random() < 0.2:
            dst = IPv4Address(rng.getrandbits(32))
        l4: Packet = TCP(sport=rng.choice((80, 443, 5000)), dport=rng.choice((53, 443, 8080)))
        if rng.random() < 0.5:
            l4 = UDP(sport=rng.choice((53, 5000)), dport=rng.choice((53, 443)))
        pkt = bytes(IP(src=str(src), dst=str(dst)) / l4)
        assert spd.lookup_outbound(pkt) is _reference(ordered, pkt)
    # removing half keeps the index consistent
    for p in policies[::2]:
        assert spd.remove(p)
    rest = policies[1::2]
    ordered = _ordered(rest)
    for _ in range(200):
        target = rng.choice(rest)
        pkt = udp(str(target.local.net_lo), str(target.remote.net_hi), 53, 53)
        assert spd.lookup_outbound(pkt) is _reference(ordered, pkt)


def test_5000_distinct_host_policies_find_the_right_one() -> None:
    spd = Spd()
    for i in range(5000):
        spd.add(pol("10.0.0.0/8", f"172.{16 + i // 256}.{i % 256}.0/24", ref=i, prio=10))
    spd.add(pol("0.0.0.0/0", "0.0.0.0/0", Action.BYPASS, prio=100))
    for i in (0, 1, 2500, 4999):
        got = spd.lookup_outbound(udp("10.1.1.1", f"172.{16 + i // 256}.{i % 256}.77"))
        assert got is not None and got.sa_ref == i
    got = spd.lookup_outbound(udp("10.1.1.1", "8.8.8.8"))
    assert got is not None and got.action is Action.BYPASS


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_lookup_never_raises(data: bytes) -> None:
    spd = Spd()
    spd.add(pol("0.0.0.0/0", "0.0.0.0/0", Action.BYPASS))
    spd.add(pol("::/0", "::/0", Action.BYPASS))
    spd.lookup_outbound(data)
    spd.lookup_inbound(data)
