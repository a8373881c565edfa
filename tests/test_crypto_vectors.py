"""Known answers for the IKE transforms in ipsecd.ike.crypto (and the AEAD
primitives behind ipsecd.ike.sk).

Sources: RFC 4231 / RFC 2202 HMAC and NIST GCM/CCM files from
cryptography-vectors; RFC 4493/4615 AES-CMAC, RFC 5903 ECP, RFC 7748/8031
Curve25519/448 and RFC 7539 ChaCha20-Poly1305 bytes as carried in strongSwan's
test vectors; MODP results checked against plain modular exponentiation.
"""

from __future__ import annotations

import hashlib
import hmac

import cryptography_vectors
import pytest

from ipsecd.errors import LocalProtocolError, RemoteProtocolError
from ipsecd.iana import EncrId, IntegId, KeId, NotifyType, PrfId
from ipsecd.ike.crypto import (
    Prf,
    accept_key_exchange,
    create_key_exchange,
    encr_key_len,
    integ_icv_len,
    integ_key_len,
    is_aead,
    is_kem,
    ke_public_len,
    key_exchange_from_private,
    modp_prime,
    prf_plus,
    supported_groups,
)
from ipsecd.ike.sk import AeadSkCipher


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def load_kv_blocks(path: str) -> list[dict[str, str]]:
    """Parse a NIST/RFC 'Key = value' vector file into blocks (bracketed
    section headers are merged into every block that follows them)."""
    blocks: list[dict[str, str]] = []
    section: dict[str, str] = {}
    current: dict[str, str] = {}
    with cryptography_vectors.open_vector_file(path, "r") as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("#"):
                continue
            if not line:
                if current:
                    blocks.append({**section, **current})
                    current = {}
                continue
            if line.startswith("[") and line.endswith("]"):
                if current:
                    blocks.append({**section, **current})
                    current = {}
                for part in line[1:-1].split(","):
                    k, _, v = part.partition("=")
                    section[k.strip()] = v.strip()
                continue
            k, _, v = line.partition("=")
            k, v = k.strip(), v.strip()
            if k.lower() in ("count",) and current:
                blocks.append({**section, **current})
                current = {}
            if k == "Key" and not current:
                # CCM files put the key above the counted blocks.
                section["Key"] = v
                continue
            current[k] = v
    if current:
        blocks.append({**section, **current})
    return blocks


# --------------------------------------------------------------------------
# PRF
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "prf_id"),
    [
        ("HMAC/rfc-4231-sha256.txt", PrfId.PRF_HMAC_SHA2_256),
        ("HMAC/rfc-4231-sha384.txt", PrfId.PRF_HMAC_SHA2_384),
        ("HMAC/rfc-4231-sha512.txt", PrfId.PRF_HMAC_SHA2_512),
        ("HMAC/rfc-2202-sha1.txt", PrfId.PRF_HMAC_SHA1),
        ("HMAC/rfc-2202-md5.txt", PrfId.PRF_HMAC_MD5),
    ],
)
def test_hmac_prf_known_answers(path: str, prf_id: PrfId) -> None:
    prf = Prf(prf_id)
    cases = [b for b in load_kv_blocks(path) if "MD" in b or "Digest" in b]
    assert cases
    for case in cases:
        key = h(case["Key"])
        msg = h(case["Msg"]) if "Msg" in case else h(case["Data"])
        expected = h(case.get("MD") or case["Digest"])
        assert prf(key, msg) == expected
    assert prf.output_len == prf.key_len == len(expected)


