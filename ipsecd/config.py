"""The YAML configuration: file -> typed, validated, frozen dataclasses.

The vocabulary is strongSwan's swanctl.conf (connections, children, secrets,
``local_ts``, ``start_action``, ...) so that gateway operators can carry their
knowledge over; defaults match swanctl's wherever swanctl has the option.

Why the loader walks the YAML node graph (``yaml.compose``) instead of using
``yaml.safe_load``: nodes keep the line of every key and list item, and keep the
raw scalar text. The line lets every error name ``file:line key.path``; the raw
text avoids YAML 1.1 surprises (``unique: no`` would load as ``False``,
``secret: 0x1234`` as the integer 4660, ``mss_clamp: off`` as ``False``).

Validation collects every problem before raising one ``ConfigError`` with one
line per problem, so an operator fixes a file in one pass, not one error per
daemon restart.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ipsecd.errors import ConfigError
from ipsecd.iana import IKE_PORT, IpProto
from ipsecd.identity import ANY_IDENTITY, Identity, IdMatch
from ipsecd.identity import eap_identity as parse_eap_identity
from ipsecd.ike.frontdoor import FrontDoorSettings
from ipsecd.pools import ADDRESS_KEYS, DEFAULT_LEASE_DB, SUBNET_KEYS, attribute_value, pool_addrs

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
ProposalValidator = Callable[[str, str], None]
"""``validator(kind, text)``; kind is "ike", "esp" or "ah"; raises ValueError saying what is wrong."""

DEFAULT_CONTROL_SOCKET = Path("/run/ipsecd/ipsecd.sock")
DEFAULT_CREDENTIALS = Path("/etc/ipsecd")
LOG_SUBSYSTEMS = ("ike", "child", "esp", "net", "cfg", "ctl")
"""Per-subsystem verbosity knobs (strongSwan's ``charon.filelog.*`` levels -1..4)."""

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IFNAME_RE = re.compile(r"[^\s/:]{1,15}")
_PROPOSAL_RE = re.compile(r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*")
_TRUE = frozenset({"yes", "true", "on", "enabled"})
_FALSE = frozenset({"no", "false", "off", "disabled"})


# --------------------------------------------------------------------------- enums


class ChildMode(StrEnum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class StartAction(StrEnum):
    """What to do with a child once the config is loaded (swanctl ``start_action``)."""

    NONE = "none"
    TRAP = "trap"  # install policies, initiate on the first matching packet
    START = "start"  # initiate at once


class CloseAction(StrEnum):
    """What to do when the peer closes the child (swanctl ``close_action``)."""

    NONE = "none"
    TRAP = "trap"
    START = "start"


class DpdAction(StrEnum):
    """What to do when DPD declares the peer dead (swanctl ``dpd_action``)."""

    CLEAR = "clear"
    TRAP = "trap"
    RESTART = "restart"


class Unique(StrEnum):
    """Uniqueness policy for IKE SAs with the same identities (swanctl ``unique``)."""

    NO = "no"
    NEVER = "never"
    KEEP = "keep"
    REPLACE = "replace"


class Fragmentation(StrEnum):
    """IKEv2 fragmentation (RFC 7383) policy (swanctl ``fragmentation``)."""

    YES = "yes"
    ACCEPT = "accept"
    FORCE = "force"
    NO = "no"


class SendCert(StrEnum):
    """When to send our certificate chain in IKE_AUTH (swanctl ``send_cert``)."""

    ALWAYS = "always"  # even without a CERTREQ: Apple clients send none
    IFASKED = "ifasked"  # only when the peer sent a CERTREQ (swanctl's default)
    NEVER = "never"


# strongSwan's older spellings, accepted so that pasted ipsec.conf habits keep working.
_ACTION_ALIASES = {"route": "trap", "hold": "trap", "restart": "start", "clear": "none"}
_DPD_ALIASES = {"hold": "trap", "start": "restart", "none": "clear"}


# --------------------------------------------------------------------------- value parsers (public)

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_VOLUME_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)")
_VOLUME_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(value: str | int | float) -> float:
    """``"90s"``, ``"10m"``, ``"1h"``, ``"1d"`` or a bare number of seconds -> seconds.

    The same syntax as swanctl.conf time values, so copied lifetimes mean the same.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"{value!r} is not a duration (expected e.g. '90s', '10m', '1h', '1d' or seconds)")
        seconds = float(m[1]) * _DURATION_UNITS[m[2]]
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration (must be a finite, non-negative time)")
    return seconds


def parse_volume(value: str | int) -> int:
    """``"500M"``, ``"2G"``, ``"64k"`` or a bare integer -> bytes (binary multiples, as swanctl).

    Also used for packet counts, where swanctl accepts the same suffixes.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a volume")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a volume (must not be negative)")
        return value
    m = _VOLUME_RE.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a volume (expected e.g. '500M', '2G', '64k' or a number of bytes)")
    return int(float(m[1]) * _VOLUME_UNITS[m[2].lower()])


# --------------------------------------------------------------------------- traffic selectors

_TS_RE = re.compile(r"([^\[\]]+?)\s*(?:\[([^\[\]]*)\])?")
_PROTO_NAMES = {
    "tcp": IpProto.TCP,
    "udp": IpProto.UDP,
    "icmp": IpProto.ICMP,
    "ipv6-icmp": IpProto.IPV6_ICMP,
    "icmpv6": IpProto.IPV6_ICMP,
    "icmp6": IpProto.IPV6_ICMP,
}
_ANY_WORDS = ("", "%any", "any")


@dataclass(frozen=True)
class TsConfig:
    """One configured traffic selector.

    ``prefix`` None means ``dynamic``: the outer (tunnel endpoint) address, as in
    swanctl. ``proto`` 0 is any protocol; ports are an inclusive range.
    """

    prefix: IPNetwork | None
    proto: int = 0
    port_lo: int = 0
    port_hi: int = 65535

    @property
    def dynamic(self) -> bool:
        return self.prefix is None

    @classmethod
    def parse(cls, text: str) -> TsConfig:
        """``dynamic``, ``10.1.0.0/24``, ``10.1.0.1``, ``10.1.0.0/24[tcp/80]``, ``[udp/1024-65535]`` suffixes."""
        m = _TS_RE.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"{text!r} is not a traffic selector (expected e.g. '10.1.0.0/24' or 'dynamic')")
        addr, sel = m[1].strip(), m[2]
        prefix: IPNetwork | None
        if addr == "dynamic":
            prefix = None
        else:
            try:
                prefix = ip_network(addr, strict=True)
            except ValueError:
                try:
                    loose = ip_network(addr, strict=False)
                except ValueError:
                    raise ValueError(f"{addr!r} is not a valid prefix") from None
                raise ValueError(f"{addr!r} is not a valid prefix: host bits set (did you mean '{loose}'?)") from None
        if sel is None:
            return cls(prefix)
        proto_text, _, port_text = sel.partition("/")
        proto = _parse_proto(proto_text.strip())
        lo, hi = _parse_ports(port_text.strip())
        if proto == 0 and (lo, hi) != (0, 65535):
            raise ValueError(f"{text!r}: a port needs a protocol, e.g. '[tcp/{port_text.strip()}]'")
        return cls(prefix, proto, lo, hi)

    def __str__(self) -> str:
        base = "dynamic" if self.prefix is None else str(self.prefix)
        if self.proto == 0:
            return base
        names = {int(v): k for k, v in reversed(_PROTO_NAMES.items())}
        proto = names.get(self.proto, str(self.proto))
        if (self.port_lo, self.port_hi) == (0, 65535):
            return f"{base}[{proto}]"
        port = str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"
        return f"{base}[{proto}/{port}]"


def _parse_proto(text: str) -> int:
    if text.lower() in _ANY_WORDS:
        return 0
    if text.lower() in _PROTO_NAMES:
        return int(_PROTO_NAMES[text.lower()])
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    raise ValueError(f"unknown protocol {text!r} (expected tcp, udp, icmp, ipv6-icmp or a number 0-255)")


def _parse_ports(text: str) -> tuple[int, int]:
    if text.lower() in _ANY_WORDS:
        return 0, 65535
    lo_text, dash, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
    except ValueError:
        raise ValueError(f"{text!r} is not a port or port range (service names are not supported)") from None
    if not (0 <= lo <= hi <= 65535):
        raise ValueError(f"{text!r} is not a port range within 0-65535")
    return lo, hi


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class RetransmitConfig:
    """RFC 7296 2.1 exponential back-off, with strongSwan's charon.retransmit_* defaults.

    Try n (0-based) waits ``timeout * base**n``; after ``tries`` retransmits the SA is given up.
    """

    tries: int = 5
    timeout: float = 4.0
    base: float = 1.8

    def timeout_for(self, attempt: int) -> float:
        return self.timeout * self.base**attempt


LOCAL_AUTH_METHODS = ("pubkey", "psk", "eap-mschapv2", "eap-tls", "eap")
"""``local.auth``: how we authenticate; ``eap`` answers whichever supported method the server picks."""
REMOTE_AUTH_METHODS = ("pubkey", "psk", "eap-mschapv2", "eap-tls", "eap-radius", "eap-dynamic")
"""``remote.auth``: how the peer must authenticate; ``eap-dynamic`` offers MSCHAPv2, then TLS."""


@dataclass(frozen=True)
class AuthConfig:
    """One side's authentication (swanctl ``local``/``remote`` sections).

    ``id`` None only for a local side without ``id``: the engine then uses the IP
    address the IKE SA runs on, as strongSwan does (one of ``local_addrs`` if given),
    or with ``certs`` the subject of the first certificate.
    ``certs`` (local only) name our certificates in the credential directory's x509/;
    ``cacerts`` (remote only) restrict the trust anchors to these files of x509ca/
    (empty: every anchor); ``eap_id`` is the EAP identity: ours (local), or the one the
    peer must use, ``%any`` asking for it with EAP-Identity (remote).
    """

    auth: str
    id: Identity | None
    certs: tuple[str, ...] = ()
    cacerts: tuple[str, ...] = ()
    eap_id: Identity | None = None

    @property
    def is_eap(self) -> bool:
        return self.auth.startswith("eap")


