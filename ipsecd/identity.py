"""The one IKE identity (RFC 7296 3.5) of config, engine and secret lookup, with strongSwan's rules.

* Text: :meth:`Identity.parse` reads what swanctl.conf accepts (strongSwan's
  ``identification_create_from_string``): addresses, ``@fqdn``, ``user@host``, DNs such
  as ``C=CH, O=strongSwan, CN=moon``, ``%any``, and typed forms (``keyid:#0102``).
* Wire: :meth:`Identity.from_wire` keeps whatever a peer sent and never raises.
* Display: ``str(identity)`` is what strongSwan logs for it (``%Y``), made log-safe.
* Matching: ``configured.matches(peer)`` is strongSwan's match quality (:class:`IdMatch`),
  so the best connection or secret can be chosen, wildcards (``*.example.com``,
  ``CN=*``), subnets and ``%any`` included.

Equality and hashing are on (type, bytes): two spellings of one identity are equal.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import NamedTuple, cast

from cryptography import x509
from cryptography.x509.name import _ASN1Type

from ipsecd.iana import IdType
from ipsecd.logsafe import safe

DISPLAY_LIMIT = 512  # characters of a display text (strongSwan prints identities into 512 bytes)


class IdMatch(IntEnum):
    """How well an identity fits a configured one (strongSwan's ``id_match_t``); higher is better.

    A match using wildcards scores between MAX_WILDCARDS and ONE_WILDCARD: PERFECT minus
    the number of wildcards (a DN with two ``*`` values scores 18).
    """

    NONE = 0
    ANY = 1
    MAX_WILDCARDS = 2
    ONE_WILDCARD = 19
    PERFECT = 20


_NAMES = frozenset({IdType.ID_FQDN, IdType.ID_RFC822_ADDR})
_SUBNETS = {IdType.ID_IPV4_ADDR_SUBNET: 4, IdType.ID_IPV6_ADDR_SUBNET: 16}
_RANGES = {IdType.ID_IPV4_ADDR_RANGE: 4, IdType.ID_IPV6_ADDR_RANGE: 16}
_ADDRESS_OF = {IdType.ID_IPV4_ADDR_SUBNET: IdType.ID_IPV4_ADDR, IdType.ID_IPV4_ADDR_RANGE: IdType.ID_IPV4_ADDR,
               IdType.ID_IPV6_ADDR_SUBNET: IdType.ID_IPV6_ADDR, IdType.ID_IPV6_ADDR_RANGE: IdType.ID_IPV6_ADDR}
_ANY_TEXTS = frozenset({"", "%any", "%any6", "*", "0.0.0.0", "::", "0::0"})  # strongSwan's spellings of ID_ANY


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity; ``id_type`` None is ``%any`` (matches every identity, never sent).

    ``id_type`` is an :class:`IdType`, or the bare number of a type IANA has not assigned
    (kept from the wire, as the codec does). ``data`` is the ID payload's identification
    data. ``text`` is the display form (``str()``), derived from the two.
    """

    id_type: IdType | None
    data: bytes = b""
    text: str = field(init=False, compare=False, repr=False)
    _rdns: tuple[_Attr, ...] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kind = self.id_type
        if kind is not None and not isinstance(kind, IdType):
            with contextlib.suppress(ValueError):  # an unassigned type keeps its number
                kind = IdType(kind)
            object.__setattr__(self, "id_type", kind)
        if kind is None:
            object.__setattr__(self, "data", b"")
        rdns = _decode_dn(self.data) if kind == IdType.ID_DER_ASN1_DN else None
        object.__setattr__(self, "_rdns", rdns)
        object.__setattr__(self, "text", _display(kind, self.data, rdns))

    # ---- constructors

    @classmethod
    def parse(cls, text: str) -> Identity:
        """An identity as written in a config, by strongSwan's rules; ValueError says what is wrong."""
        s = text.strip()
        bad = next((c for c in s if ord(c) < 0x20 or ord(c) == 0x7F), None)
        if bad is not None:
            raise ValueError(f"{safe(s)!r}: an identity cannot contain control characters ({safe(bad)})")
        if s in _ANY_TEXTS:
            return ANY_IDENTITY
        typed = _parse_typed(s)
        if typed is not None:
            return typed
        if "=" in s:
            return cls(IdType.ID_DER_ASN1_DN, encode_dn(s))
        if "@" not in s:
            pattern = _parse_address(s, 6 if ":" in s else 4)
            if pattern is not None:
                return pattern
            if ":" in s:
                prefix = s.partition(":")[0]
                raise ValueError(f"{s!r} is not an IPv6 address, and {prefix + ':'!r} is not an identity type"
                                 f"{_did_you_mean(prefix.lower() + ':', _PREFIXES)} (known: {', '.join(_PREFIXES)}; "
                                 "'keyid:TEXT' makes a key id of any text)")
            return _name(IdType.ID_FQDN, s)
        if s.startswith("@#"):
            return cls(IdType.ID_KEY_ID, _unhex(s[2:], s))
        if s.startswith("@@"):
            return _name(IdType.ID_RFC822_ADDR, s[2:])
        if s.startswith("@"):
            return _name(IdType.ID_FQDN, s[1:])
        return _name(IdType.ID_RFC822_ADDR, s)

    @classmethod
    def from_wire(cls, id_type: int, data: bytes) -> Identity:
        """The identity a peer sent in IDi/IDr; never raises, whatever the bytes."""
        return cls(cast(IdType, id_type), bytes(data))

    @classmethod
    def from_address(cls, addr: IPv4Address | IPv6Address | str) -> Identity:
        """An ID_IPV4_ADDR/ID_IPV6_ADDR identity (strongSwan's default own identity)."""
        ip = ip_address(addr) if isinstance(addr, str) else addr
        return cls(IdType.ID_IPV4_ADDR if ip.version == 4 else IdType.ID_IPV6_ADDR, ip.packed)

    # ---- properties

    @property
    def is_any(self) -> bool:
        return self.id_type is None

    def to_wire(self) -> tuple[IdType, bytes]:
        """(ID type, identification data) for an ID payload; ValueError for %any and address patterns."""
        if self.id_type is None or self.id_type in _SUBNETS or self.id_type in _RANGES:
            raise ValueError(f"the identity pattern {self.text} cannot be sent in an ID payload")
        return self.id_type, self.data

    def contains_wildcards(self) -> bool:
        """Does this identity stand for more than one (``%any``, ``*`` in a name or DN value, a subnet)?

        strongSwan's rule, except that subnets and ranges count as wildcards here, so that
        they are never sent as IDr.
        """
        kind = self.id_type
        if kind is None or kind in _SUBNETS or kind in _RANGES:
            return True
        if kind in _NAMES:
            return b"*" in self.data
        if kind == IdType.ID_DER_ASN1_DN:
            return any(a.raw == b"*" for a in self._rdns or ())
        return False

    # ---- matching

    def matches(self, peer: Identity) -> int:
        """How well ``peer`` fits this (configured) identity: an :class:`IdMatch` value, 0 = not at all.

        strongSwan's ``peer->matches(peer, configured)``: ``%any`` matches everything with
        quality ANY; a concrete %any is matched only by %any; names compare ASCII
        case-insensitively and a leading ``*`` matches any non-empty prefix
        (``*.example.com``, ``*@example.com``); DNs need the same attributes in the same
        order, ``*`` values match anything (one quality step each), PrintableString and
        email values compare case-insensitively; a subnet or range matches the addresses
        in it; everything else compares the bytes.
        """
        kind = self.id_type
        if kind is None:
            return IdMatch.ANY
        if peer.id_type is None:
            return IdMatch.NONE
        if kind in _NAMES:
            return _match_name(self.data, peer.data) if peer.id_type == kind else IdMatch.NONE
        if peer.id_type == kind and peer.data == self.data:
            return IdMatch.PERFECT
        if kind == IdType.ID_DER_ASN1_DN:
            return _match_dn(self._rdns, peer._rdns) if peer.id_type == kind else IdMatch.NONE
        if _ADDRESS_OF.get(kind) == peer.id_type:
            return _match_address(kind, self.data, peer.data)
        return IdMatch.NONE

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        kind = "%any" if self.id_type is None else getattr(self.id_type, "name", str(self.id_type))
        return f"Identity({kind}, {self.text!r})"


# --------------------------------------------------------------------------- text forms


def _name(kind: IdType, text: str) -> Identity:
    if not text:
        raise ValueError(f"an empty {'FQDN' if kind == IdType.ID_FQDN else 'RFC822 (email)'} identity")
    return Identity(kind, text.encode())


def _unhex(text: str, whole: str) -> bytes:
    digits = text.replace(":", "").replace(" ", "")
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"{whole!r}: {text!r} is not hexadecimal") from None
    if not data:
        raise ValueError(f"{whole!r}: no hex digits after '#'")
    return data


