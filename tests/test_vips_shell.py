"""The daemon's side of virtual IPs: pools in the daemon and list-pools, the client's TUN addresses and DNS."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipsecd.config import load_config
from ipsecd.control.protocol import ControlError
from ipsecd.daemon import Daemon
from ipsecd.errors import ConfigError
from ipsecd.identity import Identity
from ipsecd.ike.events import Cause, IkeSaClosed, IkeSaRekeyed, VirtualIpsAssigned
from ipsecd.logsetup import LogHub
from ipsecd.settings_from_config import validate_proposal
from ipsecd.shell.ike_shell import TaskSet
from ipsecd.shell.vips import DnsConfigurator, VirtualIpShell, detect_dns_backend
from tests.ipsecd_proc import ipsecd_config

# --------------------------------------------------------------------------- DNS through the host's resolver manager

FAKE = """#!/bin/sh
echo "$0 $*" >> "{log}"
cat >> "{log}"
"""


def fake_tool(tmp_path: Path, name: str) -> Path:
    log = tmp_path / f"{name}.log"
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text(FAKE.format(log=log))
    tool.chmod(0o755)
    return log


def test_resolvconf_gets_a_record_and_loses_it_on_revert(tmp_path: Path) -> None:
    log = fake_tool(tmp_path, "resolvconf")
    dns = DnsConfigurator("ipsec0", backend="resolvconf")
    os.environ["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    try:
        asyncio.run(dns.apply([IPv4Address("10.2.0.53"), IPv6Address("fd00:2::53")], ["corp.example"]))
        asyncio.run(dns.revert())
        asyncio.run(dns.revert())  # twice: nothing more happens
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
    lines = log.read_text().splitlines()
    assert lines[0].endswith("resolvconf -a ipsec0.ipsecd")
    assert lines[1:4] == ["nameserver 10.2.0.53", "nameserver fd00:2::53", "search corp.example"]
    assert lines[4].endswith("resolvconf -d ipsec0.ipsecd") and len(lines) == 5


def test_resolvectl_gets_split_dns_for_the_domains(tmp_path: Path) -> None:
    log = fake_tool(tmp_path, "resolvectl")
    os.environ["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    try:
        dns = DnsConfigurator("ipsec0", backend="resolvectl")
        asyncio.run(dns.apply([IPv4Address("10.2.0.53")], ["corp.example", "lab.example"]))
        asyncio.run(dns.apply([IPv4Address("10.2.0.53")], []))  # no domains: every query goes to them
        asyncio.run(dns.revert())
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
    cmds = [line.split("resolvectl ", 1)[1] for line in log.read_text().splitlines()]
    assert cmds == ["dns ipsec0 10.2.0.53", "domain ipsec0 ~corp.example ~lab.example", "dns ipsec0 10.2.0.53",
                    "domain ipsec0 ~.", "revert ipsec0"]


def test_without_a_resolver_manager_it_says_so(caplog: pytest.LogCaptureFixture) -> None:
    dns = DnsConfigurator("ipsec0", backend="none")
    with caplog.at_level(logging.WARNING):
        asyncio.run(dns.apply([IPv4Address("10.2.0.53")], ["corp.example"]))
    assert "neither systemd-resolved (resolvectl) nor resolvconf is available: DNS is not changed" in caplog.text
    assert not dns.applied


def test_backend_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert detect_dns_backend() == ""
    fake_tool(tmp_path, "resolvectl")
    assert detect_dns_backend() == ""  # installed, but systemd-resolved is not running
    fake_tool(tmp_path, "resolvconf")
    assert detect_dns_backend() == "resolvconf"
    monkeypatch.setattr("ipsecd.shell.vips.RESOLVED_RUN_DIR", tmp_path)
    assert detect_dns_backend() == "resolvectl"


# --------------------------------------------------------------------------- addresses on the TUN


@dataclass
class FakeNetconf:
    tun_name: str = "ipsec0"
    calls: list[tuple[str, str]] = field(default_factory=list)

    def add_address(self, net: str) -> None:
        self.calls.append(("add", net))

    def remove_address(self, net: str) -> None:
        self.calls.append(("del", net))

    def add_bypass(self, addr: str) -> None:
        self.calls.append(("bypass", addr))

    def remove_bypass(self, addr: str) -> None:
        self.calls.append(("unbypass", addr))


@dataclass
class FakeOptions:
    policy_routing: bool = True


@dataclass
class FakeDataplane:
    netconf: FakeNetconf = field(default_factory=FakeNetconf)
    options: FakeOptions = field(default_factory=FakeOptions)


@dataclass
class FakeSa:
    remote: tuple[str, int] = ("198.51.100.1", 4500)


class FakeManager:
    def find(self, ike_sa_id: int) -> Any:
        return FakeSa()


@dataclass
class FakeShell:
    manager: FakeManager = field(default_factory=FakeManager)
    tasks: TaskSet = field(default_factory=TaskSet)


class RecordingDns(DnsConfigurator):
    def __init__(self) -> None:
        super().__init__("ipsec0", backend="test")
        self.applied_sets: list[tuple[list[str], list[str]]] = []

    async def apply(self, servers: Any, domains: Any) -> None:
        self.applied_sets.append(([str(s) for s in servers], list(domains)))


def test_virtual_ips_follow_their_ike_sas() -> None:
    async def scenario() -> tuple[FakeNetconf, RecordingDns]:
        dp, dns = FakeDataplane(), RecordingDns()
        shell = VirtualIpShell(FakeShell(), dp, dns)  # type: ignore[arg-type]
        v4, v6 = IPv4Address("10.3.0.1"), IPv6Address("fd00:3::1")
        shell.on_event(VirtualIpsAssigned(1, "home", (v4, v6), (IPv4Address("10.2.0.53"),), ("corp.example",)))
        await shell.ready(1)
        shell.on_event(IkeSaRekeyed(1, "home", 2))  # an IKE rekey: nothing changes on the host
        shell.on_event(VirtualIpsAssigned(3, "home", (v4,)))  # a reauthentication got the same address
        await shell.ready(3)
        shell.on_event(IkeSaClosed(2, "home", Cause.REAUTHENTICATED, "reauthenticated", True))
        await asyncio.sleep(0.05)
        assert ("del", "10.3.0.1/32") not in dp.netconf.calls  # still held by IKE SA 3
        shell.on_event(IkeSaClosed(3, "home", Cause.DELETED_LOCALLY, "down", True))
        await asyncio.sleep(0.05)
        return dp.netconf, dns

    netconf, dns = asyncio.run(scenario())
    assert netconf.calls == [
        ("add", "10.3.0.1/32"), ("add", "fd00:3::1/128"), ("bypass", "198.51.100.1"),
        ("add", "10.3.0.1/32"), ("bypass", "198.51.100.1"),
        ("del", "fd00:3::1/128"),
        ("del", "10.3.0.1/32"), ("unbypass", "198.51.100.1"),
    ]
    assert dns.applied_sets == [(["10.2.0.53"], ["corp.example"]), (["10.2.0.53"], ["corp.example"]),
                                ([], []), ([], [])]


# --------------------------------------------------------------------------- pools in the daemon


def _gateway_config(tmp_path: Path, addrs: str = "10.3.0.0/29") -> Path:
    doc = ipsecd_config(local_addrs=["192.0.2.1"], remote_id="%any",
                        children={"net": {"local_ts": ["10.2.0.0/24"], "remote_ts": ["dynamic"]}})
    doc["connections"]["peer"]["pools"] = ["rw4"]
    doc["pools"] = {"rw4": {"addrs": addrs, "dns": "10.2.0.53"}}
    doc["settings"] = {"lease_db": str(tmp_path / "state" / "leases.db")}
    path = tmp_path / "ipsecd.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_daemon_opens_the_lease_file_and_lists_pools(tmp_path: Path) -> None:
    path = _gateway_config(tmp_path)
    daemon = Daemon(load_config(path, proposal_validator=validate_proposal), str(tmp_path / "s.sock"), LogHub(),
                    dataplane=False)
    db = tmp_path / "state" / "leases.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    lease = daemon.pools.acquire(["rw4"], Identity.parse("alice@corp.example"), 4, None, ("192.0.2.9", 4500))
    assert lease is not None and str(lease.address) == "10.3.0.1"
    result = asyncio.run(daemon.handlers.list_pools(True, None))
    assert result["pools"][0]["leases"][0]["identity"] == "alice@corp.example"
    with pytest.raises(ControlError, match="no pool named 'nope'"):
        asyncio.run(daemon.handlers.list_pools(False, "nope"))
    # a reload that shrinks the pool keeps the online lease inside it
    path.write_text(path.read_text().replace("10.3.0.0/29", "10.3.0.1-10.3.0.2"))
    assert asyncio.run(daemon.reload())["changed"] == []  # the connection itself did not change
    assert asyncio.run(daemon.handlers.list_pools(False, None))["pools"][0]["size"] == 2
    daemon.pools.close()


def test_no_lease_file_without_pools_and_an_unusable_one_is_an_error(tmp_path: Path) -> None:
    doc = ipsecd_config(local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"])
    doc["settings"] = {"lease_db": str(tmp_path / "leases.db")}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    Daemon(load_config(tmp_path / "a.yaml"), str(tmp_path / "s.sock"), LogHub(), dataplane=False)
    assert not (tmp_path / "leases.db").exists()
    (tmp_path / "blocker").write_text("a file where a directory should be")
    path = _gateway_config(tmp_path)
    path.write_text(path.read_text().replace(str(tmp_path / "state"), str(tmp_path / "blocker")))
    with pytest.raises(ConfigError, match="cannot open the lease database"):
        Daemon(load_config(path), str(tmp_path / "s.sock"), LogHub(), dataplane=False)


def test_the_first_pools_come_by_reload_and_find_the_stored_leases(tmp_path: Path) -> None:
    # an earlier run left a lease in the file
    path = _gateway_config(tmp_path)
    first = Daemon(load_config(path), str(tmp_path / "s.sock"), LogHub(), dataplane=False)
    lease = first.pools.acquire(["rw4"], Identity.parse("alice@corp.example"), 4, None, ("192.0.2.9", 4500))
    assert lease is not None
    first.pools.release(lease)
    first.pools.close()
    # this run starts without pools, then a reload adds them
    plain = yaml.safe_load(path.read_text())
    del plain["pools"]
    plain["connections"]["peer"].pop("pools")
    path.write_text(yaml.safe_dump(plain))
    daemon = Daemon(load_config(path), str(tmp_path / "s.sock"), LogHub(), dataplane=False)
    _gateway_config(tmp_path)
    asyncio.run(daemon.reload())
    again = daemon.pools.acquire(["rw4"], Identity.parse("alice@corp.example"), 4, None, ("192.0.2.9", 4500))
    assert again is not None and str(again.address) == "10.3.0.1"
    assert asyncio.run(daemon.handlers.list_pools(True, None))["pools"][0]["online"] == 1
    daemon.pools.close()
