"""The gateway's connection as a client must see it, read from the configuration and credentials.

Everything a profile states comes from here, so a profile cannot drift from what the
gateway accepts: the proposals (``default`` expanded as the daemon expands it), the
networks behind it (its ``local_ts``), the families of its pools and their DNS
attributes, and the root CA above its certificate.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ipsecd.config import Config, ConnectionConfig, EapSecret, NtHashSecret, PoolConfig, best_secret
from ipsecd.credentials import CredentialStore, key_description
from ipsecd.iana import ConfigAttribute, ProtocolId
from ipsecd.identity import Identity
from ipsecd.ike.proposal import parse_proposals
from ipsecd.profiles.model import CaCert, ClientAuth, GatewayView, ProfileError, ProfileRequest

_CLIENT_AUTH = {
    "eap-mschapv2": ClientAuth.EAP_MSCHAPV2,
    "eap-tls": ClientAuth.EAP_TLS,
    "eap-radius": ClientAuth.EAP_ANY,
    "eap-dynamic": ClientAuth.EAP_ANY,
    "eap": ClientAuth.EAP_ANY,
    "pubkey": ClientAuth.PUBKEY,
    "psk": ClientAuth.PSK,
}
_DNS = (ConfigAttribute.INTERNAL_IP4_DNS, ConfigAttribute.INTERNAL_IP6_DNS)
_APPLE_KEY = {"RSA": "RSA", "ECDSA P-256": "ECDSA256", "ECDSA P-384": "ECDSA384", "ECDSA P-521": "ECDSA521",
              "Ed25519": "Ed25519", "Ed448": "Ed448"}


def _cn(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = cns[0].value if cns else cert.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode(errors="replace")


def _ca(cert: x509.Certificate) -> CaCert:
    return CaCert(_cn(cert), cert.public_bytes(serialization.Encoding.PEM).decode(),
                  cert.public_bytes(serialization.Encoding.DER))


def _pool_values(pools: Iterable[PoolConfig]) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    domains: list[str] = []
    for pool in pools:
        for attr, value in (*pool.dns, *pool.numbered):
            if attr in _DNS and len(value) in (4, 16):
                dns.append(str(IPv4Address(value) if len(value) == 4 else IPv6Address(value)))
            elif attr == ConfigAttribute.INTERNAL_DNS_DOMAIN and value:
                domains.append(value.decode("ascii", errors="replace"))
    return list(dict.fromkeys(dns)), list(dict.fromkeys(domains))


def _server(conn: ConnectionConfig, server: str | None) -> str:
    if server:
        return server
    gid = conn.local.id
    if gid is not None and gid.text and not gid.is_any and "=" not in gid.text and "@" not in gid.text:
        return gid.text  # an FQDN (or address) identity: what the certificate names, what clients dial
    if conn.local_addrs:
        return str(conn.local_addrs[0])
    raise ProfileError(f"connection {conn.name}: no server name to put into the profile: give --server HOST "
                       "(the gateway's DNS name, as in its certificate)")


def _trust(conn: ConnectionConfig, store: CredentialStore | None) -> tuple[tuple[CaCert, ...], str]:
    """The root CA(s) above the gateway's certificate, and its key type."""
    if store is None or conn.local.auth != "pubkey":
        return (), ""
    wire = conn.local.id.to_wire() if conn.local.id is not None and not conn.local.id.is_any else None
    own = store.own_credential(cert_file=conn.local.certs[0] if conn.local.certs else None, identity=wire)
    if own is None:
        raise ProfileError(f"connection {conn.name}: the gateway's certificate was not found in "
                           f"{store.directory}/x509 (with its key in private/)")
    key, _ = key_description(own.cert.public_key())
    if own.root is not None:
        roots = [own.root]
    else:  # the chain ends at a CA we hold no root for: give the top of the chain, the client needs it
        roots = [own.chain[-1]] if own.chain else []
    if not roots:
        raise ProfileError(f"connection {conn.name}: no CA certificate above the gateway's certificate in "
                           f"{store.directory}/x509ca: the clients would have nothing to trust")
    return tuple(_ca(c) for c in roots), _APPLE_KEY.get(key, "")


