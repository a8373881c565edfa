"""Certificates and signature AUTH against strongSwan 5.9.8, before ipsecd itself speaks them.

Two charons authenticate each other with certificates from tests/pki.py, written in
swanctl's layout by ``write_swanctl`` (encrypted PKCS#8 and traditional keys, PEM and
DER, a RSA-4096 three-level chain, EdDSA, CRLs): that proves the test PKI and the
layout are what strongSwan expects.  Then ipsecd's pieces are held against what
strongSwan really sent, read from the responder's debug log (ike=4 dumps the octets it
signs and verifies, enc=4 the IKE_AUTH payloads in clear):

- ``verify_auth`` accepts both AUTH payloads (RSASSA-PSS, RSA PKCS#1, DER ECDSA,
  Ed25519/Ed448 under RFC 7427; RSA method 1 and ECDSA 9/10/11 with
  ``signature_authentication = no``, a peer that behaves like Windows) and names the
  algorithm strongSwan used;
- ``validate_path`` accepts the CERT payloads strongSwan sends, and the chain ipsecd's
  store would send from the same tree is those payloads, in the same order;
- the CERTREQ strongSwan sends equals the one ipsecd's store computes for the same tree;
- ``load_store`` loads each tree charon loaded, without a problem.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from ipsecd.credentials import load_store
from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import AuthMethod, HashAlgorithm, IdType, PayloadType
from ipsecd.ike.codec import RawPayload, split_payloads
from ipsecd.ike.signature import KeyKind, SigAlg, SignatureError, SignaturePolicy, verify_auth
from ipsecd.pathvalidation import validate_path
from tests.netns import Topology
from tests.pki import CLIENT_AUTH, Issued, KeyFile, TestPki, swanctl_secrets, write_swanctl
from tests.strongswan import PLUGINS, Charon, ConnParams

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.timeout(120)]

H = HashAlgorithm
# pkcs8 for PKCS#8 keys, revocation for the CRLs; debug logging to a second file
EXTRA_CHARON = """  load = {plugins} pkcs8 revocation constraints mgf1
{settings}
  filelog {{
    detail {{
      path = {path}
      append = no
      flush_line = yes
      default = 1
      ike = 4
      enc = 4
      cfg = 2
    }}
  }}
