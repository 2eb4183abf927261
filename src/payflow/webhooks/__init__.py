"""Webhook signing, delivery and the webhook consumer."""
