"""MOBIKE (RFC 4555): an IKE SA and its Child SAs follow a peer that changes address.

strongSwan's ike_mobike task, split by job:

* :class:`MobikeSupport` (IKE_AUTH, both roles): MOBIKE_SUPPORTED both ways turns MOBIKE on
  for the IKE SA (RFC 4555 3.2), with our additional addresses or NO_ADDITIONAL_ADDRESSES
  (3.4). Only addresses the shell reports as configured on this host are advertised,
  narrowed to ``local_addrs`` when the connection names addresses, never one inside our own
  traffic selectors.
* :class:`MobikeUpdate` (the original initiator, RFC 4555 3.1 -- the initiator decides): after
  the shell saw our addresses or routes change (:func:`roam`), probe the candidate paths, if
  there are several, with one INFORMATIONAL sent on each of them at once (3.10: the first
  answer names a working path), then UPDATE_SA_ADDRESSES on that path with NAT detection and
  COOKIE2 (3.5). Once the answer is in, the Child SAs follow (:class:`IkeSaMoved` to the owner).
  An answer without our COOKIE2 closes the IKE SA (3.7).
* :class:`MobikeResponder` (any INFORMATIONAL with MOBIKE notifies): the peer's
  UPDATE_SA_ADDRESSES moves the IKE SA to the addresses the request came from and answers
  with NAT detection; a COOKIE2 is echoed (3.5, 3.7); new additional addresses are kept
  (3.6). The Child SAs move at once to an address the peer used before, and after a return
  routability check (:class:`ReturnRoutability`, 3.7 and section 5) to a new one, so an
  update cannot aim a flood of ESP at a third party.

Without MOBIKE the IKE SA still follows authenticated requests from a new address (RFC 7296
2.23, ``IkeSa.peer_seen``); with it, only UPDATE_SA_ADDRESSES moves anything (3.5), which
``implicit_updates`` tells the exchange layer.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import NATT_PORT, ExchangeType, NotifyType
from ipsecd.ike.events import Endpoint, IkeSaMoved
from ipsecd.ike.payloads import AuthPayload, NotifyPayload, Payload
from ipsecd.ike.state import IkeState
from ipsecd.ike.tasks import Hooks, Skip, Status, TaskFailed, TaskKind, notify_name
from ipsecd.ike.tasks.child_rekey import ChildRekey
from ipsecd.ike.tasks.ike_init import natd_payloads, process_natd
from ipsecd.logsafe import safe

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa
    from ipsecd.ike.message import Message

Path = tuple[Endpoint, Endpoint]  # (our endpoint, the peer's endpoint)

COOKIE2_LEN = 16  # ours; RFC 4555 allows 8 to 64 octets (unpredictable: from the rng)
COOKIE2_MIN, COOKIE2_MAX = 8, 64
MAX_PEER_ADDRESSES = 16  # additional addresses kept per peer (bounded memory, RFC 4555 3.4)
MAX_VERIFIED = 8  # peer addresses remembered as verified (used before or passed a return routability check)
_ADDRESS_NOTIFY = {4: NotifyType.ADDITIONAL_IP4_ADDRESS, 6: NotifyType.ADDITIONAL_IP6_ADDRESS}
_ADDRESS_LEN = {NotifyType.ADDITIONAL_IP4_ADDRESS: 4, NotifyType.ADDITIONAL_IP6_ADDRESS: 16}
_MOBIKE_NOTIFIES = frozenset({NotifyType.UPDATE_SA_ADDRESSES, NotifyType.COOKIE2, NotifyType.ADDITIONAL_IP4_ADDRESS,
                              NotifyType.ADDITIONAL_IP6_ADDRESS, NotifyType.NO_ADDITIONAL_ADDRESSES})


@dataclass(slots=True)
class MobikeState:
    """What one IKE SA knows about MOBIKE; handed on to the IKE SA that rekeys it."""

    enabled: bool = False  # both ends sent MOBIKE_SUPPORTED (RFC 4555 3.2)
    original_initiator: bool = False  # RFC 4555 3.1: only the initiator updates addresses
    peer_supports: bool = False  # responder: the IKE_AUTH request offered it
    peer_addrs: tuple[str, ...] = ()  # the peer's ADDITIONAL_*_ADDRESS (RFC 4555 3.4, 3.6)
    verified: Sequence[str] = ()  # peer addresses we may send ESP to at once (newest last)
    moves: int = 0  # completed address updates, for list-sas and tests


def implicit_updates(sa: IkeSa) -> bool:
    """May an authenticated request from a new address move the SA (RFC 7296 2.23)?
    Not once MOBIKE is on: then only UPDATE_SA_ADDRESSES does (RFC 4555 3.5)."""
    return not (sa.mobike.enabled and sa.established_at is not None)


def carries_mobike(msg: Message) -> bool:
    """Does this INFORMATIONAL request need :class:`MobikeResponder`?"""
    return any(n.notify_type in _MOBIKE_NOTIFIES for n in msg.notifies())


def additional_addresses(sa: IkeSa) -> list[Payload]:
    """Our other addresses (RFC 4555 3.4): only those configured on this host now (the
    shell keeps ``ctx.local_addresses``), within ``local_addrs`` when it lists addresses,
    and none inside our own traffic selectors (the peer would reach those through the tunnel)."""
    allowed: list[IPv4Network | IPv6Network] = []
    for a in sa.settings.local_addrs:  # addresses or prefixes (a range or %any: no narrowing by it)
        try:
            allowed.append(ip_network(a, strict=False))
        except ValueError:
            continue
    inner = [t.network for c in sa.settings.children for t in c.local_ts if t.network is not None]
    current = ip_address(sa.local[0])
    out: list[Payload] = []
    for text in sa.ctx.local_addresses:
        addr = ip_address(text)
        if addr == current or not _routable(addr) or (allowed and not any(addr in n for n in allowed)) \
                or any(addr in n and n.prefixlen > 0 for n in inner):
            continue
        out.append(NotifyPayload(_ADDRESS_NOTIFY[addr.version], data=addr.packed))
    return out or [NotifyPayload(NotifyType.NO_ADDITIONAL_ADDRESSES)]


def _routable(addr: IPv4Address | IPv6Address) -> bool:
    return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified or addr.is_multicast)


def _peer_addresses(sa: IkeSa, msg: Message) -> None:
    """Take the peer's address list if this message carries one (RFC 4555 3.4, 3.6)."""
    if msg.notify(NotifyType.NO_ADDITIONAL_ADDRESSES) is not None:
        sa.mobike.peer_addrs = ()
        return
    addrs: list[str] = []
    for n in msg.notifies():
        want = _ADDRESS_LEN.get(n.notify_type)  # type: ignore[call-overload]
        if want is None:
            continue
        if len(n.data) != want:
            sa.log.info("ignoring a malformed %s (%d octets)", notify_name(n.notify_type), len(n.data))
            continue
        text = str(ip_address(n.data))
        if text not in addrs and len(addrs) < MAX_PEER_ADDRESSES:
            addrs.append(text)
    if addrs:
        sa.mobike.peer_addrs = tuple(addrs)
        sa.log.info("peer's additional addresses: %s", ", ".join(addrs))


