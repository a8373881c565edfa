"""Address pools for virtual IPs (RFC 7296 2.19): leases by identity, kept across restarts.

The IKE engine asks through :class:`ipsecd.ike.cp.AttributeProvider`; :class:`PoolManager`
is that provider for the daemon. Lease rules are swanctl's (strongSwan's mem_pool):

* a lease belongs to an identity (the EAP identity when there is one): the same user
  gets the same address back, online or offline;
* ``online`` counts the IKE SAs using a lease; when the last one goes the lease is
  ``offline`` -- still that user's, handed to someone else only when a pool has no
  never-used address left (the least recently used offline lease goes first);
* a user whose lease is online gets it again only from the same peer endpoint asking
  for it (a reauthentication), or when it said it lost its old SAs (``take_over``):
  two laptops with one user name get two addresses;
* a CIDR pool serves its host addresses (not the network and broadcast addresses of a
  prefix with more than two); a range ``a-b`` serves a..b inclusive.

Persistence: every change is written at once to SQLite (stdlib ``sqlite3``, WAL mode, one
row per lease). After a restart every lease is offline (no IKE SA survives one) and
still belongs to its user. A pool whose range changed keeps the leases inside the new
range; offline leases outside it are dropped, online ones go when released.

Nothing here reads the clock except through ``clock`` (tests pass a fake one).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, Protocol

from ipsecd.errors import ConfigError
from ipsecd.esp.spd import range_to_prefixes
from ipsecd.iana import ConfigAttribute, PrivateConfigAttribute
from ipsecd.identity import Identity
from ipsecd.ike.cp import Lease, encode_network
from ipsecd.logsafe import safe

log = logging.getLogger("ipsecd.cfg")

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Endpoint = tuple[str, int]
DEFAULT_LEASE_DB = Path("/var/lib/ipsecd/leases.db")
SCHEMA_VERSION = 1

_A = ConfigAttribute
_P = PrivateConfigAttribute
# swanctl's named pool attributes: key -> (IPv4 type, IPv6 type or None when there is none)
ADDRESS_KEYS: dict[str, tuple[int, int | None]] = {
    "dns": (_A.INTERNAL_IP4_DNS, _A.INTERNAL_IP6_DNS),
    "nbns": (_A.INTERNAL_IP4_NBNS, None),  # RFC 7296 dropped INTERNAL_IP6_NBNS
    "dhcp": (_A.INTERNAL_IP4_DHCP, _A.INTERNAL_IP6_DHCP),
    "netmask": (_A.INTERNAL_IP4_NETMASK, None),  # RFC 7296 dropped INTERNAL_IP6_NETMASK
    "server": (_P.INTERNAL_IP4_SERVER, _P.INTERNAL_IP6_SERVER),  # Windows' private attributes
}
SUBNET_KEYS: dict[str, tuple[int, int | None]] = {
    "subnet": (_A.INTERNAL_IP4_SUBNET, _A.INTERNAL_IP6_SUBNET),  # RFC 7296 3.15.2
    "split_include": (_P.UNITY_SPLIT_INCLUDE, _P.UNITY_SPLIT_INCLUDE),  # Cisco Unity, as swanctl
    "split_exclude": (_P.UNITY_LOCAL_LAN, _P.UNITY_LOCAL_LAN),
}
MAX_ATTRIBUTE_TYPE = 0x7FFF  # RFC 7296 3.15.1: 15 bits


class PoolError(ConfigError):
    """The lease database (``settings.lease_db``) cannot be opened."""


# --------------------------------------------------------------------------- values from the config


def parse_range(text: str) -> tuple[IPAddress, IPAddress]:
    """``addrs`` of a pool: ``10.3.0.0/24``, ``fd00:3::/120`` or ``10.3.0.10-10.3.0.99`` -> (first, last)
    address served; raises ValueError with a readable message."""
    raw = text.strip()
    if "-" in raw and "/" not in raw:
        lo_text, _, hi_text = raw.partition("-")
        try:
            lo, hi = ip_address(lo_text.strip()), ip_address(hi_text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an address range (expected e.g. 10.3.0.10-10.3.0.99)") from None
        if lo.version != hi.version:
            raise ValueError(f"{text!r} mixes IPv4 and IPv6")
        if int(lo) > int(hi):
            raise ValueError(f"{text!r}: the first address is above the last")
        return lo, hi
    try:
        net = ip_network(raw, strict=True)
    except ValueError:
        try:
            loose = ip_network(raw, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a subnet or range (expected e.g. 10.3.0.0/24 or "
                             "10.3.0.10-10.3.0.99)") from None
        raise ValueError(f"{text!r} has host bits set (did you mean '{loose}'?)") from None
    if net.num_addresses > 2:
        return net[1], net[-2]  # not the network and broadcast addresses, as strongSwan
    return net[0], net[-1]


def pool_addrs(text: str) -> tuple[tuple[IPAddress, IPAddress], tuple[IPNetwork, ...]]:
    """``addrs`` of a pool -> (first, last address served; the prefixes that route the pool).

    The routes go into the TUN (one per prefix for every client of the pool, not one per
    virtual IP): a subnet is routed as itself, network and broadcast address included; a
    range exactly, never wider (the addresses next to it may be someone else's).
    """
    first, last = parse_range(text)
    raw = text.strip()
    if "/" in raw:
        return (first, last), (ip_network(raw),)
    bits = first.max_prefixlen
    return (first, last), tuple(ip_network((n, plen)) for n, plen in range_to_prefixes(int(first), int(last), bits))


def attribute_value(key: str, text: str) -> tuple[int, bytes]:
    """One pool attribute (``dns: 10.2.0.53``, ``split_include: 10.2.0.0/16``, ``"25": corp.example``)
    as (type, wire value); raises ValueError naming what was expected."""
    raw = text.strip()
    if key in ADDRESS_KEYS:
        try:
            addr = ip_address(raw)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address") from None
        v4, v6 = ADDRESS_KEYS[key]
        kind = v4 if addr.version == 4 else v6
        if kind is None:
            raise ValueError(f"{text!r}: IKEv2 has no IPv6 {key} attribute (RFC 7296 3.15.1)")
        return kind, addr.packed
    if key in SUBNET_KEYS:
        try:
            net = ip_network(raw, strict=True)
        except ValueError:
            raise ValueError(f"{text!r} is not a subnet (expected e.g. 10.2.0.0/16)") from None
        v4, v6 = SUBNET_KEYS[key]
        return encode_network(v4 if net.version == 4 else (v6 or v4), net)
    if not key.isdigit() or not 1 <= int(key) <= MAX_ATTRIBUTE_TYPE:
        raise ValueError(f"unknown attribute {key!r} (expected a name or an attribute number 1-{MAX_ATTRIBUTE_TYPE})")
    # a numbered attribute, as swanctl: an address or a subnet in binary, anything else as text
    try:
        return int(key), ip_address(raw).packed
    except ValueError:
        pass
    if "/" in raw:
        try:
            return encode_network(int(key), ip_network(raw, strict=True))
        except ValueError:
            pass
    return int(key), raw.encode("utf-8")


@dataclass(frozen=True)
class PoolSpec:
    """One configured pool: the addresses it serves and the attributes that come with them."""

    name: str
    first: IPAddress
    last: IPAddress
    attributes: tuple[tuple[int, bytes], ...] = ()

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1


# --------------------------------------------------------------------------- persistence


@dataclass(frozen=True)
class StoredLease:
    pool: str
    address: IPAddress
    identity: Identity
    updated: float


class LeaseStore(Protocol):
    def load(self) -> list[StoredLease]: ...
    def save(self, pool: str, address: IPAddress, identity: Identity, online: int, updated: float) -> None: ...
    def delete(self, pool: str, address: IPAddress) -> None: ...
    def close(self) -> None: ...


class MemoryLeaseStore:
    """Leases that do not outlive the process (tests; a daemon without pools needs none)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], StoredLease] = {}

    def load(self) -> list[StoredLease]:
        return list(self.rows.values())

    def save(self, pool: str, address: IPAddress, identity: Identity, online: int, updated: float) -> None:
        self.rows[(pool, str(address))] = StoredLease(pool, address, identity, updated)

    def delete(self, pool: str, address: IPAddress) -> None:
        self.rows.pop((pool, str(address)), None)

    def close(self) -> None:
        return None


