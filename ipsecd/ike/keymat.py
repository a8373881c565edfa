"""IKEv2 key derivation: SKEYSEED and the seven SK_* keys (RFC 7296 2.14),
IKE SA rekeying (2.18), Child SA KEYMAT (2.17), and the AUTH octets (2.15).

Pure functions over bytes: the state machine calls them with the negotiated
proposal and the exchanged nonces/SPIs and stores the results. Key containers
hide their contents from ``repr`` so a stray log line cannot leak them.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass, field

from ipsecd.errors import LocalProtocolError
from ipsecd.iana import IntegId, ProtocolId, TransformType
from ipsecd.ike.crypto import Prf, encr_key_len, integ_key_len, is_aead, prf_plus
from ipsecd.ike.payloads import Proposal, Transform

# RFC 7296 2.15: the fixed string that turns a PSK into an AUTH key.
KEY_PAD = b"Key Pad for IKEv2"

# RFC 7296 2.14: for PRFs with a fixed key size only the first 64 bits of each nonce go into the key.
_FIXED_KEY_NONCE_PART = 8


def _redacted(n: int) -> str:
    return f"<{n} octets>"


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """The IKE SA keys of RFC 7296 2.14. ``repr`` shows only lengths."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)

    def without_auth_keys(self) -> IkeKeys:
        """The same keys less SK_pi/SK_pr: once IKE_AUTH is over nothing signs with them again
        (RFC 7296 2.15; a rekey derives from SK_d), so an established IKE SA need not hold them."""
        return dataclasses.replace(self, sk_pi=b"", sk_pr=b"")

    def __repr__(self) -> str:
        return (
            f"IkeKeys(sk_d={_redacted(len(self.sk_d))}, sk_a={_redacted(len(self.sk_ai))}, "
            f"sk_e={_redacted(len(self.sk_ei))}, sk_p={_redacted(len(self.sk_pi))})"
        )


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """Child SA keys (RFC 7296 2.17). ``_i`` protects initiator->responder traffic.

    For AEAD ciphers ``encr_*`` ends with the salt and ``integ_*`` is empty.
    """

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"ChildKeys(encr={_redacted(len(self.encr_i))}, integ={_redacted(len(self.integ_i))})"


def _single(p: Proposal, ttype: TransformType, *, required: bool) -> Transform | None:
    ts = p.of_type(ttype)
    if len(ts) > 1:
        raise LocalProtocolError(f"chosen proposal has {len(ts)} {ttype.name} transforms, expected one")
    if not ts:
        if required:
            raise LocalProtocolError(f"chosen proposal has no {ttype.name} transform")
        return None
    return ts[0]


def proposal_prf(p: Proposal) -> Prf:
    """The PRF of a chosen IKE proposal."""
    t = _single(p, TransformType.PRF, required=True)
    assert t is not None
    return Prf(t.id)


def _encr_integ_lens(p: Proposal) -> tuple[int, int]:
    encr = _single(p, TransformType.ENCR, required=True)
    assert encr is not None
    integ = _single(p, TransformType.INTEG, required=False)
    ekey = encr_key_len(encr.id, encr.key_length)
    if is_aead(encr.id):
        # RFC 5282 8: combined-mode ciphers take no integrity key (INTEG absent or NONE).
        if integ is not None and integ.id != IntegId.NONE:
            raise LocalProtocolError("AEAD proposal must not carry an integrity algorithm")
        return ekey, 0
    if integ is None or integ.id == IntegId.NONE:
        raise LocalProtocolError("non-AEAD proposal needs an integrity algorithm")
    return ekey, integ_key_len(integ.id)


def _split_ike_keys(prf: Prf, skeyseed: bytes, proposal: Proposal, seed: bytes) -> IkeKeys:
    ekey, akey = _encr_integ_lens(proposal)
    # RFC 7296 2.14: SK_d, SK_pi, SK_pr take the PRF's preferred key length.
    plen = prf.key_len
    total = plen + 2 * akey + 2 * ekey + 2 * plen
    stream = prf_plus(prf, skeyseed, seed, total)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        out = stream[pos : pos + n]
        pos += n
        return out

    # RFC 7296 2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} in this order.
    return IkeKeys(
        sk_d=take(plen),
        sk_ai=take(akey),
        sk_ar=take(akey),
        sk_ei=take(ekey),
        sk_er=take(ekey),
        sk_pi=take(plen),
        sk_pr=take(plen),
    )


