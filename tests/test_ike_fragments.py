"""IKE fragmentation (RFC 7383): the SKF codec, negotiation, and reassembly under loss,
reordering, duplicates, forged fragments and oversize messages, on the fake-clock pair."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from ipsecd.iana import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished
from ipsecd.ike.fragments import MAX_FRAGMENTS, MAX_MESSAGE, REASSEMBLY_TIMEOUT, max_datagram
from ipsecd.ike.ike_sa import IkeSa
from ipsecd.ike.keymat import derive_ike_keys
from ipsecd.ike.message import (
    Message,
    decode_datagrams,
    decode_fragment,
    decode_message,
    encode_fragments,
    encode_message,
    is_fragment,
)
from ipsecd.ike.payloads import NotifyPayload, VendorIdPayload
from ipsecd.ike.proposal import parse_proposal
from ipsecd.ike.sk import make_sk_ciphers
from tests.ike_pair import Pair, make_pair, make_settings, make_settings_b

SMALL = 160  # a fragment_size that cuts a PSK IKE_AUTH into a few fragments
AUTH = ExchangeType.IKE_AUTH


def _ciphers(text: str):  # type: ignore[no-untyped-def]
    proposal = parse_proposal(text, ProtocolId.IKE)
    keys = derive_ike_keys(proposal, os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(8), os.urandom(8))
    out_i, _ = make_sk_ciphers(proposal, keys, True)
    _, in_r = make_sk_ciphers(proposal, keys, False)
    return out_i, in_r


def _message(n_vendor_ids: int, size: int = 100, message_id: int = 1) -> Message:
    payloads = [VendorIdPayload(bytes([i % 256]) * size) for i in range(n_vendor_ids)]
    return Message(os.urandom(8), os.urandom(8), ExchangeType.INFORMATIONAL, message_id, is_initiator=True,
                   is_response=False, payloads=[*payloads, NotifyPayload(NotifyType.INITIAL_CONTACT)], encrypted=True)


# ---------------------------------------------------------------- codec


@pytest.mark.parametrize("suite", ["aes256gcm16-prfsha256-ecp256", "aes128-sha256-modp2048",
                                   "chacha20poly1305-prfsha256-x25519", "3des-sha1-modp2048"])
@pytest.mark.parametrize("limit", [100, 160, 577, 1232])
def test_fragments_round_trip_within_the_limit(suite: str, limit: int) -> None:
    sk_out, sk_in = _ciphers(suite)
    msg = _message(20)
    frags = encode_fragments(msg, sk_out, limit)
    assert len(frags) > 1 and all(len(f) <= limit and is_fragment(f) for f in frags)
    # RFC 7383 2.5: only the first fragment names the first inner payload
    parsed = [decode_fragment(f, sk_in) for f in frags]
    assert [(p.number, p.total) for p in parsed] == [(i, len(frags)) for i in range(1, len(frags) + 1)]
    assert parsed[0].first_type != 0 and all(p.first_type == 0 for p in parsed[1:])
    back = decode_datagrams(list(reversed(frags)), sk_in)
    assert back.payloads == msg.payloads and back.message_id == msg.message_id and back.encrypted
    # a limit close to the real one is used (no fragment wastes more than a cipher block)
    assert len(frags) <= len(encode_message(msg, sk_out)) // (limit - 28 - 8 - 60) + 1


def test_fragment_numbers_and_icv_are_checked() -> None:
    sk_out, sk_in = _ciphers("aes256gcm16-prfsha256-ecp256")
    frag = encode_fragments(_message(5), sk_out, 200)[1]
    bad = bytearray(frag)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        decode_fragment(bytes(bad), sk_in)
    # the fragment numbers are authenticated too (RFC 7383 2.5.3)
    renumbered = bytearray(frag)
    renumbered[33] ^= 0x7F  # Fragment Number, low octet
    with pytest.raises((IntegrityError, RemoteProtocolError)):
        decode_fragment(bytes(renumbered), sk_in)
    for number, total in ((0, 3), (4, 3), (1, 0)):
        forged = bytearray(frag)
        forged[32:36] = number.to_bytes(2, "big") + total.to_bytes(2, "big")
        with pytest.raises(RemoteProtocolError):
            decode_fragment(bytes(forged), sk_in)
    with pytest.raises(RemoteProtocolError, match="at most 2"):
        decode_fragment(frag, sk_in, max_total=2)
    # decode_message still refuses SKF: the engine reassembles before decoding
    with pytest.raises(RemoteProtocolError):
        decode_message(frag, sk_in)


def test_unencrypted_or_tiny_fragments_are_refused() -> None:
    sk_out, _ = _ciphers("aes256gcm16-prfsha256-ecp256")
    with pytest.raises(LocalProtocolError):
        encode_fragments(dataclasses.replace(_message(1), encrypted=False), sk_out, 500)
    with pytest.raises(LocalProtocolError):
        encode_fragments(_message(1), sk_out, 60)


def test_max_datagram_counts_ip_udp_and_the_non_esp_marker() -> None:
    assert max_datagram(1280, ("192.0.2.1", 500), ("192.0.2.2", 500)) == 1280 - 20 - 8
    assert max_datagram(1280, ("192.0.2.1", 4500), ("192.0.2.2", 4500)) == 1280 - 20 - 8 - 4
    assert max_datagram(1280, ("2001:db8::1", 4500), ("2001:db8::2", 4500)) == 1280 - 40 - 8 - 4


# ---------------------------------------------------------------- the pair


def _pair(a: dict[str, object] | None = None, b: dict[str, object] | None = None, **kw: object) -> Pair:
    sa = dataclasses.replace(make_settings(), **{"fragment_size": SMALL, **(a or {})})
    sb = dataclasses.replace(make_settings_b(), **{"fragment_size": SMALL, **(b or {})})
    return make_pair(sa, sb, **kw)


def _up(pair: Pair) -> None:
    for events in (pair.events_a, pair.events_b):
        assert any(isinstance(e, IkeSaEstablished) for e in events), events
        assert len([e for e in events if isinstance(e, ChildSaEstablished)]) == 1, events


def _sa(pair: Pair, side: str) -> IkeSa:
    (sa,) = (pair.a if side == "a" else pair.b).list_sas()
    return sa


def _sent(pair: Pair, tag: str, exchange: ExchangeType = AUTH) -> list[bytes]:
    return [d for t, d in pair.sent if t == tag and d[18] == exchange]


def test_negotiated_both_ways_and_ike_auth_is_fragmented() -> None:
    pair = _pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)
    a, b = _sa(pair, "a"), _sa(pair, "b")
    assert a.frag.negotiated and b.frag.negotiated
    init_i, init_r = (decode_message(d) for d in _sent(pair, "a->b", ExchangeType.IKE_SA_INIT)
                      + _sent(pair, "b->a", ExchangeType.IKE_SA_INIT))
    assert init_i.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    assert init_r.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    limit = SMALL - 28
    for tag, (sender, receiver) in (("a->b", (a, b)), ("b->a", (b, a))):
        frags = _sent(pair, tag)
        assert len(frags) > 1 and all(is_fragment(d) and len(d) <= limit for d in frags), [len(d) for d in frags]
        assert sender.counters["fragments_sent"] == len(frags)
        assert receiver.counters["fragments_received"] == len(frags)
        assert receiver.counters["fragmented_messages"] == 1
    assert a.frag.pending_octets() == b.frag.pending_octets() == 0


@pytest.mark.parametrize("policy_a,policy_b,a_fragments,b_fragments", [
    ("yes", "no", False, False),
    ("no", "yes", False, False),
    ("accept", "yes", False, True),
    ("yes", "accept", True, False),
    ("force", "yes", True, True),
])
def test_swanctl_fragmentation_values(policy_a: str, policy_b: str, a_fragments: bool, b_fragments: bool) -> None:
    pair = _pair({"fragmentation": policy_a}, {"fragmentation": policy_b})
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    _up(pair)  # nothing on this path drops a large datagram: it comes up either way
    assert any(is_fragment(d) for d in _sent(pair, "a->b")) == a_fragments
    assert any(is_fragment(d) for d in _sent(pair, "b->a")) == b_fragments
    (init_r,) = (decode_message(d) for d in _sent(pair, "b->a", ExchangeType.IKE_SA_INIT))
    # the responder announces only when the initiator did and it accepts fragments itself
    assert (init_r.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None) == \
        (policy_a != "no" and policy_b != "no")


def test_without_fragmentation_a_path_that_drops_large_datagrams_fails() -> None:
    """The negative control: what a 1280 path that drops IP fragments does to an unfragmented IKE_AUTH."""
    big = lambda i, d, tag: d[18] != AUTH or len(d) <= SMALL - 28  # noqa: E731
    pair = _pair({"fragmentation": "no"}, deliver=big)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(120)
    assert not any(isinstance(e, IkeSaEstablished) for e in pair.events_a)
    pair = _pair(deliver=big)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(120)
    _up(pair)


@pytest.mark.parametrize("tag", ["a->b", "b->a"])
@pytest.mark.parametrize("which", [0, 1, -1])
def test_loss_of_one_fragment_is_repaired_by_retransmission(tag: str, which: int) -> None:
    dropped: list[int] = []

    def deliver(i: int, d: bytes, t: str) -> bool:
        if t == tag and d[18] == AUTH and not dropped:
            n = len([x for x, y in pair.sent[: i + 1] if x == tag and y[18] == AUTH])
            total = int.from_bytes(d[34:36], "big")
            if n == (which % total) + 1:
                dropped.append(i)
                return False
        return True

    pair = _pair(deliver=deliver)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(60)
    _up(pair)
    assert dropped
    a, b = _sa(pair, "a"), _sa(pair, "b")
    assert a.counters.get("retransmits") == 1
    # the retransmission resends every fragment of the request
    n_req = a.counters["fragments_sent"]  # fragments built; a retransmission resends them
    assert len(_sent(pair, "a->b")) == 2 * n_req and n_req >= 3
    assert b.counters["fragmented_messages"] == a.counters["fragmented_messages"] == 1
    if tag == "b->a":
        # only fragment 1 of the retransmitted request makes B answer again, with every fragment
        # of its cached response (RFC 7383 2.6.1); the first copies stored at A are kept
        assert b.counters.get("retransmitted_requests") == 1
        n_resp = b.counters["fragments_sent"]
        assert len(_sent(pair, "b->a")) == 2 * n_resp
        # of the resent fragments one completes the message; the others were already stored
        # (duplicates) or come after completion (no response is expected any more)
        assert a.counters.get("fragment_duplicates", 0) + a.counters.get("unexpected_response", 0) == n_resp - 1
    else:
        # B kept what arrived: the gap is filled by the retransmission; once the message is
        # complete the request counts as answered and its late fragments change nothing
        assert "retransmitted_requests" not in b.counters


def _intercepted_auth_request(pair: Pair, at_least: int = 3) -> list[bytes]:
    """A's IKE_AUTH request fragments, held back so a test can deliver them its own way."""
    held: list[bytes] = []

    def deliver(i: int, d: bytes, t: str) -> bool:
        if t == "a->b" and d[18] == AUTH and not pair.events_b:
            held.append(d)
            return False
        return True

    pair.deliver = deliver
    pair.a.initiate("conn", pair.now)
    pair._move()
    pair._move()
    assert len(held) >= at_least, held
    pair.deliver = lambda i, d, t: True
    return held


