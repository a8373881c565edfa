"""IKE header, SK envelope and the per-exchange rule table."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from ipsecd.iana import (
    AuthMethod,
    CertEncoding,
    CfgType,
    EncrId,
    ExchangeType,
    IdType,
    KeId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from ipsecd.ike.codec import encode_payloads
from ipsecd.ike.message import (
    IkeHeader,
    Message,
    check_message,
    decode_header,
    decode_message,
    encode_message,
)
from ipsecd.ike.payloads import (
    AuthPayload,
    CertPayload,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


class NullHmacCipher:
    """Test-only SK protection: 8-byte IV, plaintext + 1-byte pad length, HMAC-SHA256/128 ICV."""

    IV = b"\x00" * 8
    ICV_LEN = 16

    def __init__(self, key: bytes = b"k" * 32) -> None:
        self.key = key

    def sealed_len(self, plaintext_len: int) -> int:
        return len(self.IV) + plaintext_len + 1 + self.ICV_LEN

    def _icv(self, associated: bytes, body: bytes) -> bytes:
        return hmac.new(self.key, associated + body, hashlib.sha256).digest()[: self.ICV_LEN]

    def seal(self, associated: bytes, plaintext: bytes) -> bytes:
        body = self.IV + plaintext + b"\x00"
        return body + self._icv(associated, body)

    def open(self, associated: bytes, body: bytes) -> bytes:
        if len(body) < len(self.IV) + 1 + self.ICV_LEN:
            raise IntegrityError("too short")
        data, icv = body[: -self.ICV_LEN], body[-self.ICV_LEN :]
        if not hmac.compare_digest(icv, self._icv(associated, data)):
            raise IntegrityError()
        return data[len(self.IV) : -1 - data[-1]]


NONCE = NoncePayload(b"\x5a" * 32)
SA_IKE = SaPayload(
    (
        Proposal(
            1,
            ProtocolId.IKE,
            b"",
            (
                Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256),
                Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
                Transform(TransformType.KE, KeId.CURVE25519),
            ),
        ),
    )
)
SA_ESP = SaPayload(
    (
        Proposal(
            1,
            ProtocolId.ESP,
            b"\xca\xfe\xba\xbe",
            (Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 128), Transform(TransformType.ESN, 0)),
        ),
    )
)
KE = KePayload(KeId.CURVE25519, b"\x09" * 32)
TS = TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535, IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255"))
TSI = TsPayload(PayloadType.TSi, (TS,))
TSR = TsPayload(PayloadType.TSr, (TS,))
IDI = IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"alice")
IDR = IdPayload(PayloadType.IDr, IdType.ID_FQDN, b"gw")
AUTH = AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, b"\x01" * 32)


def msg(exchange: ExchangeType, payloads: list[Payload], response: bool = False, encrypted: bool = True) -> Message:
    return Message(SPI_I, SPI_R, exchange, 1, not response, response, payloads, encrypted)


def init_request() -> Message:
    return Message(
        SPI_I,
        b"\x00" * 8,
        ExchangeType.IKE_SA_INIT,
        0,
        True,
        False,
        [SA_IKE, KE, NONCE, NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=b"\x00" * 20)],
    )


# --- header ---


def test_plain_message_roundtrip_and_header_fields() -> None:
    m = init_request()
    data = encode_message(m)
    h = decode_header(data)
    assert h == IkeHeader(SPI_I, b"\x00" * 8, PayloadType.SA, 2, 0, ExchangeType.IKE_SA_INIT, 0x08, 0, len(data))
    assert h.is_initiator and not h.is_response
    assert data[17] == 0x20
    assert decode_message(data) == m


def test_response_flags() -> None:
    m = replace(init_request(), is_initiator=False, is_response=True)
    h = decode_header(encode_message(m))
    assert h.flags == 0x20
    assert h.is_response and not h.is_initiator


@pytest.mark.parametrize("size", [0, 1, 27])
def test_header_too_short(size: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_header(b"\x00" * size)
    assert info.value.notify is None


def test_header_length_mismatch_either_way() -> None:
    data = encode_message(init_request())
    with pytest.raises(RemoteProtocolError):
        decode_header(data + b"\x00")
    with pytest.raises(RemoteProtocolError):
        decode_header(data[:-1])


@pytest.mark.parametrize("version", [0x10, 0x30, 0xF0])
def test_header_major_version(version: int) -> None:
    data = bytearray(encode_message(init_request()))
    data[17] = version
    with pytest.raises(RemoteProtocolError) as info:
        decode_header(bytes(data))
    assert info.value.notify == NotifyType.INVALID_MAJOR_VERSION


def test_minor_version_ignored() -> None:
    data = bytearray(encode_message(init_request()))
    data[17] = 0x21
    assert decode_header(bytes(data)).minor == 1
    assert decode_message(bytes(data)) == init_request()


def test_unknown_exchange_type_dropped() -> None:
    data = bytearray(encode_message(init_request()))
    data[18] = 99
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(bytes(data))
    assert info.value.notify is None


def test_encode_rejects_bad_spis() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(replace(init_request(), spi_i=b"\x01"))


# --- SK ---


def auth_request() -> Message:
    return msg(
        ExchangeType.IKE_AUTH,
        [IDI, AUTH, NotifyPayload(NotifyType.INITIAL_CONTACT), SA_ESP, TSI, TSR],
    )


def test_sk_roundtrip_and_lengths() -> None:
    sk = NullHmacCipher()
    m = auth_request()
    data = encode_message(m, sk)
    first, inner = encode_payloads(m.payloads)
    h = decode_header(data)
    assert h.next_payload == PayloadType.SK
    assert h.length == len(data) == 28 + 4 + sk.sealed_len(len(inner))
    # SK generic header: next = first inner type, critical 0, length covers the sealed body.
    assert data[28] == first == PayloadType.IDi
    assert data[29] == 0
    assert int.from_bytes(data[30:32], "big") == 4 + sk.sealed_len(len(inner))
    assert decode_message(data, sk) == m


def test_sk_empty_informational() -> None:
    sk = NullHmacCipher()
    m = msg(ExchangeType.INFORMATIONAL, [])
    data = encode_message(m, sk)
    assert data[28] == PayloadType.NO_NEXT_PAYLOAD
    assert decode_message(data, sk) == m


@pytest.mark.parametrize("pos", [0, 17, 19, 23, 27, 28, 31, 40, -1])
def test_sk_tamper_detected(pos: int) -> None:
    sk = NullHmacCipher()
    data = bytearray(encode_message(auth_request(), sk))
    data[pos] ^= 0x01
    with pytest.raises(RemoteProtocolError):  # version/length damage fails the header, the rest the ICV
        decode_message(bytes(data), sk)
    if pos not in (17, 27, 31):
        with pytest.raises(IntegrityError):
            decode_message(bytes(data), sk)


def test_sk_wrong_key() -> None:
    data = encode_message(auth_request(), NullHmacCipher())
    with pytest.raises(IntegrityError):
        decode_message(data, NullHmacCipher(b"x" * 32))


def test_sk_without_keys() -> None:
    data = encode_message(auth_request(), NullHmacCipher())
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(data)
    assert info.value.notify is None
    with pytest.raises(LocalProtocolError):
        encode_message(auth_request())


def test_sk_must_be_last_and_alone() -> None:
    sk = NullHmacCipher()
    data = encode_message(auth_request(), sk)
    # A Vendor ID payload in front of SK.
    vid = bytes((PayloadType.SK, 0, 0, 6)) + b"vv"
    forged = bytearray(data[:28] + vid + data[28:])
    forged[16] = PayloadType.VENDOR_ID
    forged[24:28] = len(forged).to_bytes(4, "big")
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(bytes(forged), sk)
    assert info.value.notify == NotifyType.INVALID_SYNTAX
    # Bytes after SK: its length no longer reaches the end.
    trailing = bytearray(data + b"\x00\x00\x00\x04")
    trailing[24:28] = len(trailing).to_bytes(4, "big")
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(bytes(trailing), sk)
    assert info.value.notify == NotifyType.INVALID_SYNTAX


def test_sk_inner_garbage_is_syntax_error() -> None:
    class Garbage(NullHmacCipher):
        def open(self, associated: bytes, body: bytes) -> bytes:
            return b"\x00\x00\x00\x09garbage"

    data = encode_message(auth_request(), NullHmacCipher())
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(data, Garbage())
    assert info.value.notify == NotifyType.INVALID_SYNTAX


def test_sealed_len_mismatch_is_local_error() -> None:
    class Liar(NullHmacCipher):
        def sealed_len(self, plaintext_len: int) -> int:
            return super().sealed_len(plaintext_len) + 1

    with pytest.raises(LocalProtocolError):
        encode_message(auth_request(), Liar())


def test_sk_aad_covers_header_and_sk_header() -> None:
    seen: list[bytes] = []

    class Spy(NullHmacCipher):
        def seal(self, associated: bytes, plaintext: bytes) -> bytes:
            seen.append(associated)
            return super().seal(associated, plaintext)

        def open(self, associated: bytes, body: bytes) -> bytes:
            seen.append(associated)
            return super().open(associated, body)

    data = encode_message(auth_request(), Spy())
    decode_message(data, Spy())
    assert seen[0] == seen[1] == data[:32]


def test_truncation_of_messages_raises_only_remote_error() -> None:
    sk = NullHmacCipher()
    for data in (encode_message(init_request()), encode_message(auth_request(), sk)):
        for cut in range(len(data)):
            with pytest.raises(RemoteProtocolError):
                decode_message(data[:cut], sk)
            # Also with a length field that agrees with the truncation.
            fixed = data[:cut]
            if cut >= 28:
                fixed = fixed[:24] + cut.to_bytes(4, "big") + fixed[28:]
                with pytest.raises(RemoteProtocolError):
                    decode_message(fixed, sk)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_datagrams_raise_only_remote_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_message(data, NullHmacCipher())


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=120), first=st.integers(0, 255), exchange=st.sampled_from(list(ExchangeType)))
def test_random_chains_behind_valid_header(body: bytes, first: int, exchange: ExchangeType) -> None:
    header = SPI_I + SPI_R + bytes((first, 0x20, exchange, 0x08)) + b"\x00" * 4 + (28 + len(body)).to_bytes(4, "big")
    try:
        m = decode_message(header + body, NullHmacCipher())
        check_message(m)
    except RemoteProtocolError:
        pass


# --- helpers ---


def test_message_helpers() -> None:
    m = msg(
        ExchangeType.IKE_AUTH,
        [
            IDI,
            NotifyPayload(NotifyType.INITIAL_CONTACT),
            NotifyPayload(NotifyType.AUTHENTICATION_FAILED),
            NotifyPayload(0x2000),
            TSI,
            TSR,
        ],
    )
    assert m.get(IdPayload) is IDI
    assert m.get(SaPayload) is None
    assert m.get_all(TsPayload) == [TSI, TSR]
    assert m.get_type(PayloadType.TSr) is TSR
    assert m.notify(NotifyType.INITIAL_CONTACT) == NotifyPayload(NotifyType.INITIAL_CONTACT)
    assert m.notify(NotifyType.COOKIE) is None
    assert len(m.notifies()) == 3
    assert [n.notify_type for n in m.error_notifies()] == [NotifyType.AUTHENTICATION_FAILED, 0x2000]


# --- rule table ---

N = NotifyPayload
CERT_X509 = CertEncoding.X509_CERTIFICATE_SIGNATURE
VALID: list[Message] = [
    init_request(),
    replace(init_request(), is_initiator=False, is_response=True),
    msg(ExchangeType.IKE_SA_INIT, [N(NotifyType.INVALID_KE_PAYLOAD, data=b"\x00\x13")], True, False),
    msg(ExchangeType.IKE_SA_INIT, [N(NotifyType.NO_PROPOSAL_CHOSEN)], True, False),
    msg(ExchangeType.IKE_SA_INIT, [N(NotifyType.COOKIE, data=b"c" * 16)], True, False),
    auth_request(),
    msg(ExchangeType.IKE_AUTH, [IDI, N(NotifyType.EAP_ONLY_AUTHENTICATION), CpPayload(CfgType.CFG_REQUEST)]),
    msg(ExchangeType.IKE_AUTH, [EapPayload(b"\x02\x01\x00\x04")]),
    msg(ExchangeType.IKE_AUTH, [AUTH, SA_ESP, TSI, TSR]),
    msg(
        ExchangeType.IKE_AUTH,
        [IDR, AUTH, CertPayload(CERT_X509, b"c"), CertPayload(CERT_X509, b"d"), SA_ESP, TSI, TSR],
        True,
    ),
    msg(ExchangeType.IKE_AUTH, [IDR, AUTH, N(NotifyType.TS_UNACCEPTABLE)], True),
    msg(ExchangeType.IKE_AUTH, [N(NotifyType.AUTHENTICATION_FAILED)], True),
    msg(ExchangeType.IKE_AUTH, [IDR, EapPayload(b"\x01\x01\x00\x04")], True),
    msg(ExchangeType.CREATE_CHILD_SA, [N(NotifyType.REKEY_SA, ProtocolId.ESP, b"\x01" * 4), SA_ESP, NONCE, TSI, TSR]),
    msg(ExchangeType.CREATE_CHILD_SA, [SA_IKE, NONCE, KE]),
    msg(ExchangeType.CREATE_CHILD_SA, [SA_ESP, NONCE, KE, TSI, TSR], True),
    msg(ExchangeType.CREATE_CHILD_SA, [N(NotifyType.NO_ADDITIONAL_SAS)], True),
    msg(ExchangeType.INFORMATIONAL, []),
    msg(ExchangeType.INFORMATIONAL, [], True),
    msg(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.ESP, (b"\x01" * 4,)), DeletePayload(ProtocolId.IKE)]),
    msg(ExchangeType.INFORMATIONAL, [N(NotifyType.UPDATE_SA_ADDRESSES), VendorIdPayload(b"v")]),
    msg(ExchangeType.INFORMATIONAL, [UnknownPayload(200, False, b"")]),
    msg(ExchangeType.IKE_INTERMEDIATE, [KE]),
    msg(ExchangeType.IKE_FOLLOWUP_KE, [KE, N(NotifyType.ADDITIONAL_KEY_EXCHANGE, data=b"x")]),
]


@pytest.mark.parametrize("m", VALID, ids=lambda m: f"{m.exchange.name}-{'resp' if m.is_response else 'req'}")
def test_valid_messages_pass(m: Message) -> None:
    check_message(m)


INVALID: list[tuple[str, Message]] = [
    ("init missing KE", replace(init_request(), payloads=[SA_IKE, NONCE])),
    ("init two SAs", replace(init_request(), payloads=[SA_IKE, SA_IKE, KE, NONCE])),
    ("init with IDi", replace(init_request(), payloads=[SA_IKE, KE, NONCE, IDI])),
    (
        "init request with error notify still needs SA",
        msg(ExchangeType.IKE_SA_INIT, [N(NotifyType.COOKIE)], False, False),
    ),
    ("init response status-only", msg(ExchangeType.IKE_SA_INIT, [N(NotifyType.INITIAL_CONTACT)], True, False)),
    ("auth with KE", msg(ExchangeType.IKE_AUTH, [IDI, AUTH, KE])),
    ("auth two IDi", msg(ExchangeType.IKE_AUTH, [IDI, IDI, AUTH])),
    ("auth SA without TS", msg(ExchangeType.IKE_AUTH, [IDI, AUTH, SA_ESP])),
    ("auth TSi alone", msg(ExchangeType.IKE_AUTH, [IDI, AUTH, TSI])),
    ("auth request nothing to authenticate", msg(ExchangeType.IKE_AUTH, [N(NotifyType.INITIAL_CONTACT)])),
    ("auth response with IDi", msg(ExchangeType.IKE_AUTH, [IDI, AUTH], True)),
    ("auth response empty", msg(ExchangeType.IKE_AUTH, [], True)),
    ("auth response two AUTH even with error", msg(ExchangeType.IKE_AUTH, [AUTH, AUTH, N(24)], True)),
    ("child without nonce", msg(ExchangeType.CREATE_CHILD_SA, [SA_ESP, TSI, TSR])),
    ("child TSr alone", msg(ExchangeType.CREATE_CHILD_SA, [SA_ESP, NONCE, TSR])),
    ("child two KE", msg(ExchangeType.CREATE_CHILD_SA, [SA_ESP, NONCE, KE, KE])),
    ("child with delete", msg(ExchangeType.CREATE_CHILD_SA, [SA_ESP, NONCE, DeletePayload(ProtocolId.IKE)])),
    ("info with SA", msg(ExchangeType.INFORMATIONAL, [SA_ESP])),
    ("info two CP", msg(ExchangeType.INFORMATIONAL, [CpPayload(CfgType.CFG_SET), CpPayload(CfgType.CFG_SET)])),
    ("followup without KE", msg(ExchangeType.IKE_FOLLOWUP_KE, [N(NotifyType.ADDITIONAL_KEY_EXCHANGE)])),
    ("session resume not supported", msg(ExchangeType.IKE_SESSION_RESUME, [])),
]


@pytest.mark.parametrize(("name", "m"), INVALID, ids=[name for name, _ in INVALID])
def test_violations_raise_invalid_syntax(name: str, m: Message) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check_message(m)
    assert info.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize(
    "m",
    [
        replace(init_request(), encrypted=True),
        replace(auth_request(), encrypted=False),
        msg(ExchangeType.INFORMATIONAL, [], encrypted=False),
    ],
)
def test_wrong_encryption_state_is_silent_drop(m: Message) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check_message(m)
    assert info.value.notify is None


def test_violation_message_names_the_problem() -> None:
    with pytest.raises(RemoteProtocolError, match="missing KE"):
        check_message(replace(init_request(), payloads=[SA_IKE, NONCE]))
    with pytest.raises(RemoteProtocolError, match="TSr"):
        check_message(msg(ExchangeType.IKE_AUTH, [IDI, AUTH, SA_ESP, TSI]))


def test_decoded_messages_pass_rules() -> None:
    sk = NullHmacCipher()
    for m in (init_request(), auth_request()):
        check_message(decode_message(encode_message(m, sk), sk))


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(
        st.sampled_from([IDI, IDR, AUTH, SA_ESP, TSI, TSR, KE, NONCE, N(NotifyType.INITIAL_CONTACT)]), max_size=8
    ),
    exchange=st.sampled_from(list(ExchangeType)),
    message_id=st.integers(0, 0xFFFFFFFF),
    flags=st.tuples(st.booleans(), st.booleans()),
    encrypted=st.booleans(),
)
def test_property_message_roundtrip(
    payloads: list[Payload], exchange: ExchangeType, message_id: int, flags: tuple[bool, bool], encrypted: bool
) -> None:
    sk = NullHmacCipher()
    m = Message(SPI_I, SPI_R, exchange, message_id, flags[0], flags[1], payloads, encrypted)
    data = encode_message(m, sk)
    assert decode_header(data).length == len(data)
    assert decode_message(data, sk) == m