def _cookie2(msg: Message) -> bytes | None:
    n = msg.notify(NotifyType.COOKIE2)
    if n is None:
        return None
    if not COOKIE2_MIN <= len(n.data) <= COOKIE2_MAX:  # RFC 4555: 8 to 64 octets
        raise RemoteProtocolError(f"COOKIE2 of {len(n.data)} octets", NotifyType.INVALID_SYNTAX)
    return n.data


def _echoed(msg: Message, cookie2: bytes) -> bool:
    """Does the answer carry our COOKIE2 back, unchanged (compared in constant time)?"""
    echo = msg.notify(NotifyType.COOKIE2)
    return echo is not None and hmac.compare_digest(echo.data, cookie2)


def _natd_changed(sa: IkeSa, msg: Message) -> bool:
    """NAT detection on the new path (RFC 4555 3.5, RFC 7296 2.23); True if UDP
    encapsulation is now needed where the Child SAs were set up without it. (strongSwan's
    kernel-libipsec fakes its NAT-D to force encapsulation: "NAT detected (remote)" then.)"""
    was = sa.encap
    process_natd(sa, msg)
    return sa.encap and not was


def _verified(sa: IkeSa, addr: str) -> None:
    v = [a for a in sa.mobike.verified if a != addr]
    v.append(addr)
    sa.mobike.verified = v[-MAX_VERIFIED:]


