"""The daemon's side of remote access: RADIUS round trips and accounting, the credential
report, login metrics, and the EAP/RADIUS config model.

The RADIUS service runs on a real IkeShell around a real gateway engine; the client is a
second engine driven by hand, RADIUS is tests/auth_pair.FakeRadius behind a fake RadiusIo,
the data plane a fake that reports counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from ipsecd.config import Config, load_config
from ipsecd.dataplane.messages import SaCounterSnapshot
from ipsecd.eap.radius import AccessRequest, AccountingRecord, AnswerKind, RadiusAnswer
from ipsecd.iana import AcctStatusType, AcctTerminateCause
from ipsecd.ike.events import IkeSaEstablished, LoginResult
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.settings import AuthSettings
from ipsecd.metrics import MetricsSnapshot, render
from ipsecd.shell.credentials import load_credentials
from ipsecd.shell.ike_shell import IkeShell
from ipsecd.shell.radius import RadiusService
from ipsecd.shell.stats import ShellStats
from tests.auth_pair import FakeRadius, eap_id, secrets, store_of, with_auth
from tests.ike_pair import A_ADDR, B_ADDR, make_settings, make_settings_b
from tests.pki import KeyFile, TestPki, write_swanctl

A, B = (A_ADDR, 500), (B_ADDR, 500)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, local: Any, remote: Any) -> None:
        self.sent.append(data)


class FakeIo:
    """RadiusIo's two calls, answered by FakeRadius; accounting records are kept."""

    def __init__(self, radius: FakeRadius) -> None:
        self.radius = radius
        self.records: list[AccountingRecord] = []

    async def access(self, request: AccessRequest) -> RadiusAnswer:
        await asyncio.sleep(0)
        return self.radius.answer(request) or RadiusAnswer(AnswerKind.TIMEOUT)

    async def account(self, record: AccountingRecord) -> bool:
        self.records.append(record)
        return True

    def close(self) -> None:
        pass


class FakeCounters:
    """The data plane's counters of the SAs asked for (``sa_counters``); accounting must never
    ask for every SA's (``counters``, O(all SAs): issue 11)."""

    def __init__(self) -> None:
        self.sas: dict[str, dict[str, int]] = {}
        self.asked: list[list[tuple[int, int]]] = []

    async def sa_counters(self, pairs: list[tuple[int, int]]) -> list[SaCounterSnapshot]:
        self.asked.append(list(pairs))
        out = []
        for spi_in, spi_out in pairs:
            for spi, direction in ((spi_in, "in"), (spi_out, "out")):
                c = self.sas.get(f"{spi:08x}")
                if c is not None:
                    out.append(SaCounterSnapshot(spi, direction, 1, c["bytes"], c["packets"], {}, 0))
        return out

    async def counters(self) -> dict[str, Any]:
        raise AssertionError("accounting read every SA's counters")


async def _settle(client: IkeManager, shell: IkeShell, transport: FakeTransport, rounds: int = 40) -> None:
    """Move datagrams both ways until quiet, letting the shell's tasks (RADIUS) run in between."""
    seen = 0
    for _ in range(rounds):
        out = client.datagrams_to_send()
        for d in out:
            shell.on_datagram(d.data, B, A)
        for _ in range(5):
            await asyncio.sleep(0)
        new, seen = transport.sent[seen:], len(transport.sent)
        for data in new:
            client.receive_datagram(data, A, B, 0.0)
        if not out and not new:
            return


