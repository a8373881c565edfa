"""Wireshark decryption tables for ``ipsecctl export-keys --format wireshark``.

An operator debugging a tunnel captures on the wire, where every IKE message
after IKE_SA_INIT and every ESP packet is encrypted. Wireshark decrypts both if
it is given the SA keys in two "UAT" (user access table) files in its
personal configuration directory:

* ``ikev2_decryption_table`` (ISAKMP dissector), one IKE SA per line::

      <SPIi hex>,<SPIr hex>,<SK_ei hex>,<SK_er hex>,"<encryption>",<SK_ai hex>,<SK_ar hex>,"<integrity>"

  The SPIs and keys are UAT byte fields (bare hex, empty for "none"); the
  algorithm columns are quoted names from Wireshark's own lists.

* ``esp_sa`` (ESP dissector), one Child SA direction per line::

      "IPv4","<src>","<dst>","0x<SPI>","<encryption>","0x<key>","<authentication>","0x<key>"

  Every column is a quoted string. Wireshark versions after 4.0 added two columns (sequence
  number length and the ESN high bits) with defaults of ``"32-bit"`` and ``"0"``
  for files that leave them out; we leave them out (so older versions read
  the file too) unless the SA uses extended sequence numbers, where they must
  say ``"64-bit"`` or Wireshark computes the wrong ICV. (Wireshark 4.0 has
  neither column nor ESN support: it ignores them, decrypts, and flags the ICV.)

For AEAD ciphers both tables expect the key *with* its salt (the KEYMAT octets
RFC 4106/5282/7634 take after the cipher key), which is exactly what our key
containers hold, and no integrity key.

Algorithms Wireshark cannot decrypt (ChaCha20-Poly1305 for IKE, AES-CCM and
AES-XCBC for ESP) raise ``UnsupportedAlgorithm`` from the line builders; the
file builder ``export`` turns them into ``#`` comment lines instead, so one odd
SA does not hide the keys of all the others. ChaCha20-Poly1305 ESP lines are
written: versions after 4.0 decrypt them, 4.0 reports the line as an invalid
value when loading the table and still uses every other line.

This module only formats: it never logs, and its entry types hide keys from
``repr``. The daemon decides whether export is allowed at all
(``settings.debug.allow_key_export``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TYPE_CHECKING

from ipsecd.errors import LocalProtocolError
from ipsecd.iana import EncrId, EsnId, IntegId, TransformType
from ipsecd.ike.crypto import encr_key_len, integ_key_len

if TYPE_CHECKING:
    from ipsecd.ike.events import ChildSaEstablished
    from ipsecd.ike.keymat import IkeKeys
    from ipsecd.ike.payloads import Proposal

IKE_TABLE = "ikev2_decryption_table"
ESP_TABLE = "esp_sa"

_HEADER = (
    "# Written by ipsecd (ipsecctl export-keys). These are the live keys of SAs that may still be\n"
    "# in use: keep this file private and delete it when the capture is decrypted.\n"
)

# ---------------------------------------------------------------- algorithm names
# The names are the exact strings of Wireshark's value lists (packet-isakmp.c
# vs_ikev2_encr_algs / vs_ikev2_auth_algs, packet-ipsec.c esp_encryption_type_vals
# / esp_authentication_type_vals): the UAT stores the name, not a number.

_IKE_GCM_ICV = {EncrId.ENCR_AES_GCM_8: 8, EncrId.ENCR_AES_GCM_12: 12, EncrId.ENCR_AES_GCM_16: 16}
_IKE_CCM_ICV = {EncrId.ENCR_AES_CCM_8: 8, EncrId.ENCR_AES_CCM_12: 12, EncrId.ENCR_AES_CCM_16: 16}

_IKE_INTEG = {
    IntegId.NONE: "NONE [RFC4306]",
    IntegId.AUTH_HMAC_MD5_96: "HMAC_MD5_96 [RFC2403]",
    IntegId.AUTH_HMAC_SHA1_96: "HMAC_SHA1_96 [RFC2404]",
    IntegId.AUTH_HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_384_192: "HMAC_SHA2_384_192 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_512_256: "HMAC_SHA2_512_256 [RFC4868]",
}

_ESP_ENCR = {
    EncrId.ENCR_NULL: "NULL",
    EncrId.ENCR_3DES: "TripleDES-CBC [RFC2451]",
    EncrId.ENCR_AES_CBC: "AES-CBC [RFC3602]",
    EncrId.ENCR_AES_GCM_8: "AES-GCM with 8 octet ICV [RFC4106]",
    EncrId.ENCR_AES_GCM_12: "AES-GCM with 12 octet ICV [RFC4106]",
    EncrId.ENCR_AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
    EncrId.ENCR_CHACHA20_POLY1305: "ChaCha20 with Poly1305 [RFC7634]",
}

_ESP_INTEG = {
    IntegId.NONE: "NULL",
    IntegId.AUTH_HMAC_MD5_96: "HMAC-MD5-96 [RFC2403]",
    IntegId.AUTH_HMAC_SHA1_96: "HMAC-SHA-1-96 [RFC2404]",
    IntegId.AUTH_HMAC_SHA2_256_128: "HMAC-SHA-256-128 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_384_192: "HMAC-SHA-384-192 [RFC4868]",
    IntegId.AUTH_HMAC_SHA2_512_256: "HMAC-SHA-512-256 [RFC4868]",
}

_AEAD = frozenset({*_IKE_GCM_ICV, *_IKE_CCM_ICV, EncrId.ENCR_CHACHA20_POLY1305})


class UnsupportedAlgorithm(ValueError):
    """Wireshark has no decryption support for this algorithm (or key size) in this table."""


def _enum_name(enum: type[EncrId] | type[IntegId], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"transform {value}"


def ike_encr_name(encr_id: int, key_bits: int | None) -> str:
    """Wireshark's IKEv2 table name for an ENCR transform with its Key Length attribute."""
    bits = key_bits or 0
    if encr_id == EncrId.ENCR_AES_CBC and bits in (128, 192, 256):
        return f"AES-CBC-{bits} [RFC3602]"
    if encr_id in _IKE_GCM_ICV and bits in (128, 192, 256):
        return f"AES-GCM-{bits} with {_IKE_GCM_ICV[EncrId(encr_id)]} octet ICV [RFC5282]"
    if encr_id in _IKE_CCM_ICV and bits in (128, 192, 256):
        return f"AES-CCM-{bits} with {_IKE_CCM_ICV[EncrId(encr_id)]} octet ICV [RFC5282]"
    if encr_id == EncrId.ENCR_3DES:
        return "3DES [RFC2451]"
    if encr_id == EncrId.ENCR_NULL:
        return "NULL [RFC2410]"
    raise UnsupportedAlgorithm(
        f"{_enum_name(EncrId, encr_id)}{f'-{bits}' if bits else ''} is not supported by Wireshark's IKEv2 "
        "decryption table"
    )


