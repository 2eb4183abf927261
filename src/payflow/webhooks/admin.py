"""The rules of the webhooks API, for every caller: endpoints (create, update, delete, rotate the
secret, recover what one missed) and events (read, attempts, deliver again).

Raises :class:`ValidationError` (``url_refused``: an endpoint URL that can only reach
addresses the SSRF policy refuses), :class:`NotFound`, :class:`Conflict`,
:class:`QueueUnavailable`; never a Redis or database error.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Final, Literal, NotRequired, TypedDict

import structlog

from payflow import metrics
from payflow.errors import Conflict, NotFound, QueueUnavailable, ValidationError
from payflow.jobs import WebhookJob
from payflow.models import (
    ALL_EVENT_TYPES,
    MAX_ENDPOINT_DESCRIPTION,
    DeliveryAttempt,
    EndpointSecret,
    Event,
    WebhookEndpoint,
    WebhookEndpointJSON,
    now_iso,
)
from payflow.payments.intake import Push, push_or_refuse
from payflow.schema import Meta
from payflow.store.base import Store
from payflow.webhooks import endpoints as eps
from payflow.webhooks.signing import new_secret
from payflow.webhooks.ssrf import (
    AddressPolicy,
    HostResolver,
    SSRFRefused,
    check_destination,
    system_resolve,
)

log = structlog.get_logger("payflow.webhooks")

# An event needs recovering at an endpoint unless its latest attempt there succeeded or is
# still scheduled.
SETTLED: Final = frozenset({"succeeded", "retrying"})
RECOVER_LIMIT: Final = 10_000  # events looked at per recovery
RECOVER_DEFAULT_HOURS: Final = 24  # recover looks back this far when no since is given
_PAGE: Final = 500


# --- the bodies of the webhooks API (the OpenAPI components are generated from them) ---------

EndpointUrl = Annotated[str, Meta("An http:// or https:// URL with a host.",
                                  pattern="^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+")]
EnabledEvents = Annotated[list[Annotated[str, Meta(enum=("*", *sorted(ALL_EVENT_TYPES)))]],
                          Meta("The event types to deliver; '*' for all.", minItems=1)]
EndpointDescription = Annotated[str, Meta(maxLength=MAX_ENDPOINT_DESCRIPTION)]
EndpointDisabled = Annotated[bool, Meta("A disabled endpoint gets no deliveries. Enabling it "
                                        "clears disabled_reason and failing_since.")]


class WebhookEndpointCreate(TypedDict):
    url: EndpointUrl
    enabled_events: NotRequired[Annotated[EnabledEvents, Meta(
        "The event types to deliver; '*' for all. Default: ['*'].")]]
    description: NotRequired[EndpointDescription]
    disabled: NotRequired[EndpointDisabled]


class WebhookEndpointUpdate(TypedDict, total=False):
    url: EndpointUrl
    enabled_events: EnabledEvents
    description: EndpointDescription
    disabled: EndpointDisabled


class EventRetry(TypedDict):
    endpoint_id: NotRequired[Annotated[str | None, Meta(
        "Deliver to this endpoint only; absent or null: to every subscribed endpoint.")]]


Secret = Annotated[str, Meta("The signing secret (whsec_...): shown only here, keep it.",
                             pattern="^whsec_")]


class WebhookEndpointCreated(WebhookEndpointJSON):
    """The new endpoint with its signing secret."""

    secret: Secret


class WebhookEndpointRotated(WebhookEndpointJSON):
    """The endpoint with its new current secret."""

    secret: Secret
    previous_secrets_expire_at: Annotated[
        list[Annotated[str, Meta("Until when an old secret signs too.", format="date-time")]],
        Meta("The secrets still signing during the rotation grace.")]


class WebhookEndpointDeleted(TypedDict):
    id: str
    object: Literal["webhook_endpoint"]
    deleted: Literal[True]


class Recovery(TypedDict):
    """The events whose last attempt at the endpoint was dead, refused, disabled or skipped
    since `since`, queued again."""

    object: Literal["recovery"]
    endpoint_id: str
    since: Annotated[str, Meta("The since parameter as given (default: "
                               f"{RECOVER_DEFAULT_HOURS} hours ago).")]
    requeued: Annotated[int, Meta(minimum=0)]
    event_ids: list[str]


class EventRetryQueued(TypedDict):
    object: Literal["retry"]
    event_id: str
    endpoint_id: str | None
    queued: Literal[True]


class Webhooks:
    def __init__(self, store: Store, *, push_webhook: Push | None,
                 rotation_grace_hours: float, policy: AddressPolicy | None = None,
                 resolve: HostResolver = system_resolve) -> None:
        """``policy``: the delivery's address policy, which endpoint URLs are checked
        against when created or changed (``None``: not checked); ``resolve``: how host names
        are looked up for that check (tests give a stub)."""
        self.store = store
        self.push_webhook = push_webhook
        self.rotation_grace_hours = rotation_grace_hours
        self.policy = policy
        self.resolve = resolve

    # --- endpoints -----------------------------------------------------------------------

    async def endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        found = await self.store.get_endpoints([endpoint_id])
        if endpoint_id not in found:
            raise NotFound("webhook_endpoint", endpoint_id)
        return found[endpoint_id]

    async def endpoints(self) -> list[WebhookEndpoint]:
        return await self.store.list_endpoints()

    async def create_endpoint(self, fields: dict[str, Any]) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its signing secret (shown once)."""
        await self._check_url(fields["url"])
        secret = new_secret()
        endpoint = WebhookEndpoint(id=eps.new_endpoint_id(),
                                   secrets=(EndpointSecret(secret=secret),), **fields)
        await self.store.put_endpoint(endpoint)
        log.info("webhook.endpoint_created", endpoint=endpoint.id, url=endpoint.url)
        return endpoint, secret

    async def update_endpoint(self, endpoint_id: str, fields: dict[str, Any]) -> WebhookEndpoint:
        endpoint = await self.endpoint(endpoint_id)
        if "url" in fields:
            await self._check_url(fields["url"])
        if fields.get("disabled") is False:  # re-enabled: a clean slate
            fields = {**fields, "disabled_reason": None, "failing_since": None}
        elif fields.get("disabled") is True and not endpoint.disabled:
            fields = {**fields, "disabled_reason": "disabled through the API"}
            metrics.ENDPOINTS_DISABLED.labels("api").inc()
        updated = dataclasses.replace(endpoint, updated_at=now_iso(), **fields)
        await self.store.put_endpoint(updated)
        log.info("webhook.endpoint_updated", endpoint=endpoint.id, fields=sorted(fields))
        return updated

    async def _check_url(self, url: str) -> None:
        """Refuse a URL whose host can only reach addresses the policy refuses: delivery
        would refuse every attempt."""
        if self.policy is None:
            return
        try:
            await check_destination(url, self.policy, resolve=self.resolve)
        except SSRFRefused as exc:
            log.info("webhook.endpoint_url_refused", url=url, reason=exc.reason)
            raise ValidationError(f"url is refused: {exc.reason}.", param="url",
                                  code="url_refused") from exc

    async def delete_endpoint(self, endpoint_id: str) -> None:
        if not await self.store.delete_endpoint(endpoint_id):
            raise NotFound("webhook_endpoint", endpoint_id)
        log.info("webhook.endpoint_deleted", endpoint=endpoint_id)

    async def rotate_secret(self, endpoint_id: str) -> tuple[WebhookEndpoint, str]:
        endpoint = await self.endpoint(endpoint_id)
        return await eps.rotate_secret(self.store, endpoint,
                                       grace_hours=self.rotation_grace_hours)

    async def recover(self, endpoint_id: str, since: str) -> list[str]:
        """Queue again, for this endpoint, every event since ``since`` it subscribes to whose
        latest attempt there did not succeed and is not scheduled: dead, refused, skipped
        while disabled, or never tried (the event came before the endpoint existed, or when
        no endpoint subscribed). Returns the event ids queued."""
        endpoint = await self.endpoint(endpoint_id)
        if endpoint.disabled:
            raise Conflict(f"The endpoint {endpoint.id} is disabled "
                           f"({endpoint.disabled_reason}); enable it first with "
                           f'PATCH /v1/webhook_endpoints/{endpoint.id} {{"disabled": false}}.',
                           code="endpoint_disabled")
        last: dict[str, str] = {}  # event id -> outcome of its latest attempt here
        for attempt in await self.store.attempts_since(endpoint.id, since):
            last[attempt.event_id] = attempt.outcome
        missed: list[Event] = []
        cursor: str | None = None
        seen = 0
        while seen < RECOVER_LIMIT:
            page = await self.store.list_events(limit=_PAGE, starting_after=cursor,
                                                created_gte=since)
            missed += [e for e in page if endpoint.subscribed(e.type)
                       and last.get(e.id) not in SETTLED]
            seen += len(page)
            if len(page) < _PAGE:
                break
            cursor = page[-1].id
        for event in reversed(missed):  # oldest first
            await self._push(WebhookJob.for_event(event, endpoint=endpoint.id))
        log.info("webhook.endpoint_recovered", endpoint=endpoint.id, since=since,
                 requeued=len(missed))
        return [e.id for e in reversed(missed)]

    # --- events --------------------------------------------------------------------------

    async def event(self, event_id: str) -> Event:
        found = await self.store.get_events([event_id])
        if event_id not in found:
            raise NotFound("event", event_id)
        return found[event_id]

    async def events(self, *, limit: int, starting_after: str | None,
                     type: str | None) -> list[Event]:
        return await self.store.list_events(limit=limit, starting_after=starting_after,
                                            type=type)

    async def attempts(self, event_id: str) -> list[DeliveryAttempt]:
        event = await self.event(event_id)
        return await self.store.list_attempts(event.id)

    async def retry(self, event_id: str, endpoint_id: str | None) -> Event:
        """Deliver the event again now, even after it was dead: to one endpoint, or to every
        endpoint subscribed to it."""
        event = await self.event(event_id)
        if endpoint_id is not None:
            endpoint = await self.endpoint(endpoint_id)
            if endpoint.disabled:
                raise Conflict(f"The endpoint {endpoint_id} is disabled; enable it first.",
                               code="endpoint_disabled")
        await self._push(WebhookJob.for_event(event, endpoint=endpoint_id))
        return event

    async def _push(self, job: WebhookJob) -> None:
        if self.push_webhook is None:
            raise QueueUnavailable("Webhook jobs cannot be queued from this server.")
        await push_or_refuse(self.push_webhook, job.encode(),
                             "The webhook job could not be queued; retry shortly.")
