"""``/v1/events``: list and read events, their delivery attempts, and deliver one again; a thin
adapter over :class:`payflow.webhooks.admin.Webhooks`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from payflow.errors import ValidationError
from payflow.models import ALL_EVENT_TYPES
from payflow.web import problems
from payflow.web.body import read_json_object
from payflow.web.params import page_limit, query, reject_unknown
from payflow.webhooks.admin import EventRetry, EventRetryQueued

if TYPE_CHECKING:
    from payflow.web.context import WebContext

PATH: Final = "/v1/events"
_RETRY_FIELDS: Final = tuple(EventRetry.__annotations__)


def add_routes(app: web.Application, ctx: WebContext) -> None:
    h = _Handlers(ctx)
    app.router.add_get(PATH, h.list)
    app.router.add_get(PATH + "/{id}", h.retrieve)
    app.router.add_get(PATH + "/{id}/attempts", h.attempts)
    app.router.add_post(PATH + "/{id}/retry", h.retry)


class _Handlers:
    def __init__(self, ctx: WebContext) -> None:
        self.webhooks = ctx.webhooks

    async def list(self, request: web.Request) -> web.Response:
        params = query(request, "limit", "starting_after", "type")
        limit = page_limit(request)
        event_type = params.get("type")
        if event_type is not None and event_type not in ALL_EVENT_TYPES:
            raise ValidationError("type must be one of " + ", ".join(ALL_EVENT_TYPES) + ".",
                                  param="type", code="invalid_type", status=400)
        page = await self.webhooks.events(limit=limit + 1,
                                          starting_after=params.get("starting_after"),
                                          type=event_type)
        return problems.json_response({"object": "list",
                                       "data": [e.to_api_dict() for e in page[:limit]],
                                       "has_more": len(page) > limit})

    async def retrieve(self, request: web.Request) -> web.Response:
        query(request)
        event = await self.webhooks.event(request.match_info["id"])
        return problems.json_response(event.to_api_dict())

    async def attempts(self, request: web.Request) -> web.Response:
        query(request)
        attempts = await self.webhooks.attempts(request.match_info["id"])
        return problems.json_response({"object": "list",
                                       "data": [a.to_dict() for a in attempts],
                                       "has_more": False})

    async def retry(self, request: web.Request) -> web.Response:
        """Deliver the event again now, even after it was dead: to one endpoint
        (``{"endpoint_id": …}``) or to every endpoint subscribed to it."""
        query(request)
        endpoint_id = None
        if request.body_exists:
            body = await read_json_object(request)
            reject_unknown(body, _RETRY_FIELDS)
            value = body.get("endpoint_id")
            if value is not None and not isinstance(value, str):
                raise ValidationError("endpoint_id must be a string.", param="endpoint_id",
                                      code="invalid_type")
            endpoint_id = value
        event = await self.webhooks.retry(request.match_info["id"], endpoint_id)
        queued: EventRetryQueued = {"object": "retry", "event_id": event.id,
                                    "endpoint_id": endpoint_id, "queued": True}
        return problems.json_response(queued, status=202)
