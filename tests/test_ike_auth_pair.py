"""Two engines authenticating with certificates and EAP (RFC 7296 2.15, 2.16; RFC 7427; RFC 5998).

A is always the client (initiator, a.test, 192.0.2.1), B the gateway (responder, b.test).
Every combination the issue names, with the failures a gateway meets: the refusal says
which check failed, the peer gets AUTHENTICATION_FAILED (or EAP-Failure), the gateway
reports the login with a fixed result, and nothing is installed.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509

from ipsecd.eap.method import NtHash
from ipsecd.eap.mschapv2 import nt_password_hash
from ipsecd.iana import AuthMethod, CertEncoding, ExchangeType, NotifyType
from ipsecd.identity import Identity
from ipsecd.ike.cp import client_identity
from ipsecd.ike.events import (
    AuthRequest,
    Cause,
    ChildSaEstablished,
    IkeSaClosed,
    IkeSaEstablished,
    Login,
    LoginResult,
)
from ipsecd.ike.message import decode_datagrams
from ipsecd.ike.payloads import AuthPayload, CertPayload, CertReqPayload, EapPayload, NotifyPayload, Payload, SaPayload
from ipsecd.ike.settings import AuthSettings, TsSpec
from ipsecd.ike.signature import SignaturePolicy
from ipsecd.ike.tasks import ike_init
from tests.auth_pair import FakeRadius, eap_id, pair_of, pump_with_radius, secrets, store_of, with_auth
from tests.ike_pair import Pair, make_settings, make_settings_b
from tests.pki import CLIENT_AUTH, TestPki

PASSWORDS = {"alice": "alice password", "bob": "bob password"}


@pytest.fixture
def certs(pki: TestPki) -> SimpleNamespace:
    root = pki.root("ipsecd test root", "p256")
    inter = pki.intermediate(root, "ipsecd intermediate", "p256")
    return SimpleNamespace(
        root=root, inter=inter,
        gw=pki.end_entity(inter, "b.test", "p256"),  # SAN DNS:b.test, EKU serverAuth
        client=pki.end_entity(root, "a.test", "p256", ekus=[CLIENT_AUTH]),
    )


def _up(pair: Pair) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_a), pair.events_a
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_b), pair.events_b
    (ca,) = [e for e in pair.events_a if isinstance(e, ChildSaEstablished)]
    (cb,) = [e for e in pair.events_b if isinstance(e, ChildSaEstablished)]
    assert ca.spi_in == cb.spi_out and ca.spi_out == cb.spi_in and ca.keys_out == cb.keys_in
    return ca, cb


def _login(pair: Pair) -> Login:
    (login,) = [e for e in pair.events_b if isinstance(e, Login)]
    return login


def _closed(events: list[Any]) -> IkeSaClosed:
    (closed,) = [e for e in events if isinstance(e, IkeSaClosed)]
    return closed


def _failed(pair: Pair, result: LoginResult, *words: str) -> Login:
    """Nothing up on either side, the gateway's Login says why, the client heard AUTH failed."""
    assert not any(isinstance(e, IkeSaEstablished | ChildSaEstablished) for e in pair.events_a + pair.events_b)
    login = _login(pair)
    assert login.result == result, login
    for w in words:
        assert w in login.reason, (w, login.reason)
    assert _closed(pair.events_a).cause == Cause.AUTH_FAILED
    return login


def _ike_auth(pair: Pair, direction: str) -> list[list[Payload]]:
    """The IKE_AUTH messages sent in ``direction`` ("a->b"/"b->a"), decrypted with the receiver's keys."""
    receiver = (pair.b if direction == "a->b" else pair.a).list_sas()[0]
    by_id: dict[int, list[bytes]] = {}  # large messages arrive as RFC 7383 fragments
    for tag, data in pair.sent:
        if tag == direction and data[18] == ExchangeType.IKE_AUTH:
            by_id.setdefault(int.from_bytes(data[20:24], "big"), []).append(data)
    return [decode_datagrams(frags, receiver.sk_in).payloads for _, frags in sorted(by_id.items())]


