"""The versioned message set between the control process and a data-plane worker.

Transport: a private ``AF_UNIX`` stream socketpair created by the control process; each
message is a frame ``u32 length || pickle(Envelope)``. Pickle is acceptable here because
both ends are the same program and the socket is never reachable by anyone else; even so
the decoder only resolves an allowlist of classes (this module's dataclasses, the ESP
types they carry, ``ipaddress`` and enums), so a confused peer cannot make it import
arbitrary code. Frames above ``MAX_FRAME`` are refused.

Versioning: every envelope carries ``PROTOCOL_VERSION``; the worker's first message is
``Hello`` and the control side refuses a worker of another version (both come from one
installation, so a mismatch means a half-upgraded install, not something to negotiate).
Requests carry an ``id``; the worker answers each with ``Ack`` (or ``Counters``) bearing
the same id. Events have id 0.

Keys travel inside ``SaParams`` over this socket only; ``SaParams.__repr__`` hides them,
so logging a message never prints a key.
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

from ipsecd.esp.sa import SaParams
from ipsecd.esp.spd import Policy

PROTOCOL_VERSION = 2  # 2: InstallTrap / RemoveTrap and the acquire queue
MAX_FRAME = 4 * 1024 * 1024
_LEN = struct.Struct("!I")

Address = IPv4Address | IPv6Address


class ProtocolError(Exception):
    """A frame could not be decoded: wrong version, too large, or not an allowed type."""


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs to know besides its fds (sent once, right after Hello)."""

    tun_name: str
    batch: int = 64  # packets per readiness event before yielding to other fds
    gso: bool = True
    mss_clamp: bool = True
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
    unknown_spi_interval: float = 1.0  # seconds between unknown_spi events for one SPI
    lifetime_check_interval: float = 0.25


@dataclass(frozen=True)
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
class InstallPolicy:
    policy: Policy
    id: int = 0


@dataclass(frozen=True)
class RemovePolicy:
    policy: Policy
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
class GetCounters:
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
    """ESP arrived for an SPI we do not have (IKE may answer INVALID_SPI, RFC 7296 2.21.4)."""

    spi: int
    src: str
    port: int
    count: int


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
    """Synthesised by the control side when the worker process ends unexpectedly."""

    returncode: int | None
    message: str = ""


Message = (
    Configure
    | InstallSa
    | UpdateSaPeer
    | DeleteSa
    | InstallPolicy
    | RemovePolicy
    | InstallTrap
    | RemoveTrap
    | GetCounters
    | SetKeepalive
    | Shutdown
    | Hello
    | Ack
    | Counters
    | Acquire
    | UnknownSpi
    | LifetimeReached
    | WorkerError
)
Event = Acquire | UnknownSpi | LifetimeReached | WorkerError | WorkerExited


@dataclass(frozen=True)
class Envelope:
    version: int
    message: Message


# ------------------------------------------------------------------ framing

_ALLOWED_MODULES = frozenset(
    {
        __name__,
        "ipsecd.esp.sa",
        "ipsecd.esp.spd",
        "ipsecd.iana",
        "ipaddress",
    }
)
_ALLOWED_BUILTINS = frozenset({"frozenset", "set", "dict", "list", "tuple", "int", "str", "bytes", "bool", "float"})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if module in _ALLOWED_MODULES or (module == "builtins" and name in _ALLOWED_BUILTINS):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        if module == "copyreg" and name == "_reconstructor":
            return super().find_class(module, name)  # type: ignore[no-any-return]
        if module == "builtins" and name == "getattr":
            # Python 3.11.0-3.11.3 pickle enum members as getattr(EnumClass, "NAME"): allow only that
            return _enum_member  # type: ignore[return-value]
        raise ProtocolError(f"type {module}.{name} not allowed in a data-plane message")


def _enum_member(cls: object, name: object) -> Enum:
    if not (isinstance(cls, type) and issubclass(cls, Enum) and cls.__module__ in _ALLOWED_MODULES
            and isinstance(name, str) and name in cls.__members__):
        raise ProtocolError(f"getattr({cls!r}, {name!r}) not allowed in a data-plane message")
    return cls.__members__[name]


def encode(message: Message) -> bytes:
    """One frame: length prefix then the pickled envelope."""
    body = pickle.dumps(Envelope(PROTOCOL_VERSION, message), protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    """Decode one frame body (without the length prefix); raises ProtocolError."""
    try:
        env = _Unpickler(io.BytesIO(body)).load()
    except ProtocolError:
        raise
    except Exception as e:  # a corrupt body may raise anything pickle can
        raise ProtocolError(f"undecodable message: {e.__class__.__name__}") from e
    if not isinstance(env, Envelope):
        raise ProtocolError("frame is not an Envelope")
    if env.version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {env.version}, expected {PROTOCOL_VERSION}")
    return env.message


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
