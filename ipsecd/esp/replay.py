"""Anti-replay window (RFC 4303 section 3.4.3 and Appendix A), ESN-aware.

The window is a sliding bitmap anchored at ``top``, the highest sequence number that has
passed its integrity check. Bit ``i`` of ``bitmap`` says whether ``top - i`` was seen.
The bitmap is one Python int: shifting it is a single C-level operation, which in Python
beats RFC 6479's word-array layout (that design saves memory traffic in C, but here every
array element access would be an interpreter round trip).

Two-step use, as RFC 4303 3.4.3 orders it:

1. ``check(seq_low)`` before the ICV: reconstructs the full sequence number (with ESN, the
   high half per Appendix A2.2) and rejects duplicates and packets left of the window.
2. ``update(seq)`` only after the ICV verified, so forged packets cannot move the window.

A window size of 0 disables anti-replay (RFC 4303 3.4.3 lets the receiver do so): ``check``
then never rejects a sequence number for being old or repeated, but with ESN it still has to
guess the high half, which it does relative to ``top`` with a half-space window (the
sequence number closest to ``top`` wins). Sequence number 0 is rejected in every case: a
sender starts at 1 (RFC 4303 3.3.3) so 0 can only be forged or a wrapped counter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

_LOW_MASK = 0xFFFFFFFF
_SPACE = 1 << 32
MAX_WINDOW = 1 << 20  # well past any sane configuration; bounds bitmap memory


@dataclass(slots=True)
class ReplayWindow:
    """Receiver-side sequence number tracking for one inbound SA.

    Cost: O(1) Python operations per packet; the bitmap shift is O(size/64) machine words.
    """

    size: int = 1024
    esn: bool = False
    top: int = 0  # highest authenticated sequence number (full 64-bit with ESN)
    bitmap: int = 0
    _mask: int = field(init=False, repr=False)
    _infer_window: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_WINDOW:
            raise ValueError(f"replay window size must be 0..{MAX_WINDOW}")
        self._mask = _window_mask(self.size)
        # Window used to infer the ESN high half; see module docstring for size 0.
        self._infer_window = self.size if self.size else 1 << 31

    def infer(self, seq_low: int) -> int:
        """Full sequence number for a received low half (RFC 4303 Appendix A2.2).

        Without ESN this is ``seq_low`` itself. With ESN, ``top = Th:Tl``: if the window
        lies within one 2^32 subspace (``Tl >= W - 1``), a ``seq_low`` below the window's
        bottom must belong to the next subspace; otherwise (the window straddles a
        boundary) a ``seq_low`` at or above the bottom (taken mod 2^32) belongs to the
        previous subspace. May return a negative number when that would precede 0.
        """
        if not self.esn:
            return seq_low
        top = self.top
        tl = top & _LOW_MASK
        th = top >> 32
        w = self._infer_window
        if tl >= w - 1:  # Case A: window within one subspace
            if seq_low >= tl - w + 1:
                return (th << 32) | seq_low
            return ((th + 1) << 32) | seq_low
        # Case B: window spans two subspaces
        if seq_low >= tl - w + 1 + _SPACE:
            return ((th - 1) << 32) | seq_low
        return (th << 32) | seq_low

    def check(self, seq_low: int) -> int | None:
        """Sequence number to use for this packet, or None if it must be dropped as a replay.

        Call before the ICV check; call :meth:`update` with the result once the ICV passed.
        """
        seq = self.infer(seq_low) if self.esn else seq_low
        if seq <= 0:
            return None
        top = self.top
        if seq > top or not self.size:
            return seq
        diff = top - seq
        if diff >= self.size or (self.bitmap >> diff) & 1:
            return None
        return seq

    def update(self, seq: int) -> None:
        """Mark ``seq`` as received (after its ICV verified), sliding the window if needed."""
        top = self.top
        if seq > top:
            shift = seq - top
            self.top = seq
            if shift >= self.size:
                self.bitmap = 1 & self._mask
            else:
                self.bitmap = ((self.bitmap << shift) | 1) & self._mask
        else:
            diff = top - seq
            # Guarded, not masked: with the window disabled (or a caller skipping check())
            # ``diff`` can be ~2^64, and ``1 << diff`` would try to allocate that many bits.
            if diff < self.size:
                self.bitmap |= 1 << diff


@functools.lru_cache(maxsize=64)
def _window_mask(size: int) -> int:
    """(1 << size) - 1, one object per size: a 1024-bit int is 164 bytes per SA otherwise (issue 11)."""
    return (1 << size) - 1
