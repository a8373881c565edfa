"""Reauthentication (reauth_time): a new IKE SA with full IKE_AUTH replaces the old one, make-before-break."""

from __future__ import annotations

import dataclasses

from ipsecd.ike.events import ChildSaDeleted, ChildSaEstablished, IkeSaClosed, IkeSaEstablished
from ipsecd.ike.ike_sa import IkeState
from tests.ike_pair import make_pair, make_settings, make_settings_b


def test_reauth_replaces_ike_sa_before_breaking_it() -> None:
    sa = dataclasses.replace(make_settings(), reauth_time=100.0, rand_time=0.0)
    pair = make_pair(sa, make_settings_b())
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(5)
    (old_a,) = pair.a.list_sas()
    (old_child,) = old_a.children
    old_spis = (old_a.spi_i, old_a.spi_r)
    pair.events_a.clear()
    pair.events_b.clear()

    pair.advance(101)
    pair.run_until_quiet(10)

    (new_a,) = pair.a.list_sas()
    (new_b,) = pair.b.list_sas()
    assert new_a.state == new_b.state == IkeState.ESTABLISHED
    assert (new_a.spi_i, new_a.spi_r) != old_spis and (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    assert new_a.keys != old_a.keys
    (child_a,) = new_a.children
    (child_b,) = new_b.children
    assert child_a.spi_in == child_b.spi_out and child_a.spi_in != old_child.spi_in
    assert child_a.event.reqid == old_child.event.reqid  # same reqid: the data plane just switches SAs

    # make-before-break: the new Child SA is up before the old one goes, on both sides
    for events in (pair.events_a, pair.events_b):
        kinds = [type(e) for e in events]
        assert kinds.index(ChildSaEstablished) < kinds.index(ChildSaDeleted)
        assert any(isinstance(e, IkeSaEstablished) for e in events)
        closed = [e for e in events if isinstance(e, IkeSaClosed)]
        assert len(closed) == 1
    deleted_a = [e for e in pair.events_a if isinstance(e, ChildSaDeleted)]
    assert deleted_a[0].spi_in == old_child.spi_in and deleted_a[0].reqid_in_use
    assert any("reauthenticated" in e.reason for e in pair.events_a if isinstance(e, IkeSaClosed))


def test_reauth_keeps_happening_across_ike_rekeys() -> None:
    sa = dataclasses.replace(make_settings(), reauth_time=100.0, rekey_time=40.0, rand_time=0.0, over_time=10.0)
    pair = make_pair(sa, make_settings_b())
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(5)
    first = pair.a.list_sas()[0]
    first_keys = first.keys
    pair.advance(110)
    pair.run_until_quiet(10)
    (now_a,) = pair.a.list_sas()
    # two rekeys happened before 100 s, and the reauth deadline survived them
    assert now_a.keys != first_keys
    assert any(isinstance(e, IkeSaClosed) and "reauthenticated" in e.reason for e in pair.events_a)
    assert len(pair.b.list_sas()) == 1
