"""Coverage-guided fuzzing of the targets in tests/fuzz/targets.py with atheris (libFuzzer).

    python -m tests.fuzz.run [--seconds N] [--workdir DIR] [--crashes DIR] [TARGET ...]

Each target runs in its own process for ``--seconds`` (atheris ends the process when
it stops). The seed corpus is generated from real handshakes first (nothing with keys
is committed); the evolving corpus stays in ``--workdir`` (default ``.fuzz/``, ignored
by git) so later runs continue where earlier ones stopped. A crashing or hanging input
is written to ``--crashes`` (default tests/fuzz/crashes/) as ``<target>-crash-<sha1>``
or ``<target>-timeout-<sha1>``; tests/fuzz/test_fuzz.py replays every file there. After
a crash the target is restarted for the rest of its time (at most MAX_CRASHES times).

The last line of output per target is a JSON summary (executions, seconds, coverage,
corpus size, crashes); ``--json FILE`` also writes all summaries to FILE. The exit
status is 1 when anything crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_WORKDIR = ROOT / ".fuzz"
DEFAULT_CRASHES = HERE / "crashes"
MAX_CRASHES = 5
INPUT_TIMEOUT = 10  # seconds per input before libFuzzer calls it a hang
MAX_LEN = 4096  # IKE messages past this are refused by the front door anyway; ESP inputs are packets

_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_PROGRESS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


@dataclass
class Summary:
    target: str
    executions: int = 0
    seconds: float = 0.0
    coverage: int = 0  # libFuzzer "cov": instrumented edges seen
    features: int = 0  # libFuzzer "ft"
    corpus: int = 0
    crashes: list[str] = field(default_factory=list)
    runs: int = 0

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def write_seeds(target: str, directory: Path) -> int:
    """Write the target's seed corpus (regenerated every run) and return how many."""
    from tests.fuzz.targets import TARGETS

    t = TARGETS[target]
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    n = 0
    for seed in t.seeds(t.make()):
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        n += 1
    return n


def _child(target: str, libfuzzer_args: list[str]) -> None:
    """Inside the fuzzing process: instrument ipsecd, then hand over to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["ipsecd"]):
        from tests.fuzz import targets
    fn = targets.TARGETS[target].make()
    atheris.Setup([sys.argv[0], *libfuzzer_args], fn)
    atheris.Fuzz()


def _parse(output: str, summary: Summary) -> None:
    stats = {k: int(v) for k, v in _STAT.findall(output)}
    done = _DONE.findall(output) or _PROGRESS.findall(output)
    if "number_of_executed_units" in stats:
        summary.executions += stats["number_of_executed_units"]
    elif done:
        summary.executions += int(done[-1][0])
    if done:
        _, cov, ft, corp = (int(x) for x in done[-1])
        summary.coverage = max(summary.coverage, cov)
        summary.features = max(summary.features, ft)
        summary.corpus = corp


def fuzz(target: str, seconds: float, workdir: Path, crashes: Path, log: Path | None = None) -> Summary:
    """Fuzz one target for ``seconds`` (restarting after crashes); returns what happened."""
    summary = Summary(target)
    seeds, corpus = workdir / target / "seeds", workdir / target / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    write_seeds(target, seeds)
    end = time.monotonic() + seconds
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    while (left := end - time.monotonic()) > 1 and len(summary.crashes) < MAX_CRASHES:
        before = set(crashes.iterdir())
        args = [str(corpus), str(seeds), f"-max_total_time={int(left)}", f"-timeout={INPUT_TIMEOUT}",
                f"-max_len={MAX_LEN}", f"-artifact_prefix={crashes}/{target}-", "-print_final_stats=1",
                "-rss_limit_mb=2048"]
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--child", target, "--", *args],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        summary.seconds += time.monotonic() - t0
        summary.runs += 1
        output = res.stdout + res.stderr
        if log is not None:
            with log.open("a") as fh:
                fh.write(output)
        _parse(output, summary)
        new = sorted(os.path.relpath(p, ROOT) for p in set(crashes.iterdir()) - before)
        summary.crashes.extend(new)
        if res.returncode != 0 and not new:
            raise RuntimeError(f"fuzzer for {target} failed (exit {res.returncode}):\n{output[-3000:]}")
        if res.returncode == 0:
            break
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        rest = argv[2:]
        _child(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    from tests.fuzz.targets import TARGETS

    p = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all ({', '.join(TARGETS)})")
    p.add_argument("--seconds", type=float, default=180.0, help="per target (default 180)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="corpora (default .fuzz/)")
    p.add_argument("--crashes", type=Path, default=DEFAULT_CRASHES, help="where crashing inputs go")
    p.add_argument("--json", type=Path, default=None, help="also write the summaries to this file")
    p.add_argument("--log", type=Path, default=None, help="append libFuzzer's output to this file")
    args = p.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)} (have: {', '.join(TARGETS)})")
    results = []
    for name in names:
        s = fuzz(name, args.seconds, args.workdir.resolve(), args.crashes.resolve(), args.log)
        results.append(s)
        print(json.dumps({**asdict(s), "exec_per_s": round(s.rate)}), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([{**asdict(s), "exec_per_s": round(s.rate)} for s in results], indent=1))
    crashed = [c for s in results for c in s.crashes]
    if crashed:
        print("crashing inputs (replayed by tests/fuzz/test_fuzz.py):\n  " + "\n  ".join(crashed), file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
