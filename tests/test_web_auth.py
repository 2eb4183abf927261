"""API keys: Bearer authentication, open health checks, constant-time matching."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from conftest import ServeApp
from payflow.config import ApiKeyConfig
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.auth import auth_middleware, find_key
from payflow.web.context import WebContext
from payflow.web.keys import API_KEY_NAME
from payflow.web.problems import Problem

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


def test_find_key_returns_the_name_of_the_exact_match() -> None:
    assert find_key(KEYS, KEYS[0].secret) == "old"
    assert find_key(KEYS, KEYS[1].secret) == "new"
    assert find_key(KEYS, KEYS[1].secret + "x") is None
    assert find_key(KEYS, "") is None
    assert find_key((), "anything") is None


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.name)
def test_no_prefix_of_a_key_is_accepted(key: ApiKeyConfig) -> None:
    for end in range(len(key.secret)):
        assert find_key(KEYS, key.secret[:end]) is None, key.secret[:end]


@pytest.mark.parametrize("match", [0, 1, None])
def test_find_key_compares_with_every_key_in_constant_time(
        monkeypatch: pytest.MonkeyPatch, match: int | None) -> None:
    """hmac.compare_digest with each configured key, in order, with no early exit when one
    matches (the answer time says nothing about which key matched)."""
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what the module calls
    presented = KEYS[match].secret if match is not None else "sk_test_none_000000000"
    assert find_key(KEYS, presented) == (KEYS[match].name if match is not None else None)
    assert calls == [(presented.encode(), key.secret.encode()) for key in KEYS]


@pytest.mark.parametrize("header", [
    f"Basic {KEYS[0].secret}", f"Token {KEYS[0].secret}", f"Bearer{KEYS[0].secret}",
    KEYS[0].secret, f"{KEYS[0].secret} Bearer", "Bearer ", "Bearer",
])
async def test_a_valid_secret_needs_the_bearer_scheme(make: Make, header: str) -> None:
    client = await make()
    resp = await client.get("/v1/payments", headers={"Authorization": header})
    assert resp.status == 401
    problem = await resp.json()
    assert problem["code"] == "invalid_api_key"
    assert problem["type"].endswith("/invalid-api-key") and problem["title"] == "Unauthorized"
    assert problem["detail"] == "The Authorization header must be 'Bearer <secret>'."
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="payflow", error="invalid_request"'


async def test_the_401_problems_name_what_is_wrong(make: Make) -> None:
    client = await make()
    missing = await client.get("/v1/payments")
    assert await missing.json() == {
        "type": (await missing.json())["type"], "title": "Unauthorized", "status": 401,
        "detail": "This API needs an API key: send 'Authorization: Bearer <secret>'.",
        "request_id": missing.headers["Request-Id"], "code": "missing_api_key"}
    assert (await missing.json())["type"].endswith("/missing-api-key")
    wrong = await (await client.get("/v1/payments", headers=bearer("sk_x"))).json()
    assert wrong["title"] == "Unauthorized" and wrong["detail"] == "The API key is not valid."
    assert wrong["type"].endswith("/invalid-api-key")


async def test_a_secret_with_surrounding_spaces_still_matches(make: Make) -> None:
    client = await make()
    resp = await client.get("/v1/payments", headers={"Authorization": f"Bearer  {KEYS[1].secret} "})
    assert resp.status == 200


@pytest.mark.parametrize(("path", "open_"), [
    ("/dash", True), ("/dash/", True), ("/dash/app.js", True), ("/dash/x/y.css", True),
    ("/dashx", False), ("/dash.js", False), ("/v1/payments", False), ("/", False),
])
async def test_open_trees_open_the_tree_and_nothing_beside_it(path: str, open_: bool) -> None:
    """Everything under an open tree is served without a key; a path that merely starts with
    the tree's name is not under it."""
    middleware = auth_middleware(KEYS, metrics_public=False, open_trees=["/dash"])

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=request[API_KEY_NAME])

    request = make_mocked_request("GET", path)
    if open_:
        response = await middleware(request, handler)
        assert isinstance(response, web.Response) and response.text == "anonymous"
    else:
        with pytest.raises(Problem) as info:
            await middleware(request, handler)
        assert info.value.status == 401
