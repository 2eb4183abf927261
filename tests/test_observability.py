"""HTTP request metrics and access log lines; standard library log records through structlog;
the webhook-attempts-by-endpoint and Redis reconnect counters."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from conftest import ServeApp
from payflow import logs, metrics
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext


@pytest.fixture
async def client(serve_app: ServeApp) -> TestClient[Any, Any]:
    queued: list[bytes] = []

    async def enqueue(raw: bytes) -> None:
        queued.append(raw)

    async def ping() -> bool:
        return True

    ctx = WebContext(store=MemoryStore(), enqueue_payment=enqueue, ping=ping,
                     enqueue_webhook=enqueue)
    return await serve_app(create_app(ctx))


def requests(method: str, route: str, status: int) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "payflow_http_requests_total", {"method": method, "route": route, "status": str(status)})
    return value or 0.0


def timed(method: str, route: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "payflow_http_request_seconds_count", {"method": method, "route": route})
    return value or 0.0


async def test_http_metrics_and_access_log_use_route_templates(
        client: TestClient[Any, Any]) -> None:
    one = "/v1/payments/{payment_id}"
    before = (requests("POST", "/v1/payments", 202), requests("GET", one, 404),
              requests("GET", "unmatched", 404), timed("GET", one), timed("GET", "unmatched"))
    with capture_logs(processors=[logs.add_request_id]) as captured:
        resp = await client.post("/v1/payments", json={"amount": 1000, "currency": "INR",
                                                       "method": "upi"})
        assert resp.status == 202
        assert (await client.get("/v1/payments/pay_nope")).status == 404
        assert (await client.get("/nope")).status == 404
        assert (await client.get("/no/such/path/either")).status == 404
    after = (requests("POST", "/v1/payments", 202), requests("GET", one, 404),
             requests("GET", "unmatched", 404), timed("GET", one), timed("GET", "unmatched"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 2, 1, 2]
    samples = [s for m in metrics.REGISTRY.collect() if m.name == "payflow_http_requests"
               for s in m.samples]
    assert not any("nope" in s.labels.get("route", "") for s in samples)

    lines = [e for e in captured if e["event"] == "http.request"]
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("POST", "/v1/payments", 202), ("GET", one, 404), ("GET", "unmatched", 404),
        ("GET", "unmatched", 404)]
    assert all(e["log_level"] == "info" and e["duration_ms"] >= 0 for e in lines)
    assert lines[0]["request_id"] == resp.headers["Request-Id"]


def test_stdlib_records_become_json_lines() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    root = logging.getLogger()
    level = root.level
    try:
        assert logs.configure("json", "info", stream=stream) == "json"
        logging.getLogger("aiohttp.server").warning("x %s", "y")
        logging.getLogger("redis").info("dropped: below WARNING")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("asyncio").exception("failed")
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logs.StdlibToStructlog)]:
            root.removeHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()
    entries = [orjson.loads(line) for line in raw.getvalue().splitlines()]
    assert [(e["event"], e["logger"], e["level"]) for e in entries] == [
        ("x y", "aiohttp.server", "warning"), ("failed", "asyncio", "error")]
    assert "ValueError: boom" in entries[1]["exception"]
    assert all("timestamp" in e for e in entries)


def test_a_json_line_is_written_for_what_orjson_refuses() -> None:
    # A lone surrogate (from a client's header, say) or an integer past 64 bits must not make
    # a log call raise: the line is still one valid JSON object, with the request id.
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    token = logs.REQUEST_ID.set("req_1")
    try:
        logs.configure("json", "info", stream=stream)
        log = structlog.get_logger("t")
        log.info("odd", text="a\ud800b", big=10**30)
        log.warn("plain", n=1)
        logs.flush()
    finally:
        logs.REQUEST_ID.reset(token)
        structlog.reset_defaults()
    # (json, not orjson, to read it back: orjson reads integers past 64 bits as floats)
    first, second = (json.loads(line) for line in raw.getvalue().splitlines())
    assert first["text"] == "a\\ud800b"  # the escape, as text
    assert (first["big"], first["event"], first["level"], first["request_id"]) == (
        10**30, "odd", "info", "req_1")
    assert (second["event"], second["level"], second["n"]) == ("plain", "warning", 1)
