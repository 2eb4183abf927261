"""The component schemas, headers and parameters of the OpenAPI document (:mod:`.openapi`).

Every constraint is taken from the code that enforces it (validation, models, the handlers), so
the document cannot drift from the limits it describes. Request bodies are strict
(``additionalProperties: false``: the API rejects unknown fields with 422 ``unknown_field``);
response objects list every member they always carry, and may gain members later.
"""

from __future__ import annotations

from typing import Any, Final

from payflow.models import (
    ALL_EVENT_TYPES,
    DELIVERY_OUTCOMES,
    MAX_ENDPOINT_DESCRIPTION,
    METHODS,
    PaymentStatus,
    RefundStatus,
)
from payflow.payments.currencies import MINOR_UNITS
from payflow.payments.validation import (
    BANK_CODE_RE,
    CARD_BRANDS,
    MAX_AMOUNT,
    MAX_EXPIRY_YEARS_AHEAD,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    MIN_AMOUNT,
    VPA_RE,
    WALLETS,
)
from payflow.web.endpoints import EVENT_NAMES
from payflow.web.idempotency import MAX_KEY_LENGTH
from payflow.web.problems import MAX_REQUEST_ID_LENGTH, PROBLEM_BASE

Schema = dict[str, Any]



# --- helpers ---------------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or ``null`` (for a schema with a single ``type``)."""
    return {**schema, "type": [schema["type"], "null"]}


def string(description: str | None = None, **constraints: Any) -> Schema:
    return _described({"type": "string", **constraints}, description)


def integer(description: str | None = None, **constraints: Any) -> Schema:
    return _described({"type": "integer", **constraints}, description)


def timestamp(description: str) -> Schema:
    return string(description, format="date-time")


def const(value: object) -> Schema:
    return {"const": value}


def obj(properties: dict[str, Schema], *, required: tuple[str, ...] | None = None,
        closed: bool = False, description: str | None = None, **extra: Any) -> Schema:
    """An object; ``required`` defaults to every property; ``closed`` forbids other members."""
    schema: Schema = {"type": "object", "properties": properties}
    if names := list(properties if required is None else required):
        schema["required"] = names
    if closed:
        schema["additionalProperties"] = False
    return _described({**schema, **extra}, description)


def extends(base: str, properties: dict[str, Schema], description: str) -> Schema:
    """``base`` with more (always present) members."""
    return {"description": description, "allOf": [ref(base), obj(properties)]}


def list_of(item: str, *, url: str | None = None, paged: bool = True) -> Schema:
    has_more = ("true when more items follow the last one; fetch them with "
                "starting_after=<id of the last item>." if paged else "Always false.")
    props: dict[str, Schema] = {"object": const("list")}
    if url is not None:
        props["url"] = const(url)
    props |= {"data": {"type": "array", "items": ref(item)},
              "has_more": {"type": "boolean", "description": has_more}}
    return obj(props, description=f"A list of {item} objects, newest first." if paged
               else f"Every {item}.")


def _described(schema: Schema, description: str | None) -> Schema:
    return schema if description is None else {"description": description, **schema}


def anchored(pattern: str) -> str:
    """A Python full-match regular expression as an anchored JSON Schema pattern."""
    return f"^(?:{pattern})$"


# --- request bodies --------------------------------------------------------------------------

CURRENCY_CODES: Final = ", ".join(sorted(MINOR_UNITS))


