"""AH Child SAs and IPComp negotiation in two in-process engines (tests/ike_pair.py, fake clock).

Protocol ID AH in the SA payload (RFC 7296 3.3.1), AH-or-ESP choice (AH+ESP bundles are not
negotiable in IKEv2), IPCOMP_SUPPORTED both ways (RFC 7296 2.22, 3.10.1) in IKE_AUTH and in
CREATE_CHILD_SA (rekey), CPIs allocated per Child SA and released with its SPI, Delete and
REKEY_SA naming AH, and the data-plane parameters the daemon derives from the events.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest

from ipsecd.esp.sa import IpsecProto
from ipsecd.iana import EncrId, ExchangeType, IntegId, IpcompId, NotifyType, ProtocolId
from ipsecd.ike.events import ChildSaDeleted, ChildSaEstablished
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import decode_header, decode_message
from ipsecd.ike.payloads import DeletePayload, NotifyPayload, SaPayload
from ipsecd.ike.proposal import parse_proposals
from ipsecd.ike.settings import IkeSettings
from ipsecd.settings_from_config import child_sa_params
from tests.ike_pair import Pair, make_pair, make_settings, make_settings_b


def _child(s: IkeSettings, **kw: object) -> IkeSettings:
    return dataclasses.replace(s, children=tuple(dataclasses.replace(c, **kw) for c in s.children))


def _ah(*texts: str) -> tuple:
    return tuple(parse_proposals(list(texts), ProtocolId.AH))


def _only(mgr: IkeManager) -> IkeSa:
    (sa,) = [s for s in mgr.list_sas() if s.state == IkeState.ESTABLISHED]
    return sa


def _up(pair: Pair) -> tuple[IkeSa, IkeSa]:
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(30)
    return _only(pair.a), _only(pair.b)


def _messages(pair: Pair, receiver: IkeSa, tag: str, exchange: ExchangeType) -> list:
    """Decrypted messages of one direction ("a->b") and exchange, in order; ``receiver`` is
    the IKE SA of the side they went to (its inbound keys open them)."""
    out = []
    for t, data in pair.sent:
        h = decode_header(data)
        if t == tag and h.exchange == exchange:
            out.append(decode_message(data, receiver.sk_in))
    return out


def _notifies(msg: object, t: NotifyType) -> list[NotifyPayload]:
    return [n for n in msg.notifies() if n.notify_type == t]  # type: ignore[attr-defined]


@pytest.mark.parametrize("integ", ["sha256", "sha384", "sha512"])
def test_ah_child_sa(integ: str) -> None:
    sa = _child(make_settings(), ah_proposals=_ah(integ), esp_proposals=())
    sb = _child(make_settings_b(), ah_proposals=_ah("sha512", "sha384", "sha256"), esp_proposals=())
    pair = make_pair(sa, sb)
    ia, ib = _up(pair)
    (ca,), (cb,) = ia.children, ib.children
    assert ca.event.proposal.protocol == ProtocolId.AH == cb.event.proposal.protocol
    assert ca.spi_out == cb.spi_in and ca.spi_in == cb.spi_out
    assert ca.event.keys_out == cb.event.keys_in and ca.event.keys.encr_i == b""
    want = {"sha256": IntegId.AUTH_HMAC_SHA2_256_128, "sha384": IntegId.AUTH_HMAC_SHA2_384_192,
            "sha512": IntegId.AUTH_HMAC_SHA2_512_256}[integ]
    inbound, outbound, _ = child_sa_params(ca.event)
    assert inbound.protocol is IpsecProto.AH and outbound.protocol is IpsecProto.AH
    assert inbound.integ == want and inbound.encr == EncrId.ENCR_NULL and len(inbound.integ_key) == {
        "sha256": 32, "sha384": 48, "sha512": 64}[integ]
    assert inbound.ipcomp_cpi == 0
    # the IKE_AUTH request carried Protocol ID AH proposals (RFC 7296 3.3.1)
    req = _messages(pair, ib, "a->b", ExchangeType.IKE_AUTH)[0]
    assert {p.protocol for p in req.get(SaPayload).proposals} == {ProtocolId.AH}


def test_ah_and_esp_offered_one_chosen() -> None:
    """AH proposals go first; a responder that takes only ESP picks ESP (no bundle)."""
    sa = _child(make_settings(), ah_proposals=_ah("sha256"))
    pair = make_pair(sa, make_settings_b())
    ia, ib = _up(pair)
    assert ia.children[0].event.proposal.protocol == ProtocolId.ESP
    req = _messages(pair, ib, "a->b", ExchangeType.IKE_AUTH)[0]
    props = req.get(SaPayload).proposals
    assert [(p.num, p.protocol) for p in props] == [(1, ProtocolId.AH), (2, ProtocolId.ESP)]
    # and a responder that accepts both takes the initiator's first choice, AH
    sb = _child(make_settings_b(), ah_proposals=_ah("sha256"))
    pair = make_pair(sa, sb)
    ia, _ = _up(pair)
    assert ia.children[0].event.proposal.protocol == ProtocolId.AH


def test_ah_not_offered_across_nat() -> None:
    sa = _child(make_settings(force_encap=True), ah_proposals=_ah("sha256"))
    sb = _child(make_settings_b(force_encap=True), ah_proposals=_ah("sha256"))
    pair = make_pair(sa, sb)
    ia, _ = _up(pair)
    assert ia.children[0].event.proposal.protocol == ProtocolId.ESP and ia.children[0].event.encap


@pytest.mark.parametrize("proto", ["esp", "ah"])
def test_ipcomp_negotiated(proto: str) -> None:
    kw: dict[str, object] = {"ipcomp": True}
    if proto == "ah":
        kw.update(ah_proposals=_ah("sha256"), esp_proposals=())
    pair = make_pair(_child(make_settings(), **kw), _child(make_settings_b(), **kw))
    ia, ib = _up(pair)
    ea, eb = ia.children[0].event, ib.children[0].event
    assert ea.ipcomp_cpi_in and ea.ipcomp_cpi_out
    assert (ea.ipcomp_cpi_in, ea.ipcomp_cpi_out) == (eb.ipcomp_cpi_out, eb.ipcomp_cpi_in)
    assert 256 <= ea.ipcomp_cpi_in <= 61439
    for ike, tag, cpi in ((ib, "a->b", ea.ipcomp_cpi_in), (ia, "b->a", eb.ipcomp_cpi_in)):
        (msg,) = _messages(pair, ike, tag, ExchangeType.IKE_AUTH)
        (n,) = _notifies(msg, NotifyType.IPCOMP_SUPPORTED)
        assert n.protocol == ProtocolId.NONE and n.spi == b""
        assert n.data == struct.pack("!HB", cpi, IpcompId.IPCOMP_DEFLATE)
    inbound, outbound, _ = child_sa_params(ea)
    assert (inbound.ipcomp_cpi, outbound.ipcomp_cpi) == (ea.ipcomp_cpi_in, ea.ipcomp_cpi_out)
    assert pair.a.ctx.cpi_of_spi == {ea.spi_in: ea.ipcomp_cpi_in}


def test_ipcomp_declined_by_responder() -> None:
    pair = make_pair(_child(make_settings(), ipcomp=True), make_settings_b())
    ia, ib = _up(pair)
    ea = ia.children[0].event
    assert ea.ipcomp_cpi_in == ea.ipcomp_cpi_out == 0
    assert ib.children[0].event.ipcomp_cpi_out == 0
    assert pair.a.ctx.cpi_of_spi == {} and pair.a.ctx.cpis == set()  # the reserved CPI went back
    (resp,) = _messages(pair, ia, "b->a", ExchangeType.IKE_AUTH)
    assert not _notifies(resp, NotifyType.IPCOMP_SUPPORTED)


def test_ipcomp_not_requested_responder_silent() -> None:
    pair = make_pair(make_settings(), _child(make_settings_b(), ipcomp=True))
    _ia, ib = _up(pair)
    assert ib.children[0].event.ipcomp_cpi_in == 0 and pair.b.ctx.cpis == set()


@pytest.mark.parametrize("by", ["a", "b"])
def test_ah_ipcomp_rekey_and_delete(by: str) -> None:
    kw: dict[str, object] = {"ipcomp": True, "ah_proposals": _ah("sha384-ecp256"), "esp_proposals": ()}
    pair = make_pair(_child(make_settings(), **kw), _child(make_settings_b(), **kw))
    ia, ib = _up(pair)
    old_a = ia.children[0].event
    mgr, ike = (pair.a, ia) if by == "a" else (pair.b, ib)
    assert mgr.rekey_child(ike.children[0].spi_in, pair.now)
    pair.run_until_quiet(30)
    ia, ib = _only(pair.a), _only(pair.b)
    (ca,), (cb,) = ia.children, ib.children
    new_a = ca.event
    assert new_a.proposal.protocol == ProtocolId.AH and new_a.rekeyed_spi_in == old_a.spi_in
    assert new_a.ipcomp_cpi_in and new_a.ipcomp_cpi_out == cb.event.ipcomp_cpi_in
    assert new_a.ipcomp_cpi_in != old_a.ipcomp_cpi_in or new_a.spi_in != old_a.spi_in
    # REKEY_SA named an AH SA; the old SA's Delete was an AH Delete (RFC 7296 3.11)
    rekeyer = ib if by == "a" else ia
    tag = "a->b" if by == "a" else "b->a"
    creq = [m for m in _messages(pair, rekeyer, tag, ExchangeType.CREATE_CHILD_SA)]
    (rk,) = _notifies(creq[-1], NotifyType.REKEY_SA)
    assert rk.protocol == ProtocolId.AH
    assert _notifies(creq[-1], NotifyType.IPCOMP_SUPPORTED)
    dels = [d for m in _messages(pair, rekeyer, tag, ExchangeType.INFORMATIONAL) for d in m.get_all(DeletePayload)]
    assert dels and all(d.protocol == ProtocolId.AH for d in dels)
    assert any(isinstance(e, ChildSaDeleted) and e.spi_in == old_a.spi_in for e in pair.events_a)
    # the owner releases SPIs (and with them CPIs) once the data plane dropped the SA
    pair.a.release_spi(old_a.spi_in)
    assert set(pair.a.ctx.cpi_of_spi) == {new_a.spi_in}
    # the peer deletes the AH Child SA: the answer names it as AH too
    n = len(pair.sent)
    assert pair.b.delete_child(cb.spi_in, pair.now)
    pair.run_until_quiet(30)
    assert not _only(pair.a).children
    (resp,) = _messages(pair, _only(pair.b), "a->b", ExchangeType.INFORMATIONAL)[-1:]
    assert [d.protocol for d in resp.get_all(DeletePayload)] == [ProtocolId.AH]
    assert len(pair.sent) > n
    assert any(isinstance(e, ChildSaEstablished) for e in pair.events_b)


# ------------------------------------------------------------------ config keys (swanctl names)
_CONF = """
connections:
  a:
    remote_addrs: [192.0.2.2]
    local: {auth: psk, id: a.test}
    remote: {auth: psk, id: b.test}
    children:
      net:
        local_ts: [10.1.0.0/24]
        remote_ts: [10.2.0.0/24]
