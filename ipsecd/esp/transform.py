"""ESP cryptographic transforms (RFC 4303 section 2, 3.3, 3.4): one object per SA direction.

Each transform turns ``(sequence number, payload, next header)`` into the ESP packet
``SPI || Seq || IV || ciphertext(payload || padding || pad length || next header) || ICV``
and back. It knows nothing about modes, selectors or replay: those are SA state and live
in :mod:`ipsecd.esp.sa`, so this module has no dependency on the rest of the package and
the SA code can choose a transform once, at SA creation.

Why the objects look the way they do (see ``/work/shared/notes/dataplane-measurements.md``):

* The AEAD object (``AESGCM`` / ``ChaCha20Poly1305``) is created once per SA; creating it
  per packet costs more than the encryption itself.
* CBC uses one long-lived encryptor and decryptor per SA instead of a new ``Cipher`` per
  packet (measured 1.6 us vs 5.5 us for 1400 B). That is sound because of how CBC chains:

  - Sending: feeding a fresh random block ``R`` first yields ``C0 = E(R xor chain)``; ``C0``
    is unpredictable (``R`` is), so ``C0`` serves as the packet's IV and the following blocks
    are exactly CBC with that IV (RFC 3602 section 3 asks only that the IV be unpredictable).
  - Receiving: feeding ``IV || C1 .. Cn`` yields a garbage first block (``D(IV) xor chain``)
    followed by ``D(Ci) xor C(i-1)`` with ``C0 = IV`` -- the correct plaintext. The caller
    must only ever feed whole blocks, which ``CbcHmacTransform.open`` checks first.
* Padding-and-trailer byte strings come from a constant table, not built per packet.

Integrity failures are reported by returning ``None`` (no exception on the hot path);
the SA turns that into ``EspDrop(ICV)``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ipsecd.errors import LocalProtocolError
from ipsecd.iana import EncrId, IntegId

ESP_HEADER_LEN = 8  # SPI (4) + Sequence Number (4), RFC 4303 section 2
TRAILER_LEN = 2  # Pad Length (1) + Next Header (1), RFC 4303 section 2.4 / 2.6
AEAD_SALT_LEN = 4  # RFC 4106 section 8.1, RFC 7634 section 2 (last 4 KEYMAT bytes)
AEAD_IV_LEN = 8
AEAD_ICV_LEN = 16
CBC_BLOCK = 16
SEQ_LOW_MASK = 0xFFFFFFFF

# "!IIQ": SPI, low 32 bits of the sequence number, then the 8-byte explicit IV. For the
# AEADs the IV is the full 64-bit sequence number (RFC 4106 section 3.1 / 8.1 permit a
# counter; a sequence number is never reused under one key, which is all GCM needs).
_HDR_AEAD = struct.Struct("!IIQ")
_HDR = struct.Struct("!II")
_AAD_ESN = struct.Struct("!III")  # RFC 4106 section 5: SPI || seq high || seq low
_NONCE = struct.Struct("!4sQ")  # salt || explicit IV (RFC 4106 section 4, RFC 7634 section 2)
_SEQ_HI = struct.Struct("!I")  # RFC 4303 section 2.2.1: high half appended for the ICV only
_pack_hdr_aead = _HDR_AEAD.pack
_pack_nonce = _NONCE.pack

_IV_POOL_SIZE = 4096  # CBC: pre-drawn random bytes, 256 IVs per os.urandom call


def _build_trailers() -> tuple[tuple[bytes, ...], ...]:
    """Table ``[pad_len][next_header] -> padding || pad length || next header``.

    RFC 4303 section 2.4: the default padding is the byte sequence 1, 2, 3, ...; pad
    lengths only ever reach 15 here (16-byte blocks), so 16 x 256 short strings suffice.
    """
    return tuple(tuple(bytes(range(1, pad + 1)) + bytes((pad, nh)) for nh in range(256)) for pad in range(CBC_BLOCK))


TRAILERS = _build_trailers()
# Expected padding content for each pad length (RFC 4303 section 2.4), for the receiver's check.
PAD_BYTES = tuple(bytes(range(1, n + 1)) for n in range(256))


@dataclass(frozen=True, slots=True)
class SuiteSpec:
    """Wire sizes of one ESP transform combination: what MTU and length checks need."""

    name: str
    aead: bool
    iv_len: int
    align: int  # padding alignment of payload||trailer: cipher block size, at least 4
    icv_len: int


_INTEG_SIZES: dict[IntegId, tuple[int, int, type[hashes.HashAlgorithm]]] = {
    # integ id: (key length, truncated ICV length, hash); RFC 4868 section 2.1, RFC 2404
    IntegId.AUTH_HMAC_SHA1_96: (20, 12, hashes.SHA1),
    IntegId.AUTH_HMAC_SHA2_256_128: (32, 16, hashes.SHA256),
    IntegId.AUTH_HMAC_SHA2_384_192: (48, 24, hashes.SHA384),
    IntegId.AUTH_HMAC_SHA2_512_256: (64, 32, hashes.SHA512),
}


def integ_params(integ: IntegId) -> tuple[int, int, type[hashes.HashAlgorithm]]:
    """(key length, truncated ICV length, hash) of an HMAC integrity algorithm (ESP and AH)."""
    if integ not in _INTEG_SIZES:
        raise LocalProtocolError(f"unsupported integrity algorithm {integ!r}")
    return _INTEG_SIZES[integ]


def suite_spec(encr: EncrId, integ: IntegId) -> SuiteSpec:
    """Sizes for a transform pair; raise LocalProtocolError if we do not implement it."""
    if encr in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305):
        if integ != IntegId.NONE:
            # RFC 7296 3.3.3: combined-mode ciphers are never paired with an INTEG transform
            raise LocalProtocolError(f"{encr.name} must not be combined with {integ.name}")
        return SuiteSpec(encr.name, True, AEAD_IV_LEN, 4, AEAD_ICV_LEN)
    if integ not in _INTEG_SIZES:
        raise LocalProtocolError(f"unsupported ESP integrity algorithm {integ!r}")
    icv = _INTEG_SIZES[integ][1]
    if encr == EncrId.ENCR_AES_CBC:
        return SuiteSpec(f"{encr.name}+{integ.name}", False, CBC_BLOCK, CBC_BLOCK, icv)
    if encr == EncrId.ENCR_NULL:
        # RFC 2410: no IV, no block; RFC 4303 2.4 still wants 4-byte alignment
        return SuiteSpec(f"{encr.name}+{integ.name}", False, 0, 4, icv)
    raise LocalProtocolError(f"unsupported ESP encryption algorithm {encr!r}")


def check_key_lengths(encr: EncrId, encr_key: bytes, integ: IntegId, integ_key: bytes) -> None:
    if encr == EncrId.ENCR_AES_GCM_16:
        if len(encr_key) - AEAD_SALT_LEN not in (16, 24, 32):
            raise LocalProtocolError("AES-GCM needs a 16/24/32-byte key plus 4 bytes of salt")
    elif encr == EncrId.ENCR_CHACHA20_POLY1305:
        if len(encr_key) != 32 + AEAD_SALT_LEN:
            raise LocalProtocolError("ChaCha20-Poly1305 needs a 32-byte key plus 4 bytes of salt")
    elif encr == EncrId.ENCR_AES_CBC:
        if len(encr_key) not in (16, 24, 32):
            raise LocalProtocolError("AES-CBC needs a 16/24/32-byte key")
    elif encr == EncrId.ENCR_NULL and encr_key:
        raise LocalProtocolError("ENCR_NULL takes no key")
    if integ in _INTEG_SIZES and len(integ_key) != _INTEG_SIZES[integ][0]:
        # RFC 4868 2.1.1 / RFC 2404 3: the key is as long as the hash output
        raise LocalProtocolError(f"{integ.name} needs a {_INTEG_SIZES[integ][0]}-byte key")


class AeadTransform:
    """AES-GCM-16 (RFC 4106) and ChaCha20-Poly1305 (RFC 7634) for one SA direction.

    Output: ``SPI || seq low || IV(8) || ciphertext || tag(16)``. The AAD is
    ``SPI || seq low`` or, with ESN, ``SPI || seq high || seq low`` (RFC 4106 section 5,
    RFC 7634 section 2.1); the high half is never transmitted.
    """

    __slots__ = ("_aead", "decrypt", "encrypt", "esn", "overhead_min", "salt", "spi")

    def __new__(cls, encr: EncrId, key_and_salt: bytes, spi: int, esn: bool) -> AeadTransform:
        # ``seal``/``open`` are the ESN or the 32-bit variant by class (AeadEsnTransform), so the
        # per-packet path has no ESN branch and no extra call layer. (They used to be bound
        # methods stored on the instance: a reference cycle per SA that only the cyclic GC
        # frees -- issue 11, ipsecd/gcpolicy.py.)
        return object.__new__(AeadEsnTransform if esn else cls)

    def __init__(self, encr: EncrId, key_and_salt: bytes, spi: int, esn: bool) -> None:
        key = key_and_salt[:-AEAD_SALT_LEN]
        self._aead: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(key) if encr == EncrId.ENCR_CHACHA20_POLY1305 else AESGCM(key)
        )
        # Public, read-only by convention: the SA's inlined fast path (ipsecd.esp.sa) binds
        # these once instead of calling seal/open, which saves a call layer per packet.
        self.salt = key_and_salt[-AEAD_SALT_LEN:]
        self.encrypt = self._aead.encrypt  # bound once: saves two lookups per packet
        self.decrypt = self._aead.decrypt
        self.spi = spi
        self.esn = esn
        # header + IV + trailer(aligned to 4) + ICV: anything shorter cannot be ours
        self.overhead_min = ESP_HEADER_LEN + AEAD_IV_LEN + 4 + AEAD_ICV_LEN

    def seal_32(self, seq: int, payload: bytes, nh: int) -> bytes:
        """Encrypt one payload under a 32-bit sequence number: AAD = SPI || seq (RFC 4106 5)."""
        hdr = _pack_hdr_aead(self.spi, seq, seq)
        return hdr + self.encrypt(
            _pack_nonce(self.salt, seq), payload + TRAILERS[-(len(payload) + TRAILER_LEN) & 3][nh], hdr[:8]
        )

    def seal_esn(self, seq: int, payload: bytes, nh: int) -> bytes:
        """Encrypt under a 64-bit sequence number: AAD = SPI || seq high || seq low (RFC 4106 5)."""
        seq_low = seq & SEQ_LOW_MASK
        hdr = _pack_hdr_aead(self.spi, seq_low, seq)
        return hdr + self.encrypt(
            _pack_nonce(self.salt, seq),
            payload + TRAILERS[-(len(payload) + TRAILER_LEN) & 3][nh],
            _AAD_ESN.pack(self.spi, seq >> 32, seq_low),
        )

    def seal_with_iv(self, seq: int, iv: bytes, plaintext: bytes) -> bytes:
        """Seal an already padded plaintext under an explicit IV: for known-answer tests only.

        The data path never calls this: there the IV is the sequence number, which is what
        guarantees it is never repeated under one key.
        """
        seq_low = seq & SEQ_LOW_MASK
        hdr = _HDR.pack(self.spi, seq_low)
        aad = _AAD_ESN.pack(self.spi, seq >> 32, seq_low) if self.esn else hdr
        return hdr + iv + self._aead.encrypt(self.salt + iv, plaintext, aad)

    def open_32(self, esp: bytes, seq: int) -> bytes | None:
        """Verify and decrypt; returns ``payload || padding || trailer`` or None on a bad tag.

        The caller has already checked ``len(esp) >= overhead_min``. The ciphertext is
        sliced out (a copy) on purpose: on CPython 3.11 ``memoryview(esp)[16:]`` costs about
        1.8x a 1.4 kB copy, and the AEAD reads the bytes either way.
        """
        try:
            return self.decrypt(self.salt + esp[8:16], esp[16:], esp[:8])
        except InvalidTag:
            return None

    def open_esn(self, esp: bytes, seq: int) -> bytes | None:
        """As :meth:`open_32`, with the inferred high half of ``seq`` in the AAD."""
        try:
            return self.decrypt(
                self.salt + esp[8:16], esp[16:], _AAD_ESN.pack(self.spi, seq >> 32, seq & SEQ_LOW_MASK)
            )
        except InvalidTag:
            return None

    seal = seal_32
    open = open_32


class AeadEsnTransform(AeadTransform):
    """An AEAD transform with extended sequence numbers (RFC 4303 2.2.1): what
    ``AeadTransform(..., esn=True)`` makes."""

    __slots__ = ()
    seal = AeadTransform.seal_esn
    open = AeadTransform.open_esn


class CbcHmacTransform:
    """AES-CBC (RFC 3602) or ENCR_NULL (RFC 2410) with a truncated HMAC (RFC 4868, RFC 2404).

    Encrypt-then-MAC (RFC 4303 section 3.3.4): the ICV covers ``SPI || seq || IV ||
    ciphertext`` and, with ESN, the high half of the sequence number appended after them
    (section 2.2.1) without being sent. ENCR_NULL exists for tests and debugging only: it
    sends the payload in clear and is named ``ENCR_NULL`` in every counter and log.
    """

    __slots__ = (
        "_block",
        "_dec",
        "_enc",
        "_hmac",
        "_icv_len",
        "_iv_pool",
        "_iv_pos",
        "esn",
        "overhead_min",
        "spi",
    )

    def __init__(self, encr: EncrId, encr_key: bytes, integ: IntegId, integ_key: bytes, spi: int, esn: bool) -> None:
        _key_len, self._icv_len, hash_cls = _INTEG_SIZES[integ]
        self._hmac = hmac.HMAC(integ_key, hash_cls())  # keyed once; copied per packet
        self.spi = spi
        self.esn = esn
        self._iv_pool = b""
        self._iv_pos = 0
        self._enc: CipherContext | None = None
        self._dec: CipherContext | None = None
        if encr == EncrId.ENCR_AES_CBC:
            self._block = CBC_BLOCK
            # The start IVs are irrelevant: see the module docstring on chaining.
            self._enc = Cipher(algorithms.AES(encr_key), modes.CBC(os.urandom(CBC_BLOCK))).encryptor()
            self._dec = Cipher(algorithms.AES(encr_key), modes.CBC(bytes(CBC_BLOCK))).decryptor()
        else:
            self._block = 0
        # header + IV + one block (or a 4-byte aligned trailer) + ICV
        self.overhead_min = ESP_HEADER_LEN + (2 * CBC_BLOCK if self._block else 4) + self._icv_len

    def _next_random_block(self) -> bytes:
        pos = self._iv_pos
        if pos >= len(self._iv_pool):
            self._iv_pool = os.urandom(_IV_POOL_SIZE)
            pos = 0
        self._iv_pos = pos + CBC_BLOCK
        return self._iv_pool[pos : pos + CBC_BLOCK]

    def _icv(self, data: bytes, seq: int) -> bytes:
        mac = self._hmac.copy()
        mac.update(data)
        if self.esn:
            mac.update(_SEQ_HI.pack(seq >> 32))
        return mac.finalize()[: self._icv_len]

    def _seal(self, seq: int, payload: bytes, nh: int) -> bytes:
        """Encrypt (if CBC) and MAC one payload under sequence number ``seq``."""
        hdr = _HDR.pack(self.spi, seq & SEQ_LOW_MASK)
        if self._enc is not None:
            trailer = TRAILERS[-(len(payload) + TRAILER_LEN) & (CBC_BLOCK - 1)][nh]
            # The first output block is the IV actually sent (see module docstring).
            body = hdr + self._enc.update(self._next_random_block() + payload + trailer)
        else:
            body = hdr + payload + TRAILERS[-(len(payload) + TRAILER_LEN) & 3][nh]
        return body + self._icv(body, seq)

    def _open(self, esp: bytes, seq: int) -> bytes | None:
        """Verify the ICV (constant time), then decrypt; None when the ICV is wrong.

        Returns ``payload || padding || trailer``. The caller has checked
        ``len(esp) >= overhead_min``; block alignment is checked here, before anything
        is fed to the long-lived decryptor, whose state a partial block would corrupt.
        """
        end = len(esp) - self._icv_len
        body = esp[:end]
        if not constant_time.bytes_eq(self._icv(body, seq), esp[end:]):
            return None
        if self._dec is None:
            return body[ESP_HEADER_LEN:]
        if (end - ESP_HEADER_LEN) % CBC_BLOCK:
            return b""  # authentic but not block aligned: the caller rejects the empty result
        # Skip the garbage first block (the decrypted IV); see module docstring.
        return self._dec.update(body[ESP_HEADER_LEN:])[CBC_BLOCK:]

    # Methods of the class, not bound methods stored per instance (a reference cycle per SA)
    seal = _seal
    open = _open


EspTransform = AeadTransform | CbcHmacTransform


def make_transform(
    encr: EncrId, encr_key: bytes, integ: IntegId, integ_key: bytes, spi: int, esn: bool
) -> EspTransform:
    """Validate the algorithm pair and key lengths and build the per-SA transform object."""
    suite_spec(encr, integ)
    check_key_lengths(encr, encr_key, integ, integ_key)
    if encr in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305):
        return AeadTransform(encr, encr_key, spi, esn)
    return CbcHmacTransform(encr, encr_key, integ, integ_key, spi, esn)
