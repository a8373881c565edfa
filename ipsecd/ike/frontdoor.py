"""Admission of new IKE SAs (a peer's IKE_SA_INIT): half-open limits and cookies (RFC 7296 2.6).

Nothing here keeps state per unauthenticated source beyond the half-open SAs the
manager already holds: a cookie is a keyed hash of what the request itself carries.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from ipaddress import ip_address

from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.events import Endpoint
from ipsecd.ike.message import IkeHeader, Message, encode_message
from ipsecd.ike.payloads import NoncePayload, NotifyPayload

COOKIE_VERSION = b"\x01"
# RFC 7296 2.21.4: unprotected INVALID_IKE_SPI answers, at most this many per second
INVALID_SPI_RATE = 10


@dataclass
class FrontDoor:
    secret: bytes = field(repr=False)
    counters: dict[str, int] = field(default_factory=dict)
    _invalid_spi_window: tuple[int, int] = (0, 0)  # (second, answers sent in it)

    def cookie_for(self, nonce: bytes, remote: Endpoint, spi_i: bytes) -> bytes:
        return COOKIE_VERSION + hashlib.sha256(nonce + ip_address(remote[0]).packed + spi_i + self.secret).digest()

    def admit(self, msg: Message, remote: Endpoint, half_open: int, cookie_threshold: int, max_half_open: int
              ) -> tuple[bool, bytes | None]:
        """(admit?, answer to send when not): the half-open limit, then cookies (RFC 7296 2.6)."""
        if half_open >= max_half_open:
            self._count("half_open_limit")
            return False, None
        if half_open < cookie_threshold:
            return True, None
        nonce = msg.get(NoncePayload)
        if nonce is None:
            self._count("malformed")
            return False, None
        expected = self.cookie_for(nonce.data, remote, msg.spi_i)
        got = msg.notify(NotifyType.COOKIE)
        if got is not None and hmac.compare_digest(got.data, expected):
            return True, None
        self._count("cookies_sent")
        resp = Message(msg.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, msg.message_id, is_initiator=False,
                       is_response=True, payloads=[NotifyPayload(NotifyType.COOKIE, data=expected)])
        return False, encode_message(resp)

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
        self._count("invalid_ike_spi_sent")
        resp = Message(hdr.spi_i, hdr.spi_r, ExchangeType.INFORMATIONAL, hdr.message_id,
                       is_initiator=not hdr.is_initiator, is_response=True,
                       payloads=[NotifyPayload(NotifyType.INVALID_IKE_SPI)])
        return encode_message(resp)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1
