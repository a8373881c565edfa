"""The configuration payload in IKE_AUTH: virtual IPs and their attributes (RFC 7296 2.19, 3.15).

strongSwan's ike_config task, both roles:

* client (initiator, ``vips`` configured): asks for an address of each family it wants,
  for DNS servers and DNS domains (RFC 8598) in a CFG_REQUEST; takes what the CFG_REPLY
  assigns into ``sa.vips`` and tells the owner (:class:`VirtualIpsAssigned`) so it can put
  the addresses on the TUN before the Child SA's routes need them as source. A gateway
  that assigns nothing leaves an IKE SA we cannot use: we delete it, saying why.
* gateway (responder, ``pools`` configured): leases an address per requested family from
  the connection's pools through the engine's :class:`AttributeProvider`, keyed by
  :func:`client_identity`; a family without a pool is left out of the answer, an exhausted
  pool answers INTERNAL_ADDRESS_FAILURE, a client that asks for nothing
  FAILED_CP_REQUIRED (RFC 7296 3.10.1: either way no Child SA in this IKE_AUTH). Other
  requested attributes we do not serve (Windows' NBNS and 23456/23457, Apple's netmask,
  DHCP, DNS domain) are simply not answered: RFC 7296 3.15.1 lets the responder return
  any subset.

The lease is taken when the request carrying AUTH is processed: the peer is then
authenticated (IkeAuth runs first), the connection final, and ChildCreate -- which runs
next -- narrows ``remote_ts: dynamic`` to the lease (RFC 7296 2.9). With EAP the CP
request comes in the first IKE_AUTH and AUTH only in the last, so the task waits.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Interface, ip_address
from typing import TYPE_CHECKING

from ipsecd.iana import CfgType, ConfigAttribute, ExchangeType, NotifyType
from ipsecd.ike.cp import (
    ADDRESS_ATTRIBUTE,
    DNS_ATTRIBUTE,
    CpValueError,
    attribute_name,
    client_identity,
    decode_attribute,
    requested_addresses,
)
from ipsecd.ike.cp import encode_address as cp_address
from ipsecd.ike.events import Cause, VirtualIpsAssigned
from ipsecd.ike.payloads import AuthPayload, CpPayload, NotifyPayload, Payload
from ipsecd.ike.state import IkeState
from ipsecd.ike.tasks import Hooks, Status, TaskKind
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

_A = ConfigAttribute
_HANDLED = frozenset({_A.INTERNAL_IP4_ADDRESS, _A.INTERNAL_IP6_ADDRESS})


class IkeConfig(Hooks):
    exchange = ExchangeType.IKE_AUTH
    kind = TaskKind.IKE_CONFIG
    target = None

    def __init__(self) -> None:
        self.request: CpPayload | None = None  # responder: the peer's CFG_REQUEST
        self.answer: list[Payload] = []

    # -- client ------------------------------------------------------------
    def build_i(self, sa: IkeSa) -> list[Payload]:
        attrs: list[tuple[int, bytes]] = []
        # a reauthentication asks for the addresses it has (RFC 7296 3.15.3 hints), else any
        hints = {a.version: a for a in sa.vips.local}
        versions = sorted({ip_address(v).version for v in sa.settings.vips} | set(hints))
        for version in versions:
            hint = hints.get(version)
            attrs.append(cp_address(hint) if hint is not None else (ADDRESS_ATTRIBUTE[version], b""))
            attrs.append((DNS_ATTRIBUTE[version], b""))
        attrs.append((_A.INTERNAL_DNS_DOMAIN, b""))  # RFC 8598 4: an empty value asks for split-DNS domains
        return [CpPayload(CfgType.CFG_REQUEST, tuple(attrs))]

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        if sa.state != IkeState.ESTABLISHED:
            return Status.DONE  # authentication failed: IkeAuth said why
        cp = msg.get(CpPayload)
        local: list[IPv4Address | IPv6Address] = []
        dns: list[IPv4Address | IPv6Address] = []
        domains: list[str] = []
        if cp is not None and cp.cfg_type == CfgType.CFG_REPLY:
            for t, v in cp.attributes:
                try:
                    value = decode_attribute(t, v)
                except CpValueError as e:
                    sa.log.info("ignoring an attribute of the gateway's CFG_REPLY: %s", safe(e))
                    continue
                if isinstance(value, IPv6Interface):
                    value = value.ip
                if t in _HANDLED and isinstance(value, IPv4Address | IPv6Address) and value not in local:
                    local.append(value)
                elif t in (_A.INTERNAL_IP4_DNS, _A.INTERNAL_IP6_DNS) and isinstance(value, IPv4Address | IPv6Address):
                    dns.append(value)
                elif t == _A.INTERNAL_DNS_DOMAIN and isinstance(value, str) and value:
                    domains.append(value)
        if not local:
            errors = [NotifyType(n.notify_type).name for n in msg.error_notifies()
                      if n.notify_type in (NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED)]
            why = f"the gateway assigned no virtual IP ({errors[0] if errors else 'no address in its CFG_REPLY'})"
            sa.log.warning("%s: deleting the IKE SA", why)
            sa.delete(Cause.PEER_REFUSED, why)
            return Status.DONE
        sa.vips.local, sa.vips.dns, sa.vips.domains = local, dns, domains
        sa.log.info("virtual IP%s %s assigned%s%s", "s" if len(local) > 1 else "", ", ".join(map(str, local)),
                    f", DNS {', '.join(map(str, dns))}" if dns else "",
                    f", DNS domains {safe(', '.join(domains), 256)}" if domains else "")
        sa.emit(VirtualIpsAssigned(sa.ike_sa_id, sa.settings.name, tuple(local), tuple(dns), tuple(domains)))
        return Status.DONE

    # -- gateway -----------------------------------------------------------
    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        cp = msg.get(CpPayload)
        if cp is not None and self.request is None:
            self.request = cp
        if msg.get(AuthPayload) is None:
            # an EAP round (RFC 7296 2.16): the client is not authenticated yet; answer in the
            # round that brings its AUTH (a request without AUTH that fails IkeAuth ends it)
            return Status.NEED_MORE
        self._assign(sa, initial_contact=msg.notify(NotifyType.INITIAL_CONTACT) is not None)
        return Status.DONE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        return self.answer

    def _assign(self, sa: IkeSa, *, initial_contact: bool) -> None:
        conf = sa.settings
        req = self.request
        if req is not None and req.cfg_type != CfgType.CFG_REQUEST:
            sa.log.info("ignoring the peer's %s configuration payload", _cfg_name(req.cfg_type))
            req = None
        asked = requested_addresses(req.attributes) if req is not None else {}
        if not conf.pools:
            if asked:
                sa.log.info("peer asked for a virtual IP, but connection %s has no pools: assigning none", conf.name)
            return
        who = client_identity(sa)
        if not asked or who is None:
            self._refuse(sa, NotifyType.FAILED_CP_REQUIRED,
                         f"connection {conf.name} assigns virtual IPs (pools {', '.join(conf.pools)}), "
                         "but the peer asked for none")
            return
        provider = sa.ctx.attributes
        if provider is None:
            self._refuse(sa, NotifyType.INTERNAL_ADDRESS_FAILURE, "no address pool manager is running")
            return
        # the client lost its older SAs (INITIAL_CONTACT; or unique replace drops them): an address
        # it still holds there is its own to take back, so it keeps its address across a crash
        take_over = conf.unique == "replace" or (conf.unique != "never" and initial_contact)
        short: list[str] = []
        for version, hint in sorted(asked.items()):
            if not provider.serves(conf.pools, version):
                sa.log.info("no IPv%d pool among %s: answering for the other address family only",
                            version, ", ".join(conf.pools))
                continue
            lease = provider.acquire(conf.pools, who, version, hint, sa.remote, take_over=take_over)
            if lease is None:
                short.append(f"IPv{version}")
                sa.log.warning("no IPv%d address left for '%s' in pool%s %s: exhausted", version, safe(who),
                               "s" if len(conf.pools) > 1 else "", ", ".join(conf.pools))
                continue
            sa.vips.leases = [*sa.vips.leases, lease]
            sa.log.info("assigned virtual IP %s from pool %s to '%s'", lease.address, lease.pool, safe(who))
        if not sa.vips.leases:
            why = f"no virtual IP for '{safe(who)}'" + (
                f" (pools exhausted: {', '.join(short)})" if short else " (no pool of the family it asked for)")
            self._refuse(sa, NotifyType.INTERNAL_ADDRESS_FAILURE, why)
            return
        attrs = [cp_address(lease.address) for lease in sa.vips.leases]
        attrs += provider.attributes(conf.pools, sa.vips.leases)
        self.answer = [CpPayload(CfgType.CFG_REPLY, tuple(attrs))]
        unanswered = sorted({t for t, _v in req.attributes if t not in {a for a, _ in attrs}} - _HANDLED) if req \
            else []
        if unanswered:
            sa.log.debug("not answering requested attributes: %s", ", ".join(attribute_name(t) for t in unanswered))

    def _refuse(self, sa: IkeSa, notify: NotifyType, why: str) -> None:
        """RFC 7296 3.10.1: the error notify in IKE_AUTH means no Child SA; the IKE SA stays."""
        sa.vips.failed = True
        self.answer = [NotifyPayload(notify)]
        sa.log.warning("%s: answering %s, no Child SA", why, notify.name)


def _cfg_name(t: int) -> str:
    try:
        return CfgType(t).name
    except ValueError:
        return f"type {t}"