def test_eap_radius_through_the_shell_with_accounting(pki: TestPki) -> None:
    root = pki.root("root", "p256")
    gw = pki.end_entity(root, "b.test", "p256")
    radius = FakeRadius({"alice": "alice pw"}, answer_after=0)

    async def main() -> None:
        gateway = IkeManager([with_auth(make_settings_b(remote_id="%any"), "pubkey",
                                        AuthSettings("eap-radius", eap_id=eap_id("%any")))], now=time.monotonic())
        gateway.set_credentials(store_of([gw], cas=[root]), time.time() - time.monotonic())
        transport, stats = FakeTransport(), ShellStats()
        shell = IkeShell(gateway, transport, stats)  # type: ignore[arg-type]
        counters = FakeCounters()
        service = RadiusService(shell, lambda: counters)
        service.io = FakeIo(radius)  # type: ignore[assignment]
        service.settings = dataclasses.replace(service.settings, accounting=True)
        shell.radius = service
        client = IkeManager([with_auth(dataclasses.replace(make_settings(), local_id=None),
                                       AuthSettings("eap-mschapv2", eap_id=eap_id("alice")), "pubkey",
                                       eap_secret=secrets({"alice": "alice pw"}))], now=0.0)
        client.set_credentials(store_of(cas=[root]), pki.now.timestamp())
        client.initiate("conn", 0.0)
        await _settle(client, shell, transport)
        assert any(isinstance(e, IkeSaEstablished) for e in iter(client.next_event, None))
        assert len(radius.seen) >= 3
        assert stats.logins == {("eap-radius", "success"): 1}
        await asyncio.sleep(0)
        io = service.io
        assert isinstance(io, FakeIo)
        (start,) = io.records  # Start once the IKE SA is up
        assert start.status == AcctStatusType.START and start.user_name == b"alice"
        assert start.framed_ip == "10.3.0.7" and start.classes == (b"class-1",)
        (session,) = service.sessions.values()
        (spi_in, spi_out), = session.spis.items()
        counters.sas = {spi_in.hex(): {"bytes": 400, "packets": 4}, spi_out.hex(): {"bytes": 200, "packets": 2}}
        # Interim-Update every accounting_interval, with the counters of that moment
        service.settings = dataclasses.replace(service.settings, accounting_interval=0.05)
        service._schedule_interim()
        await asyncio.sleep(0.12)
        service.settings = dataclasses.replace(service.settings, accounting_interval=0.0)
        interims = [r for r in io.records if r.status == AcctStatusType.INTERIM_UPDATE]
        assert interims and (interims[0].input_octets, interims[0].output_packets) == (400, 2)
        counters.sas = {spi_in.hex(): {"bytes": 1000, "packets": 10}, spi_out.hex(): {"bytes": 500, "packets": 5}}
        shell.act(lambda m, now: m.terminate("conn", now))
        await _settle(client, shell, transport)
        for _ in range(10):
            await asyncio.sleep(0)
        stop = io.records[-1]
        assert stop.status == AcctStatusType.STOP and stop.session_id == start.session_id
        assert (stop.input_octets, stop.input_packets, stop.output_octets, stop.output_packets) == (1000, 10, 500, 5)
        assert stop.terminate_cause == AcctTerminateCause.ADMIN_RESET
        assert not service.sessions
        pair = (int.from_bytes(spi_in, "big"), int.from_bytes(spi_out, "big"))
        assert counters.asked and all(asked == [pair] for asked in counters.asked)  # that session's SAs only
        shell.close()

    asyncio.run(main())


def test_accounting_reports_the_pool_lease_when_radius_frames_no_address() -> None:
    """Framed-IP-Address in accounting is the client's address: RADIUS' own, else our pool's lease."""
    from types import SimpleNamespace

    from ipsecd.identity import Identity
    from ipsecd.ike.authenticators import PeerLogin
    from ipsecd.ike.cp import Lease, VirtualIps

    def start_record(answer: RadiusAnswer) -> AccountingRecord:
        lease = Lease("rw", ip_address("10.9.0.5"), Identity.parse("alice"), ("192.0.2.7", 4500))
        sa = SimpleNamespace(login=PeerLogin("eap-radius", b"alice", extra=answer), rekeyed_from=None,
                             vips=VirtualIps(leases=[lease]), remote=("192.0.2.7", 4500), local=("192.0.2.1", 4500))
        spawned: list[Any] = []
        shell = SimpleNamespace(manager=SimpleNamespace(find=lambda _id: sa),
                                tasks=SimpleNamespace(spawn=lambda coro, what: spawned.append(coro)))
        service = RadiusService(shell, lambda: None)  # type: ignore[arg-type]
        io = FakeIo(FakeRadius({}))
        service.io = io  # type: ignore[assignment]
        service.settings = dataclasses.replace(service.settings, accounting=True)
        service.on_event(IkeSaEstablished(1, "rw"))
        (coro,) = spawned
        asyncio.run(coro)
        (record,) = io.records
        return record

    assert start_record(RadiusAnswer(AnswerKind.ACCEPT)).framed_ip == "10.9.0.5"
    assert start_record(RadiusAnswer(AnswerKind.ACCEPT, framed_ip="10.3.0.7")).framed_ip == "10.3.0.7"