def _children_follow(sa: IkeSa, *, rekey: bool) -> None:
    """Tell the owner: ESP now goes between ``sa.local`` and ``sa.remote``. A path that needs
    UDP encapsulation where the Child SAs have none gets them rekeyed (the new ones are
    set up with it) -- the data plane cannot switch an SA's encapsulation in place."""
    sa.mobike.moves += 1
    sa.emit(IkeSaMoved(sa.ike_sa_id, sa.settings.name, sa.local, sa.remote,
                       tuple(sorted({c.event.reqid for c in sa.children}))))
    if rekey:
        for c in list(sa.children):
            if not c.event.encap:
                sa.enqueue([ChildRekey(c.spi_in)])


def _auth_path_verified(sa: IkeSa) -> None:
    """IKE_AUTH is complete: the address it ran on is one the peer has shown it owns."""
    _verified(sa, sa.remote[0])


# ------------------------------------------------------------------ IKE_AUTH
class MobikeSupport(Hooks):
    """MOBIKE_SUPPORTED in IKE_AUTH, both roles (RFC 4555 3.2, 4.2.1)."""

    exchange = ExchangeType.IKE_AUTH
    kind = TaskKind.MOBIKE
    target = None

    def __init__(self) -> None:
        self.sent = False

    def build_i(self, sa: IkeSa) -> list[Payload]:
        if self.sent or not sa.settings.mobike:
            return []
        self.sent = True  # in the first IKE_AUTH request only (EAP rounds follow without it)
        return [NotifyPayload(NotifyType.MOBIKE_SUPPORTED), *additional_addresses(sa)]

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        if msg.notify(NotifyType.MOBIKE_SUPPORTED) is not None and self.sent:
            sa.mobike.enabled = sa.mobike.original_initiator = True
            _peer_addresses(sa, msg)
            _auth_path_verified(sa)
            sa.log.debug("MOBIKE negotiated: the IKE SA follows our address changes")  # list-sas shows it
            return Status.DONE
        return Status.DONE if sa.state == IkeState.ESTABLISHED or not self.sent else Status.NEED_MORE

    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        if msg.notify(NotifyType.MOBIKE_SUPPORTED) is not None:
            sa.mobike.peer_supports = True
            _peer_addresses(sa, msg)
        # answered in the round that carries AUTH (after EAP): only then is the connection final
        return Status.DONE if msg.get(AuthPayload) is not None else Status.NEED_MORE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        m = sa.mobike
        if sa.state != IkeState.ESTABLISHED or not m.peer_supports or not sa.settings.mobike or m.enabled:
            return []
        m.enabled = True
        _auth_path_verified(sa)
        sa.log.debug("MOBIKE negotiated: the peer may move the IKE SA with UPDATE_SA_ADDRESSES")  # list-sas shows it
        return [NotifyPayload(NotifyType.MOBIKE_SUPPORTED), *additional_addresses(sa)]


