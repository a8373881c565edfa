"""The SK payload cipher (ipsecd.ike.sk): RFC 7634 appendix B, a hand-built
CBC+HMAC known answer, and round trip / tamper / truncation properties for
every supported ENCR and INTEG combination."""

from __future__ import annotations

import hmac
import itertools
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.errors import IntegrityError, LocalProtocolError
from ipsecd.iana import EncrId, IntegId, ProtocolId
from ipsecd.ike.crypto import encr_key_len, integ_key_len
from ipsecd.ike.keymat import derive_ike_keys
from ipsecd.ike.proposal import parse_proposal
from ipsecd.ike.sk import AeadSkCipher, CbcHmacSkCipher, SkCipher, make_sk_ciphers


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


HEADER = bytes(range(28)) + b"\x29\x00\x00\x00"  # stand-in IKE header + SK generic header


def test_rfc7634_appendix_b_ikev2_example() -> None:
    key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f") + h("a0a1a2a3")
    iv = h("1011121314151617")
    # IKE header (SPIs c0.., d0.., next payload SK, v2.0, INFORMATIONAL, msg id 9, length 0x45)
    # followed by the SK generic header (next payload Notify, length 0x29).
    aad = h("c0c1c2c3c4c5c6c7d0d1d2d3d4d5d6d72e202500000000090000004529000029")
    inner = h("0000000c000040010000000a")  # Notify payload; the 13th plaintext octet is Pad Length 0
    body = h("610394701f8d017f7c129248896b71bfe25236efd7cdc670669063 15b2")
    cipher = AeadSkCipher(EncrId.ENCR_CHACHA20_POLY1305, None, key, iv_start=int.from_bytes(iv, "big"))
    assert cipher.sealed_len(len(inner)) == 8 + 13 + 16 == 0x29 - 4
    assert cipher.seal(aad, inner) == iv + body
    assert cipher.open(aad, iv + body) == inner


def test_cbc_hmac_known_construction() -> None:
    key, integ_key = bytes(range(16)), bytes(range(100, 132))
    iv = bytes(range(200, 216))
    cipher = CbcHmacSkCipher(
        EncrId.ENCR_AES_CBC, 128, key, IntegId.AUTH_HMAC_SHA2_256_128, integ_key, iv_source=lambda n: iv[:n]
    )
    inner = b"payload chain 21 oct"  # 20 octets -> 11 padding octets + Pad Length = 32
    assert cipher.sealed_len(len(inner)) == 16 + 32 + 16
    sealed = cipher.seal(HEADER, inner)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(inner + bytes(11) + b"\x0b") + enc.finalize()
    # RFC 7296 3.14 / RFC 4868: ICV = first 128 bits of HMAC-SHA-256 over header .. ciphertext.
    icv = hmac.new(integ_key, HEADER + iv + ct, "sha256").digest()[:16]
    assert sealed == iv + ct + icv
    assert cipher.open(HEADER, sealed) == inner


Case = tuple[int, int | None] | tuple[int, int | None, int]

AEAD_CASES: list[Case] = [
    (EncrId.ENCR_AES_GCM_16, 128),
    (EncrId.ENCR_AES_GCM_16, 192),
    (EncrId.ENCR_AES_GCM_16, 256),
    (EncrId.ENCR_AES_GCM_12, 256),
    (EncrId.ENCR_AES_GCM_8, 128),
    (EncrId.ENCR_AES_CCM_16, 128),
    (EncrId.ENCR_AES_CCM_8, 256),
    (EncrId.ENCR_CHACHA20_POLY1305, None),
]
CBC_CASES: list[Case] = [
    *(
        (EncrId.ENCR_AES_CBC, bits, integ)
        for bits, integ in itertools.product(
            (128, 192, 256),
            (
                IntegId.AUTH_HMAC_SHA2_256_128,
                IntegId.AUTH_HMAC_SHA2_384_192,
                IntegId.AUTH_HMAC_SHA2_512_256,
                IntegId.AUTH_HMAC_SHA1_96,
            ),
        )
    ),
    (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_MD5_96),
    (EncrId.ENCR_3DES, None, IntegId.AUTH_HMAC_SHA2_256_128),
]


