"""Signature AUTH (ipsecd.ike.signature): every method with every key type, RFC 7427 Appendix A
and RFC 8420 AlgorithmIdentifiers as known answers, the openssl CLI as an independent signer
and verifier, the chooser's decisions for Windows/Apple/strongSwan peers, and refusals."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ipsecd import der
from ipsecd.errors import LocalProtocolError, RemoteProtocolError
from ipsecd.iana import AuthMethod, HashAlgorithm, NotifyType
from ipsecd.ike.signature import (
    KeyKind,
    SigAlg,
    SignatureChoice,
    SignatureError,
    SignaturePolicy,
    announced_hash_algorithms,
    choose_signature,
    decode_algorithm_identifier,
    encode_algorithm_identifier,
    parse_hash_algorithms,
    sign_auth,
    verify_auth,
)
from tests.pki import KEY_KINDS, KeyPool

H = HashAlgorithm
OCTETS = b"RealMessage1 | NonceRData | prf(SK_pi, IDi')" * 7  # what keymat.signed_octets would give
SHA2 = (H.SHA2_256, H.SHA2_384, H.SHA2_512)
ALL_PEER_HASHES = frozenset({*SHA2, H.IDENTITY})


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


@pytest.fixture
def keys(key_pool: KeyPool) -> KeyPool:
    return key_pool


def methods_for(kind: str) -> list[SignatureChoice]:
    """Every (method, algorithm) a key of this kind can sign with."""
    if kind.startswith("rsa"):
        out = [SignatureChoice(AuthMethod.RSA_DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA1))]
        for hh in SHA2:
            out.append(SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, hh)))
            salt = {H.SHA2_256: 32, H.SHA2_384: 48, H.SHA2_512: 64}[hh]
            out.append(SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, hh, True, hh, salt)))
        return out
    if kind.startswith("p"):
        classic = {"p256": (AuthMethod.ECDSA_SHA_256_P256, H.SHA2_256), "p384": (AuthMethod.ECDSA_SHA_384_P384,
                   H.SHA2_384), "p521": (AuthMethod.ECDSA_SHA_512_P521, H.SHA2_512)}[kind]
        return [SignatureChoice(classic[0], SigAlg(KeyKind.ECDSA, classic[1]))] + [
            SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.ECDSA, hh)) for hh in SHA2
        ]
    return [SignatureChoice(AuthMethod.DIGITAL_SIGNATURE,
                            SigAlg(KeyKind.ED25519 if kind == "ed25519" else KeyKind.ED448, H.IDENTITY))]


CASES = [(kind, choice) for kind in KEY_KINDS for choice in methods_for(kind)]


@pytest.mark.parametrize(("kind", "choice"), CASES, ids=[f"{k}-{c.method.name}-{c.alg.name}" for k, c in CASES])
def test_round_trip_and_wrong_key(keys: KeyPool, kind: str, choice: SignatureChoice) -> None:
    key = keys.get(kind)
    data = sign_auth(key, choice, OCTETS)
    assert verify_auth(key.public_key(), choice.method, data, OCTETS) == choice.alg
    other = keys.get(kind, "other")
    with pytest.raises(SignatureError) as err:
        verify_auth(other.public_key(), choice.method, data, OCTETS)
    assert err.value.notify == NotifyType.AUTHENTICATION_FAILED
    with pytest.raises(SignatureError):
        verify_auth(key.public_key(), choice.method, data, OCTETS + b"x")


@pytest.mark.parametrize(("kind", "choice"), CASES, ids=[f"{k}-{c.method.name}-{c.alg.name}" for k, c in CASES])
def test_truncated_data_is_refused(keys: KeyPool, kind: str, choice: SignatureChoice) -> None:
    key = keys.get(kind)
    data = sign_auth(key, choice, OCTETS)
    for cut in (b"", data[:1], data[: len(data) // 2], data[:-1]):
        with pytest.raises(SignatureError):
            verify_auth(key.public_key(), choice.method, cut, OCTETS)


def test_classic_ecdsa_is_fixed_size_r_s(keys: KeyPool) -> None:
    """RFC 4754 7: r and s each padded to the group order size (66 bytes on P-521)."""
    for kind, method, size in (("p256", AuthMethod.ECDSA_SHA_256_P256, 32), ("p384", AuthMethod.ECDSA_SHA_384_P384, 48),
                               ("p521", AuthMethod.ECDSA_SHA_512_P521, 66)):
        key = keys.get(kind)
        choice = choose_signature(key, None)  # type: ignore[arg-type]
        assert choice.method == method
        data = sign_auth(key, choice, OCTETS)
        assert len(data) == 2 * size


def test_rfc7427_layout(keys: KeyPool) -> None:
    """RFC 7427 3: ASN.1 length octet, AlgorithmIdentifier, then the signature (DER for ECDSA)."""
    key = keys.get("p384")
    data = sign_auth(key, SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.ECDSA, H.SHA2_384)), OCTETS)
    assert data[0] == 12 and data[1:13] == h("300a06082a8648ce3d040303")
    r, s = decode_dss_signature(data[13:])  # a DER Ecdsa-Sig-Value
    key.public_key().verify(encode_dss_signature(r, s), OCTETS, ec.ECDSA(hashes.SHA384()))


# RFC 7427 Appendix A and RFC 8420 2: the AlgorithmIdentifiers byte for byte.
KNOWN_ALGORITHM_IDENTIFIERS = [
    ("A.1.1 sha1WithRSAEncryption", SigAlg(KeyKind.RSA, H.SHA1), "300d06092a864886f70d0101050500"),
    ("A.1.2 sha256WithRSAEncryption", SigAlg(KeyKind.RSA, H.SHA2_256), "300d06092a864886f70d01010b0500"),
    ("A.1.3 sha384WithRSAEncryption", SigAlg(KeyKind.RSA, H.SHA2_384), "300d06092a864886f70d01010c0500"),
    ("A.1.4 sha512WithRSAEncryption", SigAlg(KeyKind.RSA, H.SHA2_512), "300d06092a864886f70d01010d0500"),
    ("A.3.1 ecdsa-with-sha1", SigAlg(KeyKind.ECDSA, H.SHA1), "3009 06072a8648ce3d0401"),
    ("A.3.2 ecdsa-with-sha256", SigAlg(KeyKind.ECDSA, H.SHA2_256), "300a 06082a8648ce3d040302"),
    ("A.3.3 ecdsa-with-sha384", SigAlg(KeyKind.ECDSA, H.SHA2_384), "300a 06082a8648ce3d040303"),
    ("A.3.4 ecdsa-with-sha512", SigAlg(KeyKind.ECDSA, H.SHA2_512), "300a 06082a8648ce3d040304"),
    ("A.4.1 RSASSA-PSS with empty parameters", SigAlg(KeyKind.RSA, H.SHA1, True, H.SHA1, 20),
     "300d06092a864886f70d01010a3000"),
    ("A.4.3 RSASSA-PSS with SHA-256", SigAlg(KeyKind.RSA, H.SHA2_256, True, H.SHA2_256, 32),
     "3041 0609 2a86 4886 f70d 0101 0a30 34a0 0f30 0d06 0960 8648 0165 0304 0201 0500"
     "a11c 301a 0609 2a86 4886 f70d 0101 0830 0d06 0960 8648 0165 0304 0201 0500 a203 0201 20"),
    ("RFC 8420 id-Ed25519", SigAlg(KeyKind.ED25519, H.IDENTITY), "300506032b6570"),
    ("RFC 8420 id-Ed448", SigAlg(KeyKind.ED448, H.IDENTITY), "300506032b6571"),
]


@pytest.mark.parametrize(("label", "alg", "encoding"), KNOWN_ALGORITHM_IDENTIFIERS,
                         ids=[c[0] for c in KNOWN_ALGORITHM_IDENTIFIERS])
def test_algorithm_identifier_known_answers(label: str, alg: SigAlg, encoding: str) -> None:
    assert encode_algorithm_identifier(alg) == h(encoding)
    assert decode_algorithm_identifier(h(encoding)) == alg


def test_rfc7427_a42_explicit_default_pss_parameters_decode() -> None:
    """A.4.2 spells out every default (not DER, but what the RFC shows): still SHA-1, MGF1-SHA-1, 20."""
    a42 = h("303e 0609 2a86 4886 f70d 0101 0a30 31a0 0b30 0906 052b 0e03 021a 0500 a118 3016"
            "0609 2a86 4886 f70d 0101 0830 0906 052b 0e03 021a 0500 a203 0201 14a3 0302 0101")
    assert decode_algorithm_identifier(a42) == SigAlg(KeyKind.RSA, H.SHA1, True, H.SHA1, 20)


def test_algorithm_identifier_variants_accepted() -> None:
    """RSA PKCS#1 without NULL and hash identifiers without NULL are seen in the wild (RFC 4055 2.1)."""
    assert decode_algorithm_identifier(h("300b06092a864886f70d01010b")) == SigAlg(KeyKind.RSA, H.SHA2_256)
    no_null = h("303d06092a864886f70d01010a3030a00d300b0609608648016503040202a11a301806092a864886f70d010108"
                "300b0609608648016503040202a203020130")
    assert decode_algorithm_identifier(no_null) == SigAlg(KeyKind.RSA, H.SHA2_384, True, H.SHA2_384, 48)


