"""Prometheus metrics: a text exposition (format 0.0.4) on a tiny asyncio HTTP server.

Enabled with ``settings.metrics.listen: 127.0.0.1:9810``. Gateways are monitored
by Prometheus far more often than by someone running ``ipsecctl stats``, and a
scrape endpoint needs no client library: the format is a few lines of text.

The server is deliberately minimal and defensive, because whatever can reach
the port can talk to it: one request per connection (``Connection: close``),
GET/HEAD of ``/metrics`` only, the request head bounded in size and time, a
cap on concurrent clients, and no request can raise out of the handler. There
is no authentication: bind it to loopback or a management address.

The daemon builds a ``MetricsSnapshot`` from data it already has in the ``collect``
callback; this module only renders it, so the metric names live in one place. A scrape
costs O(connections), not O(SAs) (issue 11): SA states are counted off the engine's table
(``state_counts``), traffic comes from the worker as sums per (connection, child) that keep
the bytes of closed and rekeyed SAs (dataplane/readouts.py). Per-SPI series, O(SAs) per
scrape and a new series per rekey, only with ``settings.metrics.per_sa``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import platform
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from ipsecd import __version__
from ipsecd.control.server import stop_serving
from ipsecd.ike.child_sa import ChildSaState
from ipsecd.ike.events import Cause, LoginResult
from ipsecd.ike.state import IkeState

log = logging.getLogger("ipsecd.ctl")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 8192
"""Octets of request line plus headers; a scrape needs a few hundred."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its request head, and we have to send the answer."""
MAX_CLIENTS = 32

IKE_STATES = ("CONNECTING", "ESTABLISHED", "DELETING")
"""Always exported (0 when empty) so dashboards and alerts see a series before the first SA exists."""
CHILD_STATES = ("INSTALLED",)
REKEY_KINDS = ("ike", "child")
LOGIN_METHODS = ("psk", "pubkey", "eap-mschapv2", "eap-tls", "eap-radius", "eap")
"""The method label of ipsecd_logins_total; ``eap`` is an EAP login that ended before a method ran."""
IKE_NON_DROP_COUNTERS = frozenset({"cookies_sent", "cookie_secret_rotations", "retransmits", "retransmitted_requests",
                                   "invalid_ike_spi_sent", "fragments_sent", "fragments_received",
                                   "fragmented_messages", "keying_retries", "initiations_failed"})
"""IKE counters that count work, not discarded messages: exported as ipsecd_ike_events_total."""


@dataclass
class MetricsSnapshot:
    """Everything one scrape shows, as plain data the daemon already keeps.

    ``ike_states``/``child_states`` count SAs by state (``state_counts``); ``child_totals``
    maps (connection, child, direction) to (octets, packets) summed over every Child SA of it
    since the worker started. ``sas``, only with ``settings.metrics.per_sa``, is the daemon's
    ``list_sas()`` answer (``{"ike_sas": [...]}``, schema in docs/ipsecctl.md) for the per-SPI
    series. The counter dicts map a reason or kind to a monotonically increasing count.
    """

    sas: Mapping[str, Any] = field(default_factory=dict)
    ike_states: Mapping[str, int] = field(default_factory=dict)
    child_states: Mapping[str, int] = field(default_factory=dict)
    child_totals: Mapping[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    per_sa: bool = False  # settings.metrics.per_sa: render the per-SPI series out of ``sas``
    ike_counters: Mapping[str, int] = field(default_factory=dict)  # IkeManager.counters
    dataplane_drops: Mapping[str, int] = field(default_factory=dict)  # dataplane counters()["global"]["drops"]
    events: Mapping[str, int] = field(default_factory=dict)  # Daemon.event_counts
    handshake_failures: Mapping[str, int] = field(default_factory=dict)  # failure_class(cause) -> count
    rekeys: Mapping[str, int] = field(default_factory=dict)  # "ike" / "child" -> count
    logins: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (method, LoginResult) -> count
    version: str = __version__
    # process ("ike-0", "ike-1", "worker-0", ...) -> generation ("0".."2") -> {"passes", "seconds",
    # "max_seconds"}: each process's garbage collector since it started (gcpolicy.GcStats)
    gc: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)