def _payment_create() -> Schema:
    details = {"upi": "UpiInput", "card": "CardInput", "netbanking": "NetbankingInput",
               "wallet": "WalletInput"}
    properties: dict[str, Schema] = {
        "amount": integer("In minor units of the currency (1000 INR is ₹10.00).",
                          minimum=MIN_AMOUNT, maximum=MAX_AMOUNT),
        "currency": string(
            "An active ISO 4217 code, in any case (stored upper-case); anything else is "
            f"422 invalid_currency. The codes: {CURRENCY_CODES}.",
            pattern="^[A-Za-z]{3}$", examples=["INR", "usd"]),
        "method": {"enum": list(METHODS)},
        "metadata": nullable({
            "type": "object", "maxProperties": MAX_METADATA_KEYS,
            "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY_LENGTH},
            "additionalProperties": string(maxLength=MAX_METADATA_VALUE_LENGTH),
            "description": f"Your own string values (at most {MAX_METADATA_KEYS} keys of 1-"
                           f"{MAX_METADATA_KEY_LENGTH} characters, values of at most "
                           f"{MAX_METADATA_VALUE_LENGTH}); null is the same as absent."}),
    }
    for method, name in details.items():
        properties[method] = {"oneOf": [ref(name), {"type": "null"}],
                              "description": f"Details of a {method} payment (optional); "
                                             "only with the same method."}
    # Details for a method other than the chosen one: 422 method_mismatch.
    mismatch = [{"if": obj({"method": const(method)}),
                 "then": {"properties": {other: {"type": "null"}
                                         for other in METHODS if other != method}}}
                for method in METHODS]
    return obj(properties, required=("amount", "currency", "method"), closed=True,
               allOf=mismatch, description=(
                   "A payment to make. Errors name the first offending field in `param` "
                   "(a dotted path such as `card.exp_month`); null counts as absent."))


def _card_input() -> Schema:
    return obj({
        "number": string("12-19 digits (spaces allowed) passing the Luhn check (422 "
                         "invalid_card_number otherwise). Never stored nor echoed.",
                         pattern="^ *(?:[0-9] *){12,19}$"),
        "exp_month": integer(minimum=1, maximum=12),
        "exp_year": integer(f"A four-digit year up to {MAX_EXPIRY_YEARS_AHEAD} years from now; "
                            "an expiry in the past is 422 card_expired.", minimum=2000),
    }, closed=True)


def _endpoint_fields(*, creating: bool) -> Schema:
    events = ["*", *sorted(EVENT_NAMES)]
    return obj({
        "url": string("An http:// or https:// URL with a host.",
                      pattern="^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+"),
        "enabled_events": {"type": "array", "minItems": 1, "items": {"enum": events},
                           "description": "The event types to deliver; '*' for all."
                                          + (" Default: ['*']." if creating else "")},
        "description": string(maxLength=MAX_ENDPOINT_DESCRIPTION),
        "disabled": {"type": "boolean", "description": (
            "A disabled endpoint gets no deliveries. Enabling it clears disabled_reason and "
            "failing_since.")},
    }, required=("url",) if creating else (), closed=True)


# --- resources -------------------------------------------------------------------------------


def _payment() -> Schema:
    return obj({
        "id": string("pay_<hex>; a payment from a legacy job keeps the job's id."),
        "object": const("payment"),
        "amount": nullable(integer("Minor units; null for a payment from a legacy job.")),
        "amount_refunded": integer(minimum=0),
        "currency": nullable(string("ISO 4217, upper-case; null for a legacy payment.")),
        "method": {"enum": list(METHODS)},
        "method_details": {"anyOf": [ref("UpiDetails"), ref("CardDetails"),
                                     ref("NetbankingDetails"), ref("WalletDetails"),
                                     {"type": "object", "maxProperties": 0}],
                           "description": "What the method's details were reduced to: a "
                                          "card keeps brand, last 4, expiry and fingerprint."},
        "status": {"enum": [s.value for s in PaymentStatus]},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "created_at": timestamp("When the payment was created."),
        "updated_at": timestamp("When it last changed."),
        "failure_code": nullable(string()),
        "failure_message": nullable(string()),
        "sequence": integer("Bumped by every transition: drop webhook states older than the "
                            "last one you saw.", minimum=0),
    }, description="A payment: pending → processing → succeeded | failed, or pending → "
                   "canceled; a succeeded payment may become partially_refunded or refunded.")


def _refund() -> Schema:
    return obj({
        "id": string(pattern="^re_"),
        "object": const("refund"),
        "payment_id": string(),
        "amount": integer(minimum=1),
        "currency": nullable(string()),
        "status": {"enum": [s.value for s in RefundStatus]},
        "failure_code": nullable(string()),
        "failure_message": nullable(string()),
        "created_at": timestamp("When the refund was created."),
        "updated_at": timestamp("When it last changed."),
    }, description="A refund: pending until a consumer takes it to succeeded or failed.")


