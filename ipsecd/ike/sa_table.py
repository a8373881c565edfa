"""Every IKE SA of an engine, found without a scan, and their timers.

By id; by our IKE SPI (every datagram); by (initiator SPI, peer address) while
half-open (retransmitted IKE_SA_INIT); by connection (traps, duplicates,
INITIAL_CONTACT); by the inbound SPI of each Child SA (data-plane events). The
indexes follow the SAs' signals and events (``index``), never a walk of the table.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from ipsecd.identity import Identity
from ipsecd.ike.context import EngineContext
from ipsecd.ike.cp import client_identity
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRekeyed,
)
from ipsecd.ike.ike_sa import IkeSa, IkeState
from ipsecd.ike.timers import TimerHeap


class SaTable:
    __slots__ = ("_by_child", "_by_conn", "_by_ids", "_by_spi", "_half_key", "_half_of_ip", "_half_open", "_ids_of",
                 "_initiated", "_peer_of", "by_id", "ctx", "timers")

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.by_id: dict[int, IkeSa] = {}
        self.timers = TimerHeap()
        self._by_spi: dict[bytes, IkeSa] = {}
        self._half_open: dict[tuple[bytes, str], IkeSa] = {}
        self._half_key: dict[int, tuple[bytes, str]] = {}  # IKE SA id -> its key in _half_open
        self._half_of_ip: dict[str, int] = {}  # peer address -> its half-open SAs (the front door's block_threshold)
        self._by_conn: dict[str, dict[int, IkeSa]] = {}
        self._by_child: dict[bytes, IkeSa] = {}
        # IKE SA id -> the (connection, peer address) it is indexed under in _by_conn, ctx.contacts and
        # _initiated: IKE_AUTH may switch a responder's SA to another connection (ike_auth.py), and the
        # entries made under the first must go with it
        self._peer_of: dict[int, tuple[str, str]] = {}
        # (connection, peer address) -> the IKE SAs we initiated there (simultaneous initiation)
        self._initiated: dict[tuple[str, str], dict[int, IkeSa]] = {}
        # (our identity, the peer's client identity) -> established IKE SAs (INITIAL_CONTACT, uniqueness);
        # the IKE SAs ask it through the context (swanctl's unique in IKE_AUTH)
        self._by_ids: dict[tuple[Identity, Identity], dict[int, IkeSa]] = {}
        self._ids_of: dict[int, tuple[Identity, Identity]] = {}
        ctx.sessions = self._by_ids

    # ------------------------------------------------------------------ lookups
    def by_spi(self, spi: bytes) -> IkeSa | None:
        return self._by_spi.get(spi)

    def half_open(self, spi_i: bytes, peer: str) -> IkeSa | None:
        return self._half_open.get((spi_i, peer))

    @property
    def half_open_count(self) -> int:
        return len(self._half_open)

    def half_open_of(self, peer: str) -> int:
        return self._half_of_ip.get(peer, 0)

    def of_connection(self, name: str) -> list[IkeSa]:
        return list(self._by_conn.get(name, {}).values())

    def initiated(self, connection: str, peer: str) -> list[IkeSa]:
        """The IKE SAs of ``connection`` we initiated to ``peer`` (few: a site-to-site peer)."""
        return list(self._initiated.get((connection, peer), {}).values())

    def with_identities(self, local: Identity, remote: Identity) -> list[IkeSa]:
        """Established IKE SAs between these two identities (``remote``: the client identity, the
        EAP identity when there is one, cp.client_identity)."""
        return list(self._by_ids.get((local, remote), {}).values())

    def with_peer(self, connection: str, peer: str) -> list[IkeSa]:
        """Every IKE SA of ``connection`` with ``peer`` (all clients behind one NAT: use sparingly)."""
        return [self.by_id[i] for i in self.ctx.contacts.get((connection, peer), ()) if i in self.by_id]

    def child_owner(self, spi_in: bytes) -> IkeSa | None:
        return self._by_child.get(spi_in)

    def reqid_elsewhere(self, reqid: int, sa: IkeSa) -> bool:
        """Does a Child SA of another live IKE SA of this connection carry this reqid?"""
        return any(o is not sa and o.state != IkeState.CLOSED and o.children.reqid_in_use(reqid)
                   for o in self._by_conn.get(sa.settings.name, {}).values())

    # ------------------------------------------------------------------ changes
    def add(self, sa: IkeSa, *, half_open: tuple[bytes, str] | None = None) -> None:
        """Track ``sa``; ``half_open`` is the (initiator SPI, peer address) of a peer's IKE_SA_INIT."""
        self.by_id[sa.ike_sa_id] = sa
        self._by_conn.setdefault(sa.settings.name, {})[sa.ike_sa_id] = sa
        self._contact(sa)
        if sa.our_spi != bytes(8):
            self._by_spi[sa.our_spi] = sa
        if half_open is not None:
            self._half_open[half_open] = sa
            self._half_key[sa.ike_sa_id] = half_open
            self._half_of_ip[half_open[1]] = self._half_of_ip.get(half_open[1], 0) + 1

    def route(self, spi: bytes, sa: IkeSa) -> None:
        self._by_spi[spi] = sa

    def index(self, sa: IkeSa, ev: Event) -> Event:
        """Follow one event of ``sa``; returns it (marked when another SA still uses its reqid)."""
        if isinstance(ev, IkeSaEstablished):
            self._not_half_open(sa)
            self._rebind(sa)
            self._index_ids(sa)
        elif isinstance(ev, ChildSaEstablished):
            self._by_child[ev.spi_in] = sa
        elif isinstance(ev, ChildSaDeleted):
            if self._by_child.get(ev.spi_in) is sa:
                del self._by_child[ev.spi_in]
            if not ev.reqid_in_use and ev.reqid in self.ctx.fixed_owner and self.reqid_elsewhere(ev.reqid, sa):
                # A fixed reqid may be carried by Child SAs of two IKE SAs at once (both ends
                # acquired together): the data plane must keep the survivor's policies.
                return dataclasses.replace(ev, reqid_in_use=True)
        elif isinstance(ev, IkeSaRekeyed):
            new = self.by_id.get(ev.new_ike_sa_id)
            if new is not None:
                for spi in ev.child_spis_in:
                    self._by_child[spi] = new
                self._index_ids(new)  # born established: no IkeSaEstablished of its own
        elif isinstance(ev, IkeSaMoved):
            self._drop_peer(sa)
            self._contact(sa)
        elif isinstance(ev, IkeSaClosed):
            self.remove(sa)
        return ev

    def remove(self, sa: IkeSa) -> None:
        self.by_id.pop(sa.ike_sa_id, None)
        _discard(self._by_conn, self._peer_of.get(sa.ike_sa_id, (sa.settings.name, ""))[0], sa.ike_sa_id)
        if self._by_spi.get(sa.our_spi) is sa:
            del self._by_spi[sa.our_spi]
        self._not_half_open(sa)
        self.ctx.release_ike_spi(sa.our_spi)
        self._drop_peer(sa)
        key = self._ids_of.pop(sa.ike_sa_id, None)
        if key is not None:
            _discard(self._by_ids, key, sa.ike_sa_id)
        self.timers.set(sa.ike_sa_id, None)

    def _not_half_open(self, sa: IkeSa) -> None:
        key = self._half_key.pop(sa.ike_sa_id, None)
        if key is not None and self._half_open.pop(key, None) is not None:
            left = self._half_of_ip.pop(key[1], 0) - 1
            if left > 0:
                self._half_of_ip[key[1]] = left

    def _rebind(self, sa: IkeSa) -> None:
        """The connection IKE_AUTH settled on replaces the one IKE_SA_INIT picked in every index."""
        name = self._peer_of.get(sa.ike_sa_id, (sa.settings.name, ""))[0]
        if name != sa.settings.name:
            _discard(self._by_conn, name, sa.ike_sa_id)
            self._by_conn.setdefault(sa.settings.name, {})[sa.ike_sa_id] = sa
            self._drop_peer(sa)
            self._contact(sa)

    def _contact(self, sa: IkeSa) -> None:
        self._peer_of[sa.ike_sa_id] = (sa.settings.name, sa.remote[0])
        self.ctx.add_contact(sa.settings.name, sa.remote[0], sa.ike_sa_id)
        if sa.initiator and sa.rekeyed_from is None:
            self._initiated.setdefault((sa.settings.name, sa.remote[0]), {})[sa.ike_sa_id] = sa

    def _index_ids(self, sa: IkeSa) -> None:
        who = client_identity(sa)
        if who is not None:
            key = (sa.local_identity, who)
            self._ids_of[sa.ike_sa_id] = key
            self._by_ids.setdefault(key, {})[sa.ike_sa_id] = sa

    def _drop_peer(self, sa: IkeSa) -> None:
        name, peer = self._peer_of.pop(sa.ike_sa_id, (sa.settings.name, ""))
        self.ctx.drop_contact(name, peer, sa.ike_sa_id)
        _discard(self._initiated, (name, peer), sa.ike_sa_id)


K = TypeVar("K")


def _discard(index: dict[K, dict[int, IkeSa]], key: K, ike_sa_id: int) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.pop(ike_sa_id, None)
        if not ids:
            del index[key]
