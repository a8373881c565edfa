"""Run strongSwan's charon inside a test namespace and read its SAs back via swanctl.

The rules baked in here were found by trying (see /work/shared/notes/strongswan-peer.md
and docs/interop.md): this kernel has no XFRM ESP, so charon uses the kernel-libipsec
userspace data plane (TUN ``ipsec0``) which must be loaded *before* kernel-netlink; every
instance gets its own strongswan.conf via ``STRONGSWAN_CONF`` and its own vici socket;
and because charon 5.9.8 always writes ``/var/run/charon.pid``, each one starts with a
private directory bind-mounted over ``/run`` in the mount namespace ``ip netns exec``
already gives it (so the bind mount vanishes with the process; nothing to unmount in
the host).

Note for peers: kernel-libipsec fakes NAT detection, so charon always floats to UDP
4500 after IKE_SA_INIT and sends ESP in UDP, even without a NAT.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netns import Netns, established_sa, kill_group, read_log

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
PLUGINS = ("random nonce openssl gcm aes sha1 sha2 hmac kdf pem pkcs1 pubkey x509 curve25519 chapoly "
           "kernel-libipsec kernel-netlink socket-default vici")
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL


def why_no_strongswan() -> str | None:
    """Why charon cannot run here, or None."""
    if not os.path.exists(CHARON):
        return f"needs strongSwan ({CHARON} missing)"
    if shutil.which(SWANCTL) is None:
        return "needs swanctl (strongswan-swanctl)"
    return None


# ---------------------------------------------------------------- vici raw format parser
_TOKEN = re.compile(r"\s*(?:(?P<open>\{)|(?P<close>\})|(?P<lopen>\[)|(?P<lclose>\])|(?P<word>[^\s{}\[\]]+))")
_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]*", re.ASCII)


def parse_vici_raw(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``swanctl ... --raw`` output into (label, section) pairs, one per message.

    swanctl prints each vici message on one line as ``<label> {key=value name {...}
    list=[a b]}``, e.g. ``list-sa event {peer {uniqueid=1 ... child-sas {net-1 {...
    local-ts=[10.1.0.0/24]}}}}``; ``list [a b]`` (no ``=``) is accepted too.
    Values can contain spaces (distinguished names), so a value keeps absorbing the
    following words until one looks like the start of the next element (``key=``,
    ``name {``, ``name [``) or a bracket closes.  Sections become dicts, lists become
    lists of strings, everything else stays a string.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))

    messages: list[tuple[str, dict[str, Any]]] = []
    i = 0

    def starts_element(j: int) -> bool:
        if j >= len(tokens):
            return True
        kind, val = tokens[j]
        if kind in ("close", "lclose"):
            return True
        if kind != "word":
            return False
        key, eq, _ = val.partition("=")
        if eq:
            return bool(_KEY.fullmatch(key))
        return j + 1 < len(tokens) and tokens[j + 1][0] in ("open", "lopen")

    def parse_section() -> dict[str, Any]:
        nonlocal i
        out: dict[str, Any] = {}
        while i < len(tokens):
            kind, val = tokens[i]
            if kind == "close":
                i += 1
                return out
            if kind != "word":
                raise ValueError(f"unexpected {val!r} in vici output")
            nxt = tokens[i + 1][0] if i + 1 < len(tokens) else None
            key, eq, value = val.partition("=")
            if nxt == "lopen" and (not eq or not value):
                i += 2  # "key=[a b]" is the list form swanctl prints; "key [a b]" is accepted too
                items: list[str] = []
                while i < len(tokens) and tokens[i][0] != "lclose":
                    items.append(tokens[i][1])
                    i += 1
                i += 1
                out[key] = items
            elif eq and _KEY.fullmatch(key):
                i += 1
                parts = [value]
                while not starts_element(i):
                    parts.append(tokens[i][1])
                    i += 1
                out[key] = " ".join(parts)
            elif nxt == "open":
                i += 2
                out[val] = parse_section()
            else:
                raise ValueError(f"cannot parse vici output near {val!r}")
        return out

    while i < len(tokens):
        # A message label may be several words ("list-sa event"), then "{".
        label: list[str] = []
        while i < len(tokens) and tokens[i][0] == "word":
            label.append(tokens[i][1])
            i += 1
        if i >= len(tokens) or tokens[i][0] != "open":
            break
        i += 1
        messages.append((" ".join(label), parse_section()))
    return messages


_INT_FIELDS = ("bytes-in", "bytes-out", "packets-in", "packets-out", "encr-keysize", "uniqueid",
               "established", "rekey-time", "reauth-time", "life-time", "install-time", "use-in", "use-out",
               "local-port", "remote-port")


def _ints(d: dict[str, Any]) -> dict[str, Any]:
    for k in _INT_FIELDS:
        if isinstance(d.get(k), str) and d[k].isdigit():
            d[k] = int(d[k])
    return d


def sas_from_raw(text: str) -> list[dict[str, Any]]:
    """IKE SAs from ``swanctl --list-sas --raw``: one dict per IKE SA, children as a list.

    Each IKE dict holds strongSwan's own keys (``state``, ``local-host``, ``local-port``,
    ``local-id``, ``remote-*``, ``initiator``, ``encr-alg``, ``encr-keysize``,
    ``integ-alg``, ``prf-alg``, ``dh-group``, ...) plus ``name`` (the connection) and
    ``child-sas``: a list of dicts (``name``, ``state``, ``spi-in``, ``spi-out``, ``mode``,
    ``encap``, ``encr-alg``, ``local-ts`` list, ``remote-ts`` list, ``bytes-in``, ...).
    Counters, ports and key sizes are ints; everything else is strongSwan's text.
    """
    sas: list[dict[str, Any]] = []
    for label, msg in parse_vici_raw(text):
        if label != "list-sa event":
            continue
        for name, ike in msg.items():
            if not isinstance(ike, dict):
                continue
            children = []
            for key, child in (ike.get("child-sas") or {}).items():
                if isinstance(child, dict):
                    children.append(_ints({"key": key, **child}))
            sas.append(_ints({**ike, "name": name, "child-sas": children}))
    return sas


def swan_proposal(sa: dict[str, Any]) -> str:
    """The algorithm string strongSwan prints for an SA, e.g. ``AES_GCM_16-256/PRF_HMAC_SHA2_256/ECP_256``.

    Built from the vici fields the way ``swanctl --list-sas`` does, so it can be compared
    with ipsecd's ``proposal`` field directly.
    """
    parts: list[str] = []
    encr = sa.get("encr-alg")
    if encr:
        ks = sa.get("encr-keysize")
        parts.append(f"{encr}-{ks}" if ks else str(encr))
    for key in ("integ-alg", "prf-alg", "dh-group"):
        if sa.get(key):
            parts.append(str(sa[key]))
    if sa.get("esn") == "1":
        parts.append("ESN")
    return "/".join(parts)


# ---------------------------------------------------------------- configuration
@dataclass
class ChildParams:
    """One ``children.<name>`` section of swanctl.conf."""

    name: str = "net"
    local_ts: Sequence[str] = ("10.1.0.0/24",)
    remote_ts: Sequence[str] = ("10.2.0.0/24",)
    esp_proposals: Sequence[str] = ("aes256gcm16",)
    mode: str = "tunnel"
    start_action: str = "none"  # none | trap | start
    rekey_time: str | None = None
    life_time: str | None = None
    rekey_bytes: int | None = None
    rekey_packets: int | None = None
    dpd_action: str | None = None
    close_action: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class ConnParams:
    """One ``connections.<name>`` section plus its PSK secret."""

    local_addrs: Sequence[str]
    remote_addrs: Sequence[str] = ("%any",)
    local_id: str = "a.test"
    remote_id: str = "b.test"
    psk: str = "interop-test-psk-0123456789"
    proposals: Sequence[str] = ("aes256gcm16-prfsha256-ecp256",)
    children: Sequence[ChildParams] = (ChildParams(),)
    name: str = "peer"
    rekey_time: str | None = None
    reauth_time: str | None = None
    over_time: str | None = None
    dpd_delay: str | None = None
    dpd_timeout: str | None = None
    mobike: bool = False
    fragmentation: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # swanctl's top-level pools section: {name: {key: value}}, e.g. {"rw4": {"addrs": "10.3.0.0/24"}}
    pools: dict[str, dict[str, str]] = field(default_factory=dict)


def _kv(indent: str, key: str, value: object) -> str:
    return f"{indent}{key} = {value}\n"


def swanctl_conf(conn: ConnParams) -> str:
    """Render swanctl.conf text for one connection and its PSK."""
    c = f"connections {{\n  {conn.name} {{\n"
    c += _kv("    ", "version", 2)
    c += _kv("    ", "local_addrs", ",".join(conn.local_addrs))
    c += _kv("    ", "remote_addrs", ",".join(conn.remote_addrs))
    c += _kv("    ", "proposals", ",".join(conn.proposals))
    c += _kv("    ", "mobike", "yes" if conn.mobike else "no")
    for key in ("rekey_time", "reauth_time", "over_time", "dpd_delay", "dpd_timeout", "fragmentation"):
        val = getattr(conn, key)
        if val is not None:
            c += _kv("    ", key, val)
    for key, val in conn.extra.items():
        c += _kv("    ", key, val)
    c += f"    local {{\n      auth = psk\n      id = {conn.local_id}\n    }}\n"
    c += f"    remote {{\n      auth = psk\n      id = {conn.remote_id}\n    }}\n"
    c += "    children {\n"
    for ch in conn.children:
        c += f"      {ch.name} {{\n"
        c += _kv("        ", "local_ts", ",".join(ch.local_ts))
        c += _kv("        ", "remote_ts", ",".join(ch.remote_ts))
        if ch.esp_proposals:  # none: e.g. a child with only ah_proposals (in extra)
            c += _kv("        ", "esp_proposals", ",".join(ch.esp_proposals))
        c += _kv("        ", "mode", ch.mode)
        c += _kv("        ", "start_action", ch.start_action)
        for key in ("rekey_time", "life_time", "rekey_bytes", "rekey_packets", "dpd_action", "close_action"):
            val = getattr(ch, key)
            if val is not None:
                c += _kv("        ", key, val)
        for key, val in ch.extra.items():
            c += _kv("        ", key, val)
        c += "      }\n"
    c += "    }\n  }\n}\n"
    if conn.pools:
        c += "pools {\n" + "".join(
            f"  {name} {{\n" + "".join(_kv("    ", k, v) for k, v in attrs.items()) + "  }\n"
            for name, attrs in conn.pools.items()) + "}\n"
    c += "secrets {\n  ike-1 {\n"
    c += _kv("    ", "id-1", conn.local_id)
    c += _kv("    ", "id-2", conn.remote_id)
    c += _kv("    ", "secret", f'"{conn.psk}"')
    c += "  }\n}\n"
    return c


def strongswan_conf(log_path: Path, vici_socket: str, extra_charon: str = "") -> str:
    """Render strongswan.conf: explicit plugin list, private vici socket, verbose file log."""
    return f"""charon {{
  load_modular = no
  load = {PLUGINS}
  port = 500
  port_nat_t = 4500
  install_routes = yes
  retransmit_timeout = 1.0
  retransmit_tries = 3
{extra_charon}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  filelog {{
    main {{
      path = {log_path}
      append = no
      flush_line = yes
      time_add_ms = yes
      default = 1
      ike = 2
      enc = 1
      net = 1
      chd = 2
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{vici_socket}
    }}
  }}
}}
"""


# ---------------------------------------------------------------- the process
class Charon:
    """One charon in a namespace, configured through swanctl over its private vici socket.

    Usage::

        ch = Charon(topo.a, tmp_path / "a", ConnParams(local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"]))
        ch.start()
        ch.initiate("net")
        ike = ch.wait_established(10)

    ``stop()`` is idempotent; the Topology also kills it if a test forgets.
    """

    def __init__(self, ns: Netns, workdir: str | os.PathLike[str], conn: ConnParams, *,
                 extra_charon: str = "") -> None:
        self.ns = ns
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conn = conn
        self.extra_charon = extra_charon
        self.log_path = self.workdir / "charon.log"
        self.stdout_path = self.workdir / "charon.stdout"
        self.conf_path = self.workdir / "strongswan.conf"
        self.swanctl_path = self.workdir / "swanctl.conf"
        self.run_dir = self.workdir / "run"
        sock = self.workdir / "charon.vici"
        self._short_dir: str | None = None
        if len(str(sock)) > SUN_PATH_MAX - 4:
            # pytest's tmp_path can be long; a Unix socket path cannot.
            self._short_dir = tempfile.mkdtemp(prefix="ipd-vici-")
            sock = Path(self._short_dir) / "charon.vici"
        self.vici_socket = str(sock)
        self.uri = f"unix://{self.vici_socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    # -------------------------------------------------------- lifecycle
    def write_config(self) -> None:
        self.run_dir.mkdir(exist_ok=True)
        self.conf_path.write_text(strongswan_conf(self.log_path, self.vici_socket, self.extra_charon))
        self.swanctl_path.write_text(swanctl_conf(self.conn))

    def start(self, timeout: float = 10.0, load: bool = True) -> Charon:
        """Write configs, start charon, wait for its vici socket, and load the connection."""
        why = why_no_strongswan()
        if why:
            raise RuntimeError(why)
        self.write_config()
        with_run = (f"mount --bind {shlex.quote(str(self.run_dir))} /run && "
                    f"exec env STRONGSWAN_CONF={shlex.quote(str(self.conf_path))} {CHARON}")
        self.proc = self.ns.popen(["bash", "-c", with_run], self.stdout_path)
        end = time.monotonic() + timeout
        while not os.path.exists(self.vici_socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon in {self.ns.name} exited ({self.proc.returncode})\n{self.log_tail()}")
            if time.monotonic() > end:
                raise TimeoutError(f"charon in {self.ns.name}: no vici socket after {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)
        if load:
            self.load()
        return self

    def load(self) -> None:
        """(Re)load swanctl.conf; rewrite ``self.conn`` first to change the configuration."""
        self.swanctl_path.write_text(swanctl_conf(self.conn))
        self.swanctl("--load-all", "--file", str(self.swanctl_path))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, the process group; the /run bind mount dies with it."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    def kill(self) -> None:
        """SIGKILL the process group: charon crashes, sends no Delete and forgets every SA.

        Removes the vici socket and pid file it leaves behind, so :meth:`start` can run
        a fresh charon from the same directory (as a restarted service would).
        """
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None
        for stale in (Path(self.vici_socket), self.run_dir / "charon.pid"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def __enter__(self) -> Charon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------- control
    def swanctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this charon (from the host namespace: Unix sockets cross netns)."""
        res = subprocess.run([SWANCTL, *args, "--uri", self.uri], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"swanctl {' '.join(args)} -> {res.returncode}\n{res.stdout}{res.stderr}\n"
                               f"{self.log_tail()}")
        return res

    def initiate(self, child: str | None = None, ike: str | None = None, timeout: int = 10,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """``swanctl --initiate``; blocks until the exchange finished or failed."""
        args = ["--initiate", "--timeout", str(timeout)]
        if child:
            args += ["--child", child]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, check=check, timeout=timeout + 10)

    def terminate(self, ike: str | None = None, child: str | None = None, check: bool = True,
                  timeout: int = 10) -> subprocess.CompletedProcess[str]:
        """``swanctl --terminate`` of an IKE SA or a Child SA by configuration name."""
        args = ["--terminate", "--timeout", str(timeout)]
        if child:
            args += ["--child", child]
        if ike or not child:
            args += ["--ike", ike or self.conn.name]
        return self.swanctl(*args, check=check, timeout=timeout + 10)

    def list_sas(self) -> list[dict[str, Any]]:
        """Current IKE SAs with their Child SAs (see :func:`sas_from_raw`)."""
        return sas_from_raw(self.swanctl("--list-sas", "--raw").stdout)

    def wait_established(self, timeout: float = 15.0, child: str | None = "") -> dict[str, Any]:
        """Poll until an IKE SA is ESTABLISHED and (unless ``child`` is None) a Child SA INSTALLED.

        ``child=""`` accepts any child; a name requires that child.  Returns the IKE SA
        dict; raises AssertionError with the log tail on timeout.
        """
        end = time.monotonic() + timeout
        sas: list[dict[str, Any]] = []
        while time.monotonic() < end:
            sas = self.list_sas()
            found = established_sa(sas, child, "child-sas")
            if found is not None:
                return found
            time.sleep(0.1)
        raise AssertionError(f"charon in {self.ns.name}: no established SA within {timeout}s: {sas}\n"
                             f"{self.log_tail()}")

    # -------------------------------------------------------- diagnostics
    def log_text(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = 60) -> str:
        """Last lines of charon's file log (and its stdout), for failure messages."""
        out = f"--- charon log {self.log_path} (last {lines} lines) ---\n"
        out += "\n".join(self.log_text().splitlines()[-lines:])
        try:
            extra = self.stdout_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            extra = ""
        if extra:
            out += f"\n--- charon stdout ---\n{extra[-2000:]}"
        return out
