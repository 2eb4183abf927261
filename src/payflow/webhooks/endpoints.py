"""Webhook endpoints over the store: seeding from payflow.toml, secrets and their rotation, and
the bookkeeping that disables an endpoint that is gone (410) or has failed for too long."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import structlog

from payflow import metrics
from payflow.config import EndpointConfig
from payflow.models import EndpointSecret, WebhookEndpoint, iso, now_iso, parse_iso
from payflow.store.base import Store
from payflow.store.front import StoreFront
from payflow.webhooks.signing import new_secret
from payflow.webhooks.ssrf import AddressPolicy, SSRFRefused, check_destination

log = structlog.get_logger("payflow.webhooks")


def config_endpoint_id(url: str) -> str:
    """A configured endpoint's id: stable across restarts and reorderings of the config."""
    return "ep_" + hashlib.sha256(url.encode()).hexdigest()[:16]


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(8)


def from_config(cfg: EndpointConfig) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=config_endpoint_id(cfg.url), url=cfg.url,
        secrets=(EndpointSecret(secret=cfg.secret),) if cfg.secret else (),
        enabled_events=cfg.enabled_events, description=cfg.description, source="config")


async def seed_endpoints(store: Store, configured: Iterable[EndpointConfig],
                         policy: AddressPolicy | None = None) -> None:
    """Put the configured endpoints into the store; one already there keeps its state
    (disabled or not, rotated secrets) but takes the configured events and description.

    They are the operator's, so none is refused here; but with ``policy``, one whose URL can
    only reach addresses the policy refuses (delivery would refuse every attempt) is logged
    as a warning. The checks run together, each lookup bounded by a short timeout."""
    configured = list(configured)
    for cfg in configured:
        endpoint = from_config(cfg)
        known = (await store.get_endpoints([endpoint.id])).get(endpoint.id)
        if known is not None:
            endpoint = dataclasses.replace(known, enabled_events=endpoint.enabled_events,
                                           description=endpoint.description)
        await store.put_endpoint(endpoint)
        if not endpoint.secrets:
            log.warning("webhook.endpoint_unsigned", endpoint=endpoint.id, url=endpoint.url,
                        detail="no secret configured: its webhooks carry no signature")
    if policy is not None:
        await asyncio.gather(*(_warn_if_refused(cfg.url, policy) for cfg in configured))


async def _warn_if_refused(url: str, policy: AddressPolicy) -> None:
    try:
        await check_destination(url, policy)
    except SSRFRefused as exc:
        log.warning("webhook.endpoint_refused", endpoint=config_endpoint_id(url), url=url,
                    reason=exc.reason, detail="every delivery to it will be refused")


async def rotate_secret(store: Store, endpoint: WebhookEndpoint, *,
                        grace_hours: float) -> tuple[WebhookEndpoint, str]:
    """A new current secret; the old ones keep signing for ``grace_hours``."""
    secret = new_secret()
    until = iso(datetime.now(UTC) + timedelta(hours=grace_hours))
    now = datetime.now(UTC)
    kept = tuple(
        dataclasses.replace(s, expires_at=s.expires_at or until) for s in endpoint.secrets
        if s.expires_at is None or parse_iso(s.expires_at) > now
    ) if grace_hours > 0 else ()
    rotated = dataclasses.replace(endpoint, secrets=(EndpointSecret(secret=secret), *kept),
                                  updated_at=now_iso())
    await store.put_endpoint(rotated)
    log.info("webhook.secret_rotated", endpoint=endpoint.id, old_secrets_valid_until=until)
    return rotated, secret


async def record_success(front: StoreFront, endpoint_id: str) -> None:
    endpoint = await front.get_endpoint(endpoint_id)
    if endpoint is not None and endpoint.failing_since is not None:
        await front.store.put_endpoint(dataclasses.replace(endpoint, failing_since=None))


async def record_failure(front: StoreFront, endpoint_id: str, *,
                         disable_after: timedelta) -> WebhookEndpoint | None:
    """Note a failed attempt; disable the endpoint once it has failed without a success for
    ``disable_after``. Returns the endpoint if this call disabled it."""
    endpoint = await front.get_endpoint(endpoint_id)
    if endpoint is None or endpoint.disabled:
        return None
    store = front.store
    if endpoint.failing_since is None:
        await store.put_endpoint(dataclasses.replace(endpoint, failing_since=now_iso()))
        return None
    failing_for = datetime.now(UTC) - parse_iso(endpoint.failing_since)
    if failing_for < disable_after:
        return None
    hours = failing_for.total_seconds() / 3600
    return await disable(store, endpoint, f"failing for {hours:.1f} h without a success",
                         cause="failing")


async def disable(store: Store, endpoint: WebhookEndpoint, reason: str, *,
                  cause: str) -> WebhookEndpoint:
    disabled = dataclasses.replace(endpoint, disabled=True, disabled_reason=reason,
                                   updated_at=now_iso())
    await store.put_endpoint(disabled)
    metrics.ENDPOINTS_DISABLED.labels(cause).inc()
    log.warning("webhook.endpoint_disabled", endpoint=endpoint.id, url=endpoint.url,
                reason=reason, detail="re-enable it with PATCH, then POST …/recover to "
                                      "replay what it missed")
    return disabled
