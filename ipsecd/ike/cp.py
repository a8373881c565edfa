"""Configuration payload values (RFC 7296 3.15, RFC 8598) and the engine's seam to address pools.

The codec (codec.py) keeps a CP payload as (attribute type, raw value) pairs; here those
values get their meaning: :func:`decode_attribute` checks each known attribute's length
(RFC 7296 3.15.1 table) and turns it into an address, a network or text; an unknown type
stays raw bytes, so a reply of ours or a request of theirs round-trips whatever it holds.

The engine never owns an address pool. An IKE SA asks an :class:`AttributeProvider`
(the daemon's pool manager, or a dict in a test) through its :class:`EngineContext`:
synchronous, no I/O of the engine's own, so the IKE code stays sans-I/O and runs under a
fake clock. What an IKE SA got (or was told) lives in its :class:`VirtualIps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING, Protocol, Union

from ipsecd.iana import ConfigAttribute, PrivateConfigAttribute
from ipsecd.identity import Identity, eap_identity

if TYPE_CHECKING:
    from ipsecd.ike.events import Endpoint
    from ipsecd.ike.ike_sa import IkeSa

IPAddress = Union[IPv4Address, IPv6Address]
AttrValue = Union[IPv4Address, IPv6Address, IPv6Interface, IPv4Network, IPv6Network, str, tuple[int, ...], bytes,
                  None]
"""What :func:`decode_attribute` returns: None for an empty value (a request), else per type."""

IPV6_HOST_PREFIX = 128  # the prefix we send with INTERNAL_IP6_ADDRESS: a host address, routing is the TS's

_A = ConfigAttribute
_P = PrivateConfigAttribute
_V4 = frozenset({_A.INTERNAL_IP4_ADDRESS, _A.INTERNAL_IP4_NETMASK, _A.INTERNAL_IP4_DNS, _A.INTERNAL_IP4_NBNS,
                 _A.INTERNAL_IP4_DHCP, _A.P_CSCF_IP4_ADDRESS, _P.INTERNAL_IP4_SERVER})
_V6 = frozenset({_A.INTERNAL_IP6_DNS, _A.INTERNAL_IP6_DHCP, _A.P_CSCF_IP6_ADDRESS, _P.INTERNAL_IP6_SERVER})
_TEXT = frozenset({_A.APPLICATION_VERSION, _A.INTERNAL_DNS_DOMAIN})
# Address attributes of each IP version (RFC 7296 3.15.1), for requests and replies.
ADDRESS_ATTRIBUTE = {4: _A.INTERNAL_IP4_ADDRESS, 6: _A.INTERNAL_IP6_ADDRESS}
DNS_ATTRIBUTE = {4: _A.INTERNAL_IP4_DNS, 6: _A.INTERNAL_IP6_DNS}


class CpValueError(ValueError):
    """A configuration attribute value that does not have its type's form."""


def attribute_name(attr_type: int) -> str:
    """IANA's name of an attribute type, a vendor's for the private ones we know, else the number."""
    for enum in (ConfigAttribute, PrivateConfigAttribute):
        try:
            return enum(attr_type).name
        except ValueError:
            continue
    return f"attribute {attr_type}"


def _netmask_prefix(mask: bytes) -> int:
    bits = int.from_bytes(mask, "big")
    prefix = bin(bits).count("1")
    if bits != ((1 << 32) - 1) ^ ((1 << (32 - prefix)) - 1):
        raise CpValueError(f"netmask {IPv4Address(mask)} is not contiguous")
    return prefix


def decode_attribute(attr_type: int, value: bytes) -> AttrValue:
    """The meaning of one attribute value; raises CpValueError when its length or form is wrong.

    Lengths as RFC 7296 3.15.1 (and RFC 8598 for the DNS domain): an empty value is a
    request for the attribute and decodes to None.
    """
    if not value:
        return None
    n = len(value)
    if attr_type in _V4:
        if n != 4:
            raise CpValueError(f"{attribute_name(attr_type)} of {n} bytes, expected 0 or 4")
        return IPv4Address(value)
    if attr_type in _V6:
        if n != 16:
            raise CpValueError(f"{attribute_name(attr_type)} of {n} bytes, expected 0 or 16")
        return IPv6Address(value)
    if attr_type == _A.INTERNAL_IP6_ADDRESS:
        if n != 17 or value[16] > 128:
            raise CpValueError(f"INTERNAL_IP6_ADDRESS of {n} bytes, expected 0 or 17 (address, prefix length)")
        return IPv6Interface((IPv6Address(value[:16]), value[16]))
    if attr_type == _A.INTERNAL_IP4_SUBNET:
        if n != 8:
            raise CpValueError(f"INTERNAL_IP4_SUBNET of {n} bytes, expected 8 (address, netmask)")
        return IPv4Network((IPv4Address(value[:4]), _netmask_prefix(value[4:])), strict=False)
    if attr_type == _A.INTERNAL_IP6_SUBNET:
        if n != 17 or value[16] > 128:
            raise CpValueError(f"INTERNAL_IP6_SUBNET of {n} bytes, expected 17 (address, prefix length)")
        return IPv6Network((IPv6Address(value[:16]), value[16]), strict=False)
    if attr_type in _TEXT:
        try:
            return value.decode("ascii")  # RFC 8598 4: A-labels only; RFC 7296: printable ASCII
        except UnicodeDecodeError:
            raise CpValueError(f"{attribute_name(attr_type)} is not ASCII text") from None
    if attr_type == _A.SUPPORTED_ATTRIBUTES:
        if n % 2:
            raise CpValueError(f"SUPPORTED_ATTRIBUTES of {n} bytes, expected a multiple of 2")
        return tuple(int.from_bytes(value[i:i + 2], "big") for i in range(0, n, 2))
    return value