@dataclass(frozen=True)
class ChildConfig:
    name: str
    local_ts: tuple[TsConfig, ...] = (TsConfig(None),)
    remote_ts: tuple[TsConfig, ...] = (TsConfig(None),)
    esp_proposals: tuple[str, ...] = ("default",)  # () when only ah_proposals were given
    ah_proposals: tuple[str, ...] = ()  # swanctl: AH (RFC 4302) proposals, offered before the ESP ones
    ipcomp: bool = False  # swanctl: IPComp with deflate (RFC 3173) inside the Child SA
    mode: ChildMode = ChildMode.TUNNEL
    start_action: StartAction = StartAction.NONE
    close_action: CloseAction = CloseAction.NONE
    dpd_action: DpdAction = DpdAction.CLEAR
    rekey_time: float = 3600.0
    life_time: float = 3960.0
    rand_time: float = 360.0
    rekey_bytes: int = 0
    life_bytes: int = 0
    rand_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    rand_packets: int = 0
    replay_window: int = 1024  # RFC 4303 3.4.3 leaves it to us; libipsec uses 128, xfrm 32
    mss_clamp: int | Literal["auto"] | None = None  # None = off
    interface: str | None = None


@dataclass(frozen=True)
class ConnectionConfig:
    """One swanctl ``connections.NAME`` section.

    ``local_addrs`` empty means any local address; ``remote_any`` is True when
    ``%any`` was given (or remote_addrs left out), and ``remote_addrs`` holds the
    concrete addresses (possibly none) to initiate to.

    The defaults are swanctl's; for the keys in NOT_IMPLEMENTED a loaded config holds
    what ipsecd really does instead (``fragmentation`` no, ...), not what was asked for.
    """

    name: str
    local: AuthConfig
    remote: AuthConfig
    local_addrs: tuple[IPAddress, ...] = ()
    remote_addrs: tuple[IPAddress, ...] = ()
    remote_any: bool = True
    local_port: int = IKE_PORT
    remote_port: int = IKE_PORT
    proposals: tuple[str, ...] = ("default",)
    version: int = 2
    encap: bool = False
    dpd_delay: float = 0.0
    dpd_timeout: float = 0.0
    rekey_time: float = 14400.0
    over_time: float = 1440.0
    reauth_time: float = 0.0
    rand_time: float = 1440.0
    keyingtries: int = 1
    unique: Unique = Unique.NO
    mobike: bool = True
    fragmentation: Fragmentation = Fragmentation.YES
    send_certreq: bool = True
    send_cert: SendCert = SendCert.IFASKED
    retransmit: RetransmitConfig = field(default_factory=RetransmitConfig)
    children: dict[str, ChildConfig] = field(default_factory=dict)
    pools: tuple[str, ...] = ()  # gateway: lease virtual IPs from these (top-level ``pools``), in order
    vips: tuple[IPAddress, ...] = ()  # client: virtual IPs to ask for; 0.0.0.0 / :: = any of that family


Attribute = tuple[int, bytes]


@dataclass(frozen=True)
class PoolConfig:
    """One swanctl ``pools.NAME`` section: the addresses served and the attributes sent with
    them, each already as (attribute type, wire value) -- ipsecd.pools.pool_spec joins them."""

    name: str
    addrs: tuple[IPAddress, IPAddress]  # first and last address served
    routed: tuple[IPNetwork, ...] = ()  # the prefixes routing the pool into the TUN (pools.pool_addrs)
    dns: tuple[Attribute, ...] = ()
    nbns: tuple[Attribute, ...] = ()
    dhcp: tuple[Attribute, ...] = ()
    netmask: tuple[Attribute, ...] = ()
    server: tuple[Attribute, ...] = ()
    subnet: tuple[Attribute, ...] = ()
    split_include: tuple[Attribute, ...] = ()
    split_exclude: tuple[Attribute, ...] = ()
    numbered: tuple[Attribute, ...] = ()  # swanctl's ``"25": corp.example``: any attribute by number


@dataclass(frozen=True)
class IkeSecret:
    """A pre-shared key and the identities it belongs to (empty ``ids`` = any).

    ``secret`` is excluded from repr so a logged Config never shows key material.
    """

    ids: tuple[Identity, ...]
    secret: bytes = field(repr=False)
    name: str = ""  # "secrets.ike[0]" or the swanctl-style section name, for messages


@dataclass(frozen=True)
class NtHashSecret:
    """An MSCHAPv2 password as its NT hash (swanctl ``secrets.ntlm``): 16 octets, never shown."""

    value: bytes = field(repr=False)


@dataclass(frozen=True)
class EapSecret:
    """A user's EAP password (``secrets.eap``) or NT hash (``secrets.ntlm``), by EAP identity."""

    ids: tuple[Identity, ...]
    secret: str | NtHashSecret = field(repr=False)
    name: str = ""


@dataclass(frozen=True)
class KeySecret:
    """The passphrase of an encrypted private key file (``secrets.private``/``rsa``/``ecdsa``)."""

    file: str
    secret: bytes = field(repr=False)
    name: str = ""


@dataclass(frozen=True)
class RadiusServerConfig:
    """One ``settings.eap-radius.servers.NAME``: tried in the order written (failover)."""

    name: str
    address: IPAddress
    secret: bytes = field(repr=False)
    auth_port: int = 1812
    acct_port: int = 1813


@dataclass(frozen=True)
class EapRadiusSettings:
    """``settings.eap-radius``, strongSwan's eap-radius plugin settings by their names.

    Each try on a server waits ``retransmit_timeout * retransmit_base**n``; after
    ``retransmit_tries`` tries the next server is asked.
    """

    servers: tuple[RadiusServerConfig, ...] = ()
    accounting: bool = False
    accounting_interval: float = 0.0  # Interim-Update period; 0 = Start and Stop only
    nas_identifier: str = "ipsecd"
    retransmit_timeout: float = 2.0
    retransmit_base: float = 2.0
    retransmit_tries: int = 3

    def timeouts(self) -> tuple[float, ...]:
        """The wait after each try on one server, as the RADIUS client takes them."""
        return tuple(self.retransmit_timeout * self.retransmit_base**n for n in range(self.retransmit_tries))


@dataclass(frozen=True)
class DataplaneSettings:
    tun_name: str = "ipsec0"
    mtu: int | None = None  # None = auto (from the path MTU minus ESP overhead)
    workers: int = 1
    offload: bool = False  # TUN offloads (IFF_VNET_HDR + TUNSETOFFLOAD): TSO/USO reads, GRO writes


@dataclass(frozen=True)
class MetricsSettings:
    listen: str | None = None  # "127.0.0.1:9810", "[::1]:9810"; None = no metrics endpoint
    per_sa: bool = False  # also the per-SPI traffic series: O(SAs) per scrape, new series on every rekey

    def address(self) -> tuple[str, int] | None:
        """``listen`` split into (host, port) for the HTTP server."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class DebugSettings:
    allow_key_export: bool = False


@dataclass(frozen=True)
class Settings:
    control_socket: Path = DEFAULT_CONTROL_SOCKET
    log_level: str = "info"
    log: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOG_SUBSYSTEMS, 1))
    keep_alive: float = 20.0  # NAT-T keepalive interval when we are behind a NAT (RFC 3948 2.3); 0 = off
    dataplane: DataplaneSettings = field(default_factory=DataplaneSettings)
    credentials: Path = DEFAULT_CREDENTIALS  # swanctl's layout: x509/, x509ca/, x509crl/, private/
    eap_radius: EapRadiusSettings = field(default_factory=EapRadiusSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    debug: DebugSettings = field(default_factory=DebugSettings)
    lease_db: Path = DEFAULT_LEASE_DB  # SQLite file of the pools' leases (opened only when pools exist)
    # strongSwan's charon.fragment_size: the largest IP packet (IP and UDP headers included)
    # an IKE message or RFC 7383 fragment may make; larger encrypted messages are fragmented
    fragment_size: int = 1280
    front_door: FrontDoorSettings = field(default_factory=FrontDoorSettings)  # the FRONT_DOOR_KEYS
    ike_shards: int = 1  # IKE processes, the kernel steering datagrams by SPI (ipsecd/shell/shards.py)


@dataclass(frozen=True)
class Config:
    connections: dict[str, ConnectionConfig]
    secrets: tuple[IkeSecret, ...]
    settings: Settings
    source: Path
    warnings: tuple[str, ...] = ()
    pools: dict[str, PoolConfig] = field(default_factory=dict)
    eap_secrets: tuple[EapSecret, ...] = ()
    key_secrets: tuple[KeySecret, ...] = ()

    def find_psk(self, local_id: str | Identity | None, remote_id: str | Identity | None) -> bytes | None:
        """The pre-shared key for this pair of identities, or None (see :func:`best_secret`)."""
        secret = best_secret(self.secrets, _as_identity(local_id), _as_identity(remote_id))
        return None if secret is None else secret.secret

    def find_eap_secret(self, eap_identity: bytes | str | Identity) -> str | NtHashSecret | None:
        """The EAP password (or NT hash) of this EAP identity: the secret whose ``id`` matches it
        best (exact beats a pattern, which beats ``%any`` or no ``id``); among equals the first."""
        who = eap_identity if isinstance(eap_identity, Identity) else parse_eap_identity(eap_identity)
        if who is None:
            return None
        best, rank = None, int(IdMatch.NONE)
        for secret in self.eap_secrets:
            quality = max((ident.matches(who) for ident in secret.ids or (ANY_IDENTITY,)), default=IdMatch.NONE)
            if quality > rank:
                best, rank = secret, quality
        return None if best is None else best.secret

    def key_passphrases(self) -> dict[str, bytes]:
        """Private key file (name in private/, or a path) -> passphrase, for the credential store."""
        return {k.file: k.secret for k in self.key_secrets}


def _as_identity(value: str | Identity | None) -> Identity | None:
    if value is None or isinstance(value, Identity):
        return value
    return Identity.parse(value)


def _owner_match(secret: IkeSecret, who: Identity | None) -> int:
    """The best match quality of ``who`` among the secret's identities (none given = %any, as swanctl)."""
    if who is None:
        return IdMatch.NONE
    return max((ident.matches(who) for ident in secret.ids or (ANY_IDENTITY,)), default=IdMatch.NONE)


def best_secret(secrets: Iterable[IkeSecret], local: Identity | None, remote: Identity | None) -> IkeSecret | None:
    """strongSwan's shared-key lookup (credential_manager get_shared over mem_cred).

    A secret is a candidate when one of its identities matches our or the peer's
    identity (match qualities as :meth:`Identity.matches`); the best match of the peer's
    identity wins, then the best match of ours; among equals the first in the file.
    So an exact identity beats a ``*.example.com`` pattern, which beats ``%any`` or a
    secret without identities; and a secret naming both sides beats one naming only
    the peer, which beats one naming only us.
    """
    best: IkeSecret | None = None
    best_rank: tuple[int, int] = (IdMatch.NONE, IdMatch.NONE)
    for secret in secrets:
        mine, other = _owner_match(secret, local), _owner_match(secret, remote)
        if not mine and not other:
            continue
        if (other, mine) > best_rank:
            best, best_rank = secret, (other, mine)
            if best_rank == (IdMatch.PERFECT, IdMatch.PERFECT):
                break
    return best


