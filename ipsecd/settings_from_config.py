"""Translations between layers: config -> engine settings, and Child SA events -> data-plane SAs.

Kept apart so the IKE engine, the ESP core and the config model never import
each other: this module is the only place that knows all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

from ipsecd.config import AuthConfig, Config, ConnectionConfig, NtHashSecret, TsConfig
from ipsecd.eap.method import NtHash, Secret
from ipsecd.esp.sa import IpsecProto, Mode, SaParams
from ipsecd.esp.spd import Action, Policy, Selector
from ipsecd.iana import EncrId, EsnId, IntegId, ProtocolId, TransformType
from ipsecd.identity import ANY_IDENTITY, Identity
from ipsecd.ike.events import ChildSaEstablished
from ipsecd.ike.payloads import TrafficSelector
from ipsecd.ike.proposal import parse_proposal, parse_proposals
from ipsecd.ike.settings import AuthSettings, ChildSettings, IkeSettings, RetransmitSettings, TsSpec
from ipsecd.pools import PoolSpec


def validate_proposal(kind: str, text: str) -> None:
    """The config loader's hook: raises ValueError with a readable message for a bad proposal."""
    parse_proposal(text, {"ike": ProtocolId.IKE, "ah": ProtocolId.AH}.get(kind, ProtocolId.ESP))


def _ts_spec(t: TsConfig) -> TsSpec:
    return TsSpec(t.prefix, t.proto, t.port_lo, t.port_hi)


def auth_settings(auth: AuthConfig) -> AuthSettings:
    return AuthSettings(method=auth.auth, certs=auth.certs, cacerts=auth.cacerts or None, eap_id=auth.eap_id)


def ike_settings(conn: ConnectionConfig, config: Config) -> IkeSettings:
    local_addrs = tuple(str(a) for a in conn.local_addrs)

    def psk_lookup(me: Identity, peer: Identity) -> bytes | None:
        return config.find_psk(me, peer)

    def eap_secret(eap_identity: bytes) -> Secret | None:
        found = config.find_eap_secret(eap_identity)
        return NtHash(found.value) if isinstance(found, NtHashSecret) else found

    children = tuple(
        ChildSettings(
            name=name,
            local_ts=tuple(_ts_spec(t) for t in ch.local_ts),
            remote_ts=tuple(_ts_spec(t) for t in ch.remote_ts),
            esp_proposals=tuple(parse_proposals(list(ch.esp_proposals), ProtocolId.ESP)) if ch.esp_proposals else (),
            ah_proposals=tuple(parse_proposals(list(ch.ah_proposals), ProtocolId.AH)) if ch.ah_proposals else (),
            ipcomp=ch.ipcomp,
            mode=str(ch.mode.value),
            start_action=str(ch.start_action.value),
            replay_window=ch.replay_window,
            rekey_time=ch.rekey_time,
            life_time=ch.life_time,
            rand_time=ch.rand_time,
            rekey_bytes=ch.rekey_bytes,
            life_bytes=ch.life_bytes,
            rand_bytes=ch.rand_bytes,
            rekey_packets=ch.rekey_packets,
            life_packets=ch.life_packets,
            rand_packets=ch.rand_packets,
            dpd_action=str(ch.dpd_action.value),
        )
        for name, ch in conn.children.items()
    )
    r = conn.retransmit
    return IkeSettings(
        name=conn.name,
        ike_proposals=tuple(parse_proposals(list(conn.proposals), ProtocolId.IKE)),
        local_id=conn.local.id,  # None: the IP address the IKE SA uses (strongSwan's default)
        remote_id=conn.remote.id if conn.remote.id is not None else ANY_IDENTITY,
        children=children,
        psk_lookup=psk_lookup,
        local_addrs=local_addrs,
        remote_addrs=() if conn.remote_any and not conn.remote_addrs else tuple(str(a) for a in conn.remote_addrs),
        remote_port=conn.remote_port,
        retransmit=RetransmitSettings(tries=r.tries, timeout=r.timeout, base=r.base),
        keyingtries=conn.keyingtries,
        force_encap=conn.encap,
        mobike=conn.mobike,
        rekey_time=conn.rekey_time,
        over_time=conn.over_time,
        rand_time=conn.rand_time,
        reauth_time=conn.reauth_time,
        dpd_delay=conn.dpd_delay,
        dpd_timeout=conn.dpd_timeout,
        # swanctl puts dpd_action on the child; the IKE SA uses the first child's
        dpd_action=next((str(ch.dpd_action.value) for ch in conn.children.values()), "clear"),
        unique=str(conn.unique.value),
        pools=conn.pools,
        vips=tuple(str(v) for v in conn.vips),
        local_auth=auth_settings(conn.local),
        remote_auth=auth_settings(conn.remote),
        send_cert=str(conn.send_cert.value),
        send_certreq=conn.send_certreq,
        fragmentation=str(conn.fragmentation.value),
        fragment_size=config.settings.fragment_size,
        eap_secret=eap_secret,
    )


