"""FreeRADIUS 3.2 (Debian ``freeradius``) as the real RADIUS server of namespace tests.

:class:`FreeRadius` writes a private configuration directory: Debian's tree copied
(for the module definitions and dictionaries), then our own ``radiusd.conf`` paths,
``clients.conf`` (our NAS and its secret, Message-Authenticator required), the users
file (MSCHAPv2 users as Cleartext-Password), an ``eap`` module with only mschapv2 and
tls (certificates made at test time, written into the directory), and one virtual
server listening on one address only, so two instances can share a namespace.
Accounting goes to the ``detail`` module under ``log/radacct/``, which tests read.

It runs as ``freeradius -X -d DIR`` inside a namespace through :meth:`Netns.popen`
(own process group, killed on stop and by the topology's cleanup).  A socket for the
test's own RADIUS client is created inside a namespace by :func:`udp_socket_in`.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.eap_pki import Issued
from tests.netns import Netns, kill_group, read_log

SYSTEM_CONFIG = Path("/etc/freeradius/3.0")
CLONE_NEWNET = 0x40000000


def why_no_freeradius() -> str | None:
    if shutil.which("freeradius") is None or not SYSTEM_CONFIG.is_dir():
        return "needs FreeRADIUS (make test installs freeradius)"
    return None


def udp_socket_in(ns: Netns, family: int = socket.AF_INET) -> socket.socket:
    """A UDP socket living in ``ns``: made by a thread that joined the namespace (setns is per thread)."""
    result: dict[str, object] = {}

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
            result["sock"] = socket.socket(family, socket.SOCK_DGRAM)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    sock = result["sock"]
    assert isinstance(sock, socket.socket)
    return sock


_EAP = """eap {{
	default_eap_type = {default}
	timer_expire = 60
	ignore_unknown_eap_types = no
	cisco_accounting_username_bug = no
	max_sessions = ${{max_requests}}
	tls-config tls-common {{
		private_key_file = {dir}/certs/server.key
		certificate_file = {dir}/certs/server.pem
		ca_file = {dir}/certs/ca.pem
		cipher_list = "DEFAULT"
		tls_min_version = "1.2"
		tls_max_version = "{tls_max}"
		ecdh_curve = ""
		fragment_size = 1024
		cache {{
			enable = no
		}}
		verify {{
		}}
		ocsp {{
			enable = no
		}}
	}}
	tls {{
		tls = tls-common
	}}
	mschapv2 {{
		send_error = {send_error}
	}}
}}
"""

_SITE = """server default {{
	listen {{
		type = auth
		ipaddr = {ip}
		port = {auth_port}
	}}
	listen {{
		type = acct
		ipaddr = {ip}
		port = {acct_port}
	}}
	authorize {{
		eap {{
			ok = return
		}}
		files
	}}
	authenticate {{
		Auth-Type MS-CHAP {{
			mschap
		}}
		eap
	}}
	preacct {{
		acct_unique
	}}
	accounting {{
		detail
	}}
	post-auth {{
		Post-Auth-Type REJECT {{
			eap
		}}
	}}
}}
"""


class FreeRadius:
    """One FreeRADIUS instance with a private config, listening on ``ip`` inside ``ns``."""

    def __init__(self, ns: Netns, workdir: Path, ip: str, *, secret: str, nas: str,
                 users: dict[str, str], ca: Issued, server: Issued, tls_max: str = "1.2",
                 send_error: bool = False, auth_port: int = 1812, acct_port: int = 1813) -> None:
        self.ns, self.dir, self.ip = ns, workdir, ip
        self.log = workdir / "radiusd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write(secret, nas, users, ca, server, tls_max, send_error, auth_port, acct_port)

    def _write(self, secret: str, nas: str, users: dict[str, str], ca: Issued, server: Issued, tls_max: str,
               send_error: bool, auth_port: int, acct_port: int) -> None:
        d = self.dir
        shutil.copytree(SYSTEM_CONFIG, d, symlinks=True)
        for sub in ("log", "run"):
            (d / sub).mkdir()
        conf = (d / "radiusd.conf").read_text()
        conf = re.sub(r"(?m)^raddbdir = .*$", f"raddbdir = {d}", conf)
        conf = re.sub(r"(?m)^logdir = .*$", f"logdir = {d}/log", conf)
        conf = re.sub(r"(?m)^run_dir = .*$", f"run_dir = {d}/run", conf)
        conf = re.sub(r"(?m)^(\s*)(user|group) = freerad$", r"\1# \2 = freerad (tests run it as root)", conf)
        (d / "radiusd.conf").write_text(conf)
        (d / "clients.conf").write_text(
            f"client ipsecd {{\n\tipaddr = {nas}\n\tsecret = {secret}\n\trequire_message_authenticator = yes\n}}\n")
        authorize = d / "mods-config" / "files" / "authorize"
        authorize.write_text("".join(f'{user}\tCleartext-Password := "{pw}"\n' for user, pw in users.items()))
        certs = d / "certs"
        server.write(certs, "server")
        (certs / "ca.pem").write_bytes(ca.write(certs, "ca")[0].read_bytes())
        (d / "mods-enabled" / "eap").unlink()
        (d / "mods-enabled" / "eap").write_text(_EAP.format(
            default="mschapv2", dir=d, tls_max=tls_max, send_error="yes" if send_error else "no"))
        for site in (d / "sites-enabled").iterdir():
            site.unlink()
        (d / "sites-enabled" / "ipsecd").write_text(_SITE.format(ip=self.ip, auth_port=auth_port,
                                                                  acct_port=acct_port))

    def start(self, timeout: float = 20.0) -> None:
        self.proc = self.ns.popen(["freeradius", "-X", "-d", str(self.dir)], log_path=self.log)
        end = time.monotonic() + timeout
        while "Ready to process requests" not in read_log(self.log):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"FreeRADIUS did not start:\n{read_log(self.log)[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, grace=2.0)
            self.proc = None

    def accounting_details(self) -> str:
        """Everything the detail module wrote (one file per NAS address and day)."""
        return "".join(p.read_text(errors="replace") for p in sorted((self.dir / "log" / "radacct").rglob("detail-*")))
