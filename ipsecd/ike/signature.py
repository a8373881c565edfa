"""Signature AUTH payload data: produce and verify it, and choose how to sign.

Methods (RFC 7296 3.8 and the IANA "IKEv2 Authentication Method" registry):

- 1, RSA Digital Signature: RSASSA-PKCS1-v1_5 over the signed octets with SHA-1.
  RFC 7296 does not name the hash; SHA-1 is what every implementation uses (strongSwan
  signs and verifies method 1 with SHA-1 only), and it is what Windows and Apple
  clients verify, because they do not implement RFC 7427.
- 9/10/11, ECDSA with SHA-256 on P-256, SHA-384 on P-384, SHA-512 on P-521 (RFC 4754):
  the signature is r || s, each left-padded to the size of the curve's order.
- 14, Digital Signature (RFC 7427 3): one octet giving the length of a DER
  AlgorithmIdentifier, the AlgorithmIdentifier, then the signature: RSASSA-PKCS1-v1_5
  or RSASSA-PSS (RFC 4055 parameters) with SHA-2, ECDSA with a DER Ecdsa-Sig-Value
  (RFC 3279 2.2.3), or Ed25519/Ed448 over the octets themselves (RFC 8420).

Policy (``SignaturePolicy``; the defaults match what real clients need):

- We sign with RFC 7427 only when the peer announced SIGNATURE_HASH_ALGORITHMS (RFC
  7427 4) with a hash we can use; otherwise with a classic method: RSA -> method 1
  (SHA-1), ECDSA -> 9/10/11 by curve.  EdDSA has no classic method, so an Ed25519 key
  cannot authenticate to a peer that did not announce hash algorithm Identity (RFC
  8420 2): :func:`choose_signature` says so instead of sending something that fails.
- SHA-1 is accepted and produced in classic method 1 (``classic_sha1``, on by default:
  without it an RSA gateway cannot serve Windows or Apple clients, Windows error 13838)
  but not inside RFC 7427 signatures (``rfc7427_sha1``, off by default): we never
  announce SHA-1, and a peer that speaks RFC 7427 can use SHA-2.
- RSA signs with PKCS#1 v1.5 under RFC 7427 unless ``rsa_pss`` (strongSwan's
  ``charon.rsa_pss``) asks for PSS; PSS signatures are always accepted.  We send the
  parameters as strongSwan does: SHA-2 hash, MGF1 with the same hash, salt length =
  hash length, trailerField left at its default (omitted).  We verify any salt length
  the peer declares, with exactly that length, and any SHA-2 MGF1 hash.

The signed octets come from :func:`ipsecd.ike.keymat.signed_octets`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ipsecd import der
from ipsecd.errors import LocalProtocolError, RemoteProtocolError
from ipsecd.iana import AuthMethod, HashAlgorithm, NotifyType
from ipsecd.x509util import PrivateKey, PublicKey


class KeyKind(StrEnum):
    RSA = "RSA"
    ECDSA = "ECDSA"
    ED25519 = "Ed25519"
    ED448 = "Ed448"


class SignatureError(RemoteProtocolError):
    """The peer's AUTH signature is malformed, refused by policy, or does not verify."""

    def __init__(self, message: str) -> None:
        super().__init__(message, NotifyType.AUTHENTICATION_FAILED)


@dataclass(frozen=True)
class SignaturePolicy:
    """What we sign with and accept (see the module docstring for why these defaults)."""

    rsa_pss: bool = False  # sign RSA with RSASSA-PSS under RFC 7427
    classic_sha1: bool = True  # AUTH method 1 (RSA PKCS#1 v1.5 with SHA-1), both ways
    rfc7427_sha1: bool = False  # SHA-1 inside RFC 7427 signatures: announce and accept it


@dataclass(frozen=True)
class SigAlg:
    """One signature algorithm, as an RFC 7427 AlgorithmIdentifier names it."""

    kind: KeyKind
    hash: HashAlgorithm  # IDENTITY for EdDSA, which signs the octets themselves
    pss: bool = False
    mgf1_hash: HashAlgorithm | None = None  # PSS only
    salt_len: int = 0  # PSS only

    @property
    def name(self) -> str:
        if self.kind in (KeyKind.ED25519, KeyKind.ED448):
            return self.kind.value
        hash_name = _HASH_NAMES[self.hash]
        if self.pss:
            mgf = _HASH_NAMES[self.mgf1_hash or HashAlgorithm.SHA1]
            return f"RSASSA-PSS {hash_name} (MGF1 {mgf}, salt {self.salt_len})"
        if self.kind == KeyKind.RSA:
            return f"RSA PKCS#1 v1.5 {hash_name}"
        return f"ECDSA {hash_name}"


