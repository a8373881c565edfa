"""The front door (ipsecd/ike/frontdoor.py) with a fake clock: every step, in strongSwan's order.

Requests are built by tests/flood.py (what an attacker sends: well-formed, valid ECP-256
public values) and fed to a responder IkeManager; the clock is the ``now`` argument.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest

from ipsecd.iana import NotifyType
from ipsecd.ike import crypto
from ipsecd.ike.frontdoor import COOKIE_LEN, FrontDoor, FrontDoorSettings, SourceBuckets, raw_cookie
from ipsecd.ike.ike_sa import IkeState
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import decode_message
from tests.flood import _cookie_of, build_init, public_values, stamp
from tests.ike_pair import B_ADDR, make_pair, make_settings_b

T0 = 1000.0
(PUBLIC,) = public_values(1)
LOCAL = (B_ADDR, 500)


def responder(**limits: object) -> IkeManager:
    mgr = make_pair(sb=make_settings_b(remote_id="%any", remote_addrs=("%any",))).b
    mgr.front.configure(FrontDoorSettings(**limits))  # type: ignore[arg-type]
    return mgr


def request(spi: bytes | None = None, cookie: bytes = b"", **kw: int) -> bytes:
    return bytes(stamp(build_init(cookie=cookie, **kw), spi or os.urandom(8), PUBLIC, os.urandom(32)))


def send(mgr: IkeManager, data: bytes, source: str, now: float) -> list[bytes]:
    mgr.receive_datagram(data, LOCAL, (source, 500), now)
    return [d for d, _, _, _ in mgr.datagrams_to_send()]


def half_open(mgr: IkeManager, source: str | None = None) -> int:
    return sum(1 for sa in mgr.list_sas() if sa.state != IkeState.ESTABLISHED
               and (source is None or sa.remote[0] == source))


def connect(mgr: IkeManager, source: str, now: float, spi: bytes | None = None) -> list[bytes]:
    """What a real client does: send, and resend with the cookie if asked (RFC 7296 2.6)."""
    spi = spi or os.urandom(8)
    out = send(mgr, request(spi), source, now)
    cookie = _cookie_of(out[0]) if out else None
    return send(mgr, request(spi, cookie), source, now) if cookie else out


# ------------------------------------------------------------------ 1-2: size and header
def test_oversized_request_is_dropped_unread() -> None:
    mgr = responder(cookie_threshold=1000)
    big = request(vendor_ids=500)  # ~14 KB: a valid request, only too big
    assert len(big) > 10_000
    assert send(mgr, big, "198.18.0.1", T0) == []
    assert mgr.counters.get("init_too_big") == 1 and not mgr.list_sas()
    raised = responder(init_max_size=20_000, cookie_threshold=1000)
    send(raised, big, "198.18.0.1", T0)
    assert "init_too_big" not in raised.counters, "the cap is a setting"


@pytest.mark.parametrize("field,value", [("spi_i", bytes(8)), ("message_id", 1)])
def test_header_sanity(field: str, value: object) -> None:
    """RFC 7296 3.1: SPIi MUST NOT be zero; the first request of an SA has message ID 0."""
    mgr = responder(cookie_threshold=1000)
    data = bytearray(request(bytes(8) if field == "spi_i" else None))
    if field == "message_id":
        data[20:24] = struct.pack("!I", 1)
    assert send(mgr, bytes(data), "198.18.0.1", T0) == []
    assert mgr.counters.get("init_bad_header") == 1 and not mgr.list_sas()


# ------------------------------------------------------------------ 3: per-source token bucket
def test_token_bucket_per_source() -> None:
    buckets = SourceBuckets(rate=10.0, burst=20, limit=100)
    assert sum(buckets.take("192.0.2.9", T0) for _ in range(50)) == 20
    assert buckets.take("192.0.2.10", T0), "another source has its own bucket"
    assert sum(buckets.take("192.0.2.9", T0 + 1.0) for _ in range(50)) == 10  # refilled at 10/s


def test_token_bucket_table_is_bounded() -> None:
    buckets = SourceBuckets(rate=10.0, burst=20, limit=1000)
    for i in range(20_000):
        buckets.take(f"198.18.{i // 250}.{i % 250}", T0)
    assert len(buckets) == 1000


def test_one_source_is_rate_limited_before_anything_is_decoded() -> None:
    mgr = responder(cookie_threshold=1000, cookie_threshold_ip=1000, block_threshold=1000, init_burst_ip=20)
    for _ in range(30):
        send(mgr, request(), "192.0.2.77", T0)
    assert half_open(mgr) == 20 and mgr.counters.get("init_rate_limited") == 10


# ------------------------------------------------------------------ 5: cookies on raw bytes
def test_raw_cookie_reads_only_the_first_payload() -> None:
    cookie = bytes(range(COOKIE_LEN))
    data = request(cookie=cookie)
    assert raw_cookie(data) == cookie == decode_message(data).notify(NotifyType.COOKIE).data  # type: ignore[union-attr]
    assert raw_cookie(request()) is None
    assert raw_cookie(data[:30]) is None  # truncated: no slicing past the end


def test_cookie_flow_and_no_state_before_it() -> None:
    mgr = responder(cookie_threshold=0)
    spi = os.urandom(8)
    (answer,) = send(mgr, request(spi), "192.0.2.5", T0)
    cookie = _cookie_of(answer)
    assert cookie is not None and len(cookie) == COOKIE_LEN and not mgr.list_sas()
    assert send(mgr, request(spi, cookie), "192.0.2.6", T0), "another address gets a new cookie"
    assert not mgr.list_sas()
    send(mgr, request(spi, cookie), "192.0.2.5", T0 + 1)
    assert half_open(mgr) == 1


def test_cookies_carry_time() -> None:
    mgr = responder(cookie_threshold=0)
    spi = os.urandom(8)
    cookie = _cookie_of(send(mgr, request(spi), "192.0.2.5", T0)[0])
    (again,) = send(mgr, request(spi, cookie), "192.0.2.5", T0 + 11)  # older than cookie_lifetime (10 s)
    assert not mgr.list_sas() and mgr.counters.get("cookie_invalid") == 1
    assert _cookie_of(again) not in (None, cookie), "a fresh cookie lets a slow peer retry at once"


def test_cookie_secret_rotates_by_uses_and_the_previous_one_has_a_grace_period() -> None:
    door = FrontDoor(os.urandom, {}, FrontDoorSettings(cookie_threshold=0, cookie_secret_uses=3))
    spi = os.urandom(8)
    old = door.cookie_for(spi, "192.0.2.5", T0)
    for _ in range(3):
        door.cookie_for(os.urandom(8), "192.0.2.5", T0)
    new = door.cookie_for(spi, "192.0.2.5", T0 + 1)
    assert new[0] != old[0] and door.counters["cookie_secret_rotations"] == 1
    assert door._cookie_valid(old, spi, "192.0.2.5", T0 + 5)  # the previous secret, inside the grace
    assert door._cookie_valid(new, spi, "192.0.2.5", T0 + 5)
    assert not door._cookie_valid(old, spi, "192.0.2.5", T0 + 12)  # grace (cookie_lifetime) over


def test_cookie_secret_rotates_by_time() -> None:
    door = FrontDoor(os.urandom, {}, FrontDoorSettings(cookie_secret_lifetime=60.0))
    first = door.cookie_for(os.urandom(8), "192.0.2.5", T0)
    assert door.cookie_for(os.urandom(8), "192.0.2.5", T0 + 59)[0] == first[0]
    assert door.cookie_for(os.urandom(8), "192.0.2.5", T0 + 61)[0] != first[0]


# ------------------------------------------------------------------ adaptive trigger
def test_cookies_engage_at_the_half_open_threshold() -> None:
    mgr = responder(cookie_threshold=5)
    for i in range(5):
        assert _cookie_of(send(mgr, request(), f"198.18.0.{i + 1}", T0)[0]) is None
    assert _cookie_of(send(mgr, request(), "198.18.0.99", T0)[0]) is not None
    assert half_open(mgr) == 5


def test_failed_requests_count_toward_the_cookie_threshold() -> None:
    """Issue 13: a request refused at once (NO_PROPOSAL_CHOSEN) closed and never counted."""
    mgr = make_pair(sb=make_settings_b(remote_id="%any", remote_addrs=("%any",), ike=("aes128-sha256-modp2048",))).b
    mgr.front.configure(FrontDoorSettings(cookie_threshold=5))
    for i in range(5):  # ECP-256 only: NO_PROPOSAL_CHOSEN
        (answer,) = send(mgr, request(), f"198.18.0.{i + 1}", T0)
        assert decode_message(answer).notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None
    assert not mgr.list_sas()
    assert _cookie_of(send(mgr, request(), "198.18.0.99", T0 + 1)[0]) is not None
    assert _cookie_of(send(mgr, request(), "198.18.0.99", T0 + 25)[0]) is None, "failures are forgotten"


def test_request_rate_engages_cookies() -> None:
    mgr = responder(cookie_threshold=10_000, cookie_rate=50, block_threshold=10_000)
    answers = [send(mgr, request(), f"198.18.{i // 250}.{i % 250 + 1}", T0 + i / 1000) for i in range(100)]
    cookies = sum(_cookie_of(a[0]) is not None for a in answers)
    assert half_open(mgr) <= 51 and cookies >= 49


def test_cookie_threshold_per_address() -> None:
    mgr = responder(cookie_threshold=1000, cookie_threshold_ip=3)
    outs = [send(mgr, request(), "192.0.2.7", T0) for _ in range(4)]
    assert [_cookie_of(o[0]) is not None for o in outs] == [False, False, False, True]


# ------------------------------------------------------------------ 6: limits after the cookie
def test_one_source_answering_cookies_is_limited_by_block_threshold() -> None:
    mgr = responder(block_threshold=5, init_burst_ip=1000)
    for i in range(100):
        connect(mgr, "192.0.2.66", T0 + i * 0.001)
    assert half_open(mgr, "192.0.2.66") == 5 and mgr.counters.get("init_blocked", 0) >= 90
    assert connect(mgr, "192.0.2.67", T0 + 1), "another address is not locked out"
    assert half_open(mgr, "192.0.2.67") == 1


def test_ten_laptops_behind_one_nat_get_in_with_the_defaults() -> None:
    mgr = responder()
    for _ in range(10):
        assert connect(mgr, "203.0.113.9", T0)
    assert half_open(mgr, "203.0.113.9") == 10


def test_global_half_open_limit() -> None:
    mgr = responder(init_limit_half_open=20, cookie_threshold=1000, cookie_threshold_ip=1000)
    for i in range(30):
        send(mgr, request(), f"198.18.0.{i + 1}", T0)
    assert half_open(mgr) == 20 and mgr.counters.get("half_open_limit") == 10


def test_key_exchanges_per_second_limit() -> None:
    mgr = responder(init_limit_rate=5, cookie_threshold=1000, cookie_threshold_ip=1000, cookie_rate=1000)
    for i in range(10):
        send(mgr, request(), f"198.18.0.{i + 1}", T0)
    assert half_open(mgr) == 5 and mgr.counters.get("init_load_limit") == 5
    send(mgr, request(), "198.18.1.1", T0 + 3)
    assert half_open(mgr) == 6


# ------------------------------------------------------------------ half-open life, zombies, D-H
def test_retransmitted_init_does_not_extend_half_open_life() -> None:
    """Issue 13: a resend every 25 s kept a spoofed half-open SA (and its slot) forever."""
    mgr = responder(cookie_threshold=1000)
    data = request()
    first = send(mgr, data, "192.0.2.8", T0)
    assert send(mgr, data, "192.0.2.8", T0 + 25) == first  # answered from the cache
    mgr.handle_timer(T0 + 30.5)
    assert not mgr.list_sas()


def test_init_without_ke_leaves_no_sa() -> None:
    """Issue 13: an IKE_SA_INIT without KE left a zombie SA until the half-open timeout."""
    mgr = responder(cookie_threshold=1000)
    data = bytearray(request())
    # drop the KE payload: SA's next-payload -> Nonce, and cut KE out
    sa_len = struct.unpack_from("!H", data, 28 + 2)[0]
    ke_at = 28 + sa_len
    ke_len = struct.unpack_from("!H", data, ke_at + 2)[0]
    data[28] = data[ke_at]
    del data[ke_at:ke_at + ke_len]
    data[24:28] = struct.pack("!I", len(data))
    send(mgr, bytes(data), "192.0.2.8", T0)
    assert not mgr.sas and mgr.counters.get("malformed") == 1


def test_no_key_pair_of_ours_for_a_bad_public_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: our key pair was made before the peer's KE passed its checks (2.4 ms each for MODP-4096)."""
    made: list[object] = []
    real: Callable[..., object] = crypto.create_key_exchange
    monkeypatch.setattr(crypto, "create_key_exchange", lambda g: made.append(g) or real(g))
    mgr = responder(cookie_threshold=1000)
    bad = bytes(stamp(build_init(), os.urandom(8), bytes(64), os.urandom(32)))  # (0, 0) is not on the curve
    send(mgr, bad, "192.0.2.8", T0)
    assert made == [] and not mgr.list_sas()
    send(mgr, request(), "192.0.2.8", T0)
    assert made, "a good value does get a key pair (the monkeypatch works)"