RSA_PSS = "1.2.840.113549.1.1.10"
SHA256_ID = der.algorithm_identifier("2.16.840.1.101.3.4.2.1", der.null())


def _pss(*fields: bytes) -> bytes:
    return der.algorithm_identifier(RSA_PSS, der.sequence(*fields))


def _field(n: int, *inner: bytes) -> bytes:
    return der.encode(der.context(n), b"".join(inner))


BAD_ALGORITHM_IDENTIFIERS = {
    "empty": b"",
    "truncated": h("300d06092a864886f70d01010b05"),
    "three elements": der.sequence(der.encode_oid("1.2.840.113549.1.1.11"), der.null(), der.null()),
    "trailing byte": h("300a06082a8648ce3d040302") + b"\x00",
    "Ed25519 with NULL parameters (RFC 8410 3: absent)": der.algorithm_identifier("1.3.101.112", der.null()),
    "ECDSA with an INTEGER parameter": der.algorithm_identifier("1.2.840.10045.4.3.2", der.encode_integer(1)),
    "md5WithRSAEncryption": der.algorithm_identifier("1.2.840.113549.1.1.4", der.null()),
    "PSS parameters not a SEQUENCE": der.algorithm_identifier(RSA_PSS, der.null()),
    "PSS trailerField 2": _pss(_field(3, der.encode_integer(2))),
    "PSS fields out of order": _pss(_field(2, der.encode_integer(32)), _field(0, SHA256_ID)),
    "PSS field twice": _pss(_field(0, SHA256_ID), _field(0, SHA256_ID)),
    "PSS field [4]": _pss(_field(4, der.encode_integer(1))),
    "PSS field with two elements": _pss(_field(0, SHA256_ID, SHA256_ID)),
    "PSS hash SHA-224": _pss(_field(0, der.algorithm_identifier("2.16.840.1.101.3.4.2.4", der.null()))),
    "PSS hash with a parameter": _pss(_field(0, der.algorithm_identifier("2.16.840.1.101.3.4.2.1",
                                                                         der.encode_integer(0)))),
    "PSS mask generation not MGF1": _pss(_field(1, der.algorithm_identifier("1.2.840.113549.1.1.11", SHA256_ID))),
    "PSS MGF1 without its hash": _pss(_field(1, der.algorithm_identifier("1.2.840.113549.1.1.8"))),
    "PSS salt 64000": _pss(_field(2, der.encode_integer(64000))),
    "PSS negative salt": _pss(_field(2, der.encode(der.INTEGER, b"\xff"))),
    "PSS salt not minimal": _pss(_field(2, der.encode(der.INTEGER, b"\x00\x20"))),
    "indefinite length": h("3080060 82a8648ce3d0403020000".replace(" ", "")),
}