def _parse_address(text: str, version: int) -> Identity | None:
    """An address, ``net/bits`` or ``from-to`` of one family; None if ``text`` is not address-like."""
    if "%" in text:  # an IPv6 zone id is not part of an identity
        return None
    net, slash, bits = text.partition("/")
    lo, dash, hi = text.partition("-")
    try:
        first = ip_address(net if slash else lo)
    except ValueError:
        return None
    if first.version != version:
        return None
    if slash:
        try:
            network = ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r}: {bits!r} is not a prefix length for IPv{version}") from None
        kind = IdType.ID_IPV4_ADDR_SUBNET if version == 4 else IdType.ID_IPV6_ADDR_SUBNET
        return Identity(kind, network.network_address.packed + network.netmask.packed)
    if dash:
        try:
            last = ip_address(hi)
        except ValueError:
            raise ValueError(f"{text!r}: {hi!r} is not an IPv{version} address") from None
        if last.version != version or last < first:  # type: ignore[operator]
            raise ValueError(f"{text!r} is not an address range (an IPv{version} start, then a larger end)")
        kind = IdType.ID_IPV4_ADDR_RANGE if version == 4 else IdType.ID_IPV6_ADDR_RANGE
        return Identity(kind, first.packed + last.packed)
    return Identity.from_address(first)