@pytest.mark.parametrize("source", ["192.0.2.5", "2001:db8::5"])
def test_cookie_binds_the_source_address(source: str) -> None:
    door = FrontDoor(os.urandom, {})
    spi = os.urandom(8)
    cookie = door.cookie_for(spi, source, T0)
    assert door._cookie_valid(cookie, spi, source, T0 + 1)
    assert not door._cookie_valid(cookie, spi, "192.0.2.6", T0 + 1)
    assert not door._cookie_valid(cookie, os.urandom(8), source, T0 + 1)
    assert not door._cookie_valid(cookie[:-1] + bytes([cookie[-1] ^ 1]), spi, source, T0 + 1)


def test_spoofed_requests_are_answered_without_a_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: every IKE_SA_INIT was decoded in full, twice, before the cookie check."""
    from ipsecd.ike import ike_sa, manager

    mgr = responder(cookie_threshold=0)
    decoded: list[bytes] = []
    real = manager.decode_message
    for module in (manager, ike_sa):
        monkeypatch.setattr(module, "decode_message", lambda data, *a: decoded.append(data) or real(data, *a))
    for i in range(100):
        (answer,) = send(mgr, request(), f"198.18.1.{i + 1}", T0)
        assert _cookie_of(answer) is not None
    assert decoded == [] and not mgr.sas
    spi = os.urandom(8)
    cookie = _cookie_of(send(mgr, request(spi), "192.0.2.5", T0)[0])
    send(mgr, request(spi, cookie), "192.0.2.5", T0)
    assert len(decoded) == 1, "the request with a valid cookie is decoded once (the SA reuses it)"
