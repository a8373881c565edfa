"""Android: a ``.sswan`` profile for the strongSwan VPN Client (JSON, media type
application/vnd.strongswan.profile; the app's "VPN Profile Import" format).

The app takes one custom IKE and one ESP proposal in strongSwan's syntax: the gateway's
first of each (a proposal string may list several algorithms of a kind). The CA goes
into ``remote.cert`` (base64 DER), the user's PKCS#12 into ``local.p12`` only when the
operator hands one over; the format has no password field (the app asks for it).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from ipsecd.ike.proposal import proposal_to_str
from ipsecd.profiles.model import ClientAuth, GatewayView, Profile, ProfileError, ProfileRequest

MEDIA_TYPE = "application/vnd.strongswan.profile"
_TYPE = {ClientAuth.EAP_MSCHAPV2: "ikev2-eap", ClientAuth.EAP_ANY: "ikev2-eap", ClientAuth.EAP_TLS: "ikev2-eap-tls",
         ClientAuth.PUBKEY: "ikev2-cert"}
REQUIRED = ("uuid", "name", "type", "remote")


def sswan(view: GatewayView, req: ProfileRequest, name: str) -> dict[str, Any]:
    kind = _TYPE.get(view.client_auth)
    if kind is None:
        raise ProfileError("the strongSwan Android app has no PSK profiles: use EAP or certificates for Android")
    if view.gateway_auth != "pubkey":
        raise ProfileError("the strongSwan Android app authenticates the gateway by its certificate only")
    remote: dict[str, Any] = {"addr": view.server, "id": view.gateway_id}
    if view.port != 500:
        remote["port"] = view.port
    if view.cas:
        remote["cert"] = base64.b64encode(view.cas[0].der).decode()
    local: dict[str, Any] = {}
    if view.client_auth.is_eap and view.client_auth != ClientAuth.EAP_TLS:
        local["eap_id"] = req.user
        if not view.eap_id_any:  # the gateway takes the IKE identity as EAP identity
            local["id"] = req.user
    else:
        local["id"] = req.user
    if req.p12 is not None:
        local["p12"] = base64.b64encode(req.p12).decode()
    doc: dict[str, Any] = {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"ipsecd:{view.server}:{view.conn}:{req.user}:android")),
        "name": name,
        "type": kind,
        "remote": remote,
        "local": local,
        "ike-proposal": proposal_to_str(view.ike[0]),
        "esp-proposal": proposal_to_str(view.esp[0]),
    }
    if not view.full_tunnel:
        doc["split-tunneling"] = {"subnets": " ".join(view.remote_ts)}
    return doc


def render(view: GatewayView, req: ProfileRequest, name: str) -> Profile:
    warnings = []
    if view.client_auth.needs_user_cert and req.p12 is None:
        warnings.append("the profile names no user certificate: import the user's PKCS#12 on the phone and pick it "
                        "in the profile (or pass --p12 FILE to embed it)")
    return Profile({f"{view.conn}.sswan": json.dumps(sswan(view, req, name), indent=2) + "\n"}, warnings)
