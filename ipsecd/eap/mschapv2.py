"""EAP-MSCHAPv2 (draft-kamath-pppext-eap-mschapv2, RFC 2759, RFC 3079), both roles.

Packets (after the EAP Type octet 26)::

    Challenge req   OpCode=1 | MS-CHAPv2-ID | MS-Length(2) | Value-Size=16 | Challenge(16) | Name
    Response resp   OpCode=2 | MS-CHAPv2-ID | MS-Length(2) | Value-Size=49 |
                    Peer-Challenge(16) | Reserved(8)=0 | NT-Response(24) | Flags(1)=0 | Name
    Success req     OpCode=3 | MS-CHAPv2-ID | MS-Length(2) | "S=<40 hex> M=<text>"
    Failure req     OpCode=4 | MS-CHAPv2-ID | MS-Length(2) | "E=691 R=1 C=<32 hex> V=3 M=<text>"
    Success/Failure resp   OpCode only

MS-Length is the EAP Length minus 5.  The authenticator behaves as strongSwan's
eap-mschapv2: a wrong password (or unknown user: the wire does not tell them apart,
so names cannot be probed) gets a Failure request with E=691 R=1 and a new challenge,
held ``retry_delay`` seconds; after ``max_retries`` retries the conversation fails.
A peer Failure response (what our peer and RADIUS-era clients send after E=691) ends
it at once.  The peer checks the authenticator response in constant time and, like
strongSwan, does not retry on E=691: it answers with a Failure response and reports
the server's reason when the EAP-Failure arrives.

MSK (64 octets) as strongSwan builds it on both sides, naming keys from the server's
side of RFC 3079 3.4: MasterReceiveKey (Magic2) | MasterSendKey (Magic3) | 32 zeros.
Via RADIUS this is MS-MPPE-Recv-Key | MS-MPPE-Send-Key; the zero tail makes no
difference to an HMAC PRF keyed with it (HMAC zero-pads keys to its block size).

MD4 and single DES come from pycryptodome: this machine's OpenSSL has neither.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
from collections.abc import Callable

from Crypto.Cipher import DES
from Crypto.Hash import MD4

from ipsecd.eap.method import (
    AuthenticatorMethod,
    Failure,
    FailureReason,
    NtHash,
    PeerMethod,
    Secret,
    SecretLookup,
    Send,
    Step,
    Success,
)
from ipsecd.eap.packet import EapPacket
from ipsecd.iana import EapType
from ipsecd.logsafe import safe

CHALLENGE_LEN = 16
NT_RESPONSE_LEN = 24
RESPONSE_VALUE_LEN = 49  # Peer-Challenge 16 + Reserved 8 + NT-Response 24 + Flags 1
AUTH_RESPONSE_HEX_LEN = 40
MS_HEADER_LEN = 4  # OpCode, MS-CHAPv2-ID, MS-Length
MSK_LEN = 64
DEFAULT_MAX_RETRIES = 2  # strongSwan MAX_RETRIES
DEFAULT_RETRY_DELAY = 2.0  # strongSwan RETRY_DELAY (s)

ERROR_AUTHENTICATION_FAILURE = 691
RESTRICTED_ERRORS = {646: "restricted logon hours", 647: "account disabled", 648: "password expired",
                     649: "no dial-in permission"}

_MAGIC1 = b"Magic server to client signing constant"  # RFC 2759 8.7
_MAGIC2 = b"Pad to make it do more than one iteration"
_MASTER_MAGIC = b"This is the MPPE Master Key"  # RFC 3079 3.4
_SEND_SIDE_MAGIC = (b"On the client side, this is the send key; "
                    b"on the server side, it is the receive key.")
_RECV_SIDE_MAGIC = (b"On the client side, this is the receive key; "
                    b"on the server side, it is the send key.")
_SHS_PAD1 = b"\x00" * 40
_SHS_PAD2 = b"\xf2" * 40


class OpCode(enum.IntEnum):
    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4
    CHANGE_PASSWORD = 7


# ------------------------------------------------------------ RFC 2759 / RFC 3079 functions
def nt_password_hash(password: str) -> bytes:
    """RFC 2759 8.3: MD4 of the UTF-16LE password."""
    return MD4.new(password.encode("utf-16-le")).digest()


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    return MD4.new(password_hash).digest()


def secret_nt_hash(secret: Secret) -> bytes:
    return secret.value if isinstance(secret, NtHash) else nt_password_hash(secret)


def user_name_part(name: bytes) -> bytes:
    """RFC 2759 8.2: the challenge hash uses the user name without a ``DOMAIN\\`` prefix."""
    return name.rsplit(b"\\", 1)[-1]


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, user_name: bytes) -> bytes:
    """RFC 2759 8.2."""
    return hashlib.sha1(peer_challenge + authenticator_challenge + user_name_part(user_name)).digest()[:8]


def _des_key(seven: bytes) -> bytes:
    """Spread 56 key bits over 8 octets (the low bit of each is DES parity, ignored)."""
    bits = int.from_bytes(seven, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """RFC 2759 8.5: three single-DES encryptions of the 8-octet challenge."""
    z = password_hash.ljust(21, b"\x00")
    return b"".join(DES.new(_des_key(z[i:i + 7]), DES.MODE_ECB).encrypt(challenge) for i in (0, 7, 14))


def generate_nt_response(authenticator_challenge: bytes, peer_challenge: bytes, user_name: bytes,
                         password_hash: bytes) -> bytes:
    """RFC 2759 8.1."""
    return challenge_response(challenge_hash(peer_challenge, authenticator_challenge, user_name), password_hash)


def authenticator_response(password_hash: bytes, nt_response: bytes, peer_challenge: bytes,
                           authenticator_challenge: bytes, user_name: bytes) -> bytes:
    """RFC 2759 8.7: the 20 octets the server proves itself with ("S=" + hex)."""
    digest = hashlib.sha1(hash_nt_password_hash(password_hash) + nt_response + _MAGIC1).digest()
    chal = challenge_hash(peer_challenge, authenticator_challenge, user_name)
    return hashlib.sha1(digest + chal + _MAGIC2).digest()


def master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """RFC 3079 3.4 GetMasterKey."""
    return hashlib.sha1(password_hash_hash + nt_response + _MASTER_MAGIC).digest()[:16]


def asymmetric_start_key(master: bytes, length: int, is_send: bool, is_server: bool) -> bytes:
    """RFC 3079 3.4 GetAsymmetricStartKey."""
    magic = _RECV_SIDE_MAGIC if is_send == is_server else _SEND_SIDE_MAGIC
    return hashlib.sha1(master + _SHS_PAD1 + magic + _SHS_PAD2).digest()[:length]


def mschapv2_msk(password_hash: bytes, nt_response: bytes) -> bytes:
    """MSK as strongSwan and MS-MPPE attributes lay it out: server receive key | server send key | 0*32."""
    master = master_key(hash_nt_password_hash(password_hash), nt_response)
    recv = asymmetric_start_key(master, 16, is_send=False, is_server=True)
    send = asymmetric_start_key(master, 16, is_send=True, is_server=True)
    return recv + send + b"\x00" * 32


# ------------------------------------------------------------ packet helpers
def _ms_packet(code_builder: Callable[[int, int, bytes], EapPacket], identifier: int, opcode: OpCode,
               ms_id: int, body: bytes) -> EapPacket:
    ms_length = MS_HEADER_LEN + len(body)
    data = bytes([opcode, ms_id & 0xFF]) + ms_length.to_bytes(2, "big") + body
    return code_builder(identifier, EapType.MSCHAPV2, data)


def _fields(message: bytes) -> dict[str, str]:
    """``E=691 R=1 C=... M=text with spaces``: M= runs to the end (RFC 2759 6, 7)."""
    text = message.decode("latin-1")
    out: dict[str, str] = {}
    m_pos = text.find("M=")
    if m_pos >= 0:
        out["M"] = text[m_pos + 2:]
        text = text[:m_pos]
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


_HEX40 = re.compile(r"[0-9A-Fa-f]{40}")


class _State(enum.Enum):
    EXPECT_CHALLENGE = enum.auto()
    EXPECT_RESPONSE = enum.auto()
    EXPECT_SUCCESS = enum.auto()
    DONE = enum.auto()


class MschapV2Authenticator(AuthenticatorMethod):
    """The gateway's EAP-MSCHAPv2: challenge, verify, prove itself, MSK."""

    eap_type = EapType.MSCHAPV2

    def __init__(self, identity: bytes, lookup: SecretLookup, *, name: bytes = b"ipsecd",
                 max_retries: int = DEFAULT_MAX_RETRIES, retry_delay: float = DEFAULT_RETRY_DELAY,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        self.identity = identity
        self._lookup = lookup
        self._name = name
        self._max_retries = max_retries
        self._retry_delay = retry_delay
        self._rng = rng
        self._state = _State.EXPECT_RESPONSE
        self._identifier = 0
        self._ms_id = 0
        self._challenge = b""
        self._retries = 0
        self._user = identity
        self._msk = b""
        self._last_failure: Failure | None = None

    def start(self, identifier: int) -> Step:
        self._identifier = self._ms_id = identifier
        self._challenge = self._rng(CHALLENGE_LEN)
        body = bytes([CHALLENGE_LEN]) + self._challenge + self._name
        return Send(_ms_packet(EapPacket.request, identifier, OpCode.CHALLENGE, self._ms_id, body))

    def process(self, packet: EapPacket) -> Step:
        data = packet.data
        if not data:
            return self._protocol_error("EAP-MSCHAPv2 response without an OpCode")
        opcode = data[0]
        if opcode == OpCode.RESPONSE and self._state == _State.EXPECT_RESPONSE:
            return self._response(data)
        if opcode == OpCode.SUCCESS and self._state == _State.EXPECT_SUCCESS:
            self._state = _State.DONE
            return Success(self._msk, identity=self._user, method=EapType.MSCHAPV2)
        if opcode == OpCode.FAILURE:
            # the peer may abort in any state; after our E=691 this is its answer to it
            self._state = _State.DONE
            return self._last_failure or Failure(FailureReason.PEER_ABORTED,
                                                 f"EAP-MSCHAPv2 peer {safe(self._user)} aborted", self._user)
        return self._protocol_error(f"unexpected EAP-MSCHAPv2 OpCode {opcode} in state {self._state.name}")

    def _response(self, data: bytes) -> Step:
        if len(data) < MS_HEADER_LEN + 1 + RESPONSE_VALUE_LEN:
            return self._protocol_error(f"EAP-MSCHAPv2 Response of {len(data)} octets is too short")
        if data[MS_HEADER_LEN] != RESPONSE_VALUE_LEN:
            return self._protocol_error(f"EAP-MSCHAPv2 Response Value-Size {data[MS_HEADER_LEN]}, expected 49")
        value = data[MS_HEADER_LEN + 1:MS_HEADER_LEN + 1 + RESPONSE_VALUE_LEN]
        peer_challenge = value[:CHALLENGE_LEN]
        nt_response = value[CHALLENGE_LEN + 8:CHALLENGE_LEN + 8 + NT_RESPONSE_LEN]
        # strongSwan authenticates the Name of the response; Windows keeps sending the
        # name first typed, so it is what the user database knows
        self._user = data[MS_HEADER_LEN + 1 + RESPONSE_VALUE_LEN:][:255] or self.identity
        secret = self._lookup(self._user)
        if secret is None:
            return self._retry(FailureReason.UNKNOWN_USER, f"no EAP secret for user {safe(self._user)}")
        password_hash = secret_nt_hash(secret)
        expected = generate_nt_response(self._challenge, peer_challenge, self._user, password_hash)
        if not hmac.compare_digest(expected, nt_response):
            return self._retry(FailureReason.WRONG_PASSWORD, f"wrong password for user {safe(self._user)}")
        auth = authenticator_response(password_hash, nt_response, peer_challenge, self._challenge, self._user)
        self._msk = mschapv2_msk(password_hash, nt_response)
        self._state = _State.EXPECT_SUCCESS
        self._identifier = (self._identifier + 1) & 0xFF
        body = b"S=" + auth.hex().upper().encode() + b" M=Welcome to ipsecd"
        return Send(_ms_packet(EapPacket.request, self._identifier, OpCode.SUCCESS, self._ms_id, body))

    def _retry(self, reason: FailureReason, message: str) -> Step:
        self._retries += 1
        self._last_failure = Failure(reason, f"{message} (attempt {self._retries})", self._user)
        if self._retries > self._max_retries:
            # strongSwan: an R=0 Failure request confuses Windows; end with EAP-Failure
            self._state = _State.DONE
            return Failure(reason, f"{message}; {self._max_retries} retries used up", self._user)
        self._challenge = self._rng(CHALLENGE_LEN)
        self._identifier = (self._identifier + 1) & 0xFF
        ms_id = self._ms_id
        self._ms_id = (self._ms_id + 1) & 0xFF  # RFC 2759 6: a retry uses the next ID
        body = f"E={ERROR_AUTHENTICATION_FAILURE} R=1 C={self._challenge.hex().upper()} V=3 M=try again".encode()
        return Send(_ms_packet(EapPacket.request, self._identifier, OpCode.FAILURE, ms_id, body), self._retry_delay,
                    self._last_failure)

    def _protocol_error(self, message: str) -> Failure:
        self._state = _State.DONE
        return Failure(FailureReason.PROTOCOL_ERROR, message, self._user)


class MschapV2Peer(PeerMethod):
    """The road warrior's EAP-MSCHAPv2: answer the challenge, verify the server, MSK."""

    eap_type = EapType.MSCHAPV2

    def __init__(self, identity: bytes, secret: Secret | None, *,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.identity = identity
        self._secret = secret
        self._rng = rng
        self._state = _State.EXPECT_CHALLENGE
        self._expected_auth = b""
        self._pending_msk = b""

    def process(self, packet: EapPacket) -> Step:
        data = packet.data
        if len(data) < MS_HEADER_LEN:
            return self._error(FailureReason.PROTOCOL_ERROR, f"EAP-MSCHAPv2 request of {len(data)} octets")
        opcode, ms_id = data[0], data[1]
        ms_length = int.from_bytes(data[2:4], "big")
        if ms_length != len(data):
            return self._error(FailureReason.PROTOCOL_ERROR,
                               f"EAP-MSCHAPv2 MS-Length {ms_length} does not match {len(data)} octets")
        body = data[MS_HEADER_LEN:]
        if opcode == OpCode.CHALLENGE and self._state == _State.EXPECT_CHALLENGE:
            return self._challenge(packet.identifier, ms_id, body)
        if opcode == OpCode.SUCCESS and self._state == _State.EXPECT_SUCCESS:
            return self._success(packet.identifier, body)
        if opcode == OpCode.FAILURE and self._state == _State.EXPECT_SUCCESS:
            return self._failure(packet.identifier, body)
        return self._error(FailureReason.PROTOCOL_ERROR,
                           f"unexpected EAP-MSCHAPv2 OpCode {opcode} in state {self._state.name}")

    def _challenge(self, identifier: int, ms_id: int, body: bytes) -> Step:
        if len(body) < 1 + CHALLENGE_LEN or body[0] != CHALLENGE_LEN:
            return self._error(FailureReason.PROTOCOL_ERROR, "EAP-MSCHAPv2 Challenge without a 16-octet value")
        if self._secret is None:
            return self._error(FailureReason.NO_SECRET, f"no EAP secret configured for {safe(self.identity)}")
        auth_challenge = body[1:1 + CHALLENGE_LEN]
        peer_challenge = self._rng(CHALLENGE_LEN)
        password_hash = secret_nt_hash(self._secret)
        nt_response = generate_nt_response(auth_challenge, peer_challenge, self.identity, password_hash)
        self._expected_auth = authenticator_response(password_hash, nt_response, peer_challenge, auth_challenge,
                                                     self.identity)
        self._pending_msk = mschapv2_msk(password_hash, nt_response)
        value = peer_challenge + b"\x00" * 8 + nt_response + b"\x00"
        self._state = _State.EXPECT_SUCCESS
        return Send(_ms_packet(EapPacket.response, identifier, OpCode.RESPONSE, ms_id,
                               bytes([RESPONSE_VALUE_LEN]) + value + self.identity))

    def _success(self, identifier: int, body: bytes) -> Step:
        fields = _fields(body)
        s_value = fields.get("S", "")
        if not _HEX40.fullmatch(s_value):
            return self._error(FailureReason.PROTOCOL_ERROR, "EAP-MSCHAPv2 Success without a valid S= value")
        if not hmac.compare_digest(bytes.fromhex(s_value), self._expected_auth):
            return self._error(FailureReason.SERVER_NOT_AUTHENTICATED,
                               "EAP-MSCHAPv2 authenticator response does not verify: the server does not "
                               "know the password")
        self.msk = self._pending_msk
        self._state = _State.DONE
        return Send(EapPacket.response(identifier, EapType.MSCHAPV2, bytes([OpCode.SUCCESS])))

    def _failure(self, identifier: int, body: bytes) -> Step:
        fields = _fields(body)
        try:
            error = int(fields.get("E", "0"))
        except ValueError:
            error = 0
        text = safe(fields.get("M", ""), 80)
        if error == ERROR_AUTHENTICATION_FAILURE:
            reason, what = FailureReason.WRONG_PASSWORD, f"server rejected the password of {safe(self.identity)}"
        elif error in RESTRICTED_ERRORS:
            reason, what = FailureReason.ACCOUNT_RESTRICTED, f"{RESTRICTED_ERRORS[error]} for {safe(self.identity)}"
        else:
            reason, what = FailureReason.REJECTED, f"server rejected {safe(self.identity)}"
        self.failure = Failure(reason, f"EAP-MSCHAPv2: {what} (E={error} M={text!r})", self.identity)
        self._state = _State.DONE
        # draft-kamath 2.2: answer a Failure request with a Failure response (no retry, as strongSwan)
        return Send(EapPacket.response(identifier, EapType.MSCHAPV2, bytes([OpCode.FAILURE])))

    def _error(self, reason: FailureReason, message: str) -> Failure:
        self._state = _State.DONE
        self.failure = Failure(reason, message, self.identity)
        return self.failure
