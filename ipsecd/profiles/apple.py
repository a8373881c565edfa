"""macOS / iOS: a ``.mobileconfig`` configuration profile (an XML plist, built with ``plistlib``).

Payloads: the root CA (``com.apple.security.root``), the user's PKCS#12 when the operator
passes one (``com.apple.security.pkcs12``; Apple asks for its password at install), and
the VPN (``com.apple.vpn.managed``, ``VPNType = IKEv2``). The IKEv2 dictionary's
``AuthenticationMethod``/``ExtendedAuthEnabled`` follow the gateway's ``remote.auth``
(None + 1 = EAP with user name and password; Certificate + 1 = EAP-TLS; Certificate + 0 =
certificate authentication; SharedSecret = PSK), and the two SecurityAssociationParameters
name one suite inside the gateway's proposals (``algorithms.pick_ike``/``pick_esp``).
"""

from __future__ import annotations

import plistlib
import uuid
from typing import Any

from ipsecd.profiles.algorithms import APPLE, pick_esp, pick_ike
from ipsecd.profiles.model import ClientAuth, GatewayView, Profile, ProfileError, ProfileRequest

VPN_PAYLOAD = "com.apple.vpn.managed"
ROOT_PAYLOAD = "com.apple.security.root"
PKCS12_PAYLOAD = "com.apple.security.pkcs12"
_NO_APPLE_KEYS = ("Ed25519", "Ed448")  # Apple does not speak RFC 7427 EdDSA (remote-access-clients notes)


def _uuid(view: GatewayView, req: ProfileRequest, what: str) -> str:
    # stable: importing a regenerated profile replaces the old one instead of adding a second
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ipsecd:{view.server}:{view.conn}:{req.user}:apple:{what}")).upper()


def _identifier(view: GatewayView, req: ProfileRequest) -> str:
    labels = [x for x in reversed(view.server.split(".")) if x] if not view.server.replace(".", "").isdigit() else []
    base = ".".join(labels) if labels else "ipsecd"
    safe_user = "".join(c if c.isalnum() or c in "-." else "-" for c in req.user)
    return f"{base}.ipsecd.{view.conn}.{safe_user}"


def _ikev2(view: GatewayView, req: ProfileRequest, cert_uuid: str | None) -> dict[str, Any]:
    ike = pick_ike(view.ike, APPLE)
    esp = pick_esp(view.esp, APPLE)
    if ike is None or esp is None:
        which = "IKE" if ike is None else "ESP"
        raise ProfileError(f"none of the gateway's {which} proposals can be expressed in an Apple profile "
                           "(Apple: AES-CBC/GCM-128/256 or ChaCha20-Poly1305, SHA1/SHA2, MODP/ECP/Curve25519): "
                           f"add one to connections.{view.conn}.{'proposals' if ike is None else 'esp_proposals'}")
    d: dict[str, Any] = {
        "RemoteAddress": view.server,
        "RemoteIdentifier": view.gateway_id,
        "LocalIdentifier": req.user,
        "DeadPeerDetectionRate": "Medium",
        "DisableMOBIKE": 0 if view.mobike else 1,
        "DisableRedirect": 0,
        "EnablePFS": 0 if esp.pfs_group == 0 else 1,
        "UseConfigurationAttributeInternalIPSubnet": 0,
        "IKESecurityAssociationParameters": {"EncryptionAlgorithm": ike.encr, "IntegrityAlgorithm": ike.hash,
                                             "DiffieHellmanGroup": ike.group, "LifeTimeInMinutes": 1440},
        "ChildSecurityAssociationParameters": {"EncryptionAlgorithm": esp.encr,
                                               "IntegrityAlgorithm": esp.integ or ike.hash,
                                               "DiffieHellmanGroup": esp.pfs or ike.group, "LifeTimeInMinutes": 1440},
    }
    auth = view.client_auth
    if auth == ClientAuth.PSK:
        d["AuthenticationMethod"] = "SharedSecret"
        if req.psk is not None:
            d["SharedSecret"] = req.psk
    elif auth.needs_user_cert:
        d["AuthenticationMethod"] = "Certificate"
        d["ExtendedAuthEnabled"] = 1 if auth == ClientAuth.EAP_TLS else 0
        if cert_uuid is not None:
            d["PayloadCertificateUUID"] = cert_uuid
    else:
        d["AuthenticationMethod"] = "None"  # the gateway's certificate proves it; the user logs in with EAP
        d["ExtendedAuthEnabled"] = 1
        d["AuthName"] = req.user
        if req.password is not None:
            d["AuthPassword"] = req.password
    if view.cas:
        d["ServerCertificateIssuerCommonName"] = view.cas[0].name
    return d