"""


@dataclass
class Side:
    """One charon: its chain (root first, own certificate last), key file form, expected AUTH."""

    chain: list[Issued]
    method: AuthMethod
    alg: SigAlg
    fmt: str = "pem"
    form: str = "pkcs8"
    passphrase: str | None = None
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)


@dataclass
class Scenario:
    initiator: Side  # a.test, the road warrior
    responder: Side  # b.test, the gateway
    settings: str = ""  # strongswan.conf charon settings for both


def scenario(name: str, pki: TestPki) -> Scenario:
    def client(root: Issued, kind: str) -> list[Issued]:
        return [root, pki.end_entity(root, "a.test", kind, ekus=[CLIENT_AUTH])]

    if name == "rfc7427-pss-ed25519":
        gw = pki.chain(["rsa4096", "rsa4096", "rsa3072", "rsa2048"], prefix="rsa ", leaf_cn="b.test")
        crls = [pki.crl(c) for c in gw[:-1]]
        return Scenario(
            Side(client(gw[0], "ed25519"), AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.ED25519, H.IDENTITY),
                 passphrase="pass a"),
            Side(gw, AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA2_256, True, H.SHA2_256, 32),
                 form="traditional", passphrase="pass b", crls=crls),
            settings="  rsa_pss = yes")
    if name == "rfc7427-ecdsa-ed448":
        gw = pki.chain(["p384", "p256"], prefix="p256 ", leaf_cn="b.test")
        return Scenario(
            Side(client(gw[0], "ed448"), AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.ED448, H.IDENTITY), fmt="der"),
            Side(gw, AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.ECDSA, H.SHA2_256), fmt="der", form="traditional",
                 crls=[pki.crl(gw[0])]))
    if name == "rfc7427-rsa-pkcs1-p521":
        gw = pki.chain(["p521", "p521"], prefix="p521 ", leaf_cn="b.test")
        return Scenario(
            Side(client(gw[0], "rsa3072"), AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA2_256),
                 fmt="der", passphrase="pass a"),
            Side(gw, AuthMethod.DIGITAL_SIGNATURE, SigAlg(KeyKind.ECDSA, H.SHA2_512)))
    assert name == "classic-like-windows"
    gw = pki.chain(["p384", "p384", "p384"], prefix="p384 ", leaf_cn="b.test")
    return Scenario(
        Side(client(gw[0], "rsa2048"), AuthMethod.RSA_DIGITAL_SIGNATURE, SigAlg(KeyKind.RSA, H.SHA1),
             form="traditional"),
        Side(gw, AuthMethod.ECDSA_SHA_384_P384, SigAlg(KeyKind.ECDSA, H.SHA2_384), form="traditional",
             passphrase="pass b"),
        settings="  signature_authentication = no")


def swanctl_conf(local_id: str, remote_id: str, local_addr: str, remote_addr: str, cert: str,
                 local_ts: str, remote_ts: str) -> str:
    return f"""connections {{
  peer {{
    version = 2
    local_addrs = {local_addr}
    remote_addrs = {remote_addr}
    proposals = aes256gcm16-prfsha256-ecp256
    fragmentation = no
    mobike = no
    local {{
      auth = pubkey
      certs = {cert}
      id = {local_id}
    }}
    remote {{
      auth = pubkey
      id = {remote_id}
    }}
    children {{
      net {{
        local_ts = {local_ts}
        remote_ts = {remote_ts}
        esp_proposals = aes256gcm16
      }}
    }}
  }}
}}
"""


def write_tree(directory: Path, me: Side, peer_root: Issued) -> dict[str, str]:
    """swanctl's layout for one side; returns the passphrases by key file name."""
    *cas, own = me.chain
    key = KeyFile(own, me.fmt, me.form, me.passphrase, name=f"own.{me.fmt}")
    write_swanctl(directory, own=[key], certs=cas[1:], cas=list(dict.fromkeys([cas[0], peer_root])), crls=me.crls)
    return {key.name: me.passphrase} if me.passphrase and key.name else {}


# ---------------------------------------------------------------- reading charon's log

_DUMP_HEADER = re.compile(r"\[\w+\] (?P<label>.+?) => (?P<n>\d+) bytes @ 0x[0-9a-f]+$")
_DUMP_LINE = re.compile(r"^\d+\[\w+\]\s+\d+: (?P<hex>(?:[0-9A-F]{2} ){0,15}[0-9A-F]{2})")


def dumps(log: str, label: str) -> list[bytes]:
    """Every ``label => N bytes @ ...`` hex dump in a charon log, as bytes."""
    out = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = _DUMP_HEADER.search(line)
        if not m or m["label"] != label:
            continue
        n, data = int(m["n"]), bytearray()
        for follow in lines[i + 1:]:
            hexes = _DUMP_LINE.match(follow)
            if len(data) >= n or hexes is None:
                break
            data += bytes.fromhex(hexes["hex"].replace(" ", ""))
        out.append(bytes(data[:n]))
    return out


def payload_chain(plain: bytes, first: PayloadType) -> list[RawPayload] | None:
    """The payloads of a decrypted SK payload, with or without its padding (None if it is not one)."""
    for data in (plain, plain[: len(plain) - plain[-1] - 1] if plain else b""):
        try:
            return split_payloads(first, data)
        except RemoteProtocolError:  # not this reading
            continue
    return None


def payloads_of(raws: list[RawPayload], kind: PayloadType) -> list[bytes]:
    return [r.body for r in raws if r.type == kind]


# ---------------------------------------------------------------- the test


@pytest.mark.parametrize("name", ["rfc7427-pss-ed25519", "rfc7427-ecdsa-ed448", "rfc7427-rsa-pkcs1-p521",
                                  "classic-like-windows"])
