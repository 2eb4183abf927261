"""``POST /v1/payments`` binds its Idempotency-Key in the store, with the payment, before the job
is queued (not in the Redis middleware): replay of the payment's current state, 422 on another
request, no second payment or job, scoping by API key, a push that was not sent (the payment
and its key are removed: a retry runs again), a push whose answer was lost (the payment is
kept: a retry returns it), concurrent retries, and no need for Redis; over ``memory://`` and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.exceptions
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from redis.asyncio import Redis

from conftest import ServeApp, free_port
from payflow.models import PaymentStatus
from payflow.queue.producer import NotSent, Uncertain
from payflow.store import Store, open_store
from payflow.store.base import Transition
from payflow.web.app import create_app
from payflow.web.context import WebContext
from payflow.web.idempotency import Idempotency
from test_idempotency import TEST_KEY_HEADER, fake_auth

PROBLEM = "application/problem+json"
PAYMENTS = "/v1/payments"
BODY: dict[str, Any] = {"amount": 49900, "currency": "inr", "method": "upi",
                        "upi": {"vpa": "asha@okhdfc"}}
OTHER_BODY: dict[str, Any] = {**BODY, "amount": 100}


class Pusher:
    """The payments queue: records every push (``calls``) and those that went in (``queued``);
    ``fail`` raises on the next pushes, ``gate`` holds the next push until set."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # payment ids
        self.queued: list[str] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def push(self, raw: bytes) -> None:
        payment_id = json.loads(raw)["payment_id"]
        self.calls.append(payment_id)
        self.entered.set()
        if (gate := self.gate) is not None:
            self.gate = None
            await gate.wait()
        if self.fail is not None:
            raise self.fail
        self.queued.append(payment_id)


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: Store
    pusher: Pusher
    redis: Redis

    async def post(self, body: object = BODY, *, key: str | None = None,
                   path: str = PAYMENTS,
                   api_key: str | None = None) -> tuple[ClientResponse, Any]:
        h: CIMultiDict[str] = CIMultiDict()
        if key is not None:
            h["Idempotency-Key"] = key
        if api_key is not None:
            h[TEST_KEY_HEADER] = api_key
        resp = await self.client.post(path, json=body, headers=h)
        return resp, json.loads(await resp.read())

    async def payment_ids(self) -> list[str]:
        return sorted(p.id for p in await self.store.list_payments(limit=100))


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture(params=["memory", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("postgres_url")
    opened = await open_store(url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def make_api(store: Store, fake_redis: Redis, serve_app: ServeApp) -> MakeApi:
    async def make(*, redis: Redis | None = None, required: bool = False) -> Api:
        the_redis = redis if redis is not None else fake_redis
        pusher = Pusher()

        async def ping() -> bool:
            return True

        idem = Idempotency(the_redis, ttl_seconds=3600, required=required)
        app = create_app(WebContext(store=store, enqueue_payment=pusher.push, ping=ping,
                                    idempotency=idem))
        app.middlewares.insert(0, fake_auth)
        return Api(client=await serve_app(app), store=store, pusher=pusher, redis=the_redis)

    return make


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api()


def assert_problem(resp: ClientResponse, data: Any, status: int, code: str) -> None:
    assert resp.status == status, data
    assert resp.content_type == PROBLEM
    assert data["code"] == code


def assert_created(resp: ClientResponse, data: Any) -> None:
    assert resp.status == 202, data
    assert "Idempotent-Replayed" not in resp.headers
    assert resp.headers["Location"] == f"{PAYMENTS}/{data['id']}"


def assert_replayed(resp: ClientResponse, data: Any, payment_id: str) -> None:
    assert resp.status == 202, data
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert resp.headers["Location"] == f"{PAYMENTS}/{payment_id}"
    assert data["id"] == payment_id


async def test_a_retry_returns_the_payment_as_it_is_now(api: Api) -> None:
    first, created = await api.post(key="p-1")
    assert_created(first, created)
    assert created["status"] == "pending"
    for key in ("p-1", '"p-1"'):  # bare token and RFC 8941 sf-string are the same key
        again, data = await api.post(key=key)
        assert_replayed(again, data, created["id"])
        assert data == created
    [changed] = await api.store.transition([Transition(
        payment_id=created["id"], expected=(PaymentStatus.PENDING,),
        new=PaymentStatus.PROCESSING)])
    assert changed is not None
    again, data = await api.post(key="p-1")
    assert_replayed(again, data, created["id"])
    assert data["status"] == "processing"  # its current state, not the first answer
    assert await api.payment_ids() == [created["id"]]
    assert api.pusher.calls == api.pusher.queued == [created["id"]]  # one job
    assert await api.redis.keys("payflow:idempotency:*") == []  # bound in the store only


async def test_the_key_with_another_request_is_422(api: Api) -> None:
    first, created = await api.post(key="p-2")
    assert_created(first, created)
    resp, data = await api.post(OTHER_BODY, key="p-2")
    assert_problem(resp, data, 422, "idempotency_key_reused")
    # a query string is never part of a valid create: refused before the key is looked at
    resp, data = await api.post(key="p-2", path=PAYMENTS + "?x=1")
    assert_problem(resp, data, 400, "unknown_parameter")
    assert await api.payment_ids() == [created["id"]]
    assert api.pusher.calls == [created["id"]]


async def test_keys_are_scoped_to_the_api_key(api: Api) -> None:
    a, da = await api.post(key="shared", api_key="alice")
    b, db = await api.post(OTHER_BODY, key="shared", api_key="bob")
    c, dc = await api.post(key="shared")  # anonymous is a scope of its own
    for resp, data in ((a, da), (b, db), (c, dc)):
        assert_created(resp, data)
    again, dd = await api.post(key="shared", api_key="alice")
    assert_replayed(again, dd, da["id"])
    resp, data = await api.post(OTHER_BODY, key="shared", api_key="alice")
    assert_problem(resp, data, 422, "idempotency_key_reused")
    assert await api.payment_ids() == sorted([da["id"], db["id"], dc["id"]])
    assert len(api.pusher.calls) == 3


async def test_a_validation_failure_binds_nothing(api: Api) -> None:
    resp, data = await api.post({**BODY, "amount": -5}, key="p-3")
    assert resp.status == 422 and data["code"] != "idempotency_key_reused"
    first, created = await api.post(key="p-3")
    assert_created(first, created)
    assert api.pusher.calls == [created["id"]]


@pytest.mark.parametrize("error", [NotSent("ConnectionError: refused"),
                                   redis.exceptions.ConnectionError("refused")],
                         ids=["NotSent", "RedisError"])
async def test_a_push_not_sent_removes_the_payment_and_frees_the_key(
        api: Api, error: BaseException) -> None:
    api.pusher.fail = error
    resp, data = await api.post(key="p-4")
    assert_problem(resp, data, 503, "queue_unavailable")
    [gone] = api.pusher.calls
    assert await api.store.get_payments([gone]) == {}
    assert await api.payment_ids() == []
    api.pusher.fail = None
    retry, created = await api.post(key="p-4")
    assert_created(retry, created)  # runs again: not a replay of the removed payment
    assert created["id"] != gone
    assert await api.payment_ids() == [created["id"]]
    assert api.pusher.queued == [created["id"]]
    again, data = await api.post(key="p-4")
    assert_replayed(again, data, created["id"])
    assert len(api.pusher.calls) == 2


async def test_an_uncertain_push_keeps_the_payment_for_a_retry(api: Api) -> None:
    api.pusher.fail = Uncertain("TimeoutError: Timeout reading from socket")
    first, created = await api.post(key="p-5")
    assert_created(first, created)  # accepted: its job may be queued (or re-queued later)
    assert await api.payment_ids() == [created["id"]]
    api.pusher.fail = None
    again, data = await api.post(key="p-5")
    assert_replayed(again, data, created["id"])
    assert api.pusher.calls == [created["id"]]  # no second job
    assert await api.payment_ids() == [created["id"]]


async def test_a_retry_during_the_push_is_409_then_replayed(api: Api) -> None:
    """While the first request's push is pending its outcome is unknown (a NotSent would
    remove the payment): a retry is told to come back, then gets the payment."""
    api.pusher.gate = gate = asyncio.Event()
    first = asyncio.create_task(api.post(key="p-6"))
    await asyncio.wait_for(api.pusher.entered.wait(), 5)
    try:
        [payment_id] = api.pusher.calls
        again, data = await api.post(key="p-6")
        assert_problem(again, data, 409, "idempotency_request_in_flight")
        assert again.headers["Retry-After"] == "1"
    finally:
        gate.set()
    resp, created = await first
    assert_created(resp, created)
    assert created["id"] == payment_id
    again, data = await api.post(key="p-6")  # answered now: replayed
    assert_replayed(again, data, payment_id)
    assert api.pusher.calls == [payment_id]


async def test_concurrent_requests_with_one_key_create_one_payment(api: Api) -> None:
    answers = await asyncio.gather(*(api.post(key="p-7") for _ in range(8)))
    ids = {data["id"] for resp, data in answers if resp.status == 202}
    assert len(ids) == 1
    assert all(resp.status == 202 or data["code"] == "idempotency_request_in_flight"
               for resp, data in answers)
    assert sum(resp.status == 202 and "Idempotent-Replayed" not in resp.headers
               for resp, _ in answers) == 1
    assert await api.payment_ids() == sorted(ids)
    assert api.pusher.calls == sorted(ids)


async def test_required_mode_and_invalid_keys(make_api: MakeApi) -> None:
    api = await make_api(required=True)
    resp, data = await api.post()
    assert_problem(resp, data, 400, "idempotency_key_required")
    resp, data = await api.post(key="x" * 256)
    assert_problem(resp, data, 400, "invalid_idempotency_key")
    assert await api.payment_ids() == [] and api.pusher.calls == []
    resp, data = await api.post(key="p-8")
    assert_created(resp, data)


async def test_payments_with_a_key_do_not_need_redis(make_api: MakeApi) -> None:
    down = Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        api = await make_api(redis=down)
        first, created = await api.post(key="p-9")
        assert_created(first, created)
        again, data = await api.post(key="p-9")
        assert_replayed(again, data, created["id"])
        resp, data = await api.post(OTHER_BODY, key="p-9")
        assert_problem(resp, data, 422, "idempotency_key_reused")
        assert api.pusher.calls == [created["id"]]
    finally:
        await down.aclose()
