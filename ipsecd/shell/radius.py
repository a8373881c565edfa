"""RADIUS for the daemon: the EAP-RADIUS round trips the engine asks for, and accounting.

The engine stays sans-I/O: an IKE SA whose EAP conversation is relayed to RADIUS emits
``AuthRequest``; this service sends the Access-Request through
:class:`~ipsecd.eap.radius_io.RadiusIo` (retransmission and failover are the sans-I/O
:class:`~ipsecd.eap.radius.RadiusClient`'s), and hands the answer back with
``IkeManager.auth_answer`` -- a TIMEOUT answer when no server replied, which fails the
login with "no RADIUS server answered". Meanwhile the client's retransmissions of its
IKE_AUTH request are dropped by the engine (it owes one answer).

Accounting (``settings.eap-radius.accounting``, RFC 2866), for IKE SAs whose peer logged
in through RADIUS: Start when the IKE SA is up; Interim-Update every
``accounting_interval``; Stop with bytes, packets, session time and a terminate cause
when it closes (not when a rekey replaces it: the session goes on under the new IKE SA).
Counters come from the data plane (the session's SAs only, by SPI: ``sa_counters``), read
on each interim, and once more the moment a Child SA of the session is deleted: this
service hears the deletion before the installer removes the SA from the worker, and the
worker answers requests in order, so Stop carries the bytes up to the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ipsecd.config import EapRadiusSettings
from ipsecd.eap.radius import (
    AccessRequest,
    AccountingRecord,
    AnswerKind,
    RadiusAnswer,
    RadiusClient,
    RadiusServer,
    RadiusSettings,
)
from ipsecd.eap.radius_io import RadiusIo
from ipsecd.iana import AcctStatusType, AcctTerminateCause
from ipsecd.ike.events import (
    AuthRequest,
    Cause,
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaRekeyed,
)

if TYPE_CHECKING:
    from ipsecd.shell.ike_shell import IkeShell

log = logging.getLogger("ipsecd.ike")

_TERMINATE = {
    Cause.DELETED_BY_PEER: AcctTerminateCause.USER_REQUEST,
    Cause.DELETED_LOCALLY: AcctTerminateCause.ADMIN_RESET,
    Cause.PEER_DEAD: AcctTerminateCause.LOST_CARRIER,
    Cause.TIMEOUT: AcctTerminateCause.LOST_CARRIER,
    Cause.EXPIRED: AcctTerminateCause.SESSION_TIMEOUT,
    Cause.REPLACED: AcctTerminateCause.NAS_REQUEST,
    Cause.REAUTHENTICATED: AcctTerminateCause.NAS_REQUEST,
    Cause.DUPLICATE: AcctTerminateCause.NAS_REQUEST,
}


@dataclass
class _Session:
    """One accounted login: its Child SAs' counters, summed over rekeys."""

    session_id: str
    user: bytes
    started: float
    framed_ip: str | None
    classes: tuple[bytes, ...]
    calling: str
    called: str
    spis: dict[bytes, bytes] = field(default_factory=dict)  # inbound SPI -> outbound SPI, while installed
    seen: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)  # in SPI -> bytes/pkts in/out

    def totals(self) -> tuple[int, int, int, int]:
        return tuple(sum(c[i] for c in self.seen.values()) for i in range(4))  # type: ignore[return-value]


def radius_client(settings: EapRadiusSettings) -> RadiusClient:
    servers = [RadiusServer(str(s.address), s.secret, s.auth_port, s.acct_port) for s in settings.servers]
    return RadiusClient(servers, RadiusSettings(nas_identifier=settings.nas_identifier,
                                                timeouts=settings.timeouts()))


