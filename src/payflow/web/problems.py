"""RFC 9457 problem details (``application/problem+json``) and JSON responses.

Every error the API answers has the same shape::

    {"type": "https://payflow.dev/problems/<slug>", "title": "...", "status": 422,
     "detail": "...", "request_id": "req_...", "code": "out_of_range", "param": "amount"}

``code`` is always present (stable, machine-readable); ``param`` only on validation errors.
Handlers raise :class:`Problem`; the middleware in :mod:`payflow.web.app` renders it, and
turns aiohttp's own HTTP errors, :class:`~payflow.errors.ValidationError` and unexpected
exceptions into problems too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from payflow.errors import (
    Conflict,
    KeyInFlight,
    KeyReused,
    NotFound,
    PayFlowError,
    QueueUnavailable,
    ValidationError,
)
from payflow.idempotency import IdempotencyUnavailable

PROBLEM_BASE: Final = "https://payflow.dev/problems/"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
JSON_CONTENT_TYPE: Final = "application/json"

_MISSING: Final = object()
_MADE: Final = frozenset({"type", "status", "request_id"})  # of a body, not kept with a problem


class Problem(Exception):
    """An HTTP error answer. ``slug`` ends the ``type`` URI; ``code`` is the stable code."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        code: str,
        param: object = _MISSING,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.extra: dict[str, object] = {}  # more members of the problem object

    def body(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "request_id": request_id,
            "code": self.code,
        }
        if self.param is not _MISSING:
            body["param"] = self.param
        body.update(self.extra)
        return body

    @classmethod
    def restore(cls, status: int, slug: str, members: Mapping[str, Any],
                headers: Mapping[str, str]) -> Problem:
        """The problem whose :meth:`body` has ``members`` (those of a kept problem: its
        ``type``, ``status`` and ``request_id`` are made again), in the same order."""
        rest = {k: v for k, v in members.items() if k not in _MADE}
        problem = cls(status, slug, rest.pop("title"), rest.pop("detail"), code=rest.pop("code"),
                      param=rest.pop("param", _MISSING), headers=headers)
        problem.extra = rest  # current_status, ...
        return problem

    def response(self, request_id: str) -> web.Response:
        return web.Response(
            status=self.status,
            body=dumps(self.body(request_id)),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


MAX_REQUEST_ID_LENGTH: Final = 200  # a client's Request-Id longer than this is replaced


def dumps(data: object) -> bytes:
    """Compact UTF-8 JSON (orjson; the standard library's encoder for what orjson refuses,
    such as an integer past 64 bits)."""
    try:
        return orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(data, separators=(",", ":")).encode()  # ASCII: surrogates escaped


def json_response(
    data: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A compact ``application/json`` response."""
    return web.Response(
        status=status, body=dumps(data), content_type=JSON_CONTENT_TYPE, headers=headers
    )


# --- the problems the API answers -----------------------------------------------------------


def from_error(exc: PayFlowError) -> Problem | None:
    """The problem of a core service's error (None: not an API error)."""
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, NotFound):
        return resource_not_found(exc.kind, exc.resource_id)
    if isinstance(exc, Conflict):
        return conflict(exc.detail, code=exc.code, status=exc.status)
    if isinstance(exc, QueueUnavailable):
        return queue_unavailable(exc.detail)
    if isinstance(exc, KeyReused):
        return key_reused()
    if isinstance(exc, KeyInFlight):
        return key_in_flight()
    if isinstance(exc, IdempotencyUnavailable):
        return idempotency_unavailable()
    return None


def key_in_flight() -> Problem:
    return Problem(409, "idempotency-request-in-flight",
                   "A request is outstanding for this Idempotency-Key",
                   "A request with this Idempotency-Key is still being processed; retry "
                   "shortly to get its result.", code="idempotency_request_in_flight",
                   headers={"Retry-After": "1"})


def key_reused() -> Problem:
    return Problem(422, "idempotency-key-reused", "Idempotency-Key is already used",
                   "This Idempotency-Key was used with a different request (method, path or "
                   "body); use a new key for a new request.", code="idempotency_key_reused")


def key_required() -> Problem:
    return Problem(400, "idempotency-key-required", "Idempotency-Key required",
                   "This request changes state and must carry an Idempotency-Key header.",
                   code="idempotency_key_required")


def invalid_key(detail: str) -> Problem:
    return Problem(400, "invalid-idempotency-key", "Invalid Idempotency-Key", detail,
                   code="invalid_idempotency_key")


def idempotency_unavailable() -> Problem:
    return Problem(503, "idempotency-unavailable", "Idempotency store unavailable",
                   "The Idempotency-Key store does not answer; the request was not processed. "
                   "Retry shortly.", code="idempotency_unavailable", headers={"Retry-After": "1"})


def from_validation_error(exc: ValidationError) -> Problem:
    if exc.status == 400:
        return Problem(400, "invalid-request", "Invalid request", exc.detail,
                       code=exc.code, param=exc.param)
    return Problem(exc.status, "validation-error", "Validation failed", exc.detail,
                   code=exc.code, param=exc.param)


def invalid_json(detail: str) -> Problem:
    return Problem(400, "invalid-json", "Malformed JSON", detail, code="invalid_json")


def invalid_body(detail: str) -> Problem:
    return Problem(400, "invalid-body", "Invalid request body", detail, code="invalid_body")


def payload_too_large(limit: int) -> Problem:
    return Problem(413, "payload-too-large", "Request body too large",
                   f"The request body exceeds the limit of {limit} bytes.",
                   code="payload_too_large")


def not_found(path: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"No route matches {_clip(path)}.",
                   code="not_found")


def method_not_allowed(method: str, allowed: str) -> Problem:
    return Problem(405, "method-not-allowed", "Method not allowed",
                   f"{_clip(method)} is not allowed here (allowed: {allowed}).",
                   code="method_not_allowed", headers={"Allow": allowed})


def shutting_down() -> Problem:
    return Problem(503, "shutting-down", "Service shutting down",
                   "The server is shutting down; retry shortly.", code="shutting_down",
                   headers={"Retry-After": "1"})


def queue_unavailable(
    detail: str = "The payment could not be queued and was not accepted; retry shortly.",
) -> Problem:
    return Problem(503, "queue-unavailable", "Queue unavailable", detail,
                   code="queue_unavailable", headers={"Retry-After": "1"})


def redis_unavailable() -> Problem:
    return Problem(503, "redis-unavailable", "Not ready", "Redis does not answer.",
                   code="redis_unavailable", headers={"Retry-After": "1"})


def internal_error() -> Problem:
    return Problem(500, "internal-error", "Internal server error",
                   "An unexpected error occurred; it has been logged with this request id.",
                   code="internal_error")


def from_http_exception(exc: web.HTTPException, request: web.BaseRequest) -> Problem:
    """Re-shape an aiohttp HTTP error (router 404/405, body-size 413, ...) as a problem."""
    if isinstance(exc, web.HTTPNotFound):
        return not_found(request.path)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return method_not_allowed(request.method, exc.headers.get("Allow", ""))
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return payload_too_large(request.client_max_size)
    status = exc.status
    reason = exc.reason or "Error"
    slug = reason.lower().replace(" ", "-").replace("'", "")
    headers = {k: v for k, v in exc.headers.items()
               if k.lower() not in ("content-type", "content-length")}
    return Problem(status, slug, reason, exc.text or reason,
                   code=slug.replace("-", "_"), headers=headers)


def _clip(text: str, limit: int = 200) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def resource_not_found(kind: str, resource_id: str) -> Problem:
    """404 for a missing resource: ``kind`` is e.g. ``event`` or ``webhook_endpoint``."""
    slug = kind.replace("_", "-") + "-not-found"
    title = kind.replace("_", " ").capitalize() + " not found"
    return Problem(404, slug, title, f"No {kind.replace('_', ' ')} has the id "
                   f"{_clip(resource_id)}.", code=f"{kind}_not_found")


def conflict(detail: str, *, code: str, status: str | None = None) -> Problem:
    """409; ``status`` (the resource's current status) is added to the body when given."""
    problem = Problem(409, code.replace("_", "-"), "Conflict", detail, code=code)
    if status is not None:
        problem.extra["current_status"] = status
    return problem


def body_timeout() -> Problem:
    return Problem(408, "request-timeout", "Request timeout",
                   "The request body did not arrive in time.", code="body_timeout",
                   headers={"Connection": "close"})
