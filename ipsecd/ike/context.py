"""What an IKE SA may ask of the engine that owns it: one small context object.

It replaces the callables an IKE SA used to be handed (SPI, reqid and id allocators,
the fixed-reqid lookup, the "does another SA with this peer exist" query). The
manager creates one per engine and shares it with every SA; the SA only *asks*
here, it never changes another SA. Everything here is O(1) per call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ipsecd.credentials import CredentialStore
from ipsecd.errors import LocalProtocolError
from ipsecd.ike.shard import Shard
from ipsecd.ratelimit import RateLimitedLogger

if TYPE_CHECKING:
    from ipsecd.identity import Identity
    from ipsecd.ike.cp import AttributeProvider

# Our own IKE SPIs: 8 random octets, never zero (RFC 7296 3.1: zero means "unknown yet").
IKE_SPI_LEN = 8
CHILD_SPI_LEN = 4
_RESERVED_SPI_MAX = 255  # ESP/AH SPIs 1..255 are reserved by IANA (RFC 4303 2.1)
# RFC 3173 3.3: CPIs 0-63 are well known, 64-255 reserved, 61440-65535 private: negotiated
# CPIs come from 256-61439.
CPI_MIN, CPI_MAX = 256, 61439


@dataclass
class EngineContext:
    rng: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    # which IKE shard this engine is: every SPI, CPI, reqid and id below carries it (ike/shard.py)
    shard: Shard = field(default_factory=Shard)
    next_ike_id: int = 0  # 0: the shard's first (set in __post_init__)
    next_reqid: int = 0
    ike_spis: set[bytes] = field(default_factory=set, repr=False)  # our IKE SPIs in use
    child_spis: set[bytes] = field(default_factory=set, repr=False)  # our inbound ESP SPIs in use
    # our inbound IPComp CPIs in use, each tied to the inbound SPI of its Child SA: the CPI
    # goes back to the pool with that SPI (release_child_spi), so it has no lifecycle of its own
    cpi_of_spi: dict[bytes, int] = field(default_factory=dict, repr=False)
    cpis: set[int] = field(default_factory=set, repr=False)
    # (connection, child) -> reqid every Child SA of that child carries (traps, reauth)
    fixed_reqids: dict[tuple[str, str], int] = field(default_factory=dict)
    fixed_owner: dict[int, tuple[str, str]] = field(default_factory=dict)
    # (connection, peer address) -> live IKE SA ids: decides INITIAL_CONTACT (RFC 7296 2.4)
    contacts: dict[tuple[str, str], set[int]] = field(default_factory=dict, repr=False)
    # (our identity, the peer's client identity) -> established IKE SAs by id: the SA table's
    # index, read here for swanctl's unique (tasks/unique.py)
    sessions: Mapping[tuple[Identity, Identity], Mapping[int, object]] = field(default_factory=dict, repr=False)
    # the address pools of virtual IPs (RFC 7296 2.19), asked by the CP task; None: no pools
    attributes: AttributeProvider | None = field(default=None, repr=False)
    # certificates, trust anchors, CRLs and keys; the owner swaps in a new store on reload
    credentials: CredentialStore = field(default_factory=lambda: CredentialStore(None), repr=False)
    # wall-clock seconds minus the engine's (monotonic) now: certificates are valid in real time
    wall_offset: float = 0.0
    # our addresses configured on this host now (the shell follows netlink): MOBIKE advertises them
    local_addresses: tuple[str, ...] = ()
    # connection name (or "*") -> (the gateway new clients are redirected to, from how many other IKE
    # SAs on: 0 = always, draining; N = when full) (RFC 5685, ike/redirect.py)
    redirects: dict[str, tuple[str, int]] = field(default_factory=dict)
    # logger name -> the rate limit shared by the log lines of unauthenticated peers (ike/salog.py)
    log_limiters: dict[str, RateLimitedLogger] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.next_ike_id = self.next_ike_id or self.shard.first()
        self.next_reqid = self.next_reqid or self.shard.first()

    def wall_time(self, now: float) -> datetime:
        """The real time at engine time ``now`` (the owner keeps ``wall_offset`` current)."""
        return datetime.fromtimestamp(now + self.wall_offset, UTC)

    # ---------------------------------------------------------------- allocation
    def alloc_ike_id(self) -> int:
        i = self.next_ike_id
        self.next_ike_id += self.shard.count
        return i

    def alloc_ike_spi(self) -> bytes:
        while True:
            spi = self.shard.stamp(self.rng(IKE_SPI_LEN))
            if spi != bytes(IKE_SPI_LEN) and spi not in self.ike_spis:
                self.ike_spis.add(spi)
                return spi

    def release_ike_spi(self, spi: bytes) -> None:
        self.ike_spis.discard(spi)

    def alloc_child_spi(self) -> bytes:
        while True:
            # the worker is shared by every shard: inbound SPIs never clash across shards
            spi = self.shard.stamp(self.rng(CHILD_SPI_LEN))
            if int.from_bytes(spi, "big") > _RESERVED_SPI_MAX and spi not in self.child_spis:
                self.child_spis.add(spi)
                return spi

    def release_child_spi(self, spi: bytes) -> None:
        self.child_spis.discard(spi)
        self.release_cpi(spi)

    def alloc_cpi(self, spi: bytes) -> int:
        """A free IPComp CPI for the Child SA whose inbound SPI is ``spi`` (RFC 7296 3.10.1)."""
        have = self.cpi_of_spi.get(spi)
        if have is not None:
            return have  # a retried request keeps its CPI, as it keeps its SPI
        n = self.shard.count
        if len(self.cpis) * n > CPI_MAX - CPI_MIN:
            raise LocalProtocolError("no IPComp CPI left")
        while True:
            cpi = CPI_MIN + int.from_bytes(self.rng(2), "big") % (CPI_MAX - CPI_MIN + 1)
            cpi -= (cpi - self.shard.index) % n  # this shard's residue: CPIs never clash across shards
            if cpi >= CPI_MIN and cpi not in self.cpis:
                self.cpis.add(cpi)
                self.cpi_of_spi[spi] = cpi
                return cpi

    def release_cpi(self, spi: bytes) -> None:
        """The peer did not accept IPComp: the CPI reserved for ``spi`` is free again."""
        self.cpis.discard(self.cpi_of_spi.pop(spi, 0))

    def alloc_reqid(self, connection: str | None = None, child: str | None = None) -> int:
        """The reqid of a new Child SA: the fixed one of (connection, child) if there is one."""
        if connection is not None and child is not None:
            fixed = self.fixed_reqids.get((connection, child))
            if fixed is not None:
                return fixed
        r = self.next_reqid
        self.next_reqid += self.shard.count
        return r

    # ---------------------------------------------------------------- fixed reqids
    def assign_reqid(self, connection: str, child: str, reqid: int | None = None) -> int:
        """Reserve the stable reqid of (connection, child) on first use. Idempotent.

        Every Child SA of that child, initiated by us or by the peer, in IKE_AUTH or
        CREATE_CHILD_SA, then carries it (rekeys keep it anyway), so a data-plane trap
        armed with it sees its queued packets sent when the SA is installed. ``reqid``
        adopts a number already in use (e.g. the reqid of a live Child SA that is to be
        trapped when it closes); by default a fresh one comes from the same counter as
        the dynamic reqids, so the two never clash.
        """
        key = (connection, child)
        have = self.fixed_reqids.get(key)
        if have is not None and (reqid is None or reqid == have):
            return have
        if have is not None:
            del self.fixed_owner[have]
        if reqid is None:
            reqid = self.alloc_reqid()
        elif reqid in self.fixed_owner:
            raise ValueError(f"reqid {reqid} is already fixed for {'/'.join(self.fixed_owner[reqid])}")
        self.fixed_reqids[key] = reqid
        self.fixed_owner[reqid] = key
        return reqid

    def release_reqids(self, connection: str, child: str | None = None) -> list[int]:
        gone = [k for k in self.fixed_reqids if k[0] == connection and (child is None or k[1] == child)]
        out = []
        for key in gone:
            reqid = self.fixed_reqids.pop(key)
            self.fixed_owner.pop(reqid, None)
            out.append(reqid)
        return out

    # ---------------------------------------------------------------- peers
    def add_contact(self, connection: str, peer: str, ike_sa_id: int) -> None:
        self.contacts.setdefault((connection, peer), set()).add(ike_sa_id)

    def drop_contact(self, connection: str, peer: str, ike_sa_id: int) -> None:
        ids = self.contacts.get((connection, peer))
        if ids is not None:
            ids.discard(ike_sa_id)
            if not ids:
                del self.contacts[(connection, peer)]

    def has_contact(self, connection: str, peer: str, ike_sa_id: int) -> bool:
        """Does another live IKE SA of this connection with this peer address exist?"""
        ids = self.contacts.get((connection, peer), ())
        return any(i != ike_sa_id for i in ids)

    def session_ids(self, local: Identity, peer: Identity) -> list[int]:
        """The established IKE SAs between these identities (swanctl's unique), O(1)."""
        return list(self.sessions.get((local, peer), ()))
