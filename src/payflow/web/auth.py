"""API keys: ``Authorization: Bearer <secret>`` on every route but the health checks.

The presented secret is compared with every configured key in constant time (no early exit), so
the answer time says nothing about which key or how much of it matched. With no key configured
the API is open and every request runs as ``anonymous``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from payflow.config import ApiKeyConfig
from payflow.web.keys import API_KEY_NAME
from payflow.web.problems import Problem

ANONYMOUS: Final = "anonymous"
ALWAYS_OPEN: Final = frozenset({"/healthz", "/readyz", "/openapi.json"})
_CHALLENGE: Final = 'Bearer realm="payflow"'


def _unauthorized(detail: str, *, code: str, error: str | None) -> Problem:
    challenge = _CHALLENGE + (f', error="{error}"' if error else "")
    return Problem(401, code.replace("_", "-"), "Unauthorized", detail, code=code,
                   headers={"WWW-Authenticate": challenge})


def find_key(keys: Sequence[ApiKeyConfig], presented: str) -> str | None:
    """The name of the key whose secret is ``presented``, checking every key."""
    found = None
    given = presented.encode()
    for key in keys:
        if hmac.compare_digest(given, key.secret.encode()):
            found = key.name
    return found


def auth_middleware(keys: Sequence[ApiKeyConfig], *, metrics_public: bool,
                    open_trees: Sequence[str] = ()) -> Middleware:
    """``open_trees``: paths served without a key with everything under them (pages that hold
    no data, such as the dashboard's files)."""
    open_paths = ALWAYS_OPEN | ({"/metrics"} if metrics_public else frozenset())
    trees = tuple(open_trees)
    under = tuple(tree + "/" for tree in trees)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not keys or path in open_paths or path in trees or path.startswith(under):
            if API_KEY_NAME not in request:
                request[API_KEY_NAME] = ANONYMOUS
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise _unauthorized("This API needs an API key: send 'Authorization: Bearer "
                                "<secret>'.", code="missing_api_key", error=None)
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("The Authorization header must be 'Bearer <secret>'.",
                                code="invalid_api_key", error="invalid_request")
        name = find_key(keys, token.strip())
        if name is None:
            raise _unauthorized("The API key is not valid.", code="invalid_api_key",
                                error="invalid_token")
        request[API_KEY_NAME] = name
        return await handler(request)

    return authenticate
