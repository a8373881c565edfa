"""MOBIKE (RFC 4555) between two in-process engines on a fake clock, with a small address-aware
network: links go down, a NAT rewrites the mobile side's source, paths are probed.

A is the mobile client (the original initiator), B the gateway.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from ipsecd.iana import ExchangeType, NotifyType
from ipsecd.ike.events import ChildSaEstablished, Endpoint, IkeSaMoved
from ipsecd.ike.ike_sa import IkeSa
from ipsecd.ike.message import Message, decode_header, decode_message
from ipsecd.ike.payloads import NotifyPayload
from ipsecd.ike.tasks import TaskFailed
from ipsecd.ike.tasks.mobike import MobikeUpdate
from tests.ike_pair import A_ADDR, B_ADDR, Pair, make_settings, make_settings_b
from tests.test_ike_lifecycle import _consistent, _only

A2, A3, B2 = "192.0.2.11", "192.0.2.12", "192.0.2.22"
NATTED: Endpoint = ("198.51.100.7", 40000)


@dataclass
class Net(Pair):
    """Pair whose datagrams honour addresses: nothing leaves or reaches an address that is
    ``down``; ``nat`` maps A's source endpoints to what B sees (and B's answers back)."""

    down: set[str] = field(default_factory=set)
    nat: dict[Endpoint, Endpoint] = field(default_factory=dict)
    wire: list[tuple[str, bytes, Endpoint, Endpoint, bool]] = field(default_factory=list)

    def _move(self) -> bool:
        moved = False
        back = {pub: priv for priv, pub in self.nat.items()}
        for src, dst, tag in ((self.a, self.b, "a->b"), (self.b, self.a, "b->a")):
            for data, local, remote, _ in src.datagrams_to_send():
                moved = True
                self.sent.append((tag, data))
                ok = local[0] not in self.down and back.get(remote, remote)[0] not in self.down
                self.wire.append((tag, data, local, remote, ok))
                if not ok:
                    continue
                if tag == "a->b":
                    dst.receive_datagram(data, remote, self.nat.get(local, local), self.now)
                else:
                    dst.receive_datagram(data, back.get(remote, remote), local, self.now)
        for mgr, sink in ((self.a, self.events_a), (self.b, self.events_b)):
            while (ev := mgr.next_event()) is not None:
                sink.append(ev)
        return moved


def _net(**kw: object) -> Net:
    from ipsecd.ike.manager import IkeManager

    sa = kw.pop("sa", None) or make_settings()
    sb = kw.pop("sb", None) or make_settings_b()
    return Net(IkeManager([sa], now=1000.0), IkeManager([sb], now=1000.0), **kw)  # type: ignore[arg-type]


def _up(net: Net) -> tuple[IkeSa, IkeSa]:
    net.a.initiate("conn", net.now)
    net.run_until_quiet(30)
    return _consistent(net)


def _informational(net: Net, ia: IkeSa, ib: IkeSa, start: int = 0) -> list[tuple[str, bool, Message, bool]]:
    """The INFORMATIONAL messages on the wire since ``start``: (direction, response?, message, delivered)."""
    out = []
    for tag, data, _lo, _re, ok in net.wire[start:]:
        h = decode_header(data)
        if h.exchange != ExchangeType.INFORMATIONAL:
            continue
        sk = ib.sk_in if tag == "a->b" else ia.sk_in
        out.append((tag, h.is_response, decode_message(data, sk), ok))
    return out


def _moved(events: list[object]) -> list[IkeSaMoved]:
    return [e for e in events if isinstance(e, IkeSaMoved)]


def test_negotiated_in_ike_auth_and_ike_floats_to_4500() -> None:
    net = _net()
    ia, ib = _up(net)
    assert ia.mobike.enabled and ib.mobike.enabled
    assert ia.mobike.original_initiator and not ib.mobike.original_initiator
    # RFC 4555 3.3: the initiator offering MOBIKE moves to 4500 for IKE_AUTH, NAT or not
    assert ia.local[1] == ia.remote[1] == ib.local[1] == ib.remote[1] == 4500
    assert not ia.encap and not ib.encap  # no NAT: ESP stays plain


def test_not_negotiated_when_the_gateway_refuses_it() -> None:
    net = _net(sb=dataclasses.replace(make_settings_b(), mobike=False))
    ia, ib = _up(net)
    assert not ia.mobike.enabled and not ib.mobike.enabled
    assert not net.a.roam(ia.ike_sa_id, [(A2, B_ADDR)], net.now)  # nothing to move with


def test_gateway_advertises_only_its_configured_present_addresses() -> None:
    sb = make_settings_b(local_addrs=(B_ADDR, B2))
    net = _net(sb=sb)
    # B2 is configured and present, 192.0.2.99 is present but not in local_addrs, ::1 is loopback
    net.b.set_local_addresses([B_ADDR, B2, "192.0.2.99", "::1"])
    ia, _ib = _up(net)
    assert ia.mobike.peer_addrs == (B2,)
    auth = [decode_message(d, _ib.sk_in) for tag, d, *_ in net.wire
            if tag == "a->b" and decode_header(d).exchange == ExchangeType.IKE_AUTH]
    assert auth[0].notify(NotifyType.NO_ADDITIONAL_ADDRESSES) is not None  # A knows no other address


def test_client_moves_same_ike_sa_gateway_checks_return_routability() -> None:
    net = _net()
    ia, ib = _up(net)
    spis = {(c.spi_in, c.spi_out) for c in ia.children}
    start = len(net.wire)
    net.down.add(A_ADDR)  # Wi-Fi gone; LTE address A2 up
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR)], net.now)
    net.run_until_quiet(10)
    assert _consistent(net) == (ia, ib)  # the same IKE SA on both sides
    assert {(c.spi_in, c.spi_out) for c in ia.children} == spis  # Child SAs moved in place
    assert ia.local == (A2, 4500) and ib.remote == (A2, 4500)
    (ma,), (mb,) = _moved(net.events_a), _moved(net.events_b)
    assert ma.local == (A2, 4500) and mb.remote == (A2, 4500)
    assert mb.child_reqids == tuple(sorted({c.event.reqid for c in ib.children}))
    infos = _informational(net, ia, ib, start)
    update_req = next(m for tag, resp, m, _ in infos if tag == "a->b" and not resp
                      and m.notify(NotifyType.UPDATE_SA_ADDRESSES) is not None)
    update_resp = next(m for tag, resp, m, _ in infos if tag == "b->a" and resp
                       and m.message_id == update_req.message_id)
    # RFC 4555 3.5: NAT detection both ways, COOKIE2 echoed as sent
    for m in (update_req, update_resp):
        assert m.notify(NotifyType.NAT_DETECTION_SOURCE_IP) and m.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    cookie = update_req.notify(NotifyType.COOKIE2)
    assert cookie is not None and update_resp.notify(NotifyType.COOKIE2) == cookie
    # RFC 4555 3.7: the gateway checked A2 with its own COOKIE2 before moving ESP there
    rr = [m for tag, resp, m, _ in infos if tag == "b->a" and not resp]
    assert len(rr) == 1 and rr[0].notify(NotifyType.COOKIE2) is not None
    assert net.events_b.index(mb) > 0 and ib.mobike.verified[-1] == A2
    # moving back to a verified address needs no new check
    net.down.discard(A_ADDR)
    start = len(net.wire)
    assert net.a.roam(ia.ike_sa_id, [(A_ADDR, B_ADDR)], net.now)
    net.run_until_quiet(10)
    assert ib.remote == (A_ADDR, 4500) and len(_moved(net.events_b)) == 2
    assert not [m for tag, resp, m, _ in _informational(net, ia, ib, start) if tag == "b->a" and not resp]


def test_nat_on_the_new_path_is_detected_and_child_sas_rekeyed_with_encapsulation() -> None:
    net = _net()
    ia, ib = _up(net)
    assert not any(c.event.encap for c in ia.children)
    net.down.add(A_ADDR)
    net.nat[(A2, 4500)] = NATTED  # LTE behind a carrier NAT
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR)], net.now)
    net.run_until_quiet(20)
    _consistent(net)
    assert ib.remote == NATTED and ib.remote_behind_nat and ia.local_behind_nat
    assert ia.encap and ib.encap
    # the data plane cannot add UDP encapsulation to an SA: the Child SAs were rekeyed with it
    assert all(c.event.encap for c in ia.children) and all(c.event.encap for c in ib.children)
    assert all(c.event.rekeyed_spi_in is not None for c in ia.children)


def test_probe_finds_the_working_path_among_the_peers_addresses() -> None:
    sb = make_settings_b(local_addrs=(B_ADDR, B2))
    net = _net(sb=sb)
    net.b.set_local_addresses([B_ADDR, B2])
    ia, ib = _up(net)
    assert ia.mobike.peer_addrs == (B2,)
    start = len(net.wire)
    net.down |= {A_ADDR, B_ADDR}  # our old uplink and the gateway's first address are both unreachable
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR), (A3, B2)], net.now)
    net.run_until_quiet(20)
    _consistent(net)
    assert ia.local == (A3, 4500) and ia.remote == (B2, 4500)
    assert ib.remote == (A3, 4500) and ib.local == (B2, 4500)
    # the probe went out on both paths at once, with one message ID
    probes = [(lo, re) for tag, d, lo, re, _ok in net.wire[start:] if tag == "a->b"
              and decode_header(d).exchange == ExchangeType.INFORMATIONAL and decode_header(d).message_id ==
              decode_header(net.wire[start][1]).message_id]
    assert ((A2, 4500), (B_ADDR, 4500)) in probes and ((A3, 4500), (B2, 4500)) in probes


def test_update_answer_without_our_cookie2_moves_nothing() -> None:
    net = _net()
    ia, _ib = _up(net)
    task = MobikeUpdate([((A2, 4500), (B_ADDR, 4500))])
    task.build_i(ia)
    for notifies in ([], [NotifyPayload(NotifyType.COOKIE2, data=b"x" * 16)]):
        msg = Message(ia.spi_i, ia.spi_r, ExchangeType.INFORMATIONAL, 9, is_initiator=False, is_response=True,
                      payloads=notifies, encrypted=True)
        with pytest.raises(TaskFailed) as failed:
            task.process_i(ia, msg)
        assert failed.value.fatal  # RFC 4555 3.7: the IKE SA MUST be closed
    assert ia.mobike.moves == 0 and not _moved(net.events_a)


def test_a_wrong_cookie2_echo_closes_the_ike_sa(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipsecd.ike.events import IkeSaClosed
    from ipsecd.ike.tasks.mobike import MobikeResponder

    net = _net()
    ia, _ib = _up(net)
    monkeypatch.setattr(MobikeResponder, "build_r", lambda self, sa: [
        NotifyPayload(NotifyType.COOKIE2, data=b"not what was sent")])
    net.down.add(A_ADDR)
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR)], net.now)
    net.run_until_quiet(10)
    closed = [e for e in net.events_a if isinstance(e, IkeSaClosed)]
    assert closed and "COOKIE2" in closed[0].reason and not _moved(net.events_a)


def test_short_cookie2_is_invalid_syntax() -> None:
    from ipsecd.errors import RemoteProtocolError
    from ipsecd.ike.tasks.mobike import MobikeResponder

    net = _net()
    _ia, ib = _up(net)
    msg = Message(ib.spi_i, ib.spi_r, ExchangeType.INFORMATIONAL, 5, is_initiator=True, is_response=False,
                  payloads=[NotifyPayload(NotifyType.COOKIE2, data=b"abc")], encrypted=True)
    with pytest.raises(RemoteProtocolError):
        MobikeResponder().process_r(ib, msg)


def test_move_while_our_child_rekey_is_in_flight() -> None:
    """The uplink dies with a rekey request in flight: it goes out again on the new path at
    once and completes; the update follows; one Child SA pair, the same IKE SA."""
    net = _net()
    ia, ib = _up(net)
    net.down.add(A_ADDR)
    net.a.rekey_child(ia.children[0].spi_in, net.now)
    net._move()  # lost on the dead link
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR)], net.now)
    net.run_until_quiet(30)
    assert _consistent(net) == (ia, ib)
    assert len(ia.children) == 1 and ia.children[0].event.rekeyed_spi_in is not None
    assert ib.remote == (A2, 4500)


@pytest.mark.parametrize("seed", range(3))
def test_libipsec_client_rekeys_after_update_while_gateway_rekeys(seed: int) -> None:
    """strongSwan's libipsec client rekeys every Child SA right after its address update;
    the gateway's own rekey of the same SA was lost on the old path and collides with it
    (RFC 7296 2.8.1). The tunnel survives on the same IKE SA with one Child SA pair."""
    net = _net()
    ia, ib = _up(net)
    net.down.add(A_ADDR)
    net.b.rekey_child(ib.children[0].spi_in, net.now + seed * 0.1)
    net._move()  # the gateway's CREATE_CHILD_SA goes to the dead address
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR)], net.now)
    for _ in range(50):  # until the update is answered, then rekey like libipsec
        net._move()
        if _moved(net.events_a):
            break
    assert _moved(net.events_a)
    net.a.rekey_child(ia.children[0].spi_in, net.now)
    net.run_until_quiet(60)
    assert _consistent(net) == (ia, ib)
    assert len(ia.children) == 1 and ib.remote == (A2, 4500)
    assert [e for e in net.events_a if isinstance(e, ChildSaEstablished)][-1].rekeyed_spi_in is not None
    assert _only(net.a) is ia and _only(net.b) is ib


def test_a_second_change_before_the_update_went_out_retargets_it() -> None:
    net = _net()
    ia, ib = _up(net)
    net.down.add(A_ADDR)
    net.a.rekey_child(ia.children[0].spi_in, net.now)  # keeps our window busy: the update must queue
    net._move()
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR)], net.now)
    net.down.add(A2)  # that uplink died too before anything came back
    net._move()
    assert net.a.roam(ia.ike_sa_id, [(A3, B_ADDR)], net.now)
    net.run_until_quiet(30)
    assert _consistent(net) == (ia, ib)
    assert ia.local == (A3, 4500) and ib.remote == (A3, 4500)
    assert len(_moved(net.events_a)) == 1  # one update, to the newest path


def test_addresses_inside_our_traffic_selectors_are_not_advertised() -> None:
    net = _net(sb=make_settings_b(local_addrs=()))  # any local address: every present one qualifies...
    net.b.set_local_addresses([B_ADDR, B2, "10.2.0.1", "fe80::1"])  # ...but not its LAN's or a link-local
    ia, _ib = _up(net)
    assert ia.mobike.peer_addrs == (B2,)


def test_other_peer_addresses_are_tried_on_4500_its_current_one_on_its_port() -> None:
    net = _net()
    ia, _ib = _up(net)
    ia.remote = (B_ADDR, 40000)  # as if a NAT in front of the gateway had mapped its port
    net.down |= {A_ADDR, A2}  # nothing is delivered: we only look at what was sent
    assert net.a.roam(ia.ike_sa_id, [(A2, B_ADDR), (A2, B2)], net.now)
    start = len(net.wire)
    net._move()
    assert [(lo, re) for _t, _d, lo, re, _ok in net.wire[start:]] == [
        ((A2, 4500), (B_ADDR, 40000)), ((A2, 4500), (B2, 4500))]
