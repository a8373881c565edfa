"""Certificate authentication: CERT payloads and a signature AUTH (RFC 7296 3.6, 3.8, 2.15; RFC 7427).

Ours: the certificate ``own_credential`` picks and its intermediates (never the root:
the peer must trust it already) when ``send_cert`` says so, and an AUTH signed the way
:func:`~ipsecd.ike.signature.choose_signature` decides from what the peer announced: RFC
7427 only after SIGNATURE_HASH_ALGORITHMS, else classic method 1 or 9-11 (Windows and
Apple clients announce nothing).

The peer's: its first X.509 CERT payload is its certificate, the others candidate
intermediates; the chain is validated against our trust anchors (``remote.cacerts``)
with CRLs by :meth:`~ipsecd.credentials.CredentialStore.validate_peer`, which also
checks that the certificate holds the peer's IKE identity; then the AUTH must verify
with the certificate's key. Every refusal names the certificate and the check.
"""

from __future__ import annotations

from cryptography import x509

from ipsecd.certidentity import cert_matches_identity
from ipsecd.credentials import CredentialError, OwnCredential
from ipsecd.errors import LocalProtocolError
from ipsecd.iana import AuthMethod, CertEncoding
from ipsecd.ike.authenticators import AuthContext, AuthFailure, NoResume, missing_credential, own_credential
from ipsecd.ike.events import LoginResult
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import AuthPayload, CertPayload, Payload
from ipsecd.ike.signature import SignatureError, choose_signature, sign_auth, verify_auth
from ipsecd.ike.tasks import Status
from ipsecd.logsafe import safe
from ipsecd.pathvalidation import cert_name

MAX_PEER_CERTS = 10  # a leaf and its intermediates; more is not a chain anyone sends


def describe_method(method: int) -> str:
    if method == AuthMethod.DIGITAL_SIGNATURE:
        return "RFC 7427 signature"
    try:
        return f"AUTH method {int(method)} ({AuthMethod(method).name})"
    except ValueError:
        return f"AUTH method {method}"


def send_our_certs(ctx: AuthContext, own: OwnCredential, out: list[Payload]) -> None:
    """CERT payloads of ``own`` (end entity first) as ``send_cert`` says (swanctl semantics)."""
    sa = ctx.sa
    mode = sa.settings.send_cert
    if mode == "always" or (mode == "ifasked" and sa.auth_ext.certreq_seen):
        out += [CertPayload(CertEncoding.X509_CERTIFICATE_SIGNATURE, der) for der in own.cert_chain_der()]


class PubkeyBuilder(NoResume):
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def build(self, out: list[Payload]) -> None:
        ctx, sa = self.ctx, self.ctx.sa
        me = ctx.me
        own = own_credential(sa, me)
        if own is None:
            raise AuthFailure(f"cannot authenticate as '{me}': {missing_credential(sa, me)}", LoginResult.NO_CREDENTIAL)
        if not cert_matches_identity(own.cert, *me.to_wire()):
            raise AuthFailure(f"our certificate {cert_name(own.cert)} does not hold our identity '{me}' (subject DN or "
                              "subjectAltName): the peer would refuse it; set local.id to one of its names",
                              LoginResult.NO_CREDENTIAL)
        send_our_certs(ctx, own, out)
        try:
            choice = choose_signature(own.key, sa.auth_ext.hashes, sa.settings.signature)
            data = sign_auth(own.key, choice, ctx.my_octets())
        except LocalProtocolError as e:
            raise AuthFailure(str(e), LoginResult.NO_CREDENTIAL) from None
        out.append(AuthPayload(choice.method, data))
        sa.log.info("authentication of '%s' (myself) with %s, %s", me, choice.alg.name, describe_method(choice.method))

    def process(self, msg: Message) -> Status:
        return Status.DONE


class PubkeyVerifier(NoResume):
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        self.certificate: str | None = None  # the validated subject, for list-sas

    def build(self, out: list[Payload]) -> None:
        return None

    def process(self, msg: Message) -> Status:
        ctx, sa = self.ctx, self.ctx.sa
        peer = safe(ctx.peer)
        auth = msg.get(AuthPayload)
        if auth is None:
            raise AuthFailure(f"peer {peer} sent no AUTH payload, certificate authentication expected")
        if auth.method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            raise AuthFailure(f"peer {peer} authenticates with a pre-shared key, the connection expects a "
                              "certificate (pubkey)")
        leaf, others = self._certificates(msg, peer)
        try:
            result = sa.ctx.credentials.validate_peer(leaf, others, sa.ctx.wall_time(sa.now),
                                                      cacerts=sa.settings.remote_auth.cacerts,
                                                      identity=ctx.peer.to_wire())
        except CredentialError as e:
            raise AuthFailure(f"cannot check the certificate of {peer}: {e}", LoginResult.NO_CREDENTIAL) from None
        for note in result.notes:
            sa.log.info("certificate of %s: %s", peer, note)
        if not result.ok:
            raise AuthFailure(f"certificate of {peer} refused ({result.outcome.value}): {result.message}",
                              LoginResult.CERTIFICATE)
        try:
            alg = verify_auth(leaf.public_key(), auth.method, auth.data, ctx.peer_octets(),  # type: ignore[arg-type]
                              sa.settings.signature)
        except SignatureError as e:
            raise AuthFailure(f"authentication of {peer} with its certificate {cert_name(leaf)} failed: {e}") from None
        self.certificate = safe(leaf.subject.rfc4514_string())
        sa.log.info("authentication of '%s' with %s (%s) successful: %s", peer, alg.name,
                    describe_method(auth.method), result.message)
        return Status.DONE

    def _certificates(self, msg: Message, peer: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
        payloads = msg.get_all(CertPayload)
        x509_certs = [p.data for p in payloads if p.encoding == CertEncoding.X509_CERTIFICATE_SIGNATURE]
        if not x509_certs:
            other = f" (only CERT encodings {sorted({int(p.encoding) for p in payloads})})" if payloads else ""
            raise AuthFailure(f"peer {peer} sent no X.509 certificate{other}: ipsecd does not keep peer "
                              "certificates, the peer must send its own (swanctl: send_cert = always)",
                              LoginResult.CERTIFICATE)
        if len(x509_certs) > MAX_PEER_CERTS:
            raise AuthFailure(f"peer {peer} sent {len(x509_certs)} certificates, at most {MAX_PEER_CERTS} are "
                              "considered", LoginResult.CERTIFICATE)
        certs = []
        for i, der in enumerate(x509_certs):
            try:
                certs.append(x509.load_der_x509_certificate(der))
            except ValueError as e:
                raise AuthFailure(f"certificate {i + 1} of peer {peer} does not parse: {safe(e, 200)}",
                                  LoginResult.CERTIFICATE) from None
        return certs[0], certs[1:]
