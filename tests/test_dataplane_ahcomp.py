"""AH and IPComp SAs in the data plane's sans-I/O state and its control messages.

The worker picks the transform per SA at install time (``SaParams.protocol``,
``SaParams.ipcomp_cpi``): an AH SA's outbound path is the raw AH socket and its inbound SA
lives in ``ah_inbound``, never in the ESP table; the control messages carry both fields.
The packets the state emits are checked with scapy's AH.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import AH, SecurityAssociation
from scapy.packet import Raw

from ipsecd.dataplane import messages as m
from ipsecd.dataplane.state import DataplaneState, SendControl, SendEsp
from ipsecd.esp.ah import AhInboundSa, AhOutboundSa
from ipsecd.esp.packet import tun_mtu
from ipsecd.esp.sa import InboundSa, IpsecProto, Mode, SaParams
from ipsecd.esp.spd import Selector
from ipsecd.iana import EncrId, IntegId
from ipsecd.settings_from_config import protect_policies

SOCKETS = {(True, 4): "udp4", (False, 4): "raw4", (True, 6): "udp6", (False, 6): "raw6"}
AH_SOCKETS = {4: "ah4", 6: "ah6"}
KEY = bytes(range(32))
LOCAL, REMOTE = ip_address("192.0.2.1"), ip_address("192.0.2.2")


def _params(spi: int, *, protocol: IpsecProto = IpsecProto.AH, cpi: int = 0, **kw: object) -> SaParams:
    base: dict[str, object] = dict(
        spi=spi, encr=EncrId.ENCR_NULL, encr_key=b"", integ=IntegId.AUTH_HMAC_SHA2_256_128, integ_key=KEY,
        esn=False, mode=Mode.TUNNEL, local_addr=LOCAL, remote_addr=REMOTE, protocol=protocol, ipcomp_cpi=cpi,
        local_ts=(Selector.from_prefix("10.1.0.0/24"),), remote_ts=(Selector.from_prefix("10.2.0.0/24"),))
    if protocol is IpsecProto.ESP:
        base.update(encr=EncrId.ENCR_AES_GCM_16, encr_key=bytes(36), integ=IntegId.NONE, integ_key=b"")
    base.update(kw)
    return SaParams(**base)  # type: ignore[arg-type]


def _state_with(sa_in: SaParams, sa_out: SaParams) -> DataplaneState[str]:
    st: DataplaneState[str] = DataplaneState(m.WorkerConfig(tun_name="fake"), SOCKETS, AH_SOCKETS)
    pols = protect_policies(1, [Selector.from_prefix("10.1.0.0/24")], [Selector.from_prefix("10.2.0.0/24")])
    st.handle(m.InstallSa(1, sa_in, sa_out, tuple(pols), 1400, m.Lifetime(), id=7), 0.0)
    acks = [o.message for o in st.take_outputs() if isinstance(o, SendControl)]
    assert acks == [m.Ack(7)], acks
    return st


def test_messages_carry_protocol_and_cpi() -> None:
    p = _params(0x1234, cpi=0x4321)
    msg = m.InstallSa(1, p, replace(p, spi=0x5678), (), 1400, m.Lifetime(), id=3)
    back = m.decode_body(m.encode(msg)[4:])
    assert back == msg and back.inbound.protocol is IpsecProto.AH and back.inbound.ipcomp_cpi == 0x4321


def test_ah_sa_installed_on_its_own_table_and_socket() -> None:
    st = _state_with(_params(0x1001), _params(0x2002))
    assert isinstance(st.ah_inbound[0x1001], AhInboundSa) and 0x1001 not in st.sad.inbound
    path = st.out[1]
    assert isinstance(path.sa, AhOutboundSa) and path.sock == "ah4" and path.local is None
    inner = bytes(IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=1, dport=2) / Raw(b"x" * 100))
    assert st.outbound(inner, 0.0) == 1
    (out,) = [o for o in st.take_outputs() if isinstance(o, SendEsp)]
    wire = IP(out.esp)  # IPv4: the whole packet goes to the IP_HDRINCL socket
    assert wire.proto == 51 and wire[AH].spi == 0x2002 and wire.src == str(LOCAL) and wire.dst == str(REMOTE)
    peer = SecurityAssociation(AH, spi=0x2002, auth_algo="SHA2-256-128", auth_key=KEY,
                               tunnel_header=IP(src=str(LOCAL), dst=str(REMOTE)))
    assert bytes(peer.decrypt(IP(out.esp))) == inner
    # the peer's packet, verified through the table the worker's AH drain reads
    reply = bytes(IP(src="10.2.0.9", dst="10.1.0.5") / UDP(sport=2, dport=1) / Raw(b"y" * 100))
    back = SecurityAssociation(AH, spi=0x1001, auth_algo="SHA2-256-128", auth_key=KEY,
                               tunnel_header=IP(src=str(REMOTE), dst=str(LOCAL)))
    assert st.ah_inbound[0x1001].unprotect(bytes(back.encrypt(IP(reply), seq_num=1))) == reply
    snap = {(s.spi, s.direction): s for s in st.counters().sas}
    assert snap[(0x1001, "in")].packets == 1 and snap[(0x2002, "out")].packets == 1
    st.handle(m.DeleteSa(reqid=1, id=9), 0.0)
    assert not st.ah_inbound and 1 not in st.out


def test_ah_ipv6_path_uses_pktinfo_and_sends_from_ah() -> None:
    l6, r6 = ip_address("2001:db8::1"), ip_address("2001:db8::2")
    st = _state_with(_params(0x1001, local_addr=l6, remote_addr=r6), _params(0x2002, local_addr=l6, remote_addr=r6))
    path = st.out[1]
    assert path.sock == "ah6" and path.local == l6.packed
    inner = bytes(IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=1, dport=2) / Raw(b"x" * 100))
    st.outbound(inner, 0.0)
    (out,) = [o for o in st.take_outputs() if isinstance(o, SendEsp)]
    assert out.esp[0] == 4 and int.from_bytes(out.esp[4:8], "big") == 0x2002  # AH first: nh 4, SPI


def test_esp_and_ah_spis_never_collide() -> None:
    st = _state_with(_params(0x1001), _params(0x2002))
    esp_in = _params(0x1001, protocol=IpsecProto.ESP)
    st.handle(m.InstallSa(2, esp_in, None, (), 1400, m.Lifetime(), id=8), 0.0)
    (ack,) = [o.message for o in st.take_outputs() if isinstance(o, SendControl)]
    assert isinstance(ack, m.Ack) and not ack.ok


def test_esp_sa_with_ipcomp_through_the_state() -> None:
    st = _state_with(_params(0x1001, protocol=IpsecProto.ESP, cpi=300), _params(0x2002, protocol=IpsecProto.ESP,
                                                                                cpi=400))
    inner = bytes(IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=1, dport=2) / Raw(b"abc" * 400))
    st.outbound(inner, 0.0)
    (out,) = [o for o in st.take_outputs() if isinstance(o, SendEsp)]
    assert len(out.esp) < len(inner) // 4  # compressed before encryption
    # the peer's inbound SA (our outbound keys, its CPI 400) gets the packet back
    peer_in = InboundSa(replace(_params(0x2002, protocol=IpsecProto.ESP, cpi=400), local_addr=REMOTE,
                                remote_addr=LOCAL, local_ts=(), remote_ts=()))
    assert peer_in.unprotect(out.esp) == inner


@pytest.mark.parametrize(("version", "integ", "want"), [
    (4, IntegId.AUTH_HMAC_SHA2_256_128, 1500 - 20 - 28), (6, IntegId.AUTH_HMAC_SHA2_256_128, 1500 - 40 - 32),
    (4, IntegId.AUTH_HMAC_SHA2_512_256, 1500 - 20 - 44), (6, IntegId.AUTH_HMAC_SHA2_512_256, 1500 - 40 - 48)])
def test_tun_mtu_for_ah(version: int, integ: IntegId, want: int) -> None:
    addrs = (LOCAL, REMOTE) if version == 4 else (ip_address("2001:db8::1"), ip_address("2001:db8::2"))
    key = bytes(64 if integ == IntegId.AUTH_HMAC_SHA2_512_256 else 32)
    p = _params(0x1001, integ=integ, integ_key=key, local_addr=addrs[0], remote_addr=addrs[1])
    assert tun_mtu(p, 1500) == want
