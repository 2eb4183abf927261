"""``/v1/webhook_endpoints``: create (the secret is shown once), list, read, update, delete,
rotate the secret, and recover what an endpoint missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web

from payflow import urls
from payflow.errors import ValidationError
from payflow.models import ALL_EVENT_TYPES, MAX_ENDPOINT_DESCRIPTION, iso
from payflow.web import problems
from payflow.web.body import read_json_object
from payflow.web.params import parse_time, query, reject_unknown
from payflow.webhooks import admin

if TYPE_CHECKING:
    from payflow.web.context import WebContext

log = structlog.get_logger("payflow.web")

PATH: Final = "/v1/webhook_endpoints"
EVENT_NAMES: Final = frozenset(ALL_EVENT_TYPES)
_CREATE_FIELDS: Final = tuple(admin.WebhookEndpointCreate.__annotations__)
_UPDATE_FIELDS: Final = tuple(admin.WebhookEndpointUpdate.__annotations__)


def add_routes(app: web.Application, ctx: WebContext) -> None:
    h = _Handlers(ctx)
    app.router.add_post(PATH, h.create)
    app.router.add_get(PATH, h.list)
    app.router.add_get(PATH + "/{id}", h.retrieve)
    app.router.add_patch(PATH + "/{id}", h.update)
    app.router.add_delete(PATH + "/{id}", h.delete)
    app.router.add_post(PATH + "/{id}/rotate_secret", h.rotate)
    app.router.add_post(PATH + "/{id}/recover", h.recover)


def _fields(body: dict[str, object], *, creating: bool) -> dict[str, Any]:
    reject_unknown(body, _CREATE_FIELDS if creating else _UPDATE_FIELDS)
    out: dict[str, Any] = {}
    if "url" in body or creating:
        url = body.get("url")
        if not isinstance(url, str) or not urls.is_endpoint_url(url):
            raise ValidationError(f"url must be {urls.EXPECTED}.", param="url",
                                  code="invalid_url")
        out["url"] = url
    if "enabled_events" in body:
        events = body["enabled_events"]
        if not isinstance(events, list) or not events or not all(
                isinstance(e, str) and (e == "*" or e in EVENT_NAMES) for e in events):
            raise ValidationError(
                "enabled_events must be a non-empty list of '*' or event types: "
                + ", ".join(sorted(EVENT_NAMES)) + ".", param="enabled_events",
                code="invalid_events")
        out["enabled_events"] = tuple(dict.fromkeys(events))
    if "description" in body:
        text = body["description"]
        if not isinstance(text, str) or len(text) > MAX_ENDPOINT_DESCRIPTION:
            raise ValidationError(f"description must be a string of at most "
                                  f"{MAX_ENDPOINT_DESCRIPTION} characters.",
                                  param="description", code="invalid_description")
        out["description"] = text
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise ValidationError("disabled must be true or false.", param="disabled",
                                  code="invalid_type")
        out["disabled"] = body["disabled"]
    return out


class _Handlers:
    def __init__(self, ctx: WebContext) -> None:
        self.webhooks = ctx.webhooks

    async def create(self, request: web.Request) -> web.Response:
        query(request)
        fields = _fields(await read_json_object(request), creating=True)
        endpoint, secret = await self.webhooks.create_endpoint(fields)
        created: admin.WebhookEndpointCreated = {**endpoint.to_dict(), "secret": secret}
        return problems.json_response(created, status=201,
                                      headers={"Location": f"{PATH}/{endpoint.id}"})

    async def list(self, request: web.Request) -> web.Response:
        query(request)
        data = [ep.to_dict() for ep in await self.webhooks.endpoints()]
        return problems.json_response({"object": "list", "data": data, "has_more": False})

    async def retrieve(self, request: web.Request) -> web.Response:
        query(request)
        return problems.json_response(
            (await self.webhooks.endpoint(request.match_info["id"])).to_dict())

    async def update(self, request: web.Request) -> web.Response:
        query(request)
        endpoint_id = request.match_info["id"]
        await self.webhooks.endpoint(endpoint_id)  # 404 before a 4xx about the body
        fields = _fields(await read_json_object(request), creating=False)
        updated = await self.webhooks.update_endpoint(endpoint_id, fields)
        return problems.json_response(updated.to_dict())

    async def delete(self, request: web.Request) -> web.Response:
        query(request)
        endpoint_id = request.match_info["id"]
        await self.webhooks.delete_endpoint(endpoint_id)
        deleted: admin.WebhookEndpointDeleted = {"id": endpoint_id, "object": "webhook_endpoint",
                                                 "deleted": True}
        return problems.json_response(deleted)

    async def rotate(self, request: web.Request) -> web.Response:
        query(request)
        rotated, secret = await self.webhooks.rotate_secret(request.match_info["id"])
        previous = [s.expires_at for s in rotated.secrets[1:]]
        return problems.json_response({**rotated.to_dict(), "secret": secret,
                                       "previous_secrets_expire_at": previous})

    async def recover(self, request: web.Request) -> web.Response:
        raw_since = query(request, "since").get("since")
        endpoint_id = request.match_info["id"]
        since = (parse_time(raw_since, "since", status=422) if raw_since is not None
                 else iso(datetime.now(UTC) - timedelta(hours=admin.RECOVER_DEFAULT_HOURS)))
        queued = await self.webhooks.recover(endpoint_id, since)
        recovery: admin.Recovery = {"object": "recovery", "endpoint_id": endpoint_id,
                                    "since": since, "requeued": len(queued), "event_ids": queued}
        return problems.json_response(recovery, status=202)
