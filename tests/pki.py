"""A test PKI made at test time: roots, intermediates, end entities, CRLs, swanctl directories.

Nothing here is ever committed: keys and certificates live in memory or under a test's
tmp_path.  The directory layout written by :func:`write_swanctl` is swanctl's
(``x509/``, ``x509ca/``, ``x509crl/``, ``private/``), so the same tree loads into
ipsecd's credential store and into a strongSwan charon (``swanctl --load-creds`` with
``swanctl.conf`` secrets for encrypted keys, see :func:`swanctl_secrets`).

Keys are slow to make (RSA-4096 takes about a second), so a :class:`KeyPool` hands
out keys by (kind, slot): the same slot gives the same key, a new slot a new one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ipsecd.x509util import PrivateKey

KEY_KINDS = ("rsa2048", "rsa3072", "rsa4096", "p256", "p384", "p521", "ed25519", "ed448")
_CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
IKE_INTERMEDIATE = x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")


def generate_key(kind: str) -> PrivateKey:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    if kind in _CURVES:
        return ec.generate_private_key(_CURVES[kind]())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}; one of {KEY_KINDS}")


@dataclass
class KeyPool:
    keys: dict[tuple[str, str], PrivateKey] = field(default_factory=dict)

    def get(self, kind: str, slot: str = "") -> PrivateKey:
        if (kind, slot) not in self.keys:
            self.keys[kind, slot] = generate_key(kind)
        return self.keys[kind, slot]


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    @property
    def cn(self) -> str:
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else self.cert.serial_number.to_bytes(20, "big").hex()

    def cert_bytes(self, fmt: str = "pem") -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM if fmt == "pem" else serialization.Encoding.DER)

    def key_bytes(self, fmt: str = "pem", form: str = "pkcs8", passphrase: str | None = None) -> bytes:
        """``form``: pkcs8, or traditional (PKCS#1 RSA / SEC1 EC; Ed keys have only PKCS#8)."""
        encoding = serialization.Encoding.PEM if fmt == "pem" else serialization.Encoding.DER
        if form == "traditional" and isinstance(self.key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            private_format = serialization.PrivateFormat.TraditionalOpenSSL
        else:
            private_format = serialization.PrivateFormat.PKCS8
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
        )
        return self.key.private_bytes(encoding, private_format, encryption)


def name(text: str) -> x509.Name:
    """``CN=x`` or ``C=CH, O=ipsecd, CN=x`` (RFC 4514 order: most significant last, as written)."""
    short = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
             "C": NameOID.COUNTRY_NAME, "L": NameOID.LOCALITY_NAME, "E": NameOID.EMAIL_ADDRESS}
    if "=" not in text:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])
    attrs = []
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        attrs.append(x509.NameAttribute(short[key.strip().upper()], value.strip()))
    return x509.Name(attrs)


def general_name(spec: str | x509.GeneralName) -> x509.GeneralName:
    """``DNS:x``, ``IP:1.2.3.4``, ``email:a@b``, ``DN:CN=x``, ``URI:...`` or a GeneralName."""
    if not isinstance(spec, str):
        return spec
    kind, _, value = spec.partition(":")
    if kind == "DNS":
        return x509.DNSName(value)
    if kind == "IP":
        return x509.IPAddress(ipaddress.ip_address(value))
    if kind == "email":
        return x509.RFC822Name(value)
    if kind == "DN":
        return x509.DirectoryName(name(value))
    if kind == "URI":
        return x509.UniformResourceIdentifier(value)
    raise ValueError(f"unknown SAN kind in {spec!r}")


