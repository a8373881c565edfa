"""Cross-check the codec against scapy's independent IKEv2 dissector, both directions."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from ipsecd.iana import (
    AuthMethod,
    EncrId,
    ExchangeType,
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
from ipsecd.ike.message import Message, decode_message, encode_message
from ipsecd.ike.payloads import (
    AuthPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
)

ikev2 = pytest.importorskip("scapy.contrib.ikev2")

SPI_I = bytes.fromhex("a1a2a3a4a5a6a7a8")
SPI_R = bytes.fromhex("b1b2b3b4b5b6b7b8")
KE_DATA = bytes(range(32))
NONCE = bytes(range(100, 132))
NATD = b"\x33" * 20

OUR_SA = SaPayload(
    (
        Proposal(
            1,
            ProtocolId.IKE,
            b"",
            (
                Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, 256),
                Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
                Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
                Transform(TransformType.KE, KeId.MODP_2048),
            ),
        ),
        Proposal(
            2,
            ProtocolId.IKE,
            b"",
            (
                Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 128),
                Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_384),
                Transform(TransformType.KE, KeId.CURVE25519),
            ),
        ),
    )
)


def scapy_proposals(sa_layer: object) -> list[object]:
    out = []
    prop = sa_layer.prop  # type: ignore[attr-defined]
    while isinstance(prop, ikev2.IKEv2_Proposal):
        out.append(prop)
        prop = prop.payload
    return out


def scapy_transforms(prop: object) -> list[object]:
    out = []
    t = prop.trans  # type: ignore[attr-defined]
    while isinstance(t, ikev2.IKEv2_Transform):
        out.append(t)
        t = t.payload
    return out


def test_our_ike_sa_init_parsed_by_scapy() -> None:
    m = Message(
        SPI_I,
        b"\x00" * 8,
        ExchangeType.IKE_SA_INIT,
        0,
        True,
        False,
        [
            OUR_SA,
            KePayload(KeId.MODP_2048, KE_DATA),
            NoncePayload(NONCE),
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=NATD),
            NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, data=NATD[::-1]),
        ],
    )
    data = encode_message(m)
    pkt = ikev2.IKEv2(data)
    assert pkt.init_SPI == SPI_I
    assert pkt.resp_SPI == b"\x00" * 8
    assert pkt.exch_type == ExchangeType.IKE_SA_INIT
    assert pkt.version == 0x20
    assert int(pkt.flags) == 0x08
    assert pkt.id == 0
    assert pkt.length == len(data)

    sa = pkt[ikev2.IKEv2_SA]
    props = scapy_proposals(sa)
    assert [p.proposal for p in props] == [1, 2]  # type: ignore[attr-defined]
    assert [p.proto for p in props] == [ProtocolId.IKE, ProtocolId.IKE]  # type: ignore[attr-defined]
    for ours, theirs in zip(OUR_SA.proposals, props, strict=True):
        assert theirs.trans_nb == len(ours.transforms)  # type: ignore[attr-defined]
        got = [
            (t.transform_type, t.transform_id, t.key_length if t.length > 8 else None)  # type: ignore[attr-defined]
            for t in scapy_transforms(theirs)
        ]
        assert got == [(t.type, t.id, t.key_length) for t in ours.transforms]

    ke = pkt[ikev2.IKEv2_KE]
    assert ke.group == KeId.MODP_2048
    assert ke.ke == KE_DATA
    assert pkt[ikev2.IKEv2_Nonce].nonce == NONCE
    notifies = []
    layer = pkt[ikev2.IKEv2_Notify]
    while isinstance(layer, ikev2.IKEv2_Notify):
        notifies.append((layer.type, layer.notify))
        layer = layer.payload
    assert notifies == [
        (NotifyType.NAT_DETECTION_SOURCE_IP, NATD),
        (NotifyType.NAT_DETECTION_DESTINATION_IP, NATD[::-1]),
    ]


def test_scapy_ike_sa_init_decoded_by_us() -> None:
    trans = (
        ikev2.IKEv2_Transform(transform_type=1, transform_id=EncrId.ENCR_AES_CBC, length=12, key_length=128)
        / ikev2.IKEv2_Transform(transform_type=2, transform_id=PrfId.PRF_HMAC_SHA2_256)
        / ikev2.IKEv2_Transform(transform_type=3, transform_id=IntegId.AUTH_HMAC_SHA2_256_128)
        / ikev2.IKEv2_Transform(transform_type=4, transform_id=KeId.ECP_256)
    )
    pkt = (
        ikev2.IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, exch_type=34, flags="Response", id=0)
        / ikev2.IKEv2_SA(prop=ikev2.IKEv2_Proposal(proposal=1, proto=1, trans_nb=4, trans=trans))
        / ikev2.IKEv2_KE(group=KeId.ECP_256, ke=KE_DATA * 2)
        / ikev2.IKEv2_Nonce(nonce=NONCE)
        / ikev2.IKEv2_Notify(type=NotifyType.NAT_DETECTION_SOURCE_IP, notify=NATD)
        / ikev2.IKEv2_Notify(proto=3, SPIsize=4, SPI=b"\x01\x02\x03\x04", type=NotifyType.REKEY_SA)
    )
    m = decode_message(bytes(pkt))
    assert (m.spi_i, m.spi_r, m.exchange, m.message_id) == (SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, 0)
    assert m.is_response and not m.is_initiator
    assert not m.encrypted
    assert m.payloads == [
        SaPayload(
            (
                Proposal(
                    1,
                    ProtocolId.IKE,
                    b"",
                    (
                        Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128),
                        Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
                        Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
                        Transform(TransformType.KE, KeId.ECP_256),
                    ),
                ),
            )
        ),
        KePayload(KeId.ECP_256, KE_DATA * 2),
        NoncePayload(NONCE),
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=NATD),
        NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, b"\x01\x02\x03\x04"),
    ]


TS_A = TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 6, 80, 443, IPv4Address("10.1.0.0"), IPv4Address("10.1.255.255"))
TS_B = TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535, IPv4Address("192.0.2.7"), IPv4Address("192.0.2.7"))


def test_our_auth_payloads_parsed_by_scapy() -> None:
    # Sent in the clear here only so scapy can read the payloads; the codec does not care.
    m = Message(
        SPI_I,
        SPI_R,
        ExchangeType.IKE_AUTH,
        1,
        True,
        False,
        [
            IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"alice.example"),
            AuthPayload(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, b"\x77" * 32),
            TsPayload(PayloadType.TSi, (TS_A, TS_B)),
        ],
    )
    pkt = ikev2.IKEv2(encode_message(m))
    assert pkt.id == 1
    idi = pkt[ikev2.IKEv2_IDi]
    assert (idi.IDtype, idi.ID) == (IdType.ID_FQDN, b"alice.example")
    auth = pkt[ikev2.IKEv2_AUTH]
    assert (auth.auth_type, auth.load) == (AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, b"\x77" * 32)
    tsi = pkt[ikev2.IKEv2_TSi]
    assert tsi.number_of_TSs == 2
    got = [
        (s.TS_type, s.IP_protocol_ID, s.length, s.start_port, s.end_port, s.starting_address_v4, s.ending_address_v4)
        for s in tsi.traffic_selector
    ]
    assert got == [
        (7, 6, 16, 80, 443, "10.1.0.0", "10.1.255.255"),
        (7, 0, 16, 0, 65535, "192.0.2.7", "192.0.2.7"),
    ]


def test_scapy_ts_and_delete_decoded_by_us() -> None:
    pkt = (
        ikev2.IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, exch_type=37, flags="Initiator", id=7)
        / ikev2.IKEv2_TSi(
            traffic_selector=[
                ikev2.IPv4TrafficSelector(
                    IP_protocol_ID=6,
                    start_port=80,
                    end_port=443,
                    starting_address_v4="10.1.0.0",
                    ending_address_v4="10.1.255.255",
                ),
                ikev2.IPv4TrafficSelector(
                    IP_protocol_ID=0, starting_address_v4="192.0.2.7", ending_address_v4="192.0.2.7"
                ),
            ]
        )
        / ikev2.IKEv2_Delete(proto=3, SPIsize=4, SPInum=2, SPI=[b"\x00\x00\x10\x01", b"\x00\x00\x10\x02"])
        / ikev2.IKEv2_Delete(proto=1, SPIsize=0, SPInum=0)
    )
    m = decode_message(bytes(pkt))
    assert (m.exchange, m.message_id, m.is_initiator) == (ExchangeType.INFORMATIONAL, 7, True)
    assert m.payloads == [
        TsPayload(PayloadType.TSi, (TS_A, TS_B)),
        DeletePayload(ProtocolId.ESP, (b"\x00\x00\x10\x01", b"\x00\x00\x10\x02")),
        DeletePayload(ProtocolId.IKE),
    ]


def test_our_delete_parsed_by_scapy() -> None:
    m = Message(
        SPI_I,
        SPI_R,
        ExchangeType.INFORMATIONAL,
        3,
        False,
        False,
        [DeletePayload(ProtocolId.ESP, (b"\xaa\xbb\xcc\xdd", b"\x01\x02\x03\x04"))],
    )
    d = ikev2.IKEv2(encode_message(m))[ikev2.IKEv2_Delete]
    assert (d.proto, d.SPIsize, d.SPInum) == (3, 4, 2)
    assert d.SPI == [b"\xaa\xbb\xcc\xdd", b"\x01\x02\x03\x04"]


def test_ipv6_selectors_both_ways() -> None:
    ts6 = TrafficSelector(
        TsType.TS_IPV6_ADDR_RANGE, 17, 500, 4500, IPv6Address("2001:db8::1"), IPv6Address("2001:db8::ff")
    )
    m = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 2, True, False, [TsPayload(PayloadType.TSr, (ts6,))])
    (sel,) = ikev2.IKEv2(encode_message(m))[ikev2.IKEv2_TSr].traffic_selector
    assert (sel.TS_type, sel.IP_protocol_ID, sel.length, sel.start_port, sel.end_port) == (8, 17, 40, 500, 4500)
    assert (sel.starting_address_v6, sel.ending_address_v6) == ("2001:db8::1", "2001:db8::ff")
    # scapy's IPv6 selector defaults its length to 20; RFC 7296 3.13.1 says 40.
    pkt = ikev2.IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, exch_type=37, id=2) / ikev2.IKEv2_TSr(
        traffic_selector=[
            ikev2.IPv6TrafficSelector(
                IP_protocol_ID=17,
                length=40,
                start_port=500,
                end_port=4500,
                starting_address_v6="2001:db8::1",
                ending_address_v6="2001:db8::ff",
            )
        ]
    )
    assert decode_message(bytes(pkt)).payloads == [TsPayload(PayloadType.TSr, (ts6,))]
