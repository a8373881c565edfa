"""The "smaller" findings of issue 13, one regression test each, in memory with a fake clock.

The front-door ones (SPIi = 0, IKE_SA_INIT without KE, retransmits extending half-open
life, D-H before the KE check, cookie time and rotation) are in tests/test_frontdoor.py;
unknown-SPI aggregation in tests/test_dataplane_state.py; the worker channel's encoding,
export-keys and the control socket in test_control_local.py and tests/test_dataplane_*.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished
from ipsecd.ike.ike_sa import IkeState
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.proposal import proposal_to_swanctl
from tests.flood import build_init, public_values, stamp
from tests.ike_pair import A_ADDR, B_ADDR, Pair, make_pair, make_settings, make_settings_b

STRONG, WEAK = "aes256gcm16-prfsha256-ecp256", "aes128-sha256-modp2048"


def test_a_connection_switched_in_ike_auth_must_accept_the_negotiated_algorithms() -> None:
    """Issue 13: connection ``strong`` ended up running what ``legacy`` accepted in IKE_SA_INIT."""
    legacy = make_settings_b(remote_id="legacy.test", remote_addrs=("%any",), ike=(WEAK,))
    strong = replace(make_settings_b(remote_id="a.test", remote_addrs=("%any",), ike=(STRONG,)), name="strong")
    legacy = replace(legacy, name="legacy")
    pair = make_pair(make_settings(ike=(WEAK,)), legacy)  # A is a.test and offers only the weak suite
    pair.b = IkeManager([legacy, strong], now=pair.now)
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    up = [sa for sa in pair.b.list_sas() if sa.state == IkeState.ESTABLISHED]
    assert all(not (sa.settings.name == "strong" and sa.proposal is not None
                    and proposal_to_swanctl(sa.proposal) != "aes256gcm16-prfsha256-ecp256") for sa in up), \
        [(sa.settings.name, sa.proposal and proposal_to_swanctl(sa.proposal)) for sa in up]
    assert not any(isinstance(e, IkeSaEstablished) for e in pair.events_b)


def _zero_spi_pair(side: str) -> Pair:
    pair = make_pair()
    mgr = pair.a if side == "a" else pair.b
    mgr.ctx.alloc_child_spi = lambda: bytes(4)  # type: ignore[method-assign]
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    return pair


def test_a_peer_chosen_esp_spi_of_zero_is_refused_by_the_responder() -> None:
    """Issue 13: IKE reported an established Child SA with SPI 0, which the data plane refuses."""
    pair = _zero_spi_pair("a")  # the initiator offers SPI 0
    assert not [e for e in pair.events_b if isinstance(e, ChildSaEstablished)]
    assert not [e for e in pair.events_a if isinstance(e, ChildSaEstablished)]


def test_a_peer_chosen_esp_spi_of_zero_is_refused_by_the_initiator() -> None:
    pair = _zero_spi_pair("b")  # the responder answers with SPI 0
    assert not [e for e in pair.events_a if isinstance(e, ChildSaEstablished)]


def _moved(pair: Pair, new: tuple[str, int]) -> tuple[str, int]:
    """A sends an authenticated request (a liveness check) that reaches B from ``new``; B's view of A."""
    (sa_a,) = pair.a.list_sas()
    pair.a.check_liveness(sa_a.ike_sa_id, pair.now)
    for data, _local, remote, _ in pair.a.datagrams_to_send():
        pair.b.receive_datagram(data, remote, new, pair.now)
    pair.b.datagrams_to_send()
    (sa_b,) = pair.b.list_sas()
    return sa_b.remote


def test_the_peer_address_is_not_updated_when_the_peer_is_not_behind_a_nat() -> None:
    """RFC 7296 2.23 (and strongSwan): only a peer behind a NAT, whose mapping may change, moves.
    (Without MOBIKE: with it only UPDATE_SA_ADDRESSES moves an SA, tests/test_mobike_pair.py.)"""
    pair = make_pair(replace(make_settings(), mobike=False))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert _moved(pair, ("198.51.100.9", 500)) == (A_ADDR, 500)


def test_the_peer_address_follows_a_peer_behind_a_nat() -> None:
    pair = make_pair(replace(make_settings(force_encap=True), mobike=False))  # B sees A behind a NAT
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert pair.b.list_sas()[0].remote_behind_nat
    assert _moved(pair, ("198.51.100.9", 4500)) == ("198.51.100.9", 4500)


def test_a_spoofed_half_open_sa_does_not_block_on_demand_initiation() -> None:
    """Issue 13: a spoofed IKE_SA_INIT from the site-to-site peer's address (resent every 25 s)
    made acquire() return nothing for as long as it lasted."""
    pair = make_pair()
    reqid = pair.b.assign_reqid("conn", "net")
    (public,) = public_values(1)
    spoofed = bytes(stamp(build_init(), os.urandom(8), public, os.urandom(32)))
    for t in (0.0, 25.0):  # the attacker resends: the half-open SA must not live on
        pair.b.receive_datagram(spoofed, (B_ADDR, 500), (A_ADDR, 500), pair.now + t)
        pair.b.datagrams_to_send()
    assert pair.b.acquire(reqid, pair.now + 26.0) is not None
