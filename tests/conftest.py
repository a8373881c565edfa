"""Shared pytest setup: namespace and interop tests need root, iproute2 and (for interop) strongSwan."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.netns import lossy_topology, nat_topology, topology  # noqa: F401  (fixtures shared by namespace tests)


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