@pytest.mark.parametrize(
    ("key", "msg", "out"),
    [
        # RFC 4493 examples 1-2 (16-byte key)
        ("2b7e151628aed2a6abf7158809cf4f3c", "", "bb1d6929e95937287fa37d129b756746"),
        ("2b7e151628aed2a6abf7158809cf4f3c", "6bc1bee22e409f96e93d7e117393172a", "070a16b46b4d4144f79bdd9dd04a287c"),
        # RFC 4615 test cases 1-3: 18-, 16- and 10-byte keys
        ("000102030405060708090a0b0c0d0e0fedcb", "000102030405060708090a0b0c0d0e0f10111213",
         "84a348a4a45d235babfffc0d2b4da09a"),
        ("000102030405060708090a0b0c0d0e0f", "000102030405060708090a0b0c0d0e0f10111213",
         "980ae87b5f4c9c5214f5b6a8455e4c2d"),
        ("00010203040506070809", "000102030405060708090a0b0c0d0e0f10111213",
         "290d9e112edb09ee141fcf64c0b72f3d"),
    ],
)  # fmt: skip
def test_aes_cmac_prf_rfc4615(key: str, msg: str, out: str) -> None:
    prf = Prf(PrfId.PRF_AES128_CMAC)
    assert prf.fixed_key_size
    assert prf(h(key), h(msg)) == h(out)


def test_unsupported_prf_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Prf(PrfId.PRF_AES128_XCBC)
    with pytest.raises(LocalProtocolError):
        Prf(99)


def _reference_prf_plus(key: bytes, seed: bytes, n: int) -> bytes:
    # RFC 7296 2.13 written out with the standard library as an independent oracle.
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(key, t + seed + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 64, 100, 255 * 32])
def test_prf_plus_matches_definition(length: int) -> None:
    prf = Prf(PrfId.PRF_HMAC_SHA2_256)
    key, seed = b"k" * 40, b"seed" * 9
    assert prf_plus(prf, key, seed, length) == _reference_prf_plus(key, seed, length)


def test_prf_plus_refuses_more_than_255_iterations() -> None:
    prf = Prf(PrfId.PRF_HMAC_SHA2_256)
    with pytest.raises(LocalProtocolError):
        prf_plus(prf, b"k", b"s", 255 * 32 + 1)
    with pytest.raises(ValueError):
        prf_plus(prf, b"k", b"s", -1)


# --------------------------------------------------------------------------
# key length helpers
# --------------------------------------------------------------------------


def test_key_lengths() -> None:
    assert encr_key_len(EncrId.ENCR_AES_CBC, 128) == 16
    assert encr_key_len(EncrId.ENCR_AES_CBC, 256) == 32
    assert encr_key_len(EncrId.ENCR_AES_GCM_16, 128) == 20  # RFC 5282 7.1: 4-octet salt
    assert encr_key_len(EncrId.ENCR_AES_GCM_16, 256) == 36
    assert encr_key_len(EncrId.ENCR_AES_CCM_16, 128) == 19  # RFC 4309: 3-octet salt
    assert encr_key_len(EncrId.ENCR_CHACHA20_POLY1305, None) == 36  # RFC 7634 2
    assert encr_key_len(EncrId.ENCR_3DES, None) == 24
    for bad in ((EncrId.ENCR_AES_CBC, None), (EncrId.ENCR_AES_CBC, 100), (EncrId.ENCR_CHACHA20_POLY1305, 128)):
        with pytest.raises(LocalProtocolError):
            encr_key_len(*bad)
    with pytest.raises(LocalProtocolError):
        encr_key_len(EncrId.ENCR_NULL, None)
    assert is_aead(EncrId.ENCR_AES_GCM_16) and is_aead(EncrId.ENCR_CHACHA20_POLY1305)
    assert not is_aead(EncrId.ENCR_AES_CBC)
    assert integ_key_len(IntegId.AUTH_HMAC_SHA2_256_128) == 32
    assert integ_key_len(IntegId.AUTH_HMAC_SHA2_384_192) == 48
    assert integ_key_len(IntegId.AUTH_HMAC_SHA2_512_256) == 64
    assert integ_key_len(IntegId.AUTH_HMAC_SHA1_96) == 20
    assert integ_key_len(IntegId.NONE) == 0
    assert integ_icv_len(IntegId.AUTH_HMAC_SHA2_256_128) == 16
    assert integ_icv_len(IntegId.AUTH_HMAC_SHA2_512_256) == 32
    with pytest.raises(LocalProtocolError):
        integ_key_len(IntegId.AUTH_AES_XCBC_96)


# --------------------------------------------------------------------------
# AEAD primitives (through AeadSkCipher.encrypt_raw/decrypt_raw)
# --------------------------------------------------------------------------