def make_pair(case: Case) -> tuple[SkCipher, SkCipher]:
    """Two independent cipher objects over the same keys (sender and receiver)."""
    if len(case) == 2:
        encr, bits = case
        key = os.urandom(encr_key_len(encr, bits))
        return AeadSkCipher(encr, bits, key), AeadSkCipher(encr, bits, key)
    encr, bits, integ = case
    key, ikey = os.urandom(encr_key_len(encr, bits)), os.urandom(integ_key_len(integ))
    return CbcHmacSkCipher(encr, bits, key, integ, ikey), CbcHmacSkCipher(encr, bits, key, integ, ikey)


ALL_CASES: list[Case] = [*AEAD_CASES, *CBC_CASES]


def _case_id(case: Case) -> str:
    name = f"{EncrId(case[0]).name}-{case[1]}"
    return name + (f"-{IntegId(case[2]).name}" if len(case) == 3 else "")


IDS = [_case_id(c) for c in ALL_CASES]


@pytest.mark.parametrize("case", ALL_CASES, ids=IDS)
def test_round_trip_every_length(case: Case) -> None:
    tx, rx = make_pair(case)
    for n in range(0, 70):
        inner = os.urandom(n)
        sealed = tx.seal(HEADER, inner)
        assert len(sealed) == tx.sealed_len(n)
        assert rx.open(HEADER, sealed) == inner


@pytest.mark.parametrize("case", ALL_CASES, ids=IDS)
def test_any_bit_flip_is_rejected(case: Case) -> None:
    tx, rx = make_pair(case)
    inner = b"\x29\x00\x00\x0c" + b"notify!!"
    sealed = tx.seal(HEADER, inner)
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            rx.open(HEADER, bytes(bad))
    for i in range(len(HEADER)):
        bad_header = bytearray(HEADER)
        bad_header[i] ^= 0x80
        with pytest.raises(IntegrityError):
            rx.open(bytes(bad_header), sealed)


@pytest.mark.parametrize("case", ALL_CASES, ids=IDS)
def test_truncated_or_extended_body_is_rejected(case: Case) -> None:
    tx, rx = make_pair(case)
    sealed = tx.seal(HEADER, b"x" * 33)
    for cut in range(0, len(sealed)):
        with pytest.raises(IntegrityError):
            rx.open(HEADER, sealed[:cut])
    for extra in (b"\x00", b"\x00" * 16):
        with pytest.raises(IntegrityError):
            rx.open(HEADER, sealed + extra)


@pytest.mark.parametrize("case", ALL_CASES, ids=IDS)
def test_wrong_key_is_rejected(case: Case) -> None:
    tx, _ = make_pair(case)
    _, other = make_pair(case)
    with pytest.raises(IntegrityError):
        other.open(HEADER, tx.seal(HEADER, b"hello"))


def test_aead_ivs_are_a_counter() -> None:
    key = os.urandom(36)
    cipher = AeadSkCipher(EncrId.ENCR_AES_GCM_16, 256, key, iv_start=2**64 - 1)
    a, b, c = (cipher.seal(HEADER, b"m")[:8] for _ in range(3))
    assert (a, b, c) == (b"\xff" * 8, bytes(8), bytes(7) + b"\x01")
    # Two ciphers built without iv_start start at independent random points.
    starts = {AeadSkCipher(EncrId.ENCR_AES_GCM_16, 256, key).seal(HEADER, b"")[:8] for _ in range(8)}
    assert len(starts) == 8