@dataclass(frozen=True)
class SignatureChoice:
    """How to sign: the AUTH method and, within it, the algorithm."""

    method: AuthMethod
    alg: SigAlg


_HASHES: dict[HashAlgorithm, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_HASH_NAMES = {
    HashAlgorithm.SHA1: "SHA-1",
    HashAlgorithm.SHA2_256: "SHA-256",
    HashAlgorithm.SHA2_384: "SHA-384",
    HashAlgorithm.SHA2_512: "SHA-512",
    HashAlgorithm.IDENTITY: "Identity",
}
# RFC 3279 2.2.1 / RFC 5754 2 hash OIDs (id-sha1, id-sha256, id-sha384, id-sha512)
_HASH_OIDS = {
    HashAlgorithm.SHA1: "1.3.14.3.2.26",
    HashAlgorithm.SHA2_256: "2.16.840.1.101.3.4.2.1",
    HashAlgorithm.SHA2_384: "2.16.840.1.101.3.4.2.2",
    HashAlgorithm.SHA2_512: "2.16.840.1.101.3.4.2.3",
}
_OID_HASHES = {oid: h for h, oid in _HASH_OIDS.items()}
RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
MGF1_OID = "1.2.840.113549.1.1.8"
_PSS_DEFAULT_SALT = 20  # RFC 4055 3.1: the defaults are SHA-1, MGF1 with SHA-1, 20 octets
_PSS_MAX_SALT = 1024  # anything larger cannot fit an RSA-8192 modulus
# Every AlgorithmIdentifier without parameters to interpret (RFC 7427 Appendix A, RFC 8420 2).
_SIMPLE_OIDS: dict[str, tuple[KeyKind, HashAlgorithm]] = {
    "1.2.840.113549.1.1.5": (KeyKind.RSA, HashAlgorithm.SHA1),  # sha1WithRSAEncryption
    "1.2.840.113549.1.1.11": (KeyKind.RSA, HashAlgorithm.SHA2_256),
    "1.2.840.113549.1.1.12": (KeyKind.RSA, HashAlgorithm.SHA2_384),
    "1.2.840.113549.1.1.13": (KeyKind.RSA, HashAlgorithm.SHA2_512),
    "1.2.840.10045.4.1": (KeyKind.ECDSA, HashAlgorithm.SHA1),  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.2": (KeyKind.ECDSA, HashAlgorithm.SHA2_256),
    "1.2.840.10045.4.3.3": (KeyKind.ECDSA, HashAlgorithm.SHA2_384),
    "1.2.840.10045.4.3.4": (KeyKind.ECDSA, HashAlgorithm.SHA2_512),
    "1.3.101.112": (KeyKind.ED25519, HashAlgorithm.IDENTITY),  # id-Ed25519 (RFC 8410)
    "1.3.101.113": (KeyKind.ED448, HashAlgorithm.IDENTITY),
}
_SIMPLE_BY_ALG = {alg: oid for oid, alg in _SIMPLE_OIDS.items()}
# RFC 4754 / RFC 7296 3.8: the classic method of each curve, its hash and the size of r and s.
_CLASSIC_ECDSA: dict[AuthMethod, tuple[str, HashAlgorithm, int]] = {
    AuthMethod.ECDSA_SHA_256_P256: ("secp256r1", HashAlgorithm.SHA2_256, 32),
    AuthMethod.ECDSA_SHA_384_P384: ("secp384r1", HashAlgorithm.SHA2_384, 48),
    AuthMethod.ECDSA_SHA_512_P521: ("secp521r1", HashAlgorithm.SHA2_512, 66),
}
_CURVE_METHOD = {curve: method for method, (curve, _, _) in _CLASSIC_ECDSA.items()}
_SHA2 = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)
# Our order of preference when signing with RFC 7427: the hash that matches the key's
# strength first (RFC 5656 6.2.1 pairing for curves), then the others, SHA-1 last.
_PREFERENCE: dict[str, tuple[HashAlgorithm, ...]] = {
    "RSA": (*_SHA2, HashAlgorithm.SHA1),
    "secp256r1": (*_SHA2, HashAlgorithm.SHA1),
    "secp384r1": (HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_256, HashAlgorithm.SHA1),
    "secp521r1": (HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256, HashAlgorithm.SHA1),
    "Ed25519": (HashAlgorithm.IDENTITY,),
    "Ed448": (HashAlgorithm.IDENTITY,),
}


# ---------------------------------------------------------------- SIGNATURE_HASH_ALGORITHMS


