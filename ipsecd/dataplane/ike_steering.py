"""Steering IKE datagrams to their shard: a classic BPF program for SO_ATTACH_REUSEPORT_CBPF.

With ``settings.ike_shards: N`` every IKE process binds UDP 500 and 4500 with SO_REUSEPORT
and the kernel picks the socket per datagram by running this program (the same mechanism
that already splits 4500 between IKE and the data-plane worker, udp.py). The rule is
ipsecd/ike/shard.py's ``shard_of_message``, in BPF:

* from the original initiator (I flag set, RFC 7296 3.1) with SPIr zero, i.e. an
  IKE_SA_INIT request: the low 32 bits of SPIi modulo N (its retransmissions and cookie or
  KE retries land on the same shard);
* from the original initiator otherwise: SPIr's first octet modulo N;
* from the original responder (we initiated): SPIi's first octet modulo N.

On 4500 the program first keeps the old split: a datagram not starting with the four-zero
non-ESP marker (ESP, the one-byte NAT keepalive) goes to the worker's socket; IKE is read
four bytes further on. A datagram too short for an IKE header goes to shard 0, which drops
it as malformed. The program returns a *socket index* in the reuseport group (the order in
which sockets joined it): the caller maps shard -> index (``slots``), and opens the sockets
itself in a known order (daemon's ShardSockets) so that map is true.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

from ipsecd.ike.shard import FLAG_INITIATOR, IKE_HEADER_LEN, MAX_SHARDS

SO_ATTACH_REUSEPORT_CBPF = 51
NON_ESP_MARKER_LEN = 4

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
LD_W_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN
LD_W_IND = 0x40  # BPF_LD | BPF_W | BPF_IND (offset X + k)
LDX_B_MSH = 0xB1  # BPF_LDX | BPF_B | BPF_MSH: X = 4 * (byte k & 0xf), an IPv4 header's length
JA = 0x05  # BPF_JMP | BPF_JA
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

Insn = tuple[int, int, int, int]  # code, jt, jf, k (struct sock_filter)
_SOCK_FILTER = struct.Struct("=HBBI")
_SOCK_FPROG = struct.Struct("@HP")


def ike_steering_program(slots: Sequence[int], esp_slot: int | None = None) -> list[Insn]:
    """The program for one port: ``slots[k]`` is shard k's socket index; ``esp_slot`` the
    worker's on 4500 (None on 500, where IKE starts at the first payload byte)."""
    n = len(slots)
    if not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"1..{MAX_SHARDS} shards, not {n}")
    o = 0 if esp_slot is None else NON_ESP_MARKER_LEN
    prog: list[tuple[int, str | int, str | int, str | int]] = []  # jumps by label, resolved below
    labels: dict[str, int] = {}

    def at(label: str) -> None:
        labels[label] = len(prog)

    if esp_slot is not None:  # RFC 3948 2.2: IKE behind four zero octets, ESP never (SPI 0 is reserved)
        prog += [(LD_W_LEN, 0, 0, 0), (JGE_K, "marker", "esp", NON_ESP_MARKER_LEN)]
        at("marker")
        prog += [(LD_W_ABS, 0, 0, 0), (JEQ_K, "ike", "esp", 0)]
        at("esp")
        prog += [(RET_K, 0, 0, esp_slot)]
        at("ike")
    prog += [(LD_W_LEN, 0, 0, 0), (JGE_K, "header", "short", o + IKE_HEADER_LEN)]
    at("short")
    prog += [(RET_K, 0, 0, slots[0])]
    at("header")
    prog += [(LD_B_ABS, 0, 0, o + 19), (JSET_K, "from_i", "from_r", FLAG_INITIATOR)]
    at("from_r")  # we initiated this SA: our SPI is SPIi
    prog += [(LD_B_ABS, 0, 0, o), (JA, 0, 0, "mod")]
    at("from_i")
    prog += [(LD_W_ABS, 0, 0, o + 8), (JEQ_K, "spir_low", "spir", 0)]
    at("spir_low")
    prog += [(LD_W_ABS, 0, 0, o + 12), (JEQ_K, "init", "spir", 0)]
    at("init")  # IKE_SA_INIT request: a hash of SPIi (its low word)
    prog += [(LD_W_ABS, 0, 0, o + 4), (JA, 0, 0, "mod")]
    at("spir")
    prog += [(LD_B_ABS, 0, 0, o + 8)]
    at("mod")
    prog += [(MOD_K, 0, 0, n)]
    for k in range(1, n):
        prog += [(JEQ_K, f"s{k}", 0, k)]
    prog += [(RET_K, 0, 0, slots[0])]
    for k in range(1, n):
        at(f"s{k}")
        prog += [(RET_K, 0, 0, slots[k])]
    return [_resolve(i, insn, labels) for i, insn in enumerate(prog)]


def _resolve(i: int, insn: tuple[int, str | int, str | int, str | int], labels: dict[str, int]) -> Insn:
    code, jt, jf, k = insn

    def rel(target: str | int) -> int:
        if isinstance(target, int):
            return target
        off = labels[target] - i - 1
        if not 0 <= off <= 0xFF:
            raise ValueError(f"jump to {target} out of range")
        return off

    if code == JA:  # an unconditional jump's distance is in k
        return code, 0, 0, rel(k)
    return code, rel(jt), rel(jf), rel(k) if isinstance(k, str) else k


def attach_reuseport_program(sock: socket.socket, insns: Sequence[Insn]) -> None:
    """Attach ``insns`` to ``sock``'s reuseport group (it replaces the group's program)."""
    raw = b"".join(_SOCK_FILTER.pack(*i) for i in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SOCK_FPROG.pack(len(insns), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def run_program(insns: Sequence[Insn], data: bytes) -> int:
    """Interpret ``insns`` over a UDP payload as the kernel does (the opcodes used above only):
    the tests check the program against shard.py's rule on crafted headers without a kernel."""
    a, x, pc = 0, 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == LD_W_LEN:
            a = len(data)
        elif code == LD_W_ABS:
            if k + 4 > len(data):
                return 0  # the kernel aborts the program: 0
            a = int.from_bytes(data[k:k + 4], "big")
        elif code == LD_W_IND:
            if x + k + 4 > len(data):
                return 0
            a = int.from_bytes(data[x + k:x + k + 4], "big")
        elif code == LDX_B_MSH:
            if k + 1 > len(data):
                return 0
            x = 4 * (data[k] & 0x0F)
        elif code == LD_B_ABS:
            if k + 1 > len(data):
                return 0
            a = data[k]
        elif code == MOD_K:
            a %= k
        elif code == JA:
            pc += k
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == JGE_K:
            pc += jt if a >= k else jf
        elif code == JSET_K:
            pc += jt if a & k else jf
        elif code == RET_K:
            return k
        else:
            raise ValueError(f"opcode {code:#x} not interpreted")
