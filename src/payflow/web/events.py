"""``/v1/events``: list and read events, their delivery attempts, and re-deliver one now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from payflow.errors import ValidationError
from payflow.jobs import WebhookJob
from payflow.models import Event
from payflow.web import problems
from payflow.web.endpoints import enqueue_webhook
from payflow.web.params import page_limit, reject_unknown
from payflow.web.payments import read_json_object

if TYPE_CHECKING:
    from payflow.web.app import WebContext

PATH: Final = "/v1/events"


def add_routes(app: web.Application, ctx: WebContext) -> None:
    h = _Handlers(ctx)
    app.router.add_get(PATH, h.list)
    app.router.add_get(PATH + "/{id}", h.retrieve)
    app.router.add_get(PATH + "/{id}/attempts", h.attempts)
    app.router.add_post(PATH + "/{id}/retry", h.retry)


def event_dict(event: Event) -> dict[str, object]:
    return {"object": "event", **event.to_dict()}


class _Handlers:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    async def _event(self, request: web.Request) -> Event:
        event_id = request.match_info["id"]
        event = await self.ctx.store.get_event(event_id)
        if event is None:
            raise problems.resource_not_found("event", event_id)
        return event

    async def list(self, request: web.Request) -> web.Response:
        limit = page_limit(request)
        page = await self.ctx.store.list_events(limit=limit + 1,
                                                starting_after=request.query.get(
                                                    "starting_after"))
        return problems.json_response({"object": "list",
                                       "data": [event_dict(e) for e in page[:limit]],
                                       "has_more": len(page) > limit})

    async def retrieve(self, request: web.Request) -> web.Response:
        return problems.json_response(event_dict(await self._event(request)))

    async def attempts(self, request: web.Request) -> web.Response:
        event = await self._event(request)
        data = [a.to_dict() for a in await self.ctx.store.list_attempts(event.id)]
        return problems.json_response({"object": "list", "data": data, "has_more": False})

    async def retry(self, request: web.Request) -> web.Response:
        """Deliver the event again now, even after it was dead: to one endpoint
        (``{"endpoint_id": …}``) or to every endpoint subscribed to it."""
        event = await self._event(request)
        endpoint_id = None
        if request.can_read_body:
            body = await read_json_object(request)
            reject_unknown(body, ("endpoint_id",))
            value = body.get("endpoint_id")
            if value is not None and not isinstance(value, str):
                raise ValidationError("endpoint_id must be a string.", param="endpoint_id",
                                      code="invalid_type")
            endpoint_id = value
        if endpoint_id is not None:
            endpoint = await self.ctx.store.get_endpoint(endpoint_id)
            if endpoint is None:
                raise problems.resource_not_found("webhook_endpoint", endpoint_id)
            if endpoint.disabled:
                raise problems.conflict(f"The endpoint {endpoint_id} is disabled; enable it "
                                        "first.", code="endpoint_disabled")
        job = WebhookJob(event_type=event.type, payment_id=event.payment_id,
                         event=event.to_dict(), endpoint=endpoint_id)
        await enqueue_webhook(self.ctx, job.encode())
        return problems.json_response({"object": "retry", "event_id": event.id,
                                       "endpoint_id": endpoint_id, "queued": True},
                                      status=202)