def _pubkey_pair(pki: TestPki, certs: SimpleNamespace, **kw: Any) -> Pair:
    sa = with_auth(make_settings(), "pubkey", "pubkey")
    sb = with_auth(make_settings_b(), "pubkey", "pubkey")
    sa = dataclasses.replace(sa, **kw.pop("a", {}))
    sb = dataclasses.replace(sb, **kw.pop("b", {}))
    store_a = kw.pop("store_a", None) or store_of([certs.client], cas=[certs.root])
    store_b = kw.pop("store_b", None) or store_of([certs.gw], [certs.inter], [certs.root])
    return pair_of(sa, sb, pki, store_a, store_b)


# ---------------------------------------------------------------- certificates


@pytest.mark.parametrize("gw_key", ["rsa2048", "p256", "p384", "ed25519"])
def test_certificates_both_ways_with_rfc7427(pki: TestPki, certs: SimpleNamespace, gw_key: str) -> None:
    gw = pki.end_entity(certs.inter, "b.test", gw_key)
    pair = _pubkey_pair(pki, certs, store_b=store_of([gw], [certs.inter], [certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    assert _login(pair).result == LoginResult.SUCCESS and _login(pair).method == "pubkey"
    (request,) = _ike_auth(pair, "a->b")
    (response,) = _ike_auth(pair, "b->a")
    # both announced SIGNATURE_HASH_ALGORITHMS: RFC 7427 signatures both ways
    assert [p.method for p in request + response if isinstance(p, AuthPayload)] == [AuthMethod.DIGITAL_SIGNATURE] * 2
    # the gateway sends its certificate and the intermediate, never the root; the client asked for them
    chain = [x509.load_der_x509_certificate(p.data) for p in response if isinstance(p, CertPayload)]
    assert chain == [gw.cert, certs.inter.cert]
    (certreq,) = [p for p in request if isinstance(p, CertReqPayload)]
    assert certreq.encoding == CertEncoding.X509_CERTIFICATE_SIGNATURE
    assert certreq.data == store_of(cas=[certs.root]).certreq_data()
    sa_b = pair.b.list_sas()[0]
    assert sa_b.login is not None and sa_b.login.certificate == "CN=a.test"


@pytest.mark.parametrize(("gw_key", "method"), [("rsa2048", AuthMethod.RSA_DIGITAL_SIGNATURE),
                                                ("p256", AuthMethod.ECDSA_SHA_256_P256),
                                                ("p384", AuthMethod.ECDSA_SHA_384_P384)])
def test_classic_auth_for_a_client_without_rfc7427(pki: TestPki, certs: SimpleNamespace,
                                                   monkeypatch: pytest.MonkeyPatch, gw_key: str,
                                                   method: AuthMethod) -> None:
    """Windows and Apple announce no hash algorithms: the gateway signs with method 1 or 9-11."""
    original = ike_init._hash_notify
    monkeypatch.setattr(ike_init, "_hash_notify", lambda sa: [] if sa.initiator else original(sa))
    gw = pki.end_entity(certs.inter, "b.test", gw_key)
    pair = _pubkey_pair(pki, certs, store_b=store_of([gw], [certs.inter], [certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    (response,) = _ike_auth(pair, "b->a")
    assert [p.method for p in response if isinstance(p, AuthPayload)] == [method]


def test_an_eddsa_gateway_cannot_serve_a_client_without_rfc7427(pki: TestPki, certs: SimpleNamespace,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    original = ike_init._hash_notify
    monkeypatch.setattr(ike_init, "_hash_notify", lambda sa: [] if sa.initiator else original(sa))
    gw = pki.end_entity(certs.inter, "b.test", "ed25519")
    pair = _pubkey_pair(pki, certs, store_b=store_of([gw], [certs.inter], [certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    login = _login(pair)
    assert login.result == LoginResult.NO_CREDENTIAL
    assert "Ed25519 has no classic AUTH method" in login.reason


def test_rsa_pss_when_configured(pki: TestPki, certs: SimpleNamespace) -> None:
    client = pki.end_entity(certs.root, "a.test", "rsa3072", ekus=[CLIENT_AUTH])
    pair = _pubkey_pair(pki, certs, a={"signature": SignaturePolicy(rsa_pss=True)},
                        store_a=store_of([client], cas=[certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    (request,) = _ike_auth(pair, "a->b")
    (auth,) = [p for p in request if isinstance(p, AuthPayload)]
    assert auth.method == AuthMethod.DIGITAL_SIGNATURE and b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0a" in auth.data[:20]


def test_send_cert_ifasked_sends_nothing_unasked_and_the_peer_refuses(pki: TestPki, certs: SimpleNamespace) -> None:
    """The gateway sends no CERTREQ (send_certreq: no), the client only sends when asked: no certificate."""
    pair = _pubkey_pair(pki, certs, b={"send_certreq": False})
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _failed(pair, LoginResult.CERTIFICATE, "sent no X.509 certificate")


def test_send_cert_always_without_certreq(pki: TestPki, certs: SimpleNamespace) -> None:
    """Apple clients send no CERTREQ: with send_cert always the gateway sends its chain anyway."""
    pair = _pubkey_pair(pki, certs, a={"send_certreq": False, "send_cert": "always"},
                        b={"send_certreq": False, "send_cert": "always"})
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    (request,) = _ike_auth(pair, "a->b")
    assert not [p for p in request if isinstance(p, CertReqPayload)]


def test_unknown_certreqs_are_ignored(pki: TestPki, certs: SimpleNamespace) -> None:
    """Windows sends a CERTREQ per trusted root: ours is found among 38 strangers."""
    strangers = [pki.root(f"stranger {i}", "p256") for i in range(37)]
    store_a = store_of([certs.client], cas=[*strangers, certs.root])
    pair = _pubkey_pair(pki, certs, store_a=store_a)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    (request,) = _ike_auth(pair, "a->b")
    (certreq,) = [p for p in request if isinstance(p, CertReqPayload)]
    assert len(certreq.data) == 38 * 20


@pytest.mark.parametrize("case", ["expired", "unknown_ca", "revoked", "name_mismatch", "eku", "cacerts"])
def test_the_gateway_refuses_a_client_certificate(pki: TestPki, certs: SimpleNamespace, case: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    store_b = store_of([certs.gw], [certs.inter], [certs.root])
    client, words = certs.client, ()
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    if case == "expired":
        client = pki.end_entity(certs.root, "a.test", "p256", ekus=[CLIENT_AUTH],
                                not_before=pki.now - timedelta(days=30), not_after=pki.now - timedelta(days=1))
        words = ("EXPIRED", "expired")
    elif case == "unknown_ca":
        other = pki.root("other root", "p256")
        client = pki.end_entity(other, "a.test", "p256", ekus=[CLIENT_AUTH])
        words = ("MISSING_INTERMEDIATE", "issuer 'CN=other root'")  # roots are never sent
    elif case == "revoked":
        store_b = store_of([certs.gw], [certs.inter], [certs.root], crls=[pki.crl(certs.root,
                                                                               [client.cert.serial_number])])
        words = ("REVOKED", "was revoked")
    elif case == "name_mismatch":  # a client that claims an identity its certificate does not hold
        from ipsecd.ike.authenticators import pubkey

        monkeypatch.setattr(pubkey, "cert_matches_identity", lambda *args: True)  # ours would refuse to send it
        a = {"local_id": eap_id("c.test"), "local_auth": AuthSettings("pubkey", certs=("a.test.pem",))}
        b = {"remote_id": eap_id("*.test")}
        words = ("NAME_MISMATCH", "c.test")
    elif case == "eku":
        client = pki.end_entity(certs.root, "a.test", "p256", ekus=[x509.ExtendedKeyUsageOID.CODE_SIGNING])
        words = ("EKU", "codeSigning")
    elif case == "cacerts":
        other = pki.root("other root", "p256")
        store_b = store_of([certs.gw], [certs.inter], [certs.root, other])
        b = {"remote_auth": AuthSettings("pubkey", cacerts=("other root.pem",))}
        words = ("UNKNOWN_CA", "not among this connection's cacerts")
    pair = _pubkey_pair(pki, certs, a=a, b=b, store_a=store_of([client], cas=[certs.root]), store_b=store_b)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    login = _failed(pair, LoginResult.CERTIFICATE, *words)
    assert login.method == "pubkey"


def test_the_client_refuses_an_expired_gateway(pki: TestPki, certs: SimpleNamespace) -> None:
    from datetime import timedelta

    gw = pki.end_entity(certs.inter, "b.test", "p256", not_after=pki.now - timedelta(hours=1))
    pair = _pubkey_pair(pki, certs, store_b=store_of([gw], [certs.inter], [certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    closed = _closed(pair.events_a)
    assert closed.cause == Cause.AUTH_FAILED and "expired" in closed.reason
    assert not any(isinstance(e, ChildSaEstablished) for e in pair.events_a)


@pytest.mark.parametrize(("pattern", "identity", "san"), [
    ("*@example.com", "alice@example.com", "email:alice@example.com"),
    ("C=CH, O=ipsecd, CN=*", "C=CH, O=ipsecd, CN=alice", None),
])
def test_wildcard_remote_ids(pki: TestPki, certs: SimpleNamespace, pattern: str, identity: str,
                             san: str | None) -> None:
    subject = identity if "=" in identity else "alice"
    client = pki.issue(subject, certs.root, "p256", sans=[san] if san else [], ekus=[CLIENT_AUTH])
    pair = _pubkey_pair(pki, certs, a={"local_id": eap_id(identity)}, b={"remote_id": eap_id(pattern)},
                        store_a=store_of([client], cas=[certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    assert str(pair.b.list_sas()[0].remote_identity) == identity


def test_our_identity_defaults_to_the_certificate_subject(pki: TestPki, certs: SimpleNamespace) -> None:
    client = pki.issue("C=CH, O=ipsecd, CN=laptop", certs.root, "p256", ekus=[CLIENT_AUTH])
    sa = with_auth(dataclasses.replace(make_settings(), local_id=None), AuthSettings("pubkey", certs=("laptop.pem",)),
                   "pubkey")
    sb = with_auth(make_settings_b(remote_id="C=CH, O=ipsecd, CN=*"), "pubkey", "pubkey")
    pair = pair_of(sa, sb, pki, store_of([client], cas=[certs.root]), store_of([certs.gw], [certs.inter],
                                                                             [certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    assert str(pair.b.list_sas()[0].remote_identity) == "C=CH, O=ipsecd, CN=laptop"


def test_no_certificate_for_our_identity_is_a_config_failure(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _pubkey_pair(pki, certs, store_a=store_of(cas=[certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    closed = _closed(pair.events_a)
    assert closed.cause == Cause.CONFIG and "no certificate holding our identity 'a.test'" in closed.reason


def test_we_do_not_send_a_certificate_that_lacks_our_identity(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _pubkey_pair(pki, certs, a={"local_id": eap_id("c.test")}, b={"remote_id": eap_id("*.test")})
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    closed = _closed(pair.events_a)
    assert closed.cause == Cause.CONFIG and "no certificate holding our identity 'c.test'" in closed.reason


def test_psk_client_against_a_pubkey_connection(pki: TestPki, certs: SimpleNamespace) -> None:
    sa = with_auth(make_settings(), "psk", "pubkey")
    sb = with_auth(make_settings_b(), "pubkey", "pubkey")
    pair = pair_of(sa, sb, pki, store_of(cas=[certs.root]), store_of([certs.gw], [certs.inter], [certs.root]))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    login = _failed(pair, LoginResult.NO_CONFIG, "sends AUTH method 2", "conn: pubkey")
    assert login.method == "psk"


# ---------------------------------------------------------------- EAP


def _eap_pair(pki: TestPki, certs: SimpleNamespace, client: str | AuthSettings, gateway: str | AuthSettings,
              **kw: Any) -> Pair:
    """A Windows-like client (its IKE identity is its address) and a certificate gateway."""
    local = client if isinstance(client, AuthSettings) else AuthSettings(client, eap_id=eap_id("alice"))
    remote = gateway if isinstance(gateway, AuthSettings) else AuthSettings(gateway, eap_id=eap_id("%any"))
    sa = with_auth(dataclasses.replace(make_settings(), local_id=None), local, "pubkey",
                   eap_secret=secrets(kw.pop("client_secrets", PASSWORDS)))
    sb = with_auth(make_settings_b(remote_id="%any"), "pubkey", remote, eap_secret=secrets(PASSWORDS))
    store_a = kw.pop("store_a", None) or store_of([certs.client], cas=[certs.root])
    return pair_of(sa, sb, pki, store_a, store_of([certs.gw], [certs.inter], [certs.root]))


def _eap_tls_pair(pki: TestPki, certs: SimpleNamespace, gateway: str = "eap-tls",
                  eap_identity: str = "alice@example.com", local_certs: tuple[str, ...] = ()) -> Pair:
    """An EAP-TLS client with a certificate for alice@example.com (SAN rfc822Name), logging in as ``eap_identity``."""
    client = pki.issue("alice", certs.root, "p256", sans=["email:alice@example.com"], ekus=[CLIENT_AUTH])
    return _eap_pair(pki, certs, AuthSettings("eap-tls", certs=local_certs, eap_id=eap_id(eap_identity)), gateway,
                     store_a=store_of([client], cas=[certs.root]))


def test_eap_mschapv2_like_windows(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2")
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    login = _login(pair)
    assert (login.method, login.result, login.eap_identity, login.peer) == (
        "eap-mschapv2", LoginResult.SUCCESS, "alice", "192.0.2.1")
    gw = pair.b.list_sas()[0]
    assert gw.login is not None and gw.login.eap_identity == b"alice" and gw.login.method == "eap-mschapv2"
    requests, responses = _ike_auth(pair, "a->b"), _ike_auth(pair, "b->a")
    # RFC 4555 4.2.1: MOBIKE offered in the first request, accepted in the last response (with AUTH)
    assert gw.mobike.enabled and pair.a.list_sas()[0].mobike.enabled
    offered = [i for i, m in enumerate(requests) if any(isinstance(p, NotifyPayload) and p.notify_type ==
                                                         NotifyType.MOBIKE_SUPPORTED for p in m)]
    accepted = [i for i, m in enumerate(responses) if any(isinstance(p, NotifyPayload) and p.notify_type ==
                                                          NotifyType.MOBIKE_SUPPORTED for p in m)]
    assert offered == [0] and accepted == [len(responses) - 1]
    # RFC 7296 2.16: no AUTH first; EAP-Identity, challenge, success response, EAP-Success; then AUTH from the MSK
    assert not [p for p in requests[0] if isinstance(p, AuthPayload)]
    assert [type(p) for p in requests[0]].count(SaPayload) == 1
    assert [p.method for p in responses[0] if isinstance(p, AuthPayload)] == [AuthMethod.DIGITAL_SIGNATURE]
    assert all(any(isinstance(p, EapPayload) for p in m) for m in responses[:-1])
    msk_auth = [AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE]  # RFC 7296 2.16: the MSK as the shared key
    assert [p.method for p in requests[-1] if isinstance(p, AuthPayload)] == msk_auth
    assert [p.method for p in responses[-1] if isinstance(p, AuthPayload)] == msk_auth
    assert any(isinstance(p, SaPayload) for p in responses[-1])
    assert not any(isinstance(p, SaPayload) for m in responses[:-1] for p in m)


def test_eap_mschapv2_with_an_nt_hash(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2")
    sb = dataclasses.replace(pair.b.connections[0], eap_secret=secrets({"alice": NtHash(nt_password_hash(
        PASSWORDS["alice"]))}))
    pair.b.update_connections([sb])
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)


def test_eap_mschapv2_wrong_password(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2", client_secrets={"alice": "guess"})
    start = pair.now
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(60)
    login = _failed(pair, LoginResult.WRONG_PASSWORD, "wrong password for user alice")
    assert "guess" not in login.reason and login.eap_identity == "alice"
    assert pair.now - start >= 2.0  # the E=691 answer waited strongSwan's 2 s
    assert "EAP login of 192.0.2.1 failed: wrong password for user alice" in _closed(pair.events_b).reason


def test_eap_mschapv2_unknown_user(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_pair(pki, certs, AuthSettings("eap-mschapv2", eap_id=eap_id("mallory")), "eap-mschapv2",
                     client_secrets={"mallory": "x"})
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(60)
    _failed(pair, LoginResult.UNKNOWN_USER, "no EAP secret for user mallory")


def test_eap_tls(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_tls_pair(pki, certs)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    assert _login(pair).method == "eap-tls"


def test_eap_tls_client_certificate_must_hold_the_eap_identity(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_tls_pair(pki, certs, eap_identity="bob@example.com", local_certs=("alice.pem",))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _failed(pair, LoginResult.CERTIFICATE, "NAME_MISMATCH", "bob@example.com")


def test_eap_only_with_a_mutual_method(pki: TestPki, certs: SimpleNamespace) -> None:
    """RFC 5998, configured as strongSwan: eap-tls on both sides of both ends; the gateway sends no AUTH."""
    pair = _eap_tls_pair(pki, certs)
    pair.a.update_connections([dataclasses.replace(pair.a.connections[0], remote_auth=AuthSettings("eap-tls"))])
    pair.b.update_connections([dataclasses.replace(pair.b.connections[0], local_auth=AuthSettings("eap-tls"))])
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    requests, responses = _ike_auth(pair, "a->b"), _ike_auth(pair, "b->a")
    notes = [p.notify_type for p in requests[0] if hasattr(p, "notify_type")]
    assert NotifyType.EAP_ONLY_AUTHENTICATION in notes
    assert not [p for p in responses[0] if isinstance(p, AuthPayload | CertPayload)]


def test_eap_only_needs_the_gateway_configured_for_it(pki: TestPki, certs: SimpleNamespace) -> None:
    """A client that announces EAP_ONLY (strongSwan, Apple always do) still gets our certificate AUTH:
    it may expect one (remote.auth pubkey), as a strongSwan client does by default."""
    pair = _eap_tls_pair(pki, certs)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    responses = _ike_auth(pair, "b->a")
    assert [p for p in responses[0] if isinstance(p, AuthPayload)]


def test_eap_only_is_not_honoured_with_mschapv2(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2")
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    responses = _ike_auth(pair, "b->a")
    assert [p for p in responses[0] if isinstance(p, AuthPayload)], "the gateway must authenticate itself"


def test_eap_dynamic_moves_to_tls_on_a_nak(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_tls_pair(pki, certs, gateway="eap-dynamic")
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    assert _login(pair).method == "eap-tls"


def test_eap_client_needs_a_password(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2", client_secrets={})
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert not any(isinstance(e, IkeSaEstablished) for e in pair.events_a)


def test_the_gateway_picks_the_connection_by_auth_class(pki: TestPki, certs: SimpleNamespace) -> None:
    """Two connections accept %any: the EAP client gets the EAP one, the PSK client the PSK one."""
    psk_conn = dataclasses.replace(make_settings_b(remote_id="%any"), name="psk-users")
    eap_conn = dataclasses.replace(with_auth(make_settings_b(remote_id="%any"), "pubkey",
                                             AuthSettings("eap-mschapv2", eap_id=eap_id("%any")),
                                             eap_secret=secrets(PASSWORDS)), name="eap-users")
    for client, expect in ((with_auth(dataclasses.replace(make_settings(), local_id=None),
                                      AuthSettings("eap-mschapv2", eap_id=eap_id("bob")), "pubkey",
                                      eap_secret=secrets(PASSWORDS)), "eap-users"),
                           (make_settings(), "psk-users")):
        pair = pair_of(client, [psk_conn, eap_conn], pki, store_of(cas=[certs.root]),
                       store_of([certs.gw], [certs.inter], [certs.root]))
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet()
        _up(pair)
        sa = pair.b.list_sas()[0]
        assert sa.settings.name == expect
        # IKE_SA_INIT may have picked the other connection: no index keeps the SA under it
        # (a stale entry made an unrelated SA of that connection look like a duplicate)
        other = "eap-users" if expect == "psk-users" else "psk-users"
        table, ctx = pair.b.table, pair.b.ctx
        assert [s.ike_sa_id for s in table.of_connection(expect)] == [sa.ike_sa_id]
        assert table.of_connection(other) == []
        assert [k[0] for k in ctx.contacts] == [expect]
        pair.b.delete_ike(sa.ike_sa_id, pair.now)
        pair.run_until_quiet()
        assert pair.b.list_sas() == [] and ctx.contacts == {} and table.of_connection(expect) == []


def test_a_client_that_goes_away_during_eap_is_an_abandoned_login(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2")
    pair.deliver = lambda i, data, tag: not (tag == "a->b" and i > 3)  # the client falls silent mid-EAP
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(120)
    assert _login(pair).result == LoginResult.ABANDONED


def test_eap_identity_decides_initial_contact(pki: TestPki, certs: SimpleNamespace) -> None:
    """Two Windows clients with the same private address: INITIAL_CONTACT of one must not drop the other."""
    pair = _eap_pair(pki, certs, AuthSettings("eap-mschapv2", eap_id=eap_id("alice")), "eap-mschapv2")
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    bob_client = dataclasses.replace(pair.a.connections[0], name="bob", local_auth=AuthSettings(
        "eap-mschapv2", eap_id=eap_id("bob")))
    pair.a.update_connections([pair.a.connections[0], bob_client])
    pair.a.initiate("bob", pair.now)
    pair.run_until_quiet()
    gateway_sas = pair.b.list_sas()
    assert sorted(sa.login.eap_identity for sa in gateway_sas if sa.login) == [b"alice", b"bob"]


# ---------------------------------------------------------------- EAP-RADIUS


def _radius_pair(pki: TestPki, certs: SimpleNamespace) -> Pair:
    return _eap_pair(pki, certs, "eap-mschapv2", "eap-radius")


def test_eap_radius(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _radius_pair(pki, certs)
    radius = FakeRadius(dict(PASSWORDS))
    pair.a.initiate("conn", pair.now)
    requests = pump_with_radius(pair, radius)
    _up(pair)
    assert len(requests) >= 3 and radius.seen[0].user_name == b"alice"
    assert radius.seen[0].calling_station_id == "192.0.2.1[4500]"  # IKE_AUTH on 4500: MOBIKE (RFC 4555 3.3)
    login = _login(pair)
    assert (login.method, login.result, login.eap_identity) == ("eap-radius", LoginResult.SUCCESS, "alice")
    extra = pair.b.list_sas()[0].login.extra  # type: ignore[union-attr]
    assert extra.framed_ip == "10.3.0.7" and extra.classes == (b"class-1",)


def test_eap_radius_reject(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _radius_pair(pki, certs)
    pair.a.initiate("conn", pair.now)
    pump_with_radius(pair, FakeRadius(dict(PASSWORDS), reject_all=True))
    _failed(pair, LoginResult.REJECTED, "rejected user alice", "account locked")


def test_eap_radius_timeout(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _radius_pair(pki, certs)
    pair.a.initiate("conn", pair.now)
    pump_with_radius(pair, FakeRadius(dict(PASSWORDS), answer_after=100))
    _failed(pair, LoginResult.SERVER_UNREACHABLE, "no RADIUS server answered")


def test_retransmissions_while_radius_thinks_are_dropped(pki: TestPki, certs: SimpleNamespace) -> None:
    """The answer comes after the client's first retransmission: that one gets no answer of its own,
    the held response goes out when RADIUS answers, and the login still succeeds."""
    pair = _radius_pair(pki, certs)
    pair.a.initiate("conn", pair.now)
    pump_with_radius(pair, FakeRadius(dict(PASSWORDS)), delay=1.5)  # the pair's retransmit timeout is 1 s
    _up(pair)
    assert pair.b.total_counters().get("requests_while_waiting", 0) >= 1


def test_a_stale_radius_answer_is_dropped(pki: TestPki, certs: SimpleNamespace) -> None:
    pair = _radius_pair(pki, certs)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(0.5)
    (req,) = [e for e in pair.events_b if isinstance(e, AuthRequest)]
    assert not pair.b.auth_answer(req.ike_sa_id, req.token + 1, object(), pair.now)
    assert not pair.b.auth_answer(999, req.token, object(), pair.now)


def test_the_login_survives_an_ike_rekey(pki: TestPki, certs: SimpleNamespace) -> None:
    """After RFC 7296 1.3.2 the new IKE SA is the same login: EAP identity, method, our identity."""
    pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2")
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    (old,) = pair.b.list_sas()
    pair.a.rekey_ike(pair.a.list_sas()[0].ike_sa_id, pair.now)
    pair.run_until_quiet()
    (new,) = pair.b.list_sas()
    assert new.ike_sa_id != old.ike_sa_id and new.rekeyed_from == old.ike_sa_id
    assert new.login == old.login and new.login is not None and new.login.eap_identity == b"alice"
    assert client_identity(new) == Identity.parse("alice") and new.local_identity == old.local_identity


def test_a_lease_follows_the_eap_identity_not_the_address(pki: TestPki, certs: SimpleNamespace) -> None:
    """Windows' IDi is its (changing) address; the lease is keyed by the EAP identity (issue 10)."""
    from ipsecd.ike.cp import client_identity
    from ipsecd.pools import MemoryLeaseStore, PoolManager, PoolSpec, parse_range

    pool = PoolManager([PoolSpec("rw4", *parse_range("10.3.0.0/29"), ())], MemoryLeaseStore())
    addresses = []
    for client_addr in ("192.0.2.1", "192.0.2.77"):
        pair = _eap_pair(pki, certs, "eap-mschapv2", "eap-mschapv2")
        ca, cb = pair.a.connections[0], pair.b.connections[0]
        kid_a = dataclasses.replace(ca.children[0], local_ts=(TsSpec(None),))
        kid_b = dataclasses.replace(cb.children[0], remote_ts=(TsSpec(None),))
        pair.a.update_connections([dataclasses.replace(ca, vips=("0.0.0.0",), children=(kid_a,),
                                                       local_addrs=(client_addr,))])
        pair.b.update_connections([dataclasses.replace(cb, pools=("rw4",), children=(kid_b,), remote_addrs=())])
        pair.b.ctx.attributes = pool
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet()
        gw = pair.b.list_sas()[0]
        assert client_identity(gw) == Identity.parse("alice")
        (lease,) = gw.vips.leases
        assert lease.identity == Identity.parse("alice")
        addresses.append(lease.address)
        pair.b.terminate("conn", pair.now)  # the lease goes offline, still alice's
        pair.run_until_quiet()
    assert addresses[0] == addresses[1]