def announced_hash_algorithms(policy: SignaturePolicy = SignaturePolicy()) -> bytes:
    """Notify data of the SIGNATURE_HASH_ALGORITHMS we send (RFC 7427 4, RFC 8420 2)."""
    ours = [*_SHA2, HashAlgorithm.IDENTITY]
    if policy.rfc7427_sha1:
        ours.append(HashAlgorithm.SHA1)
    return b"".join(struct.pack("!H", h) for h in ours)


def parse_hash_algorithms(data: bytes) -> frozenset[HashAlgorithm]:
    """The hash algorithms a peer announced; unknown values are ignored (RFC 7427 4)."""
    if len(data) % 2:
        raise RemoteProtocolError(f"SIGNATURE_HASH_ALGORITHMS: odd length {len(data)}", NotifyType.INVALID_SYNTAX)
    known = {h.value for h in HashAlgorithm}
    found = frozenset(HashAlgorithm(v) for (v,) in struct.iter_unpack("!H", data) if v in known)
    # Every IKE SA keeps its peer's set (216 bytes); peers announce the same few sets, and
    # there are only 2^len(HashAlgorithm) of them, so one shared copy of each (issue 11).
    return _HASH_SETS.setdefault(found, found)


_HASH_SETS: dict[frozenset[HashAlgorithm], frozenset[HashAlgorithm]] = {}


# ---------------------------------------------------------------- choosing


def key_kind(key: PrivateKey | PublicKey) -> KeyKind:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return KeyKind.RSA
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVE_METHOD:
            raise LocalProtocolError(f"ECDSA on {key.curve.name} is not supported (P-256, P-384, P-521 are)")
        return KeyKind.ECDSA
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return KeyKind.ED25519
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return KeyKind.ED448
    raise LocalProtocolError(f"{type(key).__name__} keys cannot sign IKE AUTH payloads")


def choose_signature(
    key: PrivateKey, peer_hashes: frozenset[HashAlgorithm] | None, policy: SignaturePolicy = SignaturePolicy()
) -> SignatureChoice:
    """How to sign with ``key`` for a peer that announced ``peer_hashes`` (None: no notify at all).

    Raises LocalProtocolError, with a sentence for the admin, when no method works.
    """
    kind = key_kind(key)
    family = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else kind.value
    if peer_hashes is not None:
        for h in _PREFERENCE[family]:
            if h in peer_hashes and (h != HashAlgorithm.SHA1 or policy.rfc7427_sha1):
                if kind == KeyKind.RSA and policy.rsa_pss:
                    alg = SigAlg(kind, h, pss=True, mgf1_hash=h, salt_len=_HASHES[h]().digest_size)
                else:
                    alg = SigAlg(kind, h)
                return SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, alg)
    if kind in (KeyKind.ED25519, KeyKind.ED448):
        why = "announced no SIGNATURE_HASH_ALGORITHMS" if peer_hashes is None else "did not announce Identity (5)"
        raise LocalProtocolError(
            f"cannot sign with an {kind.value} key: the peer {why}, and {kind.value} has no classic AUTH method "
            "(RFC 8420 needs RFC 7427 support); use an RSA or ECDSA certificate for such peers"
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        method = _CURVE_METHOD[key.curve.name]
        return SignatureChoice(method, SigAlg(KeyKind.ECDSA, _CLASSIC_ECDSA[method][1]))
    if not policy.classic_sha1:
        raise LocalProtocolError(
            "cannot sign with the RSA key: the peer does not support RFC 7427 signatures with SHA-2, and classic "
            "RSA AUTH (method 1) uses SHA-1, which the configuration refuses"
        )
    return SignatureChoice(AuthMethod.RSA_DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, HashAlgorithm.SHA1))


# ---------------------------------------------------------------- producing


def sign_auth(key: PrivateKey, choice: SignatureChoice, octets: bytes) -> bytes:
    """The AUTH payload data (after the method octet and reserved bytes) for ``choice``."""
    alg = choice.alg
    if key_kind(key) != alg.kind:
        raise LocalProtocolError(f"a {key_kind(key).value} key cannot make a {alg.name} signature")
    if choice.method == AuthMethod.DIGITAL_SIGNATURE:
        prefix = encode_algorithm_identifier(alg)
        return bytes((len(prefix),)) + prefix + _sign(key, alg, octets)
    if choice.method == AuthMethod.RSA_DIGITAL_SIGNATURE and alg == SigAlg(KeyKind.RSA, HashAlgorithm.SHA1):
        return _sign(key, alg, octets)
    if choice.method in _CLASSIC_ECDSA and isinstance(key, ec.EllipticCurvePrivateKey):
        curve, hash_alg, size = _CLASSIC_ECDSA[choice.method]
        if key.curve.name == curve and alg.hash == hash_alg:
            r, s = decode_dss_signature(_sign(key, alg, octets))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise LocalProtocolError(f"AUTH method {choice.method.name} cannot carry a {alg.name} signature by this key")


