"""``POST /v1/payments/{id}/refunds`` and ``GET /v1/refunds/{id}``.

A refund is accepted (202, ``pending``) once its job is on the payments queue; a consumer then
takes it to ``succeeded`` or ``failed`` and emits ``refund.success`` or ``refund.failed``. The
amount is reserved when the refund is created, so concurrent refunds never exceed the payment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import web

from payflow.errors import ValidationError
from payflow.jobs import RefundJob
from payflow.models import PaymentStatus, Refund, new_refund_id
from payflow.web import problems
from payflow.web.params import reject_unknown
from payflow.web.payments import ENQUEUE_ERRORS, PAYMENTS_PATH, read_json_object

if TYPE_CHECKING:
    from payflow.web.app import WebContext

log = structlog.get_logger("payflow.web")

REFUNDS_PATH: Final = "/v1/refunds"
REFUNDABLE: Final = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)


def add_routes(app: web.Application, ctx: WebContext) -> None:
    h = _Handlers(ctx)
    app.router.add_post(PAYMENTS_PATH + "/{payment_id}/refunds", h.create)
    app.router.add_get(REFUNDS_PATH + "/{refund_id}", h.retrieve)


class _Handlers:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    async def create(self, request: web.Request) -> web.Response:
        store = self.ctx.store
        payment_id = request.match_info["payment_id"]
        body = await read_json_object(request) if request.can_read_body else {}
        reject_unknown(body, ("amount",))
        payment = await store.get_payment(payment_id)
        if payment is None:
            raise problems.payment_not_found(payment_id)
        if payment.status not in REFUNDABLE or payment.amount is None:
            detail = ("Only a succeeded payment can be refunded; this one is "
                      f"{payment.status.value}." if payment.amount is not None else
                      "This payment has no amount (it was created from a legacy job).")
            raise problems.conflict(detail, code="payment_not_refundable",
                                    status=payment.status.value)
        left = await store.refundable(payment_id)
        amount = body.get("amount", left)
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
            raise ValidationError("amount must be a positive integer in minor units.",
                                  param="amount", code="invalid_amount")
        if amount > left:
            raise ValidationError(f"amount {amount} exceeds what is left to refund ({left}).",
                                  param="amount", code="amount_too_large")
        refund = Refund(id=new_refund_id(), payment_id=payment_id, amount=amount,
                        currency=payment.currency)
        if (why := await store.reserve_refund(refund)) is not None:  # raced another refund
            raise ValidationError(f"The refund could not be reserved ({why}); retry.",
                                  param="amount", code=why)
        raw = RefundJob(refund_id=refund.id, payment_id=payment_id,
                        refund=refund.to_dict()).encode()
        try:
            await self.ctx.enqueue_payment(raw)
        except ENQUEUE_ERRORS:
            await store.delete_refund(refund.id)
            raise problems.queue_unavailable(
                "The refund could not be queued and was not accepted; retry shortly.") from None
        log.info("refund.created", refund_id=refund.id, payment_id=payment_id, amount=amount)
        return problems.json_response(refund.to_dict(), status=202,
                                      headers={"Location": f"{REFUNDS_PATH}/{refund.id}"})

    async def retrieve(self, request: web.Request) -> web.Response:
        refund_id = request.match_info["refund_id"]
        refund = await self.ctx.store.get_refund(refund_id)
        if refund is None:
            raise problems.resource_not_found("refund", refund_id)
        return problems.json_response(refund.to_dict())