_WIRE_SIZE = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16, IdType.ID_IPV4_ADDR_SUBNET: 8,
              IdType.ID_IPV6_ADDR_SUBNET: 32, IdType.ID_IPV4_ADDR_RANGE: 8, IdType.ID_IPV6_ADDR_RANGE: 32}
_ADDRESS_FORM = {IdType.ID_IPV4_ADDR: "an IPv4 address", IdType.ID_IPV6_ADDR: "an IPv6 address",
                 IdType.ID_IPV4_ADDR_SUBNET: "an IPv4 subnet (net/bits)",
                 IdType.ID_IPV6_ADDR_SUBNET: "an IPv6 subnet (net/bits)",
                 IdType.ID_IPV4_ADDR_RANGE: "an IPv4 range (from-to)",
                 IdType.ID_IPV6_ADDR_RANGE: "an IPv6 range (from-to)"}


def _typed(kind: IdType) -> Callable[[str, str], Identity]:
    """The parser of one ``prefix:`` form; ``prefix:#hex`` gives the bytes directly (strongSwan)."""

    def parse(value: str, whole: str) -> Identity:
        if value.startswith("#"):
            data = _unhex(value[1:], whole)
            size = _WIRE_SIZE.get(kind)
            if size is not None and len(data) != size:
                raise ValueError(f"{whole!r}: {kind.name} takes {size} bytes, not {len(data)}")
            if kind == IdType.ID_DER_ASN1_DN and _decode_dn(data) is None:
                raise ValueError(f"{whole!r} is not a DER-encoded distinguished name")
            return Identity(kind, data)
        if kind in _NAMES or kind == IdType.ID_KEY_ID:  # the text itself, as strongSwan (keyid:abc = b"abc")
            if not value:
                raise ValueError(f"{whole!r}: nothing after the prefix")
            return Identity(kind, value.encode())
        if kind == IdType.ID_DER_ASN1_DN:
            return Identity(kind, encode_dn(value))
        if kind == IdType.ID_DER_ASN1_GN:
            raise ValueError(f"{whole!r}: write a general name as DER in hex, 'asn1gn:#30...'")
        ident = _parse_address(value, 4 if _WIRE_SIZE[kind] in (4, 8) else 6)
        if ident is None or ident.id_type != kind:
            raise ValueError(f"{whole!r}: {value!r} is not {_ADDRESS_FORM[kind]}")
        return ident

    return parse


