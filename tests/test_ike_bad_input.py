"""Bad input never crashes the engine: every class is dropped or answered, counted, and others keep working."""

from __future__ import annotations

import random

from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.events import ChildSaEstablished
from ipsecd.ike.message import decode_message
from tests.ike_pair import A_ADDR, B_ADDR, make_pair

A = (A_ADDR, 500)
B = (B_ADDR, 500)


def _first_init_request() -> bytes:
    pair = make_pair(deliver=lambda i, d, tag: False)
    pair.a.initiate("conn", pair.now)
    (data, _local, _remote, _id), = pair.a.datagrams_to_send()
    return data


def test_truncated_and_garbage_init_requests_leave_no_state() -> None:
    req = _first_init_request()
    pair = make_pair()
    rnd = random.Random(7)
    for cut in range(len(req)):
        pair.b.receive_datagram(req[:cut], B, A, pair.now)
    for _ in range(300):
        pair.b.receive_datagram(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 400))), B, A, pair.now)
    flipped = bytearray(req)
    flipped[17] = 0x30  # major version 3
    pair.b.receive_datagram(bytes(flipped), B, A, pair.now)
    oversized = req + b"\x00" * 100  # header length no longer matches the datagram
    pair.b.receive_datagram(oversized, B, A, pair.now)
    assert pair.b.sas == {}
    assert pair.b.counters.get("malformed", 0) >= len(req)
    assert "internal_error" not in pair.b.counters
    # and a real negotiation still works afterwards
    pair.b.datagrams_to_send()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert any(isinstance(e, ChildSaEstablished) for e in pair.events_b)


def test_unknown_critical_payload_is_refused_with_notify() -> None:
    req = bytearray(_first_init_request())
    # append an unknown critical payload (type 200) at the end of the chain
    extra = bytes((0, 0x80, 0, 8)) + b"abcd"
    # walk the chain to find the last payload's next-payload field
    pos, nxt = 28, req[16]
    last_hdr = 16
    while nxt != 0:
        last_hdr = pos
        nxt = req[pos]
        pos += int.from_bytes(req[pos + 2:pos + 4], "big")
    req[last_hdr] = 200
    req += extra
    req[24:28] = len(req).to_bytes(4, "big")
    pair = make_pair()
    pair.b.receive_datagram(bytes(req), B, A, pair.now)
    (resp, _l, _r, _i), = pair.b.datagrams_to_send()
    msg = decode_message(resp)
    n = msg.notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD)
    assert n is not None and n.data == bytes([200])
    assert pair.b.sas == {}


def test_unknown_spi_and_bad_integrity_are_dropped_and_counted() -> None:
    pair = make_pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    auth_req = bytearray(pair.sent[2][1])
    assert decode_message(pair.sent[0][1]).exchange == ExchangeType.IKE_SA_INIT
    # wrong SPI
    bad_spi = bytearray(auth_req)
    bad_spi[8:16] = b"\x01" * 8
    pair.b.receive_datagram(bytes(bad_spi), B, A, pair.now)
    assert pair.b.counters.get("unknown_spi") == 1
    # a flipped bit in the encrypted part of a new request: integrity fails, silently dropped
    sa_b = pair.b.list_sas()[0]
    tampered = bytearray(auth_req)
    tampered[20:24] = (5).to_bytes(4, "big")  # message id covered by the ICV
    pair.b.receive_datagram(bytes(tampered), B, A, pair.now)
    assert pair.b.datagrams_to_send() == []
    assert sa_b.counters.get("integrity", 0) + sa_b.counters.get("malformed", 0) >= 1
    # the tunnel is still up and answers liveness checks
    sa_a = pair.a.list_sas()[0]
    pair.a.check_liveness(sa_a.ike_sa_id, pair.now)
    pair.run_until_quiet()
    assert pair.sent[-1][0] == "b->a" and decode_message.__name__