class RadiusService:
    def __init__(self, shell: IkeShell, dataplane: Callable[[], Any]) -> None:
        self.shell = shell
        self.dataplane = dataplane  # -> the DataPlane, or None
        self.settings = EapRadiusSettings()
        self.io: RadiusIo | None = None
        self.sessions: dict[int, _Session] = {}  # IKE SA id -> its accounting session
        self._boot = f"{int(time.time()):08x}"
        self._interim: Any = None

    # ------------------------------------------------------------ configuration
    async def configure(self, settings: EapRadiusSettings) -> None:
        """Start, keep or replace the RADIUS client (a reload that changed the servers)."""
        if settings == self.settings and (self.io is not None or not settings.servers):
            return
        old, self.settings = self.io, settings
        self.io = None
        if settings.servers:
            io = RadiusIo(radius_client(settings))
            await io.open()
            self.io = io
            log.info("RADIUS: %d server(s): %s%s", len(settings.servers),
                     ", ".join(f"{s.name} {s.address}" for s in settings.servers),
                     ", accounting on" if settings.accounting else "")
        if old is not None:
            old.close()
        self._schedule_interim()

    def close(self) -> None:
        if self._interim is not None:
            self._interim.cancel()
        if self.io is not None:
            self.io.close()
            self.io = None

    # ------------------------------------------------------------ engine events
    def on_event(self, ev: Event) -> None:
        if isinstance(ev, AuthRequest):
            self.shell.tasks.spawn(self._access(ev), f"RADIUS request of IKE SA {ev.ike_sa_id}")
        elif isinstance(ev, IkeSaEstablished):
            self._start(ev)
        elif isinstance(ev, ChildSaEstablished) and ev.ike_sa_id in self.sessions:
            self.sessions[ev.ike_sa_id].spis[ev.spi_in] = ev.spi_out
        elif isinstance(ev, ChildSaDeleted) and ev.ike_sa_id in self.sessions:
            # read its counters now: the installer's removal of the SA is queued after this request
            self.shell.tasks.spawn(self._refresh([self.sessions[ev.ike_sa_id]]), "accounting counters")
        elif isinstance(ev, IkeSaRekeyed) and ev.ike_sa_id in self.sessions:
            self.sessions[ev.new_ike_sa_id] = self.sessions.pop(ev.ike_sa_id)
        elif isinstance(ev, IkeSaClosed) and ev.ike_sa_id in self.sessions and ev.replaced_by is None:
            session = self.sessions.pop(ev.ike_sa_id)
            cause = _TERMINATE.get(ev.cause, AcctTerminateCause.NAS_ERROR)
            self.shell.tasks.spawn(self._stop(session, cause), "accounting stop")

    async def _access(self, ev: AuthRequest) -> None:
        if self.io is None or not isinstance(ev.request, AccessRequest):
            answer = RadiusAnswer(AnswerKind.TIMEOUT)
        else:
            answer = await self.io.access(ev.request)
        if answer.kind == AnswerKind.TIMEOUT:
            log.warning("RADIUS: no server answered the Access-Request of IKE SA %d (%s)", ev.ike_sa_id,
                        ", ".join(str(s.address) for s in self.settings.servers) or "no server configured")
        self.shell.act(lambda m, now: m.auth_answer(ev.ike_sa_id, ev.token, answer, now))

    # ------------------------------------------------------------ accounting
    def _start(self, ev: IkeSaEstablished) -> None:
        if self.io is None or not self.settings.accounting:
            return
        sa = self.shell.manager.find(ev.ike_sa_id)
        login = sa.login if sa is not None else None
        if sa is None or login is None or login.method != "eap-radius" or sa.rekeyed_from is not None:
            return
        answer = login.extra if isinstance(login.extra, RadiusAnswer) else RadiusAnswer(AnswerKind.ACCEPT)
        # the address the client uses: RADIUS' Framed-IP-Address, else the lease from our own pool
        framed = answer.framed_ip or next((str(lease.address) for lease in sa.vips.leases), None)
        session = _Session(f"{self._boot}-{ev.ike_sa_id:08x}", login.eap_identity or b"", time.monotonic(),
                           framed, answer.classes, f"{sa.remote[0]}[{sa.remote[1]}]",
                           f"{sa.local[0]}[{sa.local[1]}]")
        self.sessions[ev.ike_sa_id] = session
        self.shell.tasks.spawn(self._send(session, AcctStatusType.START), "accounting start")

    def _record(self, s: _Session, status: AcctStatusType, cause: AcctTerminateCause | None = None
                ) -> AccountingRecord:
        bytes_in, packets_in, bytes_out, packets_out = s.totals()
        return AccountingRecord(status, s.session_id, s.user, framed_ip=s.framed_ip, classes=s.classes,
                                calling_station_id=s.calling, called_station_id=s.called,
                                input_octets=bytes_in, output_octets=bytes_out, input_packets=packets_in,
                                output_packets=packets_out, session_time=int(time.monotonic() - s.started),
                                terminate_cause=cause)

    async def _send(self, s: _Session, status: AcctStatusType, cause: AcctTerminateCause | None = None) -> None:
        if self.io is None:
            return
        if not await self.io.account(self._record(s, status, cause)):
            log.warning("RADIUS: accounting %s of session %s (user %r) was not acknowledged by any server",
                        status.name, s.session_id, s.user.decode(errors="replace"))

    async def _stop(self, s: _Session, cause: AcctTerminateCause) -> None:
        await self._refresh([s])
        await self._send(s, AcctStatusType.STOP, cause)

    async def _refresh(self, sessions: list[_Session]) -> None:
        """Read the sessions' Child SAs' counters: only theirs (GetSaCounters), never every SA's
        (a logout storm would otherwise cost one full dump per Stop, issue 11)."""
        dp = self.dataplane()
        if dp is None or not sessions:
            return
        pairs = [(int.from_bytes(i, "big"), int.from_bytes(o, "big")) for s in sessions for i, o in s.spis.items()]
        if not pairs:
            return
        try:
            snaps = await dp.sa_counters(pairs)
        except Exception as e:  # the worker may be restarting: keep the last values
            log.debug("accounting: cannot read data-plane counters: %s", e)
            return
        ins = {c.spi: c for c in snaps if c.direction == "in"}
        outs = {c.spi: c for c in snaps if c.direction == "out"}
        for s in sessions:
            for spi_in, spi_out in list(s.spis.items()):
                cin, cout = ins.get(int.from_bytes(spi_in, "big")), outs.get(int.from_bytes(spi_out, "big"))
                if cin is None and cout is None:
                    if spi_in in s.seen:  # removed since the last read: its last values stay, asked no more
                        del s.spis[spi_in]
                    continue  # (or not installed yet: asked again next time)
                last = s.seen.get(spi_in, (0, 0, 0, 0))
                s.seen[spi_in] = (cin.bytes if cin else last[0], cin.packets if cin else last[1],
                                  cout.bytes if cout else last[2], cout.packets if cout else last[3])

    def _schedule_interim(self) -> None:
        if self._interim is not None:
            self._interim.cancel()
            self._interim = None
        interval = self.settings.accounting_interval
        if self.io is not None and self.settings.accounting and interval > 0:
            self._interim = asyncio.get_running_loop().call_later(interval, self._on_interim)

    def _on_interim(self) -> None:
        self._interim = None
        sessions = list(self.sessions.values())

        async def interim() -> None:
            await self._refresh(sessions)
            for s in sessions:
                await self._send(s, AcctStatusType.INTERIM_UPDATE)

        if sessions:
            self.shell.tasks.spawn(interim(), "accounting interim")
        self._schedule_interim()
