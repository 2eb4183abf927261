"""The Idempotency-Key middleware on the real app, over fakeredis and a real redis-server, through
POST routes that still use it (refunds, cancel, webhook endpoints; ``POST /v1/payments`` binds
its key in the store instead: test_payment_idempotency.py): replay, 422 on a different request,
409 in flight, scoping by API key, what is not stored, required mode, key syntax, expiry, Redis
being down, secrets redacted from stored answers, and the release of a lock left behind by a
failed SET NX."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.exceptions
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from redis.asyncio import Redis

from conftest import RedisServer, ServeApp, free_port
from payflow.idempotency import REDACTED
from payflow.models import Payment, PaymentStatus, Refund, WebhookEndpoint
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext
from payflow.web.idempotency import Idempotency
from payflow.web.keys import API_KEY_NAME

PROBLEM = "application/problem+json"
PAID = "pay_paid"  # a succeeded payment of 49900 INR, seeded in every store
OTHER_PAID = "pay_paid_too"
REFUNDS = f"/v1/payments/{PAID}/refunds"
BODY: dict[str, Any] = {"amount": 100}
OTHER_BODY: dict[str, Any] = {"amount": 200}
ENDPOINTS = "/v1/webhook_endpoints"
# Tests that run one key more than once with different bodies create webhook endpoints.
HOOK: dict[str, Any] = {"url": "https://example.com/hooks", "enabled_events": ["*"]}
OTHER_HOOK: dict[str, Any] = {**HOOK, "url": "https://example.org/hooks"}
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
    """Records the refunds reserved (the handler ran); ``fail``: reserving raises; ``gate``
    holds the next endpoint write until set."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved: list[str] = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def put_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self.entered.set()
        if (gate := self.gate) is not None:
            self.gate = None  # only the first call waits
            await gate.wait()
        await super().put_endpoint(endpoint)

    async def reserve_refund(self, refund: Refund) -> str | None:
        if self.fail:
            raise RuntimeError("store exploded")
        why = await super().reserve_refund(refund)
        if why is None:
            self.reserved.append(refund.id)
        return why


async def seeded_store() -> Store:
    store = Store()
    await store.create_payments([
        Payment(id=pid, method="upi", amount=49900, currency="INR",
                method_details={"vpa": "asha@okhdfc"}, status=PaymentStatus.SUCCEEDED)
        for pid in (PAID, OTHER_PAID)])
    return store


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
                   path: str = REFUNDS, api_key: str | None = None,
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
        queue, store = Queue(), await seeded_store()

        async def ping() -> bool:
            return True

        idem = Idempotency(the_redis, ttl_seconds=ttl_seconds, required=required,
                           lock_seconds=lock_seconds)
        app = create_app(WebContext(store=store, enqueue_payment=queue.enqueue, ping=ping,
                                    enqueue_webhook=queue.enqueue, idempotency=idem))
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


