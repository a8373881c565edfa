"""Loud skips: under ``make test`` as root, a test skipped for something missing fails the run.

``make test`` installs every package the tests use (the Makefile's APT_PACKAGES and the
``test`` extra), and the Makefile sets ``IPSECD_STRICT_SKIPS=1`` when it runs as root, as CI
does. A skip such as "needs tshark" or "needs strongSwan" then means a package fell out of the
Makefile or a test started to need a new one: this plugin reports it as a failure instead of
one more line in the skip summary. The few skips no package can cure are listed in
ACCEPTED_SKIPS, each with the reason; anything else is refused, so a new kind of skip has to
be argued for here.

Without the variable (a developer's ``pytest`` run, ``make test`` as a normal user) skips stay skips.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator

import pytest

STRICT_ENV = "IPSECD_STRICT_SKIPS"

ACCEPTED_SKIPS: tuple[tuple[str, str], ...] = (
    # (regular expression searched in the skip reason, why installing packages cannot help)
    (r"^this Wireshark (predates|has no) ", "the distribution's tshark is too old to have that esp_sa column"),
    (r"^needs /dev/net/tun$", "the kernel or container offers no TUN device"),
    (r"restricted container", "the container withholds capabilities even from root"),
    (r"^`ip netns` unavailable", "the container does not allow network namespaces"),
)


def strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def accepted(reason: str) -> bool:
    return any(re.search(pattern, reason) for pattern, _why in ACCEPTED_SKIPS)


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    report = yield
    if not (isinstance(report, pytest.TestReport) and report.skipped) or hasattr(report, "wasxfail"):
        return report
    reason = skip_reason(report)
    if strict() and not accepted(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under make test ({STRICT_ENV}=1): {reason}\n"
            "make test installs what the tests need: add the missing package to the Makefile's "
            "APT_PACKAGES or the test extra in pyproject.toml (or, if no package can help, argue "
            "for the skip in tests/strict_skips.py ACCEPTED_SKIPS)"
        )
    return report
