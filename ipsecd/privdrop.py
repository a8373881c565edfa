"""Run as an unprivileged user with only the network capabilities: ``ipsecd --user ipsecd``.

Under systemd the unit does this (``User=``, ``AmbientCapabilities=``, see
docs/systemd.md). Started as root without systemd, ipsecd does the same
itself, so a bug in packet parsing runs as a user that cannot read other
users' files, load modules or change the system, yet can still do the
network work a VPN gateway needs for its whole life, not just at start-up:

* CAP_NET_ADMIN: routes, rules, link MTU and TUN changes (netlink), TUNSETIFF;
* CAP_NET_BIND_SERVICE: UDP 500 (an address change re-binds it);
* CAP_NET_RAW: the raw ESP socket (IP protocol 50).

How (capabilities(7)): ``PR_SET_KEEPCAPS`` makes the permitted set survive the
switch to a non-zero UID; ``capset`` then raises exactly the kept capabilities
into the effective set (and the inheritable set, which ambient capabilities
require); ``PR_CAP_AMBIENT_RAISE`` makes them survive ``execve`` of the
data-plane worker (``python -m ipsecd.dataplane.worker``), which has no file
capabilities of its own. Everything else is dropped from the bounding set and
``PR_SET_NO_NEW_PRIVS`` stops set-user-ID programs from regaining more.

Capabilities are per *thread*: only the calling thread's sets change, and
threads created before the drop keep root's. ``drop_privileges`` therefore
refuses to run in a multi-threaded process: call it before the event loop
starts any thread (asyncio.to_thread, pyroute2) and before any worker process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import platform
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ipsecd.errors import IpsecdError

DEFAULT_KEEP = ("CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW")

# linux/capability.h: capability numbers (stable kernel ABI).
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# linux/prctl.h, linux/capability.h
_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "armv7l": 185, "i686": 185, "ppc64le": 184, "s390x": 185,
               "riscv64": 91}
"""capset(2) syscall numbers, used only when libc has no capset() wrapper."""


class PrivilegeDropError(IpsecdError):
    """Dropping privileges failed or was refused; the message says why. The process should exit."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def cap_number(name: str) -> int:
    """``CAP_NET_ADMIN`` (or ``net_admin``) -> 12; PrivilegeDropError for unknown names."""
    full = name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper()
    try:
        return CAPABILITIES.index(full)
    except ValueError:
        raise PrivilegeDropError(f"unknown capability {name!r}") from None


def cap_names(mask: int) -> set[str]:
    """The names of the bits set in a capability mask (unknown bits as ``cap_<n>``)."""
    out = set()
    n = 0
    while mask >> n:
        if mask >> n & 1:
            out.add(CAPABILITIES[n] if n < len(CAPABILITIES) else f"cap_{n}")
        n += 1
    return out


def capability_masks(status: str | os.PathLike[str] = "/proc/self/status") -> dict[str, int]:
    """The ``Cap*`` lines of a /proc status file as masks: CapInh, CapPrm, CapEff, CapBnd, CapAmb."""
    masks: dict[str, int] = {}
    for line in Path(status).read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            masks[key] = int(value.strip(), 16)
    return masks


def current_capabilities(which: str = "CapEff", status: str | os.PathLike[str] = "/proc/self/status") -> set[str]:
    """Names of the capabilities in one set of this process (default: effective), from /proc."""
    return cap_names(capability_masks(status).get(which, 0))


@dataclass
class _Libc:
    """The few libc calls the standard library does not wrap."""

    lib: ctypes.CDLL

    @classmethod
    def load(cls) -> _Libc:
        return cls(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))

    def prctl(self, option: int, arg2: int, arg3: int = 0, what: str = "") -> None:
        u = ctypes.c_ulong
        if self.lib.prctl(ctypes.c_int(option), u(arg2), u(arg3), u(0), u(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl({what or option}): {os.strerror(err)}")

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):  # version 3: two 32-bit words per set
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        if hasattr(self.lib, "capset"):
            rc = self.lib.capset(ctypes.byref(header), ctypes.byref(data))
        else:  # pragma: no cover - glibc and musl both have the wrapper
            nr = _SYS_CAPSET.get(platform.machine())
            if nr is None:
                raise PrivilegeDropError(f"capset: unknown syscall number on {platform.machine()}")
            rc = self.lib.syscall(ctypes.c_long(nr), ctypes.byref(header), ctypes.byref(data))
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"capset: {os.strerror(err)}")


