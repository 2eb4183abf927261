"""``/docs``: the API reference, Swagger UI (vendored in ``web/docs/``, see its
``VENDORED.md``) over the daemon's own ``/openapi.json``; no CDN.

Like ``/openapi.json`` and the dashboard's page it holds no data (:mod:`payflow.web.pages`);
"Authorize" in the page takes a key for the requests a reader tries from it.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from payflow.web.pages import INDEX, add_page

PATH: Final = "/docs"
# file -> content type: what the page is made of
FILES: Final = {INDEX: "text/html", "init.js": "text/javascript",
                "swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


def add_routes(app: web.Application) -> None:
    add_page(app, PATH, "docs", FILES, inline_styles=True)  # Swagger UI sets style attributes