# The label values of ipsecd_handshake_failures_total: a fixed, small set (Prometheus labels
# must not carry free text), one per class of Cause an SA failed with.
_FAILURE_CLASSES = {
    Cause.TIMEOUT: "timeout",
    Cause.NO_PROPOSAL: "no_proposal_chosen",
    Cause.TS_UNACCEPTABLE: "ts_unacceptable",
    Cause.INVALID_KE: "invalid_ke",
    Cause.AUTH_FAILED: "authentication_failed",
    Cause.INSTALL_FAILED: "install_failed",
}


def failure_class(cause: Cause) -> str:
    """The metrics label for a failed IKE or Child SA (``IkeSaClosed``/``ChildSaFailed`` cause)."""
    return _FAILURE_CLASSES.get(cause, "other")


def login_labels(method: str, result: str) -> tuple[str, str]:
    """(method, result) labels of a Login event, mapped into the fixed sets."""
    m = method if method in LOGIN_METHODS else "eap" if method.startswith("eap") else "other"
    r = result if result in {x.value for x in LoginResult} else "other"
    return m, r


_STATE = operator.attrgetter("state")
_CHILDREN = operator.attrgetter("children")
# The states' names by the identity of their (singleton) enum members: counting by id() hashes
# an int in C, where an Enum member's own __hash__ is a Python call per SA.
_STATE_NAMES = {id(s): str(s) for s in (*IkeState, *ChildSaState)}


def _by_state(states: Iterable[Any]) -> dict[str, int]:
    listed = list(states)
    by_id = Counter(map(id, listed))
    if all(k in _STATE_NAMES for k in by_id):
        return {_STATE_NAMES[k]: n for k, n in by_id.items()}
    return {str(k): n for k, n in Counter(listed).items()}  # not the engine's enums (tests' stand-ins)


def state_counts(sas: Iterable[Any]) -> dict[str, dict[str, int]]:
    """IKE and Child SAs by state, off the engine's table (``IkeManager.sas``): a few passes in
    C over the SAs (attribute reads, id() counting), nothing built per SA; closed IKE SAs and
    their Child SAs are not counted (as ``list_sas`` leaves them out)."""
    table = list(sas)
    ike = _by_state(map(_STATE, table))
    if "CLOSED" in ike:  # rare: closed SAs not yet dropped from the table
        del ike["CLOSED"]
        table = [sa for sa in table if sa.state != "CLOSED"]
    return {"ike": ike, "child": _by_state(map(_STATE, chain.from_iterable(map(_CHILDREN, table))))}


# --------------------------------------------------------------------------- rendering


def escape_label_value(value: object) -> str:
    """Backslash, double quote and newline escaped, as the exposition format requires."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


@dataclass
class _Family:
    """One metric family: HELP, TYPE and its samples, summed per label set (duplicates would fail the scrape)."""

    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def add(self, value: float, **labels: object) -> None:
        key = tuple((k, str(v)) for k, v in labels.items())
        self.samples[key] = self.samples.get(key, 0) + value

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for labels, value in sorted(self.samples.items()):
            text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
            out.append(f"{self.name}{{{text}}} {_number(value)}" if text else f"{self.name} {_number(value)}")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _count(value: object) -> int:
    """A counter value from JSON-ish data; anything that is not a non-negative int counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _reasons(fam: _Family, label: str, counts: Mapping[str, int], defaults: Iterable[str] = ()) -> None:
    for key in defaults:
        fam.add(0, **{label: key})
    for key, n in counts.items():
        fam.add(_count(n), **{label: key})