def test_strongswan_auth_payloads_verify_with_ipsecd(topology: Topology, charon_factory: Callable[..., Charon],
                                                     tmp_path: Path, pki: TestPki, name: str) -> None:
    sc = scenario(name, pki)
    charons = {}
    for side, me, peer, ns, addr, peer_addr, ts, peer_ts in (
            ("a", sc.initiator, sc.responder, topology.a, topology.a_addr, topology.b_seen_from_a,
             topology.a_lan_net, topology.b_lan_net),
            ("b", sc.responder, sc.initiator, topology.b, topology.b_addr, topology.a_seen_from_b,
             topology.b_lan_net, topology.a_lan_net)):
        directory = tmp_path / side
        extra = EXTRA_CHARON.format(plugins=PLUGINS, settings=sc.settings, path=directory / "detail.log")
        ch = charon_factory(ns, ConnParams(local_addrs=[addr]), name=side, start=False, extra_charon=extra)
        secrets = write_tree(directory, me, peer.chain[0])
        conf = swanctl_conf(f"{side}.test", "b.test" if side == "a" else "a.test", addr, peer_addr,
                            f"{side}.test.pem", ts, peer_ts)
        (directory / "ipsecd-test.conf").write_text(conf + (swanctl_secrets(secrets) if secrets else ""))
        ch.start(load=False)
        loaded = ch.swanctl("--load-all", "--file", str(directory / "ipsecd-test.conf"))
        assert "loaded" in loaded.stdout and "failed" not in loaded.stdout, loaded.stdout
        # the same tree loads into ipsecd's store, cleanly
        store, problems = load_store(directory, secrets)
        assert problems == [] and store.own_credential(cert_file=f"{side}.test.pem") is not None
        charons[side] = (ch, store)

    (a, store_a), (b, store_b) = charons["a"], charons["b"]
    a.initiate("net")
    b.wait_established(10, child="net")

    log = (tmp_path / "b" / "detail.log").read_text()
    octets = dumps(log, "octets = message + nonce + prf(Sk_px, IDx')")
    assert len(octets) == 2, "charon logs the octets it verifies and the ones it signs"
    # in log order: the IKE_AUTH request it decrypted, then the response it encrypted (the first
    # type given only names the first payload, IDi or IDr: AUTH and CERT come from Next Payload fields)
    with_auth = [c for c in (payload_chain(p, PayloadType.IDi) for p in dumps(log, "plain"))
                 if c and payloads_of(c, PayloadType.AUTH)]
    assert len(with_auth) == 2
    request, response = with_auth
    policy = SignaturePolicy()  # our defaults accept what strongSwan sends in every scenario

    for raws, side in ((request, sc.initiator), (response, sc.responder)):
        (auth,) = payloads_of(raws, PayloadType.AUTH)
        method, data = auth[0], auth[4:]
        assert method == side.method
        public = side.chain[-1].cert.public_key()
        verified = []
        for candidate in octets:  # exactly one of the two is what this AUTH signs
            with contextlib.suppress(SignatureError):
                verified.append(verify_auth(public, method, data, candidate, policy))  # type: ignore[arg-type]
        assert verified == [side.alg], (name, side.alg, verified)

    # strongSwan's CERT payloads (encoding, then DER), its order, validate with ipsecd
    certs = [x509.load_der_x509_certificate(body[1:]) for body in payloads_of(response, PayloadType.CERT)]
    assert certs == [c.cert for c in reversed(sc.responder.chain[1:])]
    own_b = store_b.own_credential(cert_file="b.test.pem")
    assert own_b is not None and own_b.cert_chain_der() == [body[1:] for body in payloads_of(response,
                                                                                           PayloadType.CERT)]
    result = validate_path(certs[0], certs[1:], [sc.responder.chain[0].cert], datetime.now(UTC),
                           identity=(IdType.ID_FQDN, b"b.test"))
    assert result.ok, result
    # the CERTREQ a sent names a's trust anchor exactly as ipsecd's store computes it
    (certreq,) = payloads_of(request, PayloadType.CERTREQ)
    assert certreq[1:] == store_a.certreq_data()