@pytest.mark.parametrize("label", list(BAD_ALGORITHM_IDENTIFIERS))
def test_algorithm_identifier_refusals(label: str) -> None:
    with pytest.raises(ValueError):
        decode_algorithm_identifier(BAD_ALGORITHM_IDENTIFIERS[label])


@pytest.mark.parametrize("salt", [0, 20, 32, 64, 222])
def test_pss_salt_length_variants(keys: KeyPool, salt: int) -> None:
    """Any declared salt length verifies with exactly that length; 222 is the maximum for RSA-2048/SHA-256."""
    key = keys.get("rsa2048")
    alg = SigAlg(KeyKind.RSA, H.SHA2_256, True, H.SHA2_256, salt)
    data = sign_auth(key, SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, alg), OCTETS)
    assert verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS) == alg
    # the same signature under a different declared salt length must not verify
    lied = SigAlg(KeyKind.RSA, H.SHA2_256, True, H.SHA2_256, salt + 1 if salt < 222 else 0)
    prefix = encode_algorithm_identifier(lied)
    signature = data[1 + data[0]:]
    with pytest.raises(SignatureError):
        verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, bytes([len(prefix)]) + prefix + signature, OCTETS)


def test_pss_mgf1_hash_may_differ(keys: KeyPool) -> None:
    key = keys.get("rsa3072")
    alg = SigAlg(KeyKind.RSA, H.SHA2_512, True, H.SHA2_256, 17)
    data = sign_auth(key, SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, alg), OCTETS)
    assert verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS) == alg


