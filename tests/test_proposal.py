"""Proposal strings, selection in both roles, and printing (ipsecd.ike.proposal)."""

from __future__ import annotations

import pytest

from ipsecd.iana import EncrId, EsnId, IntegId, KeId, PrfId, ProtocolId, TransformType
from ipsecd.ike.payloads import Proposal, Transform
from ipsecd.ike.proposal import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    groups_in,
    is_legacy,
    ke_group_of,
    parse_proposal,
    parse_proposals,
    prefer_group,
    proposal_matches_chosen,
    proposal_to_str,
    proposal_to_swanctl,
    select_proposal,
    with_spi,
    without_ke,
)

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP
E, P, A, K, N = TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.KE, TransformType.ESN


def T(ttype: TransformType, tid: int, kl: int | None = None) -> Transform:
    return Transform(ttype, tid, kl)


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "protocol", "transforms"),
    [
        (
            "aes256gcm16-prfsha256-ecp256",
            IKE,
            [T(E, EncrId.ENCR_AES_GCM_16, 256), T(P, PrfId.PRF_HMAC_SHA2_256), T(K, KeId.ECP_256)],
        ),
        (
            "aes128-sha256-modp2048",
            IKE,
            [
                T(E, EncrId.ENCR_AES_CBC, 128),
                T(P, PrfId.PRF_HMAC_SHA2_256),  # derived from the integrity algorithm
                T(A, IntegId.AUTH_HMAC_SHA2_256_128),
                T(K, KeId.MODP_2048),
            ],
        ),
        (
            "chacha20poly1305-prfsha256-x25519",
            IKE,
            [T(E, EncrId.ENCR_CHACHA20_POLY1305), T(P, PrfId.PRF_HMAC_SHA2_256), T(K, KeId.CURVE25519)],
        ),
        (
            "chacha20poly1305-prfsha384-ecp384",
            IKE,
            [T(E, EncrId.ENCR_CHACHA20_POLY1305), T(P, PrfId.PRF_HMAC_SHA2_384), T(K, KeId.ECP_384)],
        ),
        ("aes256gcm16-ecp256", ESP, [T(E, EncrId.ENCR_AES_GCM_16, 256), T(K, KeId.ECP_256), T(N, EsnId.NO_ESN)]),
        (
            "aes128-sha1-modp1024",
            IKE,
            [
                T(E, EncrId.ENCR_AES_CBC, 128),
                T(P, PrfId.PRF_HMAC_SHA1),
                T(A, IntegId.AUTH_HMAC_SHA1_96),
                T(K, KeId.MODP_1024),
            ],
        ),
        ("aes128gcm128", ESP, [T(E, EncrId.ENCR_AES_GCM_16, 128), T(N, EsnId.NO_ESN)]),
        ("aes256-sha512-esn", ESP, [T(E, EncrId.ENCR_AES_CBC, 256), T(A, IntegId.AUTH_HMAC_SHA2_512_256), T(N, 1)]),
        (
            "AES128-SHA256-ESN-NOESN",
            ESP,
            [T(E, EncrId.ENCR_AES_CBC, 128), T(A, IntegId.AUTH_HMAC_SHA2_256_128), T(N, 1), T(N, 0)],
        ),
        (
            "aes256gcm16-prfsha384-x448-curve25519-ke1_mlkem768",
            IKE,
            [
                T(E, EncrId.ENCR_AES_GCM_16, 256),
                T(P, PrfId.PRF_HMAC_SHA2_384),
                T(K, KeId.CURVE448),
                T(K, KeId.CURVE25519),
                T(TransformType.ADDKE1, KeId.ML_KEM_768),
            ],
        ),
    ],
)
def test_parse(text: str, protocol: ProtocolId, transforms: list[Transform]) -> None:
    p = parse_proposal(text, protocol, num=3)
    assert p.num == 3 and p.protocol == protocol and p.spi == b""
    assert list(p.transforms) == transforms
    assert parse_proposal(proposal_to_str(p), protocol, num=3) == p


def test_aliases_and_duplicates() -> None:
    a = parse_proposal("aes-sha-prfsha1-x25519", IKE)
    b = parse_proposal("aes128-sha1-prfsha1-curve25519", IKE)
    assert a == b
    assert parse_proposal("aes128-aes128-sha256-sha256-ecp256", IKE) == parse_proposal("aes128-sha256-ecp256", IKE)


