"""``/v1/payments``: create, list, read and cancel; a thin adapter over
:class:`payflow.payments.intake.Payments`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web

from payflow import tracing
from payflow.errors import ValidationError
from payflow.models import PaymentStatus
from payflow.payments.validation import validate_payment_request
from payflow.web import paths, problems
from payflow.web.body import read_json_object
from payflow.web.idempotency import REPLAYED_HEADER
from payflow.web.params import page_limit, query, time_param

if TYPE_CHECKING:
    from payflow.web.context import WebContext

PAYMENTS_PATH: Final = paths.PAYMENTS
LIST_PARAMS: Final = ("limit", "starting_after", "status", "created[gte]", "created[lte]")


def add_routes(app: web.Application, ctx: WebContext) -> None:
    handlers = _PaymentHandlers(ctx)
    app.router.add_post(PAYMENTS_PATH,
                        _traced(handlers.create) if tracing.ON else handlers.create)
    app.router.add_get(PAYMENTS_PATH, handlers.list)
    app.router.add_get(PAYMENTS_PATH + "/{payment_id}", handlers.retrieve)
    app.router.add_post(PAYMENTS_PATH + "/{payment_id}/cancel", handlers.cancel)


class _PaymentHandlers:
    def __init__(self, ctx: WebContext) -> None:
        self._payments = ctx.payments
        self._idempotency = ctx.idempotency

    async def create(self, request: web.Request) -> web.Response:
        query(request)
        req = validate_payment_request(await read_json_object(request))
        binding = await self._idempotency.binding(request) if self._idempotency else None
        payment, replayed = await self._payments.create(req, idempotency=binding)
        headers = {"Location": f"{PAYMENTS_PATH}/{payment.id}"}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return problems.json_response(payment.to_dict(), status=202, headers=headers)

    async def list(self, request: web.Request) -> web.Response:
        """Newest first, ``limit`` 1-100 (10), cursor ``starting_after``, filters ``status``,
        ``created[gte]`` and ``created[lte]`` (unix seconds or ISO-8601)."""
        params = query(request, *LIST_PARAMS)
        limit = page_limit(request)
        status = None
        if (raw := params.get("status")) is not None:
            try:
                status = PaymentStatus(raw)
            except ValueError:
                raise ValidationError(
                    "status must be one of " + ", ".join(s.value for s in PaymentStatus) + ".",
                    param="status", code="invalid_status", status=400) from None
        page = await self._payments.page(
            limit=limit + 1, starting_after=params.get("starting_after"), status=status,
            created_gte=time_param(request, "created[gte]"),
            created_lte=time_param(request, "created[lte]"))
        return problems.json_response({"object": "list", "url": PAYMENTS_PATH,
                                       "data": [p.to_dict() for p in page[:limit]],
                                       "has_more": len(page) > limit})

    async def cancel(self, request: web.Request) -> web.Response:
        query(request)
        payment = await self._payments.cancel(request.match_info["payment_id"])
        return problems.json_response(payment.to_dict())

    async def retrieve(self, request: web.Request) -> web.Response:
        query(request)
        payment = await self._payments.get(request.match_info["payment_id"])
        return problems.json_response(payment.to_dict())


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _traced(handler: Handler) -> Handler:
    """``handler`` in a server span (with tracing on when the app is built), the child of the
    request's ``traceparent``; the payment's job carries the span's context on."""
    async def traced(request: web.Request) -> web.Response:
        with tracing.server_span(f"POST {PAYMENTS_PATH}", request.headers, {
                "http.request.method": "POST", "http.route": PAYMENTS_PATH}) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            return response

    return traced
