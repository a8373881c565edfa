"""Several workers: classic BPF that sends ESP (and AH) for an SPI to the worker owning it.

handoff.py says why an SA pair has one owner worker and how it is chosen (``owner_of_spi``:
the inbound SPI modulo the number of workers). Two kinds of program carry that rule into the
kernel, so a received packet reaches its owner without any hand-over:

* UDP 4500 (:func:`natt_workers_program`, ``SO_ATTACH_REUSEPORT_CBPF``): every worker binds
  its own socket into port 4500's reuseport group, next to the IKE socket. The program keeps
  the old split (four zero octets, the non-ESP marker of RFC 3948 2.2: IKE) and picks the
  worker by the SPI of everything else; the one-byte NAT keepalive goes to worker 0.
* raw ESP and AH (:func:`raw_spi_filter`, ``SO_ATTACH_FILTER``): a raw socket gets a copy of
  every packet of its protocol, so each worker's raw sockets carry a filter that keeps only
  the SPIs it owns. IPv4 raw sockets see the IP header (its length from IHL), IPv6 ones start
  at the ESP/AH header. The SPI is at offset 0 of ESP (RFC 4303 2.1) and 4 of AH (RFC 4302 2).

The programs use the opcodes ike_steering.py interprets (``run_program``), so the tests check
them against ``owner_of_spi`` without a kernel.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Sequence

from ipsecd.dataplane.ike_steering import (
    _SOCK_FILTER,
    _SOCK_FPROG,
    JEQ_K,
    JGE_K,
    LD_W_ABS,
    LD_W_IND,
    LD_W_LEN,
    LDX_B_MSH,
    MOD_K,
    RET_K,
    Insn,
)

__all__ = ["ACCEPT", "ESP_SPI_OFFSET", "AH_SPI_OFFSET", "attach_filter", "natt_workers_program", "raw_spi_filter"]

SO_ATTACH_FILTER = 26
ACCEPT = 0xFFFFFFFF  # a socket filter's "keep the whole packet"
ESP_SPI_OFFSET = 0
AH_SPI_OFFSET = 4
MAX_WORKERS = 64  # conditional jumps reach 255 instructions ahead: far more than needed


def _by_spi_mod(returns: Sequence[int]) -> list[Insn]:
    """A = SPI already loaded: ``returns[A % n]``."""
    n = len(returns)
    prog: list[Insn] = [(MOD_K, 0, 0, n)]
    # a chain of "A == k ? return" tests: the instruction after test k is its return
    for k in range(n - 1):
        prog += [(JEQ_K, 0, 1, k), (RET_K, 0, 0, returns[k])]
    prog += [(RET_K, 0, 0, returns[n - 1])]
    return prog


def natt_workers_program(worker_slots: Sequence[int], ike_slot: int) -> list[Insn]:
    """The reuseport program of UDP 4500 with ``len(worker_slots)`` workers: slot numbers are
    positions in the group (the order the sockets joined it). An index the group does not have
    (the IKE socket not bound yet) makes the kernel fall back to its hash: nothing is lost."""
    if not 1 <= len(worker_slots) <= MAX_WORKERS:
        raise ValueError(f"1..{MAX_WORKERS} workers, not {len(worker_slots)}")
    return [
        (LD_W_LEN, 0, 0, 0),
        (JGE_K, 1, 0, 4),  # shorter than a marker or an SPI: the NAT keepalive (RFC 3948 2.3)
        (RET_K, 0, 0, worker_slots[0]),
        (LD_W_ABS, 0, 0, 0),
        (JEQ_K, 0, 1, 0),  # four zero octets: IKE (an ESP SPI of 0 is reserved, RFC 4303 2.1)
        (RET_K, 0, 0, ike_slot),
        *_by_spi_mod(worker_slots),
    ]


def raw_spi_filter(index: int, workers: int, *, ipv4: bool, spi_offset: int = ESP_SPI_OFFSET) -> list[Insn]:
    """A socket filter keeping the packets whose SPI worker ``index`` owns (``spi % workers``)."""
    if not 0 <= index < workers <= MAX_WORKERS:
        raise ValueError(f"worker {index} of {workers}")
    load: list[Insn] = [(LDX_B_MSH, 0, 0, 0), (LD_W_IND, 0, 0, spi_offset)] if ipv4 else [(LD_W_ABS, 0, 0, spi_offset)]
    return [*load, *_by_spi_mod([ACCEPT if k == index else 0 for k in range(workers)])]


def attach_filter(sock: socket.socket, insns: Sequence[Insn]) -> None:
    """``SO_ATTACH_FILTER``: the kernel runs ``insns`` on every packet before queueing it."""
    raw = b"".join(_SOCK_FILTER.pack(*i) for i in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _SOCK_FPROG.pack(len(insns), ctypes.addressof(buf)))
