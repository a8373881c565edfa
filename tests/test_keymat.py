"""Key derivation (ipsecd.ike.keymat) against NIST CAVP IKEv2 KDF vectors
(SP 800-135; the HMAC-SHA1 cases carried in libreswan's and an OpenSSL FIPS
module's self-tests) and against the RFC 7296 formulas written out with the
standard library."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ipsecd.errors import LocalProtocolError
from ipsecd.iana import ProtocolId, TransformType
from ipsecd.ike.crypto import Prf, prf_plus
from ipsecd.ike.keymat import (
    KEY_PAD,
    ChildKeys,
    IkeKeys,
    derive_child_keys,
    derive_ike_keys,
    derive_ike_rekey_keys,
    psk_auth_data,
    signed_octets,
    skeyseed,
    skeyseed_rekey,
    verify_psk_auth,
)
from ipsecd.ike.payloads import Proposal, Transform
from ipsecd.ike.proposal import parse_proposal


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# CAVP IKEv2 KDF, HMAC-SHA1, g^ir 1024 bits, DKM 1056 bits.
CAVP_A = {
    "ni": "3651fef5c9c35e93",
    "nr": "c09a8b90a3f04d59",
    "spii": "8e5c3ae507221684",
    "spir": "b1f201bb155c3acd",
    "gir": "d084a30166a50fb7325c3960874a839449ef9741c2f4f947d0201dd8c1269273d79509f37e3ca3eb4fa2fe2a28254e28"
    "9cd3f34dad4eb4df1a07685a4b8a94fa61e2491f7598b3ce65547ff133b3f63d1ac4175eaa695033f3cedb026a6873a3"
    "6455172a8540b8a5d23a0143bed0390ee49b168269d75fffee9fb62be965993c",
    "gir_new": "52f00ab174c25d5b7139ae5ff4e8e9eddee5992d2e36adf8a559ffd90dab1442e4fbe429d320c0f33552a17d1557fa41"
    "ea70e8fb916c4fa27ed52b5f8ebd8461afa78f1159159a64055ac5f6319e29c28eae58cbc6847770f32c3fed1d047504"
    "84f854790f95e9ec01bc5bc461f24966462e359511329305038e94deb6dd42c2",
    "skeyseed": "cd2e8050137832245f1dbacc6e4f0a92f94d45d6",
    "dkm": "6f1b12cad3cbe097b35430356d869d54cddb0198ec859174d53ceb92dddedbe2436db69f60977c58fa63bbb667f8d369"
    "20b109baae8f6c61a9ac49feda01843225d080ec5539d5881a25521ffb2a0a91874a9c0a27fcc2d717eb8963a9e3a89c"
    "7ab264757284c28cf8c3ca40576f4220b052b1fb8e9ad60ba3c80557323331a8cbb89f20",
    "dkm_child": "4727dc0ef94eb326ce131cf282fb652faa638ad0ddae3786a11bcc0309876009f8c485de011ad962c5b1ca8a41ff8145"
    "445749079c5686e26ffebbc342f06981f3da745e11ca0976424d1f8caec623d59dc7186deb20a27b411d1dcb70a36544"
    "0bf7de905088b0692e8addc094e18d1939bdb67e89798ca6b239e2ccb81c2409dac0106c",
    "dkm_child_dh": "b109c21ad4c0797768c1cec9e63554681e48f224bca7f23c20c4ea7041983451e9aa1d5408656c8a975ff1b9d9a12c75"
    "ffeb64bdecb30174664cccb4e14f1c377b7f6d1525af77c7092aac3e47f917ebae8297fb5539d2008ce830823a09cc19"
    "7361d4a289c72745f6ce9fefe812be5bf55b3200fbb82e41a4a40877d3fe106db909707b",
    "skeyseed_rekey": "3b03bce748c96d5e8306918d2ff89b68f0648da3",
}

# CAVP IKEv2 KDF, HMAC-SHA1, g^ir 256 bits (no child KEYMAT values published with it).
CAVP_B = {
    "ni": "32b50d5f4a3763f3",
    "nr": "9206a04b26564cb1",
    "spii": "34c9e7c188868785",
    "spir": "3ff77d760d2b2199",
    "gir": "4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52",
    "gir_new": "863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330",
    "skeyseed": "a9a7b222b59f8f48645f28a1db5b5f5d7479cba7",
    "skeyseed_rekey": "63e81194946ebd05df7df5ebf5d8750056bf1f1d",
    "dkm": "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b76606f9fa5e9"
    "92204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119"
    "8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4",
}

SHA1 = Prf(2)  # PRF_HMAC_SHA1: the CAVP vectors use it


def concat(k: IkeKeys) -> bytes:
    return k.sk_d + k.sk_ai + k.sk_ar + k.sk_ei + k.sk_er + k.sk_pi + k.sk_pr


@pytest.mark.parametrize("v", [CAVP_A, CAVP_B], ids=["A", "B"])
def test_cavp_skeyseed_and_dkm(v: dict[str, str]) -> None:
    ni, nr, spii, spir = h(v["ni"]), h(v["nr"]), h(v["spii"]), h(v["spir"])
    seed = skeyseed(SHA1, ni, nr, h(v["gir"]))
    assert seed == h(v["skeyseed"])
    dkm = h(v["dkm"])
    assert prf_plus(SHA1, seed, ni + nr + spii + spir, len(dkm)) == dkm
    # aes128-sha1 with prfsha1 needs exactly 20 + 2*20 + 2*16 + 2*20 = 132 octets.
    proposal = parse_proposal("aes128-sha1-prfsha1-modp1024", ProtocolId.IKE)
    keys = derive_ike_keys(proposal, ni, nr, h(v["gir"]), spii, spir)
    assert concat(keys) == dkm
    assert (len(keys.sk_d), len(keys.sk_ai), len(keys.sk_ei), len(keys.sk_pi)) == (20, 20, 16, 20)
    # SKEYSEED for a rekey uses SK_d (the first 20 octets of DKM).
    assert skeyseed_rekey(SHA1, dkm[:20], ni, nr, h(v["gir_new"])) == h(v["skeyseed_rekey"])


def test_cavp_child_keymat() -> None:
    v = CAVP_A
    ni, nr = h(v["ni"]), h(v["nr"])
    sk_d = h(v["dkm"])[:20]
    esp = parse_proposal("aes128-sha1", ProtocolId.ESP)
    keys = derive_child_keys(SHA1, sk_d, esp, ni, nr)
    assert keys.encr_i + keys.integ_i + keys.encr_r + keys.integ_r == h(v["dkm_child"])[:72]
    assert (len(keys.encr_i), len(keys.integ_i)) == (16, 20)
    pfs = derive_child_keys(SHA1, sk_d, esp, ni, nr, h(v["gir_new"]))
    assert pfs.encr_i + pfs.integ_i + pfs.encr_r + pfs.integ_r == h(v["dkm_child_dh"])[:72]


def test_rekey_keys_follow_rfc7296_2_18() -> None:
    v = CAVP_A
    ni, nr, spii, spir = h(v["ni"]), h(v["nr"]), h(v["spii"]), h(v["spir"])
    sk_d = h(v["dkm"])[:20]
    new = parse_proposal("aes256gcm16-prfsha256-ecp256", ProtocolId.IKE)
    keys = derive_ike_rekey_keys(SHA1, sk_d, new, ni, nr, h(v["gir_new"]), spii, spir)
    # SKEYSEED under the OLD prf, prf+ under the NEW one.
    stream = prf_plus(Prf(5), h(v["skeyseed_rekey"]), ni + nr + spii + spir, 32 + 2 * 36 + 2 * 32)
    assert concat(keys) == stream
    assert keys.sk_ai == keys.sk_ar == b""
    assert len(keys.sk_ei) == 36  # AES-256 key + 4-octet salt


def _stdlib_prf_plus(key: bytes, seed: bytes, n: int, algo: str) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(key, t + seed + bytes([i]), algo).digest()
        out += t
        i += 1
    return out[:n]


@pytest.mark.parametrize(
    ("text", "algo", "lens"),
    [
        ("aes256gcm16-prfsha256-ecp256", "sha256", (32, 0, 36, 32)),
        ("aes128gcm16-prfsha384-x25519", "sha384", (48, 0, 20, 48)),
        ("chacha20poly1305-prfsha512-x448", "sha512", (64, 0, 36, 64)),
        ("aes128-sha256-modp2048", "sha256", (32, 32, 16, 32)),
        ("aes256-sha384-ecp384", "sha384", (48, 48, 32, 48)),
        ("aes256-sha512-prfsha256-ecp521", "sha256", (32, 64, 32, 32)),
    ],
)
def test_ike_key_sizes_and_order(text: str, algo: str, lens: tuple[int, int, int, int]) -> None:
    proposal = parse_proposal(text, ProtocolId.IKE)
    ni, nr, g, spii, spir = b"\x11" * 32, b"\x22" * 32, b"\x33" * 64, b"\x44" * 8, b"\x55" * 8
    keys = derive_ike_keys(proposal, ni, nr, g, spii, spir)
    d, a, e, p = lens
    assert (len(keys.sk_d), len(keys.sk_ai), len(keys.sk_ei), len(keys.sk_pi)) == (d, a, e, p)
    seed = hmac.new(ni + nr, g, algo).digest()
    assert concat(keys) == _stdlib_prf_plus(seed, ni + nr + spii + spir, d + 2 * a + 2 * e + 2 * p, algo)


def test_ike_keys_repr_hides_material() -> None:
    proposal = parse_proposal("aes128-sha256-modp2048", ProtocolId.IKE)
    keys = derive_ike_keys(proposal, b"n" * 32, b"m" * 32, b"\xab" * 256, b"i" * 8, b"r" * 8)
    text = repr(keys) + str(keys)
    for k in (keys.sk_d, keys.sk_ai, keys.sk_ei, keys.sk_pi):
        assert k.hex() not in text
        assert repr(k) not in text
    child = derive_child_keys(Prf(5), keys.sk_d, parse_proposal("aes256gcm16", ProtocolId.ESP), b"n", b"m")
    assert child.encr_i.hex() not in repr(child)


def test_child_keys_layout_aead_and_directions() -> None:
    prf = Prf(5)
    sk_d = b"\x01" * 32
    ni, nr = b"\x02" * 32, b"\x03" * 32
    keys = derive_child_keys(prf, sk_d, parse_proposal("aes256gcm16", ProtocolId.ESP), ni, nr)
    assert isinstance(keys, ChildKeys)
    assert keys.integ_i == keys.integ_r == b""
    stream = _stdlib_prf_plus(sk_d, ni + nr, 72, "sha256")
    # RFC 7296 2.17: initiator->responder first; the 4-octet salt ends each encryption key.
    assert keys.encr_i == stream[:36] and keys.encr_r == stream[36:]
    cbc = derive_child_keys(prf, sk_d, parse_proposal("aes128-sha256", ProtocolId.ESP), ni, nr, b"g" * 32)
    stream = _stdlib_prf_plus(sk_d, b"g" * 32 + ni + nr, 2 * (16 + 32), "sha256")
    assert (cbc.encr_i, cbc.integ_i, cbc.encr_r, cbc.integ_r) == (
        stream[:16],
        stream[16:48],
        stream[48:64],
        stream[64:],
    )


def test_derivation_rejects_unchosen_proposals() -> None:
    offered = parse_proposal("aes128-aes256-sha256-modp2048", ProtocolId.IKE)
    with pytest.raises(LocalProtocolError):
        derive_ike_keys(offered, b"n", b"n", b"g", b"i" * 8, b"r" * 8)
    with pytest.raises(LocalProtocolError):
        derive_ike_keys(parse_proposal("aes128-sha256-modp2048", ProtocolId.IKE), b"n", b"n", b"g", b"i", b"r" * 8)
    no_prf = Proposal(1, ProtocolId.IKE, b"", (Transform(TransformType.ENCR, 12, 128),))
    with pytest.raises(LocalProtocolError):
        derive_ike_keys(no_prf, b"n", b"n", b"g", b"i" * 8, b"r" * 8)
    cbc_no_integ = Proposal(
        1, ProtocolId.ESP, b"", (Transform(TransformType.ENCR, 12, 128), Transform(TransformType.ESN, 0))
    )
    with pytest.raises(LocalProtocolError):
        derive_child_keys(Prf(5), b"d" * 32, cbc_no_integ, b"n", b"m")


def test_signed_octets_and_psk_auth() -> None:
    prf = Prf(5)
    sk_pi = b"\x07" * 32
    real = b"IKE_SA_INIT request bytes"
    nr = b"\x08" * 32
    id_body = bytes([2, 0, 0, 0]) + b"alice.example"  # ID type FQDN, reserved, data
    octets = signed_octets(prf, sk_pi, real, nr, id_body)
    assert octets == real + nr + hmac.new(sk_pi, id_body, hashlib.sha256).digest()
    psk = b"correct horse battery staple"
    expected = hmac.new(hmac.new(psk, KEY_PAD, hashlib.sha256).digest(), octets, hashlib.sha256).digest()
    assert KEY_PAD == b"Key Pad for IKEv2"
    assert psk_auth_data(prf, psk, octets) == expected
    assert verify_psk_auth(prf, psk, octets, expected)
    assert not verify_psk_auth(prf, psk, octets, expected[:-1] + bytes([expected[-1] ^ 1]))
    assert not verify_psk_auth(prf, b"wrong", octets, expected)
    assert not verify_psk_auth(prf, psk, octets, b"")


def test_cmac_prf_truncates_nonces_for_skeyseed() -> None:
    # RFC 7296 2.14: with a fixed-key-size PRF, SKEYSEED is keyed with the
    # first 64 bits of Ni and of Nr.
    prf = Prf(8)
    ni, nr = bytes(range(32)), bytes(range(100, 132))
    assert skeyseed(prf, ni, nr, b"g") == prf(ni[:8] + nr[:8], b"g")
