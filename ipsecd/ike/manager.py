"""All IKE SAs of the daemon: dispatch by SPI, responder admission and cookies, initiation.

Still sans-I/O: datagrams and time in, datagrams, timers and events out. One
bad datagram never stops the others: every exception is caught per packet,
counted and logged at a rate-limited level.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from ipsecd.errors import RemoteProtocolError
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.events import ChildSaEstablished, Endpoint, Event, IkeSaClosed, IkeSaEstablished
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.message import Message, decode_header, decode_message, encode_message
from ipsecd.ike.payloads import NoncePayload, NotifyPayload
from ipsecd.ike.settings import IkeSettings
from ipsecd.ratelimit import RateLimitedLogger

log = logging.getLogger("ipsecd.ike")

COOKIE_VERSION = b"\x01"


@dataclass
class IkeManager:
    connections: Sequence[IkeSettings]
    now: float
    rng: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    # remote address -> our source address, for connections without local_addrs
    source_for: Callable[[str], str] = field(default=lambda remote: "0.0.0.0", repr=False)
    cookie_threshold: int = 100  # half-open SAs before we demand cookies (RFC 7296 2.6)
    max_half_open: int = 5000

    sas: dict[int, IkeSa] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    _by_spi: dict[bytes, IkeSa] = field(default_factory=dict)
    _half_open: dict[tuple[bytes, str], IkeSa] = field(default_factory=dict)
    _spis_in: set[bytes] = field(default_factory=set)
    _next_id: int = 1
    _next_reqid: int = 1
    _out: list[tuple[bytes, Endpoint, Endpoint]] = field(default_factory=list)
    _events: deque[Event] = field(default_factory=deque)
    _cookie_secret: bytes = b""

    def __post_init__(self) -> None:
        self._cookie_secret = self.rng(32)
        self._rl = RateLimitedLogger(log)

    # ------------------------------------------------------------------ API
    def connection(self, name: str) -> IkeSettings | None:
        for c in self.connections:
            if c.name == name:
                return c
        return None

    def initiate(self, name: str, now: float) -> IkeSa:
        conn = self.connection(name)
        if conn is None:
            raise KeyError(name)
        if not conn.remote_addrs:
            raise ValueError(f"connection {name} has no concrete remote address to initiate to")
        remote = (conn.remote_addrs[0], conn.remote_port)
        local_ip = conn.local_addrs[0] if conn.local_addrs else self.source_for(remote[0])
        sa = IkeSa(conn, self._alloc_id(), True, (local_ip, 500), remote, now, rng=self.rng,
                   spi_allocator=self._alloc_spi, reqid_allocator=self._alloc_reqid)
        self._register(sa)
        sa.initiate()
        self._collect(sa)
        return sa

    def terminate(self, name: str, now: float) -> int:
        """Delete every IKE SA of a connection; returns how many."""
        n = 0
        for sa in list(self.sas.values()):
            if sa.settings.name == name and sa.state != IkeState.CLOSED:
                sa.now = now
                sa.delete("deleted by request")
                self._collect(sa)
                n += 1
        return n

    def update_connections(self, connections: Sequence[IkeSettings]) -> None:
        self.connections = connections

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        self.now = now
        try:
            self._receive(data, local, remote, now)
        except RemoteProtocolError as e:
            self._drop("malformed", remote, str(e))
        except Exception as e:  # a bug must not take the daemon down: count it and go on
            self._drop("internal_error", remote, f"{type(e).__name__}: {e}")
            log.debug("internal error on a datagram from %s", remote[0], exc_info=True)

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint, Endpoint]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        timers = [t for sa in self.sas.values() if (t := sa.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        for sa in list(self.sas.values()):
            t = sa.get_timer()
            if t is not None and t <= now:
                sa.handle_timer(now)
                self._collect(sa)

    def find(self, ike_sa_id: int) -> IkeSa | None:
        return self.sas.get(ike_sa_id)

    def list_sas(self) -> list[IkeSa]:
        return [sa for sa in self.sas.values() if sa.state != IkeState.CLOSED]

    # ------------------------------------------------------------ internals
    def _receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        hdr = decode_header(data)
        if hdr.exchange == ExchangeType.IKE_SA_INIT and not hdr.is_response and hdr.spi_r == bytes(8):
            self._on_init_request(data, local, remote, now, hdr.spi_i)
            return
        our_spi = hdr.spi_r if hdr.is_initiator else hdr.spi_i
        sa = self._by_spi.get(our_spi)
        if sa is None:
            self._drop("unknown_spi", remote, f"message for unknown IKE SPI {our_spi.hex()}")
            return
        sa.receive(data, local, remote, now)
        self._collect(sa)

    def _on_init_request(self, data: bytes, local: Endpoint, remote: Endpoint, now: float, spi_i: bytes) -> None:
        key = (spi_i, remote[0])
        existing = self._half_open.get(key)
        if existing is not None:
            existing.receive(data, local, remote, now)  # a retransmission: answered from the cache
            self._collect(existing)
            return
        try:
            msg = decode_message(data)
        except RemoteProtocolError as e:
            # RFC 7296 2.5: an unknown critical payload is refused with a notify; other garbage is dropped
            if e.notify in (NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, NotifyType.INVALID_MAJOR_VERSION):
                resp = Message(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, is_initiator=False, is_response=True,
                               payloads=[NotifyPayload(e.notify, data=e.notify_data)])
                self._out.append((encode_message(resp), local, remote))
            raise
        if msg.message_id != 0:
            self._drop("malformed", remote, "IKE_SA_INIT request with a non-zero message ID")
            return
        candidates = self._candidates(local[0], remote[0])
        if not candidates:
            self._drop("no_connection", remote, f"no connection configured for peer {remote[0]}")
            return
        if len(self._half_open) >= self.max_half_open:
            self._drop("half_open_limit", remote, "too many half-open IKE SAs")
            return
        if len(self._half_open) >= self.cookie_threshold and not self._cookie_ok(msg, local, remote, spi_i):
            return
        sa = IkeSa(candidates[0], self._alloc_id(), False, local, remote, now, rng=self.rng,
                   spi_allocator=self._alloc_spi, reqid_allocator=self._alloc_reqid, candidates=candidates)
        self.sas[sa.ike_sa_id] = sa
        self._half_open[key] = sa
        sa.receive(data, local, remote, now)
        if sa.state != IkeState.CLOSED:
            self._by_spi[sa.spi_r] = sa
        self._collect(sa)

    def _cookie_ok(self, msg: Message, local: Endpoint, remote: Endpoint, spi_i: bytes) -> bool:
        """RFC 7296 2.6: demand a stateless cookie once too many SAs are half-open."""
        nonce = msg.get(NoncePayload)
        if nonce is None:
            raise RemoteProtocolError("IKE_SA_INIT without Nonce", NotifyType.INVALID_SYNTAX)
        expected = COOKIE_VERSION + hashlib.sha256(
            nonce.data + ip_address(remote[0]).packed + spi_i + self._cookie_secret).digest()
        got = msg.notify(NotifyType.COOKIE)
        if got is not None and hmac.compare_digest(got.data, expected):
            return True
        self.counters["cookies_sent"] = self.counters.get("cookies_sent", 0) + 1
        resp = Message(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, msg.message_id, is_initiator=False,
                       is_response=True, payloads=[NotifyPayload(NotifyType.COOKIE, data=expected)])
        self._out.append((encode_message(resp), local, remote))
        return False

    def _candidates(self, local_ip: str, remote_ip: str) -> list[IkeSettings]:
        exact, wildcard = [], []
        for c in self.connections:
            if c.local_addrs and not _addr_in(local_ip, c.local_addrs):
                continue
            if not c.remote_addrs:
                wildcard.append(c)
            elif _addr_in(remote_ip, c.remote_addrs):
                exact.append(c)
        return exact + wildcard

    def _collect(self, sa: IkeSa) -> None:
        for item in sa.datagrams_to_send():
            self._out.append(item)
        if sa.spi_r != bytes(8) and sa.state != IkeState.CLOSED:
            self._by_spi.setdefault(sa.our_spi, sa)
        while (ev := sa.next_event()) is not None:
            if isinstance(ev, IkeSaEstablished):
                self._half_open.pop((sa.spi_i, sa.remote[0]), None)
                self._half_open = {k: v for k, v in self._half_open.items() if v is not sa}
                if sa.initial_contact:
                    self._initial_contact(sa)
            elif isinstance(ev, ChildSaEstablished):
                self._spis_in.add(ev.spi_in)
            elif isinstance(ev, IkeSaClosed):
                self._forget(sa)
            self._events.append(ev)

    def _initial_contact(self, sa: IkeSa) -> None:
        """RFC 7296 2.4: INITIAL_CONTACT means the peer lost every older SA with us: drop ours silently."""
        for other in list(self.sas.values()):
            if other is sa or other.state == IkeState.CLOSED or other.settings.name != sa.settings.name:
                continue
            if other.remote[0] == sa.remote[0] or other.remote_identity == sa.remote_identity:
                other.close("replaced: peer sent INITIAL_CONTACT")
                self._collect(other)

    def _forget(self, sa: IkeSa) -> None:
        self.sas.pop(sa.ike_sa_id, None)
        if self._by_spi.get(sa.our_spi) is sa:
            del self._by_spi[sa.our_spi]
        self._half_open = {k: v for k, v in self._half_open.items() if v is not sa}

    def _register(self, sa: IkeSa) -> None:
        self.sas[sa.ike_sa_id] = sa
        self._by_spi[sa.our_spi] = sa

    def _alloc_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def _alloc_reqid(self) -> int:
        r = self._next_reqid
        self._next_reqid += 1
        return r

    def _alloc_spi(self) -> bytes:
        while True:
            spi = self.rng(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self._spis_in:
                self._spis_in.add(spi)
                return spi

    def release_spi(self, spi: bytes) -> None:
        self._spis_in.discard(spi)

    def _drop(self, reason: str, remote: Endpoint, detail: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        self._rl.log(logging.INFO, reason, "dropped datagram from %s[%d]: %s", remote[0], remote[1], detail)


def _addr_in(addr: str, addrs: Sequence[str]) -> bool:
    try:
        a = ip_address(addr)
    except ValueError:
        return False
    for x in addrs:
        if x in ("%any", "0.0.0.0", "::"):
            return True
        try:
            if ip_address(x) == a:
                return True
        except ValueError:
            continue
    return False

