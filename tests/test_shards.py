"""IKE shards: the SPI encoding (ike/shard.py) and the kernel steering program (dataplane/ike_steering.py)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from pathlib import Path

import pytest

from ipsecd.config import load_config
from ipsecd.dataplane.channel import DataPlaneError
from ipsecd.dataplane.ike_steering import attach_reuseport_program, ike_steering_program, run_program
from ipsecd.ike.context import EngineContext
from ipsecd.ike.shard import FLAG_INITIATOR, Shard, init_hash, shard_of_message, shard_of_spi
from ipsecd.shell.shards import ShardLink, merge_counts

MARKER = bytes(4)


def header(spi_i: bytes, spi_r: bytes, *, initiator: bool, length: int = 28) -> bytes:
    flags = FLAG_INITIATOR if initiator else 0x20  # 0x20: R, a response from the responder
    h = spi_i + spi_r + bytes((33, 0x20, 34, flags)) + bytes(4) + length.to_bytes(4, "big")
    return h + bytes(max(0, length - 28))


# ---------------------------------------------------------------- SPI encoding
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_allocation_carries_the_shard(count: int) -> None:
    for index in range(count):
        ctx = EngineContext(shard=Shard(index, count))
        for _ in range(200):
            spi = ctx.alloc_ike_spi()
            assert shard_of_spi(spi, count) == index and spi != bytes(8)
            child = ctx.alloc_child_spi()
            assert child[0] % count == index and int.from_bytes(child, "big") > 255
            cpi = ctx.alloc_cpi(child)
            assert cpi % count == index % count and 256 <= cpi <= 61439
        ids = [ctx.alloc_ike_id() for _ in range(5)]
        reqids = [ctx.alloc_reqid() for _ in range(5)]
        for n in ids + reqids:
            assert Shard(index, count).owns_number(n) and Shard(index, count).owner_of_number(n) == index


def test_shards_never_share_a_number() -> None:
    ctxs = [EngineContext(shard=Shard(i, 3)) for i in range(3)]
    seen: dict[str, set[object]] = {"ike": set(), "child": set(), "id": set(), "reqid": set()}
    for _ in range(300):
        for ctx in ctxs:
            for kind, value in (("ike", ctx.alloc_ike_spi()), ("child", ctx.alloc_child_spi()),
                                ("id", ctx.alloc_ike_id()), ("reqid", ctx.alloc_reqid())):
                assert value not in seen[kind]
                seen[kind].add(value)


def test_one_shard_changes_nothing() -> None:
    """shards = 1 (the default): SPIs are the random octets as before, ids and reqids count from 1."""
    draws = [bytes.fromhex("ff00112233445566"), bytes.fromhex("01020304")]
    ctx = EngineContext(rng=lambda n: draws.pop(0))
    assert ctx.alloc_ike_spi() == bytes.fromhex("ff00112233445566")
    assert ctx.alloc_child_spi() == bytes.fromhex("01020304")
    assert [ctx.alloc_ike_id(), ctx.alloc_ike_id()] == [1, 2] and ctx.alloc_reqid() == 1


def test_stamp_keeps_the_rest_random_and_reaches_every_owned_octet() -> None:
    for count in (2, 3, 5, 16):
        for index in range(count):
            sh = Shard(index, count)
            firsts = {sh.stamp(bytes((b,)) + b"rest")[0] for b in range(256)}
            assert firsts == {b for b in range(256) if b % count == index}
            assert sh.stamp(b"\x10rest")[1:] == b"rest"


def test_bad_shards_are_refused() -> None:
    for index, count in ((0, 0), (2, 2), (-1, 2), (0, 17)):
        with pytest.raises(ValueError):
            Shard(index, count)


# ---------------------------------------------------------------- the rule
def test_the_rule_reads_the_spi_the_i_flag_names() -> None:
    ours, theirs = Shard(1, 2).stamp(os.urandom(8)), Shard(0, 2).stamp(os.urandom(8))
    assert shard_of_message(header(theirs, ours, initiator=True), 2) == 1  # we answered: SPIr
    assert shard_of_message(header(ours, theirs, initiator=False), 2) == 1  # we initiated: SPIi
    spi_i = bytes.fromhex("0000000000000007")
    assert shard_of_message(header(spi_i, bytes(8), initiator=True), 2) == init_hash(spi_i, 2) == 1
    assert shard_of_message(b"short", 2) == 0
    # SPIr with a zero first word but not zero is not an IKE_SA_INIT request
    spi_r = bytes.fromhex("0000000000000003")
    assert shard_of_message(header(spi_i, spi_r, initiator=True), 2) == 0 == spi_r[0] % 2


def crafted(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    spi_i = rng.randbytes(8)
    if kind == 0:
        return header(spi_i, bytes(8), initiator=True, length=rng.choice([28, 300]))
    if kind == 1:
        return header(spi_i, rng.randbytes(8), initiator=rng.random() < 0.5, length=rng.choice([28, 80]))
    if kind == 2:
        return header(spi_i, bytes(4) + rng.randbytes(4), initiator=True)
    return rng.randbytes(rng.randrange(0, 28))


@pytest.mark.parametrize("count", [1, 2, 3, 5, 16])
def test_program_matches_the_rule_on_500(count: int) -> None:
    slots = [10 + k for k in range(count)]
    prog = ike_steering_program(slots)
    rng = random.Random(count)
    for _ in range(2000):
        data = crafted(rng)
        assert run_program(prog, data) == slots[shard_of_message(data, count)]


@pytest.mark.parametrize("count", [1, 2, 4])
def test_program_matches_the_rule_on_4500_and_keeps_esp_for_the_worker(count: int) -> None:
    slots = [0] + [k + 1 for k in range(1, count)]  # shard 0 bound first, the worker second, then the others
    prog = ike_steering_program(slots, esp_slot=1)
    rng = random.Random(count)
    for _ in range(2000):
        data = crafted(rng)
        assert run_program(prog, MARKER + data) == slots[shard_of_message(data, count)]
    for esp in (b"\xff", b"", b"\x00\x00\x00", b"\x00\x00\x01\x00" + os.urandom(60), os.urandom(4) + bytes(60)):
        if esp[:4] != MARKER:
            assert run_program(prog, esp) == 1


# ---------------------------------------------------------------- the kernel runs it (loopback)
def _group(n: int) -> tuple[list[socket.socket], int]:
    socks: list[socket.socket] = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.setblocking(False)
        socks.append(s)
    return socks, port


def _which(socks: list[socket.socket], deadline: float) -> tuple[int, bytes]:
    while time.monotonic() < deadline:
        for i, s in enumerate(socks):
            try:
                return i, s.recv(65535)
            except BlockingIOError:
                continue
        time.sleep(0.001)
    raise AssertionError("datagram not delivered")


@pytest.mark.parametrize("natt", [False, True])
def test_kernel_steers_crafted_datagrams(natt: bool) -> None:
    """A real reuseport group on loopback: three shards (plus the worker's socket on 4500)."""
    count = 3
    socks, port = _group(count + (1 if natt else 0))
    try:
        slots = [0, 2, 3] if natt else [0, 1, 2]
        attach_reuseport_program(socks[0], ike_steering_program(slots, esp_slot=1 if natt else None))
        rng = random.Random(7)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(300):
                data = crafted(rng)
                if natt:
                    data = MARKER + data
                    expect = slots[shard_of_message(data[4:], count)]
                else:
                    expect = slots[shard_of_message(data, count)]
                tx.sendto(data, ("127.0.0.1", port))
                got, payload = _which(socks, time.monotonic() + 5)
                assert payload == data and got == expect
            if natt:
                for esp in (b"\xff", os.urandom(4) + bytes(40)):
                    if esp[:4] == MARKER:
                        continue
                    tx.sendto(esp, ("127.0.0.1", port))
                    assert _which(socks, time.monotonic() + 5)[0] == 1
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- config
def test_ike_shards_key(tmp_path: Path) -> None:
    from tests.test_config_pools import GATEWAY, errors, write

    plain = GATEWAY.split("connections:")[1].replace("    pools: [rw4, rw6]\n", "")
    plain = "connections:" + plain.replace("remote_ts: [dynamic]", "remote_ts: [10.1.0.0/16]")
    for value, expect in (("2", 2), ("16", 16), ("auto", min(len(os.sched_getaffinity(0)), 16))):
        cfg = load_config(write(tmp_path, f"settings:\n  ike_shards: {value}\n" + plain))
        assert cfg.settings.ike_shards == expect
    assert load_config(write(tmp_path, plain)).settings.ike_shards == 1
    for bad in ("0", "17", "two", "-1"):
        out = errors(tmp_path, f"settings:\n  ike_shards: {bad}\n" + plain)
        assert len(out) == 1 and "settings.ike_shards" in out[0] and "1 to 16" in out[0], out
    # pools with more than one shard: every shard leases its share (pools.py), so each pool needs
    # an address per shard
    sharded = GATEWAY.replace("pools:\n", "settings:\n  ike_shards: 2\npools:\n", 1)
    assert load_config(write(tmp_path, sharded)).settings.ike_shards == 2
    tiny = sharded.replace("addrs: 10.3.0.0/24", "addrs: 10.3.0.7/32")
    out = errors(tmp_path, tiny)
    assert len(out) == 1 and "pools.rw4" in out[0] and "at least 2 addresses" in out[0], out


# ---------------------------------------------------------------- aggregation and the link
def test_merge_counts_sums_alike_shapes() -> None:
    a = {"ike": {"x": 1, "y": 2}, "events": {"e": 3}, "front_door": {"cookies": False, "n": 1}}
    b = {"ike": {"x": 10}, "events": {"e": 1, "f": 2}, "front_door": {"cookies": True, "n": 2}}
    assert merge_counts([a, b]) == {"ike": {"x": 11, "y": 2}, "events": {"e": 4, "f": 2},
                                    "front_door": {"cookies": False, "n": 3}}


def test_link_calls_both_ways_and_fails_pending_calls_on_close() -> None:
    async def main() -> None:
        one, two = socket.socketpair()
        got: list[object] = []

        async def echo(x: int) -> int:
            return x + 1

        async def boom() -> None:
            raise ValueError("nope")

        async def note(v: str) -> None:
            got.append(v)

        a = ShardLink(one, {"echo": echo, "boom": boom}, "a")
        b = ShardLink(two, {"echo": echo, "note": note}, "b")
        closed = asyncio.Event()
        b.on_closed = closed.set
        await a.start()
        await b.start()
        assert await a.call("echo", x=1) == 2 and await b.call("echo", x=41) == 42
        with pytest.raises(DataPlaneError, match="ValueError: nope"):
            await b.call("boom")
        with pytest.raises(DataPlaneError, match="unknown operation"):
            await a.call("missing")
        a.notify("note", v="hi")
        await asyncio.sleep(0.05)
        assert got == ["hi"]
        a.close()
        await asyncio.wait_for(closed.wait(), 5)
        with pytest.raises(DataPlaneError):
            await b.call("echo", x=1)
        b.close()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("count", [2, 3])
def test_shard_sockets_order_is_what_the_programs_assume(count: int) -> None:
    """ShardSockets as the daemon uses it (the worker's ESP socket joining 4500 in between),
    on two free ports instead of 500/4500; datagrams sent over loopback reach the right socket."""
    from ipsecd.dataplane.udp import bind_udp
    from ipsecd.shell.shards import ShardSockets

    ike_port, natt_port = _free_port(), _free_port()
    group = ShardSockets(count, ipv6=False, ports=(ike_port, natt_port))
    shard0 = group.open_first()
    worker = bind_udp("0.0.0.0", natt_port, reuseport=True)  # as DataPlane.start() binds it: IKE first
    try:
        group.open_rest({socket.AF_INET: False})
        ike = {k: group.of(k)[(socket.AF_INET, ike_port)] for k in range(count)}
        natt = {k: group.of(k)[(socket.AF_INET, natt_port)] for k in range(count)}
        assert shard0[(socket.AF_INET, ike_port)] is ike[0]
        rng = random.Random(count)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(200):
                data = crafted(rng)
                want = shard_of_message(data, count)
                tx.sendto(data, ("127.0.0.1", ike_port))
                got, _ = _which(list(ike.values()), time.monotonic() + 5)
                assert got == want
                tx.sendto(MARKER + data, ("127.0.0.1", natt_port))
                got, _ = _which([*natt.values(), worker], time.monotonic() + 5)
                assert got == want
            tx.sendto(b"\xff", ("127.0.0.1", natt_port))
            assert _which([*natt.values(), worker], time.monotonic() + 5)[0] == count  # the worker
            tx.sendto(b"\x01\x02\x03\x04" + bytes(40), ("127.0.0.1", natt_port))
            assert _which([*natt.values(), worker], time.monotonic() + 5)[0] == count
    finally:
        worker.close()
        for k in range(count):
            group.close_shard(k)


def test_merge_pools_adds_up_every_shards_share() -> None:
    from ipsecd.shell.shards import merge_pools

    shard0 = [{"name": "rw4", "base": "10.3.0.1", "last": "10.3.0.6", "size": 6, "online": 1, "offline": 1,
               "leases": [{"address": "10.3.0.3"}, {"address": "10.3.0.1"}]},
              {"name": "rw6", "base": "fd00:3::1", "last": "fd00:3::6", "size": 6, "online": 0, "offline": 0,
               "leases": []}]
    shard1 = [{"name": "rw4", "base": "10.3.0.1", "last": "10.3.0.6", "size": 6, "online": 2, "offline": 0,
               "leases": [{"address": "10.3.0.10"}, {"address": "10.3.0.2"}]},
              {"name": "rw6", "base": "fd00:3::1", "last": "fd00:3::6", "size": 6, "online": 1, "offline": 0,
               "leases": [{"address": "fd00:3::2"}]}]
    rw4, rw6 = merge_pools([shard0, shard1])
    assert (rw4["online"], rw4["offline"], rw4["size"]) == (3, 1, 6)
    assert [x["address"] for x in rw4["leases"]] == ["10.3.0.1", "10.3.0.2", "10.3.0.3", "10.3.0.10"]
    assert (rw6["online"], [x["address"] for x in rw6["leases"]]) == (1, ["fd00:3::2"])
    assert merge_pools([[{"name": "p", "online": 1, "offline": 2}], []]) == [{"name": "p", "online": 1, "offline": 2}]
