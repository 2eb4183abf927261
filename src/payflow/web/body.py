"""Reading a request body: within the body deadline, as one JSON object, or a 4xx problem."""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from payflow.web import problems
from payflow.web.server import read_body

BODY_SECONDS_KEY = web.AppKey("body_seconds", float)


async def read_json_object(request: web.Request) -> dict[str, object]:
    """The request body as a JSON object, or a 400 problem (413 comes from ``read``). orjson
    refuses what must not pass: lone surrogates, NaN/Infinity, numbers out of range, nesting
    deeper than 1,024."""
    raw = await read_raw(request)
    if not raw.strip():
        raise problems.invalid_json("The request body is empty; expected a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise problems.invalid_json(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise problems.invalid_body(
            f"The request body must be a JSON object, not {_json_type(data)}.")
    return data


async def read_raw(request: web.Request) -> bytes:
    """The body, which must arrive within the app's body deadline and decode (Content-Encoding)."""
    try:
        return await read_body(request, request.app.get(BODY_SECONDS_KEY, 30.0))
    except TimeoutError:
        raise problems.body_timeout() from None
    except (HttpProcessingError, RequestPayloadError, web.HTTPBadRequest) as exc:  # bad gzip
        raise problems.invalid_json(f"The request body could not be read: "
                                    f"{type(exc).__name__}.") from None


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
