"""IKEv2 transforms over the ``cryptography`` package: PRFs, prf+, key exchange
methods, and the key-length arithmetic the key derivation needs.

Everything here is stateless apart from a key exchange's private value, so the
sans-I/O engines can build these objects wherever they need them. Peer-supplied
public values are validated here, once, so a malformed KE payload always
becomes ``RemoteProtocolError(notify=INVALID_SYNTAX)`` rather than some library
exception escaping into the state machine.
"""

from __future__ import annotations

import functools
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import cmac, hashes, hmac
from cryptography.hazmat.primitives.asymmetric import dh, ec, mlkem, x448, x25519
from cryptography.hazmat.primitives.ciphers import algorithms

from ipsecd.errors import LocalProtocolError, RemoteProtocolError
from ipsecd.iana import EncrId, IntegId, KeId, NotifyType, PrfId

# --------------------------------------------------------------------------
# PRF (RFC 7296 3.3.2, RFC 4868 for the SHA-2 HMACs, RFC 4615 for AES-CMAC)
# --------------------------------------------------------------------------

_HMAC_PRF_HASHES: dict[PrfId, type[hashes.HashAlgorithm]] = {
    PrfId.PRF_HMAC_MD5: hashes.MD5,  # legacy, RFC 8247 2.3 MUST NOT; only if configured explicitly
    PrfId.PRF_HMAC_SHA1: hashes.SHA1,
    PrfId.PRF_HMAC_SHA2_256: hashes.SHA256,
    PrfId.PRF_HMAC_SHA2_384: hashes.SHA384,
    PrfId.PRF_HMAC_SHA2_512: hashes.SHA512,
}

_AES_BLOCK = 16


class Prf:
    """A negotiated PRF: ``prf(key, data)``.

    ``key_len`` is the *preferred* key length RFC 7296 2.13/2.14 uses when sizing
    SK_d, SK_pi and SK_pr: the output length for the HMAC PRFs (RFC 4868 2.1.2),
    16 for AES128-CMAC (RFC 4615).
    """

    __slots__ = ("_hash", "key_len", "output_len", "prf_id")

    def __init__(self, prf_id: PrfId | int) -> None:
        try:
            self.prf_id = PrfId(prf_id)
        except ValueError:
            raise LocalProtocolError(f"unknown PRF transform id {prf_id}") from None
        if self.prf_id in _HMAC_PRF_HASHES:
            self._hash: hashes.HashAlgorithm | None = _HMAC_PRF_HASHES[self.prf_id]()
            self.output_len: int = self._hash.digest_size
            self.key_len: int = self.output_len
        elif self.prf_id == PrfId.PRF_AES128_CMAC:
            self._hash = None
            self.output_len = _AES_BLOCK
            self.key_len = _AES_BLOCK
        else:
            raise LocalProtocolError(f"PRF {self.prf_id.name} is not supported")

    @property
    def fixed_key_size(self) -> bool:
        """True for the block-cipher PRFs whose key is exactly 16 bytes (RFC 7296 2.14)."""
        return self._hash is None

    def __call__(self, key: bytes, data: bytes) -> bytes:
        if self._hash is not None:
            h = hmac.HMAC(key, self._hash)
            h.update(data)
            return h.finalize()
        # RFC 4615 3: a key that is not 128 bits is first condensed with
        # AES-CMAC under the all-zero key.
        if len(key) != _AES_BLOCK:
            key = _aes_cmac(bytes(_AES_BLOCK), key)
        return _aes_cmac(key, data)

    def __repr__(self) -> str:
        return f"Prf({self.prf_id.name})"


@functools.cache
def shared_prf(prf_id: PrfId | int) -> Prf:
    """One Prf per algorithm, shared by every IKE SA: it holds no key or state between calls,
    and a private copy per SA (with its hash object) was ~190 bytes each (issue 11)."""
    return Prf(prf_id)


def _aes_cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


# RFC 7296 2.13: the counter octet runs 0x01..0xff, so at most 255 blocks.
PRF_PLUS_MAX_ITERATIONS = 255


