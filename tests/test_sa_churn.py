"""Bookkeeping that must not vanish or pile up as SAs come and go (issue 11).

* per-IKE-SA counters (retransmissions) still count in ``ipsecctl stats`` after the SA closed;
* a deleted Child SA leaves nothing behind in the worker's lifetime watch;
* a refused Child SA frees the inbound SPI its initiator reserved.
"""

from __future__ import annotations


def test_retransmission_counters_outlive_their_ike_sa() -> None:
    """``ipsecctl stats`` (IkeManager.total_counters) sums every IKE SA's counters, closed ones too."""
    from tests.ike_pair import make_pair

    dropped: list[int] = []

    def lose_first_answer(i: int, data: bytes, direction: str) -> bool:
        if direction == "b->a" and not dropped:
            dropped.append(i)
            return False
        return True

    pair = make_pair(deliver=lose_first_answer)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    (sa,) = pair.a.list_sas()
    assert pair.a.total_counters().get("retransmits") == 1
    assert pair.b.total_counters().get("retransmitted_requests") == 1
    pair.a.delete_ike(sa.ike_sa_id, pair.now)
    pair.run_until_quiet()
    assert not pair.a.sas and not pair.b.sas
    assert pair.a.total_counters().get("retransmits") == 1  # neither lost nor counted twice
    assert pair.b.total_counters().get("retransmitted_requests") == 1


def test_deleted_sas_leave_no_lifetime_entries_behind() -> None:
    """Issue 11: with unique=never the worker grew by megabytes holding a few SAs: every SA
    installed and deleted left its lifetime heap entries (an outbound SA's sequence mark is
    ~2**32 packets away, so it never surfaced). Stale entries are now dropped in bulk."""
    from ipsecd.dataplane import messages as m
    from ipsecd.dataplane.lifetimes import COMPACT_FLOOR, LifetimeWatch, Watched
    from ipsecd.esp.sa import SaCounters

    lw = LifetimeWatch()
    keep = Watched("in", 1, 1, SaCounters(), m.Lifetime(soft_packets=10, hard_packets=20))
    lw.watch(keep)
    for i in range(2, 20_002):  # 20,000 Child SAs come and go
        lw.watch(Watched("in", i, i, SaCounters(), m.Lifetime(soft_bytes=1 << 40)))
        lw.forget("in", i)
        assert lw.heap_entries() <= 4 * 1 + COMPACT_FLOOR + 1
    keep.counters.packets = 10  # the SA that stayed still reaches its limits
    lw.traffic.in_packets = 10
    assert [(kind, what) for _w, kind, what in lw.check()] == [("soft", "packets")]


def test_a_refused_child_sa_frees_the_spi_it_reserved() -> None:
    """The initiator reserves its inbound SPI when it proposes; a refusal must free it, or a
    gateway that keeps retrying (or rekeying into refusals) holds SPIs forever."""
    from ipsecd.ike.events import ChildSaFailed
    from tests.ike_pair import make_pair, make_settings, make_settings_b

    pair = make_pair(make_settings(esp=("aes128gcm16",)), make_settings_b(esp=("chacha20poly1305",)))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert pair.a.list_sas() and not pair.a.list_sas()[0].children  # IKE up, the Child SA refused
    assert any(isinstance(e, ChildSaFailed) for e in pair.events_a)
    assert not pair.a.ctx.child_spis and not pair.b.ctx.child_spis
