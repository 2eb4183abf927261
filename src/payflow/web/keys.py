"""Typed keys for values the middleware puts on a request."""

from __future__ import annotations

from typing import Final

from aiohttp import web

# The name of the API key that authenticated the request ("anonymous" when the API is open).
API_KEY_NAME: Final = web.RequestKey("api_key_name", str)
