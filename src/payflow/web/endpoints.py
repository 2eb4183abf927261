"""``/v1/webhook_endpoints``: create (the secret is shown once), list, read, update, delete,
rotate the secret, and recover what an endpoint missed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from payflow import metrics
from payflow.errors import ValidationError
from payflow.jobs import WebhookJob
from payflow.models import ALL_EVENT_TYPES, EndpointSecret, WebhookEndpoint, iso, now_iso
from payflow.web import problems
from payflow.web.params import parse_time, reject_unknown
from payflow.web.payments import ENQUEUE_ERRORS, read_json_object
from payflow.webhooks import endpoints as eps
from payflow.webhooks.signing import new_secret

if TYPE_CHECKING:
    from payflow.web.app import WebContext

log = structlog.get_logger("payflow.web")

PATH: Final = "/v1/webhook_endpoints"
EVENT_NAMES: Final = frozenset(ALL_EVENT_TYPES)
_FIELDS: Final = ("url", "enabled_events", "description", "disabled")
# The outcomes of a last attempt that recover replays ("retrying" ones are still scheduled).
RECOVERABLE: Final = frozenset({"dead", "refused", "disabled", "skipped"})


def add_routes(app: web.Application, ctx: WebContext) -> None:
    h = _Handlers(ctx)
    app.router.add_post(PATH, h.create)
    app.router.add_get(PATH, h.list)
    app.router.add_get(PATH + "/{id}", h.retrieve)
    app.router.add_patch(PATH + "/{id}", h.update)
    app.router.add_delete(PATH + "/{id}", h.delete)
    app.router.add_post(PATH + "/{id}/rotate_secret", h.rotate)
    app.router.add_post(PATH + "/{id}/recover", h.recover)


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and (port is None or port > 0) and len(url) <= 2048)


def _fields(body: dict[str, object], *, creating: bool) -> dict[str, Any]:
    reject_unknown(body, _FIELDS)
    out: dict[str, Any] = {}
    if "url" in body or creating:
        url = body.get("url")
        if not isinstance(url, str) or not _valid_url(url):
            raise ValidationError("url must be an http:// or https:// URL with a host (and a "
                                  "port from 1 to 65535, if any).", param="url",
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
        if not isinstance(text, str) or len(text) > 500:
            raise ValidationError("description must be a string of at most 500 characters.",
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
        self.ctx = ctx

    async def _endpoint(self, request: web.Request) -> WebhookEndpoint:
        endpoint_id = request.match_info["id"]
        endpoint = await self.ctx.store.get_endpoint(endpoint_id)
        if endpoint is None:
            raise problems.resource_not_found("webhook_endpoint", endpoint_id)
        return endpoint

    async def create(self, request: web.Request) -> web.Response:
        fields = _fields(await read_json_object(request), creating=True)
        secret = new_secret()
        endpoint = WebhookEndpoint(id=eps.new_endpoint_id(), secrets=(EndpointSecret(
            secret=secret),), **fields)
        await self.ctx.store.put_endpoint(endpoint)
        log.info("webhook.endpoint_created", endpoint=endpoint.id, url=endpoint.url)
        return problems.json_response({**endpoint.to_dict(), "secret": secret}, status=201,
                                      headers={"Location": f"{PATH}/{endpoint.id}"})

    async def list(self, request: web.Request) -> web.Response:
        data = [ep.to_dict() for ep in await self.ctx.store.list_endpoints()]
        return problems.json_response({"object": "list", "data": data, "has_more": False})

    async def retrieve(self, request: web.Request) -> web.Response:
        return problems.json_response((await self._endpoint(request)).to_dict())

    async def update(self, request: web.Request) -> web.Response:
        endpoint = await self._endpoint(request)
        fields = _fields(await read_json_object(request), creating=False)
        if fields.get("disabled") is False:  # re-enabled: a clean slate
            fields.update(disabled_reason=None, failing_since=None)
        elif fields.get("disabled") is True and not endpoint.disabled:
            fields["disabled_reason"] = "disabled through the API"
            metrics.ENDPOINTS_DISABLED.labels("api").inc()
        updated = dataclasses.replace(endpoint, updated_at=now_iso(), **fields)
        await self.ctx.store.put_endpoint(updated)
        log.info("webhook.endpoint_updated", endpoint=endpoint.id, fields=sorted(fields))
        return problems.json_response(updated.to_dict())

    async def delete(self, request: web.Request) -> web.Response:
        endpoint = await self._endpoint(request)
        await self.ctx.store.delete_endpoint(endpoint.id)
        log.info("webhook.endpoint_deleted", endpoint=endpoint.id)
        return problems.json_response({"id": endpoint.id, "object": "webhook_endpoint",
                                       "deleted": True})

    async def rotate(self, request: web.Request) -> web.Response:
        endpoint = await self._endpoint(request)
        rotated, secret = await eps.rotate_secret(self.ctx.store, endpoint,
                                                  grace_hours=self.ctx.rotation_grace_hours)
        previous = [s.expires_at for s in rotated.secrets[1:]]
        return problems.json_response({**rotated.to_dict(), "secret": secret,
                                       "previous_secrets_expire_at": previous})

    async def recover(self, request: web.Request) -> web.Response:
        endpoint = await self._endpoint(request)
        if endpoint.disabled:
            raise problems.conflict(f"The endpoint {endpoint.id} is disabled "
                                    f"({endpoint.disabled_reason}); enable it first with "
                                    f"PATCH {PATH}/{endpoint.id} {{\"disabled\": false}}.",
                                    code="endpoint_disabled")
        raw_since = request.query.get("since")
        since = (parse_time(raw_since, "since", status=422) if raw_since is not None
                 else iso(datetime.now(UTC) - timedelta(hours=24)))
        last: dict[str, str] = {}  # event id -> outcome of its latest attempt at this endpoint
        for attempt in await self.ctx.store.attempts_since(endpoint.id, since):
            last[attempt.event_id] = attempt.outcome
        missed = [event_id for event_id, outcome in last.items() if outcome in RECOVERABLE]
        queued = []
        for event_id in missed:
            event = await self.ctx.store.get_event(event_id)
            if event is None:
                continue
            job = WebhookJob(event_type=event.type, payment_id=event.payment_id,
                             event=event.to_dict(), endpoint=endpoint.id)
            await enqueue_webhook(self.ctx, job.encode())
            queued.append(event_id)
        log.info("webhook.endpoint_recovered", endpoint=endpoint.id, since=since,
                 requeued=len(queued))
        return problems.json_response({"object": "recovery", "endpoint_id": endpoint.id,
                                       "since": since, "requeued": len(queued),
                                       "event_ids": queued}, status=202)


async def enqueue_webhook(ctx: WebContext, raw: bytes) -> None:
    if ctx.enqueue_webhook is None:
        raise problems.queue_unavailable("Webhook jobs cannot be queued from this server.")
    try:
        await ctx.enqueue_webhook(raw)
    except ENQUEUE_ERRORS:
        raise problems.queue_unavailable("The webhook job could not be queued; retry shortly.") \
            from None
