"""Control socket: the asyncio server and the ipsecctl client, round trip over a real Unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ipsecd.control.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main, render_pools, render_sas, render_value
from ipsecd.control.protocol import (
    MAX_REQUEST_BYTES,
    ControlError,
    ProtocolError,
    Request,
    Response,
    format_endpoint,
    format_spi,
)
from ipsecd.control.server import ControlServer

SAS: dict[str, Any] = {
    "ike_sas": [
        {
            "name": "hq-branch",
            "state": "ESTABLISHED",
            "local": "192.0.2.1[500]",
            "remote": "198.51.100.1[4500]",
            "local_id": "gw-a.example.net",
            "remote_id": "gw-b.example.net",
            "initiator": True,
            "proposal": "AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256",
            "child_sas": [
                {
                    "name": "lan-lan",
                    "state": "INSTALLED",
                    "spi_in": "c1a2b3d4",
                    "spi_out": "0badf00d",
                    "mode": "tunnel",
                    "encap": True,
                    "proposal": "AES_GCM_16-256",
                    "local_ts": ["10.1.0.0/24"],
                    "remote_ts": ["10.2.0.0/24", "10.3.0.0/24"],
                    "bytes_in": 1234,
                    "bytes_out": 5678,
                    "packets_in": 10,
                    "packets_out": 12,
                }
            ],
        },
        {
            "name": "rw",
            "state": "CONNECTING",
            "local": "192.0.2.10[500]",
            "remote": "203.0.113.9[500]",
            "local_id": "vpn.example.com",
            "remote_id": "alice@example.com",
            "initiator": False,
            "proposal": "",
            "remote_vips": ["10.3.0.1", "fd00:3::1"],
            "child_sas": [],
        },
    ]
}

SAS_TABLE = """\
hq-branch: ESTABLISHED, IKEv2, initiator
  local  'gw-a.example.net' @ 192.0.2.1[500]
  remote 'gw-b.example.net' @ 198.51.100.1[4500]
  AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256
  lan-lan: INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
    in  c1a2b3d4,       1234 bytes,         10 packets
    out 0badf00d,       5678 bytes,         12 packets
    local  10.1.0.0/24
    remote 10.2.0.0/24 10.3.0.0/24
rw: CONNECTING, IKEv2, responder
  local  'vpn.example.com' @ 192.0.2.10[500]
  remote 'alice@example.com' @ 203.0.113.9[500] [10.3.0.1 fd00:3::1]
"""

POOLS: dict[str, Any] = {"pools": [
    {"name": "rw4", "base": "10.3.0.1", "last": "10.3.0.254", "size": 254, "online": 1, "offline": 1,
     "leases": [{"address": "10.3.0.1", "status": "online", "identity": "alice@example.com", "since": 1.0},
                {"address": "10.3.0.2", "status": "offline", "identity": "bob@example.com", "since": 2.0}]},
    {"name": "rw6", "base": "fd00:3::1", "last": "fd00:3::fffe", "size": 65534, "online": 0, "offline": 0,
     "leases": []},
]}

POOLS_TABLE = """\
rw4                  10.3.0.1                                   1 /   1 / 254
  10.3.0.1                                online  'alice@example.com'
  10.3.0.2                                offline 'bob@example.com'
