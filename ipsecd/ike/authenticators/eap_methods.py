"""Which EAP methods an IKE SA runs, built from its connection, its credentials and its secrets.

Server side (``remote.auth``): eap-mschapv2 checks passwords from ``secrets.eap``/``ntlm``;
eap-tls runs TLS with our certificate and checks the client's against our anchors,
CRLs and its EAP identity; eap-dynamic offers MSCHAPv2 first and TLS after a Nak (TLS
only when we have a certificate); eap-radius relays everything to the RADIUS server.
Client side (``local.auth``): the method named, or with ``eap`` whichever of MSCHAPv2
(when we have a password) and TLS (when we have a certificate) the gateway asks for.

The factories and callbacks made here live in the IKE_AUTH task, which the IKE SA holds
while EAP runs: they capture values or ``ctx`` (whose ``sa`` is a weak reference), never
the IKE SA itself, so a closed SA is not a reference cycle (tests/test_sa_cycles.py).
"""

from __future__ import annotations

from cryptography import x509

from ipsecd.credentials import CredentialError, OwnCredential
from ipsecd.eap.method import PeerFactory
from ipsecd.eap.mschapv2 import MschapV2Authenticator, MschapV2Peer
from ipsecd.eap.radius_method import EAP_RADIUS, EapRadiusRelay
from ipsecd.eap.session import MethodOffer
from ipsecd.eap.tls import EapTlsPeer, EapTlsServer, TlsCredentials
from ipsecd.iana import EapType
from ipsecd.identity import Identity, eap_identity
from ipsecd.ike.authenticators import AuthContext, own_credential
from ipsecd.logsafe import safe

MUTUAL_METHODS = frozenset({EapType.TLS})  # prove the server too, and derive an MSK (RFC 5998 4)


def client_credential(ctx: AuthContext, eap_id: bytes) -> OwnCredential | None:
    """Our certificate for EAP-TLS as a client: ``local.certs``, else one holding our EAP
    identity, else one holding our IKE identity (a Windows-like client's is its address)."""
    sa = ctx.sa
    as_identity = eap_identity(eap_id)
    own = own_credential(sa, as_identity) if as_identity is not None else None
    return own or own_credential(sa, ctx.me)


def _tls_credentials(ctx: AuthContext, own: OwnCredential | None, identity: Identity | None,
                     who: str) -> TlsCredentials:
    """Our certificate for TLS, the anchors for the other side's, and the credential store's checks
    (CRLs, EKU, and that it holds ``identity``) on top of OpenSSL's path validation."""
    sa = ctx.sa
    store = sa.ctx.credentials
    cacerts = sa.settings.remote_auth.cacerts
    try:
        anchors = store.trust_anchors(cacerts)
    except CredentialError as e:
        sa.log.warning("EAP-TLS: %s", e)
        anchors = ()

    def verify(chain: list[x509.Certificate]) -> str | None:
        sa = ctx.sa
        result = store.validate_peer(chain[0], chain[1:], sa.ctx.wall_time(sa.now), cacerts=cacerts,
                                     identity=identity.to_wire() if identity is not None else None)
        for note in result.notes:
            sa.log.info("EAP-TLS certificate of the %s: %s", who, note)
        return None if result.ok else f"{result.outcome.value}: {result.message}"

    if own is None:
        return TlsCredentials(trust_anchors=anchors, verify=verify)
    return TlsCredentials(own.cert, own.key, own.chain, anchors, verify)


def server_offers(ctx: AuthContext) -> list[MethodOffer]:
    """The methods the gateway allows for ``remote.auth``, in its order of preference."""
    sa = ctx.sa
    method = sa.settings.remote_auth.method
    offers: list[MethodOffer] = []
    if method == "eap-radius":
        calling, called = f"{sa.remote[0]}[{sa.remote[1]}]", f"{sa.local[0]}[{sa.local[1]}]"
        return [MethodOffer(EAP_RADIUS, lambda ident: EapRadiusRelay(ident, calling_station_id=calling,
                                                                      called_station_id=called))]
    if method in ("eap-mschapv2", "eap-dynamic"):
        lookup, rng = sa.settings.eap_secret, sa.ctx.rng
        offers.append(MethodOffer(EapType.MSCHAPV2, lambda ident: MschapV2Authenticator(ident, lookup, rng=rng)))
    if method == "eap-tls" or (method == "eap-dynamic" and own_credential(sa, ctx.me) is not None):
        def tls(ident: bytes) -> EapTlsServer:
            own = own_credential(ctx.sa, ctx.me)
            return EapTlsServer(ident, _tls_credentials(ctx, own, eap_identity(ident), f"client {safe(ident)}"))

        offers.append(MethodOffer(EapType.TLS, tls))
    return offers


def client_methods(ctx: AuthContext, identity: bytes) -> list[tuple[int, PeerFactory]]:
    """The methods we answer as a client (``local.auth``); empty when we have nothing to answer with."""
    sa = ctx.sa
    method = sa.settings.local_auth.method
    out: list[tuple[int, PeerFactory]] = []
    secret = sa.settings.eap_secret(identity)
    if method == "eap-mschapv2" or (method == "eap" and secret is not None):
        rng = sa.ctx.rng
        out.append((EapType.MSCHAPV2, lambda ident: MschapV2Peer(ident, secret, rng=rng)))
    own = client_credential(ctx, identity)
    if own is not None and method in ("eap-tls", "eap"):
        remote = sa.settings.remote_id

        def tls(ident: bytes) -> EapTlsPeer:
            return EapTlsPeer(ident, _tls_credentials(ctx, own, None if remote.contains_wildcards() else remote,
                                                      "gateway"))

        out.append((EapType.TLS, tls))
    return out
