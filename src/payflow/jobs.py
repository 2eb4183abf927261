"""Job formats: the seed's legacy text and the JSON envelope, accepted on both queues.

Legacy text (what ``redis-cli LPUSH`` users push)::

    process_payment:<payment_id>:<method>
    webhook:<event_type>:<payment_id>

JSON envelope (what PayFlow itself pushes; self-contained, so a job can be re-run after a crash
that lost an in-memory store)::

    {"v": 1, "kind": "payment", "jid": "job_…", "attempt": 0,
     "payment_id": "pay_…", "method": "upi", "payment": {…snapshot…}}
    {"v": 1, "kind": "refund", "jid": "job_…", "attempt": 0,
     "refund_id": "re_…", "payment_id": "pay_…", "refund": {…snapshot…}}
    {"v": 1, "kind": "webhook", "jid": "job_…", "attempt": 0,
     "event": {"id": "evt_…", "type": "payment.success", "timestamp": "…", "data": {…}},
     "endpoint": "<endpoint id>"}            # endpoint: set on a retry aimed at one endpoint

A webhook envelope may give ``"type"`` and ``"payment_id"`` instead of ``"event"``; the event is
then derived from the store. Anything else raises :class:`InvalidJob` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from typing import Any

from payflow.errors import InvalidJob
from payflow.models import ALL_EVENT_TYPES, METHODS

_ID = r"[A-Za-z0-9_\-]{1,128}"
_LEGACY_PAYMENT = re.compile(rf"process_payment:(?P<id>{_ID}):(?P<method>[A-Za-z_]+)")
_LEGACY_WEBHOOK = re.compile(rf"webhook:(?P<type>[a-z_]+\.[a-z_]+):(?P<id>{_ID})")
_ID_RE = re.compile(_ID)


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PaymentJob:
    payment_id: str
    method: str | None = None
    payment: dict[str, Any] | None = None
    attempt: int = 0
    jid: str = ""

    @property
    def legacy_text(self) -> str:
        return f"process_payment:{self.payment_id}:{self.method or 'unknown'}"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "kind": "payment", "jid": self.jid or new_job_id(),
                                "attempt": self.attempt, "payment_id": self.payment_id}
        if self.method:
            body["method"] = self.method
        if self.payment is not None:
            body["payment"] = self.payment
        return _dumps(body)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WebhookJob:
    event_type: str
    payment_id: str
    event: dict[str, Any] | None = None
    endpoint: str | None = None
    attempt: int = 0
    jid: str = ""

    @property
    def legacy_text(self) -> str:
        return f"webhook:{self.event_type}:{self.payment_id}"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "kind": "webhook", "jid": self.jid or new_job_id(),
                                "attempt": self.attempt}
        if self.event is not None:
            body["event"] = self.event
        else:
            body["type"] = self.event_type
            body["payment_id"] = self.payment_id
        if self.endpoint is not None:
            body["endpoint"] = self.endpoint
        return _dumps(body)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RefundJob:
    refund_id: str
    payment_id: str
    refund: dict[str, Any] | None = None
    attempt: int = 0
    jid: str = ""

    @property
    def legacy_text(self) -> str:
        return f"refund:{self.refund_id}:{self.payment_id}"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "kind": "refund", "jid": self.jid or new_job_id(),
                                "attempt": self.attempt, "refund_id": self.refund_id,
                                "payment_id": self.payment_id}
        if self.refund is not None:
            body["refund"] = self.refund
        return _dumps(body)


Job = PaymentJob | RefundJob | WebhookJob


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def describe(raw: bytes, limit: int = 120) -> str:
    """A printable, bounded rendering of a raw job for log lines."""
    text = raw[:limit].decode("utf-8", "backslashreplace")
    return text if len(raw) <= limit else f"{text}… ({len(raw)} bytes)"


def parse_job(raw: bytes, *, max_bytes: int = 65536) -> Job:
    """Parse one queue item; raise :class:`InvalidJob` saying why it can never be processed."""
    if not raw:
        raise InvalidJob("empty job")
    if len(raw) > max_bytes:
        raise InvalidJob(f"job of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJob("job is not UTF-8 text") from None
    text = text.strip()
    if text.startswith("{"):
        return _parse_envelope(text)
    if m := _LEGACY_PAYMENT.fullmatch(text):
        method = m["method"]
        if method not in METHODS:
            raise InvalidJob(f"unknown payment method {method!r} (allowed: {', '.join(METHODS)})")
        return PaymentJob(payment_id=m["id"], method=method)
    if m := _LEGACY_WEBHOOK.fullmatch(text):
        return WebhookJob(event_type=_event_type(m["type"]), payment_id=m["id"])
    raise InvalidJob(
        "unrecognised job: expected 'process_payment:<payment_id>:<method>', "
        "'webhook:<event_type>:<payment_id>' or a JSON envelope"
    )


def _event_type(value: object) -> str:
    if not isinstance(value, str) or value not in ALL_EVENT_TYPES:
        raise InvalidJob(f"unknown event type {value!r} (allowed: {', '.join(ALL_EVENT_TYPES)})")
    return value


def _payment_id(value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidJob(f"invalid payment_id {value!r}")
    return value


def _parse_envelope(text: str) -> Job:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise InvalidJob(f"malformed JSON envelope: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJob("JSON envelope must be an object")
    if body.get("v") != 1:
        raise InvalidJob(f"unsupported envelope version {body.get('v')!r} (expected 1)")
    attempt = body.get("attempt", 0)
    jid = body.get("jid", "")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise InvalidJob(f"invalid attempt {attempt!r}")
    if not isinstance(jid, str):
        raise InvalidJob(f"invalid jid {jid!r}")
    kind = body.get("kind")
    if kind == "payment":
        return _payment_envelope(body, attempt, jid)
    if kind == "webhook":
        return _webhook_envelope(body, attempt, jid)
    if kind == "refund":
        return _refund_envelope(body, attempt, jid)
    raise InvalidJob(f"unknown job kind {kind!r} (expected 'payment', 'refund' or 'webhook')")


def _refund_envelope(body: dict[str, Any], attempt: int, jid: str) -> RefundJob:
    refund_id = _payment_id(body.get("refund_id"))
    payment_id = _payment_id(body.get("payment_id"))
    snapshot = body.get("refund")
    if snapshot is not None and (not isinstance(snapshot, dict)
                                 or snapshot.get("id") != refund_id):
        raise InvalidJob("refund snapshot must be an object with the job's refund_id")
    return RefundJob(refund_id=refund_id, payment_id=payment_id, refund=snapshot,
                     attempt=attempt, jid=jid)


def _payment_envelope(body: dict[str, Any], attempt: int, jid: str) -> PaymentJob:
    payment_id = _payment_id(body.get("payment_id"))
    method = body.get("method")
    if method is not None and method not in METHODS:
        raise InvalidJob(f"unknown payment method {method!r} (allowed: {', '.join(METHODS)})")
    snapshot = body.get("payment")
    if snapshot is not None:
        if not isinstance(snapshot, dict) or snapshot.get("id") != payment_id:
            raise InvalidJob("payment snapshot must be an object with the job's payment_id")
        method = method or snapshot.get("method")
    return PaymentJob(payment_id=payment_id, method=method, payment=snapshot,
                      attempt=attempt, jid=jid)


def _webhook_envelope(body: dict[str, Any], attempt: int, jid: str) -> WebhookJob:
    endpoint = body.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise InvalidJob(f"invalid endpoint {endpoint!r}")
    event = body.get("event")
    if event is None:
        return WebhookJob(event_type=_event_type(body.get("type")),
                          payment_id=_payment_id(body.get("payment_id")),
                          endpoint=endpoint, attempt=attempt, jid=jid)
    if not isinstance(event, dict):
        raise InvalidJob("event must be an object")
    data = event.get("data")
    if not isinstance(event.get("id"), str) or not isinstance(event.get("timestamp"), str):
        raise InvalidJob("event needs string 'id' and 'timestamp'")
    if not isinstance(data, dict):
        raise InvalidJob("event 'data' must be an object")
    return WebhookJob(event_type=_event_type(event.get("type")),
                      payment_id=_payment_id(data.get("id")), event=event,
                      endpoint=endpoint, attempt=attempt, jid=jid)
