"""The component schemas, headers and parameters of the OpenAPI document (:mod:`.openapi`).

The bodies are generated (:mod:`payflow.schema`) from the ``TypedDict`` each one is declared
with, once, where the code builds or checks it: ``to_dict()`` returns (:mod:`payflow.models`),
the request bodies the validators read (:mod:`payflow.payments.validation`,
:mod:`payflow.webhooks.admin`), and the dashboard's data (:mod:`payflow.operations`).
:data:`COMPONENTS` names them; what is written here by hand has no such type: the lists,
problems, headers and parameters. Request
bodies are strict (``additionalProperties: false``: the API rejects unknown fields with 422
``unknown_field``); response objects list every member they always carry, and may gain
members later.
"""

from __future__ import annotations

from typing import Any, Final

from payflow import models, operations
from payflow.idempotency import MAX_KEY_LENGTH
from payflow.models import METHODS
from payflow.payments import validation
from payflow.schema import Generator
from payflow.web.params import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MIN_PAGE_LIMIT
from payflow.web.problems import MAX_REQUEST_ID_LENGTH, PROBLEM_BASE
from payflow.webhooks import admin

Schema = dict[str, Any]

# Component name -> the type it is generated from.
COMPONENTS: Final[dict[str, object]] = {
    "PaymentCreate": validation.PaymentCreate,
    "UpiInput": validation.UpiInput,
    "CardInput": validation.CardInput,
    "NetbankingInput": validation.NetbankingInput,
    "WalletInput": validation.WalletInput,
    "RefundCreate": validation.RefundCreate,
    "WebhookEndpointCreate": admin.WebhookEndpointCreate,
    "WebhookEndpointUpdate": admin.WebhookEndpointUpdate,
    "EventRetry": admin.EventRetry,
    "Payment": models.PaymentJSON,
    "UpiDetails": models.UpiDetails,
    "CardDetails": models.CardDetails,
    "NetbankingDetails": models.NetbankingDetails,
    "WalletDetails": models.WalletDetails,
    "Refund": models.RefundJSON,
    "WebhookEndpoint": models.WebhookEndpointJSON,
    "WebhookEndpointCreated": admin.WebhookEndpointCreated,
    "WebhookEndpointRotated": admin.WebhookEndpointRotated,
    "WebhookEndpointDeleted": admin.WebhookEndpointDeleted,
    "Recovery": admin.Recovery,
    "Event": models.ApiEventJSON,
    "EventRetryQueued": admin.EventRetryQueued,
    "DeliveryAttempt": models.DeliveryAttemptJSON,
    # the dashboard's data: queues, daemons, dead letters, endpoint health
    "QueueDepths": operations.QueueDepths,
    "QueueRates": operations.QueueRates,
    "Daemon": operations.Daemon,
    "QueueOverview": operations.QueueOverview,
    "DeadLetter": operations.DeadLetter,
    "DeadLetterList": operations.DeadLetterList,
    "DeadLetterReplay": operations.DeadLetterReplay,
    "DeadLetterReplayed": operations.DeadLetterReplayed,
    "DeadLetterPurged": operations.DeadLetterPurged,
    "PaymentEventList": operations.PaymentEventList,
    "WebhookEndpointHealth": operations.WebhookEndpointHealth,
}
# The request bodies: closed.
REQUESTS: Final = frozenset(COMPONENTS[name] for name in (
    "PaymentCreate", "UpiInput", "CardInput", "NetbankingInput", "WalletInput", "RefundCreate",
    "WebhookEndpointCreate", "WebhookEndpointUpdate", "EventRetry", "DeadLetterReplay"))
# Shown as the base's $ref and the members they add.
EXTENDS: Final[dict[object, object]] = {admin.WebhookEndpointCreated: models.WebhookEndpointJSON,
                  admin.WebhookEndpointRotated: models.WebhookEndpointJSON}


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


# --- generated ------------------------------------------------------------------------------


def _generated() -> dict[str, Schema]:
    generated = Generator({tp: name for name, tp in COMPONENTS.items()}, closed=REQUESTS,
                          extends=EXTENDS).components()
    # Details for a method other than the chosen one: 422 method_mismatch.
    generated["PaymentCreate"]["allOf"] = [
        {"if": obj({"method": const(method)}),
         "then": {"properties": {other: {"type": "null"} for other in METHODS if other != method}}}
        for method in METHODS]
    return generated


# --- written here ----------------------------------------------------------------------------


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
    return {
        **_generated(),
        "PaymentList": list_of("Payment", url="/v1/payments"),
        "WebhookEndpointList": list_of("WebhookEndpoint", paged=False),
        "EventList": list_of("Event"),
        "DeliveryAttemptList": list_of("DeliveryAttempt", paged=False),
        "RefundList": list_of("Refund", paged=False),
        "Health": obj({"status": const("ok")}),
        "Ready": obj({"status": const("ready")}),
        "Problem": _problem(),
    }


# --- headers and parameters ------------------------------------------------------------------


def headers() -> dict[str, Schema]:
    """``components.headers`` (response headers)."""
    return {
        "Request-Id": {"required": True, "schema": string(minLength=1,
                                                          maxLength=MAX_REQUEST_ID_LENGTH),
                       "description": "The request's Request-Id as sent (1-"
                                      f"{MAX_REQUEST_ID_LENGTH} printable ASCII characters), "
                                      "else a new req_<hex>."},
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
                           f"and in problems when it is 1-{MAX_REQUEST_ID_LENGTH} printable "
                           "ASCII characters; "
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
                  "schema": integer(minimum=MIN_PAGE_LIMIT, maximum=MAX_PAGE_LIMIT,
                                    default=DEFAULT_PAGE_LIMIT),
                  "description": "Page size (400 out_of_range otherwise)."},
        "StartingAfter": {"name": "starting_after", "in": "query", "required": False,
                          "schema": string(),
                          "description": "The id of the last item of the previous page; an "
                                         "unknown id gives an empty page."},
    }
