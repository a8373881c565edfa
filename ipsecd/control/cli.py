"""``ipsecctl``: the command-line client of ipsecd's control socket.

Exit codes are part of the interface (scripts and systemd units branch on them):
0 success, 1 the daemon refused or the command failed, 2 usage error,
3 the daemon cannot be reached. Errors go to stderr prefixed "ipsecctl: " so
stdout stays clean for ``--json`` consumers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ipsecd.config import load_config
from ipsecd.control.keyfiles import UnsafeDirectory, check_name, write_private_files
from ipsecd.control.protocol import (
    DEFAULT_SOCKET,
    EXPORT_FORMATS,
    MAX_RESPONSE_BYTES,
    SOCKET_ENV,
    ControlError,
    ProtocolError,
    Request,
    Response,
)
from ipsecd.credentials import load_store
from ipsecd.errors import ConfigError
from ipsecd.logsafe import safe
from ipsecd.profiles import Platform, ProfileError, gateway_view, generate, profile_request
from ipsecd.settings_from_config import validate_proposal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
DEFAULT_CONFIG = "/etc/ipsecd/ipsecd.yaml"


class CannotConnect(ControlError):
    """The socket is missing, refuses connections, or we may not open it."""


class ControlClient:
    """A blocking client: ipsecctl runs one command and exits, so asyncio would add nothing."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._rfile: Any = None

    def __enter__(self) -> ControlClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect(self.path)
        except PermissionError:
            sock.close()
            raise CannotConnect(
                f"cannot connect to {self.path}: permission denied (run as root or as a member of ipsecd's group)"
            ) from None
        except OSError:
            sock.close()
            raise CannotConnect(f"cannot connect to {self.path}: is ipsecd running?") from None
        sock.settimeout(self.timeout)
        self._sock = sock
        self._rfile = sock.makefile("rb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rfile is not None:
            self._rfile.close()
        if self._sock is not None:
            self._sock.close()

    def _send(self, request: Request) -> None:
        assert self._sock is not None
        self._sock.sendall(request.encode())

    def _receive(self) -> Response | None:
        line = self._rfile.readline(MAX_RESPONSE_BYTES + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise ProtocolError("the daemon's answer was cut off or too long")
        return Response.decode(line)

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; ControlError carries the daemon's error text."""
        self._send(Request(cmd, args or {}))
        response = self._receive()
        if response is None:
            raise ControlError("ipsecd closed the connection without answering")
        if not response.ok:
            raise ControlError(response.error or "unknown error")
        return response.result

    def follow_logs(self) -> Iterator[str]:
        """Log records until the daemon closes the stream (it never ends on its own otherwise)."""
        self.call("log", {"follow": True})
        while (response := self._receive()) is not None:
            if response.log is not None:
                yield response.log
            elif not response.ok:
                raise ControlError(response.error or "unknown error")


# --------------------------------------------------------------------------- rendering


def printable(value: Any) -> Any:
    """``value`` with every string (keys too) made safe for a terminal.

    Results carry text peers chose (their IKE identities, later EAP identities): an
    ESC sequence or a newline in one must not repaint the operator's terminal or forge
    lines of the table. ``--json`` output needs no such care: JSON escapes them.
    """
    if isinstance(value, str):
        return safe(value, limit=0)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def _counter(value: Any) -> str:
    return f"{value:>10}" if isinstance(value, int) else f"{'?':>10}"


def render_sas(result: dict[str, Any]) -> str:
    """list-sas as a human table, one block per IKE SA, in the layout of ``swanctl --list-sas``."""
    sas = result.get("ike_sas") or []
    if not sas:
        return "no IKE SAs\n"
    out: list[str] = []
    for sa in sas:
        role = "initiator" if sa.get("initiator") else "responder"
        out.append(f"{sa.get('name', '?')}: {sa.get('state', '?')}, IKEv2, {role}")
        out.append(f"  local  '{sa.get('local_id', '?')}' @ {sa.get('local', '?')}{_vips(sa.get('local_vips'))}")
        out.append(f"  remote '{sa.get('remote_id', '?')}' @ {sa.get('remote', '?')}{_vips(sa.get('remote_vips'))}")
        if sa.get("remote_auth"):
            how = [str(sa["remote_auth"])]
            if sa.get("remote_eap_id"):
                how.append(f"EAP identity '{sa['remote_eap_id']}'")
            if sa.get("remote_cert"):
                how.append(f"certificate \"{sa['remote_cert']}\"")
            out.append(f"  remote authenticated with {', '.join(how)}")
        if sa.get("proposal"):
            out.append(f"  {sa['proposal']}")
        for child in sa.get("child_sas") or []:
            mode = str(child.get("mode", "?")).upper() + ("-in-UDP" if child.get("encap") else "")
            proposal = f", ESP:{child['proposal']}" if child.get("proposal") else ""
            out.append(f"  {child.get('name', '?')}: {child.get('state', '?')}, {mode}{proposal}")
            out.append(
                f"    in  {child.get('spi_in', '?'):>8}, {_counter(child.get('bytes_in'))} bytes, "
                f"{_counter(child.get('packets_in'))} packets"
            )
            out.append(
                f"    out {child.get('spi_out', '?'):>8}, {_counter(child.get('bytes_out'))} bytes, "
                f"{_counter(child.get('packets_out'))} packets"
            )
            out.append(f"    local  {_ts_text(child.get('local_ts'))}")
            out.append(f"    remote {_ts_text(child.get('remote_ts'))}")
    return "\n".join(out) + "\n"


def _vips(value: Any) -> str:
    """swanctl's " [10.3.0.1]" after an endpoint that has virtual IPs."""
    if isinstance(value, list) and value:
        return " [" + " ".join(str(v) for v in value) + "]"
    return ""


def render_pools(result: dict[str, Any]) -> str:
    """list-pools in the layout of ``swanctl --list-pools [--leases]``: name, base, online / offline / size."""
    pools = result.get("pools") or []
    if not pools:
        return "no pools\n"
    out: list[str] = []
    for p in pools:
        out.append(f"{p.get('name', '?'):<20} {p.get('base', '?'):<40} "
                   f"{p.get('online', '?'):>3} / {p.get('offline', '?'):>3} / {p.get('size', '?'):>3}")
        for lease in p.get("leases") or []:
            out.append(f"  {lease.get('address', '?'):<39} {lease.get('status', '?'):<7} "
                       f"'{lease.get('identity', '?')}'")
    return "\n".join(out) + "\n"


def render_certs(result: dict[str, Any]) -> str:
    """list-certs as text, one block per certificate, like ``swanctl --list-certs``."""
    out: list[str] = [f"credentials in {result.get('directory', '?')}"]
    for c in result.get("certificates") or []:
        kind = "CA certificate" if c.get("is_ca") else "certificate"
        key = ", has private key" if c.get("has_private_key") else ""
        out.append(f"  {c.get('source', '?')}/{Path(str(c.get('file', '?'))).name}: {kind}{key}")
        out.append(f"    subject:  \"{c.get('subject', '?')}\"")
        out.append(f"    issuer:   \"{c.get('issuer', '?')}\"")
        for san in c.get("sans") or []:
            out.append(f"    altNames: {san}")
        out.append(f"    validity: {c.get('not_before', '?')} to {c.get('not_after', '?')}")
        out.append(f"    pubkey:   {c.get('key_type', '?')} {c.get('key_size', '?')} bits, "
                   f"keyid {c.get('key_id', '?')}")
        out.append(f"    serial:   {c.get('serial', '?')}")
    for crl in result.get("crls") or []:
        out.append(f"  x509crl/{Path(str(crl.get('file', '?'))).name}: CRL of \"{crl.get('issuer', '?')}\", "
                   f"{crl.get('revoked', 0)} revoked, next update {crl.get('next_update') or 'none'}")
    for problem in result.get("problems") or []:
        out.append(f"  problem: {problem}")
    return "\n".join(out) + "\n"


def _ts_text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "-"
    return "?" if value is None else str(value)


def render_value(value: Any, indent: int = 0) -> str:
    """Any JSON result as indented ``key: value`` lines: status, stats and list-conns have no fixed layout."""
    return "\n".join(_render_lines(value, indent)) + "\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _render_lines(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(_render_lines(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item) if not isinstance(item, dict | list) else '-'}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                sub = _render_lines(item, indent + 1)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _print_message(result: Any, out: TextIO) -> None:
    if isinstance(result, dict) and isinstance(result.get("message"), str) and len(result) == 1:
        print(result["message"], file=out)
    elif result not in (None, {}):
        out.write(render_value(result))


# --------------------------------------------------------------------------- commands


def _write_export(files: Any, out_dir: str | None, out: TextIO) -> None:
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ControlError("unexpected export-keys answer from the daemon (no 'files')")
    for name in files:
        try:
            check_name(name)
        except UnsafeDirectory:
            raise ControlError(f"daemon sent an unsafe file name {name!r}") from None
    if out_dir is None:
        for name, content in files.items():
            if len(files) > 1:
                print(f"==> {name} <==", file=out)
            out.write(content if content.endswith("\n") or not content else content + "\n")
        return
    # Keys: never world-readable, never written through a planted link (see keyfiles.py).
    for target in write_private_files(out_dir, files):
        print(f"wrote {target}", file=out)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    with ControlClient(args.socket, args.timeout) as client:
        cmd = args.command
        if cmd == "log":
            for record in client.follow_logs():
                # a record may span lines (tracebacks); anything else unprintable is escaped
                print("\n".join(safe(line, limit=0) for line in record.split("\n")), file=out, flush=True)
            return EXIT_OK
        if cmd in ("up", "down"):
            result = client.call(cmd, {"name": args.name})
        elif cmd == "list-pools":
            pool_args: dict[str, Any] = {"leases": bool(args.leases)}
            if args.name:
                pool_args["name"] = args.name
            result = client.call(cmd, pool_args)
        elif cmd == "redirect":
            if bool(args.name) == bool(args.all):
                raise ControlError("redirect needs a connection name or --all (not both)")
            result = client.call(cmd, {"name": args.name, "to": None if args.stop else args.to,
                                       "full_at": args.when_full or 0})
        elif cmd == "export-keys":
            result = client.call(cmd, {"format": args.format})
            _write_export(result.get("files") if isinstance(result, dict) else None, args.out, out)
            return EXIT_OK
        else:
            result = client.call(cmd)
        if getattr(args, "json", False):
            out.write(json.dumps(result) + "\n")
            return EXIT_OK
        result = printable(result)
        if cmd == "list-sas":
            out.write(render_sas(result if isinstance(result, dict) else {}))
        elif cmd == "list-pools":
            out.write(render_pools(result if isinstance(result, dict) else {}))
        elif cmd == "list-certs":
            out.write(render_certs(result if isinstance(result, dict) else {}))
        elif cmd in ("status", "list-conns", "stats"):
            out.write(render_value(result))
        elif cmd == "redirect" and isinstance(result, dict) and isinstance(result.get("message"), str):
            print(result["message"], file=out)
        else:
            _print_message(result, out)
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _daemon_config(path: str) -> str | None:
    """The configuration file the running daemon loaded (its ``status``), or None if none answers."""
    try:
        with ControlClient(path, 5.0) as client:
            result = client.call("status")
    except (ControlError, OSError, ValueError):
        return None
    config = result.get("config") if isinstance(result, dict) else None
    return config if isinstance(config, str) and config else None


def _client_profile(args: argparse.Namespace, out: TextIO) -> int:
    """``client-profile``: no daemon needed; the configuration file and credentials are the truth."""
    try:
        config = load_config(args.config or _daemon_config(args.socket) or DEFAULT_CONFIG,
                             proposal_validator=validate_proposal)
        store, _problems = load_store(config.settings.credentials, config.key_passphrases())
        view = gateway_view(config, args.name, store, server=args.server)
        p12 = Path(args.p12).read_bytes() if args.p12 else None
        req = profile_request(config, view, args.user, include_password=args.include_password, p12=p12)
        if args.display_name:
            req = dataclasses.replace(req, display_name=args.display_name)
        profile = generate(view, req, args.platform)
        for warning in profile.warnings:
            print(f"ipsecctl: warning: {warning}", file=sys.stderr)
        _write_export(profile.files, args.out, out)
    except (ConfigError, ProfileError, ControlError) as exc:
        print(f"ipsecctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"ipsecctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsecctl",
        description="Control a running ipsecd over its control socket.",
        epilog="exit codes: 0 ok, 1 command failed, 2 usage error, 3 cannot connect to ipsecd",
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET,
        help=f"control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for an answer (default: wait as long as it takes)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in (
        ("status", "daemon status"),
        ("list-conns", "configured connections"),
        ("list-sas", "established IKE and Child SAs"),
        ("list-certs", "loaded certificates, trust anchors and CRLs"),
        ("stats", "counters"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="print the daemon's JSON answer unchanged")
    p = sub.add_parser("list-pools", help="virtual IP pools and their leases",
                       description="address pools: base, online / offline / size (swanctl --list-pools)")
    p.add_argument("--leases", action="store_true", help="list every lease: address, online/offline, identity")
    p.add_argument("--name", metavar="POOL", help="only this pool")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer unchanged")
    for name, text in (("up", "initiate a connection"), ("down", "close a connection's SAs")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("name", metavar="NAME", help="connection name from the configuration")
    sub.add_parser("reload", help="re-read the configuration", description="re-read the configuration")
    p = sub.add_parser("log", help="stream the daemon's log", description="stream the daemon's log until Ctrl-C")
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming new records (required)")
    p = sub.add_parser(
        "export-keys",
        help="export SA keys for Wireshark (needs settings.debug.allow_key_export)",
        description="export IKE and ESP keys so Wireshark can decrypt a capture; the files hold secrets",
    )
    p.add_argument("--format", choices=EXPORT_FORMATS, default="wireshark")
    p.add_argument("--out", metavar="DIR", help="write the files into DIR (mode 0600) instead of stdout")
    p = sub.add_parser(
        "redirect",
        help="send clients to another gateway (RFC 5685)",
        description="answer new clients of CONN (or --all) with a redirect to GW, and tell established clients "
                    "that support it (strongSwan, Apple, Android) to move there; --stop ends it",
    )
    p.add_argument("name", metavar="CONN", nargs="?", help="the connection whose clients move")
    p.add_argument("--all", action="store_true", help="every connection")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="GW", help="the new gateway: an IPv4/IPv6 address or a DNS name")
    target.add_argument("--stop", action="store_true", help="stop redirecting new clients")
    p.add_argument("--when-full", metavar="N", type=_positive_int,
                   help="only new clients, and only while N or more IKE SAs exist (the gateway is full); "
                        "established clients stay")
    p = sub.add_parser(
        "client-profile",
        help="print a ready-to-import VPN profile for a client (reads the configuration file)",
        description="generate a Windows PowerShell script, Apple .mobileconfig, Android .sswan or Linux "
                    "swanctl.conf + NetworkManager keyfile that matches the gateway's connection CONN",
    )
    p.add_argument("name", metavar="CONN", help="the gateway's connection (from the configuration)")
    p.add_argument("--user", required=True, help="the user's EAP identity (or IKE identity for certificates/PSK)")
    p.add_argument("--platform", required=True, choices=[x.value for x in Platform])
    p.add_argument("--config", "-c", help="ipsecd's configuration (default: the file the running daemon loaded, "
                                          f"else {DEFAULT_CONFIG})")
    p.add_argument("--server", help="the name clients dial (default: the connection's local.id if a DNS name)")
    p.add_argument("--include-password", action="store_true",
                   help="put the user's EAP password (or the PSK) from the configuration into the profile")
    p.add_argument("--p12", metavar="FILE", help="embed the user's PKCS#12 (certificate logins; Apple needs it)")
    p.add_argument("--display-name", help="the connection's name on the client")
    p.add_argument("--out", metavar="DIR", help="write the files into DIR (mode 0600) instead of stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ipsecctl``; returns the exit code instead of calling sys.exit (testable)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "client-profile":
        return _client_profile(args, sys.stdout)
    if args.command == "log" and not args.follow:
        print("ipsecctl: log needs --follow (ipsecd keeps no log history; see journalctl -u ipsecd)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, sys.stdout)
    except CannotConnect as exc:
        print(f"ipsecctl: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except ControlError as exc:
        print(f"ipsecctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError:
        print(f"ipsecctl: no answer from ipsecd within {args.timeout} s", file=sys.stderr)
        return EXIT_FAILED
    except (ConnectionError, BrokenPipeError) as exc:
        print(f"ipsecctl: connection to ipsecd lost: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # e.g. --out DIR not writable
        print(f"ipsecctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "log" else 130


if __name__ == "__main__":
    sys.exit(main())
