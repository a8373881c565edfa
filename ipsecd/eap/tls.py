"""EAP-TLS (RFC 5216 with TLS 1.2, RFC 9190 with TLS 1.3), both roles, over pyOpenSSL memory BIOs.

No TLS is written here: OpenSSL runs the handshake on a ``Connection(ctx, None)``;
we move its records in and out with ``bio_write``/``bio_read`` and carry them in
EAP-TLS packets (RFC 5216 3.1)::

    Flags (L M S R R R R R) | [TLS Message Length (4), if L] | TLS data

* Outgoing messages longer than ``fragment_size`` are split: the first fragment
  carries L and the total length, all but the last carry M, and each is acknowledged
  by an empty EAP-TLS packet from the other side before the next is sent.
* Incoming fragments are acknowledged the same way and reassembled up to
  ``max_message`` octets (the declared L length and the running total are both
  bounded), so a peer cannot make us buffer more than that.
* Keys (RFC 5216 2.3 / RFC 9190 2.3): 128 octets from the TLS exporter, MSK = first
  64, EMSK = last 64.  TLS 1.2: label "client EAP encryption", no context (the RFC 5216
  PRF over client.random | server.random).  TLS 1.3: label
  "EXPORTER_EAP_TLS_Key_Material", context = Type-Code 0x0D.
* TLS 1.3 (RFC 9190 2.1.1): after the handshake the server sends the one-octet
  application-data commitment message 0x00; the peer concludes only when it has read
  it.  The peer's final empty response acknowledges the last server flight either way,
  and the server answers it with EAP-Success.

Certificates are ``cryptography`` objects.  Chain validation uses OpenSSL against
``TlsCredentials.trust_anchors``; ``TlsCredentials.verify`` (the hook for the
credential store) then sees the validated chain, leaf first, and may refuse it with a
reason.  The server always requires a client certificate.
"""

from __future__ import annotations

import enum
import struct
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto

from ipsecd.eap.method import AuthenticatorMethod, Failure, FailureReason, PeerMethod, Send, Step, Success
from ipsecd.eap.packet import EapPacket
from ipsecd.iana import EapType
from ipsecd.logsafe import safe

FLAG_L = 0x80  # TLS Message Length included
FLAG_M = 0x40  # More fragments
FLAG_S = 0x20  # EAP-TLS Start
DEFAULT_FRAGMENT_SIZE = 1024  # strongSwan's eap-tls fragment_size
DEFAULT_MAX_MESSAGE = 65536  # one reassembled TLS flight; a 3-level RSA-4096 chain is ~6 KB
KEY_MATERIAL_LEN = 128
TLS12_LABEL = b"client EAP encryption"
TLS13_LABEL = b"EXPORTER_EAP_TLS_Key_Material"
COMMITMENT = b"\x00"
_TLS_READ = 16384

TlsPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
CertVerifier = Callable[[list[x509.Certificate]], str | None]  # validated chain, leaf first -> None or why not


@dataclass(frozen=True)
class TlsCredentials:
    """Our certificate and key, and how to judge the other side's certificate."""

    certificate: x509.Certificate | None = None
    private_key: TlsPrivateKey | None = field(default=None, repr=False)
    chain: Sequence[x509.Certificate] = ()  # intermediates sent after our certificate
    trust_anchors: Sequence[x509.Certificate] = ()
    verify: CertVerifier | None = None
    min_version: int = SSL.TLS1_2_VERSION
    max_version: int = SSL.TLS1_3_VERSION


class TlsFragmentError(Exception):
    """An EAP-TLS packet that cannot be taken apart or reassembled within bounds."""


def parse_eap_tls(data: bytes) -> tuple[int, int | None, bytes]:
    """Flags, the TLS Message Length if L is set, and the TLS data of one EAP-TLS packet."""
    if not data:
        raise TlsFragmentError("EAP-TLS packet without a Flags octet")
    flags = data[0]
    if flags & FLAG_L:
        if len(data) < 5:
            raise TlsFragmentError("EAP-TLS L flag without the 4-octet TLS Message Length")
        return flags, struct.unpack_from("!I", data, 1)[0], bytes(data[5:])
    return flags, None, bytes(data[1:])


