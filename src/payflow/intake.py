"""The rules of the payments API, for every caller (HTTP API, dashboard, CLI): create, read,
list and cancel payments; create and read refunds.

A payment is accepted once it is in the store and its job is on the payments queue; when the
queue does not take the job the payment is removed again and :class:`QueueUnavailable` says
nothing was accepted. Raises :class:`ValidationError`, :class:`NotFound`, :class:`Conflict`,
:class:`QueueUnavailable`; never a Redis or database error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from redis.exceptions import RedisError

from payflow.errors import Conflict, NotFound, QueueUnavailable, ValidationError
from payflow.jobs import PaymentJob, RefundJob, WebhookJob
from payflow.models import Payment, PaymentStatus, Refund, new_payment_id, new_refund_id
from payflow.store.base import REFUNDABLE, Store, Transition
from payflow.validation import PaymentRequest

log = structlog.get_logger("payflow.intake")

# What a failing push may raise: Redis errors, and socket errors/timeouts that slip past them.
PUSH_ERRORS: Final = (RedisError, OSError, TimeoutError)

Push = Callable[[bytes], Awaitable[None]]


async def push_or_refuse(push: Push, raw: bytes, detail: str) -> None:
    """Queue ``raw``; a Redis failure becomes :class:`QueueUnavailable` (``detail``)."""
    try:
        await push(raw)
    except PUSH_ERRORS as exc:
        log.warning("queue.push_failed", error_type=type(exc).__name__, error=str(exc))
        raise QueueUnavailable(detail) from None


class Payments:
    def __init__(self, store: Store, *, push_payment: Push, push_webhook: Push | None) -> None:
        self.store = store
        self.push_payment = push_payment
        self.push_webhook = push_webhook

    async def create(self, req: PaymentRequest) -> Payment:
        payment = Payment(id=new_payment_id(), method=req.method, amount=req.amount,
                          currency=req.currency, method_details=req.method_details,
                          metadata=req.metadata)
        raw = PaymentJob(payment_id=payment.id, method=payment.method).encode()
        [stored] = await self.store.create_payments([payment])
        try:
            await push_or_refuse(self.push_payment, raw, "The payment could not be queued and "
                                 "was not accepted; retry shortly.")
        except BaseException:
            await self._forget(payment.id)
            raise
        log.info("payment.created", payment_id=payment.id, amount=payment.amount,
                 currency=payment.currency, method=payment.method)
        return stored

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
        if amount < 1:
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
            await push_or_refuse(self.push_payment, raw, "The refund could not be queued and "
                                 "was not accepted; retry shortly.")
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