_GCM_BY_TAG = {128: EncrId.ENCR_AES_GCM_16, 96: EncrId.ENCR_AES_GCM_12, 64: EncrId.ENCR_AES_GCM_8}


@pytest.mark.parametrize("bits", [128, 256])
def test_aes_gcm_nist_vectors(bits: int) -> None:
    seen: dict[tuple[str, str, str, str], int] = {}
    checked = 0
    for case in load_kv_blocks(f"ciphers/AES/GCM/gcmEncryptExtIV{bits}.rsp"):
        if case.get("IVlen") != "96" or int(case["Taglen"]) not in _GCM_BY_TAG or "Tag" not in case:
            continue
        section = (case["PTlen"], case["AADlen"], case["Taglen"], case["IVlen"])
        if seen.get(section, 0) >= 2:  # a couple per section keeps this fast
            continue
        seen[section] = seen.get(section, 0) + 1
        key, iv = h(case["Key"]), h(case["IV"])
        # The 96-bit GCM nonce is salt(4) | explicit IV(8) (RFC 5282 4).
        cipher = AeadSkCipher(_GCM_BY_TAG[int(case["Taglen"])], bits, key + iv[:4])
        pt, aad, expected = h(case["PT"]), h(case["AAD"]), h(case["CT"]) + h(case["Tag"])
        assert cipher.encrypt_raw(iv[4:], pt, aad) == expected
        assert cipher.decrypt_raw(iv[4:], expected, aad) == pt
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize("bits", [128, 256])
def test_aes_ccm_nist_vectors_with_ikev2_nonce_size(bits: int) -> None:
    cases = [c for c in load_kv_blocks(f"ciphers/AES/CCM/VNT{bits}.rsp") if c.get("Nlen") == "11" and "CT" in c]
    assert cases
    for case in cases:
        nonce = h(case["Nonce"])
        # RFC 4309 / RFC 5282: CCM nonce = salt(3) | IV(8).
        cipher = AeadSkCipher(EncrId.ENCR_AES_CCM_16, bits, h(case["Key"]) + nonce[:3])
        ct = cipher.encrypt_raw(nonce[3:], h(case["Payload"]), h(case["Adata"]))
        assert ct == h(case["CT"])


def test_chacha20_poly1305_rfc7539_2_8_2() -> None:
    cipher = AeadSkCipher(
        EncrId.ENCR_CHACHA20_POLY1305,
        None,
        h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f") + h("07000000"),
    )
    plain = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it."
    )
    expected = h(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
        "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
        "1ae10b594f09e26a7e902ecbd0600691"
    )
    aad = h("50515253c0c1c2c3c4c5c6c7")
    assert cipher.encrypt_raw(h("4041424344454647"), plain, aad) == expected
    assert cipher.decrypt_raw(h("4041424344454647"), expected, aad) == plain


# --------------------------------------------------------------------------
# key exchange
# --------------------------------------------------------------------------

MODP_GROUPS = [KeId.MODP_1024, KeId.MODP_1536, KeId.MODP_2048, KeId.MODP_3072, KeId.MODP_4096]


def _invalid_syntax(exc: pytest.ExceptionInfo[RemoteProtocolError]) -> None:
    assert exc.value.notify == NotifyType.INVALID_SYNTAX


def test_supported_groups() -> None:
    groups = supported_groups()
    for g in (*MODP_GROUPS, KeId.ECP_256, KeId.ECP_384, KeId.ECP_521, KeId.CURVE25519, KeId.CURVE448):
        assert g in groups
    assert KeId.MODP_768 not in groups
    with pytest.raises(LocalProtocolError):
        create_key_exchange(KeId.MODP_768)


@pytest.mark.parametrize("group", MODP_GROUPS)
def test_modp_against_modular_exponentiation(group: KeId) -> None:
    p = modp_prime(group)
    size = ke_public_len(group)
    assert size * 8 == p.bit_length()
    xi, xr = 0x1234567890ABCDEF1357 + group, 0xFEDCBA0987654321 * group
    ki = key_exchange_from_private(group, xi.to_bytes(32, "big"))
    kr = key_exchange_from_private(group, xr.to_bytes(32, "big"))
    assert ki.public_key == pow(2, xi, p).to_bytes(size, "big")
    expected = pow(2, xi * xr, p).to_bytes(size, "big")  # RFC 7296 2.14: padded to the prime's length
    assert ki.compute_shared(kr.public_key) == expected
    assert kr.compute_shared(ki.public_key) == expected