def _secret_possible(secrets: Iterable[IkeSecret], local: Identity | None, remote: Identity) -> bool:
    """Could any secret serve a connection with these identities, whichever peer comes?

    The load-time check: ``remote`` may be a pattern (``%any``, ``*@example.com``),
    so a secret counts when it matches our identity, or names an identity the pattern
    accepts, or has %any or no identities; without a local identity (the IKE SA's
    address decides) any secret might be ours.
    """
    for secret in secrets:
        if local is None or not secret.ids or _owner_match(secret, local) or _owner_match(secret, remote):
            return True
        if any(remote.matches(ident) for ident in secret.ids):
            return True
    return False


# --------------------------------------------------------------------------- the loader


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration file."""

    file: str
    line: int
    path: str
    text: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.path}: {self.text}" if self.path else f"{where}: {self.text}"


class ConfigValidationError(ConfigError):
    """A ConfigError that also carries the issues one by one (tests, future UIs)."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass(frozen=True)
class _Entry:
    key: Node
    value: Node
    path: str


T = TypeVar("T")

_CONN_KEYS = (
    "local_addrs",
    "remote_addrs",
    "local_port",
    "remote_port",
    "proposals",
    "version",
    "encap",
    "dpd_delay",
    "dpd_timeout",
    "dpd_action",
    "rekey_time",
    "over_time",
    "reauth_time",
    "rand_time",
    "keyingtries",
    "unique",
    "mobike",
    "fragmentation",
    "send_certreq",
    "send_cert",
    "retransmit",
    "local",
    "remote",
    "children",
    "pools",
    "vips",
)
_CHILD_KEYS = (
    "local_ts",
    "remote_ts",
    "esp_proposals",
    "ah_proposals",
    "ipcomp",
    "mode",
    "start_action",
    "close_action",
    "dpd_action",
    "rekey_time",
    "life_time",
    "rand_time",
    "rekey_bytes",
    "life_bytes",
    "rand_bytes",
    "rekey_packets",
    "life_packets",
    "rand_packets",
    "replay_window",
    "mss_clamp",
    "interface",
)
_AUTH_KEYS = ("auth", "id", "certs", "cacerts", "eap_id")
_SECRET_KEYS = ("id", "secret", "secret_file")
_EAP_SECRET_KEYS = ("id", "secret")
_KEY_SECRET_KEYS = ("file", "secret")
_SECRET_SECTIONS = ("ike", "eap", "ntlm", "private", "rsa", "ecdsa")
_RADIUS_KEYS = ("servers", "secret", "accounting", "accounting_interval", "nas_identifier", "retransmit_timeout",
                "retransmit_base", "retransmit_tries")
_RADIUS_SERVER_KEYS = ("address", "secret", "auth_port", "acct_port")
_RETRANSMIT_KEYS = ("tries", "timeout", "base")
# The front door's limits (ipsecd/ike/frontdoor.py, docs/security.md): key -> (kind, lowest, highest);
# "duration" takes swanctl time values, "number" any decimal, "integer" whole numbers
FRONT_DOOR_KEYS: Mapping[str, tuple[str, float, float]] = {
    "init_max_size": ("integer", 1280, 65535),  # RFC 7296 2: every implementation takes 1280 octets
    "cookie_threshold": ("integer", 0, 10_000_000),
    "cookie_threshold_ip": ("integer", 0, 10_000_000),
    "cookie_rate": ("integer", 0, 10_000_000),
    "block_threshold": ("integer", 1, 10_000_000),
    "init_limit_half_open": ("integer", 1, 10_000_000),
    "init_limit_rate": ("integer", 0, 10_000_000),
    "init_rate_ip": ("number", 0.001, 1e9),
    "init_burst_ip": ("integer", 1, 10_000_000),
    "source_table": ("integer", 1, 10_000_000),
    "cookie_lifetime": ("duration", 1.0, 3600.0),
    "cookie_secret_uses": ("integer", 1, 2**31),
    "cookie_secret_lifetime": ("duration", 1.0, 86400.0),
}
_SETTINGS_KEYS = ("control_socket", "log_level", "log", "keep_alive", "dataplane", "credentials", "eap-radius",
                  "metrics", "debug", "lease_db", "fragment_size", "ike_shards", *FRONT_DOOR_KEYS)
_POOL_KEYS = ("addrs", *ADDRESS_KEYS, *SUBNET_KEYS)
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class KeySection:
    """The keys one kind of mapping accepts, and the key paths where such mappings sit.

    ``paths`` are written as docs/configuration.md writes them: ``NAME`` and ``CHILD``
    stand for the user's connection and child names, ``secrets.ike`` for each entry of it.
    """

    paths: tuple[str, ...]
    keys: tuple[str, ...]


KEY_SECTIONS: Mapping[str, KeySection] = {
    "top": KeySection(("",), ("connections", "secrets", "settings", "pools")),
    "conn": KeySection(("connections.NAME",), _CONN_KEYS),
    "auth": KeySection(("connections.NAME.local", "connections.NAME.remote"), _AUTH_KEYS),
    "retransmit": KeySection(("connections.NAME.retransmit",), _RETRANSMIT_KEYS),
    "child": KeySection(("connections.NAME.children.CHILD",), _CHILD_KEYS),
    "secrets": KeySection(("secrets",), _SECRET_SECTIONS),
    "secret": KeySection(("secrets.ike",), _SECRET_KEYS),
    "eap_secret": KeySection(("secrets.eap", "secrets.ntlm"), _EAP_SECRET_KEYS),
    "key_secret": KeySection(("secrets.private", "secrets.rsa", "secrets.ecdsa"), _KEY_SECRET_KEYS),
    "settings": KeySection(("settings",), _SETTINGS_KEYS),
    "log": KeySection(("settings.log",), ("default", *LOG_SUBSYSTEMS)),
    "dataplane": KeySection(("settings.dataplane",), ("tun_name", "mtu", "workers", "offload")),
    "eap_radius": KeySection(("settings.eap-radius",), _RADIUS_KEYS),
    "radius_server": KeySection(("settings.eap-radius.servers.NAME",), _RADIUS_SERVER_KEYS),
    "metrics": KeySection(("settings.metrics",), ("listen", "per_sa")),
    "debug": KeySection(("settings.debug",), ("allow_key_export",)),
    "pool": KeySection(("pools.POOL",), _POOL_KEYS),  # and attribute numbers: "25": corp.example
}
"""Every key the loader accepts, by section: ``_Loader.mapping`` checks keys against it and
tests/test_config_keys.py checks it against docs/configuration.md, both ways."""


@dataclass(frozen=True)
class UnimplementedKey:
    """A swanctl key ipsecd accepts but whose behaviour it does not have yet.

    A value in ``honoured`` is what ipsecd does anyway; any other value asks for the
    missing behaviour: the loaded config then holds ``effective`` (what really happens)
    and, where the file wrote the key, the loader warns with file:line and ``missing``.
    """

    section: str  # a KEY_SECTIONS name; the key is a field of the same name in that section's dataclass
    key: str
    honoured: frozenset[object]
    effective: object
    missing: str  # what does not happen


NOT_IMPLEMENTED: tuple[UnimplementedKey, ...] = (
    # Each row goes when its feature lands; docs/configuration.md lists the same keys.
    UnimplementedKey("conn", "local_port", frozenset({IKE_PORT}), IKE_PORT,
                     "IKE is always sent from port 500 (4500 after NAT detection)"),
)


_CHILD_ONLY = set(_CHILD_KEYS) - set(_CONN_KEYS)
_CONN_ONLY = set(_CONN_KEYS) - set(_CHILD_KEYS)
_UNSUPPORTED = {
    "top": "authorities include",
    "conn": "aggressive pull dscp if_id_in if_id_out ppk_id ppk_required childless "
    "mediation mediated_by mediation_peer keyingtries_limit",
    "auth": "pubkeys aaa_id xauth_id groups cert_policy ca_id revocation round",
    "child": "updown hostaccess policies policies_fwd_out set_mark_in set_mark_out mark_in mark_out "
    "inactivity reqid priority copy_df copy_ecn copy_dscp hw_offload sha256_96 label tfc_padding "
    "if_id_in if_id_out",
    "secrets": "xauth pkcs8 pkcs12 token",
    "eap_radius": "server port sockets class_group eap_start filter_id id_prefix station_id_with_port "
    "accounting_requires_vip accounting_close_on_timeout dae forward xauth",
}


def _hint_for(section: str, key: str, path: str) -> str | None:
    """Messages for keys that are valid somewhere, just not here (swanctl habits)."""
    if key in _UNSUPPORTED.get(section, "").split():
        return "swanctl option not supported by ipsecd yet"
    parent = path.rpartition(".")[0]
    if section == "conn" and key in _CHILD_ONLY:
        return f"not a connection option: it belongs in a child ({parent}.children.NAME.{key})"
    if section == "child" and key in _CONN_ONLY:
        conn = parent.rpartition(".children")[0]
        return f"not a child option: it belongs in the connection ({conn}.{key})"
    if section == "conn" and key in _AUTH_KEYS:
        return f"not a connection option: it belongs in {parent}.local or {parent}.remote"
    return None


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "nothing (null)"
    return repr(node.value)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


