"""The store interface. Every backend implements :class:`Store`; one contract suite tests all."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
)


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

    async def list_payments(self, *, limit: int, starting_after: str | None = None,
                            status: PaymentStatus | None = None,
                            created_gte: str | None = None,
                            created_lte: str | None = None) -> list[Payment]:
        """Newest first; ``starting_after`` is the id of the last payment of the previous page;
        the ``created_*`` bounds are ISO-8601 times."""
        ...

    async def reserve_refund(self, refund: Refund) -> str | None:
        """Insert a pending refund if its payment can take it, atomically with the check.
        Returns None, or why not: ``payment_not_found``, ``not_refundable`` (the payment has
        not succeeded, or has no amount) or ``amount_too_large`` (more than is left once the
        refunds already pending or done are counted)."""
        ...

    async def refundable(self, payment_id: str) -> int:
        """What is left to refund of a payment: its amount less the refunds pending or done
        (0 for an unknown payment or one without an amount)."""
        ...

    async def delete_refund(self, refund_id: str) -> None:
        """Remove a refund that was never queued (its intake failed)."""
        ...

    async def put_refund(self, refund: Refund) -> Refund:
        """Insert if absent (a snapshot restored after a restart); returns the stored one."""
        ...

    async def get_refund(self, refund_id: str) -> Refund | None: ...

    async def complete_refund(self, refund_id: str, new: RefundStatus,
                              **changes: Any) -> Refund | None:
        """Compare-and-set a pending refund to ``new``; when it succeeded, add it to its
        payment in the same step (``amount_refunded`` grows, the status becomes
        ``partially_refunded`` or ``refunded``). None if the refund was not pending."""
        ...

    async def add_event(self, event: Event) -> bool:
        """Record an event once it is queued; ``False`` if it was recorded already."""
        ...

    async def get_event(self, event_id: str) -> Event | None: ...

    async def list_events(self, *, limit: int, starting_after: str | None = None) -> list[Event]:
        """Newest first; ``starting_after`` is the id of the last event of the previous page."""
        ...

    async def put_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Insert or replace."""
        ...

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None: ...

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        """Oldest first."""
        ...

    async def delete_endpoint(self, endpoint_id: str) -> bool: ...

    async def add_attempt(self, attempt: DeliveryAttempt) -> None: ...

    async def list_attempts(self, event_id: str) -> list[DeliveryAttempt]:
        """Oldest first."""
        ...

    async def attempts_since(self, endpoint_id: str, since: str) -> list[DeliveryAttempt]:
        """Attempts at ``endpoint_id`` at or after ``since`` (ISO-8601), oldest first."""
        ...

    async def close(self) -> None: ...
