"""The sweepers: what the store knows but Redis may have lost is queued again.

- Events recorded with their state change whose webhook job never reached Redis (the daemon
  died between the store's commit and the queue's settle, or Redis was away). A duplicate
  carries the same event id, which receivers deduplicate on.
- Payments and refunds still pending long after their last change: their job was lost (a
  daemon died between the store's insert and the push, a push whose answer was lost, or Redis
  lost it). A duplicate job is a no-op: the compare-and-set lets one job through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog

from payflow.jobs import PaymentJob, RefundJob, WebhookJob
from payflow.models import iso
from payflow.store.base import Store

log = structlog.get_logger("payflow.outbox")

# An event is swept when it has waited this long for its job (its consumer settles well within).
SWEEP_AFTER_SECONDS = 10.0
BATCH = 1000


async def sweep_once(store: Store, push_many: Callable[[Sequence[bytes]], Awaitable[None]], *,
                     after_seconds: float = SWEEP_AFTER_SECONDS) -> int:
    """Queue the webhook jobs of events left unqueued for ``after_seconds``; returns how many."""
    before = iso(datetime.now(UTC) - timedelta(seconds=after_seconds))
    events = await store.unqueued_events(before, BATCH)
    if not events:
        return 0
    await push_many([WebhookJob.for_event(event).encode() for event in events])
    await store.mark_enqueued([event.id for event in events])
    log.warning("outbox.requeued", events=len(events),
                detail="events whose webhook jobs never reached Redis were queued again")
    return len(events)


async def sweep_pending(store: Store, push_many: Callable[[Sequence[bytes]], Awaitable[None]], *,
                        after_seconds: float) -> int:
    """Queue again the jobs of payments and refunds pending for ``after_seconds``; returns how
    many."""
    before = iso(datetime.now(UTC) - timedelta(seconds=after_seconds))
    stale = await store.stale_pending(before, BATCH)
    refunds = await store.stale_refunds(before, BATCH)
    if not stale and not refunds:
        return 0
    await push_many([PaymentJob(payment_id=p.id).encode() for p in stale]
                    + [RefundJob(refund_id=r.id, payment_id=r.payment_id).encode()
                       for r in refunds])
    log.warning("sweeper.requeued_pending", payments=len(stale), refunds=len(refunds),
                after_seconds=after_seconds,
                detail="pending payments and refunds whose jobs were lost were queued again")
    return len(stale) + len(refunds)