_PREFIXES: dict[str, Callable[[str, str], Identity]] = {
    "ipv4:": _typed(IdType.ID_IPV4_ADDR),
    "ipv6:": _typed(IdType.ID_IPV6_ADDR),
    "ipv4net:": _typed(IdType.ID_IPV4_ADDR_SUBNET),
    "ipv6net:": _typed(IdType.ID_IPV6_ADDR_SUBNET),
    "ipv4range:": _typed(IdType.ID_IPV4_ADDR_RANGE),
    "ipv6range:": _typed(IdType.ID_IPV6_ADDR_RANGE),
    "rfc822:": _typed(IdType.ID_RFC822_ADDR),
    "email:": _typed(IdType.ID_RFC822_ADDR),
    "userfqdn:": _typed(IdType.ID_RFC822_ADDR),
    "fqdn:": _typed(IdType.ID_FQDN),
    "dns:": _typed(IdType.ID_FQDN),
    "asn1dn:": _typed(IdType.ID_DER_ASN1_DN),
    "asn1gn:": _typed(IdType.ID_DER_ASN1_GN),
    "keyid:": _typed(IdType.ID_KEY_ID),
}
_NUMERIC_RE = re.compile(r"\{(\d{1,3})\}:(.*)", re.DOTALL)  # strongSwan's "{11}:#0102": any type by number


def _parse_typed(s: str) -> Identity | None:
    head, colon, value = s.partition(":")
    if colon:
        parser = _PREFIXES.get(head.lower() + ":")
        if parser is not None:
            return parser(value, s)
    m = _NUMERIC_RE.fullmatch(s)
    if m is None:
        return None
    number = int(m[1])
    if not 1 <= number <= 255:
        raise ValueError(f"{s!r}: ID type {number} is not in 1..255")
    value = m[2]
    data = _unhex(value[1:], s) if value.startswith("#") else value.encode()
    return Identity(cast(IdType, number), data)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- distinguished names


class _Attr(NamedTuple):
    """One attribute of a DN: dotted OID, ASN.1 string tag, the value's encoded bytes, its text."""

    oid: str
    tag: int
    raw: bytes
    text: str