def ike_integ_name(integ_id: int | None) -> str:
    """Wireshark's IKEv2 table name for an INTEG transform; None (AEAD) is "NONE"."""
    try:
        return _IKE_INTEG[IntegId(integ_id or 0)]
    except (ValueError, KeyError):
        raise UnsupportedAlgorithm(
            f"{_enum_name(IntegId, integ_id or 0)} is not supported by Wireshark's IKEv2 decryption table"
        ) from None


def esp_encr_name(encr_id: int) -> str:
    """Wireshark's esp_sa name for an ENCR transform (the key length follows from the key)."""
    try:
        return _ESP_ENCR[EncrId(encr_id)]
    except (ValueError, KeyError):
        raise UnsupportedAlgorithm(
            f"{_enum_name(EncrId, encr_id)} is not supported by Wireshark's ESP decryption (esp_sa)"
        ) from None


def esp_integ_name(integ_id: int | None) -> str:
    """Wireshark's esp_sa name for an INTEG transform; None (AEAD) is "NULL"."""
    try:
        return _ESP_INTEG[IntegId(integ_id or 0)]
    except (ValueError, KeyError):
        raise UnsupportedAlgorithm(
            f"{_enum_name(IntegId, integ_id or 0)} is not supported by Wireshark's ESP decryption (esp_sa)"
        ) from None


# ---------------------------------------------------------------- UAT encoding