def gateway_view(config: Config, conn_name: str, store: CredentialStore | None, *,
                 server: str | None = None) -> GatewayView:
    conn = config.connections.get(conn_name)
    if conn is None:
        known = ", ".join(sorted(config.connections)) or "none"
        raise ProfileError(f"no connection {conn_name!r} in {config.source} (connections: {known})")
    auth = _CLIENT_AUTH.get(conn.remote.auth)
    if auth is None:
        raise ProfileError(f"connection {conn_name}: remote.auth {conn.remote.auth} is not a client login "
                           "a profile can describe")
    if conn.local.auth not in ("pubkey", "psk"):
        raise ProfileError(f"connection {conn_name}: local.auth {conn.local.auth}: profiles describe gateways "
                           "that prove themselves with a certificate (pubkey) or a PSK")
    if conn.local.id is None or conn.local.id.is_any:
        raise ProfileError(f"connection {conn_name}: set local.id (the name in the gateway's certificate): "
                           "clients check the gateway against it")
    children = list(conn.children.values())
    if not children:
        raise ProfileError(f"connection {conn_name} has no children: nothing for a client to reach")
    remote_ts: list[str] = []
    for child in children:
        for ts in child.local_ts:
            if ts.prefix is None:  # dynamic: the gateway's own address
                remote_ts.extend(f"{a}/{a.max_prefixlen}" for a in conn.local_addrs)
            else:
                remote_ts.append(str(ts.prefix))
    pools = [config.pools[p] for p in conn.pools if p in config.pools]
    dns, domains = _pool_values(pools)
    cas, key = _trust(conn, store)
    return GatewayView(
        conn=conn_name,
        server=_server(conn, server),
        gateway_id=conn.local.id.text,
        gateway_auth=conn.local.auth,
        client_auth=auth,
        ike=tuple(parse_proposals(list(conn.proposals), ProtocolId.IKE)),
        esp=tuple(parse_proposals(list(children[0].esp_proposals), ProtocolId.ESP)),
        remote_ts=tuple(dict.fromkeys(remote_ts)),
        vip4=any(p.addrs[0].version == 4 for p in pools),
        vip6=any(p.addrs[0].version == 6 for p in pools),
        dns=tuple(dns),
        domains=tuple(domains),
        cas=cas,
        gateway_key=key,
        eap_id_any=conn.remote.eap_id is not None and conn.remote.eap_id.is_any,
        port=conn.local_port,
        mobike=conn.mobike,
        fragmentation=conn.fragmentation.value != "no",
    )


def _eap_password(secrets: Iterable[EapSecret], user: Identity) -> str | None:
    for secret in secrets:
        if any(i.matches(user) for i in secret.ids):
            if isinstance(secret.secret, NtHashSecret):
                raise ProfileError(f"the EAP secret of {user.text} is an NT hash: the password itself is not known "
                                   "to the gateway, so it cannot go into a profile")
            return secret.secret
    return None


def profile_request(config: Config, view: GatewayView, user: str, *, include_password: bool = False,
                    p12: bytes | None = None) -> ProfileRequest:
    """Who the profile is for; the password or PSK only when asked for, from the gateway's own secrets."""
    bad = next((c for c in user if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if not user or bad is not None:
        raise ProfileError("--user must be a non-empty name without control characters")
    try:
        ident = Identity.parse(user)
    except ValueError as exc:
        raise ProfileError(f"--user {user!r}: {exc}") from None
    password = psk = None
    if include_password and view.client_auth.is_eap and view.client_auth != ClientAuth.EAP_TLS:
        password = _eap_password(config.eap_secrets, ident)
        if password is None:
            raise ProfileError(f"--include-password: no EAP secret for {user} in {config.source} "
                               "(with RADIUS, the password lives in the RADIUS server)")
    if include_password and view.client_auth == ClientAuth.PSK:
        found = best_secret(config.secrets, Identity.parse(view.gateway_id), ident)
        if found is None:
            raise ProfileError(f"--include-password: no PSK between {view.gateway_id} and {user}")
        psk = found.secret.decode("utf-8", errors="strict")
    return ProfileRequest(user=user, password=password, psk=psk, p12=p12)
