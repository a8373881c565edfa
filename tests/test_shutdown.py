"""Shutdown deletes every IKE SA in a window and within a budget (ipsecd/shell/shutdown.py, issue 11)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ipsecd.ike.events import Cause
from ipsecd.shell.shutdown import delete_all, wait_budget


@dataclass
class _Sa:
    ike_sa_id: int


@dataclass
class _Manager:
    """IKE SAs that go away ``answer_after`` seconds after their Delete (None: never answered)."""

    answer_after: float | None
    sas: dict[int, _Sa] = field(default_factory=dict)
    deletes: list[int] = field(default_factory=list)
    max_outstanding: int = 0
    _outstanding: set[int] = field(default_factory=set)

    def list_sas(self) -> list[_Sa]:
        return list(self.sas.values())

    def delete_ike(self, ike_sa_id: int, now: float, cause: Cause, reason: str) -> bool:
        self.deletes.append(ike_sa_id)
        self._outstanding.add(ike_sa_id)
        self.max_outstanding = max(self.max_outstanding, len(self._outstanding))
        if self.answer_after is not None:
            asyncio.get_running_loop().call_later(self.answer_after, self._gone, ike_sa_id)
        return True

    def _gone(self, ike_sa_id: int) -> None:
        self.sas.pop(ike_sa_id, None)
        self._outstanding.discard(ike_sa_id)


@dataclass
class _Shell:
    manager: _Manager

    def act(self, job: Any) -> Any:
        return job(self.manager, 0.0)


def _run(manager: _Manager, budget: float, window: int) -> Any:
    async def main() -> Any:
        return await delete_all(_Shell(manager), budget, window)  # type: ignore[arg-type]

    return asyncio.run(main())


def test_deletes_go_out_in_a_window_until_every_sa_is_gone() -> None:
    m = _Manager(answer_after=0.001, sas={i: _Sa(i) for i in range(1, 2001)})
    report = _run(m, budget=20.0, window=100)
    assert not m.sas and report.left == 0
    assert report.held == report.deleted == 2000 and sorted(m.deletes) == list(range(1, 2001))
    assert m.deletes[:3] == [1, 2, 3]  # the oldest first
    assert m.max_outstanding <= 100


def test_unanswered_deletes_cost_the_budget_and_no_more() -> None:
    m = _Manager(answer_after=None, sas={i: _Sa(i) for i in range(1, 5001)})
    report = _run(m, budget=0.3, window=128)
    assert report.left == 5000 and report.deleted == 128  # the window never opened further
    assert 0.3 <= report.seconds < 1.5


def test_the_budget_grows_with_the_sas_held_up_to_a_cap() -> None:
    assert wait_budget(0, 2.0, 0.002, 20.0) == 2.0
    assert wait_budget(5000, 2.0, 0.002, 20.0) == 12.0
    assert wait_budget(50000, 2.0, 0.002, 20.0) == 20.0