def test_method_and_key_mismatch(keys: KeyPool) -> None:
    rsa_key, p256, p384, ed = keys.get("rsa2048"), keys.get("p256"), keys.get("p384"), keys.get("ed25519")
    rsa_classic = sign_auth(rsa_key, SignatureChoice(AuthMethod.RSA_DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA1)),
                            OCTETS)
    ecdsa_classic = sign_auth(p256, choose_signature(p256, None), OCTETS)
    ecdsa_7427 = sign_auth(p256, choose_signature(p256, ALL_PEER_HASHES), OCTETS)
    ed_sig = sign_auth(ed, choose_signature(ed, ALL_PEER_HASHES), OCTETS)
    with pytest.raises(SignatureError, match="needs a secp256r1 key"):
        verify_auth(rsa_key.public_key(), AuthMethod.ECDSA_SHA_256_P256, ecdsa_classic, OCTETS)
    with pytest.raises(SignatureError, match="needs a secp256r1 key"):
        verify_auth(p384.public_key(), AuthMethod.ECDSA_SHA_256_P256, ecdsa_classic, OCTETS)
    with pytest.raises(SignatureError, match="key is ECDSA"):
        verify_auth(p256.public_key(), AuthMethod.RSA_DIGITAL_SIGNATURE, rsa_classic, OCTETS)
    with pytest.raises(SignatureError, match="key is RSA"):
        verify_auth(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, ecdsa_7427, OCTETS)
    with pytest.raises(SignatureError, match="key is Ed448"):
        verify_auth(keys.get("ed448").public_key(), AuthMethod.DIGITAL_SIGNATURE, ed_sig, OCTETS)
    with pytest.raises(SignatureError, match="not a signature method"):
        verify_auth(p256.public_key(), AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, ecdsa_classic, OCTETS)
    with pytest.raises(LocalProtocolError):  # our side: the key cannot make that signature
        sign_auth(p256, SignatureChoice(AuthMethod.RSA_DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA1)), OCTETS)
    with pytest.raises(LocalProtocolError):
        sign_auth(p384, SignatureChoice(AuthMethod.ECDSA_SHA_256_P256, SigAlg(KeyKind.ECDSA, H.SHA2_256)), OCTETS)


def test_classic_ecdsa_zero_r_refused(keys: KeyPool) -> None:
    key = keys.get("p256")
    with pytest.raises(SignatureError):
        verify_auth(key.public_key(), AuthMethod.ECDSA_SHA_256_P256, bytes(64), OCTETS)


def test_sha1_policy(keys: KeyPool) -> None:
    """SHA-1: classic method 1 by default (Windows, Apple), never inside RFC 7427 unless configured."""
    key = keys.get("rsa2048")
    classic = sign_auth(key, choose_signature(key, None), OCTETS)
    assert verify_auth(key.public_key(), AuthMethod.RSA_DIGITAL_SIGNATURE, classic, OCTETS).hash == H.SHA1
    with pytest.raises(SignatureError, match="refused by the configuration"):
        verify_auth(key.public_key(), AuthMethod.RSA_DIGITAL_SIGNATURE, classic, OCTETS,
                    SignaturePolicy(classic_sha1=False))
    sha1_7427 = sign_auth(key, SignatureChoice(AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA1)), OCTETS)
    with pytest.raises(SignatureError, match="SHA-1"):
        verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, sha1_7427, OCTETS)
    assert verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, sha1_7427, OCTETS,
                       SignaturePolicy(rfc7427_sha1=True)).hash == H.SHA1
    mgf_sha1 = sign_auth(key, SignatureChoice(AuthMethod.DIGITAL_SIGNATURE,
                                              SigAlg(KeyKind.RSA, H.SHA2_256, True, H.SHA1, 32)), OCTETS)
    with pytest.raises(SignatureError, match="SHA-1"):
        verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, mgf_sha1, OCTETS)


# ---------------------------------------------------------------- choosing


