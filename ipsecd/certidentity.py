"""The IKE identities a certificate vouches for, and strongSwan's rules for matching one.

An identity is kept as its wire form, ``(IdType, bytes)`` as in the ID payload
(RFC 7296 3.5), so this module plugs into whichever identity type the engine uses.

Rules (strongSwan 5.9's ``x509_cert.has_subject`` with ``identification_t.matches``):

- The ID must be the certificate's subject DN or one of its subjectAltNames; a
  hostname in the subject's CN does **not** count (RFC 4945 3.1.x: use SANs).
- FQDN and RFC822 IDs compare case-insensitively; a leading ``*`` in the ID (a
  configured pattern such as ``*.example.com`` or ``*@example.com``) matches any value
  ending with the rest, and ``*`` alone matches any value of that type.  A wildcard in
  the *certificate* (``DNS:*.example.com``) is not expanded: it only matches the same
  literal ID, as in strongSwan.
- DNs compare RDN by RDN in order: same attribute types; values byte for byte, except
  PrintableString values and IA5String e-mail attributes, which ignore case; a value
  of ``*`` in the ID matches any value.
- IP addresses compare as bytes; KEY_ID matches the subjectKeyIdentifier or the
  SHA-1 of the SubjectPublicKeyInfo or of the bare public key.
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.x509.oid import NameOID

from ipsecd import der
from ipsecd.iana import IdType
from ipsecd.logsafe import safe
from ipsecd.x509util import extension

Identity = tuple[IdType, bytes]

_EMAIL_OID = NameOID.EMAIL_ADDRESS.dotted_string


def cert_identities(cert: x509.Certificate) -> list[Identity]:
    """The subject DN (unless empty) and every SAN usable as an IKE ID, in certificate order."""
    out: list[Identity] = []
    subject = cert.subject.public_bytes()
    if len(cert.subject) > 0:
        out.append((IdType.ID_DER_ASN1_DN, subject))
    for name in _sans(cert):
        ident = _san_identity(name)
        if ident is not None and ident not in out:
            out.append(ident)
    return out


def cert_matches_identity(cert: x509.Certificate, id_type: int, data: bytes) -> bool:
    """Whether ``cert`` may authenticate the ID ``(id_type, data)`` (strongSwan's rules, above)."""
    if id_type == IdType.ID_KEY_ID:
        return _matches_key_id(cert, data)
    return any(kind == id_type and identity_matches(kind, value, data) for kind, value in cert_identities(cert))


def identity_matches(id_type: int, value: bytes, pattern: bytes) -> bool:
    """Whether the concrete ID ``value`` matches ``pattern`` (an ID that may hold wildcards)."""
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return _string_matches(value, pattern)
    if id_type == IdType.ID_DER_ASN1_DN:
        return dn_matches(value, pattern)
    return value == pattern


def dn_matches(dn: bytes, pattern: bytes) -> bool:
    """strongSwan's ``compare_dn``: RDNs in order, ``*`` values in ``pattern`` match anything."""
    if dn == pattern:
        return True
    try:
        ours, theirs = _dn_attributes(dn), _dn_attributes(pattern)
    except der.DerError:
        return False
    if len(ours) != len(theirs):
        return False
    for (oid, tag, value), (p_oid, p_tag, p_value) in zip(ours, theirs, strict=True):
        if oid != p_oid:
            return False
        if p_value == b"*":
            continue
        if tag == p_tag and (tag == der.PRINTABLE_STRING or (tag == der.IA5_STRING and oid == _EMAIL_OID)):
            if value.lower() != p_value.lower():
                return False
        elif value != p_value:
            return False
    return True


def _string_matches(value: bytes, pattern: bytes) -> bool:
    # strongSwan's equals_strcasecmp refuses values with a NUL in them
    if b"\x00" in value or b"\x00" in pattern:
        return False
    if value.lower() == pattern.lower():
        return True
    if not pattern.startswith(b"*") or len(value) < len(pattern):
        return False
    return pattern == b"*" or value.lower().endswith(pattern[1:].lower())


def _dn_attributes(dn: bytes) -> list[tuple[str, int, bytes]]:
    """(type OID, value tag, value bytes) of every attribute, RDN by RDN."""
    out: list[tuple[str, int, bytes]] = []
    for rdn in der.read_single(dn).expect(der.SEQUENCE, "Name").children():
        for atv in rdn.expect(der.SET, "RelativeDistinguishedName").children():
            parts = atv.expect(der.SEQUENCE, "AttributeTypeAndValue").children()
            if len(parts) != 2:
                raise der.DerError("AttributeTypeAndValue needs a type and a value")
            out.append((der.decode_oid(parts[0]), parts[1].tag, parts[1].value))
    return out


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    sans = extension(cert, x509.SubjectAlternativeName)  # malformed: path validation refuses it anyway
    return list(sans) if sans is not None else []


def _san_identity(name: x509.GeneralName) -> Identity | None:
    if isinstance(name, x509.DNSName):
        return IdType.ID_FQDN, name.value.encode("ascii", "surrogateescape")
    if isinstance(name, x509.RFC822Name):
        return IdType.ID_RFC822_ADDR, name.value.encode("ascii", "surrogateescape")
    if isinstance(name, x509.IPAddress):
        if isinstance(name.value, IPv4Address):
            return IdType.ID_IPV4_ADDR, name.value.packed
        if isinstance(name.value, IPv6Address):
            return IdType.ID_IPV6_ADDR, name.value.packed
        return None  # a network, only meaningful in name constraints
    if isinstance(name, x509.DirectoryName):
        return IdType.ID_DER_ASN1_DN, name.value.public_bytes()
    return None  # URI, otherName (e.g. Microsoft UPN), registeredID: no IKE ID type


def _matches_key_id(cert: x509.Certificate, data: bytes) -> bool:
    ski_ext = extension(cert, x509.SubjectKeyIdentifier)
    ski = ski_ext.digest if ski_ext is not None else None
    spki = der.spki_from_tbs(cert.tbs_certificate_bytes)
    bare = der.read_single(spki).children()[1].expect(der.BIT_STRING, "subjectPublicKey").value[1:]
    return data in (ski, hashlib.sha1(spki).digest(), hashlib.sha1(bare).digest())


# Short names for the attribute types a DN in a log line usually has (RFC 4514 2.3).
_SHORT_NAMES = {
    NameOID.COMMON_NAME.dotted_string: "CN",
    NameOID.ORGANIZATION_NAME.dotted_string: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string: "OU",
    NameOID.COUNTRY_NAME.dotted_string: "C",
    NameOID.LOCALITY_NAME.dotted_string: "L",
    NameOID.STATE_OR_PROVINCE_NAME.dotted_string: "ST",
    NameOID.DOMAIN_COMPONENT.dotted_string: "DC",
    NameOID.SERIAL_NUMBER.dotted_string: "serialNumber",
    _EMAIL_OID: "E",
}


def identity_text(id_type: int, data: bytes) -> str:
    """An ID as text for a log line or an error message (escaped: it may come from the peer)."""
    if id_type == IdType.ID_IPV4_ADDR and len(data) == 4:
        return str(IPv4Address(data))
    if id_type == IdType.ID_IPV6_ADDR and len(data) == 16:
        return str(IPv6Address(data))
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return safe(data)
    if id_type == IdType.ID_DER_ASN1_DN:
        try:
            attrs = _dn_attributes(data)
        except der.DerError:
            return f"(malformed DN {data[:32].hex()})"
        text = ", ".join(
            f"{_SHORT_NAMES.get(oid, oid)}={value.decode('utf-8', 'replace')}" for oid, _tag, value in attrs
        )
        return safe(text)
    try:
        label = IdType(id_type).name
    except ValueError:
        label = f"id-type-{id_type}"
    return f"{label}:{data.hex()}"