@pytest.mark.parametrize("group", MODP_GROUPS)
def test_modp_rejects_degenerate_values(group: KeId) -> None:
    p = modp_prime(group)
    size = ke_public_len(group)
    ke = create_key_exchange(group)
    for y in (0, 1, p - 1, p, 2 ** (size * 8) - 1):
        with pytest.raises(RemoteProtocolError) as exc:
            ke.compute_shared(y.to_bytes(size, "big"))
        _invalid_syntax(exc)
    for bad_len in (size - 1, size + 1, 0):
        with pytest.raises(RemoteProtocolError) as exc:
            ke.compute_shared(b"\x02" * bad_len)
        _invalid_syntax(exc)


def test_modp_shared_secret_keeps_leading_zeros() -> None:
    # Find a peer value whose shared secret starts with a zero octet and make
    # sure it is still padded to the prime's length (RFC 7296 2.14).
    group = KeId.MODP_1024
    p = modp_prime(group)
    x = 7
    ke = key_exchange_from_private(group, x.to_bytes(1, "big"))
    for y in range(2, 5000):
        if pow(y, x, p) < (1 << (1024 - 8)):
            shared = ke.compute_shared(y.to_bytes(128, "big"))
            assert len(shared) == 128 and shared[0] == 0
            assert int.from_bytes(shared, "big") == pow(y, x, p)
            return
    pytest.skip("no small y with a leading-zero shared secret found")


# RFC 5903 section 8 (as carried in strongSwan's ecp.c): i, r, g^i, g^r, g^ir x-coordinate.
ECP_VECTORS = {
    KeId.ECP_256: (
        "814264145f2f56f2e96a8e337a1284993faf432a5abce59e867b7291d507a3af",
        "2ce1788ec197e096db95a200cc0ab26a19ce6bccad562b8eee1b593761cf7f41",
        "2af502f3be8952f2c9b5a8d4160d09e97165be50bc42ae4a5e8d3b4ba83aeb15"
        "eb0faf4ca986c4d38681a0f9872d79d56795bd4bff6e6de3c0f5015ece5efd85",
        "b120de4aa36492795346e8de6c2c8646ae06aaea279fa775b3ab0715f6ce51b0"
        "9f1b7eece20d7b5ed8ec685fa3f071d83727027092a8411385c34dde5708b2b6",
        "dd0f5396219d1ea393310412d19a08f1f5811e9dc8ec8eea7f80d21c820c2788",
    ),
    KeId.ECP_384: (
        "d27335ea71664af244dd14e9fd1260715dfd8a7965571c48d709ee7a7962a156d706a90cbcb5df2986f05feadb9376f1",
        "52d1791fdb4b70f89c0f00d456c2f7023b6125262c36a7df1f80231121cce3d39be52e00c194a4132c4a6c768bcd94d2",
        "793148f1787634d5da4c6d9074417d05e057ab62f82054d10ee6b0403d6279547e6a8ea9d1fd77427d016fe27a8b8c66"
        "c6c41294331d23e6f480f4fb4cd40504c947392e94f4c3f06b8f398bb29e42368f7a685923de3b67baced214a1a1d128",
        "5cd42ab9c41b5347f74b8d4efb708b3d5b36db65915359b44abc17647b6b9999789d72a84865ae2f223f12b5a1abc120"
        "e171458feaa939aaa3a8bfac46b404bd8f6d5b348c0fa4d80ceca16356ca933240bde8723415a8ece035b0edf36755de",
        "5ea1fc4af7256d2055981b110575e0a8cae53160137d904c59d926eb1b8456e427aa8a4540884c37de159a58028abc0e",
    ),
    KeId.ECP_521: (
        "0113f82da825735e3d97276683b2b74277bad27335ea71664af2430cc4f33459b9669ee78b3ffb9b8683015d344dcbfef6fb9af4c6c470be254516cd3c1a1fb47362",
        "00cee3480d8645a17d249f2776d28bae616952d1791fdb4b70f7c3378732aa1b22928448bcd1dc2496d435b01048066ebe4f72903c361b1a9dc1193dc2c9d0891b96",
        "01ebb34dd75721abf8adc9dbed17889cbb9765d90a7c60f2cef007bb0f2b26e14881fd4442e689d61cb2dd046ee30e3ffd20f9a45bbdf6413d583a2dbf59924fd35c"
        "00f6b632d194c0388e22d8437e558c552ae195adfd153f92d74908351b2f8c4eda94edb0916d1b53c020b5eecaed1a5fc38a233e4830587bb2ee3489b3b42a5a86a4",
        "010ebfafc6e85e08d24bfffcc1a4511db0e634beeb1b6dec8c5939ae44766201af6200430ba97c8ac6a0e9f08b33ce7e9feeb5ba4ee5e0d81510c24295b8a08d0235"
        "00a4a6ec300df9e257b0372b5e7abfef093436719a77887ebb0b18cf8099b9f4212b6e30a1419c18e029d36863cc9d448f4dba4d2a0e60711be572915fbd4fef2695",
        "00cdea89621cfa46b132f9e4cfe2261cde2d4368eb5656634c7cc98c7a00cde54ed1866a0dd3e6126c9d2f845daff82ceb1da08f5d87521bb0ebeca77911169c20cc",
    ),
}  # fmt: skip