def mobileconfig(view: GatewayView, req: ProfileRequest, name: str) -> dict[str, Any]:
    if view.gateway_key in _NO_APPLE_KEYS:
        raise ProfileError(f"the gateway's certificate has an {view.gateway_key} key: macOS and iOS cannot verify "
                           "it; give the gateway an RSA or ECDSA certificate")
    base = _identifier(view, req)
    content: list[dict[str, Any]] = []
    for i, ca in enumerate(view.cas):
        content.append({"PayloadType": ROOT_PAYLOAD, "PayloadVersion": 1, "PayloadIdentifier": f"{base}.ca{i}",
                        "PayloadUUID": _uuid(view, req, f"ca{i}"), "PayloadDisplayName": ca.name,
                        "PayloadCertificateFileName": f"{view.conn}-ca{i}.cer", "PayloadContent": ca.der})
    cert_uuid = None
    if req.p12 is not None:
        cert_uuid = _uuid(view, req, "p12")
        content.append({"PayloadType": PKCS12_PAYLOAD, "PayloadVersion": 1, "PayloadIdentifier": f"{base}.p12",
                        "PayloadUUID": cert_uuid, "PayloadDisplayName": f"{req.user} (VPN)",
                        "PayloadCertificateFileName": f"{req.user}.p12", "PayloadContent": req.p12})
    vpn: dict[str, Any] = {
        "PayloadType": VPN_PAYLOAD, "PayloadVersion": 1, "PayloadIdentifier": f"{base}.vpn",
        "PayloadUUID": _uuid(view, req, "vpn"), "PayloadDisplayName": name, "UserDefinedName": name,
        "VPNType": "IKEv2", "IKEv2": _ikev2(view, req, cert_uuid),
        "IPv4": {"OverridePrimary": 1 if view.full_tunnel else 0},
    }
    if view.dns:
        dns: dict[str, Any] = {"ServerAddresses": list(view.dns)}
        if view.domains:
            dns["SupplementalMatchDomains"] = list(view.domains)
        vpn["DNS"] = dns
    content.append(vpn)
    return {"PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": base,
            "PayloadUUID": _uuid(view, req, "profile"), "PayloadDisplayName": name,
            "PayloadDescription": f"IKEv2 VPN to {view.server} for {req.user} (generated by ipsecctl client-profile)",
            "PayloadRemovalDisallowed": False, "PayloadContent": content}


def render(view: GatewayView, req: ProfileRequest, name: str) -> Profile:
    warnings = []
    if view.client_auth.needs_user_cert and req.p12 is None:
        raise ProfileError("Apple profiles carry the user's certificate as a PKCS#12 payload: pass --p12 FILE "
                           "(the user's certificate and key; Apple asks for its password at install)")
    if view.client_auth.is_eap and not view.eap_id_any:
        warnings.append(f"connections.{view.conn}.remote.eap_id is not %any: the gateway will not ask for the user "
                        "name and take the client's IKE identity as EAP identity")
    data = plistlib.dumps(mobileconfig(view, req, name), fmt=plistlib.FMT_XML, sort_keys=True)
    return Profile({f"{view.conn}.mobileconfig": data.decode()}, warnings)