def test_chooser_windows_and_apple_get_classic_methods(keys: KeyPool) -> None:
    """No SIGNATURE_HASH_ALGORITHMS: RSA -> method 1 (SHA-1), ECDSA -> 9/10/11, EdDSA impossible."""
    assert choose_signature(keys.get("rsa4096"), None) == SignatureChoice(
        AuthMethod.RSA_DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA1))
    assert choose_signature(keys.get("p256"), None).method == AuthMethod.ECDSA_SHA_256_P256
    assert choose_signature(keys.get("p384"), None).method == AuthMethod.ECDSA_SHA_384_P384
    assert choose_signature(keys.get("p521"), None).method == AuthMethod.ECDSA_SHA_512_P521
    with pytest.raises(LocalProtocolError, match="announced no SIGNATURE_HASH_ALGORITHMS"):
        choose_signature(keys.get("ed25519"), None)
    with pytest.raises(LocalProtocolError, match="did not announce Identity"):
        choose_signature(keys.get("ed448"), frozenset(SHA2))
    with pytest.raises(LocalProtocolError, match="SHA-1, which the configuration refuses"):
        choose_signature(keys.get("rsa2048"), None, SignaturePolicy(classic_sha1=False))


def test_chooser_rfc7427_peers(keys: KeyPool) -> None:
    rsa_key = keys.get("rsa2048")
    assert choose_signature(rsa_key, ALL_PEER_HASHES) == SignatureChoice(
        AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA2_256))
    assert choose_signature(rsa_key, ALL_PEER_HASHES, SignaturePolicy(rsa_pss=True)).alg == SigAlg(
        KeyKind.RSA, H.SHA2_256, True, H.SHA2_256, 32)
    assert choose_signature(rsa_key, frozenset({H.SHA2_512})).alg == SigAlg(KeyKind.RSA, H.SHA2_512)
    assert choose_signature(keys.get("p384"), ALL_PEER_HASHES).alg == SigAlg(KeyKind.ECDSA, H.SHA2_384)
    assert choose_signature(keys.get("p521"), ALL_PEER_HASHES).alg == SigAlg(KeyKind.ECDSA, H.SHA2_512)
    assert choose_signature(keys.get("p521"), frozenset({H.SHA2_256})).alg == SigAlg(KeyKind.ECDSA, H.SHA2_256)
    assert choose_signature(keys.get("ed25519"), ALL_PEER_HASHES).alg == SigAlg(KeyKind.ED25519, H.IDENTITY)
    # a peer announcing only SHA-1: RFC 7427 with SHA-1 only when configured, else the classic method
    assert choose_signature(rsa_key, frozenset({H.SHA1})).method == AuthMethod.RSA_DIGITAL_SIGNATURE
    assert choose_signature(rsa_key, frozenset({H.SHA1}), SignaturePolicy(rfc7427_sha1=True)) == SignatureChoice(
        AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA1))
    assert choose_signature(keys.get("p256"), frozenset({H.IDENTITY})).method == AuthMethod.ECDSA_SHA_256_P256


def test_chooser_refuses_other_curves() -> None:
    with pytest.raises(LocalProtocolError, match="secp256k1"):
        choose_signature(ec.generate_private_key(ec.SECP256K1()), ALL_PEER_HASHES)


def test_hash_algorithms_notify() -> None:
    assert announced_hash_algorithms() == h("0002 0003 0004 0005")
    assert announced_hash_algorithms(SignaturePolicy(rfc7427_sha1=True)) == h("0002 0003 0004 0005 0001")
    assert parse_hash_algorithms(h("0002 0005 0007 ffff 0001")) == {H.SHA2_256, H.IDENTITY, H.SHA1}
    assert parse_hash_algorithms(b"") == frozenset()
    with pytest.raises(RemoteProtocolError) as err:
        parse_hash_algorithms(h("000200"))
    assert err.value.notify == NotifyType.INVALID_SYNTAX


# ---------------------------------------------------------------- openssl as an independent implementation

def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "OPENSSL_CONF": "/dev/null"})


def _write_keys(tmp_path: Path, key: object) -> tuple[Path, Path]:
    priv = tmp_path / "key.pem"
    pub = tmp_path / "pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


_DGST = {H.SHA1: "-sha1", H.SHA2_256: "-sha256", H.SHA2_384: "-sha384", H.SHA2_512: "-sha512"}