@pytest.mark.parametrize("group", list(ECP_VECTORS))
def test_ecp_rfc5903(group: KeId) -> None:
    i, r, gi, gr, gir = (h(v) for v in ECP_VECTORS[group])
    ki = key_exchange_from_private(group, i)
    kr = key_exchange_from_private(group, r)
    assert len(gi) == ke_public_len(group)
    assert ki.public_key == gi  # RFC 5903 7: x | y, no point-format octet
    assert kr.public_key == gr
    assert ki.compute_shared(gr) == gir  # shared secret = x coordinate only
    assert kr.compute_shared(gi) == gir


@pytest.mark.parametrize("group", list(ECP_VECTORS))
def test_ecp_rejects_invalid_points(group: KeId) -> None:
    _, _, gi, _, _ = (h(v) for v in ECP_VECTORS[group])
    ke = create_key_exchange(group)
    half = len(gi) // 2
    off_curve = gi[:half] + (int.from_bytes(gi[half:], "big") ^ 1).to_bytes(half, "big")
    for bad in (off_curve, bytes(len(gi)), b"\xff" * len(gi), gi[:-1], gi + b"\x00", b"\x04" + gi[:-1]):
        with pytest.raises(RemoteProtocolError) as exc:
            ke.compute_shared(bad)
        _invalid_syntax(exc)


def _rfc7748(path: str) -> list[tuple[bytes, bytes, bytes]]:
    return [(h(c["INPUT_SCALAR"]), h(c["INPUT_U"]), h(c["OUTPUT_U"])) for c in load_kv_blocks(path) if "OUTPUT_U" in c]


@pytest.mark.parametrize(
    ("group", "path"),
    [(KeId.CURVE25519, "asymmetric/X25519/rfc7748.txt"), (KeId.CURVE448, "asymmetric/X448/rfc7748.txt")],
)
def test_rfc7748_scalar_multiplication(group: KeId, path: str) -> None:
    cases = _rfc7748(path)
    assert cases
    for scalar, u, out in cases:
        assert key_exchange_from_private(group, scalar).compute_shared(u) == out