# ------------------------------------------------------------------ the initiator moves
def roam(sa: IkeSa, paths: Sequence[tuple[str, str]]) -> bool:
    """Our addresses or routes changed; ``paths`` are (our address, the peer's address) pairs
    the shell found routes for, best first. Moves the IKE SA there (RFC 4555 3.4-3.5);
    False when there is nothing to do (no MOBIKE, not ours to decide, already there)."""
    m = sa.mobike
    if not (m.enabled and m.original_initiator) or sa.state != IkeState.ESTABLISHED or not paths:
        return False
    eps: list[Path] = []
    for lip, rip in paths:
        # the peer's port is known for its current address only (a NAT may have mapped it);
        # its other addresses listen on 4500 (RFC 4555 3.3: MOBIKE runs on the NAT-T port)
        p = ((lip, sa.local[1]), (rip, sa.remote[1] if rip == sa.remote[0] else NATT_PORT))
        if p not in eps:
            eps.append(p)
    current = (sa.local, sa.remote)
    if eps[0] == current and not sa.exchanges.pending(lambda t: t.kind is TaskKind.MOBIKE):
        return False
    sa.log.info("MOBIKE: addresses changed, trying %s", ", ".join(f"{lo[0]} - {re[0]}" for lo, re in eps))
    # our request in flight goes out again on the best path now: the peer answers where it
    # came from (RFC 7296 2.11), so a rekey under way completes without waiting for the update
    sa.local, sa.remote = eps[0]
    sa.exchanges.retransmit_soon()
    for tasks in sa.exchanges.queue:
        if tasks and isinstance(tasks[0], MobikeUpdate):
            tasks[0].retarget(eps)  # an update not sent yet takes the newer paths
            return True
    sa.enqueue([MobikeUpdate(eps)], first=True)
    return True


class MobikeUpdate(Hooks):
    """Probe the candidate paths (several: one INFORMATIONAL with COOKIE2 on each at once),
    then UPDATE_SA_ADDRESSES on the path that answered (RFC 4555 3.5, 3.10)."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.MOBIKE
    target = None

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths: list[Path] = []
        self.probed = False
        self.cookie2 = b""
        self.retarget(paths)

    def retarget(self, paths: Sequence[Path]) -> None:
        """The paths to try, best first; one path needs no probe."""
        self.paths = list(paths)
        self.probed = len(self.paths) < 2

    @property
    def fanout(self) -> list[Path]:
        """The paths this request goes out on (the exchange layer sends it to each)."""
        return [] if self.probed else self.paths

    def build_i(self, sa: IkeSa) -> list[Payload]:
        if not sa.mobike.enabled:
            raise Skip
        self.cookie2 = sa.ctx.rng(COOKIE2_LEN)
        if not self.probed:
            sa.local, sa.remote = self.paths[0]
            return [NotifyPayload(NotifyType.COOKIE2, data=self.cookie2)]
        return [NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES), *natd_payloads(sa, sa.spi_r),
                NotifyPayload(NotifyType.COOKIE2, data=self.cookie2), *additional_addresses(sa)]

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        if not _echoed(msg, self.cookie2):  # RFC 4555 3.7: no echo, or another one, closes the IKE SA
            raise TaskFailed("MOBIKE: the peer's answer did not echo our COOKIE2")
        if not self.probed:
            self.probed = True
            path = sa.exchanges.path
            if path is not None:
                sa.local, sa.remote = path  # the path that answered first is the one to use
            sa.log.info("MOBIKE: path %s - %s works", sa.local[0], sa.remote[0])
            return Status.NEED_MORE  # next round: the update itself, on that path
        errors = msg.error_notifies()
        if errors:
            raise TaskFailed(f"MOBIKE: peer refused the address update with {notify_name(errors[0].notify_type)}",
                             fatal=False)
        rekey = _natd_changed(sa, msg)
        _peer_addresses(sa, msg)
        _verified(sa, sa.remote[0])
        sa.log.info("MOBIKE: IKE SA moved to %s[%d] - %s[%d]", sa.local[0], sa.local[1], sa.remote[0], sa.remote[1])
        _children_follow(sa, rekey=rekey)
        return Status.DONE


# ------------------------------------------------------------------ the responder follows
class ReturnRoutability(Hooks):
    """An INFORMATIONAL with COOKIE2 to the peer's new address (RFC 4555 3.7): the Child
    SAs move there once the echo comes back from it."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.MOBIKE
    target = None

    def __init__(self, remote: Endpoint, rekey: bool = False) -> None:
        self.remote = remote
        self.rekey = rekey  # NAT detection on the update asked for UDP encapsulation
        self.cookie2 = b""

    def build_i(self, sa: IkeSa) -> list[Payload]:
        if sa.remote != self.remote:
            raise Skip  # the peer moved on again: a newer check follows
        self.cookie2 = sa.ctx.rng(COOKIE2_LEN)
        return [NotifyPayload(NotifyType.COOKIE2, data=self.cookie2)]

    def process_i(self, sa: IkeSa, msg: Message) -> Status:
        if sa.remote != self.remote:
            return Status.DONE  # the peer moved on meanwhile: the check of its newer address decides
        if not _echoed(msg, self.cookie2):  # RFC 4555 3.7: the IKE SA is closed
            raise TaskFailed(f"MOBIKE: return routability check of {self.remote[0]}: COOKIE2 not echoed")
        if sa.exchanges.path is None or sa.exchanges.path[1] != self.remote:
            raise TaskFailed(f"MOBIKE: return routability check of {self.remote[0]}: answered from elsewhere",
                             fatal=False)
        _verified(sa, self.remote[0])
        sa.log.info("MOBIKE: return routability of %s[%d] verified", self.remote[0], self.remote[1])
        _children_follow(sa, rekey=self.rekey)
        return Status.DONE


