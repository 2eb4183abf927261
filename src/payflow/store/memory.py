"""``memory://``: the seed's fake database. Fast, single-process, and gone on restart."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from payflow.models import Event, Payment, PaymentStatus, now_iso


class MemoryStore:
    """A dict of payments. Each method runs without awaiting, so on one event loop every
    compare-and-set is atomic."""

    def __init__(self) -> None:
        self._payments: dict[str, Payment] = {}
        self._events: dict[str, Event] = {}

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

    async def add_event(self, event: Event) -> bool:
        if event.id in self._events:
            return False
        self._events[event.id] = event
        return True

    async def get_event(self, event_id: str) -> Event | None:
        return self._events.get(event_id)

    async def close(self) -> None:
        return None
