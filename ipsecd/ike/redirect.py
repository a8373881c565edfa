"""IKE redirect (RFC 5685): send clients to another gateway when this one is full or draining.

Only the gateway's side: a client announces REDIRECT_SUPPORTED in its IKE_SA_INIT request
(RFC 5685 3); we answer such a request with REDIRECT (new gateway + the client's nonce,
5) instead of a handshake when its connection is being drained, and send REDIRECT in an
INFORMATIONAL request to established clients that announced it (6). The client then sets
up its SA with the new gateway (telling it REDIRECTED_FROM) and deletes the old one.
Clients that did not announce support are never redirected (RFC 5685 3: the gateway MUST
NOT).

The operator's wish lives in ``EngineContext.redirects``: connection name (or ``ALL``) ->
(the new gateway, a threshold): with threshold 0 the connection is drained (every new
client goes, and ``IkeManager.redirect`` tells the established ones too); with N, new
clients go only while N or more other IKE SAs exist on this gateway (it is full).
"""

from __future__ import annotations

from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING

from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.events import Cause
from ipsecd.ike.payloads import NotifyPayload, Payload
from ipsecd.ike.tasks import Hooks, Refuse, Status, TaskKind
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

ALL = "*"  # EngineContext.redirects key: every connection
MAX_FQDN = 255  # the GW Ident Len octet


class GwIdentType(IntEnum):
    """RFC 5685 10: Gateway Identity Types."""

    IPV4 = 1
    IPV6 = 2
    FQDN = 3


def encode_gateway(gateway: str) -> bytes:
    """GW Ident Type | GW Ident Len | identity (RFC 5685 8); ValueError for what is neither address nor name."""
    try:
        addr = ip_address(gateway)
    except ValueError:
        addr = None
    if isinstance(addr, IPv4Address):
        return bytes((GwIdentType.IPV4, 4)) + addr.packed
    if isinstance(addr, IPv6Address):
        return bytes((GwIdentType.IPV6, 16)) + addr.packed
    name = gateway.strip().rstrip(".")
    labels = name.split(".")
    if (not name or len(name) > MAX_FQDN or not name.isascii()
            or not all(lab and len(lab) <= 63 and all(c.isalnum() or c == "-" for c in lab) for lab in labels)):
        raise ValueError(f"{safe(gateway)!r} is neither an IP address nor a DNS name")
    data = name.encode("ascii")
    return bytes((GwIdentType.FQDN, len(data))) + data


def decode_gateway(data: bytes) -> tuple[str, bytes]:
    """(gateway, the rest: the nonce data of an IKE_SA_INIT redirect); ValueError on a malformed value."""
    if len(data) < 2 or len(data) < 2 + data[1]:
        raise ValueError("REDIRECT data shorter than its gateway identity")
    kind, n, ident = data[0], data[1], data[2:2 + data[1]]
    if kind == GwIdentType.IPV4 and n == 4:
        return str(IPv4Address(ident)), data[2 + n:]
    if kind == GwIdentType.IPV6 and n == 16:
        return str(IPv6Address(ident)), data[2 + n:]
    if kind == GwIdentType.FQDN and n:
        return ident.decode("ascii", errors="replace"), data[2 + n:]
    raise ValueError(f"REDIRECT with gateway identity type {kind} of {n} bytes")


def target_for(sa: IkeSa) -> str | None:
    """Where a new client of this SA's connection is sent now, if anywhere."""
    ctx = sa.ctx
    wish = ctx.redirects.get(sa.settings.name) or ctx.redirects.get(ALL)
    if wish is None:
        return None
    gateway, full_at = wish
    others = len(ctx.ike_spis) - (sa.spi_r in ctx.ike_spis)  # O(1): our SPIs in use, this one not counted
    return gateway if others >= full_at else None


def check_init(sa: IkeSa, msg: Message, nonce_i: bytes) -> None:
    """IKE_SA_INIT responder, after the connection is chosen and before any D-H: redirect or go on.

    RFC 5685 4.2: the answer is the REDIRECT notify alone, with the initiator's nonce so an
    off-path attacker cannot forge it, and it keeps no state (the half-open SA closes).
    """
    supported = msg.notify(NotifyType.REDIRECT_SUPPORTED) is not None
    sa.auth_ext.redirect_supported = supported
    if msg.notify(NotifyType.REDIRECTED_FROM) is not None:
        return  # RFC 5685 4.3 (no redirect loops): a client we were sent accepts us
    target = target_for(sa)
    if target is None or not supported:
        return
    raise Refuse(NotifyType.REDIRECT, f"redirected to {target} (connection {sa.settings.name} is drained or full)",
                 Cause.REDIRECTED, data=encode_gateway(target) + nonce_i, fatal=True)


class Redirect(Hooks):
    """RFC 5685 6: tell an established client to move to ``gateway`` (INFORMATIONAL, no nonce)."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.REDIRECT
    target = None

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.data = encode_gateway(gateway)

    def build_i(self, sa: IkeSa) -> list[Payload]:
        sa.log.info("redirecting the client to %s (RFC 5685)", self.gateway)
        return [NotifyPayload(NotifyType.REDIRECT, data=self.data)]

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        return Status.DONE  # the client deletes this SA once it is up with the new gateway