def prf_plus(prf: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); output T1 | T2 | ...

    Refuses lengths that would need more than 255 iterations, which the RFC
    leaves undefined, instead of silently wrapping the counter.
    """
    if length < 0:
        raise ValueError("prf+ length must not be negative")
    blocks = -(-length // prf.output_len)
    if blocks > PRF_PLUS_MAX_ITERATIONS:
        raise LocalProtocolError(f"prf+ cannot produce {length} octets with {prf!r} (more than 255 iterations)")
    out = bytearray()
    t = b""
    for counter in range(1, blocks + 1):
        t = prf(key, t + seed + bytes((counter,)))
        out += t
    return bytes(out[:length])


# --------------------------------------------------------------------------
# ENCR / INTEG parameters
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EncrInfo:
    """Static facts about an ENCR transform as used in IKE SK and ESP.

    ``salt_len``: octets of KEYMAT taken after the cipher key as the nonce salt
    (RFC 5282 7.1 / RFC 4106 8.1 for GCM: 4, RFC 4309 7.1 for CCM: 3,
    RFC 7634 2 / 4 for ChaCha20-Poly1305: 4).
    ``key_lengths``: allowed Key Length attribute values in bits, or empty when
    the transform must not carry one (fixed key size).
    """

    encr_id: EncrId
    aead: bool
    block_size: int
    iv_len: int
    icv_len: int
    salt_len: int
    key_lengths: frozenset[int]
    fixed_key_len: int = 0  # octets, for transforms without a Key Length attribute


_AES_KEY_BITS = frozenset({128, 192, 256})

ENCR_INFO: dict[EncrId, EncrInfo] = {
    EncrId.ENCR_AES_CBC: EncrInfo(EncrId.ENCR_AES_CBC, False, 16, 16, 0, 0, _AES_KEY_BITS),
    EncrId.ENCR_3DES: EncrInfo(EncrId.ENCR_3DES, False, 8, 8, 0, 0, frozenset(), 24),
    # RFC 5282 3 / RFC 4106: 8-octet explicit IV; pad to 4 octets at most needed, block 1 here.
    EncrId.ENCR_AES_GCM_8: EncrInfo(EncrId.ENCR_AES_GCM_8, True, 1, 8, 8, 4, _AES_KEY_BITS),
    EncrId.ENCR_AES_GCM_12: EncrInfo(EncrId.ENCR_AES_GCM_12, True, 1, 8, 12, 4, _AES_KEY_BITS),
    EncrId.ENCR_AES_GCM_16: EncrInfo(EncrId.ENCR_AES_GCM_16, True, 1, 8, 16, 4, _AES_KEY_BITS),
    EncrId.ENCR_AES_CCM_8: EncrInfo(EncrId.ENCR_AES_CCM_8, True, 1, 8, 8, 3, _AES_KEY_BITS),
    EncrId.ENCR_AES_CCM_12: EncrInfo(EncrId.ENCR_AES_CCM_12, True, 1, 8, 12, 3, _AES_KEY_BITS),
    EncrId.ENCR_AES_CCM_16: EncrInfo(EncrId.ENCR_AES_CCM_16, True, 1, 8, 16, 3, _AES_KEY_BITS),
    # RFC 7634 2: 256-bit key, no Key Length attribute, 8-octet IV, 16-octet tag.
    EncrId.ENCR_CHACHA20_POLY1305: EncrInfo(EncrId.ENCR_CHACHA20_POLY1305, True, 1, 8, 16, 4, frozenset(), 32),
}


def encr_info(encr_id: int) -> EncrInfo:
    try:
        return ENCR_INFO[EncrId(encr_id)]
    except (ValueError, KeyError):
        raise LocalProtocolError(f"encryption transform {encr_id} is not supported") from None


def is_aead(encr_id: int) -> bool:
    """True for combined-mode ciphers, which take no INTEG transform (RFC 5282 8)."""
    return encr_info(encr_id).aead


def encr_key_len(encr_id: int, key_length_bits: int | None) -> int:
    """Octets of KEYMAT one direction's ENCR key takes, including an AEAD salt.

    Raises LocalProtocolError for an unsupported transform or an invalid Key
    Length attribute, so callers can use it to vet a proposal too.
    """
    info = encr_info(encr_id)
    if info.key_lengths:
        if key_length_bits not in info.key_lengths:
            raise LocalProtocolError(f"{info.encr_id.name} does not support key length {key_length_bits}")
        return key_length_bits // 8 + info.salt_len
    if key_length_bits is not None and key_length_bits != info.fixed_key_len * 8:
        # RFC 7634 2 / RFC 7296 3.3.5: fixed-size ciphers carry no Key Length attribute.
        raise LocalProtocolError(f"{info.encr_id.name} takes no key length attribute")
    return info.fixed_key_len + info.salt_len


def encr_supported(encr_id: int, key_length_bits: int | None) -> bool:
    try:
        encr_key_len(encr_id, key_length_bits)
    except LocalProtocolError:
        return False
    return True


@dataclass(frozen=True)
class IntegInfo:
    """HMAC-based INTEG transforms: key length and truncated ICV length (RFC 4868 2.1, RFC 2404)."""

    integ_id: IntegId
    hash: type[hashes.HashAlgorithm]
    key_len: int
    icv_len: int


INTEG_INFO: dict[IntegId, IntegInfo] = {
    IntegId.AUTH_HMAC_MD5_96: IntegInfo(IntegId.AUTH_HMAC_MD5_96, hashes.MD5, 16, 12),  # legacy (RFC 2403)
    IntegId.AUTH_HMAC_SHA1_96: IntegInfo(IntegId.AUTH_HMAC_SHA1_96, hashes.SHA1, 20, 12),
    IntegId.AUTH_HMAC_SHA2_256_128: IntegInfo(IntegId.AUTH_HMAC_SHA2_256_128, hashes.SHA256, 32, 16),
    IntegId.AUTH_HMAC_SHA2_384_192: IntegInfo(IntegId.AUTH_HMAC_SHA2_384_192, hashes.SHA384, 48, 24),
    IntegId.AUTH_HMAC_SHA2_512_256: IntegInfo(IntegId.AUTH_HMAC_SHA2_512_256, hashes.SHA512, 64, 32),
}


def integ_info(integ_id: int) -> IntegInfo:
    try:
        return INTEG_INFO[IntegId(integ_id)]
    except (ValueError, KeyError):
        raise LocalProtocolError(f"integrity transform {integ_id} is not supported") from None


def integ_key_len(integ_id: int) -> int:
    """Octets of KEYMAT one direction's INTEG key takes; 0 for NONE (AEAD)."""
    if integ_id == IntegId.NONE:
        return 0
    return integ_info(integ_id).key_len