rw6                  fd00:3::1                                  0 /   0 / 65534
"""


@dataclass
class FakeHandler:
    """Canned answers; records calls so tests can see what the server passed on."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=lambda: ["first record", "second record", "third"])
    follow_forever: bool = False
    unsubscribed: threading.Event = field(default_factory=threading.Event)
    export_files: dict[str, str] = field(
        default_factory=lambda: {"esp_sa": '"IPv4","192.0.2.1",...\n', "ikev2_decryption_table": "aa,bb,...\n"}
    )

    async def list_sas(self) -> dict[str, Any]:
        self.calls.append(("list-sas", None))
        return SAS

    async def list_conns(self) -> dict[str, Any]:
        return {"connections": [{"name": "hq-branch", "remote_addrs": ["198.51.100.1"], "children": ["lan-lan"]}]}

    async def list_pools(self, leases: bool, name: str | None) -> dict[str, Any]:
        self.calls.append(("list-pools", (leases, name)))
        pools = [dict(p) for p in POOLS["pools"] if name is None or p["name"] == name]
        if not leases:
            for p in pools:
                p.pop("leases")
        return {"pools": pools}
    async def list_certs(self) -> dict[str, Any]:
        return CERTS

    async def status(self) -> dict[str, Any]:
        return {"version": "0.1.0", "uptime": 12, "ike_sas": 1, "dataplane": {"workers": 1, "tun": "ipsec0"}}

    async def stats(self) -> dict[str, Any]:
        raise RuntimeError("counter backend exploded")

    async def up(self, name: str) -> dict[str, Any]:
        self.calls.append(("up", name))
        if name != "hq-branch":
            raise ControlError(f"no connection named '{name}'")
        return {"message": f"connection '{name}' established"}

    async def down(self, name: str) -> dict[str, Any]:
        self.calls.append(("down", name))
        return {"message": f"connection '{name}' closed"}

    async def reload(self) -> dict[str, Any]:
        return {"not json": {1, 2}}  # a bug in the daemon: must become an error reply, not a crash

    async def redirect(self, name: str | None, to: str | None, full_at: int) -> dict[str, Any]:
        self.calls.append(("redirect", (name, to, full_at)))
        return {"redirected": 2, "to": to, "message": f"redirecting to {to}; 2 established client(s) told to move"}

    async def export_keys(self, fmt: str) -> dict[str, Any]:
        self.calls.append(("export-keys", fmt))
        return {"files": self.export_files}

    def subscribe_logs(self) -> AsyncIterator[str]:
        return self._logs()

    async def _logs(self) -> AsyncIterator[str]:
        try:
            for line in self.logs:
                yield line
            if self.follow_forever:
                await asyncio.Event().wait()
        finally:
            self.unsubscribed.set()


@dataclass
class Running:
    path: str
    handler: FakeHandler
    server: ControlServer
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)


@pytest.fixture
def short_dir() -> Iterator[str]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="ictl", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # The server runs in its own thread so the blocking ipsecctl client can run in the test's thread.
    ev = asyncio.new_event_loop()
    thread = threading.Thread(target=ev.run_forever, daemon=True)
    thread.start()
    yield ev
    ev.call_soon_threadsafe(ev.stop)
    thread.join(5)
    ev.close()


@pytest.fixture
def running(short_dir: str, loop: asyncio.AbstractEventLoop) -> Iterator[Running]:
    path = os.path.join(short_dir, "run", "ipsecd.sock")
    handler = FakeHandler()
    server = ControlServer(path, handler)
    r = Running(path, handler, server, loop)
    old = os.umask(0)  # the socket and directory modes must not depend on the umask
    try:
        r.run(server.start())
    finally:
        os.umask(old)
    yield r
    r.run(server.close())


def ctl(r: Running, *argv: str) -> int:
    return main(["--socket", r.path, *argv])


def raw_exchange(path: str, payload: bytes, expect_lines: int) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        f = s.makefile("rb")
        return [json.loads(f.readline()) for _ in range(expect_lines)]


# --------------------------------------------------------------------------- server


def test_socket_and_directory_modes(running: Running) -> None:
    assert stat.S_IMODE(os.stat(running.path).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(running.path).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(running.path)).st_mode) == 0o750


def test_close_removes_socket(short_dir: str, loop: asyncio.AbstractEventLoop) -> None:
    path = os.path.join(short_dir, "s.sock")
    server = ControlServer(path, FakeHandler())
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    assert os.path.exists(path)
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    assert not os.path.exists(path)


def test_stale_socket_is_replaced(short_dir: str, loop: asyncio.AbstractEventLoop) -> None:
    path = os.path.join(short_dir, "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a crashed daemon leaves behind
    stale.close()
    server = ControlServer(path, FakeHandler())
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    try:
        assert main(["--socket", path, "list-sas", "--json"]) == 0
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)


def test_live_socket_is_not_stolen(running: Running, loop: asyncio.AbstractEventLoop) -> None:
    second = ControlServer(running.path, FakeHandler())
    with pytest.raises(ControlError, match="already serving"):
        asyncio.run_coroutine_threadsafe(second.start(), loop).result(5)
    assert main(["--socket", running.path, "list-sas", "--json"]) == 0


def test_regular_file_is_not_removed(short_dir: str, loop: asyncio.AbstractEventLoop) -> None:
    path = os.path.join(short_dir, "s.sock")
    Path(path).write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        asyncio.run_coroutine_threadsafe(ControlServer(path, FakeHandler()).start(), loop).result(5)
    assert Path(path).read_text() == "precious"


