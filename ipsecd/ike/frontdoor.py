"""The front door: admission of a peer's IKE_SA_INIT before any full decode and before any D-H.

In strongSwan's order (src/libcharon/network/receiver.c), each step cheaper than the next
and none keeping state for an unauthenticated source beyond a fixed-size table:

1. size cap (``init_max_size``, 10,000 bytes as strongSwan's ``max_packet``);
2. header sanity on the raw 28 bytes: a request from the initiator, SPIi != 0 (RFC 7296
   3.1), SPIr == 0, message ID 0;
3. a per-source token bucket (``init_rate_ip`` / ``init_burst_ip``) in an LRU table of
   ``source_table`` addresses, so a spoofed flood can only churn it, never grow it;
4. (the manager answers a retransmission of a half-open SA from its cache here)
5. the COOKIE check (RFC 7296 2.6) on the raw bytes: only the first payload is read.
   Cookies engage adaptively: when half-open SAs plus recently failed requests reach
   ``cookie_threshold``, when one address holds ``cookie_threshold_ip``, or when more than
   ``cookie_rate`` IKE_SA_INIT requests arrived in the last second (the load signal);
6. per-address and global half-open limits (``block_threshold``, ``init_limit_half_open``)
   and a cap on key exchanges started per second (``init_limit_rate``, 0 = none).

Cookies carry the time they were made and the generation of the secret:
``generation(1) | t(4) | HMAC-SHA256(secret, IPi | SPIi | t)[:16]``. The secret is
replaced after ``cookie_secret_uses`` cookies or ``cookie_secret_lifetime`` seconds, and
the previous one is still accepted for ``cookie_lifetime`` (the cookies it made live no
longer than that). No nonce in the hash: the check must not need the request decoded.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import ip_address

from ipsecd.iana import IKE_HEADER_LEN, IKE_VERSION, ExchangeType, HeaderFlag, NotifyType, PayloadType
from ipsecd.ike.message import IkeHeader, Message, encode_message
from ipsecd.ike.payloads import NotifyPayload

# RFC 7296 2.21.4: unprotected INVALID_IKE_SPI answers, at most this many per second
INVALID_SPI_RATE = 10
COOKIE_LEN = 1 + 4 + 16
_NOTIFY_HEAD = struct.Struct("!BBHBBH")  # generic payload header + protocol, SPI size, notify type
ZERO_SPI = bytes(8)
_INITIATOR = int(HeaderFlag.INITIATOR)  # a plain int (see ipsecd/ike/message.py)
# A COOKIE answer after SPIi: SPIr 0, first payload N, version 2.0, IKE_SA_INIT, flags Response, message ID 0
_COOKIE_HEAD = ZERO_SPI + bytes((PayloadType.NOTIFY, IKE_VERSION, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE)) \
    + bytes(4)
_COOKIE_NOTIFY = struct.pack("!BBH", 0, 0, NotifyType.COOKIE)  # protocol none, no SPI (RFC 7296 3.10)
_COOKIE_TOTAL = IKE_HEADER_LEN + _NOTIFY_HEAD.size


@dataclass(frozen=True)
class FrontDoorSettings:
    """The limits of the front door (``settings`` keys of the same names; docs/security.md)."""

    init_max_size: int = 10_000  # bytes of an IKE_SA_INIT request
    cookie_threshold: int = 10  # half-open SAs (+ failed requests of the last 10 s) before cookies
    cookie_threshold_ip: int = 10  # half-open SAs of one address before that address needs cookies
    cookie_rate: int = 200  # IKE_SA_INIT requests in the last second before cookies (load)
    block_threshold: int = 50  # half-open SAs per address (many laptops behind one NAT)
    init_limit_half_open: int = 5_000  # half-open SAs in all
    init_limit_rate: int = 0  # new half-open SAs (key exchanges) per second; 0 = no limit
    init_rate_ip: float = 50.0  # IKE_SA_INIT requests per second and source address (refill)
    init_burst_ip: int = 100  # ... and the bucket's depth
    source_table: int = 16_384  # addresses the token buckets remember (least recently seen go)
    cookie_lifetime: float = 10.0  # seconds a cookie is valid
    cookie_secret_uses: int = 10_000  # cookies made with one secret
    cookie_secret_lifetime: float = 300.0  # seconds one secret is used


class Admission(StrEnum):
    """What the front door did with an IKE_SA_INIT request; the values are counter names."""

    ADMIT = "admitted"
    TOO_BIG = "init_too_big"
    BAD_HEADER = "init_bad_header"
    RATE_LIMITED = "init_rate_limited"
    COOKIE_SENT = "cookies_sent"
    BAD_COOKIE = "cookie_invalid"
    BLOCKED = "init_blocked"
    HALF_OPEN_LIMIT = "half_open_limit"
    LOAD_LIMIT = "init_load_limit"


class _Meter:
    """Events in the last ``window`` seconds, estimated from two fixed buckets (no per-event state)."""

    __slots__ = ("_cur", "_prev", "_start", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._start, self._cur, self._prev = 0.0, 0, 0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            self._prev = self._cur if now - self._start < 2 * self.window else 0
            self._start = now - (now - self._start) % self.window
            self._cur = 0

    def add(self, now: float) -> None:
        self._roll(now)
        self._cur += 1

    def value(self, now: float) -> float:
        self._roll(now)
        return self._cur + self._prev * max(0.0, 1.0 - (now - self._start) / self.window)


class SourceBuckets:
    """Token buckets per source address in a fixed-size LRU table (bounded memory per source)."""

    __slots__ = ("_buckets", "burst", "limit", "rate")

    def __init__(self, rate: float, burst: int, limit: int) -> None:
        self.rate, self.burst, self.limit = rate, burst, max(1, limit)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # ip -> (tokens, last refill)

    def take(self, source: str, now: float) -> bool:
        tokens, last = self._buckets.pop(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.limit:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)


_IKE_SA_INIT = int(ExchangeType.IKE_SA_INIT)
_RESPONSE = int(HeaderFlag.RESPONSE)


def opens_ike_sa(data: bytes) -> bool:
    """A request that would start a new IKE SA (IKE_SA_INIT, SPIr zero: RFC 7296 2.6), read
    from the header alone. Anything else belongs to an IKE SA we may hold already (its
    IKE_AUTH, a rekey, a DPD, ...): the shell answers those first (shell/ike_shell.py)."""
    return (len(data) >= IKE_HEADER_LEN and data[18] == _IKE_SA_INIT and not data[19] & _RESPONSE
            and data[8:16] == ZERO_SPI)


def raw_cookie(data: bytes) -> bytes | None:
    """The COOKIE notify's data when it is the first payload (RFC 7296 2.6), read from the raw
    bytes without decoding the rest; None when there is none (or it is malformed)."""
    if len(data) < IKE_HEADER_LEN + _NOTIFY_HEAD.size or data[16] != PayloadType.NOTIFY:
        return None
    _, _, plen, _, spi_size, ntype = _NOTIFY_HEAD.unpack_from(data, IKE_HEADER_LEN)
    start, end = IKE_HEADER_LEN + _NOTIFY_HEAD.size + spi_size, IKE_HEADER_LEN + plen
    if ntype != NotifyType.COOKIE or spi_size != 0 or plen < _NOTIFY_HEAD.size or end > len(data):
        return None
    return data[start:end]


@dataclass
class _Secret:
    key: bytes = field(repr=False)
    generation: int
    born: float
    uses: int = 0


@dataclass
class FrontDoor:
    """Stateless (but for the bounded tables above) admission of IKE_SA_INIT requests."""

    rng: Callable[[int], bytes] = field(repr=False)
    counters: dict[str, int]
    settings: FrontDoorSettings = field(default_factory=FrontDoorSettings)
    _secret: _Secret = field(init=False, repr=False)
    _previous: _Secret | None = field(default=None, repr=False)
    _retired_at: float = 0.0
    _invalid_spi_window: tuple[int, int] = (0, 0)  # (second, answers sent in it)

    def __post_init__(self) -> None:
        self._secret = _Secret(self.rng(32), 0, float("-inf"))
        self.configure(self.settings)

    def configure(self, settings: FrontDoorSettings) -> None:
        """New limits (a reload); the token buckets start afresh, cookies stay valid."""
        self.settings = settings
        self.buckets = SourceBuckets(settings.init_rate_ip, settings.init_burst_ip, settings.source_table)
        self._requests, self._failures, self._started = _Meter(1.0), _Meter(10.0), _Meter(1.0)

    # ------------------------------------------------------------------ steps 1-3
    def screen(self, data: bytes, hdr: IkeHeader, source: str, now: float) -> Admission:
        """Size, header and per-source rate: the checks before anything is looked up."""
        self._requests.add(now)
        if len(data) > self.settings.init_max_size:
            return self._count(Admission.TOO_BIG)
        # RFC 7296 3.1: SPIi MUST NOT be zero; a new SA's request has SPIr 0 and message ID 0
        if hdr.spi_i == ZERO_SPI or hdr.spi_r != ZERO_SPI or hdr.message_id != 0 \
                or not hdr.flags & _INITIATOR:
            return self._count(Admission.BAD_HEADER)
        if not self.buckets.take(source, now):
            return self._count(Admission.RATE_LIMITED)
        return Admission.ADMIT

    # ------------------------------------------------------------------ steps 5-6
    def admit(self, data: bytes, hdr: IkeHeader, source: str, now: float, half_open: int,
              half_open_ip: int) -> tuple[Admission, bytes | None]:
        """(outcome, COOKIE answer to send or None) for a request that passed ``screen``."""
        s = self.settings
        if self._cookies_required(now, half_open, half_open_ip):
            cookie = raw_cookie(data)
            if cookie is None:
                return self._count(Admission.COOKIE_SENT), self._cookie_answer(hdr, source, now)
            if not self._cookie_valid(cookie, hdr.spi_i, source, now):
                # an old or forged cookie: a fresh one lets a real peer that was slow retry at once
                self._count(Admission.BAD_COOKIE)
                return self._count(Admission.COOKIE_SENT), self._cookie_answer(hdr, source, now)
        if half_open_ip >= s.block_threshold:
            return self._count(Admission.BLOCKED), None
        if half_open >= s.init_limit_half_open:
            return self._count(Admission.HALF_OPEN_LIMIT), None
        if s.init_limit_rate and self._started.value(now) >= s.init_limit_rate:
            return self._count(Admission.LOAD_LIMIT), None
        self._started.add(now)
        return Admission.ADMIT, None

    def state(self, now: float, half_open: int) -> dict[str, object]:
        """For ``ipsecctl stats``: what the front door sees now (its counters are the engine's)."""
        return {"half_open": half_open, "sources_tracked": len(self.buckets),
                "requests_last_second": round(self._requests.value(now)),
                "failures_last_10s": round(self._failures.value(now)),
                "cookies_required": self._cookies_required(now, half_open, 0)}  # of a new address

    def note_failure(self, now: float) -> None:
        """A peer's IKE_SA_INIT failed (NO_PROPOSAL_CHOSEN, INVALID_SYNTAX, INVALID_KE): it counts
        toward the cookie threshold as a half-open SA would, for 10 s."""
        self._failures.add(now)

    def _cookies_required(self, now: float, half_open: int, half_open_ip: int) -> bool:
        s = self.settings
        return (half_open + self._failures.value(now) >= s.cookie_threshold
                or half_open_ip >= s.cookie_threshold_ip
                or self._requests.value(now) > s.cookie_rate)

    # ------------------------------------------------------------------ cookies (RFC 7296 2.6)
    def cookie_for(self, spi_i: bytes, source: str, now: float) -> bytes:
        self._rotate(now)
        sec = self._secret
        sec.uses += 1
        t = struct.pack("!I", int(now) & 0xFFFFFFFF)
        return bytes([sec.generation]) + t + _mac(sec.key, source, spi_i, t)

    def _cookie_valid(self, cookie: bytes, spi_i: bytes, source: str, now: float) -> bool:
        if len(cookie) != COOKIE_LEN:
            return False
        t = cookie[1:5]
        age = (int(now) - struct.unpack("!I", t)[0]) & 0xFFFFFFFF
        if age > self.settings.cookie_lifetime:
            return False
        sec = self._secret
        if cookie[0] != sec.generation:
            prev = self._previous
            if prev is None or cookie[0] != prev.generation or now - self._retired_at > self.settings.cookie_lifetime:
                return False
            sec = prev
        return hmac.compare_digest(cookie[5:], _mac(sec.key, source, spi_i, t))

    def _rotate(self, now: float) -> None:
        sec, s = self._secret, self.settings
        if sec.born == float("-inf"):
            sec.born = now
        if sec.uses >= s.cookie_secret_uses or now - sec.born >= s.cookie_secret_lifetime:
            self._previous, self._retired_at = sec, now
            self._secret = _Secret(self.rng(32), (sec.generation + 1) & 0xFF, now)
            self._count_name("cookie_secret_rotations")

    def _cookie_answer(self, hdr: IkeHeader, source: str, now: float) -> bytes:
        """The IKE_SA_INIT response carrying only N(COOKIE) (RFC 7296 2.6), built from a fixed template:
        this is sent once per spoofed request under a flood."""
        cookie = self.cookie_for(hdr.spi_i, source, now)
        return hdr.spi_i + _COOKIE_HEAD + struct.pack("!I", _COOKIE_TOTAL + len(cookie)) \
            + struct.pack("!BBH", PayloadType.NO_NEXT_PAYLOAD, 0, _NOTIFY_HEAD.size + len(cookie)) \
            + _COOKIE_NOTIFY + cookie

    # ------------------------------------------------------------------ unknown SPIs
    def invalid_ike_spi(self, hdr: IkeHeader, now: float) -> bytes | None:
        """RFC 7296 2.21.4: the answer to a request for an unknown IKE SA, unprotected and
        rate-limited, or None (responses and other exchanges are dropped silently)."""
        if hdr.is_response or hdr.exchange not in (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA):
            return None
        second = int(now)
        sec, n = self._invalid_spi_window
        if sec != second:
            sec, n = second, 0
        if n >= INVALID_SPI_RATE:
            return None
        self._invalid_spi_window = (sec, n + 1)
        self._count_name("invalid_ike_spi_sent")
        resp = Message(hdr.spi_i, hdr.spi_r, ExchangeType.INFORMATIONAL, hdr.message_id,
                       is_initiator=not hdr.is_initiator, is_response=True,
                       payloads=[NotifyPayload(NotifyType.INVALID_IKE_SPI)])
        return encode_message(resp)

    def _count(self, what: Admission) -> Admission:
        self._count_name(what.value)
        return what

    def _count_name(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1


def _mac(key: bytes, source: str, spi_i: bytes, t: bytes) -> bytes:
    return hmac.digest(key, _packed(source) + spi_i + t, hashlib.sha256)[:16]


def _packed(addr: str) -> bytes:
    """The address's octets; IPv4 (as the socket writes it) without ipaddress, which costs
    more than the HMAC itself once per spoofed request."""
    parts = addr.split(".")
    if len(parts) == 4:
        return bytes([int(p) for p in parts])  # ValueError for anything but 0-255
    return ip_address(addr).packed