def pool_specs(config: Config) -> list[PoolSpec]:
    """The configured address pools as the pool manager takes them."""
    return [PoolSpec(p.name, p.addrs[0], p.addrs[1],
                     p.dns + p.nbns + p.dhcp + p.netmask + p.server + p.subnet + p.split_include + p.split_exclude
                     + p.numbered)
            for p in config.pools.values()]


def trap_policies_for(conn: ConnectionConfig, child: str, reqid: int, local_addr: str | None) -> list[Policy]:
    """The trap of one configured child (start_action/close_action/dpd_action = trap).

    Built from the configured selectors, named as child_sa_params names an SA's policies,
    so an unnarrowed SA's policies equal the trap's. ``dynamic`` is the tunnel endpoint:
    ``local_addr`` on our side, the first remote address on the peer's.
    """
    ch = conn.children[child]
    remote_addr = str(conn.remote_addrs[0]) if conn.remote_addrs else None

    def sels(tss: object, dynamic: str | None) -> list[Selector]:
        out = []
        for t in tss:  # type: ignore[attr-defined]
            ports = (t.port_lo, t.port_hi)
            if t.prefix is None:
                if dynamic is not None:
                    out.append(Selector.from_range(dynamic, dynamic, t.proto, ports))
            else:
                out.append(Selector.from_prefix(t.prefix, t.proto, ports))
        return out

    return protect_policies(reqid, sels(ch.local_ts, local_addr), sels(ch.remote_ts, remote_addr),
                            f"{conn.name}/{child}")


def protect_policies(reqid: int, local: Sequence[Selector], remote: Sequence[Selector], name: str = ""
                     ) -> list[Policy]:
    """The one place policies are built, for traps and for SAs alike: PROTECT every same-family
    pair of local and remote selectors with the reqid's SA, so an unnarrowed SA's policies
    equal its trap's (and its routes)."""
    return [Policy(local=lsel, remote=rsel, action=Action.PROTECT, sa_ref=reqid, name=name)
            for lsel in local for rsel in remote if lsel.version == rsel.version]


def _selector(ts: TrafficSelector) -> Selector:
    return Selector.from_range(ts.start_addr, ts.end_addr, ts.ip_proto, (ts.start_port, ts.end_port))


def child_sa_params(ev: ChildSaEstablished) -> tuple[SaParams, SaParams, list[Policy]]:
    """Both directions of a negotiated Child SA, and the outbound policies that select it."""
    p = ev.proposal
    ah = p.protocol == ProtocolId.AH
    # AH has no ENCR transform: its SA is "ENCR_NULL" with the integrity key (SaParams checks)
    encr_id = EncrId.ENCR_NULL if ah else EncrId(p.of_type(TransformType.ENCR)[0].id)
    integ = p.of_type(TransformType.INTEG)
    esn = any(t.id == EsnId.ESN for t in p.of_type(TransformType.ESN))
    local_ts = tuple(_selector(t) for t in ev.local_ts)
    remote_ts = tuple(_selector(t) for t in ev.remote_ts)
    common = dict(
        encr=encr_id, integ=IntegId(integ[0].id) if integ else IntegId.NONE, esn=esn,
        protocol=IpsecProto.AH if ah else IpsecProto.ESP,
        mode=Mode.TRANSPORT if ev.mode == "transport" else Mode.TUNNEL,
        local_addr=ip_address(ev.local[0]), remote_addr=ip_address(ev.remote[0]), encap=ev.encap,
        local_port=ev.local[1] if ev.encap else 4500, remote_port=ev.remote[1] if ev.encap else 4500,
        local_ts=local_ts, remote_ts=remote_ts, replay_window=ev.replay_window, name=f"{ev.name}/{ev.child}",
    )
    enc_in, integ_in = ev.keys_in
    enc_out, integ_out = ev.keys_out
    inbound = SaParams(spi=int.from_bytes(ev.spi_in, "big"), encr_key=enc_in, integ_key=integ_in,
                       ipcomp_cpi=ev.ipcomp_cpi_in, **common)  # type: ignore[arg-type]
    outbound = SaParams(spi=int.from_bytes(ev.spi_out, "big"), encr_key=enc_out, integ_key=integ_out,
                        ipcomp_cpi=ev.ipcomp_cpi_out, **common)  # type: ignore[arg-type]
    return inbound, outbound, protect_policies(ev.reqid, local_ts, remote_ts, f"{ev.name}/{ev.child}")
