"""Security Policy Database (RFC 4301 section 4.4.1): ordered selectors -> PROTECT / BYPASS / DISCARD.

Semantics: the SPD is an ordered list; the first entry (lowest ``priority``, ties broken by
insertion order) whose selectors all match a packet decides its fate (RFC 4301 4.4.1:
"the first matching entry"). A policy's ``local`` selector is the source side of outbound
traffic, ``remote`` the destination side; for traffic arriving in clear the roles swap.

Indexing, so lookups are not a scan of every policy: each policy's remote address range is
decomposed into CIDR prefixes (a range needs at most 2 x address-bits prefixes), and each
prefix goes into a dict keyed by ``address >> (bits - prefix_length)``, one dict per prefix
length in use. A lookup does one dict probe per distinct prefix length present for the
packet's address family (at most 33 for IPv4, 129 for IPv6, usually a handful), then walks
only the candidates in the matching buckets, each bucket kept sorted by order so the walk
stops at the first full match -- and earlier as soon as a bucket cannot beat the best match
found so far. Cost: O(L + k) with L distinct prefix lengths and k policies sharing the
packet's remote prefix; insertion/removal O(P log n) per policy with P prefixes. Many
policies with the same remote range but different local ranges (k large) degrade towards
a scan of those k.

Ports (RFC 4301 4.4.1.1): a selector port range of 0..65535 is ANY and matches every packet,
including those without ports; ``port_lo=65535, port_hi=0`` is OPAQUE (the IKEv2 encoding,
RFC 7296 3.13.1) and matches only packets whose ports are unavailable; any other range
matches only packets with a port in it. Non-first fragments carry no ports, so they only
match ANY or OPAQUE selectors (RFC 4301 7.3: stateful fragment checking is not done here;
a tunnel whose SA restricts ports needs reassembly before the SPD, which the data plane
does not do -- such fragments fall through to later policies).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from ipsecd.esp.packet import parse_ip_ints

PORT_ANY = (0, 65535)
PORT_OPAQUE = (65535, 0)


class Action(StrEnum):
    PROTECT = "protect"
    BYPASS = "bypass"
    DISCARD = "discard"


def range_to_prefixes(lo: int, hi: int, bits: int) -> list[tuple[int, int]]:
    """Smallest list of ``(network, prefix_length)`` covering exactly ``lo..hi``."""
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = (lo & -lo) if lo else 1 << bits
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, bits - size.bit_length() + 1))
        lo += size
    return out


@dataclass(frozen=True, slots=True)
class Selector:
    """One side of a traffic selector: an address range, a protocol (0 = any), a port range.

    ``net_lo``/``net_hi`` are inclusive, as in IKEv2 traffic selectors (RFC 7296 3.13.1).
    The integer forms ``lo``/``hi`` and ``version`` are derived, for the fast match.
    """

    net_lo: IPv4Address | IPv6Address
    net_hi: IPv4Address | IPv6Address
    proto: int = 0
    port_lo: int = 0
    port_hi: int = 65535
    version: int = field(init=False, repr=False, compare=False)
    lo: int = field(init=False, repr=False, compare=False)
    hi: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.net_lo.version != self.net_hi.version:
            raise ValueError("selector range mixes IPv4 and IPv6")
        lo, hi = int(self.net_lo), int(self.net_hi)
        if lo > hi:
            raise ValueError(f"selector range {self.net_lo}..{self.net_hi} is empty")
        if not 0 <= self.proto <= 255:
            raise ValueError("selector protocol must be 0..255")
        if not (0 <= self.port_lo <= 65535 and 0 <= self.port_hi <= 65535):
            raise ValueError("selector ports must be 0..65535")
        if self.port_lo > self.port_hi and (self.port_lo, self.port_hi) != PORT_OPAQUE:
            raise ValueError("selector port range is empty")
        object.__setattr__(self, "version", self.net_lo.version)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @classmethod
    def from_prefix(
        cls, prefix: str | IPv4Network | IPv6Network, proto: int = 0, ports: tuple[int, int] = PORT_ANY
    ) -> Selector:
        """Selector for a CIDR prefix, e.g. ``Selector.from_prefix("10.1.0.0/24", proto=6, ports=(443, 443))``."""
        net = ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
        return cls(net.network_address, net.broadcast_address, proto, ports[0], ports[1])

    @classmethod
    def from_range(
        cls,
        lo: str | IPv4Address | IPv6Address,
        hi: str | IPv4Address | IPv6Address,
        proto: int = 0,
        ports: tuple[int, int] = PORT_ANY,
    ) -> Selector:
        """Selector for an inclusive address range, the native IKEv2 TS form."""
        # ip_address() of an address object formats and parses it again: skip that (per Child SA)
        a = lo if isinstance(lo, (IPv4Address, IPv6Address)) else ip_address(lo)
        b = hi if isinstance(hi, (IPv4Address, IPv6Address)) else ip_address(hi)
        return cls(a, b, proto, ports[0], ports[1])

    @classmethod
    def any(cls, version: int = 4) -> Selector:
        """Every address of one family, any protocol, any port."""
        return cls.from_prefix("0.0.0.0/0" if version == 4 else "::/0")

    @property
    def any_port(self) -> bool:
        return self.port_lo == 0 and self.port_hi == 65535

    @property
    def is_any(self) -> bool:
        """True when this selector matches every packet of its address family."""
        bits = 32 if self.version == 4 else 128
        return self.lo == 0 and self.hi == (1 << bits) - 1 and self.proto == 0 and self.any_port

    def contains(self, version: int, addr: int, proto: int, port: int | None) -> bool:
        """Whether an address (as an int), protocol and port (None = unavailable) match."""
        if version != self.version or not self.lo <= addr <= self.hi:
            return False
        if self.proto and proto != self.proto:
            return False
        return _port_match(port, self.port_lo, self.port_hi)

    def contains_packet(self, packet: bytes, source: bool = False) -> bool:
        """Whether ``packet``'s destination (or, with ``source=True``, its source) side matches."""
        parsed = parse_ip_ints(packet)
        if parsed is None:
            return False
        version, src, dst, proto, sport, dport, _hlen = parsed
        if source:
            return self.contains(version, src, proto, sport)
        return self.contains(version, dst, proto, dport)