def test_malformed_requests_get_errors_and_connection_keeps_serving(running: Running) -> None:
    lines = [
        b"not json\n",
        b"[1, 2]\n",
        b'{"v": 1}\n',
        b'{"v": 1, "cmd": 5}\n',
        b'{"v": 2, "cmd": "status"}\n',
        b'{"v": 1, "cmd": "status", "args": []}\n',
        b'{"v": 1, "cmd": "frobnicate"}\n',
        b'{"v": 1, "cmd": "up"}\n',
        b'{"v": 1, "cmd": "up", "args": {"name": 7}}\n',
        b'{"v": 1, "cmd": "export-keys", "args": {"format": "pcap"}}\n',
        b"\xff\xfe\n",
        b"\n",  # blank lines are ignored, not answered
        b'{"v": 1, "cmd": "status"}\n',
    ]
    answers = raw_exchange(running.path, b"".join(lines), len(lines) - 1)
    assert [a["ok"] for a in answers] == [False] * 11 + [True]
    errors = [a["error"] for a in answers[:11]]
    assert errors[0].startswith("malformed request: not valid JSON")
    assert errors[1] == "malformed request: a message must be a JSON object"
    assert errors[2] == errors[3] == "malformed request: request has no 'cmd' string"
    assert errors[4] == "malformed request: unsupported protocol version 2 (this ipsecd speaks 1)"
    assert errors[5] == "malformed request: 'args' must be a JSON object"
    assert errors[6] == "unknown command 'frobnicate'"
    assert errors[7] == errors[8] == "'up' needs a connection name"
    assert errors[9] == "unknown export format 'pcap' (expected: wireshark)"
    assert errors[10].startswith("malformed request: not valid JSON")
    assert answers[11] == {"v": 1, "ok": True, "result": asyncio.run(running.handler.status())}


