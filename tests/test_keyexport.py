"""Wireshark decryption tables: exact lines, quoting, and what happens with unsupported algorithms.

The expected lines are written out in full on purpose: Wireshark matches the
algorithm columns by exact string, so a changed space or bracket breaks
decryption without any error message.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from ipaddress import ip_address
from pathlib import Path

import pytest

from ipsecd.iana import EncrId, EsnId, IntegId, ProtocolId, TransformType
from ipsecd.ike.events import ChildSaEstablished
from ipsecd.ike.keymat import ChildKeys, IkeKeys
from ipsecd.ike.payloads import Proposal, Transform
from ipsecd.keyexport import (
    ESP_TABLE,
    IKE_TABLE,
    EspKeyEntry,
    IkeKeyEntry,
    UnsupportedAlgorithm,
    esp_entries,
    esp_table_line,
    export,
    ike_entry,
    ike_table_line,
    uat_string,
)

SPI_I = bytes.fromhex("0011223344556677")
SPI_R = bytes.fromhex("8899aabbccddeeff")


def k(byte: int, n: int) -> bytes:
    return bytes([byte]) * n


# ------------------------------------------------------------------ IKEv2 table


def test_ike_gcm256_line() -> None:
    line = ike_table_line(SPI_I, SPI_R, EncrId.ENCR_AES_GCM_16, 256, None, k(1, 36), k(2, 36), b"", b"")
    assert line == (
        "0011223344556677,8899aabbccddeeff,"
        + "01" * 36 + "," + "02" * 36
        + ',"AES-GCM-256 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"'
    )


def test_ike_cbc128_sha256_line() -> None:
    line = ike_table_line(SPI_I, SPI_R, EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128,
                          k(0xA, 16), k(0xB, 16), k(0xC, 32), k(0xD, 32))
    assert line == (
        "0011223344556677,8899aabbccddeeff,"
        + "0a" * 16 + "," + "0b" * 16
        + ',"AES-CBC-128 [RFC3602]",'
        + "0c" * 32 + "," + "0d" * 32
        + ',"HMAC_SHA2_256_128 [RFC4868]"'
    )


def test_ike_chacha20_is_not_in_wiresharks_ikev2_table() -> None:
    with pytest.raises(UnsupportedAlgorithm, match="ENCR_CHACHA20_POLY1305"):
        ike_table_line(SPI_I, SPI_R, EncrId.ENCR_CHACHA20_POLY1305, None, None, k(1, 36), k(2, 36), b"", b"")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((SPI_I[:4], SPI_R, EncrId.ENCR_AES_GCM_16, 256, None, k(1, 36), k(2, 36), b"", b""), "SPIi"),
        # a GCM key without its 4-octet salt: Wireshark would refuse the whole line
        ((SPI_I, SPI_R, EncrId.ENCR_AES_GCM_16, 256, None, k(1, 32), k(2, 32), b"", b""), "SK_ei is 32"),
        ((SPI_I, SPI_R, EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128, k(1, 16), k(2, 16), b"", b""),
         "SK_ai"),
        ((SPI_I, SPI_R, EncrId.ENCR_AES_GCM_16, 256, IntegId.AUTH_HMAC_SHA2_256_128, k(1, 36), k(2, 36), b"", b""),
         "AEAD"),
    ],
)
def test_ike_line_rejects_inconsistent_input(args: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        ike_table_line(*args)


# ------------------------------------------------------------------ ESP table


def test_esp_gcm256_line_includes_salt_and_null_auth() -> None:
    line = esp_table_line("192.0.2.2", "192.0.2.1", bytes.fromhex("c1a2b3d4"), EncrId.ENCR_AES_GCM_16, 256,
                          None, k(0x11, 36), b"")
    assert line == (
        '"IPv4","192.0.2.2","192.0.2.1","0xc1a2b3d4","AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x' + "11" * 36 + '","NULL",""'
    )


def test_esp_cbc128_sha256_line() -> None:
    line = esp_table_line("2001:db8::1", "2001:db8::2", bytes.fromhex("0badf00d"), EncrId.ENCR_AES_CBC, 128,
                          IntegId.AUTH_HMAC_SHA2_256_128, k(0x22, 16), k(0x33, 32))
    assert line == (
        '"IPv6","2001:db8::1","2001:db8::2","0x0badf00d","AES-CBC [RFC3602]","0x' + "22" * 16
        + '","HMAC-SHA-256-128 [RFC4868]","0x' + "33" * 32 + '"'
    )


def test_esp_chacha20_poly1305_line() -> None:
    line = esp_table_line("10.0.0.1", "10.0.0.2", bytes.fromhex("00000100"), EncrId.ENCR_CHACHA20_POLY1305, None,
                          None, k(0x44, 36), b"")
    assert line == (
        '"IPv4","10.0.0.1","10.0.0.2","0x00000100","ChaCha20 with Poly1305 [RFC7634]","0x' + "44" * 36
        + '","NULL",""'
    )


def test_esp_esn_adds_the_sequence_number_columns() -> None:
    line = esp_table_line("10.0.0.1", "10.0.0.2", bytes.fromhex("00000100"), EncrId.ENCR_AES_GCM_16, 128,
                          None, k(0x44, 20), b"", esn=True)
    assert line.endswith('"NULL","","64-bit","0"')
    assert len(line.split(",")) == 10


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"src": "10.0.0.1", "dst": "2001:db8::1"}, ValueError, "address families"),
        ({"src": "not-an-address"}, ValueError, "not an IP address"),
        ({"spi": b"\x00\x01"}, ValueError, "SPI"),
        ({"encr_id": EncrId.ENCR_AES_CCM_16, "encr_key": k(1, 35)}, UnsupportedAlgorithm, "ENCR_AES_CCM_16"),
        ({"integ_id": IntegId.AUTH_AES_XCBC_96, "encr_id": EncrId.ENCR_AES_CBC, "encr_key": k(1, 16),
          "integ_key": k(2, 16)}, UnsupportedAlgorithm, "AUTH_AES_XCBC_96"),
        ({"encr_key": k(1, 32)}, ValueError, "encryption key is 32 octets, expected 36"),
    ],
)
def test_esp_line_rejects_bad_input(kwargs: dict, exc: type[Exception], message: str) -> None:  # type: ignore[type-arg]
    args = {"src": "10.0.0.1", "dst": "10.0.0.2", "spi": b"\x00\x00\x01\x00", "encr_id": EncrId.ENCR_AES_GCM_16,
            "encr_key_bits": 256, "integ_id": None, "encr_key": k(1, 36), "integ_key": b""}
    args.update(kwargs)
    with pytest.raises(exc, match=message):
        esp_table_line(**args)


# ------------------------------------------------------------------ quoting


def test_uat_string_escapes_quote_backslash_and_control_characters() -> None:
    assert uat_string('a"b\\c') == '"a\\x22b\\x5cc"'
    assert uat_string("x\ny,z") == '"x\\x0ay,z"'  # the comma is safe inside quotes
    assert uat_string("é") == '"\\xc3\\xa9"'
    assert uat_string("AES-CBC [RFC3602]") == '"AES-CBC [RFC3602]"'


# ------------------------------------------------------------------ from engine objects, whole files


def _esp_proposal(encr: EncrId, bits: int | None, integ: IntegId | None, esn: bool) -> Proposal:
    ts = [Transform(TransformType.ENCR, encr, bits)]
    if integ is not None:
        ts.append(Transform(TransformType.INTEG, integ))
    ts.append(Transform(TransformType.ESN, EsnId.ESN if esn else EsnId.NO_ESN))
    return Proposal(1, ProtocolId.ESP, b"\x00\x00\x01\x00", tuple(ts))


def _child(initiator: bool) -> ChildSaEstablished:
    return ChildSaEstablished(
        ike_sa_id=1, name="b", child="net", reqid=1,
        spi_in=bytes.fromhex("c0000001"), spi_out=bytes.fromhex("c0000002"),
        proposal=_esp_proposal(EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_256_128, esn=False),
        keys=ChildKeys(encr_i=k(1, 32), integ_i=k(2, 32), encr_r=k(3, 32), integ_r=k(4, 32)),
        initiator=initiator, mode="tunnel", encap=False, local=("192.0.2.1", 500), remote=("192.0.2.2", 500),
        local_ts=(), remote_ts=(),
    )


def test_esp_entries_pick_direction_keys_for_the_initiator() -> None:
    inbound, outbound = esp_entries(_child(initiator=True))
    # we initiated: the responder's keys (encr_r) protect what we receive
    assert (inbound.src, inbound.dst, inbound.spi.hex()) == ("192.0.2.2", "192.0.2.1", "c0000001")
    assert (inbound.encr_key, inbound.integ_key) == (k(3, 32), k(4, 32))
    assert (outbound.src, outbound.dst, outbound.spi.hex()) == ("192.0.2.1", "192.0.2.2", "c0000002")
    assert (outbound.encr_key, outbound.integ_key) == (k(1, 32), k(2, 32))
    assert not inbound.esn


def test_esp_entries_pick_direction_keys_for_the_responder() -> None:
    inbound, outbound = esp_entries(_child(initiator=False))
    assert inbound.encr_key == k(1, 32) and outbound.encr_key == k(3, 32)


def test_ike_entry_from_proposal_and_keys() -> None:
    proposal = Proposal(1, ProtocolId.IKE, b"", (Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 128),
                                                  Transform(TransformType.PRF, 5), Transform(TransformType.KE, 19)))
    keys = IkeKeys(sk_d=k(9, 32), sk_ai=b"", sk_ar=b"", sk_ei=k(1, 20), sk_er=k(2, 20), sk_pi=k(9, 32),
                   sk_pr=k(9, 32))
    entry = ike_entry(SPI_I, SPI_R, proposal, keys)
    assert entry.line().endswith(',"AES-GCM-128 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"')


def test_entries_hide_keys_from_repr() -> None:
    e = EspKeyEntry("10.0.0.1", "10.0.0.2", b"\x00\x00\x01\x00", EncrId.ENCR_AES_GCM_16, 128, None,
                    bytes.fromhex("deadbeef") * 5, b"")
    i = IkeKeyEntry(SPI_I, SPI_R, EncrId.ENCR_AES_GCM_16, 128, None, bytes.fromhex("deadbeef") * 5, k(1, 20),
                    b"", b"")
    assert "deadbeef" not in repr(e) and "deadbeef" not in repr(i)


def test_export_builds_both_files_and_comments_out_unsupported_sas() -> None:
    ike = [
        IkeKeyEntry(SPI_I, SPI_R, EncrId.ENCR_AES_GCM_16, 256, None, k(1, 36), k(2, 36), b"", b""),
        IkeKeyEntry(SPI_R, SPI_I, EncrId.ENCR_CHACHA20_POLY1305, None, None, k(1, 36), k(2, 36), b"", b""),
    ]
    esp = [EspKeyEntry("10.0.0.1", "10.0.0.2", b"\x00\x00\x01\x00", EncrId.ENCR_CHACHA20_POLY1305, None, None,
                       k(5, 36), b"")]
    files = export(ike, esp)
    assert set(files) == {IKE_TABLE, ESP_TABLE}
    ike_lines = files[IKE_TABLE].splitlines()
    data = [ln for ln in ike_lines if not ln.startswith("#")]
    assert data == [ike[0].line()]
    skipped = [ln for ln in ike_lines if "skipped" in ln]
    assert len(skipped) == 1 and skipped[0].startswith("# IKE SA 8899aabbccddeeff_i 0011223344556677_r skipped:")
    assert "0101" not in skipped[0]  # the reason never carries key material
    assert [ln for ln in files[ESP_TABLE].splitlines() if not ln.startswith("#")] == [esp[0].line()]
    assert all(v.endswith("\n") for v in files.values())


def test_export_with_no_sas_is_just_the_header() -> None:
    files = export([], [])
    assert all(line.startswith("#") for v in files.values() for line in v.splitlines())


# ------------------------------------------------------------------ does Wireshark agree? (tshark, if installed)

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="needs tshark")


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                      ip_address(src).packed, ip_address(dst).packed)
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + payload


def _udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return _ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def _tshark_run(tmp_path: Path, packets: list[bytes], *opts: str) -> subprocess.CompletedProcess[str]:
    pcap = tmp_path / "cap.pcap"
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # LINKTYPE_RAW: bare IP packets
    for i, p in enumerate(packets):
        data += struct.pack("<IIII", 1700000000 + i, 0, len(p), len(p)) + p
    pcap.write_bytes(data)
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))  # no personal tables
    assert TSHARK is not None
    return subprocess.run([TSHARK, "-n", "-r", str(pcap), "-V", *opts], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def _tshark(tmp_path: Path, packets: list[bytes], *opts: str) -> str:
    res = _tshark_run(tmp_path, packets, *opts)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _tshark_knows(tmp_path: Path, table: str, line: str) -> bool:
    """Feature probe: older Wireshark rejects unknown algorithm names and silently ignores unknown columns."""
    res = _tshark_run(tmp_path, [], "-o", f"uat:{table}:{line}")
    return res.returncode == 0


@needs_tshark
@pytest.mark.parametrize(
    ("encr", "bits", "integ", "elen", "alen"),
    [
        (EncrId.ENCR_AES_GCM_16, 256, None, 36, 0),
        (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128, 16, 32),
    ],
)
def test_tshark_decrypts_ike_with_the_exported_table(tmp_path: Path, encr: EncrId, bits: int, integ: IntegId | None,
                                                     elen: int, alen: int) -> None:
    from ipsecd.iana import ExchangeType, IdType, PayloadType
    from ipsecd.ike.message import Message, encode_message
    from ipsecd.ike.payloads import IdPayload
    from ipsecd.ike.sk import make_sk_cipher

    ts = [Transform(TransformType.ENCR, encr, bits), Transform(TransformType.PRF, 5), Transform(TransformType.KE, 19)]
    if integ is not None:
        ts.append(Transform(TransformType.INTEG, integ))
    proposal = Proposal(1, ProtocolId.IKE, b"", tuple(ts))
    keys = IkeKeys(sk_d=k(9, 32), sk_ai=bytes(range(alen)), sk_ar=bytes(range(50, 50 + alen)),
                   sk_ei=bytes(range(100, 100 + elen)), sk_er=bytes(range(150, 150 + elen)), sk_pi=k(9, 32),
                   sk_pr=k(9, 32))
    packets = []
    for initiator, name, ek, ak in ((True, b"alice.test", keys.sk_ei, keys.sk_ai),
                                    (False, b"bob.test", keys.sk_er, keys.sk_ar)):
        msg = Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 1, is_initiator=initiator, is_response=not initiator,
                      payloads=[IdPayload(PayloadType.IDi if initiator else PayloadType.IDr, IdType.ID_FQDN, name)],
                      encrypted=True)
        data = encode_message(msg, make_sk_cipher(proposal, ek, ak))
        packets.append(_udp("192.0.2.1", "192.0.2.2", 500, 500, data) if initiator
                       else _udp("192.0.2.2", "192.0.2.1", 500, 500, data))
    without = _tshark(tmp_path, packets)
    assert "alice.test" not in without  # the ID is inside the SK payload
    line = ike_entry(SPI_I, SPI_R, proposal, keys).line()
    decrypted = _tshark(tmp_path, packets, "-o", f"uat:ikev2_decryption_table:{line}")
    assert "alice.test" in decrypted and "bob.test" in decrypted
    assert "incorrect" not in decrypted.lower()


@needs_tshark
@pytest.mark.parametrize(
    ("encr", "bits", "integ", "klen", "ilen", "esn"),
    [
        (EncrId.ENCR_AES_GCM_16, 256, IntegId.NONE, 36, 0, False),
        (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128, 16, 32, False),
        (EncrId.ENCR_CHACHA20_POLY1305, None, IntegId.NONE, 36, 0, False),
        (EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_256_128, 32, 32, True),
    ],
)
def test_tshark_decrypts_esp_with_the_exported_table(tmp_path: Path, encr: EncrId, bits: int | None,
                                                     integ: IntegId, klen: int, ilen: int, esn: bool) -> None:
    from ipsecd.esp.sa import Mode, OutboundSa, SaParams

    src, dst, spi = "192.0.2.1", "192.0.2.2", 0xC0FFEE01
    params = SaParams(spi=spi, encr=encr, encr_key=bytes(range(1, klen + 1)), integ=integ,
                      integ_key=bytes(range(100, 100 + ilen)), esn=esn, mode=Mode.TUNNEL,
                      local_addr=ip_address(src), remote_addr=ip_address(dst))
    out = OutboundSa(params)
    inner = _udp("10.1.0.1", "10.2.0.1", 4242, 7777, b"wireshark can read this")
    packets = [_ipv4(src, dst, 50, out.protect(inner)) for _ in range(2)]
    line = esp_table_line(src, dst, spi.to_bytes(4, "big"), encr, bits, None if integ == IntegId.NONE else integ,
                          params.encr_key, params.integ_key, esn=esn)
    if encr == EncrId.ENCR_CHACHA20_POLY1305 and not _tshark_knows(tmp_path, "esp_sa", line):
        pytest.skip("this Wireshark predates ChaCha20-Poly1305 in esp_sa (Debian 12 ships 4.0, which has not)")
    if esn and _tshark_knows(tmp_path, "esp_sa", line.rsplit(",", 2)[0] + ',"no-such-length","0"'):
        pytest.skip("this Wireshark has no sequence-number-length column in esp_sa, so no ESN (4.0 has none)")
    text = _tshark(tmp_path, packets, "-o", "esp.enable_encryption_decode:TRUE", "-o",
                   "esp.enable_authentication_check:TRUE", "-o", f"uat:esp_sa:{line}")
    assert "Dst Port: 7777" in text
    assert b"wireshark can read this".hex() in text.replace(" ", "").replace(":", "") or \
        "wireshark can read this" in text
    assert "incorrect" not in text.lower()
