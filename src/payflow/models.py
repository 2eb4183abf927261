"""Payments and events: plain data, no I/O.

A payment moves ``pending → processing → succeeded | failed`` or ``pending → canceled``;
every transition bumps ``sequence`` so that a webhook receiver can drop stale states.
An event's id is derived from the payment and the transition, so the same transition always
yields the same event id, even when it is re-derived after a crash that lost the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Never, TypedDict

from payflow.schema import Meta, SchemaOf

METHODS = ("upi", "card", "netbanking", "wallet")


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    PARTIALLY_REFUNDED = "partially_refunded"  # after succeeded
    REFUNDED = "refunded"

    @property
    def terminal(self) -> bool:
        """Processing is over (refunds may still change a succeeded payment)."""
        return self not in (PaymentStatus.PENDING, PaymentStatus.PROCESSING)


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# The seed's event names, kept: a success is `payment.success`, not `payment.succeeded`.
STATUS_OF_EVENT: dict[str, PaymentStatus] = {
    "payment.success": PaymentStatus.SUCCEEDED,
    "payment.failed": PaymentStatus.FAILED,
    "payment.canceled": PaymentStatus.CANCELED,
}
# The event of the state processing ended in (a refunded payment had succeeded).
EVENT_TYPES: dict[PaymentStatus, str] = {
    PaymentStatus.SUCCEEDED: "payment.success",
    PaymentStatus.FAILED: "payment.failed",
    PaymentStatus.CANCELED: "payment.canceled",
    PaymentStatus.PARTIALLY_REFUNDED: "payment.success",
    PaymentStatus.REFUNDED: "payment.success",
}
REFUND_EVENT_TYPES: dict[RefundStatus, str] = {
    RefundStatus.SUCCEEDED: "refund.success",
    RefundStatus.FAILED: "refund.failed",
}
ALL_EVENT_TYPES: tuple[str, ...] = (*STATUS_OF_EVENT, *REFUND_EVENT_TYPES.values())


class _Clock:
    """The rendering of the current second, and of the current millisecond, reused."""

    ms = -1
    second = -1
    second_text = ""
    text = ""


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds and a ``Z``; cheap (it is on every
    hot path): a millisecond or a second already rendered is not rendered again."""
    ms = int(time.time() * 1000)
    clock = _Clock
    if ms != clock.ms:
        second, fraction = divmod(ms, 1000)
        if second != clock.second:
            clock.second = second
            clock.second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        clock.ms = ms
        clock.text = f"{clock.second_text}.{fraction:03d}Z"
    return clock.text


def new_local_id(prefix: str) -> str:
    """A unique id for a record of this deployment (a job, an attempt): unique, not secret, so
    a process-wide random prefix and a counter serve (no system call per id, unlike
    ``secrets``)."""
    return f"{prefix}{_ID_PREFIX}{next(_ID_COUNTER):x}"


_ID_PREFIX = secrets.token_hex(5)
_ID_COUNTER = itertools.count(1)


def new_payment_id() -> str:
    return "pay_" + secrets.token_hex(12)


# --- what to_dict() returns: the API's objects (payflow.schema documents them) ---------------

CardBrand = Literal["visa", "mastercard", "amex", "rupay", "unknown"]


class UpiDetails(TypedDict):
    vpa: str


class CardDetails(TypedDict):
    brand: CardBrand
    last4: Annotated[str, Meta(pattern="^[0-9]{4}$")]
    exp_month: Annotated[int, Meta(minimum=1, maximum=12)]
    exp_year: int
    fingerprint: str


class NetbankingDetails(TypedDict):
    bank_code: str


class WalletDetails(TypedDict):
    wallet: str


# What a payment's method details were reduced to (payments.validation); a legacy payment: {}.
MethodDetails = UpiDetails | CardDetails | NetbankingDetails | WalletDetails | dict[str, Never]


