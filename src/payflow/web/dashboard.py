"""``/dashboard``: the operator's page, served from the files shipped in ``web/dashboard/``.

The page, its script and its stylesheet hold no data, so they are served without an API key
(``auth_middleware``'s ``open_trees``); everything the page shows comes from the API routes,
with the key the person types in, which the page keeps in the browser's ``sessionStorage``
only. A strict Content-Security-Policy allows nothing but these files and the API of the same
origin.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

from aiohttp import web

from payflow.web import problems

PATH: Final = "/dashboard"
INDEX: Final = "index.html"
# file -> content type: what the page is made of
FILES: Final = {INDEX: "text/html", "app.js": "text/javascript", "style.css": "text/css"}
HEADERS: Final = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, _index)
    app.router.add_get(PATH + "/{file}", _file)


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("payflow.web") / "dashboard" / name).read_bytes()


def _serve(name: str) -> web.Response:
    return web.Response(body=_read(name), headers=HEADERS,
                        content_type=FILES[name], charset="utf-8")


async def _index(request: web.Request) -> web.Response:
    return _serve(INDEX)


async def _file(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name == INDEX or name not in FILES:
        raise problems.not_found(request.path)
    return _serve(name)
