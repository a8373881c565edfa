"""Writing secret files (``ipsecctl export-keys --out DIR``) into a directory other users may reach.

The files hold live SA keys, and ipsecctl usually runs as root, so a directory
where another local user can create or rename entries is a trap: a planted
symlink ``DIR/esp_sa -> /etc/shadow`` would make root overwrite the target (and
leave it with the keys in it), a planted hard link or FIFO would leak or block.

The rule (docs/security.md, "Files written by ipsecctl"):

* ``DIR`` itself must not be a symlink, and must be owned by the user running
  ipsecctl or by root;
* if group or others may write to it, it must also be sticky (like /tmp): only
  then can nobody else remove or rename what we create there;
* each file is created under a fresh random name with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (never through an existing
  entry), written, flushed, and renamed over the final name, which replaces a
  directory entry and never writes through it. An existing final name must be a
  regular file of ours: a symlink, FIFO, directory or another user's file there
  is refused, since it means someone prepared the name.

Every operation after the directory check goes through the directory's file
descriptor, so swapping a path component afterwards changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from ipsecd.control.protocol import ControlError

FILE_MODE = 0o600
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeDirectory(ControlError):
    """The output directory (or an entry in it) could be controlled by another user."""


def check_name(name: object) -> str:
    """``name`` if it is a plain file name (no directory part, not . or ..), else UnsafeDirectory."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
        raise UnsafeDirectory(f"unsafe file name {name!r}")
    return name


def directory_problem(st: os.stat_result, euid: int) -> str | None:
    """Why a directory with this ``fstat`` is unsafe for our secret files, or None if it is fine."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (euid, 0):
        return f"is owned by uid {st.st_uid}, not by you (uid {euid}) or root: its owner could swap the files"
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        who = "others" if mode & stat.S_IWOTH else "its group"
        return (f"is writable by {who} (mode {mode:04o}) and not sticky: anyone there could plant a symlink "
                "(use a private directory, or chmod o-w,g-w)")
    return None


def open_private_dir(path: str | os.PathLike[str], *, create: bool = True) -> int:
    """Create ``path`` (mode 0700) if needed, open it without following a final symlink, check it."""
    p = Path(path)
    if create:
        with contextlib.suppress(FileExistsError):
            p.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(p, DIR_MODE)
    try:
        fd = os.open(p, _DIR_FLAGS)
    except OSError as e:
        if os.path.islink(p):
            raise UnsafeDirectory(f"{p} is a symlink: refusing to write keys through it") from None
        raise UnsafeDirectory(f"cannot open {p}: {e.strerror}") from None
    problem = directory_problem(os.fstat(fd), os.geteuid())
    if problem is not None:
        os.close(fd)
        raise UnsafeDirectory(f"{p} {problem}")
    return fd


def _check_existing(dir_fd: int, name: str, shown: Path) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectory(f"{shown} is a symlink: refusing to replace it (someone may have planted it)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeDirectory(f"{shown} exists and is not a regular file: refusing to replace it")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(f"{shown} belongs to uid {st.st_uid}: refusing to replace it")


def write_private_file(dir_fd: int, name: str, content: str, shown: Path | None = None) -> None:
    """Write ``content`` to ``name`` in the open directory: new file, mode 0600, atomically renamed."""
    check_name(name)
    where = shown if shown is not None else Path(name)
    _check_existing(dir_fd, name, where)
    data = content.encode()
    for _ in range(8):
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, _FILE_FLAGS, FILE_MODE, dir_fd=dir_fd)
            break
        except FileExistsError:  # someone guessed a random name: try another
            continue
    else:
        raise UnsafeDirectory(f"cannot create a temporary file next to {where}")
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may only take bits away, but be explicit
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def write_private_files(path: str | os.PathLike[str], files: Mapping[str, str]) -> list[Path]:
    """Write every (name, content) into directory ``path`` under the rules above; returns the paths."""
    for name in files:  # all of them before the first file is written
        check_name(name)
    fd = open_private_dir(path)
    written = []
    try:
        for name, content in files.items():
            target = Path(path) / name
            write_private_file(fd, name, content, target)
            written.append(target)
    finally:
        os.close(fd)
    return written
