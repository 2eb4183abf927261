"""The Idempotency-Key rules of :mod:`payflow.idempotency` without HTTP, over fakeredis: lock,
replay, 409/422 as ``KeyInFlight``/``KeyReused``, what is kept and in which form, the release of
what is not, secrets redacted, Redis down, and the background releases cancelled by ``close``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from payflow.errors import KeyInFlight, KeyReused
from payflow.idempotency import (
    KEY_PREFIX,
    REDACTED,
    Answer,
    IdempotencyKeys,
    IdempotencyUnavailable,
    ProblemAnswer,
    Run,
    fingerprint,
    scoped_key,
)

KEY = scoped_key("alice", "k-1")
FP = fingerprint("POST", "/v1/things?x=1", b'{"a":1}')
JSON = "application/json; charset=utf-8"


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


@pytest.fixture
def keys(redis: fakeredis.FakeAsyncRedis) -> IdempotencyKeys:
    return IdempotencyKeys(redis, ttl_seconds=3600)


async def stored(redis: fakeredis.FakeAsyncRedis, key: str = KEY) -> Any:
    raw = await redis.get(KEY_PREFIX + key)
    return None if raw is None else json.loads(raw)


async def begin_run(keys: IdempotencyKeys, key: str = KEY, fp: str = FP) -> Run:
    run = await keys.begin(key, fp)
    assert isinstance(run, Run)
    return run


def test_the_key_is_scoped_and_hashed_and_the_fingerprint_covers_the_request() -> None:
    assert scoped_key("alice", "k-1") == "alice:" + hashlib.sha256(b"k-1").hexdigest()
    assert scoped_key("bob", "k-1") != KEY
    assert fingerprint("POST", "/v1/things?x=1", b'{"a":1}') == hashlib.sha256(
        b'POST\n/v1/things?x=1\n{"a":1}').hexdigest()
    assert len({FP, fingerprint("PUT", "/v1/things?x=1", b'{"a":1}'),
                fingerprint("POST", "/v1/things", b'{"a":1}'),
                fingerprint("POST", "/v1/things?x=1", b'{"a":2}')}) == 4
    assert KEY_PREFIX == "payflow:idempotency:"


def test_the_lock_lasts_a_minute_by_default(redis: fakeredis.FakeAsyncRedis) -> None:
    assert IdempotencyKeys(redis, ttl_seconds=1)._lock_ms == 60_000


async def test_a_first_request_runs_under_a_lock_that_expires(
        redis: fakeredis.FakeAsyncRedis) -> None:
    keys = IdempotencyKeys(redis, ttl_seconds=3600, lock_seconds=30)
    run = await begin_run(keys)
    assert (run.redis_key, run.fp) == (KEY_PREFIX + KEY, FP)
    lock = await stored(redis)
    assert lock["state"] == "in_flight" and lock["fp"] == FP and len(lock["token"]) == 32
    assert await redis.get(run.redis_key) == run.lock.encode()
    assert 29_000 < await redis.pttl(run.redis_key) <= 30_000


async def test_a_retry_in_flight_is_key_in_flight_and_another_request_key_reused(
        keys: IdempotencyKeys) -> None:
    await begin_run(keys)
    with pytest.raises(KeyInFlight):
        await keys.begin(KEY, FP)
    with pytest.raises(KeyReused):
        await keys.begin(KEY, "another-fingerprint")
    await begin_run(keys, scoped_key("bob", "k-1"))  # another API key's: its own


async def test_a_kept_answer_is_replayed_with_only_its_own_headers(
        keys: IdempotencyKeys, redis: fakeredis.FakeAsyncRedis) -> None:
    run = await begin_run(keys)
    headers = [("Content-Type", JSON), ("Location", "/v1/things/t_1"), ("X-Two", "a"),
               ("X-Two", "b"), ("Content-Length", "7"), ("Date", "today"), ("Server", "x"),
               ("Set-Cookie", "a=b"), ("Request-Id", "req_1"), ("Connection", "close"),
               ("Transfer-Encoding", "chunked")]
    await keys.finish(run, Answer(202, b'{"id":1}', JSON, headers))
    record = await stored(redis)
    assert record == {"state": "done", "fp": FP, "status": 202,
                      "body": base64.b64encode(b'{"id":1}').decode(), "content_type": JSON,
                      "headers": [["Location", "/v1/things/t_1"], ["X-Two", "a"],
                                  ["X-Two", "b"]]}
    assert 3_500_000 < await redis.pttl(KEY_PREFIX + KEY) <= 3_600_000
    with capture_logs() as logs:
        replay = await keys.begin(KEY, FP)
    assert replay == Answer(202, b'{"id":1}', JSON, [("Location", "/v1/things/t_1"),
                                                     ("X-Two", "a"), ("X-Two", "b")])
    assert [(e["event"], e["status"]) for e in logs] == [("idempotency.replayed", 202)]
    with pytest.raises(KeyReused):  # a kept answer is not another request's either
        await keys.begin(KEY, "another-fingerprint")


async def test_an_empty_answer_without_content_type_is_kept_empty(
        keys: IdempotencyKeys) -> None:
    await keys.finish(await begin_run(keys), Answer(204, b"", None, []))
    assert await keys.begin(KEY, FP) == Answer(204, b"", None, [])


async def test_a_kept_problem_is_replayed_without_its_type_and_request_id(
        keys: IdempotencyKeys, redis: fakeredis.FakeAsyncRedis) -> None:
    members = {"type": "https://payflow.dev/problems/busy", "title": "Busy", "status": 409,
               "detail": "It is busy.", "request_id": "req_1", "code": "busy",
               "param": "amount", "current_status": "succeeded"}
    await keys.finish(await begin_run(keys),
                      ProblemAnswer(409, "busy", members, {"X-Why": "busy"}))
    record = await stored(redis)
    kept = {"title": "Busy", "status": 409, "detail": "It is busy.", "code": "busy",
            "param": "amount", "current_status": "succeeded"}
    assert record == {"state": "done", "fp": FP, "status": 409,
                      "problem": {**kept, "slug": "busy", "headers": {"X-Why": "busy"}}}
    assert list(record["problem"]) == [*kept, "slug", "headers"]
    assert await keys.begin(KEY, FP) == ProblemAnswer(409, "busy", kept, {"X-Why": "busy"})


@pytest.mark.parametrize(("status", "kept"), [(200, True), (201, True), (399, True),
                                              (400, False), (403, False), (404, True),
                                              (409, True), (410, False), (422, False),
                                              (500, False), (503, False)])
async def test_which_outcomes_are_kept(keys: IdempotencyKeys, redis: fakeredis.FakeAsyncRedis,
                                       status: int, kept: bool) -> None:
    outcomes: list[Answer | ProblemAnswer] = [Answer(status, b"x", None, []),
                                              ProblemAnswer(status, "s", {"status": status}, {})]
    for n, outcome in enumerate(outcomes):
        key = f"{KEY}-{n}"
        await keys.finish(await begin_run(keys, key), outcome)
        assert (await stored(redis, key) is not None) is kept
        if not kept:  # released: a retry runs again
            await begin_run(keys, key)


async def test_no_outcome_releases_the_key(keys: IdempotencyKeys,
                                           redis: fakeredis.FakeAsyncRedis) -> None:
    await keys.finish(await begin_run(keys), None)
    assert await stored(redis) is None
    await begin_run(keys)


async def test_a_streamed_answer_is_not_kept(keys: IdempotencyKeys,
                                             redis: fakeredis.FakeAsyncRedis) -> None:
    with capture_logs() as logs:
        await keys.finish(await begin_run(keys), Answer(200, None, None, []))
    assert await stored(redis) is None
    assert [(e["event"], e["status"]) for e in logs] == [("idempotency.not_storable", 200)]
    with capture_logs() as logs:  # a failure is released without a word
        await keys.finish(await begin_run(keys), Answer(500, None, None, []))
    assert logs == []


async def test_a_late_finish_does_not_touch_a_lock_taken_over(
        redis: fakeredis.FakeAsyncRedis) -> None:
    keys = IdempotencyKeys(redis, ttl_seconds=3600, lock_seconds=0.05)
    late = await begin_run(keys)
    await asyncio.sleep(0.1)  # its lock expired
    second = await begin_run(keys)
    await keys.finish(late, Answer(200, b"late", None, []))
    await keys.finish(late, None)
    assert await redis.get(second.redis_key) == second.lock.encode()
    await keys.finish(second, Answer(200, b"second", None, []))
    assert await keys.begin(KEY, FP) == Answer(200, b"second", None, [])


@pytest.mark.parametrize(("body", "kept"), [
    (b'{"id":"we_1","secret":"whsec_x","note":"caf\xc3\xa9"}',
     f'{{"id":"we_1","secret":"{REDACTED}","note":"café"}}'),
    (b'{"id": "we_1"}', '{"id": "we_1"}'),  # untouched, byte for byte
    (b'[{"secret": "x"}]', '[{"secret": "x"}]'),
    (b'{"secret": 1}', '{"secret": 1}'),
    (b'"secret" but not JSON', '"secret" but not JSON'),
])
async def test_a_secret_is_never_kept(keys: IdempotencyKeys, body: bytes, kept: str) -> None:
    await keys.finish(await begin_run(keys), Answer(201, body, JSON, []))
    replay = await keys.begin(KEY, FP)
    assert isinstance(replay, Answer) and replay.body == kept.encode()


class RacingRedis(fakeredis.FakeAsyncRedis):
    """SET NX never wins and the key is gone by the GET (it expired in between)."""

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        return False

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        return None


async def test_a_key_that_keeps_vanishing_is_in_flight() -> None:
    with pytest.raises(KeyInFlight):
        await IdempotencyKeys(RacingRedis(), ttl_seconds=60).begin(KEY, FP)


class DownRedis(fakeredis.FakeAsyncRedis):
    """Every SET fails (the finishing script finds no lock to release)."""

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("down")


async def test_redis_down_is_unavailable_and_the_lock_is_chased_in_the_background() -> None:
    down = DownRedis()
    keys = IdempotencyKeys(down, ttl_seconds=60)
    with capture_logs() as logs, pytest.raises(IdempotencyUnavailable) as info:
        await keys.begin(KEY, FP)
    assert str(info.value) == "The Idempotency-Key store does not answer."
    assert [e["event"] for e in logs] == ["idempotency.redis_error"]
    [task] = keys._background
    await asyncio.sleep(0.05)
    assert not task.done()  # nothing to release yet: tries again a second later
    await keys.close()
    assert task.cancelled() and keys._background == set()
    await keys.close()  # nothing left: a no-op


async def test_close_cancels_every_background_release() -> None:
    keys = IdempotencyKeys(DownRedis(), ttl_seconds=60)
    for n in range(3):
        with pytest.raises(IdempotencyUnavailable):
            await keys.begin(f"{KEY}-{n}", FP)
    tasks = list(keys._background)
    assert len(tasks) == 3
    loop = asyncio.get_running_loop()
    started = loop.time()
    await keys.close()
    assert loop.time() - started < 0.5  # not the 20 s of retries
    assert all(t.cancelled() for t in tasks) and keys._background == set()


async def test_a_background_release_that_finds_the_lock_stops_at_once(
        redis: fakeredis.FakeAsyncRedis) -> None:
    keys = IdempotencyKeys(redis, ttl_seconds=60)
    run = await begin_run(keys)
    keys._later(keys._finish(run.redis_key, run.lock, None, attempts=20))
    [task] = keys._background
    await task
    assert await stored(redis) is None and keys._background == set()
