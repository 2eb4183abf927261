"""``memory://``: the seed's fake database. Fast, single-process, and gone on restart."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
    now_iso,
    parse_iso,
)

REFUNDABLE = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)


class MemoryStore:
    """A dict of payments. Each method runs without awaiting, so on one event loop every
    compare-and-set is atomic."""

    def __init__(self) -> None:
        self._payments: dict[str, Payment] = {}
        self._refunds: dict[str, Refund] = {}
        self._events: dict[str, Event] = {}  # insertion order: oldest first
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._attempts: dict[str, list[DeliveryAttempt]] = {}  # by event id
        self._attempts_by_endpoint: dict[str, list[DeliveryAttempt]] = {}

    async def create_payment(self, payment: Payment) -> Payment:
        return self._payments.setdefault(payment.id, payment)

    async def get_payment(self, payment_id: str) -> Payment | None:
        return self._payments.get(payment_id)

    async def delete_payment(self, payment_id: str) -> None:
        self._payments.pop(payment_id, None)

    async def transition(
        self,
        payment_id: str,
        expected: Collection[PaymentStatus],
        new: PaymentStatus,
        **changes: Any,
    ) -> Payment | None:
        current = self._payments.get(payment_id)
        if current is None or current.status not in expected:
            return None
        updated = dataclasses.replace(
            current, status=new, updated_at=now_iso(), sequence=current.sequence + 1, **changes
        )
        self._payments[payment_id] = updated
        return updated

    async def list_payments(self, *, limit: int, starting_after: str | None = None,
                            status: PaymentStatus | None = None,
                            created_gte: str | None = None,
                            created_lte: str | None = None) -> list[Payment]:
        ids = list(self._payments)
        end = len(ids)
        if starting_after is not None:
            if starting_after not in self._payments:
                return []
            end = ids.index(starting_after)
        low = parse_iso(created_gte) if created_gte else None
        high = parse_iso(created_lte) if created_lte else None
        page: list[Payment] = []
        for payment_id in reversed(ids[:end]):
            payment = self._payments[payment_id]
            if status is not None and payment.status is not status:
                continue
            created = parse_iso(payment.created_at)
            if (low and created < low) or (high and created > high):
                continue
            page.append(payment)
            if len(page) == limit:
                break
        return page

    async def reserve_refund(self, refund: Refund) -> str | None:
        payment = self._payments.get(refund.payment_id)
        if payment is None:
            return "payment_not_found"
        if payment.amount is None or payment.status not in REFUNDABLE:
            return "not_refundable"
        if refund.amount > self._refundable(payment):
            return "amount_too_large"
        self._refunds[refund.id] = refund
        return None

    def _refundable(self, payment: Payment) -> int:
        pending = sum(r.amount for r in self._refunds.values()
                      if r.payment_id == payment.id and r.status is RefundStatus.PENDING)
        return (payment.amount or 0) - payment.amount_refunded - pending

    async def refundable(self, payment_id: str) -> int:
        payment = self._payments.get(payment_id)
        return 0 if payment is None or payment.amount is None else self._refundable(payment)

    async def delete_refund(self, refund_id: str) -> None:
        self._refunds.pop(refund_id, None)

    async def put_refund(self, refund: Refund) -> Refund:
        return self._refunds.setdefault(refund.id, refund)

    async def get_refund(self, refund_id: str) -> Refund | None:
        return self._refunds.get(refund_id)

    async def complete_refund(self, refund_id: str, new: RefundStatus,
                              **changes: Any) -> Refund | None:
        current = self._refunds.get(refund_id)
        if current is None or current.status is not RefundStatus.PENDING:
            return None
        done = dataclasses.replace(current, status=new, updated_at=now_iso(), **changes)
        self._refunds[refund_id] = done
        payment = self._payments.get(done.payment_id)
        if new is RefundStatus.SUCCEEDED and payment is not None and payment.amount is not None:
            refunded = payment.amount_refunded + done.amount
            status = (PaymentStatus.REFUNDED if refunded >= payment.amount
                      else PaymentStatus.PARTIALLY_REFUNDED)
            self._payments[payment.id] = dataclasses.replace(
                payment, amount_refunded=refunded, status=status, updated_at=done.updated_at,
                sequence=payment.sequence + 1)
        return done

    async def add_event(self, event: Event) -> bool:
        if event.id in self._events:
            return False
        self._events[event.id] = event
        return True

    async def get_event(self, event_id: str) -> Event | None:
        return self._events.get(event_id)

    async def list_events(self, *, limit: int, starting_after: str | None = None) -> list[Event]:
        ids = list(self._events)
        end = len(ids)
        if starting_after is not None:
            try:
                end = ids.index(starting_after)
            except ValueError:
                return []
        return [self._events[i] for i in reversed(ids[max(0, end - limit):end])]

    async def put_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._endpoints[endpoint.id] = endpoint

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        return self._endpoints.get(endpoint_id)

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        return list(self._endpoints.values())

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        return self._endpoints.pop(endpoint_id, None) is not None

    async def add_attempt(self, attempt: DeliveryAttempt) -> None:
        self._attempts.setdefault(attempt.event_id, []).append(attempt)
        self._attempts_by_endpoint.setdefault(attempt.endpoint_id, []).append(attempt)

    async def list_attempts(self, event_id: str) -> list[DeliveryAttempt]:
        return list(self._attempts.get(event_id, ()))

    async def attempts_since(self, endpoint_id: str, since: str) -> list[DeliveryAttempt]:
        moment = parse_iso(since)
        return [a for a in self._attempts_by_endpoint.get(endpoint_id, ())
                if parse_iso(a.at) >= moment]

    async def close(self) -> None:
        return None
