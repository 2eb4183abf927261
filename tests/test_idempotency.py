"""Idempotency-Key on the real app, over fakeredis and a real redis-server: replay, 422 on a
different request, 409 in flight, scoping by API key, what is not stored, required mode, key
syntax, expiry, and Redis being down."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.exceptions
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from redis.asyncio import Redis

from conftest import ServeApp, free_port
from payflow.models import Payment
from payflow.store.memory import MemoryStore
from payflow.web import WebContext, create_app
from payflow.web.idempotency import Idempotency
from payflow.web.keys import API_KEY_NAME

PROBLEM = "application/problem+json"
BODY: dict[str, Any] = {"amount": 49900, "currency": "inr", "method": "upi",
                        "upi": {"vpa": "asha@okhdfc"}}
OTHER_BODY: dict[str, Any] = {**BODY, "amount": 100}
TEST_KEY_HEADER = "X-Test-Api-Key"


class Queue:
    """Records what is enqueued; ``gate`` holds the next enqueue until set; ``fail`` raises."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def enqueue(self, raw: bytes) -> None:
        self.entered.set()
        if (gate := self.gate) is not None:
            self.gate = None  # only the first call waits
            await gate.wait()
        if self.fail is not None:
            raise self.fail
        self.raws.append(raw)


class Store(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []
        self.fail = False

    async def create_payments(self, payments: Sequence[Payment]) -> list[Payment]:
        if self.fail:
            raise RuntimeError("store exploded")
        self.created += [p.id for p in payments]
        return await super().create_payments(payments)


@web.middleware
async def fake_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stands in for authentication: the API key's name from a test header."""
    if (name := request.headers.get(TEST_KEY_HEADER)) is not None:
        request[API_KEY_NAME] = name
    return await handler(request)


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: Store
    queue: Queue
    redis: Redis
    headers: dict[str, str] = field(default_factory=dict)

    async def post(self, body: object = BODY, *, key: str | None = None,
                   path: str = "/v1/payments", api_key: str | None = None,
                   headers: Any = None) -> tuple[ClientResponse, bytes, Any]:
        h: CIMultiDict[str] = CIMultiDict(headers or {})
        if key is not None:
            h["Idempotency-Key"] = key
        if api_key is not None:
            h[TEST_KEY_HEADER] = api_key
        resp = await self.client.post(path, json=body, headers=h)
        raw = await resp.read()
        return resp, raw, json.loads(raw)


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture(params=["fakeredis", "redis-server"])
def r(request: pytest.FixtureRequest) -> Redis:
    client: Redis = request.getfixturevalue(
        "fake_redis" if request.param == "fakeredis" else "real_redis")
    return client


@pytest.fixture
async def make_api(r: Redis, serve_app: ServeApp) -> MakeApi:
    async def make(*, redis: Redis | None = None, ttl_seconds: float = 3600.0,
                   required: bool = False, lock_seconds: float = 60.0) -> Api:
        the_redis = redis if redis is not None else r
        queue, store = Queue(), Store()

        async def ping() -> bool:
            return True

        idem = Idempotency(the_redis, ttl_seconds=ttl_seconds, required=required,
                           lock_seconds=lock_seconds)
        app = create_app(WebContext(store=store, enqueue_payment=queue.enqueue, ping=ping,
                                    idempotency=idem))
        app.middlewares.insert(0, fake_auth)
        client = await serve_app(app)
        return Api(client=client, store=store, queue=queue, redis=the_redis)

    return make


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api()


def redis_key(key: str, scope: str = "anonymous") -> str:
    return f"payflow:idempotency:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"


def assert_problem(resp: ClientResponse, data: Any, status: int, code: str) -> None:
    assert resp.status == status, data
    assert resp.content_type == PROBLEM
    assert data["code"] == code
    assert data["status"] == status
    assert data["request_id"] == resp.headers["Request-Id"]


# --- replay -----------------------------------------------------------------------------------


async def test_same_key_same_body_is_replayed_and_runs_once(api: Api) -> None:
    first, raw1, data = await api.post(key="k-1")
    assert first.status == 202
    assert "Idempotent-Replayed" not in first.headers
    for key in ("k-1", '"k-1"'):  # bare token and RFC 8941 sf-string are the same key
        again, raw2, _ = await api.post(key=key)
        assert again.status == 202
        assert raw2 == raw1  # byte for byte
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["Location"] == first.headers["Location"] == \
            f"/v1/payments/{data['id']}"
        assert again.content_type == "application/json"
        assert again.headers["Request-Id"] != first.headers["Request-Id"]
    assert api.store.created == [data["id"]]
    assert len(api.queue.raws) == 1
    ttl = await api.redis.pttl(redis_key("k-1"))
    assert 3_500_000 < ttl <= 3_600_000


async def test_without_a_key_every_post_runs(api: Api) -> None:
    (a, _, _), (b, _, _) = await api.post(), await api.post()
    assert a.status == b.status == 202
    assert len(api.store.created) == 2


async def test_same_key_different_request_is_422(api: Api) -> None:
    first, _, _ = await api.post(key="k-2")
    assert first.status == 202
    resp, _, data = await api.post(OTHER_BODY, key="k-2")
    assert_problem(resp, data, 422, "idempotency_key_reused")
    resp, _, data = await api.post(key="k-2", path="/v1/payments?x=1")
    assert_problem(resp, data, 422, "idempotency_key_reused")
    assert len(api.store.created) == 1


async def test_retry_while_in_flight_is_409(api: Api) -> None:
    api.queue.gate = gate = asyncio.Event()
    first = asyncio.create_task(api.post(key="k-3"))
    await asyncio.wait_for(api.queue.entered.wait(), 5)
    resp, _, data = await api.post(key="k-3")
    assert_problem(resp, data, 409, "idempotency_request_in_flight")
    assert resp.headers["Retry-After"] == "1"
    resp, _, data = await api.post(OTHER_BODY, key="k-3")  # a different request stays a 422
    assert_problem(resp, data, 422, "idempotency_key_reused")
    gate.set()
    done, raw1, _ = await first
    assert done.status == 202
    again, raw2, _ = await api.post(key="k-3")
    assert (again.status, raw2, again.headers["Idempotent-Replayed"]) == (202, raw1, "true")
    assert len(api.store.created) == len(api.queue.raws) == 1


async def test_an_expired_lock_taken_over_is_not_overwritten(make_api: MakeApi) -> None:
    api = await make_api(lock_seconds=0.2)
    api.queue.gate = gate = asyncio.Event()
    slow = asyncio.create_task(api.post(key="k-4"))
    await asyncio.wait_for(api.queue.entered.wait(), 5)
    await asyncio.sleep(0.4)  # the first request's lock expired (a crashed daemon, say)
    second, raw2, _ = await api.post(key="k-4")
    assert second.status == 202
    gate.set()
    first, raw1, _ = await slow
    assert first.status == 202 and raw1 != raw2
    replay, raw3, _ = await api.post(key="k-4")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert raw3 == raw2  # the late first request did not replace the second one's outcome


async def test_keys_are_scoped_to_the_api_key(api: Api) -> None:
    a, _, da = await api.post(key="shared", api_key="alice")
    b, _, db = await api.post(OTHER_BODY, key="shared", api_key="bob")
    assert a.status == b.status == 202 and da["id"] != db["id"]
    c, _, _ = await api.post(key="shared")  # anonymous is a scope of its own
    assert c.status == 202
    again, _, dd = await api.post(key="shared", api_key="alice")
    assert again.headers["Idempotent-Replayed"] == "true" and dd["id"] == da["id"]
    assert len(api.store.created) == 3
    for scope in ("alice", "bob", "anonymous"):
        assert await api.redis.exists(redis_key("shared", scope)) == 1


async def test_a_404_outcome_is_replayed_with_the_new_request_id(api: Api) -> None:
    path = "/v1/webhook_endpoints/we_missing/rotate_secret"
    first, _, d1 = await api.post({}, key="k-5", path=path)
    assert_problem(first, d1, 404, "webhook_endpoint_not_found")
    assert "Idempotent-Replayed" not in first.headers
    again, _, d2 = await api.post({}, key="k-5", path=path)
    assert_problem(again, d2, 404, "webhook_endpoint_not_found")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert d2["detail"] == d1["detail"] and d2["request_id"] != d1["request_id"]


# --- what is not stored -----------------------------------------------------------------------


async def test_a_validation_failure_stores_nothing(api: Api) -> None:
    resp, _, data = await api.post({**BODY, "amount": -5}, key="k-6")
    assert resp.status == 422 and data["code"] != "idempotency_key_reused"
    resp, _, data = await api.post([1], key="k-6")
    assert resp.status == 400
    assert await api.redis.exists(redis_key("k-6")) == 0
    fixed, raw1, _ = await api.post(key="k-6")
    assert fixed.status == 202 and "Idempotent-Replayed" not in fixed.headers
    again, raw2, _ = await api.post(key="k-6")
    assert again.headers["Idempotent-Replayed"] == "true" and raw2 == raw1
    assert len(api.store.created) == 1


async def test_a_5xx_stores_nothing(api: Api) -> None:
    api.queue.fail = redis.exceptions.ConnectionError("queue down")
    resp, _, data = await api.post(key="k-7")
    assert_problem(resp, data, 503, "queue_unavailable")
    assert await api.redis.exists(redis_key("k-7")) == 0
    api.store.fail, api.queue.fail = True, None
    resp, _, data = await api.post(key="k-7")
    assert_problem(resp, data, 500, "internal_error")
    assert await api.redis.exists(redis_key("k-7")) == 0
    api.store.fail = False
    resp, _, _ = await api.post(key="k-7")
    assert resp.status == 202 and "Idempotent-Replayed" not in resp.headers
    assert len(api.queue.raws) == 1


async def test_an_expired_key_runs_again(make_api: MakeApi) -> None:
    api = await make_api(ttl_seconds=0.3)
    _, raw1, _ = await api.post(key="k-8")
    again, raw2, _ = await api.post(key="k-8")
    assert again.headers["Idempotent-Replayed"] == "true" and raw2 == raw1
    await asyncio.sleep(0.5)
    later, raw3, _ = await api.post(key="k-8")
    assert later.status == 202 and "Idempotent-Replayed" not in later.headers
    assert raw3 != raw1 and len(api.store.created) == 2


async def test_get_ignores_the_header(make_api: MakeApi) -> None:
    api = await make_api(required=True)
    _, _, data = await api.post(key="k-9")
    for _ in range(2):
        resp = await api.client.get(f"/v1/payments/{data['id']}",
                                    headers={"Idempotency-Key": "k-9"})
        assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers
    resp = await api.client.get(f"/v1/payments/{data['id']}",
                                headers={"Idempotency-Key": "x" * 300})
    assert resp.status == 200
    resp = await api.client.get(f"/v1/payments/{data['id']}")  # required only on POST
    assert resp.status == 200


# --- required mode and key syntax -------------------------------------------------------------


async def test_required_mode_refuses_a_post_without_a_key(make_api: MakeApi) -> None:
    api = await make_api(required=True)
    resp, _, data = await api.post()
    assert_problem(resp, data, 400, "idempotency_key_required")
    resp, _, data = await api.post(path="/v1/nowhere")  # no route stays a 404
    assert_problem(resp, data, 404, "not_found")
    assert api.store.created == []
    resp, _, _ = await api.post(key="k-10")
    assert resp.status == 202


@pytest.mark.parametrize("key", ["x" * 256, '"' + "x" * 256 + '"', "clé", '""', '"open',
                                 '"a"b"', '"a\\b"'])
async def test_an_invalid_key_is_400(api: Api, key: str) -> None:
    resp, _, data = await api.post(key=key)
    assert_problem(resp, data, 400, "invalid_idempotency_key")
    assert api.store.created == []


async def test_two_key_headers_are_400(api: Api) -> None:
    headers = CIMultiDict([("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    resp, _, data = await api.post(headers=headers)
    assert_problem(resp, data, 400, "invalid_idempotency_key")


@pytest.mark.parametrize("key", ["x" * 255, "a b-~!", '"with \\"escapes\\" \\\\"'])
async def test_valid_keys(api: Api, key: str) -> None:
    first, _, _ = await api.post(key=key)
    again, _, _ = await api.post(key=key)
    assert (first.status, again.status) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"


# --- Redis down -------------------------------------------------------------------------------


async def test_redis_down_is_503_and_the_handler_does_not_run(make_api: MakeApi) -> None:
    down = Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        api = await make_api(redis=down)
        resp, _, data = await api.post(key="k-11")
        assert_problem(resp, data, 503, "idempotency_unavailable")
        assert resp.headers["Retry-After"] == "1"
        assert api.store.created == [] and api.queue.raws == []
        resp, _, _ = await api.post()  # without a key nothing needs Redis
        assert resp.status == 202
    finally:
        await down.aclose()
