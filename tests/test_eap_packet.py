"""EAP packet codec (RFC 3748 4, 5): round trips, every length check, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsecd.eap.packet import EapDecodeError, EapPacket
from ipsecd.errors import RemoteProtocolError
from ipsecd.iana import EapCode, EapType, NotifyType


def test_identity_request_and_response_round_trip() -> None:
    req = EapPacket.request(7, EapType.IDENTITY)
    assert req.encode() == bytes.fromhex("0107000501")
    resp = EapPacket.decode(bytes.fromhex("020700 0a 01 616c696365".replace(" ", "")))
    assert resp == EapPacket.response(7, EapType.IDENTITY, b"alice")
    assert EapPacket.decode(resp.encode()) == resp


def test_success_failure_have_no_type() -> None:
    assert EapPacket.success(3).encode() == bytes.fromhex("03030004")
    assert EapPacket.decode(bytes.fromhex("04090004")) == EapPacket.failure(9)
    with pytest.raises(EapDecodeError, match="Length 5"):
        EapPacket.decode(bytes.fromhex("0309000500"))


def test_padding_after_length_is_ignored() -> None:
    pkt = EapPacket.decode(bytes.fromhex("0107000501") + b"\x00" * 10)
    assert pkt == EapPacket.request(7, EapType.IDENTITY)


def test_nak_lists_types_and_zero_means_none() -> None:
    nak = EapPacket.nak(4, [EapType.TLS, EapType.MSCHAPV2])
    assert nak.encode() == bytes.fromhex("020400070 30d1a".replace(" ", ""))
    assert EapPacket.decode(nak.encode()).nak_types() == [13, 26]
    assert EapPacket.nak(4, []).nak_types() == []
    with pytest.raises(EapDecodeError, match="Nak in a request"):
        EapPacket.decode(bytes.fromhex("0104000603 1a".replace(" ", "")))


def test_expanded_type_is_parsed_and_expanded_nak_understood() -> None:
    # Expanded Nak (RFC 3748 5.3.2): vendor 0 type 3, listing IETF type 26 in expanded form
    entry = bytes([254]) + (0).to_bytes(3, "big") + (26).to_bytes(4, "big")
    pkt = EapPacket(EapCode.RESPONSE, 5, EapType.EXPANDED, entry, vendor_id=0, vendor_type=EapType.NAK)
    back = EapPacket.decode(pkt.encode())
    assert (back.vendor_id, back.vendor_type, back.data) == (0, 3, entry)
    assert back.method == EapType.NAK
    assert back.nak_types() == [26]
    vendor = EapPacket.decode(bytes.fromhex("01010010fe") + (311).to_bytes(3, "big") + (5).to_bytes(4, "big") + b"xyzw")
    assert (vendor.vendor_id, vendor.vendor_type, vendor.data, vendor.method) == (311, 5, b"xyzw", 254)
    with pytest.raises(EapDecodeError, match="Expanded"):
        EapPacket.decode(bytes.fromhex("01010008fe000000"))


@pytest.mark.parametrize(("raw", "match"), [
    (b"", "shorter than its header"),
    (b"\x01\x01\x00", "shorter than its header"),
    (bytes.fromhex("01010003"), "below the header size"),
    (bytes.fromhex("01010009" "01"), "exceeds"),
    (bytes.fromhex("05010005" "01"), "unknown EAP Code"),
    (bytes.fromhex("01010004"), "without a Type"),
    (bytes.fromhex("00000004"), "unknown EAP Code"),
])
def test_malformed_packets_raise_remote_protocol_error(raw: bytes, match: str) -> None:
    with pytest.raises(EapDecodeError, match=match) as info:
        EapPacket.decode(raw)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.notify == NotifyType.AUTHENTICATION_FAILED


def test_too_long_packet_refused_on_encode() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        EapPacket.request(1, EapType.TLS, b"x" * 0xFFFF).encode()


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        pkt = EapPacket.decode(data)
    except EapDecodeError:
        return
    assert EapPacket.decode(pkt.encode()) == pkt