def test_integ_derived_prfs_keep_order() -> None:
    p = parse_proposal("aes256-sha384-sha256-ecp384", IKE)
    assert p.of_type(P) == (T(P, PrfId.PRF_HMAC_SHA2_384), T(P, PrfId.PRF_HMAC_SHA2_256))
    explicit = parse_proposal("aes256-sha384-prfsha512-ecp384", IKE)
    assert explicit.of_type(P) == (T(P, PrfId.PRF_HMAC_SHA2_512),)


def test_legacy_flag() -> None:
    assert is_legacy(parse_proposal("aes128-sha1-modp1024", IKE))
    assert is_legacy(parse_proposal("3des-sha256-modp2048", IKE))
    assert is_legacy(parse_proposal("aes128-sha256-prfsha1-ecp256", IKE))
    assert is_legacy(parse_proposal("aes128-sha256-modp1536", ESP))
    assert is_legacy(parse_proposal("aes128-md5", ESP))
    assert not is_legacy(parse_proposal("aes128-sha256-modp2048", IKE))
    for p in parse_proposals(["default"], IKE) + parse_proposals(["default"], ESP):
        assert not is_legacy(p)


@pytest.mark.parametrize(
    ("text", "protocol", "fragment"),
    [
        ("aes128-sha256-bogus", IKE, "'bogus'"),
        ("aes128-sha256-modp2048-", IKE, "''"),
        ("aes256gcm16-sha256-prfsha256-ecp256", IKE, "AEAD ciphers take no integrity"),
        ("aes256gcm16-aes256-sha256-ecp256", IKE, "AEAD and non-AEAD"),
        ("aes128-sha256", IKE, "key exchange"),
        ("aes128-sha256-none", IKE, "key exchange"),
        ("aes256gcm16-ecp256", IKE, "PRF"),
        ("aes128-modp2048", IKE, "need an integrity"),
        ("sha256-prfsha256-modp2048", IKE, "no encryption"),
        ("aes128-sha256-prfsha256", ESP, "PRF applies to IKE"),
        ("aes128-sha256-ecp256-esn", IKE, "esn/noesn"),
        ("aes128", ESP, "need an integrity"),
        ("", IKE, "empty"),
        ("default", IKE, "parse_proposals"),
        ("aes128-sha256-ke9_mlkem768", IKE, "ke9_mlkem768"),
        ("aes128-sha256-ke1_aes128-ecp256", IKE, "ke1_aes128"),
        ("aes128-sha256-modp768", IKE, "'modp768'"),
    ],
)
def test_parse_errors(text: str, protocol: ProtocolId, fragment: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_proposal(text, protocol)
    assert fragment in str(exc.value)


def test_unknown_token_message_lists_kinds() -> None:
    with pytest.raises(ValueError) as exc:
        parse_proposal("aes128-whirlpool-modp2048", IKE)
    msg = str(exc.value)
    for word in ("'whirlpool'", "encryption", "integrity", "prf", "key exchange", "aes256gcm16", "curve25519"):
        assert word in msg


def test_parse_proposals_numbers_and_default() -> None:
    ps = parse_proposals(["aes128-sha256-modp2048", "default"], IKE)
    assert [p.num for p in ps] == list(range(1, 2 + len(DEFAULT_IKE_PROPOSALS)))
    assert ps[1] == parse_proposal(DEFAULT_IKE_PROPOSALS[0], IKE, num=2)
    esp = parse_proposals("default", ESP)
    assert len(esp) == len(DEFAULT_ESP_PROPOSALS)
    assert all(p.of_type(N) == (T(N, EsnId.NO_ESN),) for p in esp)
    assert all(not p.of_type(K) for p in esp)
    with pytest.raises(ValueError):
        parse_proposals([], IKE)
    ike_default = parse_proposals(["default"], IKE)
    assert groups_in(ike_default)[0] == KeId.CURVE25519


# --------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------


def peer(texts: list[str], protocol: ProtocolId, spi: bytes = b"") -> list[Proposal]:
    return [with_spi(p, spi) for p in parse_proposals(texts, protocol)]


def test_select_prefers_our_order_by_default() -> None:
    ours = parse_proposals(["aes256gcm16-prfsha256-curve25519", "aes128-sha256-modp2048"], IKE)
    theirs = peer(["aes128-sha256-modp2048", "aes256gcm16-prfsha384-prfsha256-ecp256-curve25519"], IKE)
    chosen = select_proposal(ours, theirs)
    assert chosen is not None
    assert chosen.num == 2
    assert chosen.transforms == (
        T(E, EncrId.ENCR_AES_GCM_16, 256),
        T(P, PrfId.PRF_HMAC_SHA2_256),
        T(K, KeId.CURVE25519),
    )
    assert proposal_matches_chosen(theirs, chosen)
    theirs_first = select_proposal(ours, theirs, prefer_theirs=True)
    assert theirs_first is not None and theirs_first.num == 1
    assert proposal_to_str(theirs_first) == "aes128-sha256-modp2048"


def test_select_picks_by_preference_within_types() -> None:
    ours = parse_proposals(["aes256-aes128-sha512-sha256-ecp384-modp3072"], IKE)
    theirs = peer(["aes128-aes256-sha256-sha512-prfsha256-prfsha512-modp3072-ecp384"], IKE)
    chosen = select_proposal(ours, theirs)
    assert chosen is not None
    assert proposal_to_str(chosen) == "aes256-sha512-ecp384"
    assert chosen.of_type(P) == (T(P, PrfId.PRF_HMAC_SHA2_512),)
    theirs_pref = select_proposal(ours, theirs, prefer_theirs=True)
    assert theirs_pref is not None and proposal_to_str(theirs_pref) == "aes128-sha256-modp3072"


def test_select_no_match() -> None:
    ours = parse_proposals(["aes256gcm16-prfsha256-curve25519"], IKE)
    assert select_proposal(ours, peer(["aes256gcm16-prfsha256-ecp256"], IKE)) is None
    assert select_proposal(ours, peer(["aes128gcm16-prfsha256-curve25519"], IKE)) is None  # key length differs
    assert select_proposal(ours, peer(["aes256gcm16-prfsha384-curve25519"], IKE)) is None
    assert select_proposal(ours, peer(["aes256gcm16"], ESP)) is None  # protocol differs
    assert select_proposal(ours, []) is None


def test_select_esp_keeps_their_spi_and_negotiates_esn() -> None:
    spi = b"\xca\xfe\xba\xbe"
    ours = parse_proposals(["aes256gcm16-esn-noesn"], ESP)
    theirs = peer(["aes256gcm16-noesn-esn"], ESP, spi)
    chosen = select_proposal(ours, theirs)
    assert chosen is not None and chosen.spi == spi
    assert chosen.of_type(N) == (T(N, EsnId.ESN),)  # our preference
    assert proposal_matches_chosen(theirs, chosen)
    assert select_proposal(parse_proposals(["aes256gcm16"], ESP), peer(["aes256gcm16-esn"], ESP)) is None


def test_select_esp_pfs() -> None:
    pfs = parse_proposals(["aes256gcm16-ecp256"], ESP)
    no_pfs = parse_proposals(["aes256gcm16"], ESP)
    chosen = select_proposal(pfs, peer(["aes256gcm16-modp2048-ecp256"], ESP, b"\x00\x00\x00\x01"))
    assert chosen is not None and ke_group_of(chosen) == KeId.ECP_256
    # We require PFS, the peer offers none: no match; and vice versa.
    assert select_proposal(pfs, peer(["aes256gcm16"], ESP)) is None
    assert select_proposal(no_pfs, peer(["aes256gcm16-ecp256"], ESP)) is None
    # An explicit "none" makes PFS optional on either side.
    optional = parse_proposals(["aes256gcm16-ecp256-none"], ESP)
    chosen = select_proposal(optional, peer(["aes256gcm16"], ESP))
    assert chosen is not None and not chosen.of_type(K)
    chosen = select_proposal(no_pfs, peer(["aes256gcm16-ecp256-none"], ESP))
    assert chosen is not None and chosen.of_type(K) == (T(K, KeId.NONE),)
    assert proposal_matches_chosen(peer(["aes256gcm16-ecp256-none"], ESP), chosen)


def test_select_handles_mixed_peer_proposal_and_unknown_types() -> None:
    # Peers may (wrongly) mix AEAD and non-AEAD in one proposal; pick a consistent subset.
    mixed = Proposal(
        1,
        IKE,
        b"",
        (
            T(E, EncrId.ENCR_AES_CBC, 128),
            T(E, EncrId.ENCR_AES_GCM_16, 256),
            T(P, PrfId.PRF_HMAC_SHA2_256),
            T(A, IntegId.AUTH_HMAC_SHA2_256_128),
            T(K, KeId.ECP_256),
        ),
    )
    chosen = select_proposal(parse_proposals(["aes256gcm16-prfsha256-ecp256"], IKE), [mixed])
    assert chosen is not None and not chosen.of_type(A)
    chosen = select_proposal(parse_proposals(["aes128-sha256-ecp256"], IKE), [mixed])
    assert chosen is not None and chosen.of_type(A) == (T(A, IntegId.AUTH_HMAC_SHA2_256_128),)
    # Explicit INTEG NONE with an AEAD is echoed back.
    with_none = Proposal(1, IKE, b"", (*mixed.transforms[1:3], T(A, IntegId.NONE), mixed.transforms[4]))
    chosen = select_proposal(parse_proposals(["aes256gcm16-prfsha256-ecp256"], IKE), [with_none])
    assert chosen is not None and chosen.of_type(A) == (T(A, IntegId.NONE),)
    assert proposal_matches_chosen([with_none], chosen)
    # A transform type we do not know rejects the whole proposal (RFC 7296 3.3.6).
    unknown = Proposal(1, IKE, b"", (*mixed.transforms, Transform(99, 1)))  # type: ignore[arg-type]
    assert select_proposal(parse_proposals(["aes128-sha256-ecp256"], IKE), [unknown]) is None
    # Unsupported algorithm ids are simply not matched.
    weird = Proposal(2, IKE, b"", (T(E, 999, 128), *mixed.transforms[2:]))
    assert select_proposal(parse_proposals(["aes128-sha256-ecp256"], IKE), [weird]) is None


def test_select_ike_requires_ke() -> None:
    no_ke = Proposal(1, IKE, b"", (T(E, EncrId.ENCR_AES_GCM_16, 256), T(P, PrfId.PRF_HMAC_SHA2_256)))
    assert select_proposal(parse_proposals(["aes256gcm16-prfsha256-ecp256"], IKE), [no_ke]) is None


def test_proposal_matches_chosen_rejections() -> None:
    offered = parse_proposals(["aes256gcm16-prfsha256-ecp256-curve25519", "aes128-sha256-modp2048"], IKE)
    good = Proposal(1, IKE, b"", (T(E, EncrId.ENCR_AES_GCM_16, 256), T(P, 5), T(K, KeId.CURVE25519)))
    assert proposal_matches_chosen(offered, good)
    assert not proposal_matches_chosen(offered, Proposal(2, IKE, b"", good.transforms))  # wrong number
    two_groups = Proposal(1, IKE, b"", (*good.transforms, T(K, KeId.ECP_256)))
    assert not proposal_matches_chosen(offered, two_groups)
    not_offered = Proposal(1, IKE, b"", (T(E, EncrId.ENCR_AES_GCM_16, 128), T(P, 5), T(K, KeId.CURVE25519)))
    assert not proposal_matches_chosen(offered, not_offered)
    missing_ke = Proposal(1, IKE, b"", good.transforms[:2])
    assert not proposal_matches_chosen(offered, missing_ke)
    cbc_no_integ = Proposal(2, IKE, b"", (T(E, EncrId.ENCR_AES_CBC, 128), T(P, 5), T(K, KeId.MODP_2048)))
    assert not proposal_matches_chosen(offered, cbc_no_integ)
    cbc = parse_proposal("aes128-sha256-modp2048", IKE, num=2)
    assert proposal_matches_chosen(offered, cbc)
    assert not proposal_matches_chosen(offered, Proposal(1, ESP, b"\x00" * 4, good.transforms))


@pytest.mark.parametrize(
    "texts",
    [
        ["default"],
        ["aes128-sha256-modp2048"],
        ["chacha20poly1305-prfsha256-x25519", "aes256-sha384-ecp384"],
    ],
)
def test_two_roles_agree(texts: list[str]) -> None:
    ours = parse_proposals(["default", "aes128-sha256-modp2048"], IKE)
    offered = parse_proposals(texts, IKE)
    chosen = select_proposal(ours, offered)
    assert chosen is not None
    assert len({t.type for t in chosen.transforms}) == len(chosen.transforms)
    assert proposal_matches_chosen(offered, chosen)


# --------------------------------------------------------------------------
# helpers and printing
# --------------------------------------------------------------------------


def test_group_helpers() -> None:
    ps = parse_proposals(["aes256gcm16-prfsha256-curve25519-ecp256", "aes128-sha256-ecp256-modp2048"], IKE)
    assert groups_in(ps) == [KeId.CURVE25519, KeId.ECP_256, KeId.MODP_2048]
    assert ke_group_of(ps[1]) == KeId.ECP_256
    assert ke_group_of(parse_proposal("aes128-sha256", ESP)) is None
    reordered = prefer_group(ps, KeId.ECP_256)
    assert [ke_group_of(p) for p in reordered] == [KeId.ECP_256, KeId.ECP_256]
    assert {t for p in reordered for t in p.transforms} == {t for p in ps for t in p.transforms}
    for p in reordered:  # still grouped by transform type, ENCR first
        types = [t.type for t in p.transforms]
        assert types == sorted(types)
    esp = parse_proposal("aes256gcm16-ecp256", ESP)
    assert not without_ke(esp).of_type(K)
    assert without_ke(esp).of_type(N) == esp.of_type(N)


@pytest.mark.parametrize(
    ("text", "protocol", "keywords", "swanctl"),
    [
        ("aes256gcm16-prfsha256-ecp256", IKE, "aes256gcm16-prfsha256-ecp256",
         "AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256"),
        ("aes128-sha256-modp2048", IKE, "aes128-sha256-modp2048",
         "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"),
        ("aes128-sha256-prfsha384-modp2048", IKE, "aes128-sha256-prfsha384-modp2048",
         "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_384/MODP_2048"),
        ("chacha20poly1305-prfsha256-x25519", IKE, "chacha20poly1305-prfsha256-curve25519",
         "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519"),
        ("aes256gcm128-prfsha512-x448", IKE, "aes256gcm16-prfsha512-curve448",
         "AES_GCM_16-256/PRF_HMAC_SHA2_512/CURVE_448"),
        ("3des-sha1-modp1024", IKE, "3des-sha1-modp1024", "3DES/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024"),
        ("aes256gcm16", ESP, "aes256gcm16", "AES_GCM_16-256"),
        ("aes128-sha256", ESP, "aes128-sha256", "AES_CBC-128/HMAC_SHA2_256_128"),
        ("aes256gcm16-ecp256", ESP, "aes256gcm16-ecp256", "AES_GCM_16-256/ECP_256"),
        ("aes128-sha256-esn", ESP, "aes128-sha256-esn", "AES_CBC-128/HMAC_SHA2_256_128/ESN"),
        ("aes128gcm16-ke1_mlkem768-prfsha256-ecp256", IKE, "aes128gcm16-prfsha256-ecp256-ke1_mlkem768", None),
    ],
)  # fmt: skip
def test_printing(text: str, protocol: ProtocolId, keywords: str, swanctl: str | None) -> None:
    p = parse_proposal(text, protocol)
    assert proposal_to_str(p) == keywords
    if swanctl is not None:
        assert proposal_to_swanctl(p) == swanctl


def test_ke_hint_avoids_invalid_ke_payload() -> None:
    ours = parse_proposals(["aes256gcm16-prfsha256-curve25519-ecp256-modp3072"], IKE)
    theirs = peer(["aes256gcm16-prfsha256-ecp256-modp3072-curve25519"], IKE)
    plain = select_proposal(ours, theirs)
    assert plain is not None and ke_group_of(plain) == KeId.CURVE25519
    hinted = select_proposal(ours, theirs, ke_hint=KeId.MODP_3072)
    assert hinted is not None and ke_group_of(hinted) == KeId.MODP_3072
    assert proposal_matches_chosen(theirs, hinted)
    # A hint neither side allows changes nothing.
    other = select_proposal(ours, theirs, ke_hint=KeId.CURVE448)
    assert other == plain


def test_unknown_group_ids_are_ignored_by_helpers() -> None:
    p = Proposal(1, IKE, b"", (T(E, EncrId.ENCR_AES_GCM_16, 128), T(P, 5), T(K, 4242), T(K, KeId.ECP_256)))
    assert ke_group_of(p) == KeId.ECP_256
    assert groups_in([p]) == [KeId.ECP_256]


def test_proposal_number_range() -> None:
    with pytest.raises(ValueError):
        parse_proposal("aes128-sha256-modp2048", IKE, num=0)
    with pytest.raises(ValueError):
        parse_proposal("aes128-sha256-modp2048", IKE, num=256)


def test_skip_ke_for_ike_auth_child() -> None:
    ours = parse_proposals(["aes256gcm16-ecp256"], ESP)  # PFS on rekey
    theirs = peer(["aes256gcm16"], ESP, b"\x01\x02\x03\x04")
    assert select_proposal(ours, theirs) is None
    chosen = select_proposal(ours, theirs, skip_ke=True)
    assert chosen is not None and not chosen.of_type(K) and chosen.spi == b"\x01\x02\x03\x04"
    # A peer that (against RFC 7296 1.2) lists groups in IKE_AUTH still gets a KE-free answer.
    offered = peer(["aes256gcm16-ecp256"], ESP)
    chosen = select_proposal(ours, offered, skip_ke=True)
    assert chosen is not None and not chosen.of_type(K)
    assert proposal_matches_chosen(offered, chosen, skip_ke=True)
    assert not proposal_matches_chosen(offered, chosen)