def integ_icv_len(integ_id: int) -> int:
    if integ_id == IntegId.NONE:
        return 0
    return integ_info(integ_id).icv_len


def prf_supported(prf_id: int) -> bool:
    return prf_id in _HMAC_PRF_HASHES or prf_id == PrfId.PRF_AES128_CMAC


def integ_supported(integ_id: int) -> bool:
    return integ_id in INTEG_INFO


# --------------------------------------------------------------------------
# Key exchange methods
# --------------------------------------------------------------------------

# RFC 2409 6.2 (group 2), RFC 3526 2-5 (groups 5, 14, 15, 16); generator 2 for all.
_MODP_PRIMES_HEX: dict[KeId, str] = {
    KeId.MODP_1024: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF"
    ),
    KeId.MODP_1536: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
        "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF"
    ),
    KeId.MODP_2048: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
        "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
        "15728E5A8AACAA68FFFFFFFFFFFFFFFF"
    ),
    KeId.MODP_3072: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
        "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
        "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
        "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
    ),
    KeId.MODP_4096: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
        "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
        "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
        "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
        "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6"
        "287C59474E6BC05D99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
        "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"
    ),
}
_MODP_GENERATOR = 2

_ECP_CURVES: dict[KeId, tuple[type[ec.EllipticCurve], int]] = {
    # RFC 5903 7: the KE payload carries x | y, each padded to the field size.
    KeId.ECP_256: (ec.SECP256R1, 32),
    KeId.ECP_384: (ec.SECP384R1, 48),
    KeId.ECP_521: (ec.SECP521R1, 66),
}

# RFC 8031 2 (Curve25519/Curve448 public values), FIPS 203 (ML-KEM sizes:
# encapsulation key sent by the initiator, ciphertext sent by the responder).
_X25519_LEN = 32
_X448_LEN = 56
_MLKEM_SIZES: dict[KeId, tuple[int, int]] = {
    KeId.ML_KEM_768: (1184, 1088),
    KeId.ML_KEM_1024: (1568, 1568),
}

LEGACY_GROUPS = frozenset({KeId.MODP_1024, KeId.MODP_1536})