def _resolve(user: str, group: str | None) -> tuple[pwd.struct_passwd, int]:
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeDropError(f"no such user {user!r} (create it: useradd --system "
                                 f"--no-create-home --shell /usr/sbin/nologin {user})") from None
    if group is None:
        return pw, pw.pw_gid
    try:
        gr = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except KeyError:
        raise PrivilegeDropError(f"no such group {group!r}") from None
    return pw, gr.gr_gid


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


def prepare_runtime_dir(path: str | os.PathLike[str], user: str, group: str | None = None, mode: int = 0o750) -> None:
    """Create (or fix) a directory the unprivileged daemon must write to, e.g. /run/ipsecd for its socket.

    Call it while still root, before ``drop_privileges``: afterwards the daemon
    cannot create directories in /run. systemd's ``RuntimeDirectory=`` does the
    same for the unit.
    """
    pw, gid = _resolve(user, group)
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    os.chown(p, pw.pw_uid, gid)
    os.chmod(p, mode)


def drop_privileges(
    user: str,
    group: str | None = None,
    keep: Iterable[str] = DEFAULT_KEEP,
    *,
    no_new_privs: bool = True,
) -> None:
    """Become ``user`` (and ``group``, default the user's primary group) keeping only ``keep``.

    Afterwards the kept capabilities are effective, permitted, inheritable and
    ambient (so child processes get them too) and nothing else is left, not
    even in the bounding set. Must be called as root in a single-threaded
    process. On failure it raises PrivilegeDropError and the process may be
    half-changed: the caller must exit rather than carry on.
    """
    if os.geteuid() != 0:
        raise PrivilegeDropError(f"--user {user} needs ipsecd to be started as root (running as uid {os.geteuid()})")
    keep_nums = sorted({cap_number(c) for c in keep})
    keep_mask = sum(1 << n for n in keep_nums)
    pw, gid = _resolve(user, group)
    if pw.pw_uid == 0:
        raise PrivilegeDropError(f"user {user!r} is root: refusing to 'drop' to it")
    threads = _thread_count()
    if threads > 1:
        raise PrivilegeDropError(
            f"cannot drop privileges in a process with {threads} threads: capabilities are per thread, so the "
            "others would stay root (drop before starting the event loop and the data plane)"
        )
    permitted = capability_masks().get("CapPrm", 0)
    if keep_mask & ~permitted:
        missing = ", ".join(sorted(cap_names(keep_mask & ~permitted)))
        raise PrivilegeDropError(f"cannot keep {missing}: this process does not have it (container limits?)")
    libc = _Libc.load()
    try:
        for n in range(_last_cap() + 1):
            if n not in keep_nums:
                libc.prctl(_PR_CAPBSET_DROP, n, what="PR_CAPBSET_DROP")
        libc.prctl(_PR_SET_KEEPCAPS, 1, what="PR_SET_KEEPCAPS")
        os.initgroups(pw.pw_name, gid)
        os.setgid(gid)  # as root: real, effective and saved GID
        os.setuid(pw.pw_uid)  # as root: real, effective and saved UID; KEEPCAPS keeps the permitted set
        libc.capset(keep_mask, keep_mask, keep_mask)
        for n in keep_nums:
            libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, n, what="PR_CAP_AMBIENT_RAISE")
        libc.prctl(_PR_SET_KEEPCAPS, 0, what="PR_SET_KEEPCAPS")
        if no_new_privs:
            libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    except OSError as e:
        raise PrivilegeDropError(f"dropping privileges to {user} failed: {e}") from e
    _verify(pw.pw_uid, gid, keep_mask)


def _verify(uid: int, gid: int, keep_mask: int) -> None:
    """Check the result from the kernel's point of view: a silent partial drop would be worse than none."""
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (uid, uid, gid, gid):
        raise PrivilegeDropError("dropping privileges failed: user or group IDs did not change")
    masks = capability_masks()
    for key in ("CapEff", "CapPrm", "CapAmb"):
        if masks.get(key, 0) != keep_mask:
            got = ", ".join(sorted(cap_names(masks.get(key, 0)))) or "none"
            raise PrivilegeDropError(f"dropping privileges failed: {key} is {got}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeDropError("dropping privileges failed: the process could become root again")
