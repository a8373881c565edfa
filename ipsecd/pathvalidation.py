"""X.509 path validation for IKE peers, with CRL revocation and outcomes an admin can act on.

Chain building and the RFC 5280 checks are ``cryptography.x509.verification``'s (a
client verifier: no hostname policy); this module supplies the IKE profile as
extension validators and adds what the library does not do:

- **EKU** (RFC 4945 5.1.3.12, as strongSwan accepts): absent, or listing one of
  serverAuth, clientAuth, id-kp-ipsecIKE, ikeIntermediate (1.3.6.1.5.5.8.2.2) or
  anyExtendedKeyUsage.  The same rule applies to CA certificates that carry an EKU.
- **Key usage** of the end entity: when present it must allow digitalSignature or
  nonRepudiation (RFC 4945 5.1.3.2).  CAs: keyCertSign (the library's check).
- **Basic constraints**: the end entity must not be a CA; CAs must assert cA (critical
  or not: strongSwan accepts both) and respect pathLenConstraint (the library).
- **End-entity key**: RSA of at least ``min_rsa_bits``, ECDSA on P-256/384/521, Ed25519
  or Ed448.  CA keys and certificate signatures are limited by the library to RSA
  (>= 2048 bits) and ECDSA P-256/384/521 with SHA-2: a chain whose CA uses Ed25519 or
  Ed448 comes back UNSUPPORTED_ALGORITHM (pyca/cryptography issue 13391), although an
  Ed25519 *end entity* under an RSA/ECDSA CA is fine.
- **Revocation** by CRLs from the store, for every certificate of the built chain below
  the trust anchor: a CRL counts only if its issuer name matches, its signature verifies
  with the issuer certificate *of the built chain* (so a forged CRL, or one from another
  CA with the same name, is never trusted; it is skipped with a note), the issuer may
  sign CRLs, it has no extension we cannot honour (delta CRLs, indirect CRLs, partial
  reasons) and its thisUpdate is not in the future.  The newest such CRL decides: a
  listed serial is REVOKED even when the CRL is stale; a stale CRL (nextUpdate passed)
  or no CRL at all leaves the status unknown, which RELAXED policy (the default, like
  strongSwan's) accepts with a note and STRICT policy refuses.  An OCSP hook, when
  given, is asked first; OCSP itself (HTTP) belongs outside this I/O-free module.

When the library refuses a chain it says little (one string); :func:`validate_path`
turns that into an :class:`Outcome` and a sentence naming the certificate at fault.
To name it, it follows issuer names from the leaf through the offered certificates:
that walk only phrases the error, it never decides validity.  Subject names from
certificates go through :func:`ipsecd.logsafe.safe`.  Time is an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from ipsecd.certidentity import cert_matches_identity, identity_text
from ipsecd.logsafe import safe
from ipsecd.x509util import SIGNING_CURVES, crl_signed_by, extension, is_ca, issued_by


class Outcome(StrEnum):
    OK = "OK"
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT_YET_VALID"
    UNKNOWN_CA = "UNKNOWN_CA"
    MISSING_INTERMEDIATE = "MISSING_INTERMEDIATE"
    REVOKED = "REVOKED"
    REVOCATION_UNKNOWN = "REVOCATION_UNKNOWN"  # only under RevocationPolicy.STRICT
    BAD_SIGNATURE = "BAD_SIGNATURE"
    EKU = "EKU"
    KEY_USAGE = "KEY_USAGE"
    BASIC_CONSTRAINTS = "BASIC_CONSTRAINTS"
    NAME_CONSTRAINTS = "NAME_CONSTRAINTS"
    NAME_MISMATCH = "NAME_MISMATCH"
    WEAK_KEY = "WEAK_KEY"
    UNSUPPORTED_ALGORITHM = "UNSUPPORTED_ALGORITHM"
    MALFORMED = "MALFORMED"
    INVALID = "INVALID"  # refused by the library for a reason not listed above


class RevocationPolicy(StrEnum):
    RELAXED = "relaxed"  # unknown status (no current CRL) is accepted, with a note
    STRICT = "strict"  # every certificate below the anchor needs a current CRL or OCSP answer


class RevocationStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


# (certificate, its issuer, now) -> status; UNKNOWN falls back to CRLs
OcspHook = Callable[[x509.Certificate, x509.Certificate, datetime], RevocationStatus]
CrlLookup = Callable[[x509.Certificate], Sequence[x509.CertificateRevocationList]]

IKE_INTERMEDIATE = x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")  # strongSwan's ikeIntermediate
IPSEC_IKE = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")  # id-kp-ipsecIKE, RFC 4945 5.1.3.12
DEFAULT_EKUS = frozenset(
    {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        IPSEC_IKE,
        IKE_INTERMEDIATE,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    }
)
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    IPSEC_IKE: "ipsecIKE",
    IKE_INTERMEDIATE: "ikeIntermediate",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


@dataclass(frozen=True)
class PathPolicy:
    accepted_ekus: frozenset[x509.ObjectIdentifier] = DEFAULT_EKUS
    revocation: RevocationPolicy = RevocationPolicy.RELAXED
    max_depth: int = 8  # intermediate CAs between leaf and anchor
    min_rsa_bits: int = 2048  # for the end entity; the library holds CAs to 2048
    ocsp: OcspHook | None = None


DEFAULT_PATH_POLICY = PathPolicy()


@dataclass(frozen=True)
class PathResult:
    outcome: Outcome
    message: str  # one sentence for the admin; certificate names already escaped
    chain: tuple[x509.Certificate, ...] = ()  # leaf first, trust anchor last; empty unless OK
    notes: tuple[str, ...] = ()  # things worth a log line that did not decide the outcome

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.OK


def cert_name(cert: x509.Certificate) -> str:
    """The subject of ``cert`` as quoted, escaped text for a log line."""
    return f"'{safe(cert.subject.rfc4514_string())}'"


def validate_path(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
    *,
    crls: CrlLookup | None = None,
    policy: PathPolicy = DEFAULT_PATH_POLICY,
    identity: tuple[int, bytes] | None = None,
) -> PathResult:
    """Validate ``leaf`` up to one of ``anchors`` through ``intermediates`` at ``now`` (aware).

    ``intermediates`` are the peer's CERT payloads after the first plus our own x509/
    intermediates; ``crls(issuer)`` returns candidate CRLs issued by ``issuer``;
    ``identity`` is the peer's (IdType, ID data), checked against the leaf's names.
    """
    if now.tzinfo is None:
        raise ValueError("validate_path needs a timezone-aware time")
    if not anchors:
        return PathResult(Outcome.UNKNOWN_CA, "no trust anchors: x509ca/ is empty or cacerts selected none")
    recorder = _Recorder(policy)
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(now.astimezone(UTC))
        .max_chain_depth(policy.max_depth)
        .extension_policies(ca_policy=recorder.ca_policy(), ee_policy=recorder.ee_policy())
        .build_client_verifier()
    )
    try:
        chain = tuple(verifier.verify(leaf, list(intermediates)).chain)
    except VerificationError as e:
        return _explain(str(e), recorder, leaf, [*anchors, *intermediates], anchors, now)
    if identity is not None and not cert_matches_identity(leaf, *identity):
        return PathResult(
            Outcome.NAME_MISMATCH,
            f"certificate {cert_name(leaf)} does not hold the peer's identity '{identity_text(*identity)}' "
            "as its subject or a subjectAltName",
        )
    return _check_revocation(chain, now, crls, policy)


# ---------------------------------------------------------------- the IKE profile


class _Refused(ValueError):
    """Raised by our validators; the library reports it, the recorder keeps the details."""


@dataclass
class _Recorder:
    """Extension validators for one verification, remembering why they refused."""

    policy: PathPolicy
    refusals: list[tuple[Outcome, str]] = field(default_factory=list)

    def refuse(self, outcome: Outcome, message: str) -> NoReturn:
        self.refusals.append((outcome, message))
        raise _Refused(message)

    def ee_policy(self) -> ExtensionPolicy:
        # the library calls a may_be_present validator for every end entity, with None when
        # the extension is absent: basicConstraints' validator also checks the key, for
        # which the library has no hook of its own
        return (
            ExtensionPolicy.permit_all()
            .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, self._ee_basic_constraints)
            .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, self._ee_key_usage)
            .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, self._eku)
        )

    def ca_policy(self) -> ExtensionPolicy:
        return (
            ExtensionPolicy.webpki_defaults_ca()
            .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, self._ca_basic_constraints)
            .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, self._eku)
        )

    def _ee_basic_constraints(self, _p: object, cert: x509.Certificate, bc: x509.BasicConstraints | None) -> None:
        if bc is not None and bc.ca:
            self.refuse(Outcome.BASIC_CONSTRAINTS, f"end-entity certificate {cert_name(cert)} is a CA certificate")
        try:
            key = cert.public_key()
        except (UnsupportedAlgorithm, ValueError) as e:
            self.refuse(Outcome.UNSUPPORTED_ALGORITHM, f"key of {cert_name(cert)} is not supported: {safe(e)}")
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < self.policy.min_rsa_bits:
                self.refuse(
                    Outcome.WEAK_KEY,
                    f"{cert_name(cert)} has an RSA-{key.key_size} key, at least {self.policy.min_rsa_bits} is required",
                )
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in SIGNING_CURVES:
                self.refuse(Outcome.UNSUPPORTED_ALGORITHM, f"{cert_name(cert)} has a key on curve {key.curve.name}")
        elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            self.refuse(Outcome.UNSUPPORTED_ALGORITHM, f"{cert_name(cert)} has a {type(key).__name__}")

    def _ee_key_usage(self, _p: object, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
        if ku is not None and not (ku.digital_signature or ku.content_commitment):
            self.refuse(
                Outcome.KEY_USAGE,
                f"keyUsage of {cert_name(cert)} allows neither digitalSignature nor nonRepudiation",
            )

    def _eku(self, _p: object, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
        if eku is not None and not self.policy.accepted_ekus.intersection(eku):
            self.refuse(
                Outcome.EKU,
                f"extendedKeyUsage of {cert_name(cert)} ({_eku_names(eku)}) has none of "
                f"{_eku_names(self.policy.accepted_ekus)}",
            )

    def _ca_basic_constraints(self, _p: object, cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
        if not bc.ca:
            self.refuse(Outcome.BASIC_CONSTRAINTS, f"issuer {cert_name(cert)} is not a CA (basicConstraints cA false)")


def _eku_names(oids: Iterable[x509.ObjectIdentifier]) -> str:
    given = set(oids)
    known = [name for oid, name in _EKU_NAMES.items() if oid in given]
    other = sorted(oid.dotted_string for oid in given if oid not in _EKU_NAMES)
    return ", ".join([*known, *other])


# ---------------------------------------------------------------- explaining a refusal

# The library's refusal texts (cryptography 46-50), most specific first.
_LIBRARY_REASONS: tuple[tuple[str, Outcome], ...] = (
    ("not valid at validation time", Outcome.EXPIRED),  # or NOT_YET_VALID: decided per certificate
    ("all candidates exhausted with no interior errors", Outcome.MISSING_INTERMEDIATE),
    ("signature does not match", Outcome.BAD_SIGNATURE),
    ("Forbidden public key algorithm", Outcome.UNSUPPORTED_ALGORITHM),
    ("Forbidden signature algorithm", Outcome.UNSUPPORTED_ALGORITHM),
    ("RSA key is too weak", Outcome.WEAK_KEY),
    ("name constraint", Outcome.NAME_CONSTRAINTS),
    ("path length", Outcome.BASIC_CONSTRAINTS),
    ("max depth", Outcome.BASIC_CONSTRAINTS),
    ("basicConstraints", Outcome.BASIC_CONSTRAINTS),
    ("2.5.29.19", Outcome.BASIC_CONSTRAINTS),
    ("keyUsage", Outcome.KEY_USAGE),
    ("2.5.29.15", Outcome.KEY_USAGE),
    ("unaccounted-for critical extensions", Outcome.MALFORMED),
    ("duplicate extension", Outcome.MALFORMED),
    ("ASN.1", Outcome.MALFORMED),
    ("serial", Outcome.MALFORMED),
    ("X509v3", Outcome.MALFORMED),
    ("UtcTime", Outcome.MALFORMED),
)
_UNSUPPORTED_CA_KEYS = (
    "the CA key or certificate signature algorithm is not supported for path validation (RSA of 2048 bits or "
    "more and ECDSA P-256/384/521 with SHA-2 are; Ed25519/Ed448 CAs are not)"
)


def _explain(
    error: str,
    recorder: _Recorder,
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> PathResult:
    if "Python extension validator failed" in error and recorder.refusals:
        outcome, message = recorder.refusals[-1]
        return PathResult(outcome, message)
    outcome = next((o for text, o in _LIBRARY_REASONS if text in error), Outcome.INVALID)
    path = _name_path(leaf, pool, recorder.policy.max_depth)
    if outcome in (Outcome.MISSING_INTERMEDIATE, Outcome.BASIC_CONSTRAINTS) and _ends_untrusted(path, anchors):
        # a peer that sends its own root makes the library loop on it until "max depth"
        return _issuer_missing(path)
    if outcome == Outcome.EXPIRED:
        return _time_failure(path, now) or PathResult(Outcome.INVALID, _library_said(leaf, error))
    if outcome == Outcome.MISSING_INTERMEDIATE:
        return _issuer_missing(path)
    if outcome == Outcome.BAD_SIGNATURE:
        return _signature_failure(path, anchors) or PathResult(outcome, _library_said(leaf, error))
    if outcome == Outcome.UNSUPPORTED_ALGORITHM:
        return PathResult(outcome, f"chain of {cert_name(leaf)} refused: {_UNSUPPORTED_CA_KEYS}")
    culprit = next((c for c in path[1:] if _CA_CULPRITS.get(outcome, _never)(c)), None)
    return PathResult(outcome, _library_said(leaf, error, culprit))


def _library_said(leaf: x509.Certificate, error: str, culprit: x509.Certificate | None = None) -> str:
    reason = error.removeprefix("validation failed: ").removeprefix("candidates exhausted: ").split(" (encountered")[0]
    where = f" at {cert_name(culprit)}" if culprit is not None else ""
    return f"chain of {cert_name(leaf)} refused{where}: {safe(reason)}"


def _never(_cert: x509.Certificate) -> bool:
    return False


def _not_a_ca(cert: x509.Certificate) -> bool:
    return not is_ca(cert)


def _cannot_sign_certificates(cert: x509.Certificate) -> bool:
    ku = extension(cert, x509.KeyUsage)
    return ku is None or not ku.key_cert_sign


def _weak_rsa(cert: x509.Certificate) -> bool:
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return False
    return isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048


# Which CA of the name path to blame for a refusal the library reports without naming it.
_CA_CULPRITS: dict[Outcome, Callable[[x509.Certificate], bool]] = {
    Outcome.BASIC_CONSTRAINTS: _not_a_ca,
    Outcome.KEY_USAGE: _cannot_sign_certificates,
    Outcome.WEAK_KEY: _weak_rsa,
}


def _ends_untrusted(path: list[x509.Certificate], anchors: Sequence[x509.Certificate]) -> bool:
    return len(path) > 1 and _self_issued(path[-1]) and path[-1] not in anchors


def _name_path(leaf: x509.Certificate, pool: Sequence[x509.Certificate], max_depth: int) -> list[x509.Certificate]:
    """Leaf, then an issuer by name (AKI/SKI agreeing first) and so on: only to name culprits."""
    path = [leaf]
    while len(path) <= max_depth + 1 and not _self_issued(path[-1]):
        current = path[-1]
        candidates = [c for c in pool if c.subject == current.issuer and c not in path]
        if not candidates:
            break
        want = _aki(current)
        candidates.sort(key=lambda c: 0 if want is not None and want == _ski(c) else 1)
        path.append(candidates[0])
    return path


def _time_failure(path: list[x509.Certificate], now: datetime) -> PathResult | None:
    for cert in path:
        if now < cert.not_valid_before_utc:
            return PathResult(
                Outcome.NOT_YET_VALID,
                f"certificate {cert_name(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
            )
        if now > cert.not_valid_after_utc:
            return PathResult(
                Outcome.EXPIRED,
                f"certificate {cert_name(cert)} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            )
    return None


def _issuer_missing(path: list[x509.Certificate]) -> PathResult:
    top = path[-1]
    if _self_issued(top):
        return PathResult(
            Outcome.UNKNOWN_CA,
            f"chain of {cert_name(path[0])} ends at {cert_name(top)}, which is not a trusted CA (not in x509ca/ "
            "or not among the connection's cacerts)",
        )
    return PathResult(
        Outcome.MISSING_INTERMEDIATE,
        f"no certificate of {cert_name(top)}'s issuer '{safe(top.issuer.rfc4514_string())}': the peer did not send "
        "it and it is not in x509/ or x509ca/ (an intermediate CA missing, or a CA we do not trust)",
    )


def _signature_failure(path: list[x509.Certificate], anchors: Sequence[x509.Certificate]) -> PathResult | None:
    for child, issuer in pairwise(path):
        if issued_by(child, issuer):
            continue
        want, have = _aki(child), _ski(issuer)
        if issuer in anchors and want is not None and have is not None and want != have:
            return PathResult(
                Outcome.UNKNOWN_CA,
                f"{cert_name(child)} was issued by a CA named {cert_name(issuer)}, but not by the trusted one "
                "of that name (key identifiers differ)",
            )
        return PathResult(
            Outcome.BAD_SIGNATURE,
            f"signature of {cert_name(child)} does not verify with the key of {cert_name(issuer)}",
        )
    return None


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _aki(cert: x509.Certificate) -> bytes | None:
    aki = extension(cert, x509.AuthorityKeyIdentifier)
    return aki.key_identifier if aki is not None else None


def _ski(cert: x509.Certificate) -> bytes | None:
    ski = extension(cert, x509.SubjectKeyIdentifier)
    return ski.digest if ski is not None else None


# ---------------------------------------------------------------- revocation


def _check_revocation(
    chain: tuple[x509.Certificate, ...], now: datetime, crls: CrlLookup | None, policy: PathPolicy
) -> PathResult:
    notes: list[str] = []
    for child, issuer in pairwise(chain):
        status = policy.ocsp(child, issuer, now) if policy.ocsp is not None else RevocationStatus.UNKNOWN
        if status == RevocationStatus.UNKNOWN:
            status, revoked = _crl_status(child, issuer, crls(issuer) if crls else (), now, notes)
        else:
            revoked = f"certificate {cert_name(child)} is revoked (OCSP)"
        if status == RevocationStatus.REVOKED:
            return PathResult(Outcome.REVOKED, revoked, notes=tuple(notes))
        if status == RevocationStatus.UNKNOWN and policy.revocation == RevocationPolicy.STRICT:
            return PathResult(
                Outcome.REVOCATION_UNKNOWN,
                f"revocation status of {cert_name(child)} is unknown and revocation checking is strict",
                notes=tuple(notes),
            )
    names = " -> ".join(cert_name(c) for c in chain)
    return PathResult(Outcome.OK, f"chain {names} is valid", chain=chain, notes=tuple(notes))


# CRL extensions we can honour (RFC 5280 5.2); a critical one outside this set makes the CRL unusable.
_CRL_EXTENSIONS_UNDERSTOOD = (
    x509.AuthorityKeyIdentifier,
    x509.CRLNumber,
    x509.IssuingDistributionPoint,
    x509.IssuerAlternativeName,
    x509.FreshestCRL,
    x509.AuthorityInformationAccess,
)


def _crl_status(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    candidates: Sequence[x509.CertificateRevocationList],
    now: datetime,
    notes: list[str],
) -> tuple[RevocationStatus, str]:
    usable = [crl for crl in candidates if _crl_usable(crl, cert, issuer, now, notes)]
    if not usable:
        notes.append(f"no usable CRL from {cert_name(issuer)} for {cert_name(cert)}: revocation status unknown")
        return RevocationStatus.UNKNOWN, ""
    newest = max(usable, key=lambda crl: crl.last_update_utc)
    entry = newest.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        crl_reason = extension(entry, x509.CRLReason)
        reason = crl_reason.reason.value if crl_reason is not None else "unspecified"
        return RevocationStatus.REVOKED, (
            f"certificate {cert_name(cert)} (serial {cert.serial_number:x}) was revoked "
            f"{entry.revocation_date_utc:%Y-%m-%d %H:%M:%S} UTC ({reason}) by the CRL of {cert_name(issuer)}"
        )
    next_update = newest.next_update_utc
    if next_update is not None and next_update < now:
        notes.append(f"CRL of {cert_name(issuer)} is stale since {next_update:%Y-%m-%d %H:%M:%S} UTC")
        return RevocationStatus.UNKNOWN, ""
    return RevocationStatus.GOOD, ""


def _crl_usable(
    crl: x509.CertificateRevocationList,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    notes: list[str],
) -> bool:
    if crl.issuer != issuer.subject:
        return False
    why = _crl_unusable_reason(crl, cert, issuer, now)
    if why:
        notes.append(f"CRL of {cert_name(issuer)} ignored: {why}")
    return not why


def _crl_unusable_reason(
    crl: x509.CertificateRevocationList, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
) -> str:
    if not crl_signed_by(crl, issuer):
        return "its signature does not verify with the issuer's key"
    ku = extension(issuer, x509.KeyUsage)
    if ku is not None and not ku.crl_sign:  # RFC 5280 6.3.3 (f)
        return "the issuer's keyUsage does not allow cRLSign"
    if crl.last_update_utc > now:
        return f"thisUpdate {crl.last_update_utc:%Y-%m-%d %H:%M:%S} UTC is in the future"
    try:
        extensions = list(crl.extensions)
    except ValueError as e:
        return f"malformed extension ({safe(e)})"
    for ext in extensions:
        if isinstance(ext.value, x509.DeltaCRLIndicator):
            return "delta CRLs are not supported"
        if isinstance(ext.value, x509.IssuingDistributionPoint):
            idp = ext.value
            if idp.indirect_crl or idp.only_some_reasons or idp.only_contains_attribute_certs:
                return "indirect or partial CRLs are not supported"
            if (idp.only_contains_user_certs and is_ca(cert)) or (idp.only_contains_ca_certs and not is_ca(cert)):
                return "it does not cover this kind of certificate"
        elif ext.critical and not isinstance(ext.value, _CRL_EXTENSIONS_UNDERSTOOD):
            return f"unknown critical extension {ext.oid.dotted_string}"
    return ""
