"""EAP-TLS in-process, both roles over pyOpenSSL: TLS 1.2 and 1.3, MSK equality, fragments, rejections."""

from __future__ import annotations

import functools

import pytest
from cryptography import x509
from OpenSSL import SSL

from ipsecd.eap import tls
from ipsecd.eap.method import Failure, FailureReason, Send, Step, Success
from ipsecd.eap.packet import EapPacket
from ipsecd.eap.session import EapAuthenticator, EapPeer, MethodOffer
from ipsecd.iana import EapCode, EapType
from tests.eap_pki import Issued, issue, make_ca


@functools.cache
def pki() -> tuple[Issued, Issued, Issued, Issued]:
    ca = make_ca()
    other_ca = make_ca("another CA")
    return ca, issue(ca, "gw.example", server=True), issue(ca, "alice@example", server=False), other_ca


def creds(leaf: Issued, anchors: list[x509.Certificate], **kw: object) -> tls.TlsCredentials:
    return tls.TlsCredentials(leaf.cert, leaf.key, trust_anchors=anchors, **kw)  # type: ignore[arg-type]


def converse(auth: EapAuthenticator, peer: EapPeer) -> tuple[Step, Step, list[EapPacket]]:
    wire: list[EapPacket] = []
    step = auth.start()
    for _ in range(200):
        if not isinstance(step, Send):
            break
        wire.append(step.packet)
        answer = peer.process(step.packet.encode())
        if not isinstance(answer, Send):
            return step, answer, wire
        wire.append(answer.packet)
        step = auth.process(answer.packet.encode())
    assert isinstance(step, Success | Failure) and step.final is not None
    return step, peer.process(step.final.encode()), wire


def pair(server_creds: tls.TlsCredentials, client_creds: tls.TlsCredentials,
         fragment_size: int = tls.DEFAULT_FRAGMENT_SIZE) -> tuple[EapAuthenticator, EapPeer]:
    auth = EapAuthenticator([MethodOffer(EapType.TLS, lambda ident: tls.EapTlsServer(
        ident, server_creds, fragment_size=fragment_size))], max_rounds=200)
    peer = EapPeer(b"alice@example", [(EapType.TLS, lambda ident: tls.EapTlsPeer(
        ident, client_creds, fragment_size=fragment_size))])
    return auth, peer


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_round_trip_same_msk_and_emsk(version: int) -> None:
    ca, server, client, _ = pki()
    auth, peer = pair(creds(server, [ca.cert], max_version=version), creds(client, [ca.cert], max_version=version))
    a, p, wire = converse(auth, peer)
    assert isinstance(a, Success) and isinstance(p, Success), (a, p)
    assert a.msk == p.msk and len(a.msk) == 64 and a.emsk == p.emsk and len(a.emsk) == 64 and a.msk != a.emsk
    assert a.method == EapType.TLS and a.identity == b"alice@example"
    assert a.final is not None and a.final.code == EapCode.SUCCESS
    assert wire[2].data == bytes([tls.FLAG_S])  # after the Identity exchange
    assert wire[-1].data == b"\x00"  # the peer's final ACK


def test_small_fragments_with_l_and_m_flags_and_acks() -> None:
    ca, server, client, _ = pki()
    auth, peer = pair(creds(server, [ca.cert]), creds(client, [ca.cert]), fragment_size=100)
    a, p, wire = converse(auth, peer)
    assert isinstance(a, Success) and isinstance(p, Success) and a.msk == p.msk
    tls_packets = [w for w in wire if w.type == EapType.TLS]
    first_fragments = [w for w in tls_packets if w.data and w.data[0] & tls.FLAG_L]
    assert first_fragments and all(w.data[0] & tls.FLAG_M for w in first_fragments)
    assert all(len(w.data) <= 100 + 5 for w in tls_packets)
    acks = [w for w in tls_packets if w.data == b"\x00"]
    assert len(acks) >= 4  # both directions acknowledged fragments
    assert len(tls_packets) > 20


def test_client_cert_from_unknown_ca_is_rejected() -> None:
    ca, server, _, other = pki()
    stranger = issue(other, "mallory@example", server=False)
    auth, peer = pair(creds(server, [ca.cert]), creds(stranger, [ca.cert]))
    a, _p, _ = converse(auth, peer)
    assert isinstance(a, Failure) and a.reason == FailureReason.CERTIFICATE_REJECTED
    assert "mallory@example" in a.message and "issuer" in a.message
    assert a.final is not None and a.final.code == EapCode.FAILURE


def test_client_rejects_server_from_unknown_ca() -> None:
    ca, _, client, other = pki()
    rogue = issue(other, "gw.example", server=True)
    auth, peer = pair(creds(rogue, [ca.cert]), creds(client, [ca.cert]))
    _a, p, _ = converse(auth, peer)
    assert isinstance(p, Failure) and p.reason == FailureReason.CERTIFICATE_REJECTED
    assert p.message.startswith("server certificate rejected")