class PaymentJSON(TypedDict):
    """A payment: pending → processing → succeeded | failed, or pending → canceled; a succeeded
    payment may become partially_refunded or refunded."""

    id: Annotated[str, Meta("pay_<hex>; a payment from a legacy job keeps the job's id.")]
    object: Literal["payment"]
    amount: Annotated[int | None, Meta("Minor units; null for a payment from a legacy job.")]
    amount_refunded: Annotated[int, Meta(minimum=0)]
    currency: Annotated[str | None, Meta("ISO 4217, upper-case; null for a legacy payment.")]
    method: Annotated[str, Meta(enum=METHODS)]
    method_details: Annotated[dict[str, Any], SchemaOf(MethodDetails), Meta(
        "What the method's details were reduced to: a card keeps brand, last 4, expiry and "
        "fingerprint.")]
    status: PaymentStatus
    metadata: dict[str, str]
    created_at: Annotated[str, Meta("When the payment was created.", format="date-time")]
    updated_at: Annotated[str, Meta("When it last changed.", format="date-time")]
    failure_code: str | None
    failure_message: str | None
    sequence: Annotated[int, Meta("Bumped by every transition: drop webhook states older than "
                                  "the last one you saw.", minimum=0)]


class RefundJSON(TypedDict):
    """A refund: pending until a consumer takes it to succeeded or failed."""

    id: Annotated[str, Meta(pattern="^re_")]
    object: Literal["refund"]
    payment_id: str
    amount: Annotated[int, Meta(minimum=1)]
    currency: str | None
    status: RefundStatus
    failure_code: str | None
    failure_message: str | None
    created_at: Annotated[str, Meta("When the refund was created.", format="date-time")]
    updated_at: Annotated[str, Meta("When it last changed.", format="date-time")]


class EventJSON(TypedDict):
    """The body of a webhook."""

    id: Annotated[str, Meta(pattern="^evt_")]
    type: Annotated[str, Meta(enum=ALL_EVENT_TYPES)]
    timestamp: Annotated[str, Meta("When the transition happened.", format="date-time")]
    data: Annotated[Mapping[str, Any], SchemaOf(PaymentJSON | RefundJSON), Meta(
        "The payment (payment.*) or refund (refund.*) as it was.")]


class ApiEventJSON(EventJSON):  # the API's view: the webhook body has no "object"
    """What a webhook carries."""

    object: Literal["event"]


class WebhookEndpointJSON(TypedDict):
    """A webhook receiver (its secrets are never shown after creation)."""

    id: Annotated[str, Meta(pattern="^ep_")]
    object: Literal["webhook_endpoint"]
    url: str
    enabled_events: list[str]
    disabled: bool
    disabled_reason: str | None
    description: str
    source: Annotated[str, SchemaOf(Literal["api", "config"])]
    signed: Annotated[bool, Meta("Whether its webhooks are signed.")]
    created_at: Annotated[str, Meta("When the endpoint was created.", format="date-time")]
    updated_at: Annotated[str, Meta("When it last changed.", format="date-time")]
    failing_since: Annotated[str | None, Meta("Start of the current run of failed attempts.",
                                              format="date-time")]


class DeliveryAttemptJSON(TypedDict):
    """One try at delivering one event to one endpoint."""

    id: Annotated[str, Meta(pattern="^att_")]
    object: Literal["delivery_attempt"]
    event_id: str
    endpoint_id: Annotated[str, Meta("An endpoint id, or 'log' for the log sink.")]
    attempt: Annotated[int, Meta(minimum=1)]
    outcome: Annotated[str, Meta(
        "retrying: next_retry_at says when; dead: no more attempts; refused: the SSRF guard "
        "refused the address; disabled: the endpoint was disabled (410 Gone or failing too "
        "long); skipped: it was disabled when the event came.", enum=DELIVERY_OUTCOMES)]
    at: Annotated[str, Meta("When the attempt was made.", format="date-time")]
    status: Annotated[int | None, Meta("The receiver's HTTP status.")]
    error: str | None
    latency_ms: Annotated[float, Meta(minimum=0)]
    response_body: Annotated[str, Meta("The start of the receiver's answer.")]
    next_retry_at: Annotated[str | None, Meta("When the next attempt is due.",
                                              format="date-time")]


