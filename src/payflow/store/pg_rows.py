"""Rows of the PostgreSQL store to models and back (no I/O; see migrations/0001_initial.sql).

JSON columns travel as text both ways (asyncpg's default for ``json``), parsed and written with
orjson here. ``*_columns`` turn a batch of models into one array per column, the arguments of
an ``unnest($1::text[], …)`` insert or update.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any

import orjson

from payflow.models import (
    DeliveryAttempt,
    EndpointSecret,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
    iso,
    parse_iso,
)
from payflow.store.sealing import Sealer, missing_key

Row = Any  # an asyncpg.Record: row["column"]

PAYMENT = ("id, method, amount, currency, method_details, status, metadata, created_at, "
           "updated_at, failure_code, failure_message, sequence, amount_refunded")
REFUND = ("id, payment_id, amount, currency, status, failure_code, failure_message, created_at, "
          "updated_at")
EVENT = "id, type, timestamp, data"
ENDPOINT = ("id, url, secrets, enabled_events, disabled, disabled_reason, description, source, "
            "created_at, updated_at, failing_since")
ATTEMPT = ("id, event_id, endpoint_id, attempt, outcome, at, status, error, latency_ms, "
           "response_body, next_retry_at")


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def prefixed(columns: str, alias: str) -> str:
    """``p.id, p.method, …``."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def payment(row: Row, prefix: str = "") -> Payment:
    return Payment(
        id=row[prefix + "id"], method=row[prefix + "method"], amount=row[prefix + "amount"],
        currency=row[prefix + "currency"],
        method_details=orjson.loads(row[prefix + "method_details"]),
        status=PaymentStatus(row[prefix + "status"]),
        metadata=orjson.loads(row[prefix + "metadata"]),
        created_at=row[prefix + "created_at"], updated_at=row[prefix + "updated_at"],
        failure_code=row[prefix + "failure_code"],
        failure_message=row[prefix + "failure_message"],
        sequence=row[prefix + "sequence"], amount_refunded=row[prefix + "amount_refunded"])


def payment_columns(payments: Sequence[Payment]) -> list[list[Any]]:
    """In the order of :data:`PAYMENT`."""
    return [[p.id for p in payments], [p.method for p in payments],
            [p.amount for p in payments], [p.currency for p in payments],
            [dumps(p.method_details) for p in payments], [p.status.value for p in payments],
            [dumps(p.metadata) for p in payments], [p.created_at for p in payments],
            [p.updated_at for p in payments], [p.failure_code for p in payments],
            [p.failure_message for p in payments], [p.sequence for p in payments],
            [p.amount_refunded for p in payments]]


def refund(row: Row) -> Refund:
    return Refund(id=row["id"], payment_id=row["payment_id"], amount=row["amount"],
                  currency=row["currency"], status=RefundStatus(row["status"]),
                  failure_code=row["failure_code"], failure_message=row["failure_message"],
                  created_at=row["created_at"], updated_at=row["updated_at"])


def event(row: Row) -> Event:
    return Event(id=row["id"], type=row["type"], timestamp=row["timestamp"],
                 data=orjson.loads(row["data"]))


def event_columns(events: Sequence[Event]) -> list[list[str]]:
    """In the order of :data:`EVENT`."""
    return [[e.id for e in events], [e.type for e in events], [e.timestamp for e in events],
            [dumps(e.data) for e in events]]


def endpoint(row: Row, sealer: Sealer | None) -> WebhookEndpoint:
    endpoint_id: str = row["id"]
    secrets: list[EndpointSecret] = []
    for item in orjson.loads(row["secrets"]):
        if "sealed" in item:
            if sealer is None:
                raise missing_key(endpoint_id)
            value = sealer.open(item["sealed"], endpoint_id)
        else:
            value = item["secret"]
        secrets.append(EndpointSecret(secret=value, expires_at=item.get("expires_at")))
    return WebhookEndpoint(
        id=endpoint_id, url=row["url"], secrets=tuple(secrets),
        enabled_events=tuple(row["enabled_events"]), disabled=row["disabled"],
        disabled_reason=row["disabled_reason"], description=row["description"],
        source=row["source"], created_at=row["created_at"], updated_at=row["updated_at"],
        failing_since=row["failing_since"])


def endpoint_values(endpoint: WebhookEndpoint, sealer: Sealer | None) -> list[Any]:
    """In the order of :data:`ENDPOINT`; each secret sealed when there is a key."""
    key = "secret" if sealer is None else "sealed"
    secrets = [{key: s.secret if sealer is None else sealer.seal(s.secret, endpoint.id),
                "expires_at": s.expires_at} for s in endpoint.secrets]
    return [endpoint.id, endpoint.url, dumps(secrets), list(endpoint.enabled_events),
            endpoint.disabled, endpoint.disabled_reason, endpoint.description, endpoint.source,
            endpoint.created_at, endpoint.updated_at, endpoint.failing_since]


def attempt(row: Row) -> DeliveryAttempt:
    return DeliveryAttempt(
        id=row["id"], event_id=row["event_id"], endpoint_id=row["endpoint_id"],
        attempt=row["attempt"], outcome=row["outcome"], at=row["at"], status=row["status"],
        error=row["error"], latency_ms=row["latency_ms"], response_body=row["response_body"],
        next_retry_at=row["next_retry_at"])


def attempt_columns(attempts: Sequence[DeliveryAttempt]) -> list[list[Any]]:
    """In the order of :data:`ATTEMPT`."""
    return [[getattr(a, name.strip()) for a in attempts] for name in ATTEMPT.split(",")]


def time_bound(value: str, *, up: bool) -> str:
    """``value`` (any ISO-8601 time with a zone) in the stored format, so that text comparison
    with the stored millisecond times is exact: rounded up to the next millisecond (``up``:
    for ``>=`` and ``<``) or down (for ``<=``) when it has a finer part."""
    moment = parse_iso(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    finer = moment.microsecond % 1000
    if finer and up:
        moment += timedelta(microseconds=1000 - finer)
    return iso(moment)