def uat_string(text: str) -> str:
    """A UAT string column: in double quotes, with ``"``, ``\\`` and non-printable octets as ``\\xNN``.

    Wireshark reads its own files back this way (uat_esc/uat_unesc), so an
    address or name can never break the column structure of a line.
    """
    out: list[str] = []
    for b in text.encode("utf-8"):
        if b in (0x22, 0x5C) or not 0x20 <= b < 0x7F:
            out.append(f"\\x{b:02x}")
        else:
            out.append(chr(b))
    return '"' + "".join(out) + '"'


def _hex0x(data: bytes) -> str:
    return "0x" + data.hex() if data else ""


def _check_len(what: str, data: bytes, expected: int) -> None:
    if len(data) != expected:
        raise ValueError(f"{what} is {len(data)} octets, expected {expected}")


def _expected_encr_len(encr_id: int, key_bits: int | None) -> int:
    try:
        return encr_key_len(encr_id, key_bits)
    except LocalProtocolError as e:
        raise UnsupportedAlgorithm(str(e)) from None


def _expected_integ_len(integ_id: int | None) -> int:
    try:
        return integ_key_len(integ_id or 0)
    except LocalProtocolError as e:
        raise UnsupportedAlgorithm(str(e)) from None


def ike_table_line(
    spi_i: bytes,
    spi_r: bytes,
    encr_id: int,
    encr_key_bits: int | None,
    integ_id: int | None,
    sk_ei: bytes,
    sk_er: bytes,
    sk_ai: bytes,
    sk_ar: bytes,
) -> str:
    """One ``ikev2_decryption_table`` line (without newline) for an IKE SA.

    ``sk_e*`` include the salt for AEAD ciphers; ``sk_a*`` are empty for them.
    Raises UnsupportedAlgorithm or ValueError (wrong SPI or key length: a
    table Wireshark silently ignores would be worse than an error).
    """
    encr = ike_encr_name(encr_id, encr_key_bits)
    if encr_id in _AEAD and integ_id not in (None, IntegId.NONE):
        raise ValueError("an AEAD IKE SA has no integrity algorithm")
    integ = ike_integ_name(integ_id)
    _check_len("SPIi", spi_i, 8)
    _check_len("SPIr", spi_r, 8)
    elen, alen = _expected_encr_len(encr_id, encr_key_bits), _expected_integ_len(integ_id)
    for name, key, n in (("SK_ei", sk_ei, elen), ("SK_er", sk_er, elen), ("SK_ai", sk_ai, alen),
                         ("SK_ar", sk_ar, alen)):
        _check_len(name, key, n)
    cols = (spi_i.hex(), spi_r.hex(), sk_ei.hex(), sk_er.hex(), uat_string(encr), sk_ai.hex(), sk_ar.hex(),
            uat_string(integ))
    return ",".join(cols)


def esp_table_line(
    src: str,
    dst: str,
    spi: bytes,
    encr_id: int,
    encr_key_bits: int | None,
    integ_id: int | None,
    encr_key: bytes,
    integ_key: bytes,
    *,
    esn: bool = False,
) -> str:
    """One ``esp_sa`` line (without newline) for one direction of a Child SA.

    ``src``/``dst`` are the outer (tunnel endpoint) addresses of the packets
    this SPI protects; with NAT traversal they are the addresses in the
    capture at the point where it was taken. ``encr_key`` includes the salt
    for AEAD ciphers. ``esn`` adds the two columns that tell Wireshark to
    include the high sequence bits in the ICV.
    """
    try:
        a, b = ip_address(src), ip_address(dst)
    except ValueError as e:
        raise ValueError(f"not an IP address: {e}") from None
    if a.version != b.version:
        raise ValueError(f"source {src} and destination {dst} are of different address families")
    if len(spi) != 4:
        raise ValueError(f"ESP SPI is {len(spi)} octets, expected 4")
    encr = esp_encr_name(encr_id)
    if encr_id in _AEAD and integ_id not in (None, IntegId.NONE):
        raise ValueError("an AEAD ESP SA has no integrity algorithm")
    integ = esp_integ_name(integ_id)
    if encr_id != EncrId.ENCR_NULL:
        _check_len("encryption key", encr_key, _expected_encr_len(encr_id, encr_key_bits))
    _check_len("integrity key", integ_key, _expected_integ_len(integ_id))
    cols = [
        uat_string(f"IPv{a.version}"),
        uat_string(str(a)),
        uat_string(str(b)),
        uat_string(f"0x{spi.hex()}"),
        uat_string(encr),
        uat_string(_hex0x(encr_key)),
        uat_string(integ),
        uat_string(_hex0x(integ_key)),
    ]
    if esn:
        cols += [uat_string("64-bit"), uat_string("0")]
    return ",".join(cols)


