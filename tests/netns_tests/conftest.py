"""Fixtures for two-ipsecd tests: the interop factories and topologies, so cleanup and log tails work the same way."""

from __future__ import annotations

from tests.interop.conftest import ipsecd_factory, pytest_runtest_makereport  # noqa: F401  (re-exported)
from tests.netns import nat_topology, topology  # noqa: F401  (fixtures re-exported)