async def wait_until_gone(client: Redis, key: str, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while await client.exists(key):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


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
            f"/v1/refunds/{data['id']}"
        assert again.content_type == "application/json"
        assert again.headers["Request-Id"] != first.headers["Request-Id"]
    assert api.store.reserved == [data["id"]]
    assert len(api.queue.raws) == 1
    ttl = await api.redis.pttl(redis_key("k-1"))
    assert 3_500_000 < ttl <= 3_600_000


async def test_without_a_key_every_post_runs(api: Api) -> None:
    (a, _, _), (b, _, _) = await api.post(), await api.post()
    assert a.status == b.status == 202
    assert len(api.store.reserved) == 2


async def test_same_key_different_request_is_422(api: Api) -> None:
    first, _, _ = await api.post(key="k-2")
    assert first.status == 202
    resp, _, data = await api.post(OTHER_BODY, key="k-2")
    assert_problem(resp, data, 422, "idempotency_key_reused")
    resp, _, data = await api.post(key="k-2", path=REFUNDS + "?x=1")
    assert_problem(resp, data, 422, "idempotency_key_reused")
    resp, _, data = await api.post(key="k-2", path=f"/v1/payments/{OTHER_PAID}/refunds")
    assert_problem(resp, data, 422, "idempotency_key_reused")
    assert len(api.store.reserved) == 1


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
    assert len(api.store.reserved) == len(api.queue.raws) == 1


async def test_an_expired_lock_taken_over_is_not_overwritten(make_api: MakeApi) -> None:
    api = await make_api(lock_seconds=0.2)
    api.store.gate = gate = asyncio.Event()
    slow = asyncio.create_task(api.post(HOOK, key="k-4", path=ENDPOINTS))
    await asyncio.wait_for(api.store.entered.wait(), 5)
    await asyncio.sleep(0.4)  # the first request's lock expired (a crashed daemon, say)
    second, _, d2 = await api.post(HOOK, key="k-4", path=ENDPOINTS)
    assert second.status == 201 and "Idempotent-Replayed" not in second.headers
    gate.set()
    first, _, d1 = await slow
    assert first.status == 201 and d1["id"] != d2["id"]
    replay, _, d3 = await api.post(HOOK, key="k-4", path=ENDPOINTS)
    assert replay.headers["Idempotent-Replayed"] == "true"
    # the late first request did not replace the second one's outcome
    assert d3 == {**d2, "secret": REDACTED}


async def test_keys_are_scoped_to_the_api_key(api: Api) -> None:
    a, _, da = await api.post(HOOK, key="shared", api_key="alice", path=ENDPOINTS)
    b, _, db = await api.post(OTHER_HOOK, key="shared", api_key="bob", path=ENDPOINTS)
    assert a.status == b.status == 201 and da["id"] != db["id"]
    c, _, _ = await api.post(HOOK, key="shared", path=ENDPOINTS)  # anonymous: a scope too
    assert c.status == 201 and "Idempotent-Replayed" not in c.headers
    again, _, dd = await api.post(HOOK, key="shared", api_key="alice", path=ENDPOINTS)
    assert again.headers["Idempotent-Replayed"] == "true" and dd["id"] == da["id"]
    assert len(await api.store.list_endpoints()) == 3
    for scope in ("alice", "bob", "anonymous"):
        assert await api.redis.exists(redis_key("shared", scope)) == 1


async def test_a_404_outcome_is_replayed_with_the_new_request_id(api: Api) -> None:
    path = f"{ENDPOINTS}/we_missing/rotate_secret"
    first, raw1, d1 = await api.post({}, key="k-5", path=path)
    assert_problem(first, d1, 404, "webhook_endpoint_not_found")
    assert "Idempotent-Replayed" not in first.headers and "param" not in d1
    again, raw2, d2 = await api.post({}, key="k-5", path=path)
    assert_problem(again, d2, 404, "webhook_endpoint_not_found")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert d2["request_id"] != d1["request_id"]
    assert raw2 == raw1.replace(d1["request_id"].encode(), d2["request_id"].encode())


async def test_a_409_conflict_of_the_core_is_replayed(api: Api) -> None:
    path = f"/v1/payments/{PAID}/cancel"  # a succeeded payment: payments.Conflict
    first, _, d1 = await api.post({}, key="k-5b", path=path)
    assert_problem(first, d1, 409, "payment_not_cancelable")
    assert "Idempotent-Replayed" not in first.headers
    stored = json.loads(await api.redis.get(redis_key("k-5b")) or b"null")
    assert stored["state"] == "done" and stored["status"] == 409
    again, _, d2 = await api.post({}, key="k-5b", path=path)
    assert_problem(again, d2, 409, "payment_not_cancelable")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert d1["current_status"] == "succeeded"  # a member beyond the usual ones
    assert d2 == {**d1, "request_id": again.headers["Request-Id"]}  # in the same order
    assert list(d2) == list(d1) and d2["request_id"] != d1["request_id"]


async def test_a_problem_kept_by_the_previous_version_is_replayed_whole(api: Api) -> None:
    """The Redis record of a kept problem is unchanged: one written before the replays carried
    every member replays them all."""
    path = f"/v1/payments/{PAID}/cancel"
    fp = hashlib.sha256(f"POST\n{path}\n{{}}".encode()).hexdigest()
    await api.redis.set(redis_key("k-old"), json.dumps({
        "state": "done", "fp": fp, "status": 409,
        "problem": {"title": "Conflict", "status": 409, "detail": "Too late.",
                    "code": "payment_not_cancelable", "current_status": "succeeded",
                    "slug": "payment-not-cancelable", "headers": {}}}))
    resp, raw, data = await api.post({}, key="k-old", path=path)
    assert_problem(resp, data, 409, "payment_not_cancelable")
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert raw == json.dumps({
        "type": "https://payflow.dev/problems/payment-not-cancelable", "title": "Conflict",
        "status": 409, "detail": "Too late.", "request_id": resp.headers["Request-Id"],
        "code": "payment_not_cancelable", "current_status": "succeeded"},
        separators=(",", ":")).encode()


# --- what is not stored -----------------------------------------------------------------------


async def test_a_validation_failure_stores_nothing(api: Api) -> None:
    resp, _, data = await api.post({**HOOK, "url": "ftp://example.com"}, key="k-6",
                                   path=ENDPOINTS)
    assert_problem(resp, data, 422, "invalid_url")
    resp, _, data = await api.post([1], key="k-6", path=ENDPOINTS)
    assert resp.status == 400
    assert await api.redis.exists(redis_key("k-6")) == 0
    fixed, _, d1 = await api.post(HOOK, key="k-6", path=ENDPOINTS)
    assert fixed.status == 201 and "Idempotent-Replayed" not in fixed.headers
    again, _, d2 = await api.post(HOOK, key="k-6", path=ENDPOINTS)
    assert again.headers["Idempotent-Replayed"] == "true" and d2["id"] == d1["id"]
    assert len(await api.store.list_endpoints()) == 1


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
    _, _, d1 = await api.post(HOOK, key="k-8", path=ENDPOINTS)
    again, _, d2 = await api.post(HOOK, key="k-8", path=ENDPOINTS)
    assert again.headers["Idempotent-Replayed"] == "true" and d2["id"] == d1["id"]
    await asyncio.sleep(0.5)
    later, _, d3 = await api.post(HOOK, key="k-8", path=ENDPOINTS)
    assert later.status == 201 and "Idempotent-Replayed" not in later.headers
    assert d3["id"] != d1["id"] and len(await api.store.list_endpoints()) == 2


async def test_get_ignores_the_header(make_api: MakeApi) -> None:
    api = await make_api(required=True)
    for _ in range(2):
        resp = await api.client.get(f"/v1/payments/{PAID}", headers={"Idempotency-Key": "k-9"})
        assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers
    resp = await api.client.get(f"/v1/payments/{PAID}", headers={"Idempotency-Key": "x" * 300})
    assert resp.status == 200
    resp = await api.client.get(f"/v1/payments/{PAID}")  # required only on POST
    assert resp.status == 200
    assert await api.redis.keys("payflow:idempotency:*") == []


# --- required mode and key syntax -------------------------------------------------------------


async def test_required_mode_refuses_a_post_without_a_key(make_api: MakeApi) -> None:
    api = await make_api(required=True)
    resp, _, data = await api.post()
    assert_problem(resp, data, 400, "idempotency_key_required")
    resp, _, data = await api.post({}, path=f"/v1/payments/{PAID}/cancel")
    assert_problem(resp, data, 400, "idempotency_key_required")
    resp, _, data = await api.post(path="/v1/nowhere")  # no route stays a 404
    assert_problem(resp, data, 404, "not_found")
    assert api.store.reserved == []
    resp, _, _ = await api.post(key="k-10")
    assert resp.status == 202


@pytest.mark.parametrize("key", ["x" * 256, '"' + "x" * 256 + '"', "clé", '""', '"open',
                                 '"a"b"', '"a\\b"'])
async def test_an_invalid_key_is_400(api: Api, key: str) -> None:
    resp, _, data = await api.post(key=key)
    assert_problem(resp, data, 400, "invalid_idempotency_key")
    assert api.store.reserved == []


async def test_two_key_headers_are_400(api: Api) -> None:
    headers = CIMultiDict([("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    resp, _, data = await api.post(headers=headers)
    assert_problem(resp, data, 400, "invalid_idempotency_key")
    assert api.store.reserved == []


@pytest.mark.parametrize("key", ["x" * 255, "a b-~!", '"with \\"escapes\\" \\\\"'])
async def test_valid_keys(api: Api, key: str) -> None:
    first, _, _ = await api.post(key=key)
    again, _, _ = await api.post(key=key)
    assert (first.status, again.status) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(api.store.reserved) == 1


# --- secrets are not stored -------------------------------------------------------------------


async def test_endpoint_secrets_are_redacted_in_replays(api: Api) -> None:
    first, _, created = await api.post(HOOK, key="k-ep", path=ENDPOINTS)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    secret = created["secret"]
    assert secret.startswith("whsec_")  # the first answer shows it
    again, _, replayed = await api.post(HOOK, key="k-ep", path=ENDPOINTS)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert replayed == {**created, "secret": REDACTED}
    assert len(await api.store.list_endpoints()) == 1  # created once

    rotate = f"{ENDPOINTS}/{created['id']}/rotate_secret"
    first, _, rotated = await api.post({}, key="k-rot", path=rotate)
    assert first.status == 200 and rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != secret
    again, _, replayed = await api.post({}, key="k-rot", path=rotate)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert replayed == {**rotated, "secret": REDACTED}
    [endpoint] = await api.store.list_endpoints()
    assert len(endpoint.secrets) == 2  # rotated once

    for key, shown in (("k-ep", secret), ("k-rot", rotated["secret"])):  # never kept in Redis
        stored = await api.redis.get(redis_key(key))
        assert stored is not None
        record = json.loads(stored)
        assert shown.encode() not in stored
        assert shown.encode() not in base64.b64decode(record["body"])


# --- Redis down -------------------------------------------------------------------------------


async def test_redis_down_is_503_and_the_handler_does_not_run(make_api: MakeApi) -> None:
    down = Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        api = await make_api(redis=down)
        resp, _, data = await api.post(key="k-11")
        assert_problem(resp, data, 503, "idempotency_unavailable")
        assert resp.headers["Retry-After"] == "1"
        assert api.store.reserved == [] and api.queue.raws == []
        resp, _, _ = await api.post()  # without a key nothing needs Redis
        assert resp.status == 202
    finally:
        await down.aclose()


class StallingRedis(Redis):
    """A client whose ``SET`` (while ``stall``) reaches the server but whose answer is lost: it
    raises TimeoutError as a stalled-then-resumed Redis would. ``late``: the SET is sent only
    after the client gave up (it lands after that many seconds)."""

    stall: bool = True
    late: float | None = None
    landed: list[Any]
    pending: asyncio.Future[None]

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        if not self.stall:
            return await super().set(*args, **kwargs)
        if self.late is None:
            self.landed.append(await super().set(*args, **kwargs))
        else:
            async def land(delay: float) -> None:
                await asyncio.sleep(delay)
                self.landed.append(await Redis.set(self, *args, **kwargs))

            self.pending = asyncio.ensure_future(land(self.late))
        raise TimeoutError("Timeout reading from socket")


@pytest.fixture
async def stalling(redis_server: RedisServer) -> AsyncIterator[StallingRedis]:
    client = StallingRedis(port=redis_server.port)
    client.landed = []
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("r", ["redis-server"], indirect=True)
async def test_a_lock_left_by_a_failed_set_nx_is_released(make_api: MakeApi, r: Redis,
                                                          stalling: StallingRedis) -> None:
    api = await make_api(redis=stalling, lock_seconds=60.0)
    resp, _, data = await api.post(key="k-12")
    assert_problem(resp, data, 503, "idempotency_unavailable")
    assert stalling.landed == [True]  # the SET NX did happen: the key got locked
    assert api.store.reserved == [] and api.queue.raws == []
    assert await wait_until_gone(r, redis_key("k-12"), 5.0), "the stale lock was not released"
    stalling.stall = False
    retry, _, done = await api.post(key="k-12")  # runs, rather than 409 for 60 s
    assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers
    assert api.store.reserved == [done["id"]] and len(api.queue.raws) == 1


@pytest.mark.redis
@pytest.mark.parametrize("r", ["redis-server"], indirect=True)
async def test_a_set_nx_landing_after_the_first_release_attempt_is_released(
        make_api: MakeApi, r: Redis, stalling: StallingRedis) -> None:
    stalling.late = 0.5
    api = await make_api(redis=stalling, lock_seconds=60.0)
    resp, _, data = await api.post(key="k-13")
    assert_problem(resp, data, 503, "idempotency_unavailable")
    await asyncio.wait_for(stalling.pending, 5)
    assert stalling.landed == [True]
    assert await wait_until_gone(r, redis_key("k-13"), 3.0), "the stale lock was not released"


async def test_a_refund_with_a_key_refunds_the_amount_asked(api: Api) -> None:
    resp, _, data = await api.post({"amount": 100}, key="k-14")
    assert resp.status == 202
    assert data["amount"] == 100  # not the whole 49900 left