def _endpoint() -> Schema:
    return obj({
        "id": string(pattern="^ep_"),
        "object": const("webhook_endpoint"),
        "url": string(),
        "enabled_events": {"type": "array", "items": {"type": "string"}},
        "disabled": {"type": "boolean"},
        "disabled_reason": nullable(string()),
        "description": string(),
        "source": {"enum": ["api", "config"]},
        "signed": {"type": "boolean", "description": "Whether its webhooks are signed."},
        "created_at": timestamp("When the endpoint was created."),
        "updated_at": timestamp("When it last changed."),
        "failing_since": nullable(timestamp("Start of the current run of failed attempts.")),
    }, description="A webhook receiver (its secrets are never shown after creation).")


def _event() -> Schema:
    return obj({
        "object": const("event"),
        "id": string(pattern="^evt_"),
        "type": {"enum": list(ALL_EVENT_TYPES)},
        "timestamp": timestamp("When the transition happened."),
        "data": {"oneOf": [ref("Payment"), ref("Refund")],
                 "description": "The payment (payment.*) or refund (refund.*) as it was."},
    }, description="What a webhook carries.")


def _attempt() -> Schema:
    return obj({
        "id": string(pattern="^att_"),
        "object": const("delivery_attempt"),
        "event_id": string(),
        "endpoint_id": string("An endpoint id, or 'log' for the log sink."),
        "attempt": integer(minimum=1),
        "outcome": {"enum": list(DELIVERY_OUTCOMES), "description": (
            "retrying: next_retry_at says when; dead: no more attempts; refused: the SSRF "
            "guard refused the address; disabled: the endpoint was disabled (410 Gone or "
            "failing too long); skipped: it was disabled when the event came.")},
        "at": timestamp("When the attempt was made."),
        "status": nullable(integer("The receiver's HTTP status.")),
        "error": nullable(string()),
        "latency_ms": {"type": "number", "minimum": 0},
        "response_body": string("The start of the receiver's answer."),
        "next_retry_at": nullable(timestamp("When the next attempt is due.")),
    }, description="One try at delivering one event to one endpoint.")


def _operation_schemas() -> dict[str, Schema]:
    """The dashboard's data: queues, daemons, dead letters, endpoint health."""
    count, per_second = integer(minimum=0), {"type": "number", "minimum": 0}
    rates = obj({o: per_second for o in ("done", "retried", "dead")}, description=(
        "Jobs per second over the last minute, by outcome."))
    by_queue = {"type": "object", "additionalProperties": ref("QueueRates"),
                "description": "Queue name -> rates."}
    daemon = obj({
        "id": string(), "host": nullable(string()), "pid": nullable(integer()),
        "started_at": nullable(string()), "store": nullable(string("memory, postgresql.")),
        "shared": nullable({"type": "boolean"}),
        "alive": {"type": "boolean", "description": "Its heartbeat has not expired."},
        "heartbeat_age_seconds": nullable({"type": "number", "minimum": 0}),
        "in_flight": {"type": "object", "additionalProperties": count,
                      "description": "Queue name -> jobs its consumers hold."},
        "rates": by_queue}, description="A daemon registered on the Redis.")
    return {
        "QueueDepths": obj({k: count for k in ("ready", "processing", "delayed", "dead")}),
        "QueueRates": rates,
        "Daemon": daemon,
        "QueueOverview": obj({
            "object": const("queue_overview"),
            "queues": {"type": "object", "additionalProperties": ref("QueueDepths"),
                       "description": "Queue name -> jobs in each state."},
            "rates": {**by_queue, "description": "Queue name -> rates, summed over the live "
                                                 "daemons."},
            "rate_window_seconds": per_second,
            "daemons": {"type": "array", "items": ref("Daemon")},
            "stores": {"type": "array", "items": string(),
                       "description": "The store kinds the daemons report."},
        }, description="What `payflow status` shows: the queues and the daemons."),
        "DeadLetter": obj({
            "object": const("dead_letter"),
            "id": string("12 hex digits derived from the entry's content.",
                         pattern="^[0-9a-f]{12}$"),
            "queue": string(), "failed_at": string(), "reason": string(),
            "consumer": string("The consumer (or daemon) that gave up on the job."),
            "job": string("The job as it was queued (bytes that are not UTF-8 as \\xNN)."),
        }, description="A job that will not be tried again, and why."),
        "DeadLetterList": obj({
            "object": const("list"), "queue": string(), "total": count,
            "data": {"type": "array", "items": ref("DeadLetter")},
            "has_more": {"type": "boolean", "description": "true when total is more than "
                                                           "the entries shown."}},
            description="The newest entries of a queue's dead list."),
        "DeadLetterReplay": obj({
            "queue": string(), "id": string("The entry to replay.", pattern="^[0-9a-f]{12}$"),
            "all": {"type": "boolean", "description": "true: replay every entry."}},
            required=("queue",), closed=True, description='Either "id" or "all": true.'),
        "DeadLetterReplayed": obj({"object": const("dead_letter_replay"), "queue": string(),
                                   "replayed": count}),
        "DeadLetterPurged": obj({"object": const("dead_letter_purge"), "queue": string(),
                                 "deleted": count}),
        "PaymentEventList": obj({
            "object": const("list"), "data": {"type": "array", "items": ref("Event")},
            "has_more": {"type": "boolean", "description": "true when the scan stopped at its "
                                                           "limit: older events may be missing."}},
            description="The events of a payment and of its refunds, oldest first."),
        "WebhookEndpointHealth": obj({
            "object": const("webhook_endpoint_health"), "endpoint_id": string(),
            "window_hours": integer(minimum=1), "attempts": count, "failures": count,
            "last_success_at": nullable(timestamp("The last delivery that succeeded.")),
            "last_failure_at": nullable(timestamp("The last attempt that failed.")),
            "failure_streak": integer("Failed attempts since the last success.", minimum=0),
            "failing_since": nullable(timestamp("Start of the current run of failures.")),
            "disabled": {"type": "boolean"}, "disabled_reason": nullable(string())},
            description="How deliveries to an endpoint went in the window."),
    }


