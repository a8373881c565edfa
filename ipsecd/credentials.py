"""Certificates, trust anchors, CRLs and private keys, in swanctl's directory layout.

Under one directory (default ``/etc/ipsecd``), as swanctl reads ``/etc/swanctl``:

- ``x509/``     our certificates and intermediate CA certificates (PEM, possibly several
                per file, or DER); a certificate with a matching private key is one of
                ours, the CA certificates are sent as its chain;
- ``x509ca/``   trust anchors (CA certificates only);
- ``x509crl/``  CRLs (PEM or DER);
- ``private/``  private keys: RSA, ECDSA P-256/384/521, Ed25519, Ed448; PKCS#8 or the
                traditional PEM/DER forms; encrypted ones with a passphrase the caller
                supplies per file name.

Loading (:func:`load_store`) is all-or-nothing per file: a file that cannot be used is
reported as a :class:`LoadProblem` naming it and why, and everything else loads.  The
:class:`CredentialStore` is immutable; reloading builds a new one, so a reload can swap
it while SAs keep running.  Lookups are pure: the engine asks for our chain by
configured file or identity, by CERTREQ, for a key, for trust anchors, CRLs, and for
peer chain validation (:meth:`CredentialStore.validate_peer`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ipsecd import der
from ipsecd.certidentity import cert_matches_identity
from ipsecd.errors import IpsecdError
from ipsecd.logsafe import safe
from ipsecd.pathvalidation import DEFAULT_PATH_POLICY, Outcome, PathPolicy, PathResult, cert_name, validate_path
from ipsecd.x509util import SIGNING_CURVES, PrivateKey, crl_signed_by, extension, is_ca, issued_by

DEFAULT_DIRECTORY = Path("/etc/ipsecd")
CERTREQ_HASH_LEN = 20  # SHA-1 (RFC 7296 3.7)
MAX_CHAIN = 8  # intermediates sent above our certificate
# swanctl directories ipsecd does not read: keys or certificates there would be silently unused
_UNREAD_SWANCTL_DIRS = ("rsa", "ecdsa", "pkcs8", "pkcs12", "x509aa", "x509ac", "x509ocsp", "pubkey", "bliss")


class CredentialError(IpsecdError):
    """A lookup named something the store does not have (e.g. a cacerts file)."""


@dataclass(frozen=True)
class LoadProblem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class CertEntry:
    cert: x509.Certificate
    file: Path


@dataclass(frozen=True)
class KeyEntry:
    key: PrivateKey = field(repr=False)
    file: Path


@dataclass(frozen=True)
class CrlEntry:
    crl: x509.CertificateRevocationList
    file: Path


@dataclass(frozen=True)
class OwnCredential:
    """One of our certificates with its key and the chain we send (never the root)."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]  # intermediates, the certificate's issuer first
    file: Path
    authorities: frozenset[bytes]  # CERTREQ hashes of every CA above cert, the root included when known
    root: x509.Certificate | None = None  # the self-signed CA above the chain, if the store has it (never sent)

    def cert_chain_der(self) -> list[bytes]:
        """CERT payload data, in order: our certificate, then the intermediates."""
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.cert, *self.chain)]


@dataclass(frozen=True)
class CertInfo:
    """One line of ``ipsecctl list-certs``, as plain data."""

    source: str  # x509 | x509ca
    file: str
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    key_type: str
    key_size: int
    has_private_key: bool
    is_ca: bool
    serial: str
    fingerprint_sha256: str
    key_id: str  # SHA-1 of the SubjectPublicKeyInfo: what a CERTREQ names

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["sans"] = list(self.sans)
        out["not_before"] = self.not_before.isoformat()
        out["not_after"] = self.not_after.isoformat()
        return out


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the raw SubjectPublicKeyInfo: a CA's name in CERTREQ (RFC 7296 3.7)."""
    return hashlib.sha1(der.spki_from_tbs(cert.tbs_certificate_bytes)).digest()


