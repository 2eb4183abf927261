"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

Secrets look like ``whsec_<base64 key>``; during a rotation several are active and the
``webhook-signature`` header carries one signature per secret, separated by spaces.

:func:`verify` is the receiving side (https://www.standardwebhooks.com, spec
``spec/standard-webhooks.md`` of github.com/standard-webhooks/standard-webhooks).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec: "Random. At least 24 bytes (192 bits, 512 maximum)"
MAX_SECRET_BYTES = 64
DEFAULT_TOLERANCE_SECONDS = 300  # the reference libraries' five minutes
_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # "integer unix timestamp (seconds since epoch)"


class WebhookVerificationError(Exception):
    """A webhook failed verification; ``str(exc)`` says why (never which secret was tried)."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (a bare string without the prefix is used as is)."""
    if secret.startswith(PREFIX):
        return base64.b64decode(secret[len(PREFIX):])
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def new_secret(nbytes: int = 32) -> str:
    """A fresh random signing secret, ``whsec_<base64 of nbytes random bytes>``."""
    if not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, "
                         f"not {nbytes}")
    return PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def verify(payload: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str], *,
           tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
           now: float | None = None) -> dict[str, Any]:
    """Verify a Standard Webhooks delivery and return its parsed JSON body.

    ``payload`` is the raw body exactly as received (do not parse and re-serialise it first).
    ``headers`` is looked up case-insensitively for ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature`` (or their ``svix-…`` aliases). ``secret`` is one secret or several
    (during a rotation); a signature made with any of them is accepted. A ``whsec_<base64>``
    secret is its base64-decoded key; a secret without the prefix is tried both as base64 (the
    reference libraries) and as its UTF-8 bytes (:func:`sign` and ``payflow serve``).

    Raises :class:`WebhookVerificationError` when a header is missing, the timestamp is not
    an integer or is more than ``tolerance_seconds`` away from ``now`` (default: the clock),
    no ``v1`` signature matches, or the body is not a JSON object; :class:`ValueError` when a
    secret is unusable (empty, or ``whsec_`` with invalid base64).
    """
    keys = [key for one in ([secret] if isinstance(secret, str) else secret)
            for key in _verify_keys(one)]
    if not keys:
        raise ValueError("no secret to verify with")
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id, timestamp, signatures = (
        lowered.get(f"webhook-{name}") or lowered.get(f"svix-{name}")
        for name in ("id", "timestamp", "signature"))
    missing = [f"webhook-{name}" for name, value in
               (("id", msg_id), ("timestamp", timestamp), ("signature", signatures))
               if not value]
    if missing or msg_id is None or timestamp is None or signatures is None:
        raise WebhookVerificationError(f"missing header {', '.join(missing)}")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookVerificationError(
            f"bad webhook-timestamp {timestamp[:40]!r}: expected integer unix seconds")
    sent = int(timestamp)
    clock = time.time() if now is None else now
    if sent < clock - tolerance_seconds:
        raise WebhookVerificationError(
            f"timestamp too old: {clock - sent:.0f} s ago (tolerance {tolerance_seconds} s)")
    if sent > clock + tolerance_seconds:
        raise WebhookVerificationError(
            f"timestamp too new: {sent - clock:.0f} s ahead (tolerance {tolerance_seconds} s)")
    body = payload.encode() if isinstance(payload, str) else payload
    to_sign = f"{msg_id}.{sent}.".encode() + body
    expected = [hmac.new(key, to_sign, hashlib.sha256).digest() for key in keys]
    if not any(hmac.compare_digest(given, want)
               for given in _v1_signatures(signatures) for want in expected):
        raise WebhookVerificationError("no matching signature")
    try:
        parsed = json.loads(body)
    except ValueError as exc:  # also UnicodeDecodeError
        raise WebhookVerificationError(f"signature ok but the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise WebhookVerificationError("signature ok but the body is not a JSON object")
    return parsed


def _verify_keys(secret: str) -> list[bytes]:
    """The HMAC keys a secret may stand for (see :func:`verify`)."""
    if not secret or secret == PREFIX:
        raise ValueError("empty webhook secret")
    if secret.startswith(PREFIX):
        key = _b64_key(secret[len(PREFIX):])
        if key is None:
            raise ValueError(f"a {PREFIX} secret must be base64 after the prefix")
        return [key]
    raw = secret.encode()
    key = _b64_key(secret)
    return [raw] if key is None or key == raw else [key, raw]


def _b64_key(text: str) -> bytes | None:
    """Strict base64, padding optional (the reference library pads unpadded secrets)."""
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        return None
    return key or None


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1,<base64>`` entries of a signature header; other versions (``v1a``
    asymmetric signatures, unknown ones) and malformed entries are skipped."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return found
