"""RADIUS client core (RFC 2865, 2866, 3579, 2548), sans-I/O: packets, servers, failover, timers.

pyrad encodes and decodes packets against the small dictionary shipped next to this
module; attributes that are raw octets (EAP-Message, State, Class, MS-MPPE keys) are
handled by number, so pyrad's "0x..." string conventions can never rewrite them.

:class:`RadiusClient` owns every outstanding request of the gateway.  It is driven like
the IKE engine::

    handle = client.access_request(AccessRequest(...), now)    # or accounting_request(record, now)
    for data, addr in client.datagrams_to_send(): sock.sendto(data, addr)
    client.receive_datagram(data, addr, now)                   # every datagram from a server
    client.next_timer() -> float | None; client.handle_timer(now)
    while (event := client.next_event()) is not None: ...      # RadiusResult(handle, answer)

Servers are tried in their configured order.  A request is retransmitted unchanged
(same Identifier and authenticator, RFC 5080 2.2.1) after each of ``timeouts`` (2, 4,
8 s: backoff); when they are used up the server is marked dead for ``dead_time`` and
the request is re-encoded for the next server with its own secret.  A dead server is
skipped until its time is over, so the primary is used again after it recovers; when
all are dead they are tried anyway.  A request no server answered ends as
``AnswerKind.TIMEOUT``.  (An EAP conversation moved to another server mid-way carries a
State the new server does not know; it will reject it and the client retries.)

Replies are matched by (server address, Identifier), then verified: the Response
Authenticator and, for Access-* replies, a mandatory Message-Authenticator (RFC 3579
3.2, the BlastRADIUS countermeasure), both compared in constant time by pyrad.  Forged
or stray datagrams are dropped and counted.

MSK (strongSwan's order): MS-MPPE-Recv-Key | MS-MPPE-Send-Key, each decrypted as
RFC 2548 2.4.2-2.4.3 with the Request Authenticator of the Access-Request.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import ipaddress
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyrad import packet as rp
from pyrad.dictionary import Dictionary

from ipsecd.iana import (
    RADIUS_ACCT_PORT,
    RADIUS_AUTH_PORT,
    VENDOR_MICROSOFT,
    AcctStatusType,
    MicrosoftAttr,
    RadiusAttr,
    RadiusCode,
)
from ipsecd.logsafe import safe

DICTIONARY_PATH = Path(__file__).with_name("radius.dictionary")
MAX_ATTR_VALUE = 253  # RFC 2865 5: Length is one octet, including type and length
MAX_EAP_MESSAGE = 4096  # RFC 3579 2.1 allows more; a reassembled EAP-TLS flight is fragmented before this
DEFAULT_TIMEOUTS = (2.0, 4.0, 8.0)
DEFAULT_DEAD_TIME = 60.0
MAX_OUTSTANDING = 256  # one Identifier space per server port

Address = tuple[str, int]


@dataclass(frozen=True)
class RadiusServer:
    host: str
    secret: bytes = field(repr=False)
    auth_port: int = RADIUS_AUTH_PORT
    acct_port: int = RADIUS_ACCT_PORT


@dataclass(frozen=True)
class RadiusSettings:
    nas_identifier: str = "ipsecd"
    nas_ip: str | None = None  # NAS-IP-Address / NAS-IPv6-Address
    timeouts: tuple[float, ...] = DEFAULT_TIMEOUTS  # one entry per try on a server
    dead_time: float = DEFAULT_DEAD_TIME


@dataclass(frozen=True)
class AccessRequest:
    """What an EAP-RADIUS relay asks the server: the Pending request of its steps."""

    user_name: bytes
    eap_message: bytes
    state: bytes | None = None
    calling_station_id: str = ""  # the client's outer address, e.g. "198.51.100.7[4500]"
    called_station_id: str = ""  # the gateway's


class AnswerKind(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class RadiusAnswer:
    """A verified Access-* reply, decoded; TIMEOUT when no server answered."""

    kind: AnswerKind
    eap_message: bytes = b""
    state: bytes | None = None
    msk: bytes = field(default=b"", repr=False)
    framed_ip: str | None = None
    classes: tuple[bytes, ...] = ()  # Class attributes, to echo in accounting (RFC 2865 5.25)
    session_timeout: int | None = None
    reply_message: str = ""
    server: str = ""


@dataclass(frozen=True)
class AccountingRecord:
    """One Accounting-Request (RFC 2866): Start, Interim-Update or Stop of an IKE SA's session."""

    status: AcctStatusType
    session_id: str
    user_name: bytes
    framed_ip: str | None = None
    classes: tuple[bytes, ...] = ()
    calling_station_id: str = ""
    called_station_id: str = ""
    input_octets: int = 0
    output_octets: int = 0
    input_packets: int = 0
    output_packets: int = 0
    session_time: int = 0
    terminate_cause: int | None = None


