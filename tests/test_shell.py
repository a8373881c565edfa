"""The asyncio shell around the engine: ordering of installs and IKE datagrams, per IKE SA.

A real IkeManager answers a real initiator; the data plane and the UDP transport are
fakes that record calls, and the data plane's installs wait on gates the test opens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pytest

from ipsecd.ike.events import Cause, ChildSaEstablished, IkeSaMoved
from ipsecd.ike.manager import IkeManager
from ipsecd.shell.ike_shell import IkeShell, TaskSet
from ipsecd.shell.installer import ChildSaInstaller
from ipsecd.shell.stats import ShellStats
from tests.ike_pair import A_ADDR, B_ADDR, make_settings, make_settings_b

A = (A_ADDR, 500)
B = (B_ADDR, 500)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []

    def send(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self.sent.append((data, local, remote))


class FakeDataPlane:
    """Records calls; installs wait on ``gate`` (open by default) and may fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def _step(self, what: str) -> None:
        self.calls.append(f"{what}:start")
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.calls.append(f"{what}:done")

    async def install_inbound(self, reqid: int, inbound: Any, lifetime: Any = None, **kw: Any) -> None:
        await self._step("inbound")

    async def install_child_sa(self, inbound: Any, outbound: Any, reqid: int, policies: Any, **kw: Any) -> int:
        await self._step("child_sa")
        return 1400

    async def update_sa_peer(self, reqid: int, addr: Any, port: int = 4500, local: Any = None) -> None:
        self.calls.append("update_peer")

    async def delete_child_sa(self, reqid: int) -> None:
        self.calls.append("delete")

    async def set_keepalive(self, *a: Any) -> None:
        self.calls.append("keepalive")


class _Config:
    class settings:  # the attribute path the installer reads
        keep_alive = 20.0

    connections: dict[str, Any] = {}


def _shell(dataplane: FakeDataPlane) -> tuple[IkeShell, FakeTransport, ChildSaInstaller]:
    transport = FakeTransport()
    shell = IkeShell(IkeManager([make_settings_b()], now=0.0), transport, ShellStats())  # type: ignore[arg-type]
    installer = ChildSaInstaller(shell, dataplane, lambda: _Config)  # type: ignore[arg-type,return-value]
    installer.ready.set()
    shell.installer = installer
    return shell, transport, installer


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"condition never became true: {cond.__code__.co_consts}")


def _exchange(initiator: IkeManager, shell: IkeShell, transport: FakeTransport, now: Callable[[], float]
              ) -> list[bytes]:
    """Deliver the initiator's datagrams to the shell; return what the shell sent back meanwhile."""
    before = len(transport.sent)
    for d in initiator.datagrams_to_send():
        shell.on_datagram(d.data, B, A)
    return [x[0] for x in transport.sent[before:]]


def test_response_waits_for_its_inbound_sa_and_only_it() -> None:
    async def main() -> None:
        dp = FakeDataPlane()
        shell, transport, _ = _shell(dp)
        a = IkeManager([make_settings()], now=0.0)
        a.initiate("conn", 0.0)
        (init_resp,) = _exchange(a, shell, transport, lambda: 0.0)
        a.receive_datagram(init_resp, A, B, 0.0)
        auth = a.datagrams_to_send()
        dp.gate.clear()  # the data plane is slow
        shell.on_datagram(auth[0].data, B, A)
        assert transport.sent[-1][0] == init_resp  # the IKE_AUTH response is held
        # a retransmitted IKE_AUTH request is answered from the cache: held as well
        shell.on_datagram(auth[0].data, B, A)
        assert transport.sent[-1][0] == init_resp
        # another peer's IKE_SA_INIT is answered at once: no datagram of another SA waits
        c = IkeManager([make_settings()], now=0.0)
        c.initiate("conn", 0.0)
        (other,) = _exchange(c, shell, transport, lambda: 0.0)
        assert other != init_resp
        await _until(lambda: dp.calls == ["child_sa:start"])
        await asyncio.sleep(0.01)
        assert dp.calls == ["child_sa:start"] and transport.sent[-1][0] == other
        dp.gate.set()
        await _until(lambda: len(dp.calls) >= 2)
        held = [x[0] for x in transport.sent[-2:]]
        assert held[0] == held[1] and held[0] not in (init_resp, other)
        # the response left once the Child SA was in the data plane
        assert dp.calls[:2] == ["child_sa:start", "child_sa:done"]
        a.receive_datagram(held[0], A, B, 0.0)
        assert any(isinstance(e, ChildSaEstablished) for e in iter(a.next_event, None))
        shell.close()

    asyncio.run(main())


def test_peer_move_waits_for_the_install_it_applies_to() -> None:
    """The bug seen against strongSwan: UpdateSaPeer raced the install and failed."""
    async def main() -> None:
        dp = FakeDataPlane()
        shell, _transport, installer = _shell(dp)
        a = IkeManager([make_settings()], now=0.0)
        a.initiate("conn", 0.0)
        for _ in range(3):  # IKE_SA_INIT, IKE_AUTH; B answers, A installs
            for d in a.datagrams_to_send():
                shell.on_datagram(d.data, B, A)
            for d in shell.transport.sent:  # type: ignore[attr-defined]
                a.receive_datagram(d[0], A, B, 0.0)
            shell.transport.sent.clear()  # type: ignore[attr-defined]
        ev = next(e for e in installer.children.values())
        await _until(lambda: "child_sa:done" in dp.calls)  # the real Child SA is in
        dp.gate.clear()
        dp.calls.clear()
        installer.on_event(dataclasses.replace(ev, spi_in=b"\x01\x02\x03\x04", reqid=77, initiator=True))
        installer.on_event(IkeSaMoved(ev.ike_sa_id, ev.name, B, ("198.51.100.7", 4500), (77,)))
        await _until(lambda: dp.calls == ["child_sa:start"])
        await asyncio.sleep(0.01)
        assert dp.calls == ["child_sa:start"]
        dp.gate.set()
        await _until(lambda: "update_peer" in dp.calls)
        assert dp.calls == ["child_sa:start", "child_sa:done", "update_peer"]
        shell.close()

    asyncio.run(main())


