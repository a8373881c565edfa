"""The cipher behind the Encrypted (SK, RFC 7296 3.14) and Encrypted Fragment
(SKF, RFC 7383 2.5) payloads.

The codec (ipsecd.ike.message) owns the framing: it computes the payload
length with ``sealed_len``, writes the IKE header and the SK/SKF generic header
with their final lengths, and hands those octets over as ``associated``. This
module only turns inner payload octets into ``IV | ciphertext | ICV`` and back.

Two families:

* AEAD (AES-GCM/CCM per RFC 5282, ChaCha20-Poly1305 per RFC 7634 4): the
  associated data is ``associated`` itself (IKE header through the SK header),
  the nonce is salt | 8-octet IV, and no integrity transform is used.
* AES-CBC / 3DES-CBC with an HMAC INTEG transform (RFC 7296 3.14, RFC 4868):
  encrypt-then-MAC, the truncated ICV covering ``associated | IV | ciphertext``.

IVs: a random IV per message for CBC (RFC 7296 3.14 requires unpredictability).
For AEADs the IV only needs to be unique per key (RFC 5282 3.1, RFC 7634 2), so
each outbound cipher uses a 64-bit counter that starts at a random value:
uniqueness is guaranteed within one cipher object and, should a key ever be
installed twice, two random starting points collide only with negligible
probability.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ipsecd.errors import IntegrityError, LocalProtocolError
from ipsecd.iana import EncrId, IntegId, TransformType
from ipsecd.ike.crypto import EncrInfo, IntegInfo, encr_info, encr_key_len, integ_info, integ_key_len
from ipsecd.ike.keymat import IkeKeys
from ipsecd.ike.payloads import Proposal

_IV_SPACE = 1 << 64
_GCM_IDS = frozenset({EncrId.ENCR_AES_GCM_8, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_16})
_CCM_IDS = frozenset({EncrId.ENCR_AES_CCM_8, EncrId.ENCR_AES_CCM_12, EncrId.ENCR_AES_CCM_16})


class SkCipher(Protocol):
    def sealed_len(self, plaintext_len: int) -> int: ...
    def seal(self, associated: bytes, plaintext: bytes) -> bytes: ...
    def open(self, associated: bytes, body: bytes) -> bytes: ...


def _strip_padding(padded: bytes) -> bytes:
    """Remove Padding and Pad Length (RFC 7296 3.14); bad framing is an integrity failure."""
    if not padded:
        raise IntegrityError("SK plaintext is empty")
    pad_len = padded[-1]
    if pad_len + 1 > len(padded):
        raise IntegrityError("SK pad length exceeds the plaintext")
    return padded[: len(padded) - 1 - pad_len]


class AeadSkCipher:
    """SK payload protection with a combined-mode cipher (RFC 5282, RFC 7634 4)."""

    __slots__ = ("_counter", "_gcm_key", "_info", "_key", "_klen", "_make", "_sent", "_start")

    def __init__(self, encr_id: int, key_length_bits: int | None, key: bytes, *, iv_start: int | None = None) -> None:
        """``key`` is SK_e including the trailing salt. ``iv_start`` fixes the
        first IV (known-answer tests only); by default it is random."""
        info = encr_info(encr_id)
        if not info.aead:
            raise LocalProtocolError(f"{info.encr_id.name} is not an AEAD cipher")
        if len(key) != encr_key_len(encr_id, key_length_bits):
            raise LocalProtocolError("SK_e length does not match the cipher")
        self._info: EncrInfo = info
        # SK_e itself is kept (the IkeKeys' own bytes, no copy): cipher key, then salt.
        self._klen = klen = len(key) - info.salt_len
        cipher_key = key[:klen]
        self._gcm_key = b""
        # The AEAD object is built per message, not kept: each holds an OpenSSL context of
        # ~2.5 KiB of RSS, and an established IKE SA exchanges a message every few minutes
        # at most (DPD, rekey, delete), where building one costs ~1.5 us (issue 11, memory
        # per tunnel). A handshake builds as many as before: one to open, one to seal.
        self._key = key
        self._make: Callable[[bytes], AESGCM | AESCCM | ChaCha20Poly1305] | None
        if info.encr_id == EncrId.ENCR_CHACHA20_POLY1305:
            self._make = ChaCha20Poly1305
        elif info.encr_id in _CCM_IDS:
            self._make = functools.partial(AESCCM, tag_length=info.icv_len)
        elif info.icv_len == 16:
            self._make = AESGCM
        else:
            # Truncated GCM tags need the lower-level mode API.
            self._make = None
            self._gcm_key = cipher_key
        self._start = int.from_bytes(os.urandom(8), "big") if iv_start is None else iv_start % _IV_SPACE
        self._counter = self._start
        self._sent = 0

    def sealed_len(self, plaintext_len: int) -> int:
        # RFC 5282 3: no block alignment, so only the Pad Length octet is added.
        return self._info.iv_len + plaintext_len + 1 + self._info.icv_len

    def _next_iv(self) -> bytes:
        if self._sent >= _IV_SPACE:
            raise LocalProtocolError("AEAD IV space exhausted; the IKE SA must be rekeyed")
        iv = self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) % _IV_SPACE
        self._sent += 1
        return iv

    def encrypt_raw(self, iv: bytes, data: bytes, associated: bytes) -> bytes:
        """AEAD primitive: ciphertext | ICV for nonce salt | iv (no SK framing)."""
        key, klen = self._key, self._klen
        nonce = key[klen:] + iv  # RFC 5282 4 / RFC 7634 2: salt | IV
        if self._make is not None:
            return self._make(key[:klen]).encrypt(nonce, data, associated)
        enc = Cipher(algorithms.AES(self._gcm_key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(associated)
        ct = enc.update(data) + enc.finalize()
        return ct + enc.tag[: self._info.icv_len]

    def decrypt_raw(self, iv: bytes, ct_icv: bytes, associated: bytes) -> bytes:
        """Inverse of ``encrypt_raw``; raises IntegrityError on a bad tag."""
        info = self._info
        if len(iv) != info.iv_len or len(ct_icv) < info.icv_len:
            raise IntegrityError("AEAD input too short")
        key, klen = self._key, self._klen
        nonce = key[klen:] + iv
        try:
            if self._make is not None:
                return self._make(key[:klen]).decrypt(nonce, ct_icv, associated)
            ct, tag = ct_icv[: -info.icv_len], ct_icv[-info.icv_len :]
            dec = Cipher(algorithms.AES(self._gcm_key), modes.GCM(nonce, tag, min_tag_length=info.icv_len)).decryptor()
            dec.authenticate_additional_data(associated)
            return dec.update(ct) + dec.finalize()
        except InvalidTag:
            raise IntegrityError() from None

    def seal(self, associated: bytes, plaintext: bytes) -> bytes:
        iv = self._next_iv()
        # RFC 5282 3: no alignment needed, so no Padding and a Pad Length of 0.
        return iv + self.encrypt_raw(iv, plaintext + b"\x00", associated)

    def open(self, associated: bytes, body: bytes) -> bytes:
        info = self._info
        if len(body) < info.iv_len + 1 + info.icv_len:
            raise IntegrityError("SK payload too short")
        padded = self.decrypt_raw(body[: info.iv_len], body[info.iv_len :], associated)
        return _strip_padding(padded)

    def __repr__(self) -> str:
        return f"AeadSkCipher({self._info.encr_id.name})"


class CbcHmacSkCipher:
    """SK payload protection with a CBC cipher and an HMAC ICV (RFC 7296 3.14)."""

    __slots__ = ("_block", "_encr", "_info", "_integ", "_integ_key", "_iv_source", "_key")

    def __init__(
        self,
        encr_id: int,
        key_length_bits: int | None,
        key: bytes,
        integ_id: int,
        integ_key: bytes,
        *,
        iv_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``iv_source(n)`` returns n IV octets; replace it only in known-answer tests."""
        info = encr_info(encr_id)
        if info.aead:
            raise LocalProtocolError(f"{info.encr_id.name} is an AEAD cipher")
        if len(key) != encr_key_len(encr_id, key_length_bits):
            raise LocalProtocolError("SK_e length does not match the cipher")
        self._integ: IntegInfo = integ_info(integ_id)
        if len(integ_key) != integ_key_len(integ_id):
            raise LocalProtocolError("SK_a length does not match the integrity algorithm")
        self._info: EncrInfo = info
        self._key = key
        self._integ_key = integ_key
        self._block = info.block_size
        self._iv_source = iv_source
        self._encr: type[algorithms.AES] | type[TripleDES] = (
            TripleDES if info.encr_id == EncrId.ENCR_3DES else algorithms.AES
        )

    def sealed_len(self, plaintext_len: int) -> int:
        # RFC 7296 3.14: Payloads | Padding | Pad Length is a multiple of the block size.
        padded = -(-(plaintext_len + 1) // self._block) * self._block
        return self._info.iv_len + padded + self._integ.icv_len

    def _icv(self, associated: bytes, iv_and_ct: bytes) -> bytes:
        # RFC 7296 3.14: the ICV covers the IKE header through the end of the
        # ciphertext (here: associated = header + SK header, then IV | ciphertext).
        h = chmac.HMAC(self._integ_key, self._integ.hash())
        h.update(associated)
        h.update(iv_and_ct)
        return h.finalize()[: self._integ.icv_len]

    def seal(self, associated: bytes, plaintext: bytes) -> bytes:
        pad_len = (-(len(plaintext) + 1)) % self._block
        data = plaintext + bytes(pad_len) + bytes((pad_len,))
        iv = self._iv_source(self._info.iv_len)
        if len(iv) != self._info.iv_len:
            raise LocalProtocolError("IV source returned the wrong length")
        enc = Cipher(self._encr(self._key), modes.CBC(iv)).encryptor()
        body = iv + enc.update(data) + enc.finalize()
        return body + self._icv(associated, body)

    def open(self, associated: bytes, body: bytes) -> bytes:
        iv_len, icv_len = self._info.iv_len, self._integ.icv_len
        ct_len = len(body) - iv_len - icv_len
        if ct_len < self._block or ct_len % self._block:
            raise IntegrityError("SK payload length is not a whole number of cipher blocks")
        signed, icv = body[:-icv_len], body[-icv_len:]
        # Encrypt-then-MAC: verify before touching the ciphertext.
        if not hmac.compare_digest(self._icv(associated, signed), icv):
            raise IntegrityError()
        dec = Cipher(self._encr(self._key), modes.CBC(signed[:iv_len])).decryptor()
        padded = dec.update(signed[iv_len:]) + dec.finalize()
        return _strip_padding(padded)

    def __repr__(self) -> str:
        return f"CbcHmacSkCipher({self._info.encr_id.name}, {self._integ.integ_id.name})"


def make_sk_cipher(proposal: Proposal, encr_key: bytes, integ_key: bytes) -> AeadSkCipher | CbcHmacSkCipher:
    """One direction's SK cipher for a chosen IKE proposal."""
    encrs = proposal.of_type(TransformType.ENCR)
    if len(encrs) != 1:
        raise LocalProtocolError("chosen proposal must have exactly one ENCR transform")
    encr = encrs[0]
    if encr_info(encr.id).aead:
        return AeadSkCipher(encr.id, encr.key_length, encr_key)
    integs = [t for t in proposal.of_type(TransformType.INTEG) if t.id != IntegId.NONE]
    if len(integs) != 1:
        raise LocalProtocolError("chosen non-AEAD proposal must have exactly one INTEG transform")
    return CbcHmacSkCipher(encr.id, encr.key_length, encr_key, integs[0].id, integ_key)


def make_sk_ciphers(
    proposal: Proposal, keys: IkeKeys, we_are_initiator: bool
) -> tuple[AeadSkCipher | CbcHmacSkCipher, AeadSkCipher | CbcHmacSkCipher]:
    """(outbound, inbound) SK ciphers: the original initiator sends with
    SK_ei/SK_ai and the responder with SK_er/SK_ar (RFC 7296 2.14), whoever
    initiates a particular exchange."""
    i = make_sk_cipher(proposal, keys.sk_ei, keys.sk_ai)
    r = make_sk_cipher(proposal, keys.sk_er, keys.sk_ar)
    return (i, r) if we_are_initiator else (r, i)