def test_aead_accepts_peer_padding_and_rejects_bad_pad_length() -> None:
    key = os.urandom(20)
    cipher = AeadSkCipher(EncrId.ENCR_AES_GCM_16, 128, key)
    iv = b"\x00" * 7 + b"\x05"
    padded = b"inner" + b"\xaa\xbb\xcc" + b"\x03"  # RFC 7296 3.14: padding content is arbitrary
    assert cipher.open(HEADER, iv + cipher.encrypt_raw(iv, padded, HEADER)) == b"inner"
    too_long = b"ab" + b"\x05"
    with pytest.raises(IntegrityError):
        cipher.open(HEADER, iv + cipher.encrypt_raw(iv, too_long, HEADER))


def test_cbc_accepts_longer_padding_and_rejects_bad_pad_length() -> None:
    key, ikey = os.urandom(16), os.urandom(32)
    cipher = CbcHmacSkCipher(EncrId.ENCR_AES_CBC, 128, key, IntegId.AUTH_HMAC_SHA2_256_128, ikey)

    def forge(plain_with_padding: bytes) -> bytes:
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        ct = enc.update(plain_with_padding) + enc.finalize()
        return iv + ct + hmac.new(ikey, HEADER + iv + ct, "sha256").digest()[:16]

    # 14 octets of payload + 17 padding + Pad Length = 32: not minimal, but must be accepted.
    assert cipher.open(HEADER, forge(b"P" * 14 + bytes(17) + b"\x11")) == b"P" * 14
    # Pad Length larger than the plaintext: authentic but malformed -> IntegrityError.
    with pytest.raises(IntegrityError):
        cipher.open(HEADER, forge(b"P" * 15 + b"\xff"))


def test_make_sk_ciphers_directions() -> None:
    for text in ("aes256gcm16-prfsha256-ecp256", "aes128-sha256-modp2048", "chacha20poly1305-prfsha256-x25519"):
        proposal = parse_proposal(text, ProtocolId.IKE)
        keys = derive_ike_keys(proposal, os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(8), os.urandom(8))
        i_out, i_in = make_sk_ciphers(proposal, keys, True)
        r_out, r_in = make_sk_ciphers(proposal, keys, False)
        assert r_in.open(HEADER, i_out.seal(HEADER, b"request")) == b"request"
        assert i_in.open(HEADER, r_out.seal(HEADER, b"response")) == b"response"
        with pytest.raises(IntegrityError):  # SK_ei != SK_er
            i_in.open(HEADER, i_out.seal(HEADER, b"reflected"))


def test_constructor_validation() -> None:
    with pytest.raises(LocalProtocolError):
        AeadSkCipher(EncrId.ENCR_AES_GCM_16, 128, b"short")
    with pytest.raises(LocalProtocolError):
        AeadSkCipher(EncrId.ENCR_AES_CBC, 128, bytes(16))
    with pytest.raises(LocalProtocolError):
        CbcHmacSkCipher(EncrId.ENCR_AES_CBC, 128, bytes(16), IntegId.AUTH_HMAC_SHA2_256_128, bytes(31))
    with pytest.raises(LocalProtocolError):
        CbcHmacSkCipher(EncrId.ENCR_AES_GCM_16, 128, bytes(20), IntegId.AUTH_HMAC_SHA2_256_128, bytes(32))
    with pytest.raises(LocalProtocolError):
        make_sk_ciphers(
            parse_proposal("aes128-aes256-sha256-modp2048", ProtocolId.IKE),
            derive_ike_keys(
                parse_proposal("aes128-sha256-modp2048", ProtocolId.IKE), b"n", b"m", b"g", b"i" * 8, b"r" * 8
            ),
            True,
        )


@settings(max_examples=60, deadline=None)
@given(
    inner=st.binary(max_size=300), header=st.binary(min_size=32, max_size=32), idx=st.integers(0, len(ALL_CASES) - 1)
)
def test_property_round_trip(inner: bytes, header: bytes, idx: int) -> None:
    tx, rx = make_pair(ALL_CASES[idx])
    sealed = tx.seal(header, inner)
    assert len(sealed) == tx.sealed_len(len(inner))
    assert rx.open(header, sealed) == inner
