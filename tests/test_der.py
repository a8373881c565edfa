"""The small DER reader/writer (ipsecd.der): strict on lengths, as peer data needs."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from ipsecd import der
from tests.pki import KEY_KINDS, KeyPool, TestPki


@pytest.mark.parametrize(("data", "why"), [
    (b"", "truncated"),
    (b"\x30", "truncated"),
    (b"\x30\x05\x00", "claims 5"),
    (b"\x30\x80\x00\x00", "indefinite"),
    (b"\x30\x81\x05" + bytes(5), "minimal"),
    (b"\x30\x82\x00\x90" + bytes(0x90), "minimal"),
    (b"\x30\x85\x01\x00\x00\x00\x00", "octets"),
    (b"\x1f\x81\x00\x00", "high tag"),
    (b"\x30\x00\x00", "after the element"),
])
def test_reader_refuses(data: bytes, why: str) -> None:
    with pytest.raises(der.DerError, match=why):
        der.read_single(data)


def test_long_lengths_round_trip() -> None:
    for n in (0, 1, 127, 128, 255, 256, 70000):
        encoded = der.encode(der.OCTET_STRING, bytes(n))
        tlv = der.read_single(encoded)
        assert tlv.tag == der.OCTET_STRING and len(tlv.value) == n and tlv.raw == encoded


@pytest.mark.parametrize("oid", ["1.2.840.113549.1.1.10", "2.5.29.37.0", "1.3.101.112", "2.999.1", "0.9.2342.19200300",
                                 "1.3.6.1.4.1.311.20.2.3"])
def test_oid_round_trip(oid: str) -> None:
    assert der.decode_oid(der.read_single(der.encode_oid(oid))) == oid


def test_oid_known_encoding_and_refusals() -> None:
    assert der.encode_oid("1.2.840.10045.4.3.2") == bytes.fromhex("06082a8648ce3d040302")
    with pytest.raises(der.DerError):
        der.decode_oid(der.read_single(b"\x06\x02\x2a\x86"))  # last arc unterminated
    with pytest.raises(der.DerError):
        der.decode_oid(der.read_single(b"\x06\x02\x80\x01"))  # padded arc
    with pytest.raises(der.DerError):
        der.decode_oid(der.read_single(b"\x04\x01\x2a"))  # not an OID


@given(st.integers(min_value=0, max_value=2**200))
def test_integer_round_trip(n: int) -> None:
    assert der.decode_integer(der.read_single(der.encode_integer(n)), "n") == n


def test_integer_refusals() -> None:
    for body in (b"", b"\x00\x01", b"\xff\x80", b"\x80"):
        with pytest.raises(der.DerError):
            der.decode_integer(der.Tlv(der.INTEGER, body, b""), "n")


@given(st.binary(max_size=64))
def test_reader_never_crashes_on_junk(data: bytes) -> None:
    try:
        tlvs = der.read_all(data)
    except der.DerError:
        return
    assert b"".join(t.raw for t in tlvs) == data


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_spki_from_tbs_is_the_certificates_public_key_info(kind: str, key_pool: KeyPool) -> None:
    pki = TestPki(keys=key_pool)
    cert = pki.issue("spki", None, kind, ca=True).cert
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert der.spki_from_tbs(cert.tbs_certificate_bytes) == spki
