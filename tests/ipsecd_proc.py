"""Run ipsecd (our daemon) inside a test namespace and query it through ipsecctl.

The YAML written here follows the configuration contract (swanctl vocabulary:
``connections.<name>.{local_addrs, remote_addrs, proposals, local, remote, children}``
and ``secrets.ike``) so interop tests can describe both peers with the same words.
The daemon is started from the project's venv with ``python -m ipsecd`` and the
working directory at the project root, so the tree under test is what runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement

from tests.netns import Netns, established_sa, kill_group, read_log

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUN_PATH_MAX = 107


def venv_python() -> str:
    """The venv interpreter: the one running the tests if it is the project's, else .venv/bin/python."""
    candidate = PROJECT_ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


@dataclass(frozen=True)
class Runtime:
    """How a daemon is started: ``python -m ipsecd`` in ``root`` (the tree ipsecd is imported from)."""

    python: str
    root: Path
    pythonpath: str


def project_runtime() -> Runtime:
    """The tree under test with the project's venv."""
    return Runtime(venv_python(), PROJECT_ROOT, str(PROJECT_ROOT))


def world_readable_runtime(dest: Path, user: str = "nobody") -> Runtime:
    """A copy of ipsecd and its runtime packages under ``dest`` that ``user`` can read, for ``--user``.

    After the drop the daemon and its data-plane worker still import modules, and the worker
    is a new ``python -m`` process: as ``user`` they must reach the code. A checkout or venv
    under a private directory (/root is 0700 on many machines) cannot be reached; a copy of
    the package and of the distributions pyproject.toml requires (and what they require)
    can, without opening up anybody's home. ``dest`` must itself be reachable (e.g. in /tmp).
    """
    src, site = dest / "src", dest / "site"
    shutil.copytree(PROJECT_ROOT / "ipsecd", src / "ipsecd", ignore=shutil.ignore_patterns("__pycache__"))
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo, done = [Requirement(r) for r in deps], set()
    while todo:
        req = todo.pop()
        if req.name.lower() in done or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        done.add(req.name.lower())
        dist = importlib.metadata.distribution(req.name)
        for f in dist.files or ():
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue  # console scripts outside site-packages; caches
            target = site / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(dist.locate_file(f))), target)
        todo += [Requirement(r) for r in dist.requires or ()]
    for d, _dirs, files in os.walk(dest):  # whatever the umask was
        os.chmod(d, 0o755)
        for name in files:
            path = os.path.join(d, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)
    return Runtime(_interpreter_for(user), src, os.pathsep.join((str(src), str(site))))


def _interpreter_for(user: str) -> str:
    """The venv's base interpreter, or the system's of the same version, whichever ``user`` can run."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(venv_python()), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in dict.fromkeys(candidates):
        probe = subprocess.run([runuser, "-u", user, "--", python, "-c",
                                "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, cwd="/", timeout=60)
        if probe.returncode == 0 and probe.stdout.strip() == want:
            return python
    raise RuntimeError(f"no Python {want} that user {user} can run among {candidates}")


@functools.cache
def why_no_ipsecd() -> str | None:
    """Why the daemon cannot be run yet, or None; used to skip tests written ahead of it.

    Cached: the import probe costs a second and every interop module asks.
    """
    if not (PROJECT_ROOT / "ipsecd" / "daemon.py").exists():
        return "ipsecd daemon not built yet"
    probe = subprocess.run([venv_python(), "-c", "import ipsecd.daemon, ipsecd.control.cli"],
                           capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"ipsecd daemon not built yet (import failed: {last})"
    return None


def child_config(*, local_ts: Sequence[str], remote_ts: Sequence[str],
                 esp_proposals: Sequence[str] = ("aes256gcm16",), mode: str = "tunnel",
                 start_action: str = "none", **extra: Any) -> dict[str, Any]:
    """One ``children.<name>`` mapping; ``extra`` passes further keys (e.g. rekey_time) through."""
    return {"local_ts": list(local_ts), "remote_ts": list(remote_ts), "esp_proposals": list(esp_proposals),
            "mode": mode, "start_action": start_action, **extra}


def ipsecd_config(*, name: str = "peer", local_addrs: Sequence[str], remote_addrs: Sequence[str] | str = "%any",
                  local_id: str = "a.test", remote_id: str = "b.test", psk: str = "interop-test-psk-0123456789",
                  proposals: Sequence[str] = ("aes256gcm16-prfsha256-ecp256",),
                  children: dict[str, dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A full config document with one connection and its PSK.

    ``remote_addrs="%any"`` (a string, as the contract allows) makes a responder-only
    connection.  ``extra`` adds connection-level keys (e.g. ``dpd_delay``).
    """
    remote: list[str] | str = remote_addrs if isinstance(remote_addrs, str) else list(remote_addrs)
    return {
        "connections": {
            name: {
                "local_addrs": list(local_addrs),
                "remote_addrs": remote,
                "proposals": list(proposals),
                "local": {"auth": "psk", "id": local_id},
                "remote": {"auth": "psk", "id": remote_id},
                "children": children if children is not None else {
                    "net": child_config(local_ts=["10.1.0.0/24"], remote_ts=["10.2.0.0/24"])},
                **extra,
            },
        },
        "secrets": {"ike": [{"id": [local_id, remote_id], "secret": psk}]},
    }


