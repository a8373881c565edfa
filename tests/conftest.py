"""Shared pytest setup: namespace and interop tests need root, iproute2 and (for interop) strongSwan;
under make test as root a skip for anything missing fails the run (tests/strict_skips.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.netns import lossy_topology, nat_topology, topology  # noqa: F401  (fixtures shared by namespace tests)
from tests.pki import KeyPool, TestPki
from tests.strict_skips import pytest_runtest_makereport  # noqa: F401  (make test: skips fail)


def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_netns = _why_no_netns()
    no_charon = None if os.path.exists("/usr/lib/ipsec/charon") else "needs strongSwan (make test installs it)"
    for item in items:
        if no_netns and ("netns" in item.keywords or "interop" in item.keywords):
            item.add_marker(pytest.mark.skip(reason=no_netns))
        elif no_charon and "interop" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=no_charon))


@pytest.fixture(scope="session")
def key_pool() -> KeyPool:
    """Test keys shared by the whole run: RSA-4096 takes about a second to make (tests/pki.py)."""
    return KeyPool()


@pytest.fixture
def pki(key_pool: KeyPool) -> TestPki:
    """A test PKI around the current time, with keys from the shared pool."""
    return TestPki(keys=key_pool)
