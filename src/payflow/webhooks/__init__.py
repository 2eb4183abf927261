"""Webhook signing, delivery and the webhook consumer."""

from payflow.webhooks.signing import WebhookVerificationError, new_secret, verify

__all__ = ["WebhookVerificationError", "new_secret", "verify"]