def supported_groups() -> frozenset[KeId]:
    return (
        frozenset(_MODP_PRIMES_HEX)
        | frozenset(_ECP_CURVES)
        | {KeId.CURVE25519, KeId.CURVE448}
        | frozenset(_MLKEM_SIZES)
    )


def is_kem(group: KeId | int) -> bool:
    """True for KEMs, whose initiator and responder send different values (RFC 9370 2.2.2)."""
    return group in _MLKEM_SIZES


def ke_public_len(group: KeId | int, *, from_responder: bool = False) -> int:
    """Exact length of the Key Exchange Data for ``group`` (RFC 7296 3.4).

    Only KEMs depend on the direction: the initiator sends the encapsulation
    key, the responder the ciphertext.
    """
    g = _group(group)
    if g in _MODP_PRIMES_HEX:
        # RFC 7296 3.4: MODP values are zero-padded to the length of the prime.
        return len(_MODP_PRIMES_HEX[g]) // 2
    if g in _ECP_CURVES:
        return 2 * _ECP_CURVES[g][1]
    if g == KeId.CURVE25519:
        return _X25519_LEN
    if g == KeId.CURVE448:
        return _X448_LEN
    ek_len, ct_len = _MLKEM_SIZES[g]
    return ct_len if from_responder else ek_len


def _group(group: KeId | int) -> KeId:
    try:
        g = KeId(group)
    except ValueError:
        raise LocalProtocolError(f"unknown key exchange method {group}") from None
    if g not in supported_groups():
        raise LocalProtocolError(f"key exchange method {g.name} is not supported")
    return g


def _invalid(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, notify=NotifyType.INVALID_SYNTAX)


class KeyExchange(ABC):
    """One side of a key exchange. ``public_key`` is the KE payload's data.

    For Diffie-Hellman style methods both roles call ``compute_shared`` with the
    peer's value. For KEMs use ``create_key_exchange`` as initiator and
    ``accept_key_exchange`` as responder (which works for every group, so the
    responder may always use it).
    """

    group: KeId

    @property
    @abstractmethod
    def public_key(self) -> bytes: ...

    @abstractmethod
    def compute_shared(self, peer: bytes) -> bytes:
        """Shared secret from the peer's KE data; invalid data raises
        RemoteProtocolError(notify=INVALID_SYNTAX)."""

    def _check_len(self, peer: bytes, expected: int) -> None:
        if len(peer) != expected:
            raise _invalid(f"{self.group.name} key exchange data is {len(peer)} octets, expected {expected}")

    def __repr__(self) -> str:  # never show private material
        return f"{type(self).__name__}({self.group.name})"


class _ModpExchange(KeyExchange):
    def __init__(self, group: KeId, private_value: int | None = None) -> None:
        self.group = group
        self._p = int(_MODP_PRIMES_HEX[group], 16)
        self._len = len(_MODP_PRIMES_HEX[group]) // 2
        # cryptography marks FFDH deprecated; the MODP groups stay negotiable
        # for interoperability, so silence just these calls.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._numbers = dh.DHParameterNumbers(self._p, _MODP_GENERATOR)
            if private_value is None:
                self._priv = self._numbers.parameters().generate_private_key()
            else:  # known-answer tests only
                y = pow(_MODP_GENERATOR, private_value, self._p)
                pub_numbers = dh.DHPublicNumbers(y, self._numbers)
                self._priv = dh.DHPrivateNumbers(private_value, pub_numbers).private_key()
            y = self._priv.public_key().public_numbers().y
        self._public = y.to_bytes(self._len, "big")

    @property
    def public_key(self) -> bytes:
        return self._public

    def compute_shared(self, peer: bytes) -> bytes:
        self._check_len(peer, self._len)
        y = int.from_bytes(peer, "big")
        # RFC 6989 2.1: reject 0, 1, p-1 and anything not below p.
        if y <= 1 or y >= self._p - 1:
            raise _invalid(f"degenerate {self.group.name} public value")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pub = dh.DHPublicNumbers(y, self._numbers).public_key()
                shared = self._priv.exchange(pub)
            except ValueError as exc:
                raise _invalid(f"invalid {self.group.name} public value") from exc
        # RFC 7296 2.14: g^ir is zero-padded to the length of the modulus.
        return shared.rjust(self._len, b"\x00")


