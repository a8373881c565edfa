"""IKE redirect (RFC 5685) on the gateway's side, in memory: the REDIRECT value, the IKE_SA_INIT
answer to a client that announced REDIRECT_SUPPORTED while its connection is drained, and
the INFORMATIONAL REDIRECT to an established one. Against strongSwan: tests/interop/test_ra_scenario.py.
"""

from __future__ import annotations

import pytest

from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.events import ChildSaEstablished, IkeSaClosed
from ipsecd.ike.message import decode_message, encode_message
from ipsecd.ike.payloads import NoncePayload, NotifyPayload
from ipsecd.ike.redirect import decode_gateway, encode_gateway
from tests.ike_pair import A_ADDR, B_ADDR, make_pair

A = (A_ADDR, 500)
B = (B_ADDR, 500)


@pytest.mark.parametrize(("gw", "head"), [("192.0.2.99", b"\x01\x04\xc0\x00\x02\x63"),
                                          ("2001:db8::9", b"\x02\x10\x20\x01\x0d\xb8"),
                                          ("gw2.example.com", b"\x03\x0fgw2.example.com")])
def test_gateway_identity_round_trip(gw: str, head: bytes) -> None:
    data = encode_gateway(gw)
    assert data.startswith(head)
    assert decode_gateway(data + b"nonce") == (gw, b"nonce")


@pytest.mark.parametrize("bad", ["", "gw example", "x" * 300, "gw\n.example", "bad_label.example", "ünï.example"])
def test_bad_gateways_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_gateway(bad)
    with pytest.raises(ValueError):
        decode_gateway(b"\x03\x10short")


def _init_request(*extra: NotifyPayload) -> tuple[bytes, bytes]:
    """An IKE_SA_INIT request of ipsecd's initiator with ``extra`` notifies: (datagram, Ni)."""
    pair = make_pair(deliver=lambda i, d, tag: False)
    pair.a.initiate("conn", pair.now)
    (data, _l, _r, _i), = pair.a.datagrams_to_send()
    msg = decode_message(data)
    msg.payloads.extend(extra)
    nonce = msg.get(NoncePayload)
    assert nonce is not None
    return encode_message(msg), nonce.data


def test_a_drained_connection_redirects_clients_that_support_it() -> None:
    pair = make_pair()
    assert pair.b.redirect(None, "192.0.2.99", pair.now) == 0
    req, ni = _init_request(NotifyPayload(NotifyType.REDIRECT_SUPPORTED))
    pair.b.receive_datagram(req, B, A, pair.now)
    (resp, _l, _r, _i), = pair.b.datagrams_to_send()
    msg = decode_message(resp)
    assert msg.exchange == ExchangeType.IKE_SA_INIT and msg.spi_r == bytes(8)
    assert [type(p) for p in msg.payloads] == [NotifyPayload]  # RFC 5685 4.2: the REDIRECT alone
    n = msg.notify(NotifyType.REDIRECT)
    assert n is not None and decode_gateway(n.data) == ("192.0.2.99", ni)  # with the client's nonce
    assert pair.b.list_sas() == []
    assert any(isinstance(e, IkeSaClosed) and e.cause == "redirected" for e in iter(pair.b.next_event, None))

    # a client that did not announce support, or that was sent here, is served as usual
    for extra in ((), (NotifyPayload(NotifyType.REDIRECT_SUPPORTED), NotifyPayload(
            NotifyType.REDIRECTED_FROM, data=encode_gateway("192.0.2.1")))):
        req, _ = _init_request(*extra)
        pair.b.receive_datagram(req, B, A, pair.now)
        (resp, _l, _r, _i), = pair.b.datagrams_to_send()
        assert decode_message(resp).notify(NotifyType.REDIRECT) is None and decode_message(resp).spi_r != bytes(8)

    pair.b.redirect(None, None, pair.now)  # --stop
    req, _ = _init_request(NotifyPayload(NotifyType.REDIRECT_SUPPORTED))
    pair.b.receive_datagram(req, B, A, pair.now)
    (resp, _l, _r, _i), = pair.b.datagrams_to_send()
    assert decode_message(resp).notify(NotifyType.REDIRECT) is None


def test_redirect_of_other_connections_leaves_this_one_alone() -> None:
    pair = make_pair()
    pair.b.redirect("other", "192.0.2.99", pair.now)
    req, _ = _init_request(NotifyPayload(NotifyType.REDIRECT_SUPPORTED))
    pair.b.receive_datagram(req, B, A, pair.now)
    (resp, _l, _r, _i), = pair.b.datagrams_to_send()
    assert decode_message(resp).notify(NotifyType.REDIRECT) is None


def test_established_clients_are_told_in_an_informational() -> None:
    pair = make_pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert any(isinstance(e, ChildSaEstablished) for e in pair.events_b)
    (sa_b,) = pair.b.list_sas()
    assert pair.b.redirect("conn", "gw2.example.com", pair.now) == 0  # it did not announce support
    sa_b.auth_ext.redirect_supported = True  # as strongSwan, Apple and Android clients do
    before = len(pair.sent)
    assert pair.b.redirect("conn", "gw2.example.com", pair.now) == 1
    pair.run_until_quiet()
    tag, data = pair.sent[before]
    (sa_a,) = pair.a.list_sas()
    msg = decode_message(data, sa_a.sk_in)
    assert tag == "b->a" and msg.exchange == ExchangeType.INFORMATIONAL and not msg.is_response
    n = msg.notify(NotifyType.REDIRECT)
    assert n is not None and decode_gateway(n.data) == ("gw2.example.com", b"")  # RFC 5685 6: no nonce here
    assert sa_a.state.name == "ESTABLISHED"  # ipsecd as a client does not follow redirects (yet)
    with pytest.raises(ValueError):
        pair.b.redirect(None, "not a gateway", pair.now)


def test_a_full_gateway_redirects_only_new_clients_beyond_its_limit() -> None:
    pair = make_pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    (sa_b,) = pair.b.list_sas()
    sa_b.auth_ext.redirect_supported = True
    assert pair.b.redirect(None, "192.0.2.99", pair.now, full_at=2) == 0  # established clients stay
    answers = []
    for _ in range(3):
        req, _ = _init_request(NotifyPayload(NotifyType.REDIRECT_SUPPORTED))
        pair.b.receive_datagram(req, B, A, pair.now)
        (resp, _l, _r, _i), = pair.b.datagrams_to_send()
        answers.append(decode_message(resp).notify(NotifyType.REDIRECT) is not None)
    # 1 SA: the first newcomer is served (it makes 2, half-open); from then on the gateway is full
    assert answers == [False, True, True]
    assert len(pair.b.list_sas()) == 2
