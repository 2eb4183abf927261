"""Job formats: the seed's legacy text and the JSON envelope, accepted on both queues.

Legacy text (what ``redis-cli LPUSH`` users push)::

    process_payment:<payment_id>:<method>
    webhook:<event_type>:<payment_id>

JSON envelope (what PayFlow itself pushes). A job names what it acts on, nothing more: amounts,
states and event contents always come from the store, so a job pushed by hand carries no
authority::

    {"v": 1, "kind": "payment", "jid": "job_…", "attempt": 0, "payment_id": "pay_…",
     "method": "upi"}                        # method: creates an unknown payment (legacy)
    {"v": 1, "kind": "refund", "jid": "job_…", "attempt": 0, "refund_id": "re_…",
     "payment_id": "pay_…"}
    {"v": 1, "kind": "webhook", "jid": "job_…", "attempt": 0, "event_id": "evt_…",
     "endpoint": "<endpoint id>"}            # endpoint: set on a retry aimed at one endpoint

Any envelope may carry ``"tp"``, the W3C ``traceparent`` of the span that queued it (only when
tracing is on, :mod:`payflow.tracing`). It is only a label: one that is not a valid traceparent
is ignored, never a reason to dead-letter the job.

A webhook envelope may give ``"type"`` and ``"payment_id"`` instead of ``"event_id"``, as the
legacy text does; the event is then derived from the store. Keys of earlier versions (payment,
refund and event snapshots) are ignored but for the event's id. Anything else raises
:class:`InvalidJob` with the reason.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson

from payflow.errors import InvalidJob
from payflow.models import ALL_EVENT_TYPES, METHODS, Event, new_local_id

_ID = r"[A-Za-z0-9_\-]{1,128}"
_LEGACY_PAYMENT = re.compile(rf"process_payment:(?P<id>{_ID}):(?P<method>[A-Za-z_]+)")
_LEGACY_WEBHOOK = re.compile(rf"webhook:(?P<type>[a-z_]+\.[a-z_]+):(?P<id>{_ID})")
_ID_RE = re.compile(_ID)
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def new_job_id() -> str:
    return new_local_id("job_")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PaymentJob:
    payment_id: str
    method: str | None = None  # creates the payment when it is unknown (legacy jobs)
    attempt: int = 0
    jid: str = ""
    traceparent: str | None = None  # the trace it belongs to ("tp"), when tracing is on

    @property
    def legacy_text(self) -> str:
        return f"process_payment:{self.payment_id}:{self.method or 'unknown'}"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "kind": "payment", "jid": self.jid or new_job_id(),
                                "attempt": self.attempt, "payment_id": self.payment_id}
        if self.method:
            body["method"] = self.method
        if self.traceparent is not None:
            body["tp"] = self.traceparent
        return _dumps(body)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WebhookJob:
    """Deliver an event: named by id (``event_id``), or, in the seed's legacy form, by its
    type and the id of its payment or refund (``subject_id``); ``endpoint`` aims it at one."""

    event_id: str | None = None
    event_type: str | None = None
    subject_id: str | None = None
    endpoint: str | None = None
    attempt: int = 0
    jid: str = ""
    traceparent: str | None = None

    @classmethod
    def for_event(cls, event: Event, *, endpoint: str | None = None, attempt: int = 0,
                  jid: str = "", traceparent: str | None = None) -> WebhookJob:
        return cls(event_id=event.id, event_type=event.type, subject_id=event.subject_id,
                   endpoint=endpoint, attempt=attempt, jid=jid, traceparent=traceparent)

    @property
    def legacy_text(self) -> str:
        if self.event_type is None or self.subject_id is None:
            return f"webhook:{self.event_id}"
        return f"webhook:{self.event_type}:{self.subject_id}"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "kind": "webhook", "jid": self.jid or new_job_id(),
                                "attempt": self.attempt}
        if self.event_id is not None:
            body["event_id"] = self.event_id
        if self.event_type is not None:
            body["type"] = self.event_type
        if self.subject_id is not None:
            body["payment_id"] = self.subject_id
        if self.endpoint is not None:
            body["endpoint"] = self.endpoint
        if self.traceparent is not None:
            body["tp"] = self.traceparent
        return _dumps(body)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RefundJob:
    refund_id: str
    payment_id: str
    attempt: int = 0
    jid: str = ""
    traceparent: str | None = None

    @property
    def legacy_text(self) -> str:
        return f"refund:{self.refund_id}:{self.payment_id}"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "kind": "refund", "jid": self.jid or new_job_id(),
                                "attempt": self.attempt, "refund_id": self.refund_id,
                                "payment_id": self.payment_id}
        if self.traceparent is not None:
            body["tp"] = self.traceparent
        return _dumps(body)


Job = PaymentJob | RefundJob | WebhookJob


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


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
        return WebhookJob(event_type=_event_type(m["type"]), subject_id=m["id"])
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
        body = orjson.loads(text)
    except ValueError as exc:
        raise InvalidJob(f"malformed JSON envelope: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJob("JSON envelope must be an object")
    if body.get("v") != 1:
        raise InvalidJob(f"unsupported envelope version {body.get('v')!r} (expected 1)")
    attempt = body.get("attempt", 0)
    jid = body.get("jid", "")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt <= 1000:
        raise InvalidJob(f"invalid attempt {attempt!r}")
    if not isinstance(jid, str):
        raise InvalidJob(f"invalid jid {jid!r}")
    tp = body.get("tp")
    if tp is not None and not (isinstance(tp, str) and _TRACEPARENT.fullmatch(tp)):
        tp = None  # only a label: an invalid one is dropped, the job is processed
    kind = body.get("kind")
    if kind == "payment":
        return _payment_envelope(body, attempt, jid, tp)
    if kind == "webhook":
        return _webhook_envelope(body, attempt, jid, tp)
    if kind == "refund":
        return _refund_envelope(body, attempt, jid, tp)
    raise InvalidJob(f"unknown job kind {kind!r} (expected 'payment', 'refund' or 'webhook')")


def _refund_envelope(body: dict[str, Any], attempt: int, jid: str, tp: str | None) -> RefundJob:
    return RefundJob(refund_id=_payment_id(body.get("refund_id")),
                     payment_id=_payment_id(body.get("payment_id")), attempt=attempt, jid=jid,
                     traceparent=tp)


def _payment_envelope(body: dict[str, Any], attempt: int, jid: str,
                      tp: str | None) -> PaymentJob:
    payment_id = _payment_id(body.get("payment_id"))
    method = body.get("method")
    if method is not None and method not in METHODS:
        raise InvalidJob(f"unknown payment method {method!r} (allowed: {', '.join(METHODS)})")
    return PaymentJob(payment_id=payment_id, method=method, attempt=attempt, jid=jid,
                      traceparent=tp)


def _webhook_envelope(body: dict[str, Any], attempt: int, jid: str,
                      tp: str | None) -> WebhookJob:
    """Only ids are taken from a job: the event itself always comes from the store."""
    endpoint = body.get("endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not _ID_RE.fullmatch(endpoint)):
        raise InvalidJob(f"invalid endpoint {endpoint!r}")
    event_id = body.get("event_id")
    if event_id is None and isinstance(body.get("event"), dict):  # the earlier envelope
        event_id = body["event"].get("id")
    if event_id is not None:
        if not isinstance(event_id, str) or not _ID_RE.fullmatch(event_id):
            raise InvalidJob(f"invalid event_id {event_id!r}")
        # The type and subject, when given, only label log lines; the event is the store's.
        label, subject = body.get("type"), body.get("payment_id")
        labelled = (isinstance(label, str) and label in ALL_EVENT_TYPES
                    and isinstance(subject, str) and _ID_RE.fullmatch(subject) is not None)
        return WebhookJob(event_id=event_id, event_type=label if labelled else None,
                          subject_id=subject if labelled else None, endpoint=endpoint,
                          attempt=attempt, jid=jid, traceparent=tp)
    return WebhookJob(event_type=_event_type(body.get("type")),
                      subject_id=_payment_id(body.get("payment_id")),
                      endpoint=endpoint, attempt=attempt, jid=jid, traceparent=tp)
