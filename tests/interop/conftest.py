"""Fixtures for interop tests: namespaces, charon and ipsecd instances that always get cleaned up.

Each factory fixture remembers what it started and stops it in teardown, whatever the
test's outcome; when the test failed, the tail of every log is printed so the
failure report shows what charon and ipsecd were saying (the full logs stay in
pytest's tmp_path).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ipsecd_proc import Ipsecd, why_no_ipsecd
from tests.netns import Netns, nat_topology, topology  # noqa: F401  (fixtures re-exported)
from tests.strongswan import Charon, ConnParams, why_no_strongswan


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Remember each phase's report on the item so fixtures can tell a failed test in teardown."""
    rep: pytest.TestReport = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def charon_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Charon]]:
    """``make(ns, conn, name="a", start=True, **kw) -> Charon``; all stopped at teardown."""
    why = why_no_strongswan()
    if why:
        pytest.skip(why)
    made: list[Charon] = []

    def make(ns: Netns, conn: ConnParams, name: str = "charon", start: bool = True, **kw: Any) -> Charon:
        ch = Charon(ns, tmp_path / name, conn, **kw)
        made.append(ch)
        if start:
            ch.start()
        return ch

    try:
        yield make
    finally:
        failed = _failed(request)
        for ch in made:
            if failed:
                print(ch.log_tail(80))
            ch.stop()


@pytest.fixture
def ipsecd_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Ipsecd]]:
    """``make(ns, config, name="ipsecd", start=True) -> Ipsecd``; skipped until the daemon exists."""
    why = why_no_ipsecd()
    if why:
        pytest.skip(why)
    made: list[Ipsecd] = []

    def make(ns: Netns, config: dict[str, Any], name: str = "ipsecd", start: bool = True, **kw: Any) -> Ipsecd:
        d = Ipsecd(ns, tmp_path / name, config, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    try:
        yield make
    finally:
        failed = _failed(request)
        for d in made:
            if failed:
                print(d.log_tail(80))
            d.stop()
