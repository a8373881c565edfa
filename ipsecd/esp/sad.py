"""Security Association Database (RFC 4301 section 4.4.2): inbound by SPI, outbound by reqid.

Inbound SAs are found by the SPI in the packet (our own SPI namespace; RFC 4301 4.1 lets a
unicast SA be identified by SPI alone). Outbound SAs are found by the ``sa_ref`` (reqid)
of the SPD policy that matched, so a rekey (RFC 7296 2.8) swaps the SA behind a reqid
without touching the SPD. Several inbound SAs may serve one reqid during a rekey overlap.

Inbound and outbound SPIs are separate namespaces -- the peer chooses the SPIs we send
with -- so removal says which one it means.

Drops that happen before an SA is known (short packet, unknown SPI, missing outbound SA)
are counted here in ``drops``; everything else is counted by the SA. ``totals()`` adds it
all up, including SAs already removed, so exported counters never go backwards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ipsecd.errors import LocalProtocolError
from ipsecd.esp.ah import AnyOutboundSa
from ipsecd.esp.sa import DropReason, EspDrop, InboundSa, SaCounters

_SPI = struct.Struct("!I")


@dataclass(slots=True)
class SadTotals:
    """Aggregate counters across every SA the SAD has held, plus its own drops."""

    inbound: SaCounters = field(default_factory=SaCounters)
    outbound: SaCounters = field(default_factory=SaCounters)
    drops: dict[DropReason, int] = field(default_factory=dict)

    def all_drops(self) -> dict[DropReason, int]:
        """Drops of both directions and of the SAD itself, by reason."""
        merged = SaCounters(drops=dict(self.drops))
        merged.merge(SaCounters(drops=self.inbound.drops))
        merged.merge(SaCounters(drops=self.outbound.drops))
        return merged.drops


class Sad:
    """The SA tables of one data plane."""

    def __init__(self) -> None:
        self.inbound: dict[int, InboundSa] = {}
        self.outbound: dict[int, AnyOutboundSa] = {}  # reqid -> current outbound SA
        self.drops: dict[DropReason, int] = {}
        self._retired_in = SaCounters()
        self._retired_out = SaCounters()

    def count_drop(self, reason: DropReason) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def add_inbound(self, sa: InboundSa) -> None:
        """Install an inbound SA; its SPI must be free (we allocated it, RFC 7296 3.3.1)."""
        spi = sa.params.spi
        if spi in self.inbound:
            raise LocalProtocolError(f"inbound SPI 0x{spi:08x} already installed")
        self.inbound[spi] = sa

    def add_outbound(self, reqid: int, sa: AnyOutboundSa) -> AnyOutboundSa | None:
        """Install (or, on rekey, replace) the outbound SA for ``reqid``; returns the old one.

        The replaced SA's counters are kept in the totals.
        """
        old = self.outbound.get(reqid)
        self.outbound[reqid] = sa
        if old is not None and old is not sa:
            self._retired_out.merge(old.counters)
        return old

    def lookup_inbound(self, spi: int) -> InboundSa | None:
        return self.inbound.get(spi)

    def lookup_outbound(self, reqid: int) -> AnyOutboundSa | None:
        return self.outbound.get(reqid)

    def remove(
        self, *, inbound_spi: int | None = None, reqid: int | None = None, outbound_spi: int | None = None
    ) -> int:
        """Remove SAs: the inbound SA with ``inbound_spi``, the outbound SA of ``reqid``, and/or
        the outbound SA whose (peer-chosen) SPI is ``outbound_spi``. Returns how many went."""
        removed = 0
        if inbound_spi is not None:
            sa_in = self.inbound.pop(inbound_spi, None)
            if sa_in is not None:
                self._retired_in.merge(sa_in.counters)
                removed += 1
        if reqid is not None:
            sa_out = self.outbound.pop(reqid, None)
            if sa_out is not None:
                self._retired_out.merge(sa_out.counters)
                removed += 1
        if outbound_spi is not None:
            for key, sa in list(self.outbound.items()):
                if sa.params.spi == outbound_spi:
                    del self.outbound[key]
                    self._retired_out.merge(sa.counters)
                    removed += 1
        return removed

    def protect(self, reqid: int, ip_packet: bytes) -> tuple[AnyOutboundSa, bytes]:
        """Protect with the outbound SA of ``reqid``; ``EspDrop(NO_SA)`` if none is installed."""
        sa = self.outbound.get(reqid)
        if sa is None:
            self.count_drop(DropReason.NO_SA)
            raise EspDrop(DropReason.NO_SA)
        return sa, sa.protect(ip_packet)

    def unprotect(
        self, esp: bytes, outer_src: bytes | None = None, outer_dst: bytes | None = None
    ) -> tuple[InboundSa, bytes]:
        """Find the inbound SA by the packet's SPI and unprotect; returns the SA and the IP packet.

        Raises ``EspDrop(SHORT)`` when there are not even 8 bytes, ``EspDrop(UNKNOWN_SPI)``
        when no SA has that SPI (counted here; the data plane may report it to IKE, RFC 7296
        2.21.4), or whatever the SA raises.
        """
        if len(esp) < 8:
            self.count_drop(DropReason.SHORT)
            raise EspDrop(DropReason.SHORT)
        sa = self.inbound.get(_SPI.unpack_from(esp, 0)[0])
        if sa is None:
            self.count_drop(DropReason.UNKNOWN_SPI)
            raise EspDrop(DropReason.UNKNOWN_SPI)
        return sa, sa.unprotect(esp, outer_src, outer_dst)

    def totals(self) -> SadTotals:
        """Counters summed over current and removed SAs, plus the SAD's own drops."""
        tin = SaCounters()
        tin.merge(self._retired_in)
        for sa_in in self.inbound.values():
            tin.merge(sa_in.counters)
        tout = SaCounters()
        tout.merge(self._retired_out)
        for sa_out in self.outbound.values():
            tout.merge(sa_out.counters)
        return SadTotals(tin, tout, dict(self.drops))