def test_verify_hook_sees_the_chain_and_can_refuse() -> None:
    ca, server, client, _ = pki()
    seen: list[list[x509.Certificate]] = []

    def policy(chain: list[x509.Certificate]) -> str | None:
        seen.append(chain)
        return "not in the allowed group"

    auth, peer = pair(creds(server, [ca.cert], verify=policy), creds(client, [ca.cert]))
    a, _p, _ = converse(auth, peer)
    assert isinstance(a, Failure) and a.reason == FailureReason.CERTIFICATE_REJECTED
    assert "not in the allowed group" in a.message
    assert seen and seen[0][0] == client.cert and seen[0][-1] == ca.cert


def test_server_without_client_certificate_fails() -> None:
    ca, server, _, _ = pki()
    auth, peer = pair(creds(server, [ca.cert]), tls.TlsCredentials(trust_anchors=[ca.cert]))
    a, _p, _ = converse(auth, peer)
    assert isinstance(a, Failure) and a.reason in (FailureReason.TLS_ERROR, FailureReason.CERTIFICATE_REJECTED)


# ------------------------------------------------------------ fragment bounds
def test_reassembler_bounds() -> None:
    r = tls.Reassembler(limit=1000)
    with pytest.raises(tls.TlsFragmentError, match="exceeds the 1000 limit"):
        r.feed(tls.FLAG_L | tls.FLAG_M, 5000, b"x" * 10)
    r = tls.Reassembler(limit=1000)
    assert r.feed(tls.FLAG_L | tls.FLAG_M, 30, b"x" * 20) is None
    with pytest.raises(tls.TlsFragmentError, match="exceed 30"):
        r.feed(0, None, b"x" * 20)
    r = tls.Reassembler(limit=1000)
    assert r.feed(tls.FLAG_L | tls.FLAG_M, 30, b"x" * 20) is None
    with pytest.raises(tls.TlsFragmentError, match="20 octets, 30 announced"):
        r.feed(0, None, b"")
    r = tls.Reassembler(limit=50)  # no L at all: still capped by the limit
    r.feed(tls.FLAG_M, None, b"x" * 40)
    with pytest.raises(tls.TlsFragmentError):
        r.feed(tls.FLAG_M, None, b"x" * 40)
    with pytest.raises(tls.TlsFragmentError, match="4-octet"):
        tls.parse_eap_tls(bytes([tls.FLAG_L, 0, 1]))
    with pytest.raises(tls.TlsFragmentError, match="Flags"):
        tls.parse_eap_tls(b"")


def test_fragmenter_layout() -> None:
    f = tls.Fragmenter(b"a" * 25, 10)
    parts = [f.next(), f.next(), f.next()]
    assert parts[0][0] == tls.FLAG_L | tls.FLAG_M and parts[0][1:5] == (25).to_bytes(4, "big")
    assert parts[1][0] == tls.FLAG_M and parts[2][0] == 0 and len(parts[2]) == 6
    assert tls.Fragmenter(b"abc", 10).next() == b"\x00abc"  # unfragmented: no L needed


def _server(limit: int = tls.DEFAULT_MAX_MESSAGE) -> tuple[tls.EapTlsServer, int]:
    ca, server, _, _ = pki()
    method = tls.EapTlsServer(b"alice", creds(server, [ca.cert]), max_message=limit)
    start = method.start(1)
    assert isinstance(start, Send)
    return method, start.packet.identifier


@pytest.mark.parametrize("data", [
    b"",  # no flags
    bytes([tls.FLAG_L]),  # L without length
    b"\x00",  # an ACK nobody asked for
    bytes([tls.FLAG_L | tls.FLAG_M]) + (10**6).to_bytes(4, "big") + b"x",  # too big
    b"\x00" + b"\x16\x03\x01\x00\x05hello",  # not a ClientHello: TLS error
])
def test_server_malformed_input_fails_cleanly(data: bytes) -> None:
    method, ident = _server()
    out = method.process(EapPacket.response(ident, EapType.TLS, data))
    assert isinstance(out, Failure)
    assert out.reason in (FailureReason.PROTOCOL_ERROR, FailureReason.TLS_ERROR)


def test_peer_malformed_input_fails_cleanly() -> None:
    ca, _, client, _ = pki()
    peer = tls.EapTlsPeer(b"alice", creds(client, [ca.cert]))
    out = peer.process(EapPacket.request(1, EapType.TLS, b"\x00abc"))
    assert isinstance(out, Failure) and out.reason == FailureReason.PROTOCOL_ERROR  # before Start
    peer = tls.EapTlsPeer(b"alice", creds(client, [ca.cert]), fragment_size=8192)
    assert isinstance(peer.process(EapPacket.request(1, EapType.TLS, bytes([tls.FLAG_S]))), Send)
    out = peer.process(EapPacket.request(2, EapType.TLS, b"\x00" + b"\x15\x03\x03\x00\x02\x02\x28"))
    assert isinstance(out, Failure) and out.reason == FailureReason.TLS_ERROR  # a fatal alert