def _feed_b(pair: Pair, datagrams: list[bytes]) -> None:
    for d in datagrams:
        pair.b.receive_datagram(d, ("192.0.2.2", 500), ("192.0.2.1", 500), pair.now)


def test_reordered_and_duplicated_fragments_reassemble_once() -> None:
    pair = _pair()
    frags = _intercepted_auth_request(pair)
    _feed_b(pair, [frags[-1], frags[0], frags[-1], *reversed(frags[1:-1]), frags[0]])
    pair.run_until_quiet()
    _up(pair)
    b = _sa(pair, "b")
    assert b.counters["fragmented_messages"] == 1
    assert b.counters["fragment_duplicates"] == 1  # the second copy of the last one; the first's copy
    # came after completion: fragment 1 of an answered request sends the response again
    assert b.counters["retransmitted_requests"] == 1


def test_forged_fragment_is_never_stored() -> None:
    pair = _pair()
    frags = _intercepted_auth_request(pair)
    forged = bytearray(frags[1])
    forged[-5] ^= 0x40
    _feed_b(pair, [frags[0], bytes(forged)])
    b = _sa(pair, "b")
    assert b.counters["integrity"] == 1
    assert b.frag.pending_octets() > 0 and b.frag._partial[False].parts.keys() == {1}
    _feed_b(pair, frags[1:])
    pair.run_until_quiet()
    _up(pair)