# ---------------------------------------------------------------- entries from the engine


@dataclass(frozen=True)
class IkeKeyEntry:
    """What one ``ikev2_decryption_table`` line needs; keys hidden from ``repr``."""

    spi_i: bytes
    spi_r: bytes
    encr_id: int
    encr_key_bits: int | None
    integ_id: int | None
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)

    def line(self) -> str:
        return ike_table_line(self.spi_i, self.spi_r, self.encr_id, self.encr_key_bits, self.integ_id,
                              self.sk_ei, self.sk_er, self.sk_ai, self.sk_ar)

    def label(self) -> str:
        return f"IKE SA {self.spi_i.hex()}_i {self.spi_r.hex()}_r"


@dataclass(frozen=True)
class EspKeyEntry:
    """What one ``esp_sa`` line needs (one direction of a Child SA); keys hidden from ``repr``."""

    src: str
    dst: str
    spi: bytes
    encr_id: int
    encr_key_bits: int | None
    integ_id: int | None
    encr_key: bytes = field(repr=False)
    integ_key: bytes = field(repr=False)
    esn: bool = False

    def line(self) -> str:
        return esp_table_line(self.src, self.dst, self.spi, self.encr_id, self.encr_key_bits, self.integ_id,
                              self.encr_key, self.integ_key, esn=self.esn)

    def label(self) -> str:
        return f"ESP SA {self.src} -> {self.dst} SPI 0x{self.spi.hex()}"


def _algorithms(proposal: Proposal) -> tuple[int, int | None, int | None, bool]:
    """(encr id, key bits, integ id or None, ESN) of a chosen proposal."""
    encr = proposal.of_type(TransformType.ENCR)
    if not encr:
        raise ValueError("proposal has no encryption transform")
    integ = proposal.of_type(TransformType.INTEG)
    integ_id = integ[0].id if integ and integ[0].id != IntegId.NONE else None
    esn = any(t.id == EsnId.ESN for t in proposal.of_type(TransformType.ESN)[:1])
    return encr[0].id, encr[0].key_length, integ_id, esn


def ike_entry(spi_i: bytes, spi_r: bytes, proposal: Proposal, keys: IkeKeys) -> IkeKeyEntry:
    """The table entry of an established IKE SA (``sa.spi_i, sa.spi_r, sa.proposal, sa.keys``)."""
    encr_id, bits, integ_id, _ = _algorithms(proposal)
    return IkeKeyEntry(spi_i, spi_r, encr_id, bits, integ_id, keys.sk_ei, keys.sk_er, keys.sk_ai, keys.sk_ar)


def esp_entries(child: ChildSaEstablished) -> tuple[EspKeyEntry, EspKeyEntry]:
    """Both directions of a Child SA: (inbound: peer -> us on ``spi_in``, outbound: us -> peer on ``spi_out``)."""
    encr_id, bits, integ_id, esn = _algorithms(child.proposal)
    local, remote = child.local[0], child.remote[0]
    ek_in, ik_in = child.keys_in
    ek_out, ik_out = child.keys_out
    return (
        EspKeyEntry(remote, local, child.spi_in, encr_id, bits, integ_id, ek_in, ik_in, esn),
        EspKeyEntry(local, remote, child.spi_out, encr_id, bits, integ_id, ek_out, ik_out, esn),
    )


def _table(entries: Iterable[IkeKeyEntry | EspKeyEntry]) -> str:
    lines = [_HEADER]
    for e in entries:
        try:
            lines.append(e.line() + "\n")
        except ValueError as err:  # UnsupportedAlgorithm included: say why this SA is missing
            lines.append(f"# {e.label()} skipped: {err}\n")
    return "".join(lines)


def export(ike: Iterable[IkeKeyEntry], esp: Iterable[EspKeyEntry]) -> dict[str, str]:
    """Both files, by the names Wireshark looks for in its configuration directory."""
    return {IKE_TABLE: _table(ike), ESP_TABLE: _table(esp)}
