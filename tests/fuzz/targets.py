"""Fuzz targets: the parsers and state machines a hostile peer can reach, through public APIs only.

Each target is a callable ``target(data: bytes) -> None`` that returns for every input
the code under test handles (a parse error, a silent drop, an error notify) and raises
for a bug: an exception the code should never let out, or one the IKE manager had to
swallow as an internal error. ``seeds()`` builds the starting corpus from real
handshakes at run time, so no key material is ever committed.

The same targets serve three drivers: atheris (coverage-guided, ``make fuzz``, see
tests/fuzz/run.py), the replay of saved crash inputs (tests/fuzz/test_fuzz.py) and
the short smoke of ``make test``.

Input layouts (the first bytes steer, the rest is the payload the fuzzer mutates):

* ``codec``: one datagram for ``decode_message``/``check_message``; decoded messages
  must survive an encode/decode round trip unchanged.
* ``sk``: ``[exchange, flags, first inner payload type, how] + body``. ``how`` < 0x80:
  body is the plaintext payload chain, sealed with the SA's real key, so decryption
  succeeds and the inner payload decoders and exchange rules run; otherwise body is
  the raw SK payload body (IV, ciphertext, ICV) as sent.
* ``responder``: ``[mode, ...]``. Mode 0: the rest is an IKE_SA_INIT request for a
  fresh responder. Modes 1 and 2: ``[exchange, flags, first type, message id] +
  chain``, sealed with the initiator's real key and delivered to the responder after
  IKE_SA_INIT (mode 1) or after IKE_AUTH (mode 2). The responder's answers go back to
  the initiator, so its response handling is exercised too.
* ``esp``: ``[config, seq(4)] + body``; ``config`` picks one of four inbound SAs (AES-GCM
  tunnel on the fast path, AES-CBC/HMAC with ESN, ChaCha20-Poly1305 transport in UDP,
  AES-GCM transport over IPv6 with ESN) and whether the body is sent raw, or encrypted
  with the SA's key by an independent implementation (the ``cryptography`` primitives),
  either as given (trailer included) or with a well-formed trailer appended.
* ``ah``: ``[config | how << 1, seq(4)] + body``; ``config`` picks an AH SA (SHA-256 tunnel
  with IPComp, SHA-512 transport over IPv6 with ESN); the body is the whole packet as
  received, or ``next header || payload`` signed by an independent sender (hashlib's HMAC
  over the RFC 4302 3.3.3 ICV input).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ipsecd.errors import RemoteProtocolError
from ipsecd.esp.ah import AhInboundSa
from ipsecd.esp.packet import build_ipv4_header, build_ipv6_header
from ipsecd.esp.sa import EspDrop, InboundSa, IpsecProto, Mode, SaParams
from ipsecd.esp.spd import Selector
from ipsecd.iana import (
    GENERIC_PAYLOAD_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_VERSION,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IntegId,
    IpProto,
    PayloadType,
)
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import Message, check_message, decode_message, encode_message
from ipsecd.ike.sk import make_sk_ciphers
from tests.ike_pair import A_ADDR, B_ADDR, Pair, make_pair

Target = Callable[[bytes], None]

A = (A_ADDR, 500)
B = (B_ADDR, 500)
HEADER_LEN = IKE_HEADER_LEN  # RFC 7296 3.1
GENERIC_LEN = GENERIC_PAYLOAD_HEADER_LEN  # RFC 7296 3.2


class FuzzBug(AssertionError):
    """The code under test did something that is a bug whatever the input."""


# ----------------------------------------------------------------- helpers
def ike_header(spi_i: bytes, spi_r: bytes, first: int, exchange: int, flags: int, msg_id: int, length: int) -> bytes:
    """The RFC 7296 3.1 fixed header, version 2.0."""
    return spi_i + spi_r + bytes((first, IKE_VERSION, exchange, flags)) + struct.pack("!II", msg_id, length)


def seal(sk_out: object, spi_i: bytes, spi_r: bytes, exchange: int, flags: int, msg_id: int,
         first: int, chain: bytes) -> bytes:
    """An encrypted IKE message around raw payload octets (RFC 7296 3.14): the sender's framing."""
    sealed_len = sk_out.sealed_len(len(chain))  # type: ignore[attr-defined]
    total = HEADER_LEN + GENERIC_LEN + sealed_len
    head = ike_header(spi_i, spi_r, PayloadType.SK, exchange, flags, msg_id, total)
    sk_head = bytes((first, 0)) + struct.pack("!H", GENERIC_LEN + sealed_len)
    return head + sk_head + sk_out.seal(head + sk_head, chain)  # type: ignore[attr-defined]