class _EcpExchange(KeyExchange):
    def __init__(self, group: KeId) -> None:
        self.group = group
        curve_cls, self._coord = _ECP_CURVES[group]
        self._curve = curve_cls()
        self._priv = ec.generate_private_key(self._curve)
        self._public = _ecp_encode(self._priv.public_key(), self._coord)

    @classmethod
    def from_private_value(cls, group: KeId, value: int) -> _EcpExchange:
        """Deterministic construction for known-answer tests (RFC 5903 8)."""
        self = cls.__new__(cls)
        self.group = group
        curve_cls, self._coord = _ECP_CURVES[group]
        self._curve = curve_cls()
        self._priv = ec.derive_private_key(value, self._curve)
        self._public = _ecp_encode(self._priv.public_key(), self._coord)
        return self

    @property
    def public_key(self) -> bytes:
        return self._public

    def compute_shared(self, peer: bytes) -> bytes:
        self._check_len(peer, 2 * self._coord)
        try:
            # RFC 5903 7: no point-format octet on the wire; re-add the
            # uncompressed marker so the library validates the point is on the curve.
            # The point at infinity has no x|y encoding, so it cannot arrive.
            pub = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer)
            shared = self._priv.exchange(ec.ECDH(), pub)
        except ValueError as exc:
            raise _invalid(f"{self.group.name} public value is not a point on the curve") from exc
        # RFC 5903 7: the shared secret is the x coordinate only.
        return shared.rjust(self._coord, b"\x00")


def _ecp_encode(pub: ec.EllipticCurvePublicKey, coord: int) -> bytes:
    nums = pub.public_numbers()
    return nums.x.to_bytes(coord, "big") + nums.y.to_bytes(coord, "big")


@dataclass(frozen=True)
class _Montgomery:
    """What differs between Curve25519 and Curve448 in IKEv2 (RFC 8031): the key classes and length."""

    name: str
    priv: type[x25519.X25519PrivateKey] | type[x448.X448PrivateKey]
    pub: type[x25519.X25519PublicKey] | type[x448.X448PublicKey]
    length: int


_CURVE25519 = _Montgomery("Curve25519", x25519.X25519PrivateKey, x25519.X25519PublicKey, _X25519_LEN)
_CURVE448 = _Montgomery("Curve448", x448.X448PrivateKey, x448.X448PublicKey, _X448_LEN)


class _MontgomeryExchange(KeyExchange):
    def __init__(self, group: KeId, curve: _Montgomery, private: bytes | None = None) -> None:
        self.group = group
        self._curve = curve
        self._priv: Any = curve.priv.generate() if private is None else curve.priv.from_private_bytes(private)
        self._public: bytes = self._priv.public_key().public_bytes_raw()

    @property
    def public_key(self) -> bytes:
        return self._public

    def compute_shared(self, peer: bytes) -> bytes:
        c = self._curve
        self._check_len(peer, c.length)
        try:
            shared: bytes = self._priv.exchange(c.pub.from_public_bytes(peer))
        except ValueError as exc:
            # The library refuses an all-zero result (a low-order peer point).
            raise _invalid(f"{c.name} shared secret is all zero") from exc
        if shared == bytes(len(shared)):  # RFC 8031 2.3: MUST check for all-zero
            raise _invalid(f"{c.name} shared secret is all zero")
        return shared


_MlKemPriv = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey


class _MlKemInitiator(KeyExchange):
    """ML-KEM initiator: sends the encapsulation key, decapsulates the responder's ciphertext."""

    def __init__(self, group: KeId) -> None:
        self.group = group
        self._priv: _MlKemPriv = (
            mlkem.MLKEM768PrivateKey.generate() if group == KeId.ML_KEM_768 else mlkem.MLKEM1024PrivateKey.generate()
        )
        self._public = self._priv.public_key().public_bytes_raw()

    @property
    def public_key(self) -> bytes:
        return self._public

    def compute_shared(self, peer: bytes) -> bytes:
        self._check_len(peer, _MLKEM_SIZES[self.group][1])
        try:
            return self._priv.decapsulate(peer)
        except ValueError as exc:
            raise _invalid(f"invalid {self.group.name} ciphertext") from exc


