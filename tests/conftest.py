"""Shared fixtures: fakeredis for unit tests, a real redis-server on a free port for integration
tests, and `payflow serve` as a subprocess for end-to-end tests.

Tests that need a redis-server binary skip with the reason when it is missing, unless
PAYFLOW_REQUIRE_SERVICES=1 (as in CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import fakeredis
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from daemon_proc import Daemon, daemon_env
from payflow.embedded import patch_fakeredis

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

patch_fakeredis()

REQUIRE_SERVICES = os.environ.get("PAYFLOW_REQUIRE_SERVICES") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def need(what: str, available: bool) -> None:
    """Skip (or, with PAYFLOW_REQUIRE_SERVICES=1, fail) when ``what`` is missing."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (PAYFLOW_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} is not available on this machine")


class RedisServer:
    """A redis-server process of the test's own, on a free port, that tests may kill and
    restart (its AOF survives a restart when ``appendonly``)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.dir = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(self.dir), "--appendonly",
                "yes" if self.appendonly else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    need("redis-server", shutil.which("redis-server") is not None)
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
async def real_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def fake_redis() -> AsyncIterator[Redis]:
    client: Redis = fakeredis.FakeAsyncRedis()
    try:
        yield client
    finally:
        await client.aclose()


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``make_daemon(redis_url=None, args=[...], **PAYFLOW_* env)`` starts
    `payflow serve` (embedded Redis on a free port unless ``redis_url``); all are stopped after
    the test."""
    started: list[Daemon] = []

    def make(redis_url: str | None = None, *, args: list[str] | None = None,
             start: bool = True, **settings: str) -> Daemon:
        env = daemon_env(**{"PAYFLOW_HTTP_PORT": str(free_port()),
                            "PAYFLOW_REDIS_EMBEDDED_PORT": str(free_port()),
                            "PAYFLOW_SHUTDOWN_GRACE_SECONDS": "5",
                            # test receivers listen on this machine
                            "PAYFLOW_WEBHOOKS_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
                            **settings})
        if redis_url is not None:
            env["PAYFLOW_REDIS_URL"] = redis_url
        d = Daemon(tmp_path, env, args if args is not None else ["--log-format", "console"])
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        d.kill()


ServeApp = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """Factory: ``await serve_app(app)`` serves ``app`` on a free port and returns aiohttp's test
    client for it; every client is closed after the test."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def serve(app: web.Application) -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield serve
    for client in clients:
        await client.close()


# --- PostgreSQL: a schema of the test's own (tests/pg.py) -----------------------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A postgresql:// URL whose ``search_path`` is a fresh schema, dropped (CASCADE) after the
    test. Skips, or fails with PAYFLOW_REQUIRE_SERVICES=1, when PostgreSQL is unreachable."""
    import pg

    server = pg.server_url()
    schema = pg.create_schema(server)
    need("postgresql", schema is not None)
    assert schema is not None
    try:
        yield pg.with_params(server, search_path=schema)
    finally:
        pg.drop_schema(server, schema)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every span exported at once to memory; off again after the test."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter as Exporter,
    )

    from payflow import tracing

    exporter = Exporter()
    tracing.setup(exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()