_EMAIL_OID = "1.2.840.113549.1.9.1"
# (dotted OID, strongSwan 5.9.8's display name or None when it prints the OID in hex,
#  names accepted in DN text: strongSwan's first, then RFC 4514 / cryptography's NameOID names)
_DN_ATTRS: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    ("2.5.4.3", "CN", ("CN", "commonName")),
    ("2.5.4.4", "SN", ("SN", "surname")),
    ("2.5.4.5", "serialNumber", ("serialNumber",)),
    ("2.5.4.6", "C", ("C", "countryName")),
    ("2.5.4.7", "L", ("L", "localityName")),
    ("2.5.4.8", "ST", ("ST", "stateOrProvinceName")),
    ("2.5.4.9", "STREET", ("STREET", "streetAddress")),
    ("2.5.4.10", "O", ("O", "organizationName")),
    ("2.5.4.11", "OU", ("OU", "organizationalUnitName")),
    ("2.5.4.12", "T", ("T", "title")),
    ("2.5.4.13", "D", ("D", "description")),
    ("2.5.4.15", None, ("businessCategory",)),
    ("2.5.4.16", "postalAddress", ("postalAddress",)),
    ("2.5.4.17", "postalCode", ("postalCode",)),
    ("2.5.4.41", "N", ("N", "name")),
    ("2.5.4.42", "G", ("G", "GN", "givenName")),
    ("2.5.4.43", "I", ("I", "initials")),
    ("2.5.4.44", None, ("generationQualifier",)),
    ("2.5.4.45", "ID", ("ID", "x500UniqueIdentifier")),
    ("2.5.4.46", "dnQualifier", ("dnQualifier",)),
    ("2.5.4.54", "dmdName", ("dmdName",)),
    ("2.5.4.65", "pseudonym", ("pseudonym",)),
    ("2.5.4.97", None, ("organizationIdentifier",)),
    ("0.9.2342.19200300.100.1.1", "UID", ("UID", "userID")),
    ("0.9.2342.19200300.100.1.25", "DC", ("DC", "domainComponent")),
    (_EMAIL_OID, "E", ("E", "Email", "emailAddress")),
    ("1.2.840.113549.1.9.2", "unstructuredName", ("UN", "unstructuredName")),
    ("1.2.840.113549.1.9.8", "unstructuredAddress", ("UA", "unstructuredAddress")),
    ("2.16.840.1.113730.3.1.3", "employeeNumber", ("EN", "employeeNumber")),
    ("0.2.262.1.10.7.20", "ND", ("ND",)),
    ("1.3.6.1.4.1.1201.1.1.2.2.75", "TCGID", ("TCGID",)),
    ("1.3.6.1.4.1.311.60.2.1.1", None, ("jurisdictionLocalityName",)),
    ("1.3.6.1.4.1.311.60.2.1.2", None, ("jurisdictionStateOrProvinceName",)),
    ("1.3.6.1.4.1.311.60.2.1.3", None, ("jurisdictionCountryName",)),
    ("1.2.643.3.131.1.1", None, ("INN",)),
    ("1.2.643.100.1", None, ("OGRN",)),
    ("1.2.643.100.3", None, ("SNILS",)),
)
_DN_OID_BY_NAME = {alias.lower(): oid for oid, _, aliases in _DN_ATTRS for alias in aliases}
_DN_DISPLAY = {oid: shown for oid, shown, _ in _DN_ATTRS if shown is not None}
_IA5_OIDS = frozenset({_EMAIL_OID, "1.2.840.113549.1.9.2"})  # strongSwan writes E= and UN= as IA5String
_PRINTABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
_DOTTED_RE = re.compile(r"[0-2](\.\d+)+")
_PRINTABLE_TAG = _ASN1Type.PrintableString.value
_IA5_TAG = _ASN1Type.IA5String.value


def encode_dn(text: str) -> bytes:
    """``C=CH, O=strongSwan, CN=moon`` (or ``/C=CH/O=strongSwan/CN=moon``) as DER, like strongSwan.

    The attributes keep the written order. Separators are ``,`` or, when the text starts
    with ``/``, ``/``; spaces around names and values are dropped. A value is a
    PrintableString when it can be one, else a UTF8String (E and UN: IA5String), as
    strongSwan encodes them, so the bytes match what strongSwan sends and expects.
    """
    s = text.lstrip(" ")
    sep = ","
    if s.startswith("/"):
        sep, s = "/", s[1:]
    parts = s.split(sep)
    rdns: list[x509.RelativeDistinguishedName] = []
    for i, part in enumerate(parts):
        item = part.strip(" ")
        if not item:
            if i == len(parts) - 1 and rdns:
                continue  # a trailing separator, which strongSwan ignores
            raise ValueError(f"{text!r}: an empty attribute in the distinguished name")
        m = re.match(r"[^ =]+", item)
        key = m[0] if m else ""
        rest = item[len(key):]
        if not key or not rest.lstrip(" ").startswith("="):
            raise ValueError(f"{text!r}: {item!r} is not NAME=value")
        rdns.append(x509.RelativeDistinguishedName([_dn_attribute(key, rest.lstrip(" ="), text)]))
    if not rdns:
        raise ValueError(f"{text!r}: a distinguished name needs at least one NAME=value")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about e.g. C= longer than 2; strongSwan takes it
        return x509.Name(rdns).public_bytes()