def _pss_opts(alg: SigAlg) -> list[str]:
    if not alg.pss:
        return []
    mgf = _DGST[alg.mgf1_hash or H.SHA1][1:]
    return ["-sigopt", "rsa_padding_mode:pss", "-sigopt", f"rsa_pss_saltlen:{alg.salt_len}",
            "-sigopt", f"rsa_mgf1_md:{mgf}"]


def _signature_part(choice: SignatureChoice, data: bytes, key: object) -> bytes:
    """The bare signature inside AUTH data, in the form openssl uses (DER for ECDSA)."""
    if choice.method == AuthMethod.DIGITAL_SIGNATURE:
        return data[1 + data[0]:]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        n = len(data) // 2
        return encode_dss_signature(int.from_bytes(data[:n], "big"), int.from_bytes(data[n:], "big"))
    return data


def _auth_data(choice: SignatureChoice, signature: bytes, key: object) -> bytes:
    if choice.method == AuthMethod.DIGITAL_SIGNATURE:
        prefix = encode_algorithm_identifier(choice.alg)
        return bytes([len(prefix)]) + prefix + signature
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(signature)
        n = (key.curve.key_size + 7) // 8
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")
    return signature


ORACLE_CASES = [(k, c) for k, c in CASES if k in ("rsa2048", "p256", "p384", "p521", "ed25519", "ed448")]


@pytest.mark.parametrize(("kind", "choice"), ORACLE_CASES,
                         ids=[f"{k}-{c.method.name}-{c.alg.name}" for k, c in ORACLE_CASES])
def test_openssl_verifies_ours_and_we_verify_openssls(tmp_path: Path, keys: KeyPool, kind: str,
                                                        choice: SignatureChoice) -> None:
    key = keys.get(kind)
    priv, pub = _write_keys(tmp_path, key)
    data_file, sig_file = tmp_path / "octets", tmp_path / "sig"
    data_file.write_bytes(OCTETS)
    ours = sign_auth(key, choice, OCTETS)
    sig_file.write_bytes(_signature_part(choice, ours, key))
    if choice.alg.kind in (KeyKind.ED25519, KeyKind.ED448):
        verify = ["pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in", str(data_file),
                  "-sigfile", str(sig_file)]
        sign = ["pkeyutl", "-sign", "-inkey", str(priv), "-rawin", "-in", str(data_file), "-out", str(sig_file)]
    else:
        opts = [_DGST[choice.alg.hash], *_pss_opts(choice.alg)]
        verify = ["dgst", *opts, "-verify", str(pub), "-signature", str(sig_file), str(data_file)]
        sign = ["dgst", *opts, "-sign", str(priv), "-out", str(sig_file), str(data_file)]
    result = _openssl(*verify)
    assert result.returncode == 0 and "Verified" in result.stdout + result.stderr, result
    result = _openssl(*sign)
    assert result.returncode == 0, result
    theirs = _auth_data(choice, sig_file.read_bytes(), key)
    policy = SignaturePolicy(rfc7427_sha1=True)
    assert verify_auth(key.public_key(), choice.method, theirs, OCTETS, policy) == choice.alg


def test_openssl_parses_our_pss_algorithm_identifier(tmp_path: Path) -> None:
    """The RSASSA-PSS parameters we send, as openssl's independent ASN.1 parser reads them."""
    der_file = tmp_path / "alg.der"
    der_file.write_bytes(encode_algorithm_identifier(SigAlg(KeyKind.RSA, H.SHA2_384, True, H.SHA2_384, 48)))
    result = _openssl("asn1parse", "-inform", "DER", "-in", str(der_file))
    assert result.returncode == 0, result
    text = result.stdout
    assert "rsassaPss" in text and "mgf1" in text and text.count("sha384") == 2
    assert "INTEGER           :30" in text  # saltLength 48 = 0x30
    assert "cont [ 3 ]" not in text  # trailerField left at its default


def test_rsa_key_sizes_sign_with_pkcs1_verifiable_by_cryptography(keys: KeyPool) -> None:
    """Method 1 is plain RSASSA-PKCS1-v1_5 with SHA-1 over the octets (RFC 7296 3.8)."""
    for kind in ("rsa2048", "rsa3072", "rsa4096"):
        key = keys.get(kind)
        assert isinstance(key, rsa.RSAPrivateKey)
        data = sign_auth(key, choose_signature(key, None), OCTETS)
        assert len(data) == key.key_size // 8
        key.public_key().verify(data, OCTETS, padding.PKCS1v15(), hashes.SHA1())
