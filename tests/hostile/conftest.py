"""Fixtures for the hostile-network tests: the control-socket fixtures of tests/test_control.py."""

from __future__ import annotations

from tests.interop.conftest import (  # noqa: F401  (fixtures and the report hook re-exported)
    charon_factory,
    ipsecd_factory,
    pytest_runtest_makereport,
)
from tests.test_control import loop, running, short_dir  # noqa: F401  (fixtures re-exported)