def event_id_for(payment_id: str, event_type: str) -> str:
    """The id of the event that ``event_type`` of ``payment_id`` emits: stable across retries,
    redeliveries and restarts, because a payment reaches each terminal state at most once."""
    digest = hashlib.sha256(f"{payment_id}\x00{event_type}".encode()).hexdigest()
    return "evt_" + digest[:24]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Payment:
    id: str
    method: str
    amount: int | None = None  # minor units; None for a payment created from a legacy job
    currency: str | None = None
    method_details: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: PaymentStatus = PaymentStatus.PENDING
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    created_at: str = dataclasses.field(default_factory=now_iso)
    updated_at: str = ""
    failure_code: str | None = None
    failure_message: str | None = None
    sequence: int = 0
    amount_refunded: int = 0

    def __post_init__(self) -> None:
        if not self.updated_at:
            object.__setattr__(self, "updated_at", self.created_at)

    def moved(self, status: PaymentStatus, at: str, failure_code: str | None,
              failure_message: str | None) -> Payment:
        """This payment in ``status`` since ``at``, its sequence bumped (what
        ``dataclasses.replace`` would give, at a third of its cost: it is on the hot path)."""
        return Payment(id=self.id, method=self.method, amount=self.amount,
                       currency=self.currency, method_details=self.method_details,
                       status=status, metadata=self.metadata, created_at=self.created_at,
                       updated_at=at, failure_code=failure_code,
                       failure_message=failure_message, sequence=self.sequence + 1,
                       amount_refunded=self.amount_refunded)

    def to_dict(self) -> PaymentJSON:
        return {
            "id": self.id,
            "object": "payment",
            "amount": self.amount,
            "amount_refunded": self.amount_refunded,
            "currency": self.currency,
            "method": self.method,
            "method_details": dict(self.method_details),
            "status": self.status,  # a StrEnum: a str, and JSON's string (no .value lookup)
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "sequence": self.sequence,
        }


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """What a webhook carries: ``{"id", "type", "timestamp", "data": {payment}}``."""

    id: str
    type: str
    timestamp: str
    data: Mapping[str, Any]  # a PaymentJSON or a RefundJSON (or either, decoded from JSON)

    @property
    def subject_id(self) -> str:
        """The id of what the event is about: its payment, or its refund."""
        return str(self.data.get("id", ""))

    def to_dict(self) -> EventJSON:
        return {"id": self.id, "type": self.type, "timestamp": self.timestamp, "data": self.data}

    def to_api_dict(self) -> ApiEventJSON:
        """The API's view (``GET /v1/events``...): the webhook body with ``"object": "event"``."""
        return {"object": "event", **self.to_dict()}

    @classmethod
    def for_payment(cls, payment: Payment) -> Event:
        """The event of ``payment``'s terminal state (its id derived, its time the transition's)."""
        event_type = EVENT_TYPES[payment.status]
        return cls(
            id=event_id_for(payment.id, event_type),
            type=event_type,
            timestamp=payment.updated_at,
            data=payment.to_dict(),
        )

    @classmethod
    def for_refund(cls, refund: Refund) -> Event:
        event_type = REFUND_EVENT_TYPES[refund.status]
        return cls(id=event_id_for(refund.id, event_type), type=event_type,
                   timestamp=refund.updated_at, data=refund.to_dict())

    @property
    def legacy_text(self) -> str:
        """The seed's form of this event's job, used in the console lines."""
        return f"webhook:{self.type}:{self.subject_id}"


