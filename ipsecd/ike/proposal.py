"""Proposal strings (strongSwan's keyword syntax), proposal selection for both
roles, and printable names.

Syntax: algorithm keywords joined by '-', e.g. ``aes256gcm16-prfsha256-x25519``
or ``aes128-sha256-modp2048``. Several keywords of one kind are alternatives,
in preference order. Like strongSwan:

* an IKE proposal without a PRF takes the PRFs matching its integrity
  algorithms (``sha256`` -> ``prfsha256``); an AEAD IKE proposal must name one;
* AEAD and non-AEAD ciphers cannot share a proposal (RFC 5282 8);
* ESP proposals get NO_ESN unless ``esn`` is given; a KE method in an ESP
  proposal means PFS for CREATE_CHILD_SA;
* ``ke1_`` .. ``ke7_`` prefixes name additional key exchanges (RFC 9370);
* ``default`` (in ``parse_proposals``) expands to ``DEFAULT_IKE_PROPOSALS`` /
  ``DEFAULT_ESP_PROPOSALS``.

Legacy algorithms (3DES, HMAC-SHA1/MD5, MODP-1024/1536) parse only when spelled
out; ``is_legacy`` lets the daemon warn about them (RFC 8247, RFC 8221).

Selection as responder prefers *our* configured order by default (as strongSwan
does with its default ``prefer_configured_proposals = yes``): the operator's
ranking wins over the peer's. ``prefer_theirs=True`` gives the peer's order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ipsecd.iana import EncrId, EsnId, IntegId, KeId, PrfId, ProtocolId, TransformType
from ipsecd.ike.crypto import encr_info, encr_supported, integ_supported, prf_supported, supported_groups
from ipsecd.ike.payloads import Proposal, Transform

DEFAULT_IKE_PROPOSALS: tuple[str, ...] = (
    "aes256gcm16-aes128gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512"
    "-curve25519-ecp256-ecp384-ecp521-modp3072-modp4096-curve448-modp2048",
    "aes256-aes128-sha256-sha384-sha512-curve25519-ecp256-ecp384-ecp521-modp3072-modp4096-curve448-modp2048",
)
DEFAULT_ESP_PROPOSALS: tuple[str, ...] = (
    "aes256gcm16-aes128gcm16-chacha20poly1305",
    "aes256-aes128-sha256-sha384-sha512",
)

_ADDKE_TYPES: tuple[TransformType, ...] = (
    TransformType.ADDKE1,
    TransformType.ADDKE2,
    TransformType.ADDKE3,
    TransformType.ADDKE4,
    TransformType.ADDKE5,
    TransformType.ADDKE6,
    TransformType.ADDKE7,
)
_KE_TYPES = frozenset((TransformType.KE, *_ADDKE_TYPES))
_KNOWN_TYPES = frozenset(TransformType)


@dataclass(frozen=True)
class _Keyword:
    type: TransformType
    id: int
    key_length: int | None = None
    legacy: bool = False


def _build_keywords() -> dict[str, _Keyword]:
    kw: dict[str, _Keyword] = {}
    e = TransformType.ENCR
    kw["aes"] = _Keyword(e, EncrId.ENCR_AES_CBC, 128)
    kw["3des"] = _Keyword(e, EncrId.ENCR_3DES, None, legacy=True)
    kw["chacha20poly1305"] = _Keyword(e, EncrId.ENCR_CHACHA20_POLY1305)
    icvs = {8: (EncrId.ENCR_AES_GCM_8, EncrId.ENCR_AES_CCM_8), 12: (EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_CCM_12)}
    icvs[16] = (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_AES_CCM_16)
    for bits in (128, 192, 256):
        kw[f"aes{bits}"] = _Keyword(e, EncrId.ENCR_AES_CBC, bits)
        for icv, (gcm, ccm) in icvs.items():
            for suffix in (str(icv), str(icv * 8)):  # aes128gcm16 == aes128gcm128
                kw[f"aes{bits}gcm{suffix}"] = _Keyword(e, gcm, bits)
                kw[f"aes{bits}ccm{suffix}"] = _Keyword(e, ccm, bits)
        kw[f"aes{bits}gcm"] = _Keyword(e, EncrId.ENCR_AES_GCM_16, bits)
        kw[f"aes{bits}ccm"] = _Keyword(e, EncrId.ENCR_AES_CCM_16, bits)
    i = TransformType.INTEG
    for name, integ, legacy in (
        ("md5", IntegId.AUTH_HMAC_MD5_96, True),
        ("sha", IntegId.AUTH_HMAC_SHA1_96, True),
        ("sha1", IntegId.AUTH_HMAC_SHA1_96, True),
        ("sha256", IntegId.AUTH_HMAC_SHA2_256_128, False),
        ("sha2_256", IntegId.AUTH_HMAC_SHA2_256_128, False),
        ("sha384", IntegId.AUTH_HMAC_SHA2_384_192, False),
        ("sha2_384", IntegId.AUTH_HMAC_SHA2_384_192, False),
        ("sha512", IntegId.AUTH_HMAC_SHA2_512_256, False),
        ("sha2_512", IntegId.AUTH_HMAC_SHA2_512_256, False),
    ):
        kw[name] = _Keyword(i, integ, legacy=legacy)
    p = TransformType.PRF
    for name, prf, legacy in (
        ("prfmd5", PrfId.PRF_HMAC_MD5, True),
        ("prfsha1", PrfId.PRF_HMAC_SHA1, True),
        ("prfsha256", PrfId.PRF_HMAC_SHA2_256, False),
        ("prfsha384", PrfId.PRF_HMAC_SHA2_384, False),
        ("prfsha512", PrfId.PRF_HMAC_SHA2_512, False),
        ("prfaescmac", PrfId.PRF_AES128_CMAC, False),
    ):
        kw[name] = _Keyword(p, prf, legacy=legacy)
    k = TransformType.KE
    for name, group, legacy in (
        ("none", KeId.NONE, False),
        ("modpnone", KeId.NONE, False),
        ("modp1024", KeId.MODP_1024, True),
        ("modp1536", KeId.MODP_1536, True),
        ("modp2048", KeId.MODP_2048, False),
        ("modp3072", KeId.MODP_3072, False),
        ("modp4096", KeId.MODP_4096, False),
        ("ecp256", KeId.ECP_256, False),
        ("ecp384", KeId.ECP_384, False),
        ("ecp521", KeId.ECP_521, False),
        ("curve25519", KeId.CURVE25519, False),
        ("x25519", KeId.CURVE25519, False),
        ("curve448", KeId.CURVE448, False),
        ("x448", KeId.CURVE448, False),
        ("mlkem768", KeId.ML_KEM_768, False),
        ("mlkem1024", KeId.ML_KEM_1024, False),
    ):
        if group == KeId.NONE or group in supported_groups():
            kw[name] = _Keyword(k, group, legacy=legacy)
    kw["esn"] = _Keyword(TransformType.ESN, EsnId.ESN)
    kw["noesn"] = _Keyword(TransformType.ESN, EsnId.NO_ESN)
    return kw


_KEYWORDS: dict[str, _Keyword] = _build_keywords()

# strongSwan: an IKE proposal without PRF uses the PRF matching each integrity algorithm.
_INTEG_TO_PRF: dict[int, PrfId] = {
    IntegId.AUTH_HMAC_MD5_96: PrfId.PRF_HMAC_MD5,
    IntegId.AUTH_HMAC_SHA1_96: PrfId.PRF_HMAC_SHA1,
    IntegId.AUTH_HMAC_SHA2_256_128: PrfId.PRF_HMAC_SHA2_256,
    IntegId.AUTH_HMAC_SHA2_384_192: PrfId.PRF_HMAC_SHA2_384,
    IntegId.AUTH_HMAC_SHA2_512_256: PrfId.PRF_HMAC_SHA2_512,
}

_LEGACY: frozenset[tuple[TransformType, int]] = frozenset((kw.type, kw.id) for kw in _KEYWORDS.values() if kw.legacy)


def _kinds_help() -> str:
    by_kind: dict[str, list[str]] = {}
    labels = {
        TransformType.ENCR: "encryption",
        TransformType.INTEG: "integrity",
        TransformType.PRF: "prf",
        TransformType.KE: "key exchange",
        TransformType.ESN: "esn",
    }
    for name, kw in _KEYWORDS.items():
        by_kind.setdefault(labels[kw.type], []).append(name)
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items())


def _order_key(t: Transform) -> int:
    return int(t.type)


def parse_proposal(text: str, protocol: ProtocolId, num: int = 1) -> Proposal:
    """Parse one proposal string; raises ValueError naming the offending token."""
    if protocol not in (ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH):
        raise ValueError(f"proposals are for IKE, ESP or AH, not {protocol!r}")
    if not 1 <= num <= 255:  # RFC 7296 3.3.1: one-octet Proposal Num, starting at 1
        raise ValueError(f"proposal number {num} is outside 1..255")
    src = text.strip()
    if not src:
        raise ValueError("empty proposal")
    if src.lower() == "default":
        raise ValueError("'default' expands to several proposals; use parse_proposals()")
    transforms: list[Transform] = []
    for raw in src.split("-"):
        token = raw.strip().lower()
        ttype_override: TransformType | None = None
        base = token
        if len(token) > 4 and token.startswith("ke") and token[2].isdigit() and token[3] == "_":
            n = int(token[2])
            if not 1 <= n <= len(_ADDKE_TYPES):
                raise ValueError(f"unknown additional key exchange prefix in {raw!r} (ke1_ .. ke7_)")
            ttype_override = _ADDKE_TYPES[n - 1]
            base = token[4:]
        kw = _KEYWORDS.get(base)
        if kw is None or (ttype_override is not None and kw.type != TransformType.KE):
            raise ValueError(f"unknown algorithm {raw!r} in proposal {text!r}; valid keywords are {_kinds_help()}")
        t = Transform(ttype_override or kw.type, kw.id, kw.key_length)
        if t not in transforms:
            transforms.append(t)
    return _complete(text, protocol, num, transforms)


def _complete(text: str, protocol: ProtocolId, num: int, transforms: list[Transform]) -> Proposal:
    def of(tt: TransformType) -> list[Transform]:
        return [t for t in transforms if t.type == tt]

    encrs, integs, prfs, kes, esns = (
        of(TransformType.ENCR),
        of(TransformType.INTEG),
        of(TransformType.PRF),
        of(TransformType.KE),
        of(TransformType.ESN),
    )
    where = f"in proposal {text!r}"
    aead_flags = {encr_info(t.id).aead for t in encrs}
    if len(aead_flags) > 1:
        # RFC 5282 8: combined-mode and other ciphers go in separate proposals.
        raise ValueError(f"AEAD and non-AEAD ciphers cannot share a proposal {where}; split it in two")
    aead = aead_flags == {True}
    if protocol == ProtocolId.AH:
        if encrs:
            raise ValueError(f"AH takes no encryption algorithm {where}")
        if not integs:
            raise ValueError(f"AH needs an integrity algorithm {where}")
    else:
        if not encrs:
            raise ValueError(f"no encryption algorithm {where}")
        if aead and integs:
            raise ValueError(f"AEAD ciphers take no integrity algorithm {where}")
        if not aead and not integs:
            raise ValueError(f"non-AEAD ciphers need an integrity algorithm {where}")
    if protocol == ProtocolId.IKE:
        if not prfs:
            prfs = [Transform(TransformType.PRF, _INTEG_TO_PRF[t.id]) for t in integs if t.id in _INTEG_TO_PRF]
            prfs = list(dict.fromkeys(prfs))
            transforms.extend(prfs)
        if not prfs:
            raise ValueError(f"an IKE proposal needs a PRF (e.g. prfsha256) {where}")
        if not [t for t in kes if t.id != KeId.NONE]:
            raise ValueError(f"an IKE proposal needs a key exchange method (e.g. curve25519) {where}")
        if esns:
            raise ValueError(f"esn/noesn apply to ESP and AH only {where}")
    else:
        if prfs:
            raise ValueError(f"a PRF applies to IKE proposals only {where}")
        if not esns:
            # RFC 7296 3.3.2: the ESN transform is mandatory for ESP/AH; without
            # 'esn' we offer only NO_ESN, like strongSwan.
            transforms.append(Transform(TransformType.ESN, EsnId.NO_ESN))
    return Proposal(num=num, protocol=protocol, spi=b"", transforms=tuple(sorted(transforms, key=_order_key)))


def parse_proposals(texts: Sequence[str] | str, protocol: ProtocolId) -> list[Proposal]:
    """Parse several proposal strings, numbered 1..n; ``default`` expands in place."""
    if isinstance(texts, str):
        texts = [texts]
    expanded: list[str] = []
    defaults = DEFAULT_IKE_PROPOSALS if protocol == ProtocolId.IKE else DEFAULT_ESP_PROPOSALS
    for text in texts:
        if text.strip().lower() == "default":
            if protocol == ProtocolId.AH:
                raise ValueError("there is no default AH proposal")
            expanded.extend(defaults)
        else:
            expanded.append(text)
    if not expanded:
        raise ValueError("no proposals given")
    return [parse_proposal(text, protocol, num) for num, text in enumerate(expanded, start=1)]


def is_legacy(p: Proposal) -> bool:
    """True if the proposal offers an algorithm RFC 8247/8221 deprecate."""
    return any((t.type if t.type not in _KE_TYPES else TransformType.KE, t.id) in _LEGACY for t in p.transforms)


# --------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------


def _supported(t: Transform) -> bool:
    if t.type == TransformType.ENCR:
        return encr_supported(t.id, t.key_length)
    if t.type == TransformType.INTEG:
        return t.id == IntegId.NONE or (integ_supported(t.id) and t.key_length is None)
    if t.type == TransformType.PRF:
        return prf_supported(t.id) and t.key_length is None
    if t.type in _KE_TYPES:
        return t.key_length is None and (t.id == KeId.NONE or t.id in supported_groups())
    if t.type == TransformType.ESN:
        return t.id in (EsnId.ESN, EsnId.NO_ESN) and t.key_length is None
    return False


def _pick(pref: Sequence[Transform], other: Sequence[Transform]) -> list[Transform]:
    """Transforms in ``pref`` order that also appear in ``other`` (equal type, id and key length)."""
    return [t for t in pref if t in other and _supported(t)]


def _pick_optional(
    ttype: TransformType, none_id: int, a: Proposal, b: Proposal, theirs: Proposal
) -> Transform | bool | None:
    """Pick a transform of a type where absence means ``none_id`` (KE in ESP, ADDKEn, ESN).

    Returns the chosen Transform, None to omit the type, or False for no match.
    """
    a_ts = list(a.of_type(ttype)) or [Transform(ttype, none_id)]
    b_ts = list(b.of_type(ttype)) or [Transform(ttype, none_id)]
    common = _pick(a_ts, b_ts)
    if not common:
        return False
    chosen = common[0]
    if chosen.id == none_id and chosen not in theirs.transforms:
        return None  # both sides implicitly chose "none": leave the type out
    return chosen


def _match(a: Proposal, b: Proposal, theirs: Proposal) -> tuple[Transform, ...] | None:
    """Choose one transform per type from two proposals, preferring ``a``'s order.

    ``theirs`` (one of a, b) decides whether an implicit "none" choice is spelled
    out, so the result stays a subset of what the peer sent.
    """
    if a.protocol != b.protocol:
        return None
    if any(t.type not in _KNOWN_TYPES for t in (*a.transforms, *b.transforms)):
        # RFC 7296 3.3.6: a proposal with a transform type we do not understand is rejected.
        return None
    encr_choices: list[Transform | None] = [*_pick(a.of_type(TransformType.ENCR), b.of_type(TransformType.ENCR))]
    for encr in encr_choices or [None]:
        chosen: list[Transform] = []
        if encr is None:
            if a.protocol != ProtocolId.AH or b.of_type(TransformType.ENCR) or a.of_type(TransformType.ENCR):
                return None
            aead = False
        else:
            chosen.append(encr)
            aead = encr_info(encr.id).aead
        integs = [t for t in a.of_type(TransformType.INTEG) if t.id != IntegId.NONE]
        their_integs = [t for t in b.of_type(TransformType.INTEG) if t.id != IntegId.NONE]
        if aead:
            # RFC 7296 3.3: with a combined-mode cipher INTEG is absent or NONE.
            none = Transform(TransformType.INTEG, IntegId.NONE)
            if none in theirs.transforms:
                chosen.append(none)
        else:
            common_integ = _pick(integs, their_integs)
            if not common_integ:
                continue
            chosen.append(common_integ[0])
        if a.protocol == ProtocolId.IKE or a.of_type(TransformType.PRF) or b.of_type(TransformType.PRF):
            prf = _pick(a.of_type(TransformType.PRF), b.of_type(TransformType.PRF))
            if not prf:
                return None
            chosen.append(prf[0])
        ke_ok = True
        for ttype in (TransformType.KE, *_ADDKE_TYPES):
            pick = _pick_optional(ttype, KeId.NONE, a, b, theirs)
            if pick is False:
                ke_ok = False
                break
            if isinstance(pick, Transform):
                chosen.append(pick)
            elif ttype == TransformType.KE and a.protocol == ProtocolId.IKE:
                ke_ok = False  # RFC 7296 1.2: IKE_SA_INIT needs a real KE method
                break
        if not ke_ok:
            return None
        if a.protocol != ProtocolId.IKE:
            esn = _pick_optional(TransformType.ESN, EsnId.NO_ESN, a, b, theirs)
            if esn is False:
                return None
            if isinstance(esn, Transform):
                chosen.append(esn)
        elif a.of_type(TransformType.ESN) or b.of_type(TransformType.ESN):
            return None
        return tuple(sorted(chosen, key=_order_key))
    return None


# Proposals as the selection sees them: no SPI (it never decides a match). Hashable, so a
# login storm's identical offers are matched once (``_select``'s memo), not per client.
_Offer = tuple[int, ProtocolId, tuple[Transform, ...]]
SELECT_MEMO = 512  # distinct (ours, theirs, options) kept; offers this large are never kept:
MEMO_MAX_TRANSFORMS = 64  # an unauthenticated peer cannot fill the memo with huge offers


def select_proposal(
    ours: Sequence[Proposal],
    theirs: Sequence[Proposal],
    *,
    prefer_theirs: bool = False,
    ke_hint: KeId | int | None = None,
    skip_ke: bool = False,
) -> Proposal | None:
    """Responder: choose one of the peer's proposals (RFC 7296 2.7).

    The result carries THEIR proposal number and SPI and exactly one transform
    per type present. Our configured order wins unless ``prefer_theirs``.
    ``ke_hint`` is the group of the peer's KE payload: when the chosen proposal
    pair allows that group it is taken, sparing an INVALID_KE_PAYLOAD round
    trip (RFC 7296 1.2) without changing which proposals match.
    ``skip_ke`` ignores KE transforms on both sides, for the Child SA
    created inside IKE_AUTH, whose SA payload cannot carry a KE method other
    than NONE (RFC 7296 1.2) even when our config asks for PFS on rekeys.
    Returns None when nothing matches (answer NO_PROPOSAL_CHOSEN).
    """
    mine = tuple((p.num, p.protocol, p.transforms) for p in ours)
    offers = tuple((p.num, p.protocol, p.transforms) for p in theirs)
    hint = None if ke_hint is None else int(ke_hint)
    if sum(len(o[2]) for o in offers) <= MEMO_MAX_TRANSFORMS:
        found = _select(mine, offers, prefer_theirs, hint, skip_ke)
    else:
        found = _select.__wrapped__(mine, offers, prefer_theirs, hint, skip_ke)
    if found is None:
        return None
    index, chosen = found
    t = theirs[index]
    return Proposal(num=t.num, protocol=t.protocol, spi=t.spi, transforms=chosen)


@functools.lru_cache(maxsize=SELECT_MEMO)
def _select(mine: tuple[_Offer, ...], offers: tuple[_Offer, ...], prefer_theirs: bool, ke_hint: int | None,
            skip_ke: bool) -> tuple[int, tuple[Transform, ...]] | None:
    """``select_proposal`` on SPI-less offers: (index of their chosen proposal, transforms) or None."""
    ours = [Proposal(n, proto, b"", ts) for n, proto, ts in mine]
    theirs = [Proposal(n, proto, b"", ts) for n, proto, ts in offers]
    if skip_ke:
        ours = [without_ke(p) for p in ours]
        theirs = [without_ke(p) for p in theirs]
    if ke_hint is not None and ke_hint != KeId.NONE:
        ours = prefer_group(ours, ke_hint)
        theirs = prefer_group(theirs, ke_hint)
    pairs: Iterable[tuple[int, Proposal, Proposal]]
    if prefer_theirs:
        pairs = ((i, t, o) for i, t in enumerate(theirs) for o in ours)
    else:
        pairs = ((i, t, o) for o in ours for i, t in enumerate(theirs))
    for i, t, o in pairs:
        chosen = _match(t, o, t) if prefer_theirs else _match(o, t, t)
        if chosen is not None:
            return i, chosen
    return None


def proposal_matches_chosen(offered: Sequence[Proposal], chosen: Proposal, *, skip_ke: bool = False) -> bool:
    """Initiator: is the responder's single chosen proposal a valid pick from
    one we offered with the same number (RFC 7296 3.3.6)? The SPI is not compared
    (for ESP it is the responder's own). ``skip_ke`` as in ``select_proposal``."""
    if skip_ke:
        offered = [without_ke(p) for p in offered]
        chosen = without_ke(chosen)
    types = [t.type for t in chosen.transforms]
    if len(types) != len(set(types)):
        return False
    for p in offered:
        if p.num != chosen.num or p.protocol != chosen.protocol:
            continue
        if any(t not in p.transforms for t in chosen.transforms):
            # An explicit INTEG NONE alongside an AEAD is tolerated even if we did not list it.
            extra = [t for t in chosen.transforms if t not in p.transforms]
            if extra != [Transform(TransformType.INTEG, IntegId.NONE)]:
                continue
        result = _match(chosen, p, chosen)
        if result is not None and sorted(result, key=_order_key) == sorted(chosen.transforms, key=_order_key):
            return True
    return False


# --------------------------------------------------------------------------
# helpers for the tasks
# --------------------------------------------------------------------------


def ke_group_of(p: Proposal) -> KeId | None:
    """The (first) real KE method of a proposal; for a chosen proposal, the negotiated group."""
    for t in p.of_type(TransformType.KE):
        if t.id != KeId.NONE and t.id in _KE_IDS:
            return KeId(t.id)
    return None


def groups_in(proposals: Iterable[Proposal]) -> list[KeId]:
    """All KE methods offered, in preference order, without duplicates.

    The initiator guesses ``groups_in(...)[0]`` for its KE payload and, after
    INVALID_KE_PAYLOAD, checks the requested group is in this list (RFC 7296 1.2).
    """
    out: list[KeId] = []
    for p in proposals:
        for t in p.of_type(TransformType.KE):
            if t.id != KeId.NONE and t.id in _KE_IDS and t.id not in out:
                out.append(KeId(t.id))
    return out


_KE_IDS = frozenset(int(k) for k in KeId)


def prefer_group(proposals: Iterable[Proposal], group: KeId | int) -> list[Proposal]:
    """Move ``group`` to the front of each proposal's KE transforms (after INVALID_KE_PAYLOAD)."""
    out: list[Proposal] = []
    for p in proposals:
        kes = p.of_type(TransformType.KE)
        first = [t for t in kes if t.id == group]
        rest = [t for t in p.transforms if t not in first]
        ordered = [t for t in rest if t.type < TransformType.KE]
        ordered += first + [t for t in rest if t.type >= TransformType.KE]
        out.append(Proposal(p.num, p.protocol, p.spi, tuple(ordered)))
    return out


def without_ke(p: Proposal) -> Proposal:
    """The proposal with all KE transforms removed: Child SAs created in
    IKE_AUTH use the IKE SA's key exchange (RFC 7296 1.2), so their SA payload
    carries none."""
    return Proposal(p.num, p.protocol, p.spi, tuple(t for t in p.transforms if t.type not in _KE_TYPES))


def with_spi(p: Proposal, spi: bytes) -> Proposal:
    return Proposal(p.num, p.protocol, spi, p.transforms)


# --------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------

_ENCR_SWAN: dict[int, str] = {
    EncrId.ENCR_3DES: "3DES",
    EncrId.ENCR_AES_CBC: "AES_CBC",
    EncrId.ENCR_AES_CCM_8: "AES_CCM_8",
    EncrId.ENCR_AES_CCM_12: "AES_CCM_12",
    EncrId.ENCR_AES_CCM_16: "AES_CCM_16",
    EncrId.ENCR_AES_GCM_8: "AES_GCM_8",
    EncrId.ENCR_AES_GCM_12: "AES_GCM_12",
    EncrId.ENCR_AES_GCM_16: "AES_GCM_16",
    EncrId.ENCR_CHACHA20_POLY1305: "CHACHA20_POLY1305",
}
_INTEG_SWAN: dict[int, str] = {
    IntegId.AUTH_HMAC_MD5_96: "HMAC_MD5_96",
    IntegId.AUTH_HMAC_SHA1_96: "HMAC_SHA1_96",
    IntegId.AUTH_HMAC_SHA2_256_128: "HMAC_SHA2_256_128",
    IntegId.AUTH_HMAC_SHA2_384_192: "HMAC_SHA2_384_192",
    IntegId.AUTH_HMAC_SHA2_512_256: "HMAC_SHA2_512_256",
}
_PRF_SWAN: dict[int, str] = {
    PrfId.PRF_HMAC_MD5: "PRF_HMAC_MD5",
    PrfId.PRF_HMAC_SHA1: "PRF_HMAC_SHA1",
    PrfId.PRF_HMAC_SHA2_256: "PRF_HMAC_SHA2_256",
    PrfId.PRF_HMAC_SHA2_384: "PRF_HMAC_SHA2_384",
    PrfId.PRF_HMAC_SHA2_512: "PRF_HMAC_SHA2_512",
    PrfId.PRF_AES128_CMAC: "PRF_AES128_CMAC",
}
_KE_SWAN: dict[int, str] = {
    KeId.NONE: "KE_NONE",
    KeId.MODP_1024: "MODP_1024",
    KeId.MODP_1536: "MODP_1536",
    KeId.MODP_2048: "MODP_2048",
    KeId.MODP_3072: "MODP_3072",
    KeId.MODP_4096: "MODP_4096",
    KeId.ECP_256: "ECP_256",
    KeId.ECP_384: "ECP_384",
    KeId.ECP_521: "ECP_521",
    KeId.CURVE25519: "CURVE_25519",
    KeId.CURVE448: "CURVE_448",
    KeId.ML_KEM_768: "ML_KEM_768",
    KeId.ML_KEM_1024: "ML_KEM_1024",
}

# Canonical keyword per transform: the first spelling registered, skipping
# the short aliases that were registered before their canonical form.
_ALIASES = frozenset({"aes", "sha"})


def _canonical_names() -> dict[tuple[TransformType, int, int | None], str]:
    names: dict[tuple[TransformType, int, int | None], str] = {}
    for name, kw in _KEYWORDS.items():
        if name not in _ALIASES:
            names.setdefault((kw.type, kw.id, kw.key_length), name)
    return names


_CANONICAL = _canonical_names()


def _name(t: Transform) -> str:
    prefix = ""
    ttype = t.type
    if ttype in _ADDKE_TYPES:
        prefix = f"ke{int(ttype) - int(TransformType.ADDKE1) + 1}_"
        ttype = TransformType.KE
    name = _CANONICAL.get((ttype, t.id, t.key_length))
    if name is None:
        kl = f"_{t.key_length}" if t.key_length is not None else ""
        return f"{prefix}{TransformType(ttype).name.lower()}{t.id}{kl}"
    return prefix + name


def proposal_to_str(p: Proposal) -> str:
    """Keyword form, parseable back by ``parse_proposal`` (e.g. ``aes128-sha256-modp2048``).

    PRFs implied by the integrity algorithms are left out, as is the implicit
    ``noesn`` of ESP proposals.
    """
    parts: list[str] = []
    integs = p.of_type(TransformType.INTEG)
    implied = [Transform(TransformType.PRF, _INTEG_TO_PRF[t.id]) for t in integs if t.id in _INTEG_TO_PRF]
    implied = list(dict.fromkeys(implied))
    prfs = list(p.of_type(TransformType.PRF))
    omit_prf = p.protocol == ProtocolId.IKE and bool(prfs) and prfs == implied
    esns = p.of_type(TransformType.ESN)
    omit_esn = esns == (Transform(TransformType.ESN, EsnId.NO_ESN),)
    order = (TransformType.ENCR, TransformType.INTEG, TransformType.PRF, TransformType.KE, TransformType.ESN)
    for ttype in (*order, *_ADDKE_TYPES):
        if (ttype == TransformType.PRF and omit_prf) or (ttype == TransformType.ESN and omit_esn):
            continue
        for t in p.of_type(ttype):
            if t.type == TransformType.INTEG and t.id == IntegId.NONE:
                continue
            parts.append(_name(t))
    return "-".join(parts)


def _swan(table: dict[int, str], t: Transform) -> str:
    return table.get(t.id, f"{TransformType(t.type).name}_{t.id}")


def proposal_to_swanctl(p: Proposal) -> str:
    """The algorithm part of a ``swanctl --list-sas`` line for a chosen proposal.

    IKE: ``AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256`` or
    ``AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048``;
    ESP: ``AES_GCM_16-256``, ``AES_CBC-128/HMAC_SHA2_256_128``, with ``/<group>``
    after a PFS exchange and ``/ESN`` when extended sequence numbers are in use.
    Key sizes are printed only for ciphers that carry a Key Length attribute.
    """
    parts: list[str] = []
    for t in p.of_type(TransformType.ENCR)[:1]:
        name = _swan(_ENCR_SWAN, t)
        parts.append(f"{name}-{t.key_length}" if t.key_length else name)
    for t in p.of_type(TransformType.INTEG)[:1]:
        if t.id != IntegId.NONE:
            parts.append(_swan(_INTEG_SWAN, t))
    for t in p.of_type(TransformType.PRF)[:1]:
        parts.append(_swan(_PRF_SWAN, t))
    for t in p.of_type(TransformType.KE)[:1]:
        if t.id != KeId.NONE or p.protocol == ProtocolId.IKE:
            parts.append(_swan(_KE_SWAN, t))
    if Transform(TransformType.ESN, EsnId.ESN) in p.of_type(TransformType.ESN)[:1]:
        parts.append("ESN")
    return "/".join(parts)