def signing_hash(issuer_key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(issuer_key.curve.key_size, hashes.SHA256())
    return hashes.SHA256()


CA_KEY_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
EE_KEY_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


@dataclass
class TestPki:
    """Issues certificates around a fixed ``now`` (validity defaults: a day before, a year after)."""

    __test__ = False  # not a pytest class

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    keys: KeyPool = field(default_factory=KeyPool)
    _serial: int = 0x1000

    def issue(
        self,
        subject: str | x509.Name,
        issuer: Issued | None,
        key: str | PrivateKey = "p256",
        *,
        ca: bool = False,
        path_length: int | None = None,
        sans: Iterable[str | x509.GeneralName] = (),
        ekus: Iterable[x509.ObjectIdentifier] | None = None,
        key_usage: x509.KeyUsage | bool | None = True,
        basic_constraints: bool = True,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        serial: int | None = None,
        extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
        signer: PrivateKey | None = None,
        key_ids: bool = True,
    ) -> Issued:
        """One certificate; ``issuer`` None makes it self-signed; ``signer`` overrides the signing key."""
        subject_name = subject if isinstance(subject, x509.Name) else name(subject)
        private = self.keys.get(key, str(subject_name)) if isinstance(key, str) else key
        issuer_key = issuer.key if issuer is not None else private
        signer = signer or issuer_key
        if serial is None:
            self._serial += 1
            serial = self._serial
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(issuer.cert.subject if issuer is not None else subject_name)
            .public_key(private.public_key())
            .serial_number(serial)
            .not_valid_before(not_before or self.now - timedelta(days=1))
            .not_valid_after(not_after or self.now + timedelta(days=365))
        )
        if basic_constraints:
            builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        if key_usage is True:
            builder = builder.add_extension(CA_KEY_USAGE if ca else EE_KEY_USAGE, critical=True)
        elif isinstance(key_usage, x509.KeyUsage):
            builder = builder.add_extension(key_usage, critical=True)
        if key_ids:
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
            )
        sans = [general_name(s) for s in sans]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if ekus is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        for ext, critical in extra:
            builder = builder.add_extension(ext, critical=critical)
        return Issued(builder.sign(signer, signing_hash(signer)), private)  # type: ignore[arg-type]

    def root(self, cn: str = "ipsecd test root", key: str | PrivateKey = "p256", **kw: object) -> Issued:
        return self.issue(cn, None, key, ca=True, **kw)  # type: ignore[arg-type]

    def intermediate(self, issuer: Issued, cn: str, key: str | PrivateKey = "p256", **kw: object) -> Issued:
        return self.issue(cn, issuer, key, ca=True, **kw)  # type: ignore[arg-type]

    def end_entity(
        self, issuer: Issued, cn: str, key: str | PrivateKey = "p256", sans: Iterable[str] | None = None, **kw: object
    ) -> Issued:
        """Defaults suit a gateway: SAN DNS:<cn> and EKU serverAuth (what Windows wants)."""
        kw.setdefault("ekus", [SERVER_AUTH])
        return self.issue(cn, issuer, key, sans=[f"DNS:{cn}"] if sans is None else sans, **kw)  # type: ignore[arg-type]

    def crl(
        self,
        issuer: Issued,
        revoked: Iterable[int | tuple[int, x509.ReasonFlags]] = (),
        *,
        this_update: datetime | None = None,
        next_update: datetime | None = None,
        signer: PrivateKey | None = None,
        number: int = 1,
        extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> x509.CertificateRevocationList:
        this_update = this_update or self.now - timedelta(hours=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(this_update)
            .next_update(next_update or this_update + timedelta(days=7))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False)
        )
        for ext, critical in extra:
            builder = builder.add_extension(ext, critical=critical)
        for item in revoked:
            serial, reason = item if isinstance(item, tuple) else (item, x509.ReasonFlags.key_compromise)
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(this_update - timedelta(minutes=5))
                .add_extension(x509.CRLReason(reason), critical=False)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        key = signer or issuer.key
        return builder.sign(key, signing_hash(key))  # type: ignore[arg-type]

    def chain(self, kinds: Sequence[str], prefix: str = "", leaf_cn: str = "gw.example.com", **leaf_kw: object
              ) -> list[Issued]:
        """Root, intermediates and an end entity with the given key kinds: ``[root, ..., leaf]``."""
        certs = [self.root(f"{prefix}root", kinds[0])]
        for i, kind in enumerate(kinds[1:-1], 1):
            certs.append(self.intermediate(certs[-1], f"{prefix}intermediate {i}", kind))
        certs.append(self.end_entity(certs[-1], leaf_cn, kinds[-1], **leaf_kw))
        return certs


def crl_bytes(crl: x509.CertificateRevocationList, fmt: str = "pem") -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM if fmt == "pem" else serialization.Encoding.DER)


@dataclass(frozen=True)
class KeyFile:
    issued: Issued
    fmt: str = "pem"  # pem | der
    form: str = "pkcs8"  # pkcs8 | traditional
    passphrase: str | None = None
    name: str | None = None  # file name under private/; default <cn>.key.<fmt>


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_@" else "_" for c in text)


def write_swanctl(
    directory: Path,
    *,
    own: Iterable[Issued | KeyFile] = (),
    certs: Iterable[Issued] = (),
    cas: Iterable[Issued] = (),
    crls: Iterable[x509.CertificateRevocationList] = (),
    cert_format: str = "pem",
) -> Path:
    """Write a swanctl-layout tree: ``own`` certificates to x509/ with keys in private/,
    ``certs`` (intermediates) to x509/, ``cas`` to x509ca/, ``crls`` to x509crl/."""
    for sub in ("x509", "x509ca", "x509crl", "private"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    ext = "pem" if cert_format == "pem" else "der"
    for item in own:
        kf = item if isinstance(item, KeyFile) else KeyFile(item)
        (directory / "x509" / f"{_slug(kf.issued.cn)}.{ext}").write_bytes(kf.issued.cert_bytes(cert_format))
        key_path = directory / "private" / (kf.name or f"{_slug(kf.issued.cn)}.key.{kf.fmt}")
        key_path.write_bytes(kf.issued.key_bytes(kf.fmt, kf.form, kf.passphrase))
        key_path.chmod(0o600)
    for issued in certs:
        (directory / "x509" / f"{_slug(issued.cn)}.{ext}").write_bytes(issued.cert_bytes(cert_format))
    for issued in cas:
        (directory / "x509ca" / f"{_slug(issued.cn)}.{ext}").write_bytes(issued.cert_bytes(cert_format))
    for i, crl in enumerate(crls):
        (directory / "x509crl" / f"crl{i}.{ext}").write_bytes(crl_bytes(crl, cert_format))
    return directory


def swanctl_secrets(passphrases: dict[str, str]) -> str:
    """The swanctl.conf ``secrets`` section that lets charon decrypt the given private/ files."""
    blocks = [
        f'    private-{i} {{\n        file = {file}\n        secret = "{secret}"\n    }}'
        for i, (file, secret) in enumerate(sorted(passphrases.items()))
    ]
    return "secrets {\n" + "\n".join(blocks) + "\n}\n"
