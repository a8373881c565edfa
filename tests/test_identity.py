"""The one Identity: strongSwan's text forms, DER DNs (checked against cryptography and strongSwan's
own pki tool), display and log safety, match qualities, secret lookup and connection choice."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from ipsecd.config import Config, IkeSecret, Settings, load_config
from ipsecd.iana import IdType, NotifyType
from ipsecd.identity import ANY_IDENTITY, DISPLAY_LIMIT, Identity, IdMatch
from ipsecd.ike.events import IkeSaClosed, IkeSaEstablished
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.settings import IkeSettings
from ipsecd.shell.views import sa_info
from tests.ike_pair import A_ADDR, Pair, make_settings, make_settings_b

I = Identity.parse  # noqa: E741

# --------------------------------------------------------------------------- text forms

# DER from strongSwan 5.9.8 itself: `pki --self --dn TEXT` then `pki --dn --format hex`
SWAN_MOON = ("3040310b300906035504061302434831133011060355040a130a7374726f6e675377616e311c301a060355040313136d6f"
             "6f6e2e7374726f6e677377616e2e6f7267")
SWAN_MOON_SHORT = ("3031310b300906035504061302434831133011060355040a130a7374726f6e675377616e310d300b060355040313046d"
                   "6f6f6e")

PARSE_CASES = [
    # text, ID type, identification data (hex), display text
    ("192.0.2.1", IdType.ID_IPV4_ADDR, "c0000201", "192.0.2.1"),
    ("ipv4:192.0.2.1", IdType.ID_IPV4_ADDR, "c0000201", "192.0.2.1"),
    ("ipv4:#c0000201", IdType.ID_IPV4_ADDR, "c0000201", "192.0.2.1"),
    ("2001:db8::1", IdType.ID_IPV6_ADDR, "20010db8000000000000000000000001", "2001:db8::1"),
    ("IPv6:2001:DB8::1", IdType.ID_IPV6_ADDR, "20010db8000000000000000000000001", "2001:db8::1"),
    ("10.0.0.0/8", IdType.ID_IPV4_ADDR_SUBNET, "0a000000ff000000", "10.0.0.0/8"),
    ("10.1.2.3/8", IdType.ID_IPV4_ADDR_SUBNET, "0a000000ff000000", "10.0.0.0/8"),  # host bits dropped
    ("ipv4net:10.0.0.0/8", IdType.ID_IPV4_ADDR_SUBNET, "0a000000ff000000", "10.0.0.0/8"),
    ("2001:db8::/32", IdType.ID_IPV6_ADDR_SUBNET, "20010db8" + "00" * 12 + "ff" * 4 + "00" * 12, "2001:db8::/32"),
    ("10.0.0.1-10.0.0.9", IdType.ID_IPV4_ADDR_RANGE, "0a0000010a000009", "10.0.0.1-10.0.0.9"),
    ("ipv6range:2001:db8::1-2001:db8::9", IdType.ID_IPV6_ADDR_RANGE,
     "20010db8" + "00" * 11 + "01" + "20010db8" + "00" * 11 + "09", "2001:db8::1-2001:db8::9"),
    ("a.test", IdType.ID_FQDN, b"a.test".hex(), "a.test"),
    ("  a.test  ", IdType.ID_FQDN, b"a.test".hex(), "a.test"),
    ("@a.test", IdType.ID_FQDN, b"a.test".hex(), "a.test"),
    ("fqdn:a.test", IdType.ID_FQDN, b"a.test".hex(), "a.test"),
    ("dns:a.test", IdType.ID_FQDN, b"a.test".hex(), "a.test"),
    ("@192.0.2.1", IdType.ID_FQDN, b"192.0.2.1".hex(), "192.0.2.1"),  # the name, printed as strongSwan does
    ("gw-a.example.net", IdType.ID_FQDN, b"gw-a.example.net".hex(), "gw-a.example.net"),  # '-' is no range here
    ("*.example.com", IdType.ID_FQDN, b"*.example.com".hex(), "*.example.com"),
    ("CN", IdType.ID_FQDN, b"CN".hex(), "CN"),  # no '=': a plain name
    ("alice@example.com", IdType.ID_RFC822_ADDR, b"alice@example.com".hex(), "alice@example.com"),
    ("@@alice@example.com", IdType.ID_RFC822_ADDR, b"alice@example.com".hex(), "alice@example.com"),
    ("email:alice", IdType.ID_RFC822_ADDR, b"alice".hex(), "alice"),
    ("rfc822:alice@x", IdType.ID_RFC822_ADDR, b"alice@x".hex(), "alice@x"),
    ("userfqdn:alice@x", IdType.ID_RFC822_ADDR, b"alice@x".hex(), "alice@x"),
    ("*@example.com", IdType.ID_RFC822_ADDR, b"*@example.com".hex(), "*@example.com"),
    ("@#0a1b", IdType.ID_KEY_ID, "0a1b", "0a:1b"),
    ("keyid:#0A:1B", IdType.ID_KEY_ID, "0a1b", "0a:1b"),
    ("keyid:0a1b", IdType.ID_KEY_ID, b"0a1b".hex(), "0a1b"),  # strongSwan: without '#', the text itself
    ("keyid:#" + "00" * 20, IdType.ID_KEY_ID, "00" * 20, ":".join(["00"] * 20)),
    ("keyid:" + "k" * 20, IdType.ID_KEY_ID, b"k".hex() * 20, ":".join(["6b"] * 20)),  # 20 bytes: a SHA-1, hex
    ("{11}:#0102", IdType.ID_KEY_ID, "0102", "01:02"),
    ("{2}:a.test", IdType.ID_FQDN, b"a.test".hex(), "a.test"),
    ("asn1dn:#" + SWAN_MOON, IdType.ID_DER_ASN1_DN, SWAN_MOON, "C=CH, O=strongSwan, CN=moon.strongswan.org"),
    ("asn1dn:#3000", IdType.ID_DER_ASN1_DN, "3000", ""),
    ("asn1gn:#3000", IdType.ID_DER_ASN1_GN, "3000", "asn1gn:#3000"),
    ("C=CH, O=strongSwan, CN=moon.strongswan.org", IdType.ID_DER_ASN1_DN, SWAN_MOON,
     "C=CH, O=strongSwan, CN=moon.strongswan.org"),
    ("asn1dn:C=CH, O=strongSwan, CN=moon.strongswan.org", IdType.ID_DER_ASN1_DN, SWAN_MOON,
     "C=CH, O=strongSwan, CN=moon.strongswan.org"),
    ("/C=CH/O=strongSwan/CN=moon", IdType.ID_DER_ASN1_DN, SWAN_MOON_SHORT, "C=CH, O=strongSwan, CN=moon"),
    ("C=CH,O=strongSwan,CN=moon", IdType.ID_DER_ASN1_DN, SWAN_MOON_SHORT, "C=CH, O=strongSwan, CN=moon"),
    ("c = CH , o=strongSwan,  cn=moon,", IdType.ID_DER_ASN1_DN, SWAN_MOON_SHORT, "C=CH, O=strongSwan, CN=moon"),
    ("CN=*, O=x", IdType.ID_DER_ASN1_DN, "3018310a300806035504030c012a310a3008060355040a130178", "CN=*, O=x"),
    ("CN=, O=x", IdType.ID_DER_ASN1_DN, "30173109300706035504031300310a3008060355040a130178", "CN=, O=x"),
    ("E=a@b.c, CN=x", IdType.ID_DER_ASN1_DN,
     "30223114301206092a864886f70d01090116056140622e63310a30080603550403130178", "E=a@b.c, CN=x"),
    ("emailAddress=a@b.c", IdType.ID_DER_ASN1_DN, "30163114301206092a864886f70d01090116056140622e63", "E=a@b.c"),
    ("DC=org, DC=example, UID=jdoe", IdType.ID_DER_ASN1_DN,
     "304431133011060a0992268993f22c64011913036f726731173015060a0992268993f22c64011913076578616d706c6531143012"
     "060a0992268993f22c64010113046a646f65", "DC=org, DC=example, UID=jdoe"),
    ("/CN=x/O=y, z", IdType.ID_DER_ASN1_DN, "301b310a30080603550403130178310d300b060355040a1304792c207a",
     "CN=x, O=y, z"),
    ("CN=a=b", IdType.ID_DER_ASN1_DN, "300e310c300a06035504031303613d62", "CN=a=b"),
    # strongSwan prints "CN=Z??rich"; ipsecd shows the UTF-8 (log-safe either way)
    ("CN=Zürich", IdType.ID_DER_ASN1_DN, "30123110300e06035504030c075ac3bc72696368", "CN=Zürich"),
    ("title=boss, givenName=Al", IdType.ID_DER_ASN1_DN,
     "301c310d300b060355040c1304626f7373310b3009060355042a1302416c", "T=boss, G=Al"),
    ("1.2.3.4=x", IdType.ID_DER_ASN1_DN, "300c310a300806032a0304130178", "2a:03:04=x"),
    ("%any", None, "", "%any"),
    ("%any6", None, "", "%any"),
    ("", None, "", "%any"),
    ("*", None, "", "%any"),
    ("0.0.0.0", None, "", "%any"),
    ("::", None, "", "%any"),
]


@pytest.mark.parametrize(("text", "id_type", "data", "display"), PARSE_CASES,
                         ids=[c[0] or "empty" for c in PARSE_CASES])
def test_parse(text: str, id_type: IdType | None, data: str, display: str) -> None:
    ident = I(text)
    assert (ident.id_type, ident.data.hex(), str(ident)) == (id_type, data, display)
    assert Identity.from_wire(int(id_type), bytes.fromhex(data)) == ident if id_type is not None else ident.is_any
    assert hash(ident) == hash(Identity(id_type, bytes.fromhex(data)))


@pytest.mark.parametrize(("text", "message"), [
    ("XX=foo", "unknown DN attribute 'XX'"),
    ("commonNme=x", "did you mean 'commonName'?"),
    ("CN=x,,O=y", "an empty attribute"),
    ("=x, CN=y", "is not NAME=value"),
    ("CN x=y", "is not NAME=value"),
    ("E=bjørn@x", "must be ASCII"),
    ("foo:bar", "'foo:' is not an identity type"),
    ("fdqn:a.test", "did you mean 'fqdn:'?"),
    ("ipv4:2001:db8::1", "is not an IPv4 address"),
    ("ipv4:10.0.0.0/8", "is not an IPv4 address"),
    ("ipv4net:10.0.0.1", "is not an IPv4 subnet"),
    ("ipv4:#0102", "takes 4 bytes, not 2"),
    ("keyid:#xyz", "is not hexadecimal"),
    ("@#", "no hex digits"),
    ("keyid:", "nothing after the prefix"),
    ("asn1dn:#300a", "not a DER-encoded distinguished name"),
    ("asn1gn:x", "write a general name as DER in hex"),
    ("10.0.0.0/33", "not a prefix length"),
    ("10.0.0.9-10.0.0.1", "not an address range"),
    ("{0}:x", "not in 1..255"),
    ("@", "an empty FQDN"),
    ("@@", "an empty RFC822"),
    ("a.test\nCRITICAL", "control characters"),
])
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        I(text)


def test_dn_der_is_what_cryptography_encodes() -> None:
    """Independent check of the DER: cryptography's own Name, string types chosen as strongSwan does."""
    P, U, IA5 = _ASN1Type.PrintableString, _ASN1Type.UTF8String, _ASN1Type.IA5String
    expected = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH", P)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "strongSwan", P)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "R&D", U)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "*", U)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "x@y.z", IA5)]),
    ])
    ident = I("C=CH, O=strongSwan, OU=R&D, CN=*, E=x@y.z")
    assert ident.data == expected.public_bytes()
    assert [a.oid for a in x509.Name.from_bytes(ident.data)] == [a.oid for a in expected]  # written order kept


