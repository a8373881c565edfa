"""Linux: a strongSwan ``swanctl.conf`` (plus the CA file for ``x509ca/``) and a NetworkManager keyfile.

The swanctl.conf uses every proposal the gateway accepts, in strongSwan's own syntax
(ipsecd's proposal keywords are strongSwan's), asks for a virtual IP of each family the
gateway has pools for, and names the gateway's networks as ``remote_ts``. The tests load
exactly this file into strongSwan 5.9.8 and log in with it.
"""

from __future__ import annotations

import uuid

from ipsecd.ike.proposal import proposal_to_str
from ipsecd.profiles.model import ClientAuth, GatewayView, Profile, ProfileRequest

NM_SERVICE = "org.freedesktop.NetworkManager.strongswan"


def swan_value(text: str) -> str:
    """A swanctl.conf value: bare when it is one plain word list, else double-quoted with escapes."""
    if text and all(c.isalnum() or c in "._-:/@%*[]+" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ca_file_name(view: GatewayView, i: int = 0) -> str:
    suffix = f"-{i}" if i else ""
    return f"{view.conn}-ca{suffix}.pem"


def _local_section(view: GatewayView, req: ProfileRequest) -> list[str]:
    auth = view.client_auth
    # a gateway that does not ask for the EAP identity takes the IKE identity as such
    own_id = [] if view.eap_id_any else [f"id = {swan_value(req.user)}"]
    if auth == ClientAuth.EAP_MSCHAPV2:
        return ["auth = eap-mschapv2", *own_id, f"eap_id = {swan_value(req.user)}"]
    if auth == ClientAuth.EAP_ANY:
        return ["auth = eap", *own_id, f"eap_id = {swan_value(req.user)}"]
    if auth == ClientAuth.EAP_TLS:
        return ["auth = eap-tls", f"id = {swan_value(req.user)}", f"certs = {swan_value(req.user)}.pem"]
    if auth == ClientAuth.PUBKEY:
        return ["auth = pubkey", f"id = {swan_value(req.user)}", f"certs = {swan_value(req.user)}.pem"]
    return ["auth = psk", f"id = {swan_value(req.user)}"]


def _secrets(view: GatewayView, req: ProfileRequest) -> list[str]:
    user = swan_value(req.user)
    if view.client_auth in (ClientAuth.EAP_MSCHAPV2, ClientAuth.EAP_ANY):
        secret = swan_value(req.password) if req.password is not None else '"PASSWORD"  # fill in'
        return ["secrets {", "  eap-user {", f"    id = {user}", f"    secret = {secret}", "  }", "}"]
    if view.client_auth == ClientAuth.PSK:
        secret = swan_value(req.psk) if req.psk is not None else '"PRE-SHARED KEY"  # fill in'
        return ["secrets {", "  ike-gateway {", f"    id-1 = {user}", f"    id-2 = {swan_value(view.gateway_id)}",
                f"    secret = {secret}", "  }", "}"]
    return [f"# the user's key: /etc/swanctl/private/ (the certificate {req.user}.pem in /etc/swanctl/x509/)"]


def swanctl_conf(view: GatewayView, req: ProfileRequest) -> str:
    vips = [v for v, on in (("0.0.0.0", view.vip4), ("::", view.vip6)) if on]
    remote = ["auth = psk" if view.gateway_auth == "psk" else "auth = pubkey", f"id = {swan_value(view.gateway_id)}"]
    if view.cas:
        remote.append("cacerts = " + ",".join(ca_file_name(view, i) for i in range(len(view.cas))))
    lines = [
        f"# strongSwan client profile for {req.user}: connection {view.conn} of the ipsecd gateway {view.server}",
        f"# install as /etc/swanctl/conf.d/{view.conn}.conf, the CA as /etc/swanctl/x509ca/{ca_file_name(view)};",
        f"# then: swanctl --load-all && swanctl --initiate --child {view.conn}",
        "connections {",
        f"  {view.conn} {{",
        "    version = 2",
        f"    remote_addrs = {swan_value(view.server)}",
    ]
    if view.port != 500:
        lines.append(f"    remote_port = {view.port}")
    if vips:
        lines.append(f"    vips = {', '.join(vips)}")
    lines += [
        f"    proposals = {', '.join(proposal_to_str(p) for p in view.ike)}",
        f"    mobike = {'yes' if view.mobike else 'no'}",
        f"    fragmentation = {'yes' if view.fragmentation else 'no'}",
        "    local {",
        *(f"      {x}" for x in _local_section(view, req)),
        "    }",
        "    remote {",
        *(f"      {x}" for x in remote),
        "    }",
        "    children {",
        f"      {view.conn} {{",
        f"        remote_ts = {', '.join(view.remote_ts)}",
        f"        esp_proposals = {', '.join(proposal_to_str(p) for p in view.esp)}",
        "      }",
        "    }",
        "  }",
        "}",
        *_secrets(view, req),
    ]
    return "\n".join(lines) + "\n"


_NM_METHOD = {ClientAuth.EAP_MSCHAPV2: "eap", ClientAuth.EAP_ANY: "eap", ClientAuth.EAP_TLS: "eap-tls",
              ClientAuth.PUBKEY: "key", ClientAuth.PSK: "psk"}


def _keyfile_value(text: str) -> str:
    """GKeyFile escaping (a value is one line; leading blanks would be dropped)."""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "\\s" + out[1:] if out.startswith(" ") else out


def nm_keyfile(view: GatewayView, req: ProfileRequest, name: str) -> str:
    """A keyfile for NetworkManager's strongSwan plugin (/etc/NetworkManager/system-connections/, mode 0600)."""
    ident = uuid.uuid5(uuid.NAMESPACE_URL, f"ipsecd:{view.server}:{view.conn}:{req.user}:nm")
    vpn = {
        "service-type": NM_SERVICE,
        "address": view.server,
        "method": _NM_METHOD[view.client_auth],
        "user": req.user,
        "remote-identity": view.gateway_id,
        "virtual": "yes" if (view.vip4 or view.vip6) else "no",
        "encap": "no",
        "ipcomp": "no",
        "proposal": "yes",
        "ike": proposal_to_str(view.ike[0]),
        "esp": proposal_to_str(view.esp[0]),
    }
    if view.cas:
        vpn["certificate"] = f"/etc/swanctl/x509ca/{ca_file_name(view)}"
    if view.client_auth.needs_user_cert:
        vpn["usercert"] = f"/etc/swanctl/x509/{req.user}.pem"
        vpn["userkey"] = f"/etc/swanctl/private/{req.user}.pem"
    secret = req.password if req.password is not None else req.psk
    vpn["password-flags"] = "0" if secret is not None else "2"  # 2: not saved, asked for at every login
    lines = ["[connection]", f"id={_keyfile_value(name)}", f"uuid={ident}", "type=vpn", "autoconnect=false", "",
             "[vpn]", *(f"{k}={_keyfile_value(v)}" for k, v in vpn.items()), ""]
    if secret is not None:
        lines += ["[vpn-secrets]", f"password={_keyfile_value(secret)}", ""]
    lines += ["[ipv4]", "method=auto", "", "[ipv6]", "addr-gen-mode=default",
              f"method={'auto' if view.vip6 else 'ignore'}", ""]
    return "\n".join(lines)


def render(view: GatewayView, req: ProfileRequest, name: str) -> Profile:
    files = {f"{view.conn}.swanctl.conf": swanctl_conf(view, req),
             f"{view.conn}.nmconnection": nm_keyfile(view, req, name)}
    for i, ca in enumerate(view.cas):
        files[ca_file_name(view, i)] = ca.pem
    return Profile(files)
