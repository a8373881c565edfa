"""Local users against the control socket and ``ipsecctl export-keys --out`` (issue 13, docs/security.md).

Each test is a finding: it failed on the code before the fix. The attacker is another
local user who can write to a directory ipsecctl or ipsecd uses, or who can connect to
the control socket (root or the daemon's group) and sends hostile requests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from ipsecd.control.keyfiles import UnsafeDirectory, directory_problem, write_private_files
from ipsecd.control.protocol import MAX_DEPTH, ProtocolError, Request, Response, nesting_depth
from ipsecd.control.server import ControlServer
from tests.test_control import FakeHandler, Running, ctl, raw_exchange

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files owned by another user")


# --------------------------------------------------------------------------- export-keys --out
@pytest.fixture
def keys_dir(short_dir: str) -> Path:
    d = Path(short_dir, "keys")
    d.mkdir(mode=0o700)
    return d


def _export(running: Running, out: Path) -> int:
    return ctl(running, "export-keys", "--out", str(out))


def test_export_keys_does_not_follow_a_planted_symlink(running: Running, keys_dir: Path, short_dir: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    victim = Path(short_dir, "victim")
    victim.write_text("precious\n")
    (keys_dir / "esp_sa").symlink_to(victim)
    assert _export(running, keys_dir) == 1
    assert victim.read_text() == "precious\n"
    assert "symlink" in capsys.readouterr().err


def test_export_keys_does_not_write_through_a_hard_link(running: Running, keys_dir: Path,
                                                        short_dir: str) -> None:
    victim = Path(short_dir, "victim")
    victim.write_text("precious\n")
    os.link(victim, keys_dir / "esp_sa")
    assert _export(running, keys_dir) == 0
    assert victim.read_text() == "precious\n"  # the name was replaced, the linked file untouched
    assert (keys_dir / "esp_sa").read_text() == running.handler.export_files["esp_sa"]


@pytest.mark.timeout(20)
def test_export_keys_refuses_a_planted_fifo(running: Running, keys_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(keys_dir / "esp_sa")  # opening it for writing would block until someone reads
    assert _export(running, keys_dir) == 1
    assert "not a regular file" in capsys.readouterr().err


def test_export_keys_refuses_a_world_writable_directory(running: Running, keys_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    os.chmod(keys_dir, 0o777)
    assert _export(running, keys_dir) == 1
    assert "writable by others" in capsys.readouterr().err
    assert list(keys_dir.iterdir()) == []


def test_export_keys_refuses_a_symlinked_directory(running: Running, keys_dir: Path, short_dir: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    link = Path(short_dir, "link")
    link.symlink_to(keys_dir)
    assert _export(running, link) == 1
    assert "symlink" in capsys.readouterr().err
    assert list(keys_dir.iterdir()) == []


def test_export_keys_into_a_sticky_shared_directory(running: Running, keys_dir: Path) -> None:
    os.chmod(keys_dir, 0o1777)  # like /tmp
    assert _export(running, keys_dir) == 0
    for name, content in running.handler.export_files.items():
        assert (keys_dir / name).read_text() == content
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600


def test_export_keys_twice_replaces_its_own_files_and_leaves_no_temporaries(running: Running,
                                                                            keys_dir: Path) -> None:
    assert _export(running, keys_dir) == 0
    running.handler.export_files = {"esp_sa": "second\n", "ikev2_decryption_table": "second too\n"}
    assert _export(running, keys_dir) == 0
    assert sorted(p.name for p in keys_dir.iterdir()) == ["esp_sa", "ikev2_decryption_table"]
    assert (keys_dir / "esp_sa").read_text() == "second\n"


@as_root
def test_export_keys_refuses_a_directory_of_another_user(running: Running, keys_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    os.chown(keys_dir, NOBODY, NOBODY)
    assert _export(running, keys_dir) == 1
    assert "owned by uid 65534" in capsys.readouterr().err


@as_root
def test_export_keys_refuses_to_replace_another_users_file(running: Running, keys_dir: Path) -> None:
    os.chmod(keys_dir, 0o1777)
    planted = keys_dir / "esp_sa"
    planted.write_text("theirs\n")
    os.chown(planted, NOBODY, NOBODY)
    assert _export(running, keys_dir) == 1
    assert planted.read_text() == "theirs\n"


def test_directory_rule() -> None:
    def st(mode: int, uid: int) -> os.stat_result:
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, 0, 0, 0, 0, 0))

    me = 1000
    assert directory_problem(st(0o700, me), me) is None
    assert directory_problem(st(0o755, 0), me) is None
    assert directory_problem(st(0o1777, 0), me) is None  # /tmp
    assert directory_problem(st(0o1777, me), me) is None
    assert "owned by uid 1001" in (directory_problem(st(0o1777, 1001), me) or "")
    assert "writable by others" in (directory_problem(st(0o777, me), me) or "")
    assert "writable by its group" in (directory_problem(st(0o770, me), me) or "")


def test_write_private_files_refuses_unsafe_names(tmp_path: Path) -> None:
    for name in ("../x", "", ".", "..", "a\0b"):
        with pytest.raises(UnsafeDirectory):
            write_private_files(tmp_path / "d", {name: "x"})


# --------------------------------------------------------------------------- the control socket directory
def _start(server: ControlServer, loop: asyncio.AbstractEventLoop) -> None:
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)


def _stop(server: ControlServer, loop: asyncio.AbstractEventLoop) -> None:
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)


def test_existing_world_writable_socket_directory_is_fixed(short_dir: str,
                                                           loop: asyncio.AbstractEventLoop) -> None:
    d = Path(short_dir, "run")
    d.mkdir()
    os.chmod(d, 0o777)
    server = ControlServer(d / "ipsecd.sock", FakeHandler())
    _start(server, loop)
    try:
        assert stat.S_IMODE(d.stat().st_mode) == 0o750
    finally:
        _stop(server, loop)


@as_root
def test_socket_directory_left_by_another_user_is_taken_over(short_dir: str,
                                                             loop: asyncio.AbstractEventLoop) -> None:
    d = Path(short_dir, "run")
    d.mkdir(mode=0o777)
    os.chown(d, NOBODY, NOBODY)
    server = ControlServer(d / "ipsecd.sock", FakeHandler())
    _start(server, loop)
    try:
        st = d.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o750)
    finally:
        _stop(server, loop)


def test_shared_unsafe_socket_directory_is_refused(short_dir: str,
                                                   loop: asyncio.AbstractEventLoop) -> None:
    d = Path(short_dir, "shared")
    d.mkdir()
    (d / "something-else").write_text("not ours to judge")
    os.chmod(d, 0o777)
    with pytest.raises(Exception, match="writable by others"):
        _start(ControlServer(d / "ipsecd.sock", FakeHandler()), loop)
    assert stat.S_IMODE(d.stat().st_mode) == 0o777  # a shared directory is never changed


def test_sticky_shared_socket_directory_is_left_alone(short_dir: str,
                                                      loop: asyncio.AbstractEventLoop) -> None:
    d = Path(short_dir, "tmp")
    d.mkdir()
    (d / "other-users-file").write_text("x")
    os.chmod(d, 0o1777)
    server = ControlServer(d / "ipsecd.sock", FakeHandler())
    _start(server, loop)
    try:
        assert stat.S_IMODE(d.stat().st_mode) == 0o1777
        assert stat.S_IMODE(os.stat(d / "ipsecd.sock").st_mode) == 0o660
    finally:
        _stop(server, loop)


# --------------------------------------------------------------------------- hostile clients
def test_deeply_nested_request_is_answered_and_the_connection_keeps_serving(running: Running) -> None:
    answers = raw_exchange(running.path, b"[" * 60_000 + b"\n" + b'{"v": 1, "cmd": "status"}\n', 2)
    assert answers[0] == {"v": 1, "ok": False, "error": f"malformed request: nested deeper than {MAX_DEPTH} levels"}
    assert answers[1]["ok"] is True
    nested_ok = b'{"v": 1, "cmd": "status", "args": {"a": ' + b"[" * 20 + b"]" * 20 + b"}}\n"
    assert raw_exchange(running.path, nested_ok, 1)[0]["ok"] is True


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert nesting_depth(b'{"a": "[[[[[[[[", "b": [1, {"c": "]]]"}]}') == 3
    assert nesting_depth(b'"\\"[[[["') == 0
    assert nesting_depth(b"[" * 100_000) == MAX_DEPTH + 1  # stops counting early
    with pytest.raises(ProtocolError, match="nested deeper"):
        Request.decode(b'{"v": 1, "cmd": "x", "args": {"a": ' + b"[" * 40 + b"]" * 40 + b"}}")
    with pytest.raises(ProtocolError, match="nested deeper"):
        Response.decode(b"[" * 50_000)  # ipsecctl reading a hostile "daemon" is protected too


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def _recv_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def test_concurrent_clients_are_capped(short_dir: str, loop: asyncio.AbstractEventLoop) -> None:
    path = os.path.join(short_dir, "s.sock")
    server = ControlServer(path, FakeHandler(), max_clients=3)
    _start(server, loop)
    idle = [_connect(path) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server accept them
        with _connect(path) as extra:
            assert b"too many control connections (3)" in _recv_line(extra)
            assert extra.recv(10) == b""  # and closed
        idle.pop().close()
        time.sleep(0.2)
        assert raw_exchange(path, b'{"v": 1, "cmd": "status"}\n', 1)[0]["ok"] is True
    finally:
        for s in idle:
            s.close()
        _stop(server, loop)


def test_idle_client_is_disconnected(short_dir: str, loop: asyncio.AbstractEventLoop) -> None:
    path = os.path.join(short_dir, "s.sock")
    server = ControlServer(path, FakeHandler(), idle_timeout=0.3)
    _start(server, loop)
    try:
        with _connect(path) as s:
            s.sendall(b'{"v": 1, "cmd": "status"}\n')
            assert b'"ok":true' in _recv_line(s)  # a request resets the clock
            t0 = time.monotonic()
            assert b"no request for 0.3 s" in _recv_line(s)
            assert s.recv(10) == b"" and time.monotonic() - t0 < 3
    finally:
        _stop(server, loop)


def test_unknown_command_text_is_escaped_and_bounded(running: Running) -> None:
    cmd = "x\n12:00:00.000 CRITICAL ipsecd: forged" + "y" * 5000
    (answer,) = raw_exchange(running.path, Request(cmd).encode(), 1)
    assert "\n" not in answer["error"] and len(answer["error"]) < 200


# --------------------------------------------------------------------------- peer text on the operator's terminal
HOSTILE_ID = "\x1b]0;owned\x07evil\nrw: ESTABLISHED, IKEv2, forged"


def test_list_sas_table_escapes_peer_identities(running: Running,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import copy

    from tests.test_control import SAS

    sas = copy.deepcopy(SAS)
    sas["ike_sas"][1]["remote_id"] = HOSTILE_ID

    async def hostile_list_sas() -> dict[str, object]:
        return sas

    running.handler.list_sas = hostile_list_sas  # type: ignore[method-assign]
    assert ctl(running, "list-sas") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\nrw: ESTABLISHED, IKEv2, forged" not in out
    assert "remote '\\x1b]0;owned\\x07evil\\x0arw: ESTABLISHED, IKEv2, forged'" in out
    assert ctl(running, "list-sas", "--json") == 0  # JSON keeps the exact text (escaped by JSON itself)
    assert "\\u001b]0;owned\\u0007evil\\nrw" in capsys.readouterr().out


def test_log_follow_escapes_control_characters(running: Running,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    running.handler.logs = ["peer said \x1b[2J hello", "Traceback:\n  line 2"]
    assert ctl(running, "log", "--follow") == 0
    assert capsys.readouterr().out == "peer said \\x1b[2J hello\nTraceback:\n  line 2\n"