def unseal(sk_in: object, datagram: bytes) -> tuple[int, bytes] | None:
    """(first inner payload type, plaintext chain) of a message whose only payload is SK."""
    if len(datagram) < HEADER_LEN + GENERIC_LEN or datagram[16] != PayloadType.SK:
        return None
    start = HEADER_LEN + GENERIC_LEN
    return datagram[HEADER_LEN], sk_in.open(datagram[:start], datagram[start:])  # type: ignore[attr-defined]


class SwallowedErrors(logging.Handler):
    """Collects exceptions the IKE manager logs with a traceback instead of raising (its safety net).

    A swallowed exception keeps the daemon up, but it is still a bug: the fuzzer must
    see it. Any record under ``ipsecd`` that carries exc_info counts, whatever the
    engine's counter names are.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.caught: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.caught.append(record.exc_info[1])


@contextlib.contextmanager
def engine_errors(where: str) -> Iterator[None]:
    """Run the body with the ``ipsecd`` logger at DEBUG into a SwallowedErrors; raise FuzzBug for what it caught.

    The logger's level, handlers and propagation are restored afterwards, so the target
    can run inside a test session without changing its logging.
    """
    root = logging.getLogger("ipsecd")
    handler = SwallowedErrors()
    level, propagate = root.level, root.propagate
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    root.propagate = False  # no lastResort printing of every warning while fuzzing
    try:
        yield
        if handler.caught:
            first = handler.caught[0]
            raise FuzzBug(f"{where}: the engine swallowed {type(first).__name__}: {first}") from first
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        root.propagate = propagate


def _check_counters(mgr: IkeManager, where: str) -> None:
    bad = {k: v for k, v in mgr.counters.items() if "internal" in k and v}
    if bad:
        raise FuzzBug(f"{where}: internal errors counted: {bad}")


# ----------------------------------------------------------------- handshake fixtures
def handshake(seed: int = 1, *, until_auth: bool = False) -> Pair:
    """A pair after IKE_SA_INIT (``until_auth``: A's IKE_AUTH request is held back) or fully up."""
    deliver: Callable[[int, bytes, str], bool] = (lambda i, d, tag: i < 2) if until_auth else (lambda i, d, t: True)
    pair = make_pair(seed=seed, deliver=deliver)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(0.0 if until_auth else 20.0)
    return pair


@dataclass(frozen=True)
class SaKeys:
    """What ``ipsecctl export-keys`` reads from an IKE SA: SPIs and the SK ciphers of both ends."""

    spi_i: bytes
    spi_r: bytes
    i_out: object  # initiator -> responder
    r_in: object
    r_out: object  # responder -> initiator
    i_in: object


def sa_keys(mgr: IkeManager) -> SaKeys:
    """SK ciphers of ``mgr``'s (only) IKE SA, seen as the initiator: fresh objects, IVs of their own."""
    (sa,) = [s for s in mgr.list_sas() if s.keys is not None][:1]
    i_out, i_in = make_sk_ciphers(sa.proposal, sa.keys, True)
    r_out, r_in = make_sk_ciphers(sa.proposal, sa.keys, False)
    return SaKeys(sa.spi_i, sa.spi_r, i_out, r_in, r_out, i_in)


def _plain_seed(keys: SaKeys, direction: str, datagram: bytes) -> tuple[int, int, int, int, bytes] | None:
    """(exchange, flags, message id, first type, chain) of a captured encrypted message."""
    if len(datagram) < HEADER_LEN or datagram[16] != PayloadType.SK:
        return None
    sk_in = keys.r_in if direction == "a->b" else keys.i_in
    opened = unseal(sk_in, datagram)
    if opened is None:
        return None
    first, chain = opened
    msg_id = struct.unpack_from("!I", datagram, 20)[0]
    return datagram[18], datagram[19], msg_id, first, chain


def lifecycle() -> tuple[Pair, SaKeys]:
    """A pair taken through every exchange once, and the keys of its first IKE SA.

    IKE_SA_INIT, IKE_AUTH, a Child SA rekey, a liveness check, an IKE SA rekey and the
    Delete of the old IKE SA all travel under the first IKE SA's keys.
    """
    pair = handshake(3)
    keys = sa_keys(pair.a)
    (child,) = [e for e in pair.events_a if getattr(e, "spi_in", None) is not None][:1]
    pair.a.rekey_child(child.spi_in, pair.now)  # type: ignore[attr-defined]
    pair.run_until_quiet(5)
    sa = pair.a.list_sas()[0]
    pair.a.check_liveness(sa.ike_sa_id, pair.now)
    pair.run_until_quiet(5)
    pair.a.rekey_ike(sa.ike_sa_id, pair.now)
    pair.run_until_quiet(5)
    return pair, keys


def plain_messages(pair: Pair, keys: SaKeys) -> Iterator[tuple[str, bytes, tuple[int, int, int, int, bytes]]]:
    """(direction, datagram, (exchange, flags, message id, first type, chain)) of each message ``keys`` open."""
    for direction, d in pair.sent:
        try:
            plain = _plain_seed(keys, direction, d)
        except RemoteProtocolError:  # under another IKE SA's keys
            continue
        if plain is not None:
            yield direction, d, plain


# ----------------------------------------------------------------- codec
def target_codec(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except RemoteProtocolError:
        return
    with contextlib.suppress(RemoteProtocolError):
        check_message(msg)
    if msg.encrypted:
        return
    _round_trip(msg, encode_message(msg), lambda wire: decode_message(wire))


def _round_trip(msg: Message, wire: bytes, decode: Callable[[bytes], Message]) -> None:
    """What the decoder accepted, the encoder writes back, and reading that gives the same message.

    The decoder legitimately drops what it does not know (a proposal of an unknown
    protocol, an unknown transform), so the re-encoded message may be refused (an SA
    left without proposals): that is allowed; a different message is not.
    """
    try:
        again = decode(wire)
    except RemoteProtocolError:
        return
    if again.payloads != msg.payloads or again.exchange != msg.exchange or again.message_id != msg.message_id:
        raise FuzzBug(f"decode(encode(m)) != m\n  m:     {msg}\n  again: {again}")


def seeds_codec() -> Iterator[bytes]:
    pair, keys = lifecycle()
    yield from (d for _, d in pair.sent)
    # the inner payloads of encrypted messages, re-framed as plain messages: the payload
    # decoders behind SK are reached without keys
    for _, d, (exchange, flags, msg_id, first, chain) in plain_messages(pair, keys):
        yield ike_header(d[:8], d[8:16], first, exchange, flags, msg_id, HEADER_LEN + len(chain)) + chain


# ----------------------------------------------------------------- SK
@dataclass
class SkTarget:
    """Decryption and inner payload checks of one real IKE SA (responder's view)."""

    keys: SaKeys = field(default_factory=lambda: sa_keys(handshake(5).b))

    def __call__(self, data: bytes) -> None:
        if len(data) < 4:
            return
        exchange, flags, first, how = data[0], data[1], data[2], data[3]
        body = data[4:]
        k = self.keys
        if how < 0x80:
            datagram = seal(k.i_out, k.spi_i, k.spi_r, exchange, flags, 1, first, body)
        else:
            total = HEADER_LEN + GENERIC_LEN + len(body)
            head = ike_header(k.spi_i, k.spi_r, PayloadType.SK, exchange, flags, 1, total)
            datagram = head + bytes((first, 0)) + struct.pack("!H", (GENERIC_LEN + len(body)) & 0xFFFF) + body
        try:
            msg = decode_message(datagram, k.r_in)  # type: ignore[arg-type]
        except RemoteProtocolError:
            return
        with contextlib.suppress(RemoteProtocolError):
            check_message(msg)
        wire = encode_message(msg, k.r_out)  # type: ignore[arg-type]
        _round_trip(msg, wire, lambda w: decode_message(w, k.i_in))  # type: ignore[arg-type]

    def seeds(self) -> Iterator[bytes]:
        pair, keys = lifecycle()
        for _, _, (exchange, flags, _, first, chain) in plain_messages(pair, keys):
            yield bytes((exchange, flags, first, 0)) + chain
        yield bytes((ExchangeType.INFORMATIONAL, HeaderFlag.INITIATOR, 0, 0x80)) + bytes(40)


# ----------------------------------------------------------------- responder
@dataclass
class ResponderTarget:
    """``IkeManager.receive_datagram`` on the responder with inputs derived from a real handshake."""

    seed: int = 7

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        with engine_errors("responder"):
            self._run(data)

    def _run(self, data: bytes) -> None:
        mode = data[0] % 3
        if mode == 0:
            pair = make_pair(seed=self.seed)
            pair.b.receive_datagram(data[1:], B, A, pair.now)
            self._bounce(pair)
        else:
            if len(data) < 5:
                return
            pair = handshake(self.seed, until_auth=mode == 1)
            k = sa_keys(pair.a)
            exchange, flags, first = data[1], data[2], data[3]
            expected = 1 if mode == 1 else 2  # the next message ID the responder waits for
            msg_id = expected if data[4] == 0 else (expected + data[4] - 128) & 0xFFFFFFFF
            dg = seal(k.i_out, k.spi_i, k.spi_r, exchange, flags, msg_id, first, data[5:])
            pair.b.receive_datagram(dg, B, A, pair.now)
            self._bounce(pair)
            pair.now += 1.0
            pair.b.handle_timer(pair.now)
            pair.a.handle_timer(pair.now)
        _check_counters(pair.b, "responder")
        _check_counters(pair.a, "initiator")

    @staticmethod
    def _bounce(pair: Pair) -> None:
        """Deliver the responder's answers to the initiator (its response handling runs too)."""
        for out, _local, _remote, _id in pair.b.datagrams_to_send():
            if len(out) > 65535:
                raise FuzzBug(f"responder produced a {len(out)}-byte datagram")
            pair.a.receive_datagram(out, A, B, pair.now)
        pair.a.datagrams_to_send()

    def seeds(self) -> Iterator[bytes]:
        init = handshake(self.seed, until_auth=True)
        yield b"\x00" + init.sent[0][1]
        keys = sa_keys(init.a)
        auth = _plain_seed(keys, "a->b", init.sent[2][1])
        if auth is not None:
            exchange, flags, _, first, chain = auth
            yield bytes((1, exchange, flags, first, 0)) + chain
        pair, keys = lifecycle()
        for direction, _, (exchange, flags, _, first, chain) in plain_messages(pair, keys):
            if direction == "a->b" and not flags & HeaderFlag.RESPONSE and exchange != ExchangeType.IKE_AUTH:
                yield bytes((2, exchange, flags, first, 0)) + chain


# ----------------------------------------------------------------- ESP
LOCAL_NET, REMOTE_NET = ip_network("10.1.0.0/24"), ip_network("10.2.0.0/24")
LOCAL6_NET, REMOTE6_NET = ip_network("2001:db8:1::/64"), ip_network("2001:db8:2::/64")
ESP_SPI = 0x0C0FFEE1


def _sel(net: object) -> Selector:
    return Selector(net.network_address, net.broadcast_address)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EspConfig:
    name: str
    encr: EncrId
    encr_key: bytes = field(repr=False)
    integ: IntegId
    integ_key: bytes = field(repr=False)
    esn: bool
    mode: Mode
    v6: bool = False
    encap: bool = False

    def params(self) -> SaParams:
        local, remote = ("2001:db8::1", "2001:db8::2") if self.v6 else ("192.0.2.1", "192.0.2.2")
        lts = (_sel(LOCAL_NET), _sel(LOCAL6_NET))
        rts = (_sel(REMOTE_NET), _sel(REMOTE6_NET))
        if self.mode == Mode.TRANSPORT:
            lts, rts = (_sel(ip_network(local)),), (_sel(ip_network(remote)),)
        return SaParams(ESP_SPI, self.encr, self.encr_key, self.integ, self.integ_key, self.esn, self.mode,
                        ip_address(local), ip_address(remote), encap=self.encap, local_ts=lts, remote_ts=rts,
                        replay_window=64, name=self.name)

    @property
    def block(self) -> int:
        return 16 if self.encr == EncrId.ENCR_AES_CBC else 4

    def encrypt(self, seq: int, plaintext: bytes) -> bytes:
        """ESP packet (from the SPI) for ``plaintext`` (payload, padding, pad length, next header).

        Written from RFC 4303 2, RFC 4106 and RFC 7634 with the ``cryptography``
        primitives, not with ipsecd's transforms: an independent sender. The high half
        of an ESN is 0 (a fresh receiver's window infers that, RFC 4303 A2.2).
        """
        head = struct.pack("!II", ESP_SPI, seq)
        if self.encr in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305):
            key, salt = self.encr_key[:-4], self.encr_key[-4:]
            iv = struct.pack("!Q", seq ^ 0x5A5A)
            aad = struct.pack("!III", ESP_SPI, 0, seq) if self.esn else head
            aead = AESGCM(key) if self.encr == EncrId.ENCR_AES_GCM_16 else ChaCha20Poly1305(key)
            return head + iv + aead.encrypt(salt + iv, plaintext, aad)
        iv = hashlib.sha256(head).digest()[:16]
        if len(plaintext) % 16:
            plaintext += bytes(16 - len(plaintext) % 16)
        enc = Cipher(algorithms.AES(self.encr_key), modes.CBC(iv)).encryptor()
        body = head + iv + enc.update(plaintext) + enc.finalize()
        icv = hmac.new(self.integ_key, body + (struct.pack("!I", 0) if self.esn else b""), "sha256").digest()[:16]
        return body + icv

    def trailer(self, payload: bytes, next_header: int) -> bytes:
        """RFC 4303 2.4: monotonic pad bytes 1, 2, 3 ... to the block size, then pad length and next header."""
        pad = (-(len(payload) + 2)) % self.block
        return payload + bytes(range(1, pad + 1)) + bytes((pad, next_header))


ESP_CONFIGS = (
    EspConfig("gcm-tunnel", EncrId.ENCR_AES_GCM_16, bytes(range(36)), IntegId.NONE, b"", False, Mode.TUNNEL),
    EspConfig("cbc-esn-tunnel", EncrId.ENCR_AES_CBC, bytes(range(32)), IntegId.AUTH_HMAC_SHA2_256_128,
              bytes(range(100, 132)), True, Mode.TUNNEL),
    EspConfig("chacha-transport-udp", EncrId.ENCR_CHACHA20_POLY1305, bytes(range(50, 86)), IntegId.NONE, b"",
              False, Mode.TRANSPORT, encap=True),
    EspConfig("gcm-esn-transport-v6", EncrId.ENCR_AES_GCM_16, bytes(range(7, 43)), IntegId.NONE, b"", True,
              Mode.TRANSPORT, v6=True),
)
RAW, SEALED, SEALED_TRAILER = 0, 1, 2


def target_esp(data: bytes) -> None:
    if len(data) < 6:
        return
    cfg = ESP_CONFIGS[data[0] & 3]
    how = (data[0] >> 2) % 3
    seq = struct.unpack_from("!I", data, 1)[0]
    body = data[5:]
    sa = InboundSa(cfg.params())
    if how == RAW:
        packet = body
    elif how == SEALED:
        packet = cfg.encrypt(seq, body)
    else:
        packet = cfg.encrypt(seq, cfg.trailer(body[1:], body[0]) if body else cfg.trailer(b"", 0))
    try:
        out = sa.unprotect(packet)
    except EspDrop:
        return
    _check_inner(cfg, out)


def _check_inner(cfg: EspConfig, out: bytes) -> None:
    """What unprotect hands to the TUN must be one whole IP packet of the SA's family."""
    if not isinstance(out, bytes) or len(out) < 20:
        raise FuzzBug(f"{cfg.name}: unprotect returned {type(out).__name__} of {len(out)} bytes")
    version = out[0] >> 4
    if version == 4:
        total = struct.unpack_from("!H", out, 2)[0]
    elif version == 6 and len(out) >= 40:
        total = 40 + struct.unpack_from("!H", out, 4)[0]
    else:
        raise FuzzBug(f"{cfg.name}: unprotect returned a packet of IP version {version}, {len(out)} bytes")
    if total != len(out):
        raise FuzzBug(f"{cfg.name}: inner packet says {total} bytes but {len(out)} were returned")


def _esp_payloads(cfg: EspConfig) -> Iterator[tuple[int, bytes]]:
    """(next header, payload) pairs a real peer sends on this SA."""
    udp = struct.pack("!HHHH", 5000, 53, 8 + 12, 0) + b"hello world!"
    icmp = bytes((8, 0, 0, 0, 0, 1, 0, 1)) + b"ping" * 8
    if cfg.mode == Mode.TUNNEL:
        src4, dst4 = ip_address("10.2.0.1").packed, ip_address("10.1.0.1").packed
        yield IpProto.IPV4, build_ipv4_header(src4, dst4, IpProto.ICMP, len(icmp)) + icmp
        yield IpProto.IPV4, build_ipv4_header(src4, dst4, IpProto.UDP, len(udp)) + udp
        src6, dst6 = ip_address("2001:db8:2::1").packed, ip_address("2001:db8:1::1").packed
        yield IpProto.IPV6, build_ipv6_header(src6, dst6, IpProto.UDP, len(udp)) + udp
        yield 59, b""  # RFC 4303 2.6 dummy packet
    else:
        yield IpProto.UDP, udp
        tcp = struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 0x50, 0x02, 65535, 0, 0)
        yield IpProto.TCP, tcp
        yield IpProto.ICMP, icmp


