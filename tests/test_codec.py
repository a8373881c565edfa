"""Payload codec: round trips, exact bytes, and malformed input (RFC 7296 section 3)."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import (
    AuthMethod,
    CertEncoding,
    CfgType,
    ConfigAttribute,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    KeId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from ipsecd.ike.codec import decode_payloads, encode_payload_body, encode_payloads
from ipsecd.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
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

IKE_PROPOSAL = Proposal(
    1,
    ProtocolId.IKE,
    b"",
    (
        Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, 256),
        Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128),
        Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
        Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
        Transform(TransformType.KE, KeId.CURVE25519),
        Transform(TransformType.KE, KeId.MODP_2048),
    ),
)
AEAD_PROPOSAL = Proposal(
    2,
    ProtocolId.IKE,
    b"",
    (
        Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256),
        Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_384),
        Transform(TransformType.KE, KeId.ECP_256),
    ),
)
ESP_PROPOSAL = Proposal(
    1,
    ProtocolId.ESP,
    b"\x11\x22\x33\x44",
    (
        Transform(TransformType.ENCR, EncrId.ENCR_CHACHA20_POLY1305),
        Transform(TransformType.ESN, EsnId.NO_ESN),
        Transform(TransformType.ESN, EsnId.ESN),
    ),
)
TS4 = TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535, IPv4Address("10.0.0.0"), IPv4Address("10.0.0.255"))
TS6 = TrafficSelector(
    TsType.TS_IPV6_ADDR_RANGE, 17, 500, 4500, IPv6Address("2001:db8::"), IPv6Address("2001:db8::ffff")
)

SAMPLES: list[Payload] = [
    SaPayload((IKE_PROPOSAL, AEAD_PROPOSAL)),
    SaPayload((ESP_PROPOSAL,)),
    SaPayload((Proposal(1, ProtocolId.IKE, b"\x01" * 8, (Transform(TransformType.ENCR, 12, 128),)),)),
    KePayload(KeId.CURVE25519, bytes(range(32))),
    IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"alice.example"),
    IdPayload(PayloadType.IDr, IdType.ID_IPV4_ADDR, b"\xc0\x00\x02\x01"),
    CertPayload(CertEncoding.X509_CERTIFICATE_SIGNATURE, b"\x30\x82der"),
    CertReqPayload(CertEncoding.X509_CERTIFICATE_SIGNATURE, b"\xaa" * 20),
    AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, b"\x55" * 32),
    NoncePayload(b"\x42" * 32),
    NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=b"\x01" * 20),
    NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, b"\xde\xad\xbe\xef"),
    NotifyPayload(0xABCD, data=b"unknown type survives"),
    DeletePayload(ProtocolId.IKE),
    DeletePayload(ProtocolId.ESP, (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02", b"\xff\xff\xff\xff")),
    VendorIdPayload(b"ipsecd"),
    TsPayload(PayloadType.TSi, (TS4, TS6)),
    TsPayload(PayloadType.TSr, (TS4,)),
    CpPayload(
        CfgType.CFG_REQUEST,
        ((ConfigAttribute.INTERNAL_IP4_ADDRESS, b""), (ConfigAttribute.INTERNAL_IP4_DNS, b"")),
    ),
    CpPayload(CfgType.CFG_REPLY, ((ConfigAttribute.INTERNAL_IP4_ADDRESS, b"\x0a\x00\x00\x02"),)),
    EapPayload(b"\x02\x07\x00\x0a\x01alice"),
    UnknownPayload(200, False, b"opaque"),
]


def roundtrip(payloads: list[Payload]) -> list[Payload]:
    first, data = encode_payloads(payloads)
    return decode_payloads(first, data)


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_single_payload_roundtrip(payload: Payload) -> None:
    assert roundtrip([payload]) == [payload]


def test_chain_roundtrip_and_next_payload_fields() -> None:
    first, data = encode_payloads(SAMPLES)
    assert first == PayloadType.SA
    assert decode_payloads(first, data) == SAMPLES
    # Walk the generic headers by hand: each Next Payload names the following type, the last is 0.
    pos, types = 0, []
    while pos < len(data):
        types.append(data[pos])
        assert data[pos + 1] == 0  # critical bit clear on everything we send
        pos += int.from_bytes(data[pos + 2 : pos + 4], "big")
    assert pos == len(data)
    assert types == [int(p.payload_type) for p in SAMPLES[1:]] + [0]


def test_empty_chain() -> None:
    assert encode_payloads([]) == (PayloadType.NO_NEXT_PAYLOAD, b"")
    assert decode_payloads(PayloadType.NO_NEXT_PAYLOAD, b"") == []


def test_id_body_is_type_reserved_data() -> None:
    # RFC 7296 2.15: the AUTH computation hashes exactly this (RestOfIDPayload).
    body = encode_payload_body(IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"a.b"))
    assert body == b"\x02\x00\x00\x00a.b"


def test_sa_exact_bytes() -> None:
    sa = SaPayload(
        (
            Proposal(
                1,
                ProtocolId.ESP,
                b"\x01\x02\x03\x04",
                (Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128), Transform(TransformType.ESN, 0)),
            ),
        )
    )
    expected = bytes.fromhex(
        "00 00 0020 01 03 04 02 01020304"  # last proposal, len 32, #1, ESP, SPI size 4, 2 transforms
        "03 00 000c 01 00 000c 800e0080"  # more, len 12, ENCR, AES-CBC, Key Length 128 (TV)
        "00 00 0008 05 00 0000"  # last, len 8, ESN, none
    )
    assert encode_payload_body(sa) == expected
    assert decode_payloads(PayloadType.SA, b"\x00\x00" + (4 + len(expected)).to_bytes(2, "big") + expected) == [sa]


def test_ts_and_ke_exact_bytes() -> None:
    assert encode_payload_body(TsPayload(PayloadType.TSi, (TS4,))) == bytes.fromhex(
        "01000000 07 00 0010 0000 ffff 0a000000 0a0000ff"
    )
    assert encode_payload_body(KePayload(14, b"\xab\xcd")) == bytes.fromhex("000e 0000 abcd")
    assert encode_payload_body(NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, b"\x01\x02\x03\x04")) == (
        bytes.fromhex("03 04 4009 01020304")
    )
    assert encode_payload_body(DeletePayload(ProtocolId.IKE)) == bytes.fromhex("01 00 0000")


def wrap(ptype: int, body: bytes, critical: bool = False, next_type: int = 0) -> bytes:
    """One payload with its generic header (``ptype`` only documents the caller's intent)."""
    return bytes((next_type, 0x80 if critical else 0)) + (4 + len(body)).to_bytes(2, "big") + body


def expect_syntax(ptype: int, body: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_payloads(ptype, wrap(ptype, body))
    assert info.value.notify == NotifyType.INVALID_SYNTAX
    return info.value


# --- critical bit (RFC 7296 2.5) ---


def test_unknown_critical_payload_rejected_with_type() -> None:
    data = wrap(200, b"xx", critical=True)
    with pytest.raises(RemoteProtocolError) as info:
        decode_payloads(200, data)
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert info.value.notify_data == bytes([200])


def test_unknown_noncritical_payload_kept_and_chain_continues() -> None:
    nonce = b"\x01" * 16
    data = wrap(201, b"abc", next_type=PayloadType.NONCE) + wrap(PayloadType.NONCE, nonce)
    assert decode_payloads(201, data) == [UnknownPayload(201, False, b"abc"), NoncePayload(nonce)]


def test_known_payload_with_critical_bit_decodes() -> None:
    nonce = b"\x02" * 20
    assert decode_payloads(PayloadType.NONCE, wrap(PayloadType.NONCE, nonce, critical=True)) == [NoncePayload(nonce)]


def test_unknown_critical_payload_encodes_with_bit() -> None:
    first, data = encode_payloads([UnknownPayload(222, True, b"")])
    assert (first, data) == (222, b"\x00\x80\x00\x04")


# --- generic header ---


def test_generic_length_below_four() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_payloads(PayloadType.VENDOR_ID, b"\x00\x00\x00\x03")
    assert info.value.notify == NotifyType.INVALID_SYNTAX


def test_generic_length_beyond_data() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_payloads(PayloadType.VENDOR_ID, b"\x00\x00\x00\x09abcd")


def test_trailing_garbage_after_chain() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_payloads(PayloadType.VENDOR_ID, wrap(PayloadType.VENDOR_ID, b"v") + b"\x00")


def test_sk_inside_chain_rejected() -> None:
    expect_syntax(PayloadType.SK, b"\x00" * 16)


# --- SA ---


def proposal_bytes(
    num: int, proto: int, spi: bytes, transforms: list[bytes], last: int = 0, count: int | None = None
) -> bytes:
    body = bytes((num, proto, len(spi), len(transforms) if count is None else count)) + spi + b"".join(transforms)
    return bytes((last, 0)) + (4 + len(body)).to_bytes(2, "big") + body


def transform_bytes(ttype: int, tid: int, attrs: bytes = b"", last: int = 0) -> bytes:
    body = bytes((ttype, 0)) + tid.to_bytes(2, "big") + attrs
    return bytes((last, 0)) + (4 + len(body)).to_bytes(2, "big") + body


ENCR = transform_bytes(TransformType.ENCR, EncrId.ENCR_AES_CBC, b"\x80\x0e\x00\x80", last=3)
PRF = transform_bytes(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256, last=3)
KE = transform_bytes(TransformType.KE, KeId.MODP_2048)


def test_sa_proposal_numbers_must_increase_by_one() -> None:
    p1 = proposal_bytes(1, ProtocolId.IKE, b"", [ENCR, PRF, KE], last=2)
    p3 = proposal_bytes(3, ProtocolId.IKE, b"", [ENCR, PRF, KE])
    expect_syntax(PayloadType.SA, p1 + p3)
    expect_syntax(PayloadType.SA, proposal_bytes(0, ProtocolId.IKE, b"", [ENCR, PRF, KE]))
    # a response carries one proposal with the number of the accepted one (RFC 7296 3.3.1)
    body = proposal_bytes(2, ProtocolId.IKE, b"", [ENCR, PRF, KE])
    (sa,) = decode_payloads(PayloadType.SA, wrap(PayloadType.SA, body))
    assert isinstance(sa, SaPayload)
    assert sa.proposals[0].num == 2


@pytest.mark.parametrize(
    ("proto", "spi"),
    [(ProtocolId.IKE, b"\x00" * 4), (ProtocolId.ESP, b""), (ProtocolId.ESP, b"\x00" * 8), (ProtocolId.AH, b"\x00")],
)
def test_sa_spi_size_validated_per_protocol(proto: int, spi: bytes) -> None:
    expect_syntax(PayloadType.SA, proposal_bytes(1, proto, spi, [ENCR, PRF, KE]))


def test_sa_last_substruc_values() -> None:
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [ENCR, PRF, KE], last=3))
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [ENCR, PRF, KE], last=2))
    # Transform marked "more" but none follows.
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [ENCR, PRF]))
    # Transform marked "last" but another follows.
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [KE, ENCR, KE]))
    bad_last = transform_bytes(TransformType.KE, KeId.MODP_2048, last=1)
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [bad_last]))


