"""Every bad input is a 4xx and changes nothing: generated, not listed.

Hypothesis builds request bodies from the whole of JSON's value space as bytes on the wire:
strings with lone surrogates (``\\ud800`` escapes), numbers with thousands of digits, floats,
NaN-like tokens, deep nesting, wrong types in every field; query parameters from arbitrary
text; endpoint URLs from arbitrary text. Each request must answer below 500, and one answered
4xx must leave the store and the queues as they were.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ServeApp
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext

SURROGATE = st.integers(0xD800, 0xDFFF).map(lambda c: f"\\u{c:04x}")


def _text() -> st.SearchStrategy[str]:
    """JSON string contents, escapes included: lone surrogates, controls, anything."""
    return st.lists(st.one_of(SURROGATE, st.characters(exclude_characters='"\\'),
                              st.sampled_from(['\\"', "\\\\", "\\n", "\\u0000"])),
                    max_size=12).map("".join)


def _number() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers().map(str),
        st.integers(10**30, 10**60).map(str),
        st.integers(1, 5000).map(lambda n: "9" * n),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "0.0", "1E400"]),
    )


def _json(depth: int = 3) -> st.SearchStrategy[str]:
    scalar = st.one_of(_number(), _text().map(lambda t: f'"{t}"'),
                       st.sampled_from(["true", "false", "null"]))
    if depth == 0:
        return scalar
    inner = _json(depth - 1)
    return st.one_of(
        scalar,
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.dictionaries(_text(), inner, max_size=3).map(
            lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}"),
    )


FIELDS = ["amount", "currency", "method", "upi", "card", "netbanking", "wallet", "metadata",
          "description", "url", "enabled_events", "disabled"]
VALID = {"amount": "1000", "currency": '"INR"', "method": '"upi"',
         "upi": '{"vpa":"success@okbank"}'}


@st.composite
def payment_body(draw: st.DrawFn) -> bytes:
    """A payment body: either valid but for metadata of arbitrary strings (surrogates,
    controls: what validation lets through must still be storable and encodable), or with some
    fields replaced by anything."""
    fields = dict(VALID)
    if draw(st.booleans()):
        keys = st.one_of(st.from_regex(r"[a-z]{1,8}", fullmatch=True), _text())
        entries = draw(st.dictionaries(keys, _text(), min_size=1, max_size=3))
        fields["metadata"] = "{" + ",".join(f'"{k}":"{v}"' for k, v in entries.items()) + "}"
    else:
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
            fields[name] = draw(_json())
    body = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    if draw(st.integers(0, 19)) == 0:
        body = "[" * draw(st.integers(1, 3000)) + body
    return body.encode("utf-8", "surrogatepass")


class Env:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.raws: list[bytes] = []

    async def push(self, raw: bytes) -> None:
        self.raws.append(raw)

    async def state(self) -> tuple[int, int, int]:
        return (len(await self.store.list_payments(limit=10**6)),
                len(await self.store.list_endpoints()), len(self.raws))


@pytest.fixture
async def env(serve_app: ServeApp) -> tuple[Env, TestClient[Any, Any]]:
    e = Env()

    async def ping() -> bool:
        return True

    ctx = WebContext(store=e.store, enqueue_payment=e.push, enqueue_webhook=e.push, ping=ping)
    return e, await serve_app(create_app(ctx))


FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FAST
@given(body=payment_body())
async def test_any_payment_body_is_a_4xx_that_creates_nothing_or_a_202(
        env: tuple[Env, TestClient[Any, Any]], body: bytes) -> None:
    e, client = env
    before = await e.state()
    resp = await client.post("/v1/payments", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status < 500, (resp.status, await resp.text(), body[:200])
    if resp.status >= 400:
        assert resp.content_type == "application/problem+json"
        assert await e.state() == before
    else:
        assert resp.status == 202
        payment = await resp.json()
        json.dumps(payment).encode()  # what the API answers is always encodable


@FAST
@given(url=_json(0), events=_json(1), description=_json(0))
async def test_any_endpoint_body_is_a_4xx_that_creates_nothing_or_a_201(
        env: tuple[Env, TestClient[Any, Any]], url: str, events: str,
        description: str) -> None:
    e, client = env
    before = await e.state()
    body = f'{{"url":{url},"enabled_events":{events},"description":{description}}}'
    resp = await client.post("/v1/webhook_endpoints",
                             data=body.encode("utf-8", "surrogatepass"),
                             headers={"Content-Type": "application/json"})
    assert resp.status < 500, (resp.status, await resp.text(), body[:200])
    if resp.status >= 400:
        assert await e.state() == before


@FAST
@given(name=st.sampled_from(["limit", "starting_after", "status", "created[gte]",
                             "created[lte]", "type"]),
       value=st.one_of(st.text(max_size=30), st.integers(1, 6000).map(lambda n: "9" * n)))
async def test_any_query_parameter_is_a_4xx_or_a_page(
        env: tuple[Env, TestClient[Any, Any]], name: str, value: str) -> None:
    _, client = env
    for path in ("/v1/payments", "/v1/events"):
        resp = await client.get(path, params={name: value})
        assert resp.status < 500, (path, name, value[:50], await resp.text())
