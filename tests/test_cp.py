"""Configuration payload values (RFC 7296 3.15, RFC 8598): our codec, with scapy as a second opinion."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from ipsecd.iana import CfgType, ConfigAttribute, ExchangeType, PrivateConfigAttribute
from ipsecd.ike.cp import (
    CpValueError,
    attribute_name,
    decode_attribute,
    encode_address,
    encode_network,
    requested_addresses,
)
from ipsecd.ike.message import Message, decode_message, encode_message
from ipsecd.ike.payloads import CpPayload

A = ConfigAttribute
SPI_I, SPI_R = bytes.fromhex("a1a2a3a4a5a6a7a8"), bytes.fromhex("b1b2b3b4b5b6b7b8")

REPLY = CpPayload(CfgType.CFG_REPLY, (
    encode_address(IPv4Address("10.3.0.1")),
    encode_address(IPv6Address("fd00:3::1")),
    (A.INTERNAL_IP4_DNS, IPv4Address("10.2.0.53").packed),
    (A.INTERNAL_IP6_DNS, IPv6Address("fd00:2::53").packed),
    (A.INTERNAL_IP4_NBNS, IPv4Address("10.2.0.54").packed),
    encode_network(A.INTERNAL_IP4_SUBNET, IPv4Network("10.2.0.0/16")),
    encode_network(A.INTERNAL_IP6_SUBNET, IPv6Network("fd00:2::/48")),
    (A.INTERNAL_DNS_DOMAIN, b"corp.example"),
    encode_network(PrivateConfigAttribute.UNITY_SPLIT_INCLUDE, IPv4Network("192.168.0.0/24")),
    (31000, b"\x01\x02\x03"),  # private use, unknown to everyone
))


def test_values_decode_by_type() -> None:
    got = [decode_attribute(t, v) for t, v in REPLY.attributes]
    assert got == [
        IPv4Address("10.3.0.1"), IPv6Interface("fd00:3::1/128"), IPv4Address("10.2.0.53"),
        IPv6Address("fd00:2::53"), IPv4Address("10.2.0.54"), IPv4Network("10.2.0.0/16"),
        IPv6Network("fd00:2::/48"), "corp.example", b"\xc0\xa8\x00\x00\xff\xff\xff\x00", b"\x01\x02\x03",
    ]


def test_empty_values_are_requests() -> None:
    for t in (A.INTERNAL_IP4_ADDRESS, A.INTERNAL_IP6_ADDRESS, A.INTERNAL_IP4_DNS, A.INTERNAL_DNS_DOMAIN, 23456):
        assert decode_attribute(t, b"") is None


@pytest.mark.parametrize(("attr", "value", "why"), [
    (A.INTERNAL_IP4_ADDRESS, b"\x0a\x00\x00", "of 3 bytes, expected 0 or 4"),
    (A.INTERNAL_IP4_DNS, bytes(16), "of 16 bytes, expected 0 or 4"),
    (A.INTERNAL_IP6_ADDRESS, bytes(16), "expected 0 or 17"),
    (A.INTERNAL_IP6_ADDRESS, bytes(16) + b"\x81", "expected 0 or 17"),  # prefix length 129
    (A.INTERNAL_IP6_DNS, bytes(4), "expected 0 or 16"),
    (A.INTERNAL_IP4_SUBNET, bytes(4), "expected 8"),
    (A.INTERNAL_IP4_SUBNET, bytes(4) + b"\xff\x00\xff\x00", "not contiguous"),
    (A.INTERNAL_IP6_SUBNET, bytes(16), "expected 17"),
    (A.SUPPORTED_ATTRIBUTES, b"\x00\x01\x00", "multiple of 2"),
    (A.INTERNAL_DNS_DOMAIN, "bücher.example".encode(), "not ASCII"),
    (PrivateConfigAttribute.INTERNAL_IP4_SERVER, bytes(5), "expected 0 or 4"),
])
def test_wrong_lengths_and_forms_are_refused(attr: int, value: bytes, why: str) -> None:
    with pytest.raises(CpValueError, match=why):
        decode_attribute(attr, value)


def test_names() -> None:
    assert attribute_name(25) == "INTERNAL_DNS_DOMAIN"
    assert attribute_name(23456) == "INTERNAL_IP4_SERVER"
    assert attribute_name(28678) == "UNITY_LOCAL_LAN"
    assert attribute_name(31000) == "attribute 31000"
    assert decode_attribute(A.SUPPORTED_ATTRIBUTES, b"\x00\x01\x00\x19") == (1, 25)


def test_requested_addresses_per_family() -> None:
    # Windows: ADDR, DNS, NBNS, SRV, ADDR6, DNS6, SRV6 -- only the addresses matter here
    windows = ((1, b""), (3, b""), (4, b""), (23456, b""), (8, b""), (10, b""), (23457, b""))
    assert requested_addresses(windows) == {4: None, 6: None}
    # a hint, an unspecified address (strongSwan's %any) and a malformed hint (treated as none)
    assert requested_addresses(((1, IPv4Address("10.3.0.7").packed),)) == {4: IPv4Address("10.3.0.7")}
    assert requested_addresses(((1, bytes(4)), (8, bytes(17)))) == {4: None, 6: None}
    assert requested_addresses(((1, b"\x01"),)) == {4: None}
    assert requested_addresses(((8, IPv6Address("fd00::9").packed + b"\x40"),)) == {6: IPv6Address("fd00::9")}
    assert requested_addresses(((3, b""), (25, b""))) == {}


def test_a_cp_payload_round_trips_in_a_message_with_unknown_attributes_kept() -> None:
    m = Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 1, False, True, [REPLY], encrypted=False)
    data = encode_message(m)
    (back,) = decode_message(data).payloads
    assert back == REPLY


# --------------------------------------------------------------------------- scapy as the independent dissector

ikev2 = pytest.importorskip("scapy.contrib.ikev2")


def _scapy_attributes(data: bytes) -> list[tuple[int, object]]:
    cp = ikev2.IKEv2(data)[ikev2.IKEv2_CP]
    return [(a.type, a.value) for a in cp.attributes]


def test_our_cp_reply_parsed_by_scapy() -> None:
    data = encode_message(Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 1, False, True, [REPLY], encrypted=False))
    cp = ikev2.IKEv2(data)[ikev2.IKEv2_CP]
    assert cp.CFGType == CfgType.CFG_REPLY
    got = _scapy_attributes(data)
    assert [t for t, _ in got] == [t for t, _ in REPLY.attributes]
    # scapy reads addresses of the types it knows, the rest as bytes: every value must agree
    assert got[0][1] == "10.3.0.1"
    assert got[1][1] == IPv6Address("fd00:3::1").packed + b"\x80"
    assert got[2][1] == "10.2.0.53"
    assert got[3][1] == "fd00:2::53"
    assert got[4][1] == "10.2.0.54"
    assert got[7][1] == b"corp.example"
    assert [v for _, v in got[5:7]] == [v for _, v in REPLY.attributes[5:7]]
    assert got[9][1] == b"\x01\x02\x03"


def test_scapy_cp_request_decoded_by_us() -> None:
    req = ikev2.IKEv2(init_SPI=SPI_I, resp_SPI=SPI_R, exch_type=ExchangeType.IKE_AUTH, flags="Initiator", id=1) / \
        ikev2.IKEv2_CP(CFGType="CFG_REQUEST", attributes=[
            ikev2.ConfigurationAttribute(type=1), ikev2.ConfigurationAttribute(type=2),
            ikev2.ConfigurationAttribute(type=3), ikev2.ConfigurationAttribute(type=8),
            ikev2.ConfigurationAttribute(type=25),
            ikev2.ConfigurationAttribute(type=23456),
            ikev2.ConfigurationAttribute(type=1, length=4, value="10.3.0.9"),
        ])
    (cp,) = decode_message(bytes(req)).payloads
    assert isinstance(cp, CpPayload) and cp.cfg_type == CfgType.CFG_REQUEST
    assert cp.attributes == ((1, b""), (2, b""), (3, b""), (8, b""), (25, b""), (23456, b""),
                             (1, IPv4Address("10.3.0.9").packed))
    assert requested_addresses(cp.attributes) == {4: None, 6: None}  # the first ADDR request wins
