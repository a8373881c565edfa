"""The fuzz targets in ``make test``: every saved crash input replays clean, seeds pass, atheris runs.

The long runs are ``make fuzz`` (FUZZ_SECONDS per target); this is the short smoke
that keeps the harness working and the fixed bugs fixed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.run import DEFAULT_CRASHES, ROOT
from tests.fuzz.targets import TARGETS

SMOKE_SECONDS = 2  # per target; four targets plus interpreter start-up stay under 30 s

# file name -> why it still fails (a bug in code this branch may not change). The entry must
# go once the bug is fixed: test_known_bugs_still_fail says so.
KNOWN_BUGS: dict[str, str] = {}


def _saved() -> list[Path]:
    return sorted(p for p in DEFAULT_CRASHES.glob("*-*") if p.name.split("-")[0] in TARGETS)


def _replay(path: Path) -> None:
    TARGETS[path.name.split("-")[0]].make()(path.read_bytes())


def test_saved_crash_inputs_replay_clean() -> None:
    """Every input a fuzzing run saved, except the known open bugs, runs through its target cleanly."""
    failures = []
    for path in _saved():
        if path.name in KNOWN_BUGS:
            continue
        try:
            _replay(path)
        except Exception as e:  # collect them all: one report names every regression
            failures.append(f"{path.name}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_known_bugs_still_fail() -> None:
    """A known bug that no longer fails was fixed: remove it from KNOWN_BUGS (the replay then guards it)."""
    fixed = []
    for name in KNOWN_BUGS:
        try:
            _replay(DEFAULT_CRASHES / name)
        except Exception:
            continue
        fixed.append(name)
    assert not fixed, f"fixed, remove from KNOWN_BUGS: {fixed}"


@pytest.mark.parametrize("name", list(TARGETS))
def test_seeds_pass(name: str) -> None:
    t = TARGETS[name]
    target = t.make()
    seeds = list(t.seeds(target))
    assert len(seeds) >= 5, f"{name}: only {len(seeds)} seeds"
    for seed in seeds:
        target(seed)


def test_every_target_detects_a_planted_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that cannot fail finds nothing: an exception the code lets out must surface."""
    import ipsecd.esp.sa

    def broken(self: object, *a: object, **kw: object) -> bytes:
        raise IndexError("planted")

    monkeypatch.setattr(ipsecd.esp.sa.InboundSa, "unprotect", broken)
    seed = next(iter(TARGETS["esp"].seeds(TARGETS["esp"].make())))
    with pytest.raises(IndexError, match="planted"):
        TARGETS["esp"].make()(seed)


def test_swallowed_engine_errors_are_bugs() -> None:
    """The IKE manager catches every exception per datagram and logs it: the targets must still fail."""
    import logging

    from tests.fuzz.targets import FuzzBug, engine_errors

    root = logging.getLogger("ipsecd")
    before = (root.level, root.propagate, list(root.handlers))
    with pytest.raises(FuzzBug, match="planted"), engine_errors("responder"):
        try:
            raise KeyError("planted")
        except KeyError:
            logging.getLogger("ipsecd.ike").debug("internal error", exc_info=True)
    with engine_errors("quiet"):
        logging.getLogger("ipsecd.ike").debug("no traceback, no bug")
    assert (root.level, root.propagate, list(root.handlers)) == before  # logging left as it was


def test_atheris_smoke(tmp_path: Path) -> None:
    """``make fuzz`` in miniature: every target runs under atheris and reports its numbers."""
    res = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--seconds", str(SMOKE_SECONDS),
                          "--workdir", str(tmp_path / "work"), "--crashes", str(tmp_path / "crashes"),
                          "--json", str(tmp_path / "stats.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [s["target"] for s in stats] == list(TARGETS)
    for s in stats:
        assert s["executions"] > 0 and s["coverage"] > 0 and not s["crashes"], s