class SqliteLeaseStore:
    """One SQLite file, one row per lease; written through on every change.

    WAL with ``synchronous=NORMAL``: a commit is not an fsync, so a login costs a
    millisecond, and a power cut loses at most the last moments of changes -- a user then
    gets a fresh address, nothing worse. The file holds user names: mode 0600.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise PoolError(f"lease database {self.path} has schema version {version}, this ipsecd "
                                f"knows {SCHEMA_VERSION}")
            self.db.execute("CREATE TABLE IF NOT EXISTS leases (pool TEXT NOT NULL, address TEXT NOT NULL, "
                            "id_type INTEGER, id_data BLOB NOT NULL, identity TEXT NOT NULL, "
                            "online INTEGER NOT NULL, updated REAL NOT NULL, PRIMARY KEY (pool, address))")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as e:
            raise PoolError(f"cannot open the lease database {self.path}: {e}") from e
        self._failed = False

    def load(self) -> list[StoredLease]:
        out = []
        for pool, address, id_type, id_data, updated in self.db.execute(
                "SELECT pool, address, id_type, id_data, updated FROM leases"):
            try:
                ident = Identity(None) if id_type is None else Identity.from_wire(int(id_type), bytes(id_data))
                out.append(StoredLease(str(pool), ip_address(address), ident, float(updated)))
            except (ValueError, TypeError):
                log.warning("lease database %s: ignoring an unreadable row for %s in pool %s", self.path,
                            safe(address), safe(pool))
        # no IKE SA survives a restart: every lease is offline now (and still its user's)
        self._write("UPDATE leases SET online = 0 WHERE online != 0", ())
        return out

    def save(self, pool: str, address: IPAddress, identity: Identity, online: int, updated: float) -> None:
        id_type, id_data = identity.to_wire() if identity.id_type is not None else (None, b"")
        self._write("INSERT OR REPLACE INTO leases (pool, address, id_type, id_data, identity, online, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pool, str(address), None if id_type is None else int(id_type), id_data, str(identity), online,
                     updated))

    def delete(self, pool: str, address: IPAddress) -> None:
        self._write("DELETE FROM leases WHERE pool = ? AND address = ?", (pool, str(address)))

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        try:
            self.db.execute(sql, args)
        except sqlite3.Error as e:
            # a full or read-only disk must not stop logins: the leases stay right in memory
            if not self._failed:
                log.error("cannot write the lease database %s (%s): leases live on in memory but will not "
                          "survive a restart", self.path, e)
            self._failed = True
        else:
            if self._failed:
                log.info("lease database %s writable again", self.path)
            self._failed = False


# --------------------------------------------------------------------------- one pool


@dataclass
class _Record:
    identity: Identity
    updated: float
    holders: list[Endpoint] = field(default_factory=list)  # one entry per IKE SA using it (online)


@dataclass
class _Pool:
    spec: PoolSpec
    leases: dict[int, _Record] = field(default_factory=dict)  # address as int -> its lease
    by_identity: dict[Identity, list[int]] = field(default_factory=dict)
    offline: OrderedDict[int, None] = field(default_factory=OrderedDict)  # least recently offline first
    next_free: int = 0  # never-leased addresses start at or after this one
    # (index, count): with IKE shards each leases only the addresses at offsets = index modulo count
    share: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        self.next_free = int(self.spec.first) + self.share[0]

    def contains(self, addr: int) -> bool:
        return int(self.spec.first) <= addr <= int(self.spec.last)

    def ours(self, addr: int) -> bool:
        """This process's share of the range (another IKE shard leases the rest)."""
        index, count = self.share
        return (addr - int(self.spec.first)) % count == index

    def add(self, addr: int, rec: _Record, online: bool) -> None:
        self.leases[addr] = rec
        self.by_identity.setdefault(rec.identity, []).append(addr)
        if not online:
            self.offline[addr] = None

    def drop(self, addr: int) -> None:
        rec = self.leases.pop(addr)
        mine = self.by_identity[rec.identity]
        mine.remove(addr)
        if not mine:
            del self.by_identity[rec.identity]
        self.offline.pop(addr, None)

    def free_address(self, requested: int | None) -> int | None:
        """A never-leased address: the requested one if it is free, else the next one up."""
        if requested is not None and self.contains(requested) and self.ours(requested) \
                and requested not in self.leases:
            return requested
        last, step = int(self.spec.last), self.share[1]
        while self.next_free <= last and self.next_free in self.leases:
            self.next_free += step
        return self.next_free if self.next_free <= last else None