def test_fragments_outside_the_expected_message_are_not_decrypted() -> None:
    pair = _pair()
    frags = _intercepted_auth_request(pair)
    b = _sa(pair, "b")
    wrong_id = bytearray(frags[0])
    wrong_id[20:24] = (7).to_bytes(4, "big")
    _feed_b(pair, [bytes(wrong_id)])
    assert b.counters["bad_message_id"] == 1 and "integrity" not in b.counters
    too_many = bytearray(frags[0])
    too_many[34:36] = (MAX_FRAGMENTS + 1).to_bytes(2, "big")
    _feed_b(pair, [bytes(too_many)])
    assert b.counters["malformed"] == 1 and "integrity" not in b.counters
    assert b.frag.pending_octets() == 0


def test_skf_is_dropped_when_fragmentation_was_not_negotiated() -> None:
    pair = _pair(b={"fragmentation": "no"})
    frags = _intercepted_auth_request(pair, 1)
    assert not any(is_fragment(d) for d in frags)  # A did not fragment: B never announced support
    a, b = _sa(pair, "a"), _sa(pair, "b")
    sneaky = encode_fragments(decode_message(frags[0], b.sk_in), a.sk_out, SMALL)  # type: ignore[arg-type]
    _feed_b(pair, sneaky)
    assert b.counters["malformed"] == len(sneaky)
    assert b.state.name == "CONNECTING"