class MobikeResponder:
    """The MOBIKE notifies of the peer's INFORMATIONAL request (RFC 4555 3.5, 3.6, 3.7)."""

    exchange = ExchangeType.INFORMATIONAL
    kind = TaskKind.MOBIKE

    def __init__(self) -> None:
        self.cookie2: bytes | None = None
        self.update = False

    def process_r(self, sa: IkeSa, msg: Message) -> Status:
        if not sa.mobike.enabled:
            return Status.DONE  # not negotiated: nothing here is ours to act on
        self.cookie2 = _cookie2(msg)
        _peer_addresses(sa, msg)
        if msg.notify(NotifyType.UPDATE_SA_ADDRESSES) is None:
            return Status.DONE
        if sa.mobike.original_initiator:
            sa.log.info("ignoring UPDATE_SA_ADDRESSES from the responder of the IKE SA (RFC 4555 3.1)")
            return Status.DONE
        path = sa.exchanges.path
        if path is None:
            return Status.DONE
        self.update = True
        old = sa.remote
        sa.local, sa.remote = path
        rekey = _natd_changed(sa, msg)
        sa.log.info("MOBIKE: peer moved from %s[%d] to %s[%d]", safe(old[0]), old[1], safe(sa.remote[0]),
                    sa.remote[1])
        sa.exchanges.retransmit_soon()  # our own request in flight now goes to the new address
        if sa.remote[0] in sa.mobike.verified:
            _verified(sa, sa.remote[0])
            _children_follow(sa, rekey=rekey)
        else:
            # RFC 4555 3.7, 5: no flood of ESP at an address the peer has not shown it owns
            sa.enqueue([ReturnRoutability(sa.remote, rekey)])
        return Status.DONE

    def build_r(self, sa: IkeSa) -> list[Payload]:
        out: list[Payload] = natd_payloads(sa, sa.spi_r) if self.update else []
        if self.cookie2 is not None:
            out.append(NotifyPayload(NotifyType.COOKIE2, data=self.cookie2))  # RFC 4555 3.7: echoed as sent
        return out


def hand_over(old: IkeSa, new: IkeSa) -> None:
    """An IKE rekey: the new SA keeps MOBIKE and what it knows (RFC 4555 is per IKE SA)."""
    new.mobike = dataclasses.replace(old.mobike, verified=list(old.mobike.verified))
