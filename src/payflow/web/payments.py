"""``POST /v1/payments`` and ``GET /v1/payments/{id}``: a thin adapter over validation, the
store and the payments queue.

A payment is accepted (202) only once its job is on the queue: when the enqueue fails the
payment is deleted again and the client gets 503 ``queue_unavailable`` with ``Retry-After``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from payflow.errors import ValidationError
from payflow.jobs import PaymentJob
from payflow.models import Payment, PaymentStatus, new_payment_id
from payflow.validation import validate_payment_request
from payflow.web import problems
from payflow.web.params import page_limit, time_param

if TYPE_CHECKING:
    from payflow.web.app import WebContext

log = structlog.get_logger("payflow.web")

PAYMENTS_PATH: Final = "/v1/payments"
# What a failing enqueue may raise: Redis errors, and socket errors/timeouts that slip past them.
ENQUEUE_ERRORS: Final = (RedisError, OSError, TimeoutError)


def add_routes(app: web.Application, ctx: WebContext) -> None:
    handlers = _PaymentHandlers(ctx)
    app.router.add_post(PAYMENTS_PATH, handlers.create)
    app.router.add_get(PAYMENTS_PATH, handlers.list)
    app.router.add_get(PAYMENTS_PATH + "/{payment_id}", handlers.retrieve)
    app.router.add_post(PAYMENTS_PATH + "/{payment_id}/cancel", handlers.cancel)


class _PaymentHandlers:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        req = validate_payment_request(body)
        store = self._ctx.store
        payment = await store.create_payment(Payment(
            id=new_payment_id(),
            method=req.method,
            amount=req.amount,
            currency=req.currency,
            method_details=req.method_details,
            metadata=req.metadata,
            status=PaymentStatus.PENDING,
        ))
        snapshot = payment.to_dict()
        raw = PaymentJob(payment_id=payment.id, method=payment.method, payment=snapshot).encode()
        if len(raw) > self._ctx.max_job_bytes:  # its consumer would dead-letter it
            await self._forget(payment.id)
            raise problems.job_too_large(len(raw), self._ctx.max_job_bytes)
        try:
            await self._ctx.enqueue_payment(raw)
        except Exception as exc:
            # Never keep a payment that no job will process: the client is told it failed.
            await self._forget(payment.id)
            if not isinstance(exc, ENQUEUE_ERRORS):
                raise  # a bug, not an outage: the middleware logs it and answers 500
            log.warning("payment.enqueue_failed", payment_id=payment.id,
                        error_type=type(exc).__name__, error=str(exc))
            raise problems.queue_unavailable() from None
        log.info("payment.created", payment_id=payment.id, amount=payment.amount,
                 currency=payment.currency, method=payment.method)
        return problems.json_response(
            snapshot, status=202, headers={"Location": f"{PAYMENTS_PATH}/{payment.id}"}
        )

    async def list(self, request: web.Request) -> web.Response:
        """Newest first, ``limit`` 1-100 (10), cursor ``starting_after``, filters ``status``,
        ``created[gte]`` and ``created[lte]`` (unix seconds or ISO-8601)."""
        limit = page_limit(request)
        status = None
        if (raw := request.query.get("status")) is not None:
            try:
                status = PaymentStatus(raw)
            except ValueError:
                raise ValidationError(
                    "status must be one of " + ", ".join(s.value for s in PaymentStatus) + ".",
                    param="status", code="invalid_status", status=400) from None
        page = await self._ctx.store.list_payments(
            limit=limit + 1, starting_after=request.query.get("starting_after"), status=status,
            created_gte=time_param(request, "created[gte]"),
            created_lte=time_param(request, "created[lte]"))
        return problems.json_response({"object": "list", "url": PAYMENTS_PATH,
                                       "data": [p.to_dict() for p in page[:limit]],
                                       "has_more": len(page) > limit})

    async def cancel(self, request: web.Request) -> web.Response:
        """``pending → canceled``. The payment's job, still queued, then only queues the
        ``payment.canceled`` event: a consumer never processes a canceled payment."""
        payment_id = request.match_info["payment_id"]
        canceled = await self._ctx.store.transition(payment_id, (PaymentStatus.PENDING,),
                                                    PaymentStatus.CANCELED)
        if canceled is None:
            current = await self._ctx.store.get_payment(payment_id)
            if current is None:
                raise problems.payment_not_found(payment_id)
            raise problems.conflict(f"Only a pending payment can be canceled; this one is "
                                    f"{current.status.value}.", code="payment_not_cancelable",
                                    status=current.status.value)
        log.info("payment.canceled", payment_id=payment_id)
        return problems.json_response(canceled.to_dict())

    async def retrieve(self, request: web.Request) -> web.Response:
        payment_id = request.match_info["payment_id"]
        payment = await self._ctx.store.get_payment(payment_id)
        if payment is None:
            raise problems.payment_not_found(payment_id)
        return problems.json_response(payment.to_dict())

    async def _forget(self, payment_id: str) -> None:
        """Delete a payment whose job could not be queued (best effort: the answer is an
        error either way)."""
        try:
            await self._ctx.store.delete_payment(payment_id)
        except Exception:
            log.exception("payment.cleanup_failed", payment_id=payment_id)


async def read_json_object(request: web.Request) -> dict[str, object]:
    """The request body as a JSON object, or a 400 problem (413 comes from ``read``)."""
    raw = await request.read()
    if not raw.strip():
        raise problems.invalid_json("The request body is empty; expected a JSON object.")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise problems.invalid_json(
            f"The request body is not valid JSON: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})."
        ) from None
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError, NaN/Infinity, over-long integers, nesting too deep.
        raise problems.invalid_json(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise problems.invalid_body(
            f"The request body must be a JSON object, not {_json_type(data)}."
        )
    return data


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in JSON")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
