"""The Idempotency-Key middleware (payflow.web.idempotency over payflow.idempotency) on a bare app
of test routes: what is stored (and in which form), what is replayed, the exact problems, the
lock and TTL in ms, the finishing step's retries. Written against the mutants
tests/test_idempotency.py let through (scripts/mutation idempotency)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
import redis.exceptions
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from structlog.testing import capture_logs

from conftest import ServeApp
from payflow.errors import PayFlowError
from payflow.idempotency import REDACTED, IdempotencyKeys
from payflow.web import problems
from payflow.web.idempotency import Idempotency, middleware, parse_key

Make = Callable[..., Awaitable[tuple[TestClient[Any, Any], Idempotency, dict[str, int]]]]


def redis_key(key: str, scope: str = "anonymous") -> str:
    return f"payflow:idempotency:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"


async def _problem_409(request: web.Request) -> web.StreamResponse:
    problem = problems.Problem(409, "busy-thing", "Busy thing", "It is busy.", code="busy_thing",
                               param="amount", headers={"X-Why": "busy"})
    problem.extra = {"current_status": "busy", "z": None, "a": [1]}  # kept in this order
    raise problem


async def _unmapped(request: web.Request) -> web.StreamResponse:
    raise PayFlowError("not an API error")


async def _answer_400(request: web.Request) -> web.StreamResponse:
    return web.Response(status=400, text="no")


async def _answer_404(request: web.Request) -> web.StreamResponse:
    return web.Response(status=404, text="nothing here")


async def _answer_500(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="oops")


async def _answer_204(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def _headers(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True},
                             headers={"X-Custom": "1", "Set-Cookie": "a=b", "Server": "x"})


async def _secret(request: web.Request) -> web.StreamResponse:
    return web.json_response({"id": "we_1", "secret": "whsec_x", "note": "café"},
                             dumps=lambda d: json.dumps(d, ensure_ascii=False))


async def _list(request: web.Request) -> web.StreamResponse:
    return web.json_response([{"secret": "kept"}])


async def _payload(request: web.Request) -> web.StreamResponse:
    return web.Response(body=io.BytesIO(b"streamed"), content_type="text/plain")


async def _streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"chunk")
    await response.write_eof()
    return response


@web.middleware
async def render_problems(request: web.Request, handler: Any) -> web.StreamResponse:
    """What the app's first middleware does for these tests: a Request-Id, problems rendered
    (those of the core's errors too)."""
    request_id = f"req_{id(request)}"
    try:
        response: web.StreamResponse = await handler(request)
    except problems.Problem as exc:
        response = exc.response(request_id)
    except PayFlowError as exc:
        if (problem := problems.from_error(exc)) is None:
            raise  # not an API error: aiohttp's 500
        response = problem.response(request_id)
    if not response.prepared:
        response.headers["Request-Id"] = request_id
    return response


ROUTES = {"problem": _problem_409, "unmapped": _unmapped, "400": _answer_400, "404": _answer_404,
          "500": _answer_500, "204": _answer_204, "headers": _headers, "secret": _secret,
          "list": _list, "payload": _payload, "streamed": _streamed}


@pytest.fixture
def make(serve_app: ServeApp) -> Make:
    """A bare app: Request-Id and problem rendering, the idempotency middleware, test routes
    that count their calls (no authentication: requests are anonymous)."""

    async def build(redis: Redis | None = None, **kw: Any
                    ) -> tuple[TestClient[Any, Any], Idempotency, dict[str, int]]:
        idem = Idempotency(redis or fakeredis.FakeAsyncRedis(),
                           **{"ttl_seconds": 3600.0, "required": False, **kw})
        calls: dict[str, int] = dict.fromkeys(ROUTES, 0)
        app = web.Application(middlewares=[render_problems, middleware(idem)])
        for name, route in ROUTES.items():
            async def counted(request: web.Request, name: str = name,
                              route: Any = route) -> web.StreamResponse:
                calls[name] += 1
                response: web.StreamResponse = await route(request)
                return response

            app.router.add_post(f"/v1/t/{name}", counted)
        return await serve_app(app), idem, calls

    return build


async def twice(client: TestClient[Any, Any], name: str, key: str = "k"
                ) -> list[tuple[int, bytes, Any]]:
    out = []
    for _ in range(2):
        resp = await client.post(f"/v1/t/{name}?q=1", data=b'{"a":1}',
                                 headers={"Idempotency-Key": key})
        out.append((resp.status, await resp.read(), resp.headers))
    return out


# --- the problems ----------------------------------------------------------------------------


def test_the_problems_of_the_middleware() -> None:
    def parts(p: problems.Problem) -> tuple[Any, ...]:
        return p.status, p.slug, p.title, p.detail, p.code, p.headers

    assert parts(problems.key_required()) == (
        400, "idempotency-key-required", "Idempotency-Key required",
        "This request changes state and must carry an Idempotency-Key header.",
        "idempotency_key_required", {})
    assert parts(problems.invalid_key("why")) == (400, "invalid-idempotency-key",
                                         "Invalid Idempotency-Key", "why",
                                         "invalid_idempotency_key", {})
    assert parts(problems.idempotency_unavailable()) == (
        503, "idempotency-unavailable", "Idempotency store unavailable",
        "The Idempotency-Key store does not answer; the request was not processed. "
        "Retry shortly.", "idempotency_unavailable", {"Retry-After": "1"})


@pytest.mark.parametrize("problem", [
    problems.key_in_flight(), problems.invalid_key("why"),
    problems.Problem(422, "v", "V", "d", code="c", param=None),
    problems.conflict("Too late.", code="payment_not_cancelable", status="succeeded")])
def test_a_restored_problem_has_the_same_body(problem: problems.Problem) -> None:
    kept = {k: v for k, v in problem.body("req_1").items() if k not in ("type", "request_id")}
    again = problems.Problem.restore(problem.status, problem.slug, kept, problem.headers)
    assert again.headers == problem.headers
    assert list(again.body("req_2").items()) == list({**problem.body("req_2")}.items())


def test_parse_key_edges() -> None:
    assert parse_key(["a"]) == "a"  # one character is enough
    assert parse_key(['"a"']) == "a"
    assert parse_key(['"a\\"b\\\\c"']) == 'a"b\\c'  # sf-string escapes
    assert parse_key(["x" * 255]) == "x" * 255
    with pytest.raises(problems.Problem) as info:
        parse_key(["a", "b"])
    assert info.value.detail == "Send a single Idempotency-Key header."
    for bad in ["", '""', "x" * 256, "é"]:
        with pytest.raises(problems.Problem) as info:
            parse_key([bad])
        assert info.value.detail == ("The Idempotency-Key must be 1 to 255 printable ASCII "
                                     'characters, bare or as a quoted string ("...").')


def test_ttl_and_lock_are_kept_in_milliseconds() -> None:
    r = fakeredis.FakeAsyncRedis()
    default = Idempotency(r, ttl_seconds=3600, required=False).keys
    assert (default._ttl_ms, default._lock_ms) == (3_600_000, 60_000)
    tiny = Idempotency(r, ttl_seconds=0.001, required=False, lock_seconds=0.001).keys
    assert (tiny._ttl_ms, tiny._lock_ms) == (1, 1)
    floor = Idempotency(r, ttl_seconds=0, required=False, lock_seconds=0).keys
    assert (floor._ttl_ms, floor._lock_ms) == (1, 1)


# --- what is stored ----------------------------------------------------------------------------


async def test_an_anonymous_key_is_scoped_anonymous_with_the_request_fingerprint(
        make: Make) -> None:
    redis = fakeredis.FakeAsyncRedis()
    client, _, _ = await make(redis)
    await twice(client, "headers", key="k-anon")
    stored = await redis.get(redis_key("k-anon"))
    assert stored is not None
    record = json.loads(stored)
    assert record["fp"] == hashlib.sha256(b'POST\n/v1/t/headers?q=1\n{"a":1}').hexdigest()
    assert b", " not in stored and b'": ' not in stored  # compact JSON


async def test_only_the_headers_of_the_answer_itself_are_stored(make: Make) -> None:
    redis = fakeredis.FakeAsyncRedis()
    client, _, calls = await make(redis)
    (_, body1, _), (_, body2, headers2) = await twice(client, "headers")
    assert calls["headers"] == 1 and body1 == body2
    record = json.loads(await redis.get(redis_key("k")) or b"{}")
    assert record["headers"] == [["X-Custom", "1"]]
    assert record["content_type"] == "application/json; charset=utf-8"
    assert headers2["X-Custom"] == "1" and headers2["Idempotent-Replayed"] == "true"


async def test_an_empty_body_is_stored_empty(make: Make) -> None:
    redis = fakeredis.FakeAsyncRedis()
    client, _, calls = await make(redis)
    [(s1, _, _), (s2, _, h2)] = await twice(client, "204")
    assert (s1, s2, calls["204"]) == (204, 204, 1) and h2["Idempotent-Replayed"] == "true"
    assert json.loads(await redis.get(redis_key("k")) or b"{}")["body"] == ""


@pytest.mark.parametrize(("name", "runs"), [("400", 2), ("500", 2), ("404", 1)])
async def test_which_returned_answers_are_kept(make: Make, name: str, runs: int) -> None:
    """A returned 4xx other than 404/409 and a 5xx are not kept (a retry runs again); a 404
    is."""
    client, _, calls = await make()
    [(s1, b1, _), (s2, b2, h2)] = await twice(client, name)
    assert s1 == s2 == int(name) and b1 == b2
    assert calls[name] == runs
    assert ("Idempotent-Replayed" in h2) is (runs == 1)


async def test_a_raised_409_problem_is_replayed_whole(make: Make) -> None:
    client, _, calls = await make()
    [(_, raw1, h1), (s2, raw2, h2)] = await twice(client, "problem")
    first, again = json.loads(raw1), json.loads(raw2)
    assert calls["problem"] == 1 and s2 == 409
    assert h2["Idempotent-Replayed"] == "true" and h2["X-Why"] == h1["X-Why"] == "busy"
    assert again["request_id"] != first["request_id"] == h1["Request-Id"]
    assert again["request_id"] == h2["Request-Id"]
    assert raw2 == raw1.replace(h1["Request-Id"].encode(), h2["Request-Id"].encode())
    assert first == {"type": "https://payflow.dev/problems/busy-thing", "title": "Busy thing",
                     "status": 409, "detail": "It is busy.", "request_id": h1["Request-Id"],
                     "code": "busy_thing", "param": "amount", "current_status": "busy",
                     "z": None, "a": [1]}


async def test_an_error_that_is_no_problem_releases_the_key(make: Make) -> None:
    client, _, calls = await make()
    [(s1, _, _), (s2, _, h2)] = await twice(client, "unmapped")
    assert (s1, s2, calls["unmapped"]) == (500, 500, 2)  # the retry ran again: not a 409
    assert "Idempotent-Replayed" not in h2


@pytest.mark.parametrize("name", ["payload", "streamed"])
async def test_a_body_that_is_not_bytes_is_not_kept(make: Make, name: str) -> None:
    client, _, calls = await make()
    [(s1, b1, _), (s2, b2, h2)] = await twice(client, name)
    assert s1 == s2 == 200 and b1 == b2 and b1 in (b"streamed", b"chunk")
    assert calls[name] == 2 and "Idempotent-Replayed" not in h2


async def test_a_secret_is_redacted_byte_exact_and_other_bodies_kept(make: Make) -> None:
    client, _, _ = await make()
    [(_, raw1, _), (_, raw2, _)] = await twice(client, "secret")
    assert json.loads(raw1)["secret"] == "whsec_x"
    assert raw2 == json.dumps({"id": "we_1", "secret": REDACTED, "note": "café"},
                              separators=(",", ":"), ensure_ascii=False).encode()
    [(_, list1, _), (_, list2, _)] = await twice(client, "list", key="k-list")
    assert list1 == list2 == b'[{"secret": "kept"}]'


# --- Redis trouble and the finishing step --------------------------------------------------


class Script:
    """Stands in for the finishing Lua script: answers ``results`` in turn (an exception is
    raised); counts its calls."""

    def __init__(self, *results: int | BaseException) -> None:
        self.results = list(results)
        self.calls = 0

    async def __call__(self, keys: list[str], args: list[Any]) -> int:
        self.calls += 1
        result = self.results[min(self.calls, len(self.results)) - 1]
        if isinstance(result, BaseException):
            raise result
        return result


def finishing(script: Script) -> IdempotencyKeys:
    keys = IdempotencyKeys(fakeredis.FakeAsyncRedis(), ttl_seconds=60)
    keys._finish_script = script  # type: ignore[assignment]
    return keys


async def test_finish_once_makes_one_attempt_even_when_the_lock_is_gone() -> None:
    script = Script(0)
    started = time.monotonic()
    await finishing(script)._finish("key", "lock", None)
    assert script.calls == 1 and time.monotonic() - started < 0.5


async def test_finish_with_attempts_stops_at_the_first_success() -> None:
    script = Script(1)
    await finishing(script)._finish("key", "lock", None, attempts=5)
    assert script.calls == 1


async def test_finish_retries_a_second_apart_then_logs_once() -> None:
    script = Script(redis.exceptions.ConnectionError("down"))
    started = time.monotonic()
    with capture_logs() as logs:
        await finishing(script)._finish("key", "lock", {"x": 1}, attempts=2)
    assert script.calls == 2
    assert 0.9 < time.monotonic() - started < 1.6
    assert [e["event"] for e in logs] == ["idempotency.finish_failed"]
    assert logs[0]["stored"] is True


class DownRedis:
    """SET fails; the finishing script (registered on it) succeeds at once."""

    def __init__(self) -> None:
        self.script = Script(1)

    def register_script(self, text: str) -> Script:
        return self.script

    async def set(self, *args: Any, **kwargs: Any) -> bool:
        raise redis.exceptions.ConnectionError("down")


async def test_a_redis_failure_releases_the_key_in_a_tracked_background_task(
        make: Make) -> None:
    down = DownRedis()
    client, idem, calls = await make(down)
    resp = await client.post("/v1/t/headers", data=b"{}", headers={"Idempotency-Key": "k"})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert calls["headers"] == 0
    tasks = list(idem.keys._background)
    assert len(tasks) <= 1 and all(isinstance(t, asyncio.Future) for t in tasks)
    if tasks:
        await asyncio.wait(tasks, timeout=5)
        await asyncio.sleep(0)
    assert idem.keys._background == set()
    assert down.script.calls == 1


class RacingRedis(fakeredis.FakeAsyncRedis):
    """Counts SET and GET; with ``vanishing``, SET NX never wins and the key is gone again by
    the GET (it expired in between)."""

    def __init__(self, *, vanishing: bool = False) -> None:
        super().__init__()
        self.vanishing = vanishing
        self.sets = self.gets = 0

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        self.sets += 1
        return False if self.vanishing else await super().set(*args, **kwargs)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        self.gets += 1
        return None if self.vanishing else await super().get(*args, **kwargs)


async def test_a_won_lock_runs_without_reading_the_key(make: Make) -> None:
    racing = RacingRedis()
    client, _, calls = await make(racing)
    resp = await client.post("/v1/t/headers", data=b"{}", headers={"Idempotency-Key": "k"})
    assert resp.status == 200 and calls["headers"] == 1
    assert (racing.sets, racing.gets) == (1, 0)


async def test_a_key_expiring_between_set_and_get_is_tried_twice_then_409(make: Make) -> None:
    racing = RacingRedis(vanishing=True)
    client, _, calls = await make(racing)
    resp = await client.post("/v1/t/headers", data=b"{}", headers={"Idempotency-Key": "k"})
    assert resp.status == 409 and calls["headers"] == 0
    assert (racing.sets, racing.gets) == (2, 2)


async def test_a_lock_left_by_a_failed_set_is_chased_20_times(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from payflow import idempotency

    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(idempotency, "asyncio",
                        SimpleNamespace(sleep=no_wait, ensure_future=asyncio.ensure_future))
    down = DownRedis()
    down.script = Script(0)  # the SET NX never lands: nothing to release
    idem = Idempotency(down, ttl_seconds=60, required=False)  # type: ignore[arg-type]
    app = web.Application(middlewares=[render_problems, middleware(idem)])
    app.router.add_post("/v1/t/x", _headers)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/t/x", data=b"{}", headers={"Idempotency-Key": "k"})
        assert resp.status == 503
        if tasks := list(idem.keys._background):
            await asyncio.wait(tasks, timeout=5)
    assert down.script.calls == 20 and slept == [1.0] * 20
