"""ConnectionPolicy's restarts against keyingtries: a failed setup is the engine's to retry.

The policy restarts a connection only after an *established* IKE SA was lost (dpd_action,
close_action, start_action start); a setup that failed before its IKE SA came up is retried
(or not) by the engine as keyingtries says (ipsecd/ike/keying.py). The policy's timer is
asyncio's ``call_later``: recorded here instead of run.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ipsecd.ike.events import Cause, IkeSaClosed, InitiationFailed
from ipsecd.shell import policy as policy_mod
from ipsecd.shell.policy import RESTART_DELAY, ConnectionPolicy


class Loop:
    def __init__(self) -> None:
        self.later: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.later.append((delay, fn, args))


def _policy(monkeypatch: pytest.MonkeyPatch, *, start_action: str = "start", close_action: str = "none",
            dpd_action: str = "clear") -> tuple[ConnectionPolicy, Loop, list[str]]:
    loop = Loop()
    monkeypatch.setattr(policy_mod.asyncio, "get_running_loop", lambda: loop)
    child = SimpleNamespace(start_action=start_action, close_action=close_action)
    conn = SimpleNamespace(children={"net": child}, remote_addrs=["192.0.2.2"])
    config = SimpleNamespace(connections={"peer": conn})
    cancelled: list[str] = []
    manager = SimpleNamespace(
        table=SimpleNamespace(of_connection=lambda name: []),
        connection=lambda name: SimpleNamespace(dpd_action=dpd_action),
        keying=SimpleNamespace(cancel=lambda: cancelled.append("all")))
    shell = SimpleNamespace(manager=manager)
    return ConnectionPolicy(shell, None, lambda: config), loop, cancelled  # type: ignore[arg-type]


@pytest.mark.parametrize("cause", [Cause.TIMEOUT, Cause.AUTH_FAILED, Cause.NO_PROPOSAL, Cause.PEER_REFUSED])
def test_a_failed_setup_is_not_restarted_every_5_s_any_more(monkeypatch: pytest.MonkeyPatch, cause: Cause) -> None:
    policy, loop, _ = _policy(monkeypatch)
    policy.on_event(IkeSaClosed(1, "peer", cause, "no", established=False))
    policy.on_event(InitiationFailed("peer", None, 1, cause, "no", 1))
    assert loop.later == []


@pytest.mark.parametrize(("cause", "kw"), [
    (Cause.PEER_DEAD, {"dpd_action": "restart"}),
    (Cause.DELETED_BY_PEER, {"close_action": "start"}),
    (Cause.EXPIRED, {}),  # start_action start: a lost tunnel comes back
])
def test_a_lost_established_sa_is_restarted(monkeypatch: pytest.MonkeyPatch, cause: Cause, kw: dict[str, str]) -> None:
    policy, loop, _ = _policy(monkeypatch, **kw)
    policy.on_event(IkeSaClosed(1, "peer", cause, "gone", established=True))
    assert [(d, args) for d, _, args in loop.later] == [(RESTART_DELAY, ("peer",))]


def test_stop_drops_the_engines_waiting_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    policy, _, cancelled = _policy(monkeypatch)
    monkeypatch.undo()  # the real loop for asyncio.run
    asyncio.run(policy.stop())
    assert cancelled == ["all"] and policy.stopping
