"""The rules of the payments API, for every caller (HTTP API, dashboard, CLI): create, read,
list and cancel payments; create and read refunds.

A payment is accepted once it is in the store and its job is on the payments queue; when the
queue does not take the job the payment is removed again and :class:`QueueUnavailable` says
nothing was accepted. Raises :class:`ValidationError`, :class:`NotFound`, :class:`Conflict`,
:class:`QueueUnavailable`; never a Redis or database error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import structlog
from redis.exceptions import RedisError

from payflow import tracing
from payflow.errors import (
    Conflict,
    KeyInFlight,
    KeyReused,
    NotFound,
    QueueUnavailable,
    ValidationError,
)
from payflow.jobs import PaymentJob, RefundJob, WebhookJob
from payflow.models import (
    Payment,
    PaymentStatus,
    Refund,
    new_payment_id,
    new_refund_id,
    parse_iso,
)
from payflow.payments.validation import MIN_REFUND_AMOUNT, PaymentRequest
from payflow.queue.producer import NotSent, Uncertain
from payflow.store.base import REFUNDABLE, Store, Transition
from payflow.store.front import StoreFront

log = structlog.get_logger("payflow.intake")

# What a failing push may raise: Redis errors, and socket errors/timeouts that slip past them.
PUSH_ERRORS: Final = (RedisError, OSError, TimeoutError)

Push = Callable[[bytes], Awaitable[None]]
# A request is answered well within this (its push times out sooner): a key bound longer ago
# and still unconfirmed belongs to a daemon that died before answering; its payment is kept.
ANSWER_WITHIN_SECONDS: Final = 30.0


def _age(moment: str) -> float:
    return (datetime.now(UTC) - parse_iso(moment)).total_seconds()


async def push_or_refuse(push: Push, raw: bytes, detail: str) -> None:
    """Queue ``raw``; a Redis failure becomes :class:`QueueUnavailable` (``detail``)."""
    try:
        await push(raw)
    except (NotSent, Uncertain, *PUSH_ERRORS) as exc:
        log.warning("queue.push_failed", error_type=type(exc).__name__, error=str(exc))
        raise QueueUnavailable(detail) from None


class Payments:
    def __init__(self, store: Store, *, push_payment: Push, push_webhook: Push | None) -> None:
        self.store = store
        self.front = StoreFront(store)  # concurrent requests' inserts share one statement
        self.push_payment = push_payment
        self.push_webhook = push_webhook

    async def create(self, req: PaymentRequest, *,
                     idempotency: tuple[str, str] | None = None) -> tuple[Payment, bool]:
        """Store the payment, then queue its job; returns it and whether it is a replay.

        ``idempotency``: (scoped key, request fingerprint). The key is bound to the payment in
        the same store step that inserts it, before the job is queued, so a retry with that
        key answers with that payment whatever happened to Redis; the same key with another
        request is :class:`KeyReused`.

        Queuing: when Redis could not be reached the payment is removed again and
        :class:`QueueUnavailable` says nothing was accepted; when the push was sent but its
        answer was lost (a stalled Redis) the payment is kept: its job may be queued, and if
        it was lost the sweeper queues it again (a duplicate job is a no-op)."""
        payment = Payment(id=new_payment_id(), method=req.method, amount=req.amount,
                          currency=req.currency, method_details=req.method_details,
                          metadata=req.metadata)
        if idempotency is not None:
            bound = await self.store.create_payment_once(payment, *idempotency)
            stored = bound.payment
            if stored.id != payment.id:
                if bound.fingerprint != idempotency[1]:
                    raise KeyReused("the Idempotency-Key was used for another request")
                if not bound.confirmed and _age(bound.bound_at) < ANSWER_WITHIN_SECONDS:
                    raise KeyInFlight("the first request with this key is not answered yet")
                log.info("idempotency.replayed", payment_id=stored.id)
                return stored, True
        else:
            stored = await self.front.create_payment(payment)
        # The job names the payment and nothing else: a job for a payment that is gone is
        # dead-lettered, never turned into a new payment. With tracing on it carries the
        # request's trace context.
        tp = tracing.current_traceparent() if tracing.ON else None
        raw = PaymentJob(payment_id=payment.id, traceparent=tp).encode()
        try:
            await self.push_payment(raw)
        except Uncertain as exc:
            log.warning("payment.enqueue_uncertain", payment_id=payment.id, error=str(exc),
                        detail="kept: its job may be queued; the sweeper queues it otherwise")
        except (NotSent, *PUSH_ERRORS) as exc:
            await self._forget(payment.id)
            log.warning("payment.enqueue_failed", payment_id=payment.id, error=str(exc))
            raise QueueUnavailable("The payment could not be queued and was not accepted; "
                                   "retry shortly.") from None
        except BaseException:
            await self._forget(payment.id)
            raise
        if idempotency is not None:  # a retry with the key may now be answered with it
            await self.store.confirm_key(idempotency[0])
        log.info("payment.created", payment_id=payment.id, amount=payment.amount,
                 currency=payment.currency, method=payment.method)
        return stored, False

    async def _forget(self, payment_id: str) -> None:
        """Remove a payment whose job could not be queued (best effort: the answer is an
        error either way)."""
        try:
            await self.store.delete_payments([payment_id])
        except Exception:
            log.exception("payment.cleanup_failed", payment_id=payment_id)

    async def get(self, payment_id: str) -> Payment:
        found = await self.store.get_payments([payment_id])
        if payment_id not in found:
            raise NotFound("payment", payment_id)
        return found[payment_id]

    async def page(self, *, limit: int, starting_after: str | None,
                   status: PaymentStatus | None, created_gte: str | None,
                   created_lte: str | None) -> list[Payment]:
        return await self.store.list_payments(limit=limit, starting_after=starting_after,
                                              status=status, created_gte=created_gte,
                                              created_lte=created_lte)

    async def cancel(self, payment_id: str) -> Payment:
        """``pending → canceled``, with its ``payment.canceled`` event in the same step; the
        payment's job, still queued, then finds nothing to do."""
        [changed] = await self.store.transition([Transition(
            payment_id=payment_id, expected=(PaymentStatus.PENDING,),
            new=PaymentStatus.CANCELED, emit=True)])
        if changed is None:
            current = await self.get(payment_id)
            raise Conflict(f"Only a pending payment can be canceled; this one is "
                           f"{current.status.value}.", code="payment_not_cancelable",
                           status=current.status.value)
        log.info("payment.canceled", payment_id=payment_id)
        if changed.event is not None and self.push_webhook is not None:
            try:  # the outbox sweeper queues it later if this fails
                await self.push_webhook(WebhookJob.for_event(changed.event).encode())
                await self.store.mark_enqueued([changed.event.id])
            except PUSH_ERRORS as exc:
                log.warning("event.push_deferred", event_id=changed.event.id, error=str(exc))
        return changed.payment

    async def refund(self, payment_id: str, amount: int | None) -> Refund:
        """Reserve ``amount`` (default: all that is left) of a succeeded payment and queue the
        refund's job."""
        payment = await self.get(payment_id)
        if payment.status not in REFUNDABLE or payment.amount is None:
            detail = ("Only a succeeded payment can be refunded; this one is "
                      f"{payment.status.value}." if payment.amount is not None else
                      "This payment has no amount (it was created from a legacy job).")
            raise Conflict(detail, code="payment_not_refundable", status=payment.status.value)
        left = await self.store.refundable(payment_id)
        amount = left if amount is None else amount
        if amount < MIN_REFUND_AMOUNT:
            raise ValidationError("amount must be a positive integer in minor units (nothing "
                                  "is left to refund).", param="amount", code="invalid_amount")
        if amount > left:
            raise ValidationError(f"amount {amount} exceeds what is left to refund ({left}).",
                                  param="amount", code="amount_too_large")
        refund = Refund(id=new_refund_id(), payment_id=payment_id, amount=amount,
                        currency=payment.currency)
        if (why := await self.store.reserve_refund(refund)) is not None:  # raced another
            raise ValidationError(f"The refund could not be reserved ({why}); retry.",
                                  param="amount", code=why)
        raw = RefundJob(refund_id=refund.id, payment_id=payment_id).encode()
        try:
            await self.push_payment(raw)
        except Uncertain as exc:  # as for a payment: kept, the sweeper queues a lost job
            log.warning("refund.enqueue_uncertain", refund_id=refund.id, error=str(exc))
        except (NotSent, *PUSH_ERRORS) as exc:
            await self.store.delete_refund(refund.id)
            log.warning("refund.enqueue_failed", refund_id=refund.id, error=str(exc))
            raise QueueUnavailable("The refund could not be queued and was not accepted; "
                                   "retry shortly.") from None
        except BaseException:
            await self.store.delete_refund(refund.id)
            raise
        log.info("refund.created", refund_id=refund.id, payment_id=payment_id, amount=amount)
        return refund

    async def get_refund(self, refund_id: str) -> Refund:
        found = await self.store.get_refunds([refund_id])
        if refund_id not in found:
            raise NotFound("refund", refund_id)
        return found[refund_id]

    async def refunds_of(self, payment_id: str) -> list[Refund]:
        await self.get(payment_id)
        return await self.store.list_refunds(payment_id)