def _sign(key: PrivateKey, alg: SigAlg, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key.sign(data)
    hash_alg = _HASHES[alg.hash]()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hash_alg))
    return key.sign(data, _rsa_padding(alg), hash_alg)


def _rsa_padding(alg: SigAlg) -> padding.AsymmetricPadding:
    if not alg.pss:
        return padding.PKCS1v15()
    return padding.PSS(mgf=padding.MGF1(_HASHES[alg.mgf1_hash or HashAlgorithm.SHA1]()), salt_length=alg.salt_len)


# ---------------------------------------------------------------- verifying


def verify_auth(
    public_key: PublicKey, method: int, data: bytes, octets: bytes, policy: SignaturePolicy = SignaturePolicy()
) -> SigAlg:
    """Check a peer's AUTH payload data; return the algorithm it used (for the log).

    Raises SignatureError (notify AUTHENTICATION_FAILED) for malformed data, an
    algorithm our policy refuses, a method that does not fit the key, or a bad signature.
    """
    try:
        kind = key_kind(public_key)
    except LocalProtocolError as e:
        raise SignatureError(str(e)) from None
    if method == AuthMethod.DIGITAL_SIGNATURE:
        alg, signature = _split_rfc7427(data)
        _check_rfc7427_policy(alg, policy)
    elif method == AuthMethod.RSA_DIGITAL_SIGNATURE:
        if not policy.classic_sha1:
            raise SignatureError("AUTH method 1 (RSA with SHA-1) is refused by the configuration")
        alg, signature = SigAlg(KeyKind.RSA, HashAlgorithm.SHA1), data
    elif method in _CLASSIC_ECDSA:
        curve, hash_alg, size = _CLASSIC_ECDSA[AuthMethod(method)]
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != curve:
            raise SignatureError(f"AUTH method {AuthMethod(method).name} needs a {curve} key, the peer's is {kind}")
        if len(data) != 2 * size:
            raise SignatureError(f"AUTH method {AuthMethod(method).name}: {len(data)} bytes, expected {2 * size}")
        alg = SigAlg(KeyKind.ECDSA, hash_alg)
        signature = encode_dss_signature(int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big"))
    else:
        raise SignatureError(f"AUTH method {method} is not a signature method")
    if alg.kind != kind:
        raise SignatureError(f"{alg.name} signature, but the peer's key is {kind.value}")
    if not signature:
        raise SignatureError(f"{alg.name}: empty signature")
    try:
        _verify(public_key, alg, signature, octets)
    except (InvalidSignature, ValueError):
        raise SignatureError(f"{alg.name} signature does not verify with the peer's key") from None
    return alg


def _split_rfc7427(data: bytes) -> tuple[SigAlg, bytes]:
    # RFC 7427 3: ASN.1 Length (1 octet) | AlgorithmIdentifier | Signature Value
    if not data or data[0] == 0 or len(data) < 1 + data[0]:
        raise SignatureError(f"RFC 7427 AUTH data of {len(data)} bytes is truncated")
    try:
        alg = decode_algorithm_identifier(data[1 : 1 + data[0]])
    except ValueError as e:  # DerError included
        raise SignatureError(f"RFC 7427 AlgorithmIdentifier not accepted: {e}") from None
    return alg, data[1 + data[0] :]


def _check_rfc7427_policy(alg: SigAlg, policy: SignaturePolicy) -> None:
    used = {alg.hash, alg.mgf1_hash or alg.hash}
    if HashAlgorithm.SHA1 in used and not policy.rfc7427_sha1:
        raise SignatureError(f"{alg.name}: SHA-1 in RFC 7427 signatures is refused (we did not announce it)")


def _verify(key: PublicKey, alg: SigAlg, signature: bytes, data: bytes) -> None:
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(_HASHES[alg.hash]()))
    else:
        key.verify(signature, data, _rsa_padding(alg), _HASHES[alg.hash]())


# ---------------------------------------------------------------- AlgorithmIdentifier


