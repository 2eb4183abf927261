"""PayFlow's exceptions.

::

    PayFlowError
    ├── ConfigError          a bad configuration value; exit code 2 at start
    ├── StartupError         the daemon cannot start (a busy port, Redis unreachable at start)
    ├── InvalidJob           a queue item that can never be processed: it goes to {<q>}:dead
    ├── RetryLater(delay)    a transient failure: the job is requeued through {<q>}:delayed
    ├── ValidationError      bad API input: 400/422 problem+json naming the field
    ├── NotFound             the resource an API call names does not exist: 404
    ├── Conflict             the resource is not in a state that allows the call: 409
    ├── KeyReused            an Idempotency-Key sent again with a different request: 422
    ├── KeyInFlight          an Idempotency-Key whose first request is still running: 409
    └── QueueUnavailable     the job could not be queued, nothing was accepted: 503
"""

from __future__ import annotations


class PayFlowError(Exception):
    """Base class of every error PayFlow raises on purpose."""


class ConfigError(PayFlowError):
    """A bad configuration value; the message names the key and what is allowed."""


class StartupError(PayFlowError):
    """The daemon cannot start; the message says what to do."""


class InvalidJob(PayFlowError):
    """A job that no retry can fix (garbage, unknown kind, too large): it is dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(PayFlowError):
    """A transient failure; the job is requeued after ``delay`` seconds (``None``: by backoff)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class ValidationError(PayFlowError):
    """Bad API input. ``param`` names the offending field (dotted path), ``code`` is stable."""

    def __init__(self, detail: str, *, param: str | None = None, code: str = "invalid",
                 status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.param = param
        self.code = code
        self.status = status


class NotFound(PayFlowError):
    """``kind`` (``payment``, ``refund``, ``event``, ``webhook_endpoint``) ``resource_id`` is
    unknown."""

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(f"{kind} {resource_id} not found")
        self.kind = kind
        self.resource_id = resource_id


class Conflict(PayFlowError):
    """The call does not fit the resource's current state; ``code`` is stable, ``status`` the
    resource's current status when that is the reason."""

    def __init__(self, detail: str, *, code: str, status: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status


class QueueUnavailable(PayFlowError):
    """Redis did not take the job: the request was not accepted and nothing was created."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class KeyReused(PayFlowError):
    """An Idempotency-Key already bound to a different request."""


class KeyInFlight(PayFlowError):
    """The first request with this Idempotency-Key has not been answered yet."""
