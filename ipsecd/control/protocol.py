"""The control socket's wire format, shared by the server (ipsecd) and the client (ipsecctl).

Newline-delimited JSON over a Unix stream socket, one request and one response
per line, several requests per connection allowed:

    -> {"v": 1, "cmd": "list-sas", "args": {}}
    <- {"v": 1, "ok": true, "result": {"ike_sas": [...]}}
    <- {"v": 1, "ok": false, "error": "no connection named 'x'"}

``log`` (with ``{"follow": true}``) is the one streaming command: after the
ok-response the server sends ``{"v": 1, "log": "..."}`` lines until the client
closes the connection.

JSON lines rather than a binary protocol because operators debug with
``socat - UNIX-CONNECT:/run/ipsecd/ipsecd.sock``, and scripts and monitoring
read ``--json`` output with jq.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from ipsecd.errors import IpsecdError

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/ipsecd/ipsecd.sock"
SOCKET_ENV = "IPSECD_SOCKET"
MAX_REQUEST_BYTES = 64 * 1024
"""Requests are tiny; a longer line is a confused or hostile client, answered and dropped."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""Responses can be large (thousands of SAs), so the client's line limit is generous."""
MAX_DEPTH = 32
"""Deepest nesting of arrays/objects accepted in one line. Real messages nest 5 deep; Python's
json module recurses per level, so 60,000 ``[`` in a 64 KiB line would raise RecursionError."""

COMMANDS = ("status", "list-conns", "list-sas", "list-pools", "list-certs", "stats", "up", "down", "reload",
            "export-keys", "log", "redirect")
EXPORT_FORMATS = ("wireshark",)


class ControlError(IpsecdError):
    """A control request failed in a way the user should read ("no connection named 'x'").

    Handlers raise it; the server turns its message into ``{"ok": false, "error": ...}``.
    """


class ProtocolError(ControlError):
    """A line on the control socket is not a valid request or response."""


@dataclass(frozen=True)
class Request:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    v: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return _line({"v": self.v, "cmd": self.cmd, "args": self.args})

    @classmethod
    def decode(cls, line: bytes) -> Request:
        """Parse one request line; every way it can be wrong is a ProtocolError saying which."""
        msg = _object(line, prescan=True)
        v = msg.get("v", PROTOCOL_VERSION)
        if v != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol version {v!r} (this ipsecd speaks {PROTOCOL_VERSION})")
        cmd = msg.get("cmd")
        if not isinstance(cmd, str):
            raise ProtocolError("request has no 'cmd' string")
        args = msg.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ProtocolError("'args' must be a JSON object")
        return cls(cmd, args, v)


@dataclass(frozen=True)
class Response:
    """One line from the server: a result, an error, or (while following logs) a log record."""

    ok: bool
    result: Any = None
    error: str | None = None
    log: str | None = None

    def encode(self) -> bytes:
        if self.log is not None:
            return _line({"v": PROTOCOL_VERSION, "log": self.log})
        if self.ok:
            return _line({"v": PROTOCOL_VERSION, "ok": True, "result": self.result})
        return _line({"v": PROTOCOL_VERSION, "ok": False, "error": self.error or "unknown error"})

    @classmethod
    def decode(cls, line: bytes) -> Response:
        msg = _object(line)
        if "log" in msg:
            return cls(ok=True, log=str(msg["log"]))
        ok = msg.get("ok")
        if ok is True:
            return cls(ok=True, result=msg.get("result"))
        if ok is False:
            return cls(ok=False, error=str(msg.get("error") or "unknown error"))
        raise ProtocolError("response has no 'ok' field")


def _line(obj: dict[str, Any]) -> bytes:
    # Compact and ASCII-only: one message is exactly one line whatever the strings contain.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # brackets inside strings do not nest
