"""IKE_SA_INIT flood generator for tests and ``make bench`` (issue 13): what a cheap attacker sends.

    python -m tests.flood --target 192.0.2.2 --rate 20000 --seconds 10 [--mode MODE] [--json FILE]

Run it inside a test namespace (it needs CAP_NET_RAW there); it never sends outside
the namespace it runs in. Modes:

* ``spoofed`` (default): well-formed IKE_SA_INIT requests (AES-GCM-256, PRF-SHA256,
  ECP-256 with a valid public value, a fresh nonce and SPI) from random source
  addresses in ``--spoof`` (198.18.0.0/15, RFC 2544's benchmark range) via a raw
  socket. The responder cannot answer them usefully, nor tell them from real ones
  by anything but volume.
* ``big``: the same, padded to about 60 KB, sent as IPv4 fragments: 255 proposals of
  24 transforms each (``--big proposals``) or thousands of Vendor ID payloads
  (``--big vendor-ids``). Parsing cost and reassembly memory are what it attacks.
* ``cookies``: one real address (``--source``, a normal UDP socket) that does what a
  real client does on a COOKIE notify (RFC 7296 2.6): it sends the request again
  with the cookie, and then keeps replaying that cookie-bearing request. Cookies
  alone cannot stop it; a per-source half-open limit must.

Valid public values: a pool of ``--keys`` ECP-256 key pairs is made at start (making
one per packet would cap the rate at a few thousand per second); each packet takes
one, with its own random SPI and nonce. The achieved rate is measured and reported,
never assumed: a Python sender competes for the same two CPUs as the daemon under
test (see /work/shared/notes/measuring-under-load.md), so always quote it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Network, ip_address, ip_network

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ipsecd.iana import (
    IKE_HEADER_LEN,
    IKE_PORT,
    IKE_VERSION,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IntegId,
    IpProto,
    KeId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttr,
    TransformType,
)

MODES = ("spoofed", "big", "cookies")
BIG_KINDS = ("proposals", "vendor-ids")
DEFAULT_SPOOF = "198.18.0.0/15"
IPPROTO_UDP = IpProto.UDP
IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")
FRAGMENT_DATA = 1480  # per IPv4 fragment on a 1500-byte MTU, a multiple of 8
MAX_PROPOSALS, MAX_TRANSFORMS = 255, 24
VENDOR_IDS = 2400  # 24 bytes each: a 58 KB request
ATTR_TV = 0x8000  # RFC 7296 3.3.5: attribute in type/value form


# --------------------------------------------------------------------------- IKE_SA_INIT by hand
def _generic(next_type: int, body: bytes) -> bytes:
    return struct.pack("!BBH", next_type, 0, 4 + len(body)) + body


def _transform(last: bool, ttype: int, tid: int, key_bits: int | None = None) -> bytes:
    attrs = struct.pack("!HH", ATTR_TV | TransformAttr.KEY_LENGTH, key_bits) if key_bits else b""
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), ttype, 0, tid) + attrs


def _proposal(num: int, last: bool, transforms: list[bytes]) -> bytes:
    body = b"".join(transforms)
    return struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(body), num, ProtocolId.IKE, 0, len(transforms)) + body


def _good_transforms() -> list[tuple[int, int, int | None]]:
    return [(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256), (TransformType.PRF, PrfId.PRF_HMAC_SHA2_256, None),
            (TransformType.KE, KeId.ECP_256, None)]


def sa_body(proposals: int = 1, transforms: int = 3) -> bytes:
    """An SA payload body: ``proposals`` proposals, the last one acceptable (AES-GCM-256/SHA256/ECP-256).

    The others carry ``transforms`` transforms each, legacy ones nobody should accept
    (3DES, HMAC-SHA1, MODP-1024, 8 bytes each without attributes): work for the parser
    and the proposal matcher only. 255 x 24 of them make a 50 KB SA payload.
    """
    junk = [(TransformType.ENCR, EncrId.ENCR_3DES, None), (TransformType.INTEG, IntegId.AUTH_HMAC_SHA1_96, None),
            (TransformType.PRF, PrfId.PRF_HMAC_SHA1, None), (TransformType.KE, KeId.MODP_1024, None)]
    out = []
    for n in range(1, proposals):
        ts = [junk[i % len(junk)] for i in range(transforms)]
        out.append(_proposal(n, False, [_transform(i == len(ts) - 1, *t) for i, t in enumerate(ts)]))
    good = _good_transforms()
    out.append(_proposal(proposals, True, [_transform(i == len(good) - 1, *t) for i, t in enumerate(good)]))
    return b"".join(out)


@dataclass(frozen=True)
class Template:
    """One IKE_SA_INIT request with known offsets, so a packet costs three slice writes."""

    data: bytes
    ke_offset: int  # the 64-byte ECP-256 public value (x || y, RFC 5903 7)
    nonce_offset: int
    nonce_len: int


def build_init(*, proposals: int = 1, transforms: int = 3, vendor_ids: int = 0, cookie: bytes = b"",
               nonce_len: int = 32) -> Template:
    """An IKE_SA_INIT request (SPIi zero, KE and nonce zero): fill them per packet with ``stamp``."""
    parts: list[tuple[int, bytes]] = []  # (payload type, body)
    if cookie:  # RFC 7296 2.6: the COOKIE notify comes first
        parts.append((PayloadType.NOTIFY, struct.pack("!BBH", 0, 0, NotifyType.COOKIE) + cookie))
    parts.append((PayloadType.SA, sa_body(proposals, transforms)))
    parts.append((PayloadType.KE, struct.pack("!HH", KeId.ECP_256, 0) + bytes(64)))
    parts.append((PayloadType.NONCE, bytes(nonce_len)))
    for i in range(vendor_ids):
        parts.append((PayloadType.VENDOR_ID, struct.pack("!I", i) + b"flood-vendor-id!"))
    chain = b""
    offsets = []
    for i, (_, body) in enumerate(parts):
        nxt = parts[i + 1][0] if i + 1 < len(parts) else PayloadType.NO_NEXT_PAYLOAD
        offsets.append(IKE_HEADER_LEN + len(chain) + 4)
        chain += _generic(nxt, body)
    first = parts[0][0]
    total = IKE_HEADER_LEN + len(chain)
    header = bytes(16) + bytes((first, IKE_VERSION, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR)) + \
        struct.pack("!II", 0, total)
    ke_index = next(i for i, (t, _) in enumerate(parts) if t == PayloadType.KE)
    nonce_index = ke_index + 1
    return Template(header + chain, offsets[ke_index] + 4, offsets[nonce_index], nonce_len)


def public_values(n: int) -> list[bytes]:
    """``n`` valid ECP-256 public values as the KE payload carries them (x || y)."""
    out = []
    for _ in range(n):
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        out.append(point[1:])  # RFC 5903 7: no 0x04 prefix
    return out


def stamp(t: Template, spi: bytes, public: bytes, nonce: bytes) -> bytearray:
    """The template with this packet's SPIi, public value and nonce."""
    msg = bytearray(t.data)
    msg[0:8] = spi
    msg[t.ke_offset:t.ke_offset + 64] = public
    msg[t.nonce_offset:t.nonce_offset + t.nonce_len] = nonce
    return msg