def test_no_radius_server_answers_fails_the_login(pki: TestPki) -> None:
    root = pki.root("root", "p256")
    gw = pki.end_entity(root, "b.test", "p256")

    async def main() -> None:
        gateway = IkeManager([with_auth(make_settings_b(remote_id="%any"), "pubkey",
                                        AuthSettings("eap-radius", eap_id=eap_id("%any")))], now=time.monotonic())
        gateway.set_credentials(store_of([gw], cas=[root]), time.time() - time.monotonic())
        transport, stats = FakeTransport(), ShellStats()
        shell = IkeShell(gateway, transport, stats)  # type: ignore[arg-type]
        shell.radius = service = RadiusService(shell, lambda: None)
        service.io = FakeIo(FakeRadius({}, answer_after=100))  # type: ignore[assignment]
        client = IkeManager([with_auth(dataclasses.replace(make_settings(), local_id=None),
                                       AuthSettings("eap-mschapv2", eap_id=eap_id("alice")), "pubkey",
                                       eap_secret=secrets({"alice": "x"}))], now=0.0)
        client.set_credentials(store_of(cas=[root]), pki.now.timestamp())
        client.initiate("conn", 0.0)
        await _settle(client, shell, transport)
        assert stats.logins == {("eap-radius", LoginResult.SERVER_UNREACHABLE.value): 1}
        shell.close()

    asyncio.run(main())


# ---------------------------------------------------------------- the credential report


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "ipsecd.yaml"
    path.write_text(text)
    return load_config(path)


GATEWAY = """\
connections:
  rw:
    remote_addrs: ["%any"]
    local:
      auth: pubkey
      id: vpn.example.com
      certs: [vpn.example.com.pem]
    remote:
      auth: pubkey
      cacerts: [{cacerts}]
settings:
  credentials: creds
secrets:
  private:
    - file: vpn.example.com.key.pem
      secret: "key pass"
"""


