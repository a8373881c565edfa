"""Peer-supplied text must reach the log only through ipsecd.logsafe.safe() (issue 13, log injection).

A peer chooses its identity (IDi/IDr), and later its EAP identity and certificate
subjects. A newline in one would let it write whole forged log lines ("CRITICAL ...
authentication succeeded for admin"); an ESC sequence would reach the terminal of
whoever reads the log. These tests drive real handshakes in memory and check every
log record under ``ipsecd``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest

from ipsecd.iana import IdType
from ipsecd.identity import Identity
from ipsecd.ike.frontdoor import FrontDoorSettings
from ipsecd.ike.settings import IkeSettings
from tests.ike_pair import make_pair, make_settings, make_settings_b

FORGED = "a.test\n12:00:00.000 CRITICAL ipsecd.ike: forged line \x1b[2J"


def _forger() -> IkeSettings:
    """An initiator whose IDi carries FORGED (the config loader refuses such an identity: forge the wire)."""
    base = make_settings()
    return replace(base, local_id=Identity.from_wire(IdType.ID_FQDN, FORGED.encode()),
                   psk_lookup=lambda me, peer: b"correct horse battery staple")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def unsafe(self) -> list[str]:
        return [m for r in self.records if "\n" in (m := r.getMessage()) or "\x1b" in m]


@pytest.fixture
def records() -> Iterator[Records]:
    root = logging.getLogger("ipsecd")
    handler, level = Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_peer_identity_with_newline_is_escaped_when_established(records: Records) -> None:
    pair = make_pair(_forger(), make_settings_b(remote_id="%any"))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert pair.b.list_sas(), "the handshake should succeed: the responder accepts any identity"
    assert records.unsafe() == []


def test_peer_identity_with_newline_is_escaped_when_refused(records: Records) -> None:
    pair = make_pair(_forger(), make_settings_b(remote_id="someone.else"))
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet()
    assert not pair.b.list_sas()
    assert records.unsafe() == []


MAX_LINES = 20  # for 40 requests from 40 spoofed sources: the rate limit's job
MAX_LINE = 1024  # characters: logsafe.safe() cuts peer text at 256


@pytest.mark.parametrize("max_size", [10_000, 65_535], ids=["default-size-cap", "no-size-cap"])
def test_a_flood_of_unacceptable_proposals_cannot_flood_the_log(records: Records, max_size: int) -> None:
    """Issue 13: 255 x 24 transforms made a 41 KB WARNING per request. The size cap drops such a
    request unread; without it (a raised ``init_max_size``) the refusal is still short and rate-limited."""
    import os

    from tests.flood import MAX_PROPOSALS, MAX_TRANSFORMS, build_init, public_values, stamp
    from tests.ike_pair import B_ADDR

    responder = make_pair(sb=make_settings_b(remote_id="%any", remote_addrs=("%any",),
                                             ike=("aes128-sha256-modp2048",))).b
    responder.front.configure(FrontDoorSettings(init_max_size=max_size, cookie_threshold=1000, cookie_rate=1000))
    template = build_init(proposals=MAX_PROPOSALS, transforms=MAX_TRANSFORMS)  # none has modp2048
    (public,) = public_values(1)
    for i in range(40):
        request = bytes(stamp(template, os.urandom(8), public, os.urandom(32)))
        responder.receive_datagram(request, (B_ADDR, 500), (f"198.18.{i // 250}.{i % 250 + 1}", 500), 1000.0 + i / 100)
    lines = [r.getMessage() for r in records.records if r.levelno >= logging.INFO]
    assert len(lines) <= MAX_LINES and max(map(len, lines), default=0) <= MAX_LINE, \
        f"{len(lines)} lines, the longest {max(map(len, lines), default=0)} characters"


def test_half_open_time_outs_share_a_budget_but_logins_keep_their_audit_lines(records: Records) -> None:
    import os

    from tests.flood import build_init, public_values, stamp
    from tests.ike_pair import B_ADDR

    pair = make_pair(sb=make_settings_b(remote_id="%any", remote_addrs=("%any",)))
    pair.b.front.configure(FrontDoorSettings(cookie_threshold=1000, cookie_threshold_ip=1000, cookie_rate=1000))
    (public,) = public_values(1)
    for i in range(40):  # spoofed: answered, then never heard of again
        spoofed = bytes(stamp(build_init(), os.urandom(8), public, os.urandom(32)))
        pair.b.receive_datagram(spoofed, (B_ADDR, 500), (f"198.18.0.{i + 1}", 500), pair.now)
    pair.b.datagrams_to_send()
    pair.b.handle_timer(pair.now + 31)
    timeouts = [r for r in records.records if "timed out waiting for IKE_AUTH" in r.getMessage()]
    assert 1 <= len(timeouts) <= 5, len(timeouts)
    records.records.clear()
    pair.now += 40
    for _ in range(8):  # eight logins: eight audit lines
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet(2)
    logins = [r for r in records.records if "with pre-shared key successful" in r.getMessage()
              and "[conn|" in r.getMessage() and "192.0.2.1" in r.getMessage()]
    assert len(logins) == 8, [r.getMessage() for r in logins]