# --------------------------------------------------------------------------- raw IPv4/UDP
def ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | bytearray,
             ident: int) -> list[bytes]:
    """IPv4 packet(s) for a UDP datagram; fragmented (RFC 791) when it exceeds FRAGMENT_DATA.

    The UDP checksum is 0 (none, RFC 768); the kernel fills in the IP checksum (IP_HDRINCL).
    """
    udp = UDP_HEADER.pack(sport, dport, 8 + len(payload), 0) + bytes(payload)
    if len(udp) <= FRAGMENT_DATA:
        return [IP_HEADER.pack(0x45, 0, 20 + len(udp), ident, 0, 64, IPPROTO_UDP, 0, src, dst) + udp]
    out = []
    for off in range(0, len(udp), FRAGMENT_DATA):
        chunk = udp[off:off + FRAGMENT_DATA]
        more = 0x2000 if off + FRAGMENT_DATA < len(udp) else 0
        out.append(IP_HEADER.pack(0x45, 0, 20 + len(chunk), ident, more | (off // 8), 64, IPPROTO_UDP, 0,
                                  src, dst) + chunk)
    return out


@dataclass
class FloodResult:
    mode: str
    requested_rate: float
    seconds: float = 0.0
    requests: int = 0  # IKE_SA_INIT requests sent (a fragmented one counts once)
    packets: int = 0  # IP packets sent (fragments counted)
    bytes: int = 0
    send_errors: int = 0
    cookies_received: int = 0
    responses_received: int = 0
    request_bytes: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, object]:
        return {**asdict(self), "achieved_rate": round(self.rate)}


