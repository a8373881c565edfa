"""What one IKE connection is configured to do, in the engine's own terms.

The daemon turns the YAML config into these; the engine never reads the config
file model directly, so tests can build an engine from a few lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from ipsecd.eap.method import Secret
from ipsecd.iana import AuthMethod
from ipsecd.identity import Identity, IdMatch
from ipsecd.ike.payloads import Proposal
from ipsecd.ike.signature import SignaturePolicy

PSK = "psk"
PUBKEY = "pubkey"
EAP_METHODS = ("eap-mschapv2", "eap-tls", "eap-radius", "eap-dynamic", "eap")


@dataclass(frozen=True)
class AuthSettings:
    """How one side authenticates (swanctl's ``local``/``remote`` auth round).

    ``method``: psk | pubkey | eap-mschapv2 | eap-tls | eap-radius | eap-dynamic | eap.
    ``certs`` (ours) name files in the credential store's x509/; ``cacerts`` (the peer's)
    restrict its trust anchors (None: all); ``eap_id`` is the EAP identity: ours, or the
    peer's, where ``%any`` asks for it with EAP-Identity and None means the IKE identity.
    """

    method: str = PSK
    certs: tuple[str, ...] = ()
    cacerts: tuple[str, ...] | None = None
    eap_id: Identity | None = None

    @property
    def eap(self) -> bool:
        return self.method in EAP_METHODS

    def accepts_auth_payload(self, auth_method: int | None) -> bool:
        """Does a peer that sends this AUTH method (None: no AUTH, i.e. EAP) fit this round?"""
        if auth_method is None:
            return self.eap
        if auth_method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            return self.method == PSK
        return self.method == PUBKEY


def _no_secret(_identity: bytes) -> Secret | None:
    return None


@dataclass(frozen=True)
class TsSpec:
    """One configured traffic selector; ``network`` None means "dynamic" (our outer address)."""

    network: IPv4Network | IPv6Network | None
    proto: int = 0
    port_lo: int = 0
    port_hi: int = 65535


@dataclass(frozen=True)
class ChildSettings:
    name: str
    local_ts: tuple[TsSpec, ...]
    remote_ts: tuple[TsSpec, ...]
    esp_proposals: tuple[Proposal, ...]
    mode: str = "tunnel"  # "tunnel" | "transport"
    start_action: str = "none"
    replay_window: int = 1024
    # Lifetimes (swanctl names and defaults). Time limits are enforced by the engine
    # (soft: rekey_time minus a random jitter in [0, rand_time]; hard: life_time).
    # Byte/packet limits are only stored here: the daemon reads the data-plane
    # counters and calls IkeSa.rekey_child() / IkeSa.expire_child(). 0 = no limit.
    rekey_time: float = 3600.0
    life_time: float = 3960.0
    rand_time: float = 360.0
    rekey_bytes: int = 0
    life_bytes: int = 0
    rand_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    rand_packets: int = 0
    dpd_action: str = "clear"  # clear | trap | restart: what the daemon does when the peer is declared dead
    # swanctl's ah_proposals: offered before the ESP ones; a Child SA is either AH or ESP,
    # never a bundle (RFC 7296 removed AH+ESP bundles; strongSwan negotiates one of them).
    ah_proposals: tuple[Proposal, ...] = ()
    ipcomp: bool = False  # propose/accept IPComp with deflate (swanctl's ipcomp)

    @property
    def proposals(self) -> tuple[Proposal, ...]:
        """What this child offers and accepts: AH proposals, then ESP ones, numbered 1..n
        (RFC 7296 3.3.1: proposal numbers start at 1 and count up by one)."""
        both = (*self.ah_proposals, *self.esp_proposals)
        if not self.ah_proposals:
            return self.esp_proposals
        return tuple(dataclasses.replace(p, num=i) for i, p in enumerate(both, start=1))


@dataclass(frozen=True)
class RetransmitSettings:
    """RFC 7296 2.1 back-off: timeout * base**n for try n, then give up."""

    tries: int = 5
    timeout: float = 4.0
    base: float = 1.8


@dataclass(frozen=True)
class IkeSettings:
    name: str
    ike_proposals: tuple[Proposal, ...]
    local_id: Identity | None  # None: the IP address the IKE SA uses (strongSwan's default), see local_identity()
    remote_id: Identity  # may be a pattern: %any, *.example.com, CN=*, a subnet
    children: tuple[ChildSettings, ...]
    # (our id, peer id) -> PSK; None when no secret matches
    psk_lookup: Callable[[Identity, Identity], bytes | None] = field(repr=False, compare=False)
    local_addrs: tuple[str, ...] = ()
    remote_addrs: tuple[str, ...] = ()  # empty = %any
    remote_port: int = 500
    retransmit: RetransmitSettings = RetransmitSettings()
    keyingtries: int = 1  # IKE SAs one initiation may use when the peer does not answer; 0 = forever (ike/keying.py)
    force_encap: bool = False
    mobike: bool = True  # RFC 4555: offer/accept MOBIKE in IKE_AUTH (swanctl's default)
    # IKE SA lifetime: rekey after rekey_time minus a random jitter in [0, rand_time];
    # close after rekey_time + over_time whatever happened (0 disables each).
    rekey_time: float = 14400.0
    over_time: float = 1440.0
    rand_time: float = 1440.0
    # RFC 7296 2.4 liveness: probe after dpd_delay seconds without inbound IKE or ESP
    # traffic (0 = never); dpd_timeout > 0 also caps how long one request may stay
    # unanswered (otherwise the retransmission schedule decides).
    reauth_time: float = 0.0  # 0 = never; else a new IKE SA (make-before-break) replaces this one
    dpd_delay: float = 0.0
    dpd_timeout: float = 0.0
    dpd_action: str = "clear"
    # swanctl's unique: no | never | replace | keep (what a second IKE SA of the same identities does)
    unique: str = "no"
    # Virtual IPs (RFC 7296 2.19): as a gateway, the address pools to lease from (by name, in
    # order); as a client, the addresses to ask for ("0.0.0.0", "::": any of that family).
    pools: tuple[str, ...] = ()
    vips: tuple[str, ...] = ()
    local_auth: AuthSettings = AuthSettings()
    remote_auth: AuthSettings = AuthSettings()
    send_cert: str = "ifasked"  # always | ifasked | never
    send_certreq: bool = True
    # RFC 7383: swanctl's fragmentation (yes | accept | force | no, see ike/fragments.py) and
    # strongSwan's charon.fragment_size: the largest IP packet an IKE fragment may make
    fragmentation: str = "yes"
    fragment_size: int = 1280
    signature: SignaturePolicy = field(default_factory=SignaturePolicy)
    # EAP identity -> password or NT hash (secrets.eap / secrets.ntlm), both roles
    eap_secret: Callable[[bytes], Secret | None] = field(default=_no_secret, repr=False, compare=False)

    def local_identity(self, local_addr: str) -> Identity:
        """The identity we send: the configured one, else the address ``local_addr`` the IKE SA uses."""
        return self.local_id if self.local_id is not None else Identity.from_address(local_addr)

    def id_match(self, peer: Identity, named_for_us: Identity | None) -> int:
        """How well a peer's IDi (and the IDr it proposed, if any) fit this connection; 0 = not at all.

        strongSwan's peer config choice (backend_manager get_peer_match): the sum of both
        match qualities, so the responder picks the most specific connection. The peer's
        IDr may itself be a pattern, so ours is also tried against it; an unset local id
        (the IKE SA's address) accepts any IDr with quality ANY.
        """
        other = self.remote_id.matches(peer)
        if not other:
            return IdMatch.NONE
        if named_for_us is None or self.local_id is None:
            return other + IdMatch.ANY
        me = self.local_id.matches(named_for_us) or named_for_us.matches(self.local_id)
        return other + me if me else IdMatch.NONE

    def child(self, name: str) -> ChildSettings | None:
        for c in self.children:
            if c.name == name:
                return c
        return None
