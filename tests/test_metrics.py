"""Prometheus exposition: rendering checked line by line, and a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import pytest

from ipsecd import metrics
from ipsecd.ike.events import Cause
from ipsecd.metrics import CONTENT_TYPE, MetricsServer, MetricsSnapshot, escape_label_value, failure_class, render

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+]+|NaN|[+-]Inf)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _sas() -> dict[str, Any]:
    child = {"name": "net", "state": "INSTALLED", "spi_in": "c1a2b3d4", "spi_out": "0badf00d",
             "bytes_in": 1234, "bytes_out": 5678, "packets_in": 10, "packets_out": 12}
    return {"ike_sas": [
        {"name": "hq", "state": "ESTABLISHED", "child_sas": [child]},
        {"name": "rw", "state": "CONNECTING", "child_sas": []},
    ]}


def _snapshot(**kw: Any) -> MetricsSnapshot:
    base: dict[str, Any] = {
        "ike_states": {"ESTABLISHED": 1, "CONNECTING": 1},
        "child_states": {"INSTALLED": 1},
        "child_totals": {("hq", "net", "in"): (1234, 10), ("hq", "net", "out"): (5678, 12)},
        "ike_counters": {"malformed": 3, "unknown_spi": 1, "cookies_sent": 2},
        "dataplane_drops": {"replay": 4, "no_sa": 5},
        "events": {"ike_sas_established": 7},
        "handshake_failures": {"authentication_failed": 2},
        "rekeys": {},
        "version": "0.1.0",
    }
    base.update(kw)
    return MetricsSnapshot(**base)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """A strict little parser for format 0.0.4: every line must be HELP, TYPE or a sample of a declared family."""
    assert text.endswith("\n")
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert name not in helps, f"second HELP for {name}"
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("gauge", "counter")
            assert name in helps and name not in families, f"TYPE for {name} out of place"
            families[name] = (kind, helps[name])
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labeltext = m.group(1), m.group(3) or ""
            assert name in families, f"sample of undeclared family {name}"
            labels: list[tuple[str, str]] = []
            pos = 0
            while pos < len(labeltext):
                lm = LABEL.match(labeltext, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), lm.group(2)))
                pos = lm.end()
            key = (name, tuple(sorted(labels)))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = float(m.group(4))
    return families, samples


def test_render_families_and_values() -> None:
    families, samples = parse(render(_snapshot()))
    assert families["ipsecd_up"][0] == "gauge"
    assert families["ipsecd_child_sa_bytes_total"][0] == "counter"
    assert samples[("ipsecd_up", ())] == 1
    assert samples[("ipsecd_ike_sas", (("state", "ESTABLISHED"),))] == 1
    assert samples[("ipsecd_ike_sas", (("state", "CONNECTING"),))] == 1
    assert samples[("ipsecd_ike_sas", (("state", "DELETING"),))] == 0  # always present
    assert samples[("ipsecd_child_sas", (("state", "INSTALLED"),))] == 1
    # per (connection, child, direction) by default: no spi label, no per-SA series (issue 11)
    lin = (("child", "net"), ("conn", "hq"), ("direction", "in"))
    lout = (("child", "net"), ("conn", "hq"), ("direction", "out"))
    assert samples[("ipsecd_child_sa_bytes_total", lin)] == 1234
    assert samples[("ipsecd_child_sa_bytes_total", lout)] == 5678
    assert samples[("ipsecd_child_sa_packets_total", lin)] == 10
    assert samples[("ipsecd_child_sa_packets_total", lout)] == 12
    assert not any(name.startswith("ipsecd_child_sa_spi_") for name in families)
    assert samples[("ipsecd_drops_total", (("reason", "replay"),))] == 4
    assert samples[("ipsecd_ike_drops_total", (("reason", "malformed"),))] == 3
    assert ("ipsecd_ike_drops_total", (("reason", "cookies_sent"),)) not in samples
    assert samples[("ipsecd_ike_events_total", (("event", "cookies_sent"),))] == 2
    assert samples[("ipsecd_events_total", (("event", "ike_sas_established"),))] == 7
    assert samples[("ipsecd_handshake_failures_total", (("reason", "authentication_failed"),))] == 2
    assert samples[("ipsecd_rekeys_total", (("kind", "ike"),))] == 0
    assert samples[("ipsecd_rekeys_total", (("kind", "child"),))] == 0
    info = [k for k in samples if k[0] == "ipsecd_build_info"]
    assert len(info) == 1 and ("version", "0.1.0") in info[0][1]


def test_per_sa_series_only_when_opted_in() -> None:
    """settings.metrics.per_sa: the per-SPI families, beside the per-child sums (never mixed
    into one family, so sum() over a family never counts twice)."""
    families, samples = parse(render(_snapshot(sas=_sas(), per_sa=True)))
    lin = (("child", "net"), ("conn", "hq"), ("direction", "in"), ("spi", "c1a2b3d4"))
    lout = (("child", "net"), ("conn", "hq"), ("direction", "out"), ("spi", "0badf00d"))
    assert families["ipsecd_child_sa_spi_bytes_total"][0] == "counter"
    assert samples[("ipsecd_child_sa_spi_bytes_total", lin)] == 1234
    assert samples[("ipsecd_child_sa_spi_bytes_total", lout)] == 5678
    assert samples[("ipsecd_child_sa_spi_packets_total", lin)] == 10
    assert samples[("ipsecd_child_sa_bytes_total", lin[:3])] == 1234
    families, _ = parse(render(_snapshot(per_sa=True)))  # no SA: the families are still declared
    assert "ipsecd_child_sa_spi_packets_total" in families


def test_render_escapes_label_values() -> None:
    nasty = 'a"b\\c\nd'
    sas = {"ike_sas": [{"name": nasty, "state": "ESTABLISHED", "child_sas": [
        {"name": "x", "state": "INSTALLED", "spi_in": "1", "spi_out": "2", "bytes_in": 1, "bytes_out": 2,
         "packets_in": 1, "packets_out": 1}]}]}
    text = render(_snapshot(sas=sas, per_sa=True, child_totals={(nasty, "x", "in"): (1, 1)},
                            dataplane_drops={"we\"ird": 1}))
    assert 'conn="a\\"b\\\\c\\nd"' in text
    assert 'reason="we\\"ird"' in text
    parse(text)  # still one sample per line, nothing broken
    assert escape_label_value("plain") == "plain"


def test_render_survives_odd_input_and_merges_duplicates() -> None:
    child = {"name": "net", "state": "INSTALLED", "spi_in": "01", "spi_out": "02", "bytes_in": 5,
             "bytes_out": "garbage", "packets_in": -3, "packets_out": True}
    sas = {"ike_sas": [{"name": "a", "state": "ESTABLISHED", "child_sas": [child, dict(child), "junk"]}, 42]}
    _, samples = parse(render(_snapshot(sas=sas, per_sa=True, child_totals={("a", "net", "in"): (-1, "x")})))
    lin = (("child", "net"), ("conn", "a"), ("direction", "in"), ("spi", "01"))
    lout = (("child", "net"), ("conn", "a"), ("direction", "out"), ("spi", "02"))
    assert samples[("ipsecd_child_sa_spi_bytes_total", lin)] == 10  # the same series twice is summed, not repeated
    assert samples[("ipsecd_child_sa_spi_bytes_total", lout)] == 0
    assert samples[("ipsecd_child_sa_spi_packets_total", lin)] == 0
    assert samples[("ipsecd_child_sa_bytes_total", lin[:3])] == 0  # not a count: 0


def test_render_gc_pauses_per_process_and_generation() -> None:
    gen = {"0": {"passes": 120, "seconds": 0.25, "max_seconds": 0.004},
           "2": {"passes": 3, "seconds": 0.6, "max_seconds": 0.31}}
    gc = {"ike-0": gen, "ike-1": {"2": {"passes": 1, "seconds": 0.1, "max_seconds": 0.1}},
          "worker-0": {"1": {"passes": "junk", "seconds": -1, "max_seconds": True}}, "odd": "junk"}
    families, samples = parse(render(_snapshot(gc=gc)))
    assert families["ipsecd_gc_passes_total"][0] == "counter"
    assert families["ipsecd_gc_pause_seconds_total"][0] == "counter"
    assert families["ipsecd_gc_pause_max_seconds"][0] == "gauge"
    full = (("generation", "2"), ("process", "ike-0"))
    assert samples[("ipsecd_gc_passes_total", full)] == 3
    assert samples[("ipsecd_gc_pause_seconds_total", full)] == 0.6
    assert samples[("ipsecd_gc_pause_max_seconds", full)] == 0.31
    assert samples[("ipsecd_gc_passes_total", (("generation", "0"), ("process", "ike-0")))] == 120
    assert samples[("ipsecd_gc_pause_max_seconds", (("generation", "2"), ("process", "ike-1")))] == 0.1
    odd = (("generation", "1"), ("process", "worker-0"))  # garbage in: zeros out, the scrape survives
    assert samples[("ipsecd_gc_passes_total", odd)] == samples[("ipsecd_gc_pause_seconds_total", odd)] == 0
    assert samples[("ipsecd_gc_pause_max_seconds", odd)] == 0


def test_render_empty_snapshot_is_valid() -> None:
    families, samples = parse(render(MetricsSnapshot()))
    assert samples[("ipsecd_up", ())] == 1
    assert "ipsecd_drops_total" in families  # declared even with no samples


@pytest.mark.parametrize(
    ("cause", "cls"),
    [
        (Cause.AUTH_FAILED, "authentication_failed"),
        (Cause.TIMEOUT, "timeout"),
        (Cause.TS_UNACCEPTABLE, "ts_unacceptable"),
        (Cause.INVALID_KE, "invalid_ke"),
        (Cause.NO_PROPOSAL, "no_proposal_chosen"),
        (Cause.INSTALL_FAILED, "install_failed"),
        (Cause.PEER_REFUSED, "other"),
    ],
)
def test_failure_class(cause: Cause, cls: str) -> None:
    assert failure_class(cause) == cls


# --------------------------------------------------------------------------- the server


async def _request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def _split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


def _run(coro_fn: Any) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 20))


def test_server_serves_metrics_and_404() -> None:
    calls = 0

    async def collect() -> MetricsSnapshot:
        nonlocal calls
        calls += 1
        return _snapshot()

    async def main() -> None:
        server = MetricsServer(("127.0.0.1", 0), collect)
        await server.start()
        try:
            status, headers, body = _split(await _request(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert status == "HTTP/1.1 200 OK"
            assert headers["Content-Type"] == CONTENT_TYPE
            assert int(headers["Content-Length"]) == len(body)
            assert headers["Connection"] == "close"
            parse(body.decode())
            status, _, body = _split(await _request(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))
            assert status == "HTTP/1.1 200 OK"
            status, headers, body = _split(await _request(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
            assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["Content-Length"]) > 0
            status, _, _ = _split(await _request(server.port, b"GET / HTTP/1.1\r\n\r\n"))
            assert status == "HTTP/1.1 404 Not Found"
            status, _, _ = _split(await _request(server.port, b"GET /metricsX HTTP/1.1\r\n\r\n"))
            assert status == "HTTP/1.1 404 Not Found"
            status, headers, _ = _split(await _request(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"))
            assert status == "HTTP/1.1 405 Method Not Allowed" and headers["Allow"] == "GET, HEAD"
            assert calls == 3
        finally:
            await server.close()

    _run(main)


def test_server_survives_garbage_and_slow_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.3)

    async def collect() -> MetricsSnapshot:
        return _snapshot()

    async def main() -> None:
        server = MetricsServer(("127.0.0.1", 0), collect)
        await server.start()
        try:
            port = server.port
            status, _, _ = _split(await _request(port, b"\x00\xff\xfe garbage \x01\r\n\r\n"))
            assert status == "HTTP/1.1 400 Bad Request"
            status, _, _ = _split(await _request(port, b"GET /metrics SPDY/3\r\n\r\n"))
            assert status == "HTTP/1.1 400 Bad Request"
            huge = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n"
            answer = await _request(port, huge * 100 + b"\r\n")
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
            assert await _request(port, b"A" * 20000) == b""  # one endless line: hang up
            # a client that sends nothing and one that stops mid-head are both cut off after the timeout
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /metr")
            await w.drain()
            assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.close()  # connect and vanish
            # and after all that it still answers
            status, _, _ = _split(await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
            assert status == "HTTP/1.1 200 OK"
        finally:
            await server.close()

    _run(main)


def test_server_answers_500_when_collect_fails() -> None:
    async def collect() -> MetricsSnapshot:
        raise RuntimeError("data plane gone")

    async def main() -> None:
        server = MetricsServer(("127.0.0.1", 0), collect)
        await server.start()
        try:
            status, _, _ = _split(await _request(server.port, b"GET /metrics HTTP/1.1\r\n\r\n"))
            assert status == "HTTP/1.1 500 Internal Server Error"
        finally:
            await server.close()

    _run(main)


def test_server_close_ends_hanging_clients() -> None:
    async def collect() -> MetricsSnapshot:
        return _snapshot()

    async def main() -> None:
        server = MetricsServer(("127.0.0.1", 0), collect)
        await server.start()
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"GET /metrics HTTP/1.1\r\n")  # head never finished
        await w.drain()
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.close(), 2)
        assert await asyncio.wait_for(r.read(), 2) == b""
        w.close()

    _run(main)
