"""The list-sas view of IKE and Child SAs, built in one place (typed by control/protocol.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ipsecd.control.protocol import ChildSaInfo, IkeSaInfo, format_endpoint, format_spi
from ipsecd.ike.child_sa import ChildSa
from ipsecd.ike.ike_sa import IkeSa
from ipsecd.ike.proposal import proposal_to_swanctl
from ipsecd.ike.ts import ts_to_str
from ipsecd.logsafe import safe


def _left(t: float | None, now: float) -> int | None:
    return None if t is None else max(int(t - now), 0)


def _counters(counters: Mapping[str, Any], spi: bytes) -> Mapping[str, Any]:
    v = counters.get(spi.hex(), {})
    return v if isinstance(v, dict) else {}


def child_info(c: ChildSa, now: float, counters: Mapping[str, Any] | None = None) -> ChildSaInfo:
    e = c.event
    cin = _counters(counters or {}, e.spi_in)
    cout = _counters(counters or {}, e.spi_out)
    return {
        "name": e.child, "state": c.state.value, "reqid": e.reqid,
        "spi_in": format_spi(e.spi_in), "spi_out": format_spi(e.spi_out),
        "mode": e.mode, "encap": e.encap, "proposal": proposal_to_swanctl(e.proposal),
        "local_ts": [ts_to_str(t) for t in e.local_ts], "remote_ts": [ts_to_str(t) for t in e.remote_ts],
        "bytes_in": int(cin.get("bytes", 0)), "bytes_out": int(cout.get("bytes", 0)),
        "packets_in": int(cin.get("packets", 0)), "packets_out": int(cout.get("packets", 0)),
        "drops_in": dict(cin.get("drops", {})),
        "rekey_in": _left(c.rekey_at, now), "expires_in": _left(c.expire_at, now),
    }


def sa_info(sa: IkeSa, counters: Mapping[str, Any] | None = None) -> IkeSaInfo:
    """One IKE SA with its Child SAs; ``counters`` are the data plane's per-SPI counters."""
    now = sa.now
    return {
        "name": sa.settings.name,
        "id": sa.ike_sa_id,
        "state": sa.state.value,
        "local": format_endpoint(sa.local[0], sa.local[1]),
        "remote": format_endpoint(sa.remote[0], sa.remote[1]),
        "local_id": str(sa.local_identity),
        "remote_id": safe(sa.remote_identity or sa.settings.remote_id),
        "initiator": sa.initiator,
        "spi_i": sa.spi_i.hex(),
        "spi_r": sa.spi_r.hex(),
        "proposal": proposal_to_swanctl(sa.proposal) if sa.proposal else "",
        "nat_local": sa.local_behind_nat,
        "nat_remote": sa.remote_behind_nat,
        "encap": sa.encap,
        "mobike": sa.mobike.enabled,
        "mobike_moves": sa.mobike.moves,
        "local_vips": [str(a) for a in sa.vips.local],
        "remote_vips": [str(a) for a in sa.vips.remote],
        "rekey_in": _left(sa.rekey_at, now),
        "expires_in": _left(sa.hard_at, now),
        "remote_auth": sa.login.method if sa.login is not None else "",
        "remote_eap_id": safe(sa.login.eap_identity) if sa.login is not None and sa.login.eap_identity else None,
        "remote_cert": sa.login.certificate if sa.login is not None else None,
        "child_sas": [child_info(c, now, counters) for c in sa.children],
    }