def test_sa_transform_count_must_match() -> None:
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [ENCR, PRF, KE], count=4))


def test_sa_empty_or_short_structures() -> None:
    expect_syntax(PayloadType.SA, b"")
    expect_syntax(PayloadType.SA, b"\x00\x00\x00\x07\x01\x01\x00")
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [b"\x00\x00\x00\x07\x01\x00\x00"]))


def test_sa_key_length_must_be_tv_and_single() -> None:
    tlv = transform_bytes(TransformType.ENCR, EncrId.ENCR_AES_CBC, b"\x00\x0e\x00\x02\x00\x80", last=3)
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [tlv, KE]))
    twice = transform_bytes(TransformType.ENCR, EncrId.ENCR_AES_CBC, b"\x80\x0e\x00\x80\x80\x0e\x01\x00", last=3)
    expect_syntax(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [twice, KE]))


def test_sa_unknown_attribute_drops_only_that_transform() -> None:
    odd = transform_bytes(TransformType.ENCR, EncrId.ENCR_AES_CTR, b"\x80\x0e\x00\x80\x00\x63\x00\x01z", last=3)
    body = proposal_bytes(1, ProtocolId.IKE, b"", [odd, ENCR, PRF, KE])
    (sa,) = decode_payloads(PayloadType.SA, wrap(PayloadType.SA, body))
    assert isinstance(sa, SaPayload)
    assert [t.id for t in sa.proposals[0].transforms] == [EncrId.ENCR_AES_CBC, PrfId.PRF_HMAC_SHA2_256, KeId.MODP_2048]