_OPEN = frozenset(b"[{")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(line: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in a JSON text, counting no further than ``limit + 1``.

    A linear scan outside strings that stops as soon as ``limit`` is exceeded, so it runs
    before (and instead of) a recursive parse of hostile input: well under 50 ms for the
    worst 64 KiB request.
    """
    depth = worst = 0
    for byte in _JSON_STRING.sub(b"", line).translate(None, _NOT_BRACKET):
        if byte in _OPEN:
            depth += 1
            if depth > worst:
                worst = depth
                if worst > limit:
                    break
        else:
            depth -= 1
    return worst


def _object(line: bytes, *, prescan: bool = False) -> dict[str, Any]:
    """One JSON object from a line. ``prescan``: refuse deep nesting before parsing (requests,
    which are small and come from any local client); responses, up to 64 MiB, rely on the
    parser's own recursion limit, turned into the same error."""
    if prescan and nesting_depth(line) > MAX_DEPTH:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from None
    except RecursionError:  # deeper than the interpreter allows: never let it escape
        raise ProtocolError("nested deeper than the JSON parser allows") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object")
    return msg


def format_spi(spi: int | bytes) -> str:
    """A 32-bit ESP SPI as the 8 lowercase hex digits list-sas shows ("c1a2b3d4")."""
    value = int.from_bytes(spi, "big") if isinstance(spi, bytes) else spi
    return f"{value:08x}"


def format_endpoint(addr: object, port: int) -> str:
    """An address and port as list-sas shows them, swanctl style: ``192.0.2.1[500]``."""
    return f"{addr}[{port}]"


# ----- result shapes (the list-sas schema is a contract: scripts and tests parse it)


class ChildSaInfo(TypedDict):
    name: str
    state: str  # "INSTALLED", "REKEYING", "REKEYED", "DELETING"
    reqid: int
    spi_in: str  # format_spi()
    spi_out: str
    mode: str  # "tunnel" | "transport"
    encap: bool  # ESP in UDP (RFC 3948)
    proposal: str  # e.g. "AES_GCM_16-256/NO_EXT_SEQ"
    local_ts: list[str]
    remote_ts: list[str]
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    drops_in: dict[str, int]
    rekey_in: int | None  # seconds until the soft lifetime (None: no time limit)
    expires_in: int | None  # seconds until the hard lifetime


class IkeSaInfo(TypedDict):
    name: str  # the connection name
    id: int  # the IKE SA's number (changes with a rekey)
    state: str  # "CONNECTING", "ESTABLISHED", "REKEYED", "DELETING", ...
    local: str  # format_endpoint()
    remote: str
    local_id: str
    remote_id: str
    initiator: bool
    spi_i: str  # 16 hex digits
    spi_r: str
    proposal: str  # e.g. "AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256"
    nat_local: bool  # we are behind a NAT
    nat_remote: bool  # the peer is behind a NAT
    encap: bool
    local_vips: list[str]  # virtual IPs the gateway assigned to us (client)
    remote_vips: list[str]  # virtual IPs we leased to the peer (gateway)
    rekey_in: int | None
    expires_in: int | None
    remote_auth: str  # how the peer authenticated: psk, pubkey, eap-mschapv2, eap-tls, eap-radius ("" not yet)
    remote_eap_id: str | None  # its EAP identity, after EAP
    remote_cert: str | None  # the subject of its validated certificate
    child_sas: list[ChildSaInfo]


class ListSasResult(TypedDict):
    ike_sas: list[IkeSaInfo]


class LeaseInfo(TypedDict):
    address: str
    status: str  # "online" (an IKE SA uses it) | "offline" (kept for its identity)
    identity: str
    since: float  # Unix time of the last change


class PoolInfo(TypedDict, total=False):
    name: str
    base: str  # the first address served
    last: str
    size: int
    online: int
    offline: int
    leases: list[LeaseInfo]  # only with {"leases": true}


class ListPoolsResult(TypedDict):
    pools: list[PoolInfo]


class ExportKeysResult(TypedDict):
    """``files`` maps a bare file name (e.g. "esp_sa", "ikev2_decryption_table") to its content."""

    files: dict[str, str]


class ControlHandler(Protocol):
    """What the daemon provides to the control server; one method per command.

    Methods raise ControlError for user errors; anything else is logged by the
    server and answered as an internal error, never crashing it.
    """

    async def list_sas(self) -> dict[str, Any]: ...

    async def list_conns(self) -> dict[str, Any]: ...

    async def list_pools(self, leases: bool, name: str | None) -> dict[str, Any]: ...
    async def list_certs(self) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def up(self, name: str) -> dict[str, Any]: ...

    async def down(self, name: str) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...

    async def export_keys(self, fmt: str) -> dict[str, Any]: ...

    async def redirect(self, name: str | None, to: str | None, full_at: int) -> dict[str, Any]: ...

    def subscribe_logs(self) -> AsyncIterator[str]: ...