def _public_der(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class CredentialStore:
    directory: Path | None
    certs: tuple[CertEntry, ...] = ()  # x509/
    cas: tuple[CertEntry, ...] = ()  # x509ca/
    crls: tuple[CrlEntry, ...] = ()  # x509crl/
    keys: tuple[KeyEntry, ...] = ()  # private/
    own: tuple[OwnCredential, ...] = ()  # derived by build(): certificates of x509/ with a key

    @classmethod
    def build(
        cls,
        certs: Iterable[CertEntry] = (),
        cas: Iterable[CertEntry] = (),
        crls: Iterable[CrlEntry] = (),
        keys: Iterable[KeyEntry] = (),
        directory: Path | None = None,
    ) -> CredentialStore:
        """A store of these entries, with keys matched to certificates by public key."""
        store = cls(directory, tuple(certs), tuple(cas), tuple(crls), tuple(keys))
        by_public = {_public_der(k.key.public_key()): k.key for k in store.keys}
        own = []
        for entry in store.certs:
            key = by_public.get(_public_der(entry.cert.public_key()))
            if key is not None:
                chain, root = store._issuers_of(entry.cert)
                authorities = frozenset(spki_sha1(c) for c in (*chain, *([root] if root else [])))
                own.append(OwnCredential(entry.cert, key, chain, entry.file, authorities, root))
        return cls(store.directory, store.certs, store.cas, store.crls, store.keys, tuple(own))

    def _issuers_of(self, cert: x509.Certificate) -> tuple[tuple[x509.Certificate, ...], x509.Certificate | None]:
        """Intermediates above ``cert`` (by name and signature, from x509/ then x509ca/) and the root if found."""
        pool = [e.cert for e in (*self.certs, *self.cas) if is_ca(e.cert)]
        chain: list[x509.Certificate] = []
        current = cert
        while len(chain) <= MAX_CHAIN and current.subject != current.issuer:
            issuer = next((c for c in pool if c.subject == current.issuer and issued_by(current, c)), None)
            if issuer is None or issuer in chain:
                return tuple(chain), None
            if issuer.subject == issuer.issuer:  # the root: trusted by the peer or useless to it
                return tuple(chain), issuer
            chain.append(issuer)
            current = issuer
        return tuple(chain), None

    # ------------------------------------------------------------ our credentials

    def own_credential(
        self, *, cert_file: str | None = None, identity: tuple[int, bytes] | None = None, now: datetime | None = None
    ) -> OwnCredential | None:
        """Our credential from ``cert_file`` (a name in x509/, as swanctl's ``certs``) or for ``identity``.

        With several candidates, one valid at ``now`` (if given) wins, then file order.
        """
        candidates = [
            own
            for own in self.own
            if (cert_file is None or own.file.name == cert_file or str(own.file) == cert_file)
            and (identity is None or cert_matches_identity(own.cert, *identity))
        ]
        if now is not None:
            candidates.sort(key=lambda o: not o.cert.not_valid_before_utc <= now <= o.cert.not_valid_after_utc)
        return candidates[0] if candidates else None

    def own_for_certreq(
        self, certreqs: Iterable[bytes], identity: tuple[int, bytes] | None = None, now: datetime | None = None
    ) -> OwnCredential | None:
        """Our credential under a CA the peer asked for; CERTREQ hashes we do not know are ignored.

        ``certreqs``: the Certification Authority data of each CERTREQ payload with encoding
        X509_CERTIFICATE_SIGNATURE (others are to be ignored, RFC 7296 3.7), each a
        concatenation of SHA-1 hashes.  None when no hash names a CA of ours: the caller
        then falls back to its configured certificate (and sends it if send_cert says so).
        """
        wanted = set(parse_certreq(certreqs))
        matching = [
            own
            for own in self.own
            if own.authorities & wanted and (identity is None or cert_matches_identity(own.cert, *identity))
        ]
        if now is not None:
            matching.sort(key=lambda o: not o.cert.not_valid_before_utc <= now <= o.cert.not_valid_after_utc)
        return matching[0] if matching else None

    def private_key_for(self, cert: x509.Certificate) -> PrivateKey | None:
        public = _public_der(cert.public_key())
        return next((k.key for k in self.keys if _public_der(k.key.public_key()) == public), None)

    # ------------------------------------------------------------ trust

    def trust_anchors(self, cacerts: Sequence[str] | None = None) -> tuple[x509.Certificate, ...]:
        """All of x509ca/, or only the files named in ``cacerts`` (names in x509ca/)."""
        if cacerts is None:
            return tuple(e.cert for e in self.cas)
        known = {e.file.name for e in self.cas} | {str(e.file) for e in self.cas}
        missing = [name for name in cacerts if name not in known]
        if missing:
            raise CredentialError(f"cacerts {', '.join(safe(m) for m in missing)} not found in x509ca/")
        return tuple(e.cert for e in self.cas if e.file.name in cacerts or str(e.file) in cacerts)

    def certreq_hashes(self, cacerts: Sequence[str] | None = None) -> tuple[bytes, ...]:
        """SHA-1 of each trust anchor's SubjectPublicKeyInfo, for the CERTREQ we send."""
        return tuple(dict.fromkeys(spki_sha1(c) for c in self.trust_anchors(cacerts)))

    def certreq_data(self, cacerts: Sequence[str] | None = None) -> bytes:
        """The Certification Authority field of one CERTREQ payload (RFC 7296 3.7)."""
        return b"".join(self.certreq_hashes(cacerts))

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """CA certificates of x509/: offered to path validation besides what the peer sends."""
        return tuple(e.cert for e in self.certs if is_ca(e.cert))

    def crls_for_issuer(self, issuer: x509.Certificate) -> tuple[x509.CertificateRevocationList, ...]:
        """CRLs named as issued by ``issuer`` (name, and key identifier when both carry one)."""
        ski = extension(issuer, x509.SubjectKeyIdentifier)
        out = []
        for entry in self.crls:
            if entry.crl.issuer != issuer.subject:
                continue
            aki = extension(entry.crl, x509.AuthorityKeyIdentifier)
            if aki is not None and ski is not None and aki.key_identifier not in (None, ski.digest):
                continue
            out.append(entry.crl)
        return tuple(out)

    def validate_peer(
        self,
        leaf: x509.Certificate,
        sent: Sequence[x509.Certificate],
        now: datetime,
        *,
        cacerts: Sequence[str] | None = None,
        identity: tuple[int, bytes] | None = None,
        policy: PathPolicy = DEFAULT_PATH_POLICY,
    ) -> PathResult:
        """Validate a peer's certificate (its other CERT payloads in ``sent``) against our anchors and CRLs."""
        anchors = self.trust_anchors(cacerts)
        pool = [*sent, *self.intermediates]
        result = validate_path(leaf, pool, anchors, now, crls=self.crls_for_issuer, policy=policy, identity=identity)
        if cacerts is not None and result.outcome in (Outcome.UNKNOWN_CA, Outcome.MISSING_INTERMEDIATE):
            every = validate_path(leaf, pool, self.trust_anchors(), now, crls=self.crls_for_issuer, policy=policy)
            if every.ok:  # name the anchor, so the admin sees it is a cacerts choice
                return PathResult(
                    Outcome.UNKNOWN_CA,
                    f"{cert_name(leaf)} chains to {cert_name(every.chain[-1])}, which is not among this "
                    "connection's cacerts",
                )
        return result

    # ------------------------------------------------------------ listing

    def describe(self) -> list[CertInfo]:
        """Every certificate of x509/ and x509ca/, for ``ipsecctl list-certs``."""
        with_key = {_public_der(k.key.public_key()) for k in self.keys}
        return [
            _describe(e.cert, source, e.file, _public_der(e.cert.public_key()) in with_key)
            for source, entries in (("x509", self.certs), ("x509ca", self.cas))
            for e in entries
        ]


def gateway_warnings(own: OwnCredential, now: datetime) -> list[str]:
    """Why remote-access clients would refuse ``own`` as a gateway certificate (empty: none known).

    From what the clients require (shared notes on Windows, macOS/iOS, Android): Windows
    wants EKU serverAuth and the gateway name in a SAN (error 13801), Apple matches its
    remote ID against the SANs, neither verifies EdDSA (no RFC 7427), and a client that
    sends no CERTREQ still needs every intermediate, so the chain must reach a root.
    """
    cert, name = own.cert, cert_name(own.cert)
    out: list[str] = []
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= now <= end:
        out.append(f"{name} is not valid now (valid {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC)")
    eku = extension(cert, x509.ExtendedKeyUsage)
    if eku is not None and x509.ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        out.append(f"{name} has an extendedKeyUsage without serverAuth: Windows clients refuse it")
    elif eku is None:
        out.append(f"{name} has no extendedKeyUsage: Windows clients need serverAuth")
    sans = extension(cert, x509.SubjectAlternativeName)
    if sans is None or not any(isinstance(n, x509.DNSName | x509.IPAddress) for n in sans):
        out.append(f"{name} has no DNS or IP subjectAltName: Windows (error 13801) and Apple clients match the "
                   "gateway name against it")
    if isinstance(cert.public_key(), ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        out.append(f"{name} has an EdDSA key: Windows and Apple clients cannot verify it (no RFC 7427)")
    top = (cert, *own.chain)[-1]
    if own.root is None and top.subject != top.issuer:
        out.append(f"the chain of {name} stops at {cert_name(top)}: its issuer is in neither x509/ nor x509ca/, "
                   "clients that do not already have it cannot build the path")
    return out


def parse_certreq(certreqs: Iterable[bytes]) -> list[bytes]:
    """The SHA-1 hashes in CERTREQ payload data; a trailing partial hash is dropped."""
    out = []
    for data in certreqs:
        for i in range(0, len(data) - CERTREQ_HASH_LEN + 1, CERTREQ_HASH_LEN):
            out.append(bytes(data[i : i + CERTREQ_HASH_LEN]))
    return out


def key_description(key: Any) -> tuple[str, int]:
    """("RSA" | "ECDSA P-256" | "Ed25519" | ..., size in bits)."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        label = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name, key.curve.name)
        return f"ECDSA {label}", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448", 456
    return type(key).__name__, 0


def _describe(cert: x509.Certificate, source: str, file: Path, has_key: bool) -> CertInfo:
    sans = extension(cert, x509.SubjectAlternativeName)
    labels: dict[type, str] = {x509.DNSName: "DNS", x509.RFC822Name: "email", x509.IPAddress: "IP",
              x509.UniformResourceIdentifier: "URI", x509.DirectoryName: "DN"}
    san_text = tuple(
        safe(f"{labels.get(type(n), type(n).__name__)}:"
             f"{n.value.rfc4514_string() if isinstance(n, x509.DirectoryName) else n.value}")
        for n in (sans or ())
    )
    key_type, key_size = key_description(cert.public_key())
    return CertInfo(
        source=source,
        file=str(file),
        subject=safe(cert.subject.rfc4514_string()),
        issuer=safe(cert.issuer.rfc4514_string()),
        sans=san_text,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type,
        key_size=key_size,
        has_private_key=has_key,
        is_ca=is_ca(cert),
        serial=f"{cert.serial_number:x}",
        fingerprint_sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        key_id=spki_sha1(cert).hex(),
    )


# ---------------------------------------------------------------- loading

MAX_FILE_SIZE = 4 << 20  # no credential file is this large; refuse before reading a stray image


def load_store(
    directory: Path = DEFAULT_DIRECTORY, passphrases: Mapping[str, str | bytes] | None = None
) -> tuple[CredentialStore, list[LoadProblem]]:
    """Read a swanctl-layout directory; every file that cannot be used is a problem, the rest loads.

    ``passphrases`` maps a key file's name in private/ (or its full path) to its passphrase.
    """
    problems: list[LoadProblem] = []
    if not directory.is_dir():
        return CredentialStore(directory), [LoadProblem(directory, "credential directory does not exist")]
    for unread in _UNREAD_SWANCTL_DIRS:
        if _files(directory / unread):
            problems.append(LoadProblem(
                directory / unread,
                "ipsecd does not read this swanctl directory: put certificates in x509/ and keys in private/",
            ))
    cas = [CertEntry(c, p) for p in _files(directory / "x509ca") for c in _load(p, _read_ca_certs, problems)]
    certs = [CertEntry(c, p) for p in _files(directory / "x509") for c in _load(p, _read_certs, problems)]
    keys = [
        KeyEntry(k, p)
        for p in _files(directory / "private")
        for k in _load(p, lambda data, path=p: [_read_key(data, _passphrase(passphrases, path))], problems)
    ]
    issuers = [e.cert for e in (*cas, *certs) if is_ca(e.cert)]
    crls = [
        CrlEntry(crl, p)
        for p in _files(directory / "x509crl")
        for crl in _load(p, lambda data: [_read_crl(data, issuers)], problems)
    ]
    store = CredentialStore.build(certs, cas, crls, keys, directory)
    mine = {o.file for o in store.own}
    for entry in store.certs:
        if not is_ca(entry.cert) and entry.file not in mine:
            problems.append(LoadProblem(
                entry.file,
                f"certificate {cert_name(entry.cert)} has no private key in private/: loaded but unused "
                "(ipsecd does not pin peer certificates)",
            ))
    return store, problems


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".") and p.is_file())


def _load(path: Path, reader: Any, problems: list[LoadProblem]) -> list[Any]:
    """``reader(bytes)`` -> objects, or a problem naming ``path`` and nothing from it."""
    try:
        if path.stat().st_size > MAX_FILE_SIZE:
            raise ValueError(f"larger than {MAX_FILE_SIZE >> 20} MiB")
        return list(reader(path.read_bytes()))
    except OSError as e:
        problems.append(LoadProblem(path, f"cannot read: {e.strerror or e}"))
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        problems.append(LoadProblem(path, str(e)))
    return []


def _read_certs(data: bytes) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise ValueError(f"not an X.509 certificate in PEM or DER ({e})") from None
    for cert in certs:
        try:
            _ = cert.extensions, cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ValueError(f"certificate {cert_name(cert)} cannot be used: {e}") from None
    return certs


def _read_ca_certs(data: bytes) -> list[x509.Certificate]:
    certs = _read_certs(data)
    for cert in certs:
        if not is_ca(cert):
            raise ValueError(
                f"{cert_name(cert)} is not a CA certificate (basicConstraints cA missing or false); "
                "x509ca/ holds trust anchors"
            )
    return certs


def _passphrase(passphrases: Mapping[str, str | bytes] | None, path: Path) -> bytes | None:
    if not passphrases:
        return None
    secret = passphrases.get(path.name, passphrases.get(str(path)))
    return secret.encode() if isinstance(secret, str) else secret


class _NeedsPassphrase(Exception):
    pass


def _read_key(data: bytes, passphrase: bytes | None) -> PrivateKey:
    pem = b"-----BEGIN" in data
    loader = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        try:
            key = loader(data, password=passphrase)
        except TypeError:  # cryptography: a password for a plain key, or none for an encrypted one
            if passphrase is None:
                raise _NeedsPassphrase from None
            passphrase = None  # a passphrase configured for a plain key does no harm
            key = loader(data, password=None)
    except _NeedsPassphrase:
        raise ValueError("encrypted private key, and no passphrase is configured for it") from None
    except ValueError:
        if passphrase is not None:
            raise ValueError("cannot decrypt the private key: wrong passphrase, or not a private key") from None
        raise ValueError("not a private key in PEM or DER (PKCS#8, PKCS#1 or SEC1)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"RSA-{key.key_size} key: at least 2048 bits are required")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in SIGNING_CURVES:
            raise ValueError(f"ECDSA key on {key.curve.name}: P-256, P-384 or P-521 are supported")
    elif not isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise ValueError(f"{type(key).__name__.removeprefix('_')} keys are not supported (RSA, ECDSA, Ed25519, Ed448)")
    return key


def _read_crl(data: bytes, issuers: Sequence[x509.Certificate]) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        _ = list(crl.extensions)
    except ValueError as e:
        raise ValueError(f"not a CRL in PEM or DER ({e})") from None
    named = [c for c in issuers if c.subject == crl.issuer]
    if named and not any(crl_signed_by(crl, c) for c in named):
        raise ValueError(
            f"CRL signature does not verify with the certificate of its issuer {cert_name(named[0])}"
        )
    return crl  # issuer unknown here: it may come from a peer, validation checks the signature