def test_failed_install_fails_the_child_sa(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        dp = FakeDataPlane()
        dp.fail = OSError(22, "Invalid argument")
        shell, transport, installer = _shell(dp)
        a = IkeManager([make_settings()], now=0.0)
        a.initiate("conn", 0.0)
        for _ in range(2):
            for d in a.datagrams_to_send():
                shell.on_datagram(d.data, B, A)
            await asyncio.sleep(0.01)
            for d in transport.sent:
                a.receive_datagram(d[0], A, B, 0.0)
            transport.sent.clear()
        await _until(lambda: installer.install_failures == 1)
        (sa,) = shell.manager.list_sas()
        assert [c.state.value for c in sa.children] == ["DELETING"]  # our Delete is on its way
        assert shell.stats.events.get("child_sa_install_failures") == 1
        for d in transport.sent:  # the peer answers the Delete
            a.receive_datagram(d[0], A, B, 0.0)
        for d in a.datagrams_to_send():
            shell.on_datagram(d.data, B, A)
        assert not sa.children
        shell.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "the data plane refused it" in caplog.text
    assert Cause.INSTALL_FAILED.value == "install_failed"


def test_a_failing_background_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise RuntimeError("no outbound SA for reqid 1")

    async def main() -> None:
        tasks = TaskSet()
        tasks.spawn(boom(), "peer update")
        for _ in range(3):
            await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "peer update failed: RuntimeError: no outbound SA for reqid 1" in caplog.text


def test_a_batch_answers_existing_sas_before_new_ones() -> None:
    """One wake-up holding IKE_SA_INITs and an IKE_AUTH: the IKE_AUTH is answered (and its
    response sent) before any new SA's key exchange is computed; the new ones keep their order."""
    from ipsecd.ike.frontdoor import opens_ike_sa
    from ipsecd.ike.message import decode_header

    async def main() -> None:
        shell, transport, _ = _shell(FakeDataPlane())
        a = IkeManager([make_settings()], now=0.0)
        a.initiate("conn", 0.0)
        (init_resp,) = _exchange(a, shell, transport, lambda: 0.0)
        a.receive_datagram(init_resp, A, B, 0.0)
        (auth,) = a.datagrams_to_send()
        news = []
        for _ in range(2):
            c = IkeManager([make_settings()], now=0.0)
            c.initiate("conn", 0.0)
            (req,) = c.datagrams_to_send()
            news.append(req.data)
        assert all(opens_ike_sa(d) for d in news) and not opens_ike_sa(auth.data)
        assert not opens_ike_sa(init_resp)  # a response never opens anything
        before = len(transport.sent)
        shell.on_datagrams([(news[0], B, A), (auth.data, B, A), (news[1], B, A)])
        await _until(lambda: len(transport.sent) >= before + 3)
        out = [decode_header(x[0]) for x in transport.sent[before:]]
        assert [h.exchange for h in out] == [35, 34, 34]  # IKE_AUTH first, then both IKE_SA_INITs
        assert [h.spi_i for h in out[1:]] == [decode_header(d).spi_i for d in news]

    asyncio.run(main())


def test_traffic_watch_notes_the_heard_spis_and_spares_dpd(monkeypatch: pytest.MonkeyPatch) -> None:
    """ESP on a Child SA (GetHeard's answer) postpones DPD of its IKE SA (RFC 7296 2.4); an SPI
    this process does not own (another IKE shard's) is ignored."""
    import ipsecd.shell.installer as installer_mod

    async def main() -> None:
        dp = FakeDataPlane()
        shell, transport, installer = _shell(dp)
        a = IkeManager([make_settings()], now=0.0)
        a.initiate("conn", 0.0)
        (init_resp,) = _exchange(a, shell, transport, lambda: 0.0)
        a.receive_datagram(init_resp, A, B, 0.0)
        for d in a.datagrams_to_send():
            shell.on_datagram(d.data, B, A)
        await _until(lambda: "child_sa:done" in dp.calls)
        (sa,) = shell.manager.sas.values()
        (child,) = sa.children
        spi_in = int.from_bytes(child.event.spi_in, "big")
        polls: list[int] = []

        async def heard() -> set[int]:
            polls.append(1)
            return {spi_in, 0xDEADBEEF} if len(polls) == 1 else set()

        dp.heard = heard  # type: ignore[attr-defined]
        monkeypatch.setattr(installer_mod, "TRAFFIC_POLL", 0.0)
        before = sa.last_traffic_in
        task = asyncio.ensure_future(installer.watch_inbound_traffic())
        await _until(lambda: len(polls) >= 2)
        assert sa.last_traffic_in > before  # the peer is heard: its DPD deadline moved
        heard_at = sa.last_traffic_in
        await _until(lambda: len(polls) >= 4)
        assert sa.last_traffic_in == heard_at  # nothing heard since: DPD may probe when due
        task.cancel()
        shell.close()

    asyncio.run(main())