def _problem() -> Schema:
    return obj({
        "type": string(f"{PROBLEM_BASE}<slug>", format="uri"),
        "title": string(),
        "status": integer("The HTTP status.", minimum=400, maximum=599),
        "detail": string("What went wrong, for a person."),
        "request_id": string("The Request-Id of the request (also in the header)."),
        "code": string("Stable and machine-readable, e.g. out_of_range, payment_not_found."),
        "param": nullable(string("The offending field or parameter (a dotted path); on "
                                 "validation errors only.")),
        "current_status": string("On 409 conflicts about a payment: its status now."),
    }, required=("type", "title", "status", "detail", "request_id", "code"),
        description="An RFC 9457 problem: every error the API answers.")


def schemas() -> dict[str, Schema]:
    """``components.schemas``."""
    delivered_secret = string("The signing secret (whsec_...): shown only here, keep it.",
                              pattern="^whsec_")
    return {
        "PaymentCreate": _payment_create(),
        "UpiInput": obj({"vpa": string("name@handle.", pattern=anchored(VPA_RE.pattern))},
                        closed=True),
        "CardInput": _card_input(),
        "NetbankingInput": obj({"bank_code": string(pattern=anchored(BANK_CODE_RE.pattern))},
                               closed=True),
        "WalletInput": obj({"wallet": {"enum": list(WALLETS)}}, closed=True),
        "RefundCreate": obj({"amount": integer(
            "Minor units, at most what is left to refund (422 amount_too_large). Default: "
            "everything left.", minimum=1)}, closed=True),
        "WebhookEndpointCreate": _endpoint_fields(creating=True),
        "WebhookEndpointUpdate": _endpoint_fields(creating=False),
        "EventRetry": obj({"endpoint_id": nullable(string(
            "Deliver to this endpoint only; absent or null: to every subscribed endpoint."))},
            required=(), closed=True),
        "Payment": _payment(),
        "PaymentList": list_of("Payment", url="/v1/payments"),
        "UpiDetails": obj({"vpa": string()}),
        "CardDetails": obj({"brand": {"enum": list(CARD_BRANDS)},
                            "last4": string(pattern="^[0-9]{4}$"),
                            "exp_month": integer(minimum=1, maximum=12),
                            "exp_year": integer(),
                            "fingerprint": string()}),
        "NetbankingDetails": obj({"bank_code": string()}),
        "WalletDetails": obj({"wallet": string()}),
        "Refund": _refund(),
        "WebhookEndpoint": _endpoint(),
        "WebhookEndpointCreated": extends("WebhookEndpoint", {"secret": delivered_secret},
                                          "The new endpoint with its signing secret."),
        "WebhookEndpointRotated": extends("WebhookEndpoint", {
            "secret": delivered_secret,
            "previous_secrets_expire_at": {
                "type": "array", "items": timestamp("Until when an old secret signs too."),
                "description": "The secrets still signing during the rotation grace."}},
            "The endpoint with its new current secret."),
        "WebhookEndpointDeleted": obj({"id": string(), "object": const("webhook_endpoint"),
                                       "deleted": const(True)}),
        "WebhookEndpointList": list_of("WebhookEndpoint", paged=False),
        "Recovery": obj({
            "object": const("recovery"),
            "endpoint_id": string(),
            "since": string("The since parameter as given (default: 24 hours ago)."),
            "requeued": integer(minimum=0),
            "event_ids": {"type": "array", "items": string()},
        }, description="The events whose last attempt at the endpoint was dead, refused, "
                       "disabled or skipped since `since`, queued again."),
        "Event": _event(),
        "EventList": list_of("Event"),
        "EventRetryQueued": obj({"object": const("retry"), "event_id": string(),
                                 "endpoint_id": nullable(string()), "queued": const(True)}),
        "DeliveryAttempt": _attempt(),
        "DeliveryAttemptList": list_of("DeliveryAttempt", paged=False),
        "RefundList": list_of("Refund", paged=False),
        "Health": obj({"status": const("ok")}),
        "Ready": obj({"status": const("ready")}),
        "Problem": _problem(),
        **_operation_schemas(),
    }