def test_sa_unknown_transform_type_or_protocol_drops_proposal() -> None:
    weird = transform_bytes(99, 1, last=3)
    p1 = proposal_bytes(1, ProtocolId.IKE, b"", [weird, ENCR, PRF, KE], last=2)
    p2 = proposal_bytes(2, 77, b"\x01\x02", [ENCR, PRF, KE], last=2)
    p3 = proposal_bytes(3, ProtocolId.IKE, b"", [ENCR, PRF, KE])
    (sa,) = decode_payloads(PayloadType.SA, wrap(PayloadType.SA, p1 + p2 + p3))
    assert isinstance(sa, SaPayload)
    assert [p.num for p in sa.proposals] == [3]
    assert sa.proposals[0].transforms[0] == Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128)


def test_sa_unknown_transform_id_is_kept() -> None:
    t = transform_bytes(TransformType.ENCR, 1000)
    (sa,) = decode_payloads(PayloadType.SA, wrap(PayloadType.SA, proposal_bytes(1, ProtocolId.IKE, b"", [t])))
    assert isinstance(sa, SaPayload)
    assert sa.proposals[0].transforms == (Transform(TransformType.ENCR, 1000),)


# --- TS ---


def test_ts_wrong_selector_length() -> None:
    sel = bytes.fromhex("07 00 0014 0000 ffff 0a000000 0a0000ff 00000000")
    expect_syntax(PayloadType.TSi, b"\x01\x00\x00\x00" + sel)
    sel6 = bytes.fromhex("08 00 0010 0000 ffff 0a000000 0a0000ff")
    expect_syntax(PayloadType.TSi, b"\x01\x00\x00\x00" + sel6)