def _check_spis(spi_i: bytes, spi_r: bytes) -> None:
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise LocalProtocolError("IKE SPIs must be 8 octets each")


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared_secret: bytes) -> bytes:
    """RFC 7296 2.14: SKEYSEED = prf(Ni | Nr, g^ir).

    For the fixed-key-size PRFs (AES-CMAC) the key is the first 64 bits of Ni
    followed by the first 64 bits of Nr.
    """
    key = ni[:_FIXED_KEY_NONCE_PART] + nr[:_FIXED_KEY_NONCE_PART] if prf.fixed_key_size else ni + nr
    return prf(key, shared_secret)


def skeyseed_rekey(old_prf: Prf, old_sk_d: bytes, ni: bytes, nr: bytes, shared_secret: bytes) -> bytes:
    """RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)."""
    return old_prf(old_sk_d, shared_secret + ni + nr)


def derive_ike_keys(
    proposal: Proposal, ni: bytes, nr: bytes, shared_secret: bytes, spi_i: bytes, spi_r: bytes
) -> IkeKeys:
    """Keys for a new IKE SA from IKE_SA_INIT (RFC 7296 2.14).

    ``proposal`` is the single chosen IKE proposal (one transform per type).
    """
    _check_spis(spi_i, spi_r)
    prf = proposal_prf(proposal)
    seed = skeyseed(prf, ni, nr, shared_secret)
    return _split_ike_keys(prf, seed, proposal, ni + nr + spi_i + spi_r)


def derive_ike_rekey_keys(
    old_prf: Prf,
    old_sk_d: bytes,
    proposal: Proposal,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """Keys for the new IKE SA after a CREATE_CHILD_SA rekey (RFC 7296 2.18).

    SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) under the old SA's PRF,
    then prf+ under the new proposal's PRF. ``ni``/``nr``/``spi_*`` are those of
    the rekeying exchange and the new SA. The same formula serves the RFC 9370
    2.2.2 update after each IKE_INTERMEDIATE additional key exchange (with the
    current SA's PRF and SK_d, and the unchanged SPIs).
    """
    _check_spis(spi_i, spi_r)
    seed = skeyseed_rekey(old_prf, old_sk_d, ni, nr, shared_secret)
    prf = proposal_prf(proposal)
    return _split_ike_keys(prf, seed, proposal, ni + nr + spi_i + spi_r)


def child_keymat_len(esp_proposal: Proposal) -> tuple[int, int]:
    """(encryption, integrity) key octets per direction for a chosen ESP/AH proposal."""
    return _encr_integ_lens(esp_proposal)


def derive_child_keys(
    prf: Prf,
    sk_d: bytes,
    esp_proposal: Proposal,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes | None = None,
) -> ChildKeys:
    """Child SA keys: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 2.17).

    ``ni``/``nr`` are the nonces of the exchange that creates the Child SA (those
    of IKE_SA_INIT for the first one). Initiator->responder keys come first,
    and within one direction the encryption key precedes the integrity key.
    """
    if esp_proposal.protocol == ProtocolId.AH:
        # RFC 7296 2.17 / RFC 4302: AH has an integrity key only (no ENCR transform)
        integ = _single(esp_proposal, TransformType.INTEG, required=True)
        assert integ is not None
        ekey, akey = 0, integ_key_len(integ.id)
    else:
        ekey, akey = _encr_integ_lens(esp_proposal)
    seed = (shared_secret or b"") + ni + nr
    stream = prf_plus(prf, sk_d, seed, 2 * (ekey + akey))
    a = ekey + akey
    return ChildKeys(
        encr_i=stream[:ekey],
        integ_i=stream[ekey:a],
        encr_r=stream[a : a + ekey],
        integ_r=stream[a + ekey :],
    )


def signed_octets(prf: Prf, sk_p: bytes, real_message: bytes, peer_nonce: bytes, id_body: bytes) -> bytes:
    """The octets an AUTH payload signs or MACs (RFC 7296 2.15).

    RealMessage | Nonce of the other side | prf(SK_px, RestOfIDPayload), where
    RestOfIDPayload is the ID payload body from the ID Type octet onwards
    (ID type, three reserved octets, identification data) and SK_px is the
    sender's own SK_pi or SK_pr.
    """
    return real_message + peer_nonce + prf(sk_p, id_body)


def psk_auth_data(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <signed octets>) (RFC 7296 2.15)."""
    return prf(prf(psk, KEY_PAD), octets)


def verify_psk_auth(prf: Prf, psk: bytes, octets: bytes, received: bytes) -> bool:
    """Constant-time check of a received PSK AUTH value."""
    return hmac.compare_digest(psk_auth_data(prf, psk, octets), received)