# --- headers and parameters ------------------------------------------------------------------


def headers() -> dict[str, Schema]:
    """``components.headers`` (response headers)."""
    return {
        "Request-Id": {"required": True, "schema": string(minLength=1,
                                                          maxLength=MAX_REQUEST_ID_LENGTH),
                       "description": "The request's Request-Id as sent (1-200 printable "
                                      "ASCII characters), else a new req_<hex>."},
        "Location": {"required": True, "schema": string(),
                     "description": "The path of the created resource."},
        "Retry-After": {"required": True, "schema": integer(minimum=0),
                        "description": "Seconds to wait before retrying."},
        "Retry-After-Optional": {"schema": integer(minimum=0),
                                 "description": "Seconds to wait before retrying (on "
                                                "idempotency-request-in-flight)."},
        "Idempotent-Replayed": {"schema": {"enum": ["true"]},
                                "description": "true: this is the stored answer of an earlier "
                                               "request with the same Idempotency-Key."},
        "WWW-Authenticate": {"required": True, "schema": string(pattern="^Bearer "),
                             "description": 'Bearer realm="payflow" (with error="..." for a '
                                            "malformed or unknown key)."},
    }


def parameters() -> dict[str, Schema]:
    """``components.parameters``."""
    return {
        "RequestId": {
            "name": "Request-Id", "in": "header", "required": False,
            "schema": string(minLength=1, maxLength=MAX_REQUEST_ID_LENGTH),
            "description": "Your id for this request, echoed in the Request-Id response header "
                           "and in problems when it is 1-200 printable ASCII characters; "
                           "otherwise a new one is made."},
        "IdempotencyKey": {
            "name": "Idempotency-Key", "in": "header", "required": False,
            "schema": string(pattern="^[\\x21-\\x7e](?:[\\x20-\\x7e]*[\\x21-\\x7e])?$"),
            "description": (
                f"1-{MAX_KEY_LENGTH} printable ASCII characters, bare or as an RFC 8941 "
                "quoted string (400 invalid_idempotency_key otherwise). When the server keeps "
                "idempotency keys, a retry with the same key and the same request gets the "
                "stored answer (Idempotent-Replayed: true); the same key with another request "
                "is 422; a retry while the first runs is 409 with Retry-After. Servers "
                "configured to require it answer 400 idempotency_key_required without it.")},
        "Limit": {"name": "limit", "in": "query", "required": False,
                  "schema": integer(minimum=1, maximum=100, default=10),
                  "description": "Page size (400 out_of_range otherwise)."},
        "StartingAfter": {"name": "starting_after", "in": "query", "required": False,
                          "schema": string(),
                          "description": "The id of the last item of the previous page; an "
                                         "unknown id gives an empty page."},
    }