class Reassembler:
    """Collects M-flagged fragments into one TLS message, never more than ``limit`` octets."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._declared: int | None = None

    @property
    def active(self) -> bool:
        return bool(self._parts)

    def feed(self, flags: int, length: int | None, payload: bytes) -> bytes | None:
        """Add one fragment; the whole message once the last one (no M) arrived, else None."""
        if length is not None:
            if length > self.limit:
                raise TlsFragmentError(f"EAP-TLS message of {length} octets exceeds the {self.limit} limit")
            if self._declared is not None and length != self._declared:
                raise TlsFragmentError(f"EAP-TLS TLS Message Length changed from {self._declared} to {length}")
            self._declared = length
        self._size += len(payload)
        if self._size > min(self.limit, self._declared if self._declared is not None else self.limit):
            raise TlsFragmentError(f"EAP-TLS fragments exceed {self._declared or self.limit} octets")
        self._parts.append(payload)
        if flags & FLAG_M:
            if not payload:
                raise TlsFragmentError("EAP-TLS fragment with M set and no data")
            return None
        message = b"".join(self._parts)
        if self._declared is not None and len(message) != self._declared:
            raise TlsFragmentError(f"EAP-TLS message of {len(message)} octets, {self._declared} announced")
        self._parts, self._size, self._declared = [], 0, None
        return message


class Fragmenter:
    """Cuts one outgoing TLS message into EAP-TLS packets of at most ``size`` data octets."""

    def __init__(self, message: bytes, size: int) -> None:
        self._message = message
        self._size = size
        self._offset = 0

    @property
    def pending(self) -> bool:
        return self._offset < len(self._message)

    def next(self) -> bytes:
        first = self._offset == 0
        chunk = self._message[self._offset:self._offset + self._size]
        self._offset += len(chunk)
        flags = FLAG_M if self.pending else 0
        if first and self.pending:
            return bytes([flags | FLAG_L]) + struct.pack("!I", len(self._message)) + chunk
        return bytes([flags]) + chunk


class _Phase(enum.Enum):
    HANDSHAKE = enum.auto()
    FINAL_SENT = enum.auto()  # server: last flight sent, waiting for the peer's ACK
    DONE = enum.auto()


def _verify_through(ref: weakref.ref[_TlsEndpoint]) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    """OpenSSL's verify callback for an endpoint, holding it weakly: the endpoint holds the
    connection, which holds the callback (a bound method would make every EAP-TLS login a
    reference cycle, freed only by the cyclic garbage collector; issue 11)."""
    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        endpoint = ref()
        return bool(ok) if endpoint is None else endpoint._on_verify(conn, cert, errno, depth, ok)
    return verify


class _TlsEndpoint:
    """What both roles share: one OpenSSL connection, fragmentation both ways, keys."""

    def __init__(self, creds: TlsCredentials, server: bool, fragment_size: int, max_message: int) -> None:
        self._creds = creds
        self._fragment_size = fragment_size
        self._reassembler = Reassembler(max_message)
        self._out: Fragmenter | None = None
        self._verify_error: str | None = None
        self._complete = False
        self._conn = SSL.Connection(self._context(server), None)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()

    def _context(self, server: bool) -> SSL.Context:
        creds = self._creds
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(creds.min_version)
        ctx.set_max_proto_version(creds.max_version)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        if creds.certificate is not None and creds.private_key is not None:
            ctx.use_certificate(creds.certificate)
            ctx.use_privatekey(creds.private_key)
            for cert in creds.chain:
                ctx.add_extra_chain_cert(cert)
        store = ctx.get_cert_store()
        assert store is not None
        for anchor in creds.trust_anchors:
            store.add_cert(crypto.X509.from_cryptography(anchor))
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if server else 0)
        ctx.set_verify(mode, _verify_through(weakref.ref(self)))
        return ctx

    def _on_verify(self, _conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok and self._verify_error is None:
            subject = cert.to_cryptography().subject.rfc4514_string()
            self._verify_error = f"{safe(subject)} (depth {depth}): {_x509_error(errno)}"
        return bool(ok)

    # ------------------------------------------------------------ TLS pump
    def _pump(self) -> bytes:
        """Run the handshake as far as the input allows; the records OpenSSL wants sent."""
        try:
            self._conn.do_handshake()
            self._complete = True
        except SSL.WantReadError:
            pass
        return self._drain()

    def _drain(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = self._conn.bio_read(_TLS_READ)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        return out

    def _read_app_data(self) -> bytes:
        try:
            return self._conn.recv(_TLS_READ)
        except (SSL.WantReadError, SSL.ZeroReturnError):
            return b""

    @property
    def _handshake_done(self) -> bool:
        return self._complete

    @property
    def _tls13(self) -> bool:
        return self._conn.get_protocol_version_name() == "TLSv1.3"

    def _keys(self) -> tuple[bytes, bytes]:
        if self._tls13:
            material = self._conn.export_keying_material(TLS13_LABEL, KEY_MATERIAL_LEN, bytes([EapType.TLS]))
        else:
            material = self._conn.export_keying_material(TLS12_LABEL, KEY_MATERIAL_LEN)
        return material[:64], material[64:]

    def _policy_check(self) -> str | None:
        """The credential-store hook on the validated peer chain; None accepts it."""
        chain = self._conn.get_verified_chain(as_cryptography=True) or []
        if not chain:
            return "no verified certificate chain"
        if self._creds.verify is None:
            return None
        return self._creds.verify(list(chain))

    def _tls_failure(self, exc: Exception, whose: str) -> Failure:
        if self._verify_error is not None:
            return Failure(FailureReason.CERTIFICATE_REJECTED, f"{whose} certificate rejected: {self._verify_error}")
        return Failure(FailureReason.TLS_ERROR, f"EAP-TLS handshake failed: {safe(exc, 200)}")

    def _next_fragment(self) -> bytes:
        assert self._out is not None
        data = self._out.next()
        if not self._out.pending:
            self._out = None
        return data

    def _start_sending(self, message: bytes) -> bytes:
        self._out = Fragmenter(message, self._fragment_size)
        return self._next_fragment()


def _x509_error(errno: int) -> str:
    try:  # OpenSSL's own wording ("unable to get local issuer certificate", ...)
        from OpenSSL.SSL import _ffi, _lib  # type: ignore[attr-defined]

        return str(_ffi.string(_lib.X509_verify_cert_error_string(errno)).decode())
    except Exception:  # pragma: no cover - private binding moved
        return f"X509 verify error {errno}"


class EapTlsServer(AuthenticatorMethod, _TlsEndpoint):
    """The gateway's EAP-TLS: Start, handshake, commitment (1.3), EAP-Success after the final ACK."""

    eap_type = EapType.TLS

    def __init__(self, identity: bytes, creds: TlsCredentials, *, fragment_size: int = DEFAULT_FRAGMENT_SIZE,
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        _TlsEndpoint.__init__(self, creds, True, fragment_size, max_message)
        self.identity = identity
        self._identifier = 0
        self._phase = _Phase.HANDSHAKE
        self.peer_chain: list[x509.Certificate] = []

    def _request(self, data: bytes) -> Send:
        self._identifier = (self._identifier + 1) & 0xFF
        return Send(EapPacket.request(self._identifier, EapType.TLS, data))

    def start(self, identifier: int) -> Step:
        self._identifier = (identifier - 1) & 0xFF
        return self._request(bytes([FLAG_S]))

    def process(self, packet: EapPacket) -> Step:
        try:
            flags, length, payload = parse_eap_tls(packet.data)
            ack = not payload and not flags & (FLAG_M | FLAG_L)
            if self._out is not None:
                if not ack:
                    return self._fail(FailureReason.PROTOCOL_ERROR, "expected an EAP-TLS ACK for our fragment")
                return self._request(self._next_fragment())
            if ack and self._phase == _Phase.FINAL_SENT:
                msk, emsk = self._keys()
                self._phase = _Phase.DONE
                return Success(msk, emsk, self.identity, EapType.TLS)
            if ack:
                return self._fail(FailureReason.PROTOCOL_ERROR, "unexpected EAP-TLS ACK")
            message = self._reassembler.feed(flags, length, payload)
        except TlsFragmentError as exc:
            return self._fail(FailureReason.PROTOCOL_ERROR, str(exc))
        if message is None:
            return self._request(b"\x00")  # acknowledge the fragment
        return self._handshake(message)

    def _handshake(self, message: bytes) -> Step:
        try:
            self._conn.bio_write(message)
            out = self._pump()
            if self._handshake_done:
                problem = self._policy_check()
                if problem is not None:
                    return self._fail(FailureReason.CERTIFICATE_REJECTED,
                                      f"client certificate of {safe(self.identity)} rejected: {problem}")
                self.peer_chain = list(self._conn.get_verified_chain(as_cryptography=True) or [])
                if self._tls13:
                    self._conn.send(COMMITMENT)  # RFC 9190 2.1.1
                    out += self._drain()
                self._phase = _Phase.FINAL_SENT
        except SSL.Error as exc:
            failure = self._tls_failure(exc, f"client {safe(self.identity)}")
            self._phase = _Phase.DONE
            return failure
        if not out:
            return self._fail(FailureReason.PROTOCOL_ERROR, "EAP-TLS: nothing to answer the client's message with")
        return self._request(self._start_sending(out))

    def _fail(self, reason: FailureReason, message: str) -> Failure:
        self._phase = _Phase.DONE
        return Failure(reason, message, self.identity)


class EapTlsPeer(PeerMethod, _TlsEndpoint):
    """The road warrior's EAP-TLS (ipsecd as a client): ClientHello on Start, ACKs, keys when done."""

    eap_type = EapType.TLS

    def __init__(self, identity: bytes, creds: TlsCredentials, *, fragment_size: int = DEFAULT_FRAGMENT_SIZE,
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        PeerMethod.__init__(self)
        _TlsEndpoint.__init__(self, creds, False, fragment_size, max_message)
        self.identity = identity
        self._started = False
        self.server_chain: list[x509.Certificate] = []

    def process(self, packet: EapPacket) -> Step:
        ident = packet.identifier
        try:
            flags, length, payload = parse_eap_tls(packet.data)
            if flags & FLAG_S:
                if self._started:
                    return self._error(FailureReason.PROTOCOL_ERROR, "second EAP-TLS Start")
                self._started = True
                return self._respond(ident, self._flight(b""))
            if not self._started:
                return self._error(FailureReason.PROTOCOL_ERROR, "EAP-TLS request before Start")
            ack = not payload and not flags & (FLAG_M | FLAG_L)
            if self._out is not None:
                if not ack:
                    return self._error(FailureReason.PROTOCOL_ERROR, "expected an EAP-TLS ACK for our fragment")
                return Send(EapPacket.response(ident, EapType.TLS, self._next_fragment()))
            if ack:
                return self._error(FailureReason.PROTOCOL_ERROR, "unexpected EAP-TLS ACK from the server")
            message = self._reassembler.feed(flags, length, payload)
        except TlsFragmentError as exc:
            return self._error(FailureReason.PROTOCOL_ERROR, str(exc))
        except _Refused as exc:
            return self._error(exc.reason, exc.message)
        if message is None:
            return Send(EapPacket.response(ident, EapType.TLS, b"\x00"))
        try:
            return self._respond(ident, self._flight(message))
        except _Refused as exc:
            return self._error(exc.reason, exc.message)

    def _flight(self, message: bytes) -> bytes:
        try:
            if message:
                self._conn.bio_write(message)
            out = self._pump()
            if self._handshake_done and not self.server_chain:
                problem = self._policy_check()
                if problem is not None:
                    raise _Refused(FailureReason.CERTIFICATE_REJECTED, f"server certificate rejected: {problem}")
                self.server_chain = list(self._conn.get_verified_chain(as_cryptography=True) or [])
            if self._handshake_done and self.msk is None:
                # TLS 1.3: done only once the commitment message arrived (RFC 9190 2.1.1)
                if not self._tls13 or self._read_app_data() == COMMITMENT:
                    self.msk, self.emsk = self._keys()
                out += self._drain()
            return out
        except SSL.Error as exc:
            failure = self._tls_failure(exc, "server")
            raise _Refused(failure.reason, failure.message) from None

    def _respond(self, identifier: int, out: bytes) -> Send:
        data = self._start_sending(out) if out else b"\x00"  # nothing to say: an ACK
        return Send(EapPacket.response(identifier, EapType.TLS, data))

    def _error(self, reason: FailureReason, message: str) -> Failure:
        self.failure = Failure(reason, message, self.identity)
        return self.failure


class _Refused(Exception):
    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message
