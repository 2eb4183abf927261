"""Pages served from files shipped in the package (the dashboard, the API reference): they
hold no data, so they are served without an API key (``auth_middleware``'s ``open_trees``),
with a strict Content-Security-Policy and nothing from a CDN."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources

from aiohttp import web

from payflow.web import problems

INDEX = "index.html"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'{styles}; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def add_page(app: web.Application, path: str, folder: str, files: Mapping[str, str], *,
             inline_styles: bool = False) -> None:
    """Serve ``web/<folder>/index.html`` at ``path`` and the other ``files`` (name -> content
    type) at ``path/<name>``; any other name is a 404. ``inline_styles``: the page's script
    sets style attributes (allowed by the CSP, nothing else is)."""
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": _CSP.format(
            styles=" 'unsafe-inline'" if inline_styles else ""),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    def serve(name: str) -> web.Response:
        return web.Response(body=_read(folder, name), headers=headers,
                            content_type=files[name], charset="utf-8")

    async def index(request: web.Request) -> web.Response:
        return serve(INDEX)

    async def file(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name == INDEX or name not in files:
            raise problems.not_found(request.path)
        return serve(name)

    app.router.add_get(path, index)
    app.router.add_get(path + "/{file}", file)


@functools.cache
def _read(folder: str, name: str) -> bytes:
    return (resources.files("payflow.web") / folder / name).read_bytes()
