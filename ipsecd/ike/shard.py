"""Which IKE shard owns what: the numbers a shard allocates carry its index.

With ``settings.ike_shards: N`` the daemon runs N IKE processes (docs/architecture.md). The
kernel steers every IKE datagram to one of them with a classic BPF program on the IKE header
(dataplane/ike_steering.py); this module is the rule both sides follow, sans-I/O:

* our IKE SPI (SPIr when we answer, SPIi when we initiate) carries the shard in its first
  octet: ``spi[0] % N == index``. The other 56 bits stay random, so an SPI is as hard to guess
  as before (RFC 7296 2.6 asks only for uniqueness; strongSwan uses 64 random bits, we keep 56+),
  and with N = 1 nothing changes at all;
* an IKE_SA_INIT request (SPIr zero) belongs to ``hash(SPIi) % N``: a retransmission, or the
  retry with a COOKIE (RFC 7296 2.6) or a new KE (1.2), carries the same SPIi and reaches the same
  shard, the one holding the cookie secret and the half-open SA;
* numbers several shards hand to the one shared data-plane worker -- inbound ESP/AH SPIs, IPComp
  CPIs, reqids -- and the IKE SA ids the control socket shows are split the same way, so two
  shards never allocate the same one.

Which SPI of a datagram is ours is read from the I flag (RFC 7296 3.1): a message from the
original initiator carries our SPI as SPIr, one from the original responder as SPIi.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_SHARDS = 16  # a jump table per shard in the BPF program; more cores than this are not a Python daemon's
IKE_HEADER_LEN = 28
FLAG_INITIATOR = 0x08  # RFC 7296 3.1: the I(nitiator) bit of the Flags octet
_FLAGS_OFFSET = 19
_WORD = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``; ``Shard()`` is the one shard of a daemon without sharding."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: expected 0 <= index < count <= {MAX_SHARDS}")

    # ------------------------------------------------------------ random numbers (SPIs)
    def stamp(self, spi: bytes) -> bytes:
        """``spi`` (random octets) with its first octet moved to the nearest value this shard owns.

        Only the residue of the first octet changes: ``first - first % N + index``, stepped back
        by N when that passes 255, so every owned value stays reachable and equally likely but
        for the top N values' slight bias (256 is not a multiple of N).
        """
        if self.count == 1 or not spi:
            return spi
        first = spi[0] - spi[0] % self.count + self.index
        if first > 0xFF:
            first -= self.count
        return bytes((first,)) + spi[1:]

    def owns_spi(self, spi: bytes) -> bool:
        return self.count == 1 or (len(spi) > 0 and spi[0] % self.count == self.index)

    # ------------------------------------------------------------ counters (ids, reqids, CPIs)
    def first(self) -> int:
        """The first id/reqid this shard hands out (1-based, as with one shard)."""
        return 1 + self.index

    def owns_number(self, n: int) -> bool:
        return (n - 1) % self.count == self.index

    def owner_of_number(self, n: int) -> int:
        """The shard that allocated id or reqid ``n`` (``first() + k * count``)."""
        return (n - 1) % self.count


def shard_of_spi(spi: bytes, count: int) -> int:
    """The shard whose SPI this is (its first octet modulo ``count``)."""
    return spi[0] % count if count > 1 and spi else 0


def init_hash(spi_i: bytes, count: int) -> int:
    """The shard of an IKE_SA_INIT request: the low 32 bits of SPIi modulo ``count`` (the BPF
    program computes exactly this: ``ld [o+4]; mod #count``)."""
    if count <= 1 or len(spi_i) < 8:
        return 0
    return _WORD.unpack_from(spi_i, 4)[0] % count


def shard_of_message(ike: bytes, count: int) -> int:
    """The shard an IKE message (from its header, without the non-ESP marker) belongs to.

    The reference the steering program is tested against; a datagram too short for a header
    goes to shard 0, which drops it like any malformed datagram.
    """
    if count <= 1 or len(ike) < IKE_HEADER_LEN:
        return 0
    spi_i, spi_r = ike[0:8], ike[8:16]
    if ike[_FLAGS_OFFSET] & FLAG_INITIATOR:  # from the original initiator: our SPI is SPIr
        if spi_r == bytes(8):
            return init_hash(spi_i, count)
        return shard_of_spi(spi_r, count)
    return shard_of_spi(spi_i, count)  # from the original responder: we initiated, our SPI is SPIi
