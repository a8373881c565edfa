"""The credential store (ipsecd.credentials): loading swanctl's layout, matching keys to
certificates, our chain, CERTREQ lookups, trust anchors, CRLs and the list-certs data."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from ipsecd.credentials import (
    CredentialError,
    CredentialStore,
    gateway_warnings,
    load_store,
    parse_certreq,
    spki_sha1,
)
from ipsecd.iana import IdType
from tests.pki import CLIENT_AUTH, KEY_KINDS, Issued, KeyFile, TestPki, crl_bytes, write_swanctl


def _spki(key: object) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


KEY_FORMATS = [
    (kind, fmt, form, passphrase)
    for kind in KEY_KINDS
    for fmt in ("pem", "der")
    for form in ("pkcs8", "traditional")
    for passphrase in (None, "s3cret pass")
    if not (kind.startswith("ed") and form == "traditional")  # Ed keys exist only as PKCS#8
    and not (fmt == "der" and form == "traditional" and passphrase)  # OpenSSL encrypts traditional keys in PEM only
    # loading checks an RSA key (about 0.9 s for RSA-4096): the larger sizes in two forms only
    and (kind not in ("rsa3072", "rsa4096") or (fmt, form) in (("pem", "pkcs8"), ("der", "traditional")))
]


@pytest.mark.parametrize(("kind", "fmt", "form", "passphrase"), KEY_FORMATS,
                         ids=["-".join(str(p) for p in c if p) for c in KEY_FORMATS])
def test_each_key_type_and_format_loads_and_matches_its_certificate(
        tmp_path: Path, pki: TestPki, kind: str, fmt: str, form: str, passphrase: str | None) -> None:
    root = pki.root()
    gw = pki.end_entity(root, "gw.example.com", kind)
    write_swanctl(tmp_path, own=[KeyFile(gw, fmt, form, passphrase, name=f"gw.{fmt}")], cas=[root])
    store, problems = load_store(tmp_path, {f"gw.{fmt}": passphrase} if passphrase else None)
    assert problems == []
    own = store.own_credential()
    assert own is not None and own.cert == gw.cert
    assert _spki(own.key) == _spki(gw.key)
    assert store.private_key_for(gw.cert) is own.key


def test_encrypted_key_problems_name_the_file(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    a = pki.end_entity(root, "a.example.com")
    b = pki.end_entity(root, "b.example.com", "rsa2048")
    c = pki.end_entity(root, "c.example.com", "ed25519")
    write_swanctl(tmp_path, cas=[root], own=[
        KeyFile(a, passphrase="right", name="a.key"),
        KeyFile(b, form="traditional", passphrase="right", name="b.key"),
        KeyFile(c, name="c.key"),  # not encrypted: a configured passphrase does no harm
    ])
    store, problems = load_store(tmp_path, {"b.key": "wrong", "c.key": "unused"})
    reasons = {p.path.name: p.reason for p in problems}
    assert "no passphrase is configured" in reasons.pop("a.key")
    assert "wrong passphrase" in reasons.pop("b.key")
    # the certificates without keys are reported (loaded but unused), nothing else
    assert set(reasons) == {"a.example.com.pem", "b.example.com.pem"}
    assert [o.cert for o in store.own] == [c.cert]
    # the full path works as the passphrase key too
    store, problems = load_store(tmp_path, {str(tmp_path / "private" / "a.key"): b"right", "b.key": "right"})
    assert problems == [] and len(store.own) == 3


def test_bad_files_are_reported_and_the_rest_loads(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    gw = pki.end_entity(root, "gw.example.com")
    write_swanctl(tmp_path, own=[gw], cas=[root], crls=[pki.crl(root)])
    (tmp_path / "x509" / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----")
    (tmp_path / "x509" / "truncated.der").write_bytes(gw.cert_bytes("der")[:100])
    (tmp_path / "x509ca" / "empty.pem").write_bytes(b"")
    (tmp_path / "x509crl" / "junk.crl").write_bytes(b"\x30\x03\x02\x01\x01")
    (tmp_path / "private" / "junk.key").write_bytes(b"hello")
    (tmp_path / "private" / ".hidden").write_bytes(b"ignored: dot files are not credentials")
    (tmp_path / "x509" / "subdir").mkdir()
    unreadable = tmp_path / "private" / "unreadable.key"
    unreadable.write_bytes(gw.key_bytes())
    unreadable.chmod(0)
    store, problems = load_store(tmp_path)
    named = {p.path.name: p.reason for p in problems}
    expected = {"garbage.pem", "truncated.der", "empty.pem", "junk.crl", "junk.key"}
    if os.geteuid() != 0:  # root reads mode-0 files
        expected.add("unreadable.key")
    assert set(named) == expected
    assert "not an X.509 certificate" in named["garbage.pem"]
    assert "not a private key in PEM" in named["junk.key"]
    assert "not a CRL" in named["junk.crl"]
    assert all(str(tmp_path) in str(p) for p in problems)  # each problem names its file
    assert store.own_credential() is not None and store.trust_anchors() == (root.cert,) and len(store.crls) == 1


def test_unsupported_keys_are_refused(tmp_path: Path, pki: TestPki) -> None:
    write_swanctl(tmp_path)
    weak = rsa.generate_private_key(65537, 1024)
    for file, key in (("rsa1024.pem", weak), ("k1.pem", ec.generate_private_key(ec.SECP256K1())),
                      ("dsa.pem", dsa.generate_private_key(2048))):
        (tmp_path / "private" / file).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _, problems = load_store(tmp_path)
    named = {p.path.name: p.reason for p in problems}
    assert "RSA-1024" in named["rsa1024.pem"]
    assert "secp256k1" in named["k1.pem"]
    assert "DSA" in named["dsa.pem"]


def test_key_without_certificate_and_certificate_without_key(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    lonely_key = pki.end_entity(root, "lonely.example.com", "p384")
    peer = pki.end_entity(root, "peer.example.com")
    write_swanctl(tmp_path, cas=[root], certs=[peer])
    (tmp_path / "private" / "lonely.pem").write_bytes(lonely_key.key_bytes())
    store, problems = load_store(tmp_path)
    assert [(p.path.name, "no private key" in p.reason) for p in problems] == [("peer.example.com.pem", True)]
    assert store.own == () and len(store.keys) == 1


def test_keys_match_certificates_by_public_key_not_by_name(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    one = pki.end_entity(root, "one.example.com", "rsa2048")
    two = pki.end_entity(root, "two.example.com", "ed448")
    write_swanctl(tmp_path, cas=[root], own=[KeyFile(one, name="two.key"), KeyFile(two, name="one.key")])
    store, problems = load_store(tmp_path)
    assert problems == []
    assert {o.cert.subject.rfc4514_string(): o.file.name for o in store.own} == {
        "CN=one.example.com": "one.example.com.pem", "CN=two.example.com": "two.example.com.pem"}
    assert store.private_key_for(one.cert) is not None
    assert _spki(store.private_key_for(one.cert)) == _spki(one.key)


def _three_level(pki: TestPki) -> list[Issued]:
    """RSA-4096 root -> two intermediates -> gateway, the size of a real remote-access chain."""
    return pki.chain(["rsa4096", "rsa4096", "rsa3072", "rsa2048"], leaf_cn="vpn.example.com")


def test_chain_is_built_from_intermediates_and_never_holds_the_root(tmp_path: Path, pki: TestPki) -> None:
    root, inter1, inter2, gw = _three_level(pki)
    write_swanctl(tmp_path, own=[gw], certs=[inter1, inter2, root], cas=[root])  # the root in x509/ too
    store, problems = load_store(tmp_path)
    assert problems == []
    own = store.own_credential(cert_file="vpn.example.com.pem")
    assert own is not None and own.chain == (inter2.cert, inter1.cert)
    payloads = own.cert_chain_der()
    assert payloads[0] == gw.cert_bytes("der") and len(payloads) == 3
    assert 3000 < sum(map(len, payloads)) < 6000  # too big for one 1280-byte packet: RFC 7383 matters
    assert store.intermediates == (inter1.cert, inter2.cert, root.cert)  # CA certificates of x509/


def test_chain_uses_intermediates_from_x509ca_and_stops_without_issuer(tmp_path: Path, pki: TestPki) -> None:
    root, inter1, inter2, gw = _three_level(pki)
    write_swanctl(tmp_path, own=[gw], cas=[root, inter1])  # inter2 missing: chain stops at gw
    store, _ = load_store(tmp_path)
    own = store.own_credential()
    assert own is not None and own.chain == ()
    write_swanctl(tmp_path, certs=[inter2])
    store, _ = load_store(tmp_path)
    own = store.own_credential()
    assert own is not None and own.chain == (inter2.cert, inter1.cert)
    assert own.authorities == {spki_sha1(c) for c in (inter2.cert, inter1.cert, root.cert)}


def test_certreq_hashes_are_sha1_of_the_anchors_public_key_info(tmp_path: Path, pki: TestPki) -> None:
    root_a, root_b = pki.root("root A"), pki.root("root B", "rsa2048")
    write_swanctl(tmp_path, cas=[root_a, root_b])
    store, _ = load_store(tmp_path)
    expected = [hashlib.sha1(_spki(r.key)).digest() for r in (root_a, root_b)]
    assert list(store.certreq_hashes()) == expected
    assert store.certreq_data() == b"".join(expected)
    assert store.certreq_hashes(["root_B.pem"]) == (expected[1],)


def test_our_chain_by_certreq_ignores_38_unknown_hashes(tmp_path: Path, pki: TestPki) -> None:
    """Windows sends one CERTREQ hash per trusted root (~38): we pick the chain under one we know."""
    root_a, root_b = pki.root("root A"), pki.root("root B")
    inter_b = pki.intermediate(root_b, "intermediate B")
    gw_a = pki.end_entity(root_a, "gw.example.com")
    gw_b = pki.end_entity(inter_b, "gw.example.com", "p384")
    write_swanctl(tmp_path, own=[KeyFile(gw_a, name="a.key")], cas=[root_a, root_b], certs=[inter_b])
    (tmp_path / "x509" / "gw_b.pem").write_bytes(gw_b.cert_bytes())
    (tmp_path / "private" / "b.key").write_bytes(gw_b.key_bytes())
    store, problems = load_store(tmp_path)
    assert problems == [] and len(store.own) == 2
    unknown = [hashlib.sha1(os.urandom(8)).digest() for _ in range(38)]
    windows = b"".join(unknown[:20]) + spki_sha1(root_b.cert) + b"".join(unknown[20:])
    chosen = store.own_for_certreq([windows])
    assert chosen is not None and chosen.cert == gw_b.cert and chosen.chain == (inter_b.cert,)
    assert store.own_for_certreq([b"".join(unknown)]) is None
    # several CERTREQ payloads, an intermediate's hash, a trailing partial hash
    assert store.own_for_certreq([b"".join(unknown[:3]), spki_sha1(inter_b.cert) + b"\x01\x02"]) is chosen
    assert store.own_for_certreq([spki_sha1(root_a.cert)], identity=(IdType.ID_FQDN, b"gw.example.com")).cert == (
        gw_a.cert)
    assert store.own_for_certreq([spki_sha1(root_a.cert)], identity=(IdType.ID_FQDN, b"other.example.com")) is None
    assert parse_certreq([bytes(45)]) == [bytes(20), bytes(20)]


def test_own_credential_by_identity_and_validity(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    old = pki.issue("gw.example.com", root, sans=["DNS:gw.example.com"], not_before=pki.now - timedelta(days=400),
                    not_after=pki.now - timedelta(days=35))
    new = pki.issue("gw.example.com", root, "p384", sans=["DNS:gw.example.com", "IP:192.0.2.1"])
    write_swanctl(tmp_path, cas=[root], own=[KeyFile(old, name="1.key")])
    (tmp_path / "x509" / "zz-new.pem").write_bytes(new.cert_bytes())
    (tmp_path / "private" / "2.key").write_bytes(new.key_bytes())
    store, _ = load_store(tmp_path)
    fqdn = (IdType.ID_FQDN, b"GW.example.com")
    assert store.own_credential(identity=fqdn).cert == old.cert  # file order without a time
    assert store.own_credential(identity=fqdn, now=pki.now).cert == new.cert  # the valid one
    assert store.own_credential(identity=(IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1]))).cert == new.cert
    assert store.own_credential(identity=(IdType.ID_FQDN, b"nope.example.com")) is None
    assert store.own_credential(cert_file="zz-new.pem").cert == new.cert
    assert store.own_credential(cert_file="missing.pem") is None


def test_trust_anchors_and_cacerts(tmp_path: Path, pki: TestPki) -> None:
    root_a, root_b = pki.root("root A"), pki.root("root B")
    not_ca = pki.end_entity(root_a, "not-a-ca.example.com")
    write_swanctl(tmp_path, cas=[root_a, root_b, not_ca])
    store, problems = load_store(tmp_path)
    assert [(p.path.name, "not a CA certificate" in p.reason) for p in problems] == [("not-a-ca.example.com.pem", True)]
    assert store.trust_anchors() == (root_a.cert, root_b.cert)
    assert store.trust_anchors(["root_B.pem"]) == (root_b.cert,)
    assert store.trust_anchors([]) == ()
    with pytest.raises(CredentialError, match=r"missing\.pem"):
        store.trust_anchors(["root_A.pem", "missing.pem"])


def test_pem_bundles_load_every_certificate(tmp_path: Path, pki: TestPki) -> None:
    root_a, root_b = pki.root("root A"), pki.root("root B")
    write_swanctl(tmp_path)
    (tmp_path / "x509ca" / "bundle.pem").write_bytes(root_a.cert_bytes() + root_b.cert_bytes())
    store, problems = load_store(tmp_path)
    assert problems == [] and store.trust_anchors(["bundle.pem"]) == (root_a.cert, root_b.cert)


def test_crls_by_issuer_and_bad_signature_refused_at_load(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    inter = pki.intermediate(root, "intermediate")
    stranger = pki.root("stranger")
    good = pki.crl(inter, revoked=[7])
    forged = pki.crl(inter, signer=stranger.key)  # issuer name of inter, signed by someone else
    foreign = pki.crl(stranger)  # issuer not in the store: kept, validation checks it against what peers send
    write_swanctl(tmp_path, cas=[root], certs=[inter], crls=[good, forged, foreign])
    store, problems = load_store(tmp_path)
    assert [(p.path.name, "signature does not verify" in p.reason) for p in problems] == [("crl1.pem", True)]
    assert store.crls_for_issuer(inter.cert) == (good,)
    assert store.crls_for_issuer(root.cert) == ()
    assert store.crls_for_issuer(stranger.cert) == (foreign,)
    (tmp_path / "x509crl" / "der.crl").write_bytes(crl_bytes(pki.crl(root), "der"))
    store, _ = load_store(tmp_path)
    assert len(store.crls_for_issuer(root.cert)) == 1


def test_unread_swanctl_directories_and_missing_directory(tmp_path: Path, pki: TestPki) -> None:
    write_swanctl(tmp_path)
    (tmp_path / "rsa").mkdir()
    (tmp_path / "rsa" / "old.pem").write_bytes(b"x")
    (tmp_path / "pkcs12").mkdir()  # empty: nothing to say
    _, problems = load_store(tmp_path)
    assert [(p.path.name, "does not read" in p.reason) for p in problems] == [("rsa", True)]
    store, problems = load_store(tmp_path / "nope")
    assert store.own == () and "does not exist" in problems[0].reason


def test_store_is_immutable_and_reload_builds_a_new_one(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    write_swanctl(tmp_path, cas=[root], own=[pki.end_entity(root, "gw.example.com")])
    first, _ = load_store(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.cas = ()  # type: ignore[misc]
    other = pki.root("second root")
    write_swanctl(tmp_path, cas=[other])
    second, _ = load_store(tmp_path)
    assert first.trust_anchors() == (root.cert,)
    assert second.trust_anchors() == (other.cert, root.cert) or second.trust_anchors() == (root.cert, other.cert)
    assert CredentialStore.build().own == ()


def test_describe_gives_plain_data_for_list_certs(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root("C=CH, O=ipsecd, CN=Root\nCA", "rsa3072")
    gw = pki.end_entity(root, "gw.example.com", "p384", sans=["DNS:gw.example.com", "IP:192.0.2.1",
                                                               "email:ops@example.com", "DN:CN=alias"])
    write_swanctl(tmp_path, cas=[root], own=[gw])
    store, _ = load_store(tmp_path)
    rows = {r.source: r for r in store.describe()}
    ours = rows["x509"].to_dict()
    assert ours["subject"] == "CN=gw.example.com" and ours["issuer"].startswith("CN=Root\\x0aCA")  # escaped
    assert ours["sans"] == ["DNS:gw.example.com", "IP:192.0.2.1", "email:ops@example.com", "DN:CN=alias"]
    assert (ours["key_type"], ours["key_size"], ours["has_private_key"], ours["is_ca"]) == ("ECDSA P-384", 384,
                                                                                             True, False)
    assert ours["fingerprint_sha256"] == hashlib.sha256(gw.cert_bytes("der")).hexdigest()
    assert ours["key_id"] == spki_sha1(gw.cert).hex()
    assert ours["not_after"] == gw.cert.not_valid_after_utc.isoformat()
    ca = rows["x509ca"]
    assert (ca.key_type, ca.key_size, ca.has_private_key, ca.is_ca) == ("RSA", 3072, False, True)


def test_gateway_warnings_for_remote_access_clients(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root()
    inter = pki.intermediate(root, "intermediate")
    good = pki.end_entity(inter, "vpn.example.com")  # SAN DNS, EKU serverAuth
    bare = pki.issue("bare.example.com", root, sans=[], ekus=None)
    client_eku = pki.end_entity(root, "client.example.com", "ed25519", ekus=[CLIENT_AUTH],
                                not_after=pki.now - timedelta(days=1))
    write_swanctl(tmp_path, own=[good, bare, client_eku], certs=[inter], cas=[root])
    store, _ = load_store(tmp_path)
    by_cn = {o.cert.subject.rfc4514_string(): gateway_warnings(o, pki.now) for o in store.own}
    assert by_cn["CN=vpn.example.com"] == []
    assert [w.split(":")[0] for w in by_cn["CN=bare.example.com"]] == [
        "'CN=bare.example.com' has no extendedKeyUsage", "'CN=bare.example.com' has no DNS or IP subjectAltName"]
    joined = " ".join(by_cn["CN=client.example.com"])
    assert "not valid now" in joined and "without serverAuth" in joined and "EdDSA" in joined
    # without the intermediate in the tree, the chain cannot reach a root
    (tmp_path / "x509" / "intermediate.pem").unlink()
    store, _ = load_store(tmp_path)
    (vpn,) = [o for o in store.own if o.cert == good.cert]
    assert vpn.root is None and any("stops at 'CN=vpn.example.com'" in w for w in gateway_warnings(vpn, pki.now))
