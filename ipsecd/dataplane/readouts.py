"""What the worker reports about its SAs' counters, sans-I/O (state.py holds the SAs).

Three readouts, from the dearest to the cheapest for the IKE process (issue 11):

* ``counters``: every SA, one ``SaCounterSnapshot`` each (``ipsecctl list-sas``/``stats`` and
  the opt-in per-SA metrics, ``settings.metrics.per_sa``): O(SAs) to build, encode and decode;
* ``sa_counters``: the SAs asked for by SPI only (RADIUS accounting of one session): O(asked);
* ``totals``: per tag (a small integer the IKE side assigns per (connection, child) and passes
  in ``InstallSa.tag``), the sums over the tag's live SAs plus everything its removed SAs had
  counted (``TagTotals.retire``): a metrics scrape gets counters that never go down when an SA
  closes or rekeys, in an answer of O(tags). The worker walks its SAs once for it; the packet
  paths do no extra work (they count per SA as before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipsecd.dataplane import messages as m
from ipsecd.gcpolicy import gc_wire

if TYPE_CHECKING:
    from ipsecd.dataplane.state import DataplaneState


class TagTotals:
    """The tag of each reqid, and what the removed SAs of each tag had counted."""

    __slots__ = ("reqid_tag", "retired")

    def __init__(self) -> None:
        self.reqid_tag: dict[int, int] = {}  # reqid -> tag (only reqids installed with a tag)
        self.retired: dict[int, list[int]] = {}  # tag -> [bytes_in, packets_in, bytes_out, packets_out]

    def set(self, reqid: int, tag: int) -> None:
        if tag:
            self.reqid_tag[reqid] = tag

    def forget(self, reqid: int) -> None:
        """The reqid is gone (its SAs were removed, and retired, first)."""
        self.reqid_tag.pop(reqid, None)

    def retire(self, reqid: int | None, outbound: bool, counters: Any) -> None:
        """An SA of ``reqid`` is being removed: its counts stay in its tag's totals."""
        tag = self.reqid_tag.get(reqid, 0) if reqid is not None else 0
        sums = self.retired.get(tag)
        if sums is None:
            sums = self.retired[tag] = [0, 0, 0, 0]
        i = 2 if outbound else 0
        sums[i] += counters.bytes
        sums[i + 1] += counters.packets


def totals(state: DataplaneState[Any], ident: int = 0) -> m.Totals:
    """Per tag: retired sums plus the live SAs' counters (one walk of the SAs), with the
    worker's drops and statistics."""
    tags = state.tags
    tag_of = tags.reqid_tag.get
    in_reqid = state.in_reqid.get
    sums: dict[int, list[int]] = {t: list(v) for t, v in tags.retired.items()}
    for table in (state.sad.inbound, state.ah_inbound):
        for spi, sa in table.items():
            tag = tag_of(in_reqid(spi, 0), 0)
            c = sa.counters
            s = sums.get(tag)
            if s is None:
                s = sums[tag] = [0, 0, 0, 0]
            s[0] += c.bytes
            s[1] += c.packets
    for reqid, path in state.out.items():
        tag = tag_of(reqid, 0)
        c = path.sa.counters
        s = sums.get(tag)
        if s is None:
            s = sums[tag] = [0, 0, 0, 0]
        s[2] += c.bytes
        s[3] += c.packets
    return m.Totals(ident, tuple(m.TagTotal(t, *v) for t, v in sums.items()),
                    {str(k): v for k, v in state.drops.items()}, dict(state.stats), gc_wire())


def _snapshot(spi: int, direction: str, reqid: int, sa: Any, seq: int) -> m.SaCounterSnapshot:
    c = sa.counters
    return m.SaCounterSnapshot(spi, direction, reqid, c.bytes, c.packets, {str(k): v for k, v in c.drops.items()}, seq)


def counters(state: DataplaneState[Any], ident: int = 0) -> m.Counters:
    """Every SA's counters (O(SAs): on demand only), with the worker's drops and statistics."""
    sas: list[m.SaCounterSnapshot] = []
    for table in (state.sad.inbound, state.ah_inbound):
        for spi, sa_in in table.items():
            sas.append(_snapshot(spi, "in", state.in_reqid.get(spi, 0), sa_in, sa_in.highest_seq))
    for reqid, path in state.out.items():
        sas.append(_snapshot(path.sa.spi, "out", reqid, path.sa, path.sa.seq))
    return m.Counters(ident, tuple(sas), {str(k): v for k, v in state.drops.items()}, dict(state.stats), gc_wire())


def sa_counters(state: DataplaneState[Any], msg: m.GetSaCounters) -> m.Counters:
    """The counters of the asked SAs that this worker holds (GetSaCounters): O(asked)."""
    sas: list[m.SaCounterSnapshot] = []
    for spi_in, spi_out in zip(msg.spis_in, msg.spis_out, strict=False):
        reqid = state.in_reqid.get(spi_in)
        sa_in: Any = state.sad.inbound.get(spi_in)
        if sa_in is None:
            sa_in = state.ah_inbound.get(spi_in)
        if sa_in is not None:
            sas.append(_snapshot(spi_in, "in", reqid or 0, sa_in, sa_in.highest_seq))
        path = state.out.get(reqid) if reqid is not None else None
        # only while it is the reqid's current outbound SA: a rekey's successor is another SPI
        if path is not None and spi_out and path.sa.spi == spi_out:
            sas.append(_snapshot(spi_out, "out", reqid or 0, path.sa, path.sa.seq))
    return m.Counters(msg.id, tuple(sas), {}, {})
