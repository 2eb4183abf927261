"""``payflow listen``: a local webhook receiver (like ``stripe listen``) that verifies each
delivery with :func:`payflow.webhooks.verify` and prints one line per event.

With ``--forward-to URL`` it also registers itself with a running daemon over the API: it
creates a webhook endpoint pointing at its own address (or reuses one left there, with a new
secret), prints the signing secret it verifies with, forwards each verified delivery (the same
body and ``webhook-*`` headers) to ``URL`` and prints the answer's status, and deletes the
endpoint when it stops. A delivery whose forward did not get a 2xx is answered 502, so the
daemon retries it on its schedule; only an id forwarded with a 2xx counts as seen.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from payflow.config import CLIENT_API_KEY_ENV
from payflow.webhooks.signing import WebhookVerificationError, _verify_keys, verify

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

SECRET_ENV = "PAYFLOW_LISTEN_SECRET"
API_KEY_ENV = CLIENT_API_KEY_ENV
DESCRIPTION = "payflow listen"  # the description of the endpoints it creates
# Headers passed on to --forward-to, beside the body: the signature's and the body's type.
FORWARDED_PREFIXES = ("webhook-", "svix-")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``listen`` to the ``payflow`` command's subparsers."""
    listen = sub.add_parser(
        "listen", help="receive webhooks locally, verify their signatures and print them",
        description="Serve an HTTP endpoint that verifies each POSTed webhook (Standard "
                    "Webhooks signature and timestamp) and prints one line per event: "
                    "`verified`, `duplicate` (a webhook-id seen before: answered 200) or "
                    "`REJECTED` (answered 400). With --forward-to it registers itself with a "
                    "running daemon as a webhook endpoint and passes each verified event on "
                    "to a local URL.")
    listen.add_argument("--port", metavar="P", type=int,
                        help="listen port (required without --forward-to; with it, default: "
                             "any free port)")
    listen.add_argument("--host", metavar="H", default="127.0.0.1",
                        help="listen address (default 127.0.0.1)")
    listen.add_argument("--path", metavar="PATH", default="/", help="URL path (default /)")
    listen.add_argument("--secret", metavar="S", action="append",
                        help="signing secret, whsec_…; repeat during a rotation (default: "
                             f"${SECRET_ENV}, several separated by spaces)")
    listen.add_argument("--print-body", action="store_true",
                        help="print each verified event's JSON body too")
    forward = listen.add_argument_group(
        "forwarding", "create an endpoint on a running daemon that points here, forward what "
                      "it delivers, delete the endpoint on exit")
    forward.add_argument("--forward-to", metavar="URL",
                         help="forward each verified event (body and webhook-* headers) to "
                              "this URL, e.g. http://127.0.0.1:8000/webhooks")
    forward.add_argument("--api", metavar="URL", default="http://127.0.0.1:8080",
                         help="the daemon's HTTP API (default: http://127.0.0.1:8080)")
    forward.add_argument("--api-key", metavar="KEY", default=os.environ.get(API_KEY_ENV),
                         help=f"API key secret (default: ${API_KEY_ENV})")
    forward.add_argument("--events", metavar="TYPES", default="*",
                         help="event types to subscribe to, comma-separated (default: *)")
    listen.set_defaults(listen_parser=listen)


@dataclass(frozen=True, kw_only=True)
class Forwarding:
    """--forward-to: where to forward, and the daemon's API to register with."""

    target: str
    api: str
    api_key: str | None
    events: tuple[str, ...]