def test_ts_count_must_match() -> None:
    sel = encode_payload_body(TsPayload(PayloadType.TSi, (TS4,)))[4:]
    expect_syntax(PayloadType.TSi, b"\x02\x00\x00\x00" + sel)
    expect_syntax(PayloadType.TSi, b"\x01\x00\x00\x00" + sel + sel)


def test_ts_unknown_type_skipped() -> None:
    sel = encode_payload_body(TsPayload(PayloadType.TSr, (TS4,)))[4:]
    unknown = bytes.fromhex("09 00 0008 01020304")  # e.g. TS_FC_ADDR_RANGE, here 8 bytes
    (ts,) = decode_payloads(PayloadType.TSr, wrap(PayloadType.TSr, b"\x02\x00\x00\x00" + unknown + sel))
    assert ts == TsPayload(PayloadType.TSr, (TS4,))


def test_ts_selector_length_below_header() -> None:
    expect_syntax(PayloadType.TSi, b"\x01\x00\x00\x00" + bytes.fromhex("09 00 0002"))


# --- Notify, Delete, CP, Nonce, EAP, fixed-header payloads ---


def test_notify_protocol_ignored_without_spi() -> None:
    (n,) = decode_payloads(PayloadType.NOTIFY, wrap(PayloadType.NOTIFY, bytes.fromhex("03 00 4000")))
    assert n == NotifyPayload(NotifyType.INITIAL_CONTACT, ProtocolId.NONE, b"", b"")


def test_notify_spi_beyond_payload() -> None:
    expect_syntax(PayloadType.NOTIFY, bytes.fromhex("03 04 4009 0102"))
    expect_syntax(PayloadType.NOTIFY, bytes.fromhex("03 04 40"))


@pytest.mark.parametrize(
    "body",
    [
        "01 04 0001 01020304",  # IKE with an SPI size
        "01 00 0001",  # IKE with an SPI count
        "03 08 0001 0102030405060708",  # ESP with 8-byte SPI
        "03 04 0002 01020304",  # count says 2, one present
        "03 04 0001 0102030405",  # trailing byte
        "00 00 0000",  # protocol NONE
        "09 04 0000",  # unknown protocol
        "03 04 00",  # short header
    ],
)
def test_delete_validation(body: str) -> None:
    expect_syntax(PayloadType.DELETE, bytes.fromhex(body))


def test_cp_reserved_bit_ignored_and_truncation() -> None:
    body = bytes.fromhex("01000000 8001 0000 0003 0002 0a00")
    (cp,) = decode_payloads(PayloadType.CP, wrap(PayloadType.CP, body))
    assert cp == CpPayload(CfgType.CFG_REQUEST, ((1, b""), (3, b"\x0a\x00")))
    expect_syntax(PayloadType.CP, bytes.fromhex("01000000 0001 0004 0a00"))
    expect_syntax(PayloadType.CP, bytes.fromhex("01000000 00"))


@pytest.mark.parametrize("size", [0, 15, 257, 300])
def test_nonce_size_limits(size: int) -> None:
    expect_syntax(PayloadType.NONCE, b"\x00" * size)


@pytest.mark.parametrize("size", [16, 256])
def test_nonce_size_bounds_accepted(size: int) -> None:
    assert decode_payloads(PayloadType.NONCE, wrap(PayloadType.NONCE, b"\x00" * size)) == [NoncePayload(b"\x00" * size)]


@pytest.mark.parametrize("body", ["", "010200", "01020005", "0102000401"])
def test_eap_length_must_match(body: str) -> None:
    expect_syntax(PayloadType.EAP, bytes.fromhex(body))


@pytest.mark.parametrize(
    ("ptype", "body"),
    [
        (PayloadType.KE, "000e00"),
        (PayloadType.IDi, "020000"),
        (PayloadType.IDr, ""),
        (PayloadType.AUTH, "0200"),
        (PayloadType.CERT, ""),
        (PayloadType.CERTREQ, ""),
        (PayloadType.TSi, "010000"),
        (PayloadType.CP, ""),
    ],
)
def test_short_fixed_headers(ptype: int, body: str) -> None:
    expect_syntax(ptype, bytes.fromhex(body))


