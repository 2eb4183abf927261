"""The HTTP API (aiohttp): ``create_app(WebContext(...))``."""

from payflow.web.app import WebContext, create_app

__all__ = ["WebContext", "create_app"]
