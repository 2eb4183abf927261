"""The store interface. Every backend implements :class:`Store`; one contract suite tests all.

Every method is batch-shaped: it takes or returns many items, so that a consumer batch of K
jobs costs the same few round trips as one job (PostgreSQL: ``= ANY($1)`` / ``unnest``). The
per-item calls the services make go through :class:`payflow.store.front.StoreFront`, which
coalesces the calls made in the same loop iteration into one batch call.

A status change is a compare-and-set: it applies only if the payment's current status is one
of ``expected``, so a job delivered twice changes state once. The event of a state change is
recorded in the same transaction (the outbox); it is marked enqueued once its webhook job is in
Redis, and :meth:`Store.unqueued_events` finds the ones a crash left behind.

Times are ISO-8601 strings in UTC with milliseconds and a ``Z`` (``models.now_iso()``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
)

# The states a refund may be taken from (the payment succeeded and is not fully refunded).
REFUNDABLE = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    """Set a payment's ``status`` to ``new`` if it is one of ``expected`` (compare-and-set),
    bumping ``sequence`` and ``updated_at``; ``emit``: record the event of the new state
    (``Event.for_payment``) in the same transaction."""

    payment_id: str
    expected: tuple[PaymentStatus, ...]
    new: PaymentStatus
    failure_code: str | None = None
    failure_message: str | None = None
    emit: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Changed:
    """A transition that applied: the payment after it, and the event recorded with it."""

    payment: Payment
    event: Event | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RefundCompletion:
    """Take a *pending* refund to ``new`` (compare-and-set). When it succeeded, its payment's
    ``amount_refunded`` grows and its status becomes ``partially_refunded`` or ``refunded``
    (``sequence`` and ``updated_at`` bumped), in the same transaction as the refund's event
    (``Event.for_refund``)."""

    refund_id: str
    new: RefundStatus
    failure_code: str | None = None
    failure_message: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class KeyBinding:
    """An Idempotency-Key bound to a payment: the request's fingerprint, whether that request
    was answered (``confirmed``), and when it was bound."""

    payment: Payment
    fingerprint: str
    confirmed: bool
    bound_at: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RefundDone:
    refund: Refund
    event: Event


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says that a store (or the network to it) is away, rather than that a
    job or its data is wrong: a job that met it is retried later, never dead-lettered.
    Connection, timeout and system-call (errno) errors; from asyncpg, connection errors
    (SQLSTATE classes 08, 53 insufficient resources, 57 operator intervention) and the
    client's lost-connection errors."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):  # a system call's error; not an OSError raised as a verdict
        return exc.errno is not None  # (the SSRF guard's refusals carry no errno)
    kind = type(exc)
    if not kind.__module__.startswith("asyncpg"):
        return False
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state[:2] in ("08", "53", "57")
    return "Connection" in kind.__name__


class Store(Protocol):
    """Async persistence of everything PayFlow knows. ``kind`` names the backend for people
    (``memory``, ``postgresql``); ``shared`` says whether several daemons may use it at once."""

    kind: str
    shared: bool

    # --- payments ------------------------------------------------------------------------

    async def create_payments(self, payments: Sequence[Payment]) -> list[Payment]:
        """Insert each payment whose id is new; returns, in order, the stored payment of each
        (an existing one unchanged)."""
        ...

    async def create_payment_once(self, payment: Payment, key: str,
                                  fingerprint: str) -> KeyBinding:
        """Bind the idempotency ``key`` to ``payment`` (unconfirmed) and insert it, atomically,
        unless the key is bound already: then return that binding instead (nothing is
        inserted)."""
        ...

    async def confirm_key(self, key: str) -> None:
        """Note that the request bound to ``key`` is answered (its job is queued)."""
        ...

    async def get_payments(self, ids: Sequence[str]) -> dict[str, Payment]:
        """The payments of ``ids`` that exist, by id."""
        ...

    async def delete_payments(self, ids: Sequence[str]) -> None:
        """Remove payments (and the idempotency keys bound to them); unknown ids are
        ignored."""
        ...

    async def transition(self, transitions: Sequence[Transition]) -> list[Changed | None]:
        """Apply ``transitions`` in order, atomically as a whole; a later one on the same
        payment sees the earlier's result. Returns, in order, what changed, or ``None`` where
        the payment is missing or its status is not in ``expected`` (nothing changes then)."""
        ...

    async def list_payments(self, *, limit: int, starting_after: str | None = None,
                            status: PaymentStatus | None = None,
                            created_gte: str | None = None,
                            created_lte: str | None = None) -> list[Payment]:
        """Newest first (creation order); ``starting_after`` is the id of the last payment of
        the previous page (an unknown id gives an empty page); ``created_*`` bounds are
        inclusive ISO-8601 times."""
        ...

    async def stale_pending(self, before: str, limit: int) -> list[Payment]:
        """Payments still ``pending`` whose ``updated_at`` is before ``before``, oldest first
        (a sweeper re-queues their jobs)."""
        ...

    # --- refunds -------------------------------------------------------------------------

    async def reserve_refund(self, refund: Refund) -> str | None:
        """Insert a pending refund if its payment can take it, atomically with the check.
        Returns None, or why not: ``payment_not_found``, ``not_refundable`` (the payment is not
        in ``REFUNDABLE``, or has no amount) or ``amount_too_large`` (more than is left once the
        refunds already pending or succeeded are counted)."""
        ...

    async def refundable(self, payment_id: str) -> int:
        """What is left to refund: the payment's amount less its refunds pending or succeeded
        (0 for an unknown payment or one without an amount)."""
        ...

    async def delete_refund(self, refund_id: str) -> None:
        """Remove a pending refund whose job was never queued."""
        ...

    async def get_refunds(self, ids: Sequence[str]) -> dict[str, Refund]: ...

    async def list_refunds(self, payment_id: str) -> list[Refund]:
        """A payment's refunds, oldest first."""
        ...

    async def stale_refunds(self, before: str, limit: int) -> list[Refund]:
        """Refunds still ``pending`` whose ``updated_at`` is before ``before``, oldest first
        (a sweeper re-queues their jobs)."""
        ...

    async def complete_refunds(self, completions: Sequence[RefundCompletion]
                               ) -> list[RefundDone | None]:
        """Apply each completion in order, atomically as a whole (see
        :class:`RefundCompletion`); ``None`` where the refund is missing or not pending."""
        ...

    # --- events: the outbox --------------------------------------------------------------

    async def add_events(self, events: Sequence[Event]) -> None:
        """Record events whose id is new (an existing one is left as it is)."""
        ...

    async def get_events(self, ids: Sequence[str]) -> dict[str, Event]: ...

    async def list_events(self, *, limit: int, starting_after: str | None = None,
                          type: str | None = None,
                          created_gte: str | None = None) -> list[Event]:
        """Newest first (recording order), filtered by ``type`` and by ``timestamp`` at or
        after ``created_gte``; ``starting_after`` as for payments."""
        ...

    async def mark_enqueued(self, event_ids: Sequence[str]) -> None:
        """Note that these events' webhook jobs are in Redis."""
        ...

    async def unqueued_events(self, before: str, limit: int) -> list[Event]:
        """Events recorded before ``before`` and never marked enqueued, oldest first."""
        ...

    # --- webhook endpoints ---------------------------------------------------------------

    async def put_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Insert or replace (secrets included)."""
        ...

    async def get_endpoints(self, ids: Sequence[str]) -> dict[str, WebhookEndpoint]: ...

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        """Oldest first."""
        ...

    async def delete_endpoint(self, endpoint_id: str) -> bool: ...

    # --- delivery attempts ---------------------------------------------------------------

    async def add_attempts(self, attempts: Sequence[DeliveryAttempt]) -> None: ...

    async def list_attempts(self, event_id: str) -> list[DeliveryAttempt]:
        """Oldest first."""
        ...

    async def attempts_since(self, endpoint_id: str, since: str) -> list[DeliveryAttempt]:
        """Attempts at ``endpoint_id`` at or after ``since``, oldest first."""
        ...

    # --- settings and retention ----------------------------------------------------------

    async def setting(self, name: str, default: str) -> str:
        """The stored value of ``name``; the first call stores ``default`` (atomically: every
        daemon gets the same value)."""
        ...

    async def prune(self, before: str) -> int:
        """Delete events recorded before ``before`` (that are marked enqueued), delivery
        attempts made before it and idempotency keys bound before it; returns how many rows
        went. Payments and refunds stay."""
        ...

    async def close(self) -> None: ...
