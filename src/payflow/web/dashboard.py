"""``/dashboard``: the operator's page, served from the files shipped in ``web/dashboard/``.

Everything the page shows comes from the API routes, with the key the person types in, which
the page keeps in the browser's ``sessionStorage`` only (the page itself holds no data:
:mod:`payflow.web.pages`).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from payflow.web.pages import INDEX, add_page

PATH: Final = "/dashboard"
# file -> content type: what the page is made of
FILES: Final = {INDEX: "text/html", "app.js": "text/javascript", "style.css": "text/css"}


def add_routes(app: web.Application) -> None:
    add_page(app, PATH, "dashboard", FILES)