def encode_algorithm_identifier(alg: SigAlg) -> bytes:
    """The DER AlgorithmIdentifier of ``alg`` as strongSwan encodes it (RFC 7427 Appendix A)."""
    if alg.pss:
        return der.algorithm_identifier(RSASSA_PSS_OID, _pss_params(alg))
    oid = _SIMPLE_BY_ALG.get((alg.kind, alg.hash))
    if oid is None:
        raise LocalProtocolError(f"no AlgorithmIdentifier for {alg.kind.value} with {_HASH_NAMES[alg.hash]}")
    # RFC 4055 / RFC 7427 A.1: RSA PKCS#1 identifiers carry NULL parameters;
    # RFC 5758 3.2 and RFC 8410 3: ECDSA and EdDSA identifiers carry none.
    return der.algorithm_identifier(oid, der.null() if alg.kind == KeyKind.RSA else None)


def _pss_params(alg: SigAlg) -> bytes:
    # RFC 4055 3.1 RSASSA-PSS-params; DER leaves out every field equal to its default
    fields = []
    if alg.hash != HashAlgorithm.SHA1:
        fields.append(der.encode(der.context(0), _hash_identifier(alg.hash)))
    mgf1 = alg.mgf1_hash or HashAlgorithm.SHA1
    if mgf1 != HashAlgorithm.SHA1:
        fields.append(der.encode(der.context(1), der.algorithm_identifier(MGF1_OID, _hash_identifier(mgf1))))
    if alg.salt_len != _PSS_DEFAULT_SALT:
        fields.append(der.encode(der.context(2), der.encode_integer(alg.salt_len)))
    return der.sequence(*fields)


def _hash_identifier(h: HashAlgorithm) -> bytes:
    return der.algorithm_identifier(_HASH_OIDS[h], der.null())  # with NULL, as strongSwan sends it


def decode_algorithm_identifier(data: bytes) -> SigAlg:
    """The algorithm an RFC 7427 AlgorithmIdentifier names; ValueError if we do not know it."""
    oid, params = der.parse_algorithm_identifier(data)
    if oid == RSASSA_PSS_OID:
        return _decode_pss_params(params)
    if oid not in _SIMPLE_OIDS:
        raise der.DerError(f"unknown signature algorithm {oid}")
    kind, hash_alg = _SIMPLE_OIDS[oid]
    # NULL or absent parameters are both seen in the wild for RSA and ECDSA; EdDSA has none
    if params is not None and (kind in (KeyKind.ED25519, KeyKind.ED448) or params.raw != der.null()):
        raise der.DerError(f"unexpected parameters for {oid}")
    return SigAlg(kind, hash_alg)


def _decode_pss_params(params: der.Tlv | None) -> SigAlg:
    hash_alg = mgf1 = HashAlgorithm.SHA1
    salt = _PSS_DEFAULT_SALT
    fields = params.expect(der.SEQUENCE, "RSASSA-PSS-params").children() if params is not None else []
    last = -1
    for field in fields:
        number = field.tag - der.context(0)
        if not 0 <= number <= 3 or number <= last:  # [0]..[3], each at most once, in order
            raise der.DerError(f"RSASSA-PSS-params: unexpected field 0x{field.tag:02x}")
        last = number
        children = field.children()
        if len(children) != 1:
            raise der.DerError(f"RSASSA-PSS-params: field [{number}] must hold one element")
        inner = children[0]
        if number == 0:
            hash_alg = _decode_hash_identifier(inner.raw)
        elif number == 1:
            mgf_oid, mgf_params = der.parse_algorithm_identifier(inner.raw)
            if mgf_oid != MGF1_OID or mgf_params is None:
                raise der.DerError(f"RSASSA-PSS-params: mask generation {mgf_oid} is not MGF1")
            mgf1 = _decode_hash_identifier(mgf_params.raw)
        elif number == 2:
            salt = der.decode_integer(inner, "saltLength")
            if salt > _PSS_MAX_SALT:
                raise der.DerError(f"RSASSA-PSS-params: salt length {salt}")
        elif der.decode_integer(inner, "trailerField") != 1:  # RFC 4055 3.1: MUST be 1
            raise der.DerError("RSASSA-PSS-params: trailerField is not 1")
    return SigAlg(KeyKind.RSA, hash_alg, pss=True, mgf1_hash=mgf1, salt_len=salt)


def _decode_hash_identifier(data: bytes) -> HashAlgorithm:
    oid, params = der.parse_algorithm_identifier(data)
    if oid not in _OID_HASHES:
        raise der.DerError(f"unknown hash algorithm {oid}")
    if params is not None and params.raw != der.null():  # RFC 4055 2.1: NULL or absent
        raise der.DerError(f"unexpected parameters for hash {oid}")
    return _OID_HASHES[oid]
