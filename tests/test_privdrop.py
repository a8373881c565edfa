"""Dropping root while keeping the network capabilities.

The real drop runs in a forked child: it cannot be undone, and the test
process must stay root. The child reports back as JSON over a pipe.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from ipsecd.privdrop import (
    DEFAULT_KEEP,
    PrivilegeDropError,
    cap_names,
    cap_number,
    capability_masks,
    current_capabilities,
    drop_privileges,
    prepare_runtime_dir,
)

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "needs the user 'nobody'"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if not {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SETPCAP"} <= current_capabilities("CapPrm"):
        return "the test process lacks capabilities (restricted container)"
    return None


needs_root = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def in_child(fn: Any) -> dict[str, Any]:
    """Run ``fn()`` in a forked child and return the dict it returns (or the error it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(r)
            try:
                result = {"ok": True, **fn()}
            except Exception as e:
                result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            os.write(w, json.dumps(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "child crashed"
    return dict(json.loads(data))


def _free_privileged_port() -> int:
    for port in range(900, 1000):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port below 1024 on 127.0.0.1")


@needs_root
def test_drop_keeps_exactly_the_network_capabilities(tmp_path: Path) -> None:
    port = _free_privileged_port()
    secret = tmp_path / "root-only"
    secret.write_text("x")
    secret.chmod(0o600)
    tun_name = f"ipdpriv{os.getpid() % 100000}"

    def child() -> dict[str, Any]:
        drop_privileges("nobody", "nogroup" if _group_exists("nogroup") else None)
        out: dict[str, Any] = {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups()}
        masks = capability_masks()
        out["eff"] = sorted(cap_names(masks["CapEff"]))
        out["prm"] = sorted(cap_names(masks["CapPrm"]))
        out["amb"] = sorted(cap_names(masks["CapAmb"]))
        out["bnd"] = sorted(cap_names(masks["CapBnd"]))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # CAP_NET_BIND_SERVICE
            s.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, 50):  # CAP_NET_RAW: the raw ESP socket
            pass
        fd = os.open("/dev/net/tun", os.O_RDWR)  # CAP_NET_ADMIN: create a TUN device
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", tun_name.encode(), IFF_TUN | IFF_NO_PI))
            out["tun"] = Path(f"/sys/class/net/{tun_name}").exists()
        finally:
            os.close(fd)  # not persistent: the device goes with the fd
        try:
            secret.read_text()
            out["read_secret"] = True
        except PermissionError:
            out["read_secret"] = False
        # a child process (like the data-plane worker) inherits the capabilities through exec: ambient set
        status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout
        grandchild = {line.split(":")[0]: int(line.split(":")[1], 16) for line in status.splitlines()
                      if line.startswith("CapEff") or line.startswith("CapPrm")}
        out["child_eff"] = sorted(cap_names(grandchild["CapEff"]))
        out["child_prm"] = sorted(cap_names(grandchild["CapPrm"]))
        return out

    res = in_child(child)
    assert res["ok"], res.get("error")
    nobody = pwd.getpwnam("nobody").pw_uid
    assert res["uid"] == res["euid"] == nobody
    assert 0 not in res["groups"]
    keep = sorted(DEFAULT_KEEP)
    assert res["eff"] == res["prm"] == res["amb"] == res["bnd"] == keep
    assert res["tun"] is True
    assert res["read_secret"] is False
    assert res["child_eff"] == res["child_prm"] == keep
    assert not Path(f"/sys/class/net/{tun_name}").exists()


@needs_root
def test_drop_refuses_a_multithreaded_process() -> None:
    def child() -> dict[str, Any]:
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            drop_privileges("nobody")
        finally:
            stop.set()
            t.join()
        return {"uid": os.getuid()}

    res = in_child(child)
    assert not res["ok"]
    assert "threads" in res["error"] and "PrivilegeDropError" in res["error"]


@needs_root
def test_drop_refuses_unknown_user_group_and_capability() -> None:
    with pytest.raises(PrivilegeDropError, match="no such user"):
        drop_privileges("no-such-user-ipsecd-test")
    with pytest.raises(PrivilegeDropError, match="no such group"):
        drop_privileges("nobody", "no-such-group-ipsecd-test")
    with pytest.raises(PrivilegeDropError, match="unknown capability"):
        drop_privileges("nobody", keep=("CAP_NET_ADMIN", "CAP_WARP_DRIVE"))
    with pytest.raises(PrivilegeDropError, match="is root"):
        drop_privileges("root")
    assert os.geteuid() == 0  # nothing happened to us


def test_drop_needs_root() -> None:
    def child() -> dict[str, Any]:
        if os.geteuid() == 0:
            os.setuid(pwd.getpwnam("nobody").pw_uid)
        drop_privileges("nobody")
        return {}

    if os.geteuid() == 0 and _why_not() is not None:
        pytest.skip(_why_not() or "")
    res = in_child(child)
    assert not res["ok"] and "started as root" in res["error"]


@needs_root
def test_prepare_runtime_dir(tmp_path: Path) -> None:
    d = tmp_path / "run" / "ipsecd"
    prepare_runtime_dir(d, "nobody")
    st = d.stat()
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid
    assert st.st_mode & 0o777 == 0o750


def test_capability_names_and_masks(tmp_path: Path) -> None:
    assert cap_number("CAP_NET_ADMIN") == 12
    assert cap_number("net_raw") == 13
    assert cap_number("CAP_NET_BIND_SERVICE") == 10
    assert cap_names((1 << 12) | (1 << 13) | (1 << 10)) == set(DEFAULT_KEEP)
    assert cap_names(1 << 63) == {"cap_63"}
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003400\n"
                      "CapEff:\t0000000000003400\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000003400\n")
    assert current_capabilities(status=status) == set(DEFAULT_KEEP)
    assert current_capabilities("CapInh", status=status) == set()
    assert len(current_capabilities("CapBnd", status=status)) == 41


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
