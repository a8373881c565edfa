"""Small questions about certificates and CRLs that several modules ask.

Each answers "no" (None, False) instead of raising when an extension is absent or does
not parse, or a key cannot verify: callers decide what a "no" means for them.
"""

from __future__ import annotations

from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

# The key types IKE signature authentication uses (RFC 7296 3.8, RFC 4754, RFC 8420).
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
SIGNING_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})  # P-256/384/521

_E = TypeVar("_E", bound=x509.ExtensionType)


def extension(
    obj: x509.Certificate | x509.CertificateRevocationList | x509.RevokedCertificate, kind: type[_E]
) -> _E | None:
    """The value of the ``kind`` extension, or None when absent or malformed."""
    try:
        return obj.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints present with cA true."""
    bc = extension(cert, x509.BasicConstraints)
    return bc is not None and bc.ca


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issuer``'s name is ``cert``'s issuer and its key verifies ``cert``'s signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """``issuer``'s key verifies the CRL's signature (names are not compared)."""
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]  # X25519 etc.: TypeError
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False