class _MlKemResponder(KeyExchange):
    """ML-KEM responder: encapsulates to the initiator's key; ``public_key`` is the ciphertext."""

    def __init__(self, group: KeId, peer: bytes) -> None:
        self.group = group
        self._peer = peer
        self._check_len(peer, _MLKEM_SIZES[group][0])
        try:
            pub = (
                mlkem.MLKEM768PublicKey.from_public_bytes(peer)
                if group == KeId.ML_KEM_768
                else mlkem.MLKEM1024PublicKey.from_public_bytes(peer)
            )
            self._shared, self._ct = pub.encapsulate()
        except ValueError as exc:
            raise _invalid(f"invalid {group.name} encapsulation key") from exc

    @property
    def public_key(self) -> bytes:
        return self._ct

    def compute_shared(self, peer: bytes) -> bytes:
        if peer != self._peer:
            raise LocalProtocolError("ML-KEM responder already bound to a different initiator key")
        return self._shared


def create_key_exchange(group: KeId | int) -> KeyExchange:
    """A fresh key pair for ``group`` (the initiator's side for KEMs)."""
    g = _group(group)
    if g in _MODP_PRIMES_HEX:
        return _ModpExchange(g)
    if g in _ECP_CURVES:
        return _EcpExchange(g)
    if g == KeId.CURVE25519:
        return _MontgomeryExchange(g, _CURVE25519)
    if g == KeId.CURVE448:
        return _MontgomeryExchange(g, _CURVE448)
    try:
        return _MlKemInitiator(g)
    except UnsupportedAlgorithm:  # pragma: no cover - depends on the OpenSSL build
        raise LocalProtocolError(f"{g.name} is not available in this build") from None


def accept_key_exchange(group: KeId | int, peer: bytes) -> tuple[KeyExchange, bytes]:
    """Responder side: returns (our KeyExchange whose ``public_key`` to send, shared secret).

    Works for every group; for KEMs it is the only correct responder path,
    because the responder's value (the ciphertext) depends on the peer's key.
    """
    g = _group(group)
    check_peer_value(g, peer)  # before we spend a key generation on it (RFC 7296 2.6 spirit)
    if g in _MLKEM_SIZES:
        kem = _MlKemResponder(g, peer)
        return kem, kem.compute_shared(peer)
    ke = create_key_exchange(g)
    return ke, ke.compute_shared(peer)


def check_peer_value(group: KeId | int, peer: bytes) -> None:
    """Cheap validity checks of a peer's KE data, done before any key generation of ours:
    exact length (RFC 7296 3.4), MODP range (RFC 6989 2.1), ECP point on the curve
    (RFC 6989 2.3). Raises RemoteProtocolError(INVALID_SYNTAX); ``compute_shared``
    repeats what it needs, so this is only an early, cheap door."""
    g = _group(group)
    expected = ke_public_len(g)
    if len(peer) != expected:
        raise _invalid(f"{g.name} key exchange data is {len(peer)} octets, expected {expected}")
    if g in _MODP_PRIMES_HEX:
        y = int.from_bytes(peer, "big")
        if y <= 1 or y >= int(_MODP_PRIMES_HEX[g], 16) - 1:
            raise _invalid(f"degenerate {g.name} public value")
    elif g in _ECP_CURVES:
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(_ECP_CURVES[g][0](), b"\x04" + peer)
        except ValueError as exc:
            raise _invalid(f"{g.name} public value is not a point on the curve") from exc


def key_exchange_from_private(group: KeId | int, private: bytes) -> KeyExchange:
    """A DH-style KeyExchange with a fixed private value, for known-answer tests only.

    ``private`` is the big-endian exponent (MODP), scalar (ECP) or the raw
    RFC 7748 private key (Curve25519/448). KEMs are not supported.
    """
    g = _group(group)
    if g in _MODP_PRIMES_HEX:
        return _ModpExchange(g, int.from_bytes(private, "big"))
    if g in _ECP_CURVES:
        return _EcpExchange.from_private_value(g, int.from_bytes(private, "big"))
    if g == KeId.CURVE25519:
        return _MontgomeryExchange(g, _CURVE25519, private)
    if g == KeId.CURVE448:
        return _MontgomeryExchange(g, _CURVE448, private)
    raise LocalProtocolError(f"{g.name} cannot be built from a fixed private value")


def modp_prime(group: KeId) -> int:
    """The MODP group's prime (for tests and diagnostics)."""
    return int(_MODP_PRIMES_HEX[group], 16)