class _Loader:
    """One pass over one file: parses what it can, records every issue it sees."""

    def __init__(self, display: str, base_dir: Path, validator: ProposalValidator | None) -> None:
        self.display = display
        self.base_dir = base_dir
        self.validator = validator
        self.issues: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []
        self._merger = SafeConstructor()

    # ---- reporting

    def error(self, node: Node | None, path: str, text: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.issues.append(ConfigIssue(self.display, line, path, text))

    def warn(self, node: Node | None, path: str, text: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.warnings.append(ConfigIssue(self.display, line, path, text))

    # ---- structure

    def mapping(self, node: Node | None, path: str, section: str) -> dict[str, _Entry]:
        """Keys of a mapping node (those of KEY_SECTIONS[section]), unknown and duplicate keys
        reported. Null is an empty mapping."""
        if node is None or _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.error(node, path, f"expected a mapping (key: value), got {_describe(node)}")
            return {}
        return self._entries(node, path, list(KEY_SECTIONS[section].keys), section)

    def named_mapping(self, node: Node | None, path: str, what: str) -> dict[str, _Entry]:
        """A mapping whose keys are user-chosen names (connections, children)."""
        if node is None or _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.error(node, path, f"expected a mapping of {what} names, got {_describe(node)}")
            return {}
        entries = self._entries(node, path, None, "")
        good: dict[str, _Entry] = {}
        for name, entry in entries.items():
            if _NAME_RE.fullmatch(name) is None:
                self.error(entry.key, entry.path, f"{what} name {name!r} must be letters, digits, '.', '_' or '-'")
            else:
                good[name] = entry
        return good

    def _entries(self, node: MappingNode, path: str, allowed: list[str] | None, section: str) -> dict[str, _Entry]:
        seen: dict[str, Node] = {}
        for key, _value in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                if key.value in seen:
                    first = seen[key.value].start_mark.line + 1
                    self.error(key, _join(path, key.value), f"duplicate key (first defined on line {first})")
                else:
                    seen[key.value] = key
        try:
            self._merger.flatten_mapping(node)  # YAML merge keys ("<<: *defaults")
        except ConstructorError as exc:
            self.error(node, path, f"invalid merge key: {exc.problem}")
        out: dict[str, _Entry] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or _is_null(key):
                self.error(key, path, f"keys must be plain strings, got {_describe(key)}")
                continue
            name = key.value
            kpath = _join(path, name)
            if allowed is not None and name not in allowed and not (section == "pool" and name.isdigit()):
                hint = _hint_for(section, name, kpath)
                if hint is None:
                    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                    if close:
                        hint = f"unknown key (did you mean '{close[0]}'?)"
                    else:
                        hint = "unknown key (expected one of: " + ", ".join(allowed) + ")"
                self.error(key, kpath, hint)
                continue
            out[name] = _Entry(key, value, kpath)  # later wins: explicit keys override merged ones
        return out

    def items(self, entry: _Entry, what: str) -> list[tuple[Node, str, str]]:
        """(node, path, text) of a list of strings; a single string or swanctl's "a, b" also work."""
        node = entry.value
        if isinstance(node, ScalarNode) and not _is_null(node):
            parts = [p.strip() for p in node.value.split(",")]
            return [(node, entry.path, p) for p in parts if p]
        if not isinstance(node, SequenceNode):
            self.error(node, entry.path, f"expected a list of {what}, got {_describe(node)}")
            return []
        out: list[tuple[Node, str, str]] = []
        for i, item in enumerate(node.value):
            ipath = f"{entry.path}[{i}]"
            if isinstance(item, ScalarNode) and not _is_null(item):
                out.append((item, ipath, item.value.strip()))
            else:
                self.error(item, ipath, f"expected {what[:-1] if what.endswith('s') else what}, got {_describe(item)}")
        return out

    # ---- scalars: each returns None after reporting, so callers fall back to the default

    def path(self, raw: str) -> Path:
        """A file or directory name: absolute, or relative to the configuration file (as secret_file)."""
        if not raw.strip():
            raise ValueError("expected a path, got an empty string")
        p = Path(raw.strip())
        return p if p.is_absolute() else self.base_dir / p

    def text(self, entry: _Entry | None, what: str = "a string") -> str | None:
        if entry is None:
            return None
        node = entry.value
        if isinstance(node, ScalarNode) and not _is_null(node):
            return str(node.value)
        self.error(node, entry.path, f"expected {what}, got {_describe(node)}")
        return None

    def convert(self, entry: _Entry | None, what: str, fn: Callable[[str], T]) -> T | None:
        raw = self.text(entry, what)
        if raw is None or entry is None:
            return None
        try:
            return fn(raw)
        except ValueError as exc:
            self.error(entry.value, entry.path, str(exc))
            return None

    def boolean(self, entry: _Entry | None, default: bool) -> bool:
        def parse(raw: str) -> bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"expected yes or no, got {raw!r}")

        value = self.convert(entry, "yes or no", parse)
        return default if value is None else value

    def integer(self, entry: _Entry | None, default: int, lo: int, hi: int) -> int:
        def parse(raw: str) -> int:
            try:
                value = int(raw.strip(), 0)
            except ValueError:
                raise ValueError(f"expected an integer, got {raw!r}") from None
            if not lo <= value <= hi:
                raise ValueError(f"{value} is out of range ({lo}..{hi})")
            return value

        value = self.convert(entry, "an integer", parse)
        return default if value is None else value

    def number(self, entry: _Entry | None, default: float, lo: float) -> float:
        def parse(raw: str) -> float:
            try:
                value = float(raw.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {raw!r}") from None
            if not (math.isfinite(value) and value >= lo):
                raise ValueError(f"{raw} is out of range (must be at least {lo})")
            return value

        value = self.convert(entry, "a number", parse)
        return default if value is None else value

    def duration(self, entry: _Entry | None) -> float | None:
        return self.convert(entry, "a duration", parse_duration)

    def volume(self, entry: _Entry | None) -> int | None:
        return self.convert(entry, "a volume", parse_volume)

    def choice(
        self, entry: _Entry | None, enum: type[StrEnumT], aliases: Mapping[str, str] | None = None
    ) -> StrEnumT | None:
        def parse(raw: str) -> StrEnumT:
            low = raw.strip().lower()
            low = (aliases or {}).get(low, low)
            try:
                return enum(low)
            except ValueError:
                options = ", ".join(m.value for m in enum)
                raise ValueError(f"{raw!r} is not one of: {options}") from None

        return self.convert(entry, "one of: " + ", ".join(m.value for m in enum), parse)


StrEnumT = TypeVar("StrEnumT", bound=StrEnum)
DataclassT = TypeVar("DataclassT", bound="DataclassInstance")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _opt(entries: Mapping[str, _Entry], key: str) -> _Entry | None:
    """The entry for ``key`` unless absent or null (null means "use the default")."""
    entry = entries.get(key)
    if entry is None or _is_null(entry.value):
        return None
    return entry


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


# --------------------------------------------------------------------------- sections


def _parse_addrs(ld: _Loader, entry: _Entry | None) -> tuple[tuple[IPAddress, ...], bool]:
    """Addresses and whether ``%any`` was among them (or the list was absent/empty)."""
    if entry is None:
        return (), True
    addrs: list[IPAddress] = []
    any_ = False
    for node, path, raw in ld.items(entry, "IP addresses"):
        if raw in ("%any", "%any4", "%any6", "0.0.0.0", "::"):
            any_ = True
            continue
        try:
            addrs.append(ip_address(raw))
        except ValueError:
            if "/" in raw or "-" in raw:
                ld.error(node, path, f"{raw!r} is not an IP address (subnets and ranges are not supported here yet)")
            elif re.search(r"[A-Za-z]", raw) and "." in raw:
                ld.error(node, path, f"{raw!r} is not an IP address (DNS names are not supported here yet)")
            else:
                ld.error(node, path, f"{raw!r} is not a valid IP address")
    return tuple(addrs), any_ or not addrs


def _parse_proposals(ld: _Loader, entry: _Entry | None, kind: str) -> tuple[str, ...]:
    if entry is None:
        return ("default",)
    out: list[str] = []
    label = kind.upper()
    items = ld.items(entry, "proposals")
    for node, path, raw in items:
        if ld.validator is not None:
            try:
                ld.validator(kind, raw)
            except ValueError as exc:
                ld.error(node, path, f"invalid {label} proposal {raw!r}: {exc}")
                continue
        elif _PROPOSAL_RE.fullmatch(raw) is None:
            ld.error(node, path, f"invalid {label} proposal {raw!r}: expected algorithm names joined by '-'")
            continue
        out.append(raw)
    if not items and isinstance(entry.value, SequenceNode):
        ld.error(entry.value, entry.path, "at least one proposal is needed (or leave it out for 'default')")
    return tuple(out) or ("default",)


_AUTH_HINTS = {
    "rsa": "use 'pubkey' (the key type comes from the certificate)",
    "ecdsa": "use 'pubkey' (the key type comes from the certificate)",
    "ed25519": "use 'pubkey' (the key type comes from the certificate)",
    "null": "NULL authentication (RFC 7619) is not supported",
}


def _auth_method(ld: _Loader, entry: _Entry, side: str) -> str | None:
    raw = ld.text(entry, "an authentication method")
    if raw is None:
        return None
    auth = raw.strip().lower()
    allowed = LOCAL_AUTH_METHODS if side == "local" else REMOTE_AUTH_METHODS
    if auth in allowed:
        return auth
    expected = f"expected one of: {', '.join(allowed)}"
    if auth in _AUTH_HINTS:
        why = _AUTH_HINTS[auth]
    elif side == "local" and auth in ("eap-radius", "eap-dynamic"):
        why = f"'{auth}' is for the remote side (we ask the peer); as a client use 'eap' or name a method"
    elif side == "remote" and auth == "eap":
        why = "name the method the peer must use: eap-mschapv2, eap-tls, eap-radius or eap-dynamic"
    elif auth.startswith(("eap-", "xauth")) or ("-" in auth and auth.split("-")[0] in ("pubkey", "rsa", "ecdsa")):
        why = f"'{auth}' is not supported"
    else:
        why = f"unknown authentication method {auth!r}"
    ld.error(entry.value, entry.path, f"{why} ({expected})")
    return None


def _parse_auth(ld: _Loader, entries: Mapping[str, _Entry], side: str, conn_key: Node, conn_path: str) -> AuthConfig:
    entry = entries.get(side)
    path = _join(conn_path, side)
    if entry is None:
        ld.error(conn_key, path, f"missing section '{side}:' (e.g. 'auth: pubkey' or 'auth: psk')")
        return AuthConfig("psk", None if side == "local" else ANY_IDENTITY)
    fields = ld.mapping(entry.value, path, "auth")
    auth_entry = _opt(fields, "auth")
    auth = (_auth_method(ld, auth_entry, side) if auth_entry is not None else "pubkey") or "psk"
    ident = ld.convert(_opt(fields, "id"), "an identity", Identity.parse)
    if ident is None and side == "remote":
        ident = ANY_IDENTITY
    certs_entry, cacerts_entry = _opt(fields, "certs"), _opt(fields, "cacerts")
    certs = tuple(raw for _n, _p, raw in ld.items(certs_entry, "certificate files")) if certs_entry else ()
    cacerts = tuple(raw for _n, _p, raw in ld.items(cacerts_entry, "CA certificate files")) if cacerts_entry else ()
    eap_id = ld.convert(_opt(fields, "eap_id"), "an EAP identity", Identity.parse)
    for key, given, ok, why in (
        ("certs", certs, side == "local",
         "only for local: ipsecd does not pin peer certificates (use remote.cacerts and remote.id)"),
        ("cacerts", cacerts, side == "remote", "only for remote: the CAs the peer's certificate must chain to"),
        ("eap_id", eap_id, auth.startswith("eap"), f"needs an EAP method in {path}.auth, not '{auth}'"),
    ):
        e = _opt(fields, key)
        if given and not ok and e is not None:
            ld.error(e.key, e.path, why)
    if eap_id is not None and side == "local" and eap_id.contains_wildcards():
        e = fields["eap_id"]
        ld.error(e.value, e.path, "our own EAP identity cannot be %any or a pattern")
    return AuthConfig(auth, ident, certs if side == "local" else (), cacerts if side == "remote" else (),
                      eap_id if auth.startswith("eap") else None)


def _parse_retransmit(ld: _Loader, entry: _Entry | None) -> RetransmitConfig:
    if entry is None:
        return RetransmitConfig()
    fields = ld.mapping(entry.value, entry.path, "retransmit")
    d = RetransmitConfig()
    return RetransmitConfig(
        tries=ld.integer(_opt(fields, "tries"), d.tries, 0, 100),
        timeout=ld.number(_opt(fields, "timeout"), d.timeout, 0.01),
        base=ld.number(_opt(fields, "base"), d.base, 1.0),
    )


def _parse_mss(raw: str) -> int | Literal["auto"] | None:
    low = raw.strip().lower()
    if low in _FALSE:
        return None
    if low == "auto":
        return "auto"
    try:
        value = int(low)
    except ValueError:
        raise ValueError(f"expected auto, off or an MSS in bytes, got {raw!r}") from None
    if not 536 <= value <= 65495:
        raise ValueError(f"{value} is out of range (536..65495)")
    return value


def _parse_ifname(raw: str) -> str:
    name = raw.strip()
    if _IFNAME_RE.fullmatch(name) is None or name in (".", ".."):
        raise ValueError(f"{raw!r} is not a valid interface name (1-15 characters, no spaces, '/' or ':')")
    return name


def _lifetimes(
    ld: _Loader,
    fields: Mapping[str, _Entry],
    keys: tuple[str, str, str],
    default_rekey: float,
    conv: Callable[[_Entry | None], float | None],
) -> tuple[float, float, float]:
    """(rekey, life, rand) with swanctl's defaults: life = 110% of rekey, rand = life - rekey."""
    rekey_key, life_key, rand_key = keys
    rekey = _or(conv(_opt(fields, rekey_key)), default_rekey)
    life = _or(conv(_opt(fields, life_key)), rekey * 1.1)
    rand = _or(conv(_opt(fields, rand_key)), max(life - rekey, 0.0))
    if rekey and life and life <= rekey and life_key in fields:
        ld.error(fields[life_key].value, fields[life_key].path, f"must be greater than {rekey_key} ({_fmt(rekey)})")
    elif rekey and rand >= rekey and rand_key in fields:
        ld.error(fields[rand_key].value, fields[rand_key].path, f"must be smaller than {rekey_key} ({_fmt(rekey)})")
    return rekey, life, rand


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _parse_child(ld: _Loader, entry: _Entry, conn_dpd: DpdAction | None) -> ChildConfig:
    name = entry.key.value
    fields = ld.mapping(entry.value, entry.path, "child")
    d = ChildConfig(name)
    ts: dict[str, tuple[TsConfig, ...]] = {}
    for side in ("local_ts", "remote_ts"):
        got = _opt(fields, side)
        if got is None:
            ts[side] = (TsConfig(None),)
            continue
        parsed: list[TsConfig] = []
        items = ld.items(got, "traffic selectors")
        for node, path, raw in items:
            try:
                parsed.append(TsConfig.parse(raw))
            except ValueError as exc:
                ld.error(node, path, str(exc))
        if not items and isinstance(got.value, SequenceNode):
            ld.error(got.value, got.path, "at least one traffic selector is needed (or leave it out for 'dynamic')")
        ts[side] = tuple(parsed) or (TsConfig(None),)
    rekey, life, rand = _lifetimes(ld, fields, ("rekey_time", "life_time", "rand_time"), 3600.0, ld.duration)
    rb, lb, rnb = _lifetimes(ld, fields, ("rekey_bytes", "life_bytes", "rand_bytes"), 0, ld.volume)
    rp, lp, rnp = _lifetimes(ld, fields, ("rekey_packets", "life_packets", "rand_packets"), 0, ld.volume)
    mss_entry = _opt(fields, "mss_clamp")
    mss = ld.convert(mss_entry, "auto, off or a number", _parse_mss)
    ah_entry, esp_entry = _opt(fields, "ah_proposals"), _opt(fields, "esp_proposals")
    ah = _parse_proposals(ld, ah_entry, "ah") if ah_entry is not None else ()
    # swanctl: the default ESP proposals apply only when no proposal of either kind is given
    esp = _parse_proposals(ld, esp_entry, "esp") if esp_entry is not None or not ah else ()
    return ChildConfig(
        name=name,
        local_ts=ts["local_ts"],
        remote_ts=ts["remote_ts"],
        esp_proposals=esp,
        ah_proposals=ah,
        ipcomp=ld.boolean(_opt(fields, "ipcomp"), d.ipcomp),
        mode=_or(ld.choice(_opt(fields, "mode"), ChildMode), d.mode),
        start_action=_or(ld.choice(_opt(fields, "start_action"), StartAction, _ACTION_ALIASES), d.start_action),
        close_action=_or(ld.choice(_opt(fields, "close_action"), CloseAction, _ACTION_ALIASES), d.close_action),
        dpd_action=_or(ld.choice(_opt(fields, "dpd_action"), DpdAction, _DPD_ALIASES), conn_dpd or d.dpd_action),
        rekey_time=rekey,
        life_time=life,
        rand_time=rand,
        rekey_bytes=int(rb),
        life_bytes=int(lb),
        rand_bytes=int(rnb),
        rekey_packets=int(rp),
        life_packets=int(lp),
        rand_packets=int(rnp),
        replay_window=ld.integer(_opt(fields, "replay_window"), d.replay_window, 0, 65536),
        mss_clamp=None if mss_entry is None else mss,
        interface=ld.convert(_opt(fields, "interface"), "an interface name", _parse_ifname),
    )


def _parse_connection(ld: _Loader, entry: _Entry) -> ConnectionConfig:
    name = entry.key.value
    fields = ld.mapping(entry.value, entry.path, "conn")
    d = ConnectionConfig(name, AuthConfig("psk", None), AuthConfig("psk", ANY_IDENTITY))
    local_addrs, _ = _parse_addrs(ld, _opt(fields, "local_addrs"))
    remote_addrs, remote_any = _parse_addrs(ld, _opt(fields, "remote_addrs"))
    version_entry = _opt(fields, "version")
    version = ld.integer(version_entry, 2, 0, 2)
    if version != 2 and version_entry is not None:
        ld.error(version_entry.value, version_entry.path, "only IKEv2 is supported (version: 2)")
    rekey = _or(ld.duration(_opt(fields, "rekey_time")), d.rekey_time)
    reauth = _or(ld.duration(_opt(fields, "reauth_time")), d.reauth_time)
    over = _or(ld.duration(_opt(fields, "over_time")), max(rekey, reauth) * 0.1)
    rand = _or(ld.duration(_opt(fields, "rand_time")), over)
    keyingtries = ld.convert(
        _opt(fields, "keyingtries"),
        "an integer or %forever",
        lambda raw: 0 if raw.strip() == "%forever" else _nonneg_int(raw),
    )
    conn_dpd = ld.choice(_opt(fields, "dpd_action"), DpdAction, _DPD_ALIASES)
    local = _parse_auth(ld, fields, "local", entry.key, entry.path)
    remote = _parse_auth(ld, fields, "remote", entry.key, entry.path)
    children_entry = fields.get("children")
    children: dict[str, ChildConfig] = {}
    if children_entry is not None:
        for cname, centry in ld.named_mapping(children_entry.value, children_entry.path, "child").items():
            children[cname] = _parse_child(ld, centry, conn_dpd)
    conn = ConnectionConfig(
        name=name,
        local=local,
        remote=remote,
        local_addrs=local_addrs,
        remote_addrs=remote_addrs,
        remote_any=remote_any,
        local_port=ld.integer(_opt(fields, "local_port"), d.local_port, 1, 65535),
        remote_port=ld.integer(_opt(fields, "remote_port"), d.remote_port, 1, 65535),
        proposals=_parse_proposals(ld, _opt(fields, "proposals"), "ike"),
        version=2,
        encap=ld.boolean(_opt(fields, "encap"), d.encap),
        dpd_delay=_or(ld.duration(_opt(fields, "dpd_delay")), d.dpd_delay),
        dpd_timeout=_or(ld.duration(_opt(fields, "dpd_timeout")), d.dpd_timeout),
        rekey_time=rekey,
        over_time=over,
        reauth_time=reauth,
        rand_time=rand,
        keyingtries=_or(keyingtries, d.keyingtries),
        unique=_or(ld.choice(_opt(fields, "unique"), Unique), d.unique),
        mobike=ld.boolean(_opt(fields, "mobike"), d.mobike),
        fragmentation=_or(
            ld.choice(_opt(fields, "fragmentation"), Fragmentation, {"true": "yes", "false": "no"}), d.fragmentation
        ),
        send_certreq=ld.boolean(_opt(fields, "send_certreq"), d.send_certreq),
        send_cert=_or(ld.choice(_opt(fields, "send_cert"), SendCert), d.send_cert),
        retransmit=_parse_retransmit(ld, _opt(fields, "retransmit")),
        children=children,
        pools=_parse_names(ld, _opt(fields, "pools"), "pool names"),
        vips=_parse_vips(ld, _opt(fields, "vips")),
    )
    return _not_implemented(ld, "conn", fields, conn)


def _parse_names(ld: _Loader, entry: _Entry | None, what: str) -> tuple[str, ...]:
    out: list[str] = []
    for node, path, raw in ld.items(entry, what) if entry is not None else []:
        if raw in out:
            ld.error(node, path, f"{raw!r} is listed twice")
        else:
            out.append(raw)
    return tuple(out)


def _parse_vips(ld: _Loader, entry: _Entry | None) -> tuple[IPAddress, ...]:
    """swanctl's ``vips``: addresses to ask the gateway for; 0.0.0.0 / :: ask for any of that family."""
    out: list[IPAddress] = []
    for node, path, raw in ld.items(entry, "IP addresses") if entry is not None else []:
        try:
            addr = ip_address(raw.replace("%any6", "::").replace("%any4", "0.0.0.0").replace("%any", "0.0.0.0"))
        except ValueError:
            ld.error(node, path, f"{raw!r} is not an IP address (0.0.0.0 or :: ask for any address of that family)")
            continue
        if any(a.version == addr.version for a in out):
            ld.error(node, path, f"a second IPv{addr.version} virtual IP: one address of each family can be asked for")
            continue
        out.append(addr)
    return tuple(out)


def _parse_pool(ld: _Loader, entry: _Entry) -> PoolConfig | None:
    name = entry.key.value
    fields = ld.mapping(entry.value, entry.path, "pool")
    addrs_entry = _opt(fields, "addrs")
    if addrs_entry is None:
        ld.error(entry.key, entry.path, "missing 'addrs': the addresses the pool hands out "
                 "(a subnet like 10.3.0.0/24 or a range like 10.3.0.10-10.3.0.99)")
        return None
    parsed = ld.convert(addrs_entry, "a subnet or an address range", pool_addrs)
    addrs, routed = parsed if parsed is not None else (None, ())
    attrs: dict[str, list[tuple[int, bytes]]] = {}
    for key, fentry in fields.items():
        if key == "addrs" or _is_null(fentry.value):
            continue
        for node, path, raw in ld.items(fentry, "values"):
            try:
                attrs.setdefault(key if not key.isdigit() else "numbered", []).append(attribute_value(key, raw))
            except ValueError as exc:
                ld.error(node, path, str(exc))
    if addrs is None:
        return None

    def of(key: str) -> tuple[Attribute, ...]:
        return tuple(attrs.get(key, ()))

    return PoolConfig(name=name, addrs=addrs, routed=routed, dns=of("dns"), nbns=of("nbns"), dhcp=of("dhcp"),
                      netmask=of("netmask"), server=of("server"), subnet=of("subnet"),
                      split_include=of("split_include"), split_exclude=of("split_exclude"), numbered=of("numbered"))


def _parse_pools(ld: _Loader, entry: _Entry | None) -> dict[str, PoolConfig]:
    if entry is None:
        return {}
    out: dict[str, PoolConfig] = {}
    named = ld.named_mapping(entry.value, entry.path, "pool")
    for name, pentry in named.items():
        pool = _parse_pool(ld, pentry)
        if pool is None:
            continue
        lo, hi = pool.addrs
        for other in out.values():
            olo, ohi = other.addrs
            if lo.version == olo.version and int(lo) <= int(ohi) and int(olo) <= int(hi):
                where = _fields_quiet(pentry).get("addrs")
                ld.error(where.value if where else pentry.key, _join(pentry.path, "addrs"),
                         f"overlaps pool {other.name} ({olo} - {ohi}): two users would get the same address")
                break
        else:
            out[name] = pool
    return out


def _not_implemented(ld: _Loader, section: str, fields: Mapping[str, _Entry], parsed: DataclassT) -> DataclassT:
    """What ipsecd really does for the NOT_IMPLEMENTED keys of ``section``, warning where the file asked for more.

    Only a key written in the file warns: an absent one just takes its effective value
    (swanctl's default ``fragmentation: yes`` must not warn on every connection).
    """
    for row in NOT_IMPLEMENTED:
        if row.section != section or getattr(parsed, row.key) in row.honoured:
            continue
        entry = _opt(fields, row.key)
        if entry is not None:
            ld.warn(entry.value, entry.path,
                    f"accepted but not implemented yet: {row.missing} (in effect: {_show(row.effective)})")
        parsed = replace(parsed, **{row.key: row.effective})
    return parsed


def _show(value: object) -> str:
    """A value as the config file would write it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _nonneg_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected an integer or %forever, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{value} is out of range (0 = forever)")
    return value


def _decode_secret(raw: str) -> bytes:
    """swanctl encodings: ``0x`` hex, ``0s`` base64, anything else the UTF-8 text itself."""
    if raw.startswith(("0x", "0X")):
        try:
            return bytes.fromhex(raw[2:])
        except ValueError:
            raise ValueError("secret starting with '0x' is not valid hexadecimal") from None
    if raw.startswith(("0s", "0S")):
        try:
            return base64.b64decode(raw[2:], validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("secret starting with '0s' is not valid base64") from None
    return raw.encode("utf-8")


def _read_secret_file(ld: _Loader, entry: _Entry) -> bytes | None:
    raw = ld.text(entry, "a file path")
    if raw is None:
        return None
    path = Path(raw)
    if not path.is_absolute():
        path = ld.base_dir / path  # relative to the config file, like swanctl's own directories
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            ld.error(entry.value, entry.path, f"{str(path)!r} is not a regular file")
            return None
        if st.st_mode & 0o077:
            ld.error(
                entry.value,
                entry.path,
                f"{str(path)!r} has mode {stat.S_IMODE(st.st_mode):04o}: a key file must not be accessible "
                f"by group or others (chmod 600 {path})",
            )
            return None
        data = path.read_bytes()
    except OSError as exc:
        ld.error(entry.value, entry.path, f"cannot read {str(path)!r}: {exc.strerror}")
        return None
    data = data.rstrip(b"\r\n")
    if data[:2].lower() in (b"0x", b"0s"):
        try:
            return _decode_secret(data.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            ld.error(entry.value, entry.path, f"{str(path)!r}: {exc}")
            return None
    return data


def _parse_secret(ld: _Loader, node: Node, path: str, name: str) -> IkeSecret | None:
    fields = ld.mapping(node, path, "secret")
    if not fields and not isinstance(node, MappingNode):
        return None
    ids = _parse_ids(ld, _opt(fields, "id"))
    secret_entry, file_entry = _opt(fields, "secret"), _opt(fields, "secret_file")
    if secret_entry is not None and file_entry is not None:
        ld.error(file_entry.key, file_entry.path, "give either 'secret' or 'secret_file', not both")
        return None
    data: bytes | None
    if secret_entry is not None:
        data = ld.convert(secret_entry, "a string", _decode_secret)
    elif file_entry is not None:
        data = _read_secret_file(ld, file_entry)
    else:
        ld.error(node, path, "missing 'secret' or 'secret_file'")
        return None
    if data is None:
        return None
    where = secret_entry or file_entry
    if not data:
        ld.error(where.value if where else node, where.path if where else path, "the secret is empty")
        return None
    if len(data) < 16:
        ld.warn(
            where.value if where else node,
            where.path if where else path,
            f"pre-shared key of {len(data)} bytes is weak; use at least 16 random bytes",
        )
    return IkeSecret(tuple(ids), data, name)


def _each_entry(ld: _Loader, entry: _Entry) -> list[tuple[Node, str, str]]:
    """(node, path, name) of every entry of a secrets list, or of swanctl-style named sections."""
    if isinstance(entry.value, SequenceNode):
        return [(item, f"{entry.path}[{i}]", f"{entry.path}[{i}]") for i, item in enumerate(entry.value.value)]
    if isinstance(entry.value, MappingNode):
        return [(e.value, e.path, name) for name, e in ld.named_mapping(entry.value, entry.path, "secret").items()]
    ld.error(entry.value, entry.path, f"expected a list of secrets, got {_describe(entry.value)}")
    return []


def _parse_ids(ld: _Loader, id_entry: _Entry | None) -> list[Identity]:
    ids: list[Identity] = []
    if id_entry is None:
        return ids
    node = id_entry.value
    if isinstance(node, ScalarNode) and not _is_null(node) and "=" in node.value:
        # one DN, whose commas separate attributes, not identities (a YAML list gives several)
        items: list[tuple[Node, str, str]] = [(node, id_entry.path, str(node.value).strip())]
    else:
        items = ld.items(id_entry, "identities")
    for inode, ipath, raw in items:
        try:
            ids.append(Identity.parse(raw))
        except ValueError as exc:
            ld.error(inode, ipath, str(exc))
    return ids


def _parse_eap_secret(ld: _Loader, node: Node, path: str, name: str, ntlm: bool) -> EapSecret | None:
    fields = ld.mapping(node, path, "eap_secret")
    if not fields and not isinstance(node, MappingNode):
        return None
    ids = _parse_ids(ld, _opt(fields, "id"))
    entry = _opt(fields, "secret")
    if entry is None:
        ld.error(node, path, "missing 'secret'")
        return None
    data = ld.convert(entry, "a string", _decode_secret)
    if data is None:
        return None
    if ntlm:
        if len(data) != 16:
            ld.error(entry.value, entry.path, f"an NT hash is 16 bytes (0x followed by 32 hex digits), not {len(data)}")
            return None
        return EapSecret(tuple(ids), NtHashSecret(data), name)
    try:
        password = data.decode("utf-8")
    except UnicodeDecodeError:
        ld.error(entry.value, entry.path, "an EAP password must be text (UTF-8)")
        return None
    if not password:
        ld.error(entry.value, entry.path, "the password is empty")
        return None
    return EapSecret(tuple(ids), password, name)


def _parse_key_secret(ld: _Loader, node: Node, path: str, name: str) -> KeySecret | None:
    fields = ld.mapping(node, path, "key_secret")
    if not fields and not isinstance(node, MappingNode):
        return None
    file = ld.text(_opt(fields, "file"), "a file name in private/")
    entry = _opt(fields, "secret")
    if file is None or entry is None:
        ld.error(node, path, "needs 'file' (a key file in private/) and 'secret' (its passphrase)")
        return None
    data = ld.convert(entry, "a string", _decode_secret)
    return None if data is None else KeySecret(file.strip(), data, name)


def _parse_secrets(ld: _Loader, entry: _Entry | None) -> tuple[tuple[IkeSecret, ...], tuple[EapSecret, ...],
                                                               tuple[KeySecret, ...]]:
    if entry is None:
        return (), (), ()
    fields = ld.mapping(entry.value, entry.path, "secrets")
    ike: list[IkeSecret] = []
    eap: list[EapSecret] = []
    keys: list[KeySecret] = []
    for section in _SECRET_SECTIONS:
        sentry = _opt(fields, section)
        if sentry is None:
            continue
        for node, path, name in _each_entry(ld, sentry):
            if section == "ike":
                ike_secret = _parse_secret(ld, node, path, name)
                if ike_secret is not None:
                    ike.append(ike_secret)
            elif section in ("eap", "ntlm"):
                eap_secret = _parse_eap_secret(ld, node, path, name, section == "ntlm")
                if eap_secret is not None:
                    eap.append(eap_secret)
            else:
                key_secret = _parse_key_secret(ld, node, path, name)
                if key_secret is not None:
                    keys.append(key_secret)
    return tuple(ike), tuple(eap), tuple(keys)


def _parse_listen(raw: str) -> str:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{raw!r} is not HOST:PORT (e.g. '127.0.0.1:9810' or '[::1]:9810')")
    return raw.strip()


def _parse_mtu(raw: str) -> int | None:
    if raw.strip().lower() == "auto":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected auto or an MTU in bytes, got {raw!r}") from None
    if not 576 <= value <= 65535:
        raise ValueError(f"{value} is out of range (576..65535)")
    return value


def _parse_abs_path(raw: str) -> Path:
    if not raw.strip().startswith("/"):
        raise ValueError(f"{raw!r} must be an absolute path")
    return Path(raw.strip())


def _parse_socket_path(raw: str) -> Path:
    if not raw.startswith("/"):
        raise ValueError(f"{raw!r} must be an absolute path")
    if len(os.fsencode(raw)) > 107:
        raise ValueError(f"{raw!r} is too long for a Unix socket path (107 bytes at most)")
    return Path(raw)


def _parse_radius_server(ld: _Loader, entry: _Entry, default_secret: bytes | None) -> RadiusServerConfig | None:
    fields = ld.mapping(entry.value, entry.path, "radius_server")
    address = ld.convert(_opt(fields, "address"), "an IP address", ip_address)
    secret = ld.convert(_opt(fields, "secret"), "a string", _decode_secret) if _opt(fields, "secret") else None
    secret = secret if secret is not None else default_secret
    auth_port = ld.integer(_opt(fields, "auth_port"), 1812, 1, 65535)
    acct_port = ld.integer(_opt(fields, "acct_port"), 1813, 1, 65535)
    if address is None:
        if _opt(fields, "address") is None:
            ld.error(entry.key, entry.path, "missing 'address' (the RADIUS server's IP address)")
        return None
    if not secret:
        ld.error(entry.key, entry.path, "no 'secret' for this server and no settings.eap-radius.secret")
        return None
    return RadiusServerConfig(entry.key.value, address, secret, auth_port, acct_port)


def _parse_eap_radius(ld: _Loader, entry: _Entry | None) -> EapRadiusSettings:
    d = EapRadiusSettings()
    if entry is None:
        return d
    fields = ld.mapping(entry.value, entry.path, "eap_radius")
    secret = ld.convert(_opt(fields, "secret"), "a string", _decode_secret) if _opt(fields, "secret") else None
    servers: list[RadiusServerConfig] = []
    servers_entry = _opt(fields, "servers")
    if servers_entry is not None:
        for _name, sentry in ld.named_mapping(servers_entry.value, servers_entry.path, "server").items():
            server = _parse_radius_server(ld, sentry, secret)
            if server is not None:
                servers.append(server)
    nas = ld.text(_opt(fields, "nas_identifier"), "a string")
    if nas is not None and not 0 < len(nas.encode()) <= 253:
        ld.error(fields["nas_identifier"].value, fields["nas_identifier"].path, "must be 1 to 253 bytes")
        nas = None
    return EapRadiusSettings(
        servers=tuple(servers),
        accounting=ld.boolean(_opt(fields, "accounting"), d.accounting),
        accounting_interval=_or(ld.duration(_opt(fields, "accounting_interval")), d.accounting_interval),
        nas_identifier=nas or d.nas_identifier,
        retransmit_timeout=ld.number(_opt(fields, "retransmit_timeout"), d.retransmit_timeout, 0.1),
        retransmit_base=ld.number(_opt(fields, "retransmit_base"), d.retransmit_base, 1.0),
        retransmit_tries=ld.integer(_opt(fields, "retransmit_tries"), d.retransmit_tries, 1, 10),
    )


def _parse_settings(ld: _Loader, entry: _Entry | None) -> Settings:
    d = Settings()
    if entry is None:
        return d
    fields = ld.mapping(entry.value, entry.path, "settings")

    def level(raw: str) -> str:
        low = raw.strip().lower()
        if low not in _LOG_LEVELS:
            raise ValueError(f"{raw!r} is not one of: {', '.join(_LOG_LEVELS)}")
        return low

    log = dict(d.log)
    log_entry = _opt(fields, "log")
    if log_entry is not None:
        levels = ld.mapping(log_entry.value, log_entry.path, "log")
        default = ld.integer(_opt(levels, "default"), 1, -1, 4)
        log = {name: ld.integer(_opt(levels, name), default, -1, 4) for name in LOG_SUBSYSTEMS}
    dp_entry = _opt(fields, "dataplane")
    dp = ld.mapping(dp_entry.value if dp_entry else None, _join(entry.path, "dataplane"), "dataplane")
    metrics_entry = _opt(fields, "metrics")
    metrics = ld.mapping(metrics_entry.value if metrics_entry else None, _join(entry.path, "metrics"), "metrics")
    debug_entry = _opt(fields, "debug")
    debug = ld.mapping(debug_entry.value if debug_entry else None, _join(entry.path, "debug"), "debug")
    settings = Settings(
        control_socket=_or(ld.convert(_opt(fields, "control_socket"), "a path", _parse_socket_path), d.control_socket),
        log_level=_or(ld.convert(_opt(fields, "log_level"), "a log level", level), d.log_level),
        log=log,
        keep_alive=_or(ld.duration(_opt(fields, "keep_alive")), d.keep_alive),
        dataplane=_not_implemented(ld, "dataplane", dp, DataplaneSettings(
            tun_name=_or(ld.convert(_opt(dp, "tun_name"), "an interface name", _parse_ifname), "ipsec0"),
            mtu=ld.convert(_opt(dp, "mtu"), "auto or a number", _parse_mtu),
            workers=ld.integer(_opt(dp, "workers"), 1, 1, 64),
            offload=ld.boolean(_opt(dp, "offload"), False),
        )),
        credentials=_or(ld.convert(_opt(fields, "credentials"), "a directory", ld.path), d.credentials),
        eap_radius=_parse_eap_radius(ld, _opt(fields, "eap-radius")),
        metrics=MetricsSettings(listen=ld.convert(_opt(metrics, "listen"), "HOST:PORT", _parse_listen),
                                per_sa=ld.boolean(_opt(metrics, "per_sa"), False)),
        debug=DebugSettings(allow_key_export=ld.boolean(_opt(debug, "allow_key_export"), False)),
        lease_db=_or(ld.convert(_opt(fields, "lease_db"), "a path", _parse_abs_path), d.lease_db),
        fragment_size=ld.integer(_opt(fields, "fragment_size"), d.fragment_size, 576, 65535),
        front_door=_parse_front_door(ld, fields),
        ike_shards=_or(ld.convert(_opt(fields, "ike_shards"), "auto or a number", _parse_shards), d.ike_shards),
    )
    _check_workers(ld, settings, _opt(dp, "workers"))
    return settings


def _check_workers(ld: _Loader, settings: Settings, entry: _Entry | None) -> None:
    """``dataplane.workers`` above 1: at most one per CPU this process may use (a worker beyond
    the cores only adds hand-overs, ipsecd/dataplane/handoff.py), and not yet with TUN offloads
    or several IKE shards (refused rather than half-working)."""
    workers = settings.dataplane.workers
    if entry is None or workers <= 1:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > cpus:
        ld.error(entry.value, entry.path, f"{workers} workers but this host gives ipsecd {cpus} CPUs "
                 f"(expected 1..{cpus}: one worker per core)")
    if settings.dataplane.offload:
        ld.error(entry.value, entry.path, "several workers are not implemented with offload: yes "
                 "(expected workers: 1, or offload: no)")
    if settings.ike_shards > 1:
        ld.error(entry.value, entry.path, "several workers are not implemented with settings.ike_shards above 1 "
                 "(expected workers: 1, or ike_shards: 1)")


MAX_IKE_SHARDS = 16  # as ipsecd.ike.shard.MAX_SHARDS (the steering program's jump table)


def _parse_shards(raw: str) -> int:
    """``ike_shards``: a number of IKE processes, or ``auto`` (one per CPU this process may use)."""
    text = raw.strip().lower()
    if text == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), MAX_IKE_SHARDS))
    if not text.isdigit() or not 1 <= int(text) <= MAX_IKE_SHARDS:
        raise ValueError(f"expected auto or a number of IKE processes from 1 to {MAX_IKE_SHARDS}, got {raw!r}")
    return int(text)


def _parse_front_door(ld: _Loader, fields: Mapping[str, _Entry]) -> FrontDoorSettings:
    d = FrontDoorSettings()
    values: dict[str, object] = {}
    for key, (kind, lo, hi) in FRONT_DOOR_KEYS.items():
        entry = _opt(fields, key)
        if entry is None:
            continue
        if kind == "integer":
            values[key] = ld.integer(entry, getattr(d, key), int(lo), int(hi))
            continue
        value = ld.duration(entry) if kind == "duration" else ld.number(entry, getattr(d, key), lo)
        if value is not None and not lo <= value <= hi:
            ld.error(entry.value, entry.path, f"{value:g} is out of range ({lo:g}..{hi:g})")
        elif value is not None:
            values[key] = value
    return replace(d, **values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- cross-checks


def _families(addrs: Iterable[IPAddress]) -> set[int]:
    return {a.version for a in addrs}


def _check_interfaces(ld: _Loader, conn: ConnectionConfig, entry: _Entry, settings: Settings) -> None:
    """Route-based children name the TUN they use; the data plane has one TUN device (dataplane.tun_name)."""
    children = _fields_quiet(entry).get("children")
    for cname, child in conn.children.items():
        if child.interface is None or child.interface == settings.dataplane.tun_name:
            continue
        centry = _fields_quiet(children).get(cname) if children is not None else None
        ientry = _fields_quiet(centry).get("interface") if centry is not None else None
        ld.error(ientry.value if ientry else entry.key, ientry.path if ientry else entry.path,
                 f"'{child.interface}' is not the data plane's TUN device '{settings.dataplane.tun_name}' "
                 "(one TUN per daemon: set settings.dataplane.tun_name to it)")


def _cross_check(
    ld: _Loader, conn: ConnectionConfig, entry: _Entry, secrets: tuple[IkeSecret, ...], secrets_ok: bool
) -> None:
    fields = _fields_quiet(entry)
    if conn.local.id is not None and conn.local.id.contains_wildcards():
        e = _auth_field(fields, "local", "id")
        what = "%any" if conn.local.id.is_any else "a pattern (wildcards, subnets and ranges are for the remote side)"
        ld.error(e.value if e else entry.key, e.path if e else entry.path, f"our own identity cannot be {what}")
    lf, rf = _families(conn.local_addrs), _families(conn.remote_addrs)
    if lf and rf and not lf & rf:
        e = fields.get("remote_addrs")
        ld.error(
            e.value if e else entry.key,
            e.path if e else entry.path,
            "no address family in common with local_addrs (IPv4 vs IPv6)",
        )
    needs_psk = secrets_ok and "psk" in (conn.local.auth, conn.remote.auth)
    # without a local id, ours is the address the IKE SA runs on: one of local_addrs, if given
    mine: list[Identity | None] = [conn.local.id] if conn.local.id is not None else [
        Identity.from_address(a) for a in conn.local_addrs] or [None]
    remote = conn.remote.id or ANY_IDENTITY
    if needs_psk and not any(_secret_possible(secrets, local, remote) for local in mine):
        e = _auth_field(fields, "local" if conn.local.auth == "psk" else "remote", "auth")
        local_text = f"'{conn.local.id}'" if conn.local.id is not None else "(the local address)"
        ld.error(
            e.value if e else entry.key,
            e.path if e else entry.path,
            f"psk authentication but no secret in secrets.ike matches local id {local_text} "
            f"or remote id '{conn.remote.id}'",
        )
    initiating = {
        ("start_action", StartAction.START.value),
        ("start_action", StartAction.TRAP.value),
        ("close_action", CloseAction.START.value),
        ("close_action", CloseAction.TRAP.value),
        ("dpd_action", DpdAction.RESTART.value),
        ("dpd_action", DpdAction.TRAP.value),
    }
    children_entry = fields.get("children")
    child_fields = _fields_quiet(children_entry) if children_entry else {}
    for child in conn.children.values():
        cf = _fields_quiet(child_fields[child.name]) if child.name in child_fields else {}
        if not conn.remote_addrs:
            for key in ("start_action", "close_action", "dpd_action"):
                value = str(getattr(child, key))
                if (key, value) in initiating:
                    e = cf.get(key) or fields.get(key)
                    if e is None:
                        continue
                    ld.error(
                        e.value,
                        e.path,
                        f"'{value}' needs a concrete remote_addrs to initiate to (remote_addrs is %any)",
                    )
        lts = {t.prefix.version for t in child.local_ts if t.prefix is not None}
        rts = {t.prefix.version for t in child.remote_ts if t.prefix is not None}
        if lts and rts and not lts & rts:
            e = cf.get("remote_ts")
            if e is not None:
                ld.error(e.value, e.path, "no address family in common with local_ts (IPv4 vs IPv6)")


def _check_virtual_ips(ld: _Loader, conn: ConnectionConfig, entry: _Entry, pools_entry: _Entry | None) -> None:
    """``pools`` name defined pools; ``vips`` belong to a client, which initiates and installs no traps."""
    fields = _fields_quiet(entry)
    defined = set(_fields_quiet(pools_entry)) if pools_entry is not None else set()
    pe = fields.get("pools")
    for name in conn.pools:
        if name not in defined:
            close = difflib.get_close_matches(name, sorted(defined), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else (
                " (defined: " + ", ".join(sorted(defined)) + ")" if defined else " (there is no 'pools' section)")
            ld.error(pe.value if pe else entry.key, pe.path if pe else entry.path, f"no pool named {name!r}{hint}")
    ve = fields.get("vips")
    if not conn.vips or ve is None:
        return
    if not conn.remote_addrs:
        ld.error(ve.value, ve.path, "a client asks for virtual IPs when it initiates: this connection has no "
                 "remote_addrs to initiate to")
    trapped = [f"{c.name}.{k}" for c in conn.children.values() for k in ("start_action", "close_action", "dpd_action")
               if str(getattr(c, k)) == "trap"]
    if trapped:
        ld.error(ve.value, ve.path, f"not supported together with trap ({', '.join(trapped)}): a trap's policies "
                 "would need the virtual IP before it is assigned")
def _check_auth(ld: _Loader, conn: ConnectionConfig, entry: _Entry, eap_secrets: tuple[EapSecret, ...],
                settings: Settings, secrets_ok: bool) -> None:
    """What certificate and EAP authentication need besides their own keys."""
    fields = _fields_quiet(entry)
    local, remote = conn.local, conn.remote
    if local.is_eap and remote.is_eap and not local.auth == remote.auth == "eap-tls":
        e = _auth_field(fields, "remote", "auth")
        ld.error(e.value if e else entry.key, e.path if e else entry.path,
                 "EAP on both sides is EAP-only authentication (RFC 5998), which needs a mutual method: "
                 "eap-tls on both sides; otherwise one side authenticates with pubkey or psk")
    # keys only some methods read: refused where nothing would read them
    if local.certs and local.auth not in ("pubkey", "eap-tls", "eap") and remote.auth not in ("eap-tls",
                                                                                             "eap-dynamic"):
        e = _auth_field(fields, "local", "certs")
        ld.error(e.key if e else entry.key, e.path if e else entry.path,
                 f"unused with local.auth {local.auth}: certificates are for pubkey or EAP-TLS")
    if remote.cacerts and remote.auth not in ("pubkey", "eap-tls", "eap-dynamic"):
        e = _auth_field(fields, "remote", "cacerts")
        ld.error(e.key if e else entry.key, e.path if e else entry.path,
                 f"unused with remote.auth {remote.auth}: the peer presents no certificate to us"
                 + (" (the RADIUS server checks it)" if remote.auth == "eap-radius" else ""))
    if remote.auth == "eap-radius" and not settings.eap_radius.servers:
        e = _auth_field(fields, "remote", "auth")
        ld.error(e.value if e else entry.key, e.path if e else entry.path,
                 "eap-radius needs a RADIUS server in settings.eap-radius.servers")
    if local.auth in ("eap-mschapv2", "eap") and secrets_ok:
        me = local.eap_id or local.id
        if me is None or not any(not s.ids or any(i.matches(me) for i in s.ids) for s in eap_secrets):
            e = _auth_field(fields, "local", "auth")
            who = f"'{me}'" if me is not None else "(set local.eap_id)"
            if local.auth == "eap-mschapv2":
                ld.error(e.value if e else entry.key, e.path if e else entry.path,
                         f"eap-mschapv2 as a client needs our password: no secret in secrets.eap matches {who}")
    if remote.auth in ("eap-mschapv2", "eap-dynamic") and secrets_ok and not eap_secrets:
        e = _auth_field(fields, "remote", "auth")
        ld.warn(e.value if e else entry.key, e.path if e else entry.path,
                f"{remote.auth} checks user passwords, but secrets.eap and secrets.ntlm are empty: every "
                "MSCHAPv2 login will fail")


def _fields_quiet(entry: _Entry) -> dict[str, _Entry]:
    """Re-read a mapping's entries for locating nodes; problems were reported on the first pass."""
    if not isinstance(entry.value, MappingNode):
        return {}
    out: dict[str, _Entry] = {}
    for key, value in entry.value.value:
        if isinstance(key, ScalarNode) and not _is_null(key):
            out[key.value] = _Entry(key, value, _join(entry.path, key.value))
    return out


def _auth_field(fields: Mapping[str, _Entry], side: str, key: str) -> _Entry | None:
    side_entry = fields.get(side)
    if side_entry is None:
        return None
    return _fields_quiet(side_entry).get(key) or side_entry


# --------------------------------------------------------------------------- entry points


def load_config(path: str | Path, *, proposal_validator: ProposalValidator | None = None) -> Config:
    """Read, parse and validate ``path``; raise ConfigError listing every problem.

    ``proposal_validator(kind, text)`` checks each IKE ("ike") and ESP ("esp")
    proposal string; it is injected so this module does not depend on the
    proposal parser, and ``--check-config`` can still check proposals fully.
    """
    display = str(path)
    source = Path(path)
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{display}: cannot read configuration: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        if "'%'" in problem:
            problem += " (quote values that start with '%', e.g. \"%any\")"
        raise ConfigError(f"{display}{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:  # ReaderError: bytes that are not UTF-8 text, control characters
        raise ConfigError(f"{display}: invalid YAML: {exc}") from None

    ld = _Loader(display, source.resolve().parent, proposal_validator)
    top = ld.mapping(root, "", "top")
    if root is None or _is_null(root):
        ld.warnings.append(ConfigIssue(display, 0, "", "the file is empty: no connections"))
    before = len(ld.issues)
    secrets, eap_secrets, key_secrets = _parse_secrets(ld, _opt(top, "secrets"))
    secrets_ok = len(ld.issues) == before
    settings = _parse_settings(ld, _opt(top, "settings"))
    pools = _parse_pools(ld, _opt(top, "pools"))
    connections: dict[str, ConnectionConfig] = {}
    conns_entry = top.get("connections")
    if conns_entry is not None:
        named = ld.named_mapping(conns_entry.value, conns_entry.path, "connection")
        for name, entry in named.items():
            connections[name] = _parse_connection(ld, entry)
        for name, entry in named.items():
            _cross_check(ld, connections[name], entry, secrets, secrets_ok)
            _check_auth(ld, connections[name], entry, eap_secrets, settings, secrets_ok)
            _check_interfaces(ld, connections[name], entry, settings)
            _check_virtual_ips(ld, connections[name], entry, top.get("pools"))
    pools_entry = top.get("pools")
    if settings.ike_shards > 1 and pools and pools_entry is not None:
        # every shard leases its own share of each pool (pools.py): each needs at least one address
        for pname, spec in pools.items():
            size = int(spec.addrs[1]) - int(spec.addrs[0]) + 1
            if size < settings.ike_shards:
                ld.error(pools_entry.value, f"{pools_entry.path}.{pname}", f"a pool of {size} address(es) "
                         f"cannot be shared by settings.ike_shards {settings.ike_shards} (expected at least "
                         f"{settings.ike_shards} addresses, or fewer shards)")
    if ld.issues:
        raise ConfigValidationError(sorted(ld.issues, key=lambda i: i.line))
    return Config(
        connections=connections,
        secrets=secrets,
        settings=settings,
        source=source,
        warnings=tuple(str(w) for w in sorted(ld.warnings, key=lambda i: i.line)),
        pools=pools,
        eap_secrets=eap_secrets,
        key_secrets=key_secrets,
    )


def check_config_main(path: str | Path, *, proposal_validator: ProposalValidator | None = None,
                      extra_check: Callable[[Config], tuple[list[str], list[str], list[str]]] | None = None) -> int:
    """``ipsecd --check-config FILE``: 0 and a summary if valid, 1 and every error on stderr if not.

    ``extra_check(config)`` adds (errors, warnings, notes) the file alone cannot tell
    (the daemon passes the credential store's check); notes go to stdout.
    """
    try:
        config = load_config(path, proposal_validator=proposal_validator)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    errors, warnings, notes = extra_check(config) if extra_check is not None else ([], [], [])
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    for warning in [*config.warnings, *warnings]:
        print(f"warning: {warning}", file=sys.stderr)
    if errors:
        return 1
    n = len(config.connections)
    print(f"configuration OK: {n} connection{'' if n == 1 else 's'}")
    for note in notes:
        print(f"note: {note}")
    return 0