def _port_match(port: int | None, lo: int, hi: int) -> bool:
    if lo == 0 and hi == 65535:  # ANY
        return True
    if port is None:
        return lo > hi  # only OPAQUE matches a packet without ports
    return lo <= port <= hi


@dataclass(frozen=True, slots=True)
class Policy:
    """One SPD entry. ``sa_ref`` names the outbound SA for PROTECT (the Child SA's reqid).

    Lower ``priority`` values are consulted first (as in Linux XFRM and strongSwan);
    among equal priorities the earlier-added policy wins.
    """

    local: Selector
    remote: Selector
    action: Action
    sa_ref: int | None = None
    priority: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.local.version != self.remote.version:
            raise ValueError("policy mixes IPv4 and IPv6 selectors")
        if self.local.proto and self.remote.proto and self.local.proto != self.remote.proto:
            raise ValueError("policy selectors name different protocols")
        if self.action == Action.PROTECT and self.sa_ref is None:
            raise ValueError("a PROTECT policy needs an sa_ref")

    @property
    def proto(self) -> int:
        return self.local.proto or self.remote.proto

    def matches(self, version: int, src: int, dst: int, proto: int, sport: int | None, dport: int | None) -> bool:
        """Outbound sense: ``src``/``sport`` against ``local``, ``dst``/``dport`` against ``remote``."""
        return self.local.contains(version, src, proto, sport) and self.remote.contains(version, dst, proto, dport)


# Bucket entry: (priority, insertion number, local lo, local hi, protocol, local ports,
# remote ports, policy). The remote address needs no check: the bucket's prefix lies inside
# the policy's remote range.
_Entry = tuple[int, int, int, int, int, int, int, int, int, Policy]