# --------------------------------------------------------------------------- the manager


class PoolManager:
    """The daemon's :class:`~ipsecd.ike.cp.AttributeProvider` (see the module docstring)."""

    def __init__(self, specs: Iterable[PoolSpec], store: LeaseStore | None = None,
                 clock: Callable[[], float] = time.time, share: tuple[int, int] = (0, 1)) -> None:
        """``share``: (index, count) of this IKE shard (``settings.ike_shards``): every shard
        leases its own addresses of each pool (offsets = index modulo count), so each address
        has one writer; the shards share the lease file, each reading and writing its rows."""
        self.store: LeaseStore = store if store is not None else MemoryLeaseStore()
        self.clock = clock
        self.share = share
        self.pools: dict[str, _Pool] = {}
        self._stored = self.store.load()
        self.update(specs)

    # ---------------------------------------------------------------- configuration
    def update(self, specs: Iterable[PoolSpec]) -> None:
        """Take a (re)loaded pool configuration; leases inside each pool's range carry over."""
        old, self.pools = self.pools, {}
        for spec in specs:
            pool = _Pool(spec, share=self.share)
            prev = old.get(spec.name)
            if prev is not None:
                for addr, rec in prev.leases.items():
                    if pool.contains(addr) or rec.holders:  # online leases stay until released
                        pool.add(addr, rec, online=bool(rec.holders))
                    else:
                        self.store.delete(spec.name, _addr(spec, addr))
            else:
                for row in self._stored:
                    if row.pool == spec.name and row.address.version == spec.version:
                        if not pool.contains(int(row.address)):
                            self.store.delete(spec.name, row.address)
                        elif pool.ours(int(row.address)):  # else another shard's lease
                            pool.add(int(row.address), _Record(row.identity, row.updated), online=False)
            pool.offline = OrderedDict(sorted(pool.offline.items(), key=lambda kv: pool.leases[kv[0]].updated))
            self.pools[spec.name] = pool
        self._stored = [r for r in self._stored if r.pool not in self.pools]  # a pool added back later
        for name, gone in old.items():  # a removed pool keeps its leases for when it comes back
            if name not in self.pools:
                self._stored += [StoredLease(name, _addr(gone.spec, a), r.identity, r.updated)
                                 for a, r in gone.leases.items()]

    def use_store(self, store: LeaseStore) -> None:
        """Persist from now on in ``store`` (a reload brought the first pools): the leases it holds
        are taken for the pools configured later (``update``); current leases are written to it."""
        self.store.close()
        self.store = store
        self._stored = store.load()
        for pool in self.pools.values():
            for addr, rec in pool.leases.items():
                store.save(pool.spec.name, _addr(pool.spec, addr), rec.identity, len(rec.holders), rec.updated)

    def close(self) -> None:
        self.store.close()

    # ---------------------------------------------------------------- AttributeProvider
    def serves(self, pools: Sequence[str], version: int) -> bool:
        return any(p.spec.version == version for p in self._of(pools, version))

    def acquire(self, pools: Sequence[str], identity: Identity, version: int, requested: IPAddress | None,
                peer: Endpoint, *, take_over: bool = False) -> Lease | None:
        candidates = self._of(pools, version)
        want = int(requested) if requested is not None and requested.version == version else None
        for pool in candidates:  # 1. the user's own offline lease (the one asked for, if it is one)
            mine = [a for a in pool.by_identity.get(identity, ()) if a in pool.offline]
            if mine:
                return self._online(pool, want if want in mine else mine[0], peer, "offline lease back to")
        for pool in candidates:  # 2. its own online lease: a reauthentication, or a client that lost its SAs
            for addr in pool.by_identity.get(identity, ()):
                rec = pool.leases[addr]
                if (take_over and (want is None or want == addr)) or (want == addr and peer in rec.holders):
                    return self._online(pool, addr, peer, "online lease shared with")
        for pool in candidates:  # 3. an address nobody has had
            free = pool.free_address(want)
            if free is not None:
                pool.add(free, _Record(identity, self.clock()), online=True)
                return self._online(pool, free, peer, "new lease for")
        for pool in candidates:  # 4. the least recently used offline lease of someone else
            if pool.offline:
                oldest = next(iter(pool.offline))
                was = pool.leases[oldest].identity
                pool.drop(oldest)
                pool.add(oldest, _Record(identity, self.clock()), online=True)
                log.info("pool %s: offline lease %s of '%s' reassigned", pool.spec.name, _addr(pool.spec, oldest),
                         safe(was))
                return self._online(pool, oldest, peer, "reassigned lease for")
        return None

    def release(self, lease: Lease) -> None:
        pool = self.pools.get(lease.pool)
        addr = int(lease.address)
        rec = pool.leases.get(addr) if pool is not None else None
        if pool is None or rec is None or rec.identity != lease.identity:
            return  # the pool was reloaded away, or the lease reassigned meanwhile
        if lease.peer in rec.holders:
            rec.holders.remove(lease.peer)
        elif rec.holders:
            rec.holders.pop()
        if rec.holders:
            return
        rec.updated = self.clock()
        if not pool.contains(addr):  # the pool shrank while it was online
            pool.drop(addr)
            self.store.delete(pool.spec.name, lease.address)
            return
        pool.offline[addr] = None
        self.store.save(pool.spec.name, lease.address, rec.identity, 0, rec.updated)
        log.info("pool %s: lease %s of '%s' went offline", pool.spec.name, lease.address, safe(rec.identity))

    def attributes(self, pools: Sequence[str], leases: Sequence[Lease]) -> list[tuple[int, bytes]]:
        used = {lease.pool for lease in leases}
        out: list[tuple[int, bytes]] = []
        for name in pools:
            pool = self.pools.get(name)
            if pool is not None and name in used:
                out += [a for a in pool.spec.attributes if a not in out]
        return out

    # ---------------------------------------------------------------- ipsecctl list-pools
    def describe(self, leases: bool = False, name: str | None = None) -> list[dict[str, Any]]:
        """swanctl --list-pools [--leases]: base, size, online and offline counts, the leases."""
        out = []
        for pname, pool in self.pools.items():
            if name is not None and pname != name:
                continue
            spec = pool.spec
            online = sum(1 for r in pool.leases.values() if r.holders)
            entry: dict[str, Any] = {"name": pname, "base": str(spec.first), "last": str(spec.last),
                                     "size": spec.size, "online": online, "offline": len(pool.leases) - online}
            if leases:
                entry["leases"] = [{"address": str(_addr(spec, a)), "status": "online" if r.holders else "offline",
                                    "identity": safe(r.identity), "since": round(r.updated, 3)}
                                   for a, r in sorted(pool.leases.items())]
            out.append(entry)
        return out

    # ---------------------------------------------------------------- internals
    def _of(self, names: Sequence[str], version: int) -> list[_Pool]:
        return [p for n in names if (p := self.pools.get(n)) is not None and p.spec.version == version]

    def _online(self, pool: _Pool, addr: int, peer: Endpoint, what: str) -> Lease:
        rec = pool.leases[addr]
        rec.holders.append(peer)
        pool.offline.pop(addr, None)
        rec.updated = self.clock()
        address = _addr(pool.spec, addr)
        self.store.save(pool.spec.name, address, rec.identity, len(rec.holders), rec.updated)
        log.debug("pool %s: %s '%s': %s", pool.spec.name, what, safe(rec.identity), address)
        return Lease(pool.spec.name, address, rec.identity, peer)


def _addr(spec: PoolSpec, value: int) -> IPAddress:
    return IPv4Address(value) if spec.version == 4 else IPv6Address(value)
