"""Payments and events: plain data, no I/O.

A payment moves ``pending → processing → succeeded | failed`` or ``pending → canceled``;
every transition bumps ``sequence`` so that a webhook receiver can drop stale states.
An event's id is derived from the payment and the transition, so the same transition always
yields the same event id, even when it is re-derived after a crash that lost the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

METHODS = ("upi", "card", "netbanking", "wallet")


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED)


# The seed's event names, kept: a success is `payment.success`, not `payment.succeeded`.
EVENT_TYPES: dict[PaymentStatus, str] = {
    PaymentStatus.SUCCEEDED: "payment.success",
    PaymentStatus.FAILED: "payment.failed",
    PaymentStatus.CANCELED: "payment.canceled",
}
STATUS_OF_EVENT: dict[str, PaymentStatus] = {v: k for k, v in EVENT_TYPES.items()}


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds and a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_payment_id() -> str:
    return "pay_" + secrets.token_hex(12)


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

    def __post_init__(self) -> None:
        if not self.updated_at:
            object.__setattr__(self, "updated_at", self.created_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "payment",
            "amount": self.amount,
            "currency": self.currency,
            "method": self.method,
            "method_details": dict(self.method_details),
            "status": self.status.value,
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "sequence": self.sequence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Payment:
        """Rebuild a payment from :meth:`to_dict` output (e.g. a job's snapshot).

        Raises ``KeyError``/``ValueError``/``TypeError`` on a malformed dict."""
        amount = data.get("amount")
        if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool)):
            raise TypeError("amount must be an integer")
        method = data["method"]
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        return cls(
            id=str(data["id"]),
            method=method,
            amount=amount,
            currency=data.get("currency"),
            method_details=dict(data.get("method_details") or {}),
            status=PaymentStatus(data.get("status", "pending")),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            created_at=str(data.get("created_at") or now_iso()),
            updated_at=str(data.get("updated_at") or ""),
            failure_code=data.get("failure_code"),
            failure_message=data.get("failure_message"),
            sequence=int(data.get("sequence", 0)),
        )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """What a webhook carries: ``{"id", "type", "timestamp", "data": {payment}}``."""

    id: str
    type: str
    timestamp: str
    data: dict[str, Any]

    @property
    def payment_id(self) -> str:
        return str(self.data.get("id", ""))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "timestamp": self.timestamp, "data": self.data}

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
    def from_dict(cls, data: dict[str, Any]) -> Event:
        ev_id, ev_type, ts, payload = data["id"], data["type"], data["timestamp"], data["data"]
        strings = all(isinstance(v, str) for v in (ev_id, ev_type, ts))
        if not strings or not isinstance(payload, dict):
            raise TypeError("event fields have the wrong types")
        return cls(id=ev_id, type=ev_type, timestamp=ts, data=payload)

    @property
    def legacy_text(self) -> str:
        """The seed's form of this event's job, used in the console lines."""
        return f"webhook:{self.type}:{self.payment_id}"
