"""The credential store as the daemon loads it: at start, on ``ipsecctl reload``, for ``--check-config``.

:func:`load_credentials` reads ``settings.credentials`` (swanctl's layout, see
ipsecd/credentials.py) with the passphrases of ``secrets.private``/``rsa``/``ecdsa`` and
reports, in sentences naming the file or the connection:

- errors: a connection's ``local.certs`` or ``remote.cacerts`` names something the store
  does not have, or a connection needs certificates and the directory does not exist;
- warnings: a file that could not be used (the rest loads), certificate authentication
  with no trust anchor, a gateway certificate remote-access clients would refuse
  (:func:`ipsecd.credentials.gateway_warnings`).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from datetime import datetime

from ipsecd.config import Config, ConnectionConfig
from ipsecd.credentials import CredentialError, CredentialStore, gateway_warnings, load_store

# local methods that sign with our certificate, remote methods that show it in TLS
_OWN_CERT_LOCAL = ("pubkey", "eap-tls")
_OWN_CERT_REMOTE = ("eap-tls", "eap-dynamic")


@dataclass
class CredentialReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def uses_certificates(conn: ConnectionConfig) -> bool:
    return conn.local.auth in _OWN_CERT_LOCAL or conn.remote.auth in ("pubkey", *_OWN_CERT_REMOTE)


def load_credentials(config: Config, now: datetime, *, check_only: bool = False) -> tuple[CredentialStore,
                                                                                         CredentialReport]:
    """The store and what is wrong with it for this configuration.

    ``check_only`` (``--check-config`` on another machine than the gateway): a missing
    directory is a note, not an error.
    """
    report = CredentialReport()
    directory = config.settings.credentials
    needing = [c.name for c in config.connections.values() if uses_certificates(c)]
    if not directory.is_dir():
        if needing:
            text = (f"credential directory {directory} does not exist: connection(s) {', '.join(needing)} need "
                    "certificates (settings.credentials)")
            (report.notes if check_only else report.errors).append(text)
        return CredentialStore(directory), report
    store, problems = load_store(directory, config.key_passphrases())
    report.warnings += [str(p) for p in problems]
    for entry in store.keys:
        try:
            mode = entry.file.stat().st_mode
        except OSError:
            continue
        if mode & 0o077:
            report.warnings.append(f"{entry.file}: private key readable by group or others (mode "
                                   f"{stat.S_IMODE(mode):04o}): chmod 600 {entry.file}")
    for conn in config.connections.values():
        _check_connection(conn, store, now, report)
    return store, report


def _check_connection(conn: ConnectionConfig, store: CredentialStore, now: datetime, report: CredentialReport) -> None:
    where = store.directory
    for name in conn.local.certs:
        if store.own_credential(cert_file=name) is None:
            report.errors.append(f"connection {conn.name}: local.certs '{name}' is not in {where}/x509 with its "
                                 f"private key in {where}/private")
    if conn.remote.cacerts:
        try:
            store.trust_anchors(conn.remote.cacerts)
        except CredentialError as e:
            report.errors.append(f"connection {conn.name}: remote.{e}")
    if conn.remote.auth in ("pubkey", "eap-tls") and not store.cas:
        report.warnings.append(f"connection {conn.name}: remote.auth {conn.remote.auth}, but {where}/x509ca is empty: "
                               "no peer certificate can be trusted")
    if conn.local.auth in _OWN_CERT_LOCAL or conn.remote.auth in _OWN_CERT_REMOTE:
        own = store.own_credential(cert_file=conn.local.certs[0], now=now) if conn.local.certs else \
            store.own_credential(identity=conn.local.id.to_wire() if conn.local.id else None, now=now)
        if own is None:
            if not conn.local.certs:
                report.errors.append(f"connection {conn.name}: no certificate with its private key for "
                                     f"'{conn.local.id or 'any identity'}' in {where} (set local.certs)")
        elif conn.remote_any:  # a gateway: what road-warrior clients check
            report.warnings += [f"connection {conn.name}: {w}" for w in gateway_warnings(own, now)]
