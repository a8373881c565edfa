"""strongSwan clients configured by nothing but the Linux profile ipsecctl generates.

``profile_client`` runs ``ipsecctl client-profile CONN --platform linux`` against the
gateway's own configuration file, lays the files out the way ``swanctl --load-all
--file`` reads them (the profile's swanctl.conf, its CA in x509ca/, and for certificate
logins the user's certificate and key in x509/ and private/), starts a charon in the
client's namespace and loads exactly that. The profile is thereby proven to work.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.ipsecd_proc import Ipsecd
from tests.netns import Netns
from tests.pki import Issued, write_swanctl
from tests.ra_interop import RA_PLUGINS
from tests.strongswan import Charon, ConnParams


def generate_profile(gw: Ipsecd, conn: str, user: str, platform: str, out: Path, *, server: str,
                     extra: Sequence[str] = ("--include-password",)) -> dict[str, str]:
    """``ipsecctl client-profile`` into ``out``: file name -> text."""
    gw.ctl("client-profile", conn, "--user", user, "--platform", platform, "--config", str(gw.config_path),
           "--server", server, "--out", str(out), *extra)
    return {p.name: p.read_text() for p in sorted(out.iterdir())}


def profile_client(make: Callable[..., Charon], ns: Netns, gw: Ipsecd, conn: str, user: str, workdir: Path, *,
                   server: str, name: str, user_cert: Issued | None = None,
                   charon_settings: str | None = None) -> Charon:
    """A charon in ``ns`` whose whole configuration is the Linux profile for ``user``.

    ``charon_settings``: strongswan.conf lines for charon (plugins, logging); default: the
    remote-access plugin set.
    """
    files = generate_profile(gw, conn, user, "linux", workdir / f"{name}-profile", server=server)
    conf_dir = workdir / f"{name}-swanctl"
    write_swanctl(conf_dir, own=[user_cert] if user_cert is not None else [])
    for fname in files:
        src = workdir / f"{name}-profile" / fname
        if fname.endswith(".swanctl.conf"):
            shutil.copy(src, conf_dir / "swanctl.conf")
        elif fname.endswith(".pem"):
            shutil.copy(src, conf_dir / "x509ca" / fname)
    ch = make(ns, ConnParams(local_addrs=[], name=conn), name=name, start=False,
              extra_charon=charon_settings if charon_settings is not None else f"  load = {RA_PLUGINS}\n")
    ch.start(load=False)
    loaded = ch.swanctl("--load-all", "--file", str(conf_dir / "swanctl.conf"))
    assert "failed" not in loaded.stdout, loaded.stdout
    return ch
