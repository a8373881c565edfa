"""What the daemon counts from the engine's events (metrics and ``ipsecctl stats``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecd.ike.events import (
    SETUP_FAILURES,
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRekeyed,
    Login,
)
from ipsecd.metrics import failure_class, login_labels


@dataclass
class ShellStats:
    events: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # failure_class(cause) -> count
    rekeys: dict[str, int] = field(default_factory=dict)  # "ike" / "child" -> count
    logins: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, result) -> count

    def on_event(self, ev: Event) -> None:
        if isinstance(ev, ChildSaEstablished):
            self._inc(self.events, "child_sas_established")
            if ev.rekeyed_spi_in is not None:
                self._inc(self.rekeys, "child")
        elif isinstance(ev, ChildSaFailed):
            self._inc(self.events, "child_sa_failures")
            self._inc(self.failures, failure_class(ev.cause))
        elif isinstance(ev, IkeSaEstablished):
            self._inc(self.events, "ike_sas_established")
        elif isinstance(ev, IkeSaRekeyed):
            self._inc(self.rekeys, "ike")
        elif isinstance(ev, IkeSaMoved):
            self._inc(self.events, "ike_sa_moves")  # MOBIKE updates and NAT rebinding (RFC 4555, RFC 7296 2.23)
        elif isinstance(ev, Login):
            key = login_labels(ev.method, ev.result.value)
            self.logins[key] = self.logins.get(key, 0) + 1
        elif isinstance(ev, IkeSaClosed):
            self._inc(self.events, "ike_sas_closed")
            if not ev.established and ev.cause in SETUP_FAILURES:
                self._inc(self.failures, failure_class(ev.cause))

    def count(self, what: str) -> None:
        self._inc(self.events, what)

    @staticmethod
    def _inc(d: dict[str, int], key: str) -> None:
        d[key] = d.get(key, 0) + 1
