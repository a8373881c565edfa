"""Traffic selectors: from configuration to payload ranges, and narrowing (RFC 7296 2.9)."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from ipsecd.ike.constants import TsType
from ipsecd.ike.payloads import IPAddress, TrafficSelector
from ipsecd.ike.settings import TsSpec


def ts_from_spec(spec: TsSpec, dynamic_addr: str) -> TrafficSelector:
    """A configured selector as an address range; "dynamic" becomes our outer host address."""
    net = spec.network if spec.network is not None else ip_network(dynamic_addr)
    ts_type = TsType.TS_IPV4_ADDR_RANGE if net.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, spec.proto, spec.port_lo, spec.port_hi, net[0], net[-1])


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
    return TrafficSelector(a.ts_type, proto, lo_port, hi_port, lo, hi)


def contains(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    return intersect(outer, inner) == inner


def narrow(proposed: Sequence[TrafficSelector], configured: Sequence[TrafficSelector]) -> list[TrafficSelector]:
    """Responder narrowing: every non-empty intersection, in the peer's order (RFC 7296 2.9)."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for c in configured:
            x = intersect(p, c)
            if x is not None and x not in out:
                out.append(x)
    return out


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