def _dn_attribute(key: str, value: str, whole: str) -> x509.NameAttribute:
    oid = _DN_OID_BY_NAME.get(key.lower())
    if oid is None and _DOTTED_RE.fullmatch(key):
        oid = key
    if oid is None:
        known = ", ".join(aliases[0] for _, _, aliases in _DN_ATTRS)
        close = difflib.get_close_matches(key.lower(), _DN_OID_BY_NAME, n=1)
        spelled = {alias.lower(): alias for _, _, aliases in _DN_ATTRS for alias in aliases}
        hint = f" (did you mean {spelled[close[0]]!r}?)" if close else ""
        raise ValueError(f"{whole!r}: unknown DN attribute {key!r}{hint} (known: {known}, or a dotted OID)")
    if oid in _IA5_OIDS:
        if not value.isascii():
            raise ValueError(f"{whole!r}: {key}= must be ASCII (an IA5String)")
        kind = _ASN1Type.IA5String
    elif all(c in _PRINTABLE for c in value):
        kind = _ASN1Type.PrintableString
    else:
        kind = _ASN1Type.UTF8String
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.NameAttribute(x509.ObjectIdentifier(oid), value, kind, _validate=False)


def _decode_dn(data: bytes) -> tuple[_Attr, ...] | None:
    """The attributes of a DER DN in order (multi-valued RDNs flattened, as strongSwan); None if malformed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a C= that is not 2 letters: peer input, not our warning
            name = x509.Name.from_bytes(data)
    except Exception:  # peer input: cryptography raises ValueError, and TypeError for some attribute types
        return None
    out = []
    for rdn in name.rdns:
        for attr in rdn:
            # cryptography keeps the string type only in the private _type; matching needs it
            tag = attr._type.value
            value = attr.value
            if isinstance(value, bytes):
                out.append(_Attr(attr.oid.dotted_string, tag, value, _colon_hex(value)))
            else:
                out.append(_Attr(attr.oid.dotted_string, tag, _string_bytes(value, tag), value))
    return tuple(out)


def _string_bytes(value: str, tag: int) -> bytes:
    """The content octets of an ASN.1 string as received (what strongSwan compares)."""
    if tag == _ASN1Type.BMPString.value:
        return value.encode("utf-16-be")
    if tag == _ASN1Type.UniversalString.value:
        return value.encode("utf-32-be")
    if tag == _ASN1Type.UTF8String.value or not value.isascii():
        return value.encode("utf-8", "surrogatepass")
    return value.encode("ascii")


def _oid_content(dotted: str) -> bytes:
    """The DER content octets of an OID (what strongSwan prints, in hex, for OIDs it has no name for)."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def _dn_text(rdns: tuple[_Attr, ...]) -> str:
    return ", ".join(f"{_DN_DISPLAY.get(a.oid) or _colon_hex(_oid_content(a.oid))}={a.text}" for a in rdns)


# --------------------------------------------------------------------------- display


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data[:DISPLAY_LIMIT])


def _fallback(kind: IdType | None, data: bytes) -> str:
    """A hex form for bytes that are not what their type says (peer input), or of a type we do not show."""
    if kind in (IdType.ID_DER_ASN1_DN, IdType.ID_DER_ASN1_GN):
        label = "asn1dn" if kind == IdType.ID_DER_ASN1_DN else "asn1gn"
    else:
        label = kind.name if isinstance(kind, IdType) else f"{{{kind}}}"  # strongSwan's "{N}:" type syntax
    return f"{label}:#{data[:DISPLAY_LIMIT].hex()}"


