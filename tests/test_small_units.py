"""Small pieces: traffic selector narrowing, sd_notify, rate-limited logging."""

from __future__ import annotations

import logging
import socket
from ipaddress import ip_address

from ipsecd.iana import TsType
from ipsecd.ike.payloads import TrafficSelector
from ipsecd.ike.ts import all_within, intersect, narrow, ts_to_str
from ipsecd.ratelimit import RateLimitedLogger
from ipsecd.sdnotify import sd_notify, watchdog_interval


def ts(lo: str, hi: str, proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    return TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, proto, ports[0], ports[1], ip_address(lo), ip_address(hi))


def test_narrowing_and_subset_checks() -> None:
    assert intersect(ts("10.0.0.0", "10.255.255.255"), ts("10.1.0.0", "10.1.0.255")) == ts("10.1.0.0", "10.1.0.255")
    assert intersect(ts("10.1.0.0", "10.1.0.255", 6), ts("10.1.0.0", "10.1.0.255", 17)) is None
    assert intersect(ts("10.1.0.0", "10.1.0.255", 0, (0, 100)), ts("10.1.0.0", "10.1.0.255", 6, (80, 443))) == \
        ts("10.1.0.0", "10.1.0.255", 6, (80, 100))
    assert narrow([ts("10.0.0.0", "10.0.255.255")], [ts("10.0.1.0", "10.0.1.255"), ts("10.0.3.0", "10.0.3.255")]) \
        == [ts("10.0.1.0", "10.0.1.255"), ts("10.0.3.0", "10.0.3.255")]
    assert all_within([ts("10.0.1.0", "10.0.1.255")], [ts("10.0.0.0", "10.0.255.255")])
    assert not all_within([ts("10.0.0.0", "10.1.255.255")], [ts("10.0.0.0", "10.0.255.255")])
    assert ts_to_str(ts("10.1.0.0", "10.1.0.255")) == "10.1.0.0/24"
    assert ts_to_str(ts("10.1.0.1", "10.1.0.7")) == "10.1.0.1..10.1.0.7"
    assert ts_to_str(ts("10.1.0.0", "10.1.0.255", 6, (80, 80))) == "10.1.0.0/24[6/80]"


def test_sd_notify_writes_to_notify_socket(tmp_path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
        assert s.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", {})
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({}) is None


def test_rate_limited_logger(caplog) -> None:
    rl = RateLimitedLogger(logging.getLogger("ipsecd.test"), interval=10, burst=3)
    with caplog.at_level(logging.INFO, logger="ipsecd.test"):
        for i in range(100):
            rl.log(logging.INFO, "bad", "bad packet %d", i, now=1.0)
        rl.log(logging.INFO, "bad", "bad packet again", now=20.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["bad packet 0", "bad packet 1", "bad packet 2"]
    assert any("97 more suppressed" in m for m in lines)
    assert len(lines) == 5


def test_rate_limited_logger_bounds_a_flood_of_distinct_keys(caplog) -> None:
    """Keys built from peer data (addresses, names) must not reset the windows: the log stays bounded."""
    rl = RateLimitedLogger(logging.getLogger("ipsecd.test"), interval=10, burst=5)
    with caplog.at_level(logging.INFO, logger="ipsecd.test"):
        for i in range(20_000):
            rl.log(logging.INFO, f"from 198.51.{i >> 8 & 255}.{i & 255}", "bad packet %d", i, now=1.0 + i * 1e-4)
    assert len(caplog.records) <= (rl.max_keys + 1) * rl.burst
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ipsecd.test"):
        rl.log(logging.INFO, "from 203.0.113.1", "a new key after the window", now=30.0)
    assert any("more suppressed" in r.getMessage() for r in caplog.records)  # the overflow is reported
