"""What a client profile is made from, and what it is: plain values, no I/O.

``GatewayView`` is this gateway's connection as a client has to see it (server name,
identities, the proposals it accepts, the networks behind it, the virtual IP families and
DNS it hands out, the CA to trust). ``ProfileRequest`` is who the profile is for and
which secrets may go into it. ``Profile`` is the result: files by name, and warnings the
operator must read. The generators (one module per platform) take the first two and
return the third; ``ipsecd.profiles.gateway`` builds the view from the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ipsecd.errors import IpsecdError
from ipsecd.ike.payloads import Proposal


class ProfileError(IpsecdError):
    """This profile cannot be made (the platform cannot express what the gateway demands)."""


class Platform(StrEnum):
    WINDOWS = "windows"
    APPLE = "apple"
    ANDROID = "android"
    LINUX = "linux"


class ClientAuth(StrEnum):
    """How the client logs in: the gateway's ``remote.auth``, as a client has to do it."""

    EAP_MSCHAPV2 = "eap-mschapv2"
    EAP_TLS = "eap-tls"
    EAP_ANY = "eap"  # eap-radius / eap-dynamic: the server picks; clients offer MSCHAPv2 (and TLS when asked)
    PUBKEY = "pubkey"
    PSK = "psk"

    @property
    def is_eap(self) -> bool:
        return self in (ClientAuth.EAP_MSCHAPV2, ClientAuth.EAP_TLS, ClientAuth.EAP_ANY)

    @property
    def needs_user_cert(self) -> bool:
        return self in (ClientAuth.EAP_TLS, ClientAuth.PUBKEY)


@dataclass(frozen=True)
class CaCert:
    """A trust anchor the client must install: its PEM text, DER bytes and a short name."""

    name: str  # the subject's CN (or the whole DN), for display names and file names
    pem: str
    der: bytes = field(repr=False)


@dataclass(frozen=True)
class GatewayView:
    conn: str  # the connection's name in the gateway's configuration
    server: str  # what clients dial: a DNS name (best: matches the certificate) or an address
    gateway_id: str  # our local.id as text: the client's remote identity
    gateway_auth: str  # "pubkey" or "psk": how the gateway proves itself
    client_auth: ClientAuth
    ike: tuple[Proposal, ...]
    esp: tuple[Proposal, ...]
    remote_ts: tuple[str, ...]  # the networks behind the gateway (its local_ts) = the client's remote_ts
    vip4: bool = False  # the gateway leases IPv4 (IPv6) virtual IPs to this connection
    vip6: bool = False
    dns: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()  # INTERNAL_DNS_DOMAIN (RFC 8598): split DNS
    cas: tuple[CaCert, ...] = ()
    gateway_key: str = ""  # "RSA", "ECDSA256", "ECDSA384", "ECDSA521", "Ed25519", "Ed448" or "" (unknown / PSK)
    eap_id_any: bool = True  # the gateway asks for the EAP identity (remote.eap_id: %any)
    port: int = 500
    mobike: bool = True
    fragmentation: bool = True

    @property
    def full_tunnel(self) -> bool:
        return any(ts in ("0.0.0.0/0", "::/0") for ts in self.remote_ts)


@dataclass(frozen=True)
class ProfileRequest:
    user: str  # the EAP identity, or the IKE identity of a certificate / PSK login
    password: str | None = field(default=None, repr=False)  # only with --include-password
    psk: str | None = field(default=None, repr=False)  # only with --include-password
    p12: bytes | None = field(default=None, repr=False)  # the user's PKCS#12, when the operator passes one
    display_name: str | None = None


@dataclass
class Profile:
    files: dict[str, str]  # file name -> content (text; binary formats are base64 inside)
    warnings: list[str] = field(default_factory=list)