def encode_address(addr: IPAddress) -> tuple[int, bytes]:
    """The INTERNAL_IP4_ADDRESS / INTERNAL_IP6_ADDRESS attribute that assigns ``addr``."""
    if isinstance(addr, IPv4Address):
        return _A.INTERNAL_IP4_ADDRESS, addr.packed
    return _A.INTERNAL_IP6_ADDRESS, addr.packed + bytes((IPV6_HOST_PREFIX,))


def encode_network(attr_type: int, net: IPv4Network | IPv6Network) -> tuple[int, bytes]:
    """A subnet attribute: address and netmask for IPv4, address and prefix length for IPv6
    (RFC 7296 3.15.1; the Unity split attributes use the IPv4 form too, as swanctl sends them)."""
    if isinstance(net, IPv4Network):
        return attr_type, net.network_address.packed + net.netmask.packed
    return attr_type, net.network_address.packed + bytes((net.prefixlen,))


def requested_addresses(attributes: Sequence[tuple[int, bytes]]) -> dict[int, IPAddress | None]:
    """IP version -> the address a CFG_REQUEST asks for (None: any), for each version asked.

    A malformed hint is treated as no hint: the peer still gets an address (a request we
    cannot read must not fail the exchange).
    """
    out: dict[int, IPAddress | None] = {}
    for t, v in attributes:
        version = 4 if t == _A.INTERNAL_IP4_ADDRESS else 6 if t == _A.INTERNAL_IP6_ADDRESS else 0
        if not version or version in out:
            continue
        try:
            got = decode_attribute(t, v)
        except CpValueError:
            got = None
        hint = got.ip if isinstance(got, IPv6Interface) else got
        out[version] = hint if isinstance(hint, IPv4Address | IPv6Address) and not hint.is_unspecified else None
    return out


# --------------------------------------------------------------------------- the pool seam


@dataclass(frozen=True)
class Lease:
    """One address a pool handed to a client: ``identity`` is whom the pool keyed it by,
    ``peer`` the endpoint of the IKE SA holding it (a reauthentication from there may share it)."""

    pool: str
    address: IPAddress
    identity: Identity
    peer: tuple[str, int] = ("", 0)


class AttributeProvider(Protocol):
    """What the engine asks of an address pool manager (the daemon's ipsecd.pools.PoolManager).

    Calls are synchronous and cheap; the provider does its own persistence. ``pools`` are
    the names a connection lists, in order: the first that can serve wins.
    """

    def serves(self, pools: Sequence[str], version: int) -> bool:
        """Does one of ``pools`` hand out addresses of this IP version at all?"""

    def acquire(self, pools: Sequence[str], identity: Identity, version: int, requested: IPAddress | None,
                peer: Endpoint, *, take_over: bool = False) -> Lease | None:
        """An address for ``identity``: its own lease if it has one, else a free address, else
        the lease of someone offline; None when every pool of that version is exhausted.
        ``take_over``: the client said it lost its older SAs (INITIAL_CONTACT, unique
        replace), so an address it still holds online is its own to reuse."""

    def release(self, lease: Lease) -> None:
        """The IKE SA holding ``lease`` is gone: the lease goes offline (kept for the same identity)."""

    def attributes(self, pools: Sequence[str], leases: Sequence[Lease]) -> list[tuple[int, bytes]]:
        """The other attributes (DNS, NBNS, subnets, numbered ones) of the pools ``leases`` came from."""


@dataclass(slots=True)
class VirtualIps:
    """The virtual IPs of one IKE SA (RFC 7296 2.19) and what came with them.

    Gateway side: ``leases`` we handed to the peer (``remote``). Client side: ``local``
    addresses, ``dns`` servers and ``domains`` (RFC 8598) the gateway assigned to us.
    """

    # Empty tuples until something is assigned (most IKE SAs of a site-to-site or PSK
    # gateway never lease one): four empty lists were 224 bytes per IKE SA (issue 11).
    leases: Sequence[Lease] = ()
    local: Sequence[IPAddress] = ()
    dns: Sequence[IPAddress] = ()
    domains: Sequence[str] = ()
    failed: bool = False  # we answered INTERNAL_ADDRESS_FAILURE / FAILED_CP_REQUIRED: no Child SA

    @property
    def remote(self) -> list[IPAddress]:
        return [lease.address for lease in self.leases]


def client_identity(sa: IkeSa) -> Identity | None:
    """Whom leases and uniqueness are keyed by: the EAP identity when EAP ran (a Windows
    client's IDi is just its address, RFC 7296 2.16), else the authenticated IKE identity.
    strongSwan keys by the same (``get_other_eap_id``). One place, so another key (a
    RADIUS Class, a certificate serial) can be added here."""
    login = sa.login
    if login is not None and login.eap_identity:
        eap = eap_identity(login.eap_identity)
        if eap is not None:
            return eap
    return sa.remote_identity


def release_leases(sa: IkeSa) -> None:
    """The IKE SA is gone: its leases go offline (still the client's, RFC 7296 2.19 leaves
    reuse to us). After an IKE rekey the successor holds them (adopt_successor moved them)."""
    provider = sa.ctx.attributes
    leases, sa.vips.leases = sa.vips.leases, ()
    if provider is not None:
        for lease in leases:
            provider.release(lease)
