"""IKE fragmentation (RFC 7383) for one IKE SA: what was negotiated, our messages cut into
SKF fragments, the peer's fragments put back together.

Negotiation (RFC 7383 2.3): each side announces IKEV2_FRAGMENTATION_SUPPORTED in
IKE_SA_INIT (tasks/ike_init.py); the responder only when the initiator did. With both
announced, either side may send SKF; swanctl's ``fragmentation`` decides what we do:

========  ==========  ===================  ==========================
value     announce    send fragments       accept the peer's
========  ==========  ===================  ==========================
yes       yes         when over the size   yes
accept    yes         never                yes
force     yes         when over the size   yes (IKEv1's "fragment the
                                           first message" has no IKEv2
                                           meaning: IKE_SA_INIT is
                                           never fragmented, 2.5)
no        no          never                no (SKF is dropped)
========  ==========  ===================  ==========================

Sending (RFC 7383 2.5): an encrypted message whose datagram would exceed ``fragment_size``
octets *with* the IP and UDP headers (and the non-ESP marker on port 4500) is sent as
fragments, each sealed on its own. Retransmissions resend every fragment; the responder
keeps its fragmented response to answer a retransmitted request again, but only when
fragment 1 of that request arrives again (RFC 7383 2.6.1), so that n fragments of one
retransmission do not cost n copies of the response.

Receiving (RFC 7383 2.6): a fragment is only looked at when its message ID is the one we
expect (the peer's next request, or the response to our request in flight), and only
kept after its ICV verified. Per SA at most one request and one response are being
reassembled, each of at most ``MAX_FRAGMENTS`` fragments and ``MAX_MESSAGE`` octets of
plaintext; an unfinished message older than ``REASSEMBLY_TIMEOUT`` is discarded when the
next fragment arrives. A fragment announcing more fragments than the message being
reassembled restarts it (the sender re-fragmented smaller); one announcing fewer is dropped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import NATT_PORT, ExchangeType
from ipsecd.ike.backref import BackRef
from ipsecd.ike.events import Endpoint
from ipsecd.ike.message import (
    Fragment,
    IkeHeader,
    Message,
    decode_fragment,
    decode_message,
    encode_fragments,
    encode_message,
    is_fragment,
    message_from_chain,
)

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa

FRAGMENT_SIZE = 1280  # strongSwan's charon.fragment_size: the IPv6 minimum MTU, headers included
MIN_FRAGMENT_SIZE = 576  # below this even one fragment's overhead leaves too little room
MAX_FRAGMENTS = 64
# Reassembled plaintext octets: a certificate chain of four RSA-4096 certificates with
# CERTREQ and a CP fits several times; memory per SA stays at most twice this.
MAX_MESSAGE = 32768
REASSEMBLY_TIMEOUT = 30.0

_IP_HEADER = {4: 20, 6: 40}
_UDP_HEADER = 8
_NON_ESP_MARKER = 4

# swanctl fragmentation values: (announce support, fragment our messages)
POLICY: dict[str, tuple[bool, bool]] = {
    "yes": (True, True),
    "accept": (True, False),
    "force": (True, True),
    "no": (False, False),
}


def max_datagram(fragment_size: int, local: Endpoint, remote: Endpoint) -> int:
    """The most IKE octets one datagram may carry so that the IP packet stays within
    ``fragment_size``: the IP header (by family), UDP, and the non-ESP marker on 4500."""
    version = ipaddress.ip_address(remote[0]).version
    marker = _NON_ESP_MARKER if NATT_PORT in (local[1], remote[1]) else 0
    return fragment_size - _IP_HEADER[version] - _UDP_HEADER - marker


@dataclass(slots=True)
class _Partial:
    """One message being reassembled."""

    header: IkeHeader
    total: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    first_type: int = 0
    size: int = 0


class Fragments:
    """See the module docstring. One per IkeSa (``sa.frag``)."""

    __slots__ = ("_partial", "_sa", "peer_supported")
    sa: BackRef[IkeSa] = BackRef("_sa")  # weak: a closed IKE SA is freed without the cyclic GC (backref.py)

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa
        self.peer_supported = False  # the peer announced RFC 7383 in IKE_SA_INIT
        self._partial: dict[bool, _Partial] = {}  # by "is a response": at most one of each

    # ------------------------------------------------------------------ negotiation
    @property
    def announce(self) -> bool:
        """Do we announce IKEV2_FRAGMENTATION_SUPPORTED (and so accept SKF)?"""
        return POLICY[self.sa.settings.fragmentation][0]

    @property
    def negotiated(self) -> bool:
        return self.announce and self.peer_supported

    @property
    def sending(self) -> bool:
        return self.negotiated and POLICY[self.sa.settings.fragmentation][1]

    # ------------------------------------------------------------------ ours
    def encode(self, msg: Message) -> tuple[bytes, ...]:
        """The datagrams of one of our messages: one, or its fragments."""
        sa = self.sa
        data = encode_message(msg, sa.sk_out if msg.encrypted else None)
        if not msg.encrypted or not self.sending or sa.sk_out is None:
            return (data,)
        limit = max_datagram(sa.settings.fragment_size, sa.local, sa.remote)
        if len(data) <= limit:
            return (data,)
        out = tuple(encode_fragments(msg, sa.sk_out, limit))
        sa.counters["fragments_sent"] = sa.counters.get("fragments_sent", 0) + len(out)
        sa.log.info("splitting %s %s %d (%d octets) into %d fragments of at most %d octets (RFC 7383)",
                    msg.exchange.name, "response" if msg.is_response else "request", msg.message_id, len(data),
                    len(out), limit)
        return out

    # ------------------------------------------------------------------ the peer's
    def decode(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> Message | None:
        """The message ``data`` carries, or None when it was a fragment kept (or dropped) for
        now. IntegrityError and RemoteProtocolError propagate as from decode_message."""
        sa = self.sa
        if not is_fragment(data):
            encrypted = len(data) >= 19 and data[18] != ExchangeType.IKE_SA_INIT
            return decode_message(data, sa.sk_in if encrypted else None)
        if not self.negotiated or sa.sk_in is None:
            raise RemoteProtocolError("SKF fragment but RFC 7383 was not negotiated")
        sa.count("fragments_received")
        if len(data) < 24:
            raise RemoteProtocolError("truncated SKF fragment")
        message_id, response = int.from_bytes(data[20:24], "big"), bool(data[19] & 0x20)
        if not self._wanted(message_id, response, data):
            return None
        frag = decode_fragment(data, sa.sk_in, MAX_FRAGMENTS)
        if frag.header.is_initiator == sa.initiator:
            raise RemoteProtocolError("SKF fragment with our own role's flag")
        if not response and message_id != sa.exchanges.expected_id:
            # a verified fragment of the request we answered: fragment 1 alone asks again (RFC 7383 2.6.1)
            if frag.number == 1:
                sa.exchanges.answer_again(message_id, local, remote)
            return None
        return self._store(frag, response, now)

    def _wanted(self, message_id: int, response: bool, data: bytes) -> bool:
        """Only fragments of the message we expect are decrypted and kept (RFC 7383 2.6); of the
        request answered last, only fragment 1 (the one that makes us answer again) is opened."""
        ex = self.sa.exchanges
        if response:
            ok = ex.active is not None and ex.active.message_id == message_id
            what = "unexpected_response"
        elif message_id == ex.expected_id:
            return True
        else:
            ok = ex.cached is not None and ex.cached.message_id == message_id
            what = "bad_message_id"
            if ok and data[32:34] != b"\x00\x01":  # Fragment Number: IKE header, SKF generic header
                self.sa.count("retransmitted_fragments")
                return False
        if not ok:
            self.sa.count(what)
        return ok

    def _store(self, frag: Fragment, response: bool, now: float) -> Message | None:
        sa = self.sa
        p = self._partial.get(response)
        if p is not None and (p.header.message_id != frag.header.message_id or now - p.started > REASSEMBLY_TIMEOUT
                              or frag.total > p.total):
            p = None  # a later message, a stale one, or the sender re-fragmented smaller (RFC 7383 2.6)
        elif p is not None and frag.total < p.total:
            self._drop(f"fragment {frag.number} of {frag.total}, but {p.total} expected")
            return None
        elif p is not None and (p.header.exchange, p.header.flags) != (frag.header.exchange, frag.header.flags):
            self._drop("fragments of one message with different exchange types or flags")
            return None
        if p is None:
            p = self._partial[response] = _Partial(frag.header, frag.total, now)
        if frag.number in p.parts:
            sa.count("fragment_duplicates")
            return None
        if p.size + len(frag.plaintext) > MAX_MESSAGE:
            del self._partial[response]
            self._drop(f"reassembled message over {MAX_MESSAGE} octets")
            return None
        p.parts[frag.number] = frag.plaintext
        p.size += len(frag.plaintext)
        if frag.number == 1:
            p.first_type = frag.first_type
        if len(p.parts) < p.total:
            return None
        del self._partial[response]
        sa.count("fragmented_messages")
        sa.log.info("reassembled %s %d from %d fragments (%d octets)", "response" if response else "request",
                    frag.header.message_id, p.total, p.size)
        # the last fragment's header carries the message's flags and IDs, as each fragment does
        return message_from_chain(frag.header, p.first_type, b"".join(p.parts[i] for i in range(1, p.total + 1)))

    def _drop(self, why: str) -> None:
        self.sa.count("fragment_drops")
        self.sa.log.debug("dropped an IKE fragment: %s", why)

    def pending_octets(self) -> int:
        """Plaintext held for unfinished messages (bounded by 2 * MAX_MESSAGE)."""
        return sum(p.size for p in self._partial.values())