class Ipsecd:
    """One ipsecd in a namespace; ``list_sas()`` returns ipsecctl's ``ike_sas`` list.

    Usage::

        d = Ipsecd(topo.a, tmp_path / "a", ipsecd_config(local_addrs=[...], remote_addrs=[...]))
        d.start()
        d.up("net")
        ike = d.wait_established(10)
    """

    def __init__(self, ns: Netns, workdir: str | os.PathLike[str], config: dict[str, Any],
                 extra_args: Sequence[str] = (), command_prefix: Sequence[str] = ()) -> None:
        """``command_prefix`` runs the daemon through e.g. ``taskset -c 1`` (it must exec, keeping the PID)."""
        self.ns = ns
        self.command_prefix = list(command_prefix)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.extra_args = list(extra_args)
        self.config_path = self.workdir / "ipsecd.yaml"
        self.log_path = self.workdir / "ipsecd.log"
        sock = self.workdir / "ipsecd.sock"
        self._short_dir: str | None = None
        if len(str(sock)) > SUN_PATH_MAX - 4:
            self._short_dir = tempfile.mkdtemp(prefix="ipd-ctl-")
            sock = Path(self._short_dir) / "ipsecd.sock"
        self.socket = str(sock)
        self.python = venv_python()  # ipsecctl's
        self.runtime = project_runtime()  # the daemon's
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 15.0) -> Ipsecd:
        """Write the YAML, start the daemon in the namespace, wait for its control socket."""
        self.write_config()
        cmd = [*self.command_prefix, self.runtime.python, "-m", "ipsecd", "--config", str(self.config_path),
               "--control-socket", self.socket, *self.extra_args]
        self.proc = self.ns.popen(cmd, self.log_path, cwd=self.runtime.root,
                                  env={"PYTHONUNBUFFERED": "1", "PYTHONPATH": self.runtime.pythonpath})
        end = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ipsecd in {self.ns.name} exited ({self.proc.returncode})\n{self.log_tail()}")
            if time.monotonic() > end:
                raise TimeoutError(f"ipsecd in {self.ns.name}: no control socket after {timeout}s\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM (graceful: the daemon should send Deletes), then SIGKILL the group."""
        if self.proc is not None:
            kill_group(self.proc, grace=5.0)
            self.proc = None
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    def kill(self) -> None:
        """SIGKILL the daemon's process group: a crash, no Deletes sent, every SA forgotten.

        The control socket file it leaves behind is removed so a later :meth:`start` on
        this object waits for the new daemon's socket instead of finding the stale one.
        """
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)

    def __enter__(self) -> Ipsecd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------- control
    def ctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``ipsecctl`` (``python -m ipsecd.control.cli``) against this daemon's socket."""
        res = subprocess.run([self.python, "-m", "ipsecd.control.cli", "--socket", self.socket, *args],
                             capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)
        if check and res.returncode != 0:
            raise RuntimeError(f"ipsecctl {' '.join(args)} -> {res.returncode}\n{res.stdout}{res.stderr}\n"
                               f"{self.log_tail()}")
        return res

    def list_sas(self) -> list[dict[str, Any]]:
        """``ipsecctl list-sas --json`` -> the ``ike_sas`` list (see the contract in docs/interop.md)."""
        data = json.loads(self.ctl("list-sas", "--json").stdout)
        sas: list[dict[str, Any]] = data["ike_sas"]
        return sas

    def up(self, name: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctl("up", name, check=check)

    def down(self, name: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctl("down", name, check=check)

    def wait_established(self, timeout: float = 15.0, child: str | None = "") -> dict[str, Any]:
        """Poll until an IKE SA is ESTABLISHED and (unless ``child`` is None) a Child SA INSTALLED.

        ``child=""`` accepts any child.  Returns the IKE SA dict; raises AssertionError
        with the daemon's log tail on timeout.
        """
        end = time.monotonic() + timeout
        sas: list[dict[str, Any]] = []
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ipsecd in {self.ns.name} died ({self.proc.returncode})\n{self.log_tail()}")
            sas = self.list_sas()
            found = established_sa(sas, child, "child_sas")
            if found is not None:
                return found
            time.sleep(0.1)
        raise AssertionError(f"ipsecd in {self.ns.name}: no established SA within {timeout}s: {sas}\n"
                             f"{self.log_tail()}")

    # -------------------------------------------------------- diagnostics
    def log_text(self) -> str:
        return read_log(self.log_path)

    def log_count(self, pattern: str) -> int:
        """How many log lines match the regular expression ``pattern`` (e.g. rekeys seen so far)."""
        rx = re.compile(pattern)
        return sum(1 for line in self.log_text().splitlines() if rx.search(line))

    def log_tail(self, lines: int = 60) -> str:
        out = f"--- ipsecd log {self.log_path} (last {lines} lines) ---\n"
        return out + "\n".join(self.log_text().splitlines()[-lines:])
