"""API keys: Bearer authentication, open health checks, constant-time matching."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from conftest import ServeApp
from payflow.config import ApiKeyConfig
from payflow.store.memory import MemoryStore
from payflow.web import WebContext, create_app
from payflow.web.auth import find_key

KEYS = (ApiKeyConfig(name="old", secret="sk_test_old_0000000000"),
        ApiKeyConfig(name="new", secret="sk_test_new_1111111111"))
BODY = {"amount": 100, "currency": "INR", "method": "upi"}
Make = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make(serve_app: ServeApp) -> Make:
    async def build(*, metrics_public: bool = True) -> TestClient[Any, Any]:
        async def enqueue(raw: bytes) -> None:
            return None

        async def ping() -> bool:
            return True

        ctx = WebContext(store=MemoryStore(), enqueue_payment=enqueue, ping=ping, api_keys=KEYS,
                         metrics_public=metrics_public)
        return await serve_app(create_app(ctx))

    return build


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_missing_and_wrong_keys_are_401_problems(make: Make) -> None:
    client = await make()
    resp = await client.post("/v1/payments", json=BODY)
    assert resp.status == 401 and resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="payflow"'
    assert (await resp.json())["code"] == "missing_api_key"
    resp = await client.get("/v1/payments", headers=bearer("sk_test_wrong_000000000"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="payflow", error="invalid_token"'
    resp = await client.get("/v1/payments", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 401 and (await resp.json())["code"] == "invalid_api_key"
    assert "Request-Id" in resp.headers


async def test_every_configured_key_works(make: Make) -> None:
    client = await make()
    for key in KEYS:
        resp = await client.post("/v1/payments", json=BODY, headers=bearer(key.secret))
        assert resp.status == 202
    resp = await client.get("/v1/payments", headers={"Authorization": f"bearer {KEYS[0].secret}"})
    assert resp.status == 200  # the scheme is case-insensitive


async def test_health_checks_stay_open_and_metrics_are_configurable(make: Make) -> None:
    client = await make()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200
    closed = await make(metrics_public=False)
    assert (await closed.get("/metrics")).status == 401
    assert (await closed.get("/metrics", headers=bearer(KEYS[1].secret))).status == 200
    assert (await closed.get("/healthz")).status == 200


def test_find_key_checks_every_key() -> None:
    assert find_key(KEYS, KEYS[1].secret) == "new"
    assert find_key(KEYS, KEYS[1].secret + "x") is None
    assert find_key(KEYS, "") is None
    assert find_key((), "anything") is None
