"""EAP via RADIUS against a real FreeRADIUS 3.2 in a namespace: our relay + RADIUS client on one side,
our EAP peers as the road warrior, FreeRADIUS as the authentication and accounting server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsecd.eap.method import Failure, FailureReason, PeerFactory, Pending, Send, Step, Success
from ipsecd.eap.mschapv2 import MschapV2Peer
from ipsecd.eap.radius import (
    AccountingRecord,
    AnswerKind,
    RadiusAnswer,
    RadiusClient,
    RadiusServer,
    RadiusSettings,
)
from ipsecd.eap.radius_io import RadiusIo
from ipsecd.eap.radius_method import EAP_RADIUS, EapRadiusRelay
from ipsecd.eap.session import EapAuthenticator, EapPeer, MethodOffer
from ipsecd.eap.tls import EapTlsPeer, TlsCredentials
from ipsecd.iana import AcctStatusType, AcctTerminateCause, EapCode, EapType
from tests.eap_pki import Issued, issue, make_ca
from tests.freeradius import FreeRadius, udp_socket_in, why_no_freeradius
from tests.netns import Topology

pytestmark = pytest.mark.netns

SECRET = "ns-radius-secret"
SECOND_IP = "192.0.2.3"


@dataclass
class Lab:
    topo: Topology
    primary: FreeRadius
    secondary: FreeRadius
    ca: Issued
    client_cert: Issued

    def io(self, servers: list[str], **settings: object) -> RadiusIo:
        s = RadiusSettings(nas_identifier="ipsecd-test", nas_ip=self.topo.a_addr, **settings)  # type: ignore[arg-type]
        return RadiusIo(RadiusClient([RadiusServer(ip, SECRET.encode()) for ip in servers], s))


@pytest.fixture
def lab(topology: Topology, tmp_path: Path) -> Iterator[Lab]:
    why = why_no_freeradius()
    if why:
        pytest.skip(why)
    ca = make_ca()
    server = issue(ca, "radius.example", server=True)
    topology.b.run(["ip", "addr", "add", f"{SECOND_IP}/24", "dev", "eth0"])
    common = {"secret": SECRET, "nas": "192.0.2.0/24", "users": {"alice": "alice-pw", "bob": "bob-pw"},
              "ca": ca, "server": server}
    primary = FreeRadius(topology.b, tmp_path / "r1", topology.b_addr, **common)  # type: ignore[arg-type]
    secondary = FreeRadius(topology.b, tmp_path / "r2", SECOND_IP, **common)  # type: ignore[arg-type]
    try:
        primary.start()
        yield Lab(topology, primary, secondary, ca, issue(ca, "alice@example", server=False))
    finally:
        primary.stop()
        secondary.stop()


async def conversation(io: RadiusIo, identity: bytes, factory: PeerFactory, eap_type: int) -> tuple[Step, Step]:
    """Gateway (EAP-Identity itself, then the RADIUS relay) against one peer, to the end."""
    gateway = EapAuthenticator([MethodOffer(EAP_RADIUS, lambda ident: EapRadiusRelay(
        ident, calling_station_id="198.51.100.7[4500]", called_station_id="192.0.2.1[4500]"))], max_rounds=100)
    peer = EapPeer(identity, [(eap_type, factory)])
    step = gateway.start()
    for _ in range(200):
        if isinstance(step, Pending):
            step = gateway.resume(await io.access(step.request))  # type: ignore[arg-type]
        elif isinstance(step, Send):
            answer = peer.process(step.packet.encode())
            if not isinstance(answer, Send):
                return step, answer
            step = gateway.process(answer.packet.encode())
        else:
            assert step.final is not None
            return step, peer.process(step.final.encode())
    raise AssertionError("conversation did not end")


def run(lab: Lab, servers: list[str], identity: bytes, factory: PeerFactory, eap_type: int,
        **settings: object) -> tuple[Step, Step, RadiusIo]:
    async def main() -> tuple[Step, Step, RadiusIo]:
        io = lab.io(servers, **settings)
        await io.open(sock=udp_socket_in(lab.topo.a))
        try:
            gw, peer = await conversation(io, identity, factory, eap_type)
        finally:
            io.close()
        return gw, peer, io
    return asyncio.run(asyncio.wait_for(main(), 60))


def test_mschapv2_via_radius(lab: Lab) -> None:
    gw, peer, _ = run(lab, [lab.topo.b_addr], b"alice", lambda i: MschapV2Peer(i, "alice-pw"), EapType.MSCHAPV2)
    assert isinstance(gw, Success), gw
    assert isinstance(peer, Success), peer
    assert gw.method == EapType.MSCHAPV2 and gw.identity == b"alice"
    assert gw.final is not None and gw.final.code == EapCode.SUCCESS
    assert gw.msk == peer.msk[:32] and len(gw.msk) == 32  # MS-MPPE-Recv-Key | MS-MPPE-Send-Key
    assert isinstance(gw.extra, RadiusAnswer) and gw.extra.kind == AnswerKind.ACCEPT


def test_wrong_password_is_an_access_reject(lab: Lab) -> None:
    gw, peer, _ = run(lab, [lab.topo.b_addr], b"alice", lambda i: MschapV2Peer(i, "guess"), EapType.MSCHAPV2)
    assert isinstance(gw, Failure) and gw.reason == FailureReason.REJECTED
    assert f"RADIUS server {lab.topo.b_addr}:1812 rejected user alice" in gw.message
    assert gw.final is not None and gw.final.code == EapCode.FAILURE
    assert isinstance(peer, Failure) and peer.reason == FailureReason.REJECTED


def test_eap_tls_via_radius_after_a_nak(lab: Lab) -> None:
    creds = TlsCredentials(lab.client_cert.cert, lab.client_cert.key, trust_anchors=[lab.ca.cert])
    gw, peer, _ = run(lab, [lab.topo.b_addr], b"alice@example", lambda i: EapTlsPeer(i, creds), EapType.TLS)
    assert isinstance(gw, Success), gw
    assert isinstance(peer, Success), peer
    assert gw.method == EapType.TLS and gw.msk == peer.msk and len(gw.msk) == 64


def test_accounting_start_and_stop_reach_the_server(lab: Lab) -> None:
    async def main() -> tuple[bool, bool]:
        io = lab.io([lab.topo.b_addr])
        await io.open(sock=udp_socket_in(lab.topo.a))
        try:
            start = AccountingRecord(AcctStatusType.START, "ipsecd-7f3a-1", b"alice", framed_ip="10.3.0.9",
                                     calling_station_id="198.51.100.7[4500]")
            stop = AccountingRecord(AcctStatusType.STOP, "ipsecd-7f3a-1", b"alice", framed_ip="10.3.0.9",
                                    input_octets=123456, output_octets=654321, input_packets=100,
                                    output_packets=200, session_time=42,
                                    terminate_cause=AcctTerminateCause.USER_REQUEST)
            return await io.account(start), await io.account(stop)
        finally:
            io.close()

    assert asyncio.run(asyncio.wait_for(main(), 30)) == (True, True)
    detail = lab.primary.accounting_details()
    assert 'Acct-Session-Id = "ipsecd-7f3a-1"' in detail
    assert "Acct-Status-Type = Start" in detail and "Acct-Status-Type = Stop" in detail
    assert "Framed-IP-Address = 10.3.0.9" in detail and "Acct-Input-Octets = 123456" in detail
    assert "Acct-Terminate-Cause = User-Request" in detail and 'NAS-Identifier = "ipsecd-test"' in detail


def test_second_server_takes_over_when_the_first_is_stopped(lab: Lab) -> None:
    lab.secondary.start()
    lab.primary.stop()
    gw, peer, io = run(lab, [lab.topo.b_addr, SECOND_IP], b"bob", lambda i: MschapV2Peer(i, "bob-pw"),
                       EapType.MSCHAPV2, timeouts=(0.3, 0.3), dead_time=30.0)
    assert isinstance(gw, Success), gw
    assert isinstance(peer, Success)
    assert io.client.counters.failovers == 1 and io.client.counters.retransmitted == 1
    assert isinstance(gw.extra, RadiusAnswer) and gw.extra.server == f"{SECOND_IP}:1812"


def test_eap_tls13_via_radius(lab: Lab, tmp_path: Path) -> None:
    """RFC 9190 against FreeRADIUS with tls_max_version 1.3: commitment message, exporter keys."""
    server = issue(lab.ca, "radius13.example", server=True)
    r13 = FreeRadius(lab.topo.b, tmp_path / "r13", SECOND_IP, secret=SECRET, nas="192.0.2.0/24", users={},
                     ca=lab.ca, server=server, tls_max="1.3")
    r13.start()
    try:
        creds = TlsCredentials(lab.client_cert.cert, lab.client_cert.key, trust_anchors=[lab.ca.cert])
        peers: list[EapTlsPeer] = []

        def make(ident: bytes) -> EapTlsPeer:
            peers.append(EapTlsPeer(ident, creds))
            return peers[-1]

        gw, peer, _ = run(lab, [SECOND_IP], b"alice@example", make, EapType.TLS)
    finally:
        r13.stop()
    assert isinstance(gw, Success), gw
    assert isinstance(peer, Success), peer
    assert gw.msk == peer.msk and len(gw.msk) == 64
    assert peers[0]._conn.get_protocol_version_name() == "TLSv1.3"
