"""The routes of the dashboard's data: ``GET /v1/queues`` (depths, rates, daemons),
``/v1/dead_letters`` (list, replay, purge), ``GET /v1/payments/{id}/events`` and
``GET /v1/webhook_endpoints/{id}/health``; a thin adapter over
:class:`payflow.operations.Operations`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from payflow.errors import QueueUnavailable, ValidationError
from payflow.operations import DEAD_LETTERS_SHOWN, DeadLetterReplay, Operations
from payflow.web import problems
from payflow.web.body import read_json_object
from payflow.web.params import page_limit, query, reject_unknown

if TYPE_CHECKING:
    from payflow.web.context import WebContext

QUEUES_PATH: Final = "/v1/queues"
DEAD_PATH: Final = "/v1/dead_letters"
_REPLAY_FIELDS: Final = tuple(DeadLetterReplay.__annotations__)


def add_routes(app: web.Application, ctx: WebContext) -> None:
    h = _Handlers(ctx)
    app.router.add_get(QUEUES_PATH, h.overview)
    app.router.add_get(DEAD_PATH, h.dead_letters)
    app.router.add_delete(DEAD_PATH, h.purge)
    app.router.add_post(DEAD_PATH + "/replay", h.replay)
    app.router.add_get("/v1/payments/{payment_id}/events", h.payment_events)
    app.router.add_get("/v1/webhook_endpoints/{id}/health", h.endpoint_health)


class _Handlers:
    def __init__(self, ctx: WebContext) -> None:
        self._operations = ctx.operations

    @property
    def ops(self) -> Operations:
        if self._operations is None:
            raise QueueUnavailable("This server does not offer queue operations.")
        return self._operations

    async def overview(self, request: web.Request) -> web.Response:
        query(request)
        return problems.json_response(await self.ops.overview())

    async def dead_letters(self, request: web.Request) -> web.Response:
        """The newest entries first, ``limit`` 1-100 (:data:`DEAD_LETTERS_SHOWN`)."""
        params = query(request, "queue", "limit")
        limit = page_limit(request, default=DEAD_LETTERS_SHOWN)
        queue = self.ops.check_queue(params.get("queue"))
        return problems.json_response(await self.ops.dead_letters(queue, limit=limit))

    async def replay(self, request: web.Request) -> web.Response:
        """``{"queue": …, "id": …}`` replays one entry, ``{"queue": …, "all": true}`` all."""
        query(request)
        body = await read_json_object(request)
        reject_unknown(body, _REPLAY_FIELDS)
        queue = body.get("queue")
        if not isinstance(queue, str):
            raise ValidationError("queue must be a string.", param="queue",
                                  code="invalid_type" if "queue" in body else "missing")
        entry_id, every = body.get("id"), body.get("all", False)
        if entry_id is not None and not isinstance(entry_id, str):
            raise ValidationError("id must be a string.", param="id", code="invalid_type")
        if not isinstance(every, bool):
            raise ValidationError("all must be true or false.", param="all",
                                  code="invalid_type")
        if entry_id is None and not every:
            raise ValidationError('Give "id" (one entry) or "all": true.', param="id",
                                  code="missing")
        if entry_id is not None and every:
            raise ValidationError('Give "id" (one entry) or "all": true, not both.',
                                  param="all", code="id_and_all")
        return problems.json_response(
            await self.ops.replay(queue, None if every else [str(entry_id)]))

    async def purge(self, request: web.Request) -> web.Response:
        queue = self.ops.check_queue(query(request, "queue").get("queue"))
        return problems.json_response(await self.ops.purge(queue))

    async def payment_events(self, request: web.Request) -> web.Response:
        query(request)
        return problems.json_response(
            await self.ops.payment_events(request.match_info["payment_id"]))

    async def endpoint_health(self, request: web.Request) -> web.Response:
        query(request)
        return problems.json_response(await self.ops.endpoint_health(request.match_info["id"]))