def _display(kind: IdType | None, data: bytes, rdns: tuple[_Attr, ...] | None) -> str:
    """strongSwan's display form (``%Y``), log-safe; peer bytes that do not fit their type show in hex."""
    if kind is None:
        return "%any"
    n = len(data)
    text: str | None = None
    if kind == IdType.ID_IPV4_ADDR and n == 4:
        text = str(IPv4Address(data))
    elif kind == IdType.ID_IPV6_ADDR and n == 16:
        text = str(IPv6Address(data))
    elif (kind in _SUBNETS or kind in _RANGES) and n == _WIRE_SIZE[kind]:
        half = n // 2
        first = ip_address(data[:half])
        if kind in _RANGES:
            text = f"{first}-{ip_address(data[half:])}"
        else:
            full = (1 << 8 * half) - 1
            mask = int.from_bytes(data[half:], "big")
            bits = 8 * half - (~mask & full).bit_length()
            if mask == (full << (8 * half - bits)) & full:  # contiguous; anything else shows in hex
                text = f"{first}/{bits}"
    elif kind in _NAMES and data:
        text = data.decode("utf-8", "surrogateescape")
    elif kind == IdType.ID_DER_ASN1_DN and rdns is not None:
        text = _dn_text(rdns)
    elif kind == IdType.ID_KEY_ID and data:
        # strongSwan: printable ASCII shows as text, unless it is 20 bytes (a SHA-1 key id)
        printable = all(0x20 <= b < 0x7F for b in data)
        text = data.decode("ascii") if printable and n != 20 else _colon_hex(data)
    return safe(text if text is not None else _fallback(kind, data), DISPLAY_LIMIT)


# --------------------------------------------------------------------------- matching


def _match_name(pattern: bytes, peer: bytes) -> int:
    """strongSwan's matches_string: equal ignoring ASCII case, or a leading ``*`` wildcard."""
    if len(pattern) == len(peer) and b"\0" not in pattern and b"\0" not in peer and pattern.lower() == peer.lower():
        return IdMatch.PERFECT
    if not pattern or len(peer) < len(pattern) or pattern[:1] != b"*":
        return IdMatch.NONE
    if len(pattern) == 1:
        return IdMatch.ANY  # a lone "*" is no better than %any
    tail = pattern[1:]
    return IdMatch.ONE_WILDCARD if peer[len(peer) - len(tail):].lower() == tail.lower() else IdMatch.NONE


def _match_dn(pattern: tuple[_Attr, ...] | None, peer: tuple[_Attr, ...] | None) -> int:
    """strongSwan's compare_dn: same attributes in the same order; ``*`` values are wildcards."""
    if pattern is None or peer is None or len(pattern) != len(peer):
        return IdMatch.NONE
    wildcards = 0
    for p, c in zip(pattern, peer, strict=True):
        if p.oid != c.oid:
            return IdMatch.NONE
        if p.raw == b"*":
            wildcards += 1
            continue
        if len(p.raw) != len(c.raw):
            return IdMatch.NONE
        # case-insensitive for PrintableStrings and email addresses, byte for byte otherwise
        caseless = p.tag == c.tag and (p.tag == _PRINTABLE_TAG or (p.tag == _IA5_TAG and p.oid == _EMAIL_OID))
        if (p.raw.lower() != c.raw.lower()) if caseless else (p.raw != c.raw):
            return IdMatch.NONE
    return IdMatch.PERFECT - min(wildcards, IdMatch.ONE_WILDCARD - IdMatch.MAX_WILDCARDS)


def _match_address(kind: IdType, pattern: bytes, peer: bytes) -> int:
    """strongSwan's matches_range: an address inside a configured subnet or range."""
    size = _SUBNETS.get(kind) or _RANGES[kind]
    if len(pattern) != 2 * size or len(peer) != size:
        return IdMatch.NONE
    addr, first, second = (int.from_bytes(b, "big") for b in (peer, pattern[:size], pattern[size:]))
    if kind in _SUBNETS:
        if second == 0:
            return IdMatch.MAX_WILDCARDS  # /0 matches every address, barely
        if (addr ^ first) & second:
            return IdMatch.NONE
        return IdMatch.PERFECT if second == (1 << 8 * size) - 1 else IdMatch.ONE_WILDCARD
    if not first <= addr <= second:
        return IdMatch.NONE
    return IdMatch.PERFECT if first == second else IdMatch.ONE_WILDCARD


ANY_IDENTITY = Identity(None)
"""``%any``: accepts every identity (strongSwan's ID_ANY)."""


def eap_identity(data: bytes | str) -> Identity | None:
    """An EAP identity (free octets, RFC 3748 5.1) read as an IKE identity, as strongSwan's
    identification_create_from_data does, for secret lookup and certificate matching; None
    when it is not text or names no identity."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return Identity.parse(text) if text and "\x00" not in text else None
    except (UnicodeDecodeError, ValueError):
        return None