def test_display_of_received_dns() -> None:
    multi = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "a"),
                                                       x509.NameAttribute(NameOID.ORGANIZATION_NAME, "b")]),
                       x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH")])])
    assert str(Identity.from_wire(IdType.ID_DER_ASN1_DN, multi.public_bytes())) == "CN=a, O=b, C=CH"  # flattened
    bmp = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ab", _ASN1Type.BMPString)]).public_bytes()
    assert str(Identity.from_wire(IdType.ID_DER_ASN1_DN, bmp)) == "CN=Ab"
    evil = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x\nCRITICAL forged", _ASN1Type.UTF8String)])
    assert str(Identity.from_wire(IdType.ID_DER_ASN1_DN, evil.public_bytes())) == "CN=x\\x0aCRITICAL forged"


# --------------------------------------------------------------------------- strongSwan's pki as the oracle

PKI_DNS = [
    "C=CH, O=strongSwan, CN=moon.strongswan.org",
    "/C=CH/O=strongSwan/CN=moon",
    "C=CH,O=strongSwan,CN=moon",
    "c=ch, o=x, cn=y",
    "CN=a b  , O=x",
    "CN=*, O=x",
    "CN=, O=x",
    "CN=a=b",
    "CN=a_b, OU=(R) + co.",
    "E=a@b.c, CN=x",
    "Email=a@b.c, emailAddress=d@e.f",
    "SN=Smith, serialNumber=0815",
    "DC=org, DC=example, UID=jdoe",
    "ST=Zug, L=Rapperswil, STREET=Main 1, postalCode=8640, postalAddress=Box 1",
    "T=boss, D=desc, N=nm, G=gv, I=in, dnQualifier=q, dmdName=d, pseudonym=p, ID=x",
    "EN=1, employeeNumber=2, UN=un, unstructuredName=un2, UA=ua, unstructuredAddress=ua2",
    "TCGID=t, ND=n",
    "/CN=x/O=y, z",
    "C=Switzerland",
    "CN=Zürich, O=Grüezi",
]


