"""``payflow pay``: create a payment through the HTTP API and optionally wait for its outcome."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

from payflow.config import CLIENT_API_KEY_ENV

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
POLL_SECONDS = 0.2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pay = sub.add_parser(
        "pay", help="create a payment through the HTTP API",
        description="POST /v1/payments and print the payment. With --wait, poll it until it "
                    "succeeded, failed or was canceled. Exit status: 0 succeeded (or created, "
                    "without --wait), 1 failed, canceled, timed out or unreachable, 2 refused "
                    "(4xx).")
    pay.add_argument("--amount", type=int, required=True, help="in minor units, e.g. 1000")
    pay.add_argument("--currency", required=True, help="ISO 4217 code, e.g. INR")
    pay.add_argument("--method", required=True, help="upi, card, netbanking or wallet")
    details = pay.add_mutually_exclusive_group()
    details.add_argument("--vpa", help="UPI address (name@bank)")
    details.add_argument("--card", metavar="NUMBER", help="card number (with --exp)")
    pay.add_argument("--exp", metavar="MM/YYYY", help="card expiry")
    pay.add_argument("--url", default="http://127.0.0.1:8080",
                     help="the daemon's HTTP address (default: http://127.0.0.1:8080)")
    pay.add_argument("--api-key", metavar="KEY", default=os.environ.get(CLIENT_API_KEY_ENV),
                     help=f"API key secret (default: ${CLIENT_API_KEY_ENV})")
    pay.add_argument("--idempotency-key", metavar="K",
                     help="Idempotency-Key (default: a new random one)")
    pay.add_argument("--wait", nargs="?", type=float, const=30.0, default=None,
                     metavar="SECONDS", help="wait for a final status (default 30 s)")
    pay.set_defaults(pay_parser=pay)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"amount": args.amount, "currency": args.currency,
                            "method": args.method}
    if args.vpa is not None:
        body["upi"] = {"vpa": args.vpa}
    if args.card is not None:
        month, _, year = (args.exp or "").partition("/")
        if not (month.isdigit() and year.isdigit()):
            args.pay_parser.error("--card needs --exp MM/YYYY")
        body["card"] = {"number": args.card, "exp_month": int(month), "exp_year": int(year)}
    elif args.exp is not None:
        args.pay_parser.error("--exp goes with --card")
    return body


def run(args: argparse.Namespace) -> int:
    body = _body(args)
    try:
        return asyncio.run(_pay(args, body))
    except KeyboardInterrupt:
        return 130


async def _pay(args: argparse.Namespace, body: dict[str, Any]) -> int:
    import aiohttp

    base = args.url.rstrip("/")
    headers = {"Idempotency-Key": args.idempotency_key or f"payflow-cli-{uuid.uuid4().hex}"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(f"{base}/v1/payments", json=body, headers=headers) as resp:
                status, payment = resp.status, await _json(resp)
            if status >= 400:
                print(json.dumps(payment), file=sys.stderr)
                return 2 if status < 500 else 1
            if args.wait is None:
                print(json.dumps(payment))
                return 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.wait
            url = f"{base}/v1/payments/{payment['id']}"
            while payment.get("status") not in TERMINAL and loop.time() < deadline:
                await asyncio.sleep(POLL_SECONDS)
                async with http.get(url, headers=headers) as resp:
                    if resp.status >= 400:
                        print(json.dumps(await _json(resp)), file=sys.stderr)
                        return 2 if resp.status < 500 else 1
                    payment = await _json(resp)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"payflow: cannot reach {base}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(payment))
    if payment.get("status") not in TERMINAL:
        print(f"payflow: payment {payment.get('id')} still {payment.get('status')} after "
              f"{args.wait:g} s", file=sys.stderr)
        return 1
    return 0 if payment["status"] == "succeeded" else 1


async def _json(resp: Any) -> dict[str, Any]:
    try:
        data = await resp.json(content_type=None)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"status": resp.status, "body": (await resp.text())[:500]}
    return data
