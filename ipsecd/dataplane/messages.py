"""The versioned message set between the control process and a data-plane worker.

Transport: a private ``AF_UNIX`` stream socketpair created by the control process; each
message is a frame ``u32 length || body``. The body is JSON text: ``[version, type name,
field, field, ...]`` with the fields of the message dataclass in declaration order. The
encoding is explicit, derived once at import from the dataclasses' type annotations:

* a frame may only name a message type of ``WIRE_MESSAGES``; nested values are never
  tagged with a type, their type follows from the field's annotation (``SaParams`` for
  ``InstallSa.inbound``...), except the requests inside a ``Batch``, which are tagged with
  a name out of ``BATCH_REQUESTS``. Nothing on the wire names a class or module that the
  decoder would look up, so no frame can make it import or call anything else;
* every value is checked against its annotation while decoding (an ``int`` field takes
  only an integer, an enum only one of its values, ``bytes`` only hex text...), and the
  dataclasses' own checks run (``SaParams`` validates algorithms and key lengths).

Anything else is a ``ProtocolError``, as are frames above ``MAX_FRAME``.

Versioning: every body starts with ``PROTOCOL_VERSION``; the worker's first message is
``Hello`` and the control side refuses a worker of another version (both come from one
installation, so a mismatch means a half-upgraded install, not something to negotiate).
Requests carry an ``id``; the worker answers each with ``Ack`` (or ``Counters``, ``Heard``, ``Totals``) bearing
the same id, a ``Batch`` of requests with one ``BatchAck`` holding their ``Ack`` in order.
Events have no id.

Keys travel inside ``SaParams`` over this socket only; ``SaParams.__repr__`` hides them,
so logging a message never prints a key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from ipsecd.esp.sa import IpsecProto, Mode, SaParams
from ipsecd.esp.spd import Action, Policy, Selector
from ipsecd.iana import EncrId, IntegId

# 3: explicit JSON encoding instead of pickle; Batch/BatchAck; UnknownSpiReport replaces the
#    per-SPI UnknownSpi event; InstallPolicy/RemovePolicy removed
PROTOCOL_VERSION = 8  # 4: SaParams.protocol (ESP/AH) and ipcomp_cpi; 5: SetOwner (several workers); 6: GetHeard;
# 7: Counters.gc (the worker's garbage-collector pauses); 8: InstallSa.tag, GetSaCounters (given SPIs
# only), GetTotals/Totals (per-tag sums for a metrics scrape, with the worker's gc figures)
MAX_FRAME = 4 * 1024 * 1024
_LEN = struct.Struct("!I")

Address = IPv4Address | IPv6Address


class ProtocolError(Exception):
    """A frame could not be decoded: wrong version, too large, or not an allowed type or value."""


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs to know besides its fds (sent once, right after Hello)."""

    tun_name: str
    batch: int = 64  # packets per readiness event before yielding to other fds
    gso: bool = True
    mss_clamp: bool = True
    vnet_hdr: bool = False  # the TUN fd carries virtio-net headers (offload.py)
    icmp_source4: IPv4Address | None = None
    icmp_source6: IPv6Address | None = None
    acquire_interval: float = 1.0  # seconds between acquire events for one reqid
    # Packets that hit a trap before its SA exists wait in a per-reqid queue (RFC 4301 5.1:
    # the SA is negotiated on demand; holding the first packets saves the application a
    # retransmission). Bounded per reqid by count and bytes (the oldest go first), in total by
    # acquire_queue_total bytes, and in time: a packet older than acquire_queue_timeout is dropped.
    acquire_queue_packets: int = 32
    acquire_queue_bytes: int = 64 * 1024
    acquire_queue_total: int = 4 * 1024 * 1024
    acquire_queue_timeout: float = 10.0
    unknown_spi_interval: float = 1.0  # seconds between UnknownSpiReport events
    lifetime_check_interval: float = 0.25


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Byte/packet limits of one Child SA (RFC 4301 4.4.2.1); 0 means no limit."""

    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0


# ------------------------------------------------------------------ control -> worker


@dataclass(frozen=True)
class Configure:
    config: WorkerConfig
    id: int = 0


@dataclass(frozen=True)
class InstallSa:
    """Install a Child SA: the inbound and outbound halves, their reqid and SPD entries.

    ``mtu`` is the largest inner packet the outbound SA can carry within the path MTU;
    ``inbound`` may be None while only the outbound half changes (rekey ordering).
    """

    reqid: int
    inbound: SaParams | None
    outbound: SaParams | None
    policies: tuple[Policy, ...] = ()
    mtu: int = 1400
    lifetime: Lifetime = field(default_factory=Lifetime)
    mss_clamp: int | None = 0  # TCP MSS clamping of SYNs: None off, 0 from the tunnel MTU, N fixed
    # A small integer the IKE side assigns per (connection, child): the worker sums the counters
    # of the reqid's SAs under it, live and removed (GetTotals); 0: none (summed under 0)
    tag: int = 0
    id: int = 0


@dataclass(frozen=True)
class UpdateSaPeer:
    """The peer moved (NAT mapping change, RFC 7296 2.23 / MOBIKE): new outer destination."""

    reqid: int
    remote_addr: Address
    remote_port: int
    local_addr: Address | None = None
    id: int = 0


@dataclass(frozen=True)
class DeleteSa:
    """Remove the outbound SA and policies of ``reqid`` and/or specific inbound SPIs."""

    reqid: int | None = None
    inbound_spis: tuple[int, ...] = ()
    policies: bool = True
    id: int = 0


@dataclass(frozen=True)
class InstallTrap:
    """Install PROTECT policies for ``reqid`` before any SA exists (a trap, RFC 4301 5.1).

    Outbound packets matching them are queued and announced with ``Acquire`` until an
    ``InstallSa`` for the same reqid arrives, which sends the queue. The trap outlives its
    SAs: when the SA is deleted the trap policies stay and the next packet acquires again
    (strongSwan's ``start_action``/``close_action``/``dpd_action = trap``). Installing a trap
    for a reqid that has one replaces its policies.
    """

    reqid: int
    policies: tuple[Policy, ...]
    id: int = 0


@dataclass(frozen=True)
class RemoveTrap:
    """Remove the trap of ``reqid``: its queued packets are dropped (counted), its policies go
    unless a live outbound SA of the reqid still uses them (``DeleteSa`` removes those)."""

    reqid: int
    id: int = 0


@dataclass(frozen=True)
class SetOwner:
    """With several workers (``settings.dataplane.workers``): the SA pair of ``reqid`` lives in
    worker ``owner``, so this worker hands the reqid's packets read from its TUN queue over to
    it (and drops its own outbound SA of the reqid, if it was the owner before a rekey moved
    it). ``owner`` -1: this worker is the owner, or the reqid is gone: forget the hand-over."""

    reqid: int
    owner: int
    id: int = 0


@dataclass(frozen=True)
class GetCounters:
    id: int = 0


@dataclass(frozen=True)
class GetSaCounters:
    """The counters of these Child SAs only (RADIUS accounting of one session, issue 11): the
    i-th outbound SPI is the i-th inbound SPI's partner (same reqid; 0: none). Answered with a
    ``Counters`` whose ``sas`` are the SAs of these that this worker holds, ``drops``/``stats``
    empty. An outbound SPI counts only while it is its reqid's current outbound SA."""

    spis_in: tuple[int, ...]
    spis_out: tuple[int, ...]
    id: int = 0

    def __post_init__(self) -> None:
        if len(self.spis_in) != len(self.spis_out):
            raise ValueError("spis_in and spis_out differ in length")


@dataclass(frozen=True)
class GetTotals:
    """Per-tag sums of every SA's counters, removed SAs included (a metrics scrape, issue 11):
    one walk of the worker's SAs, an answer of O(tags), where GetCounters lists every SA."""

    id: int = 0


@dataclass(frozen=True)
class GetHeard:
    """Which inbound SPIs received a packet since this link's previous GetHeard: DPD's poll
    (RFC 7296 2.4), a reply of the active SPIs only, where GetCounters lists every SA (issue 11)."""

    id: int = 0


@dataclass(frozen=True)
class SetKeepalive:
    """Send a NAT keepalive to ``peer`` every ``interval`` seconds (RFC 3948 2.3); 0 stops."""

    peer: Address
    port: int = 4500
    interval: float = 20.0
    id: int = 0


@dataclass(frozen=True)
class Shutdown:
    id: int = 0


BatchRequest = InstallSa | UpdateSaPeer | DeleteSa | InstallTrap | RemoveTrap | SetKeepalive | SetOwner


@dataclass(frozen=True)
class Batch:
    """Several requests in one frame (a login storm's installs and deletes).

    The worker applies them in order, exactly as if they had come one by one, and answers
    with one ``BatchAck``: whoever waits for a request's Ack knows that it, and every request
    queued before it, is in effect.
    """

    requests: tuple[BatchRequest, ...]


# ------------------------------------------------------------------ worker -> control


@dataclass(frozen=True)
class Hello:
    version: int
    pid: int


@dataclass(frozen=True)
class Ack:
    id: int
    ok: bool = True
    error: str = ""


@dataclass(frozen=True)
class BatchAck:
    acks: tuple[Ack, ...]  # one per request of the Batch, in its order


@dataclass(frozen=True)
class SaCounterSnapshot:
    spi: int
    direction: str  # "in" | "out"
    reqid: int
    bytes: int
    packets: int
    drops: dict[str, int]
    seq: int  # outbound: last sequence number sent; inbound: highest authenticated


@dataclass(frozen=True)
class Counters:
    id: int
    sas: tuple[SaCounterSnapshot, ...]
    drops: dict[str, int]  # every drop of the worker by reason
    stats: dict[str, int]  # non-drop counts: packets/bytes per path, keepalives, GRO/GSO batches
    # the worker's garbage collector: passes, total and longest pause per generation, in
    # microseconds (gcpolicy.figures_to_wire); per worker, never summed
    gc: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TagTotal:
    """The counters summed over every SA installed with one tag since the worker started."""

    tag: int
    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int


@dataclass(frozen=True)
class Totals:
    """The answer to GetTotals: per-tag sums (never decreasing while the worker lives), and the
    worker's drops and statistics as in ``Counters``."""

    id: int
    tags: tuple[TagTotal, ...]
    drops: dict[str, int]
    stats: dict[str, int]
    gc: dict[str, int] = field(default_factory=dict)  # as in Counters: the scrape shows each worker's


@dataclass(frozen=True)
class Heard:
    """The answer to GetHeard: inbound SPIs (ESP and AH) that authenticated a packet since the
    link's previous GetHeard (the first one: since the worker started)."""

    id: int
    spis: tuple[int, ...]


@dataclass(frozen=True)
class Acquire:
    """A packet matched a PROTECT policy whose SA is missing (a trap, RFC 4301 5.1 / 7296 1.3)."""

    reqid: int
    src: Address
    dst: Address
    proto: int
    sport: int | None
    dport: int | None


@dataclass(frozen=True)
class UnknownSpi:
    """One SPI of an UnknownSpiReport: who sent to it, how many packets in the interval."""

    spi: int
    src: str
    port: int
    count: int


@dataclass(frozen=True)
class UnknownSpiReport:
    """ESP arrived for SPIs we do not have (IKE may answer INVALID_SPI, RFC 7296 2.21.4).

    At most one report per ``unknown_spi_interval``, whatever the number of packets or of
    SPIs: a flood of spoofed ESP with fresh SPIs costs one message per interval, not one per
    packet. ``packets`` counts all of them; ``samples`` names the first few distinct SPIs.
    """

    packets: int
    samples: tuple[UnknownSpi, ...]


@dataclass(frozen=True)
class LifetimeReached:
    """A byte/packet/sequence limit was reached; on ``hard`` the worker already removed the SA."""

    reqid: int
    spi: int
    direction: str
    kind: str  # "soft" | "hard"
    what: str  # "bytes" | "packets" | "seq"
    bytes: int
    packets: int


@dataclass(frozen=True)
class WorkerError:
    """Something went wrong that is not about one packet (those are only counted)."""

    message: str
    fatal: bool = False


@dataclass(frozen=True)
class WorkerExited:
    """Synthesised by the control side when the worker process ends unexpectedly (never sent)."""

    returncode: int | None
    message: str = ""


Message = (
    Configure
    | InstallSa
    | UpdateSaPeer
    | DeleteSa
    | InstallTrap
    | RemoveTrap
    | GetCounters
    | GetHeard
    | GetSaCounters
    | GetTotals
    | SetKeepalive
    | SetOwner
    | Shutdown
    | Batch
    | Hello
    | Ack
    | BatchAck
    | Counters
    | Heard
    | Totals
    | Acquire
    | UnknownSpiReport
    | LifetimeReached
    | WorkerError
)
Event = Acquire | UnknownSpiReport | LifetimeReached | WorkerError | WorkerExited

# What a frame may name (its second element), and what a Batch may carry.
WIRE_MESSAGES: tuple[type, ...] = typing.get_args(Message)
BATCH_REQUESTS: tuple[type, ...] = typing.get_args(BatchRequest)


# ------------------------------------------------------------------ encoding

# A field codec: (plain, encode, decode). ``plain`` is the one JSON type the value must have
# when it needs no conversion (int, str, bool): checked inline, no call. Otherwise ``encode``
# turns the value into JSON-able data and ``decode`` checks and converts it back.
_Enc = Callable[[Any], Any]
_Dec = Callable[[Any], Any]
_FieldCodec = tuple[type | None, _Enc | None, _Dec | None]
_ENUMS: tuple[type[Enum], ...] = (EncrId, IntegId, Mode, IpsecProto, Action)


def _bad(what: str, value: object) -> ProtocolError:
    return ProtocolError(f"expected {what}, got {type(value).__name__}")


def _dec_float(v: object) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    raise _bad("a number", v)


def _dec_text(convert: Callable[[str], Any], what: str) -> _Dec:
    """A decoder for values that travel as text: bytes as hex, addresses."""

    def decode(v: object) -> Any:
        if type(v) is not str:
            raise _bad(what, v)
        return convert(v)

    return decode


_dec_bytes = _dec_text(bytes.fromhex, "hex text")
# Addresses repeat across a storm's installs (our own, the peers'): parse each text once
# (bounded; an address object is immutable, so sharing it is safe).
ADDRESS_MEMO = 4096
_dec_address = _dec_text(functools.lru_cache(maxsize=ADDRESS_MEMO)(ip_address), "an IP address")
_dec_v4 = _dec_text(functools.lru_cache(maxsize=ADDRESS_MEMO)(IPv4Address), "an IPv4 address")
_dec_v6 = _dec_text(functools.lru_cache(maxsize=ADDRESS_MEMO)(IPv6Address), "an IPv6 address")


def _dec_counts(v: object) -> dict[str, int]:
    if type(v) is not dict:
        raise _bad("an object", v)
    for k, n in v.items():
        if type(n) is not int:
            raise _bad(f"an integer for {k!r}", n)
    return v


class _Record:
    """Encoder and decoder of one dataclass as the JSON list of its init fields, in order.

    Records whose fields are all plain JSON values (the per-SA counter snapshots, 20,000 of
    them in one Counters at gateway scale) take a path without a Python call per field:
    ``attrgetter`` to encode, one comparison of the value types to check.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.names: tuple[str, ...] = ()
        self.codecs: tuple[_FieldCodec, ...] = ()
        self._types: list[type] | None = None  # the value types when every field is plain
        self._counts: tuple[int, ...] = ()  # indexes of dict[str, int] fields (values still checked)
        self._getter: Callable[[object], Any] | None = None
        # Immutable records that repeat across installs (a connection's selectors, its
        # lifetime) are decoded to one shared object: every Child SA holds them two or
        # three times over (SAs, policies), ~100 bytes a copy (issue 11). Bounded.
        self._memo: dict[object, object] | None = {} if cls in _SHARED_RECORDS else None

    def build(self, codec_for: Callable[[object], _FieldCodec]) -> None:
        hints = typing.get_type_hints(self.cls)
        self.names = tuple(f.name for f in dataclasses.fields(self.cls) if f.init)
        self.codecs = tuple(codec_for(hints[name]) for name in self.names)
        if len(self.names) > 1 and all(enc is None for _p, enc, _d in self.codecs):
            self._getter = operator.attrgetter(*self.names)
            self._types = [dict if dec is _dec_counts else plain for plain, _e, dec in self.codecs]  # type: ignore[misc]
            self._counts = tuple(i for i, (_p, _e, dec) in enumerate(self.codecs) if dec is _dec_counts)

    def encode(self, obj: object) -> Any:
        if self._getter is not None:
            return self._getter(obj)  # a tuple: JSON writes it as a list
        out: list[Any] = []
        for name, (_plain, enc, _dec) in zip(self.names, self.codecs, strict=True):
            v = getattr(obj, name)
            out.append(v if enc is None else enc(v))
        return out

    def decode(self, data: object) -> Any:
        if type(data) is not list or len(data) != len(self.names):
            raise ProtocolError(f"{self.cls.__name__}: expected {len(self.names)} fields")
        if self._types is not None and list(map(type, data)) == self._types:
            for i in self._counts:
                _dec_counts(data[i])
            args = data
        else:
            args = []
            for (plain, _enc, dec), v in zip(self.codecs, data, strict=True):
                if plain is not None:
                    if type(v) is not plain:
                        raise _bad(plain.__name__, v)
                elif dec is not None:
                    v = dec(v)
                args.append(v)
        try:
            obj = self.cls(*args)
        except Exception as e:  # the dataclass's own checks (SaParams: LocalProtocolError, Selector: ValueError)
            raise ProtocolError(f"{self.cls.__name__}: {e}") from e
        memo = self._memo
        if memo is None:
            return obj
        if len(memo) >= SHARED_RECORD_MEMO:
            memo.clear()
        return memo.setdefault(obj, obj)


class _Codec:
    """Field codecs derived from type annotations, for a closed set of records and enums."""

    def __init__(self, messages: tuple[type, ...], records: tuple[type, ...]) -> None:
        self.records = {cls: _Record(cls) for cls in (*messages, *records)}
        self.by_name = {cls.__name__: self.records[cls] for cls in messages}
        for rec in self.records.values():
            rec.build(self.field_codec)

    def field_codec(self, hint: object) -> _FieldCodec:
        if hint in (int, str, bool):
            return (hint, None, None)  # type: ignore[return-value]
        if hint is float:
            return (None, None, _dec_float)
        if hint is bytes:
            return (None, bytes.hex, _dec_bytes)
        if hint is IPv4Address:
            return (None, str, _dec_v4)
        if hint is IPv6Address:
            return (None, str, _dec_v6)
        if isinstance(hint, type) and hint in _ENUMS:
            return (None, _enum_value, _enum_decoder(hint))
        if isinstance(hint, type) and hint in self.records:
            rec = self.records[hint]
            return (None, rec.encode, rec.decode)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return self._sequence(self.field_codec(args[0]))
        if origin is dict and args == (str, int):
            return (None, None, _dec_counts)
        if origin in (typing.Union, types.UnionType):
            return self._union(args)
        raise TypeError(f"no wire form for {hint!r}")

    def _sequence(self, item: _FieldCodec) -> _FieldCodec:
        plain, enc, dec = item

        def encode(seq: tuple[Any, ...]) -> list[Any]:
            return list(seq) if enc is None else [enc(x) for x in seq]

        def decode(data: object) -> tuple[Any, ...]:
            if type(data) is not list:
                raise _bad("a list", data)
            if plain is not None:
                for x in data:
                    if type(x) is not plain:
                        raise _bad(plain.__name__, x)
                return tuple(data)
            return tuple(data) if dec is None else tuple(dec(x) for x in data)

        return (None, encode, decode)

    def _union(self, args: tuple[Any, ...]) -> _FieldCodec:
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) < len(args):  # X | None
            plain, enc, dec = self.field_codec(rest[0] if len(rest) == 1 else typing.Union[rest])

            def enc_opt(v: Any) -> Any:
                return v if v is None or enc is None else enc(v)

            def dec_opt(v: Any) -> Any:
                if v is None:
                    return None
                if plain is not None:
                    if type(v) is not plain:
                        raise _bad(plain.__name__, v)
                    return v
                return v if dec is None else dec(v)

            return (None, enc_opt, dec_opt)
        if set(rest) == {IPv4Address, IPv6Address}:
            return (None, str, _dec_address)
        if all(a in self.records for a in rest):  # tagged: [type name, fields...]
            allowed = {a.__name__: self.records[a] for a in rest}

            def enc_tagged(v: Any) -> list[Any]:
                return [type(v).__name__, *self.records[type(v)].encode(v)]

            def dec_tagged(v: Any) -> Any:
                if type(v) is not list or not v or type(v[0]) is not str:
                    raise _bad("a tagged record", v)
                rec = allowed.get(v[0])
                if rec is None:
                    raise ProtocolError(f"type {v[0]!r} not allowed here")
                return rec.decode(v[1:])

            return (None, enc_tagged, dec_tagged)
        raise TypeError(f"no wire form for the union {args!r}")


def _enum_value(v: Enum) -> Any:
    return v.value


def _enum_decoder(cls: type[Enum]) -> _Dec:
    def decode(v: object) -> Enum:
        if type(v) not in (int, str):
            raise _bad(cls.__name__, v)
        try:
            return cls(v)
        except ValueError:
            raise ProtocolError(f"{v!r} is not a {cls.__name__}") from None

    return decode


_SHARED_RECORDS = (Lifetime, Selector)
SHARED_RECORD_MEMO = 4096
_CODEC = _Codec(WIRE_MESSAGES, (WorkerConfig, Lifetime, SaParams, Selector, Policy, SaCounterSnapshot, TagTotal,
                                          UnknownSpi))


def _reject_constant(name: str) -> None:
    raise ProtocolError(f"{name} is not allowed")


def encode(message: Message) -> bytes:
    """One frame: length prefix then ``[version, type name, fields...]`` as JSON."""
    rec = _CODEC.by_name.get(type(message).__name__)
    if rec is None or rec.cls is not type(message):
        raise ProtocolError(f"{type(message).__name__} is not a wire message")
    body = json.dumps([PROTOCOL_VERSION, rec.cls.__name__, *rec.encode(message)],
                      separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    """Decode one frame body (without the length prefix); raises ProtocolError."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except Exception as e:  # not UTF-8, not JSON, nested too deep, an integer too long...
        raise ProtocolError(f"undecodable message: {e.__class__.__name__}") from e
    if type(data) is not list or len(data) < 2 or type(data[0]) is not int or type(data[1]) is not str:
        raise ProtocolError("frame is not [version, type, fields...]")
    if data[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {data[0]}, expected {PROTOCOL_VERSION}")
    rec = _CODEC.by_name.get(data[1])
    if rec is None:
        raise ProtocolError(f"message type {data[1][:40]!r} not allowed")
    try:
        return rec.decode(data[2:])  # type: ignore[no-any-return]
    except ProtocolError:
        raise
    except Exception as e:  # a field decoder's own refusal: ip_address, bytes.fromhex, an enum...
        raise ProtocolError(f"{data[1]}: {type(e).__name__}: {e}") from e


@dataclass
class FrameDecoder:
    """Sans-I/O reassembly of frames from a byte stream: ``feed`` bytes, get messages."""

    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        while len(buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(buf)
            if n > MAX_FRAME:
                raise ProtocolError(f"frame of {n} bytes exceeds {MAX_FRAME}")
            if len(buf) < _LEN.size + n:
                break
            body = bytes(buf[_LEN.size : _LEN.size + n])
            del buf[: _LEN.size + n]
            out.append(decode_body(body))
        return out