def _pki(*args: str) -> str:
    assert shutil.which("pki"), "strongSwan's pki tool is missing: install strongswan-pki (make test does)"
    out = subprocess.run(["pki", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("pki")
    (d / "key.pem").write_text(_pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    yield d


def _pki_subject(cert: Path) -> str:
    line = next(x for x in _pki("--print", "--in", str(cert)).splitlines() if x.strip().startswith("subject:"))
    return line.split(":", 1)[1].strip().strip('"')


def test_dn_text_matches_strongswan(pki_dir: Path) -> None:
    """strongSwan parses each DN (pki --self --dn): same DER, and the same display for ASCII values."""
    cert = pki_dir / "self.der"
    for text in PKI_DNS:
        cert.write_bytes(subprocess.run(
            ["pki", "--self", "--in", str(pki_dir / "key.pem"), "--dn", text, "--outform", "der"],
            capture_output=True, check=True, timeout=30).stdout)
        ours = I(text)
        assert ours.data.hex() == _pki("--dn", "--in", str(cert), "--format", "hex").strip(), text
        if text.isascii():
            assert str(ours) == _pki_subject(cert), text


def test_dn_display_matches_strongswan(pki_dir: Path) -> None:
    """Received DNs with attributes strongSwan has no name for, or other string types, print as pki prints them."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        [x509.NameAttribute(NameOID.BUSINESS_CATEGORY, "bank"), x509.NameAttribute(NameOID.COMMON_NAME, "x")],
        [x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "v"), x509.NameAttribute(NameOID.USER_ID, "u")],
        [x509.NameAttribute(NameOID.GENERATION_QUALIFIER, "III"), x509.NameAttribute(NameOID.SURNAME, "S")],
        [x509.NameAttribute(NameOID.JURISDICTION_COUNTRY_NAME, "CH"), x509.NameAttribute(NameOID.TITLE, "t")],
        [x509.NameAttribute(NameOID.COMMON_NAME, "v", _ASN1Type.VisibleString)],
    ]
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    for attrs in names:
        name = x509.Name(attrs)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        path = pki_dir / "other.der"
        path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        assert str(Identity.from_wire(IdType.ID_DER_ASN1_DN, name.public_bytes())) == _pki_subject(path)


# --------------------------------------------------------------------------- from the wire, log safety


def test_from_wire_keeps_what_does_not_fit() -> None:
    assert str(Identity.from_wire(IdType.ID_IPV4_ADDR, b"\x01\x02")) == "ID_IPV4_ADDR:#0102"
    assert str(Identity.from_wire(IdType.ID_FQDN, b"")) == "ID_FQDN:#"
    assert str(Identity.from_wire(IdType.ID_DER_ASN1_DN, b"\x30\x03abc")) == "asn1dn:#3003616263"
    assert str(Identity.from_wire(IdType.ID_IPV4_ADDR_SUBNET, bytes(4) + b"\xf0\x0f\x00\x00")) == \
        "ID_IPV4_ADDR_SUBNET:#00000000f00f0000"  # not a contiguous mask
    unknown = Identity.from_wire(200, b"x")
    assert (unknown.id_type, unknown.data, str(unknown)) == (200, b"x", "{200}:#78")
    assert I(str(unknown)) == unknown  # strongSwan's "{N}:" syntax reads it back
    assert Identity.from_wire(IdType.ID_FQDN, b"\xff").data == b"\xff"
    assert str(Identity.from_wire(IdType.ID_FQDN, b"\xff")) == "\\xff"
    assert Identity.from_wire(IdType.ID_NULL, b"").id_type is IdType.ID_NULL


@given(st.integers(0, 255), st.binary(max_size=600))
def test_from_wire_never_raises(id_type: int, data: bytes) -> None:
    ident = Identity.from_wire(id_type, data)
    text = str(ident)
    assert text.isprintable() and len(text) <= DISPLAY_LIMIT + 20
    assert IdMatch.NONE <= ident.matches(ident) <= IdMatch.PERFECT
    ident.contains_wildcards()
    assert I("C=CH, O=*, CN=*").matches(ident) in (IdMatch.NONE, IdMatch.PERFECT - 2)


@given(st.binary(min_size=1, max_size=80))
def test_mangled_dns_never_raise(noise: bytes) -> None:
    good = I("C=CH, O=strongSwan, CN=moon").data
    cut = noise[0] % len(good)
    for data in (good[:cut] + noise + good[cut:], good[:cut] + noise[1:], noise + good):
        ident = Identity.from_wire(IdType.ID_DER_ASN1_DN, data)
        assert str(ident).isprintable()
        I("C=CH, O=*, CN=*").matches(ident)


@given(st.text(max_size=40))
def test_parse_raises_only_value_error(text: str) -> None:
    try:
        ident = I(text)
    except ValueError:
        return
    assert str(ident).isprintable()


def test_peer_fqdn_with_newline_is_log_safe(caplog: pytest.LogCaptureFixture) -> None:
    peer = Identity.from_wire(IdType.ID_FQDN, b"evil.example\nCRITICAL root password changed")
    assert "\n" not in str(peer) and "\n" not in repr(peer)
    assert str(peer) == "evil.example\\x0aCRITICAL root password changed"
    with caplog.at_level(logging.INFO):
        logging.getLogger("ipsecd.test").info("peer %s", peer)
    assert caplog.records[0].getMessage().count("\n") == 0
    long = Identity.from_wire(IdType.ID_FQDN, b"a" * 5000)
    assert str(long).endswith(f"...[{5000 - DISPLAY_LIMIT} more]")


# --------------------------------------------------------------------------- matching

MATCH_CASES = [
    # configured, peer, quality
    ("%any", "a.test", IdMatch.ANY),
    ("%any", "%any", IdMatch.ANY),
    ("a.test", "%any", IdMatch.NONE),  # a concrete %any is matched only by %any
    ("a.test", "a.test", IdMatch.PERFECT),
    ("a.test", "A.TEST", IdMatch.PERFECT),  # names ignore ASCII case
    ("a.test", "rfc822:a.test", IdMatch.NONE),  # same bytes, other type
    ("a.test", "b.test", IdMatch.NONE),
    ("*.example.com", "vpn.example.com", IdMatch.ONE_WILDCARD),
    ("*.example.com", "a.b.EXAMPLE.com", IdMatch.ONE_WILDCARD),
    ("*.example.com", "example.com", IdMatch.NONE),
    ("*.example.com", "xexample.com", IdMatch.NONE),
    ("*.example.com", "*.example.com", IdMatch.PERFECT),
    ("fqdn:*", "anything.at.all", IdMatch.ANY),  # a lone '*' is no better than %any
    ("vpn.*.com", "vpn.example.com", IdMatch.NONE),  # only a leading wildcard
    ("*@example.com", "alice@example.com", IdMatch.ONE_WILDCARD),
    ("*@example.com", "alice@example.org", IdMatch.NONE),
    ("*@example.com", "fqdn:alice@example.com", IdMatch.NONE),
    ("C=CH, O=strongSwan, CN=moon", "C=CH, O=strongSwan, CN=moon", IdMatch.PERFECT),
    ("C=CH, O=strongSwan, CN=moon", "c=ch, o=STRONGSWAN, cn=MOON", IdMatch.PERFECT),  # PrintableString: caseless
    ("C=CH, O=strongSwan, CN=*", "C=CH, O=strongSwan, CN=moon", IdMatch.ONE_WILDCARD),
    ("C=CH, O=*, CN=*", "C=CH, O=strongSwan, CN=moon", IdMatch.ONE_WILDCARD - 1),
    ("C=CH, CN=*", "C=CH, O=strongSwan, CN=moon", IdMatch.NONE),  # RDN count differs
    ("C=CH, O=strongSwan, OU=x, CN=*", "C=CH, O=strongSwan, CN=moon", IdMatch.NONE),
    ("O=strongSwan, C=CH, CN=moon", "C=CH, O=strongSwan, CN=moon", IdMatch.NONE),  # order matters
    ("C=CH, O=strongSwan, CN=moon", "C=CH, O=strongSwan, CN=*", IdMatch.NONE),  # the peer's '*' is no wildcard
    ("CN=Zürich", "CN=zürich", IdMatch.NONE),  # UTF8String: exact
    ("E=Alice@Example.com", "E=alice@example.com", IdMatch.PERFECT),  # email: caseless
    ("UN=Alice", "UN=alice", IdMatch.NONE),  # other IA5Strings: exact
    (", ".join(["CN=*"] * 18), ", ".join(["CN=x"] * 18), IdMatch.PERFECT - 17),  # wildcards count up to 17
    ("C=CH, CN=moon", "moon", IdMatch.NONE),
    ("@#0102", "keyid:#0102", IdMatch.PERFECT),
    ("@#0102", "@#0103", IdMatch.NONE),
    ("keyid:abc", "keyid:#616263", IdMatch.PERFECT),
    ("keyid:ABC", "keyid:abc", IdMatch.NONE),  # key ids are bytes
    ("192.0.2.1", "192.0.2.1", IdMatch.PERFECT),
    ("192.0.2.1", "@192.0.2.1", IdMatch.NONE),
    ("192.0.2.1", "192.0.2.2", IdMatch.NONE),
    ("10.0.0.0/8", "10.1.2.3", IdMatch.ONE_WILDCARD),
    ("10.0.0.0/8", "11.0.0.1", IdMatch.NONE),
    ("10.0.0.0/8", "10.0.0.0/8", IdMatch.PERFECT),
    ("10.0.0.5/32", "10.0.0.5", IdMatch.PERFECT),
    ("0.0.0.0/0", "198.51.100.7", IdMatch.MAX_WILDCARDS),
    ("10.0.0.0/8", "2001:db8::1", IdMatch.NONE),
    ("10.0.0.0/8", "fqdn:10.0.0.1", IdMatch.NONE),
    ("10.0.0.1-10.0.0.9", "10.0.0.9", IdMatch.ONE_WILDCARD),
    ("10.0.0.1-10.0.0.9", "10.0.0.10", IdMatch.NONE),
    ("10.0.0.5-10.0.0.5", "10.0.0.5", IdMatch.PERFECT),
    ("2001:db8::/32", "2001:db8::1", IdMatch.ONE_WILDCARD),
    ("2001:db8::1-2001:db8::ff", "2001:db8::80", IdMatch.ONE_WILDCARD),
]


@pytest.mark.parametrize(("configured", "peer", "quality"), MATCH_CASES,
                         ids=[f"{c}~{p}" for c, p, _ in MATCH_CASES])
def test_matches(configured: str, peer: str, quality: int) -> None:
    assert I(configured).matches(I(peer)) == quality


@pytest.mark.parametrize(("text", "wild"), [
    ("%any", True), ("*.example.com", True), ("a*b.example.com", True), ("*@example.com", True),
    ("C=CH, CN=*", True), ("C=CH, CN=a*", False), ("10.0.0.0/8", True), ("10.0.0.1-10.0.0.2", True),
    ("a.test", False), ("alice@example.com", False), ("C=CH, CN=moon", False), ("@#2a", False), ("192.0.2.1", False),
])
def test_contains_wildcards(text: str, wild: bool) -> None:
    assert I(text).contains_wildcards() is wild


def test_value_semantics() -> None:
    a, b, c = I("@a.test"), I("fqdn:a.test"), Identity.from_wire(IdType.ID_FQDN, b"a.test")
    assert a == b == c and len({a, b, c}) == 1
    assert I("A.test") != a  # equality is on the bytes; matches() is the case-insensitive comparison
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.data = b"x"  # type: ignore[misc]
    assert Identity.from_address("192.0.2.1") == I("192.0.2.1")
    assert I("192.0.2.1").to_wire() == (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1]))
    for pattern in ("%any", "10.0.0.0/8", "10.0.0.1-10.0.0.2"):
        with pytest.raises(ValueError, match="cannot be sent"):
            I(pattern).to_wire()
    assert ANY_IDENTITY.is_any and Identity(None, b"junk") == ANY_IDENTITY


# --------------------------------------------------------------------------- secret lookup


def _secrets(*entries: tuple[list[str], bytes]) -> Config:
    return Config({}, tuple(IkeSecret(tuple(I(i) for i in ids), key) for ids, key in entries), Settings(), Path("x"))


def test_psk_lookup_picks_the_best_secret() -> None:
    cfg = _secrets((["%any"], b"fallback"), (["*@example.com"], b"group"), (["alice@example.com"], b"alice"),
                   (["C=CH, O=corp, CN=*"], b"dn-group"), (["gw.example.com", "C=CH, O=corp, CN=bob"], b"bob"))
    gw = I("gw.example.com")
    assert cfg.find_psk(gw, I("alice@example.com")) == b"alice"  # exact beats the wildcard, whatever the order
    assert cfg.find_psk(gw, I("Carol@Example.COM")) == b"group"
    assert cfg.find_psk(gw, I("C=CH, O=corp, CN=bob")) == b"bob"
    assert cfg.find_psk(gw, I("C=CH, O=corp, CN=eve")) == b"dn-group"
    assert cfg.find_psk(gw, I("other.test")) == b"fallback"
    assert _secrets((["alice@example.com"], b"x")).find_psk(gw, I("bob@example.com")) is None
    assert _secrets(([], b"no ids = any")).find_psk(gw, I("z.test")) == b"no ids = any"


def test_psk_lookup_prefers_the_peer_match_like_strongswan() -> None:
    """credential_manager get_shared: the peer's match quality first, then ours (not their sum)."""
    cfg = _secrets((["gw.example.com"], b"ours only"), (["*@example.com"], b"peer pattern"))
    assert cfg.find_psk(I("gw.example.com"), I("alice@example.com")) == b"peer pattern"
    cfg = _secrets((["*@example.com"], b"pattern"), (["gw.example.com", "*@example.com"], b"both"))
    assert cfg.find_psk(I("gw.example.com"), I("alice@example.com")) == b"both"


def test_config_reads_dn_identities(tmp_path: Path) -> None:
    path = tmp_path / "dn.yaml"
    path.write_text(textwrap.dedent("""\
        connections:
          rw:
            local_addrs: [192.0.2.1]
            local: {auth: psk, id: "C=CH, O=corp, CN=gw"}
            remote: {auth: psk, id: "C=CH, O=corp, CN=*"}
            children:
              net: {local_ts: [10.1.0.0/24]}
        secrets:
          ike:
            - id: "C=CH, O=corp, CN=gw"
              secret: 0x00112233445566778899aabbccddeeff
            - id: ["*@corp.example", "C=CH, O=corp, CN=alice"]
              secret: 0xffeeddccbbaa99887766554433221100
        """))
    cfg = load_config(path)
    conn = cfg.connections["rw"]
    assert conn.local.id == I("/C=CH/O=corp/CN=gw") and conn.remote.id == I("C=CH, O=corp, CN=*")
    assert [len(s.ids) for s in cfg.secrets] == [1, 2]  # the DN's commas do not split it
    assert cfg.find_psk(conn.local.id, I("C=CH, O=corp, CN=alice")) == bytes.fromhex("ffeeddccbbaa99887766554433221100")
    assert cfg.find_psk(conn.local.id, I("C=CH, O=corp, CN=bob")) == bytes.fromhex("00112233445566778899aabbccddeeff")


# --------------------------------------------------------------------------- connection choice in IKE_AUTH


def _conn(name: str, local_id: str, remote_id: str, psk: bytes) -> IkeSettings:
    return make_settings_b(name=name, local_id=local_id, remote_id=remote_id, psk=psk)


def _run(initiator: IkeSettings, *responder: IkeSettings) -> Pair:
    pair = Pair(IkeManager([initiator], now=1000.0), IkeManager(list(responder), now=1000.0))
    pair.a.initiate(initiator.name, pair.now)
    pair.run_until_quiet()
    return pair


def _chosen(pair: Pair) -> str:
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_a), pair.events_a
    (sa,) = pair.b.list_sas()
    return sa.settings.name


def test_responder_picks_the_best_matching_connection() -> None:
    # each connection has its own key: the wrong choice would fail authentication
    wild = _conn("wild", "b.test", "*.test", b"wildcard key for *.test")
    anyone = _conn("anyone", "b.test", "%any", b"key for anyone at all")
    exact = _conn("exact", "b.test", "a.test", b"key for a.test exactly")
    a = make_settings(name="a", local_id="a.test", remote_id="b.test", psk=b"key for a.test exactly")
    assert _chosen(_run(a, anyone, wild, exact)) == "exact"
    a = make_settings(name="a", local_id="c.test", remote_id="b.test", psk=b"wildcard key for *.test")
    assert _chosen(_run(a, anyone, wild, exact)) == "wild"
    a = make_settings(name="a", local_id="c.example", remote_id="b.test", psk=b"key for anyone at all")
    assert _chosen(_run(a, wild, exact, anyone)) == "anyone"


def test_responder_uses_the_idr_the_peer_asked_for() -> None:
    one = _conn("one", "b1.test", "a.test", b"the key of the first identity")
    two = _conn("two", "b2.test", "a.test", b"the key of the second identity")
    a = make_settings(name="a", local_id="a.test", remote_id="b2.test", psk=b"the key of the second identity")
    pair = _run(a, one, two)
    assert _chosen(pair) == "two"
    assert str(pair.a.list_sas()[0].remote_identity) == "b2.test"
    # without IDr (the initiator accepts any responder identity) the first matching connection wins
    a = make_settings(name="a", local_id="a.test", remote_id="%any", psk=b"the key of the first identity")
    pair = _run(a, one, two)
    assert _chosen(pair) == "one" and str(pair.a.list_sas()[0].remote_identity) == "b1.test"


def test_dn_identities_and_wildcards_end_to_end() -> None:
    b = _conn("corp", "C=CH, O=corp, CN=gw", "C=CH, O=corp, CN=*", b"a corporate pre-shared key")
    a = make_settings(name="a", local_id="C=CH, O=corp, CN=alice", remote_id="C=CH, O=*, CN=gw",
                      psk=b"a corporate pre-shared key")
    pair = _run(a, b)
    assert _chosen(pair) == "corp"
    assert str(pair.b.list_sas()[0].remote_identity) == "C=CH, O=corp, CN=alice"
    assert str(pair.a.list_sas()[0].remote_identity) == "C=CH, O=corp, CN=gw"
    # A's remote id has a wildcard, so A sent no IDr (RFC 7296 2.15); B's status shows its own DN
    assert sa_info(pair.b.list_sas()[0])["local_id"] == "C=CH, O=corp, CN=gw"


def test_no_connection_accepts_the_peer() -> None:
    b = _conn("only", "b.test", "*.example.com", b"some key that nobody has")
    a = make_settings(name="a", local_id="a.test", remote_id="b.test", psk=b"some key that nobody has")
    pair = _run(a, b)
    closed = [e for e in pair.events_a if isinstance(e, IkeSaClosed)]
    assert closed and "AUTHENTICATION_FAILED" in closed[0].reason, pair.events_a
    assert NotifyType.AUTHENTICATION_FAILED.name in closed[0].reason


def test_default_local_identity_is_the_ike_sa_address() -> None:
    a = dataclasses.replace(make_settings(name="a", local_id=A_ADDR, remote_id="b.test"), local_id=None)
    b = make_settings_b(name="b", remote_id="192.0.2.0/24")
    pair = _run(a, b)
    assert _chosen(pair) == "b"
    assert str(pair.b.list_sas()[0].remote_identity) == A_ADDR
    assert sa_info(pair.a.list_sas()[0])["local_id"] == A_ADDR


def test_id_match_sums_both_sides() -> None:
    conn = _conn("c", "b.test", "*.test", b"k" * 16)
    assert conn.id_match(I("a.test"), None) == IdMatch.ONE_WILDCARD + IdMatch.ANY
    assert conn.id_match(I("a.test"), I("B.TEST")) == IdMatch.ONE_WILDCARD + IdMatch.PERFECT
    assert conn.id_match(I("a.test"), I("fqdn:*.test")) == IdMatch.ONE_WILDCARD * 2  # the peer's IDr as a pattern
    assert conn.id_match(I("a.test"), I("c.test")) == IdMatch.NONE
    assert conn.id_match(I("a.example"), None) == IdMatch.NONE