def test_oversized_request_is_refused_and_server_survives(running: Running) -> None:
    answers = raw_exchange(running.path, b"x" * (MAX_REQUEST_BYTES + 10) + b"\n", 1)
    assert answers == [{"v": 1, "ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}]
    assert ctl(running, "list-sas", "--json") == 0


def test_handler_exception_is_an_internal_error(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "stats") == 1
    assert capsys.readouterr().err == "ipsecctl: internal error while handling 'stats' (see the ipsecd log)\n"
    assert ctl(running, "reload") == 1  # result that is not JSON
    assert capsys.readouterr().err == "ipsecctl: internal error while handling 'reload' (see the ipsecd log)\n"
    assert ctl(running, "list-sas", "--json") == 0


def test_client_disconnect_mid_stream_unsubscribes(running: Running) -> None:
    running.handler.follow_forever = True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(running.path)
        s.sendall(Request("log", {"follow": True}).encode())
        f = s.makefile("rb")
        assert Response.decode(f.readline()) == Response(True, {"follow": True})
        assert [Response.decode(f.readline()).log for _ in range(3)] == ["first record", "second record", "third"]
        f.close()
    assert running.handler.unsubscribed.wait(5)


def test_close_ends_log_followers(running: Running) -> None:
    running.handler.follow_forever = True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(running.path)
        s.sendall(Request("log", {"follow": True}).encode())
        f = s.makefile("rb")
        for _ in range(4):
            f.readline()
        running.run(running.server.close())
        assert f.readline() == b""  # the server closed the stream
        assert running.handler.unsubscribed.wait(5)
        f.close()


# --------------------------------------------------------------------------- ipsecctl


def test_list_sas_json_is_passed_through(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "list-sas", "--json") == 0
    out = capsys.readouterr().out
    assert json.loads(out) == SAS
    assert out == json.dumps(SAS) + "\n"


def test_list_sas_table(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "list-sas") == 0
    assert capsys.readouterr().out == SAS_TABLE


CERTS: dict[str, Any] = {
    "directory": "/etc/ipsecd",
    "certificates": [{
        "source": "x509", "file": "/etc/ipsecd/x509/gw.pem", "subject": "CN=vpn.example.com",
        "issuer": "CN=Example CA", "sans": ["DNS:vpn.example.com"], "not_before": "2025-01-01T00:00:00+00:00",
        "not_after": "2026-01-01T00:00:00+00:00", "key_type": "ECDSA P-256", "key_size": 256,
        "has_private_key": True, "is_ca": False, "serial": "1001", "fingerprint_sha256": "ab" * 32,
        "key_id": "cd" * 20}],
    "crls": [{"file": "/etc/ipsecd/x509crl/ca.crl", "issuer": "CN=Example CA", "revoked": 2,
              "this_update": "2025-01-01T00:00:00+00:00", "next_update": "2025-01-08T00:00:00+00:00"}],
    "problems": ["/etc/ipsecd/x509/old.pem: certificate 'CN=old' has no private key in private/"],
}


def test_list_certs(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "list-certs", "--json") == 0
    assert json.loads(capsys.readouterr().out) == CERTS
    assert ctl(running, "list-certs") == 0
    assert capsys.readouterr().out == (
        "credentials in /etc/ipsecd\n"
        "  x509/gw.pem: certificate, has private key\n"
        '    subject:  "CN=vpn.example.com"\n'
        '    issuer:   "CN=Example CA"\n'
        "    altNames: DNS:vpn.example.com\n"
        "    validity: 2025-01-01T00:00:00+00:00 to 2026-01-01T00:00:00+00:00\n"
        f"    pubkey:   ECDSA P-256 256 bits, keyid {'cd' * 20}\n"
        "    serial:   1001\n"
        '  x509crl/ca.crl: CRL of "CN=Example CA", 2 revoked, next update 2025-01-08T00:00:00+00:00\n'
        "  problem: /etc/ipsecd/x509/old.pem: certificate 'CN=old' has no private key in private/\n"
    )


def test_render_sas_empty_and_partial() -> None:
    assert render_sas({"ike_sas": []}) == "no IKE SAs\n"
    text = render_sas({"ike_sas": [{"name": "x", "child_sas": [{"name": "c"}]}]})
    assert "x: ?, IKEv2, responder" in text and "c: ?, ?" in text and "in         ?," in text


def test_up_down(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "up", "hq-branch") == 0
    assert capsys.readouterr().out == "connection 'hq-branch' established\n"
    assert ctl(running, "down", "hq-branch") == 0
    assert capsys.readouterr().out == "connection 'hq-branch' closed\n"
    assert ctl(running, "up", "nope") == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "ipsecctl: no connection named 'nope'\n")
    assert running.handler.calls == [("up", "hq-branch"), ("down", "hq-branch"), ("up", "nope")]


def test_status_and_list_conns_render(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "status") == 0
    assert capsys.readouterr().out == (
        "version: 0.1.0\nuptime: 12\nike_sas: 1\ndataplane:\n  workers: 1\n  tun: ipsec0\n"
    )
    assert ctl(running, "list-conns") == 0
    assert capsys.readouterr().out == (
        "connections:\n  - name: hq-branch\n    remote_addrs:\n      - 198.51.100.1\n    children:\n      - lan-lan\n"
    )
    assert ctl(running, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["uptime"] == 12


def test_render_value_scalars() -> None:
    assert render_value({"a": True, "b": None, "c": [], "d": {}}) == "a: yes\nb: -\nc: -\nd: -\n"


def test_log_follow(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "log", "--follow") == 0  # the fake's stream ends after three records
    assert capsys.readouterr().out == "first record\nsecond record\nthird\n"


def test_log_without_follow_is_usage_error(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "log") == 2
    assert "log needs --follow" in capsys.readouterr().err


def test_export_keys_stdout_and_dir(running: Running, short_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "export-keys", "--format", "wireshark") == 0
    assert capsys.readouterr().out == (
        '==> esp_sa <==\n"IPv4","192.0.2.1",...\n==> ikev2_decryption_table <==\naa,bb,...\n'
    )
    out_dir = os.path.join(short_dir, "keys")
    assert ctl(running, "export-keys", "--out", out_dir) == 0
    for name, content in running.handler.export_files.items():
        target = Path(out_dir, name)
        assert target.read_text() == content
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out_dir).st_mode) == 0o700
    assert capsys.readouterr().out.count("wrote ") == 2


