"""What the arq and saq workers share: the log, the payments dict and the webhook step.

Settings come from the environment (set by benchmarks/pipeline.py): ``BENCH_REDIS_URL``; with
``BENCH_WEBHOOK_URL`` and ``BENCH_WEBHOOK_SECRET`` the webhook step POSTs each event, signed
the Standard Webhooks way (:func:`payflow.webhooks.signing.sign`), to that receiver and fails
on any answer but 2xx; without them it only logs the delivery (PayFlow's log sink).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from payflow.webhooks.signing import sign

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
WEBHOOK_URL = os.environ.get("BENCH_WEBHOOK_URL", "")
WEBHOOK_SECRET = os.environ.get("BENCH_WEBHOOK_SECRET", "")
READY = "peer worker ready"
DELIVERED = "Webhook delivered"

log = logging.getLogger("peer")
PAYMENTS: dict[str, dict[str, Any]] = {}  # payment id -> payment, in this worker's memory


def setup_logging() -> None:
    """One INFO line per step on stderr, whatever level the worker CLI gives its own logs."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def process_payment(payment_id: str, method: str) -> dict[str, Any]:
    """Log, record the payment as succeeded and return its ``payment.success`` event."""
    log.info("Processing payment: %s", payment_id)
    stamp = now_iso()
    payment = {"id": payment_id, "object": "payment", "method": method, "status": "succeeded",
               "created_at": stamp, "updated_at": stamp, "sequence": 2}
    PAYMENTS[payment_id] = payment
    return {"id": f"evt_{payment_id}", "type": "payment.success", "timestamp": stamp,
            "data": payment}


async def deliver(session: aiohttp.ClientSession | None, event: dict[str, Any]) -> None:
    """The webhook step: POST the event to the receiver (if one is set), then log it."""
    if session is not None:
        body = json.dumps(event, separators=(",", ":")).encode()
        stamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": event["id"],
                   "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(WEBHOOK_SECRET, event["id"], stamp, body)}
        async with session.post(WEBHOOK_URL, data=body, headers=headers) as resp:
            await resp.read()
            if not 200 <= resp.status < 300:
                raise RuntimeError(f"receiver answered {resp.status}")
    log.info("%s: webhook:%s:%s", DELIVERED, event["type"], event["data"]["id"])


def new_session() -> aiohttp.ClientSession | None:
    return aiohttp.ClientSession() if WEBHOOK_URL else None


def report(seconds: float, enqueue_seconds: float) -> None:
    """The enqueuing side's one line of output, read by benchmarks/pipeline.py."""
    print(json.dumps({"seconds": seconds, "enqueue_seconds": enqueue_seconds}), flush=True)
