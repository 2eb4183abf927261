"""The store interface. Every backend implements :class:`Store`; one contract suite tests all."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from payflow.models import Event, Payment, PaymentStatus


class Store(Protocol):
    """Async persistence of payments. A transition is a compare-and-set: it applies only if the
    payment's current status is one of ``expected``, so a job delivered twice changes state once.
    """

    async def create_payment(self, payment: Payment) -> Payment:
        """Insert ``payment``; if its id exists already, return the stored one unchanged."""
        ...

    async def get_payment(self, payment_id: str) -> Payment | None: ...

    async def delete_payment(self, payment_id: str) -> None:
        """Remove a payment that was never queued (its intake failed)."""
        ...

    async def transition(
        self,
        payment_id: str,
        expected: Collection[PaymentStatus],
        new: PaymentStatus,
        **changes: Any,
    ) -> Payment | None:
        """Set ``status=new`` (and ``changes``), bump ``sequence`` and ``updated_at``, if the
        current status is in ``expected``. Return the updated payment, or ``None`` when the
        payment is missing or its status is not in ``expected`` (nothing changes then)."""
        ...

    async def add_event(self, event: Event) -> bool:
        """Record an event once it is queued; ``False`` if it was recorded already."""
        ...

    async def get_event(self, event_id: str) -> Event | None: ...

    async def close(self) -> None: ...