def render(snapshot: MetricsSnapshot) -> str:
    """The whole exposition text for one scrape (ends with a newline)."""
    up = _Family("ipsecd_up", "gauge", "1 while ipsecd is running and answering scrapes.")
    up.add(1)
    info = _Family("ipsecd_build_info", "gauge", "Version of ipsecd and of the Python running it; always 1.")
    info.add(1, version=snapshot.version, python=platform.python_version())
    ike_sas = _Family("ipsecd_ike_sas", "gauge", "IKE SAs by state.")
    child_sas = _Family("ipsecd_child_sas", "gauge", "Child SAs by state.")
    for s in IKE_STATES:
        ike_sas.add(0, state=s)
    for s in CHILD_STATES:
        child_sas.add(0, state=s)
    _reasons(ike_sas, "state", snapshot.ike_states)
    _reasons(child_sas, "state", snapshot.child_states)
    octets = _Family("ipsecd_child_sa_bytes_total", "counter",
                     "Octets the data plane counted on the Child SAs of a connection's child, per direction; "
                     "closed and rekeyed SAs included.")
    packets = _Family("ipsecd_child_sa_packets_total", "counter",
                      "Packets the data plane counted on the Child SAs of a connection's child, per direction; "
                      "closed and rekeyed SAs included.")
    for (conn, name, direction), (n_octets, n_packets) in snapshot.child_totals.items():
        octets.add(_count(n_octets), conn=conn, child=name, direction=direction)
        packets.add(_count(n_packets), conn=conn, child=name, direction=direction)
    families = [up, info, ike_sas, child_sas, octets, packets]
    if snapshot.per_sa:
        families += _per_sa(snapshot.sas)
    drops = _Family("ipsecd_drops_total", "counter", "Packets the data plane discarded, by reason.")
    _reasons(drops, "reason", snapshot.dataplane_drops)
    ike_drops = _Family("ipsecd_ike_drops_total", "counter", "IKE datagrams and messages discarded, by reason.")
    ike_events = _Family("ipsecd_ike_events_total", "counter",
                         "IKE work that is not a drop: cookies sent, retransmissions, answered retransmits, "
                         "RFC 7383 fragments built and received, messages reassembled.")
    _reasons(ike_drops, "reason", {k: v for k, v in snapshot.ike_counters.items() if k not in IKE_NON_DROP_COUNTERS})
    _reasons(ike_events, "event", {k: v for k, v in snapshot.ike_counters.items() if k in IKE_NON_DROP_COUNTERS})
    events = _Family("ipsecd_events_total", "counter", "SA lifecycle events (established, closed, failed).")
    _reasons(events, "event", snapshot.events)
    failures = _Family("ipsecd_handshake_failures_total", "counter",
                       "IKE and Child SA negotiations that failed, by class of reason.")
    _reasons(failures, "reason", snapshot.handshake_failures)
    rekeys = _Family("ipsecd_rekeys_total", "counter", "Completed rekeyings by SA kind.")
    _reasons(rekeys, "kind", snapshot.rekeys, REKEY_KINDS)
    logins = _Family("ipsecd_logins_total", "counter",
                     "Peers' authentications as responder (client logins), by method and result.")
    for method in LOGIN_METHODS:
        logins.add(0, method=method, result=LoginResult.SUCCESS.value)
    for (method, result), n in snapshot.logins.items():
        logins.add(_count(n), method=method, result=result)
    out: list[str] = []
    for fam in (*families, drops, ike_drops, ike_events, events, failures, rekeys, logins,
                *gc_families(snapshot.gc)):
        fam.render(out)
    return "\n".join(out) + "\n"


