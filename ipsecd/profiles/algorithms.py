"""One cipher suite the gateway accepts, spelled the way Windows or Apple want it.

Windows (``Set-VpnConnectionIPsecConfiguration``) and Apple (``IKESecurityAssociationParameters``)
take exactly one algorithm of each kind, so a profile for them must name a combination
that lies inside one of the gateway's proposals. The tables below say what each platform
can express; ``pick_ike``/``pick_esp`` walk the gateway's proposals in its order of
preference and return the first combination the platform can name, or None.

One name covers two transforms in both platforms' IKE settings: "SHA256" is
HMAC-SHA2-256-128 for integrity *and* PRF-HMAC-SHA2-256 (with an AEAD cipher only the
PRF, RFC 5282 8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ipsecd.iana import EncrId, IntegId, KeId, PrfId, TransformType
from ipsecd.ike.payloads import Proposal, Transform

EncrKey = tuple[int, int | None]  # (ENCR id, key length in bits or None)
AEAD = frozenset({EncrId.ENCR_AES_GCM_8, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_16, EncrId.ENCR_AES_CCM_8,
                  EncrId.ENCR_AES_CCM_12, EncrId.ENCR_AES_CCM_16, EncrId.ENCR_CHACHA20_POLY1305})
# a hash name in the IKE settings of Windows/Apple = (PRF, integrity algorithm with a CBC cipher)
HASHES: dict[str, tuple[int, int]] = {
    "sha1": (PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96),
    "sha256": (PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128),
    "sha384": (PrfId.PRF_HMAC_SHA2_384, IntegId.AUTH_HMAC_SHA2_384_192),
    "sha512": (PrfId.PRF_HMAC_SHA2_512, IntegId.AUTH_HMAC_SHA2_512_256),
}

_CBC, _GCM, _3DES = EncrId.ENCR_AES_CBC, EncrId.ENCR_AES_GCM_16, EncrId.ENCR_3DES


@dataclass(frozen=True)
class PlatformAlgorithms:
    """What one platform can name, each mapped to its spelling."""

    ike_encr: Mapping[EncrKey, str]
    ike_hash: Mapping[str, str]  # HASHES key -> the platform's name
    ke: Mapping[int, str | int]
    esp_encr: Mapping[EncrKey, str]
    esp_integ: Mapping[int, str]
    pfs: Mapping[int, str | int]  # KeId -> name; KeId.NONE = no PFS


# Set-VpnConnectionIPsecConfiguration parameter values (Windows 10/11; MS-RRASM ROUTER_CUSTOM_IKEv2_POLICY)
WINDOWS = PlatformAlgorithms(
    ike_encr={(_GCM, 256): "GCMAES256", (_GCM, 128): "GCMAES128", (_CBC, 256): "AES256", (_CBC, 192): "AES192",
              (_CBC, 128): "AES128", (_3DES, None): "DES3"},
    ike_hash={"sha384": "SHA384", "sha256": "SHA256", "sha1": "SHA1"},
    ke={KeId.ECP_384: "ECP384", KeId.ECP_256: "ECP256", KeId.MODP_2048: "Group14", KeId.MODP_1024: "Group2"},
    esp_encr={(_GCM, 256): "GCMAES256", (_GCM, 192): "GCMAES192", (_GCM, 128): "GCMAES128", (_CBC, 256): "AES256",
              (_CBC, 192): "AES192", (_CBC, 128): "AES128", (_3DES, None): "DES3"},
    esp_integ={IntegId.AUTH_HMAC_SHA2_256_128: "SHA256128", IntegId.AUTH_HMAC_SHA1_96: "SHA196"},
    pfs={KeId.NONE: "None", KeId.ECP_384: "ECP384", KeId.ECP_256: "ECP256", KeId.MODP_2048: "PFS2048",
         KeId.MODP_1024: "PFS2"},
)

# Apple configuration profile, VPN.IKEv2.{IKE,Child}SecurityAssociationParameters
_APPLE_GROUPS: dict[int, str | int] = {g: int(g) for g in (
    KeId.CURVE25519, KeId.ECP_256, KeId.ECP_384, KeId.ECP_521, KeId.MODP_2048, KeId.MODP_3072, KeId.MODP_4096,
    KeId.MODP_6144, KeId.MODP_8192, KeId.CURVE448, KeId.MODP_1536, KeId.MODP_1024)}
APPLE = PlatformAlgorithms(
    ike_encr={(_GCM, 256): "AES-256-GCM", (_GCM, 128): "AES-128-GCM", (EncrId.ENCR_CHACHA20_POLY1305, None):
              "ChaCha20Poly1305", (_CBC, 256): "AES-256", (_CBC, 128): "AES-128", (_3DES, None): "3DES"},
    ike_hash={"sha512": "SHA2-512", "sha384": "SHA2-384", "sha256": "SHA2-256", "sha1": "SHA1-96"},
    ke=_APPLE_GROUPS,
    esp_encr={(_GCM, 256): "AES-256-GCM", (_GCM, 128): "AES-128-GCM", (EncrId.ENCR_CHACHA20_POLY1305, None):
              "ChaCha20Poly1305", (_CBC, 256): "AES-256", (_CBC, 128): "AES-128", (_3DES, None): "3DES"},
    esp_integ={IntegId.AUTH_HMAC_SHA2_512_256: "SHA2-512", IntegId.AUTH_HMAC_SHA2_384_192: "SHA2-384",
               IntegId.AUTH_HMAC_SHA2_256_128: "SHA2-256", IntegId.AUTH_HMAC_SHA1_96: "SHA1-96"},
    pfs={KeId.NONE: 0, **_APPLE_GROUPS},
)


@dataclass(frozen=True)
class IkeSuite:
    encr: str
    hash: str
    group: str | int


@dataclass(frozen=True)
class EspSuite:
    encr: str
    integ: str | None  # None with an AEAD cipher
    pfs: str | int  # the platform's "no PFS" (Windows "None", Apple 0) or a group
    aead: bool
    pfs_group: int  # KeId; NONE without PFS


def _key(t: Transform) -> EncrKey:
    return (t.id, t.key_length)


def pick_ike(proposals: Sequence[Proposal], alg: PlatformAlgorithms) -> IkeSuite | None:
    """The first (cipher, hash, group) inside one of ``proposals`` that the platform can name."""
    for p in proposals:
        integs = {t.id for t in p.of_type(TransformType.INTEG)}
        groups = [t.id for t in p.of_type(TransformType.KE) if t.id in alg.ke]
        if not groups:
            continue
        for encr in p.of_type(TransformType.ENCR):
            name = alg.ike_encr.get(_key(encr))
            if name is None:
                continue
            aead = encr.id in AEAD
            for prf in p.of_type(TransformType.PRF):  # the gateway's PRF order
                hashname = next((h for h, (hp, hi) in HASHES.items()
                                 if hp == prf.id and h in alg.ike_hash and (aead or hi in integs)), None)
                if hashname is not None:
                    return IkeSuite(name, alg.ike_hash[hashname], alg.ke[groups[0]])
    return None


def pick_esp(proposals: Sequence[Proposal], alg: PlatformAlgorithms) -> EspSuite | None:
    """The first (cipher, integrity, PFS group) inside one of ``proposals`` that the platform can name.

    A proposal without a KE transform (or with NONE among them) takes no PFS; one that
    demands a group needs the platform to name it (RFC 7296 1.3.1: the group is used in
    CREATE_CHILD_SA, i.e. at the first rekey).
    """
    for p in proposals:
        kes = [t.id for t in p.of_type(TransformType.KE)]
        if not kes or KeId.NONE in kes:
            pfs_group: int | None = KeId.NONE
        else:
            pfs_group = next((g for g in kes if g in alg.pfs), None)
        if pfs_group is None:
            continue
        for encr in p.of_type(TransformType.ENCR):
            name = alg.esp_encr.get(_key(encr))
            if name is None:
                continue
            if encr.id in AEAD:
                return EspSuite(name, None, alg.pfs[pfs_group], True, pfs_group)
            integ = next((alg.esp_integ[t.id] for t in p.of_type(TransformType.INTEG) if t.id in alg.esp_integ),
                         None)
            if integ is not None:
                return EspSuite(name, integ, alg.pfs[pfs_group], False, pfs_group)
    return None