class Spd:
    """The ordered policy database with a prefix index on the remote side (module docstring)."""

    def __init__(self) -> None:
        self._order: list[_Entry] = []  # all entries in decision order
        self._by_policy: dict[Policy, list[_Entry]] = {}  # equal policies may be added twice
        self._seq = 0
        # version -> [(shift, {prefix key: sorted bucket})], one table per prefix length
        self._tables: dict[int, dict[int, dict[int, list[_Entry]]]] = {4: {}, 6: {}}
        self._probe: dict[int, list[tuple[int, dict[int, list[_Entry]]]]] = {4: [], 6: []}

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Policy]:
        """Policies in decision order."""
        return (entry[-1] for entry in self._order)

    def add(self, policy: Policy) -> None:
        """Insert a policy at its priority (after existing entries of equal priority)."""
        self._seq += 1
        loc, rem = policy.local, policy.remote
        entry: _Entry = (
            policy.priority,
            self._seq,
            loc.lo,
            loc.hi,
            policy.proto,
            loc.port_lo,
            loc.port_hi,
            rem.port_lo,
            rem.port_hi,
            policy,
        )
        insort(self._order, entry)
        self._by_policy.setdefault(policy, []).append(entry)
        bits = 32 if rem.version == 4 else 128
        tables = self._tables[rem.version]
        for net, plen in range_to_prefixes(rem.lo, rem.hi, bits):
            table = tables.get(plen)
            if table is None:
                table = tables[plen] = {}
                self._rebuild_probe(rem.version)
            insort(table.setdefault(net >> (bits - plen), []), entry)

    def _rebuild_probe(self, version: int) -> None:
        bits = 32 if version == 4 else 128
        self._probe[version] = [(bits - plen, t) for plen, t in sorted(self._tables[version].items(), reverse=True)]

    @staticmethod
    def _remove_sorted(entries: list[_Entry], entry: _Entry) -> None:
        # (priority, insertion number) is unique, so bisect finds exactly this entry.
        del entries[bisect_left(entries, entry[:2])]

    def _remove_entry(self, entry: _Entry) -> None:
        self._remove_sorted(self._order, entry)
        same = self._by_policy[entry[-1]]
        same.remove(entry)
        if not same:
            del self._by_policy[entry[-1]]
        rem = entry[-1].remote
        bits = 32 if rem.version == 4 else 128
        tables = self._tables[rem.version]
        for net, plen in range_to_prefixes(rem.lo, rem.hi, bits):
            table = tables[plen]
            key = net >> (bits - plen)
            bucket = table[key]
            self._remove_sorted(bucket, entry)
            if not bucket:
                del table[key]
                if not table:
                    del tables[plen]
                    self._rebuild_probe(rem.version)

    def remove(self, policy: Policy) -> bool:
        """Remove the earliest-added entry equal to ``policy``; False if there was none."""
        same = self._by_policy.get(policy)
        if not same:
            return False
        self._remove_entry(same[0])
        return True

    def remove_where(self, *, name: str | None = None, sa_ref: int | None = None) -> int:
        """Remove every policy with this name and/or sa_ref; returns how many went."""
        doomed = [
            e
            for e in self._order
            if (name is None or e[-1].name == name) and (sa_ref is None or e[-1].sa_ref == sa_ref)
        ]
        for entry in doomed:
            self._remove_entry(entry)
        return len(doomed)

    def clear(self) -> None:
        self._order.clear()
        self._by_policy.clear()
        self._tables = {4: {}, 6: {}}
        self._probe = {4: [], 6: []}

    def lookup(
        self, version: int, local: int, remote: int, proto: int, local_port: int | None, remote_port: int | None
    ) -> Policy | None:
        """First policy in order matching these fields (local = our side, remote = peer side)."""
        best: _Entry | None = None
        for shift, table in self._probe.get(version, ()):
            bucket = table.get(remote >> shift)
            if bucket is None:
                continue
            for entry in bucket:
                if best is not None and entry >= best:
                    break  # sorted bucket: nothing further down can come first
                _pr, _n, llo, lhi, eproto, lplo, lphi, rplo, rphi, _pol = entry
                if not llo <= local <= lhi or (eproto and eproto != proto):
                    continue
                if not (lplo == 0 and lphi == 65535) and not _port_match(local_port, lplo, lphi):
                    continue
                if not (rplo == 0 and rphi == 65535) and not _port_match(remote_port, rplo, rphi):
                    continue
                best = entry
                break
        return None if best is None else best[-1]

    def lookup_outbound(self, packet: bytes) -> Policy | None:
        """Policy for a packet we are about to send (read from the TUN); None if none matches.

        The packet is parsed once; malformed packets match nothing (the caller drops them
        as NO_POLICY).
        """
        parsed = parse_ip_ints(packet)
        if parsed is None:
            return None
        version, src, dst, proto, sport, dport, _hlen = parsed
        return self.lookup(version, src, dst, proto, sport, dport)

    def lookup_inbound(self, packet: bytes) -> Policy | None:
        """Policy for a packet that arrived in clear (source = remote side), RFC 4301 5.2."""
        parsed = parse_ip_ints(packet)
        if parsed is None:
            return None
        version, src, dst, proto, sport, dport, _hlen = parsed
        return self.lookup(version, dst, src, proto, dport, sport)
