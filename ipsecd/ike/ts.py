"""Traffic selectors: from configuration to payload ranges, and narrowing (RFC 7296 2.9)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from ipsecd.iana import TsType
from ipsecd.ike.payloads import IPAddress, TrafficSelector
from ipsecd.ike.settings import TsSpec

# Protocols whose "ports" in a selector are ICMP type/code (RFC 7296 3.13.1), not ports
_ICMP_PROTOS = frozenset({1, 58})


@dataclass(frozen=True)
class TriggerPacket:
    """The outbound packet that hit a trap (the data plane's Acquire), as IKE needs it.

    RFC 7296 2.9: an initiator negotiating because of a packet SHOULD put, first in TSi
    and TSr, selectors that hold just that packet's addresses (and, in the RFC's example,
    its protocol and ports), so a responder whose policy is narrower than ours can pick
    the range that contains the packet. ``proto`` 0 and ``sport``/``dport`` None propose
    address-only host selectors.
    """

    src: str | IPv4Address | IPv6Address
    dst: str | IPv4Address | IPv6Address
    proto: int = 0
    sport: int | None = None
    dport: int | None = None

    def selectors(self) -> tuple[TrafficSelector, TrafficSelector]:
        """(TSi, TSr) first entries for the initiator: our source host, the destination host."""
        ports = self.proto not in _ICMP_PROTOS  # type/code are not per-direction ports
        return (_host_ts(self.src, self.proto, self.sport if ports else None),
                _host_ts(self.dst, self.proto, self.dport if ports else None))


def _host_ts(addr: str | IPv4Address | IPv6Address, proto: int, port: int | None) -> TrafficSelector:
    a = ip_address(addr)
    ts_type = TsType.TS_IPV4_ADDR_RANGE if a.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    lo, hi = (0, 65535) if port is None or not proto else (port, port)
    return TrafficSelector(ts_type, proto, lo, hi, a, a)


def with_trigger(trigger: TriggerPacket | None, ts_i: list[TrafficSelector],
                 ts_r: list[TrafficSelector]) -> tuple[list[TrafficSelector], list[TrafficSelector]]:
    """The initiator's TSi/TSr with the trigger's host pair first (RFC 7296 2.9).

    Only when the packet lies inside what we would propose anyway: a trap is built from
    the configured selectors, so anything else is stale (a reload in between) and is not
    offered -- we never ask for more than the configuration allows.
    """
    if trigger is None:
        return ts_i, ts_r
    first_i, first_r = trigger.selectors()
    if not any(contains(t, first_i) for t in ts_i) or not any(contains(t, first_r) for t in ts_r):
        return ts_i, ts_r
    return [first_i, *ts_i], [first_r, *ts_r]


@functools.lru_cache(maxsize=1024)
def ts_from_spec(spec: TsSpec, dynamic_addr: str) -> TrafficSelector:
    """A configured selector as an address range; "dynamic" becomes our outer host address.

    Memoized (selectors are immutable): a Child SA keeps the configured side of its
    selectors, and every Child SA of a connection then shares one object (issue 11)."""
    net = spec.network if spec.network is not None else ip_network(dynamic_addr)
    ts_type = TsType.TS_IPV4_ADDR_RANGE if net.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, spec.proto, spec.port_lo, spec.port_hi, net[0], net[-1])


def ts_from_specs(specs: Sequence[TsSpec], dynamic: Sequence[str]) -> list[TrafficSelector]:
    """Configured selectors as ranges; each "dynamic" becomes one selector per entry of ``dynamic``
    (the outer address, or a side's virtual IPs, RFC 7296 2.19)."""
    out: list[TrafficSelector] = []
    for spec in specs:
        for addr in dynamic if spec.network is None else ("",):
            out.append(ts_from_spec(spec, addr))
    return out


def host_ts(addr: str) -> TrafficSelector:
    a = ip_address(addr)
    ts_type = TsType.TS_IPV4_ADDR_RANGE if a.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, 0, 0, 65535, a, a)


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The largest selector inside both, or None if they do not overlap."""
    if a.ts_type != b.ts_type:
        return None
    if a.ip_proto and b.ip_proto and a.ip_proto != b.ip_proto:
        return None
    proto = a.ip_proto or b.ip_proto
    lo_port, hi_port = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if lo_port > hi_port:
        return None
    lo: IPAddress = max(a.start_addr, b.start_addr)  # type: ignore[type-var]
    hi: IPAddress = min(a.end_addr, b.end_addr)  # type: ignore[type-var]
    if lo > hi:  # type: ignore[operator]
        return None
    x = TrafficSelector(a.ts_type, proto, lo_port, hi_port, lo, hi)
    # When the result is one of the two (the usual case), hand that one back: a Child SA keeps
    # its selectors, and the configured one is shared by all of them (issue 11, memory).
    return b if x == b else a if x == a else x


def contains(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    return intersect(outer, inner) == inner


def narrow(proposed: Sequence[TrafficSelector], configured: Sequence[TrafficSelector]) -> list[TrafficSelector]:
    """Responder narrowing: every non-empty intersection, in the peer's order (RFC 7296 2.9).

    An intersection that lies inside another one is left out: it adds no traffic, only
    policies. This is what makes the common on-demand case come out as the configured
    subnets: TSi = (packet's host, subnet) narrows to (subnet), which still "includes the
    initiator's first choices" as RFC 7296 2.9 requires (strongSwan's responder answers
    the same way). When our policy is narrower than the peer's, the result is the part of
    our configuration that overlaps, the host pair staying only if nothing larger holds it.
    """
    out: list[TrafficSelector] = []
    for p in proposed:
        for c in configured:
            x = intersect(p, c)
            if x is not None and x not in out:
                out.append(x)
    return [x for x in out if not any(y != x and contains(y, x) for y in out)]


def all_within(received: Sequence[TrafficSelector], offered: Sequence[TrafficSelector]) -> bool:
    """Initiator check: the responder may only narrow what we offered, never widen it."""
    return bool(received) and all(any(contains(o, r) for o in offered) for r in received)


def ts_to_str(ts: TrafficSelector) -> str:
    """strongSwan-style text: a prefix when the range is one, else "lo..hi"; proto/ports when set."""
    text = _range_to_str(ts.start_addr, ts.end_addr)
    if ts.ip_proto or (ts.start_port, ts.end_port) != (0, 65535):
        port = "" if (ts.start_port, ts.end_port) == (0, 65535) else (
            str(ts.start_port) if ts.start_port == ts.end_port else f"{ts.start_port}-{ts.end_port}")
        text += f"[{ts.ip_proto}/{port}]" if port else f"[{ts.ip_proto}]"
    return text


def _range_to_str(lo: IPv4Address | IPv6Address, hi: IPv4Address | IPv6Address) -> str:
    bits = lo.max_prefixlen
    span = int(hi) - int(lo) + 1
    if span > 0 and span & (span - 1) == 0 and int(lo) % span == 0:
        return f"{lo}/{bits - (span.bit_length() - 1)}"
    return f"{lo}..{hi}"
