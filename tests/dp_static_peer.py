"""A data plane with static keys, for namespace tests and the benchmark: no IKE involved.

Run inside a namespace as ``python -m tests.dp_static_peer --side a ...``. It starts a
``DataPlane``, installs one Child SA whose SPIs and keys are derived from fixed test
constants (both sides compute the same), prints ``READY <json>`` and then serves line
commands on stdin: ``counters`` (prints one JSON line), ``quit``. SIGTERM also stops it
cleanly (routes and rules removed).

``python -m tests.dp_static_peer inject ...`` sends hostile ESP at a peer (short, unknown
SPI, bad ICV, replayed) over UDP 4500 or raw ESP, for the bad-input tests.

The keys are test constants and nothing else: never use this outside a test namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from ipaddress import ip_address, ip_network

from ipsecd.dataplane.client import DataPlane, DataPlaneOptions
from ipsecd.dataplane.tun import offload_names
from ipsecd.esp.sa import Mode, OutboundSa, SaParams
from ipsecd.esp.spd import Action, Policy, Selector
from ipsecd.iana import EncrId, IntegId

SPI_TO_A = 0xA0000001
SPI_TO_B = 0xB0000001
REQID = 1


def static_key(spi: int, length: int = 36) -> bytes:
    """Deterministic key||salt for an SPI (AES-256-GCM: 32 + 4 bytes)."""
    return hashlib.sha256(b"ipsecd-dataplane-test-key" + spi.to_bytes(4, "big")).digest()[: length - 4] + spi.to_bytes(
        4, "big"
    )


def static_params(
    side: str,
    local: str,
    remote: str,
    local_net: str,
    remote_net: str,
    *,
    encap: bool,
    mode: Mode = Mode.TUNNEL,
    remote_port: int = 4500,
    spi_offset: int = 0,
    reqid: int = REQID,
) -> tuple[SaParams, SaParams, list[Policy]]:
    """The inbound and outbound SA and the policies of one side (``"a"`` or ``"b"``)."""
    spi_in, spi_out = (SPI_TO_A, SPI_TO_B) if side == "a" else (SPI_TO_B, SPI_TO_A)
    spi_in, spi_out = spi_in + spi_offset, spi_out + spi_offset
    la, ra = ip_address(local), ip_address(remote)
    lts = (Selector.from_prefix(local_net),)
    rts = (Selector.from_prefix(remote_net),)
    common = dict(encr=EncrId.ENCR_AES_GCM_16, integ=IntegId.NONE, integ_key=b"", esn=False, mode=mode, encap=encap,
                  local_port=4500, remote_port=remote_port, local_ts=lts, remote_ts=rts)
    inbound = SaParams(spi=spi_in, encr_key=static_key(spi_in), local_addr=la, remote_addr=ra,  # type: ignore[arg-type]
                       name=f"{side}-in", **common)
    outbound = SaParams(spi=spi_out, encr_key=static_key(spi_out), local_addr=la, remote_addr=ra,  # type: ignore[arg-type]
                        name=f"{side}-out", **common)
    policies = [Policy(lts[0], rts[0], Action.PROTECT, sa_ref=reqid, name=f"{side}-out")]
    return inbound, outbound, policies


REKEY_SPI_STEP = 0x1001  # odd: a rekeyed pair's inbound SPI has the other parity (its owner moves)


def _pairs(args: argparse.Namespace) -> Callable[[int], dict[int, tuple[SaParams, SaParams, list[Policy]]]]:
    """``--pairs N``: Child SA p (reqid 1 + p) protects the traffic to/from host p of the far
    side's LAN (10.2.0.1 + p on B), so N pairs with N inbound SPIs of alternating parity;
    generation g of them (rekeys) has SPIs ``+ g * REKEY_SPI_STEP``."""

    def pairs(generation: int) -> dict[int, tuple[SaParams, SaParams, list[Policy]]]:
        out = {}
        for p in range(args.pairs):
            local_net, remote_net = args.local_net, args.remote_net
            if args.pairs > 1:
                host = f"{ip_network(args.remote_net if args.side == 'a' else args.local_net)[1 + p]}/32"
                local_net, remote_net = (local_net, host) if args.side == "a" else (host, remote_net)
            out[REQID + p] = static_params(args.side, args.local, args.remote, local_net, remote_net,
                                           encap=not args.raw, mode=Mode(args.mode),
                                           spi_offset=p + generation * REKEY_SPI_STEP, reqid=REQID + p)
        return out

    return pairs


async def serve(args: argparse.Namespace) -> int:
    opts = DataPlaneOptions(tun_name=args.tun, listen6=None if args.no_ipv6 else "::", gso=not args.no_gso,
                            gro=not args.no_gro, batch=args.batch, worker_log_level="WARNING",
                            offload=args.offload, offload_tso=not args.no_tso, workers=args.workers)
    dp = DataPlane(opts)
    await dp.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        pairs = _pairs(args)
        for reqid, (inbound, outbound, policies) in pairs(0).items():
            mtu = await dp.install_child_sa(inbound, outbound, reqid, policies, tag=reqid)  # a tag per Child SA
        print("READY " + json.dumps({"mtu": mtu, "tun": dp.tun_name, "pid": dp.pid, "steering": dp.steering,
                                     "offloads": offload_names(dp.offloads), "pids": dp.pids}),
              flush=True)
        generation = 0
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not stop.is_set():
            line_task = asyncio.ensure_future(reader.readline())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            for t in (line_task, stop_task):
                if t not in done:
                    t.cancel()
            if line_task not in done:
                break
            cmd = line_task.result().decode().strip()
            if cmd == "counters":
                print(json.dumps(await dp.counters()), flush=True)
            elif cmd == "totals":  # per tag (= reqid here): every SA's counters, removed ones included
                sums, drops, _gc = await dp.totals()
                print(json.dumps({"tags": {str(t): v for t, v in sums.items()}, "drops": drops}), flush=True)
            elif cmd == "sa_counters":  # the current and the previous generation's pairs, by SPI
                asked = [(i.spi, o.spi) for g in {generation, max(generation - 1, 0)}
                         for i, o, _p in pairs(g).values()]
                snaps = await dp.sa_counters(asked)
                print(json.dumps({"sas": [[s.spi, s.direction, s.reqid, s.bytes, s.packets] for s in snaps]}),
                      flush=True)
            elif cmd == "killworker":  # crash test: the DataPlane must report the worker's death
                events = dp.events()
                os.kill(dp.pids[-1] if dp.pids else 0, signal.SIGKILL)  # the last worker (the only one, usually)
                ev = await asyncio.wait_for(events.__anext__(), 5.0)
                print(json.dumps({"event": type(ev).__name__, "running": dp.running}), flush=True)
            elif cmd in ("rekey_in", "rekey_out", "rekey_del"):
                # make-before-break by hand (RFC 7296 2.8), as the daemon's installer does it:
                # receive on the new SAs, then send on them, then drop the old inbound SAs
                old, new = pairs(generation), pairs(generation + 1)
                for reqid, (inbound, outbound, _pols) in new.items():
                    if cmd == "rekey_in":
                        await dp.install_inbound(reqid, inbound, tag=reqid)
                    elif cmd == "rekey_out":
                        await dp.install_outbound(reqid, outbound, tag=reqid)
                    else:
                        await dp.delete_inbound((old[reqid][0].spi,))
                generation += cmd == "rekey_del"
                print(json.dumps({"ok": cmd, "spis_in": [p[0].spi for p in new.values()]}), flush=True)
            elif cmd in ("quit", ""):
                break
    finally:
        await dp.stop()
    return 0


def inject(args: argparse.Namespace) -> int:
    """Send one of each hostile packet kind at ``--remote``; prints what was sent as JSON."""
    _inbound, outbound, _ = static_params(args.side, args.local, args.remote, args.local_net, args.remote_net,
                                         encap=not args.raw)
    # A genuine packet with sequence number 1, which the peer has long seen: a replay.
    forger = OutboundSa(outbound)
    inner_src, inner_dst = ip_network(args.local_net)[1], ip_network(args.remote_net)[1]
    inner = _ipv4_udp(inner_src.packed, inner_dst.packed)
    replay = forger.protect(inner)
    bad_icv = bytearray(forger.protect(inner))
    bad_icv[-1] ^= 0xFF
    # Sequence numbers far ahead so only the ICV check can stop the bad one.
    forger.seq = 1 << 30
    bad_icv2 = bytearray(forger.protect(inner))
    bad_icv2[20] ^= 0x01
    packets = {
        "short": b"\x01\x02\x03",
        "short_esp": outbound.spi.to_bytes(4, "big") + b"\x00\x00\x00\x05" + b"x" * 4,
        "unknown_spi": (0x0BADBAD0).to_bytes(4, "big") + bytes(60),
        "bad_icv": bytes(bad_icv2),
        "replay": replay,
        "ike_marker": b"\x00\x00\x00\x00" + bytes(40),
    }
    if args.raw:
        packets.pop("ike_marker")
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
        dest: tuple[str, int] = (args.remote, 0)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dest = (args.remote, 4500)
    with sock:
        for _ in range(args.count):
            for data in packets.values():
                sock.sendto(data, dest)
    print(json.dumps({k: args.count for k in packets}), flush=True)
    return 0


def _ipv4_udp(src: bytes, dst: bytes) -> bytes:
    from ipsecd.esp.packet import build_ipv4_header

    payload = b"\x30\x39\x30\x39\x00\x0c\x00\x00data"
    return build_ipv4_header(src, dst, 17, len(payload)) + payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dp_static_peer")
    p.add_argument("action", nargs="?", default="serve", choices=("serve", "inject"))
    p.add_argument("--side", choices=("a", "b"), required=True)
    p.add_argument("--local", required=True)
    p.add_argument("--remote", required=True)
    p.add_argument("--local-net", required=True)
    p.add_argument("--remote-net", required=True)
    p.add_argument("--raw", action="store_true", help="raw ESP (protocol 50) instead of UDP 4500")
    p.add_argument("--mode", default="tunnel", choices=("tunnel", "transport"))
    p.add_argument("--tun", default="ipsecdp0")
    p.add_argument("--no-ipv6", action="store_true")
    p.add_argument("--no-gso", action="store_true")
    p.add_argument("--no-gro", action="store_true")
    p.add_argument("--offload", action="store_true", help="TUN with virtio-net headers and offloads (offload.py)")
    p.add_argument("--no-tso", action="store_true", help="virtio-net headers for GRO writes, but no TSO/USO reads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="data-plane worker processes (settings.dataplane.workers)")
    p.add_argument("--pairs", type=int, default=1, help="Child SAs, one per host of the far LAN (see _pairs)")
    p.add_argument("--count", type=int, default=1)
    args = p.parse_args(argv)
    if args.action == "inject":
        return inject(args)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
