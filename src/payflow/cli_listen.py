"""``payflow listen``: a local webhook receiver (like ``stripe listen``) that verifies each
delivery with :func:`payflow.webhooks.verify` and prints one line per event."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from payflow.webhooks.signing import WebhookVerificationError, _verify_keys, verify

if TYPE_CHECKING:
    from aiohttp import web

SECRET_ENV = "PAYFLOW_LISTEN_SECRET"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``listen`` to the ``payflow`` command's subparsers."""
    listen = sub.add_parser(
        "listen", help="receive webhooks locally, verify their signatures and print them",
        description="Serve an HTTP endpoint that verifies each POSTed webhook (Standard "
                    "Webhooks signature and timestamp) and prints one line per event: "
                    "`verified`, `duplicate` (a webhook-id seen before: answered 200) or "
                    "`REJECTED` (answered 400).")
    listen.add_argument("--port", metavar="P", type=int, required=True, help="listen port")
    listen.add_argument("--host", metavar="H", default="127.0.0.1",
                        help="listen address (default 127.0.0.1)")
    listen.add_argument("--path", metavar="PATH", default="/", help="URL path (default /)")
    listen.add_argument("--secret", metavar="S", action="append",
                        help="signing secret, whsec_…; repeat during a rotation (default: "
                             f"${SECRET_ENV}, several separated by spaces)")
    listen.add_argument("--print-body", action="store_true",
                        help="print each verified event's JSON body too")
    listen.set_defaults(listen_parser=listen)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.listen_parser
    secrets: list[str] = args.secret or os.environ.get(SECRET_ENV, "").split()
    if not secrets:
        parser.error(f"give --secret (or set {SECRET_ENV})")
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
    try:
        return asyncio.run(_serve(args.host, args.port, args.path, secrets, args.print_body))
    except OSError as exc:
        print(f"payflow listen: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1


async def _serve(host: str, port: int, path: str, secrets: Sequence[str],
                 print_body: bool) -> int:
    from aiohttp import web

    seen: set[str] = set()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = verify(body, request.headers, secrets)
        except WebhookVerificationError as exc:
            sent_id = request.headers.get("webhook-id") or request.headers.get("svix-id")
            _emit(f"REJECTED  {_field(sent_id)}  {exc}")
            return web.json_response({"error": str(exc)}, status=400)
        msg_id = request.headers.get("webhook-id") or request.headers.get("svix-id") or ""
        if msg_id in seen:
            _emit(f"duplicate  {_field(msg_id)}")
            return web.json_response({"received": True})
        seen.add(msg_id)
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        _emit(f"verified  {_field(msg_id)}  {_field(event.get('type'))}  "
              f"{_field(data.get('id'))}  status={_field(data.get('status'))}")
        if print_body:
            _emit(json.dumps(event, indent=2, ensure_ascii=False))
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post(path, receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        _emit(f"listening on http://{shown}:{bound}{path} (Ctrl-C to stop)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


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