def new_refund_id() -> str:
    return "re_" + secrets.token_hex(12)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Refund:
    id: str
    payment_id: str
    amount: int
    currency: str | None = None
    status: RefundStatus = RefundStatus.PENDING
    failure_code: str | None = None
    failure_message: str | None = None
    created_at: str = dataclasses.field(default_factory=now_iso)
    updated_at: str = ""

    def __post_init__(self) -> None:
        if not self.updated_at:
            object.__setattr__(self, "updated_at", self.created_at)

    def to_dict(self) -> RefundJSON:
        return {"id": self.id, "object": "refund", "payment_id": self.payment_id,
                "amount": self.amount, "currency": self.currency, "status": self.status,
                "failure_code": self.failure_code, "failure_message": self.failure_message,
                "created_at": self.created_at, "updated_at": self.updated_at}


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EndpointSecret:
    secret: str
    expires_at: str | None = None  # None: the current secret; else valid until then (rotation)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WebhookEndpoint:
    """A merchant's webhook receiver, from payflow.toml (``source="config"``) or the API."""

    id: str
    url: str
    secrets: tuple[EndpointSecret, ...] = ()
    enabled_events: tuple[str, ...] = ("*",)
    disabled: bool = False
    disabled_reason: str | None = None
    description: str = ""
    source: str = "api"
    created_at: str = dataclasses.field(default_factory=now_iso)
    updated_at: str = ""
    failing_since: str | None = None  # start of the current run of failed attempts

    def __post_init__(self) -> None:
        if not self.updated_at:
            object.__setattr__(self, "updated_at", self.created_at)

    def subscribed(self, event_type: str) -> bool:
        return "*" in self.enabled_events or event_type in self.enabled_events

    def active_secrets(self, now: datetime | None = None) -> list[str]:
        """The secrets to sign with: the current one and those still in their rotation grace."""
        moment = now or datetime.now(UTC)
        return [s.secret for s in self.secrets
                if s.expires_at is None or parse_iso(s.expires_at) > moment]

    def to_dict(self) -> WebhookEndpointJSON:
        """The API view: never the secrets themselves."""
        return {
            "id": self.id,
            "object": "webhook_endpoint",
            "url": self.url,
            "enabled_events": list(self.enabled_events),
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "description": self.description,
            "source": self.source,
            "signed": bool(self.secrets),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "failing_since": self.failing_since,
        }


# What became of a delivery attempt (DeliveryAttempt.outcome); the failed ones.
DELIVERY_OUTCOMES: tuple[str, ...] = ("succeeded", "retrying", "dead", "refused", "disabled",
                                      "skipped")
FAILED_DELIVERY_OUTCOMES = frozenset({"retrying", "dead", "refused", "disabled"})
MAX_ENDPOINT_DESCRIPTION = 500  # characters of a webhook endpoint's description


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryAttempt:
    """One try at delivering one event to one endpoint, kept for ``/v1/events/{id}/attempts``.

    ``outcome``: ``succeeded``; ``retrying`` (``next_retry_at`` says when); ``dead`` (no more
    attempts); ``refused`` (the SSRF guard refused the address); ``disabled`` (the endpoint
    answered 410 Gone, or failed for too long, and was disabled); ``skipped`` (the endpoint was
    disabled when the event came; ``recover`` replays it)."""

    id: str
    event_id: str
    endpoint_id: str
    attempt: int  # 1 for the first
    outcome: str
    at: str = dataclasses.field(default_factory=now_iso)
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0
    response_body: str = ""
    next_retry_at: str | None = None

    def to_dict(self) -> DeliveryAttemptJSON:
        return {"id": self.id, "event_id": self.event_id, "endpoint_id": self.endpoint_id,
                "attempt": self.attempt, "outcome": self.outcome, "at": self.at,
                "status": self.status, "error": self.error,
                "latency_ms": round(self.latency_ms, 1), "response_body": self.response_body,
                "next_retry_at": self.next_retry_at, "object": "delivery_attempt"}
