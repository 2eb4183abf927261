"""What the HTTP API needs from the daemon: :class:`WebContext` (a leaf: no route module, nor
the application, is imported here)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from payflow.config import ApiKeyConfig
from payflow.operations import Operations
from payflow.payments.intake import Payments
from payflow.store.base import Store
from payflow.web.idempotency import Idempotency
from payflow.webhooks.admin import Webhooks
from payflow.webhooks.ssrf import AddressPolicy


@dataclass(frozen=True, kw_only=True)
class WebContext:
    """What the HTTP API needs from the daemon."""

    store: Store
    # LPUSH onto the payments queue; raises redis.exceptions.RedisError when Redis is unreachable.
    enqueue_payment: Callable[[bytes], Awaitable[None]]
    # True when Redis answers; for /readyz.
    ping: Callable[[], Awaitable[bool]]
    # LPUSH onto the webhook queue (event retries, endpoint recovery); None: not offered.
    enqueue_webhook: Callable[[bytes], Awaitable[None]] | None = None
    max_body_bytes: int = 65536
    body_seconds: float = 30.0  # a request body must arrive within this
    # How long a rotated-out endpoint secret keeps signing.
    rotation_grace_hours: float = 24.0
    # API keys; none: the API is open.
    api_keys: tuple[ApiKeyConfig, ...] = ()
    metrics_public: bool = True
    # Idempotency-Key handling for POST /v1/...; None: the header is ignored.
    idempotency: Idempotency | None = None
    # The delivery's address policy: endpoint URLs it would refuse get a 422; None: unchecked.
    address_policy: AddressPolicy | None = None
    # Queues, dead letters and daemons for the dashboard; None: those routes answer 503.
    operations: Operations | None = None
    # Set => every request but /healthz gets 503 (shutdown).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # The core services the routes call (built from the above).
    payments: Payments = field(init=False)
    webhooks: Webhooks = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "payments", Payments(
            self.store, push_payment=self.enqueue_payment, push_webhook=self.enqueue_webhook))
        object.__setattr__(self, "webhooks", Webhooks(
            self.store, push_webhook=self.enqueue_webhook,
            rotation_grace_hours=self.rotation_grace_hours, policy=self.address_policy))