@dataclass(frozen=True)
class RadiusResult:
    """Event: request ``handle`` is answered (for accounting, ``answer.kind`` ACCEPT means acknowledged)."""

    handle: int
    answer: RadiusAnswer


@dataclass
class _Txn:
    handle: int
    payload: AccessRequest | AccountingRecord
    tried: set[int] = field(default_factory=set)
    server: int = -1
    identifier: int = -1
    tries: int = 0
    deadline: float = 0.0
    raw: bytes = b""
    authenticator: bytes = b""
    request: rp.Packet | None = None

    @property
    def accounting(self) -> bool:
        return isinstance(self.payload, AccountingRecord)


@dataclass
class RadiusCounters:
    sent: int = 0
    retransmitted: int = 0
    failovers: int = 0
    timeouts: int = 0
    dropped: int = 0  # unmatched, unverifiable or undecodable datagrams


def _split(data: bytes) -> list[bytes]:
    return [data[i:i + MAX_ATTR_VALUE] for i in range(0, len(data), MAX_ATTR_VALUE)] or [b""]


def decrypt_mppe_key(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes | None:
    """RFC 2548 2.4.2: Salt(2) | C; p(i) = c(i) xor MD5(S + c(i-1)), c(0) = R + A; first octet = key length."""
    if len(value) < 2 + 16 or (len(value) - 2) % 16:
        return None
    salt, cipher = value[:2], value[2:]
    if not salt[0] & 0x80:  # RFC 2548: the most significant bit of the Salt MUST be set
        return None
    plain = b""
    prev = request_authenticator + salt
    for off in range(0, len(cipher), 16):
        block = cipher[off:off + 16]
        pad = hashlib.md5(secret + prev).digest()
        plain += bytes(a ^ b for a, b in zip(block, pad, strict=True))
        prev = block
    key_len = plain[0]
    if key_len == 0 or key_len > len(plain) - 1:
        return None
    return plain[1:1 + key_len]


class RadiusClient:
    """Every outstanding RADIUS request of the gateway; see the module docstring for the drive loop."""

    def __init__(self, servers: Sequence[RadiusServer], settings: RadiusSettings | None = None, *,
                 rng: Callable[[int], bytes] = os.urandom, dictionary: Dictionary | None = None) -> None:
        if not servers:
            raise ValueError("RadiusClient needs at least one server")
        self.servers = list(servers)
        self.settings = settings or RadiusSettings()
        self.counters = RadiusCounters()
        self._rng = rng
        self._dict = dictionary or Dictionary(str(DICTIONARY_PATH))
        self._dead_until = [0.0] * len(self.servers)
        self._txns: dict[int, _Txn] = {}
        self._by_wire: dict[tuple[Address, int], int] = {}  # (server addr, Identifier) -> handle
        self._next_id: dict[Address, int] = {}
        self._waiting: deque[int] = deque()  # handles with no free Identifier yet
        self._timers: list[tuple[float, int, int]] = []  # (deadline, handle, tries) heap, lazily pruned
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[RadiusResult] = deque()
        self._handles = 0

    # ------------------------------------------------------------ requests
    def access_request(self, request: AccessRequest, now: float) -> int:
        if len(request.eap_message) > MAX_EAP_MESSAGE:
            raise ValueError(f"EAP-Message of {len(request.eap_message)} octets exceeds {MAX_EAP_MESSAGE}")
        return self._submit(request, now)

    def accounting_request(self, record: AccountingRecord, now: float) -> int:
        return self._submit(record, now)

    def _submit(self, payload: AccessRequest | AccountingRecord, now: float) -> int:
        self._handles += 1
        txn = _Txn(self._handles, payload)
        self._txns[txn.handle] = txn
        self._send_to_next_server(txn, now)
        return txn.handle

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> RadiusResult | None:
        return self._events.popleft() if self._events else None

    @property
    def outstanding(self) -> int:
        return len(self._txns)

    # ------------------------------------------------------------ server choice and encoding
    def _address(self, txn: _Txn, index: int) -> Address:
        server = self.servers[index]
        return server.host, server.acct_port if txn.accounting else server.auth_port

    def _pick_server(self, txn: _Txn, now: float) -> int | None:
        untried = [i for i in range(len(self.servers)) if i not in txn.tried]
        alive = [i for i in untried if self._dead_until[i] <= now]
        choice = alive or untried  # all dead: try them anyway, in order
        return choice[0] if choice else None

    def _send_to_next_server(self, txn: _Txn, now: float) -> None:
        index = self._pick_server(txn, now)
        if index is None:
            self.counters.timeouts += 1
            self._complete(txn, RadiusAnswer(AnswerKind.TIMEOUT), now)
            return
        if txn.server >= 0:
            self.counters.failovers += 1
        txn.server, txn.tries = index, 0
        txn.tried.add(index)
        addr = self._address(txn, index)
        identifier = self._free_identifier(addr)
        if identifier is None:
            txn.tried.discard(index)
            txn.server = -1
            self._waiting.append(txn.handle)
            return
        txn.identifier = identifier
        self._by_wire[(addr, identifier)] = txn.handle
        txn.request = self._encode(txn, self.servers[index], identifier)
        txn.raw = txn.request.RequestPacket()
        txn.authenticator = txn.request.authenticator
        self._transmit(txn, now)

    def _free_identifier(self, addr: Address) -> int | None:
        start = self._next_id.get(addr, self._rng(1)[0])
        for step in range(MAX_OUTSTANDING):
            candidate = (start + step) & 0xFF
            if (addr, candidate) not in self._by_wire:
                self._next_id[addr] = (candidate + 1) & 0xFF
                return candidate
        return None

    def _transmit(self, txn: _Txn, now: float) -> None:
        self._out.append((txn.raw, self._address(txn, txn.server)))
        self.counters.sent += 1
        txn.deadline = now + self.settings.timeouts[txn.tries]
        heapq.heappush(self._timers, (txn.deadline, txn.handle, txn.tries))

    def _encode(self, txn: _Txn, server: RadiusServer, identifier: int) -> rp.Packet:
        s = self.settings
        if isinstance(txn.payload, AccessRequest):
            req = txn.payload
            pkt: rp.Packet = rp.AuthPacket(code=RadiusCode.ACCESS_REQUEST, id=identifier, secret=server.secret,
                                           dict=self._dict, authenticator=self._rng(16))
            pkt.add_message_authenticator()  # RFC 3579 3.2, first attribute (BlastRADIUS)
            pkt["User-Name"] = req.user_name[:MAX_ATTR_VALUE]
            pkt["Service-Type"] = "Framed-User"
            # raw octets are set by number (pkt[code] = [values]): never reinterpreted by pyrad
            pkt[int(RadiusAttr.EAP_MESSAGE)] = _split(req.eap_message)  # RFC 3579 3.1: consecutive, in order
            if req.state is not None:
                pkt[int(RadiusAttr.STATE)] = [req.state]
            calling, called = req.calling_station_id, req.called_station_id
        else:
            rec = txn.payload
            pkt = rp.AcctPacket(code=RadiusCode.ACCOUNTING_REQUEST, id=identifier, secret=server.secret,
                                dict=self._dict)
            pkt["Acct-Status-Type"] = int(rec.status)
            pkt["Acct-Session-Id"] = rec.session_id
            pkt["User-Name"] = rec.user_name[:MAX_ATTR_VALUE]
            pkt["Acct-Authentic"] = "RADIUS"
            if rec.framed_ip:
                name = "Framed-IP-Address" if ipaddress.ip_address(rec.framed_ip).version == 4 else \
                    "Framed-IPv6-Address"
                pkt[name] = rec.framed_ip
            if rec.classes:
                pkt[int(RadiusAttr.CLASS)] = list(rec.classes)
            if rec.status != AcctStatusType.START:
                for attr, count in (("Input", rec.input_octets), ("Output", rec.output_octets)):
                    pkt[f"Acct-{attr}-Octets"] = count & 0xFFFFFFFF
                    pkt[f"Acct-{attr}-Gigawords"] = count >> 32  # RFC 2869 5.1
                pkt["Acct-Input-Packets"] = rec.input_packets & 0xFFFFFFFF
                pkt["Acct-Output-Packets"] = rec.output_packets & 0xFFFFFFFF
                pkt["Acct-Session-Time"] = rec.session_time
            if rec.terminate_cause is not None:
                pkt["Acct-Terminate-Cause"] = int(rec.terminate_cause)
            calling, called = rec.calling_station_id, rec.called_station_id
        pkt["NAS-Identifier"] = s.nas_identifier
        pkt["NAS-Port-Type"] = "Virtual"
        if s.nas_ip:
            pkt["NAS-IP-Address" if ipaddress.ip_address(s.nas_ip).version == 4 else "NAS-IPv6-Address"] = s.nas_ip
        if calling:
            pkt["Calling-Station-Id"] = calling
        if called:
            pkt["Called-Station-Id"] = called
        return pkt

    # ------------------------------------------------------------ timers
    def next_timer(self) -> float | None:
        while self._timers:
            deadline, handle, tries = self._timers[0]
            txn = self._txns.get(handle)
            if txn is not None and txn.tries == tries and txn.deadline == deadline:
                return deadline
            heapq.heappop(self._timers)  # stale: answered, retransmitted or moved on
        return None

    def handle_timer(self, now: float) -> None:
        while (deadline := self.next_timer()) is not None and deadline <= now:
            _, handle, _ = heapq.heappop(self._timers)
            txn = self._txns[handle]
            txn.tries += 1
            if txn.tries < len(self.settings.timeouts):
                self.counters.retransmitted += 1
                self._transmit(txn, now)
                continue
            self._dead_until[txn.server] = now + self.settings.dead_time
            self._release(txn)
            self._send_to_next_server(txn, now)

    # ------------------------------------------------------------ replies
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) < 20:
            self.counters.dropped += 1
            return
        host, port = addr[0], addr[1]
        handle = self._by_wire.get(((host, port), data[1]))
        txn = self._txns.get(handle) if handle is not None else None
        if txn is None or txn.request is None:
            self.counters.dropped += 1
            return
        try:
            reply = txn.request.CreateReply(packet=bytes(data))
            ok = txn.request.VerifyReply(reply, bytes(data), enforce_ma=not txn.accounting)
        except Exception:  # pyrad raises PacketError, KeyError, struct.error...: all mean a bad packet
            ok = False
        if not ok:
            self.counters.dropped += 1  # forged, or for another secret: keep waiting (RFC 2865 3)
            return
        self._dead_until[txn.server] = 0.0
        self._release(txn)
        self._complete(txn, self._answer(txn, reply), now)

    def _answer(self, txn: _Txn, reply: rp.Packet) -> RadiusAnswer:
        server = self.servers[txn.server]
        name = f"{server.host}:{self._address(txn, txn.server)[1]}"
        code = reply.code
        if txn.accounting:
            kind = AnswerKind.ACCEPT if code == RadiusCode.ACCOUNTING_RESPONSE else AnswerKind.REJECT
            return RadiusAnswer(kind, server=name)
        kinds = {RadiusCode.ACCESS_ACCEPT: AnswerKind.ACCEPT, RadiusCode.ACCESS_REJECT: AnswerKind.REJECT,
                 RadiusCode.ACCESS_CHALLENGE: AnswerKind.CHALLENGE}
        kind = kinds.get(code, AnswerKind.REJECT)

        def raw(key: int | tuple[int, int]) -> list[bytes]:
            return list(reply.get(key, []))

        states = raw(int(RadiusAttr.STATE))
        msk = b""
        if kind == AnswerKind.ACCEPT:
            recv = raw((VENDOR_MICROSOFT, int(MicrosoftAttr.MS_MPPE_RECV_KEY)))
            send = raw((VENDOR_MICROSOFT, int(MicrosoftAttr.MS_MPPE_SEND_KEY)))
            if recv and send:
                rkey = decrypt_mppe_key(recv[0], server.secret, txn.authenticator)
                skey = decrypt_mppe_key(send[0], server.secret, txn.authenticator)
                if rkey and skey:
                    msk = rkey + skey
        framed = reply.get("Framed-IP-Address") or reply.get("Framed-IPv6-Address")
        timeout = reply.get("Session-Timeout")
        messages = reply.get("Reply-Message") or []
        return RadiusAnswer(
            kind, eap_message=b"".join(raw(int(RadiusAttr.EAP_MESSAGE))), state=states[0] if states else None,
            msk=msk, framed_ip=str(framed[0]) if framed else None, classes=tuple(raw(int(RadiusAttr.CLASS))),
            session_timeout=int(timeout[0]) if timeout else None,
            reply_message=safe(" ".join(m if isinstance(m, str) else m.decode("latin-1") for m in messages), 200),
            server=name)

    # ------------------------------------------------------------ bookkeeping
    def _release(self, txn: _Txn) -> None:
        if txn.server >= 0:
            self._by_wire.pop((self._address(txn, txn.server), txn.identifier), None)
        txn.request = None

    def _complete(self, txn: _Txn, answer: RadiusAnswer, now: float) -> None:
        self._txns.pop(txn.handle, None)
        self._events.append(RadiusResult(txn.handle, answer))
        # an Identifier came free: requests waiting for one go out now
        for _ in range(len(self._waiting)):
            waiting = self._txns.get(self._waiting.popleft())
            if waiting is not None:
                self._send_to_next_server(waiting, now)
