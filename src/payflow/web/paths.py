"""The API's resource paths that more than one module names (routes, idempotency)."""

from typing import Final

PAYMENTS: Final = "/v1/payments"