def test_curve25519_rfc8031_and_rfc7748_exchanges() -> None:
    # RFC 7748 6.1
    a = key_exchange_from_private(
        KeId.CURVE25519, h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    b = key_exchange_from_private(
        KeId.CURVE25519, h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert a.public_key == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert b.public_key == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert a.compute_shared(b.public_key) == shared == b.compute_shared(a.public_key)
    # RFC 8031 appendix A
    i = key_exchange_from_private(
        KeId.CURVE25519, h("751fb4308655b476b6789b7325f9ea8cddd16a58533ff6d9e60009464a5f9d94")
    )
    r = key_exchange_from_private(
        KeId.CURVE25519, h("0a54645253290d60ddadd0e030bacd9e5501efdc220755a1e978f1b839a05688")
    )
    assert i.public_key == h("48d5ddd4061257ba166fa3f9bbdb74f1a4e81c089384fa77f790709f0dfbc766")
    assert r.public_key == h("0be7c1f5aad87d7e448662673298a443478b859745179eaf564c79c0ef6eee25")
    assert i.compute_shared(r.public_key) == h("c74950607a12327f3204d94b6825bfb068b7f8319a9e3708ed3d43ce8130c950")


def test_curve448_rfc7748_exchange() -> None:
    a = key_exchange_from_private(
        KeId.CURVE448,
        h(
            "9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28dd9c9baf574a9419744897391006382a6f127ab1d9ac2d8c0a598726b"
        ),
    )
    b = key_exchange_from_private(
        KeId.CURVE448,
        h(
            "1c306a7ac2a0e2e0990b294470cba339e6453772b075811d8fad0d1d6927c120bb5ee8972b0d3e21374c9c921b09d1b0366f10b65173992d"
        ),
    )
    assert a.public_key == h(
        "9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c22c5d9bbc836647241d953d40c5b12da88120d53177f80e532c41fa0"
    )
    shared = h(
        "07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282bb60c0b56fd2464c335543936521c24403085d59a449a5037514a879d"
    )
    assert a.compute_shared(b.public_key) == shared == b.compute_shared(a.public_key)


@pytest.mark.parametrize("group", [KeId.CURVE25519, KeId.CURVE448])
def test_montgomery_rejects_low_order_points_and_bad_lengths(group: KeId) -> None:
    size = ke_public_len(group)
    ke = create_key_exchange(group)
    # u = 0 and u = 1 are low-order points: the result would be all zero (RFC 8031 2.3).
    for bad in (bytes(size), (1).to_bytes(size, "little"), b"\x09" * (size - 1), b"\x09" * (size + 1)):
        with pytest.raises(RemoteProtocolError) as exc:
            ke.compute_shared(bad)
        _invalid_syntax(exc)


@pytest.mark.parametrize("group", sorted(supported_groups()))
def test_every_group_agrees(group: KeId) -> None:
    initiator = create_key_exchange(group)
    assert len(initiator.public_key) == ke_public_len(group)
    responder, shared_r = accept_key_exchange(group, initiator.public_key)
    assert len(responder.public_key) == ke_public_len(group, from_responder=True)
    assert initiator.compute_shared(responder.public_key) == shared_r
    assert "priv" not in repr(initiator).lower()


@pytest.mark.parametrize("group", [g for g in sorted(supported_groups()) if is_kem(g)])
def test_ml_kem_validation(group: KeId) -> None:
    initiator = create_key_exchange(group)
    with pytest.raises(RemoteProtocolError) as exc:
        accept_key_exchange(group, initiator.public_key[:-1])
    _invalid_syntax(exc)
    responder, _ = accept_key_exchange(group, initiator.public_key)
    with pytest.raises(RemoteProtocolError) as exc:
        initiator.compute_shared(responder.public_key + b"\x00")
    _invalid_syntax(exc)
    # A tampered ciphertext decapsulates to an unrelated key (implicit rejection, FIPS 203).
    tampered = bytes([responder.public_key[0] ^ 1]) + responder.public_key[1:]
    assert initiator.compute_shared(tampered) != initiator.compute_shared(responder.public_key)
    with pytest.raises(LocalProtocolError):
        responder.compute_shared(b"other")


def _probably_prime(n: int, rounds: int = 4) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in (2, 3, 5, 7, 11, 13)[:rounds]:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@pytest.mark.parametrize("group", MODP_GROUPS)
def test_modp_primes_are_the_rfc3526_safe_primes(group: KeId) -> None:
    # A transcription error in the prime tables would not survive this:
    # the RFC 2409/3526 primes are safe primes with 64 one-bits at both ends.
    p = modp_prime(group)
    assert p >> (p.bit_length() - 64) == 2**64 - 1
    assert p & (2**64 - 1) == 2**64 - 1
    assert _probably_prime(p) and _probably_prime((p - 1) // 2)