class Pacer:
    """Sends in bursts so the average rate is ``rate`` per second (0: as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()

    def wait(self, sent: int) -> None:
        if self.rate <= 0:
            return
        ahead = self.start + sent / self.rate - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)

    def burst(self, most: int) -> int:
        """Requests per burst: ``most``, but no more than a tenth of a second's worth of the rate.

        A whole burst goes out before the pacer waits, so a 256-request burst at 20/s would
        send 256 requests and then sleep 12.8 s: a short low-rate run would overshoot both
        its count and its duration.
        """
        if self.rate <= 0:
            return most
        return max(1, min(most, int(self.rate / 10)))


def _spoofed_sources(net: IPv4Network, rng: random.Random, n: int) -> Iterator[bytes]:
    base, size = int(net.network_address), net.num_addresses
    for _ in range(n):
        yield (base + 1 + rng.randrange(size - 2)).to_bytes(4, "big")


def flood_spoofed(target: str, rate: float, seconds: float, *, spoof: str = DEFAULT_SPOOF, big: str | None = None,
                  keys: int = 64, port: int = IKE_PORT, seed: int | None = None) -> FloodResult:
    """Raw-socket flood of IKE_SA_INIT requests from random sources in ``spoof``."""
    if big == "proposals":
        template = build_init(proposals=MAX_PROPOSALS, transforms=MAX_TRANSFORMS)
    elif big == "vendor-ids":
        template = build_init(vendor_ids=VENDOR_IDS)
    else:
        template = build_init()
    result = FloodResult("big" if big else "spoofed", rate, request_bytes=len(template.data))
    if big:
        result.extra["big"] = big
    rng = random.Random(seed)
    pool = public_values(keys)
    dst = ip_address(target).packed
    net = ip_network(spoof)
    assert isinstance(net, IPv4Network)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    pacer = Pacer(rate)
    end = pacer.start + seconds
    batch = pacer.burst(256)
    with s:
        while time.monotonic() < end:
            randoms = os.urandom(batch * (8 + template.nonce_len))
            sources = list(_spoofed_sources(net, rng, batch))
            for i in range(batch):
                r = randoms[i * (8 + template.nonce_len):(i + 1) * (8 + template.nonce_len)]
                msg = stamp(template, r[:8], pool[i % len(pool)], r[8:])
                for pkt in ipv4_udp(sources[i], dst, 500, port, msg, rng.randrange(1, 65536)):
                    try:
                        s.sendto(pkt, (target, 0))
                        result.packets += 1
                        result.bytes += len(pkt)
                    except OSError:
                        result.send_errors += 1
                result.requests += 1
            pacer.wait(result.requests)
    result.seconds = time.monotonic() - pacer.start
    return result


def flood_cookies(target: str, rate: float, seconds: float, *, source: str, replays: int = 10, keys: int = 16,
                  port: int = IKE_PORT) -> FloodResult:
    """One real address: new requests, answered cookies, and replays of cookie-bearing requests."""
    result = FloodResult("cookies", rate)
    result.extra.update(source=source, replays_per_cookie=replays)
    pool = public_values(keys)
    base = build_init()
    result.request_bytes = len(base.data)
    sent_by_spi: dict[bytes, tuple[bytes, bytes]] = {}  # SPIi -> (public value, nonce) of our request
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.setblocking(False)
    pacer = Pacer(rate)
    end = pacer.start + seconds
    replay: list[bytes] = []
    with s:
        while time.monotonic() < end:
            for _ in range(32):
                spi, nonce = os.urandom(8), os.urandom(base.nonce_len)
                public = pool[result.requests % len(pool)]
                _send(s, bytes(stamp(base, spi, public, nonce)), (target, port), result)
                sent_by_spi[spi] = (public, nonce)
                if replay:  # a cookie-bearing request sent again and again
                    for _ in range(min(replays, 4)):
                        _send(s, replay[result.requests % len(replay)], (target, port), result)
            _drain(s, result, sent_by_spi, replay, (target, port), replays)
            if len(sent_by_spi) > 100_000:
                sent_by_spi.clear()
            pacer.wait(result.requests)
    result.seconds = time.monotonic() - pacer.start
    return result


def _send(s: socket.socket, data: bytes, dest: tuple[str, int], result: FloodResult) -> None:
    try:
        s.sendto(data, dest)
        result.requests += 1
        result.packets += 1
        result.bytes += len(data)
    except BlockingIOError:
        result.send_errors += 1


def _drain(s: socket.socket, result: FloodResult, sent: dict[bytes, tuple[bytes, bytes]], replay: list[bytes],
           dest: tuple[str, int], replays: int) -> None:
    """Read answers; a COOKIE notify gets the request re-sent with the cookie (and kept for replays)."""
    for _ in range(256):
        try:
            data = s.recv(65535)
        except BlockingIOError:
            return
        result.responses_received += 1
        cookie = _cookie_of(data)
        if cookie is None or data[0:8] not in sent:
            continue
        result.cookies_received += 1
        public, nonce = sent.pop(data[0:8])
        with_cookie = bytes(stamp(build_init(cookie=cookie), data[0:8], public, nonce))
        _send(s, with_cookie, dest, result)
        if len(replay) < 64:
            replay.append(with_cookie)
        for _ in range(replays):
            _send(s, with_cookie, dest, result)


def _cookie_of(data: bytes) -> bytes | None:
    """The COOKIE notify data of an IKE_SA_INIT response whose only payload is that notify."""
    if len(data) < IKE_HEADER_LEN + 8 or data[16] != PayloadType.NOTIFY or data[18] != ExchangeType.IKE_SA_INIT:
        return None
    length = struct.unpack_from("!H", data, IKE_HEADER_LEN + 2)[0]
    ntype = struct.unpack_from("!H", data, IKE_HEADER_LEN + 6)[0]
    if ntype != NotifyType.COOKIE or length < 8:
        return None
    return data[IKE_HEADER_LEN + 8: IKE_HEADER_LEN + length]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="responder address (IPv4)")
    p.add_argument("--port", type=int, default=IKE_PORT)
    p.add_argument("--rate", type=float, default=20000, help="requests per second to aim for (0: flat out)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--mode", choices=MODES, default="spoofed")
    p.add_argument("--big", choices=BIG_KINDS, default="proposals", help="what makes a --mode big request ~60 KB")
    p.add_argument("--spoof", default=DEFAULT_SPOOF, help="source prefix for spoofed requests")
    p.add_argument("--source", default=None, help="--mode cookies: the real address to send from")
    p.add_argument("--replays", type=int, default=10, help="--mode cookies: replays of each cookie-bearing request")
    p.add_argument("--keys", type=int, default=64, help="ECP-256 key pairs in the pool")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", default=None, help="write the result here as JSON")
    a = p.parse_args(argv)
    if a.mode == "cookies":
        if not a.source:
            p.error("--mode cookies needs --source")
        res = flood_cookies(a.target, a.rate, a.seconds, source=a.source, replays=a.replays, port=a.port)
    else:
        res = flood_spoofed(a.target, a.rate, a.seconds, spoof=a.spoof, big=a.big if a.mode == "big" else None,
                            keys=a.keys, port=a.port, seed=a.seed)
    out = json.dumps(res.summary())
    print(out, flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
