"""Identities of a certificate and strongSwan's matching rules (ipsecd.certidentity)."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ipsecd import der
from ipsecd.certidentity import cert_identities, cert_matches_identity, dn_matches, identity_text
from ipsecd.iana import IdType
from tests.pki import TestPki, name

DN, FQDN, EMAIL, V4, V6, KEYID = (IdType.ID_DER_ASN1_DN, IdType.ID_FQDN, IdType.ID_RFC822_ADDR,
                                  IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR, IdType.ID_KEY_ID)


@pytest.fixture
def gateway(pki: TestPki) -> x509.Certificate:
    root = pki.root()
    other = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03upn")
    return pki.issue("C=CH, O=ipsecd, CN=gw.example.com", root, sans=[
        "DNS:gw.example.com", "DNS:*.vpn.example.com", "IP:192.0.2.1", "IP:2001:db8::1", "email:admin@Example.com",
        "DN:O=ipsecd, CN=alias", "URI:https://example.com/", other]).cert


def test_identities_are_subject_then_sans(gateway: x509.Certificate) -> None:
    assert cert_identities(gateway) == [
        (DN, gateway.subject.public_bytes()),
        (FQDN, b"gw.example.com"),
        (FQDN, b"*.vpn.example.com"),
        (V4, ipaddress.ip_address("192.0.2.1").packed),
        (V6, ipaddress.ip_address("2001:db8::1").packed),
        (EMAIL, b"admin@Example.com"),
        (DN, name("O=ipsecd, CN=alias").public_bytes()),
    ]  # URI and otherName (Microsoft UPN) have no IKE ID type


def test_a_certificate_with_only_a_dn(pki: TestPki) -> None:
    cert = pki.issue("C=CH, O=ipsecd, CN=client", pki.root(), sans=[]).cert
    assert cert_identities(cert) == [(DN, cert.subject.public_bytes())]
    assert cert_matches_identity(cert, DN, cert.subject.public_bytes())
    assert not cert_matches_identity(cert, FQDN, b"client")  # a CN is not a SAN (RFC 4945 3.1)


def test_san_only_certificate_has_no_empty_dn(pki: TestPki) -> None:
    cert = pki.issue(x509.Name([]), pki.root(), sans=["DNS:sanonly.example.com"],
                     extra=[]).cert
    assert cert_identities(cert) == [(FQDN, b"sanonly.example.com")]


@pytest.mark.parametrize(("id_type", "data", "expected"), [
    (FQDN, b"gw.example.com", True),
    (FQDN, b"GW.Example.COM", True),  # DNS names ignore case
    (FQDN, b"gw.example.co", False),
    (FQDN, b"*.example.com", True),  # a configured pattern: leading wildcard
    (FQDN, b"*", True),
    (FQDN, b"*.other.com", False),
    (FQDN, b"x.vpn.example.com", False),  # the certificate's own wildcard is not expanded
    (FQDN, b"*.vpn.example.com", True),  # ...it matches only itself
    (EMAIL, b"ADMIN@example.com", True),
    (EMAIL, b"*@example.com", True),
    (EMAIL, b"root@example.com", False),
    (V4, ipaddress.ip_address("192.0.2.1").packed, True),
    (V4, ipaddress.ip_address("192.0.2.2").packed, False),
    (V6, ipaddress.ip_address("2001:db8::1").packed, True),
    (V4, ipaddress.ip_address("2001:db8::1").packed, False),  # type must agree
    (IdType.ID_DER_ASN1_GN, b"\x30\x00", False),
])
def test_matching(gateway: x509.Certificate, id_type: IdType, data: bytes, expected: bool) -> None:
    assert cert_matches_identity(gateway, id_type, data) is expected


def test_dn_matching(gateway: x509.Certificate) -> None:
    assert cert_matches_identity(gateway, DN, gateway.subject.public_bytes())
    # the directoryName SAN is an identity as well
    assert cert_matches_identity(gateway, DN, name("O=ipsecd, CN=alias").public_bytes())
    assert cert_matches_identity(gateway, DN, name("C=CH, O=ipsecd, CN=*").public_bytes())
    assert cert_matches_identity(gateway, DN, name("C=CH, O=*, CN=*").public_bytes())
    assert not cert_matches_identity(gateway, DN, name("C=CH, CN=gw.example.com").public_bytes())  # RDN count
    assert not cert_matches_identity(gateway, DN, name("O=ipsecd, C=CH, CN=gw.example.com").public_bytes())  # order
    assert not cert_matches_identity(gateway, DN, name("C=CH, O=ipsecd, CN=other").public_bytes())


def _dn(*attrs: tuple[x509.ObjectIdentifier, int, str]) -> bytes:
    """A DN with chosen string types (tag), one attribute per RDN."""
    return der.sequence(*(der.encode(der.SET, der.sequence(der.encode_oid(oid.dotted_string),
                                                           der.encode(tag, value.encode())))
                          for oid, tag, value in attrs))


def test_dn_case_rules_follow_strongswan() -> None:
    """PrintableString and e-mail IA5String ignore case; UTF8String does not; types may differ."""
    cn, email = NameOID.COMMON_NAME, NameOID.EMAIL_ADDRESS
    p, u, ia5 = der.PRINTABLE_STRING, der.UTF8_STRING, der.IA5_STRING
    assert dn_matches(_dn((cn, p, "Gateway")), _dn((cn, p, "gateway")))
    assert not dn_matches(_dn((cn, u, "Gateway")), _dn((cn, u, "gateway")))
    assert dn_matches(_dn((cn, u, "gw")), _dn((cn, p, "gw")))
    assert dn_matches(_dn((email, ia5, "A@B.c")), _dn((email, ia5, "a@b.C")))
    assert not dn_matches(_dn((cn, ia5, "A@B.c")), _dn((cn, ia5, "a@b.C")))
    assert dn_matches(_dn((cn, u, "x"), (cn, u, "y")), _dn((cn, u, "x"), (cn, p, "*")))
    assert not dn_matches(b"\x30\x03\x31\x01", b"\x30\x00")  # malformed never matches


def test_key_id(gateway: x509.Certificate) -> None:
    spki = gateway.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    ski = gateway.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert cert_matches_identity(gateway, KEYID, ski)
    assert cert_matches_identity(gateway, KEYID, hashlib.sha1(spki).digest())
    assert not cert_matches_identity(gateway, KEYID, b"\x00" * 20)


def test_identity_text() -> None:
    assert identity_text(FQDN, b"gw\nINJECTED") == "gw\\x0aINJECTED"
    assert identity_text(V4, bytes([192, 0, 2, 1])) == "192.0.2.1"
    assert identity_text(DN, name("C=CH, O=ipsecd, CN=gw").public_bytes()) == "C=CH, O=ipsecd, CN=gw"
    assert identity_text(DN, b"\x30\x05") .startswith("(malformed DN")
    assert identity_text(KEYID, b"\x01\x02") == "ID_KEY_ID:0102"
    assert identity_text(99, b"\x01") == "id-type-99:01"