def seeds_esp() -> Iterator[bytes]:
    for index, cfg in enumerate(ESP_CONFIGS):
        for seq, (nh, payload) in enumerate(_esp_payloads(cfg), start=1):
            yield bytes((index | SEALED_TRAILER << 2,)) + struct.pack("!I", seq) + bytes((nh,)) + payload
            yield bytes((index | SEALED << 2,)) + struct.pack("!I", seq) + cfg.trailer(payload, nh)
            yield bytes((index | RAW << 2,)) + struct.pack("!I", seq) + cfg.encrypt(seq, cfg.trailer(payload, nh))


# ----------------------------------------------------------------- AH (and IPComp inside it)
AH_SPI = 0x0AAA0001
AH_CONFIGS = (  # (name, integ, key, ICV length, hash, ESN, mode, IPv6, IPComp CPI)
    ("sha256-tunnel-ipcomp", IntegId.AUTH_HMAC_SHA2_256_128, bytes(range(32)), 16, "sha256", False, Mode.TUNNEL,
     False, 0x1234),
    ("sha512-esn-transport-v6", IntegId.AUTH_HMAC_SHA2_512_256, bytes(range(64)), 32, "sha512", True,
     Mode.TRANSPORT, True, 0),
)


def _ah_params(cfg: tuple) -> SaParams:  # type: ignore[type-arg]
    name, integ, key, _icv, _h, esn, mode, v6, cpi = cfg
    local, remote = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.2")
    lts, rts = (_sel(LOCAL_NET), _sel(LOCAL6_NET)), (_sel(REMOTE_NET), _sel(REMOTE6_NET))
    if mode == Mode.TRANSPORT:
        lts, rts = (_sel(ip_network(local)),), (_sel(ip_network(remote)),)
    return SaParams(AH_SPI, EncrId.ENCR_NULL, b"", integ, key, esn, mode, ip_address(local), ip_address(remote),
                    local_ts=lts, remote_ts=rts, replay_window=64, name=name, protocol=IpsecProto.AH,
                    ipcomp_cpi=cpi)


