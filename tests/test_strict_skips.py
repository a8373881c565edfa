"""tests/strict_skips.py: under make test (IPSECD_STRICT_SKIPS=1) a skip for a missing tool fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.strict_skips import ACCEPTED_SKIPS, accepted

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SAMPLE = '''
import pytest

def test_needs_a_tool():
    pytest.skip("needs tshark")

@pytest.mark.skipif(True, reason="needs strongSwan (/usr/lib/ipsec/charon missing)")
def test_marked():
    pass

def test_old_wireshark():
    pytest.skip("this Wireshark predates ChaCha20-Poly1305 in esp_sa")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
'''


def _run(tmp_path: Path, strict: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "IPSECD_STRICT_SKIPS"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only this plugin: faster, and nothing else decides
    if strict is not None:
        env["IPSECD_STRICT_SKIPS"] = strict
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.strict_skips",
                           "-p", "no:cacheprovider", "test_sample.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_strict_run_fails_on_skips_for_missing_tools(tmp_path: Path) -> None:
    res = _run(tmp_path, "1")
    assert res.returncode == 1, res.stdout + res.stderr
    # a skip while setting up (skipif, a fixture's pytest.skip) fails as an error, one in the test as a failure
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in res.stdout, res.stdout
    assert "skipped under make test (IPSECD_STRICT_SKIPS=1): needs tshark" in res.stdout
    assert "skipped under make test (IPSECD_STRICT_SKIPS=1): needs strongSwan" in res.stdout
    assert "FAILED test_sample.py::test_needs_a_tool" in res.stdout
    assert "ERROR test_sample.py::test_marked" in res.stdout


def test_without_strict_mode_skips_stay_skips(tmp_path: Path) -> None:
    res = _run(tmp_path, "0")  # what make test sets when it does not run as root
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 3 skipped, 1 xfailed" in res.stdout, res.stdout


def test_accepted_skips_are_only_what_no_package_can_cure() -> None:
    assert accepted("this Wireshark has no sequence-number-length column in esp_sa, so no ESN (4.0 has none)")
    assert accepted("needs /dev/net/tun")
    assert accepted("the test process lacks capabilities (restricted container)")
    for missing in ("needs tshark", "needs iproute2 (ip)", "needs swanctl (strongswan-swanctl)",
                    "needs strongSwan (make test installs it)", "needs the user 'nobody'", "needs root",
                    "ipsecd daemon not built yet (import failed: No module named 'yaml')"):
        assert not accepted(missing), missing
    assert all(why for _pattern, why in ACCEPTED_SKIPS)


def test_make_test_turns_strict_mode_on_as_root() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    test_rule = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert 'IPSECD_STRICT_SKIPS=$$([ "$$(id -u)" = 0 ] && echo 1 || echo 0)' in test_rule
