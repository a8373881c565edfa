"""Known-answer test: RFC 7634 Appendix A (ChaCha20-Poly1305 in ESP), both directions."""

from __future__ import annotations

from ipaddress import ip_address

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ipsecd.esp.sa import InboundSa, Mode, OutboundSa, SaParams
from ipsecd.esp.transform import AeadTransform
from ipsecd.iana import EncrId, IntegId

# RFC 7634 Appendix A: KEYMAT = key (32) || salt (4); SPI 0x01020304, sequence number 5,
# IV 0x1011121314151617; the plaintext is an 84-byte IPv4 ICMP echo request
# (198.51.100.5 -> 192.0.2.5) followed by padding 01 02, pad length 2, next header 4.
KEY = bytes(range(0x80, 0xA0))
SALT = bytes.fromhex("a0a1a2a3")
SPI = 0x01020304
SEQ = 5
IV = bytes.fromhex("1011121314151617")
INNER = bytes.fromhex(
    "45000054a6f200004001e778c6336405"
    "c000020508005b7a3a080000553bec10"
    "0007362708090a0b0c0d0e0f10111213"
    "1415161718191a1b1c1d1e1f20212223"
    "2425262728292a2b2c2d2e2f30313233"
    "34353637"
)
PLAINTEXT = INNER + bytes.fromhex("01020204")
CIPHERTEXT_AND_TAG = bytes.fromhex(
    "24039428b97f417e3c13753a4f05087b"
    "67c352e6a7fab1b982d466ef407ae5c6"
    "14ee8099d52844eb61aa95dfab4c02f7"
    "2aa71e7c4c4f64c9befe2facc638e8f3"
    "cbec163fac469b502773f6fb94e664da"
    "9165b82829f641e076aaa8266b7fb0f7"
    "b11b369907e1ad43"
)
ESP_PACKET = SPI.to_bytes(4, "big") + SEQ.to_bytes(4, "big") + IV + CIPHERTEXT_AND_TAG


def _params() -> SaParams:
    return SaParams(
        spi=SPI,
        encr=EncrId.ENCR_CHACHA20_POLY1305,
        encr_key=KEY + SALT,
        integ=IntegId.NONE,
        integ_key=b"",
        esn=False,
        mode=Mode.TUNNEL,
        local_addr=ip_address("192.0.2.1"),
        remote_addr=ip_address("203.0.113.1"),
    )


def test_vector_shape() -> None:
    assert len(INNER) == 0x54
    assert len(PLAINTEXT) == 88
    assert len(CIPHERTEXT_AND_TAG) == 88 + 16


def test_rfc7634_appendix_a_seal_exact_bytes() -> None:
    transform = AeadTransform(EncrId.ENCR_CHACHA20_POLY1305, KEY + SALT, SPI, esn=False)
    assert transform.seal_with_iv(SEQ, IV, PLAINTEXT) == ESP_PACKET


def test_rfc7634_appendix_a_unprotect() -> None:
    sa = InboundSa(_params())
    assert sa.unprotect(ESP_PACKET) == INNER
    assert sa.highest_seq == SEQ


def test_our_padding_matches_the_rfc_example() -> None:
    """protect() builds the same plaintext (padding 01 02, pad length 2, next header 4);
    only the IV differs, being our sequence number."""
    out = OutboundSa(_params())
    out.seq = SEQ - 1
    esp = out.protect(INNER)
    assert esp[:8] == ESP_PACKET[:8]
    assert esp[8:16] == SEQ.to_bytes(8, "big")
    nonce = SALT + esp[8:16]
    assert ChaCha20Poly1305(KEY).decrypt(nonce, esp[16:], esp[:8]) == PLAINTEXT