def ah_packet(cfg: tuple, seq: int, nh: int, payload: bytes) -> bytes:  # type: ignore[type-arg]
    """A complete AH packet from the peer, written from RFC 4302 3.3.3 with hashlib's HMAC (not
    ipsecd's code): mutable header fields zeroed for the ICV, the ICV field zeroed, ESN high half 0."""
    _name, _integ, key, icv_len, hname, esn, _mode, v6, _cpi = cfg
    src, dst = (ip_address("2001:db8::2").packed, ip_address("2001:db8::1").packed) if v6 else (
        ip_address("192.0.2.2").packed, ip_address("192.0.2.1").packed)
    ah_len = -(-(12 + icv_len) // (8 if v6 else 4)) * (8 if v6 else 4)
    fixed = struct.pack("!BBHII", nh, ah_len // 4 - 2, 0, AH_SPI, seq)
    if v6:
        zeroed = struct.pack("!IHBB16s16s", 6 << 28, ah_len + len(payload), 51, 0, src, dst)
        hdr = zeroed[:7] + b"\x40" + zeroed[8:]
    else:
        total = 20 + ah_len + len(payload)
        zeroed = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0, 0, 51, 0, src, dst)
        hdr = zeroed[:8] + b"\x40" + zeroed[9:]  # TTL 64, checksum left 0 (mutable)
    icv = hmac.new(key, zeroed + fixed + bytes(ah_len - 12) + payload + (bytes(4) if esn else b""), hname).digest()
    return hdr + fixed + icv[:icv_len] + bytes(ah_len - 12 - icv_len) + payload


def target_ah(data: bytes) -> None:
    """``[config | how << 1, seq(4)] + body``: body is the whole packet (raw) or ``nh || payload``, signed."""
    if len(data) < 6:
        return
    cfg = AH_CONFIGS[data[0] & 1]
    seq = struct.unpack_from("!I", data, 1)[0]
    body = data[5:]
    sa = AhInboundSa(_ah_params(cfg))
    packet = body if (data[0] >> 1) & 1 == 0 else ah_packet(cfg, seq, body[0], body[1:])
    try:
        out = sa.unprotect(packet)
    except EspDrop:
        return
    _check_inner(EspConfig(cfg[0], EncrId.ENCR_NULL, b"", cfg[1], cfg[2], cfg[5], cfg[6], cfg[7]), out)


def seeds_ah() -> Iterator[bytes]:
    for index, cfg in enumerate(AH_CONFIGS):
        esp_like = EspConfig(cfg[0], EncrId.ENCR_NULL, b"", cfg[1], cfg[2], cfg[5], cfg[6], cfg[7])
        for seq, (nh, payload) in enumerate(_esp_payloads(esp_like), start=1):
            if nh == 59:
                continue
            yield bytes((index | 2,)) + struct.pack("!I", seq) + bytes((nh,)) + payload
            yield bytes((index,)) + struct.pack("!I", seq) + ah_packet(cfg, seq, nh, payload)
            if cfg[8]:  # IPComp inside AH: a compressible inner packet, deflated as a peer would
                inner = payload + b"A" * 400
                if nh == IpProto.IPV4:
                    inner = build_ipv4_header(payload[12:16], payload[16:20], payload[9], len(inner) - 20) + inner[20:]
                comp = struct.pack("!BBH", nh, 0, cfg[8]) + zlib.compress(inner, 9, -15)
                yield bytes((index | 2,)) + struct.pack("!I", seq + 100) + bytes((108,)) + comp


# ----------------------------------------------------------------- registry
@dataclass(frozen=True)
class FuzzTarget:
    name: str
    make: Callable[[], Target]
    seeds: Callable[[Target], Iterator[bytes]]


def _seeds_of(obj: Target) -> Iterator[bytes]:
    return obj.seeds()  # type: ignore[attr-defined, no-any-return]


TARGETS: dict[str, FuzzTarget] = {
    "codec": FuzzTarget("codec", lambda: target_codec, lambda t: seeds_codec()),
    "sk": FuzzTarget("sk", SkTarget, _seeds_of),
    "responder": FuzzTarget("responder", ResponderTarget, _seeds_of),
    "esp": FuzzTarget("esp", lambda: target_esp, lambda t: seeds_esp()),
    "ah": FuzzTarget("ah", lambda: target_ah, lambda t: seeds_ah()),
}