def gc_families(gc: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[_Family, ...]:
    """The garbage collector of every process (IKE process, shards, workers): its passes, their
    total and their longest pause per generation -- a long full pass stalls every handshake
    (or install) waiting behind it (issue 11; ipsecd/gcpolicy.py)."""
    passes = _Family("ipsecd_gc_passes_total", "counter",
                     "Garbage-collector passes of a process since it started, by generation (2: full).")
    total = _Family("ipsecd_gc_pause_seconds_total", "counter",
                    "Seconds a process spent stopped in garbage-collector passes, by generation.")
    longest = _Family("ipsecd_gc_pause_max_seconds", "gauge",
                      "The longest garbage-collector pass of a process since it started, by generation.")
    for process, generations in sorted(gc.items()):
        if not isinstance(generations, Mapping):
            continue
        for generation, f in sorted(generations.items()):
            if not isinstance(f, Mapping):
                continue
            passes.add(_count(f.get("passes")), process=process, generation=generation)
            total.add(_seconds(f.get("seconds")), process=process, generation=generation)
            longest.add(_seconds(f.get("max_seconds")), process=process, generation=generation)
    return passes, total, longest


def _seconds(value: object) -> float:
    """A duration from JSON-ish data; anything that is not a non-negative number counts as 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else 0.0  # type: ignore[arg-type]


def _per_sa(sas: Mapping[str, Any]) -> list[_Family]:
    """The opt-in per-SPI series (``settings.metrics.per_sa``): O(SAs) per scrape, and every
    rekey starts new series (the old SPI's end); the per-child totals above keep the sums."""
    octets = _Family("ipsecd_child_sa_spi_bytes_total", "counter",
                     "Octets the data plane counted on one installed Child SA, per direction and SPI.")
    packets = _Family("ipsecd_child_sa_spi_packets_total", "counter",
                      "Packets the data plane counted on one installed Child SA, per direction and SPI.")
    for sa in sas.get("ike_sas") or ():
        if not isinstance(sa, Mapping):
            continue
        conn = sa.get("name", "")
        for child in sa.get("child_sas") or ():
            if not isinstance(child, Mapping):
                continue
            name = child.get("name", "")
            for direction in ("in", "out"):
                labels = {"conn": conn, "child": name, "direction": direction, "spi": child.get(f"spi_{direction}", "")}
                octets.add(_count(child.get(f"bytes_{direction}")), **labels)
                packets.add(_count(child.get(f"packets_{direction}")), **labels)
    return [octets, packets]


# --------------------------------------------------------------------------- HTTP


class _BadRequest(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class MetricsServer:
    """``GET /metrics`` over HTTP/1.1; every scrape calls ``collect()`` for fresh numbers."""

    def __init__(self, listen: tuple[str, int], collect: Callable[[], Awaitable[MetricsSnapshot]]) -> None:
        self.listen = listen
        self.collect = collect
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host, port = self.listen
        self._server = await asyncio.start_server(self._client, host, port, limit=MAX_REQUEST_HEAD)
        log.info("metrics endpoint listening on http://%s/metrics",
                 f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}")

    async def close(self) -> None:
        await stop_serving(self._server, self._clients)
        self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if len(self._clients) > MAX_CLIENTS:
                await self._send(writer, "503 Service Unavailable", b"too many clients\n")
                return
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    method, path = await self._read_head(reader)
            except _BadRequest as e:
                await self._send(writer, e.status, (e.status + "\n").encode())
                return
            if path != "/metrics":
                await self._send(writer, "404 Not Found", b"not found: try /metrics\n", head=method == "HEAD")
                return
            try:
                body = render(await self.collect()).encode()
            except Exception:
                log.warning("metrics: collecting the numbers failed", exc_info=True)
                await self._send(writer, "500 Internal Server Error", b"collecting metrics failed\n")
                return
            await self._send(writer, "200 OK", body, CONTENT_TYPE, head=method == "HEAD")
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # slow, vanished or garbage-sending client: just hang up
        except asyncio.CancelledError:
            pass  # server closing
        except Exception:
            log.exception("metrics: unexpected error serving a client")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """Request line and headers; returns (method, path). Headers are read and ignored."""
        total = 0
        request_line = b""
        while True:
            line = await reader.readuntil(b"\n")
            total += len(line)
            if total > MAX_REQUEST_HEAD:
                raise _BadRequest("431 Request Header Fields Too Large")
            if not request_line:
                if not line.strip():
                    continue  # RFC 9112 2.2: ignore empty lines before the request line
                request_line = line
                continue
            if not line.strip():
                break
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("400 Bad Request")
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            raise _BadRequest("405 Method Not Allowed")
        return method, target.split("?", 1)[0]

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: str, body: bytes,
                    content_type: str = "text/plain; charset=utf-8", *, head: bool = False) -> None:
        lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
                 "Connection: close", "Cache-Control: no-store"]
        if status.startswith("405"):
            lines.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head else body))
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await writer.drain()
