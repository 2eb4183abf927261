"""``POST /v1/payments/{id}/refunds``, ``GET /v1/payments/{id}/refunds`` and
``GET /v1/refunds/{id}``: a thin adapter over :class:`payflow.payments.intake.Payments`.

A refund is accepted (202, ``pending``) once its amount is reserved and its job is on the
payments queue; a consumer then takes it to ``succeeded`` or ``failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from payflow.errors import ValidationError
from payflow.payments.validation import MIN_REFUND_AMOUNT, RefundCreate
from payflow.web import problems
from payflow.web.body import read_json_object
from payflow.web.params import query, reject_unknown
from payflow.web.paths import PAYMENTS as PAYMENTS_PATH

if TYPE_CHECKING:
    from payflow.web.context import WebContext

REFUNDS_PATH: Final = "/v1/refunds"
_FIELDS: Final = tuple(RefundCreate.__annotations__)


def add_routes(app: web.Application, ctx: WebContext) -> None:
    h = _Handlers(ctx)
    app.router.add_post(PAYMENTS_PATH + "/{payment_id}/refunds", h.create)
    app.router.add_get(PAYMENTS_PATH + "/{payment_id}/refunds", h.list)
    app.router.add_get(REFUNDS_PATH + "/{refund_id}", h.retrieve)


class _Handlers:
    def __init__(self, ctx: WebContext) -> None:
        self.payments = ctx.payments

    async def create(self, request: web.Request) -> web.Response:
        query(request)
        body = await read_json_object(request) if request.body_exists else {}
        reject_unknown(body, _FIELDS)
        amount = body.get("amount")
        if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool)
                                   or amount < MIN_REFUND_AMOUNT):
            raise ValidationError("amount must be a positive integer in minor units.",
                                  param="amount", code="invalid_amount")
        refund = await self.payments.refund(request.match_info["payment_id"], amount)
        return problems.json_response(refund.to_dict(), status=202,
                                      headers={"Location": f"{REFUNDS_PATH}/{refund.id}"})

    async def list(self, request: web.Request) -> web.Response:
        query(request)
        refunds = await self.payments.refunds_of(request.match_info["payment_id"])
        return problems.json_response({"object": "list", "data": [r.to_dict() for r in refunds],
                                       "has_more": False})

    async def retrieve(self, request: web.Request) -> web.Response:
        query(request)
        refund = await self.payments.get_refund(request.match_info["refund_id"])
        return problems.json_response(refund.to_dict())