def test_the_credential_report(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root("root CA", "p256")
    gw = pki.issue("vpn.example.com", root, "p256", sans=[])  # no SAN, no EKU: what clients refuse
    config = _config(tmp_path, GATEWAY.format(cacerts="root_CA.pem"))
    now = datetime.now(UTC)
    store, report = load_credentials(config, now)
    assert report.errors == [f"credential directory {tmp_path}/creds does not exist: connection(s) rw need "
                             "certificates (settings.credentials)"]
    write_swanctl(tmp_path / "creds", own=[KeyFile(gw, passphrase="key pass")], cas=[root])
    store, report = load_credentials(config, now)
    assert report.errors == []
    assert store.own_credential(cert_file="vpn.example.com.pem") is not None  # the passphrase came from secrets
    assert any("no extendedKeyUsage: Windows clients need serverAuth" in w for w in report.warnings)
    assert any("no DNS or IP subjectAltName" in w for w in report.warnings)
    _store, report = load_credentials(_config(tmp_path, GATEWAY.format(cacerts="other.pem")), now)
    assert report.errors == ["connection rw: remote.cacerts other.pem not found in x509ca/"]
    key = tmp_path / "creds" / "private" / "vpn.example.com.key.pem"
    key.chmod(0o640)
    _store, report = load_credentials(config, now)
    assert f"{key}: private key readable by group or others (mode 0640): chmod 600 {key}" in report.warnings


def test_a_missing_credential_directory(tmp_path: Path) -> None:
    config = _config(tmp_path, GATEWAY.format(cacerts="root.pem"))
    _store, report = load_credentials(config, datetime.now(UTC), check_only=True)
    assert report.errors == [] and "does not exist: connection(s) rw need certificates" in report.notes[0]
    _store, report = load_credentials(config, datetime.now(UTC))
    assert "does not exist" in report.errors[0]


def test_an_expiring_gateway_certificate_is_reported(tmp_path: Path, pki: TestPki) -> None:
    root = pki.root("root CA", "p256")
    gw = pki.end_entity(root, "vpn.example.com", "p256", not_after=pki.now - timedelta(minutes=1))
    write_swanctl(tmp_path / "creds", own=[gw], cas=[root])
    config = _config(tmp_path, GATEWAY.format(cacerts="root_CA.pem"))
    _store, report = load_credentials(config, datetime.now(UTC))
    assert any("is not valid now" in w for w in report.warnings)


# ---------------------------------------------------------------- metrics


def test_logins_metric() -> None:
    text = render(MetricsSnapshot(logins={("eap-mschapv2", "wrong_password"): 3, ("pubkey", "success"): 2}))
    assert 'ipsecd_logins_total{method="eap-mschapv2",result="wrong_password"} 3' in text
    assert 'ipsecd_logins_total{method="pubkey",result="success"} 2' in text
    assert 'ipsecd_logins_total{method="eap-radius",result="success"} 0' in text


def test_login_labels_stay_a_fixed_set() -> None:
    from ipsecd.metrics import login_labels

    assert login_labels("eap-md5", "wrong_password") == ("eap", "wrong_password")
    assert login_labels("weird", "made up") == ("other", "other")


# ---------------------------------------------------------------- the config model


def test_eap_secrets(tmp_path: Path) -> None:
    config = _config(tmp_path, """\
secrets:
  eap:
    - id: alice
      secret: "alice pw"
    - id: "*@example.com"
      secret: "domain pw"
    - secret: "anyone"
  ntlm:
    - id: bob
      secret: 0x0cb6948805f797bf2a82807973b89537
""")
    assert config.find_eap_secret(b"alice") == "alice pw"
    assert config.find_eap_secret(b"ALICE") == "alice pw"  # names compare case-insensitively
    assert config.find_eap_secret(b"carol@example.com") == "domain pw"
    assert config.find_eap_secret(b"dave") == "anyone"
    bob = config.find_eap_secret("bob")
    assert not isinstance(bob, str) and bob is not None and bob.value.hex() == "0cb6948805f797bf2a82807973b89537"
    assert "alice pw" not in repr(config)


def test_eap_radius_settings(tmp_path: Path) -> None:
    config = _config(tmp_path, """\
settings:
  eap-radius:
    secret: shared
    accounting: yes
    accounting_interval: 5m
    retransmit_timeout: 1
    retransmit_base: 1.5
    retransmit_tries: 3
    servers:
      one: {address: 192.0.2.5}
      two: {address: "2001:db8::5", secret: own, auth_port: 11812}
""")
    r = config.settings.eap_radius
    assert [(s.name, str(s.address), s.secret, s.auth_port, s.acct_port) for s in r.servers] == [
        ("one", "192.0.2.5", b"shared", 1812, 1813), ("two", "2001:db8::5", b"own", 11812, 1813)]
    assert r.accounting and r.accounting_interval == 300 and r.timeouts() == (1.0, 1.5, 2.25)
    assert "shared" not in repr(config)


@pytest.mark.parametrize(("auth", "eap_id"), [("eap-mschapv2", "alice"), ("eap", "alice")])
def test_a_client_eap_login_needs_our_password(tmp_path: Path, auth: str, eap_id: str) -> None:
    text = f"""\
connections:
  office:
    remote_addrs: [192.0.2.1]
    local:
      auth: {auth}
      eap_id: {eap_id}
    remote:
      auth: pubkey
      id: vpn.example.com
"""
    if auth == "eap-mschapv2":
        from ipsecd.errors import ConfigError

        with pytest.raises(ConfigError, match=r"needs our password: no secret in secrets\.eap matches 'alice'"):
            _config(tmp_path, text)
    else:
        assert _config(tmp_path, text).connections["office"].local.eap_id is not None


def test_check_config_reports_the_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ipsecd.config import check_config_main
    from ipsecd.daemon import _check_credentials

    (tmp_path / "ipsecd.yaml").write_text(GATEWAY.format(cacerts="root.pem"))
    (tmp_path / "creds" / "x509ca").mkdir(parents=True)
    assert check_config_main(tmp_path / "ipsecd.yaml", extra_check=_check_credentials) == 1
    err = capsys.readouterr().err
    assert "error: connection rw: local.certs 'vpn.example.com.pem' is not in" in err
    assert "error: connection rw: remote.cacerts root.pem not found in x509ca/" in err