def _forwarding(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Forwarding | None:
    if args.forward_to is None:
        return None
    if args.secret:
        parser.error("--secret goes without --forward-to (the endpoint's secret is used)")
    for flag, url in (("--forward-to", args.forward_to), ("--api", args.api)):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            parser.error(f"{flag} must be an http:// or https:// URL, got {url!r}")
    events = tuple(e.strip() for e in args.events.split(",") if e.strip())
    if not events:
        parser.error("--events needs at least one event type (or *)")
    return Forwarding(target=args.forward_to, api=args.api.rstrip("/"), api_key=args.api_key,
                      events=events)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.listen_parser
    forwarding = _forwarding(args, parser)
    secrets: list[str] = args.secret or os.environ.get(SECRET_ENV, "").split()
    if forwarding is not None:
        secrets = []  # the endpoint's, from the daemon
    elif not secrets:
        parser.error(f"give --secret (or set {SECRET_ENV}), or --forward-to")
    if args.port is None and forwarding is None:
        parser.error("give --port (or --forward-to, which picks a free port by default)")
    for secret in secrets:
        try:
            _verify_keys(secret)
        except ValueError as exc:
            parser.error(f"--secret: {exc}")
    if not args.path.startswith("/"):
        parser.error(f"--path must start with /, got {args.path!r}")
    for stream in (sys.stdout, sys.stderr):  # never fail to print an event
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    port = 0 if args.port is None else args.port
    try:
        return asyncio.run(_serve(args.host, port, args.path, secrets, args.print_body,
                                  forwarding))
    except OSError as exc:
        print(f"payflow listen: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1


async def _serve(host: str, port: int, path: str, secrets: list[str], print_body: bool,
                 forwarding: Forwarding | None) -> int:
    import aiohttp
    from aiohttp import web

    seen: set[str] = set()
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            if not secrets:  # not registered yet: nothing can be signed for it
                raise WebhookVerificationError("no signing secret yet")
            event = verify(body, request.headers, secrets)
        except WebhookVerificationError as exc:
            sent_id = request.headers.get("webhook-id") or request.headers.get("svix-id")
            _emit(f"REJECTED  {_field(sent_id)}  {exc}")
            return web.json_response({"error": str(exc)}, status=400)
        msg_id = request.headers.get("webhook-id") or request.headers.get("svix-id") or ""
        if msg_id in seen:
            _emit(f"duplicate  {_field(msg_id)}")
            return web.json_response({"received": True})
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        _emit(f"verified  {_field(msg_id)}  {_field(event.get('type'))}  "
              f"{_field(data.get('id'))}  status={_field(data.get('status'))}")
        if print_body:
            _emit(json.dumps(event, indent=2, ensure_ascii=False))
        if forwarding is not None and not await _forward(http, forwarding.target, msg_id, body,
                                                         request.headers):
            return web.json_response({"error": "the forward failed"}, status=502)
        seen.add(msg_id)
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post(path, receive)
    runner = web.AppRunner(app, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    endpoint_id = None
    api = _Api(http, forwarding) if forwarding is not None else None
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        _emit(f"listening on http://{shown}:{bound}{path} (Ctrl-C to stop)")
        if api is not None and forwarding is not None:
            own = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
            own = f"[{own}]" if ":" in own else own
            try:
                endpoint_id, secret, verb = await api.register(f"http://{own}:{bound}{path}")
            except _ApiError as exc:
                print(f"payflow listen: {exc}", file=sys.stderr, flush=True)
                return 1
            secrets.append(secret)
            _emit(f"endpoint {endpoint_id} {verb} on {forwarding.api} for "
                  f"{','.join(forwarding.events)}; signing secret {secret}")
            _emit(f"forwarding verified events to {forwarding.target}")
        await stop.wait()
    finally:
        try:
            if api is not None and endpoint_id is not None:
                try:
                    await api.delete(endpoint_id)
                    _emit(f"endpoint {endpoint_id} deleted")
                except _ApiError as exc:
                    print(f"payflow listen: endpoint {endpoint_id} not deleted: {exc}",
                          file=sys.stderr, flush=True)
        finally:
            await http.close()
            await runner.cleanup()
    return 0


async def _forward(http: aiohttp.ClientSession, target: str, msg_id: str, body: bytes,
                   headers: Mapping[str, str]) -> bool:
    """POST the delivery on to ``target``; print its status; True on a 2xx."""
    import aiohttp

    passed = {name: value for name, value in headers.items()
              if name.lower().startswith(FORWARDED_PREFIXES)}
    passed["Content-Type"] = headers.get("Content-Type", "application/json")
    try:
        async with http.post(target, data=body, headers=passed) as resp:
            await resp.read()
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        _emit(f"forward FAILED  {_field(msg_id)}  {type(exc).__name__}: {exc}  {target}")
        return False
    _emit(f"forwarded  {_field(msg_id)}  {status}  {target}")
    return 200 <= status < 300


class _ApiError(Exception):
    """The daemon's API could not be reached or refused a request (the message says which)."""


class _Api:
    """The few ``/v1/webhook_endpoints`` calls of --forward-to."""

    def __init__(self, http: aiohttp.ClientSession, forwarding: Forwarding) -> None:
        self._http = http
        self._base = forwarding.api
        self._events = list(forwarding.events)
        self._headers = ({"Authorization": f"Bearer {forwarding.api_key}"}
                         if forwarding.api_key else {})

    async def register(self, url: str) -> tuple[str, str, str]:
        """(endpoint id, its signing secret, ``created`` or ``reused``) of an enabled endpoint
        for ``url`` subscribed to the events: an endpoint already there for ``url`` (left by a
        listener that was killed) gets a new secret; else one is created."""
        listing = await self._call("GET", "/v1/webhook_endpoints")
        for endpoint in listing.get("data", []):
            if isinstance(endpoint, dict) and endpoint.get("url") == url:
                endpoint_id = str(endpoint["id"])
                path = f"/v1/webhook_endpoints/{endpoint_id}"
                await self._call("PATCH", path, {"disabled": False,
                                                 "enabled_events": self._events})
                rotated = await self._call("POST", path + "/rotate_secret")
                return endpoint_id, str(rotated["secret"]), "reused"
        created = await self._call("POST", "/v1/webhook_endpoints", {
            "url": url, "enabled_events": self._events, "description": DESCRIPTION})
        return str(created["id"]), str(created["secret"]), "created"

    async def delete(self, endpoint_id: str) -> None:
        await self._call("DELETE", f"/v1/webhook_endpoints/{endpoint_id}")

    async def _call(self, method: str, path: str,
                    body: dict[str, object] | None = None) -> dict[str, Any]:
        import aiohttp

        headers = dict(self._headers)
        if method == "POST":
            headers["Idempotency-Key"] = f"payflow-listen-{uuid.uuid4().hex}"
        url = self._base + path
        try:
            async with self._http.request(method, url, json=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _ApiError(f"cannot reach {self._base}: {type(exc).__name__}: {exc}") from None
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if status >= 400 or not isinstance(answer, dict):
            detail = (answer.get("detail") if isinstance(answer, dict) else None) or text[:300]
            raise _ApiError(f"{method} {url}: {status}: {detail}")
        return answer


def _emit(line: str) -> None:
    print(line, flush=True)


def _field(value: Any) -> str:
    """A header or body value as one printable column (``-`` when absent)."""
    if value is None or value == "":
        return "-"
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(ch if ch.isprintable() and ch != " " else _escape(ch) for ch in text)
    return text if len(text) <= 200 else text[:200] + "…"


def _escape(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else ascii(ch)[1:-1]