def test_export_keys_refuses_unsafe_names(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    running.handler.export_files = {"../evil": "x"}
    assert ctl(running, "export-keys", "--out", "/tmp/never-written-by-ipsecctl") == 1
    assert "unsafe file name" in capsys.readouterr().err
    assert not os.path.exists("/tmp/evil")


def test_cannot_connect(short_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(short_dir, "missing.sock")
    assert main(["--socket", path, "status"]) == 3
    assert capsys.readouterr().err == f"ipsecctl: cannot connect to {path}: is ipsecd running?\n"


def test_default_socket_and_env(
    short_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("IPSECD_SOCKET", raising=False)
    if not os.path.exists("/run/ipsecd/ipsecd.sock"):
        assert main(["status"]) == 3
        assert capsys.readouterr().err == "ipsecctl: cannot connect to /run/ipsecd/ipsecd.sock: is ipsecd running?\n"
    path = os.path.join(short_dir, "env.sock")
    monkeypatch.setenv("IPSECD_SOCKET", path)
    assert main(["status"]) == 3
    assert path in capsys.readouterr().err


def test_env_socket_round_trip(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPSECD_SOCKET", running.path)
    assert main(["list-sas", "--json"]) == 0


@pytest.mark.parametrize("argv", [[], ["bogus"], ["up"], ["export-keys", "--format", "pcap"], ["list-sas", "-x"]])
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: ipsecctl" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out


def test_daemon_closing_without_answer(short_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(short_dir, "mute.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def accept_and_close() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.close()

    t = threading.Thread(target=accept_and_close)
    t.start()
    try:
        assert main(["--socket", path, "status"]) == 1
    finally:
        t.join(5)
        listener.close()
    assert capsys.readouterr().err == "ipsecctl: ipsecd closed the connection without answering\n"


# --------------------------------------------------------------------------- protocol


def test_protocol_round_trip() -> None:
    req = Request("up", {"name": "x"})
    assert Request.decode(req.encode()) == req
    assert req.encode().endswith(b"\n") and req.encode().count(b"\n") == 1
    for resp in (Response(True, {"a": "line\nbreak"}), Response(False, error="bad"), Response(True, log="rec\n")):
        line = resp.encode()
        assert line.count(b"\n") == 1
        assert Response.decode(line) == resp
    with pytest.raises(ProtocolError):
        Response.decode(b'{"v": 1}\n')


def test_formatters() -> None:
    assert format_spi(0xC1A2B3D4) == "c1a2b3d4"
    assert format_spi(b"\x00\x00\x00\x01") == "00000001"
    assert format_endpoint("192.0.2.1", 500) == "192.0.2.1[500]"


def test_list_pools(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "list-pools", "--leases") == 0
    assert capsys.readouterr().out == POOLS_TABLE
    assert ctl(running, "list-pools") == 0
    assert capsys.readouterr().out == "".join(line + "\n" for line in POOLS_TABLE.splitlines() if line[0] != " ")
    assert ctl(running, "list-pools", "--name", "rw6", "--json") == 0
    assert json.loads(capsys.readouterr().out)["pools"][0]["name"] == "rw6"
    assert running.handler.calls[-3:] == [("list-pools", (True, None)), ("list-pools", (False, None)),
                                          ("list-pools", (False, "rw6"))]
    assert render_pools({"pools": []}) == "no pools\n"


def test_list_pools_bad_arguments(running: Running) -> None:
    (answer,) = raw_exchange(running.path, b'{"v": 1, "cmd": "list-pools", "args": {"leases": "yes"}}\n', 1)
    assert answer["ok"] is False and "list-pools" in answer["error"]


def test_redirect(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(running, "redirect", "rw", "--to", "192.0.2.9") == EXIT_OK
    assert capsys.readouterr().out == "redirecting to 192.0.2.9; 2 established client(s) told to move\n"
    assert ctl(running, "redirect", "--all", "--stop") == EXIT_OK
    assert ctl(running, "redirect", "--all", "--to", "gw2.example", "--when-full", "500") == EXIT_OK
    assert running.handler.calls[-3:] == [("redirect", ("rw", "192.0.2.9", 0)), ("redirect", (None, None, 0)),
                                          ("redirect", (None, "gw2.example", 500))]
    assert ctl(running, "redirect", "--all", "--to", "gw2.example", "--when-full", "0") == EXIT_USAGE
    assert ctl(running, "redirect", "rw", "--all", "--to", "x.example") == EXIT_FAILED  # one or the other
    assert ctl(running, "redirect", "rw") == EXIT_USAGE  # --to or --stop
    bad = raw_exchange(running.path, b'{"cmd": "redirect", "args": {"name": 5, "to": "x"}}\n', 1)
    assert bad[0]["ok"] is False and "'redirect' takes" in bad[0]["error"]