def test_unknown_registry_values_survive_as_ints() -> None:
    body = b"\x63\x00\x00\x00ident"
    (idp,) = decode_payloads(PayloadType.IDi, wrap(PayloadType.IDi, body))
    assert isinstance(idp, IdPayload)
    assert idp.id_type == 0x63
    assert encode_payload_body(idp) == body


# --- robustness ---


def test_truncation_at_every_offset_raises_only_remote_error() -> None:
    first, data = encode_payloads(SAMPLES)
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            decode_payloads(first, data[:cut])


def test_bit_flips_raise_only_remote_error() -> None:
    first, data = encode_payloads(SAMPLES)
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            mutated = data[:pos] + bytes((data[pos] ^ mask,)) + data[pos + 1 :]
            with contextlib.suppress(RemoteProtocolError):
                decode_payloads(first, mutated)


@settings(max_examples=400, deadline=None)
@given(first=st.integers(0, 255), data=st.binary(max_size=300))
def test_random_garbage_raises_only_remote_error(first: int, data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_payloads(first, data)


@settings(max_examples=300, deadline=None)
@given(first=st.sampled_from(list(PayloadType)), data=st.binary(max_size=120))
def test_garbage_bodies_of_known_types(first: PayloadType, data: bytes) -> None:
    chain = wrap(first, data)
    with contextlib.suppress(RemoteProtocolError):
        decode_payloads(first, chain)


# --- property round trips ---

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
spi4 = st.binary(min_size=4, max_size=4)

transforms = st.builds(
    Transform,
    type=st.sampled_from(list(TransformType)),
    id=u16,
    key_length=st.none() | u16,
)


@st.composite
def proposals_st(draw: st.DrawFn) -> tuple[Proposal, ...]:
    count = draw(st.integers(1, 4))
    out = []
    for num in range(1, count + 1):
        proto = draw(st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]))
        spi = draw(st.sampled_from([b"", b"\x01" * 8])) if proto == ProtocolId.IKE else draw(spi4)
        out.append(Proposal(num, proto, spi, tuple(draw(st.lists(transforms, max_size=6)))))
    return tuple(out)


@st.composite
def selectors_st(draw: st.DrawFn) -> TrafficSelector:
    v6 = draw(st.booleans())
    addr = st.ip_addresses(v=6 if v6 else 4)
    return TrafficSelector(
        TsType.TS_IPV6_ADDR_RANGE if v6 else TsType.TS_IPV4_ADDR_RANGE,
        draw(u8),
        draw(u16),
        draw(u16),
        draw(addr),
        draw(addr),
    )


payloads_st = st.one_of(
    st.builds(SaPayload, proposals=proposals_st()),
    st.builds(KePayload, group=u16, data=st.binary(max_size=64)),
    st.builds(
        IdPayload,
        kind=st.sampled_from([PayloadType.IDi, PayloadType.IDr]),
        id_type=st.sampled_from(list(IdType)),
        data=st.binary(max_size=40),
    ),
    st.builds(AuthPayload, method=st.sampled_from(list(AuthMethod)), data=st.binary(max_size=40)),
    st.builds(NoncePayload, data=st.binary(min_size=16, max_size=256)),
    st.builds(
        NotifyPayload,
        notify_type=u16,
        protocol=st.sampled_from([ProtocolId.ESP, ProtocolId.AH]),
        spi=spi4,
        data=st.binary(max_size=20),
    ),
    st.builds(DeletePayload, protocol=st.just(ProtocolId.ESP), spis=st.lists(spi4, max_size=5).map(tuple)),
    st.builds(
        TsPayload,
        kind=st.sampled_from([PayloadType.TSi, PayloadType.TSr]),
        selectors=st.lists(selectors_st(), max_size=4).map(tuple),
    ),
    st.builds(
        CpPayload,
        cfg_type=st.sampled_from(list(CfgType)),
        attributes=st.lists(st.tuples(st.integers(0, 0x7FFF), st.binary(max_size=16)), max_size=4).map(tuple),
    ),
    st.builds(VendorIdPayload, data=st.binary(max_size=20)),
    st.binary(max_size=20).map(lambda d: EapPayload(bytes((1, 2)) + (4 + len(d)).to_bytes(2, "big") + d)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads_st, max_size=6))
def test_property_roundtrip(payloads: list[Payload]) -> None:
    assert roundtrip(payloads) == payloads
