"""Fixtures for the hostile-network tests: the control-socket fixtures of tests/test_control.py."""

from __future__ import annotations

from tests.test_control import loop, running, short_dir  # noqa: F401  (fixtures re-exported)