def test_an_unfinished_message_times_out() -> None:
    pair = _pair()
    frags = _intercepted_auth_request(pair)
    b = _sa(pair, "b")
    _feed_b(pair, frags[:1])
    assert b.frag.pending_octets() > 0
    pair.now += REASSEMBLY_TIMEOUT + 1
    _feed_b(pair, frags[1:])  # the stale piece is gone: these alone are not the message
    assert b.counters.get("fragmented_messages") is None
    assert set(b.frag._partial[False].parts) == set(range(2, len(frags) + 1))
    _feed_b(pair, frags[:1])
    pair.run_until_quiet()
    _up(pair)


def test_more_fragments_restart_the_message_and_fewer_are_dropped() -> None:
    pair = _pair()
    _intercepted_auth_request(pair)
    a, b = _sa(pair, "a"), _sa(pair, "b")
    # the same request re-fragmented smaller (RFC 7383 2.6: the sender adapted to a smaller MTU)
    msg = decode_datagrams(_sent(pair, "a->b"), b.sk_in)  # type: ignore[arg-type]
    coarse = encode_fragments(msg, a.sk_out, SMALL - 28)  # type: ignore[arg-type]
    fine = encode_fragments(msg, a.sk_out, SMALL - 70)  # type: ignore[arg-type]
    assert len(fine) > len(coarse)
    _feed_b(pair, coarse[:1])
    _feed_b(pair, fine[:1])
    assert b.frag._partial[False].total == len(fine)
    _feed_b(pair, coarse[1:2])  # fewer than the message now being reassembled: dropped
    assert b.counters["fragment_drops"] == 1
    _feed_b(pair, fine[1:])
    pair.run_until_quiet()
    _up(pair)