%s
secrets:
  ike:
    - id: [a.test, b.test]
      secret: 0x00112233445566778899aabbccddeeff
"""


def _load(tmp_path: object, child_lines: str) -> object:
    from pathlib import Path

    from ipsecd.config import load_config
    from ipsecd.settings_from_config import validate_proposal

    path = Path(str(tmp_path)) / "x.yaml"
    path.write_text(_CONF % "\n".join("        " + line for line in child_lines.strip().splitlines()))
    return load_config(path, proposal_validator=validate_proposal)


def test_config_ah_only_ipcomp(tmp_path: object) -> None:
    from ipsecd.settings_from_config import ike_settings

    config = _load(tmp_path, "ah_proposals: [sha256-ecp256, sha512]\nipcomp: yes")
    conn = config.connections["a"]  # type: ignore[attr-defined]
    ch = conn.children["net"]
    assert ch.ah_proposals == ("sha256-ecp256", "sha512") and ch.esp_proposals == () and ch.ipcomp
    (child,) = ike_settings(conn, config).children  # type: ignore[arg-type]
    assert [p.protocol for p in child.proposals] == [ProtocolId.AH, ProtocolId.AH]
    assert [p.num for p in child.proposals] == [1, 2] and child.ipcomp


def test_config_ah_and_esp(tmp_path: object) -> None:
    from ipsecd.settings_from_config import ike_settings

    config = _load(tmp_path, "ah_proposals: [sha384]\nesp_proposals: [aes256gcm16]")
    conn = config.connections["a"]  # type: ignore[attr-defined]
    (child,) = ike_settings(conn, config).children  # type: ignore[arg-type]
    assert [(p.num, p.protocol) for p in child.proposals] == [(1, ProtocolId.AH), (2, ProtocolId.ESP)]
    assert not child.ipcomp


@pytest.mark.parametrize(("line", "says"), [
    ("ah_proposals: [aes256-sha256]", "AH takes no encryption algorithm"),
    ("ah_proposals: [sha999]", "unknown algorithm"),
    ("ipcomp: maybe", "ipcomp"),
])
def test_config_errors(tmp_path: object, line: str, says: str) -> None:
    from ipsecd.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _load(tmp_path, line)
    assert says in str(e.value) and "x.yaml:" in str(e.value)


def test_ah_only_child_across_nat_fails_cleanly() -> None:
    kw: dict[str, object] = {"ah_proposals": _ah("sha256"), "esp_proposals": ()}
    pair = make_pair(_child(make_settings(force_encap=True), **kw), _child(make_settings_b(force_encap=True), **kw))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(30)
    from ipsecd.ike.events import ChildSaFailed, IkeSaEstablished

    assert any(isinstance(e, ChildSaFailed) and "AH cannot cross" in e.reason for e in pair.events_a)
    assert not any(isinstance(e, ChildSaEstablished) for e in pair.events_a + pair.events_b)
    assert any(isinstance(e, IkeSaEstablished) for e in pair.events_a) and not _only(pair.b).children