def test_reassembled_size_is_bounded() -> None:
    pair = _pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    a, b = _sa(pair, "a"), _sa(pair, "b")
    # an authenticated peer sending an INFORMATIONAL larger than MAX_MESSAGE, in few large fragments
    msg = Message(a.spi_i, a.spi_r, ExchangeType.INFORMATIONAL, a.exchanges.next_id, is_initiator=True,
                  is_response=False, payloads=[VendorIdPayload(bytes(4000)) for _ in range(MAX_MESSAGE // 4000 + 1)],
                  encrypted=True)
    frags = encode_fragments(msg, a.sk_out, 1400)  # type: ignore[arg-type]
    assert len(frags) <= MAX_FRAGMENTS
    _feed_b(pair, frags)
    assert b.counters["fragment_drops"] == 1
    assert b.counters.get("fragmented_messages", 0) == 1  # IKE_AUTH only
    assert b.frag.pending_octets() < MAX_MESSAGE


def test_later_exchanges_fragment_too() -> None:
    pair = _pair()
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    (child,) = [e for e in pair.events_a if isinstance(e, ChildSaEstablished)]
    assert pair.a.rekey_child(child.spi_in, pair.now)
    pair.run_until_quiet()
    rekey = _sent(pair, "a->b", ExchangeType.CREATE_CHILD_SA)
    assert len(rekey) > 1 and all(is_fragment(d) for d in rekey)
    assert len([e for e in pair.events_b if isinstance(e, ChildSaEstablished)]) == 2


# ---------------------------------------------------------------- hostile input

def _sealed_skf(sa: IkeSa, message_id: int, number: int, total: int, first: int, plaintext: bytes,
                response: bool = False) -> bytes:
    """An SKF datagram with any numbers, sealed with ``sa``'s real outbound key (a peer that has the keys)."""
    assert sa.sk_out is not None
    sealed_len = sa.sk_out.sealed_len(len(plaintext))
    skf = bytes((first, 0)) + (8 + sealed_len).to_bytes(2, "big") + number.to_bytes(2, "big") + total.to_bytes(2, "big")
    flags = (0x08 if sa.initiator else 0) | (0x20 if response else 0)
    header = (sa.spi_i + sa.spi_r + bytes((53, 0x20, ExchangeType.INFORMATIONAL, flags))
              + message_id.to_bytes(4, "big") + (28 + len(skf) + sealed_len).to_bytes(4, "big"))
    return header + skf + sa.sk_out.seal(header + skf, plaintext)


_PAIR: list[Pair] = []
_HITS: set[str] = set()


def _established() -> Pair:
    if _PAIR and not all(len(m.list_sas()) == 1 and m.list_sas()[0].state.name == "ESTABLISHED"
                         for m in (_PAIR[0].a, _PAIR[0].b)):
        _PAIR.clear()  # a hostile message closed it: start again
    if not _PAIR:
        pair = _pair()
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet()
        _PAIR.append(pair)
    return _PAIR[0]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 70), st.integers(0, 70), st.integers(0, 255),
                          st.binary(max_size=300), st.booleans()), min_size=1, max_size=12),
       st.binary(max_size=200))
def test_hostile_fragments_never_escape_and_stay_bounded(frags: list[tuple[int, int, int, int, bytes, bool]],
                                                        raw: bytes) -> None:
    pair = _established()
    a, b = _sa(pair, "a"), _sa(pair, "b")
    base = b.exchanges.expected_id
    for dmid, number, total, first, plaintext, sealed in frags:
        if sealed:
            d = _sealed_skf(a, base + dmid, number, total, first, plaintext)
        else:
            d = _sealed_skf(a, base + dmid, 1, 2, first, b"")[:28] + plaintext  # garbage after a valid header
            d = d[:24] + len(d).to_bytes(4, "big") + d[28:]
        pair.b.receive_datagram(d, ("192.0.2.2", 500), ("192.0.2.1", 500), pair.now)
    pair.b.receive_datagram(raw, ("192.0.2.2", 500), ("192.0.2.1", 500), pair.now)
    assert "internal_error" not in pair.b.total_counters()
    _HITS.update(k for k in ("fragmented_messages", "fragment_duplicates", "fragment_drops", "integrity")
                 if b.counters.get(k))
    assert b.frag.pending_octets() <= 2 * MAX_MESSAGE
    assert all(p.total <= MAX_FRAGMENTS and len(p.parts) <= p.total for p in b.frag._partial.values())


def test_hostile_fragments_reached_every_path() -> None:
    """The property test above really reassembled and deduplicated (not only rejected)."""
    if not _HITS:
        pytest.skip("runs after test_hostile_fragments_never_escape_and_stay_bounded")
    assert {"fragmented_messages", "fragment_duplicates"} <= _HITS, _HITS


def test_fragments_of_one_message_must_agree_on_the_exchange() -> None:
    pair = _pair()
    frags = _intercepted_auth_request(pair)
    a, b = _sa(pair, "a"), _sa(pair, "b")
    _feed_b(pair, frags[:1])
    total = b.frag._partial[False].total
    _feed_b(pair, [_sealed_skf(a, 1, 2, total, 0, b"\x00" * 40)])  # an INFORMATIONAL piece of IKE_AUTH 1
    assert b.counters["fragment_drops"] == 1 and set(b.frag._partial[False].parts) == {1}
    _feed_b(pair, frags[1:])
    pair.run_until_quiet()
    _up(pair)
